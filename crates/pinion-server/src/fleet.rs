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

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use pinion_api::{FleetCanary, FleetEntry, RunningDigest};
use pinion_core::{
    CanaryHealth, Convergence, Digest, FleetCounts, HealthCounts, HealthRule, InstanceId, Percent,
    Region, Ring, TemplateName, bucket, converge, judge_canary, ring,
};
use pinion_core::{HoldReason, TokenName};
use pinion_store::{
    AbortCause, AbortOutcome, CanaryAbort, CanaryFigures, FleetTransition, InstanceRecord,
    PinRecord,
};
use time::OffsetDateTime;

use crate::state::AppState;
use crate::view::View;

/// How often the summary is made while reports come in or pins move (and
/// when an instance's time to live or a pin's progress deadline runs out).
const SUMMARY_EVERY: Duration = Duration::from_millis(250);
/// The longest a summary stands with nothing seen to change.
const SUMMARY_AT_LEAST: Duration = Duration::from_secs(10);
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
    /// Live instances that said whether they are healthy:
    /// `(reported, unhealthy)`.
    pub health: (u64, u64),
    /// The pin's canary, what the instances on each digest say of their
    /// health, and what the health rule makes of it.
    pub canary: Option<CanaryFleet>,
    /// The entry as `GET /cp/fleet` words it, rendered once per summary.
    pub json: String,
}

/// A canary's side of a pin's fleet.
#[derive(Debug, Clone)]
pub struct CanaryFleet {
    pub digest: Digest,
    pub percent: Percent,
    /// Live instances running the canary's digest.
    pub canary: HealthCounts,
    /// Live instances running the pin's digest.
    pub stable: HealthCounts,
    pub health: CanaryHealth,
    pub rule: Option<HealthRule>,
}

/// The fleet per pin.
#[derive(Debug, Default)]
pub struct Summary {
    /// By template, then region: the contract's order.
    pub pins: BTreeMap<(TemplateName, Region), PinFleet>,
}

/// Instances live in shards, each behind its own lock, so that walking the
/// fleet (the summary, the instance list) holds any one lock for a
/// sixty-fourth of the walk and a report never waits for a whole walk.
const SHARDS: usize = 64;
/// How long a deleted instance's tombstone is kept after it is written, so
/// that a poll reading the row from before the delete cannot bring the
/// instance back.
const TOMBSTONE_KEEP_MS: i64 = 60_000;

/// Where an instance runs: shared by every instance of the place, so that a
/// walk reads one copy and resolves each place once.
#[derive(Debug, PartialEq, Eq)]
pub struct Place {
    pub template: TemplateName,
    pub region: Region,
}

/// One live instance as memory holds it. The place and the digest are
/// shared with the other instances that have them.
#[derive(Debug, Clone)]
pub struct Live {
    pub place: Arc<Place>,
    /// The instance's canary bucket (0..100), from its template and id.
    pub bucket: u8,
    pub digest: Arc<Digest>,
    pub healthy: Option<bool>,
    pub ttl_seconds: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub digest_since_ms: i64,
    pub updated_ms: i64,
    /// The token that last reported it (shared with its other instances).
    pub reporter: Option<Arc<TokenName>>,
}

impl Live {
    fn record(&self, id: &InstanceId) -> InstanceRecord {
        InstanceRecord {
            id: id.clone(),
            template: self.place.template.clone(),
            region: self.place.region.clone(),
            digest: Digest::clone(&self.digest),
            healthy: self.healthy,
            ttl_seconds: self.ttl_seconds,
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
            digest_since_ms: self.digest_since_ms,
            deleted: false,
            updated_ms: self.updated_ms,
            reporter: self.reporter.as_deref().cloned(),
        }
    }
}

#[derive(Default)]
struct Shard {
    instances: HashMap<InstanceId, Live>,
    /// Changed since the last flush (deleted ones as tombstones).
    dirty: HashSet<InstanceId>,
    tombstones: HashMap<InstanceId, InstanceRecord>,
}

/// The places and digests instances share.
#[derive(Default)]
struct Interned {
    places: HashMap<TemplateName, HashMap<Region, Arc<Place>>>,
    digests: HashMap<Digest, Arc<Digest>>,
    reporters: HashMap<TokenName, Arc<TokenName>>,
}

impl Interned {
    fn place(&mut self, template: &TemplateName, region: &Region) -> Arc<Place> {
        if let Some(place) = self
            .places
            .get(template)
            .and_then(|regions| regions.get(region))
        {
            return place.clone();
        }
        let place = Arc::new(Place {
            template: template.clone(),
            region: region.clone(),
        });
        self.places
            .entry(template.clone())
            .or_default()
            .insert(region.clone(), place.clone());
        place
    }

    fn digest(&mut self, digest: &Digest) -> Arc<Digest> {
        if let Some(shared) = self.digests.get(digest) {
            return shared.clone();
        }
        let shared = Arc::new(digest.clone());
        self.digests.insert(digest.clone(), shared.clone());
        shared
    }

    fn reporter(&mut self, token: &TokenName) -> Arc<TokenName> {
        if let Some(shared) = self.reporters.get(token) {
            return shared.clone();
        }
        let shared = Arc::new(token.clone());
        self.reporters.insert(token.clone(), shared.clone());
        shared
    }

