//! PostgreSQL-only behaviour: several replicas on one database, and a
//! database outage. Each test makes its own PostgreSQL database whatever
//! `PINION_TEST_ENGINE` says, and fails (never passes unrun) when no
//! PostgreSQL answers; `cargo xtask test` runs them once, in its first pass.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::{Env, Server, digest, eventually, http};

/// A TCP proxy in front of PostgreSQL that the test can cut (every
/// connection closed, new ones refused) and restore: a database outage
/// without stopping the machine's server.
struct CuttableProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl CuttableProxy {
    fn start(upstream: SocketAddr) -> CuttableProxy {
        CuttableProxy::slowed(upstream, Duration::ZERO)
    }

    /// Also holds back every answer from the database by `delay`: a
    /// database far away.
    fn slowed(upstream: SocketAddr, delay: Duration) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (cut_flag, tracked) = (cut.clone(), open.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if cut_flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        tracked.lock().unwrap().push(clone);
                    }
                }
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Duration::ZERO,
                );
                pump(server, client, delay);
            }
        });
        CuttableProxy { addr, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    thread::sleep(delay);
                    if to.write_all(&buffer[..read]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// The database URL with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let credentials = authority
        .rsplit_once('@')
        .map_or(String::new(), |(user, _)| format!("{user}@"));
    format!("{scheme}://{credentials}{addr}/{path}")
}

fn upstream(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split_once('/').unwrap().0;
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    host_port.parse().unwrap()
}

fn promote(server: &Server, token: &str, n: u32) -> crate::support::Response {
    server.post(
        "/cp/admin/runtime-image/promote",
        token,
        &format!(
            r#"{{"template_name":"codex","image_digest":"{}"}}"#,
            digest(n)
        ),
    )
}

/// Cuts the database away from a server, checks what it answers, restores
/// it, and checks it heals; `reads_survive` says whether reads keep serving
/// the last known pins meanwhile.
fn outage(read_consistency: &str, reads_survive: bool) {
    let env = Env::postgres();
    env.add_template("codex", "localhost:5000/codex");
    let token = env.token("ci", "promote", &[]);
    let proxy = CuttableProxy::start(upstream(&env.database()));
    let server = Server::start(
        &through(&env.database(), proxy.addr),
        &[("PINION_READ_CONSISTENCY", read_consistency)],
    );
    assert_eq!(promote(&server, &token, 1).status, 201);

    proxy.cut();
    eventually("readyz 503", Duration::from_secs(10), || {
        http(server.addr, "GET", "/readyz", None, None).status == 503
    });
    let refused = promote(&server, &token, 2);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.error_code(), "store_unavailable");
    let read = server.get("/cp/runtime-image/resolve?template_name=codex", &token);
    if reads_survive {
        // A provisioner should not fail because the database blinked.
        assert_eq!(read.status, 200, "{read:?}");
        assert_eq!(read.json()["image_digest"], digest(1));
    } else {
        assert_eq!(read.status, 503, "{read:?}");
        assert_eq!(read.error_code(), "store_unavailable");
    }

    proxy.restore();
    eventually("readyz 200", Duration::from_secs(15), || {
        http(server.addr, "GET", "/readyz", None, None).status == 200
    });
    let healed = promote(&server, &token, 3);
    assert_eq!(healed.status, 201, "{healed:?}");
    assert_eq!(server.pinned(&token, "codex", "global"), Some(digest(3)));
    let history = server.history(&token, "codex");
    let moves: Vec<&str> = history
        .iter()
        .map(|entry| entry["to_digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        moves,
        [digest(1), digest(3)],
        "the refused promotion left nothing behind"
    );
}

#[test]
fn a_database_outage_is_503_for_writes_and_heals_itself_with_fast_reads() {
    outage("fast", true);
}

#[test]
fn a_database_outage_fails_strict_reads_too_and_heals_itself() {
    outage("strict", false);
}

/// 200 promote-on-one, resolve-on-the-other pairs across two replicas;
/// returns how many resolves were fresh on the first try (every one must be
/// fresh within two seconds), after checking the history is one chain.
fn alternate_between_replicas(read_consistency: &str) -> u32 {
    let env = Env::postgres();
    env.add_template("codex", "localhost:5000/codex");
    let token = env.token("ci", "promote", &[]);
    let settings = [("PINION_READ_CONSISTENCY", read_consistency)];
    let one = Server::start(&env.database(), &settings);
    let two = Server::start(&env.database(), &settings);
    let resolve = |server: &Server| {
        server
            .get("/cp/runtime-image/resolve?template_name=codex", &token)
            .json()["image_digest"]
            .as_str()
            .map(str::to_owned)
    };
    let mut fresh_at_once = 0;
    for n in 1..=200u32 {
        let (writer, reader) = if n % 2 == 0 {
            (&one, &two)
        } else {
            (&two, &one)
        };
        assert_eq!(promote(writer, &token, n).status, 201);
        if resolve(reader) == Some(digest(n)) {
            fresh_at_once += 1;
        }
        eventually(
            "the other replica sees the promotion",
            Duration::from_secs(2),
            || resolve(reader) == Some(digest(n)),
        );
    }
    let entries = one.history(&token, "codex");
    assert_eq!(entries.len(), 200);
    for pair in entries.windows(2) {
        assert_eq!(
            pair[1]["from_digest"], pair[0]["to_digest"],
            "one chain across replicas"
        );
    }
    fresh_at_once
}

#[test]
fn strict_replicas_read_each_others_writes_at_once() {
    assert_eq!(
        alternate_between_replicas("strict"),
        200,
        "every resolve after a 2xx elsewhere is fresh"
    );
}

#[test]
fn fast_replicas_see_each_others_writes_within_moments() {
    let fresh = alternate_between_replicas("fast");
    eprintln!("fast reads: {fresh} of 200 resolves on the other replica were fresh at once");
}

#[test]
fn concurrent_writers_on_two_replicas_form_one_chain() {
    let env = Env::postgres();
    env.add_template("codex", "localhost:5000/codex");
    let token = env.token("ci", "promote", &[]);
    let one = Server::start(&env.database(), &[]);
    let two = Server::start(&env.database(), &[]);
    assert_eq!(promote(&one, &token, 0).status, 201);
    let acknowledged = Arc::new(Mutex::new(vec![digest(0)]));
    let writers: Vec<_> = (0..16u32)
        .map(|writer| {
            let addr = if writer % 2 == 0 { one.addr } else { two.addr };
            let (token, acknowledged) = (token.clone(), acknowledged.clone());
            thread::spawn(move || {
                let mut wins = 0;
                for attempt in 0..300u32 {
                    if wins == 2 {
                        break;
                    }
                    // Read the pin from the database's point of view: the history's newest entry.
                    let newest = http(addr, "GET", "/cp/admin/runtime-image/history?template_name=codex&limit=1", Some(&token), None);
                    let current = newest.json()["history"][0]["to_digest"].as_str().unwrap().to_owned();
                    let next = digest(1_000 + writer * 1_000 + attempt);
                    let body = format!(r#"{{"template_name":"codex","image_digest":"{next}","expected_digest":"{current}"}}"#);
                    let response = http(addr, "POST", "/cp/admin/runtime-image/promote", Some(&token), Some(body.as_bytes()));
                    match response.status {
                        201 => {
                            wins += 1;
                            acknowledged.lock().unwrap().push(next);
                        }
                        409 => assert_eq!(response.error_code(), "pin_conflict"),
                        other => panic!("unexpected {other}: {response:?}"),
                    }
                }
                wins
            })
        })
        .collect();
    let wins: u32 = writers
        .into_iter()
        .map(|writer| writer.join().unwrap())
        .sum();
    assert_eq!(wins, 32);
    let entries = one.history(&token, "codex");
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["from_digest"], pair[0]["to_digest"], "one chain");
    }
    let in_history: std::collections::HashSet<String> = entries
        .iter()
        .map(|entry| entry["to_digest"].as_str().unwrap().to_owned())
        .collect();
    let acknowledged: std::collections::HashSet<String> =
        acknowledged.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        entries.len(),
        acknowledged.len(),
        "exactly the acknowledged promotions"
    );
    assert_eq!(in_history, acknowledged);
}

