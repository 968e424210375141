//! The server's shared state: the writer thread, a reader connection, and
//! the in-memory view that the read path serves.
//!
//! Reads never touch the database: they take an `Arc<View>`. Writes go to one
//! writer thread, which drains every write queued while the previous commit
//! was being fsync'd and applies them in one transaction (group commit: one
//! fsync for the whole batch), then publishes a new view with the changes,
//! then answers. A write is answered only after the view holds it, so a
//! client reads its own write from the very next request. Changes other
//! processes commit (seen through SQLite's `data_version`) replace the view
//! with a fresh snapshot.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use pinion_core::{TokenName, WebhookName};
use pinion_registry::Registry;
use pinion_store::{
    AbortOutcome, AttemptRecord, Batch, CanaryAbort, CanaryOutcome, CanaryRequest, DeliveryRecord,
    DriftObservation, DueDelivery, EventPage, EventQuery, Finish, FleetTransition, HoldOutcome,
    HoldRequest, InstanceRecord, NewToken, PinRecord, PromoteOutcome, Promotion, Redelivery,
    Refusal, Release, ReleaseOutcome, Rollback, RollbackOutcome, RuntimeRecord, SessionRecord,
    Store, StoreError, WebhookPut, WebhookRecord, WebhookUpdate,
};
use tokio::sync::{Notify, oneshot};

use axum::http::HeaderMap;

use crate::deadline::{Deadline, store_too_slow};
use crate::drift::Drift;
use crate::error::{ApiError, Code};
use crate::failures::AuthFailures;
use crate::feed::Feed;
use crate::fleet::Fleet;
use crate::fresh::SharedChecks;
use crate::view::View;
use crate::{ServeError, Settings};

/// The most writes one transaction takes; more wait for the next one.
const MAX_BATCH: usize = 512;

/// The view and the lock that orders its replacements, shared with the
/// writer thread.
struct Published {
    view: RwLock<Arc<View>>,
    /// Held while a new view is made and swapped in, by the writer thread
    /// (commit, then swap) and by reloads (read, then swap): a view built from
    /// older state can never replace one built from newer state.
    replacing: Mutex<()>,
}

impl Published {
    fn current(&self) -> Arc<View> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn swap(&self, view: View) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }
}

/// Where a job's answer goes: typed by the job, so the writer cannot send
/// one kind of write the answer of another.
type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Where a queued write stands, shared by the handler waiting for it and the
/// writer thread. Each side moves it only its own way, and only by
/// compare-and-swap, so they always agree on whether it may still commit:
///
/// - the handler gives up on a write that is still `QUEUED` when its
///   deadline nears (or its request is dropped): `QUEUED → ABANDONED`, and
///   the writer never commits it, whatever happens after;
/// - the writer, just before it commits, claims every write of its batch:
///   `QUEUED → COMMITTING`. If one was abandoned meanwhile, it puts the
///   others back (`COMMITTING → QUEUED`), rolls the transaction back and
///   makes it again without the abandoned one.
///
/// A handler that finds its write `COMMITTING` waits for the real outcome
/// until its deadline, and only then answers `504 commit_outcome_unknown`.
pub(crate) struct Ticket(AtomicU8);

const QUEUED: u8 = 0;
const COMMITTING: u8 = 1;
const ABANDONED: u8 = 2;

impl Ticket {
    fn new() -> Ticket {
        Ticket(AtomicU8::new(QUEUED))
    }

