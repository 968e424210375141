//! Faults tell the truth: a refused write never commits later, deadlines
//! hold, strangers cannot flush the audit, a vanished database is noticed,
//! and every answer, even the HTTP parser's, carries the contract's body.
//! Each test names the rule it guards; the engine is the suite's (both run in
//! `cargo xtask test`) unless the rule is about one engine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    Env, Fault, FaultServer, Fixture, Server, digest, eventually, half_closed_request, http,
    pinion, raw_http, register_secret, run,
};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";

fn promote_body(digest: &str) -> String {
    format!(r#"{{"template_name":"codex","image_digest":"{digest}"}}"#)
}

/// Holds the database's write lock from another connection for `hold`, as a
/// stuck process or a long migration would: SQLite's exclusive lock, or on
/// PostgreSQL the row every writer locks first. Returns once it is held.
fn hold_write_lock(env: &Env, hold: Duration) -> thread::JoinHandle<()> {
    let (held, locked) = mpsc::channel();
    let database = env.database();
    let holder = thread::spawn(move || {
        if let Some(path) = database.strip_prefix("sqlite://") {
            let connection = rusqlite::Connection::open(path).unwrap();
            connection.execute_batch("BEGIN EXCLUSIVE").unwrap();
            held.send(()).unwrap();
            thread::sleep(hold);
            connection.execute_batch("COMMIT").unwrap();
        } else {
            let mut client = postgres::Client::connect(&database, postgres::NoTls).unwrap();
            let mut tx = client.transaction().unwrap();
            tx.query("SELECT 1 FROM pinion_meta WHERE id = 1 FOR UPDATE", &[])
                .unwrap();
            held.send(()).unwrap();
            thread::sleep(hold);
            tx.commit().unwrap();
        }
    });
    locked
        .recv_timeout(Duration::from_secs(10))
        .expect("the write lock is held");
    holder
}

/// A server with `codex` in its catalog, a 2 s request timeout, and tokens.
struct Stalled {
    server: Server,
    env: Env,
    promote: String,
    read: String,
}

impl Stalled {
    fn new() -> Stalled {
        let env = Env::new();
        env.add_template("codex", "registry.example.com/codex");
        let promote = env.token("ci", "promote", &[]);
        let read = env.token("reader", "read", &[]);
        let server = Stalled::start(&env);
        Stalled {
            server,
            env,
            promote,
            read,
        }
    }

    fn start(env: &Env) -> Server {
        Server::start(&env.database(), &[("PINION_REQUEST_TIMEOUT", "2")])
    }
}

/// Rule 1: a write still queued when its deadline passes is dropped and
/// never committed, not even once the database comes back, nor after a
/// restart.
#[test]
fn a_write_refused_at_its_deadline_never_commits_later() {
    let stalled = Stalled::new();
    let lock = hold_write_lock(&stalled.env, Duration::from_millis(3500));
    let started = Instant::now();
    let answer = stalled
        .server
        .post(PROMOTE, &stalled.promote, &promote_body(&digest(7)));
    let took = started.elapsed();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.error_code(), "store_unavailable");
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was changed")
    );
    assert!(
        took < Duration::from_millis(2500),
        "answered by the deadline: {took:?}"
    );
    lock.join().unwrap();
    // The writer gets the lock now, and must drop the write it was given.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        stalled.server.pinned(&stalled.read, "codex", "global"),
        None
    );
    let ok = stalled
        .server
        .post(PROMOTE, &stalled.promote, &promote_body(&digest(8)));
    assert_eq!(ok.status, 201, "the writer goes on: {ok:?}");
    let Stalled {
        server, env, read, ..
    } = stalled;
    drop(server);
    let server = Stalled::start(&env);
    assert_eq!(
        server.pinned(&read, "codex", "global"),
        Some(digest(8)),
        "after a restart too, the refused digest is not the pin"
    );
}