    /// Drops what no instance shares any more.
    fn prune(&mut self) {
        for regions in self.places.values_mut() {
            regions.retain(|_, place| Arc::strong_count(place) > 1);
        }
        self.places.retain(|_, regions| !regions.is_empty());
        self.digests
            .retain(|_, digest| Arc::strong_count(digest) > 1);
        self.reporters
            .retain(|_, reporter| Arc::strong_count(reporter) > 1);
    }

    fn live(&mut self, record: &InstanceRecord) -> Live {
        Live {
            place: self.place(&record.template, &record.region),
            bucket: bucket(&record.template, &record.id),
            digest: self.digest(&record.digest),
            healthy: record.healthy,
            ttl_seconds: record.ttl_seconds,
            first_seen_ms: record.first_seen_ms,
            last_seen_ms: record.last_seen_ms,
            digest_since_ms: record.digest_since_ms,
            updated_ms: record.updated_ms,
            reporter: record.reporter.as_ref().map(|token| self.reporter(token)),
        }
    }
}

pub struct Fleet {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    interned: Mutex<Interned>,
    /// Bumped by every change: the summary is made again when it moved.
    generation: AtomicU64,
    summary: RwLock<Arc<Summary>>,
    /// When this server started, Unix ms.
    started_ms: i64,
    /// When a server last took reports before this one started: instances
    /// live then get a time to live's grace from this start.
    alive_before_ms: i64,
    progress_deadline: Duration,
    /// `--canary-max-unhealthy` and `--canary-min-reports`, when set.
    canary_rule: Option<HealthRule>,
    /// How many instances memory holds (live and silent, not forgotten),
    /// in total and per reporting token: what the caps are checked on.
    counts: Mutex<Counts>,
    limits: FleetLimits,
}

/// The fleet's caps (`--fleet-max-instances`,
/// `--fleet-max-instances-per-token`).
#[derive(Debug, Clone, Copy)]
pub struct FleetLimits {
    pub total: usize,
    pub per_token: Option<usize>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_token: HashMap<Arc<TokenName>, usize>,
}

impl Counts {
    fn add(&mut self, live: &Live) {
        self.total += 1;
        if let Some(token) = &live.reporter {
            *self.by_token.entry(token.clone()).or_default() += 1;
        }
    }

    /// A known instance reported again: only a change of reporter moves
    /// it between tokens' counts (a heartbeat touches no map).
    fn moved(&mut self, before: &Live, after: &Live) {
        let same = match (&before.reporter, &after.reporter) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.remove(before);
            self.add(after);
        }
    }

    fn remove(&mut self, live: &Live) {
        self.total = self.total.saturating_sub(1);
        if let Some(token) = &live.reporter {
            if let Some(count) = self.by_token.get_mut(token) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.by_token.remove(token);
                }
            }
        }
    }
}

/// A report that would take the fleet past one of its caps; nothing of it
/// was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetFull {
    /// Instances the report would have added.
    pub new: usize,
    /// Which cap: the whole fleet's, or the reporting token's.
    pub per_token: bool,
    pub limit: usize,
    pub held: usize,
}

pub use crate::clock::now_ms;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts for one pin while the summary is made.
#[derive(Default)]
struct Tally {
    counts: FleetCounts,
    behind_since_ms: Option<i64>,
    /// The digests of the instances behind (those current run the pin's).
    digests: HashMap<Arc<Digest>, u64>,
    health: (u64, u64),
    /// Current instances in the canary ring (they run the canary's digest).
    current_canary: u64,
    /// Live instances on the canary's digest and on the pin's.
    canary: HealthCounts,
    stable: HealthCounts,
}

impl Fleet {
    /// The fleet as the database holds it, at start-up.
    pub fn new(
        stored: Vec<InstanceRecord>,
        alive_before_ms: i64,
        progress_deadline: Duration,
        canary_rule: Option<HealthRule>,
        limits: FleetLimits,
    ) -> Fleet {
        let fleet = Fleet {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            interned: Mutex::default(),
            generation: AtomicU64::new(1),
            summary: RwLock::new(Arc::new(Summary::default())),
            started_ms: now_ms(),
            alive_before_ms,
            progress_deadline,
            canary_rule,
            counts: Mutex::default(),
            limits,
        };
        let mut interned = lock(&fleet.interned);
        let mut counts = lock(&fleet.counts);
        for record in stored {
            let live = interned.live(&record);
            counts.add(&live);
            if let Some(before) = lock(fleet.shard_of(&record.id))
                .instances
                .insert(record.id, live)
            {
                counts.remove(&before);
            }
        }
        drop(counts);
        drop(interned);
        fleet
    }

    fn index_of(&self, id: &InstanceId) -> usize {
        // The remainder is below SHARDS, so the cast loses nothing.
        (self.hasher.hash_one(id) % SHARDS as u64) as usize
    }

