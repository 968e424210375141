//! The drift watcher: every interval, resolve each catalog repository's tag
//! in the registry and compare it with every pin of that template. The
//! latest report is served at `/cp/admin/runtime-image/drift` and as
//! Prometheus gauges at `/metrics`, so a stale pin is seen within one interval.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use pinion_api::{DriftEntry, DriftReport};
use pinion_core::{
    Digest, DriftRow, DriftStatus, PinnedDigest, Region, Repository, TemplateName, template_rows,
};
use pinion_registry::resolve_tags;
use pinion_store::DriftObservation;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::state::AppState;

/// At most this many registry lookups at once.
const CONCURRENCY: usize = 8;
/// A failing repository is retried no sooner than `interval * 2^failures`,
/// and at least once an hour.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What the watcher knows; shared with the handlers.
pub struct Drift {
    report: RwLock<Arc<DriftReport>>,
    errors_total: AtomicU64,
    memory: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    /// The last answer per repository: the tag's digest (None: no such tag),
    /// or the error that stopped the lookup.
    answers: HashMap<Repository, Result<Option<Digest>, String>>,
    /// Consecutive failures and when to try again.
    backoff: HashMap<Repository, (u32, Instant)>,
    /// When each pin was first seen behind this tag digest.
    stale_since: HashMap<(TemplateName, Region), (Digest, OffsetDateTime)>,
    /// What was last recorded for the change feed per pin (stale?, tag
    /// digest); only a difference is recorded again.
    recorded: HashMap<(TemplateName, Region), (bool, Digest)>,
    /// The last definite answer per pin: the pin's digest then, and whether
    /// it was stale. A check that could not be made leaves it as it was.
    known: HashMap<(TemplateName, Region), (Digest, bool)>,
}

impl Drift {
    pub fn new(tag: &str) -> Drift {
        Drift {
            report: RwLock::new(Arc::new(DriftReport {
                checked_at: None,
                tag: tag.to_owned(),
                pins: Vec::new(),
            })),
            errors_total: AtomicU64::new(0),
            memory: Mutex::new(Memory::default()),
        }
    }

    pub fn report(&self) -> Arc<DriftReport> {
        self.report
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the pin at `digest` was stale when last checked for sure;
    /// none if it never was (or the pin has moved since).
    pub fn last_known(
        &self,
        template: &TemplateName,
        region: &Region,
        digest: &Digest,
    ) -> Option<bool> {
        let memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        memory
            .known
            .get(&(template.clone(), region.clone()))
            .filter(|(known, _)| known == digest)
            .map(|(_, stale)| *stale)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors_total.load(Ordering::Relaxed)
    }
}

pub async fn watch(state: AppState) {
    let interval = state.settings().drift_interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        check_once(&state, interval).await;
    }
}

