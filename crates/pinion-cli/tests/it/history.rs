//! History, audit, rollback, compare-and-swap, the ordering guard and cheap
//! polling, end to end.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::thread;

use crate::support::{Env, Fixture, Server, digest, http, pinion, register_secret, run, try_post};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";

fn promote_body(digest: &str, extra: &str) -> String {
    format!(r#"{{"template_name":"codex","image_digest":"{digest}"{extra}}}"#)
}

/// Checks that one pin's history is a single chain and the pin is its end.
fn assert_linear_chain(server: &Server, token: &str, region: &str) -> Vec<serde_json::Value> {
    let entries: Vec<serde_json::Value> = server
        .history(token, "codex")
        .into_iter()
        .filter(|entry| entry["region"] == region)
        .collect();
    for pair in entries.windows(2) {
        assert!(pair[1]["revision"].as_i64() > pair[0]["revision"].as_i64());
        assert_eq!(
            pair[1]["from_digest"], pair[0]["to_digest"],
            "broken chain at {}",
            pair[1]
        );
    }
    if let Some(last) = entries.last() {
        assert_eq!(
            server.pinned(token, "codex", region).as_deref(),
            last["to_digest"].as_str(),
            "the pin equals the newest entry"
        );
    }
    entries
}

#[test]
fn concurrent_compare_and_swap_writers_form_one_linear_chain() {
    let fixture = Fixture::new();
    let addr = fixture.server.addr;
    assert_eq!(
        fixture
            .server
            .post(PROMOTE, &fixture.promote, &promote_body(&digest(0), ""))
            .status,
        201
    );
    let acknowledged = Arc::new(Mutex::new(vec![digest(0)]));
    let conflicts = Arc::new(Mutex::new(0usize));
    let writers: Vec<_> = (0..32u32)
        .map(|writer| {
            let (token, acknowledged, conflicts) = (
                fixture.promote.clone(),
                acknowledged.clone(),
                conflicts.clone(),
            );
            thread::spawn(move || {
                let mut wins = 0;
                for attempt in 0..200u32 {
                    if wins == 2 {
                        break;
                    }
                    let listed = http(
                        addr,
                        "GET",
                        "/cp/admin/runtime-image?template_name=codex",
                        Some(&token),
                        None,
                    );
                    let current = listed.json()["pins"][0]["image_digest"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    let next = digest(1_000 + writer * 1_000 + attempt);
                    let body = promote_body(&next, &format!(r#","expected_digest":"{current}""#));
                    let response = http(addr, "POST", PROMOTE, Some(&token), Some(body.as_bytes()));
                    match response.status {
                        201 => {
                            wins += 1;
                            acknowledged.lock().unwrap().push(next);
                        }
                        409 => {
                            assert_eq!(response.error_code(), "pin_conflict");
                            assert_ne!(response.json()["pin"]["image_digest"], current.as_str());
                            *conflicts.lock().unwrap() += 1;
                        }
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
    assert_eq!(wins, 64, "every writer got its two moves in the end");
    let entries = assert_linear_chain(&fixture.server, &fixture.read, "global");
    let in_history: HashSet<String> = entries
        .iter()
        .map(|entry| entry["to_digest"].as_str().unwrap().to_owned())
        .collect();
    let acknowledged: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        entries.len(),
        acknowledged.len(),
        "one entry per acknowledged move, none for a 409"
    );
    assert_eq!(in_history, acknowledged);
    eprintln!(
        "{wins} moves, {} conflicts refused",
        conflicts.lock().unwrap()
    );
}

#[test]
fn history_survives_kill_9_during_a_storm_and_agrees_with_the_pins() {
    let env = Env::new();
    env.add_template("codex", "localhost:5000/codex");
    let token = env.token("ci", "promote", &[]);
    let mut server = env.start();
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    for round in 0..3u32 {
        let addr = server.addr;
        let writers: Vec<_> = (0..4u32)
            .map(|writer| {
                let (token, acknowledged) = (token.clone(), acknowledged.clone());
                thread::spawn(move || {
                    for i in 0u32.. {
                        // Each writer moves its own region's pin again and again.
                        let region = format!("w{writer}");
                        let d = digest(round * 1_000_000 + writer * 100_000 + i);
                        let body = promote_body(&d, &format!(r#","region":"{region}""#));
                        match try_post(addr, PROMOTE, &token, &body) {
                            Some(response) if response.status == 201 => {
                                acknowledged.lock().unwrap().push((region, d))
                            }
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        thread::sleep(std::time::Duration::from_millis(500));
        server.kill9();
        for writer in writers {
            writer.join().unwrap();
        }
        server = env.start();
        let acknowledged = acknowledged.lock().unwrap();
        for writer in 0..4 {
            let region = format!("w{writer}");
            let entries = assert_linear_chain(&server, &token, &region);
            let in_history: HashSet<&str> = entries
                .iter()
                .map(|e| e["to_digest"].as_str().unwrap())
                .collect();
            for (_, d) in acknowledged.iter().filter(|(r, _)| *r == region) {
                assert!(
                    in_history.contains(d.as_str()),
                    "acknowledged {d} in {region} missing from history"
                );
            }
        }
        eprintln!(
            "round {round}: {} acknowledged, all in history",
            acknowledged.len()
        );
    }
}

#[test]
fn ordering_guard_force_and_rollback_through_the_cli() {
    let fixture = Fixture::new();
    let url = fixture.server.url();
    let ci = fixture.server.gate(&fixture.promote);
    let promote = |n: u32, extra: &[&str]| ci.promote("codex", &digest(n), extra);
    assert_eq!(promote(1, &["--build-sequence", "10"]).code, 0);
    assert_eq!(promote(2, &["--build-sequence", "12"]).code, 0);
    let stale = promote(3, &["--build-sequence", "11"]);
    assert_eq!(stale.code, 2, "{stale:?}");
    assert!(stale.reason().contains("409 stale_build"), "{stale:?}");
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        Some(digest(2))
    );
    let forced = promote(3, &["--build-sequence", "11", "--force"]);
    assert_eq!(forced.code, 0, "{forced:?}");

    let conflict = promote(4, &["--expect", &digest(1)]);
    assert_eq!(conflict.code, 2);
    assert!(
        conflict.reason().contains("409 pin_conflict"),
        "{conflict:?}"
    );
    assert_eq!(promote(4, &["--expect", &digest(3)]).code, 0);

    let rollback = run(pinion()
        .args([
            "rollback",
            "--server",
            &url,
            "--template",
            "codex",
            "--format",
            "json",
        ])
        .env("PINION_TOKEN", &fixture.promote));
    assert_eq!(rollback.code, 0, "{rollback:?}");
    let report: serde_json::Value = serde_json::from_str(&rollback.stdout).unwrap();
    assert_eq!(report["targets"][0]["pin"]["image_digest"], digest(3));
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        Some(digest(3))
    );
    let back = run(pinion()
        .args([
            "rollback",
            "--server",
            &url,
            "--template",
            "codex",
            "--to",
            &digest(1),
        ])
        .env("PINION_TOKEN", &fixture.promote));
    assert_eq!(back.code, 0, "{back:?}");
    assert!(
        back.stdout.contains("rolled `codex`/`global` back to"),
        "{back:?}"
    );
    let unknown = run(pinion()
        .args([
            "rollback",
            "--server",
            &url,
            "--template",
            "codex",
            "--to",
            &digest(99),
        ])
        .env("PINION_TOKEN", &fixture.promote));
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.reason().contains("digest_not_in_history"),
        "{unknown:?}"
    );

    let history = run(pinion()
        .args([
            "history",
            "--server",
            &url,
            "--template",
            "codex",
            "--format",
            "json",
        ])
        .env("PINION_TOKEN", &fixture.read));
    assert_eq!(history.code, 0, "{history:?}");
    let json: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let actions: Vec<&str> = json["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "rollback", "rollback", "promote", "promote", "promote", "promote"
        ]
    );
    assert_eq!(json["history"][0]["to_digest"], digest(1));
    assert_eq!(json["history"][0]["actor"], "ci");
    assert_eq!(json["history"][3]["build_sequence"], 11);
    assert_linear_chain(&fixture.server, &fixture.read, "global");

    let table = run(pinion()
        .args(["history", "--server", &url, "--limit", "2"])
        .env("PINION_TOKEN", &fixture.read));
    assert_eq!(table.code, 0);
    assert_eq!(
        table.stdout.lines().count(),
        3,
        "header and two rows: {table:?}"
    );
    assert!(table.stderr.contains("(more:"), "{table:?}");
}

#[test]
fn actions_provenance_is_recorded_in_history() {
    let fixture = Fixture::new();
    let out = run(fixture
        .server
        .gate(&fixture.promote)
        .command("promote", "codex", &digest(1))
        .args(["--git-sha", "abc1234"])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_SERVER_URL", "https://git.example.com")
        .env("GITHUB_REPOSITORY", "team/codex")
        .env("GITHUB_RUN_ID", "4242")
        .env("GITHUB_WORKFLOW", "publish-image"));
    assert_eq!(out.code, 0, "{out:?}");
    let entry = &fixture.server.history(&fixture.read, "codex")[0];
    assert_eq!(
        entry["ci_run_url"],
        "https://git.example.com/team/codex/actions/runs/4242"
    );
    assert_eq!(entry["repository"], "team/codex");
    assert_eq!(entry["workflow"], "publish-image");
    assert_eq!(entry["git_sha"], "abc1234");
}

#[test]
fn provenance_policy_makes_git_sha_and_run_url_mandatory() {
    let env = Env::new();
    env.add_template("codex", "localhost:5000/codex");
    let token = env.token("ci", "promote", &[]);
    let server = Server::start(&env.database(), &[("PINION_REQUIRE_PROVENANCE", "true")]);
    let bare = server.post(
        PROMOTE,
        &token,
        &promote_body(&digest(1), r#","git_sha":"abc1234""#),
    );
    assert_eq!(bare.status, 422);
    assert_eq!(bare.error_code(), "provenance_required");
    let full = server.post(
        PROMOTE,
        &token,
        &promote_body(
            &digest(1),
            r#","git_sha":"abc1234","ci_run_url":"https://ci.example.com/runs/1""#,
        ),
    );
    assert_eq!(full.status, 201, "{full:?}");
}

#[test]
fn if_match_uses_the_pin_revision_as_etag() {
    let fixture = Fixture::new();
    let first = fixture
        .server
        .post(PROMOTE, &fixture.promote, &promote_body(&digest(1), ""));
    let etag = first.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", first.json()["pin"]["revision"]));
    let with_if_match = |etag: &str, n: u32| {
        let body = promote_body(&digest(n), "");
        let head = format!(
            "POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nIf-Match: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            fixture.promote,
            body.len()
        );
        crate::support::raw_http(fixture.server.addr, head.as_bytes(), body.as_bytes())
    };
    let second = with_if_match(&etag, 2);
    assert_eq!(second.status, 201, "{second:?}");
    let stale = with_if_match(&etag, 3);
    assert_eq!(stale.status, 409);
    assert_eq!(stale.error_code(), "pin_conflict");
    assert_eq!(stale.json()["pin"]["image_digest"], digest(2));
    let garbage = with_if_match("yesterday", 3);
    assert_eq!(
        (garbage.status, garbage.error_code().as_str()),
        (400, "invalid_if_match")
    );
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        Some(digest(2))
    );
}

#[test]
fn list_and_resolve_answer_304_to_a_matching_if_none_match() {
    let fixture = Fixture::new();
    fixture
        .server
        .post(PROMOTE, &fixture.promote, &promote_body(&digest(1), ""));
    for path in [
        "/cp/admin/runtime-image",
        "/cp/runtime-image/resolve?template_name=codex&region=eu-west-1",
    ] {
        let first = fixture.server.get(path, &fixture.read);
        let etag = first.header("etag").expect("an ETag").to_owned();
        let conditional = |etag: &str| {
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n",
                fixture.read
            );
            crate::support::raw_http(fixture.server.addr, head.as_bytes(), b"")
        };
        let cached = conditional(&etag);
        assert_eq!(cached.status, 304, "{path}: {cached:?}");
        assert!(cached.body.is_empty());
        assert_eq!(conditional("\"other\"").status, 200);
        let again = fixture.server.get(path, &fixture.read);
        assert_eq!(
            again.header("etag"),
            Some(etag.as_str()),
            "stable while nothing changes"
        );
    }
    let before = fixture.server.get("/cp/admin/runtime-image", &fixture.read);
    fixture
        .server
        .post(PROMOTE, &fixture.promote, &promote_body(&digest(2), ""));
    let after = fixture.server.get("/cp/admin/runtime-image", &fixture.read);
    assert_ne!(
        before.header("etag"),
        after.header("etag"),
        "a move changes the tag"
    );
}

#[test]
fn refused_writes_are_audited_without_secrets() {
    let fixture = Fixture::new();
    let wrong = "pinion_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";
    register_secret(wrong);
    fixture
        .server
        .post(PROMOTE, &fixture.promote, &promote_body(&digest(1), ""));
    let refusals = [
        (wrong, promote_body(&digest(2), ""), 401),
        (fixture.read.as_str(), promote_body(&digest(2), ""), 403),
        (
            fixture.promote.as_str(),
            promote_body(
                &digest(2),
                &format!(r#","expected_digest":"{}""#, digest(7)),
            ),
            409,
        ),
        (
            fixture.promote.as_str(),
            promote_body("sha256:nope", ""),
            422,
        ),
    ];
    for (token, body, status) in &refusals {
        assert_eq!(fixture.server.post(PROMOTE, token, body).status, *status);
    }
    let forbidden = fixture.server.get("/cp/admin/audit", &fixture.promote);
    assert_eq!(forbidden.status, 403, "audit is admin-only");
    let audit = fixture.server.get("/cp/admin/audit", &fixture.admin);
    assert_eq!(audit.status, 200);
    let json = audit.json();
    let entries = json["audit"].as_array().unwrap();
    let seen: Vec<(Option<&str>, u64, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str(),
                e["status"].as_u64().unwrap(),
                e["code"].as_str().unwrap(),
            )
        })
        .collect();
    // A failed authentication costs no write: it is counted, and summarised
    // in the audit once a minute or when the server stops.
    assert_eq!(
        seen,
        [
            (Some("ci"), 422, "invalid_digest"),
            (Some("ci"), 409, "pin_conflict"),
            (Some("provisioner"), 403, "forbidden"),
        ]
    );
    assert_eq!(entries[1]["template_name"], "codex");
    assert_eq!(entries[1]["region"], "global");
    assert!(
        entries
            .iter()
            .all(|entry| entry["count"] == 1 && entry["source"].is_null())
    );
    let history = fixture
        .server
        .get("/cp/admin/runtime-image/history", &fixture.admin);
    assert_eq!(
        history.json()["history"].as_array().unwrap().len(),
        1,
        "refusals wrote no history"
    );
    let Fixture {
        server, env, admin, ..
    } = fixture;
    assert_eq!(server.terminate(), Some(0));
    let server = env.start();
    let audit = server.get("/cp/admin/audit", &admin).json();
    let newest = &audit["audit"][0];
    assert_eq!(newest["actor"], serde_json::Value::Null, "{audit}");
    assert_eq!(newest["status"], 401);
    assert_eq!(newest["code"], "unauthorized");
    assert_eq!(newest["action"], "promote");
    assert_eq!(newest["source"], "127.0.0.1");
    assert_eq!(newest["count"], 1);
}
