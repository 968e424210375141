//! `cargo xtask test`: the whole suite on a fresh machine. Installs the
//! Debian packages the suite drives, makes sure a PostgreSQL server runs,
//! then runs every test: the workspace once (the store suite on both
//! engines, the end-to-end suite on SQLite plus its PostgreSQL-only tests),
//! then the end-to-end suite again with every server on PostgreSQL, then
//! schemathesis against a server on each engine (see `fuzz.rs`).

use std::process::Command;

use crate::setup;

/// The binaries the suite runs, and the Debian package of each: curl and jq
/// (the example pipeline is tested as written), sqlite3 (store tests edit a
/// database by hand), a real OCI registry and skopeo to push images to it,
/// htpasswd for the registry's basic auth, socat as a TCP proxy the fault
/// tests freeze in front of PostgreSQL, openssl to make the TLS tests'
/// certificates, promtool (from Debian's prometheus package) to check
/// `/metrics`, systemd-analyze to check the systemd unit, and a real headless browser (Chromium
/// and its WebDriver server) for the page's tests.
const TOOLS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("jq", "jq"),
    ("sqlite3", "sqlite3"),
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("htpasswd", "apache2-utils"),
    ("tar", "tar"),
    ("socat", "socat"),
    ("openssl", "openssl"),
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

pub fn run(extra: &[&str]) -> Result<(), String> {
    setup::install_missing(TOOLS)?;
    let postgres = setup::postgres()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());

    eprintln!(
        "==> cargo test --workspace --locked (store on SQLite and PostgreSQL, end to end on SQLite)"
    );
    let mut workspace = Command::new(&cargo);
    workspace
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .env("PINION_TEST_POSTGRES_URL", &postgres)
        .env_remove("PINION_TEST_ENGINE");
    check(workspace.status(), "the workspace tests")?;

    // The PostgreSQL-only tests ran in the pass above; skip them here.
    eprintln!("==> end-to-end suite with every server on PostgreSQL");
    let mut end_to_end = Command::new(&cargo);
    end_to_end
        .args(["test", "--locked", "-p", "pinion-cli", "--test", "it"])
        .args(extra)
        .args(["--", "--skip", "postgres::"])
        .env("PINION_TEST_POSTGRES_URL", &postgres)
        .env("PINION_TEST_ENGINE", "postgres");
    check(end_to_end.status(), "the end-to-end tests on PostgreSQL")?;

    // The API against its own description, on both engines.
    crate::fuzz::run(&postgres)
}

fn check(status: std::io::Result<std::process::ExitStatus>, what: &str) -> Result<(), String> {
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{what} failed ({status})")),
        Err(err) => Err(format!("could not run cargo for {what}: {err}")),
    }
}