/// One pass over every repository in the catalog.
pub async fn check_once(state: &AppState, interval: Duration) {
    let view = state.view();
    let tag = state.settings().drift_tag.clone();
    let drift = state.drift();
    let repositories: BTreeMap<TemplateName, Repository> = view
        .runtimes
        .values()
        .filter_map(|runtime| Some((runtime.name.clone(), runtime.repository.clone()?)))
        .collect();

    let due: Vec<Repository> = {
        let memory = drift.memory.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut unique: Vec<Repository> = repositories.values().cloned().collect();
        unique.sort();
        unique.dedup();
        unique
            .into_iter()
            .filter(|repository| {
                memory
                    .backoff
                    .get(repository)
                    .is_none_or(|(_, next)| *next <= now)
            })
            .collect()
    };

    let answers = resolve_tags(state.registry(), due, &tag, CONCURRENCY).await;

    let now = crate::clock::now();
    let (entries, observations) = {
        let mut memory = drift.memory.lock().unwrap_or_else(PoisonError::into_inner);
        for (repository, answer) in answers {
            match &answer {
                Ok(_) => {
                    memory.backoff.remove(&repository);
                }
                Err(reason) => {
                    drift.errors_total.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%repository, %reason, "drift check failed");
                    let failures = memory
                        .backoff
                        .get(&repository)
                        .map_or(0, |(failures, _)| *failures)
                        + 1;
                    let delay = interval
                        .saturating_mul(2u32.saturating_pow(failures.min(16)))
                        .min(MAX_BACKOFF);
                    memory
                        .backoff
                        .insert(repository.clone(), (failures, Instant::now() + delay));
                }
            }
            memory.answers.insert(repository, answer);
        }

        let mut entries = Vec::new();
        let mut observations = Vec::new();
        for (template, repository) in &repositories {
            let answer = memory.answers.get(repository).cloned();
            let pins: Vec<_> = view
                .pins_of(template)
                .map(|pin| PinnedDigest {
                    key: pin,
                    digest: Ok(&pin.digest),
                })
                .collect();
            for row in template_rows(&pins, answer.as_ref()) {
                let Some(pin) = row.key else {
                    entries.push(entry(template, &Region::global(), &row, None, now));
                    continue;
                };
                let key = (pin.template.clone(), pin.region.clone());
                // Only a definite answer is news for the change feed: a check
                // that could not be made says nothing about freshness.
                if let (DriftStatus::Current | DriftStatus::Stale, Some(tag_digest)) =
                    (row.status, row.tag_digest)
                {
                    let stale = row.status == DriftStatus::Stale;
                    memory
                        .known
                        .insert(key.clone(), (pin.digest.clone(), stale));
                    let seen = (stale, tag_digest.clone());
                    if memory.recorded.get(&key) != Some(&seen) {
                        memory.recorded.insert(key.clone(), seen);
                        observations.push(DriftObservation {
                            template: pin.template.clone(),
                            region: pin.region.clone(),
                            digest: pin.digest.clone(),
                            tag: tag.to_string(),
                            tag_digest: tag_digest.clone(),
                            stale,
                            stale_since: None,
                            at: now,
                        });
                    }
                }
                // A failed check keeps the last known staleness: unknown is not fresh.
                let since = match (row.status, row.tag_digest) {
                    (DriftStatus::Stale, Some(tag_digest)) => {
                        let recorded = memory
                            .stale_since
                            .get(&key)
                            .filter(|(digest, _)| digest == tag_digest)
                            .map(|(_, since)| *since);
                        let since = recorded.unwrap_or(now);
                        memory.stale_since.insert(key, (tag_digest.clone(), since));
                        Some(since)
                    }
                    (DriftStatus::Error, _) => {
                        memory.stale_since.get(&key).map(|(_, since)| *since)
                    }
                    _ => {
                        memory.stale_since.remove(&key);
                        None
                    }
                };
                entries.push(entry(&pin.template, &pin.region, &row, since, now));
            }
        }
        for observation in &mut observations {
            let key = (observation.template.clone(), observation.region.clone());
            observation.stale_since = memory.stale_since.get(&key).map(|(_, since)| *since);
        }
        (entries, observations)
    };
    if !observations.is_empty() {
        if let Err(err) = state.record_drift(observations).await {
            tracing::warn!(
                code = err.code.as_str(),
                "could not record drift in the change feed"
            );
            // Recorded again on the next pass.
            drift
                .memory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recorded
                .clear();
        }
    }
    let report = DriftReport {
        checked_at: now.format(&Rfc3339).ok(),
        tag: tag.to_string(),
        pins: entries,
    };
    *drift.report.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(report);
}

fn entry<K>(
    template: &TemplateName,
    region: &Region,
    row: &DriftRow<'_, K>,
    stale_since: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> DriftEntry {
    DriftEntry {
        template_name: template.to_string(),
        region: region.to_string(),
        image_digest: row.pinned.map(ToString::to_string),
        tag_digest: row.tag_digest.map(ToString::to_string),
        status: row.status.as_str().to_owned(),
        stale_since: stale_since.and_then(|since| since.format(&Rfc3339).ok()),
        behind_seconds: stale_since.map(|since| (now - since).whole_seconds()),
        error: row.error.clone(),
    }
}
