//! What a fresh Debian machine lacks for the test suite and the benchmarks:
//! Debian packages, and a running PostgreSQL that the suite may create
//! databases on.

use std::process::{Command, Stdio};

/// Installs the Debian package of each `(binary, package)` whose binary is
/// not on the `PATH`.
pub fn install_missing(tools: &[(&str, &str)]) -> Result<(), String> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(binary, _)| !on_path(binary))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

fn on_path(binary: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    eprintln!("==> installing {}", packages.join(" "));
    // As root `apt-get` works as is; otherwise through sudo, if there is one.
    let sudo = if is_root() { "" } else { "sudo " };
    let script = format!(
        "{sudo}apt-get update -qq && {sudo}env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {}",
        packages.join(" ")
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .map_err(|err| format!("apt-get: {err}"))?;
    status.success().then_some(()).ok_or_else(|| {
        format!(
            "could not install {}: install them by hand (Debian package names)",
            packages.join(" ")
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// An admin URL of a running PostgreSQL on which databases may be created:
/// `PINION_TEST_POSTGRES_URL` if set, else the machine's own server on
/// 127.0.0.1:5432, installed and started if need be.
pub fn postgres() -> Result<String, String> {
    if let Ok(url) = std::env::var("PINION_TEST_POSTGRES_URL") {
        if !url.is_empty() {
            return answers(&url)
                .then_some(url)
                .ok_or_else(|| "PINION_TEST_POSTGRES_URL does not answer `SELECT 1`".to_owned());
        }
    }
    install_missing(&[
        ("pg_ctlcluster", "postgresql"),
        ("psql", "postgresql-client"),
    ])?;
    if !ready() {
        eprintln!("==> starting postgresql");
        let clusters = std::fs::read_dir("/etc/postgresql")
            .map_err(|err| format!("no PostgreSQL cluster in /etc/postgresql: {err}"))?;
        let mut versions: Vec<String> = clusters
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        versions.sort();
        let version = versions
            .last()
            .ok_or("no PostgreSQL cluster in /etc/postgresql")?;
        // An error here (already running, say) is judged by the wait below.
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", version, "main", "start"])
            .status();
        for _ in 0..30 {
            if ready() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let trusted = "postgres://postgres@127.0.0.1:5432/postgres";
    if answers(trusted) {
        return Ok(trusted.to_owned());
    }
    // A fresh install authenticates TCP clients by password: give the admin
    // role one known only to this machine's test runs.
    let with_password = "postgres://postgres:pinion-test@127.0.0.1:5432/postgres";
    let _ = Command::new("su")
        .args([
            "postgres",
            "-c",
            "psql -qc \"ALTER ROLE postgres PASSWORD 'pinion-test'\"",
        ])
        .stdout(Stdio::null())
        .status();
    answers(with_password)
        .then(|| with_password.to_owned())
        .ok_or_else(|| "PostgreSQL on 127.0.0.1:5432 does not let the test suite in; set PINION_TEST_POSTGRES_URL to an admin URL".to_owned())
}

fn ready() -> bool {
    Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
        .status()
        .is_ok_and(|status| status.success())
}

fn answers(url: &str) -> bool {
    Command::new("psql")
        .args([url, "-Atqc", "SELECT 1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
