//! `pinion promote` / `pinion verify` against real servers: the green paths,
//! several targets, JSON output and the Actions integration.

use crate::support::{Env, Fixture, digest, pinion, run};

#[test]
fn promote_then_verify_round_trip() {
    let fixture = Fixture::new();
    let d = digest(0xabc);
    let ci = fixture.server.gate(&fixture.promote);
    let provisioner = fixture.server.gate(&fixture.read);
    let promoted = ci.promote(
        "codex",
        &d,
        &[
            "--region",
            "us-east-2",
            "--git-sha",
            "abc1234",
            "--notes",
            "from the gate",
        ],
    );
    assert_eq!(promoted.code, 0, "{promoted:?}");
    assert!(
        promoted.stdout.contains("moved `codex`/`us-east-2`"),
        "{promoted:?}"
    );

    let again = ci.promote("codex", &d, &["--region", "us-east-2"]);
    assert_eq!(again.code, 0);
    assert!(again.stdout.contains("already at"), "{again:?}");

    let verified = provisioner.verify("codex", &d, &["--region", "us-east-2"]);
    assert_eq!(verified.code, 0, "{verified:?}");

    let other = provisioner.verify("codex", &digest(1), &["--region", "us-east-2"]);
    assert_eq!(other.code, 1, "a verify that says no exits 1: {other:?}");
    assert!(
        other.reason().contains(&d) && other.reason().contains(&digest(1)),
        "{other:?}"
    );

    // verify reads the region's own row: the global fallback does not count.
    let missing = provisioner.verify("codex", &d, &[]);
    assert_eq!(missing.code, 1);
    assert!(missing.reason().contains("no pin"), "{missing:?}");
}

#[test]
fn token_env_names_the_variable() {
    let fixture = Fixture::new();
    let out = run(pinion()
        .args([
            "promote",
            "--server",
            &fixture.server.url(),
            "--template",
            "codex",
            "--digest",
            &digest(9),
        ])
        .args(["--token-env", "CP_ADMIN_API_TOKEN"])
        .env("CP_ADMIN_API_TOKEN", &fixture.promote));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        Some(digest(9))
    );
}

#[test]
fn several_targets_each_with_its_own_token() {
    let staging = Fixture::new();
    let prod = Fixture::new();
    let d = digest(77);
    let out = run(pinion()
        .args([
            "promote",
            "--template",
            "codex",
            "--digest",
            &d,
            "--format",
            "json",
        ])
        .args(["--target", &format!("staging={}", staging.server.url())])
        .args(["--target", &format!("prod-eu={}", prod.server.url())])
        .env("PINION_TOKEN_STAGING", &staging.promote)
        .env("PINION_TOKEN_PROD_EU", &prod.promote));
    assert_eq!(out.code, 0, "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    assert_eq!(report["ok"], true);
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["target"], "staging");
    assert_eq!(targets[0]["outcome"], "moved");
    assert_eq!(targets[1]["target"], "prod-eu");
    assert_eq!(targets[1]["pin"]["image_digest"], d);
    assert_eq!(
        staging.server.pinned(&staging.read, "codex", "global"),
        Some(d.clone())
    );
    assert_eq!(
        prod.server.pinned(&prod.read, "codex", "global"),
        Some(d.clone())
    );

    let verified = run(pinion()
        .args(["verify", "--template", "codex", "--digest", &d])
        .args(["--target", &format!("staging={}", staging.server.url())])
        .args(["--target", &format!("prod-eu={}", prod.server.url())])
        .env("PINION_TOKEN_STAGING", &staging.read)
        .env("PINION_TOKEN_PROD_EU", &prod.read));
    assert_eq!(verified.code, 0, "{verified:?}");
}

#[test]
fn actions_outputs_summary_and_error_annotations() {
    let fixture = Fixture::new();
    let output_file = fixture.file("github_output");
    let summary_file = fixture.file("step_summary");
    let promote = |token: &str, template: &str| {
        run(pinion()
            .args([
                "promote",
                "--server",
                &fixture.server.url(),
                "--template",
                template,
                "--digest",
                &digest(5),
            ])
            .env("PINION_TOKEN", token)
            .env("GITEA_ACTIONS", "true")
            .env("GITHUB_OUTPUT", &output_file)
            .env("GITHUB_STEP_SUMMARY", &summary_file))
    };
    let ok = promote(&fixture.promote, "codex");
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(!ok.stderr.contains("::error::"));
    let outputs = std::fs::read_to_string(&output_file).unwrap();
    assert!(outputs.contains("ok=true\n"), "{outputs}");
    assert!(
        outputs.contains(&format!("image_digest={}\n", digest(5))),
        "{outputs}"
    );
    let summary = std::fs::read_to_string(&summary_file).unwrap();
    assert!(summary.contains("| server | moved |"), "{summary}");

    let failed = promote(&fixture.read, "codex");
    assert_eq!(failed.code, 2);
    assert!(
        failed
            .stderr
            .lines()
            .any(|line| line.starts_with("::error::pinion promote: server: server answered 403")),
        "{failed:?}"
    );
    let outputs = std::fs::read_to_string(&output_file).unwrap();
    assert!(
        outputs.contains("ok=false\nfailed_targets=server\n"),
        "{outputs}"
    );
    let summary = std::fs::read_to_string(&summary_file).unwrap();
    assert!(summary.contains("FAILED"), "{summary}");
}

