//! The HTTP benchmarks: the read path against nginx serving the same bytes
//! as static files, durable promotes against etcd's `put`, memory, and
//! `pinion verify` against the `curl | jq` pipeline it replaces. Load comes
//! from `wrk -t1` on the same machine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Guard, free_port, hyperfine_table, pinion_cmd, pinion_promote, serve, wait_for_port};

pub(super) const TEMPLATES: usize = 50;
const SECONDS: &str = "10";
/// Each run of an alternating comparison.
pub(super) const ROUND_SECONDS: &str = "5";

/// Alternating rounds per comparison (`PINION_BENCH_ROUNDS`).
pub(super) fn rounds() -> usize {
    std::env::var("PINION_BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|&rounds| rounds > 0)
        .unwrap_or(3)
}

/// One wrk run: requests per second, latency percentiles in ms, and (when
/// the serving processes are known) their CPU time per request.
pub(super) struct Load {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    non_2xx: u64,
    /// Server CPU (user + system) per request, in microseconds.
    pub cpu_us: Option<f64>,
}

pub(super) fn wrk(
    connections: u32,
    url: &str,
    script: Option<&Path>,
    token: Option<&str>,
) -> Result<Load, String> {
    wrk_for(connections, url, script, token, SECONDS, &[])
}

/// A wrk run of `seconds`, charging the CPU time of `pids` (and their
/// threads) to the requests it made.
pub(super) fn wrk_for(
    connections: u32,
    url: &str,
    script: Option<&Path>,
    token: Option<&str>,
    seconds: &str,
    pids: &[u32],
) -> Result<Load, String> {
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    command.arg(url);
    let before = cpu_ticks(pids);
    let output = command.output().map_err(|err| format!("wrk: {err}"))?;
    let after = cpu_ticks(pids);
    let text = String::from_utf8_lossy(&output.stdout);
    let number_after = |label: &str| -> Option<String> {
        text.lines()
            .find(|line| line.trim_start().starts_with(label))
            .and_then(|line| line.split_whitespace().nth(1).map(str::to_owned))
    };
    let ms = |value: Option<String>| -> f64 {
        let value = value.unwrap_or_default();
        let (number, factor) = if let Some(us) = value.strip_suffix("us") {
            (us, 0.001)
        } else if let Some(ms) = value.strip_suffix("ms") {
            (ms, 1.0)
        } else if let Some(s) = value.strip_suffix('s') {
            (s, 1000.0)
        } else {
            (value.as_str(), 1.0)
        };
        number.parse::<f64>().unwrap_or(f64::NAN) * factor
    };
    let rps = number_after("Requests/sec:")
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("wrk printed no rate: {text}"))?;
    let requests: Option<f64> = text
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|value| value.parse().ok());
    let non_2xx = text
        .lines()
        .find(|line| line.contains("Non-2xx or 3xx responses:"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let cpu_us = match (before, after, requests) {
        (Some(before), Some(after), Some(requests)) if requests > 0.0 => {
            Some((after - before) as f64 * 1_000_000.0 / clock_ticks_per_second() / requests)
        }
        _ => None,
    };
    Ok(Load {
        rps,
        p50: ms(number_after("50%")),
        p99: ms(number_after("99%")),
        non_2xx,
        cpu_us,
    })
}

/// User plus system CPU time of these processes, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name (field 2) may hold spaces; count after it.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .sum()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub(super) fn row(name: &str, load: &Load, baseline: Option<&Load>) {
    let ratio = baseline.map_or("-".to_owned(), |base| format!("{:.2}", load.rps / base.rps));
    println!(
        "| {name} | {:.0} | {:.2} | {:.2} | {ratio} | {} |",
        load.rps, load.p50, load.p99, load.non_2xx
    );
}

pub(super) fn header(title: &str) {
    println!("\n{title}");
    println!("| load | requests/s | p50 ms | p99 ms | ratio to baseline | non-2xx |");
    println!("|---|---|---|---|---|---|");
}

/// One side of a comparison: what wrk drives and which processes serve it.
pub(super) struct Side<'a> {
    pub label: String,
    pub connections: u32,
    pub url: String,
    pub script: Option<&'a Path>,
    pub token: Option<&'a str>,
    pub pids: Vec<u32>,
}

