//! The in-memory view the read path serves: pins, catalog and tokens,
//! indexed for lookups, plus the answers already given from it.
//!
//! A view is immutable once published; a write publishes a new one. Making
//! that new view costs what the write changed, not what the store holds:
//! each template's pins live behind their own `Arc`, shared by every view in
//! which they did not change (with the resolve answers they have cached),
//! and the content tag is a sum of per-entry hashes, adjusted per change.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use axum::body::Bytes;
use axum::http::HeaderValue;
use pinion_core::{Region, Ring, TemplateName, ring};
use pinion_store::{PinRecord, RuntimeRecord, Snapshot, TokenRecord};
use sha2::{Digest as _, Sha256};

/// A resolve answer: the JSON body and its ETag.
pub type Answer = (Bytes, HeaderValue);

/// At most this many fallback answers are kept, over all templates of all
/// live views together: any valid region name may be asked for.
const MAX_FALLBACKS: usize = 4096;

/// What the read path serves. Immutable once built.
#[derive(Debug)]
pub struct View {
    /// By template, then region: iteration is the contract's list order.
    /// Only templates with at least one pin are here.
    templates: BTreeMap<TemplateName, Arc<TemplatePins>>,
    pub runtimes: Arc<BTreeMap<TemplateName, RuntimeRecord>>,
    pub tokens: Arc<Vec<Arc<TokenRecord>>>,
    /// A digest of everything the read endpoints serve (pins and catalog),
    /// so equal content gives equal ETags on every replica and restart.
    pub content_tag: [u8; 32],
    /// The catalog's part of the content tag, recomputed only when the
    /// catalog changes.
    runtimes_hash: u128,
    /// The whole pin list as JSON, made on first use: the unfiltered list is
    /// the one pollers ask for, and it is the same bytes for every caller
    /// that may see every template.
    pub list_body: OnceLock<Bytes>,
    /// Fallback answers kept, shared by every view made from this one.
    fallbacks: Arc<AtomicUsize>,
}

/// One template's pins and the resolve answers given from them to callers
/// that may see every template. Replaced whole when one of its pins or its
/// catalog entry changes, so its answers are never stale.
#[derive(Debug)]
struct TemplatePins {
    regions: BTreeMap<Region, PinSlot>,
    /// For regions answered by the `global` fallback, per ring.
    fallback: RwLock<HashMap<(Region, Ring), Answer>>,
    /// The view-wide count of fallback answers, given back on drop.
    fallbacks: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct PinSlot {
    pin: PinRecord,
    /// This pin's part of the content tag.
    hash: u128,
    /// The answer for exactly this template and region.
    answer: OnceLock<Answer>,
    /// The same for an instance in the canary ring.
    canary_answer: OnceLock<Answer>,
}

impl PinSlot {
    fn new(pin: PinRecord) -> PinSlot {
        let held_at = pin
            .hold
            .as_ref()
            .map(|hold| hold.held_at.unix_timestamp_nanos().to_string());
        let canary = pin
            .canary
            .as_ref()
            .map(|canary| format!("{}/{}", canary.digest, canary.percent.get()));
        let hash = hash128(&[
            "p",
            pin.template.as_str(),
            pin.region.as_str(),
            &pin.revision.to_string(),
            pin.digest.as_str(),
            held_at.as_deref().unwrap_or(""),
            canary.as_deref().unwrap_or(""),
        ]);
        PinSlot {
            pin,
            hash,
            answer: OnceLock::new(),
            canary_answer: OnceLock::new(),
        }
    }
}

impl TemplatePins {
    fn new(
        regions: impl IntoIterator<Item = (Region, PinSlot)>,
        fallbacks: &Arc<AtomicUsize>,
    ) -> TemplatePins {
        TemplatePins {
            regions: regions.into_iter().collect(),
            fallback: RwLock::default(),
            fallbacks: fallbacks.clone(),
        }
    }