#[test]
fn outside_actions_nothing_is_written() {
    let fixture = Fixture::new();
    let output_file = fixture.file("github_output");
    let out = run(pinion()
        .args([
            "promote",
            "--server",
            &fixture.server.url(),
            "--template",
            "codex",
            "--digest",
            &digest(5),
        ])
        .env("PINION_TOKEN", &fixture.read)
        .env("GITHUB_OUTPUT", &output_file));
    assert_eq!(out.code, 2);
    assert!(!out.stderr.contains("::error::"));
    assert!(!output_file.exists());
}

#[test]
fn token_list_and_revoke_never_show_secrets() {
    let env = Env::new();
    let secret = env.token("ci", "promote", &["codex", "hermes"]);
    let listed = run(pinion().args([
        "token",
        "list",
        "--format",
        "json",
        "--database",
        &env.database(),
    ]));
    assert_eq!(listed.code, 0);
    assert!(!listed.stdout.contains(&secret));
    let json: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(json["tokens"][0]["name"], "ci");
    assert_eq!(json["tokens"][0]["scope"], "promote");
    assert_eq!(
        json["tokens"][0]["templates"],
        serde_json::json!(["codex", "hermes"])
    );
    assert_eq!(json["tokens"][0]["revoked_at"], serde_json::Value::Null);

    let revoked = run(pinion().args(["token", "revoke", "ci", "--database", &env.database()]));
    assert_eq!(revoked.code, 0, "{revoked:?}");
    let again = run(pinion().args(["token", "revoke", "ci", "--database", &env.database()]));
    assert_eq!(again.code, 2);
    assert_eq!(again.reason(), "error: no active token named `ci`");
    let duplicate = env.token("ci", "read", &[]);
    assert_ne!(duplicate, secret);
    let listed = run(pinion().args(["token", "list", "--database", &env.database()]));
    assert!(listed.stdout.contains("revoked"), "{listed:?}");
    assert!(listed.stdout.contains("active"), "{listed:?}");
}

#[test]
fn token_create_refuses_bad_input_and_prints_no_secret() {
    let env = Env::new();
    for args in [
        vec!["--name", "Bad Name", "--scope", "read"],
        vec!["--name", "ci", "--scope", "root"],
        vec!["--name", "ci", "--scope", "read", "--template", "../x"],
    ] {
        let out = run(pinion()
            .args(["token", "create"])
            .args(&args)
            .args(["--database", &env.database()]));
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    }
    let listed = run(pinion().args([
        "token",
        "list",
        "--format",
        "json",
        "--database",
        &env.database(),
    ]));
    if env.is_postgres() {
        assert_eq!(listed.stdout.trim(), "{\n  \"tokens\": []\n}");
    } else {
        // The refused creations made no database, and a read does not make
        // one either: it says there is none.
        assert_eq!(listed.code, 2, "{listed:?}");
        assert!(listed.stdout.is_empty(), "{listed:?}");
        assert!(listed.stderr.contains("no database at"), "{listed:?}");
        assert!(!env.dir.path().join("pinion.db").exists());
    }
}

#[test]
fn pinion_server_stands_in_for_server_when_no_target_is_named() {
    let fixture = Fixture::new();
    let d = digest(0x5e7);
    let promoted = run(pinion()
        .args(["promote", "--template", "codex", "--digest", &d])
        .env("PINION_SERVER", fixture.server.url())
        .env("PINION_TOKEN", &fixture.promote));
    assert_eq!(promoted.code, 0, "{promoted:?}");
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        Some(d.clone())
    );
    // A named target wins: PINION_SERVER is not a second target.
    let verified = run(pinion()
        .args(["verify", "--template", "codex", "--digest", &d])
        .args(["--target", &format!("main={}", fixture.server.url())])
        .env("PINION_SERVER", "http://127.0.0.1:9")
        .env("PINION_TOKEN_MAIN", &fixture.read));
    assert_eq!(verified.code, 0, "{verified:?}");
    // Neither: exit 2, saying what to give.
    let neither = run(pinion()
        .args(["verify", "--template", "codex", "--digest", &d])
        .env_remove("PINION_SERVER")
        .env("PINION_TOKEN", &fixture.read));
    assert_eq!(neither.code, 2, "{neither:?}");
    assert!(neither.stderr.contains("PINION_SERVER"), "{neither:?}");
}