/// Rule 1, through the gate: however long the database is held, the gate's
/// exit code agrees with the pin it leaves behind. Its retries never stack
/// up: an attempt given up on is never committed.
#[test]
fn the_gate_agrees_with_the_final_pin_however_long_the_database_stalls() {
    let stalled = Stalled::new();
    let gate = stalled.server.gate(&stalled.promote);
    let mut outcomes = Vec::new();
    for (n, hold_ms) in [300u64, 2500, 3500, 9000].into_iter().enumerate() {
        let wanted = digest(100 + n as u32);
        let lock = hold_write_lock(&stalled.env, Duration::from_millis(hold_ms));
        let out = gate.promote("codex", &wanted, &["--timeout", "3"]);
        lock.join().unwrap();
        thread::sleep(Duration::from_millis(1500));
        let pinned = stalled.server.pinned(&stalled.read, "codex", "global");
        assert_eq!(
            out.code == 0,
            pinned.as_deref() == Some(wanted.as_str()),
            "held {hold_ms} ms: exit {} but the pin is {pinned:?}: {out:?}",
            out.code
        );
        assert!(out.code == 0 || out.code == 2, "{out:?}");
        outcomes.push(out.code);
    }
    assert_eq!(outcomes[0], 0, "a short stall is waited out");
    assert_eq!(outcomes[3], 2, "a long one is red");
    let history = stalled.server.history(&stalled.read, "codex");
    let digests: Vec<&str> = history
        .iter()
        .map(|entry| entry["to_digest"].as_str().unwrap())
        .collect();
    let mut unique = digests.clone();
    unique.dedup();
    assert_eq!(digests, unique, "no attempt committed twice: {digests:?}");
}

/// Rule 3: strangers cannot flush the audit. Failed authentications cost no
/// write: they are counted, slowed per source with 429 and `Retry-After`,
/// summarised in the audit apart from real tokens' refusals, which they can
/// never push out.
#[test]
fn unauthenticated_floods_are_slowed_and_cannot_evict_real_refusals() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let admin = env.token("platform", "admin", &[]);
    let read = env.token("reader", "read", &[]);
    let promote = env.token("ci", "promote", &[]);
    let server = Server::start(&env.database(), &[("PINION_AUDIT_RETENTION", "5")]);
    let forbidden = server.post(PROMOTE, &read, &promote_body(&digest(1)));
    assert_eq!(forbidden.status, 403);

    let wrong = format!("pinion_{}", "ab".repeat(32));
    register_secret(&wrong);
    let (mut refused, mut slowed) = (0, 0);
    for _ in 0..300 {
        let answer = server.post(PROMOTE, &wrong, &promote_body(&digest(2)));
        match answer.status {
            401 => refused += 1,
            429 => {
                slowed += 1;
                assert_eq!(answer.error_code(), "too_many_auth_failures");
                let wait: u64 = answer.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=60).contains(&wait), "{answer:?}");
            }
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert!(
        (20..=30).contains(&refused),
        "a burst of 20, then slowed: {refused}"
    );
    assert_eq!(refused + slowed, 300);
    // A valid token from the same address is never slowed.
    assert_eq!(
        server
            .post(PROMOTE, &promote, &promote_body(&digest(3)))
            .status,
        201
    );
    let metrics = http(server.addr, "GET", "/metrics", None, None).body;
    assert!(
        metrics.contains(&format!(
            "pinion_auth_failures_total{{reason=\"unknown\"}} {refused}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "pinion_auth_failures_total{{reason=\"throttled\"}} {slowed}"
        )),
        "{metrics}"
    );

    // The summary is written once a minute, and when the server stops.
    assert_eq!(server.terminate(), Some(0));
    let server = env.start();
    let audit = server.get("/cp/admin/audit", &admin).json();
    let entries = audit["audit"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|entry| entry["actor"] == "reader" && entry["code"] == "forbidden"),
        "the real refusal survived the flood: {audit}"
    );
    let counted: i64 = entries
        .iter()
        .filter(|entry| entry["actor"].is_null())
        .map(|entry| {
            assert_eq!(entry["source"], "127.0.0.1");
            entry["count"].as_i64().unwrap()
        })
        .sum();
    assert_eq!(counted, 300, "every failure counted: {audit}");
    assert!(entries.len() <= 5, "a handful of entries, not 300: {audit}");
}

