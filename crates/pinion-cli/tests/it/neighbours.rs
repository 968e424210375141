//! Hostile neighbours: what one token, one receiver or one peer could do to
//! everyone else, each refused with the contract's error body and nothing
//! written. Run on the suite's engine (SQLite, then every server on
//! PostgreSQL in the second pass).

use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::support::{
    Answer, Env, Fault, FaultServer, Fixture, Receiver, Server, digest, eventually, http, pinion,
    poll_until, raw_http, run,
};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";
const ROLLBACK: &str = "/cp/admin/runtime-image/rollback";
const REPORT: &str = "/cp/fleet/report";

fn report_body(template: &str, ids: &[String], digest_n: u32) -> String {
    let entries: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                r#"{{"instance_id":"{id}","template_name":"{template}","region":"global","image_digest":"{}"}}"#,
                digest(digest_n)
            )
        })
        .collect();
    format!(
        r#"{{"instances":[{}],"ttl_seconds":86400}}"#,
        entries.join(",")
    )
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}-{n}")).collect()
}

fn instance_count(server: &Server, token: &str) -> usize {
    let answer = server.get("/cp/fleet/instances?limit=1000", token);
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.json()["instances"].as_array().unwrap().len()
}

fn metric(server: &Server, line_start: &str) -> Option<String> {
    let answer = http(server.addr, "GET", "/metrics", None, None);
    assert_eq!(answer.status, 200);
    answer
        .body
        .lines()
        .find(|line| line.starts_with(line_start))
        .map(str::to_owned)
}

/// One report token cannot grow the fleet past its caps: a report that
/// would pass the total or the token's cap is `429 fleet_full` and records
/// nothing; heartbeats of known instances always fit; `/metrics` shows the
/// counts per token.
#[test]
fn the_fleet_is_bounded_in_total_and_per_token() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let a = env.token("workspace-a", "report", &[]);
    let b = env.token("workspace-b", "report", &[]);
    let read = env.token("viewer", "read", &[]);
    let ci = env.token("ci", "promote", &[]);
    let server = Server::start(
        &env.database(),
        &[
            ("PINION_FLEET_MAX_INSTANCES", "50"),
            ("PINION_FLEET_MAX_INSTANCES_PER_TOKEN", "30"),
        ],
    );
    let pin = format!(
        r#"{{"template_name":"codex","image_digest":"{}"}}"#,
        digest(1)
    );
    assert_eq!(server.post(PROMOTE, &ci, &pin).status, 201);
    let ok = server.post(REPORT, &a, &report_body("codex", &ids("a", 30), 1));
    assert_eq!(ok.status, 200, "{ok:?}");
    // One more from `a`: its own cap.
    let full = server.post(REPORT, &a, &report_body("codex", &ids("a-more", 1), 1));
    assert_eq!(full.status, 429, "{full:?}");
    assert_eq!(full.error_code(), "fleet_full");
    assert!(full.body.contains("token `workspace-a`"), "{full:?}");
    // Heartbeats of its 30 fit.
    let beat = server.post(REPORT, &a, &report_body("codex", &ids("a", 30), 2));
    assert_eq!(beat.status, 200, "{beat:?}");
    let ok = server.post(REPORT, &b, &report_body("codex", &ids("b", 20), 1));
    assert_eq!(ok.status, 200, "{ok:?}");
    // The whole fleet is full: a report of 1 known and 1 new is refused whole.
    let mut mixed = ids("b", 1);
    mixed.push("b-new".to_owned());
    let full = server.post(REPORT, &b, &report_body("codex", &mixed, 3));
    assert_eq!(full.status, 429, "{full:?}");
    assert_eq!(full.error_code(), "fleet_full");
    assert!(
        full.body.contains("the fleet has 50 of at most 50"),
        "{full:?}"
    );
    assert_eq!(instance_count(&server, &read), 50);
    let b0 = server.get("/cp/fleet/instances?limit=1000", &read).json()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|instance| instance["instance_id"] == "b-0")
        .cloned()
        .unwrap();
    assert_eq!(
        b0["image_digest"],
        digest(1),
        "the refused report moved nothing"
    );
    assert_eq!(
        metric(&server, "pinion_fleet_instances_held ").as_deref(),
        Some("pinion_fleet_instances_held 50")
    );
    assert_eq!(
        metric(
            &server,
            "pinion_fleet_instances_by_token{token=\"workspace-a\"}"
        )
        .as_deref(),
        Some("pinion_fleet_instances_by_token{token=\"workspace-a\"} 30")
    );
    // A delete makes room.
    let deleted = http(
        server.addr,
        "DELETE",
        "/cp/fleet/instances/b-0",
        Some(&b),
        None,
    );
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let ok = server.post(REPORT, &b, &report_body("codex", &ids("b-new", 1), 1));
    assert_eq!(ok.status, 200, "{ok:?}");
}

