//! What instances actually run, as this server knows it.
//!
//! Reports are soft state, kept in memory and written to the database in
//! batches: a report is answered as soon as it is in memory, and the
//! flusher writes what changed once a second (a crash loses at most that
//! second; the instances come back with their next heartbeat). On
//! PostgreSQL each replica also reads, every two seconds, what the others
//! wrote, so every replica counts every replica's reports.
//!
//! A summary per pin (the counts of the instances it governs, their state,
//! the digests they run) is made from memory a few times a second and
//! served from there: answering never walks the fleet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use pinion_core::{Convergence, Digest, FleetCounts, InstanceId, Region, TemplateName, converge};
use pinion_store::{FleetTransition, InstanceRecord};
use time::OffsetDateTime;

use crate::state::AppState;
use crate::view::View;

/// How often the summary is made while reports come in (and at least once
/// a second, as instances go silent).
const SUMMARY_EVERY: Duration = Duration::from_millis(250);
/// How often what changed is written to the database: the most reports a
/// crash can lose.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often a replica reads what the others wrote (PostgreSQL).
const POLL_EVERY: Duration = Duration::from_secs(2);
/// How far back each poll looks again, for writes that committed late.
const POLL_OVERLAP_MS: i64 = 10_000;
/// An instance silent this long past its time to live is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the "a server is taking reports" mark is written.
const ALIVE_EVERY_MS: i64 = 10_000;

/// One reported instance.
#[derive(Debug, Clone)]
pub struct Report {
    pub id: InstanceId,
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub healthy: Option<bool>,
}

/// Where an instance stands against the pin that governs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InstanceState {
    Current,
    Behind,
    Unknown,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Current => "current",
            InstanceState::Behind => "behind",
            InstanceState::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<InstanceState> {
        match text {
            "current" => Some(InstanceState::Current),
            "behind" => Some(InstanceState::Behind),
            "unknown" => Some(InstanceState::Unknown),
            _ => None,
        }
    }
}

/// One pin's fleet.
#[derive(Debug, Clone)]
pub struct PinFleet {
    pub template: TemplateName,
    pub region: Region,
    pub digest: Digest,
    pub revision: i64,
    pub counts: FleetCounts,
    /// When the instance behind this pin the longest began to be (ms).
    pub behind_since_ms: Option<i64>,
    pub state: Convergence,
    /// The digests live instances run, with how many run each.
    pub digests: Vec<(Digest, u64)>,
    /// Live instances that said whether they are healthy, by ring: the
    /// pin's digest and the others. `(reported, unhealthy)`.
    pub health: (u64, u64),
}

/// The fleet per pin.
#[derive(Debug, Default)]
pub struct Summary {
    /// By template, then region: the contract's order.
    pub pins: BTreeMap<(TemplateName, Region), PinFleet>,
}

struct Memory {
    instances: HashMap<InstanceId, InstanceRecord>,
    /// Changed since the last flush (deleted ones as tombstones).
    dirty: HashSet<InstanceId>,
    tombstones: HashMap<InstanceId, InstanceRecord>,
    /// Bumped by every change: the summary is made again when it moved.
    generation: u64,
}

