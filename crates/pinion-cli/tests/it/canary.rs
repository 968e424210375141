//! Canary rings: a pin's second digest, resolved by the instances whose
//! bucket (the contract's hash, computed here independently) is below its
//! percentage; graduated by promoting its digest, aborted by `DELETE` or by
//! the health rule, which then holds the pin. On PostgreSQL two replicas give
//! every instance the same answer and abort a sick canary once.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::support::{Env, Response, Server, digest, eventually, http, poll_until};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";
const CANARY: &str = "/cp/admin/runtime-image/canary";
const REPORT: &str = "/cp/fleet/report";

/// The contract's bucket: the first 8 bytes of SHA-256("<template>/<id>"),
/// big-endian, modulo 100.
fn bucket(template: &str, instance: &str) -> u64 {
    let hash = Sha256::digest(format!("{template}/{instance}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first) % 100
}

struct Plane {
    servers: Vec<Server>,
    _env: Env,
    admin: String,
    ci: String,
    read: String,
    report: String,
}

impl Plane {
    fn new(env: Env, replicas: usize, settings: &[(&str, &str)]) -> Plane {
        env.add_template("codex", "registry.example.com/codex");
        let admin = env.token("platform", "admin", &[]);
        let ci = env.token("ci", "promote", &[]);
        let read = env.token("viewer", "read", &[]);
        let report = env.token("provisioner", "report", &[]);
        let servers = (0..replicas)
            .map(|_| Server::start(&env.database(), settings))
            .collect();
        Plane {
            servers,
            _env: env,
            admin,
            ci,
            read,
            report,
        }
    }

    fn server(&self) -> &Server {
        &self.servers[0]
    }

    fn promote(&self, token: &str, n: u32) -> Response {
        let body = format!(
            r#"{{"template_name":"codex","image_digest":"{}"}}"#,
            digest(n)
        );
        self.server().post(PROMOTE, token, &body)
    }

    fn canary(&self, token: &str, n: u32, percent: i64, force: bool) -> Response {
        let body = format!(
            r#"{{"template_name":"codex","image_digest":"{}","percent":{percent},"force":{force}}}"#,
            digest(n)
        );
        self.server().post(CANARY, token, &body)
    }

    fn abort(&self, token: &str) -> Response {
        http(
            self.server().addr,
            "DELETE",
            &format!("{CANARY}?template_name=codex&region=global"),
            Some(token),
            None,
        )
    }

    fn resolve(&self, server: &Server, instance: Option<&str>) -> serde_json::Value {
        let mut path = "/cp/runtime-image/resolve?template_name=codex&region=eu-west".to_owned();
        if let Some(instance) = instance {
            path.push_str(&format!("&instance_id={instance}"));
        }
        let answer = server.get(&path, &self.read);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()
    }

    fn pin(&self) -> serde_json::Value {
        let answer = self
            .server()
            .get("/cp/admin/runtime-image?template_name=codex", &self.read);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["pins"][0].clone()
    }

    fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let answer = self
            .server()
            .get(&format!("/cp/events?limit=1000&type={kind}"), &self.read);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["events"].as_array().unwrap().clone()
    }

    fn fleet(&self, server: &Server) -> serde_json::Value {
        let answer = server.get("/cp/fleet?template_name=codex", &self.read);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["fleet"][0].clone()
    }

    /// Reports instances `(id, digest n, healthy)`.
    fn report(&self, server: &Server, instances: &[(String, u32, bool)]) {
        let entries: Vec<String> = instances
            .iter()
            .map(|(id, n, healthy)| {
                format!(
                    r#"{{"instance_id":"{id}","template_name":"codex","region":"eu-west","image_digest":"{}","healthy":{healthy}}}"#,
                    digest(*n)
                )
            })
            .collect();
        let body = format!(
            r#"{{"instances":[{}],"ttl_seconds":300}}"#,
            entries.join(",")
        );
        let answer = server.post(REPORT, &self.report, &body);
        assert_eq!(answer.status, 200, "{answer:?}");
    }
}

/// Instance ids in and out of a `percent` canary ring of `codex`.
fn rings(percent: u64, count: usize) -> (Vec<String>, Vec<String>) {
    let (mut canary, mut stable) = (Vec::new(), Vec::new());
    for n in 0.. {
        let id = format!("ws-{n}");
        if bucket("codex", &id) < percent {
            if canary.len() < count {
                canary.push(id);
            }
        } else if stable.len() < count {
            stable.push(id);
        }
        if canary.len() == count && stable.len() == count {
            break;
        }
    }
    (canary, stable)
}

#[test]
fn every_instance_resolves_to_the_ring_the_contract_s_hash_predicts() {
    let plane = Plane::new(Env::new(), 1, &[]);
    assert_eq!(plane.promote(&plane.ci, 1).status, 201);

    let started = plane.canary(&plane.ci, 2, 30, false);
    assert_eq!(started.status, 201, "{started:?}");
    let canary = &started.json()["pin"]["canary"];
    assert_eq!(canary["image_digest"], digest(2), "{canary}");
    assert_eq!(canary["percent"], 30);
    assert_eq!(canary["started_by"], "ci");
    assert_eq!(
        canary["image_ref"],
        format!("registry.example.com/codex@{}", digest(2))
    );
    // Asking again changes nothing.
    assert_eq!(plane.canary(&plane.ci, 2, 30, false).status, 200);

    let mut in_canary = 0;
    for n in 0..1000 {
        let id = format!("ws-{n}");
        let expected_canary = bucket("codex", &id) < 30;
        // An instance stays in its ring: some are asked twice.
        for _ in 0..(1 + usize::from(n % 10 == 0)) {
            let answer = plane.resolve(plane.server(), Some(&id));
            let (ring, want) = if expected_canary {
                ("canary", digest(2))
            } else {
                ("stable", digest(1))
            };
            assert_eq!(answer["ring"], ring, "{id}: {answer}");
            assert_eq!(answer["image_digest"], want, "{id}: {answer}");
            assert_eq!(answer["matched_region"], "global");
            assert_eq!(
                answer["image_ref"],
                format!("registry.example.com/codex@{want}")
            );
        }
        in_canary += usize::from(expected_canary);
    }
    // Within 5 points of the percentage.
    assert!((250..=350).contains(&in_canary), "{in_canary} of 1000");
    // Without an instance: the stable ring.
    let plain = plane.resolve(plane.server(), None);
    assert_eq!(plain["ring"], "stable");
    assert_eq!(plain["image_digest"], digest(1));
    // A bad instance id is refused, not ignored.
    let bad = plane.server().get(
        "/cp/runtime-image/resolve?template_name=codex&instance_id=a%20b",
        &plane.read,
    );
    assert_eq!(bad.status, 422, "{bad:?}");
    assert_eq!(bad.error_code(), "invalid_instance_id");

    // The canary's digest is kept by a registry clean-up.
    let retention = plane
        .server()
        .get("/cp/admin/runtime-image/retention", &plane.read)
        .json();
    let kept = retention["retain"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["image_digest"] == digest(2))
        .cloned()
        .unwrap_or_else(|| panic!("the canary is retained: {retention}"));
    assert_eq!(kept["reasons"], serde_json::json!(["canary"]));

    let started = plane.events("canary.started");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["data"]["image_digest"], digest(2));
    assert_eq!(started[0]["data"]["percent"], 30);
    assert_eq!(started[0]["data"]["stable_digest"], digest(1));

    // Promoting the canary's digest graduates it: every instance gets it.
    assert_eq!(plane.promote(&plane.ci, 2).status, 201);
    assert!(plane.pin()["canary"].is_null(), "{}", plane.pin());
    let promoted = plane.events("canary.promoted");
    assert_eq!(promoted.len(), 1, "{promoted:?}");
    assert_eq!(promoted[0]["data"]["image_digest"], digest(2));
    let (canary_ids, stable_ids) = rings(30, 1);
    for id in canary_ids.iter().chain(&stable_ids) {
        let answer = plane.resolve(plane.server(), Some(id));
        assert_eq!(answer["image_digest"], digest(2));
        assert_eq!(answer["ring"], "stable");
    }
}

