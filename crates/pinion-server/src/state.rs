//! The server's shared state: two store connections and the in-memory view
//! that the read path serves.
//!
//! Reads never touch the database. Every write, and every change another
//! process commits (seen through SQLite's `data_version`), replaces the view
//! with a fresh snapshot. A write answers only after the view holds it, so a
//! client reads its own write from the very next request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use pinion_core::{Region, TemplateName};
use pinion_store::{PinRecord, RuntimeRecord, Snapshot, Store, StoreError, TokenRecord};
use sha2::{Digest as _, Sha256};

use pinion_registry::Registry;

use crate::drift::Drift;
use crate::error::ApiError;
use crate::{ServeError, Settings};

/// What the read path serves, indexed for lookups.
#[derive(Debug, Default)]
pub struct View {
    /// Keyed by (template, region): iteration is the contract's list order.
    pub pins: BTreeMap<(TemplateName, Region), PinRecord>,
    pub runtimes: BTreeMap<TemplateName, RuntimeRecord>,
    pub tokens: Vec<TokenRecord>,
    /// A digest of everything the read endpoints serve (pins and catalog),
    /// so equal content gives equal ETags on every replica and restart.
    pub content_tag: [u8; 32],
}

impl View {
    fn from_snapshot(snapshot: Snapshot) -> View {
        let mut hasher = Sha256::new();
        for pin in &snapshot.pins {
            hasher.update(format!(
                "p\0{}\0{}\0{}\0{}\n",
                pin.template, pin.region, pin.revision, pin.digest
            ));
        }
        for runtime in &snapshot.runtimes {
            let repository = runtime
                .repository
                .as_ref()
                .map(|r| r.as_str())
                .unwrap_or("");
            hasher.update(format!(
                "r\0{}\0{}\0{}\n",
                runtime.name, repository, runtime.pinnable
            ));
        }
        let content_tag = hasher.finalize().into();
        View {
            content_tag,
            pins: snapshot
                .pins
                .into_iter()
                .map(|pin| ((pin.template.clone(), pin.region.clone()), pin))
                .collect(),
            runtimes: snapshot
                .runtimes
                .into_iter()
                .map(|runtime| (runtime.name.clone(), runtime))
                .collect(),
            tokens: snapshot.tokens,
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|join| {
        tracing::error!(error = %join, "store task failed");
        ApiError::from_status(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
    })?
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    registry: Arc<Registry>,
    drift: Drift,
    /// The one connection that writes; SQLite allows one writer at a time.
    writer: Mutex<Store>,
    /// Reads snapshots and pings. Its lock also orders view replacements, so
    /// an older snapshot can never replace a newer one.
    reader: Mutex<ReaderState>,
    view: RwLock<Arc<View>>,
}

struct ReaderState {
    store: Store,
    /// The `data_version` the current view was read at.
    seen_version: i64,
}

impl AppState {
    /// Opens both connections (running migrations) and loads the first view.
    pub fn open(settings: Settings) -> Result<AppState, ServeError> {
        let writer = Store::open(&settings.database)?;
        let mut reader = Store::open(&settings.database)?;
        let seen_version = reader.data_version()?;
        let view = View::from_snapshot(reader.snapshot()?);
        let registry = Arc::new(Registry::new(settings.registry.clone())?);
        let drift = Drift::new(settings.drift_tag.as_str());
        Ok(AppState {
            inner: Arc::new(Inner {
                registry,
                drift,
                settings,
                writer: Mutex::new(writer),
                reader: Mutex::new(ReaderState {
                    store: reader,
                    seen_version,
                }),
                view: RwLock::new(Arc::new(view)),
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

    /// The current view; cheap (one `Arc` clone).
    pub fn view(&self) -> Arc<View> {
        self.inner
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `work` on the writer connection on the blocking pool, then makes
    /// the view current before returning, so the caller's answer and every
    /// later read agree.
    pub async fn write<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.on_writer(work, true).await
    }

    /// Runs `work` on the writer connection without touching the view: for
    /// writes the read path does not serve (the audit log).
    pub async fn write_unserved<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.on_writer(work, false).await
    }

    async fn on_writer<T, F>(&self, work: F, reload: bool) -> Result<T, ApiError>
    where
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let state = self.clone();
        blocking(move || {
            let result = {
                let mut writer = state
                    .inner
                    .writer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                work(&mut writer)?
            };
            if reload {
                state.reload(true)?;
            }
            Ok(result)
        })
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
        blocking(move || {
            let mut reader = state
                .inner
                .reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Ok(work(&mut reader.store)?)
        })
        .await
    }

    /// Replaces the view if the database changed since it was read, or
    /// always when `force` is set. Blocking: call from the blocking pool.
    pub fn reload(&self, force: bool) -> Result<bool, StoreError> {
        let mut reader = self
            .inner
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let version = reader.store.data_version()?;
        if !force && version == reader.seen_version {
            return Ok(false);
        }
        let view = View::from_snapshot(reader.store.snapshot()?);
        reader.seen_version = version;
        *self
            .inner
            .view
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
        Ok(true)
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
