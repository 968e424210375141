//! Holds: a held pin refuses promotions (`423 pin_held`) until released;
//! only an `admin` token with `force` gets through, and history says so;
//! `rollback --hold` moves the pin back and holds it in one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::{Env, Server, digest, http, run};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";
const HOLD: &str = "/cp/admin/runtime-image/hold";

struct Held {
    server: Server,
    _env: Env,
    admin: String,
    ci: String,
    read: String,
}

impl Held {
    fn new() -> Held {
        let env = Env::new();
        env.add_template("codex", "registry.example.com/codex");
        let admin = env.token("platform", "admin", &[]);
        let ci = env.token("ci", "promote", &[]);
        let read = env.token("viewer", "read", &[]);
        let server = Server::start(&env.database(), &[]);
        Held {
            server,
            _env: env,
            admin,
            ci,
            read,
        }
    }

    fn promote(&self, token: &str, n: u32, force: bool) -> crate::support::Response {
        let body = format!(
            r#"{{"template_name":"codex","image_digest":"{}","force":{force}}}"#,
            digest(n)
        );
        self.server.post(PROMOTE, token, &body)
    }

    fn pin(&self) -> serde_json::Value {
        let answer = self
            .server
            .get("/cp/admin/runtime-image?template_name=codex", &self.read);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["pins"][0].clone()
    }

    fn release(&self, token: &str) -> crate::support::Response {
        http(
            self.server.addr,
            "DELETE",
            &format!("{HOLD}?template_name=codex&region=global"),
            Some(token),
            None,
        )
    }

    fn events(&self) -> Vec<serde_json::Value> {
        let answer = self.server.get("/cp/events?limit=1000", &self.read);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()["events"].as_array().unwrap().clone()
    }
}

#[test]
fn a_hold_refuses_promotions_until_it_is_released_and_only_an_admin_forces_it() {
    let held = Held::new();
    assert_eq!(held.promote(&held.ci, 1, false).status, 201);

    let answer = held.server.post(
        HOLD,
        &held.ci,
        r#"{"template_name":"codex","reason":"build 41 corrupts sessions"}"#,
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    let hold = &answer.json()["hold"];
    assert_eq!(hold["template_name"], "codex");
    assert_eq!(hold["region"], "global");
    assert_eq!(hold["reason"], "build 41 corrupts sessions");
    assert_eq!(hold["held_by"], "ci");
    assert!(hold["held_at"].is_string());
    assert_eq!(held.pin()["hold"]["reason"], "build 41 corrupts sessions");
    // Holding again keeps the first hold.
    let again = held.server.post(
        HOLD,
        &held.admin,
        r#"{"template_name":"codex","reason":"another"}"#,
    );
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["hold"]["reason"], "build 41 corrupts sessions");

    // A promote token is refused, with or without force; nothing moves.
    for force in [false, true] {
        let refused = held.promote(&held.ci, 2, force);
        assert_eq!(refused.status, 423, "{refused:?}");
        assert_eq!(refused.error_code(), "pin_held");
        let message = refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("build 41 corrupts sessions"), "{message}");
        assert!(message.contains("`ci`"), "{message}");
        assert_eq!(held.pin()["image_digest"], digest(1));
    }
    // An admin token without force is refused too.
    assert_eq!(held.promote(&held.admin, 2, false).status, 423);
    // The digest it already has is no move: nothing to refuse.
    assert_eq!(held.promote(&held.ci, 1, false).status, 200);

    // An admin with force passes; history says it was forced; the hold stays.
    let forced = held.promote(&held.admin, 2, true);
    assert_eq!(forced.status, 201, "{forced:?}");
    assert_eq!(
        forced.json()["pin"]["hold"]["reason"],
        "build 41 corrupts sessions"
    );
    let history = held.server.history(&held.read, "codex");
    let last = history.last().unwrap();
    assert_eq!(last["action"], "promote");
    assert_eq!(last["forced"], true, "{last}");
    assert_eq!(last["to_digest"], digest(2));
    assert_eq!(
        history[0]["forced"], false,
        "an ordinary promotion is not forced"
    );

    // Released: promotions flow again; releasing again is 404.
    let released = held.release(&held.ci);
    assert_eq!(released.status, 200, "{released:?}");
    assert_eq!(
        released.json()["hold"]["reason"],
        "build 41 corrupts sessions"
    );
    assert!(held.pin()["hold"].is_null());
    let twice = held.release(&held.ci);
    assert_eq!(twice.status, 404, "{twice:?}");
    assert_eq!(twice.error_code(), "hold_not_found");
    assert_eq!(held.promote(&held.ci, 3, false).status, 201);

    // History has the hold and the release; the change feed has both.
    let actions: Vec<String> = held
        .server
        .history(&held.read, "codex")
        .iter()
        .map(|entry| entry["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        ["promote", "hold", "promote", "release", "promote"]
    );
    let kinds: Vec<String> = held
        .events()
        .iter()
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .filter(|kind| kind.starts_with("pin."))
        .collect();
    assert_eq!(
        kinds,
        [
            "pin.promoted",
            "pin.held",
            "pin.promoted",
            "pin.released",
            "pin.promoted"
        ]
    );
    // The refusals are in the audit log.
    let audit = held.server.get("/cp/admin/audit", &held.admin).json();
    let refused: Vec<&serde_json::Value> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["code"] == "pin_held")
        .collect();
    assert_eq!(refused.len(), 3, "{audit}");
    assert!(refused.iter().all(|entry| entry["status"] == 423));
}