#[test]
fn a_canary_is_refused_on_a_held_pin_and_an_abort_ends_it() {
    let plane = Plane::new(Env::new(), 1, &[]);
    // No pin yet: nothing to put a canary on.
    let none = plane.canary(&plane.ci, 2, 10, false);
    assert_eq!(none.status, 404, "{none:?}");
    assert_eq!(none.error_code(), "runtime_pin_missing");
    assert_eq!(plane.promote(&plane.ci, 1).status, 201);

    // Hostile input: each a 4xx, and nothing changes.
    let before = plane.pin();
    let two = digest(2);
    let long_reason = "x".repeat(10 * 1024);
    let hostile: Vec<(&str, String, &str)> = vec![
        (
            CANARY,
            format!(r#"{{"template_name":"codex","image_digest":"{two}","percent":0}}"#),
            "invalid_percent",
        ),
        (
            CANARY,
            format!(r#"{{"template_name":"codex","image_digest":"{two}","percent":100}}"#),
            "invalid_percent",
        ),
        (
            CANARY,
            format!(r#"{{"template_name":"codex","image_digest":"{two}","percent":-1}}"#),
            "invalid_percent",
        ),
        (
            CANARY,
            format!(r#"{{"template_name":"codex","image_digest":"{two}","percent":1.5}}"#),
            "invalid_request",
        ),
        (
            CANARY,
            format!(
                r#"{{"template_name":"codex","image_digest":"{two}","percent":10,"ring":"all"}}"#
            ),
            "invalid_request",
        ),
        (
            CANARY,
            format!(
                r#"{{"template_name":"codex","image_digest":"{}","percent":10}}"#,
                digest(1)
            ),
            "canary_is_stable",
        ),
        (
            CANARY,
            r#"{"template_name":"codex","image_digest":"latest","percent":10}"#.to_owned(),
            "invalid_digest",
        ),
        (
            "/cp/admin/runtime-image/hold",
            r#"{"template_name":"codex"}"#.to_owned(),
            "invalid_request",
        ),
        (
            "/cp/admin/runtime-image/hold",
            format!(r#"{{"template_name":"codex","reason":"{long_reason}"}}"#),
            "invalid_reason",
        ),
        (
            "/cp/admin/runtime-image/hold",
            r#"{"template_name":"codex","reason":"x","until":"never"}"#.to_owned(),
            "invalid_request",
        ),
    ];
    for (path, body, code) in &hostile {
        let answer = plane.server().post(path, &plane.ci, body);
        assert_eq!(answer.status, 422, "{body:.100}: {answer:?}");
        assert_eq!(answer.error_code(), *code, "{body:.100}");
    }
    assert_eq!(plane.pin(), before, "nothing changed");
    assert!(plane.events("canary.started").is_empty());
    assert!(plane.events("pin.held").is_empty());
    let reader = plane.server().post(
        CANARY,
        &plane.read,
        &format!(
            r#"{{"template_name":"codex","image_digest":"{}","percent":10}}"#,
            digest(2)
        ),
    );
    assert_eq!(reader.status, 403, "{reader:?}");
    assert!(plane.pin()["canary"].is_null());

    // Held: refused, a promote token's force too; an admin's force passes.
    let hold = plane.server().post(
        "/cp/admin/runtime-image/hold",
        &plane.ci,
        r#"{"template_name":"codex","reason":"incident 7"}"#,
    );
    assert_eq!(hold.status, 201, "{hold:?}");
    let held = plane.canary(&plane.ci, 2, 10, false);
    assert_eq!(held.status, 423, "{held:?}");
    assert_eq!(held.error_code(), "pin_held");
    assert!(held.body.contains("incident 7"), "{held:?}");
    assert_eq!(plane.canary(&plane.ci, 2, 10, true).status, 423);
    assert!(plane.pin()["canary"].is_null());
    let forced = plane.canary(&plane.admin, 2, 10, true);
    assert_eq!(forced.status, 201, "{forced:?}");
    assert_eq!(plane.events("canary.started")[0]["data"]["forced"], true);

    // Aborted by hand: gone, with its event; a second abort finds none.
    let aborted = plane.abort(&plane.ci);
    assert_eq!(aborted.status, 200, "{aborted:?}");
    assert!(aborted.json()["pin"]["canary"].is_null());
    assert!(plane.pin()["canary"].is_null());
    let events = plane.events("canary.aborted");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["cause"], "requested");
    assert_eq!(events[0]["data"]["actor"], "ci");
    assert_eq!(events[0]["data"]["image_digest"], digest(2));
    let again = plane.abort(&plane.ci);
    assert_eq!(again.status, 404, "{again:?}");
    assert_eq!(again.error_code(), "canary_not_found");
    // The ids the canary had resolve to stable.
    let (canary_ids, _) = rings(10, 3);
    for id in &canary_ids {
        let answer = plane.resolve(plane.server(), Some(id));
        assert_eq!(answer["image_digest"], digest(1), "{answer}");
        assert_eq!(answer["ring"], "stable", "{answer}");
    }
}

/// The health rule on `replicas` servers, with `--canary-max-unhealthy 10`
/// and the default of 20 reports: 19 decide nothing, a stable ring as sick
/// as the canary decides nothing, and 30 % against 0 % aborts the canary
/// once, holds the pin and gives the figures.
fn health_rule(env: Env, replicas: usize) {
    let plane = Plane::new(env, replicas, &[("PINION_CANARY_MAX_UNHEALTHY", "10")]);
    assert_eq!(plane.promote(&plane.ci, 1).status, 201);
    assert_eq!(plane.canary(&plane.ci, 2, 40, false).status, 201);
    let (canary_ids, stable_ids) = rings(40, 20);

    // Every replica resolves every one of 1,000 instances the same way,
    // the way the contract's hash says.
    for server in &plane.servers {
        eventually(
            "each replica sees the canary",
            Duration::from_secs(10),
            || plane.resolve(server, Some(&canary_ids[0]))["ring"] == "canary",
        );
    }
    for n in 0..1000 {
        let id = format!("ws-{n}");
        let want = if bucket("codex", &id) < 40 { 2 } else { 1 };
        for server in &plane.servers {
            let answer = plane.resolve(server, Some(&id));
            assert_eq!(answer["image_digest"], digest(want), "{id}: {answer}");
        }
    }

    // 19 canary instances, 6 of them unhealthy (32 %), and 20 healthy
    // stable ones, reported to different replicas: too few to decide.
    let last = plane.servers.len() - 1;
    let report = |server: usize, ids: &[String], n: u32, unhealthy: usize| {
        let batch: Vec<(String, u32, bool)> = ids
            .iter()
            .enumerate()
            .map(|(at, id)| (id.clone(), n, at >= unhealthy))
            .collect();
        plane.report(&plane.servers[server], &batch);
    };
    report(0, &stable_ids, 1, 0);
    report(last, &canary_ids[..19], 2, 6);
    let entry = poll_until("19 canary reports counted", Duration::from_secs(15), || {
        let entry = plane.fleet(&plane.servers[0]);
        (entry["canary"]["instances"] == 19 && entry["canary"]["stable_instances"] == 20)
            .then_some(entry)
    });
    assert_eq!(entry["canary"]["health"], "insufficient_reports", "{entry}");
    assert_eq!(entry["canary"]["unhealthy"], 6);
    assert_eq!(entry["canary"]["min_reports"], 20);
    // Canary-ring instances on the canary's digest are current.
    assert_eq!(entry["current"], 39, "{entry}");
    assert_eq!(entry["behind"], 0, "{entry}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(plane.pin()["canary"]["image_digest"], digest(2));
    assert!(plane.events("canary.aborted").is_empty());

    // The stable ring as sick as the canary (30 % each): not the canary's
    // doing.
    // (Each replica judges by what it has seen: the stable ring's news
    // reaches both before the twentieth canary instance does.)
    report(0, &stable_ids, 1, 6);
    for server in &plane.servers {
        poll_until(
            "the stable ring's health counted",
            Duration::from_secs(15),
            || (plane.fleet(server)["canary"]["stable_unhealthy"] == 6).then_some(()),
        );
    }
    report(last, &canary_ids, 2, 6);
    let entry = poll_until("20 canary reports counted", Duration::from_secs(15), || {
        let entry = plane.fleet(&plane.servers[0]);
        (entry["canary"]["instances"] == 20).then_some(entry)
    });
    assert_eq!(entry["canary"]["health"], "healthy", "{entry}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(plane.pin()["canary"]["image_digest"], digest(2));
    assert!(plane.events("canary.aborted").is_empty());

    // The stable ring recovers: 30 % against 0 %, 30 points over 10.
    report(0, &stable_ids, 1, 0);
    eventually("the canary is aborted", Duration::from_secs(5), || {
        plane.pin()["canary"].is_null()
    });
    let pin = plane.pin();
    assert_eq!(pin["hold"]["held_by"], "canary-health-rule", "{pin}");
    assert!(
        pin["hold"]["reason"]
            .as_str()
            .unwrap()
            .contains("30.0% of 20 canary instances unhealthy against 0.0% of 20 stable ones"),
        "{pin}"
    );
    // Let every replica's summary run again: still one abort.
    std::thread::sleep(Duration::from_millis(1500));
    let aborted = plane.events("canary.aborted");
    assert_eq!(aborted.len(), 1, "aborted once: {aborted:?}");
    let data = &aborted[0]["data"];
    assert_eq!(data["cause"], "health", "{data}");
    assert_eq!(data["held"], true);
    assert_eq!(data["health"]["canary_instances"], 20);
    assert_eq!(data["health"]["canary_unhealthy"], 6);
    assert_eq!(data["health"]["stable_instances"], 20);
    assert_eq!(data["health"]["stable_unhealthy"], 0);
    assert_eq!(data["health"]["max_unhealthy_percent"], 10.0);
    assert_eq!(data["health"]["min_reports"], 20);
    assert_eq!(plane.events("pin.held").len(), 1);

    // CI cannot push the bad canary through the held pin.
    let pushed = plane.promote(&plane.ci, 2);
    assert_eq!(pushed.status, 423, "{pushed:?}");
    // Every instance is back on the stable digest.
    for server in &plane.servers {
        eventually(
            "each replica drops the canary",
            Duration::from_secs(10),
            || plane.resolve(server, Some(&canary_ids[0]))["image_digest"] == digest(1),
        );
    }
}

#[test]
fn the_health_rule_decides_only_with_enough_reports_then_aborts_and_holds() {
    health_rule(Env::new(), 1);
}

#[test]
fn two_postgres_replicas_answer_alike_and_abort_a_sick_canary_once() {
    health_rule(Env::postgres(), 2);
}

/// Twenty made-up instance ids outside the canary's ring, running its
/// digest and saying they are sick, say nothing about the canary: only
/// instances the contract's bucket puts in the ring count for it (and only
/// those outside it for the stable side).
#[test]
fn invented_instances_outside_the_ring_do_not_abort_a_canary() {
    let plane = Plane::new(Env::new(), 1, &[("PINION_CANARY_MAX_UNHEALTHY", "10")]);
    assert_eq!(plane.promote(&plane.ci, 1).status, 201);
    assert_eq!(plane.canary(&plane.ci, 2, 10, false).status, 201);
    let (canary_ids, stable_ids) = rings(10, 20);
    // 18 outside the ring on the canary's digest, sick; 2 in the ring, sick
    // too; 20 stable ones on the stable digest, healthy.
    let mut sick: Vec<(String, u32, bool)> = stable_ids[..18]
        .iter()
        .map(|id| (id.clone(), 2, false))
        .collect();
    sick.extend(canary_ids[..2].iter().map(|id| (id.clone(), 2, false)));
    plane.report(plane.server(), &sick);
    let healthy: Vec<(String, u32, bool)> = rings(10, 60)
        .1
        .into_iter()
        .skip(20)
        .take(20)
        .map(|id| (id, 1, true))
        .collect();
    plane.report(plane.server(), &healthy);
    let entry = poll_until("the reports counted", Duration::from_secs(15), || {
        let entry = plane.fleet(plane.server());
        (entry["behind"] == 18).then_some(entry)
    });
    assert_eq!(entry["canary"]["instances"], 2, "{entry}");
    assert_eq!(entry["canary"]["unhealthy"], 2, "{entry}");
    assert_eq!(entry["canary"]["stable_instances"], 20, "{entry}");
    assert_eq!(entry["canary"]["stable_unhealthy"], 0, "{entry}");
    assert_eq!(entry["canary"]["health"], "insufficient_reports", "{entry}");
    assert_eq!(plane.pin()["canary"]["image_digest"], digest(2));
    assert!(plane.pin()["hold"].is_null());
    assert!(plane.events("canary.aborted").is_empty());
    assert_eq!(plane.promote(&plane.ci, 3).status, 201, "not held");
}

/// A promotion of another digest than the canary's ends the canary in the
/// same transaction (`canary.aborted`, cause `superseded`): a green gate
/// means every instance moves. `keep_canary` keeps it.
#[test]
fn a_promotion_past_a_canary_ends_it_unless_told_to_keep_it() {
    let plane = Plane::new(Env::new(), 1, &[]);
    assert_eq!(plane.promote(&plane.ci, 1).status, 201);
    assert_eq!(plane.canary(&plane.ci, 2, 99, false).status, 201);
    let (canary_ids, _) = rings(99, 1);
    let moved = plane.promote(&plane.ci, 3);
    assert_eq!(moved.status, 201, "{moved:?}");
    assert!(moved.json()["pin"]["canary"].is_null(), "{moved:?}");
    assert_eq!(
        plane.resolve(plane.server(), Some(&canary_ids[0]))["image_digest"],
        digest(3)
    );
    let aborted = plane.events("canary.aborted");
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert_eq!(aborted[0]["data"]["cause"], "superseded");
    assert_eq!(aborted[0]["data"]["image_digest"], digest(2));
    assert_eq!(aborted[0]["data"]["stable_digest"], digest(3));

    // Kept on request: the answer's pin shows the canary standing.
    assert_eq!(plane.canary(&plane.ci, 2, 99, false).status, 201);
    let body = format!(
        r#"{{"template_name":"codex","image_digest":"{}","keep_canary":true}}"#,
        digest(4)
    );
    let kept = plane.server().post(PROMOTE, &plane.ci, &body);
    assert_eq!(kept.status, 201, "{kept:?}");
    assert_eq!(kept.json()["pin"]["canary"]["image_digest"], digest(2));
    // A rollback ends it as a promotion does.
    let back = plane.server().post(
        "/cp/admin/runtime-image/rollback",
        &plane.ci,
        r#"{"template_name":"codex"}"#,
    );
    assert_eq!(back.status, 201, "{back:?}");
    assert!(back.json()["pin"]["canary"].is_null(), "{back:?}");
    assert_eq!(plane.events("canary.aborted").len(), 2);
}
