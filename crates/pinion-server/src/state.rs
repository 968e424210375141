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

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use pinion_registry::Registry;
use pinion_store::{
    Batch, PinRecord, PromoteOutcome, Promotion, Refusal, Rollback, RollbackOutcome, RuntimeRecord,
    Store, StoreError,
};
use tokio::sync::oneshot;

use crate::drift::Drift;
use crate::error::ApiError;
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

/// One write for the writer thread: its input and its reply channel.
enum Job {
    Promote(Promotion, Reply<PromoteOutcome>),
    Rollback(Rollback, Reply<RollbackOutcome>),
    PutRuntime(RuntimeRecord, time::OffsetDateTime, Reply<bool>),
    /// A refused request for the audit log, keeping at most this many entries.
    Refusal(Refusal, usize, Reply<()>),
}

/// A job applied inside the batch's transaction, waiting for the commit.
enum Done {
    Promote(Reply<PromoteOutcome>, Result<PromoteOutcome, StoreError>),
    Rollback(Reply<RollbackOutcome>, Result<RollbackOutcome, StoreError>),
    PutRuntime(Reply<bool>, RuntimeRecord, Result<bool, StoreError>),
    Refusal(Reply<()>, Result<(), StoreError>),
}

impl Job {
    fn apply(self, batch: &mut Batch<'_>) -> Done {
        match self {
            Job::Promote(promotion, reply) => Done::Promote(reply, batch.promote(&promotion)),
            Job::Rollback(rollback, reply) => Done::Rollback(reply, batch.rollback(&rollback)),
            Job::PutRuntime(runtime, at, reply) => {
                let result = batch.put_runtime(&runtime, at);
                Done::PutRuntime(reply, runtime, result)
            }
            Job::Refusal(refusal, retain, reply) => {
                Done::Refusal(reply, batch.record_refusal(&refusal, retain))
            }
        }
    }
}

impl Job {
    /// Answers a job that never ran: its transaction could not be made.
    fn fail(self, err: &StoreError) {
        let err = err.clone();
        // A caller that gave up (its request was dropped) is not waiting.
        let _ = match self {
            Job::Promote(_, reply) => reply.send(Err(err)).is_ok(),
            Job::Rollback(_, reply) => reply.send(Err(err)).is_ok(),
            Job::PutRuntime(_, _, reply) => reply.send(Err(err)).is_ok(),
            Job::Refusal(_, _, reply) => reply.send(Err(err)).is_ok(),
        };
    }
}

impl Done {
    /// What this write changed that the view shows.
    fn changes(&self, pins: &mut Vec<PinRecord>, runtimes: &mut Vec<RuntimeRecord>) {
        match self {
            Done::Promote(_, Ok(PromoteOutcome::Moved { pin, .. }))
            | Done::Rollback(_, Ok(RollbackOutcome::Moved { pin, .. })) => pins.push(pin.clone()),
            Done::PutRuntime(_, runtime, Ok(_)) => runtimes.push(runtime.clone()),
            _ => {}
        }
    }

