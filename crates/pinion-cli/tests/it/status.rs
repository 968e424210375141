//! `pinion status` against two real servers: the table (wide and narrow)
//! and the JSON document, snapshot-tested with the ages masked, and the
//! exit codes: 0 when all agree, 1 when something disagrees or lags, 2 when
//! a target cannot be read.

use crate::support::{Env, Output, Server, closed_port, http, pinion, run};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";

/// A digest whose short form is `n` twelve times over.
fn digest(n: u32) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

struct Environment {
    server: Server,
    _env: Env,
    ci: String,
    read: String,
    report: String,
}

impl Environment {
    fn new() -> Environment {
        let env = Env::new();
        let admin = env.token("platform", "admin", &[]);
        let ci = env.token("ci", "promote", &[]);
        let read = env.token("viewer", "read", &[]);
        let report = env.token("provisioner", "report", &[]);
        let server = Server::start(&env.database(), &[]);
        // Templates without a repository: the drift watcher has nothing to
        // check, so every pin is `unchecked` whenever its first pass runs.
        for template in ["codex", "hermes"] {
            let put = http(
                server.addr,
                "PUT",
                &format!("/cp/admin/runtimes/{template}"),
                Some(&admin),
                Some(br#"{"image":null}"#),
            );
            assert!(put.status == 201, "{put:?}");
        }
        Environment {
            server,
            _env: env,
            ci,
            read,
            report,
        }
    }

    fn promote(&self, template: &str, region: &str, n: u32) {
        let body = format!(
            r#"{{"template_name":"{template}","region":"{region}","image_digest":"{}"}}"#,
            digest(n)
        );
        let answer = self.server.post(PROMOTE, &self.ci, &body);
        assert_eq!(answer.status, 201, "{answer:?}");
    }
}

fn status(targets: &[(&str, &Environment)], extra: &[&str], columns: Option<&str>) -> Output {
    let mut command = pinion();
    command.arg("status");
    for (name, environment) in targets {
        command.args(["--target", &format!("{name}={}", environment.server.url())]);
        command.env(
            format!("PINION_TOKEN_{}", name.to_uppercase()),
            &environment.read,
        );
    }
    command.args(extra);
    match columns {
        Some(columns) => command.env("COLUMNS", columns),
        None => command.env_remove("COLUMNS"),
    };
    run(&mut command)
}

/// Whitespace runs made one space, and ages (`12s`, `3m`) masked.
fn masked(text: &str) -> String {
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .map(|word| {
                    let digits = word.trim_end_matches(['s', 'm', 'h', 'd']);
                    if !digits.is_empty()
                        && digits.len() < word.len()
                        && digits.chars().all(|c| c.is_ascii_digit())
                    {
                        "<age>"
                    } else {
                        word
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn status_sets_two_environments_side_by_side_and_gates_on_what_differs() {
    let staging = Environment::new();
    let prod = Environment::new();
    staging.promote("codex", "global", 1);
    staging.promote("codex", "eu", 3);
    staging.promote("hermes", "global", 5);
    prod.promote("codex", "global", 2);
    prod.promote("hermes", "global", 5);
    // Prod's fleet: two instances on codex's pin, one still on staging's.
    let report = format!(
        r#"{{"instances":[
            {{"instance_id":"a","template_name":"codex","region":"us","image_digest":"{two}"}},
            {{"instance_id":"b","template_name":"codex","region":"us","image_digest":"{two}"}},
            {{"instance_id":"c","template_name":"codex","region":"us","image_digest":"{one}"}}]}}"#,
        one = digest(1),
        two = digest(2)
    );
    let answer = prod.server.post("/cp/fleet/report", &prod.report, &report);
    assert_eq!(answer.status, 200, "{answer:?}");
    let hold = prod.server.post(
        "/cp/admin/runtime-image/hold",
        &prod.ci,
        r#"{"template_name":"hermes","reason":"freeze"}"#,
    );
    assert_eq!(hold.status, 201, "{hold:?}");
    let both = [("staging", &staging), ("prod", &prod)];

    // The fleet summary is made within a quarter second of a report.
    crate::support::eventually(
        "prod counts its fleet",
        std::time::Duration::from_secs(5),
        || {
            prod.server
                .get("/cp/fleet?template_name=codex", &prod.read)
                .json()["fleet"][0]["behind"]
                == 1
        },
    );

    let wide = status(&both, &[], None);
    assert_eq!(wide.code, 1, "something disagrees: {wide:?}");
    assert_eq!(
        masked(&wide.stdout),
        [
            "template region staging:digest staging:age staging:by staging:drift staging:fleet prod:digest prod:age prod:by prod:drift prod:fleet flags",
            "codex eu 333333333333 <age> ci unchecked - (222222222222) - - - - disagree",
            "codex global 111111111111 <age> ci unchecked - 222222222222 <age> ci unchecked 2/3 disagree,behind",
            "hermes global 555555555555 <age> ci unchecked - 555555555555 held <age> ci unchecked - held",
        ]
        .join("\n")
    );

    // A narrow terminal gets a block per pin.
    let narrow = status(&both, &[], Some("60"));
    assert_eq!(narrow.code, 1);
    assert_eq!(
        masked(&narrow.stdout),
        [
            "codex/eu [disagree]",
            "staging 333333333333 <age> ci unchecked fleet -",
            "prod (222222222222) - - - fleet -",
            "codex/global [disagree,behind]",
            "staging 111111111111 <age> ci unchecked fleet -",
            "prod 222222222222 <age> ci unchecked fleet 2/3",
            "hermes/global [held]",
            "staging 555555555555 <age> ci unchecked fleet -",
            "prod 555555555555 held <age> ci unchecked fleet -",
        ]
        .join("\n")
    );

    // One JSON document.
    let json = status(&both, &["--format", "json"], None);
    assert_eq!(json.code, 1);
    let mut document: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(document["ok"], false);
    for target in document["targets"].as_array_mut().unwrap() {
        assert_eq!(target["reachable"], true, "{target}");
        target["url"] = "<url>".into();
    }
    for pin in document["pins"].as_array_mut().unwrap() {
        for (_, cell) in pin["targets"].as_object_mut().unwrap() {
            if let Some(cell) = cell.as_object_mut() {
                assert!(cell["age_seconds"].as_i64().unwrap() < 600);
                cell.remove("age_seconds");
                cell.remove("promoted_at");
                if let Some(hold) = cell.get_mut("hold").and_then(|hold| hold.as_object_mut()) {
                    hold.remove("held_at");
                }
            }
        }
    }
    let cell = |n: u32, fleet: serde_json::Value, hold: serde_json::Value| {
        serde_json::json!({
            "image_digest": digest(n), "promoted_by": "ci", "git_sha": null,
            "drift": "unchecked", "fleet": fleet, "hold": hold, "canary": null,
        })
    };
    let expected = serde_json::json!({
        "ok": false,
        "targets": [
            {"name": "staging", "url": "<url>", "reachable": true, "error": null, "drift_checked_at": document["targets"][0]["drift_checked_at"]},
            {"name": "prod", "url": "<url>", "reachable": true, "error": null, "drift_checked_at": document["targets"][1]["drift_checked_at"]},
        ],
        "pins": [
            {"template_name": "codex", "region": "eu", "flags": ["disagree"], "attention": true,
             "targets": {"staging": cell(3, serde_json::Value::Null, serde_json::Value::Null), "prod": null},
             "resolves": {"staging": digest(3), "prod": digest(2)}},
            {"template_name": "codex", "region": "global", "flags": ["disagree", "behind"], "attention": true,
             "targets": {"staging": cell(1, serde_json::Value::Null, serde_json::Value::Null),
                         "prod": cell(2, serde_json::json!({"current": 2, "behind": 1, "unknown": 0, "state": "converging"}), serde_json::Value::Null)},
             "resolves": {"staging": digest(1), "prod": digest(2)}},
            {"template_name": "hermes", "region": "global", "flags": ["held"], "attention": false,
             "targets": {"staging": cell(5, serde_json::Value::Null, serde_json::Value::Null),
                         "prod": cell(5, serde_json::Value::Null, serde_json::json!({"template_name": "hermes", "region": "global", "reason": "freeze", "held_by": "ci"}))},
             "resolves": {"staging": digest(5), "prod": digest(5)}},
        ],
    });
    assert_eq!(document, expected);

    // All agreeing: 0.
    let alone = status(&[("prod", &prod)], &[], None);
    assert_eq!(
        alone.code, 1,
        "prod alone still has a lagging instance: {alone:?}"
    );
    let staging_alone = status(&[("staging", &staging)], &[], None);
    assert_eq!(staging_alone.code, 0, "{staging_alone:?}");

    // A target that cannot be read: 2, shown as unreachable, never empty.
    let port = closed_port();
    let mut command = pinion();
    command
        .arg("status")
        .args(["--target", &format!("staging={}", staging.server.url())])
        .args(["--target", &format!("gone=http://127.0.0.1:{port}")])
        .args(["--timeout", "3"])
        .env("PINION_TOKEN_STAGING", &staging.read)
        .env("PINION_TOKEN_GONE", &staging.read)
        .env_remove("COLUMNS");
    let gone = run(&mut command);
    assert_eq!(gone.code, 2, "{gone:?}");
    assert!(gone.stdout.contains("gone (http://127.0.0.1:"), "{gone:?}");
    assert!(gone.stdout.contains("unreachable"), "{gone:?}");
    let codex = gone
        .stdout
        .lines()
        .find(|line| line.starts_with("codex ") && line.contains(" global "))
        .unwrap();
    assert!(codex.contains(" ? "), "unknown, not empty: {codex}");
    assert!(codex.ends_with("unreachable"), "{codex}");
    assert!(gone.stderr.contains("gone:"), "{gone:?}");
}