/// Rule 4: a template-restricted admin token sees only its templates, in
/// every list: audit, history, pins, catalog, drift, metrics.
#[test]
fn restricted_means_restricted_in_every_list() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    env.add_template("hermes", "registry.example.com/hermes");
    let admin = env.token("platform", "admin", &[]);
    let codex_admin = env.token("codex-admin", "admin", &["codex"]);
    let read = env.token("reader", "read", &[]);
    let server = Server::start(
        &env.database(),
        &[("PINION_METRICS_TOKEN_REQUIRED", "true")],
    );
    for template in ["codex", "hermes"] {
        let body = format!(
            r#"{{"template_name":"{template}","image_digest":"{}"}}"#,
            digest(1)
        );
        assert_eq!(server.post(PROMOTE, &admin, &body).status, 201);
        let stale = format!(
            r#"{{"template_name":"{template}","image_digest":"{}","expected_digest":"{}"}}"#,
            digest(2),
            digest(9)
        );
        assert_eq!(server.post(PROMOTE, &admin, &stale).status, 409);
    }
    // Refused before its body is read: about no template, so for
    // unrestricted admins only.
    assert_eq!(
        server
            .post(PROMOTE, &read, &promote_body(&digest(3)))
            .status,
        403
    );
    let templates_in = |path: &str, list: &str, field: &str| -> Vec<String> {
        let answer = server.get(path, &codex_admin);
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        answer.json()[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry[field].as_str().unwrap_or("(none)").to_owned())
            .collect()
    };
    assert_eq!(
        templates_in("/cp/admin/audit", "audit", "template_name"),
        ["codex"]
    );
    assert_eq!(
        templates_in(
            "/cp/admin/runtime-image/history",
            "history",
            "template_name"
        ),
        ["codex"]
    );
    assert_eq!(
        templates_in("/cp/admin/runtime-image", "pins", "template_name"),
        ["codex"]
    );
    assert_eq!(templates_in("/cp/runtimes", "runtimes", "name"), ["codex"]);
    assert!(
        templates_in("/cp/admin/runtime-image/drift", "pins", "template_name").is_empty(),
        "no drift report before the first check"
    );
    let everything = server.get("/cp/admin/audit", &admin).json();
    assert_eq!(everything["audit"].as_array().unwrap().len(), 3);

    // Rule 10: `/metrics` can be protected, and then it is restricted too.
    assert_eq!(http(server.addr, "GET", "/metrics", None, None).status, 401);
    let metrics = server.get("/metrics", &codex_admin);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("template=\"codex\""),
        "{}",
        metrics.body
    );
    assert!(!metrics.body.contains("hermes"), "{}", metrics.body);
    assert!(
        server
            .get("/metrics", &read)
            .body
            .contains("template=\"hermes\"")
    );
}

/// Rule 5: a SQLite file deleted or replaced under a running server is
/// noticed within seconds: `/readyz` is 503, writes are refused with 503,
/// and the log says why. Nothing is written into the lost file.
#[test]
fn a_vanished_database_is_noticed() {
    for replace in [false, true] {
        let env = Env::sqlite();
        env.add_template("codex", "registry.example.com/codex");
        let promote = env.token("ci", "promote", &[]);
        let read = env.token("reader", "read", &[]);
        let server = env.start();
        assert_eq!(
            server
                .post(PROMOTE, &promote, &promote_body(&digest(1)))
                .status,
            201
        );
        let path = env.sqlite_path();
        let moved = env.dir.path().join("moved-away.db");
        std::fs::rename(&path, &moved).unwrap();
        if replace {
            std::fs::copy(&moved, &path).unwrap();
        }
        eventually("readyz turns 503", Duration::from_secs(5), || {
            http(server.addr, "GET", "/readyz", None, None).status == 503
        });
        let refused = server.post(PROMOTE, &promote, &promote_body(&digest(2)));
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.error_code(), "store_unavailable");
        eventually("the log says so", Duration::from_secs(5), || {
            server
                .logs()
                .iter()
                .any(|line| line.contains("ERROR") && line.contains("removed or replaced"))
        });
        drop(server);
        if replace {
            std::fs::remove_file(&path).unwrap();
        }
        std::fs::rename(&moved, &path).unwrap();
        let server = env.start();
        assert_eq!(
            server.pinned(&read, "codex", "global"),
            Some(digest(1)),
            "the refused write is nowhere"
        );
    }
}