    /// Answers the caller: the write's own result once the batch committed,
    /// or the commit's failure.
    fn answer(self, commit: Result<(), &StoreError>) {
        fn send<T>(
            reply: Reply<T>,
            result: Result<T, StoreError>,
            commit: Result<(), &StoreError>,
        ) {
            // A caller that gave up (its request was dropped) is not waiting.
            let _ = reply.send(commit.map_err(Clone::clone).and(result));
        }
        match self {
            Done::Promote(reply, result) => send(reply, result, commit),
            Done::Rollback(reply, result) => send(reply, result, commit),
            Done::PutRuntime(reply, _, result) => send(reply, result, commit),
            Done::Refusal(reply, result) => send(reply, result, commit),
        }
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
    writer: mpsc::Sender<Job>,
    /// What the writer connection's writes are called in change
    /// notifications: the change feed skips them, they are already here.
    writer_instance: Option<String>,
    /// Reads snapshots, history and audit, and pings.
    reader: Mutex<ReaderState>,
    checks: Arc<SharedChecks<Result<(), ApiError>>>,
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
        let writer_store = Store::open(&settings.database)?;
        let writer_instance = writer_store.instance();
        let mut reader = Store::open(&settings.database)?;
        let seen_version = reader.data_version()?;
        let published = Arc::new(Published {
            view: RwLock::new(Arc::new(View::from_snapshot(reader.snapshot()?))),
            replacing: Mutex::new(()),
        });
        let (writer, jobs) = mpsc::channel();
        let for_writer = published.clone();
        std::thread::Builder::new()
            .name("pinion-writer".into())
            .spawn(move || write_loop(writer_store, jobs, for_writer))?;
        let registry = Arc::new(Registry::new(settings.registry.clone())?);
        let drift = Drift::new(settings.drift_tag.as_str());
        Ok(AppState {
            inner: Arc::new(Inner {
                settings,
                registry,
                drift,
                published,
                writer,
                writer_instance,
                reader: Mutex::new(ReaderState {
                    store: reader,
                    seen_version,
                }),
                checks: Arc::new(SharedChecks::new(Err(ApiError::internal(
                    "no freshness check has run yet",
                )))),
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }

    pub fn drift(&self) -> &Drift {
        &self.inner.drift
    }

    /// The writers whose change notifications this server can ignore.
    pub fn own_writers(&self) -> Vec<String> {
        self.inner.writer_instance.iter().cloned().collect()
    }

    /// The current view; cheap (one `Arc` clone).
    pub fn view(&self) -> Arc<View> {
        self.inner.published.current()
    }

    /// Queues a job for the writer thread and waits until it is committed
    /// (fsync'd) and visible in the view.
    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(job(reply))
            .map_err(|_| writer_gone())?;
        Ok(answer.await.map_err(|_| writer_gone())??)
    }

    pub async fn promote(&self, promotion: Promotion) -> Result<PromoteOutcome, ApiError> {
        self.write(|reply| Job::Promote(promotion, reply)).await
    }

    pub async fn rollback(&self, rollback: Rollback) -> Result<RollbackOutcome, ApiError> {
        self.write(|reply| Job::Rollback(rollback, reply)).await
    }

    /// Returns true when the entry was new.
    pub async fn put_runtime(
        &self,
        runtime: RuntimeRecord,
        at: time::OffsetDateTime,
    ) -> Result<bool, ApiError> {
        self.write(|reply| Job::PutRuntime(runtime, at, reply))
            .await
    }

    pub async fn record_refusal(&self, refusal: Refusal) -> Result<(), ApiError> {
        let retain = self.settings().audit_retention;
        self.write(|reply| Job::Refusal(refusal, retain, reply))
            .await
    }

    /// Runs a query the view does not serve (history, audit) on the reader
    /// connection, on the blocking pool.
    pub async fn query<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let state = self.clone();
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
    /// [`crate::fresh`]); otherwise does nothing.
    pub async fn ensure_fresh(&self) -> Result<(), ApiError> {
        if !self.settings().strict_reads {
            return Ok(());
        }
        let state = self.clone();
        self.inner
            .checks
            .fresh(move || state.reload_if_changed().map(drop).map_err(ApiError::from))
            .await
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
fn write_loop(mut store: Store, jobs: mpsc::Receiver<Job>, published: Arc<Published>) {
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
        let replacing = published
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut done = Vec::with_capacity(batch.len());
        let applied = store.batch(batch.len(), |writes| {
            done.extend(batch.drain(..).map(|job| job.apply(writes)));
        });
        match applied {
            Ok(()) => {
                let mut pins = Vec::new();
                let mut runtimes = Vec::new();
                for job in &done {
                    job.changes(&mut pins, &mut runtimes);
                }
                let outside_change = store.data_version().map_or(true, |version| {
                    let moved = version != seen_version;
                    seen_version = version;
                    moved
                });
                if outside_change {
                    match store.snapshot() {
                        Ok(snapshot) => published.swap(View::from_snapshot(snapshot)),
                        Err(err) => {
                            tracing::warn!(error = %err, "could not reread the database after a write")
                        }
                    }
                } else if !pins.is_empty() || !runtimes.is_empty() {
                    let view = published.current().with_changes(pins, runtimes);
                    published.swap(view);
                }
                drop(replacing);
                for job in done {
                    job.answer(Ok(()));
                }
            }
            Err(err) => {
                drop(replacing);
                // Nothing was committed: every job gets the failure, those
                // applied before it and those the transaction never reached.
                for job in done {
                    job.answer(Err(&err));
                }
                for job in batch {
                    job.fail(&err);
                }
            }
        }
    }
}
