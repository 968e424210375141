//! Pinion's control-plane HTTP service. This is the only crate that knows
//! HTTP: it maps requests to domain values, asks the store, and maps answers
//! and errors back to the wire contract.
//!
//! [`run`] takes a listener the caller bound and a shutdown future, so tests
//! start it on port 0 and `pinion serve` passes SIGTERM / ctrl-c.

mod auth;
mod body;
mod capped;
pub mod clock;
mod deadline;
mod drift;
mod error;
mod failures;
mod feed;
mod fleet;
mod fresh;
mod handlers;
mod http_metrics;
mod listen;
mod middleware;
pub mod openapi;
pub use middleware::log_every_request;
mod outbox;
pub mod peers;
mod query;
pub mod seal;
pub mod soak;
mod state;
mod targets;
pub mod tls;
pub mod token;
mod ui;
mod view;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use pinion_store::{DatabaseUrl, StoreError};
use tokio::net::TcpListener;

pub use error::ApiError;
use state::AppState;

/// Whether a promotion must name a digest that exists in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegistryCheck {
    /// Don't look.
    Off,
    /// Look, and log a missing digest, but write anyway.
    Warn,
    /// Refuse a digest the registry does not have.
    #[default]
    Require,
}

impl RegistryCheck {
    pub fn parse(input: &str) -> Result<Self, String> {
        match input {
            "off" => Ok(RegistryCheck::Off),
            "warn" => Ok(RegistryCheck::Warn),
            "require" => Ok(RegistryCheck::Require),
            other => Err(format!(
                "registry check `{}` must be `off`, `warn` or `require`",
                other.escape_debug()
            )),
        }
    }
}

/// Everything `run` needs, resolved before any IO.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseUrl,
    pub registry_check: RegistryCheck,
    /// Bounds each request that waits on something (its body, the
    /// registry, the database) from its handler's start to its answer; a
    /// client may ask for less (`x-pinion-timeout`).
    pub request_timeout: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// How often the database is checked for changes made by other processes
    /// (`pinion token create`, `pinion template add`, other replicas).
    pub reload_interval: Duration,
    /// Refuse promotions without `git_sha` and `ci_run_url`.
    pub require_provenance: bool,
    /// How many refused writes the audit log keeps.
    pub audit_retention: usize,
    /// How registries are reached (existence check, drift watcher).
    pub registry: pinion_registry::RegistrySettings,
    /// How often the drift watcher runs.
    pub drift_interval: Duration,
    /// The tag pins are compared with.
    pub drift_tag: pinion_registry::Tag,
    /// Check the database's change counter before every read, so a write
    /// acknowledged by any replica is visible here at once (one small query
    /// per read). Off: reads are served from memory, and other replicas'
    /// writes arrive through the change feed within milliseconds.
    pub strict_reads: bool,
    /// Make a new database when there is none (a missing SQLite file, an
    /// empty PostgreSQL database); off, the server refuses to start instead.
    pub create_database: bool,
    /// `/metrics` needs a token (scope `read`), and a template-restricted
    /// token sees only its templates' series.
    pub metrics_token_required: bool,
    /// The key webhook secrets are sealed with; without one, webhooks
    /// cannot be created and deliveries cannot be signed.
    pub secret_key: Option<seal::SecretKey>,
    /// The waits after the first, second, … failed delivery attempt; after
    /// the last, a delivery is `failed`.
    pub webhook_retry_schedule: Vec<Duration>,
    /// Events are kept for at least this long…
    pub event_retention_age: Duration,
    /// …and at least this many of the newest, whichever keeps more.
    pub event_retention_count: i64,
    /// A pin whose fleet is still behind this long after it moved is
    /// `stalled`.
    pub progress_deadline: Duration,
    /// Promotions must first have soaked on this source environment.
    pub soak: Option<soak::SoakSource>,
    /// The canary health rule (`--canary-max-unhealthy`,
    /// `--canary-min-reports`): none, and canaries are never aborted for
    /// their health.
    pub canary_rule: Option<pinion_core::HealthRule>,
    /// What the page calls this server's environment.
    pub environment: String,
    /// Other environments' servers, shown beside this one on the page.
    pub peers: Vec<peers::Peer>,
    /// How long a page session lasts (it ends sooner with its token).
    pub session_lifetime: Duration,
    /// Mark the session cookie `Secure` (served over TLS).
    pub secure_cookies: bool,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<tls::TlsFiles>,
    /// The regions pins may be in (`--regions`); none: any region, and a
    /// promotion that opens a region says so.
    pub regions: Option<std::collections::BTreeSet<pinion_core::Region>>,
    /// The most instances the fleet holds (live and silent, not yet
    /// forgotten), in total and per reporting token.
    pub fleet_max_instances: usize,
    pub fleet_max_instances_per_token: Option<usize>,
    /// The most event streams one token may hold open.
    pub max_streams_per_token: usize,
    /// Webhooks may point at loopback, private and link-local addresses.
    pub webhook_allow_private: bool,
    /// Failed authentications a source may make at once before it is
    /// answered `429` (one more allowed each second after).
    pub auth_failure_burst: u32,
}