    fn shard_of(&self, id: &InstanceId) -> &Mutex<Shard> {
        &self.shards[self.index_of(id)]
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Until when an instance last seen at `last_seen_ms` counts as live.
    /// After a restart, an instance that was live when reports last came in
    /// keeps a time to live from the start: missed heartbeats are not
    /// silence.
    fn expires_ms(&self, last_seen_ms: i64, ttl_seconds: i64) -> i64 {
        let ttl = ttl_seconds.saturating_mul(1000);
        let expires = last_seen_ms.saturating_add(ttl);
        if last_seen_ms < self.started_ms && expires >= self.alive_before_ms {
            expires.max(self.started_ms.saturating_add(ttl))
        } else {
            expires
        }
    }

    /// Takes a batch of reports, all of them already valid, from `reporter`;
    /// or none of them, when the instances it would add take the fleet past
    /// a cap. Instances already known are heartbeats and always fit.
    pub fn report(
        &self,
        reports: Vec<Report>,
        ttl_seconds: i64,
        reporter: &TokenName,
    ) -> Result<(), FleetFull> {
        let now = now_ms();
        // Hashed before any lock is taken.
        let buckets: Vec<u8> = reports
            .iter()
            .map(|report| bucket(&report.template, &report.id))
            .collect();
        let mut sorted: Vec<(usize, Live, Report)> = {
            let mut interned = lock(&self.interned);
            let reporter = interned.reporter(reporter);
            reports
                .into_iter()
                .zip(buckets)
                .map(|(report, bucket)| {
                    let live = Live {
                        place: interned.place(&report.template, &report.region),
                        bucket,
                        digest: interned.digest(&report.digest),
                        healthy: report.healthy,
                        ttl_seconds,
                        first_seen_ms: now,
                        last_seen_ms: now,
                        digest_since_ms: now,
                        updated_ms: now,
                        reporter: Some(reporter.clone()),
                    };
                    (self.index_of(&report.id), live, report)
                })
                .collect()
        };
        sorted.sort_unstable_by_key(|(index, _, _)| *index);
        // Every shard the report touches, locked in ascending order (as
        // every report locks them), so what is new is counted exactly and
        // nothing changes between the count and the write.
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = Vec::new();
        for (index, _, _) in &sorted {
            if guards.last().is_none_or(|(at, _)| at != index) {
                guards.push((*index, lock(&self.shards[*index])));
            }
        }
        let shard_at = |guards: &[(usize, MutexGuard<'_, Shard>)], index: usize| {
            guards
                .binary_search_by_key(&index, |(at, _)| *at)
                .unwrap_or_default()
        };
        let new = sorted
            .iter()
            .filter(|(index, _, report)| {
                !guards[shard_at(&guards, *index)]
                    .1
                    .instances
                    .contains_key(&report.id)
            })
            .count();
        let mut counts = lock(&self.counts);
        if new > 0 {
            let held = counts.total;
            if held.saturating_add(new) > self.limits.total {
                return Err(FleetFull {
                    new,
                    per_token: false,
                    limit: self.limits.total,
                    held,
                });
            }
            if let Some(limit) = self.limits.per_token {
                let held = counts.by_token.get(reporter).copied().unwrap_or_default();
                if held.saturating_add(new) > limit {
                    return Err(FleetFull {
                        new,
                        per_token: true,
                        limit,
                        held,
                    });
                }
            }
        }
        for (index, mut live, report) in sorted {
            let at = shard_at(&guards, index);
            let shard = &mut guards[at].1;
            match shard.instances.get(&report.id) {
                Some(before) => {
                    live.first_seen_ms = before.first_seen_ms;
                    if before.digest == live.digest {
                        live.digest_since_ms = before.digest_since_ms;
                    }
                    counts.moved(before, &live);
                }
                None => counts.add(&live),
            }
            shard.tombstones.remove(&report.id);
            shard.dirty.insert(report.id.clone());
            shard.instances.insert(report.id, live);
        }
        drop(counts);
        drop(guards);
        self.changed();
        Ok(())
    }

    /// How many instances memory holds, and how many each token last
    /// reported (for `/metrics`).
    pub fn held(&self) -> (usize, Vec<(TokenName, usize)>) {
        let counts = lock(&self.counts);
        let mut by_token: Vec<(TokenName, usize)> = counts
            .by_token
            .iter()
            .map(|(token, count)| (TokenName::clone(token), *count))
            .collect();
        by_token.sort();
        (counts.total, by_token)
    }

    /// The instance, if this server knows it (for a restricted token's
    /// check before a delete).
    pub fn get(&self, id: &InstanceId) -> Option<InstanceRecord> {
        lock(self.shard_of(id))
            .instances
            .get(id)
            .map(|live| live.record(id))
    }

    /// Removes an instance; it goes to the database as a tombstone with the
    /// next flush, so every replica learns of it. False if unknown here.
    pub fn delete(&self, id: &InstanceId, known: Option<InstanceRecord>) -> bool {
        let now = now_ms();
        let mut shard = lock(self.shard_of(id));
        if shard.tombstones.contains_key(id) {
            // Deleted here already.
            return false;
        }
        let removed = shard.instances.remove(id);
        if let Some(live) = &removed {
            lock(&self.counts).remove(live);
        }
        let Some(mut record) = removed.map(|live| live.record(id)).or(known) else {
            return false;
        };
        record.deleted = true;
        record.updated_ms = now;
        shard.dirty.insert(id.clone());
        shard.tombstones.insert(id.clone(), record);
        drop(shard);
        self.changed();
        true
    }

    /// What changed since the last flush, taken for writing.
    pub fn take_dirty(&self) -> Vec<InstanceRecord> {
        let mut taken = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let dirty: Vec<InstanceId> = shard.dirty.drain().collect();
            for id in dirty {
                if let Some(live) = shard.instances.get(&id) {
                    taken.push(live.record(&id));
                } else if let Some(tombstone) = shard.tombstones.get(&id) {
                    taken.push(tombstone.clone());
                }
            }
        }
        taken
    }

    /// Marks rows a failed flush did not write as changed again, to be
    /// written next time (what memory holds now is what gets written).
    pub fn restore_dirty(&self, rows: Vec<InstanceRecord>) {
        for row in rows {
            lock(self.shard_of(&row.id)).dirty.insert(row.id);
        }
    }

    /// Merges rows another replica wrote: a newer report replaces this
    /// server's, a newer tombstone removes it.
    pub fn merge(&self, rows: Vec<InstanceRecord>) {
        let mut changed = false;
        for row in rows {
            let mut shard = lock(self.shard_of(&row.id));
            let known = shard
                .instances
                .get(&row.id)
                .map(|live| live.updated_ms)
                .or_else(|| shard.tombstones.get(&row.id).map(|dead| dead.updated_ms));
            if known.is_some_and(|known| row.updated_ms <= known) || shard.dirty.contains(&row.id) {
                continue;
            }
            changed = true;
            if row.deleted {
                if let Some(before) = shard.instances.remove(&row.id) {
                    lock(&self.counts).remove(&before);
                }
                shard.tombstones.insert(row.id.clone(), row);
            } else {
                let live = lock(&self.interned).live(&row);
                shard.tombstones.remove(&row.id);
                let mut counts = lock(&self.counts);
                counts.add(&live);
                if let Some(before) = shard.instances.insert(row.id, live) {
                    counts.remove(&before);
                }
            }
        }
        if changed {
            self.changed();
        }
    }

    /// Drops tombstones written long enough ago that no poll can bring
    /// their instance back.
    pub fn drop_tombstones(&self, now: i64) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let Shard {
                tombstones, dirty, ..
            } = &mut *shard;
            tombstones.retain(|id, dead| {
                dirty.contains(id) || dead.updated_ms.saturating_add(TOMBSTONE_KEEP_MS) >= now
            });
        }
    }

    /// Forgets instances silent for [`FORGET_AFTER`] past their time to live.
    pub fn forget(&self, before_ms: i64) {
        let mut changed = false;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.instances.len();
            let mut counts = lock(&self.counts);
            shard.instances.retain(|_, live| {
                let keep = live
                    .last_seen_ms
                    .saturating_add(live.ttl_seconds.saturating_mul(1000))
                    >= before_ms;
                if !keep {
                    counts.remove(live);
                }
                keep
            });
            drop(counts);
            changed |= shard.instances.len() != before;
        }
        lock(&self.interned).prune();
        if changed {
            self.changed();
        }
    }

    pub fn summary(&self) -> Arc<Summary> {
        self.summary
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn state_against(&self, live: &Live, pin: &PinRecord, now: i64) -> InstanceState {
        if now > self.expires_ms(live.last_seen_ms, live.ttl_seconds) {
            InstanceState::Unknown
        } else if *live.digest == *expected(live, pin) {
            InstanceState::Current
        } else {
            InstanceState::Behind
        }
    }

    /// Calls `visit` with every instance a pin governs, its state and the
    /// governing pin (with its position in [`View::pins`]), one shard at a
    /// time.
    pub fn visit<'v>(
        &self,
        view: &'v View,
        mut visit: impl FnMut(&InstanceId, &Live, InstanceState, Governing<'v>),
    ) {
        let now = now_ms();
        let mut resolver = Resolver::new(view);
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (id, live) in &shard.instances {
                if let Some(governing) = resolver.resolve(&live.place) {
                    visit(
                        id,
                        live,
                        self.state_against(live, governing.pin, now),
                        governing,
                    );
                }
            }
        }
    }

    /// One page of the instances `wanted` keeps: the first `limit` by id
    /// after `after`, with their states and governing regions, and whether
    /// more follow. Only the page's candidates are copied.
    pub fn instances(
        &self,
        view: &View,
        after: Option<&InstanceId>,
        limit: usize,
        wanted: impl Fn(&Live, InstanceState, &Region) -> bool,
    ) -> (Vec<Found>, bool) {
        // The `limit + 1` smallest ids seen so far, largest on top.
        let mut page: BinaryHeap<ById> = BinaryHeap::with_capacity(limit + 2);
        self.visit(view, |id, live, state, governing| {
            if after.is_some_and(|after| id <= after)
                || page.len() > limit && page.peek().is_some_and(|top| *id >= top.id)
                || !wanted(live, state, &governing.pin.region)
            {
                return;
            }
            let since = match state {
                InstanceState::Unknown => self.expires_ms(live.last_seen_ms, live.ttl_seconds),
                InstanceState::Current | InstanceState::Behind => live
                    .digest_since_ms
                    .max(crate::clock::unix_ms(governing.pin.promoted_at)),
            };
            page.push(ById {
                id: id.clone(),
                live: live.clone(),
                state,
                governing: governing.pin.region.clone(),
                since,
            });
            if page.len() > limit + 1 {
                page.pop();
            }
        });
        let mut page: Vec<Found> = page
            .into_sorted_vec()
            .into_iter()
            .map(|found| Found {
                record: found.live.record(&found.id),
                state: found.state,
                governing: found.governing,
                since_ms: found.since,
            })
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    /// Makes the summary afresh from memory and the view; returns the pins
    /// whose state changed since the last summary, and when (Unix ms) the
    /// summary would next change with no report and no pin moved: the first
    /// live instance's time to live running out, or a converging pin's
    /// progress deadline passing.
    fn summarise(&self, view: &View) -> (Vec<PinFleet>, i64) {
        let now = now_ms();
        let deadline_ms = i64::try_from(self.progress_deadline.as_millis()).unwrap_or(i64::MAX);
        let pins: Vec<&PinRecord> = view.pins().collect();
        let mut tallies: Vec<Tally> = pins.iter().map(|_| Tally::default()).collect();
        let mut next_change = i64::MAX;
        self.visit(view, |_, live, state, governing| {
            let Some(tally) = tallies.get_mut(governing.at) else {
                return;
            };
            match state {
                InstanceState::Unknown => {
                    tally.counts.unknown += 1;
                    return;
                }
                InstanceState::Current => {
                    tally.counts.current += 1;
                    if governing
                        .pin
                        .canary
                        .as_ref()
                        .is_some_and(|canary| *live.digest == canary.digest)
                    {
                        tally.current_canary += 1;
                    }
                }
                InstanceState::Behind => {
                    tally.counts.behind += 1;
                    let since = live
                        .digest_since_ms
                        .max(crate::clock::unix_ms(governing.pin.promoted_at));
                    tally.behind_since_ms = Some(
                        tally
                            .behind_since_ms
                            .map_or(since, |known| known.min(since)),
                    );
                    match tally.digests.get_mut(&live.digest) {
                        Some(count) => *count += 1,
                        None => {
                            tally.digests.insert(live.digest.clone(), 1);
                        }
                    }
                }
            }
            let expires = self.expires_ms(live.last_seen_ms, live.ttl_seconds);
            next_change = next_change.min(expires.saturating_add(1));
            if let Some(healthy) = live.healthy {
                tally.health.0 += 1;
                tally.health.1 += u64::from(!healthy);
            }
            if let Some(canary) = &governing.pin.canary {
                // Only instances where the contract's bucket puts them
                // count: a report of made-up ids outside the ring, running
                // the canary's digest, says nothing about the canary.
                let unhealthy = u64::from(live.healthy == Some(false));
                let in_ring = ring(live.bucket, canary.percent) == Ring::Canary;
                let side = if in_ring && *live.digest == canary.digest {
                    Some(&mut tally.canary)
                } else if !in_ring && *live.digest == governing.pin.digest {
                    Some(&mut tally.stable)
                } else {
                    None
                };
                if let Some(side) = side {
                    side.instances += 1;
                    side.unhealthy += unhealthy;
                }
            }
        });
        let summary: BTreeMap<(TemplateName, Region), PinFleet> = pins
            .into_iter()
            .zip(tallies)
            .map(|(pin, tally)| {
                let promoted_ms = crate::clock::unix_ms(pin.promoted_at);
                let since_moved = Duration::from_millis(
                    u64::try_from(now.saturating_sub(promoted_ms)).unwrap_or(0),
                );
                let state = converge(tally.counts, since_moved, self.progress_deadline);
                if state == Convergence::Converging {
                    next_change =
                        next_change.min(promoted_ms.saturating_add(deadline_ms).saturating_add(1));
                }
                let mut running: Vec<(Digest, u64)> = tally
                    .digests
                    .into_iter()
                    .map(|(digest, count)| (Digest::clone(&digest), count))
                    .collect();
                let on_pin = tally.counts.current - tally.current_canary;
                if on_pin > 0 {
                    running.push((pin.digest.clone(), on_pin));
                }
                if let Some(canary) = pin.canary.as_ref().filter(|_| tally.current_canary > 0) {
                    // Instances of the stable ring may run it too (behind).
                    match running
                        .iter_mut()
                        .find(|(digest, _)| *digest == canary.digest)
                    {
                        Some((_, count)) => *count += tally.current_canary,
                        None => running.push((canary.digest.clone(), tally.current_canary)),
                    }
                }
                let canary = pin.canary.as_ref().map(|canary| CanaryFleet {
                    digest: canary.digest.clone(),
                    percent: canary.percent,
                    canary: tally.canary,
                    stable: tally.stable,
                    health: judge_canary(self.canary_rule, tally.canary, tally.stable),
                    rule: self.canary_rule,
                });
                running.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let mut entry = PinFleet {
                    template: pin.template.clone(),
                    region: pin.region.clone(),
                    digest: pin.digest.clone(),
                    revision: pin.revision,
                    counts: tally.counts,
                    behind_since_ms: tally.behind_since_ms,
                    state,
                    digests: running,
                    health: tally.health,
                    canary,
                    json: String::new(),
                };
                entry.json = serde_json::to_string(&entry.to_wire()).unwrap_or_default();
                ((pin.template.clone(), pin.region.clone()), entry)
            })
            .collect();
        let previous = self.summary();
        let changed = summary
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
        *self.summary.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(Summary { pins: summary });
        (changed, next_change)
    }
}