pub struct Fleet {
    memory: Mutex<Memory>,
    summary: RwLock<Arc<Summary>>,
    /// When this server started, Unix ms.
    started_ms: i64,
    /// When a server last took reports before this one started: instances
    /// live then get a time to live's grace from this start.
    alive_before_ms: i64,
    progress_deadline: Duration,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    unix_ms(OffsetDateTime::now_utc())
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl Fleet {
    /// The fleet as the database holds it, at start-up.
    pub fn new(
        stored: Vec<InstanceRecord>,
        alive_before_ms: i64,
        progress_deadline: Duration,
    ) -> Fleet {
        let instances = stored
            .into_iter()
            .map(|record| (record.id.clone(), record))
            .collect();
        Fleet {
            memory: Mutex::new(Memory {
                instances,
                dirty: HashSet::new(),
                tombstones: HashMap::new(),
                generation: 1,
            }),
            summary: RwLock::new(Arc::new(Summary::default())),
            started_ms: now_ms(),
            alive_before_ms,
            progress_deadline,
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Until when an instance counts as live. After a restart, an instance
    /// that was live when reports last came in keeps a time to live from
    /// the start: missed heartbeats are not silence.
    fn expires_ms(&self, record: &InstanceRecord) -> i64 {
        let ttl = record.ttl_seconds.saturating_mul(1000);
        let expires = record.last_seen_ms.saturating_add(ttl);
        if record.last_seen_ms < self.started_ms && expires >= self.alive_before_ms {
            expires.max(self.started_ms.saturating_add(ttl))
        } else {
            expires
        }
    }

    /// Takes a batch of reports, all of them already valid.
    pub fn report(&self, reports: Vec<Report>, ttl_seconds: i64) {
        let now = now_ms();
        let mut memory = self.memory();
        for report in reports {
            let record = match memory.instances.get(&report.id) {
                Some(before) => InstanceRecord {
                    digest_since_ms: if before.digest == report.digest {
                        before.digest_since_ms
                    } else {
                        now
                    },
                    first_seen_ms: before.first_seen_ms,
                    ..new_record(&report, ttl_seconds, now)
                },
                None => new_record(&report, ttl_seconds, now),
            };
            memory.tombstones.remove(&record.id);
            memory.dirty.insert(record.id.clone());
            memory.instances.insert(record.id.clone(), record);
        }
        memory.generation += 1;
    }

    /// The instance, if this server knows it (for a restricted token's
    /// check before a delete).
    pub fn get(&self, id: &InstanceId) -> Option<InstanceRecord> {
        self.memory().instances.get(id).cloned()
    }

    /// Removes an instance; it goes to the database as a tombstone with the
    /// next flush, so every replica learns of it. False if unknown here.
    pub fn delete(&self, id: &InstanceId, known: Option<InstanceRecord>) -> bool {
        let now = now_ms();
        let mut memory = self.memory();
        if memory.tombstones.contains_key(id) {
            // Deleted here already; the tombstone is on its way.
            return false;
        }
        let Some(mut record) = memory.instances.remove(id).or(known) else {
            return false;
        };
        record.deleted = true;
        record.updated_ms = now;
        memory.dirty.insert(id.clone());
        memory.tombstones.insert(id.clone(), record);
        memory.generation += 1;
        true
    }

    /// What changed since the last flush, taken for writing.
    pub fn take_dirty(&self) -> Vec<InstanceRecord> {
        let mut memory = self.memory();
        let dirty: Vec<InstanceId> = memory.dirty.drain().collect();
        dirty
            .into_iter()
            .filter_map(|id| {
                memory
                    .instances
                    .get(&id)
                    .cloned()
                    .or_else(|| memory.tombstones.remove(&id))
            })
            .collect()
    }

    /// Puts rows a failed flush did not write back, to be written next time.
    pub fn restore_dirty(&self, rows: Vec<InstanceRecord>) {
        let mut memory = self.memory();
        for row in rows {
            memory.dirty.insert(row.id.clone());
            if row.deleted {
                memory.tombstones.insert(row.id.clone(), row);
            }
        }
    }

    /// Merges rows another replica wrote: a newer report replaces this
    /// server's, a newer tombstone removes it.
    pub fn merge(&self, rows: Vec<InstanceRecord>) {
        let mut memory = self.memory();
        let mut changed = false;
        for row in rows {
            let newer = memory
                .instances
                .get(&row.id)
                .is_none_or(|known| row.updated_ms > known.updated_ms);
            if !newer || memory.dirty.contains(&row.id) {
                continue;
            }
            changed = true;
            if row.deleted {
                memory.instances.remove(&row.id);
            } else {
                memory.instances.insert(row.id.clone(), row);
            }
        }
        if changed {
            memory.generation += 1;
        }
    }

    /// Forgets instances silent for [`FORGET_AFTER`] past their time to live.
    pub fn forget(&self, before_ms: i64) {
        let mut memory = self.memory();
        let before = memory.instances.len();
        memory.instances.retain(|_, record| {
            record
                .last_seen_ms
                .saturating_add(record.ttl_seconds.saturating_mul(1000))
                >= before_ms
        });
        if memory.instances.len() != before {
            memory.generation += 1;
        }
    }

    pub fn summary(&self) -> Arc<Summary> {
        self.summary
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The state of one instance against the pin that governs it (`None`:
    /// no pin governs it).
    pub fn state_of(
        &self,
        record: &InstanceRecord,
        view: &View,
        now: i64,
    ) -> Option<(InstanceState, Region)> {
        let pin = view.resolve_pin(record.template.as_str(), record.region.as_str())?;
        let state = if now > self.expires_ms(record) {
            InstanceState::Unknown
        } else if record.digest == pin.digest {
            InstanceState::Current
        } else {
            InstanceState::Behind
        };
        Some((state, pin.region.clone()))
    }

    /// Every instance a token may see, with its state, for the instance
    /// list; sorted by id.
    pub fn instances(
        &self,
        view: &View,
        wanted: impl Fn(&InstanceRecord, InstanceState, &Region) -> bool,
    ) -> Vec<(InstanceRecord, InstanceState)> {
        let now = now_ms();
        let memory = self.memory();
        let mut found: Vec<(InstanceRecord, InstanceState)> = memory
            .instances
            .values()
            .filter_map(|record| {
                let (state, governing) = self.state_of(record, view, now)?;
                wanted(record, state, &governing).then(|| (record.clone(), state))
            })
            .collect();
        found.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        found
    }

    /// Makes the summary afresh from memory and the view; returns the pins
    /// whose state changed since the last summary.
    fn summarise(&self, view: &View) -> Vec<PinFleet> {
        let now = now_ms();
        let mut pins: BTreeMap<(TemplateName, Region), PinFleet> = BTreeMap::new();
        let mut digests: HashMap<(TemplateName, Region), HashMap<Digest, u64>> = HashMap::new();
        for pin in view.pins() {
            pins.insert(
                (pin.template.clone(), pin.region.clone()),
                PinFleet {
                    template: pin.template.clone(),
                    region: pin.region.clone(),
                    digest: pin.digest.clone(),
                    revision: pin.revision,
                    counts: FleetCounts::default(),
                    behind_since_ms: None,
                    state: Convergence::Empty,
                    digests: Vec::new(),
                    health: (0, 0),
                },
            );
        }
        {
            let memory = self.memory();
            for record in memory.instances.values() {
                let Some(pin) = view.resolve_pin(record.template.as_str(), record.region.as_str())
                else {
                    continue;
                };
                let key = (pin.template.clone(), pin.region.clone());
                let Some(entry) = pins.get_mut(&key) else {
                    continue;
                };
                if now > self.expires_ms(record) {
                    entry.counts.unknown += 1;
                    continue;
                }
                *digests
                    .entry(key)
                    .or_default()
                    .entry(record.digest.clone())
                    .or_default() += 1;
                if record.digest == pin.digest {
                    entry.counts.current += 1;
                } else {
                    entry.counts.behind += 1;
                    let promoted = unix_ms(pin.promoted_at);
                    let since = record.digest_since_ms.max(promoted);
                    entry.behind_since_ms = Some(
                        entry
                            .behind_since_ms
                            .map_or(since, |known| known.min(since)),
                    );
                }
                if let Some(healthy) = record.healthy {
                    entry.health.0 += 1;
                    entry.health.1 += u64::from(!healthy);
                }
            }
        }
        for ((template, region), entry) in pins.iter_mut() {
            let promoted_ms = view
                .resolve_pin(template.as_str(), region.as_str())
                .map_or(now, |pin| unix_ms(pin.promoted_at));
            let since_moved =
                Duration::from_millis(u64::try_from(now.saturating_sub(promoted_ms)).unwrap_or(0));
            entry.state = converge(entry.counts, since_moved, self.progress_deadline);
            if let Some(running) = digests.remove(&(template.clone(), region.clone())) {
                let mut running: Vec<(Digest, u64)> = running.into_iter().collect();
                running.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                entry.digests = running;
            }
        }
        let previous = self.summary();
        let changed = pins
            .values()
            .filter(|entry| {
                previous
                    .pins
                    .get(&(entry.template.clone(), entry.region.clone()))
                    .is_none_or(|before| {
                        before.state != entry.state || before.revision != entry.revision
                    })
            })
            .cloned()
            .collect();
        *self.summary.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Summary { pins });
        changed
    }
}

fn new_record(report: &Report, ttl_seconds: i64, now: i64) -> InstanceRecord {
    InstanceRecord {
        id: report.id.clone(),
        template: report.template.clone(),
        region: report.region.clone(),
        digest: report.digest.clone(),
        healthy: report.healthy,
        ttl_seconds,
        first_seen_ms: now,
        last_seen_ms: now,
        digest_since_ms: now,
        deleted: false,
        updated_ms: now,
    }
}

/// Makes the summary whenever reports changed (at most every
/// [`SUMMARY_EVERY`]) and at least once a second; records pins entering
/// `converged` or `stalled` in the change feed.
pub async fn summarise(state: AppState) {
    let mut seen_generation = 0;
    let mut last = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(SUMMARY_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let fleet = state.fleet();
        let generation = fleet.memory().generation;
        if generation == seen_generation && last.elapsed() < Duration::from_secs(1) {
            continue;
        }
        seen_generation = generation;
        last = tokio::time::Instant::now();
        let view = state.view();
        let changed = fleet.summarise(&view);
        let at = OffsetDateTime::now_utc();
        let transitions: Vec<FleetTransition> = changed
            .into_iter()
            .filter(|entry| matches!(entry.state, Convergence::Converged | Convergence::Stalled))
            .map(|entry| FleetTransition {
                template: entry.template,
                region: entry.region,
                digest: entry.digest,
                revision: entry.revision,
                state: entry.state,
                counts: entry.counts,
                at,
            })
            .collect();
        if !transitions.is_empty() {
            if let Err(err) = state.record_fleet_transitions(transitions).await {
                tracing::warn!(
                    code = err.code.as_str(),
                    "could not record fleet states in the change feed"
                );
            }
        }
    }
}

/// Writes what changed once a second; marks the fleet alive every ten;
/// forgets the long silent once a minute.
pub async fn flush(state: AppState) {
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut marked = 0i64;
    let mut forgotten = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        flush_once(&state, &mut marked).await;
        if forgotten.elapsed() >= Duration::from_secs(60) {
            forgotten = tokio::time::Instant::now();
            let before = now_ms() - i64::try_from(FORGET_AFTER.as_millis()).unwrap_or(i64::MAX);
            state.fleet().forget(before);
            if let Err(err) = state.forget_instances(before).await {
                tracing::warn!(
                    code = err.code.as_str(),
                    "could not forget silent instances"
                );
            }
        }
    }
}

/// One flush (also made when the server stops).
pub async fn flush_once(state: &AppState, marked: &mut i64) {
    let rows = state.fleet().take_dirty();
    let now = now_ms();
    let mark = now - *marked >= ALIVE_EVERY_MS;
    if rows.is_empty() && !mark {
        return;
    }
    match state
        .flush_instances(rows.clone(), mark.then_some(now))
        .await
    {
        Ok(()) => {
            if mark {
                *marked = now;
            }
        }
        Err(err) => {
            tracing::warn!(
                code = err.code.as_str(),
                rows = rows.len(),
                "could not write fleet reports; trying again"
            );
            state.fleet().restore_dirty(rows);
        }
    }
}

/// Reads what other replicas wrote (PostgreSQL).
pub async fn poll(state: AppState) {
    let mut since = now_ms();
    let mut ticker = tokio::time::interval(POLL_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let from = since - POLL_OVERLAP_MS;
        let started = now_ms();
        match state.instances_changed_since(from).await {
            Ok(rows) => {
                state.fleet().merge(rows);
                since = started;
            }
            Err(err) => tracing::warn!(
                code = err.code.as_str(),
                "could not read other replicas' fleet reports"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, digest: u8) -> Report {
        Report {
            id: InstanceId::parse(id).unwrap(),
            template: TemplateName::parse("codex").unwrap(),
            region: Region::parse("eu").unwrap(),
            digest: Digest::from_sha256(&[digest; 32]),
            healthy: None,
        }
    }

    #[test]
    fn a_changed_digest_restarts_its_clock_and_deletes_become_tombstones() {
        let fleet = Fleet::new(Vec::new(), 0, Duration::from_secs(600));
        fleet.report(vec![report("a", 1), report("b", 1)], 60);
        let first = fleet.get(&InstanceId::parse("a").unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        fleet.report(vec![report("a", 1)], 60);
        let same = fleet.get(&InstanceId::parse("a").unwrap()).unwrap();
        assert_eq!(same.digest_since_ms, first.digest_since_ms);
        assert!(same.last_seen_ms > first.last_seen_ms);
        fleet.report(vec![report("a", 2)], 60);
        let moved = fleet.get(&InstanceId::parse("a").unwrap()).unwrap();
        assert!(moved.digest_since_ms > first.digest_since_ms);
        assert_eq!(moved.first_seen_ms, first.first_seen_ms);
        assert_eq!(fleet.take_dirty().len(), 2);
        assert!(fleet.take_dirty().is_empty());
        assert!(fleet.delete(&InstanceId::parse("b").unwrap(), None));
        assert!(!fleet.delete(&InstanceId::parse("b").unwrap(), None));
        let tombstones = fleet.take_dirty();
        assert_eq!(tombstones.len(), 1);
        assert!(tombstones[0].deleted);
    }

    #[test]
    fn after_a_restart_the_live_get_a_time_to_live_of_grace_and_the_silent_do_not() {
        let now = now_ms();
        let stored = |id: &str, last_seen_ms: i64| InstanceRecord {
            id: InstanceId::parse(id).unwrap(),
            template: TemplateName::parse("codex").unwrap(),
            region: Region::global(),
            digest: Digest::from_sha256(&[1; 32]),
            healthy: None,
            ttl_seconds: 60,
            first_seen_ms: last_seen_ms,
            last_seen_ms,
            digest_since_ms: last_seen_ms,
            deleted: false,
            updated_ms: last_seen_ms,
        };
        // Reports last came in 5 minutes ago.
        let alive_before = now - 300_000;
        let fleet = Fleet::new(Vec::new(), alive_before, Duration::from_secs(600));
        let was_live = stored("live", alive_before - 10_000);
        let long_silent = stored("silent", alive_before - 3_600_000);
        assert!(
            fleet.expires_ms(&was_live) >= now + 59_000,
            "a TTL from the start"
        );
        assert!(fleet.expires_ms(&long_silent) < now, "already unknown");
    }
}
