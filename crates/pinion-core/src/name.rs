//! Names: templates, regions and tokens share one DNS-label-like grammar,
//! `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`, so they are safe in URLs, SQL,
//! metric labels and file names without escaping.

use crate::{Kind, ParseError, quote};

/// Checks the shared name grammar and says why a value fails it.
fn check_label(kind: Kind, input: &str) -> Result<(), ParseError> {
    if input.is_empty() {
        return Err(ParseError::new(kind, "must not be empty"));
    }
    if input.len() > 63 {
        return Err(ParseError::new(
            kind,
            format!(
                "{} is {} bytes long, at most 63 are allowed",
                quote(input),
                input.len()
            ),
        ));
    }
    let bytes = input.as_bytes();
    if let Some(bad) = input
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(ParseError::new(
            kind,
            format!(
                "{} contains {:?}; only a-z, 0-9 and `-` are allowed",
                quote(input),
                bad
            ),
        ));
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err(ParseError::new(
            kind,
            format!("{} must start and end with a-z or 0-9", quote(input)),
        ));
    }
    Ok(())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses a value; surrounding whitespace is an error, not trimmed.
            pub fn parse(input: &str) -> Result<Self, ParseError> {
                check_label($kind, input)?;
                Ok($name(input.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseError;
            fn from_str(input: &str) -> Result<Self, ParseError> {
                Self::parse(input)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Hash, equality and order are the string's, so maps keyed by the
        /// name can be searched with a plain `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

label_type!(
    /// A runtime template name such as `codex` or `claude-code`.
    TemplateName,
    Kind::TemplateName
);
label_type!(
    /// A region such as `us-east-2`; [`Region::global`] is the default and the
    /// fallback of every lookup.
    Region,
    Kind::Region
);
label_type!(
    /// The name of an API token; it is what `promoted_by` records.
    TokenName,
    Kind::TokenName
);
label_type!(
    /// The name of a webhook subscription.
    WebhookName,
    Kind::WebhookName
);

/// A running instance's id as its reporter names it: 1 to 128 of
/// `A-Z a-z 0-9 . _ : -` (a pod name, a VM id, a workspace id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(input: &str) -> Result<InstanceId, ParseError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if input.is_empty() || input.len() > Self::MAX_LEN {
            return Err(ParseError::new(
                Kind::InstanceId,
                format!(
                    "must be 1 to {} characters, not {}",
                    Self::MAX_LEN,
                    input.len()
                ),
            ));
        }
        if let Some(bad) = input.chars().find(|c| !allowed(*c)) {
            return Err(ParseError::new(
                Kind::InstanceId,
                format!(
                    "{} contains {bad:?}; only A-Z, a-z, 0-9, `.`, `_`, `:` and `-` are allowed",
                    quote(input)
                ),
            ));
        }
        Ok(InstanceId(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for InstanceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Region {
    pub const GLOBAL: &'static str = "global";

    /// The default region, which every other region falls back to.
    pub fn global() -> Self {
        Region(Self::GLOBAL.to_owned())
    }

    pub fn is_global(&self) -> bool {
        self.0 == Self::GLOBAL
    }
}

impl Default for Region {
    fn default() -> Self {
        Region::global()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_of_the_grammar() {
        for ok in [
            "codex",
            "claude-code",
            "a",
            "0",
            "us-east-2",
            "a1-b2",
            &"a".repeat(63),
        ] {
            assert_eq!(TemplateName::parse(ok).unwrap().as_str(), ok);
            assert_eq!(Region::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_hostile_names() {
        let long = "a".repeat(64);
        let huge = "a".repeat(10_000);
        for bad in [
            "",
            " codex",
            "codex ",
            "co\ndex",
            "codex\n",
            "co\0dex",
            "Codex",
            "CODEX",
            "-codex",
            "codex-",
            "co_dex",
            "co.dex",
            "../etc",
            "codex/../x",
            "codex'; DROP TABLE pins; --",
            "сodex",  // Cyrillic 'с'
            "ｃodex", // full-width 'c'
            "codeх",  // Cyrillic 'х'
            long.as_str(),
            huge.as_str(),
            "-",
        ] {
            let err = TemplateName::parse(bad).unwrap_err();
            assert_eq!(err.kind(), Kind::TemplateName, "{bad:?}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
            assert!(err.to_string().len() < 300, "short message: {err}");
            assert!(Region::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn global_is_the_default_region() {
        assert_eq!(Region::default().as_str(), "global");
        assert!(Region::parse("global").unwrap().is_global());
        assert!(!Region::parse("eu-west-1").unwrap().is_global());
    }
}