impl Settings {
    pub fn new(database: DatabaseUrl) -> Settings {
        Settings {
            database,
            registry_check: RegistryCheck::default(),
            request_timeout: Duration::from_secs(30),
            body_limit: 64 * 1024,
            reload_interval: Duration::from_secs(1),
            require_provenance: false,
            audit_retention: 10_000,
            registry: pinion_registry::RegistrySettings::default(),
            drift_interval: Duration::from_secs(300),
            drift_tag: pinion_registry::Tag::latest(),
            strict_reads: false,
            create_database: true,
            metrics_token_required: false,
            secret_key: None,
            webhook_retry_schedule: DEFAULT_RETRY_SCHEDULE
                .iter()
                .map(|seconds| Duration::from_secs(*seconds))
                .collect(),
            event_retention_age: Duration::from_secs(7 * 24 * 3600),
            event_retention_count: 100_000,
            progress_deadline: Duration::from_secs(600),
            soak: None,
            canary_rule: None,
            environment: "this server".to_owned(),
            peers: Vec::new(),
            session_lifetime: Duration::from_secs(12 * 3600),
            secure_cookies: false,
            tls: None,
            regions: None,
            fleet_max_instances: 200_000,
            fleet_max_instances_per_token: None,
            max_streams_per_token: 64,
            webhook_allow_private: false,
            auth_failure_burst: 20,
        }
    }
}

/// `5s,5m,30m,2h,5h,10h,10h`, in seconds: the contract's default.
pub const DEFAULT_RETRY_SCHEDULE: &[u64] = &[5, 300, 1800, 7200, 18_000, 36_000, 36_000];

/// How often old events are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not open the database")]
    Store(#[from] StoreError),
    #[error("the listener failed")]
    Io(#[from] std::io::Error),
    #[error("could not set up the registry client")]
    Registry(#[from] pinion_registry::RegistryError),
    #[error("could not load the TLS certificate: {0}")]
    Tls(String),
}

/// The router with every endpoint and layer. Handlers that wait on
/// anything bound themselves by their request's deadline
/// ([`deadline::Deadline`]); none is cut off from outside, which could
/// answer while a write it started is still on its way to a commit.
fn router(state: AppState) -> Router {
    let observe = middleware::ObserveLayer::new(state.http_metrics().clone());
    openapi::routes()
        .merge(ui::routes())
        .fallback(handlers::not_found)
        .with_state(state)
        .layer(observe)
}

/// Serves until `shutdown` completes, then finishes in-flight requests.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let reload_interval = settings.reload_interval;
    let open_settings = settings.clone();
    let state = tokio::task::spawn_blocking(move || AppState::open(open_settings))
        .await
        .map_err(std::io::Error::other)??;
    let watcher = tokio::spawn(watch_database(state.clone(), reload_interval));
    let following = Arc::new(AtomicBool::new(true));
    follow_database(state.clone(), following.clone())?;
    let drift_watcher = tokio::spawn(drift::watch(state.clone()));
    let summaries = tokio::spawn(summarise_auth_failures(state.clone()));
    let follower = tokio::spawn(feed::follow(state.clone()));
    let outbox = tokio::spawn(outbox::deliver(state.clone()));
    let pruner = tokio::spawn(prune_events(state.clone()));
    let summariser = tokio::spawn(fleet::summarise(state.clone()));
    let flusher = tokio::spawn(fleet::flush(state.clone()));
    let peer_poller = (!state.settings().peers.is_empty()).then(|| {
        tokio::spawn(peers::poll(
            state.settings().peers.clone(),
            state.peers().clone(),
        ))
    });
    let poller = matches!(state.settings().database, DatabaseUrl::Postgres(_))
        .then(|| tokio::spawn(fleet::poll(state.clone())));
    let tls = match &state.settings().tls {
        None => None,
        Some(files) => Some(Arc::new(
            tls::Tls::open(files.clone()).map_err(ServeError::Tls)?,
        )),
    };
    let tls_watcher = tls.clone().map(|tls| tokio::spawn(tls::watch(tls)));
    let address = listener.local_addr()?;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!("answering HTTP on {workers} worker thread(s)");
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {scheme}://{address}");
    let closing = state.clone();
    let shutdown = async move {
        shutdown.await;
        // Streams end, so the connections they hold let the stop finish.
        closing.feed().close();
    };
    let result = listen::serve(listener, router(state.clone()), tls, shutdown).await;
    if let Some(tls_watcher) = tls_watcher {
        tls_watcher.abort();
    }
    watcher.abort();
    follower.abort();
    outbox.abort();
    pruner.abort();
    summariser.abort();
    flusher.abort();
    if let Some(poller) = poller {
        poller.abort();
    }
    if let Some(peer_poller) = peer_poller {
        peer_poller.abort();
    }
    // What the last second brought in goes to the database too.
    fleet::flush_once(&state, &mut 0).await;
    following.store(false, Ordering::SeqCst);
    drift_watcher.abort();
    summaries.abort();
    record_auth_failures(&state).await;
    tracing::info!("stopped");
    Ok(result?)
}

/// Once a minute, writes the failed authentications counted since the last
/// time to the audit log: one entry per source and action.
async fn summarise_auth_failures(state: AppState) {
    let mut ticker = tokio::time::interval(AUTH_FAILURE_SUMMARY_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        record_auth_failures(&state).await;
    }
}

/// How often failed authentications are summarised in the audit log.
const AUTH_FAILURE_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Prunes events beyond the retention, at start-up and every ten minutes.
async fn prune_events(state: AppState) {
    let mut ticker = tokio::time::interval(PRUNE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let settings = state.settings();
        let before = crate::clock::now() - settings.event_retention_age;
        match state
            .prune_events(before, settings.event_retention_count)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned old events"),
            Err(err) => tracing::warn!(code = err.code.as_str(), "could not prune old events"),
        }
    }
}

