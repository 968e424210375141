//! `pinion serve`: the control plane. Flags and environment become
//! [`Settings`] here, before anything listens.

use std::time::Duration;

use anyhow::Context;
use pinion_core::{Label, WebhookUrl};
use pinion_server::peers::Peer;
use pinion_server::seal::SecretKey;
use pinion_server::soak::SoakSource;
use pinion_server::{RegistryCheck, Settings};
use pinion_store::DatabaseUrl;

use super::parse_duration;
use crate::cli::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging()?;
    let database = DatabaseUrl::parse(&args.database.database)?;
    if let Some(path) = database.sqlite_path().filter(|_| database.is_missing()) {
        if !args.create_database {
            anyhow::bail!(
                "no database at `{}`, and --create-database is false: check the path, or restore the file",
                path.display()
            );
        }
        tracing::warn!(path = %path.display(), "no database at this path: creating a new, empty one");
    }
    let mut settings = Settings::new(database);
    settings.create_database = args.create_database;
    settings.metrics_token_required = args.metrics_token_required;
    settings.secret_key = secret_key(&args, &settings.database)?;
    settings.webhook_retry_schedule = args
        .webhook_retry_schedule
        .split(',')
        .map(|step| {
            parse_duration(step).map_err(|err| anyhow::anyhow!("--webhook-retry-schedule: {err}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if settings.webhook_retry_schedule.len() > 50 {
        anyhow::bail!("--webhook-retry-schedule has more than 50 steps");
    }
    settings.event_retention_age = parse_duration(&args.event_retention_age)
        .map_err(|err| anyhow::anyhow!("--event-retention-age: {err}"))?;
    settings.event_retention_count = i64::from(args.event_retention_count);
    // An event must outlive its deliveries' retries (it is never pruned
    // while one waits, but a retention that cannot hold a delivery's whole
    // schedule is a misconfiguration to refuse, not to find out about).
    let schedule: Duration = settings.webhook_retry_schedule.iter().sum();
    if settings.event_retention_age < schedule {
        anyhow::bail!(
            "--event-retention-age ({}s) is shorter than --webhook-retry-schedule takes in all ({}s): events must be kept at least as long as their deliveries are retried",
            settings.event_retention_age.as_secs(),
            schedule.as_secs()
        );
    }
    settings.progress_deadline = parse_duration(&args.progress_deadline)
        .map_err(|err| anyhow::anyhow!("--progress-deadline: {err}"))?;
    settings.soak = soak_source(&args)?;
    settings.peers = peers(&args)?;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        settings.tls = Some(pinion_server::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
        // Over TLS the session cookie is `Secure`.
        settings.secure_cookies = true;
    }
    settings.environment = args.environment.trim().to_owned();
    if settings.environment.is_empty() || settings.environment.len() > 64 {
        anyhow::bail!("--environment must be 1 to 64 characters");
    }
    settings.session_lifetime = parse_duration(&args.session_lifetime)
        .map_err(|err| anyhow::anyhow!("--session-lifetime: {err}"))?;
    settings.canary_rule = match args.canary_max_unhealthy {
        None => None,
        Some(pct) if pct.is_finite() && (0.0..=100.0).contains(&pct) => {
            Some(pinion_core::HealthRule {
                max_unhealthy: pct,
                min_reports: args.canary_min_reports.max(1),
            })
        }
        Some(pct) => {
            anyhow::bail!("--canary-max-unhealthy: {pct} is not a percentage from 0 to 100")
        }
    };
    settings.registry_check =
        RegistryCheck::parse(&args.registry_check).map_err(anyhow::Error::msg)?;
    if args.request_timeout == 0 {
        anyhow::bail!("--request-timeout must be at least 1 second");
    }
    settings.request_timeout = Duration::from_secs(args.request_timeout);
    settings.require_provenance = args.require_provenance;
    settings.strict_reads = match args.read_consistency.as_str() {
        "strict" => true,
        "fast" => false,
        _ => matches!(settings.database, DatabaseUrl::Postgres(_)),
    };
    settings.registry = super::digest::settings(&args.registry).map_err(anyhow::Error::msg)?;
    settings.drift_interval = parse_duration(&args.drift_interval)
        .map_err(|err| anyhow::anyhow!("--drift-interval: {err}"))?;
    settings.drift_tag = pinion_registry::Tag::parse(&args.drift_tag)
        .map_err(|err| anyhow::anyhow!("--drift-tag: {err}"))?;
    if args.audit_retention == 0 {
        anyhow::bail!("--audit-retention must be at least 1");
    }
    settings.audit_retention = args.audit_retention;
    settings.regions = match &args.regions {
        None => None,
        Some(list) => {
            let regions = list
                .split(',')
                .map(str::trim)
                .filter(|region| !region.is_empty())
                .map(|region| {
                    pinion_core::Region::parse(region)
                        .map_err(|err| anyhow::anyhow!("--regions: {}", err.reason()))
                })
                .collect::<anyhow::Result<std::collections::BTreeSet<_>>>()?;
            if regions.is_empty() {
                anyhow::bail!("--regions names no region");
            }
            Some(regions)
        }
    };
    if args.fleet_max_instances == 0 {
        anyhow::bail!("--fleet-max-instances must be at least 1");
    }
    settings.fleet_max_instances = args.fleet_max_instances;
    if args.fleet_max_instances_per_token == Some(0) {
        anyhow::bail!("--fleet-max-instances-per-token must be at least 1");
    }
    settings.fleet_max_instances_per_token = args.fleet_max_instances_per_token;
    if args.max_streams_per_token == 0 {
        anyhow::bail!("--max-streams-per-token must be at least 1");
    }
    settings.max_streams_per_token = args.max_streams_per_token;
    settings.webhook_allow_private = args.webhook_allow_private;
    if args.auth_failure_burst == 0 {
        anyhow::bail!("--auth-failure-burst must be at least 1");
    }
    settings.auth_failure_burst = args.auth_failure_burst;
    let workers = args.workers.map_or_else(default_workers, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("could not listen on `{}`", args.listen))?;
        pinion_server::run(settings, listener, shutdown_signal()?).await?;
        Ok(())
    })
}