    /// The same pins with every cached answer dropped, plus `changed`.
    fn with(&self, changed: Vec<PinRecord>) -> TemplatePins {
        let mut regions: BTreeMap<Region, PinSlot> = self
            .regions
            .iter()
            .map(|(region, slot)| {
                let fresh = PinSlot {
                    pin: slot.pin.clone(),
                    hash: slot.hash,
                    answer: OnceLock::new(),
                    canary_answer: OnceLock::new(),
                };
                (region.clone(), fresh)
            })
            .collect();
        for pin in changed {
            regions.insert(pin.region.clone(), PinSlot::new(pin));
        }
        TemplatePins::new(regions, &self.fallbacks)
    }
}

impl Drop for TemplatePins {
    fn drop(&mut self) {
        let kept = self
            .fallback
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        self.fallbacks.fetch_sub(kept, Ordering::Relaxed);
    }
}

impl View {
    /// A view of everything a snapshot of the store holds.
    pub fn from_snapshot(snapshot: Snapshot) -> View {
        let fallbacks = Arc::new(AtomicUsize::new(0));
        let mut grouped: BTreeMap<TemplateName, Vec<PinRecord>> = BTreeMap::new();
        for pin in snapshot.pins {
            grouped.entry(pin.template.clone()).or_default().push(pin);
        }
        let templates = grouped
            .into_iter()
            .map(|(template, pins)| {
                let slots = pins
                    .into_iter()
                    .map(|pin| (pin.region.clone(), PinSlot::new(pin)));
                (template, Arc::new(TemplatePins::new(slots, &fallbacks)))
            })
            .collect();
        let runtimes: BTreeMap<TemplateName, RuntimeRecord> = snapshot
            .runtimes
            .into_iter()
            .map(|runtime| (runtime.name.clone(), runtime))
            .collect();
        View::assemble(
            templates,
            Arc::new(runtimes),
            None,
            Arc::new(snapshot.tokens.into_iter().map(Arc::new).collect()),
            fallbacks,
        )
    }

    /// This view with some pins and catalog entries replaced. Costs the
    /// templates that changed; the others are shared, answers and all.
    pub fn with_changes(&self, pins: Vec<PinRecord>, runtimes: Vec<RuntimeRecord>) -> View {
        let mut changed: BTreeMap<TemplateName, Vec<PinRecord>> = BTreeMap::new();
        for pin in pins {
            changed.entry(pin.template.clone()).or_default().push(pin);
        }
        // A catalog change alters the template's `image_ref`: its answers go.
        for runtime in &runtimes {
            changed.entry(runtime.name.clone()).or_default();
        }
        let mut templates = self.templates.clone();
        for (template, pins) in changed {
            let replaced = match templates.get(&template) {
                Some(current) => current.with(pins),
                None if pins.is_empty() => continue,
                None => TemplatePins::new(
                    pins.into_iter()
                        .map(|pin| (pin.region.clone(), PinSlot::new(pin))),
                    &self.fallbacks,
                ),
            };
            templates.insert(template, Arc::new(replaced));
        }
        let (catalog, runtimes_hash) = if runtimes.is_empty() {
            (self.runtimes.clone(), Some(self.runtimes_hash))
        } else {
            let mut all = BTreeMap::clone(&self.runtimes);
            for runtime in runtimes {
                all.insert(runtime.name.clone(), runtime);
            }
            (Arc::new(all), None)
        };
        View::assemble(
            templates,
            catalog,
            runtimes_hash,
            self.tokens.clone(),
            self.fallbacks.clone(),
        )
    }