/// Rule 5, start-up: a production unit can refuse to start on a missing
/// database instead of making an empty one.
#[test]
fn serve_can_refuse_to_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let out = run(pinion()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--create-database",
            "false",
        ])
        .arg("--database")
        .arg(format!("sqlite://{}", path.display())));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.reason().contains("no database at"), "{out:?}");
    assert!(out.reason().contains("--create-database"), "{out:?}");
    assert!(!path.exists(), "nothing created");
}

/// Rule 6: a client that sends its request and then shuts its write side
/// gets its answer, every time.
#[test]
fn half_closed_connections_are_answered() {
    let fixture = Fixture::new();
    for n in 0..20u32 {
        let body = promote_body(&digest(n + 1));
        let request = format!(
            "POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            fixture.promote,
            body.len()
        );
        let answer = half_closed_request(fixture.server.addr, request.as_bytes())
            .unwrap_or_else(|| panic!("request {n} got no answer"));
        assert_eq!(answer.status, 201, "request {n}: {answer:?}");
        assert_eq!(answer.json()["pin"]["image_digest"], digest(n + 1));
    }
}

/// Rule 7: every error answer has the contract's body, even those the HTTP
/// parser makes, and a body that ends early or is badly chunked is a 400,
/// not a 413. The server keeps serving after each.
#[test]
fn the_http_layers_errors_carry_the_contract_body() {
    let fixture = Fixture::new();
    let addr = fixture.server.addr;
    let token = &fixture.promote;
    let big_header = format!("X-Big: {}\r\n", "a".repeat(500 * 1024));
    let many_headers: String = (0..1000).map(|n| format!("X-H{n}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("NUL in a header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(), 400, "bad_request"),
        ("bare CR in a header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".to_vec(), 400, "bad_request"),
        ("500 KB of headers", format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{big_header}\r\n").into_bytes(), 431, "headers_too_large"),
        ("1,000 headers", format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(), 431, "headers_too_large"),
        ("a 100 KB path", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(100 * 1024)).into_bytes(), 414, "uri_too_long"),
        ("non-ASCII bytes in the path", b"GET /cp/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "bad_request"),
        ("duplicate Content-Length", format!("POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}").into_bytes(), 400, "bad_request"),
        ("negative Content-Length", format!("POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n").into_bytes(), 400, "bad_request"),
        ("an HTTP/2.0 request line", b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), 400, "bad_request"),
        ("a broken chunked body", format!("POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n").into_bytes(), 400, "malformed_body"),
    ];
    for (what, request, status, code) in &cases {
        let answer =
            half_closed_request(addr, request).unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(answer.status, *status, "{what}: {answer:?}");
        assert_eq!(answer.error_code(), *code, "{what}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{what}"
        );
    }
    // A body shorter than its Content-Length, the sender then gone quiet.
    let short = format!(
        "POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"template_name\""
    );
    let answer = half_closed_request(addr, short.as_bytes()).expect("an answer to a short body");
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.error_code(), "malformed_body");
    assert_eq!(http(addr, "GET", "/healthz", None, None).status, 200);
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        None
    );
}

/// Rule 8: two `Authorization` headers are ambiguous, and refused; so is a
/// client deadline that does not parse.
#[test]
fn ambiguous_requests_are_refused() {
    let fixture = Fixture::new();
    let body = promote_body(&digest(1));
    for (what, extra) in [
        (
            "two Authorization headers",
            format!(
                "Authorization: Bearer {}\r\nAuthorization: Bearer {}\r\n",
                fixture.promote, fixture.read
            ),
        ),
        (
            "a bad client deadline",
            format!(
                "Authorization: Bearer {}\r\nx-pinion-timeout: soon\r\n",
                fixture.promote
            ),
        ),
        (
            "two client deadlines",
            format!(
                "Authorization: Bearer {}\r\nx-pinion-timeout: 5000\r\nx-pinion-timeout: 10\r\n",
                fixture.promote
            ),
        ),
    ] {
        let head = format!(
            "POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let answer = raw_http(fixture.server.addr, head.as_bytes(), body.as_bytes());
        assert_eq!(answer.status, 400, "{what}: {answer:?}");
        let code = answer.error_code();
        assert!(
            code == "ambiguous_authorization" || code == "bad_request",
            "{what}: {code}"
        );
    }
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        None
    );
}