    /// Gives up on the write unless its commit has begun; true when it is
    /// (now or already) abandoned and so will never commit.
    fn abandon(&self) -> bool {
        match self
            .0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == ABANDONED,
        }
    }

    fn is_abandoned(&self) -> bool {
        self.0.load(Ordering::Acquire) == ABANDONED
    }

    /// Claims the write for a commit; false if it was abandoned.
    fn begin_commit(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Puts a claimed write back in the queue: its transaction was rolled
    /// back to be made again.
    fn reopen(&self) {
        let _ = self
            .0
            .compare_exchange(COMMITTING, QUEUED, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Abandons its ticket when dropped: a handler that answers or is dropped
/// (its client gone, say) leaves no write behind that could commit later.
struct Abandon(Arc<Ticket>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// What the view shows of a batch's committed writes.
#[derive(Default)]
struct Changes {
    pins: Vec<PinRecord>,
    runtimes: Vec<RuntimeRecord>,
}

/// One kind of write the writer thread makes.
trait Write: Send + 'static {
    type Output: Send + 'static;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<Self::Output, StoreError>;
    /// What a committed `output` changed that the view shows.
    fn changes(&self, _output: &Self::Output, _changes: &mut Changes) {}
    /// Whether this write changes what replicas serve (pins, catalog, the
    /// change feed): such a batch is announced to the other replicas and
    /// wakes the feed and the outbox. Delivery bookkeeping is quiet.
    fn announce(&self) -> bool {
        true
    }
}

impl Write for Promotion {
    type Output = PromoteOutcome;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<PromoteOutcome, StoreError> {
        batch.promote(self)
    }
    fn changes(&self, output: &PromoteOutcome, changes: &mut Changes) {
        if let PromoteOutcome::Moved { pin, .. } = output {
            changes.pins.push(pin.clone());
        }
    }
}

impl Write for Rollback {
    type Output = RollbackOutcome;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<RollbackOutcome, StoreError> {
        batch.rollback(self)
    }
    fn changes(&self, output: &RollbackOutcome, changes: &mut Changes) {
        if let RollbackOutcome::Moved { pin, .. } | RollbackOutcome::Unchanged { pin } = output {
            changes.pins.push(pin.clone());
        }
    }
}

impl Write for HoldRequest {
    type Output = HoldOutcome;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<HoldOutcome, StoreError> {
        batch.hold(self)
    }
    fn changes(&self, output: &HoldOutcome, changes: &mut Changes) {
        if let HoldOutcome::Held { pin } = output {
            changes.pins.push(pin.clone());
        }
    }
}

impl Write for Release {
    type Output = ReleaseOutcome;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<ReleaseOutcome, StoreError> {
        batch.release(self)
    }
    fn changes(&self, output: &ReleaseOutcome, changes: &mut Changes) {
        if let ReleaseOutcome::Released { pin, .. } = output {
            changes.pins.push(pin.clone());
        }
    }
}

impl Write for CanaryRequest {
    type Output = CanaryOutcome;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<CanaryOutcome, StoreError> {
        batch.start_canary(self)
    }
    fn changes(&self, output: &CanaryOutcome, changes: &mut Changes) {
        if let CanaryOutcome::Started { pin, .. } = output {
            changes.pins.push(pin.clone());
        }
    }
}

impl Write for CanaryAbort {
    type Output = AbortOutcome;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<AbortOutcome, StoreError> {
        batch.abort_canary(self)
    }
    fn changes(&self, output: &AbortOutcome, changes: &mut Changes) {
        if let AbortOutcome::Aborted { pin, .. } = output {
            changes.pins.push(pin.clone());
        }
    }
}

impl Write for NewToken {
    /// False when an active token has the name already.
    type Output = bool;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<bool, StoreError> {
        batch.create_token_if_free(self)
    }
}

impl Write for SessionRecord {
    type Output = ();
    fn apply(&self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        batch.create_session(self)
    }
    /// Sessions change nothing replicas serve from memory: each request
    /// reads its session from the database.
    fn announce(&self) -> bool {
        false
    }
}

/// A page session to end, by its id's hash.
struct EndSession([u8; 32]);

impl Write for EndSession {
    type Output = bool;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<bool, StoreError> {
        batch.end_session(&self.0)
    }
    fn announce(&self) -> bool {
        false
    }
}

/// A token to revoke, and by whom; its output says whether there was one.
struct RevokeToken(TokenName, TokenName, time::OffsetDateTime);

impl Write for RevokeToken {
    type Output = bool;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<bool, StoreError> {
        batch.revoke_token_by(&self.0, &self.1, self.2)
    }
}

/// A catalog entry to add or change; its output says whether it was new.
struct PutRuntime(RuntimeRecord, time::OffsetDateTime);

impl Write for PutRuntime {
    type Output = bool;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<bool, StoreError> {
        batch.put_runtime(&self.0, self.1)
    }
    fn changes(&self, _created: &bool, changes: &mut Changes) {
        changes.runtimes.push(self.0.clone());
    }
}

/// A refused request for the audit log, keeping at most this many entries
/// of its class.
struct RecordRefusal(Refusal, usize);

impl Write for RecordRefusal {
    type Output = ();
    fn apply(&self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        batch.record_refusal(&self.0, self.1)
    }
}

/// What the drift watcher saw; flips become events.
struct RecordDrift(Vec<DriftObservation>);

impl Write for RecordDrift {
    type Output = Vec<i64>;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<Vec<i64>, StoreError> {
        batch.record_drift(&self.0)
    }
}

impl Write for WebhookUpdate {
    type Output = WebhookPut;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<WebhookPut, StoreError> {
        batch.put_webhook(self)
    }
}

struct DeleteWebhook(WebhookName);

impl Write for DeleteWebhook {
    type Output = bool;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<bool, StoreError> {
        batch.delete_webhook(&self.0)
    }
}

struct Redeliver(WebhookName, i64, time::OffsetDateTime);

impl Write for Redeliver {
    type Output = Redelivery;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<Redelivery, StoreError> {
        batch.redeliver(&self.0, self.1, self.2)
    }
}

/// Records the outbox worker's last attempts and claims its next due
/// deliveries, in one transaction; announced only when an attempt disabled
/// a webhook (which appends an event).
struct RecordAndClaim {
    attempts: Vec<AttemptRecord>,
    now: time::OffsetDateTime,
    limit: usize,
    skip: Vec<WebhookName>,
}

impl Write for RecordAndClaim {
    type Output = Vec<DueDelivery>;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<Vec<DueDelivery>, StoreError> {
        if !self.attempts.is_empty() {
            batch.record_attempts(&self.attempts)?;
        }
        if self.limit == 0 {
            return Ok(Vec::new());
        }
        batch.claim_deliveries(self.now, self.limit, &self.skip)
    }
    fn announce(&self) -> bool {
        self.attempts
            .iter()
            .any(|attempt| attempt.next == pinion_core::NextStep::Disable)
    }
}

/// Writes fleet reports (and, when given, marks the fleet alive): quiet,
/// soft state.
struct FlushInstances(Vec<InstanceRecord>, Option<i64>);

impl Write for FlushInstances {
    type Output = ();
    fn apply(&self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        batch.flush_instances(&self.0)?;
        if let Some(now) = self.1 {
            batch.mark_fleet_alive(now)?;
        }
        Ok(())
    }
    fn announce(&self) -> bool {
        false
    }
}

struct ForgetInstances(i64);

impl Write for ForgetInstances {
    type Output = u64;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<u64, StoreError> {
        batch.forget_instances(self.0)
    }
    fn announce(&self) -> bool {
        false
    }
}

/// Pins' fleets entering states; the ones that are events are announced.
struct RecordFleetTransitions(Vec<FleetTransition>);

impl Write for RecordFleetTransitions {
    type Output = Vec<i64>;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<Vec<i64>, StoreError> {
        batch.record_fleet_transitions(&self.0)
    }
}

/// Prunes the event log.
struct PruneEvents(time::OffsetDateTime, i64);

impl Write for PruneEvents {
    type Output = u64;
    fn apply(&self, batch: &mut Batch<'_>) -> Result<u64, StoreError> {
        batch.prune_events(self.0, self.1)
    }
    fn announce(&self) -> bool {
        false
    }
}

/// A write in the writer's queue: its input, its ticket, where its answer
/// goes, and its result once applied in the current transaction.
struct Job<W: Write> {
    write: W,
    ticket: Arc<Ticket>,
    reply: Reply<W::Output>,
    result: Option<Result<W::Output, StoreError>>,
}

/// A [`Job`] of any kind, as the writer thread handles it.
trait Queued: Send {
    fn ticket(&self) -> &Ticket;
    fn announce(&self) -> bool;
    /// Applies the write in the batch's transaction, keeping its result.
    fn apply(&mut self, batch: &mut Batch<'_>);
    /// What its committed result changed that the view shows.
    fn changes(&self, changes: &mut Changes);
    /// Answers the caller: its result once the batch committed, or the
    /// failure that kept the batch from committing.
    fn answer(self: Box<Self>, commit: Result<(), &StoreError>);
}

impl<W: Write> Queued for Job<W> {
    fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    fn announce(&self) -> bool {
        self.write.announce()
    }

    fn apply(&mut self, batch: &mut Batch<'_>) {
        self.result = Some(self.write.apply(batch));
    }

    fn changes(&self, changes: &mut Changes) {
        if let Some(Ok(output)) = &self.result {
            self.write.changes(output, changes);
        }
    }

    fn answer(self: Box<Self>, commit: Result<(), &StoreError>) {
        let result = match (commit, self.result) {
            (Err(err), _) => Err(err.clone()),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Statement(
                "a write was answered before it was applied".into(),
            )),
        };
        // A caller that gave up (its request was dropped) is not waiting.
        let _ = self.reply.send(result);
    }
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    registry: Arc<Registry>,
    drift: Drift,
    published: Arc<Published>,
    writer: mpsc::Sender<Box<dyn Queued>>,
    /// What the writer connection's writes are called in change
    /// notifications: the change feed skips them, they are already here.
    writer_instance: Option<String>,
    /// Reads snapshots, history and audit, and pings.
    reader: DropOffRuntime<Mutex<ReaderState>>,
    checks: Arc<SharedChecks<Result<(), ApiError>>>,
    auth_failures: AuthFailures,
    /// The change feed this server serves.
    feed: Arc<Feed>,
    /// Wakes the outbox worker: deliveries may be due.
    outbox_wake: Arc<Notify>,
    /// The follower's own connection to the event log.
    feed_store: DropOffRuntime<Mutex<Store>>,
    /// What instances run.
    fleet: Fleet,
    /// What the page knows of the other environments.
    peers: Arc<crate::peers::Peers>,
    /// Every answer, by route, method and status, for `/metrics`.
    http_metrics: Arc<crate::http_metrics::HttpMetrics>,
}

/// Drops its value on a thread of its own: a PostgreSQL connection owns a
/// runtime, which may not be dropped on one of the server's async threads
/// (the last reference to the state may go there when the server stops).
struct DropOffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> std::ops::Deref for DropOffRuntime<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(value) => value,
            // Only `drop` takes the value out.
            None => unreachable!("a value used after it was dropped"),
        }
    }
}