/// Runs each (baseline, candidate) pair `rounds` times, alternating, and
/// prints every run and then the median ratio per pair: on a noisy machine
/// the ratio of runs made seconds apart is the figure that holds still.
pub(super) fn compare(title: &str, rounds: usize, pairs: &[(Side, Side)]) -> Result<(), String> {
    println!("\n{title}");
    println!(
        "| round | load | requests/s | p50 ms | p99 ms | server CPU µs/request | ratio to baseline | non-2xx |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
    let mut worst_p99: Vec<(f64, f64)> = vec![(0.0, 0.0); pairs.len()];
    let mut cpu: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); pairs.len()];
    let cell = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.1}"));
    for round in 1..=rounds {
        for (index, (baseline, candidate)) in pairs.iter().enumerate() {
            let run = |side: &Side| {
                wrk_for(
                    side.connections,
                    &side.url,
                    side.script,
                    side.token,
                    ROUND_SECONDS,
                    &side.pids,
                )
            };
            let base = run(baseline)?;
            let load = run(candidate)?;
            let ratio = load.rps / base.rps;
            for (side, measured) in [(baseline, &base), (candidate, &load)] {
                let is_base = std::ptr::eq(side, baseline);
                println!(
                    "| {round} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
                    side.label,
                    measured.rps,
                    measured.p50,
                    measured.p99,
                    cell(measured.cpu_us),
                    if is_base {
                        "-".to_owned()
                    } else {
                        format!("{ratio:.2}")
                    },
                    measured.non_2xx
                );
            }
            ratios[index].push(ratio);
            worst_p99[index].0 = worst_p99[index].0.max(base.p99);
            worst_p99[index].1 = worst_p99[index].1.max(load.p99);
            cpu[index].0.extend(base.cpu_us);
            cpu[index].1.extend(load.cpu_us);
        }
    }
    println!("\nSummary over {rounds} alternating rounds of {ROUND_SECONDS} s");
    println!(
        "| load | ratio to baseline, each round | median ratio | worst p99 ms (baseline / pinion) | median server CPU µs/request (baseline / pinion) |"
    );
    println!("|---|---|---|---|---|");
    for (index, (_, candidate)) in pairs.iter().enumerate() {
        let each: Vec<String> = ratios[index].iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "| {} | {} | **{:.2}** | {:.2} / {:.2} | {} / {} |",
            candidate.label,
            each.join(", "),
            median(&ratios[index]).unwrap_or(f64::NAN),
            worst_p99[index].0,
            worst_p99[index].1,
            cell(median(&cpu[index].0)),
            cell(median(&cpu[index].1)),
        );
    }
    Ok(())
}

pub(super) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

/// The processes a parent forked (nginx's workers).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}

pub(super) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|kib| kib.parse().ok())
                })
        })
        .unwrap_or(0)
}