#[test]
fn rollback_hold_moves_back_and_holds_in_one_step_with_promotions_racing() {
    let held = Held::new();
    assert_eq!(held.promote(&held.ci, 1, false).status, 201);
    assert_eq!(held.promote(&held.ci, 2, false).status, 201);

    // A pipeline keeps promoting build 2 while on-call rolls back and holds.
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let addr = held.server.addr;
        let token = held.ci.clone();
        std::thread::spawn(move || {
            let body = format!(
                r#"{{"template_name":"codex","image_digest":"{}"}}"#,
                digest(2)
            );
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                statuses
                    .push(http(addr, "POST", PROMOTE, Some(&token), Some(body.as_bytes())).status);
            }
            statuses
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let output = run(crate::support::pinion()
        .args(["rollback", "--server", &held.server.url()])
        .args(["--template", "codex", "--to", &digest(1)])
        .args(["--hold", "--reason", "build 2 is bad"])
        .env("PINION_TOKEN", &held.admin));
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let statuses = racer.join().unwrap();
    assert_eq!(output.code, 0, "{output:?}");
    assert!(
        output.stdout.contains("and held it: build 2 is bad"),
        "{output:?}"
    );
    assert!(
        statuses.contains(&423),
        "the racer met the hold: {statuses:?}"
    );

    let pin = held.pin();
    assert_eq!(pin["image_digest"], digest(1));
    assert_eq!(pin["hold"]["reason"], "build 2 is bad");
    // In history, the hold directly follows the rollback, and nothing moved
    // the pin after it.
    let history = held.server.history(&held.read, "codex");
    let rolled = history
        .iter()
        .position(|entry| entry["action"] == "rollback")
        .expect("a rollback entry");
    assert_eq!(history[rolled + 1]["action"], "hold", "{history:?}");
    assert_eq!(
        history[rolled + 1]["revision"].as_i64().unwrap(),
        history[rolled]["revision"].as_i64().unwrap() + 1
    );
    assert_eq!(
        history.len(),
        rolled + 2,
        "nothing after the hold: {history:?}"
    );

    // Released, a plain rollback returns to the digest before the last move,
    // not to the pin's own digest named by the hold and release entries.
    assert_eq!(held.release(&held.admin).status, 200);
    let back = held.server.post(
        "/cp/admin/runtime-image/rollback",
        &held.admin,
        r#"{"template_name":"codex"}"#,
    );
    assert_eq!(back.status, 201, "{back:?}");
    assert_eq!(back.json()["pin"]["image_digest"], digest(2));
}

#[test]
fn the_cli_holds_and_releases_with_the_gate_s_exit_codes_and_outputs() {
    let held = Held::new();
    assert_eq!(held.promote(&held.ci, 1, false).status, 201);
    let dir = tempfile::tempdir().unwrap();
    let outputs = dir.path().join("outputs");
    let cli = |args: &[&str]| {
        run(crate::support::pinion()
            .args(args)
            .args(["--server", &held.server.url(), "--template", "codex"])
            .env("PINION_TOKEN", &held.ci)
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_OUTPUT", &outputs))
    };
    let hold = cli(&["hold", "--reason", "incident 7"]);
    assert_eq!(hold.code, 0, "{hold:?}");
    assert!(
        hold.stdout.contains("held `codex`/`global`: incident 7"),
        "{hold:?}"
    );
    let written = std::fs::read_to_string(&outputs).unwrap();
    assert!(written.contains("ok=true"), "{written}");
    let promote = held.server.gate(&held.ci).promote("codex", &digest(2), &[]);
    assert_eq!(promote.code, 2, "{promote:?}");
    assert!(promote.reason().contains("pin_held"), "{promote:?}");

    let release = cli(&["release"]);
    assert_eq!(release.code, 0, "{release:?}");
    assert!(
        release.stdout.contains("released `codex`/`global`"),
        "{release:?}"
    );
    let again = cli(&["release"]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.reason().contains("hold_not_found"), "{again:?}");
    let written = std::fs::read_to_string(&outputs).unwrap();
    assert!(written.contains("ok=false"), "{written}");
    // A reason is required, and checked before any request.
    let missing = run(crate::support::pinion()
        .args([
            "hold",
            "--server",
            &held.server.url(),
            "--template",
            "codex",
            "--reason",
            "",
        ])
        .env("PINION_TOKEN", &held.ci));
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(held.pin()["hold"].is_null());
}

#[test]
fn hostile_holds_are_refused_and_change_nothing() {
    let held = Held::new();
    assert_eq!(held.promote(&held.ci, 1, false).status, 201);
    let long = "x".repeat(10 * 1024);
    let cases: Vec<(String, u16, &str)> = vec![
        (
            r#"{"template_name":"codex"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            r#"{"template_name":"codex","reason":""}"#.into(),
            422,
            "invalid_reason",
        ),
        (
            r#"{"template_name":"codex","reason":"   "}"#.into(),
            422,
            "invalid_reason",
        ),
        (
            format!(r#"{{"template_name":"codex","reason":"{long}"}}"#),
            422,
            "invalid_reason",
        ),
        (
            r#"{"template_name":"codex","reason":"a\u0000b"}"#.into(),
            422,
            "invalid_reason",
        ),
        (
            r#"{"template_name":"codex","reason":"x","until":"never"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            r#"{"template_name":"nope","reason":"x"}"#.into(),
            404,
            "runtime_pin_missing",
        ),
        (
            r#"{"template_name":"codex","region":"eu","reason":"x"}"#.into(),
            404,
            "runtime_pin_missing",
        ),
        (
            r#"{"template_name":"Bad Name","reason":"x"}"#.into(),
            422,
            "invalid_template_name",
        ),
    ];
    for (body, status, code) in cases {
        let answer = held.server.post(HOLD, &held.ci, &body);
        assert_eq!(answer.status, status, "{body}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{body}");
        assert!(held.pin()["hold"].is_null(), "{body}");
    }
    // A read token may neither hold nor release.
    let answer = held.server.post(
        HOLD,
        &held.read,
        r#"{"template_name":"codex","reason":"x"}"#,
    );
    assert_eq!(answer.status, 403);
    assert_eq!(held.release(&held.read).status, 403);
    // A rollback reason without a hold is a mistake, not a silent no-op.
    let answer = held.server.post(
        "/cp/admin/runtime-image/rollback",
        &held.ci,
        r#"{"template_name":"codex","reason":"x"}"#,
    );
    assert_eq!(answer.status, 422, "{answer:?}");
    assert!(held.pin()["hold"].is_null());
    assert_eq!(
        held.server.history(&held.read, "codex").len(),
        1,
        "nothing written"
    );
}
