//! Property-based API testing: schemathesis (from PyPI) against a real
//! server on SQLite and one on PostgreSQL, driven by the server's own
//! `GET /openapi.json`, with a fixed seed and a bounded budget. Checks: no
//! 5xx; every answer's status, content type, headers and body conform to
//! the description; data that breaks the schema is rejected; a missing
//! required header is refused; an undescribed method is refused.
//!
//! The fuzzed servers run with a failed-authentication allowance sized for
//! a fuzzer (`--auth-failure-burst 1000000`: the default 20 would answer
//! most of its requests with 429 and leave the handlers untested; the limit
//! itself is tested by the end-to-end suite), and the one operation that
//! would end the run is left out: `DELETE /cp/admin/tokens/{name}`, which
//! the stateful phase aims at the fuzz token once it has read its name from
//! the token list (every request after that would be 401; revocation is
//! tested end to end). The description's strings carry the contract's
//! patterns (names, digests, instance ids), so generated values are
//! well-formed. Schemathesis's positive-data check is left out: a
//! well-formed name is still refused (rightly) when no such template or
//! pin exists.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The schemathesis this project is tested with.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Seconds of testing per engine, and examples per operation.
const MAX_TIME: &str = "75";
const MAX_EXAMPLES: &str = "25";
const SEED: &str = "20261202";
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
missing_required_header,unsupported_method";

/// Installs schemathesis if it is missing.
fn install() -> Result<(), String> {
    let present = Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if present {
        return Ok(());
    }
    eprintln!("==> pip install {SCHEMATHESIS}");
    let python = if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    };
    let status = Command::new(python)
        .args(["-m", "pip", "install", "--quiet", SCHEMATHESIS])
        .status()
        .map_err(|err| format!("pip: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("could not install {SCHEMATHESIS} ({status})"))
    }
}

/// A `pinion` command with no inherited settings.
fn pinion(binary: &Path, database: &str) -> Command {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars() {
        if key.starts_with("PINION_") {
            command.env_remove(key);
        }
    }
    command.env("PINION_DATABASE_URL", database);
    command
}

fn output(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command.output().map_err(|err| format!("{what}: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs schemathesis against a server on `database`.
fn against(binary: &Path, database: &str, engine: &str) -> Result<(), String> {
    output(
        pinion(binary, database).args([
            "template",
            "add",
            "codex",
            "--repository",
            "127.0.0.1:5999/codex",
        ]),
        "template add",
    )?;
    // A name the fuzzer will not make up: its stateful phase revokes the
    // tokens it finds names for.
    let token = output(
        pinion(binary, database).args([
            "token",
            "create",
            "--name",
            "fuzz-admin-5e0b7c21d9",
            "--scope",
            "admin",
        ]),
        "token create",
    )?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    let port = listener.local_addr().map_err(|err| err.to_string())?.port();
    drop(listener);
    let mut server = pinion(binary, database)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("PINION_REGISTRY_CHECK", "off")
        .env("PINION_LOG", "warn")
        .env("PINION_AUTH_FAILURE_BURST", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("pinion serve: {err}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = server.kill();
            return Err("the server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("==> schemathesis against a server on {engine} (seed {SEED}, {MAX_TIME} s)");
    let status = Command::new("schemathesis")
        .args(["run", &format!("http://127.0.0.1:{port}/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        .args(["--generation-with-security-parameters", "false"])
        .args([
            "--seed",
            SEED,
            "--max-examples",
            MAX_EXAMPLES,
            "--max-time",
            MAX_TIME,
        ])
        .args(["--workers", "2", "--exclude-path", "/metrics"])
        .args(["--exclude-operation-id", "revoke_token"])
        .args(["--output-sanitize", "true"])
        .status();
    let _ = server.kill();
    let _ = server.wait();
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "schemathesis found failures on {engine} ({status})"
        )),
        Err(err) => Err(format!("schemathesis: {err}")),
    }
}

/// Both engines; `postgres` is an admin URL that may create databases.
pub fn run(postgres: &str) -> Result<(), String> {
    install()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let built = Command::new(&cargo)
        .args(["build", "--locked", "-p", "pinion-cli"])
        .current_dir(&root)
        .status()
        .map_err(|err| format!("cargo build: {err}"))?;
    if !built.success() {
        return Err("building pinion failed".into());
    }
    let binary = root.join("target").join("debug").join("pinion");
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let sqlite = format!("sqlite://{}", dir.path().join("fuzz.db").display());
    against(&binary, &sqlite, "SQLite")?;
    let name = format!("pinion_fuzz_{}", std::process::id());
    let base = postgres.rsplit_once('/').map_or(postgres, |(base, _)| base);
    output(
        Command::new("psql").args(["-q", postgres, "-c", &format!("CREATE DATABASE {name}")]),
        "create the fuzz database",
    )?;
    let result = against(&binary, &format!("{base}/{name}"), "PostgreSQL");
    let _ = Command::new("psql")
        .args([
            "-q",
            postgres,
            "-c",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ])
        .output();
    result
}