impl<T: Send + 'static> Drop for DropOffRuntime<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("pinion-drop".into())
                .spawn(move || drop(value));
        }
    }
}

struct ReaderState {
    store: Store,
    /// The `data_version` the current view was read at.
    seen_version: i64,
}

impl AppState {
    /// Opens both connections (running migrations), loads the first view and
    /// starts the writer thread.
    pub fn open(settings: Settings) -> Result<AppState, ServeError> {
        let mut writer_store = Store::open_with(&settings.database, settings.create_database)?;
        if settings.database.sqlite_path().is_some() {
            // One server per SQLite file: a claim made before this start was
            // made by a run that died mid-delivery. Due again now (at least
            // once).
            let released = writer_store.release_claims()?;
            if released > 0 {
                tracing::info!(
                    released,
                    "deliveries claimed by a run that stopped are due again"
                );
            }
        }
        let writer_instance = writer_store.instance();
        let mut reader = Store::open_with(&settings.database, false)?;
        let seen_version = reader.data_version()?;
        let published = Arc::new(Published {
            view: RwLock::new(Arc::new(View::from_snapshot(reader.snapshot()?))),
            replacing: Mutex::new(()),
        });
        let mut feed_store = Store::open_with(&settings.database, false)?;
        let head = feed_store
            .events(&EventQuery {
                after: 0,
                limit: 0,
                ..EventQuery::default()
            })?
            .head;
        let feed = Arc::new(Feed::new(head));
        let fleet = Fleet::new(
            reader.instances()?,
            reader.fleet_alive_ms()?,
            settings.progress_deadline,
            settings.canary_rule,
            crate::fleet::FleetLimits {
                total: settings.fleet_max_instances,
                per_token: settings.fleet_max_instances_per_token,
            },
        );
        let outbox_wake = Arc::new(Notify::new());
        let (writer, jobs) = mpsc::channel();
        let wakes = Wakes {
            feed: feed.clone(),
            outbox: outbox_wake.clone(),
        };
        let for_writer = published.clone();
        std::thread::Builder::new()
            .name("pinion-writer".into())
            .spawn(move || write_loop(writer_store, jobs, for_writer, wakes))?;
        let registry = Arc::new(Registry::new(settings.registry.clone())?);
        let drift = Drift::new(settings.drift_tag.as_str());
        let peers = Arc::new(crate::peers::Peers::new(&settings.peers));
        let auth_failures = AuthFailures::new(f64::from(settings.auth_failure_burst));
        Ok(AppState {
            inner: Arc::new(Inner {
                settings,
                registry,
                drift,
                published,
                writer,
                writer_instance,
                reader: DropOffRuntime(Some(Mutex::new(ReaderState {
                    store: reader,
                    seen_version,
                }))),
                checks: Arc::new(SharedChecks::new(Err(ApiError::internal(
                    "no freshness check has run yet",
                )))),
                auth_failures,
                feed,
                outbox_wake,
                feed_store: DropOffRuntime(Some(Mutex::new(feed_store))),
                fleet,
                peers,
                http_metrics: Arc::default(),
            }),
        })
    }