/// A restricted report token cannot take another template's instance: the
/// report is `403` and the instance stays where it was.
#[test]
fn a_report_cannot_move_an_instance_out_of_a_template_its_token_may_not_use() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    env.add_template("claude", "registry.example.com/claude");
    let claude = env.token("claudereport", "report", &["claude"]);
    let codex = env.token("codexreport", "report", &["codex"]);
    let ci = env.token("ci", "promote", &[]);
    let read = env.token("viewer", "read", &[]);
    let server = env.start();
    for template in ["codex", "claude"] {
        let body = format!(
            r#"{{"template_name":"{template}","image_digest":"{}"}}"#,
            digest(1)
        );
        assert_eq!(server.post(PROMOTE, &ci, &body).status, 201);
    }
    let shared = vec!["shared-ws".to_owned()];
    let ok = server.post(REPORT, &claude, &report_body("claude", &shared, 1));
    assert_eq!(ok.status, 200, "{ok:?}");
    let stolen = server.post(REPORT, &codex, &report_body("codex", &shared, 1));
    assert_eq!(stolen.status, 403, "{stolen:?}");
    assert_eq!(stolen.error_code(), "forbidden");
    assert!(stolen.body.contains("shared-ws"), "{stolen:?}");
    let current = poll_until("claude's fleet", Duration::from_secs(10), || {
        let answer = server.get("/cp/fleet?template_name=claude", &read);
        let entry = answer.json()["fleet"][0].clone();
        (entry["current"] == 1).then_some(entry)
    });
    assert_eq!(current["template_name"], "claude");
    let instance = server.get("/cp/fleet/instances?template_name=codex", &read);
    assert_eq!(instance.json()["instances"].as_array().unwrap().len(), 0);
}

