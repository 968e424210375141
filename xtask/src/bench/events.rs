//! The change feed's figures: promote throughput with a webhook and 100
//! streams attached against a server with none, commit-to-receiver latency
//! on loopback, fan-out to 1,000 streams, and memory with them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::{
    ROUND_SECONDS, Seeded, median, promote_script, rounds, rss_kib, seeded_server, wrk_for,
};
use super::pinion_cmd;

/// A webhook receiver that answers 200 on keep-alive connections and notes
/// when each delivery (by event id) arrived.
struct Receiver {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<(i64, Instant)>>>,
    count: Arc<AtomicU64>,
}

impl Receiver {
    fn start() -> Result<Receiver, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
        let addr = listener.local_addr().map_err(|err| err.to_string())?;
        let arrivals: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
        let count = Arc::new(AtomicU64::new(0));
        let (seen, counted) = (arrivals.clone(), count.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (seen, counted) = (seen.clone(), counted.clone());
                std::thread::spawn(move || serve_deliveries(stream, &seen, &counted));
            }
        });
        Ok(Receiver {
            addr,
            arrivals,
            count,
        })
    }
}

fn serve_deliveries(stream: TcpStream, seen: &Mutex<Vec<(i64, Instant)>>, counted: &AtomicU64) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut id = None;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("webhook-id") {
                    id = value.strip_prefix("evt_").and_then(|id| id.parse().ok());
                }
            }
        }
        let arrived = Instant::now();
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Some(id) = id {
            if let Ok(mut seen) = seen.lock() {
                seen.push((id, arrived));
            }
        }
        counted.fetch_add(1, Ordering::Relaxed);
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// One open event stream whose reader notes when each event arrived.
struct Subscriber {
    arrivals: Arc<Mutex<Vec<(i64, Instant)>>>,
}

