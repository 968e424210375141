//! The fleet's figures: 100,000 instances heartbeating every 60 s in
//! batches of 1,000 (about 1,700 reports a second) for a minute, the server's
//! CPU per report and its memory; resolve throughput under that load against
//! resolve alone; `GET /cp/fleet` latency with 200 templates × 5 regions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::http::{ROUND_SECONDS, median, rounds, rss_kib, wrk_for};
use super::{pinion_cmd, serve};

const TEMPLATES: usize = 200;
const REGIONS: usize = 5;
const INSTANCES: usize = 100_000;
const BATCH: usize = 1_000;
/// Each instance reports once a minute.
const PERIOD: Duration = Duration::from_secs(60);

/// A keep-alive HTTP/1.1 connection for one kind of request.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn open(addr: &str) -> Result<Connection, String> {
        let stream = TcpStream::connect(addr).map_err(|err| err.to_string())?;
        stream.set_nodelay(true).map_err(|err| err.to_string())?;
        let writer = stream.try_clone().map_err(|err| err.to_string())?;
        Ok(Connection {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends a request and reads the answer; returns its status.
    fn send(&mut self, method: &str, path: &str, token: &str, body: &[u8]) -> Result<u16, String> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.writer
            .write_all(&request)
            .map_err(|err| err.to_string())?;
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .map_err(|err| err.to_string())?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .ok_or_else(|| format!("not an answer: {status_line:?}"))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .map_err(|err| err.to_string())?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|err| err.to_string())?;
        Ok(status)
    }
}

fn digest(n: usize) -> String {
    format!("sha256:{n:064x}")
}

/// The 100 batch bodies of one minute: instance `i` is of template
/// `t-(i % 200)` in region `r-(i / 200 % 5)`; most run their pin's digest,
/// one in ten the digest before.
fn batches() -> Vec<Vec<u8>> {
    (0..INSTANCES / BATCH)
        .map(|batch| {
            let entries: Vec<String> = (batch * BATCH..(batch + 1) * BATCH)
                .map(|i| {
                    let template = i % TEMPLATES;
                    let region = i / TEMPLATES % REGIONS;
                    let pin = 1 + template * REGIONS + region;
                    let running = if i % 10 == 0 { pin + 100_000 } else { pin };
                    format!(
                        r#"{{"instance_id":"i-{i}","template_name":"t-{template}","region":"r-{region}","image_digest":"{}","healthy":true}}"#,
                        digest(running)
                    )
                })
                .collect();
            format!(
                r#"{{"ttl_seconds":180,"instances":[{}]}}"#,
                entries.join(",")
            )
            .into_bytes()
        })
        .collect()
}

/// A server with 200 templates, 1,000 pins (5 regions each), and tokens.
struct Seeded {
    server: super::Guard,
    addr: String,
    url: String,
    admin: String,
    read: String,
}

fn seed(pinion: &Path, database: &str, env: &[(&str, &str)]) -> Result<Seeded, String> {
    let admin = pinion_cmd(
        pinion,
        &["token", "create", "--name", "admin", "--scope", "admin"],
        database,
    )?;
    let read = pinion_cmd(
        pinion,
        &["token", "create", "--name", "reader", "--scope", "read"],
        database,
    )?;
    let mut settings = vec![("PINION_REGISTRY_CHECK", "off")];
    settings.extend_from_slice(env);
    let (server, url) = serve(pinion, database, &settings)?;
    let addr = url.trim_start_matches("http://").to_owned();
    let mut connection = Connection::open(&addr)?;
    for template in 0..TEMPLATES {
        let body = format!(r#"{{"image":"registry.example.com/team/t-{template}"}}"#);
        let status = connection.send(
            "PUT",
            &format!("/cp/admin/runtimes/t-{template}"),
            &admin,
            body.as_bytes(),
        )?;
        if !matches!(status, 200 | 201) {
            return Err(format!("catalog PUT answered {status}"));
        }
        for region in 0..REGIONS {
            let body = format!(
                r#"{{"template_name":"t-{template}","region":"r-{region}","image_digest":"{}"}}"#,
                digest(1 + template * REGIONS + region)
            );
            let status = connection.send(
                "POST",
                "/cp/admin/runtime-image/promote",
                &admin,
                body.as_bytes(),
            )?;
            if !matches!(status, 200 | 201) {
                return Err(format!("promote answered {status}"));
            }
        }
    }
    Ok(Seeded {
        server,
        addr,
        url,
        admin,
        read,
    })
}

/// Sends the batches on the one-minute schedule until `stop`; counts the
/// instances reported.
fn report_load(
    addr: String,
    token: String,
    batches: Arc<Vec<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    reported: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let mut connection = Connection::open(&addr)?;
        let spacing = PERIOD / u32::try_from(batches.len()).unwrap_or(1);
        let start = Instant::now();
        for n in 0usize.. {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let due = start + spacing * u32::try_from(n).unwrap_or(u32::MAX);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let status = connection.send(
                "POST",
                "/cp/fleet/report",
                &token,
                &batches[n % batches.len()],
            )?;
            if status != 200 {
                return Err(format!("a report answered {status}"));
            }
            reported.fetch_add(BATCH as u64, Ordering::Relaxed);
        }
        Ok(())
    })
}