/// Strict reads share their freshness checks under load; sharing must never
/// let a read miss a write acknowledged before it began. Eight clients, each
/// with a template of its own, promote on one replica and at once resolve on
/// another whose database answers arrive 3 ms late (so a check begun before
/// the write is often still under way when the read arrives, and the change
/// notification is late too), many times, all at the same time.
#[test]
fn concurrent_strict_reads_see_every_write_acknowledged_before_them() {
    let env = Env::postgres();
    for client in 0..8 {
        env.add_template(&format!("t-{client}"), "localhost:5000/t");
    }
    let token = env.token("ci", "promote", &[]);
    let settings = [("PINION_READ_CONSISTENCY", "strict")];
    let far = CuttableProxy::slowed(upstream(&env.database()), Duration::from_millis(3));
    let writer = Server::start(&env.database(), &settings);
    let reader = Server::start(&through(&env.database(), far.addr), &settings);
    let clients: Vec<_> = (0..8u32)
        .map(|client| {
            let (writer, reader, token) = (writer.addr, reader.addr, token.clone());
            thread::spawn(move || {
                for round in 0..25u32 {
                    // Out of step with the other clients, so reads arrive
                    // at every point of a check under way.
                    thread::sleep(Duration::from_micros(
                        u64::from((client * 7 + round * 13) % 6) * 700,
                    ));
                    let expected = digest(client * 1_000 + round + 1);
                    let body =
                        format!(r#"{{"template_name":"t-{client}","image_digest":"{expected}"}}"#);
                    let promoted = http(
                        writer,
                        "POST",
                        "/cp/admin/runtime-image/promote",
                        Some(&token),
                        Some(body.as_bytes()),
                    );
                    assert_eq!(promoted.status, 201, "{promoted:?}");
                    let path = format!(
                        "/cp/runtime-image/resolve?template_name=t-{client}&region=eu-west-1"
                    );
                    let resolved = http(reader, "GET", &path, Some(&token), None);
                    assert_eq!(resolved.status, 200, "{resolved:?}");
                    assert_eq!(
                        resolved.json()["image_digest"].as_str(),
                        Some(expected.as_str()),
                        "client {client}, round {round}: the other replica answered a stale pin"
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

/// A TCP proxy in front of PostgreSQL that the test freezes with SIGSTOP:
/// `socat` in a process group of its own (it forks a process per
/// connection), so every connection through it stalls at once, with the
/// sockets open and the kernel still accepting bytes: a database that hangs
/// rather than one that is down.
struct FreezableProxy {
    child: std::process::Child,
    addr: SocketAddr,
}

impl FreezableProxy {
    fn start(upstream: SocketAddr) -> FreezableProxy {
        use std::os::unix::process::CommandExt;
        let port = crate::support::closed_port();
        let child = std::process::Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("TCP:{upstream}"))
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("socat (cargo xtask test installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually("socat listens", Duration::from_secs(10), || {
            TcpStream::connect(addr).is_ok()
        });
        FreezableProxy { child, addr }
    }

    fn signal(&self, signal: &str) {
        let group = format!("-{}", self.child.id());
        let status = std::process::Command::new("kill")
            .args([signal, "--", &group])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {group}");
    }

    fn freeze(&self) {
        self.signal("-STOP");
    }

    fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.thaw();
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

/// Rules 1 and 2 of the faults issue with the database frozen mid-flight:
/// reads answer 503 by their deadline instead of hanging until it thaws,
/// a write is answered by its deadline with the truth (503, nothing
/// changed; or 504 when its commit was in flight), and once it thaws the
/// pin agrees with what was answered. The gate, meanwhile, agrees with the
/// pin it leaves.
#[test]
fn a_frozen_database_is_answered_by_the_deadline_and_truthfully() {
    let env = Env::postgres();
    env.add_template("codex", "localhost:5000/codex");
    let token = env.token("ci", "promote", &[]);
    let proxy = FreezableProxy::start(upstream(&env.database()));
    let server = Server::start(
        &through(&env.database(), proxy.addr),
        &[("PINION_REQUEST_TIMEOUT", "2")],
    );
    assert_eq!(promote(&server, &token, 1).status, 201);

    proxy.freeze();
    for path in [
        "/cp/runtime-image/resolve?template_name=codex",
        "/cp/admin/runtime-image",
        "/cp/admin/runtime-image/history",
        "/readyz",
    ] {
        let started = std::time::Instant::now();
        let answer = server.get(path, &token);
        let took = started.elapsed();
        assert_eq!(answer.status, 503, "{path}: {answer:?}");
        assert_eq!(answer.error_code(), "store_unavailable", "{path}");
        assert!(took < Duration::from_millis(2600), "{path} took {took:?}");
    }
    let started = std::time::Instant::now();
    let write = promote(&server, &token, 2);
    assert!(started.elapsed() < Duration::from_millis(2600));
    assert!(matches!(write.status, 503 | 504), "{write:?}");
    proxy.thaw();
    eventually("reads heal", Duration::from_secs(15), || {
        server.get("/cp/admin/runtime-image", &token).status == 200
    });
    thread::sleep(Duration::from_secs(1));
    let pinned = server.pinned(&token, "codex", "global");
    if write.status == 503 {
        assert_eq!(pinned, Some(digest(1)), "a 503 changed nothing");
    } else {
        assert_eq!(write.error_code(), "commit_outcome_unknown");
    }

    // The gate while the database freezes for four seconds.
    let pinned_before = server.pinned(&token, "codex", "global");
    proxy.freeze();
    let thaw = thread::spawn({
        let group = proxy.child.id();
        move || {
            thread::sleep(Duration::from_secs(4));
            std::process::Command::new("kill")
                .args(["-CONT", "--", &format!("-{group}")])
                .status()
                .unwrap();
        }
    });
    let out = server
        .gate(&token)
        .promote("codex", &digest(3), &["--timeout", "3"]);
    thaw.join().unwrap();
    eventually("reads heal", Duration::from_secs(15), || {
        server.get("/cp/admin/runtime-image", &token).status == 200
    });
    thread::sleep(Duration::from_secs(1));
    let pinned = server.pinned(&token, "codex", "global");
    eprintln!(
        "frozen for 4 s: the gate exited {}: {}",
        out.code, out.stderr
    );
    assert_eq!(
        out.code == 0,
        pinned.as_deref() == Some(digest(3).as_str()),
        "exit {} but the pin is {pinned:?} (was {pinned_before:?}): {out:?}",
        out.code
    );
}

/// The change feed across replicas: a promotion on one is streamed by the
/// other (the event table is the truth; `NOTIFY` only wakes), and each
/// webhook delivery attempt is made by one replica, never once per replica.
#[test]
fn replicas_stream_each_others_events_and_deliver_each_attempt_once() {
    use crate::support::{Answer, EventStream, Receiver, signature_holds};
    let env = Env::postgres();
    env.add_template("codex", "localhost:5000/codex");
    let admin = env.token("platform", "admin", &[]);
    let settings = [("PINION_WEBHOOK_RETRY_SCHEDULE", "1s,1s,1s")];
    let one = Server::start(&env.database(), &settings);
    let two = Server::start(&env.database(), &settings);
    // The first attempt of every delivery fails, the second succeeds.
    let receiver = Receiver::start(vec![Answer(500, "", "not yet"), Answer(200, "", "")]);
    let created = http(
        one.addr,
        "PUT",
        "/cp/admin/webhooks/fleet",
        Some(&admin),
        Some(
            format!(
                r#"{{"url":"{}","events":["pin.promoted"]}}"#,
                receiver.url()
            )
            .as_bytes(),
        ),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let secret = created.json()["secret"].as_str().unwrap().to_owned();
    crate::support::register_secret(&secret);

    let mut stream = EventStream::open(two.addr, &admin, None, "?type=pin.promoted");
    let promotions = 10u32;
    for n in 1..=promotions {
        let server = if n % 2 == 0 { &one } else { &two };
        assert_eq!(promote(server, &admin, n).status, 201);
    }
    let streamed: Vec<String> = (0..promotions)
        .map(|_| {
            stream.next_event().data["data"]["to_digest"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected: Vec<String> = (1..=promotions).map(digest).collect();
    assert_eq!(
        streamed, expected,
        "every promotion, in order, on the other replica"
    );

    // The receiver's first answer is a failure, then it takes everything:
    // each event arrives exactly as often as its delivery log says it was
    // attempted, whichever replica made the attempts.
    let first_failed = receiver.wait_for(1, Duration::from_secs(10));
    drop(first_failed);
    eventually("every delivery delivered", Duration::from_secs(30), || {
        let log = one
            .get("/cp/admin/webhooks/fleet/deliveries", &admin)
            .json();
        let deliveries = log["deliveries"].as_array().unwrap().clone();
        deliveries.len() == promotions as usize
            && deliveries.iter().all(|d| d["state"] == "delivered")
    });
    thread::sleep(Duration::from_secs(2));
    let received = receiver.received();
    let mut per_event = std::collections::HashMap::new();
    for delivery in &received {
        assert!(
            signature_holds(&secret, delivery),
            "signed by whichever replica"
        );
        *per_event
            .entry(delivery.header("webhook-id").unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(per_event.len(), promotions as usize);
    let log = two
        .get("/cp/admin/webhooks/fleet/deliveries", &admin)
        .json();
    for delivery in log["deliveries"].as_array().unwrap() {
        let id = format!("evt_{}", delivery["event_id"]);
        assert_eq!(
            per_event.get(&id).copied(),
            delivery["attempts"].as_i64(),
            "attempts at the receiver equal the delivery log's for {id}"
        );
    }
    assert!(
        per_event.values().any(|attempts| *attempts == 2),
        "the failed first attempt was retried once: {per_event:?}"
    );
}

/// Reports sent to one replica are counted by the other within seconds,
/// and a deletion on one is a deletion on both.
#[test]
fn replicas_count_each_others_fleet_reports() {
    let env = Env::postgres();
    env.add_template("codex", "localhost:5000/codex");
    let admin = env.token("platform", "admin", &[]);
    let reporter = env.token("provisioner", "report", &[]);
    let one = Server::start(&env.database(), &[]);
    let two = Server::start(&env.database(), &[]);
    assert_eq!(promote(&one, &admin, 1).status, 201);
    let report = |server: &Server, id: &str, n: u32| {
        let body = format!(
            r#"{{"instances":[{{"instance_id":"{id}","template_name":"codex","region":"us","image_digest":"{}"}}]}}"#,
            digest(n)
        );
        assert_eq!(
            http(
                server.addr,
                "POST",
                "/cp/fleet/report",
                Some(&reporter),
                Some(body.as_bytes())
            )
            .status,
            200
        );
    };
    let counts = |server: &Server| {
        let entry = server.get("/cp/fleet?template_name=codex", &admin).json()["fleet"][0].clone();
        (entry["current"].as_u64(), entry["behind"].as_u64())
    };
    report(&one, "a", 1);
    report(&two, "b", 2);
    for server in [&one, &two] {
        eventually(
            "both replicas count both reports",
            Duration::from_secs(10),
            || counts(server) == (Some(1), Some(1)),
        );
    }
    let deleted = http(
        two.addr,
        "DELETE",
        "/cp/fleet/instances/a",
        Some(&reporter),
        None,
    );
    assert_eq!(deleted.status, 204, "{deleted:?}");
    eventually(
        "the deletion reaches the other replica",
        Duration::from_secs(10),
        || counts(&one) == (Some(0), Some(1)),
    );
}

#[test]
fn a_hold_taken_on_one_replica_refuses_promotions_on_the_other_at_once() {
    let env = Env::postgres();
    env.add_template("codex", "localhost:5000/codex");
    let admin = env.token("platform", "admin", &[]);
    let ci = env.token("ci", "promote", &[]);
    let one = Server::start(&env.database(), &[]);
    let two = Server::start(&env.database(), &[]);
    assert_eq!(promote(&one, &ci, 1).status, 201);
    let held = one.post(
        "/cp/admin/runtime-image/hold",
        &ci,
        r#"{"template_name":"codex","reason":"incident 9"}"#,
    );
    assert_eq!(held.status, 201, "{held:?}");
    // The hold is checked in the write's transaction, so the other replica
    // refuses at once, whatever its view says yet.
    let refused = promote(&two, &ci, 2);
    assert_eq!(refused.status, 423, "{refused:?}");
    assert_eq!(refused.error_code(), "pin_held");
    eventually(
        "the other replica shows the hold",
        Duration::from_secs(10),
        || {
            two.get("/cp/admin/runtime-image?template_name=codex", &admin)
                .json()["pins"][0]["hold"]["reason"]
                == "incident 9"
        },
    );
    let released = http(
        two.addr,
        "DELETE",
        "/cp/admin/runtime-image/hold?template_name=codex",
        Some(&ci),
        None,
    );
    assert_eq!(released.status, 200, "{released:?}");
    assert_eq!(promote(&one, &ci, 2).status, 201);
}

#[test]
fn a_page_session_made_on_one_replica_works_and_ends_on_the_other() {
    use crate::ui::{csrf, get, login, post_form};
    let env = Env::postgres();
    env.add_template("codex", "localhost:5000/codex");
    let ci = env.token("ci", "promote", &[]);
    let admin = env.token("platform", "admin", &[]);
    let one = Server::start(&env.database(), &[]);
    let two = Server::start(&env.database(), &[]);
    assert_eq!(promote(&one, &ci, 1).status, 201);
    let session = login(one.addr, &admin);
    let page = get(two.addr, "/ui", Some(&session));
    assert_eq!(
        page.status, 200,
        "the other replica knows the session: {page:?}"
    );
    // A form on replica two, with the session made on replica one.
    assert_eq!(promote(&one, &ci, 2).status, 201);
    let pin = crate::support::poll_until("replica two has the pin", Duration::from_secs(5), || {
        let page = get(two.addr, "/ui/pins/codex/global", Some(&session));
        page.body.contains(&digest(2)).then_some(page)
    });
    let rollback = post_form(
        two.addr,
        "/ui/pins/codex/global/rollback",
        Some(&session),
        &[("csrf", &csrf(&pin.body)), ("reason", "across replicas")],
    );
    assert_eq!(rollback.status, 303, "{rollback:?}");
    assert_eq!(one.pinned(&ci, "codex", "global"), Some(digest(1)));
    // Signed out on replica two: over on replica one too.
    let out = post_form(
        two.addr,
        "/ui/logout",
        Some(&session),
        &[("csrf", &csrf(&pin.body))],
    );
    assert_eq!(out.status, 303, "{out:?}");
    assert_eq!(get(one.addr, "/ui", Some(&session)).status, 303);
    // Revoked on replica one: over on replica two (once it has read the
    // revocation, within moments).
    let second = login(two.addr, &admin);
    let revoke = http(
        one.addr,
        "DELETE",
        "/cp/admin/tokens/platform",
        Some(&admin),
        None,
    );
    assert_eq!(revoke.status, 204, "{revoke:?}");
    eventually(
        "replica two ends the session",
        Duration::from_secs(5),
        || get(two.addr, "/ui", Some(&second)).status == 303,
    );
}

/// Runs SQL as the PostgreSQL admin; its output, trimmed.
fn admin_sql(sql: &str) -> String {
    let output = std::process::Command::new("psql")
        .args(["-Atq", &crate::support::postgres_admin_url(), "-c", sql])
        .output()
        .expect("psql");
    assert!(output.status.success(), "{sql}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Puts the server's TLS settings back however the test ends, and removes
/// the test's certificate files.
struct TlsSettingsBack(Vec<String>);

impl Drop for TlsSettingsBack {
    fn drop(&mut self) {
        for sql in [
            "ALTER SYSTEM RESET ssl_cert_file",
            "ALTER SYSTEM RESET ssl_key_file",
            "ALTER SYSTEM RESET ssl",
            "SELECT pg_reload_conf()",
        ] {
            let _ = std::process::Command::new("psql")
                .args(["-Atq", &crate::support::postgres_admin_url(), "-c", sql])
                .output();
        }
        for file in &self.0 {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// How many of the database's connections are encrypted.
fn encrypted_connections(database: &str) -> u32 {
    admin_sql(&format!(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = '{database}' AND s.ssl"
    ))
    .parse()
    .unwrap()
}

#[test]
fn the_store_talks_to_postgres_over_tls_require_and_verify_full() {
    let env = Env::postgres();
    let url = env.database();
    let name = url.rsplit('/').next().unwrap().to_owned();
    env.add_template("codex", "localhost:5000/codex");
    let token = env.token("ci", "promote", &[]);
    // The test's own CA and a certificate for 127.0.0.1, installed as the
    // server's (in its data directory, owned by its user), then put back.
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = crate::tls::make_pki(pki.path(), "pg");
    let (_wrong_ca, _, _) = crate::tls::make_pki(pki.path(), "other");
    let data = admin_sql("SHOW data_directory");
    let (server_cert, server_key) = (
        format!("{data}/pinion-test-server.crt"),
        format!("{data}/pinion-test-server.key"),
    );
    std::fs::copy(&cert, &server_cert).expect("write into the PostgreSQL data directory");
    std::fs::copy(&key, &server_key).unwrap();
    let owned = std::process::Command::new("chown")
        .args(["postgres:postgres", &server_cert, &server_key])
        .status()
        .unwrap();
    assert!(owned.success(), "chown to the PostgreSQL user");
    std::fs::set_permissions(
        &server_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let _back = TlsSettingsBack(vec![server_cert.clone(), server_key.clone()]);
    admin_sql(&format!("ALTER SYSTEM SET ssl_cert_file = '{server_cert}'"));
    admin_sql(&format!("ALTER SYSTEM SET ssl_key_file = '{server_key}'"));
    admin_sql("ALTER SYSTEM SET ssl = on");
    admin_sql("SELECT pg_reload_conf()");
    eventually(
        "PostgreSQL serves the new certificate",
        Duration::from_secs(10),
        || admin_sql("SHOW ssl_cert_file") == server_cert,
    );

    // verify-full with the right CA: the server runs, encrypted.
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let server = Server::start(&verified, &[]);
    assert_eq!(promote(&server, &token, 1).status, 201);
    assert!(
        encrypted_connections(&name) >= 1,
        "the server's connections are encrypted"
    );
    drop(server);
    // require: encrypted, not verified.
    let server = Server::start(&format!("{url}?sslmode=require"), &[]);
    assert_eq!(promote(&server, &token, 2).status, 201);
    assert!(encrypted_connections(&name) >= 1);
    drop(server);
    // verify-full with another CA: refused, saying why.
    let refused = crate::support::run(crate::support::pinion().args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &format!(
            "{url}?sslmode=verify-full&sslrootcert={}",
            pki.path().join("other-ca.pem").display()
        ),
    ]));
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("certificate"),
        "names the certificate problem: {refused:?}"
    );
    // verify-full without a root: refused before connecting.
    let refused = crate::support::run(crate::support::pinion().args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &format!("{url}?sslmode=verify-full"),
    ]));
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("sslrootcert"), "{refused:?}");
}
