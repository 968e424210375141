//! Fleet truth: what instances report they run, how far each pin's fleet
//! has converged, who lags, and a gate that waits for the fleet.

use std::time::{Duration, Instant};

use crate::support::{Env, Server, digest, eventually, http, poll_until, run};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";
const REPORT: &str = "/cp/fleet/report";

struct Fleet {
    server: Server,
    env: Env,
    admin: String,
    reporter: String,
    read: String,
}

impl Fleet {
    fn new(settings: &[(&str, &str)]) -> Fleet {
        let env = Env::new();
        env.add_template("codex", "registry.example.com/codex");
        env.add_template("hermes", "registry.example.com/hermes");
        let admin = env.token("platform", "admin", &[]);
        let reporter = env.token("provisioner", "report", &[]);
        let read = env.token("viewer", "read", &[]);
        let server = Server::start(&env.database(), settings);
        Fleet {
            server,
            env,
            admin,
            reporter,
            read,
        }
    }

    fn pin(&self, template: &str, region: &str, n: u32) {
        let body = format!(
            r#"{{"template_name":"{template}","region":"{region}","image_digest":"{}"}}"#,
            digest(n)
        );
        let answer = self.server.post(PROMOTE, &self.admin, &body);
        assert!(matches!(answer.status, 200 | 201), "{answer:?}");
    }

    /// Reports `(id, template, region, digest n)` with a time to live.
    fn report(&self, instances: &[(&str, &str, &str, u32)], ttl: u32) -> crate::support::Response {
        let entries: Vec<String> = instances
            .iter()
            .map(|(id, template, region, n)| {
                format!(
                    r#"{{"instance_id":"{id}","template_name":"{template}","region":"{region}","image_digest":"{}"}}"#,
                    digest(*n)
                )
            })
            .collect();
        let body = format!(
            r#"{{"instances":[{}],"ttl_seconds":{ttl}}}"#,
            entries.join(",")
        );
        self.server.post(REPORT, &self.reporter, &body)
    }

    /// The fleet entry of one pin, once its counts are `(current, behind,
    /// unknown)` (the summary follows reports within a quarter second).
    fn wait_for(&self, template: &str, region: &str, counts: (u64, u64, u64)) -> serde_json::Value {
        poll_until(
            &format!("{template}/{region} at {counts:?}"),
            Duration::from_secs(10),
            || {
                let entry = self.entry(template, region)?;
                let seen = (
                    entry["current"].as_u64()?,
                    entry["behind"].as_u64()?,
                    entry["unknown"].as_u64()?,
                );
                (seen == counts).then_some(entry)
            },
        )
    }

