//! Pinion's automation.
//!
//! - `cargo xtask test [CARGO TEST ARGS]`: installs what a fresh machine
//!   lacks, starts PostgreSQL, and runs the whole suite on both engines.
//! - `cargo xtask bench [registry|http|events|fleet|policy|page|postgres|all]`: builds the release
//!   binary, starts what it measures (a real registry, the server, and the
//!   reference servers) on loopback, and prints the figures that
//!   `docs/benchmarks.md` records, each beside its baseline from the same run.
//! - `cargo xtask man`: the man pages, into `target/man/`.
//! - `cargo xtask openapi`: `docs/openapi.json`, written again from the code.
//! - `cargo xtask fuzz`: schemathesis against a server on each engine (the
//!   last step of `cargo xtask test`).
//! - `cargo xtask dist`: a statically linked release binary and its
//!   SHA-256, into `target/dist/`.

mod bench;
mod dist;
mod fuzz;
mod setup;
mod test;
// The OCI registry and image helpers the end-to-end tests use, shared so the
// benchmark pushes images exactly as the tests do.
#[allow(clippy::unwrap_used, dead_code)]
#[path = "../../crates/pinion-cli/tests/it/oci.rs"]
mod oci;

use std::process::ExitCode;

/// `cargo xtask man`: the man pages, made from the CLI's clap definitions
/// by the binary itself, into `target/man/`.
fn man() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let out = root.join("target").join("man");
    let status = std::process::Command::new(&cargo)
        .args(["run", "--quiet", "-p", "pinion-cli", "--", "man-pages"])
        .arg(&out)
        .current_dir(&root)
        .status()
        .map_err(|err| format!("cargo run: {err}"))?;
    if !status.success() {
        return Err(format!("making the man pages failed ({status})"));
    }
    eprintln!(
        "man pages in {} (try `man -l {}/pinion.1`)",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `cargo xtask openapi`: writes `docs/openapi.json` again from the code
/// (the test `the_committed_description_is_the_generated_one` asks for it
/// after a change to the API).
fn openapi() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let output = std::process::Command::new(&cargo)
        .args(["run", "--quiet", "-p", "pinion-cli", "--", "openapi"])
        .current_dir(&root)
        .output()
        .map_err(|err| format!("cargo run: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "making the description failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let path = root.join("docs").join("openapi.json");
    std::fs::write(&path, &output.stdout).map_err(|err| format!("{}: {err}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["bench"] | ["bench", "all"] => bench::run(bench::Which {
            registry: true,
            http: true,
            postgres: true,
            events: true,
            fleet: true,
            policy: true,
            page: true,
        }),
        ["bench", "registry"] => bench::run(bench::Which {
            registry: true,
            ..bench::Which::default()
        }),
        ["bench", "http"] => bench::run(bench::Which {
            http: true,
            ..bench::Which::default()
        }),
        ["bench", "events"] => bench::run(bench::Which {
            events: true,
            ..bench::Which::default()
        }),
        ["bench", "fleet"] => bench::run(bench::Which {
            fleet: true,
            ..bench::Which::default()
        }),
        ["bench", "policy"] => bench::run(bench::Which {
            policy: true,
            ..bench::Which::default()
        }),
        ["bench", "page"] => bench::run(bench::Which {
            page: true,
            ..bench::Which::default()
        }),
        ["bench", "postgres"] => bench::run(bench::Which {
            postgres: true,
            ..bench::Which::default()
        }),
        ["test", extra @ ..] => test::run(extra),
        ["man"] => man(),
        ["openapi"] => openapi(),
        ["fuzz"] => setup::postgres().and_then(|postgres| fuzz::run(&postgres)),
        ["dist"] => dist::run(),
        _ => Err(
            "usage: cargo xtask test [CARGO TEST ARGS] | cargo xtask bench [registry|http|events|fleet|policy|page|postgres|all] | cargo xtask man | cargo xtask dist | cargo xtask openapi | cargo xtask fuzz"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("error: {reason}");
            ExitCode::from(2)
        }
    }
}