    /// The view of these parts; `runtimes_hash` is computed when not given.
    fn assemble(
        templates: BTreeMap<TemplateName, Arc<TemplatePins>>,
        runtimes: Arc<BTreeMap<TemplateName, RuntimeRecord>>,
        runtimes_hash: Option<u128>,
        tokens: Arc<Vec<Arc<TokenRecord>>>,
        fallbacks: Arc<AtomicUsize>,
    ) -> View {
        // An addition per pin: the hashes were made when the pins came in.
        let pins_sum = templates
            .values()
            .flat_map(|pins| pins.regions.values())
            .fold(0u128, |sum, slot| sum.wrapping_add(slot.hash));
        let runtimes_hash = runtimes_hash.unwrap_or_else(|| {
            runtimes.values().fold(0u128, |sum, runtime| {
                let repository = runtime.repository.as_ref().map_or("", |r| r.as_str());
                let pinnable = if runtime.pinnable { "1" } else { "0" };
                sum.wrapping_add(hash128(&["r", runtime.name.as_str(), repository, pinnable]))
            })
        });
        let mut tag = Sha256::new();
        tag.update(pins_sum.to_be_bytes());
        tag.update(runtimes_hash.to_be_bytes());
        View {
            templates,
            runtimes,
            tokens,
            content_tag: tag.finalize().into(),
            runtimes_hash,
            list_body: OnceLock::new(),
            fallbacks,
        }
    }

    /// Every pin, ordered by template then region.
    pub fn pins(&self) -> impl Iterator<Item = &PinRecord> {
        self.templates
            .values()
            .flat_map(|pins| pins.regions.values().map(|slot| &slot.pin))
    }

    #[cfg(test)]
    pub fn pin_count(&self) -> usize {
        self.templates.values().map(|pins| pins.regions.len()).sum()
    }

    /// The pins of one template, ordered by region.
    pub fn pins_of(&self, template: &TemplateName) -> impl Iterator<Item = &PinRecord> {
        self.templates
            .get(template)
            .into_iter()
            .flat_map(|pins| pins.regions.values().map(|slot| &slot.pin))
    }

    /// The pin of exactly `(template, region)`, if there is one.
    pub fn pin(&self, template: &TemplateName, region: &Region) -> Option<&PinRecord> {
        self.templates
            .get(template)?
            .regions
            .get(region)
            .map(|slot| &slot.pin)
    }

    /// Whether any template has a pin of its own in `region`.
    pub fn region_has_pins(&self, region: &Region) -> bool {
        self.templates
            .values()
            .any(|pins| pins.regions.contains_key(region))
    }

    /// The pin that answers a resolve of `template` in `region`: its own,
    /// else the `global` one.
    pub fn resolve_pin(&self, template: &str, region: &str) -> Option<&PinRecord> {
        let regions = &self.templates.get(template)?.regions;
        regions
            .get(region)
            .or_else(|| regions.get(Region::GLOBAL))
            .map(|slot| &slot.pin)
    }

    /// The resolve answer for `template` in `region` (its own pin, else the
    /// `global` one) for an instance in `bucket` (none: the stable ring),
    /// made by `make` on first use and kept for callers that may see every
    /// template. `None` when neither pin exists.
    pub fn cached_answer(
        &self,
        template: &str,
        region: &Region,
        bucket: Option<u8>,
        make: impl FnOnce(&PinRecord, Ring) -> Answer,
    ) -> Option<Answer> {
        let pins = self.templates.get(template)?;
        if let Some(slot) = pins.regions.get(region) {
            let ring = ring_of(&slot.pin, bucket);
            let cell = match ring {
                Ring::Stable => &slot.answer,
                Ring::Canary => &slot.canary_answer,
            };
            return Some(cell.get_or_init(|| make(&slot.pin, ring)).clone());
        }
        let global = pins.regions.get(Region::GLOBAL)?;
        let ring = ring_of(&global.pin, bucket);
        let key = (region.clone(), ring);
        if let Some(found) = pins
            .fallback
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Some(found.clone());
        }
        let made = make(&global.pin, ring);
        if self.fallbacks.load(Ordering::Relaxed) < MAX_FALLBACKS {
            let mut fallback = pins
                .fallback
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if fallback.insert(key, made.clone()).is_none() {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(made)
    }
}

/// The ring of an instance in `bucket` (none: stable) under `pin`'s canary.
pub fn ring_of(pin: &PinRecord, bucket: Option<u8>) -> Ring {
    match (bucket, &pin.canary) {
        (Some(bucket), Some(canary)) => ring(bucket, canary.percent),
        _ => Ring::Stable,
    }
}

/// 128 bits of SHA-256 over NUL-separated parts.
fn hash128(parts: &[&str]) -> u128 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use pinion_core::{Digest, Repository, TokenName};
    use time::OffsetDateTime;

