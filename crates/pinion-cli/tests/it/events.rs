//! The change feed: every change is an event, in the log, in the stream
//! and at every webhook that wants it, signed, retried, and delivered at
//! least once even across `kill -9`.

use std::net::TcpListener;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    Answer, Env, EventStream, Fixture, Receiver, Server, digest, eventually, http, pinion,
    poll_until, raw_http, register_secret, run, signature_holds,
};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";

fn promote(server: &Server, token: &str, n: u32) {
    let body = format!(
        r#"{{"template_name":"codex","image_digest":"{}"}}"#,
        digest(n)
    );
    let answer = server.post(PROMOTE, token, &body);
    assert_eq!(answer.status, 201, "{answer:?}");
}

/// Creates a webhook and returns its secret (registered for the sweep).
fn webhook(server: &Server, admin: &str, name: &str, body: &str) -> String {
    let answer = http(
        server.addr,
        "PUT",
        &format!("/cp/admin/webhooks/{name}"),
        Some(admin),
        Some(body.as_bytes()),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    let secret = answer.json()["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    register_secret(&secret);
    secret
}

fn events(server: &Server, token: &str, query: &str) -> serde_json::Value {
    let answer = server.get(&format!("/cp/events{query}"), token);
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.json()
}

fn deliveries(server: &Server, admin: &str, name: &str) -> Vec<serde_json::Value> {
    let answer = server.get(&format!("/cp/admin/webhooks/{name}/deliveries"), admin);
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.json()["deliveries"].as_array().unwrap().clone()
}

#[test]
fn a_promotion_reaches_a_real_receiver_signed_and_equal_to_its_event() {
    let fixture = Fixture::new();
    let receiver = Receiver::start(vec![Answer(200, "", "ok")]);
    let secret = webhook(
        &fixture.server,
        &fixture.admin,
        "ci",
        &format!(
            r#"{{"url":"{}","events":["pin.promoted"]}}"#,
            receiver.url()
        ),
    );
    promote(&fixture.server, &fixture.promote, 1);
    let delivered = receiver.wait_for(1, Duration::from_secs(10));
    let delivery = &delivered[0];
    assert_eq!(delivery.method, "POST");
    assert_eq!(delivery.header("content-type"), Some("application/json"));
    assert!(signature_holds(&secret, delivery), "{delivery:?}");
    let sent_at: i64 = delivery
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - sent_at).abs() < 30, "a current timestamp");
    let body: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(
        delivery.header("webhook-id"),
        Some(format!("evt_{}", body["id"]).as_str())
    );
    let log = events(&fixture.server, &fixture.read, "?type=pin.promoted");
    assert_eq!(log["events"][0], body, "the body is the event in the log");
    assert_eq!(body["type"], "pin.promoted");
    assert_eq!(body["data"]["to_digest"], digest(1));
    assert_eq!(body["data"]["actor"], "ci");
    // A body that is tampered with does not verify.
    let mut forged = delivery.clone();
    forged.body.push(b' ');
    assert!(!signature_holds(&secret, &forged));
    eventually(
        "the delivery log says delivered",
        Duration::from_secs(5),
        || {
            let log = deliveries(&fixture.server, &fixture.admin, "ci");
            log.len() == 1 && log[0]["state"] == "delivered" && log[0]["attempts"] == 1
        },
    );
    // The secret is shown once: never in the list.
    let listed = fixture.server.get("/cp/admin/webhooks", &fixture.admin);
    assert_eq!(listed.json()["webhooks"][0]["name"], "ci");
    assert!(listed.json()["webhooks"][0].get("secret").is_none());
}

