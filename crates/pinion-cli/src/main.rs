//! The `pinion` binary: arguments are parsed into settings before any IO,
//! then one function per subcommand runs and returns an exit code:
//! 0 yes, 1 the check ran and says no, 2 anything else.

// Data goes to stdout through `output`, which survives a closed pipe.
#![deny(clippy::print_stdout)]

mod actions;
mod cli;
mod client;
mod command;
mod output;
mod report;
mod sse;
mod target;

use clap::Parser;

use crate::cli::{Cli, Command};

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
        Command::Serve(args) => report(command::serve::run(args)),
        Command::Token(subcommand) => report(command::token::run(subcommand)),
        Command::Template(subcommand) => report(command::template::run(subcommand)),
        Command::Promote(args) => runtime(command::promote::run(args)),
        Command::Verify(args) => runtime(command::verify::run(args)),
        Command::Rollback(args) => runtime(command::rollback::run(args)),
        Command::Hold(args) => runtime(command::hold::hold(args)),
        Command::Release(args) => runtime(command::hold::release(args)),
        Command::History(args) => runtime(command::history::run(args)),
        Command::Digest(args) => runtime(command::digest::run(args)),
        Command::Drift(args) => runtime(command::drift::run(args)),
        Command::Watch(args) => runtime(command::watch::run(args)),
        Command::Retention(args) => runtime(command::retention::run(args)),
        Command::Status(args) => runtime(command::status::run(args)),
        Command::Completions(args) => command::docs::completions(args.shell),
        Command::ManPages(args) => report(command::docs::man_pages(&args.dir)),
        Command::Openapi => {
            if output::line(pinion_server::openapi::document()) {
                ExitCode::Success
            } else {
                ExitCode::Error
            }
        }
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