/// Opens `count` streams (each read by a thread of its own) and waits until
/// the server counts them all. While `note` is false the readers only read;
/// while it is true they note when each event arrived.
fn subscribe(
    url: &str,
    token: &str,
    count: usize,
    stop: &Arc<AtomicBool>,
    note: &Arc<AtomicBool>,
) -> Result<Vec<Subscriber>, String> {
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .map_err(|err| format!("{err}"))?;
    let mut subscribers = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).map_err(|err| err.to_string())?;
        let request = format!(
            "GET /cp/events HTTP/1.0\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|err| err.to_string())?;
        let arrivals: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
        let (noted, stop, note) = (arrivals.clone(), stop.clone(), note.clone());
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buffer = vec![0u8; 64 * 1024];
                // The bytes after the last complete line, kept across reads.
                let mut carry: Vec<u8> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let read = match stream.read(&mut buffer) {
                        Ok(0) => return,
                        Ok(read) => read,
                        Err(err)
                            if matches!(
                                err.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            continue;
                        }
                        Err(_) => return,
                    };
                    if !note.load(Ordering::Relaxed) {
                        // Drained and dropped: a reader, not a parser.
                        carry.clear();
                        continue;
                    }
                    let arrived = Instant::now();
                    carry.extend_from_slice(&buffer[..read]);
                    let mut ids = Vec::new();
                    let mut start = 0;
                    while let Some(end) = carry[start..].iter().position(|&b| b == b'\n') {
                        let line = &carry[start..start + end];
                        if let Some(id) = line.strip_prefix(b"id: ") {
                            if let Some(id) =
                                std::str::from_utf8(id).ok().and_then(|id| id.parse().ok())
                            {
                                ids.push((id, arrived));
                            }
                        }
                        start += end + 1;
                    }
                    carry.drain(..start);
                    if let Ok(mut noted) = noted.lock() {
                        noted.extend(ids);
                    }
                }
            })
            .map_err(|err| err.to_string())?;
        subscribers.push(Subscriber { arrivals });
    }
    let metrics = format!("{url}/metrics");
    let wanted = format!("pinion_event_subscribers {count}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !curl(&metrics).is_ok_and(|text| text.contains(&wanted)) {
        if Instant::now() > deadline {
            return Err(format!("{count} streams did not open"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(subscribers)
}

fn curl(url: &str) -> Result<String, String> {
    let output = std::process::Command::new("curl")
        .args(["-sf", url])
        .output()
        .map_err(|err| err.to_string())?;
    if !output.status.success() {
        return Err(format!("curl {url} failed"));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A promotion sent over a fresh connection: when it was sent, and the id
/// of its event (read from the answer's revision: one event per move
/// follows the catalog's, so the caller maps them itself).
fn promote_once(url: &str, token: &str, template: usize, n: u64) -> Result<Instant, String> {
    let addr = url.trim_start_matches("http://");
    let body = format!(r#"{{"template_name":"t-{template}","image_digest":"sha256:{n:064x}"}}"#);
    // One write, without Nagle's delay: the request whole, at once.
    let request = format!(
        "POST /cp/admin/runtime-image/promote HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).map_err(|err| err.to_string())?;
    stream.set_nodelay(true).map_err(|err| err.to_string())?;
    let sent = Instant::now();
    stream
        .write_all(request.as_bytes())
        .map_err(|err| err.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|err| err.to_string())?;
    if !answer.starts_with("HTTP/1.1 201") {
        return Err(format!(
            "promote answered {}",
            answer.lines().next().unwrap_or("")
        ));
    }
    Ok(sent)
}

/// The newest event id.
fn head(url: &str, token: &str) -> Result<i64, String> {
    let output = std::process::Command::new("curl")
        .args([
            "-sf",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{url}/cp/events?limit=1&after=0"),
        ])
        .output()
        .map_err(|err| err.to_string())?;
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|err| format!("events: {err}"))?;
    json["head"]
        .as_i64()
        .ok_or_else(|| "no head in /cp/events".to_owned())
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Creates the webhook `bench` to `receiver`; returns the admin token.
fn webhook(
    pinion: &Path,
    url: &str,
    database: &str,
    receiver: SocketAddr,
) -> Result<String, String> {
    let admin = pinion_cmd(
        pinion,
        &[
            "token",
            "create",
            "--name",
            "bench-admin",
            "--scope",
            "admin",
        ],
        database,
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    let output = std::process::Command::new("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            "-H",
            &format!("Authorization: Bearer {admin}"),
            "-d",
            &format!(r#"{{"url":"http://{receiver}/hook","events":["pin.promoted"]}}"#),
            &format!("{url}/cp/admin/webhooks/bench"),
        ])
        .output()
        .map_err(|err| err.to_string())?;
    if !output.status.success() {
        return Err("could not create the webhook".into());
    }
    Ok(admin)
}

pub fn run(pinion: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let plain_db = format!("sqlite://{}", dir.path().join("plain.db").display());
    let attached_db = format!("sqlite://{}", dir.path().join("attached.db").display());
    let plain = seeded_server(pinion, &plain_db, &[])?;
    let attached = seeded_server(pinion, &attached_db, &[])?;
    let receiver = Receiver::start()?;
    let script_plain = promote_script(dir.path(), &plain.promote_token)?;
    let attached_dir = dir.path().join("attached");
    std::fs::create_dir_all(&attached_dir).map_err(|err| err.to_string())?;
    let script_attached = promote_script(&attached_dir, &attached.promote_token)?;
    println!(
        "\nPromote c=32 on a server with things attached, against one with none (alternating rounds of {ROUND_SECONDS} s)"
    );
    println!(
        "| round | attached | requests/s (none / attached) | p99 ms (none / attached) | server CPU µs/request (none / attached) | ratio | deliveries drained after |"
    );
    println!("|---|---|---|---|---|---|---|");
    let admin = webhook(pinion, &attached.url, &attached_db, receiver.addr)?;
    let webhook_only = throughput(
        &plain,
        &attached,
        &script_plain,
        &script_attached,
        &receiver,
        "one webhook",
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let streams = subscribe(
        &attached.url,
        &attached.read_token,
        100,
        &stop,
        &Arc::new(AtomicBool::new(false)),
    )?;
    let both = throughput(
        &plain,
        &attached,
        &script_plain,
        &script_attached,
        &receiver,
        "one webhook and 100 streams",
    )?;
    delete_webhook(&attached.url, &admin)?;
    let streams_only = throughput(
        &plain,
        &attached,
        &script_plain,
        &script_attached,
        &receiver,
        "100 streams",
    )?;
    stop.store(true, Ordering::Relaxed);
    drop(streams);
    println!("\n| attached | median ratio (rounds) |\n|---|---|");
    for (what, ratios) in [
        ("one webhook", &webhook_only),
        ("100 SSE streams", &streams_only),
        ("one webhook and 100 SSE streams", &both),
    ] {
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "| {what} | **{:.2}** ({}) |",
            median(ratios).unwrap_or(f64::NAN),
            each.join(", ")
        );
    }
    drop(attached);
    drop(plain);
    latency(pinion, dir.path())?;
    Ok(())
}

fn delete_webhook(url: &str, admin: &str) -> Result<(), String> {
    let status = std::process::Command::new("curl")
        .args([
            "-sf",
            "-X",
            "DELETE",
            "-H",
            &format!("Authorization: Bearer {admin}"),
            &format!("{url}/cp/admin/webhooks/bench"),
        ])
        .status()
        .map_err(|err| err.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err("could not delete the webhook".into())
    }
}

/// Alternating rounds of promote c=32 on the plain server and on the
/// attached one; after each attached run, the time its deliveries took to
/// drain. Returns the ratio of each round.
fn throughput(
    plain: &Seeded,
    attached: &Seeded,
    script_plain: &Path,
    script_attached: &Path,
    receiver: &Receiver,
    what: &str,
) -> Result<Vec<f64>, String> {
    let mut ratios = Vec::new();
    for round in 1..=rounds() {
        let base = wrk_for(
            32,
            &plain.url,
            Some(script_plain),
            None,
            ROUND_SECONDS,
            &[plain.server.0.id()],
        )?;
        let before = receiver.count.load(Ordering::Relaxed);
        let events_before = head(&attached.url, &attached.read_token)?;
        let load = wrk_for(
            32,
            &attached.url,
            Some(script_attached),
            None,
            ROUND_SECONDS,
            &[attached.server.0.id()],
        )?;
        let ended = Instant::now();
        let drained = if what.contains("webhook") {
            let events = head(&attached.url, &attached.read_token)? - events_before;
            let wanted = before + u64::try_from(events).unwrap_or(0);
            while receiver.count.load(Ordering::Relaxed) < wanted {
                if ended.elapsed() > Duration::from_secs(120) {
                    return Err("the deliveries did not drain in 2 minutes".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            format!(
                "{:.1} s ({events} deliveries)",
                ended.elapsed().as_secs_f64()
            )
        } else {
            "-".to_owned()
        };
        let ratio = load.rps / base.rps;
        ratios.push(ratio);
        let cpu = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "| {round} | {what} | {:.0} / {:.0} | {:.2} / {:.2} | {} / {} | {ratio:.2} | {drained} |",
            base.rps,
            load.rps,
            base.p99,
            load.p99,
            cpu(base.cpu_us),
            cpu(load.cpu_us),
        );
    }
    Ok(ratios)
}

/// Commit-to-receiver latency on a quiet server; then, with 1,000 streams
/// open, commit-to-every-stream latency, and the server's memory.
fn latency(pinion: &Path, dir: &Path) -> Result<(), String> {
    let database = format!("sqlite://{}", dir.join("latency.db").display());
    let server = seeded_server(pinion, &database, &[])?;
    let receiver = Receiver::start()?;
    webhook(pinion, &server.url, &database, receiver.addr)?;
    let promotions = 100u64;
    println!(
        "\nLatency on loopback, {promotions} promotions one at a time, from the promote request being sent (its commit, fsync'd, included) to arrival"
    );
    println!("| to | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    let alone = measure(&server, &receiver, &[], promotions, 0)?;
    print_row("the webhook receiver, no stream open", &alone.0);

    let pid = server.server.0.id();
    let rss_before = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let streams = subscribe(
        &server.url,
        &server.read_token,
        1000,
        &stop,
        &Arc::new(AtomicBool::new(true)),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_with = rss_kib(pid);
    let (to_receiver, to_each, to_last) = measure(&server, &receiver, &streams, promotions, 1)?;
    stop.store(true, Ordering::Relaxed);
    print_row("each of 1,000 streams", &to_each);
    print_row("the last of 1,000 streams", &to_last);
    print_row("the webhook receiver, 1,000 streams open", &to_receiver);
    println!(
        "\nMemory (VmRSS of `pinion serve`): {:.1} MiB before, {:.1} MiB with 1,000 streams open ({:.1} KiB per stream)",
        rss_before as f64 / 1024.0,
        rss_with as f64 / 1024.0,
        (rss_with.saturating_sub(rss_before)) as f64 / 1000.0
    );
    Ok(())
}

fn print_row(what: &str, values: &[f64]) {
    println!(
        "| {what} | {:.2} | {:.2} | {:.2} |",
        percentile(values, 0.5),
        percentile(values, 0.99),
        percentile(values, 1.0)
    );
}

/// Milliseconds to the receiver, to each stream, to the last stream.
type Latencies = (Vec<f64>, Vec<f64>, Vec<f64>);

/// Sends `promotions` one at a time; returns the milliseconds from each
/// send to the receiver, to each stream, and to the last stream.
fn measure(
    server: &Seeded,
    receiver: &Receiver,
    streams: &[Subscriber],
    promotions: u64,
    series: u64,
) -> Result<Latencies, String> {
    let arrival = |arrivals: &Mutex<Vec<(i64, Instant)>>, id: i64, deadline: Instant| loop {
        let found = arrivals.lock().ok().and_then(|seen| {
            seen.iter()
                .rev()
                .find(|(seen, _)| *seen == id)
                .map(|(_, at)| *at)
        });
        if let Some(at) = found {
            return Ok(at);
        }
        if Instant::now() > deadline {
            return Err(format!("event {id} did not arrive"));
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let (mut to_receiver, mut to_each, mut to_last) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..promotions {
        let id = head(&server.url, &server.read_token)? + 1;
        let digest = 1_000_000 * (series + 1) + n;
        let sent = promote_once(
            &server.url,
            &server.promote_token,
            (n % 50) as usize,
            digest,
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let delivered = arrival(&receiver.arrivals, id, deadline)?;
        to_receiver.push((delivered - sent).as_secs_f64() * 1000.0);
        let mut last = Duration::ZERO;
        for stream in streams {
            let took = arrival(&stream.arrivals, id, deadline)? - sent;
            to_each.push(took.as_secs_f64() * 1000.0);
            last = last.max(took);
        }
        if !streams.is_empty() {
            to_last.push(last.as_secs_f64() * 1000.0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((to_receiver, to_each, to_last))
}