/// Rule 9: a CI run URL carrying credentials is refused, by the server and
/// by the CLI, and the refusal does not repeat it.
#[test]
fn run_urls_with_credentials_are_refused_without_echo() {
    let fixture = Fixture::new();
    let password = "hunter2-very-secret";
    let url = format!("https://ci-bot:{password}@ci.example.com/runs/1");
    let body = format!(
        r#"{{"template_name":"codex","image_digest":"{}","ci_run_url":"{url}"}}"#,
        digest(1)
    );
    let answer = fixture.server.post(PROMOTE, &fixture.promote, &body);
    assert_eq!(answer.status, 422, "{answer:?}");
    assert_eq!(answer.error_code(), "invalid_ci_run_url");
    assert!(!answer.body.contains(password), "{answer:?}");
    let out =
        fixture
            .server
            .gate(&fixture.promote)
            .promote("codex", &digest(1), &["--ci-run-url", &url]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.reason().contains("--ci-run-url"), "{out:?}");
    assert!(
        !out.stderr.contains(password) && !out.stdout.contains(password),
        "{out:?}"
    );
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        None
    );
    assert!(
        fixture
            .server
            .logs()
            .iter()
            .all(|line| !line.contains(password))
    );
}

/// The gate settles a `504 commit_outcome_unknown` by reading the pin back:
/// green only if the pin is the digest. (A fault server: a real 504 needs a
/// commit frozen mid-flight, which `postgres::frozen_database_*` exercises.)
#[test]
fn an_unknown_outcome_is_settled_by_reading_back() {
    let unknown = (
        504,
        r#"{"error":{"code":"commit_outcome_unknown","message":"the commit did not finish in time"}}"#
            .to_owned(),
    );
    let pin_list = |n: u32| {
        format!(
            r#"{{"pins":[{{"template_name":"codex","region":"global","image_digest":"{}","image_ref":null,"git_sha":null,"notes":null,"promoted_at":"2026-12-01T00:00:00Z","promoted_by":"ci"}}]}}"#,
            digest(n)
        )
    };
    let moved = FaultServer::start(Fault::ByMethod(unknown.clone(), (200, pin_list(5))));
    let out = run(pinion()
        .args(["promote", "--server", &moved.url(), "--template", "codex"])
        .args(["--digest", &digest(5), "--timeout", "2", "--format", "json"])
        .env("PINION_TOKEN", "pinion_x"));
    assert_eq!(out.code, 0, "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        report["targets"][0]["settled"]
            .as_str()
            .unwrap()
            .contains("read back"),
        "{report}"
    );
    assert_eq!(
        moved
            .requests()
            .iter()
            .filter(|head| head.starts_with("POST "))
            .count(),
        1,
        "not sent again"
    );

    let not_moved = FaultServer::start(Fault::ByMethod(unknown, (200, pin_list(4))));
    let out = run(pinion()
        .args([
            "promote",
            "--server",
            &not_moved.url(),
            "--template",
            "codex",
        ])
        .args(["--digest", &digest(5), "--timeout", "2"])
        .env("PINION_TOKEN", "pinion_x"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.reason().contains(&format!("is `{}`", digest(4))),
        "{out:?}"
    );
}

/// The server answers by the client's deadline when that is the sooner one:
/// `pinion` says how long it will wait, so an answer is never lost to a
/// client that stopped listening.
#[test]
fn the_server_answers_by_the_clients_deadline() {
    let stalled = Stalled::new();
    let lock = hold_write_lock(&stalled.env, Duration::from_millis(2500));
    let body = promote_body(&digest(3));
    let head = format!(
        "POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nx-pinion-timeout: 800\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        stalled.promote,
        body.len()
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(stalled.server.addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let took = started.elapsed();
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert!(
        took < Duration::from_millis(1200),
        "answered by the client's 800 ms: {took:?}"
    );
    lock.join().unwrap();
}