    /// The answers counted for `/metrics`.
    pub fn http_metrics(&self) -> &Arc<crate::http_metrics::HttpMetrics> {
        &self.inner.http_metrics
    }

    /// The peers' readings, for the page.
    pub fn peers(&self) -> &Arc<crate::peers::Peers> {
        &self.inner.peers
    }

    /// Stores a page session.
    pub async fn create_session(
        &self,
        session: SessionRecord,
        deadline: Deadline,
    ) -> Result<(), ApiError> {
        self.write(session, deadline).await
    }

    /// Ends a page session; false when there was none.
    pub async fn end_session(
        &self,
        id_hash: [u8; 32],
        deadline: Deadline,
    ) -> Result<bool, ApiError> {
        self.write(EndSession(id_hash), deadline).await
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Refuses a region outside `--regions`, when the server has the list.
    pub fn known_region(&self, region: &pinion_core::Region) -> Result<(), ApiError> {
        match &self.inner.settings.regions {
            Some(regions) if !regions.contains(region) => Err(ApiError::new(
                Code::UnknownRegion,
                format!(
                    "region `{region}` is not one of this server's regions ({}); nothing was changed",
                    regions
                        .iter()
                        .map(|region| region.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }

    pub fn drift(&self) -> &Drift {
        &self.inner.drift
    }

    pub fn auth_failures(&self) -> &AuthFailures {
        &self.inner.auth_failures
    }

    pub fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    pub fn outbox_wake(&self) -> &Notify {
        &self.inner.outbox_wake
    }

    pub fn fleet(&self) -> &Fleet {
        &self.inner.fleet
    }

    /// Writes fleet reports; with `alive`, marks the fleet alive then.
    pub async fn flush_instances(
        &self,
        rows: Vec<InstanceRecord>,
        alive: Option<i64>,
    ) -> Result<(), ApiError> {
        self.write(FlushInstances(rows, alive), self.background_deadline())
            .await
    }

    pub async fn forget_instances(&self, before_ms: i64) -> Result<u64, ApiError> {
        self.write(ForgetInstances(before_ms), self.background_deadline())
            .await
    }

    pub async fn record_fleet_transitions(
        &self,
        transitions: Vec<FleetTransition>,
    ) -> Result<Vec<i64>, ApiError> {
        self.write(
            RecordFleetTransitions(transitions),
            self.background_deadline(),
        )
        .await
    }

    /// Instance rows other replicas wrote since `since_ms`.
    pub async fn instances_changed_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<InstanceRecord>, ApiError> {
        self.query(self.background_deadline(), move |store| {
            store.instances_changed_since(since_ms)
        })
        .await
    }

    /// A page of the event log, read on the follower's own connection.
    pub async fn read_feed(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || {
            state
                .inner
                .feed_store
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .events(&query)
        })
        .await
        .map_err(|join| StoreError::Statement(format!("event log task failed: {join}")))?
    }

    /// Whether the database is still the one the server opened (see
    /// [`Store::check_identity`]); cheap, no query. `None` when the reader
    /// connection is busy: ask again later.
    pub fn check_identity(&self) -> Option<Result<(), StoreError>> {
        self.inner
            .reader
            .try_lock()
            .ok()
            .map(|reader| reader.store.check_identity())
    }

    /// The writers whose change notifications this server can ignore.
    pub fn own_writers(&self) -> Vec<String> {
        self.inner.writer_instance.iter().cloned().collect()
    }

    /// The current view; cheap (one `Arc` clone).
    pub fn view(&self) -> Arc<View> {
        self.inner.published.current()
    }

    /// Queues a write for the writer thread and waits until it is committed
    /// (fsync'd) and visible in the view, or until `deadline`:
    ///
    /// - still queued when the deadline nears: given up, never committed,
    ///   answered `503 store_unavailable` (nothing changed; safe to retry);
    /// - its commit under way then: the real outcome if it comes by the
    ///   deadline, else `504 commit_outcome_unknown`.
    async fn write<W: Write>(&self, write: W, deadline: Deadline) -> Result<W::Output, ApiError> {
        let (reply, answer) = oneshot::channel();
        let ticket = Arc::new(Ticket::new());
        let _abandon_on_drop = Abandon(ticket.clone());
        self.inner
            .writer
            .send(Box::new(Job {
                write,
                ticket: ticket.clone(),
                reply,
                result: None,
            }))
            .map_err(|_| writer_gone())?;
        let mut answer = std::pin::pin!(answer);
        tokio::select! {
            biased;
            answered = &mut answer => return Ok(answered.map_err(|_| writer_gone())??),
            () = tokio::time::sleep_until(deadline.give_up_at()) => {}
        }
        if ticket.abandon() {
            return Err(ApiError::new(
                Code::StoreUnavailable,
                "the store did not take the write before the request's deadline; nothing was changed",
            ));
        }
        tokio::select! {
            biased;
            answered = &mut answer => Ok(answered.map_err(|_| writer_gone())??),
            () = tokio::time::sleep_until(deadline.at()) => Err(ApiError::new(
                Code::CommitOutcomeUnknown,
                "the commit was sent but did not finish before the request's deadline; \
                 read the pin back to learn whether it moved",
            )),
        }
    }

    pub async fn promote(
        &self,
        promotion: Promotion,
        deadline: Deadline,
    ) -> Result<PromoteOutcome, ApiError> {
        self.write(promotion, deadline).await
    }

    pub async fn rollback(
        &self,
        rollback: Rollback,
        deadline: Deadline,
    ) -> Result<RollbackOutcome, ApiError> {
        self.write(rollback, deadline).await
    }

    pub async fn hold(
        &self,
        hold: HoldRequest,
        deadline: Deadline,
    ) -> Result<HoldOutcome, ApiError> {
        self.write(hold, deadline).await
    }

    pub async fn release(
        &self,
        release: Release,
        deadline: Deadline,
    ) -> Result<ReleaseOutcome, ApiError> {
        self.write(release, deadline).await
    }

    /// Stores a token; false when an active one has the name already.
    pub async fn create_token(
        &self,
        token: NewToken,
        deadline: Deadline,
    ) -> Result<bool, ApiError> {
        self.write(token, deadline).await
    }

    /// Revokes the active token of that name; false when there is none.
    pub async fn revoke_token(
        &self,
        name: TokenName,
        actor: TokenName,
        at: time::OffsetDateTime,
        deadline: Deadline,
    ) -> Result<bool, ApiError> {
        self.write(RevokeToken(name, actor, at), deadline).await
    }

    /// Reads the view again if the database changed (a token made or
    /// revoked here is then usable, or refused, at once).
    pub async fn refresh_view(&self) {
        let state = self.clone();
        match tokio::task::spawn_blocking(move || state.reload_if_changed()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "could not read the view again"),
            Err(err) => tracing::warn!(error = %err, "could not read the view again"),
        }
    }

    pub async fn start_canary(
        &self,
        request: CanaryRequest,
        deadline: Deadline,
    ) -> Result<CanaryOutcome, ApiError> {
        self.write(request, deadline).await
    }

    pub async fn abort_canary(
        &self,
        abort: CanaryAbort,
        deadline: Deadline,
    ) -> Result<AbortOutcome, ApiError> {
        self.write(abort, deadline).await
    }

    /// Returns true when the entry was new.
    pub async fn put_runtime(
        &self,
        runtime: RuntimeRecord,
        at: time::OffsetDateTime,
        deadline: Deadline,
    ) -> Result<bool, ApiError> {
        self.write(PutRuntime(runtime, at), deadline).await
    }

    /// Records a refusal; it has a deadline of its own, since the answer it
    /// goes with has already been decided.
    pub async fn record_refusal(&self, refusal: Refusal) -> Result<(), ApiError> {
        let retain = self.settings().audit_retention;
        self.write(RecordRefusal(refusal, retain), self.background_deadline())
            .await
    }

    /// A deadline for work of the server's own (no request waits on it).
    pub fn background_deadline(&self) -> Deadline {
        Deadline::after(self.settings().request_timeout)
    }

    /// Records the drift watcher's observations (flips become events).
    pub async fn record_drift(&self, seen: Vec<DriftObservation>) -> Result<Vec<i64>, ApiError> {
        self.write(RecordDrift(seen), self.background_deadline())
            .await
    }

    pub async fn put_webhook(
        &self,
        update: WebhookUpdate,
        deadline: Deadline,
    ) -> Result<WebhookPut, ApiError> {
        self.write(update, deadline).await
    }

    pub async fn delete_webhook(
        &self,
        name: WebhookName,
        deadline: Deadline,
    ) -> Result<bool, ApiError> {
        self.write(DeleteWebhook(name), deadline).await
    }

    pub async fn redeliver(
        &self,
        name: WebhookName,
        event_id: i64,
        deadline: Deadline,
    ) -> Result<Redelivery, ApiError> {
        let at = crate::clock::now();
        let queued = self.write(Redeliver(name, event_id, at), deadline).await?;
        self.inner.outbox_wake.notify_one();
        Ok(queued)
    }

    /// Whether a delivery is due, on the reader connection.
    pub async fn any_delivery_due(&self) -> Result<bool, ApiError> {
        let now = crate::clock::now();
        self.query(self.background_deadline(), move |store| {
            store.any_delivery_due(now)
        })
        .await
    }

    /// Records attempts made and claims up to `limit` due deliveries, none
    /// to the webhooks in `skip`.
    pub async fn record_and_claim(
        &self,
        attempts: Vec<AttemptRecord>,
        limit: usize,
        skip: Vec<WebhookName>,
    ) -> Result<Vec<DueDelivery>, ApiError> {
        let now = crate::clock::now();
        let write = RecordAndClaim {
            attempts,
            now,
            limit,
            skip,
        };
        self.write(write, self.background_deadline()).await
    }

    pub async fn prune_events(
        &self,
        before: time::OffsetDateTime,
        keep: i64,
    ) -> Result<u64, ApiError> {
        self.write(PruneEvents(before, keep), self.background_deadline())
            .await
    }

    pub async fn webhooks(&self, deadline: Deadline) -> Result<Vec<WebhookRecord>, ApiError> {
        self.query(deadline, Store::webhooks).await
    }

    pub async fn deliveries(
        &self,
        name: WebhookName,
        limit: usize,
        deadline: Deadline,
    ) -> Result<(Option<WebhookRecord>, Vec<DeliveryRecord>), ApiError> {
        self.query(deadline, move |store| {
            let webhook = store.webhook(&name)?;
            let deliveries = store.deliveries(&name, limit)?;
            Ok((webhook, deliveries))
        })
        .await
    }

    /// Runs a query the view does not serve (history, audit) on the reader
    /// connection, on the blocking pool; `503 store_unavailable` if it has
    /// not answered by `deadline` (the query itself finishes in the
    /// background and its answer is dropped).
    pub async fn query<T, F>(&self, deadline: Deadline, work: F) -> Result<T, ApiError>
    where
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let state = self.clone();
        let query = async move {
            tokio::task::spawn_blocking(move || {
                let mut reader = state
                    .inner
                    .reader
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                Ok(work(&mut reader.store)?)
            })
            .await
            .map_err(|join| ApiError::internal(format!("store task failed: {join}")))?
        };
        deadline.run(query, store_too_slow).await
    }

    /// Replaces the view if another process changed the database since it
    /// was read. Blocking: call from the blocking pool.
    pub fn reload_if_changed(&self) -> Result<bool, StoreError> {
        let _replacing = self
            .inner
            .published
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut reader = self
            .inner
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let version = reader.store.data_version()?;
        if version == reader.seen_version {
            return Ok(false);
        }
        let view = View::from_snapshot(reader.store.snapshot()?);
        reader.seen_version = version;
        self.inner.published.swap(view);
        Ok(true)
    }

    /// With strict reads, makes the view current with the database before a
    /// read is answered, sharing checks between concurrent reads (see
    /// [`crate::fresh`]), by the request's deadline; otherwise does nothing.
    pub async fn ensure_fresh(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.settings().strict_reads {
            return Ok(());
        }
        let deadline = Deadline::for_request(headers, self.settings().request_timeout)?;
        let state = self.clone();
        let check = self
            .inner
            .checks
            .fresh(move || state.reload_if_changed().map(drop).map_err(ApiError::from));
        deadline.run(check, store_too_slow).await
    }

    /// Whether the database answers. Blocking: call from the blocking pool.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.inner
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .store
            .ping()
    }
}

fn writer_gone() -> ApiError {
    ApiError::internal("the writer thread is gone")
}

/// The writer thread: take every queued write, apply them in one
/// transaction, publish the changes, answer. Ends when the server drops the
/// sending side.
/// Whom the writer wakes after a commit.
struct Wakes {
    feed: Arc<Feed>,
    outbox: Arc<Notify>,
}

fn write_loop(
    mut store: Store,
    jobs: mpsc::Receiver<Box<dyn Queued>>,
    published: Arc<Published>,
    wakes: Wakes,
) {
    // The writer connection's `data_version` moves only when another process
    // commits. While it stands still, the view plus this thread's own changes
    // is the database; when it moves, the view is read afresh. Starting from
    // an impossible value makes the first batch read it afresh.
    let mut seen_version = i64::MIN;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        write_batch(&mut store, batch, &published, &mut seen_version, &wakes);
    }
}

/// Commits a batch of writes, less those given up on, and answers each.
fn write_batch(
    store: &mut Store,
    mut batch: Vec<Box<dyn Queued>>,
    published: &Published,
    seen_version: &mut i64,
    wakes: &Wakes,
) {
    loop {
        // A write given up on has been answered already; it is dropped here,
        // and by the check before the commit if it is given up on later.
        batch.retain(|job| !job.ticket().is_abandoned());
        if batch.is_empty() {
            return;
        }
        let announce = batch.iter().any(|job| job.announce());
        let applied = store.batch(batch.len(), announce, |writes| {
            for job in batch.iter_mut() {
                job.apply(writes);
            }
            let claimed = batch
                .iter()
                .take_while(|job| job.ticket().begin_commit())
                .count();
            if claimed < batch.len() {
                for job in &batch[..claimed] {
                    job.ticket().reopen();
                }
                return Finish::RollBack;
            }
            // Held from before the commit until the view shows it, so a
            // reload (read, then swap) cannot replace the view with one read
            // before this commit.
            Finish::Commit(
                published
                    .replacing
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            )
        });
        match applied {
            Ok(Some(replacing)) => {
                let mut changes = Changes::default();
                for job in &batch {
                    job.changes(&mut changes);
                }
                let outside_change = store.data_version().map_or(true, |version| {
                    let moved = version != *seen_version;
                    *seen_version = version;
                    moved
                });
                if outside_change {
                    match store.snapshot() {
                        Ok(snapshot) => published.swap(View::from_snapshot(snapshot)),
                        Err(err) => {
                            tracing::warn!(error = %err, "could not reread the database after a write")
                        }
                    }
                } else if !changes.pins.is_empty() || !changes.runtimes.is_empty() {
                    let view = published
                        .current()
                        .with_changes(changes.pins, changes.runtimes);
                    published.swap(view);
                }
                drop(replacing);
                if announce {
                    // New events, perhaps: for the streams and the outbox.
                    wakes.feed.wake();
                    wakes.outbox.notify_one();
                }
                for job in batch {
                    job.answer(Ok(()));
                }
                return;
            }
            // A write was given up on before the commit: again, without it.
            Ok(None) => continue,
            Err(err) => {
                // Nothing was committed: every write gets the failure.
                for job in batch {
                    job.answer(Err(&err));
                }
                return;
            }
        }
    }
}