/// An instance of a page of [`Fleet::instances`].
#[derive(Debug)]
pub struct Found {
    pub record: InstanceRecord,
    pub state: InstanceState,
    /// The governing pin's region.
    pub governing: Region,
    /// Since when (Unix ms) it has been in its state.
    pub since_ms: i64,
}

/// An instance of a page, ordered by its id.
struct ById {
    id: InstanceId,
    live: Live,
    state: InstanceState,
    governing: Region,
    /// Since when (Unix ms) it has been in its state.
    since: i64,
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

/// The pin that governs an instance, and its position in [`View::pins`].
#[derive(Clone, Copy)]
pub struct Governing<'v> {
    pub pin: &'v PinRecord,
    pub at: usize,
}

/// Finds the pin governing each place met in a walk, once per place: a
/// walk meets few places, and many instances of each. Places are known by
/// address; holding each one met keeps its address from being reused
/// while the walk lasts.
struct Resolver<'v> {
    view: &'v View,
    /// Pin positions, filled on the first place met.
    positions: HashMap<(&'v str, &'v str), usize>,
    known: HashMap<usize, (Arc<Place>, Option<Governing<'v>>), ByAddress>,
}

impl<'v> Resolver<'v> {
    fn new(view: &'v View) -> Resolver<'v> {
        Resolver {
            view,
            positions: HashMap::new(),
            known: HashMap::default(),
        }
    }

    fn resolve(&mut self, place: &Arc<Place>) -> Option<Governing<'v>> {
        let address = Arc::as_ptr(place) as usize;
        if let Some((_, governing)) = self.known.get(&address) {
            return *governing;
        }
        if self.positions.is_empty() {
            self.positions = self
                .view
                .pins()
                .enumerate()
                .map(|(at, pin)| ((pin.template.as_str(), pin.region.as_str()), at))
                .collect();
        }
        let governing = self
            .view
            .resolve_pin(place.template.as_str(), place.region.as_str())
            .and_then(|pin| {
                let at = *self
                    .positions
                    .get(&(pin.template.as_str(), pin.region.as_str()))?;
                Some(Governing { pin, at })
            });
        self.known.insert(address, (place.clone(), governing));
        governing
    }
}

