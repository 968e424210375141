//! The page at size: 200 templates × 5 regions on each of two servers, one
//! the other's peer (2,000 cells). The figures: the time to answer `GET /ui`
//! (p50, p99, over sequential requests on loopback) against the JSON list of
//! the same server's 1,000 pins, alternating in the same run; the page's
//! weight with its assets; and the server's memory with 100 signed-in pages
//! following the event stream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::http::{median, rss_kib};
use super::{pinion_cmd, serve};

const TEMPLATES: usize = 200;
const REGIONS: [&str; 5] = [
    "global",
    "us-east-1",
    "eu-west-1",
    "ap-south-1",
    "sa-east-1",
];
const REQUESTS: usize = 200;
const SESSIONS: usize = 100;

/// One HTTP/1.1 exchange, `Connection: close`; (status, head, body).
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String, Vec<u8>), String> {
    let mut stream = TcpStream::connect(addr).map_err(|err| err.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream
        .write_all(head.as_bytes())
        .map_err(|err| err.to_string())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|err| err.to_string())?;
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("no HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0);
    Ok((status, head, raw[end + 4..].to_vec()))
}

/// A server with the templates, every one pinned in every region (digest
/// `offset + i * 5 + r`, plus `differ` for every fifth template), and its
/// read token.
fn environment(
    pinion: &Path,
    dir: &Path,
    name: &str,
    offset: usize,
    differ: usize,
    env: &[(&str, &str)],
) -> Result<(super::Guard, SocketAddr, String), String> {
    let database = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let admin = pinion_cmd(
        pinion,
        &["token", "create", "--name", "platform", "--scope", "admin"],
        &database,
    )?;
    let read = pinion_cmd(
        pinion,
        &["token", "create", "--name", "viewer", "--scope", "read"],
        &database,
    )?;
    let mut settings = vec![
        ("PINION_REGISTRY_CHECK", "off"),
        ("PINION_ENVIRONMENT", name),
    ];
    settings.extend_from_slice(env);
    let (guard, url) = serve(pinion, &database, &settings)?;
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .map_err(|err| format!("{err}"))?;
    let bearer = format!("Bearer {admin}");
    let auth = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    for t in 0..TEMPLATES {
        let (status, _, _) = exchange(
            addr,
            "PUT",
            &format!("/cp/admin/runtimes/t-{t}"),
            &auth,
            r#"{"image":null}"#,
        )?;
        if status != 201 {
            return Err(format!("PUT t-{t}: {status}"));
        }
        for (r, region) in REGIONS.iter().enumerate() {
            let body = format!(
                r#"{{"template_name":"t-{t}","region":"{region}","image_digest":"sha256:{:064x}","git_sha":"{:040x}"}}"#,
                offset + t * 5 + r + if t % 5 == 0 { differ } else { 0 },
                t
            );
            let (status, _, _) = exchange(
                addr,
                "POST",
                "/cp/admin/runtime-image/promote",
                &auth,
                &body,
            )?;
            if status != 201 {
                return Err(format!("promote t-{t}/{region}: {status}"));
            }
        }
    }
    Ok((guard, addr, read))
}

/// Signs in; the session cookie's `name=value`.
fn login(addr: SocketAddr, token: &str) -> Result<String, String> {
    let body = format!("token={token}");
    let (status, head, _) = exchange(
        addr,
        "POST",
        "/ui/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &body,
    )?;
    if status != 303 {
        return Err(format!("login: {status}"));
    }
    head.lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .starts_with("set-cookie:")
                .then(|| line["set-cookie:".len()..].trim().to_owned())
        })
        .and_then(|cookie| cookie.split(';').next().map(str::to_owned))
        .ok_or_else(|| "no session cookie".to_owned())
}

fn percentile(values: &mut [f64], share: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * share).round() as usize;
    values.get(index).copied().unwrap_or(f64::NAN)
}