/// One HTTP worker per core but one, at least one. The core left over runs
/// the writer thread (its fsyncs), the kernel's network work and database
/// checks; on two cores, a second worker made reads' tail latency and
/// promotions at concurrency 1 worse, not better (docs/benchmarks.md).
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .saturating_sub(1)
        .max(1)
}

/// The key webhook secrets are sealed with (see `--secret-key-file`).
/// `--soak-source NAME=URL` and `--soak`, with the source's token from
/// `PINION_SOAK_TOKEN` (never a flag: a secret on a command line is in every
/// process listing).
fn soak_source(args: &ServeArgs) -> anyhow::Result<Option<SoakSource>> {
    let Some(source) = &args.soak_source else {
        return Ok(None);
    };
    let (name, url) = source
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--soak-source must be NAME=URL"))?;
    let name = Label::parse(name).map_err(|err| anyhow::anyhow!("--soak-source: {err}"))?;
    // The rules of a webhook URL: http(s), a host, no credentials.
    let checked = WebhookUrl::parse(url).map_err(|err| anyhow::anyhow!("--soak-source: {err}"))?;
    let mut url = reqwest::Url::parse(checked.as_str())
        .map_err(|err| anyhow::anyhow!("--soak-source: {err}"))?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    let required = parse_duration(&args.soak).map_err(|err| anyhow::anyhow!("--soak: {err}"))?;
    let token = std::env::var("PINION_SOAK_TOKEN")
        .ok()
        .filter(|token| !token.is_empty());
    if token.is_none() {
        tracing::warn!(source = %name.as_str(), "PINION_SOAK_TOKEN is not set: the soak source is asked without a token");
    }
    let source = SoakSource::new(name, url, token, required).map_err(anyhow::Error::msg)?;
    tracing::info!(source = %source.name.as_str(), url = %source.url, soak = ?source.required, "promotions must soak on the source first");
    Ok(Some(source))
}

/// `--peer NAME=URL`, each with its token from `PINION_PEER_TOKEN_<NAME>`.
fn peers(args: &ServeArgs) -> anyhow::Result<Vec<Peer>> {
    let mut peers: Vec<Peer> = Vec::new();
    for peer in &args.peers {
        let (name, url) = peer
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--peer must be NAME=URL"))?;
        let name = Peer::parse_name(name).map_err(|err| anyhow::anyhow!("--peer: {err}"))?;
        if peers.iter().any(|known| known.name == name) {
            anyhow::bail!("--peer: `{name}` is named twice");
        }
        let checked =
            WebhookUrl::parse(url).map_err(|err| anyhow::anyhow!("--peer {name}: {err}"))?;
        let mut url = reqwest::Url::parse(checked.as_str())
            .map_err(|err| anyhow::anyhow!("--peer {name}: {err}"))?;
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let variable = Peer::token_variable(&name);
        let token = std::env::var(&variable)
            .ok()
            .filter(|token| !token.is_empty());
        if token.is_none() {
            tracing::warn!(peer = %name, "{variable} is not set: the peer is read without a token");
        }
        tracing::info!(peer = %name, url = %url, "the page shows this peer's pins");
        peers.push(Peer { name, url, token });
    }
    Ok(peers)
}

fn secret_key(args: &ServeArgs, database: &DatabaseUrl) -> anyhow::Result<Option<SecretKey>> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let read = |path: &std::path::Path| -> anyhow::Result<SecretKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read the secret key file `{}`", path.display()))?;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the secret key file can be read by others than its owner; `chmod 600` it");
        }
        SecretKey::from_hex(&text)
            .with_context(|| format!("the secret key file `{}`", path.display()))
    };
    if let Some(path) = &args.secret_key_file {
        return read(path).map(Some);
    }
    let Some(database) = database.sqlite_path() else {
        return Ok(None);
    };
    let path = std::path::PathBuf::from(format!("{}.key", database.display()));
    if path.exists() {
        return read(&path).map(Some);
    }
    let key = SecretKey::generate().context("could not make a secret key")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("could not create the secret key file `{}`", path.display()))?;
    writeln!(file, "{}", key.to_hex())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "created the key webhook secrets are sealed with; back it up with the database");
    Ok(Some(key))
}

/// Completes on SIGTERM or ctrl-c (SIGINT). The handlers are installed
/// here, before the server says it is listening, so a signal that arrives
/// the moment after is a graceful stop and not the default instant death.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutting down: finishing requests in flight");
    })
}

/// Logs to stderr; `PINION_LOG` sets the filter (default `info`),
/// `PINION_LOG_FORMAT` the format: `text` (default) or `json`, one object a
/// line, with the request's fields (`request_id`, `method`, `route`, and on
/// its last line `status` and `elapsed_ms`) under `span`.
fn init_logging() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PINION_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = std::env::var("PINION_LOG_FORMAT").unwrap_or_default();
    match format.as_str() {
        "" | "text" => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init(),
        "json" => {
            pinion_server::log_every_request();
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
        }
        other => anyhow::bail!(
            "PINION_LOG_FORMAT must be `text` or `json`, not `{}`",
            other.escape_debug()
        ),
    }
    Ok(())
}