    use super::*;

    fn pin(template: &str, region: &str, n: u64) -> PinRecord {
        PinRecord {
            template: TemplateName::parse(template).expect("name"),
            region: Region::parse(region).expect("region"),
            digest: Digest::parse(&format!("sha256:{n:064x}")).expect("digest"),
            git_sha: None,
            notes: None,
            promoted_at: OffsetDateTime::UNIX_EPOCH,
            promoted_by: TokenName::parse("ci").expect("name"),
            revision: i64::try_from(n).expect("small"),
            build_sequence: None,
            hold: None,
            canary: None,
            ci_run_url: None,
        }
    }

    fn runtime(name: &str, repository: &str) -> RuntimeRecord {
        RuntimeRecord {
            name: TemplateName::parse(name).expect("name"),
            repository: Some(Repository::parse(repository).expect("repository")),
            pinnable: true,
        }
    }

    fn snapshot(pins: Vec<PinRecord>, runtimes: Vec<RuntimeRecord>) -> View {
        View::from_snapshot(Snapshot {
            pins,
            runtimes,
            tokens: Vec::new(),
        })
    }

    fn answer(text: &str) -> Answer {
        (
            Bytes::copy_from_slice(text.as_bytes()),
            HeaderValue::from_static("\"t\""),
        )
    }

    fn ask(view: &View, template: &str, region: &str, text: &str) -> Option<Bytes> {
        let region = Region::parse(region).expect("region");
        view.cached_answer(template, &region, None, |_, _| answer(text))
            .map(|(body, _)| body)
    }

    #[test]
    fn a_changed_view_equals_the_same_state_read_afresh() {
        let catalog = vec![
            runtime("codex", "r.example/codex"),
            runtime("hermes", "r.example/hermes"),
        ];
        let before = snapshot(
            vec![pin("codex", "global", 1), pin("hermes", "global", 2)],
            catalog.clone(),
        );
        let changed = before.with_changes(
            vec![pin("codex", "eu-west-1", 3), pin("hermes", "global", 4)],
            vec![runtime("hermes", "r.example/other")],
        );
        let mut catalog_after = catalog;
        catalog_after[1] = runtime("hermes", "r.example/other");
        let afresh = snapshot(
            vec![
                pin("codex", "eu-west-1", 3),
                pin("codex", "global", 1),
                pin("hermes", "global", 4),
            ],
            catalog_after,
        );
        assert_eq!(changed.content_tag, afresh.content_tag);
        assert_ne!(changed.content_tag, before.content_tag);
        let listed = |view: &View| -> Vec<(String, String, String)> {
            view.pins()
                .map(|p| {
                    (
                        p.template.to_string(),
                        p.region.to_string(),
                        p.digest.to_string(),
                    )
                })
                .collect()
        };
        assert_eq!(listed(&changed), listed(&afresh));
        assert_eq!(changed.pin_count(), 3);
        assert_eq!(changed.runtimes.len(), 2);
        assert_eq!(
            changed
                .runtimes
                .get("hermes")
                .and_then(|r| r.repository.clone()),
            Some(Repository::parse("r.example/other").expect("repository"))
        );
        // The same state in another order gives the same tag.
        let reordered = snapshot(
            vec![
                pin("hermes", "global", 4),
                pin("codex", "global", 1),
                pin("codex", "eu-west-1", 3),
            ],
            vec![
                runtime("hermes", "r.example/other"),
                runtime("codex", "r.example/codex"),
            ],
        );
        assert_eq!(reordered.content_tag, afresh.content_tag);
    }

