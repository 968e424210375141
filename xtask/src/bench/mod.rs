//! The benchmarks. Every figure is printed beside a baseline measured in the
//! same run on the same machine, because these machines are noisy.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::oci::{Auth, TestRegistry};

/// Which benchmarks to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Which {
    pub registry: bool,
    pub http: bool,
    pub postgres: bool,
    pub events: bool,
    pub fleet: bool,
    pub policy: bool,
    pub page: bool,
}

pub fn run(which: Which) -> Result<(), String> {
    let Which {
        registry,
        http,
        postgres,
        events,
        fleet,
        policy,
        page,
    } = which;
    let mut tools = vec![("hyperfine", "hyperfine")];
    if registry {
        tools.extend([
            ("skopeo", "skopeo"),
            ("docker-registry", "docker-registry"),
            ("htpasswd", "apache2-utils"),
        ]);
    }
    if http {
        tools.extend([
            ("wrk", "wrk"),
            ("nginx", "nginx-light"),
            ("etcd", "etcd-server"),
            ("etcdctl", "etcd-client"),
        ]);
    }
    if events || policy {
        tools.extend([("wrk", "wrk"), ("curl", "curl")]);
    }
    if fleet {
        tools.extend([
            ("wrk", "wrk"),
            ("curl", "curl"),
            ("psql", "postgresql-client"),
        ]);
    }
    if postgres {
        tools.extend([
            ("wrk", "wrk"),
            ("pgbench", "postgresql"),
            ("psql", "postgresql-client"),
        ]);
    }
    crate::setup::install_missing(&tools)?;
    let pinion = build_release()?;
    println!(
        "machine: {} cores, {}",
        cores(),
        first_line("uname", &["-sr"])
    );
    if registry {
        bench_registry(&pinion)?;
    }
    if http {
        http::run(&pinion)?;
    }
    if events {
        events::run(&pinion)?;
    }
    if fleet {
        fleet::run(&pinion)?;
    }
    if policy {
        policy::run(&pinion)?;
    }
    if page {
        page::run(&pinion)?;
    }
    if postgres {
        postgres::run(&pinion)?;
    }
    Ok(())
}

/// The release binary, built now; or, for an A/B of two builds in one
/// sitting, the binary `PINION_BENCH_BINARY` names.
fn build_release() -> Result<PathBuf, String> {
    if let Some(binary) = std::env::var_os("PINION_BENCH_BINARY") {
        return PathBuf::from(binary)
            .canonicalize()
            .map_err(|err| format!("PINION_BENCH_BINARY: {err}"));
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "pinion-cli"])
        .status()
        .map_err(|err| format!("cargo build: {err}"))?;
    if !status.success() {
        return Err("cargo build --release failed".into());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/release/pinion")
        .canonicalize()
        .map_err(|err| err.to_string())
}

fn cores() -> String {
    std::thread::available_parallelism().map_or("?".into(), |n| n.to_string())
}

pub(crate) fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or(0)
}

