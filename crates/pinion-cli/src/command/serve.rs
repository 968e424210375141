//! `pinion serve`: the control plane. Flags and environment become
//! [`Settings`] here, before anything listens.

use std::time::Duration;

use anyhow::Context;
use pinion_server::{RegistryCheck, Settings};
use pinion_store::DatabaseUrl;

use crate::cli::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
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
    settings.drift_interval = parse_interval(&args.drift_interval).map_err(anyhow::Error::msg)?;
    settings.drift_tag = pinion_registry::Tag::parse(&args.drift_tag)
        .map_err(|err| anyhow::anyhow!("--drift-tag: {err}"))?;
    if args.audit_retention == 0 {
        anyhow::bail!("--audit-retention must be at least 1");
    }
    settings.audit_retention = args.audit_retention;
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

/// `300` (seconds), `30s`, `5m`, `1h` or `500ms`; at least 100 ms.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!(
            "interval `{}` must be a number with an optional unit (ms, s, m, h)",
            text.escape_debug()
        )
    })?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(number),
        "ms" => Duration::from_millis(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "interval unit `{}` must be ms, s, m or h",
                unit.escape_debug()
            ));
        }
    };
    if duration < Duration::from_millis(100) {
        return Err("the drift interval must be at least 100ms".into());
    }
    Ok(duration)
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

/// Logs to stderr; `PINION_LOG` sets the filter (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PINION_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