#[test]
fn a_failing_receiver_is_retried_on_the_schedule_until_it_takes_it() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let admin = env.token("platform", "admin", &[]);
    let server = Server::start(
        &env.database(),
        &[("PINION_WEBHOOK_RETRY_SCHEDULE", "1s,1s,1s")],
    );
    let receiver = Receiver::start(vec![
        Answer(500, "", "boom"),
        Answer(503, "", "later"),
        Answer(204, "", ""),
    ]);
    let secret = webhook(
        &server,
        &admin,
        "flaky",
        &format!(r#"{{"url":"{}"}}"#, receiver.url()),
    );
    promote(&server, &admin, 1);
    let received = receiver.wait_for(3, Duration::from_secs(15));
    let promoted: Vec<_> = received
        .iter()
        .filter(|delivery| delivery.body.windows(12).any(|w| w == b"pin.promoted"))
        .collect();
    assert_eq!(promoted.len(), 3, "{received:?}");
    assert!(
        promoted
            .iter()
            .all(|delivery| signature_holds(&secret, delivery))
    );
    let ids: Vec<_> = promoted.iter().map(|d| d.header("webhook-id")).collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] == pair[1]),
        "the same webhook-id on every retry"
    );
    for pair in promoted.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "retried on the schedule: {gap:?}"
        );
    }
    eventually("3 attempts, delivered", Duration::from_secs(5), || {
        deliveries(&server, &admin, "flaky")
            .iter()
            .any(|d| d["attempts"] == 3 && d["state"] == "delivered" && d["last_status"] == 204)
    });
}