/// Hashes an address by one multiplication (addresses are unique already;
/// the multiplication spreads their aligned low bits).
#[derive(Default, Clone, Copy)]
struct ByAddress;

impl BuildHasher for ByAddress {
    type Hasher = AddressHasher;

    fn build_hasher(&self) -> AddressHasher {
        AddressHasher(0)
    }
}

struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.0 = (value as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl PinFleet {
    /// The pin's fleet as the contract words it.
    pub fn to_wire(&self) -> FleetEntry {
        FleetEntry {
            template_name: self.template.to_string(),
            region: self.region.to_string(),
            image_digest: self.digest.to_string(),
            current: self.counts.current,
            behind: self.counts.behind,
            unknown: self.counts.unknown,
            converged: self.counts.converged(),
            behind_since: self.behind_since_ms.map(format_ms),
            state: self.state.as_str().to_owned(),
            reported_health: self.health.0,
            unhealthy: self.health.1,
            digests: self
                .digests
                .iter()
                .map(|(digest, instances)| RunningDigest {
                    image_digest: digest.to_string(),
                    instances: *instances,
                })
                .collect(),
            revision: self.revision,
            canary: self.canary.as_ref().map(|canary| FleetCanary {
                image_digest: canary.digest.to_string(),
                percent: canary.percent.get(),
                instances: canary.canary.instances,
                unhealthy: canary.canary.unhealthy,
                stable_instances: canary.stable.instances,
                stable_unhealthy: canary.stable.unhealthy,
                health: canary.health.as_str().to_owned(),
                min_reports: canary.rule.map(|rule| rule.min_reports),
                max_unhealthy_percent: canary.rule.map(|rule| rule.max_unhealthy),
            }),
        }
    }
}

/// The digest an instance's own resolve answers: the canary's for an
/// instance in the canary ring, else the pin's.
fn expected<'p>(live: &Live, pin: &'p PinRecord) -> &'p Digest {
    match &pin.canary {
        Some(canary) if ring(live.bucket, canary.percent) == Ring::Canary => &canary.digest,
        _ => &pin.digest,
    }
}

