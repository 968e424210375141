//! The `pinion` binary: arguments are parsed into settings before any IO,
//! then one function per subcommand runs and returns an exit code:
//! 0 yes, 1 the check ran and says no, 2 anything else.

mod actions;
mod admin;
mod cli;
mod client;
mod drift;
mod gate;
mod registry;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pinion_server::{RegistryCheck, Settings};
use pinion_store::DatabaseUrl;

use crate::cli::{Cli, Command, ServeArgs};

/// The process's exit status, as the contract defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    /// The check ran and says no (verify: pin missing or different).
    No = 1,
    /// Usage, invalid input, auth, network, server error, unexpected answer.
    Error = 2,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => report(serve(args)),
        Command::Token(command) => report(admin::token(command)),
        Command::Template(command) => report(admin::template(command)),
        Command::Promote(args) => runtime(gate::promote(args)),
        Command::Verify(args) => runtime(gate::verify(args)),
        Command::Rollback(args) => runtime(gate::rollback(args)),
        Command::History(args) => runtime(gate::history(args)),
        Command::Digest(args) => runtime(registry::digest(args)),
        Command::Drift(args) => runtime(drift::drift(args)),
    };
    std::process::ExitCode::from(code as u8)
}

/// Prints an error as one line with its whole cause chain.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::Success,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::Error
        }
    }
}

fn runtime(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            ExitCode::Error
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let mut settings = Settings::new(DatabaseUrl::parse(&args.database.database)?);
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
    settings.registry = registry::settings(&args.registry).map_err(anyhow::Error::msg)?;
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