#[test]
fn gone_disables_retry_after_waits_and_redirects_fail() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let admin = env.token("platform", "admin", &[]);
    let server = Server::start(
        &env.database(),
        &[("PINION_WEBHOOK_RETRY_SCHEDULE", "1s,1s")],
    );
    let gone = Receiver::start(vec![Answer(410, "", "gone")]);
    let busy = Receiver::start(vec![
        Answer(429, "Retry-After: 3\r\n", "slow down"),
        Answer(200, "", ""),
    ]);
    let target = Receiver::start(vec![Answer(200, "", "")]);
    let redirect = format!("Location: {}\r\n", target.url());
    let moved = Receiver::start(vec![Answer(307, Box::leak(redirect.into_boxed_str()), "")]);
    for (name, receiver) in [("gone", &gone), ("busy", &busy), ("moved", &moved)] {
        webhook(
            &server,
            &admin,
            name,
            &format!(
                r#"{{"url":"{}","events":["pin.promoted"]}}"#,
                receiver.url()
            ),
        );
    }
    promote(&server, &admin, 1);

    // 410: disabled, with an event saying so; nothing more goes there.
    eventually("the webhook is disabled", Duration::from_secs(10), || {
        let list = server.get("/cp/admin/webhooks", &admin).json();
        list["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "gone" && w["disabled_at"].is_string())
    });
    let disabled = events(&server, &admin, "?type=webhook.disabled");
    assert_eq!(disabled["events"][0]["data"]["webhook"], "gone");
    promote(&server, &admin, 2);

    // 429 with Retry-After: 3 is waited out, not the schedule's 1 s.
    let first_id = busy.wait_for(1, Duration::from_secs(10))[0]
        .header("webhook-id")
        .unwrap()
        .to_owned();
    let retried = poll_until("the retry after 429", Duration::from_secs(15), || {
        let same: Vec<_> = busy
            .received()
            .into_iter()
            .filter(|delivery| delivery.header("webhook-id") == Some(first_id.as_str()))
            .collect();
        (same.len() >= 2).then_some(same)
    });
    let gap = retried[1].at - retried[0].at;
    assert!(
        gap >= Duration::from_millis(2800),
        "Retry-After honoured: {gap:?}"
    );

    // A redirect is a failed attempt, not followed.
    eventually("the redirect failed twice", Duration::from_secs(10), || {
        deliveries(&server, &admin, "moved")
            .iter()
            .any(|d| d["attempts"].as_i64() >= Some(2) && d["last_status"] == 307)
    });
    let log = deliveries(&server, &admin, "moved");
    assert!(
        log.iter().any(|d| d["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("not followed")),
        "{log:?}"
    );
    assert!(
        target.received().is_empty(),
        "the redirect was not followed"
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        gone.received().len(),
        1,
        "a disabled webhook gets nothing more"
    );
    // PUT enables it again; a redelivery of a failed delivery is one more attempt.
    let again = http(
        server.addr,
        "PUT",
        "/cp/admin/webhooks/gone",
        Some(&admin),
        Some(format!(r#"{{"url":"{}"}}"#, target.url()).as_bytes()),
    );
    assert_eq!(again.status, 200, "{again:?}");
    assert!(
        again.json().get("secret").is_none(),
        "the secret is kept, not shown"
    );
    let first = deliveries(&server, &admin, "gone").last().unwrap()["event_id"].clone();
    let redelivered = http(
        server.addr,
        "POST",
        &format!("/cp/admin/webhooks/gone/deliveries/{first}/redeliver"),
        Some(&admin),
        None,
    );
    assert_eq!(redelivered.status, 202, "{redelivered:?}");
    target.wait_for(1, Duration::from_secs(10));
}

#[test]
fn a_committed_event_is_delivered_after_kill_9() {
    let fixture = Fixture::new();
    // The receiver's port, reserved, with nothing listening yet.
    let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let secret = webhook(
        &fixture.server,
        &fixture.admin,
        "later",
        &format!(r#"{{"url":"http://{addr}/hook","events":["pin.promoted"]}}"#),
    );
    let Fixture {
        server,
        env,
        promote: token,
        ..
    } = fixture;
    promote(&server, &token, 7);
    server.kill9();
    let receiver = Receiver::start_on(TcpListener::bind(addr).unwrap(), vec![Answer(200, "", "")]);
    let server = Server::start(&env.database(), &[]);
    let delivered = receiver.wait_for(1, Duration::from_secs(20));
    assert!(signature_holds(&secret, &delivered[0]));
    let body: serde_json::Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert_eq!(body["data"]["to_digest"], digest(7));
    drop(server);
}

#[test]
fn a_stream_resumes_after_its_last_id_with_no_gap() {
    let fixture = Fixture::new();
    let (server, token) = (&fixture.server, &fixture.promote);
    for n in 1..=3 {
        promote(server, token, n);
    }
    let log = events(server, token, "?type=pin.promoted");
    let ids: Vec<i64> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    let mut stream = EventStream::open(server.addr, token, Some(ids[0]), "?type=pin.promoted");
    let seen: Vec<i64> = (0..2).map(|_| stream.next_event().id).collect();
    assert_eq!(seen, ids[1..]);
    drop(stream);
    // Committed while nobody listened.
    promote(server, token, 4);
    promote(server, token, 5);
    let mut stream = EventStream::open(server.addr, token, Some(ids[2]), "?type=pin.promoted");
    let missed: Vec<String> = (0..2)
        .map(|_| {
            stream.next_event().data["data"]["to_digest"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(missed, [digest(4), digest(5)], "in order, none skipped");
    // And on, live.
    promote(server, token, 6);
    let live = stream.next_event();
    assert_eq!(live.kind, "pin.promoted");
    assert_eq!(live.data["data"]["to_digest"], digest(6));
    assert_eq!(
        live.data,
        events(server, token, &format!("?after={}", live.id - 1))["events"][0]
    );
    // `Last-Event-ID` wins over `after`.
    let mut stream = EventStream::open(server.addr, token, Some(live.id - 1), "?after=0");
    assert_eq!(stream.next_event().id, live.id);
}

struct StreamFixture {
    server: Server,
    read: String,
    promote: String,
}

#[test]
fn two_hundred_subscribers_all_receive_a_promotion() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let read = env.token("provisioner", "read", &[]);
    let ci = env.token("ci", "promote", &[]);
    // One token for all 200: its stream limit opened for them.
    let server = Server::start(&env.database(), &[("PINION_MAX_STREAMS_PER_TOKEN", "200")]);
    let fixture = StreamFixture {
        server,
        read,
        promote: ci,
    };
    let addr = fixture.server.addr;
    let readers: Vec<_> = (0..200)
        .map(|_| {
            let token = fixture.read.clone();
            thread::spawn(move || {
                let mut stream = EventStream::open(addr, &token, None, "");
                stream.next_event()
            })
        })
        .collect();
    eventually("200 subscribers", Duration::from_secs(20), || {
        http(addr, "GET", "/metrics", None, None)
            .body
            .contains("pinion_event_subscribers 200")
    });
    promote(&fixture.server, &fixture.promote, 9);
    for reader in readers {
        let event = reader.join().unwrap();
        assert_eq!(event.kind, "pin.promoted");
        assert_eq!(event.data["data"]["to_digest"], digest(9));
    }
}

/// A reader that stops reading stops its stream where it stands; writes go
/// on at their pace meanwhile. Once nothing written to it has been taken
/// for the write-stall limit (10 s), or it has fallen more than the server
/// keeps behind, it is disconnected, and so is every other reader that
/// stopped: twenty idle streams do not stay subscribed. A reader resumes
/// after the last event it got whole.
#[test]
fn a_slow_subscriber_is_disconnected_and_resumes_where_it_left() {
    let fixture = Fixture::new();
    let addr = fixture.server.addr;
    let mut idle = EventStream::open(addr, &fixture.read, None, "");
    let others: Vec<EventStream> = (0..20)
        .map(|_| EventStream::open(addr, &fixture.read, None, ""))
        .collect();
    let notes = "n".repeat(1000);
    let promoted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    // Enough to fill the idle readers' sockets many times over, then a few
    // seconds more.
    let started = Instant::now();
    let writers: Vec<_> = (0..8u32)
        .map(|writer| {
            let (token, notes, promoted) =
                (fixture.promote.clone(), notes.clone(), promoted.clone());
            thread::spawn(move || {
                let mut n = 0u32;
                while n < 750 || started.elapsed() < Duration::from_secs(12) {
                    n += 1;
                    let body = format!(
                        r#"{{"template_name":"codex","image_digest":"{}","region":"r{writer}","notes":"{notes}"}}"#,
                        digest(writer * 1_000_000 + n)
                    );
                    let answer = http(addr, "POST", PROMOTE, Some(&token), Some(body.as_bytes()));
                    assert_eq!(answer.status, 201, "writes are never held up");
                    promoted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    eprintln!(
        "{} promotions in {:?} while 21 readers did not read",
        promoted.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed()
    );
    let subscribers = || {
        let metrics = http(addr, "GET", "/metrics", None, None).body;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("pinion_event_subscribers "))
            .and_then(|count| count.trim().parse::<u64>().ok())
    };
    eventually(
        "every idle stream is let go",
        Duration::from_secs(30),
        || subscribers() == Some(0),
    );
    drop(others);
    let rest = idle.rest();
    // What came whole: up to the last blank line.
    let whole = &rest[..rest.rfind("\n\n").unwrap_or(0)];
    let last_seen = whole
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .filter_map(|id| id.parse::<i64>().ok())
        .next_back()
        .unwrap();
    // Disconnected for lagging, it says where to resume; for not reading
    // at all, nothing could be written to it any more.
    if let Some(words) = whole
        .lines()
        .rev()
        .find(|line| line.starts_with(": disconnected"))
    {
        assert!(words.contains("fell more than"), "{words}");
        let resume: i64 = words
            .rsplit("Last-Event-ID: ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(resume, last_seen, "resume after the last event it was sent");
    }
    let mut again = EventStream::open(addr, &fixture.read, Some(last_seen), "");
    assert_eq!(again.next_event().id, last_seen + 1);
}

/// A token may hold at most `--max-streams-per-token` streams open: one
/// more is `429 too_many_streams`; another token is not affected, and a
/// closed stream frees its place.
#[test]
fn streams_are_capped_per_token() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let read = env.token("viewer", "read", &[]);
    let other = env.token("other-viewer", "read", &[]);
    let promote = env.token("ci", "promote", &[]);
    let server = Server::start(&env.database(), &[("PINION_MAX_STREAMS_PER_TOKEN", "3")]);
    let open: Vec<EventStream> = (0..3)
        .map(|_| EventStream::open(server.addr, &read, None, ""))
        .collect();
    let fourth = raw_http(
        server.addr,
        format!(
            "GET /cp/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {read}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
        b"",
    );
    assert_eq!(fourth.status, 429, "{fourth:?}");
    assert_eq!(fourth.error_code(), "too_many_streams");
    let _theirs = EventStream::open(server.addr, &other, None, "");
    drop(open);
    // A closed stream is noticed at its next write: at the latest its
    // keep-alive comment, every 15 s.
    eventually(
        "the closed streams are gone",
        Duration::from_secs(30),
        || {
            http(server.addr, "GET", "/metrics", None, None)
                .body
                .lines()
                .any(|line| line == "pinion_event_subscribers 1")
        },
    );
    let mut again = EventStream::open(server.addr, &read, None, "");
    let body = format!(
        r#"{{"template_name":"codex","image_digest":"{}"}}"#,
        digest(1)
    );
    assert_eq!(server.post(PROMOTE, &promote, &body).status, 201);
    assert_eq!(again.next_event().kind, "pin.promoted");
}

#[test]
fn events_expire_with_410_not_a_silent_skip() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let token = env.token("ci", "promote", &[]);
    let settings = [
        ("PINION_EVENT_RETENTION_AGE", "100ms"),
        ("PINION_EVENT_RETENTION_COUNT", "2"),
        // A retention shorter than the retry schedule is refused.
        ("PINION_WEBHOOK_RETRY_SCHEDULE", "100ms"),
    ];
    let server = Server::start(&env.database(), &settings);
    for n in 1..=5 {
        promote(&server, &token, n);
    }
    drop(server);
    thread::sleep(Duration::from_millis(200));
    // Pruned at start-up.
    let server = Server::start(&env.database(), &settings);
    let expired = poll_until("the old events pruned", Duration::from_secs(10), || {
        let answer = server.get("/cp/events?after=0", &token);
        (answer.status != 200).then_some(answer)
    });
    assert_eq!(expired.status, 410, "{expired:?}");
    assert_eq!(expired.error_code(), "events_expired");
    let head = {
        let answer = server.get("/cp/events?after=4", &token);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["head"].as_i64().unwrap()
    };
    assert_eq!(head, 6);
    let mut stream = {
        let mut raw = std::net::TcpStream::connect(server.addr).unwrap();
        use std::io::{Read, Write};
        write!(
            raw,
            "GET /cp/events HTTP/1.0\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\nLast-Event-ID: 1\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(stream.starts_with("HTTP/1.0 410"), "{stream}");
    stream.clear();
}

#[test]
fn hostile_event_and_webhook_input_is_refused_and_writes_nothing() {
    let fixture = Fixture::new();
    let (server, admin) = (&fixture.server, &fixture.admin);
    promote(server, &fixture.promote, 1);
    let long = format!("https://example.com/{}", "a".repeat(3000));
    for (what, body, code) in [
        (
            "ftp",
            r#"{"url":"ftp://example.com/x"}"#.to_owned(),
            "invalid_webhook_url",
        ),
        (
            "javascript",
            r#"{"url":"javascript:alert(1)"}"#.to_owned(),
            "invalid_webhook_url",
        ),
        (
            "credentials",
            r#"{"url":"https://user:hunter2@example.com/x"}"#.to_owned(),
            "invalid_webhook_url",
        ),
        (
            "too long",
            format!(r#"{{"url":"{long}"}}"#),
            "invalid_webhook_url",
        ),
        (
            "no host",
            r#"{"url":"http:///x"}"#.to_owned(),
            "invalid_webhook_url",
        ),
        (
            "spaces",
            r#"{"url":"http://a b/"}"#.to_owned(),
            "invalid_webhook_url",
        ),
        (
            "unknown type",
            r#"{"url":"https://example.com","events":["pin.promoted","pin.exploded"]}"#.to_owned(),
            "invalid_event_type",
        ),
        (
            "no types",
            r#"{"url":"https://example.com","events":[]}"#.to_owned(),
            "invalid_event_type",
        ),
        (
            "bad template",
            r#"{"url":"https://example.com","templates":["Codex"]}"#.to_owned(),
            "invalid_template_name",
        ),
        (
            "unknown field",
            r#"{"url":"https://example.com","secret":"mine"}"#.to_owned(),
            "invalid_request",
        ),
        ("not json", "{".to_owned(), "malformed_json"),
    ] {
        let answer = http(
            server.addr,
            "PUT",
            "/cp/admin/webhooks/hook",
            Some(admin),
            Some(body.as_bytes()),
        );
        assert!((400..500).contains(&answer.status), "{what}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{what}");
        assert!(!answer.body.contains("hunter2"), "{what}: {answer:?}");
    }
    for name in ["Bad", "-x", "a_b", &"n".repeat(64), "%20"] {
        let answer = http(
            server.addr,
            "PUT",
            &format!("/cp/admin/webhooks/{name}"),
            Some(admin),
            Some(br#"{"url":"https://example.com"}"#),
        );
        assert!((400..500).contains(&answer.status), "{name}: {answer:?}");
        answer.error_code();
    }
    let forbidden = http(
        server.addr,
        "PUT",
        "/cp/admin/webhooks/hook",
        Some(&fixture.promote),
        Some(br#"{"url":"https://example.com"}"#),
    );
    assert_eq!(forbidden.status, 403);
    let listed = server.get("/cp/admin/webhooks", admin).json();
    assert_eq!(listed["webhooks"], serde_json::json!([]), "nothing written");
    for query in [
        "?after=-1",
        "?after=abc",
        "?after=99999999999999999999",
        "?after=1000000000000",
        "?type=pin.exploded",
        "?limit=0",
        "?limit=1001",
        "?template_name=Codex",
    ] {
        let answer = server.get(&format!("/cp/events{query}"), &fixture.read);
        assert!((400..500).contains(&answer.status), "{query}: {answer:?}");
        answer.error_code();
    }
    let unknown = http(
        server.addr,
        "DELETE",
        "/cp/admin/webhooks/nope",
        Some(admin),
        None,
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_code(), "webhook_not_found");
}

#[test]
fn restricted_tokens_see_only_their_templates_events_and_webhooks() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    env.add_template("hermes", "registry.example.com/hermes");
    let admin = env.token("platform", "admin", &[]);
    let codex_admin = env.token("codex-admin", "admin", &["codex"]);
    let server = env.start();
    for template in ["codex", "hermes"] {
        let body = format!(
            r#"{{"template_name":"{template}","image_digest":"{}"}}"#,
            digest(1)
        );
        assert_eq!(server.post(PROMOTE, &admin, &body).status, 201);
    }
    let seen = events(&server, &codex_admin, "");
    assert!(
        seen["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|event| event["template_name"] == "codex"),
        "{seen}"
    );
    assert_eq!(
        server
            .get("/cp/events?template_name=hermes", &codex_admin)
            .status,
        403
    );
    let mut stream = EventStream::open(server.addr, &codex_admin, Some(0), "");
    assert_eq!(stream.next_event().data["template_name"], "codex");
    // Webhooks: a restricted admin must restrict them to its templates.
    let all = http(
        server.addr,
        "PUT",
        "/cp/admin/webhooks/all",
        Some(&codex_admin),
        Some(br#"{"url":"https://example.com"}"#),
    );
    assert_eq!(all.status, 403, "{all:?}");
    webhook(
        &server,
        &codex_admin,
        "mine",
        r#"{"url":"https://example.com","templates":["codex"]}"#,
    );
    webhook(
        &server,
        &admin,
        "theirs",
        r#"{"url":"https://example.com"}"#,
    );
    let listed = server.get("/cp/admin/webhooks", &codex_admin).json();
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(listed["webhooks"][0]["name"], "mine");
    assert_eq!(
        server
            .get("/cp/admin/webhooks/theirs/deliveries", &codex_admin)
            .status,
        404
    );
    assert_eq!(
        http(
            server.addr,
            "DELETE",
            "/cp/admin/webhooks/theirs",
            Some(&codex_admin),
            None
        )
        .status,
        404
    );
    assert_eq!(
        server.get("/cp/admin/webhooks", &admin).json()["webhooks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn pinion_watch_prints_events_and_resumes_across_a_restart() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let token = env.token("ci", "promote", &[]);
    let port = crate::support::closed_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_on(&listen, &env.database(), &[]);
    let mut watch = pinion()
        .args([
            "watch",
            "--server",
            &server.url(),
            "--format",
            "json",
            "--template",
            "codex",
        ])
        .env("PINION_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (lines, printed) = std::sync::mpsc::channel::<String>();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    eventually("watch subscribed", Duration::from_secs(10), || {
        http(server.addr, "GET", "/metrics", None, None)
            .body
            .contains("pinion_event_subscribers 1")
    });
    promote(&server, &token, 1);
    let first: serde_json::Value =
        serde_json::from_str(&printed.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert_eq!(first["data"]["to_digest"], digest(1));
    server.kill9();
    let server = Server::start_on(&listen, &env.database(), &[]);
    // Committed while it was away, then after it is back.
    promote(&server, &token, 2);
    promote(&server, &token, 3);
    let next: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            serde_json::from_str(&printed.recv_timeout(Duration::from_secs(20)).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(next[0]["data"]["to_digest"], digest(2));
    assert_eq!(next[1]["data"]["to_digest"], digest(3));
    assert_eq!(
        next[0]["id"].as_i64(),
        first["id"].as_i64().map(|id| id + 1),
        "none skipped, none twice"
    );
    watch.kill().unwrap();
    let _ = watch.wait();

    // A token the server refuses ends it at once: exit 2, why on stderr.
    let out = run(pinion()
        .args(["watch", "--server", &server.url()])
        .env("PINION_TOKEN", "pinion_not_a_real_token"));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.reason().contains("401"), "{out:?}");
}