/// Rollbacks of codex from digest 2 to digest 1, each expecting 2, sent to
/// `addrs` at one instant; their statuses, sorted.
fn rollbacks_at_once(addrs: &[std::net::SocketAddr], token: &str) -> Vec<u16> {
    let body = Arc::new(format!(
        r#"{{"template_name":"codex","to_digest":"{}","expected_digest":"{}"}}"#,
        digest(1),
        digest(2)
    ));
    let barrier = Arc::new(Barrier::new(addrs.len()));
    let mut answers: Vec<u16> = addrs
        .iter()
        .map(|addr| {
            let (addr, body, barrier, token) =
                (*addr, body.clone(), barrier.clone(), token.to_owned());
            std::thread::spawn(move || {
                barrier.wait();
                http(addr, "POST", ROLLBACK, Some(&token), Some(body.as_bytes())).status
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    answers.sort_unstable();
    answers
}

/// Two rollbacks of the same pin at the same instant, each expecting the
/// pin where it is: one moves it, the other is `409 pin_conflict`; they do
/// not undo each other.
#[test]
fn two_rollbacks_at_once_make_one_move_and_one_conflict() {
    let fixture = Fixture::new();
    for n in [1, 2] {
        let body = format!(
            r#"{{"template_name":"codex","image_digest":"{}"}}"#,
            digest(n)
        );
        assert_eq!(
            fixture.server.post(PROMOTE, &fixture.promote, &body).status,
            201
        );
    }
    let addr = fixture.server.addr;
    let answers = rollbacks_at_once(&[addr, addr], &fixture.promote);
    assert_eq!(answers, [201, 409]);
    let body = format!(
        r#"{{"template_name":"codex","to_digest":"{}","expected_digest":"{}"}}"#,
        digest(1),
        digest(2)
    );
    assert_eq!(
        fixture
            .server
            .pinned(&fixture.read, "codex", "global")
            .as_deref(),
        Some(digest(1).as_str())
    );
    // The conflict names where the pin is.
    let again = fixture.server.post(ROLLBACK, &fixture.promote, &body);
    assert_eq!(again.status, 409);
    assert_eq!(again.error_code(), "pin_conflict");
    assert_eq!(again.json()["pin"]["image_digest"], digest(1));

    // `pinion rollback` aims at the pin as it reads it: it goes back to the
    // previous digest, and says which.
    let out = run(pinion()
        .args(["rollback", "--server", &fixture.server.url()])
        .args(["--template", "codex"])
        .env("PINION_TOKEN", &fixture.promote));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        fixture
            .server
            .pinned(&fixture.read, "codex", "global")
            .as_deref(),
        Some(digest(2).as_str())
    );
}

/// With `--regions`, a typo'd region is `422 unknown_region` and creates
/// nothing; without it, the answer and the CLI say a region's first pin was
/// created.
#[test]
fn a_region_typo_is_refused_or_announced() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    env.add_template("hermes", "registry.example.com/hermes");
    let ci = env.token("ci", "promote", &[]);
    let read = env.token("viewer", "read", &[]);
    let listed = Server::start(&env.database(), &[("PINION_REGIONS", "global,us-east-2")]);
    let body = |template: &str, region: &str| {
        format!(
            r#"{{"template_name":"{template}","image_digest":"{}","region":"{region}"}}"#,
            digest(1)
        )
    };
    let typo = listed.post(PROMOTE, &ci, &body("codex", "us-eats-2"));
    assert_eq!(typo.status, 422, "{typo:?}");
    assert_eq!(typo.error_code(), "unknown_region");
    assert!(typo.body.contains("global, us-east-2"), "{typo:?}");
    assert_eq!(listed.pinned(&read, "codex", "us-eats-2"), None);
    let ok = listed.post(PROMOTE, &ci, &body("codex", "us-east-2"));
    assert_eq!(ok.status, 201, "{ok:?}");
    assert!(ok.json().get("new_region").is_none(), "{ok:?}");
    let hold = listed.post(
        "/cp/admin/runtime-image/hold",
        &ci,
        r#"{"template_name":"codex","region":"us-eats-2","reason":"typo"}"#,
    );
    assert_eq!(hold.error_code(), "unknown_region", "{hold:?}");
    drop(listed);

    let open = env.start();
    let first = open.post(PROMOTE, &ci, &body("codex", "eu-wset-1"));
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.json()["new_region"], true, "{first:?}");
    // The region has a pin now: the next one in it is not news.
    let second = open.post(PROMOTE, &ci, &body("hermes", "eu-wset-1"));
    assert_eq!(second.status, 201, "{second:?}");
    assert!(second.json().get("new_region").is_none(), "{second:?}");
    let out = run(pinion()
        .args(["promote", "--server", &open.url()])
        .args(["--template", "hermes", "--region", "ap-sotuh-1"])
        .args(["--digest", &digest(2)])
        .env("PINION_TOKEN", &ci));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("first pin of region `ap-sotuh-1`"),
        "{out:?}"
    );
}