pub fn run(pinion: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let seeding = Instant::now();
    let (_staging, staging_addr, staging_read) =
        environment(pinion, dir.path(), "staging", 1, 0, &[])?;
    let peer = format!("staging=http://{staging_addr}");
    let (prod, addr, read) = environment(
        pinion,
        dir.path(),
        "prod",
        1,
        // Every fifth template differs from staging.
        1_000_000,
        &[],
    )?;
    drop(prod);
    let _ = addr;
    // Served again with its peer (`--peer` is a flag only).
    let database = format!("sqlite://{}", dir.path().join("prod.db").display());
    let port = super::free_port();
    let child = std::process::Command::new(pinion)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            &database,
            "--environment",
            "prod",
            "--peer",
            &peer,
        ])
        .env("PINION_LOG", "warn")
        .env("PINION_REGISTRY_CHECK", "off")
        .env("PINION_PEER_TOKEN_STAGING", &staging_read)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|err| err.to_string())?;
    let prod = super::Guard(child);
    super::wait_for_port(port)?;
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|err| format!("{err}"))?;
    println!(
        "\nThe page: {TEMPLATES} templates x {} regions on two servers (seeded in {:.0} s)",
        REGIONS.len(),
        seeding.elapsed().as_secs_f64()
    );
    let cookie = login(addr, &read)?;
    // The peer's first reading.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, body) = exchange(addr, "GET", "/ui", &[("Cookie", &cookie)], "")?;
        if String::from_utf8_lossy(&body).contains(r#"data-env="staging""#) {
            break;
        }
        if Instant::now() > deadline {
            return Err("the peer was never read".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let bearer = format!("Bearer {read}");
    let mut page_ms = Vec::new();
    let mut list_ms = Vec::new();
    let mut page_bytes = 0;
    let mut list_bytes = 0;
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let (status, _, body) = exchange(addr, "GET", "/ui", &[("Cookie", &cookie)], "")?;
        page_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if status != 200 {
            return Err(format!("GET /ui: {status}"));
        }
        page_bytes = body.len();
        let started = Instant::now();
        let (status, _, body) = exchange(
            addr,
            "GET",
            "/cp/admin/runtime-image",
            &[("Authorization", &bearer)],
            "",
        )?;
        list_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if status != 200 {
            return Err(format!("GET /cp/admin/runtime-image: {status}"));
        }
        list_bytes = body.len();
    }
    let mut assets = 0;
    for asset in ["/ui/assets/pinion.css", "/ui/assets/live.js"] {
        let (_, _, body) = exchange(addr, "GET", asset, &[], "")?;
        assets += body.len();
    }
    let (page_p50, list_p50) = (
        median(&page_ms).unwrap_or(f64::NAN),
        median(&list_ms).unwrap_or(f64::NAN),
    );
    let (page_p99, list_p99) = (
        percentile(&mut page_ms, 0.99),
        percentile(&mut list_ms, 0.99),
    );
    println!(
        "{REQUESTS} sequential requests each, alternating, on loopback (time to the last byte)"
    );
    println!("| request | bytes | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "| baseline: `GET /cp/admin/runtime-image` (this server's 1,000 pins, JSON) | {list_bytes} | {list_p50:.2} | {list_p99:.2} |"
    );
    println!(
        "| `GET /ui` (2,000 cells: this server's and the peer's) | {page_bytes} | {page_p50:.2} | {page_p99:.2} |"
    );
    println!(
        "ratio page / baseline: p50 {:.2}, p99 {:.2}; page weight {page_bytes} bytes + {assets} bytes of assets (stylesheet and script, fetched once)",
        page_p50 / list_p50,
        page_p99 / list_p99
    );

    // 100 signed-in pages following the stream.
    let pid = prod.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let mut streams = Vec::new();
    for _ in 0..SESSIONS {
        let cookie = login(addr, &read)?;
        let mut stream = TcpStream::connect(addr).map_err(|err| err.to_string())?;
        let head = format!(
            "GET /ui/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .map_err(|err| err.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|err| err.to_string())?;
        let mut first = [0u8; 512];
        let read = stream.read(&mut first).map_err(|err| err.to_string())?;
        if !String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200") {
            return Err("a page's stream did not open".into());
        }
        streams.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    let with = rss_kib(pid);
    println!(
        "\nMemory (VmRSS of `pinion serve`, this server): {:.1} MiB with the pages' data loaded, {:.1} MiB with {SESSIONS} signed-in pages following the stream ({:.1} KiB per page)",
        before as f64 / 1024.0,
        with as f64 / 1024.0,
        with.saturating_sub(before) as f64 / SESSIONS as f64
    );
    drop(streams);
    Ok(())
}