/// Server CPU (user + system) in seconds, from `/proc`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

pub fn run(pinion: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let database = format!("sqlite://{}", dir.path().join("fleet.db").display());
    println!(
        "\nFleet: {INSTANCES} instances of {TEMPLATES} templates in {REGIONS} regions ({} pins), each reporting every {}s in batches of {BATCH} (TTL 180 s)",
        TEMPLATES * REGIONS,
        PERIOD.as_secs()
    );
    let seeded = seed(pinion, &database, &[])?;
    let report_token = pinion_cmd(
        pinion,
        &[
            "token",
            "create",
            "--name",
            "provisioner",
            "--scope",
            "report",
        ],
        &database,
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    let batches = Arc::new(batches());
    measure(&seeded, &report_token, &batches, "SQLite")?;
    drop(seeded);
    postgres(pinion, &batches)?;
    Ok(())
}

fn measure(
    seeded: &Seeded,
    report_token: &str,
    batches: &Arc<Vec<Vec<u8>>>,
    engine: &str,
) -> Result<(), String> {
    let pid = seeded.server.0.id();
    let rss_before = rss_kib(pid);
    // Warm up: every instance reported once.
    let mut connection = Connection::open(&seeded.addr)?;
    for batch in batches.iter() {
        connection.send("POST", "/cp/fleet/report", report_token, batch)?;
    }
    std::thread::sleep(Duration::from_secs(2));

    // The load, sustained for a minute (and kept on for what follows).
    let stop = Arc::new(AtomicBool::new(false));
    let reported = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let load = report_load(
        seeded.addr.clone(),
        report_token.to_owned(),
        batches.clone(),
        stop.clone(),
        reported.clone(),
    );
    std::thread::sleep(PERIOD);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let count = reported.load(Ordering::Relaxed) as f64;
    let rss = rss_kib(pid);
    println!("\n{engine}: sustained for {elapsed:.0} s");
    println!("| figure | value |\n|---|---|");
    println!("| instances reported per second | {:.0} |", count / elapsed);
    println!(
        "| server CPU per reported instance | **{:.1} µs** ({:.1}% of one core) |",
        cpu / count * 1e6,
        cpu / elapsed * 100.0
    );
    println!(
        "| RSS | **{:.1} MiB** ({:.1} MiB before any report) |",
        rss as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );

    // The read path under the load, against the read path alone.
    let resolve = format!(
        "{}/cp/runtime-image/resolve?template_name=t-7&region=r-3",
        seeded.url
    );
    let mut ratios = Vec::new();
    let mut rows = Vec::new();
    for round in 1..=rounds() {
        let loaded = wrk_for(
            32,
            &resolve,
            None,
            Some(&seeded.read),
            ROUND_SECONDS,
            &[pid],
        )?;
        stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(700));
        let alone = wrk_for(
            32,
            &resolve,
            None,
            Some(&seeded.read),
            ROUND_SECONDS,
            &[pid],
        )?;
        let ratio = loaded.rps / alone.rps;
        ratios.push(ratio);
        rows.push(format!(
            "| {round} | {:.0} | {:.0} | {ratio:.2} | {:.2} / {:.2} |",
            alone.rps, loaded.rps, alone.p99, loaded.p99
        ));
        if round < rounds() {
            stop.store(false, Ordering::Relaxed);
            // A fresh load for the next round.
            let _ = report_load(
                seeded.addr.clone(),
                report_token.to_owned(),
                batches.clone(),
                stop.clone(),
                reported.clone(),
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let _ = load.join();
    println!("\nResolve (`wrk -t1 -c32`) alone and while the report load runs");
    println!(
        "| round | alone requests/s | under load requests/s | ratio | p99 ms alone / under load |\n|---|---|---|---|---|"
    );
    for row in rows {
        println!("{row}");
    }
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "\nMedian ratio: **{:.2}** ({})",
        median(&ratios).unwrap_or(f64::NAN),
        each.join(", ")
    );

    // The fleet query, with the load on.
    stop.store(false, Ordering::Relaxed);
    let load = report_load(
        seeded.addr.clone(),
        report_token.to_owned(),
        batches.clone(),
        stop.clone(),
        reported.clone(),
    );
    std::thread::sleep(Duration::from_secs(1));
    println!("\n`GET /cp/fleet` with {INSTANCES} instances, while they report (`wrk -t1 -c1`)");
    println!("| query | requests/s | p50 ms | p99 ms |\n|---|---|---|---|");
    for (what, path) in [
        (
            "one pin (`?template_name=t-7&region=r-3`)",
            "/cp/fleet?template_name=t-7&region=r-3",
        ),
        ("one template (5 pins)", "/cp/fleet?template_name=t-7"),
        ("every pin (1,000 entries)", "/cp/fleet"),
    ] {
        let measured = wrk_for(
            1,
            &format!("{}{path}", seeded.url),
            None,
            Some(&seeded.read),
            ROUND_SECONDS,
            &[],
        )?;
        println!(
            "| {what} | {:.0} | {:.2} | **{:.2}** |",
            measured.rps, measured.p50, measured.p99
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let _ = &seeded.admin;
    Ok(())
}

/// The same load on two PostgreSQL replicas, half the batches to each.
fn postgres(pinion: &Path, batches: &Arc<Vec<Vec<u8>>>) -> Result<(), String> {
    let admin = std::env::var("PINION_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("pinion_bench_fleet_{}", std::process::id());
    let psql = |sql: &str| {
        std::process::Command::new("psql")
            .args(["-q", &admin, "-c", sql])
            .status()
            .map_err(|err| err.to_string())
    };
    psql(&format!("CREATE DATABASE {name}"))?;
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    let database = format!("{base}/{name}");
    let key = tempfile::tempdir().map_err(|err| err.to_string())?;
    let key_file = key.path().join("key");
    std::fs::write(&key_file, "ab".repeat(32)).map_err(|err| err.to_string())?;
    let key_path = key_file.display().to_string();
    let result = (|| {
        let one = seed(pinion, &database, &[("PINION_SECRET_KEY_FILE", &key_path)])?;
        let report_token = pinion_cmd(
            pinion,
            &[
                "token",
                "create",
                "--name",
                "provisioner",
                "--scope",
                "report",
            ],
            &database,
        )?;
        let (two, two_url) = serve(
            pinion,
            &database,
            &[
                ("PINION_REGISTRY_CHECK", "off"),
                ("PINION_SECRET_KEY_FILE", &key_path),
            ],
        )?;
        std::thread::sleep(Duration::from_millis(1500));
        let halves: Vec<Arc<Vec<Vec<u8>>>> = (0..2)
            .map(|half| Arc::new(batches.iter().skip(half).step_by(2).cloned().collect()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let reported = Arc::new(AtomicU64::new(0));
        let pids = [one.server.0.id(), two.0.id()];
        let cpu_before: f64 = pids.iter().map(|pid| cpu_seconds(*pid)).sum();
        let started = Instant::now();
        let loads: Vec<_> = [
            (one.addr.clone(), &halves[0]),
            (two_url.trim_start_matches("http://").to_owned(), &halves[1]),
        ]
        .into_iter()
        .map(|(addr, half)| {
            // Each replica gets half the batches, on the same one-minute
            // schedule per instance: twice the spacing.
            report_load(
                addr,
                report_token.clone(),
                half.clone(),
                stop.clone(),
                reported.clone(),
            )
        })
        .collect();
        std::thread::sleep(PERIOD);
        stop.store(true, Ordering::Relaxed);
        for load in loads {
            let _ = load.join();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu: f64 = pids.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>() - cpu_before;
        let count = reported.load(Ordering::Relaxed) as f64;
        std::thread::sleep(Duration::from_secs(3));
        // Each replica counts every instance (within a few seconds).
        let counted = |url: &str| -> Result<u64, String> {
            let output = std::process::Command::new("curl")
                .args([
                    "-sf",
                    "-H",
                    &format!("Authorization: Bearer {}", one.read),
                    &format!("{url}/cp/fleet"),
                ])
                .output()
                .map_err(|err| err.to_string())?;
            let json: serde_json::Value =
                serde_json::from_slice(&output.stdout).map_err(|err| err.to_string())?;
            Ok(json["fleet"]
                .as_array()
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| {
                            e["current"].as_u64().unwrap_or(0) + e["behind"].as_u64().unwrap_or(0)
                        })
                        .sum()
                })
                .unwrap_or(0))
        };
        println!("\nPostgreSQL, two replicas, half the batches to each, for {elapsed:.0} s");
        println!("| figure | value |\n|---|---|");
        println!(
            "| instances reported per second (both) | {:.0} |",
            count / elapsed
        );
        println!(
            "| CPU per reported instance (both servers) | {:.1} µs |",
            cpu / count * 1e6
        );
        println!(
            "| RSS | {:.1} / {:.1} MiB |",
            rss_kib(pids[0]) as f64 / 1024.0,
            rss_kib(pids[1]) as f64 / 1024.0
        );
        println!(
            "| live instances each replica counts | {} / {} (of {INSTANCES}) |",
            counted(&one.url)?,
            counted(&two_url)?
        );
        let _ = &one.admin;
        drop(two);
        drop(one);
        Ok(())
    })();
    psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    result
}