/// Bodies that are JSON but not objects are `400` on every write (serde
/// would read an array as a struct by position), and a body declared as
/// anything but JSON is `415`; `curl -d`'s form type still works.
#[test]
fn non_object_bodies_and_foreign_media_types_are_refused() {
    let fixture = Fixture::new();
    let server = &fixture.server;
    let put = |body: &str| {
        http(
            server.addr,
            "PUT",
            "/cp/admin/runtimes/codex",
            Some(&fixture.admin),
            Some(body.as_bytes()),
        )
    };
    for body in ["[null]", "[]", "null", "\"codex\"", "1", "  [\"x\", true]"] {
        let answer = put(body);
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert_eq!(answer.error_code(), "body_not_object", "{body}");
    }
    let runtimes = server.get("/cp/runtimes", &fixture.read).json();
    let codex = runtimes["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|runtime| runtime["name"] == "codex")
        .cloned()
        .unwrap();
    assert_eq!(
        codex["image"], "registry.example.com/team/workspace-template-codex",
        "the catalog entry kept its repository"
    );
    let array = format!(r#"["codex", "{}"]"#, digest(1));
    let answer = server.post(PROMOTE, &fixture.promote, &array);
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.error_code(), "body_not_object");
    assert_eq!(server.pinned(&fixture.read, "codex", "global"), None);

    let promote_as = |content_type: &str, n: u32| {
        let body = format!(
            r#"{{"template_name":"codex","image_digest":"{}"}}"#,
            digest(n)
        );
        let head = format!(
            "POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            fixture.promote,
            body.len()
        );
        raw_http(server.addr, head.as_bytes(), body.as_bytes())
    };
    for foreign in [
        "text/html",
        "text/plain; charset=utf-8",
        "multipart/form-data",
    ] {
        let answer = promote_as(foreign, 1);
        assert_eq!(answer.status, 415, "{foreign}: {answer:?}");
        assert_eq!(answer.error_code(), "unsupported_media_type");
    }
    assert_eq!(server.pinned(&fixture.read, "codex", "global"), None);
    for (n, accepted) in [
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ]
    .into_iter()
    .enumerate()
    {
        let n = u32::try_from(n).unwrap() + 1;
        let answer = promote_as(accepted, n);
        assert_eq!(answer.status, 201, "{accepted}: {answer:?}");
    }
}

/// A query parameter that is present must parse, and one given twice is
/// refused: `?limit=` is not "no limit".
#[test]
fn empty_repeated_and_malformed_query_parameters_are_refused() {
    let fixture = Fixture::new();
    let server = &fixture.server;
    for (path, code) in [
        (
            "/cp/admin/audit?limit=&limit=%C3%8A&before=",
            "invalid_request",
        ),
        ("/cp/admin/audit?before=", "invalid_request"),
        (
            "/cp/admin/runtime-image/retention?history=",
            "invalid_request",
        ),
        ("/cp/fleet/instances?limit=", "invalid_request"),
        ("/cp/fleet/instances?region=", "invalid_region"),
        ("/cp/fleet/instances?after=", "invalid_instance_id"),
        ("/cp/fleet/instances?state=", "invalid_request"),
        (
            "/cp/admin/runtime-image?template_name=",
            "invalid_template_name",
        ),
        (
            "/cp/admin/runtime-image?template_name=codex&template_name=hermes",
            "invalid_request",
        ),
        ("/cp/events?after=", "invalid_after"),
        ("/cp/events?type=", "invalid_event_type"),
        (
            "/cp/runtime-image/resolve?template_name=codex&region=eu&region=us",
            "invalid_request",
        ),
    ] {
        let answer = server.get(path, &fixture.admin);
        assert_eq!(answer.status, 422, "{path}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{path}: {answer:?}");
    }
    // Absent parameters keep their defaults.
    for path in [
        "/cp/admin/audit",
        "/cp/admin/runtime-image/retention",
        "/cp/fleet/instances",
        "/cp/events",
    ] {
        assert_eq!(server.get(path, &fixture.admin).status, 200, "{path}");
    }
}

fn put_webhook(server: &Server, admin: &str, name: &str, url: &str) -> crate::support::Response {
    http(
        server.addr,
        "PUT",
        &format!("/cp/admin/webhooks/{name}"),
        Some(admin),
        Some(format!(r#"{{"url":"{url}"}}"#).as_bytes()),
    )
}

fn deliveries(server: &Server, admin: &str, name: &str) -> Vec<serde_json::Value> {
    let answer = server.get(&format!("/cp/admin/webhooks/{name}/deliveries"), admin);
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.json()["deliveries"].as_array().unwrap().clone()
}

fn promote_n(server: &Server, token: &str, n: u32) {
    let body = format!(
        r#"{{"template_name":"codex","image_digest":"{}"}}"#,
        digest(n)
    );
    assert_eq!(server.post(PROMOTE, token, &body).status, 201);
}

/// Webhooks cannot point inside the server's network, however the address
/// is written; one made while that was allowed is never connected to once
/// it is not; and what a receiver says never comes back in the deliveries.
#[test]
fn webhooks_are_no_way_into_the_network_and_read_nothing_back() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let admin = env.token("platform", "admin", &[]);
    let restricted = env.token("codex-admin", "admin", &["codex"]);
    let ci = env.token("ci", "promote", &[]);
    let strict = Server::start(
        &env.database(),
        &[("PINION_WEBHOOK_ALLOW_PRIVATE", "false")],
    );
    let receiver = Receiver::start(vec![Answer(200, "", "")]);
    for url in [
        format!("http://{}/hook", receiver.addr),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://[::1]/".to_owned(),
        "http://2130706433/".to_owned(),
        "http://0.0.0.0/".to_owned(),
        "http://localhost/".to_owned(),
        "http://10.0.0.8/".to_owned(),
        "http://[fd00::1]/".to_owned(),
    ] {
        for token in [&admin, &restricted] {
            let answer = put_webhook(&strict, token, "inside", &url);
            let code = answer.error_code();
            assert_eq!(answer.status, 422, "{url}: {answer:?}");
            assert_eq!(code, "invalid_webhook_url", "{url}");
        }
    }
    assert_eq!(
        strict.get("/cp/admin/webhooks", &admin).json()["webhooks"],
        serde_json::json!([])
    );
    drop(strict);

    // Made while allowed, delivered by a server that does not allow it:
    // never connected to, and the delivery says why.
    let open = env.start();
    let answer = put_webhook(&open, &admin, "inside", &receiver.url());
    assert_eq!(answer.status, 201, "{answer:?}");
    drop(open);
    let strict = Server::start(
        &env.database(),
        &[("PINION_WEBHOOK_ALLOW_PRIVATE", "false")],
    );
    promote_n(&strict, &ci, 1);
    let attempted = poll_until("an attempt recorded", Duration::from_secs(15), || {
        let list = deliveries(&strict, &admin, "inside");
        list.iter()
            .find(|d| d["attempts"].as_i64() >= Some(1))
            .cloned()
    });
    assert!(
        attempted["last_error"]
            .as_str()
            .unwrap()
            .contains("not connected"),
        "{attempted}"
    );
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
    drop(strict);

    // Allowed: what a receiver answers comes back as its status alone.
    let open = env.start();
    let banner = Receiver::start(vec![Answer(
        403,
        "Content-Type: text/plain\r\n",
        "INTERNAL-ADMIN-BANNER secret-ish words",
    )]);
    assert_eq!(
        put_webhook(&open, &admin, "banner", &banner.url()).status,
        201
    );
    promote_n(&open, &ci, 2);
    banner.wait_for(1, Duration::from_secs(15));
    let failed = poll_until("the failure recorded", Duration::from_secs(15), || {
        deliveries(&open, &admin, "banner")
            .into_iter()
            .find(|d| d["last_status"] == 403)
    });
    assert_eq!(failed["last_error"], "403 Forbidden", "{failed}");
}

/// A receiver that accepts connections and never answers holds no other
/// webhook's deliveries back: a healthy receiver gets its delivery at once,
/// though forty of the dead one's are due before it.
#[test]
fn a_dead_receiver_does_not_delay_the_others() {
    let fixture = Fixture::new();
    let server = &fixture.server;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holding = held.clone();
    std::thread::spawn(move || {
        for stream in dead.incoming().flatten() {
            holding.lock().unwrap().push(stream);
        }
    });
    let answer = put_webhook(
        server,
        &fixture.admin,
        "dead",
        &format!("http://{dead_addr}/hook"),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    for n in 1..=40 {
        promote_n(server, &fixture.promote, n);
    }
    let live = Receiver::start(vec![Answer(200, "", "")]);
    assert_eq!(
        put_webhook(server, &fixture.admin, "live", &live.url()).status,
        201
    );
    let promoted = std::time::Instant::now();
    promote_n(server, &fixture.promote, 41);
    live.wait_for(1, Duration::from_secs(5));
    let took = promoted.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The dead one has at most its share of connections open.
    let connections = held.lock().unwrap().len();
    assert!(
        connections <= 4,
        "{connections} connections to the dead receiver"
    );
}

/// Answers from other servers are read to 8 MiB at most: a peer or a soak
/// source that answers 300 MB is unreachable or unavailable, and this
/// server's memory stays where it was.
#[test]
fn huge_answers_from_peers_and_the_soak_source_are_cut_off() {
    let huge = FaultServer::start(Fault::Huge(300 * 1024 * 1024));
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let ci = env.token("ci", "promote", &[]);
    let server = Server::start_with_args(
        &env.database(),
        &[
            ("PINION_PEER_TOKEN_STAGING", "pinion_not_a_real_token"),
            ("PINION_SOAK_SOURCE", &format!("staging={}", huge.url())),
            ("PINION_SOAK_TOKEN", "pinion_not_a_real_token"),
            ("PINION_SOAK", "1h"),
        ],
        &["--peer", &format!("staging={}", huge.url())],
    );
    let body = format!(
        r#"{{"template_name":"codex","image_digest":"{}"}}"#,
        digest(1)
    );
    let refused = server.post(PROMOTE, &ci, &body);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.error_code(), "soak_source_unavailable");
    assert!(refused.body.contains("larger than 8 MiB"), "{refused:?}");
    eventually("the peer read is cut off", Duration::from_secs(20), || {
        server.logs().iter().any(|line| {
            line.contains("could not read a peer") && line.contains("larger than 8 MiB")
        })
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kb < 150 * 1024, "RSS {rss_kb} kB");
}

/// A PostgreSQL replica started without the secret key cannot sign, so it
/// claims no delivery (and says so at start); a replica with the key
/// delivers them all.
#[test]
fn a_replica_without_the_key_leaves_deliveries_to_one_with_it() {
    let env = Env::postgres();
    env.add_template("codex", "registry.example.com/codex");
    let admin = env.token("platform", "admin", &[]);
    let ci = env.token("ci", "promote", &[]);
    let receiver = Receiver::start(vec![Answer(200, "", "")]);
    let keyed = Server::start(&env.database(), &[]);
    assert_eq!(
        put_webhook(&keyed, &admin, "hook", &receiver.url()).status,
        201
    );
    drop(keyed);
    let keyless = Server::start(&env.database(), &[("PINION_SECRET_KEY_FILE", "")]);
    for n in 1..=5 {
        promote_n(&keyless, &ci, n);
    }
    eventually(
        "the keyless replica says why",
        Duration::from_secs(10),
        || {
            keyless
                .logs()
                .iter()
                .any(|line| line.contains("cannot sign webhook deliveries"))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let waiting = deliveries(&keyless, &admin, "hook");
    assert_eq!(waiting.len(), 5, "{waiting:?}");
    assert!(
        waiting
            .iter()
            .all(|d| d["state"] == "pending" && d["attempts"] == 0),
        "{waiting:?}"
    );
    assert!(receiver.received().is_empty());
    let _keyed = Server::start(&env.database(), &[]);
    receiver.wait_for(5, Duration::from_secs(20));
}

/// A retention that could prune an event before its deliveries' retries
/// are spent is refused at start.
#[test]
fn an_event_retention_shorter_than_the_retry_schedule_is_refused() {
    let env = Env::sqlite();
    let out = run(pinion()
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(env.database())
        .args(["--event-retention-age", "1h"]));
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("shorter than --webhook-retry-schedule"),
        "{out:?}"
    );
}

/// On two PostgreSQL replicas: the fleet's caps count what every replica
/// was told (a token that filled its cap on one cannot add on the other),
/// and two rollbacks sent to the two replicas at once make one move and one
/// conflict.
#[test]
fn caps_and_rollbacks_hold_across_two_replicas() {
    let env = Env::postgres();
    env.add_template("codex", "registry.example.com/codex");
    let a = env.token("workspace-a", "report", &[]);
    let ci = env.token("ci", "promote", &[]);
    let read = env.token("viewer", "read", &[]);
    let settings = [("PINION_FLEET_MAX_INSTANCES_PER_TOKEN", "10")];
    let one = Server::start(&env.database(), &settings);
    let two = Server::start(&env.database(), &settings);
    promote_n(&one, &ci, 1);
    let ok = one.post(REPORT, &a, &report_body("codex", &ids("a", 10), 1));
    assert_eq!(ok.status, 200, "{ok:?}");
    // Once the second replica has read the first's reports, its count of
    // the token's instances is full too.
    poll_until(
        "the other replica reads them",
        Duration::from_secs(15),
        || (instance_count(&two, &read) == 10).then_some(()),
    );
    let refused = two.post(REPORT, &a, &report_body("codex", &ids("a-more", 1), 1));
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.error_code(), "fleet_full");
    // Heartbeats of the known ten fit on either.
    let beat = two.post(REPORT, &a, &report_body("codex", &ids("a", 10), 1));
    assert_eq!(beat.status, 200, "{beat:?}");

    promote_n(&one, &ci, 2);
    assert_eq!(rollbacks_at_once(&[one.addr, two.addr], &ci), [201, 409]);
}
