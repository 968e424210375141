//! Soak between environments: before a promotion, ask the source
//! environment's server how long the digest ran on its pin, and let
//! `pinion-core` judge. Answers are not cached: each promotion asks (the
//! newest 25 entries of the template's history, older pages only while the
//! answer is still open), so no stale answer can let through a digest the
//! source has since rolled back.

use std::time::Duration;

use pinion_api::HistoryList;
use pinion_core::{Digest, Label, Region, Soak, SoakScan, SourceMove, TemplateName};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::deadline::Deadline;
use crate::error::{ApiError, Code};

/// The most history pages read from the source for one promotion: 25
/// entries, then up to 20,000 more. Windows older than what they hold are
/// not counted (an undercount: never a digest let through that should not
/// be).
const MAX_PAGES: usize = 21;
const FIRST_PAGE: u32 = 25;
const PAGE: u32 = 1000;

/// Where promotions must have soaked first, and for how long.
#[derive(Clone)]
pub struct SoakSource {
    pub name: Label,
    /// The source server's base URL.
    pub url: reqwest::Url,
    /// A `read` token for the source (from `PINION_SOAK_TOKEN`).
    pub token: Option<String>,
    pub required: Duration,
    pub client: reqwest::Client,
}

impl std::fmt::Debug for SoakSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("SoakSource")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl SoakSource {
    pub fn new(
        name: Label,
        url: reqwest::Url,
        token: Option<String>,
        required: Duration,
    ) -> Result<SoakSource, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pinion/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("the soak source's client: {err}"))?;
        Ok(SoakSource {
            name,
            url,
            token,
            required,
            client,
        })
    }

    /// How long `digest` has soaked on the source's pin `(template, region)`
    /// or `(template, global)`, judged against the required soak; by the
    /// deadline, else `503 soak_source_unavailable`.
    pub async fn judge(
        &self,
        template: &TemplateName,
        region: &Region,
        digest: &Digest,
        deadline: &Deadline,
    ) -> Result<Soak, ApiError> {
        let unavailable = |why: String| {
            ApiError::new(
                Code::SoakSourceUnavailable,
                format!(
                    "the soak source `{}` could not be asked ({why}); nothing was changed",
                    self.name.as_str()
                ),
            )
        };
        let now_ms = crate::clock::unix_ms(crate::clock::now());
        let pins = if *region == Region::global() {
            vec![region.clone()]
        } else {
            vec![region.clone(), Region::global()]
        };
        let mut scans: Vec<(Region, SoakScan<'_>)> = pins
            .into_iter()
            .map(|pin| (pin, SoakScan::new(digest, self.required, now_ms)))
            .collect();
        let asked = async { self.scan(template, &mut scans).await.map_err(unavailable) };
        deadline
            .run(asked, || {
                unavailable("no answer by the request's deadline".into())
            })
            .await?;
        let longest = scans
            .into_iter()
            .map(|(_, scan)| scan.finish())
            .max()
            .unwrap_or_default();
        Ok(Soak::judge(longest, self.required))
    }

    /// Reads the template's history on the source, newest first, into the
    /// scans of its pins, until each has decided or the history ends.
    async fn scan(
        &self,
        template: &TemplateName,
        scans: &mut [(Region, SoakScan<'_>)],
    ) -> Result<(), String> {
        let mut before: Option<i64> = None;
        for page_number in 0..MAX_PAGES {
            // Most answers are in the newest entries: a small first page.
            let limit = if page_number == 0 { FIRST_PAGE } else { PAGE };
            let mut url = self
                .url
                .join("cp/admin/runtime-image/history")
                .map_err(|err| err.to_string())?;
            {
                let mut pairs = url.query_pairs_mut();
                pairs.append_pair("template_name", template.as_str());
                pairs.append_pair("limit", &limit.to_string());
                if let Some(before) = before {
                    pairs.append_pair("before", &before.to_string());
                }
            }
            let mut request = self.client.get(url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(|err| {
                // The URL without its query; reqwest's message names it.
                format!("{}", err.without_url())
            })?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("it answered {}", status.as_u16()));
            }
            let page: HistoryList = crate::capped::json(response, crate::capped::ANSWER_LIMIT)
                .await
                .map_err(|err| format!("its history: {err}"))?;
            for entry in &page.history {
                let step = parse_entry(template, entry)?;
                let Some(step) = step else { continue };
                if let Some((_, scan)) = scans.iter_mut().find(|(pin, _)| *pin == step.region) {
                    scan.older(SourceMove {
                        at_ms: step.at_ms,
                        to: &step.to,
                        rollback: step.rollback,
                    });
                }
            }
            // One pin soaked is enough; otherwise read on while one may.
            if scans.iter().any(|(_, scan)| scan.met())
                || scans.iter().all(|(_, scan)| scan.decided())
            {
                return Ok(());
            }
            match page.next_before {
                Some(next) => before = Some(next),
                None => return Ok(()),
            }
        }
        Ok(())
    }
}

/// One history entry of the source as a move of a pin; `None` for holds
/// and releases, which do not move it.
fn parse_entry(
    template: &TemplateName,
    entry: &pinion_api::HistoryEntry,
) -> Result<Option<Move>, String> {
    if entry.template_name != template.as_str() {
        return Err("its history named another template".into());
    }
    let rollback = match entry.action.as_str() {
        "promote" => false,
        "rollback" => true,
        _ => return Ok(None),
    };
    let region = Region::parse(&entry.region)
        .map_err(|err| format!("its history has a bad region: {err}"))?;
    let to = Digest::parse(&entry.to_digest)
        .map_err(|err| format!("its history has a bad digest: {err}"))?;
    let at = OffsetDateTime::parse(&entry.at, &Rfc3339)
        .map_err(|err| format!("its history has a bad time: {err}"))?;
    Ok(Some(Move {
        region,
        to,
        at_ms: crate::clock::unix_ms(at),
        rollback,
    }))
}

/// One move of the source's history.
struct Move {
    region: Region,
    to: Digest,
    at_ms: i64,
    rollback: bool,
}

/// `1h 2m 3s`-style, for messages.
pub fn human(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}