fn curl(url: &str, token: &str) -> Result<String, String> {
    let output = Command::new("curl")
        .args(["-sf", "-H", &format!("Authorization: Bearer {token}"), url])
        .output()
        .map_err(|err| err.to_string())?;
    if !output.status.success() {
        return Err(format!("curl {url} failed"));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A wrk script that POSTs a promote with a fresh digest every request.
pub(super) fn promote_script(dir: &Path, token: &str) -> Result<std::path::PathBuf, String> {
    let script = format!(
        r#"
counter = 0
prefix = string.format("%08x", os.time() % 0x7fffffff)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
request = function()
  counter = counter + 1
  local body = string.format('{{"template_name":"t-%d","image_digest":"sha256:%s%048d%08x"}}', counter % {TEMPLATES}, prefix, 0, counter)
  return wrk.format(nil, "/cp/admin/runtime-image/promote", nil, body)
end
"#
    );
    let path = dir.join("promote.lua");
    std::fs::write(&path, script).map_err(|err| err.to_string())?;
    Ok(path)
}

/// A wrk script that PUTs a fresh value under one of 50 keys in etcd.
fn etcd_script(dir: &Path) -> Result<std::path::PathBuf, String> {
    // base64 of "k-NN" is fixed per key; values are base64 of a counter.
    let script = r#"
counter = 0
local b = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function enc(data)
  return ((data:gsub('.', function(x)
    local r, byte = '', x:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if (#x < 6) then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local body = string.format('{"key":"%s","value":"%s"}', enc(string.format("k-%02d", counter % 50)), enc(string.format("sha256:%064d", counter)))
  return wrk.format(nil, "/v3/kv/put", nil, body)
end
"#;
    let path = dir.join("etcd.lua");
    std::fs::write(&path, script).map_err(|err| err.to_string())?;
    Ok(path)
}

/// A running server with 50 templates, 50 pins and two tokens.
pub(super) struct Seeded {
    pub server: Guard,
    pub url: String,
    pub promote_token: String,
    pub read_token: String,
    /// RSS right after start, before the pins were seeded.
    pub idle_rss: u64,
}

/// Starts `pinion serve` on `database` and seeds it.
pub(super) fn seeded_server(
    pinion: &Path,
    database: &str,
    env: &[(&str, &str)],
) -> Result<Seeded, String> {
    for i in 0..TEMPLATES {
        let repository = format!("registry.example.com/team/t-{i}");
        pinion_cmd(
            pinion,
            &[
                "template",
                "add",
                &format!("t-{i}"),
                "--repository",
                &repository,
            ],
            database,
        )?;
    }
    let promote_token = pinion_cmd(
        pinion,
        &["token", "create", "--name", "ci", "--scope", "promote"],
        database,
    )?;
    let read_token = pinion_cmd(
        pinion,
        &[
            "token",
            "create",
            "--name",
            "provisioner",
            "--scope",
            "read",
        ],
        database,
    )?;
    let mut settings = vec![("PINION_REGISTRY_CHECK", "off")];
    settings.extend_from_slice(env);
    let (server, url) = serve(pinion, database, &settings)?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(server.0.id());
    for i in 0..TEMPLATES {
        let digest = format!("sha256:{:064x}", i + 1);
        pinion_promote(pinion, &url, &promote_token, &format!("t-{i}"), &digest)?;
    }
    Ok(Seeded {
        server,
        url,
        promote_token,
        read_token,
        idle_rss,
    })
}

pub(super) const RESOLVE_PATH: &str =
    "/cp/runtime-image/resolve?template_name=t-7&region=us-east-2";

pub fn run(pinion: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let database = format!("sqlite://{}", dir.path().join("bench.db").display());
    let Seeded {
        server,
        url,
        promote_token,
        read_token,
        idle_rss,
    } = seeded_server(pinion, &database, &[])?;
    let pid = server.0.id();

    // nginx serves the very bytes pinion answers, as static files.
    let resolve_path = RESOLVE_PATH;
    let list_path = "/cp/admin/runtime-image";
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).map_err(|err| err.to_string())?;
    std::fs::write(
        www.join("resolve.json"),
        curl(&format!("{url}{resolve_path}"), &read_token)?,
    )
    .map_err(|err| err.to_string())?;
    std::fs::write(
        www.join("list.json"),
        curl(&format!("{url}{list_path}"), &read_token)?,
    )
    .map_err(|err| err.to_string())?;
    let nginx_port = free_port();
    let conf = format!(
        "daemon off; worker_processes 2; pid {dir}/nginx.pid; error_log {dir}/nginx.err;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; default_type application/json; client_body_temp_path {dir}/tmp;\n\
           server {{ listen 127.0.0.1:{nginx_port}; root {www}; }} }}\n",
        dir = dir.path().display(),
        www = www.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).map_err(|err| err.to_string())?;
    let nginx = Command::new("nginx")
        .args(["-c"])
        .arg(dir.path().join("nginx.conf"))
        .args(["-p"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Guard)
        .map_err(|err| format!("nginx: {err}"))?;
    wait_for_port(nginx_port)?;

    // The same database served with one HTTP worker per core (the default
    // is one fewer): what the default is measured against.
    let cores = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .to_string();
    let (per_core, per_core_url) = serve(
        pinion,
        &database,
        &[("PINION_REGISTRY_CHECK", "off"), ("PINION_WORKERS", &cores)],
    )?;
    let nginx_pids = children(nginx.0.id());
    let side = |label: &str, connections, url: String, token, pids: &[u32]| Side {
        label: label.to_owned(),
        connections,
        url,
        script: None,
        token,
        pids: pids.to_vec(),
    };
    let nginx_url = format!("http://127.0.0.1:{nginx_port}");
    let nginx_resolve = || {
        side(
            "nginx static resolve body",
            32,
            format!("{nginx_url}/resolve.json"),
            None,
            &nginx_pids,
        )
    };
    compare(
        "Read path, 50 pins, `wrk -t1 -c32`; baseline: nginx serving the same bytes",
        rounds(),
        &[
            (
                nginx_resolve(),
                side(
                    "pinion resolve",
                    32,
                    format!("{url}{resolve_path}"),
                    Some(&read_token),
                    &[pid],
                ),
            ),
            (
                nginx_resolve(),
                side(
                    &format!("pinion resolve, --workers {cores} (one per core)"),
                    32,
                    format!("{per_core_url}{resolve_path}"),
                    Some(&read_token),
                    &[per_core.0.id()],
                ),
            ),
            (
                side(
                    "nginx static list body",
                    32,
                    format!("{nginx_url}/list.json"),
                    None,
                    &nginx_pids,
                ),
                side(
                    "pinion list (50 pins)",
                    32,
                    format!("{url}{list_path}"),
                    Some(&read_token),
                    &[pid],
                ),
            ),
        ],
    )?;
    let read_rss = rss_kib(pid);
    drop(per_core);
    drop(nginx);

    // etcd `put` through its HTTP gateway, fsync per commit, same load generator.
    let etcd_port = free_port();
    let peer_port = free_port();
    let etcd = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path().join("etcd"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{etcd_port}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{etcd_port}"),
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
        ])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
        ])
        .args([
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer_port}"),
        ])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Guard)
        .map_err(|err| format!("etcd: {err}"))?;
    wait_for_port(etcd_port)?;
    std::thread::sleep(Duration::from_secs(2));
    let etcd_lua = etcd_script(dir.path())?;
    let promote_lua = promote_script(dir.path(), &promote_token)?;
    let etcd_pid = etcd.0.id();
    let write_side = |label: String, connections, url: String, script, pid| Side {
        label,
        connections,
        url,
        script: Some(script),
        token: None,
        pids: vec![pid],
    };
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let pairs: Vec<(Side, Side)> = [1, 32]
        .into_iter()
        .map(|connections| {
            (
                write_side(
                    format!("etcd 3.4 put, c={connections}"),
                    connections,
                    etcd_url.clone(),
                    &etcd_lua,
                    etcd_pid,
                ),
                write_side(
                    format!("pinion promote, c={connections}"),
                    connections,
                    url.clone(),
                    &promote_lua,
                    pid,
                ),
            )
        })
        .collect();
    compare(
        "Durable writes: a fresh digest per request, `wrk -t1`; baseline: etcd `put`",
        rounds(),
        &pairs,
    )?;
    drop(etcd);

    println!("\nMemory (VmRSS of `pinion serve`)");
    println!("| moment | RSS |");
    println!("|---|---|");
    println!(
        "| idle, after start | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| after the read loads (resolve and list) | {:.1} MiB |",
        read_rss as f64 / 1024.0
    );
    println!(
        "| after the promote loads | {:.1} MiB |",
        rss_kib(pid) as f64 / 1024.0
    );

    let digest = format!("sha256:{:064x}", 8);
    let verify = format!(
        "{} verify --server {url} --template t-7 --digest {digest}",
        pinion.display()
    );
    // The pipeline existing CI jobs run, as a script so no quoting is lost.
    let script = dir.path().join("curl-jq.sh");
    std::fs::write(
        &script,
        format!(
            "curl -sf -H \"Authorization: Bearer $PINION_TOKEN\" '{url}/cp/admin/runtime-image?template_name=t-7' \\\n  | jq -e '.pins[] | select(.template_name==\"t-7\" and .region==\"global\") | .image_digest == \"{digest}\"' >/dev/null\n"
        ),
    )
    .map_err(|err| err.to_string())?;
    let pipeline = format!("bash {}", script.display());
    // Re-pin t-7 so both commands check a digest that is really there.
    pinion_promote(pinion, &url, &promote_token, "t-7", &digest)?;
    hyperfine_table(
        "`pinion verify` beside the `curl | jq` pipeline it replaces",
        30,
        &[("curl | jq", pipeline), ("pinion verify", verify)],
        &[("PINION_TOKEN", read_token.as_str())],
    )?;
    drop(server);
    Ok(())
}