    fn entry(&self, template: &str, region: &str) -> Option<serde_json::Value> {
        let answer = self.server.get(
            &format!("/cp/fleet?template_name={template}&region={region}"),
            &self.read,
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["fleet"]
            .as_array()?
            .iter()
            .find(|entry| entry["template_name"] == template && entry["region"] == region)
            .cloned()
    }

    fn instances(&self, query: &str) -> Vec<String> {
        let answer = self
            .server
            .get(&format!("/cp/fleet/instances{query}"), &self.read);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|instance| instance["instance_id"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[test]
fn counts_follow_the_governing_pin_and_a_moved_pin_resets_only_its_own() {
    let fleet = Fleet::new(&[]);
    fleet.pin("codex", "global", 1);
    fleet.pin("codex", "eu", 2);
    // `us` has no pin of its own: the global one governs it.
    let answer = fleet.report(
        &[
            ("eu-1", "codex", "eu", 2),
            ("eu-2", "codex", "eu", 2),
            ("us-1", "codex", "us", 1),
        ],
        300,
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["accepted"], 3);
    let eu = fleet.wait_for("codex", "eu", (2, 0, 0));
    assert_eq!(eu["converged"], true);
    assert_eq!(eu["state"], "converged");
    let global = fleet.wait_for("codex", "global", (1, 0, 0));
    assert_eq!(global["digests"][0]["image_digest"], digest(1));

    // The regional pin moves: its instances are behind it, from then on;
    // the global pin's instance is as it was.
    fleet.pin("codex", "eu", 3);
    let eu = fleet.wait_for("codex", "eu", (0, 2, 0));
    assert_eq!(eu["converged"], false);
    assert_eq!(eu["state"], "converging");
    assert!(eu["behind_since"].is_string());
    assert_eq!(eu["digests"][0]["instances"], 2);
    fleet.wait_for("codex", "global", (1, 0, 0));
    assert_eq!(
        fleet.instances("?template_name=codex&region=eu&state=behind"),
        ["eu-1", "eu-2"]
    );
    // One moves to the new digest.
    fleet.report(&[("eu-1", "codex", "eu", 3)], 300);
    fleet.wait_for("codex", "eu", (1, 1, 0));
    assert_eq!(
        fleet.instances("?template_name=codex&region=eu&state=behind"),
        ["eu-2"]
    );
    // An instance may move between regions: now the global pin governs it.
    fleet.report(&[("eu-2", "codex", "us", 1)], 300);
    fleet.wait_for("codex", "eu", (1, 0, 0));
    fleet.wait_for("codex", "global", (2, 0, 0));
    let metrics = http(fleet.server.addr, "GET", "/metrics", None, None).body;
    assert!(
        metrics.contains(
            r#"pinion_fleet_instances{template="codex",region="global",state="current"} 2"#
        ),
        "{metrics}"
    );
}

#[test]
fn silent_instances_turn_unknown_deleted_ones_go_and_reports_are_all_or_nothing() {
    let fleet = Fleet::new(&[]);
    fleet.pin("codex", "global", 1);
    fleet.report(&[("short", "codex", "us", 1)], 5);
    fleet.report(&[("long", "codex", "us", 1)], 300);
    fleet.wait_for("codex", "global", (2, 0, 0));
    // Past its time to live: unknown, not live, never behind.
    let entry = fleet.wait_for("codex", "global", (1, 0, 1));
    assert_eq!(entry["converged"], true, "live instances decide");
    assert_eq!(fleet.instances("?state=unknown"), ["short"]);
    let listed = fleet
        .server
        .get("/cp/fleet/instances?state=unknown", &fleet.read)
        .json();
    let short = &listed["instances"][0];
    // Unknown since its TTL ran out: five seconds after it was last seen.
    let seen = time::OffsetDateTime::parse(
        short["last_seen"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let since = time::OffsetDateTime::parse(
        short["state_since"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!((since - seen).whole_seconds(), 5, "{short}");
    let gone = http(
        fleet.server.addr,
        "DELETE",
        "/cp/fleet/instances/long",
        Some(&fleet.reporter),
        None,
    );
    assert_eq!(gone.status, 204, "{gone:?}");
    let again = http(
        fleet.server.addr,
        "DELETE",
        "/cp/fleet/instances/long",
        Some(&fleet.reporter),
        None,
    );
    assert_eq!(again.status, 404);
    assert_eq!(again.error_code(), "instance_not_found");
    let entry = fleet.wait_for("codex", "global", (0, 0, 1));
    assert_eq!(entry["state"], "empty");
    assert_eq!(entry["converged"], false, "no live instance: not converged");

    // One bad entry of 100: nothing recorded, and the index named.
    let mut batch: Vec<(String, u32)> = (0..100).map(|n| (format!("batch-{n}"), 1)).collect();
    batch[57].0 = "bad id".to_owned();
    let entries: Vec<(&str, &str, &str, u32)> = batch
        .iter()
        .map(|(id, n)| (id.as_str(), "codex", "us", *n))
        .collect();
    let refused = fleet.report(&entries, 300);
    assert_eq!(refused.status, 422, "{refused:?}");
    assert_eq!(refused.error_code(), "invalid_instance_id");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("instances[57]")
    );
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        fleet.instances("?state=current").is_empty(),
        "nothing recorded"
    );
}

#[test]
fn scopes_hold_for_reports() {
    let fleet = Fleet::new(&[]);
    fleet.pin("codex", "global", 1);
    let codex_only = fleet.env.token("codex-reporter", "report", &["codex"]);
    let body = |template: &str| {
        format!(
            r#"{{"instances":[{{"instance_id":"x","template_name":"{template}","region":"us","image_digest":"{}"}}]}}"#,
            digest(1)
        )
    };
    let read = fleet.server.post(REPORT, &fleet.read, &body("codex"));
    assert_eq!(read.status, 403, "a read token cannot report: {read:?}");
    let promote = fleet.server.post(
        PROMOTE,
        &fleet.reporter,
        &format!(
            r#"{{"template_name":"codex","image_digest":"{}"}}"#,
            digest(2)
        ),
    );
    assert_eq!(
        promote.status, 403,
        "a report token cannot promote: {promote:?}"
    );
    let other = fleet.server.post(REPORT, &codex_only, &body("hermes"));
    assert_eq!(other.status, 403, "not its template: {other:?}");
    assert!(
        other.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("instances[0]")
    );
    assert_eq!(
        fleet
            .server
            .post(REPORT, &codex_only, &body("codex"))
            .status,
        200
    );
    // A report token reads, too (its scope implies read).
    assert_eq!(fleet.server.get("/cp/fleet", &fleet.reporter).status, 200);
    let restricted_view = fleet.server.get("/cp/fleet", &codex_only).json();
    assert!(
        restricted_view["fleet"]
            .as_array()
            .unwrap()
            .iter()
            .all(|entry| entry["template_name"] == "codex")
    );
}

#[test]
fn verify_waits_for_the_fleet_and_ends_when_it_converges() {
    let fleet = Fleet::new(&[]);
    fleet.pin("codex", "global", 1);
    fleet.pin("codex", "global", 2);
    fleet.report(
        &[
            ("a", "codex", "us", 2),
            ("b", "codex", "us", 2),
            ("c", "codex", "us", 1),
        ],
        300,
    );
    fleet.wait_for("codex", "global", (2, 1, 0));
    let gate = fleet.server.gate(&fleet.reporter);
    let out = gate.verify("codex", &digest(2), &["--converged", "100", "--wait", "2s"]);
    assert_eq!(out.code, 1, "one instance is behind: {out:?}");
    assert!(out.reason().contains("1 behind"), "{out:?}");
    assert!(
        out.stderr.contains("waiting for 100%"),
        "progress on stderr: {out:?}"
    );
    let partly = gate.verify(
        "codex",
        &digest(2),
        &["--converged", "60", "--wait", "2s", "--format", "json"],
    );
    assert_eq!(partly.code, 0, "{partly:?}");
    let report: serde_json::Value = serde_json::from_str(&partly.stdout).unwrap();
    assert_eq!(report["targets"][0]["fleet"]["current"], 2);
    assert_eq!(report["targets"][0]["fleet"]["behind"], 1);

    // The last one moves two seconds into a ten-second wait: the gate ends
    // then, not at the deadline, and says so in the Actions outputs.
    let outputs = fleet.env.dir.path().join("outputs");
    let mover = {
        let (addr, token) = (fleet.server.addr, fleet.reporter.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let body = format!(
                r#"{{"instances":[{{"instance_id":"c","template_name":"codex","region":"us","image_digest":"{}"}}]}}"#,
                digest(2)
            );
            assert_eq!(
                http(addr, "POST", REPORT, Some(&token), Some(body.as_bytes())).status,
                200
            );
        })
    };
    let started = Instant::now();
    let out = run(gate
        .command("verify", "codex", &digest(2))
        .args(["--converged", "100", "--wait", "10s"])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &outputs));
    let took = started.elapsed();
    mover.join().unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        took < Duration::from_secs(6),
        "ended when it converged: {took:?}"
    );
    let written = std::fs::read_to_string(&outputs).unwrap();
    assert!(written.contains("fleet_current=3"), "{written}");
    assert!(written.contains("fleet_behind=0"), "{written}");

    // A fleet with no live instance does not converge.
    let mut empty = gate.command("verify", "hermes", &digest(2));
    fleet.pin("hermes", "global", 2);
    let out = run(empty.args(["--converged", "0", "--wait", "1s"]));
    assert_eq!(out.code, 1, "{out:?}");
}

#[test]
fn reports_survive_a_restart_and_nothing_flips_to_unknown() {
    let fleet = Fleet::new(&[]);
    fleet.pin("codex", "global", 1);
    fleet.report(&[("a", "codex", "us", 1), ("b", "codex", "eu", 2)], 30);
    fleet.wait_for("codex", "global", (1, 1, 0));
    // A graceful stop writes what the last second brought; a kill loses at
    // most that second: wait it out, then kill.
    std::thread::sleep(Duration::from_millis(1500));
    let Fleet {
        server, env, read, ..
    } = fleet;
    server.kill9();
    std::thread::sleep(Duration::from_secs(2));
    let server = Server::start(&env.database(), &[]);
    let entry = poll_until("the restarted fleet", Duration::from_secs(5), || {
        let answer = server.get("/cp/fleet?template_name=codex&region=global", &read);
        let entry = answer.json()["fleet"][0].clone();
        (entry["current"].as_u64()? + entry["behind"].as_u64()? + entry["unknown"].as_u64()? > 0)
            .then_some(entry)
    });
    assert_eq!(
        (
            entry["current"].as_u64(),
            entry["behind"].as_u64(),
            entry["unknown"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    // The instances missed heartbeats while it was down: still live.
    std::thread::sleep(Duration::from_secs(2));
    let entry = server
        .get("/cp/fleet?template_name=codex&region=global", &read)
        .json()["fleet"][0]
        .clone();
    assert_eq!(entry["unknown"], 0, "{entry}");
}

#[test]
fn fleet_states_are_events_and_a_stalled_pin_says_so() {
    let fleet = Fleet::new(&[("PINION_PROGRESS_DEADLINE", "1s")]);
    fleet.pin("codex", "global", 1);
    fleet.report(&[("a", "codex", "us", 1)], 300);
    fleet.wait_for("codex", "global", (1, 0, 0));
    fleet.pin("codex", "global", 2);
    let stalled = poll_until("stalled", Duration::from_secs(10), || {
        let entry = fleet.entry("codex", "global")?;
        (entry["state"] == "stalled").then_some(entry)
    });
    assert_eq!(stalled["behind"], 1);
    let kinds = |kind: &str| {
        fleet
            .server
            .get(&format!("/cp/events?type={kind}"), &fleet.read)
            .json()["events"]
            .as_array()
            .unwrap()
            .clone()
    };
    eventually("fleet.stalled", Duration::from_secs(5), || {
        kinds("fleet.stalled").len() == 1
    });
    fleet.report(&[("a", "codex", "us", 2)], 300);
    eventually(
        "fleet.converged for the new revision",
        Duration::from_secs(5),
        || kinds("fleet.converged").len() == 2,
    );
    let converged = kinds("fleet.converged");
    assert_eq!(converged[1]["data"]["image_digest"], digest(2));
    assert_eq!(converged[1]["data"]["current"], 1);
}

#[test]
fn the_instance_list_pages_by_id() {
    let fleet = Fleet::new(&[]);
    fleet.pin("codex", "global", 1);
    let ids: Vec<String> = (0..25).map(|n| format!("i-{n:02}")).collect();
    let entries: Vec<(&str, &str, &str, u32)> = ids
        .iter()
        .map(|id| (id.as_str(), "codex", "us", 1))
        .collect();
    fleet.report(&entries, 300);
    fleet.wait_for("codex", "global", (25, 0, 0));
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let answer = fleet
            .server
            .get(
                &format!("/cp/fleet/instances?state=current&limit=10{after}"),
                &fleet.read,
            )
            .json();
        seen.extend(
            answer["instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["instance_id"].as_str().unwrap().to_owned()),
        );
        match answer["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[test]
fn retention_lists_what_a_clean_up_must_keep() {
    let fleet = Fleet::new(&[]);
    for n in 1..=4 {
        fleet.pin("codex", "global", n);
    }
    fleet.report(&[("old", "codex", "us", 1)], 300);
    fleet.wait_for("codex", "global", (0, 1, 0));
    let retention = fleet
        .server
        .get("/cp/admin/runtime-image/retention?history=2", &fleet.read)
        .json();
    let reasons = |n: u32| -> Vec<String> {
        retention["retain"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kept| kept["image_digest"] == digest(n))
            .map(|kept| {
                kept["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(reasons(4), ["pinned", "history"]);
    assert_eq!(reasons(3), ["history"]);
    assert_eq!(reasons(1), ["running"], "an instance still runs it");
    assert!(reasons(2).is_empty(), "neither pinned, running nor recent");
    let out = run(crate::support::pinion()
        .args([
            "retention",
            "--server",
            &fleet.server.url(),
            "--history",
            "2",
        ])
        .env("PINION_TOKEN", &fleet.read));
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    assert!(lines.contains(&format!("registry.example.com/codex@{}", digest(1)).as_str()));
}

#[test]
fn hostile_reports_are_4xx_naming_the_index_and_record_nothing() {
    let fleet = Fleet::new(&[]);
    fleet.pin("codex", "global", 1);
    let one = |id: &str, template: &str, digest: &str| {
        format!(
            r#"{{"instance_id":{},"template_name":"{template}","region":"us","image_digest":"{digest}"}}"#,
            serde_json::Value::from(id)
        )
    };
    let good = one("ok-1", "codex", &digest(1));
    let ids = [
        "",
        &"x".repeat(129),
        "a/b",
        "a b",
        "a\u{0}b",
        "\u{0430}dmin",
        "pod\u{2010}1",
    ];
    for id in ids {
        let body = format!(
            r#"{{"instances":[{good},{}]}}"#,
            one(id, "codex", &digest(1))
        );
        let answer = fleet.server.post(REPORT, &fleet.reporter, &body);
        assert_eq!(answer.status, 422, "{id:?}: {answer:?}");
        assert_eq!(answer.error_code(), "invalid_instance_id", "{id:?}");
        assert!(answer.body.contains("instances[1]"), "{id:?}: {answer:?}");
    }
    let many: Vec<String> = (0..10_001)
        .map(|n| one(&format!("m-{n}"), "codex", &digest(1)))
        .collect();
    let too_many = fleet.server.post(
        REPORT,
        &fleet.reporter,
        &format!(r#"{{"instances":[{}]}}"#, many.join(",")),
    );
    assert_eq!(too_many.status, 422, "{too_many:?}");
    for ttl in ["0", "4", "86401", "-1", "1.5"] {
        let answer = fleet.server.post(
            REPORT,
            &fleet.reporter,
            &format!(r#"{{"instances":[{good}],"ttl_seconds":{ttl}}}"#),
        );
        assert_eq!(answer.status, 422, "ttl {ttl}: {answer:?}");
    }
    for (body, code) in [
        (
            format!(
                r#"{{"instances":[{good},{}]}}"#,
                one("d", "codex", "sha256:abc")
            ),
            "invalid_digest",
        ),
        (
            format!(
                r#"{{"instances":[{good},{}]}}"#,
                one("t", "nope", &digest(1))
            ),
            "unknown_template",
        ),
        (
            format!(
                r#"{{"instances":[{good},{}]}}"#,
                one("T", "Codex", &digest(1))
            ),
            "invalid_template_name",
        ),
        (
            format!(r#"{{"instances":[{good},{good}]}}"#),
            "invalid_instance_id",
        ),
        (r#"{"instances":[]}"#.to_owned(), "invalid_request"),
        (
            format!(r#"{{"instances":[{good}],"extra":1}}"#),
            "invalid_request",
        ),
    ] {
        let answer = fleet.server.post(REPORT, &fleet.reporter, &body);
        assert!((400..500).contains(&answer.status), "{code}: {answer:?}");
        assert_eq!(answer.error_code(), code);
    }
    for bad in [
        "/cp/fleet/instances?state=lost",
        "/cp/fleet/instances?after=a%20b",
        "/cp/fleet?template_name=Codex",
    ] {
        let answer = fleet.server.get(bad, &fleet.read);
        assert!((400..500).contains(&answer.status), "{bad}: {answer:?}");
        answer.error_code();
    }
    std::thread::sleep(Duration::from_millis(600));
    assert!(fleet.instances("").is_empty(), "nothing recorded");
}

#[test]
fn health_is_counted_from_those_that_said() {
    let fleet = Fleet::new(&[]);
    fleet.pin("hermes", "global", 1);
    let body = format!(
        r#"{{"instances":[
            {{"instance_id":"h-1","template_name":"hermes","region":"eu","image_digest":"{d}","healthy":true}},
            {{"instance_id":"h-2","template_name":"hermes","region":"eu","image_digest":"{d}","healthy":false}},
            {{"instance_id":"h-3","template_name":"hermes","region":"eu","image_digest":"{d}"}}
        ]}}"#,
        d = digest(1)
    );
    let answer = fleet.server.post(REPORT, &fleet.reporter, &body);
    assert_eq!(answer.status, 200, "{answer:?}");
    let entry = fleet.wait_for("hermes", "global", (3, 0, 0));
    assert_eq!(entry["reported_health"], 2, "{entry}");
    assert_eq!(entry["unhealthy"], 1, "{entry}");
}