    #[test]
    fn answers_survive_writes_to_other_templates_only() {
        let view = snapshot(
            vec![pin("codex", "global", 1), pin("hermes", "global", 2)],
            vec![
                runtime("codex", "r.example/codex"),
                runtime("hermes", "r.example/hermes"),
            ],
        );
        assert_eq!(
            ask(&view, "codex", "global", "codex-1").as_deref(),
            Some(&b"codex-1"[..])
        );
        assert_eq!(
            ask(&view, "codex", "eu", "codex-eu-1").as_deref(),
            Some(&b"codex-eu-1"[..])
        );
        assert_eq!(
            ask(&view, "hermes", "global", "hermes-2").as_deref(),
            Some(&b"hermes-2"[..])
        );
        // Kept: asking again does not make a new answer.
        assert_eq!(
            ask(&view, "codex", "eu", "other").as_deref(),
            Some(&b"codex-eu-1"[..])
        );

        let next = view.with_changes(vec![pin("hermes", "global", 3)], Vec::new());
        assert_eq!(
            ask(&next, "codex", "global", "x").as_deref(),
            Some(&b"codex-1"[..])
        );
        assert_eq!(
            ask(&next, "codex", "eu", "x").as_deref(),
            Some(&b"codex-eu-1"[..])
        );
        assert_eq!(
            ask(&next, "hermes", "global", "hermes-3").as_deref(),
            Some(&b"hermes-3"[..])
        );

        // A region of its own replaces the fallback answer.
        let own = next.with_changes(vec![pin("codex", "eu", 4)], Vec::new());
        assert_eq!(
            ask(&own, "codex", "eu", "codex-eu-4").as_deref(),
            Some(&b"codex-eu-4"[..])
        );
        assert_eq!(own.resolve_pin("codex", "eu").map(|p| p.revision), Some(4));

        // A catalog change (the image_ref) drops that template's answers.
        let moved = own.with_changes(Vec::new(), vec![runtime("codex", "r.example/moved")]);
        assert_eq!(
            ask(&moved, "codex", "global", "codex-moved").as_deref(),
            Some(&b"codex-moved"[..])
        );
        assert_eq!(
            ask(&moved, "hermes", "global", "x").as_deref(),
            Some(&b"hermes-3"[..])
        );

        assert_eq!(ask(&moved, "nothing", "global", "x"), None);
        let unpinned_global = snapshot(vec![pin("codex", "eu", 1)], Vec::new());
        assert_eq!(ask(&unpinned_global, "codex", "us", "x"), None);
        assert_eq!(
            unpinned_global
                .resolve_pin("codex", "us")
                .map(|p| p.revision),
            None
        );
    }

    #[test]
    fn fallback_answers_are_bounded_and_given_back_when_views_go() {
        let view = snapshot(vec![pin("codex", "global", 1)], Vec::new());
        for n in 0..MAX_FALLBACKS + 10 {
            let region = format!("r-{n}");
            assert!(ask(&view, "codex", &region, &region).is_some());
        }
        assert_eq!(view.fallbacks.load(Ordering::Relaxed), MAX_FALLBACKS);
        // Past the bound, answers are made each time, not kept.
        let past = format!("r-{}", MAX_FALLBACKS + 5);
        assert_eq!(
            ask(&view, "codex", &past, "again").as_deref(),
            Some(&b"again"[..])
        );
        let counter = view.fallbacks.clone();
        let next = view.with_changes(vec![pin("codex", "global", 2)], Vec::new());
        drop(view);
        assert_eq!(
            counter.load(Ordering::Relaxed),
            0,
            "the replaced template gave its answers back"
        );
        assert!(ask(&next, "codex", "r-1", "fresh").is_some());
        assert_eq!(counter.load(Ordering::Relaxed), 1);
    }
}