/// A time in Unix ms as the contract writes times.
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(crate::handlers::format_time)
        .unwrap_or_default()
}

/// Makes the summary whenever reports changed (at most every
/// [`SUMMARY_EVERY`]) and at least once a second; records pins entering
/// `converged` or `stalled` in the change feed.
pub async fn summarise(state: AppState) {
    let mut seen_generation = 0;
    let mut seen_view: Option<Arc<View>> = None;
    let mut next_change = i64::MIN;
    let mut last = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(SUMMARY_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let generation = state.fleet().generation();
        let view = state.view();
        let view_moved = seen_view
            .as_ref()
            .is_none_or(|seen| !Arc::ptr_eq(seen, &view));
        if generation == seen_generation
            && !view_moved
            && now_ms() < next_change
            && last.elapsed() < SUMMARY_AT_LEAST
        {
            continue;
        }
        seen_generation = generation;
        seen_view = Some(view.clone());
        last = tokio::time::Instant::now();
        // Walking the fleet takes milliseconds: off the HTTP workers.
        let walker = state.clone();
        let Ok((changed, next)) =
            tokio::task::spawn_blocking(move || walker.fleet().summarise(&view)).await
        else {
            continue;
        };
        next_change = next;
        abort_unhealthy_canaries(&state).await;
        let at = crate::clock::now();
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

/// Aborts every canary the health rule finds unhealthy, and holds its pin.
/// Each abort names the canary's digest, so a decision made on one canary
/// never aborts the next; replicas that decide the same are answered "no
/// such canary" after the first.
async fn abort_unhealthy_canaries(state: &AppState) {
    let summary = state.fleet().summary();
    for entry in summary.pins.values() {
        let Some(canary) = &entry.canary else {
            continue;
        };
        let (CanaryHealth::Unhealthy { excess }, Some(rule)) = (canary.health, canary.rule) else {
            continue;
        };
        let figures = CanaryFigures {
            canary: canary.canary,
            stable: canary.stable,
            rule,
            excess,
        };
        let reason = format!(
            "canary {} aborted by the health rule: {:.1}% of {} canary instances unhealthy against {:.1}% of {} stable ones (allowed: {} points more)",
            canary.digest.short(),
            canary.canary.unhealthy_percent(),
            canary.canary.instances,
            canary.stable.unhealthy_percent(),
            canary.stable.instances,
            rule.max_unhealthy,
        );
        let Ok(reason) = HoldReason::parse(&reason) else {
            continue;
        };
        let abort = CanaryAbort {
            template: entry.template.clone(),
            region: entry.region.clone(),
            digest: Some(canary.digest.clone()),
            actor: health_actor(),
            at: crate::clock::now(),
            cause: AbortCause::Health(figures),
            hold: Some(reason),
        };
        match state.abort_canary(abort, state.background_deadline()).await {
            Ok(AbortOutcome::Aborted { pin, canary }) => tracing::warn!(
                template = %pin.template,
                region = %pin.region,
                digest = %canary.digest,
                excess,
                "canary aborted by the health rule; the pin is held"
            ),
            Ok(AbortOutcome::NoCanary) => {}
            Err(err) => tracing::warn!(
                code = err.code.as_str(),
                "could not abort an unhealthy canary; trying again"
            ),
        }
    }
}

/// The name the health rule acts under, in events and holds.
fn health_actor() -> TokenName {
    TokenName::parse("canary-health-rule").unwrap_or_else(|_| unreachable!("a valid name"))
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
            state.fleet().drop_tombstones(now);
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

    const UNLIMITED: FleetLimits = FleetLimits {
        total: usize::MAX,
        per_token: None,
    };

    fn reporter() -> TokenName {
        TokenName::parse("provisioner").unwrap()
    }

    fn reports(prefix: &str, count: usize) -> Vec<Report> {
        (0..count)
            .map(|n| report(&format!("{prefix}-{n}"), 1))
            .collect()
    }

    #[test]
    fn reports_past_a_cap_are_refused_whole_and_heartbeats_always_fit() {
        let limits = FleetLimits {
            total: 10,
            per_token: Some(6),
        };
        let fleet = Fleet::new(Vec::new(), 0, Duration::from_secs(600), None, limits);
        let a = TokenName::parse("a").unwrap();
        let b = TokenName::parse("b").unwrap();
        fleet.report(reports("a", 6), 60, &a).unwrap();
        // One more from `a` passes its own cap: nothing of the report is kept.
        let refused = fleet.report(reports("a2", 1), 60, &a).unwrap_err();
        assert!(refused.per_token);
        assert_eq!((refused.limit, refused.held, refused.new), (6, 6, 1));
        assert!(fleet.get(&InstanceId::parse("a2-0").unwrap()).is_none());
        // Its instances' heartbeats still fit.
        fleet.report(reports("a", 6), 60, &a).unwrap();
        fleet.report(reports("b", 4), 60, &b).unwrap();
        // The total is reached: a report of 2 new and 1 known is refused whole.
        let mut mixed = reports("b", 1);
        mixed.extend(reports("b2", 2));
        let refused = fleet.report(mixed, 60, &b).unwrap_err();
        assert!(!refused.per_token);
        assert_eq!((refused.limit, refused.held, refused.new), (10, 10, 2));
        assert!(fleet.get(&InstanceId::parse("b2-0").unwrap()).is_none());
        assert_eq!(fleet.take_dirty().len(), 10);
        // A delete makes room; counts follow the instances.
        assert!(fleet.delete(&InstanceId::parse("b-0").unwrap(), None));
        fleet.report(reports("c", 1), 60, &b).unwrap();
        let (total, by_token) = fleet.held();
        assert_eq!(total, 10);
        assert_eq!(by_token, vec![(a.clone(), 6), (b.clone(), 4)]);
        // An instance reported by another token moves to that token's count.
        fleet.report(reports("a", 1), 60, &b).unwrap();
        assert_eq!(fleet.held().1, vec![(a, 5), (b, 5)]);
        // Forgetting frees room too.
        fleet.forget(i64::MAX);
        assert_eq!(fleet.held(), (0, Vec::new()));
    }

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
        let fleet = Fleet::new(Vec::new(), 0, Duration::from_secs(600), None, UNLIMITED);
        fleet
            .report(vec![report("a", 1), report("b", 1)], 60, &reporter())
            .unwrap();
        let first = fleet.get(&InstanceId::parse("a").unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        fleet.report(vec![report("a", 1)], 60, &reporter()).unwrap();
        let same = fleet.get(&InstanceId::parse("a").unwrap()).unwrap();
        assert_eq!(same.digest_since_ms, first.digest_since_ms);
        assert!(same.last_seen_ms > first.last_seen_ms);
        fleet.report(vec![report("a", 2)], 60, &reporter()).unwrap();
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
    fn a_poll_that_read_a_row_from_before_a_delete_does_not_bring_it_back() {
        let fleet = Fleet::new(Vec::new(), 0, Duration::from_secs(600), None, UNLIMITED);
        let id = InstanceId::parse("a").unwrap();
        fleet.report(vec![report("a", 1)], 60, &reporter()).unwrap();
        let written = fleet.take_dirty();
        assert_eq!(written.len(), 1);
        std::thread::sleep(Duration::from_millis(2));
        assert!(fleet.delete(&id, None));
        // The poll read the row as written before the delete: before the
        // tombstone is flushed, and after.
        fleet.merge(written.clone());
        assert!(fleet.get(&id).is_none());
        let tombstones = fleet.take_dirty();
        assert!(tombstones[0].deleted);
        fleet.merge(written.clone());
        assert!(fleet.get(&id).is_none(), "the tombstone outlives the poll");
        assert!(!fleet.delete(&id, None), "deleted already");
        // Kept a minute after it was written, then dropped.
        fleet.drop_tombstones(now_ms());
        fleet.merge(written.clone());
        assert!(fleet.get(&id).is_none());
        fleet.drop_tombstones(now_ms() + TOMBSTONE_KEEP_MS + 1);
        // A newer report from another replica brings it back.
        let mut newer = written[0].clone();
        newer.updated_ms = now_ms() + 1;
        fleet.merge(vec![newer]);
        assert!(fleet.get(&id).is_some());
    }

    #[test]
    fn pages_of_instances_walk_every_shard_in_id_order() {
        let view = View::from_snapshot(pinion_store::Snapshot {
            pins: vec![PinRecord {
                template: TemplateName::parse("codex").unwrap(),
                region: Region::global(),
                digest: Digest::from_sha256(&[1; 32]),
                git_sha: None,
                notes: None,
                promoted_at: OffsetDateTime::UNIX_EPOCH,
                promoted_by: pinion_core::TokenName::parse("ci").unwrap(),
                revision: 1,
                build_sequence: None,
                hold: None,
                canary: None,
                ci_run_url: None,
            }],
            runtimes: Vec::new(),
            tokens: Vec::new(),
        });
        let fleet = Fleet::new(Vec::new(), 0, Duration::from_secs(600), None, UNLIMITED);
        // Ids spread over every shard, reported out of order; one in three
        // runs another digest.
        let ids: Vec<String> = (0..500)
            .map(|n| format!("w-{:04}", (n * 7919) % 500))
            .collect();
        fleet
            .report(
                ids.iter()
                    .enumerate()
                    .map(|(n, id)| report(id, if n % 3 == 0 { 2 } else { 1 }))
                    .collect(),
                60,
                &reporter(),
            )
            .unwrap();
        let walk = |wanted: Option<InstanceState>| {
            let keep = |_: &Live, state: InstanceState, _: &Region| {
                wanted.is_none_or(|wanted| wanted == state)
            };
            let total = fleet.instances(&view, None, 1000, keep).0.len();
            let mut seen: Vec<String> = Vec::new();
            let mut after: Option<InstanceId> = None;
            loop {
                let (page, more) = fleet.instances(&view, after.as_ref(), 7, keep);
                assert!(page.len() <= 7);
                assert_eq!(more, seen.len() + page.len() < total);
                seen.extend(page.iter().map(|found| found.record.id.to_string()));
                after = page.last().map(|found| found.record.id.clone());
                if !more {
                    return seen;
                }
            }
        };
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(walk(None), sorted);
        let behind = walk(Some(InstanceState::Behind));
        assert_eq!(behind.len(), 167);
        assert!(behind.windows(2).all(|pair| pair[0] < pair[1]));
        // The region a filter sees is the governing pin's.
        let (page, _) = fleet.instances(&view, None, 1000, |_, _, governing| {
            governing.as_str() == "global"
        });
        assert_eq!(page.len(), 500);
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
            reporter: None,
        };
        // Reports last came in 5 minutes ago.
        let alive_before = now - 300_000;
        let fleet = Fleet::new(
            Vec::new(),
            alive_before,
            Duration::from_secs(600),
            None,
            UNLIMITED,
        );
        let was_live = stored("live", alive_before - 10_000);
        let long_silent = stored("silent", alive_before - 3_600_000);
        assert!(
            fleet.expires_ms(was_live.last_seen_ms, was_live.ttl_seconds) >= now + 59_000,
            "a TTL from the start"
        );
        assert!(
            fleet.expires_ms(long_silent.last_seen_ms, long_silent.ttl_seconds) < now,
            "already unknown"
        );
    }
}
