//! Query strings, decoded on lookup, for the API and the page alike.

use pinion_core::{Region, TemplateName};

use crate::error::{ApiError, Code, Field};

/// A query string, decoded on lookup. Unknown keys are ignored; a known
/// key given twice is refused, and one given empty must parse like any
/// other value (`?limit=` is not "no limit").
pub(crate) struct Query<'a>(&'a str);

type Text<'a> = std::borrow::Cow<'a, str>;

impl<'a> Query<'a> {
    pub(crate) fn parse(raw: Option<&'a str>) -> Query<'a> {
        Query(raw.unwrap_or_default())
    }

    /// The pairs, by `application/x-www-form-urlencoded` rules (`&`
    /// between pairs, the first `=` splits, `+` and `%XX` decode); a pair
    /// with nothing to decode, as every query of a well-behaved client, is
    /// only borrowed.
    fn pairs(&self) -> impl Iterator<Item = (Text<'a>, Text<'a>)> {
        let plain = |text: &str| !text.bytes().any(|b| b == b'%' || b == b'+');
        self.0
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter_map(move |pair| {
                if plain(pair) {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    Some((Text::Borrowed(name), Text::Borrowed(value)))
                } else {
                    form_urlencoded::parse(pair.as_bytes()).next()
                }
            })
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<Text<'a>> {
        self.pairs()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value)
    }

    /// The value of a parameter that may be given once: `None` when
    /// absent, `422 invalid_request` naming it when repeated.
    pub(crate) fn one(&self, key: &'static str) -> Result<Option<Text<'a>>, ApiError> {
        let mut found = None;
        for (name, value) in self.pairs() {
            if name != key {
                continue;
            }
            if found.is_some() {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    format!("`{key}` is given more than once; give it once"),
                ));
            }
            found = Some(value);
        }
        Ok(found)
    }

    /// Every value of a repeated key, in order.
    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        form_urlencoded::parse(self.0.as_bytes())
            .filter(|(name, _)| name == key)
            .map(|(_, value)| value.into_owned())
            .collect()
    }

    pub(crate) fn template(&self) -> Result<Option<TemplateName>, ApiError> {
        self.one("template_name")?
            .map(|value| {
                TemplateName::parse(&value)
                    .map_err(|err| ApiError::invalid(Field::TemplateName, &err))
            })
            .transpose()
    }

    pub(crate) fn region(&self) -> Result<Option<Region>, ApiError> {
        self.one("region")?
            .map(|value| {
                Region::parse(&value).map_err(|err| ApiError::invalid(Field::Region, &err))
            })
            .transpose()
    }

    /// A positive integer parameter within `1..=max`.
    pub(crate) fn number(&self, key: &'static str, max: i64) -> Result<Option<i64>, ApiError> {
        self.one(key)?
            .map(|value| {
                value
                    .parse::<i64>()
                    .ok()
                    .filter(|number| (1..=max).contains(number))
                    .ok_or_else(|| {
                        ApiError::new(
                            Code::InvalidRequest,
                            format!("`{key}` must be a whole number from 1 to {max}"),
                        )
                    })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_given_twice_or_empty_is_refused_not_ignored() {
        let query = Query::parse(Some("limit=&limit=%C3%8A&region=&template_name=codex"));
        assert_eq!(
            query.number("limit", 10).map_err(|err| err.code),
            Err(Code::InvalidRequest)
        );
        assert_eq!(
            query.region().map_err(|err| err.code),
            Err(Code::InvalidRegion)
        );
        assert_eq!(
            Query::parse(Some("history="))
                .number("history", 10)
                .map_err(|err| err.code),
            Err(Code::InvalidRequest)
        );
        assert_eq!(
            Query::parse(Some("before="))
                .number("before", 10)
                .map_err(|err| err.code),
            Err(Code::InvalidRequest)
        );
        assert_eq!(
            query.template().ok().flatten().map(|t| t.to_string()),
            Some("codex".to_owned())
        );
        assert_eq!(Query::parse(None).number("limit", 10).ok(), Some(None));
    }

    /// The borrowed fast path answers exactly what the full decoder answers.
    #[test]
    fn query_lookups_agree_with_form_urlencoded() {
        let queries = [
            "",
            "&",
            "&&template_name=codex&",
            "template_name=codex&region=us-east-2",
            "region=us-east-2&template_name=codex",
            "template_name=codex&template_name=hermes",
            "template_name",
            "template_name=",
            "template_name=a=b",
            "=codex",
            "template%5Fname=codex",
            "template_name=co%64ex",
            "template_name=co+dex",
            "template_name=%ZZ",
            "template_name=%E2%9C%93&region=eu",
            "region=%FF&template_name=codex",
            "x=1&template_name=c&region=r&x=2",
        ];
        for raw in queries {
            for key in ["template_name", "region", "x", ""] {
                let expected = form_urlencoded::parse(raw.as_bytes())
                    .find(|(name, _)| name == key)
                    .map(|(_, value)| value.into_owned());
                let got = Query::parse(Some(raw))
                    .get(key)
                    .map(|value| value.into_owned());
                assert_eq!(got, expected, "query `{raw}`, key `{key}`");
            }
        }
    }
}