async fn record_auth_failures(state: &AppState) {
    for refusal in state.auth_failures().drain() {
        if let Err(err) = state.record_refusal(refusal).await {
            tracing::warn!(
                code = err.code.as_str(),
                "could not record failed authentications in the audit log"
            );
        }
    }
}

/// Follows the database's change feed where it has one (PostgreSQL's
/// `NOTIFY`), so another replica's write reaches this one's view within
/// milliseconds; the periodic check in [`watch_database`] stays as the
/// fallback for a missed notification or a broken feed connection.
fn follow_database(state: AppState, following: Arc<AtomicBool>) -> std::io::Result<()> {
    let url = state.settings().database.clone();
    let own_writers = state.own_writers();
    std::thread::Builder::new()
        .name("pinion-changes".into())
        .spawn(move || {
            let keep_going = || following.load(Ordering::SeqCst);
            let mut on_change = || {
                state.feed().wake();
                state.outbox_wake().notify_one();
                if let Err(err) = state.reload_if_changed() {
                    tracing::warn!(error = %err, "could not reload after a change notification");
                }
            };
            while keep_going() {
                match pinion_store::follow_changes(&url, &own_writers, &keep_going, &mut on_change) {
                    Ok(_) => return,
                    Err(err) => {
                        tracing::warn!(error = %err, "change feed lost; retrying in 1s (periodic checks continue)");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })?;
    Ok(())
}

/// Picks up changes other processes commit, so a token created or revoked
/// offline takes effect within `interval`, and notices a database file
/// removed or replaced under the server.
async fn watch_database(state: AppState, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost = false;
    loop {
        ticker.tick().await;
        match state.check_identity() {
            Some(Err(err)) if !lost => {
                lost = true;
                tracing::error!(error = %err, "the database is gone: writes and readiness fail until it is back");
            }
            Some(Ok(())) if lost => {
                lost = false;
                tracing::info!("the database file is back");
            }
            _ => {}
        }
        let polled = state.clone();
        match tokio::task::spawn_blocking(move || polled.reload_if_changed()).await {
            Ok(Ok(true)) => {
                tracing::debug!("view reloaded after an outside change");
                state.feed().wake();
                state.outbox_wake().notify_one();
            }
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not check the database for changes")
            }
            Err(err) => tracing::warn!(error = %err, "database watcher task failed"),
        }
    }
}