pub(crate) fn wait_for_port(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listened on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A child process killed when dropped.
pub(crate) struct Guard(pub Child);

impl Drop for Guard {
    /// SIGTERM first, so a master process (nginx) takes its workers with it;
    /// SIGKILL if it is still there after two seconds.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn pinion_cmd(pinion: &Path, args: &[&str], database: &str) -> Result<String, String> {
    let output = Command::new(pinion)
        .args(args)
        .env("PINION_DATABASE_URL", database)
        .output()
        .map_err(|err| err.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "pinion {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `pinion promote` of one template to `digest` through the server at `url`.
pub(crate) fn pinion_promote(
    pinion: &Path,
    url: &str,
    token: &str,
    template: &str,
    digest: &str,
) -> Result<(), String> {
    let status = Command::new(pinion)
        .args([
            "promote",
            "--server",
            url,
            "--template",
            template,
            "--digest",
            digest,
        ])
        .env("PINION_TOKEN", token)
        .stdout(Stdio::null())
        .status()
        .map_err(|err| err.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("promoting {template} to {digest} failed"))
    }
}

/// Starts `pinion serve` on a free port; returns the guard and the base URL.
pub(crate) fn serve(
    pinion: &Path,
    database: &str,
    env: &[(&str, &str)],
) -> Result<(Guard, String), String> {
    let port = free_port();
    let child = Command::new(pinion)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            database,
        ])
        .env("PINION_LOG", "warn")
        // The benches' receivers listen on loopback, and their readers
        // share one token: the limits meant for hostile neighbours are
        // opened for them (a bench that measures a limit sets its own).
        .env("PINION_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("PINION_MAX_STREAMS_PER_TOKEN", "100000")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| err.to_string())?;
    let guard = Guard(child);
    wait_for_port(port)?;
    Ok((guard, format!("http://127.0.0.1:{port}")))
}

/// Runs hyperfine over named commands; returns (name, mean s, stddev s).
fn hyperfine(
    runs: u32,
    commands: &[(&str, String)],
    env: &[(&str, &str)],
) -> Result<Vec<(String, f64, f64)>, String> {
    let export = tempfile::NamedTempFile::new().map_err(|err| err.to_string())?;
    let mut command = Command::new("hyperfine");
    command
        .args([
            "-N",
            "--warmup",
            "2",
            "--runs",
            &runs.to_string(),
            "--style",
            "none",
            "--export-json",
        ])
        .arg(export.path())
        .envs(env.iter().copied());
    for (name, line) in commands {
        command.args(["--command-name", name, line]);
    }
    let status = command
        .stdout(Stdio::null())
        .status()
        .map_err(|err| format!("hyperfine: {err}"))?;
    if !status.success() {
        return Err("hyperfine failed (a benchmarked command failed)".into());
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(export.path()).map_err(|err| err.to_string())?,
    )
    .map_err(|err| err.to_string())?;
    Ok(json["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|result| {
                    (
                        result["command"].as_str().unwrap_or_default().to_owned(),
                        result["mean"].as_f64().unwrap_or_default(),
                        result["stddev"].as_f64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Runs hyperfine and prints its table.
pub(crate) fn hyperfine_table(
    title: &str,
    runs: u32,
    commands: &[(&str, String)],
    env: &[(&str, &str)],
) -> Result<(), String> {
    let results = hyperfine(runs, commands, env)?;
    print_comparison(title, &results);
    Ok(())
}

fn print_comparison(title: &str, results: &[(String, f64, f64)]) {
    println!("\n{title}");
    println!("| command | mean | ± | ratio to the first |");
    println!("|---|---|---|---|");
    let base = results.first().map_or(1.0, |(_, mean, _)| *mean);
    for (name, mean, stddev) in results {
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.2} |",
            mean * 1000.0,
            stddev * 1000.0,
            mean / base
        );
    }
}

fn bench_registry(pinion: &Path) -> Result<(), String> {
    let registry = TestRegistry::start(Auth::None);
    registry.push_image("bench/codex", "latest", "bench");
    let image = format!("{}:latest", registry.repository("bench/codex"));
    let digest_results = hyperfine(
        30,
        &[
            (
                "pinion digest",
                format!("{} digest {image}", pinion.display()),
            ),
            (
                "skopeo inspect",
                format!("skopeo --insecure-policy inspect --tls-verify=false docker://{image}"),
            ),
        ],
        &[],
    )?;
    print_comparison(
        "`pinion digest` beside `skopeo inspect` (one image, loopback registry)",
        &digest_results,
    );

    const TEMPLATES: usize = 200;
    let source = format!("docker://{image}");
    let copies: Vec<std::thread::JoinHandle<bool>> = (0..4)
        .map(|worker| {
            let (source, host) = (source.clone(), registry.host());
            std::thread::spawn(move || {
                (0..TEMPLATES).filter(|i| i % 4 == worker).all(|i| {
                    Command::new("skopeo")
                        .args([
                            "--insecure-policy",
                            "copy",
                            "--quiet",
                            "--src-tls-verify=false",
                            "--dest-tls-verify=false",
                        ])
                        .arg(&source)
                        .arg(format!("docker://{host}/bench/t-{i}:latest"))
                        .status()
                        .is_ok_and(|status| status.success())
                })
            })
        })
        .collect();
    if !copies.into_iter().all(|copy| copy.join().unwrap_or(false)) {
        return Err("skopeo copy failed".into());
    }
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let database = format!("sqlite://{}", dir.path().join("bench.db").display());
    for i in 0..TEMPLATES {
        pinion_cmd(
            pinion,
            &[
                "template",
                "add",
                &format!("t-{i}"),
                "--repository",
                &registry.repository(&format!("bench/t-{i}")),
            ],
            &database,
        )?;
    }
    let token = pinion_cmd(
        pinion,
        &["token", "create", "--name", "bench", "--scope", "promote"],
        &database,
    )?;
    let (_server, url) = serve(pinion, &database, &[("PINION_REGISTRY_CHECK", "off")])?;
    let digest = pinion_cmd(pinion, &["digest", &image], &database)?;
    for i in 0..TEMPLATES {
        pinion_promote(pinion, &url, &token, &format!("t-{i}"), &digest)?;
    }
    let loop_line = format!(
        "bash -c 'for i in $(seq 0 {}); do skopeo --insecure-policy inspect --tls-verify=false docker://{}/bench/t-$i:latest >/dev/null; done'",
        TEMPLATES - 1,
        registry.host()
    );
    let drift_results = hyperfine(
        5,
        &[
            (
                "pinion drift (200 pins)",
                format!("{} drift --server {url}", pinion.display()),
            ),
            ("skopeo inspect loop (200)", loop_line),
        ],
        &[("PINION_TOKEN", token.as_str())],
    )?;
    print_comparison(
        "`pinion drift` over 200 templates beside a sequential `skopeo inspect` loop",
        &drift_results,
    );
    Ok(())
}

pub mod events;
pub mod fleet;
pub mod http;
pub mod page;
pub mod policy;
pub mod postgres;
