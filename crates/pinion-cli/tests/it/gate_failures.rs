//! Every failure of the gate is red (exit 2, or 1 for a verify that says no),
//! says why in one line, and moves nothing.

use std::time::{Duration, Instant};

use crate::support::{Env, Fault, FaultServer, Fixture, closed_port, digest, pinion, run};

const DIGEST_BEFORE: u32 = 0x1000;

/// A fixture whose `codex`/`global` pin is at a known digest.
fn pinned_fixture() -> Fixture {
    let fixture = Fixture::new();
    let out = fixture
        .server
        .gate(&fixture.promote)
        .promote("codex", &digest(DIGEST_BEFORE), &[]);
    assert_eq!(out.code, 0, "{out:?}");
    fixture
}

fn assert_unmoved(fixture: &Fixture) {
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        Some(digest(DIGEST_BEFORE)),
        "the pin must not move"
    );
}

fn promote_to(
    server: &str,
    token: Option<&str>,
    template: &str,
    digest: &str,
) -> crate::support::Output {
    let mut command = pinion();
    command.args([
        "promote",
        "--server",
        server,
        "--template",
        template,
        "--digest",
        digest,
        "--timeout",
        "2",
    ]);
    if let Some(token) = token {
        command.env("PINION_TOKEN", token);
    }
    run(&mut command)
}

fn assert_red(out: &crate::support::Output, code: i32, reason_contains: &str) {
    assert_eq!(out.code, code, "{out:?}");
    let reason = out.reason();
    assert!(
        reason.starts_with("error: "),
        "one-line reason last on stderr: {out:?}"
    );
    assert!(
        reason.contains(reason_contains),
        "reason {reason:?} should mention {reason_contains:?}"
    );
}

#[test]
fn missing_or_empty_token_fails_before_any_request() {
    let fault = FaultServer::start(Fault::Answer(201, "application/json", "{}".into()));
    let out = promote_to(&fault.url(), None, "codex", &digest(1));
    assert_red(&out, 2, "`PINION_TOKEN` is unset or empty");
    let out = promote_to(&fault.url(), Some(""), "codex", &digest(1));
    assert_red(&out, 2, "`PINION_TOKEN` is unset or empty");
    let out = run(pinion()
        .args([
            "verify",
            "--server",
            &fault.url(),
            "--template",
            "codex",
            "--digest",
            &digest(1),
        ])
        .args(["--token-env", "CP_ADMIN_API_TOKEN"])
        .env("CP_ADMIN_API_TOKEN", "  "));
    // The value of --token-env is never echoed: it may be a pasted secret.
    assert_red(
        &out,
        2,
        "the token variable named by --token-env is unset or empty",
    );
    assert!(!out.stderr.contains("CP_ADMIN_API_TOKEN"), "{out:?}");
    assert_eq!(fault.count(), 0, "no request was sent");
}

/// A secret given as `--token-env` (a pasted token instead of a variable's
/// name) is refused without being printed, before any request.
#[test]
fn a_token_given_as_the_token_variable_is_refused_and_never_printed() {
    let fault = FaultServer::start(Fault::Answer(201, "application/json", "{}".into()));
    let secret = format!("pinion_{}", "7e".repeat(32));
    crate::support::register_secret(&secret);
    let out = run(pinion()
        .args(["promote", "--server", &fault.url()])
        .args(["--template", "codex", "--digest", &digest(1)])
        .args(["--token-env", &secret]));
    assert_red(&out, 2, "--token-env takes the name of a variable");
    assert_eq!(fault.count(), 0, "no request was sent");
}

#[test]
fn auth_and_catalog_refusals_move_nothing() {
    let fixture = pinned_fixture();
    let env = &fixture.env;
    let hermes_only = env.token("hermes-ci", "promote", &["hermes"]);
    std::thread::sleep(Duration::from_millis(1500)); // the server picks new tokens up within its reload interval
    let url = fixture.server.url();
    let d = digest(2);
    assert_red(
        &promote_to(&url, Some("pinion_not-a-real-token"), "codex", &d),
        2,
        "401 unauthorized",
    );
    assert_red(
        &promote_to(&url, Some(&fixture.read), "codex", &d),
        2,
        "403 forbidden",
    );
    assert_red(
        &promote_to(&url, Some(&hermes_only), "codex", &d),
        2,
        "403 forbidden",
    );
    assert_red(
        &promote_to(&url, Some(&fixture.promote), "codx", &d),
        2,
        "422 unknown_template",
    );
    assert_unmoved(&fixture);
}

#[test]
fn malformed_digests_are_refused_by_the_cli_before_any_request_and_by_the_server() {
    let fixture = pinned_fixture();
    let fault = FaultServer::start(Fault::Answer(201, "application/json", "{}".into()));
    let hex = format!("{:064x}", 7);
    let shapes = [
        String::new(),
        "latest".into(),
        hex.clone(),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}", hex.to_uppercase().replace('0', "A")),
        format!("sha512:{hex}{hex}"),
        format!(" sha256:{hex}"),
        format!("sha256:{hex} "),
        format!("sha256:{hex}\n"),
        format!("SHA256:{hex}"),
        format!("sha256:{}а", &hex[..63]),
        format!("sha256:{}'", &hex[..63]),
        format!("codex@sha256:{hex}"),
        format!("sha256:{}", "a".repeat(10_000)),
    ];
    for shape in &shapes {
        let out = promote_to(&fault.url(), Some(&fixture.promote), "codex", shape);
        assert_red(&out, 2, "--digest: invalid digest");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
        let out = run(pinion()
            .args([
                "verify",
                "--server",
                &fault.url(),
                "--template",
                "codex",
                "--digest",
                shape,
            ])
            .env("PINION_TOKEN", &fixture.read));
        assert_red(&out, 2, "--digest: invalid digest");

        let body = serde_json::json!({"template_name": "codex", "image_digest": shape}).to_string();
        let raw = fixture
            .server
            .post("/cp/admin/runtime-image/promote", &fixture.promote, &body);
        assert_eq!(raw.status, 422, "{shape:?}: {raw:?}");
        assert_eq!(raw.error_code(), "invalid_digest");
    }
    assert_eq!(fault.count(), 0, "the CLI sent nothing");
    assert_unmoved(&fixture);
}

#[test]
fn other_invalid_input_is_refused_before_any_request() {
    let fault = FaultServer::start(Fault::Answer(201, "application/json", "{}".into()));
    let url = fault.url();
    let d = digest(1);
    for (args, reason) in [
        (
            vec!["--template", "Codex", "--digest", &d],
            "--template: invalid template name",
        ),
        (
            vec!["--template", "codex", "--digest", &d, "--region", "us east"],
            "--region: invalid region",
        ),
        (
            vec!["--template", "codex", "--digest", &d, "--git-sha", "xyz"],
            "--git-sha: invalid git sha",
        ),
        (
            vec!["--template", "codex", "--digest", &d, "--timeout", "0"],
            "--timeout",
        ),
    ] {
        let out = run(pinion()
            .args(["promote", "--server", &url])
            .args(&args)
            .env("PINION_TOKEN", "pinion_x"));
        assert_red(&out, 2, reason);
    }
    let insecure = run(pinion()
        .args([
            "promote",
            "--server",
            "http://cp.example.com",
            "--template",
            "codex",
            "--digest",
            &d,
        ])
        .env("PINION_TOKEN", "pinion_x"));
    assert_red(&insecure, 2, "refusing plain http");
    let usage = run(pinion().args(["promote", "--template", "codex", "--digest", &d]));
    assert_eq!(usage.code, 2, "usage error: {usage:?}");
    let bad_target = run(pinion().args([
        "promote",
        "--target",
        "staging",
        "--template",
        "codex",
        "--digest",
        &d,
    ]));
    assert_red(&bad_target, 2, "must be NAME=URL");
    assert_eq!(fault.count(), 0);
}

#[test]
fn server_not_listening_is_red() {
    let out = promote_to(
        &format!("http://127.0.0.1:{}", closed_port()),
        Some("pinion_x"),
        "codex",
        &digest(1),
    );
    assert_red(&out, 2, "gave up after 3 attempts");
    assert!(
        out.stderr.contains("attempt 1/3 failed"),
        "each attempt is reported: {out:?}"
    );
}

#[test]
fn hanging_server_ends_within_the_timeout() {
    let fault = FaultServer::start(Fault::Hang);
    let started = Instant::now();
    let out = promote_to(&fault.url(), Some("pinion_x"), "codex", &digest(1));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert_red(&out, 2, "no answer to the write (none within 2s)");
    assert!(out.reason().contains("read back"), "{out:?}");
    let posts = fault
        .requests()
        .iter()
        .filter(|head| head.starts_with("POST "))
        .count();
    assert_eq!(
        posts, 1,
        "a write whose outcome is unknown is not sent again"
    );
    assert!(
        fault
            .requests()
            .iter()
            .skip(1)
            .all(|head| head.starts_with("GET ")),
        "it is settled by reading the pin back: {:?}",
        fault.requests()
    );
}

#[test]
fn server_errors_are_retried_then_red() {
    let fault = FaultServer::start(Fault::Answer(
        500,
        "application/json",
        r#"{"error":{"code":"internal","message":"boom"}}"#.into(),
    ));
    let out = promote_to(&fault.url(), Some("pinion_x"), "codex", &digest(1));
    assert_red(&out, 2, "server answered 500 internal: boom");
    assert_eq!(fault.count(), 3);
    assert_eq!(out.stderr.matches("retrying in").count(), 2, "{out:?}");
}

#[test]
fn client_errors_are_not_retried() {
    let fault = FaultServer::start(Fault::Answer(
        422,
        "application/json",
        r#"{"error":{"code":"unknown_template","message":"no"}}"#.into(),
    ));
    let out = promote_to(&fault.url(), Some("pinion_x"), "codex", &digest(1));
    assert_red(&out, 2, "422 unknown_template");
    assert_eq!(fault.count(), 1);
}

#[test]
fn success_status_with_a_wrong_body_is_red() {
    let d = digest(1);
    let other_pin = serde_json::json!({"pin": {
        "template_name": "codex", "region": "global", "image_digest": digest(2), "image_ref": null,
        "git_sha": null, "notes": null, "promoted_at": "2026-01-01T00:00:00Z", "promoted_by": "ci"
    }})
    .to_string();
    for (status, content_type, body, reason) in [
        (200, "application/json", String::new(), "body is not a pin"),
        (
            201,
            "text/html",
            "<html><body>Welcome to nginx!</body></html>".to_owned(),
            "body is not a pin",
        ),
        (
            201,
            "application/json",
            "{}".to_owned(),
            "body is not a pin",
        ),
        (200, "application/json", other_pin, "the returned pin is"),
        (
            204,
            "application/json",
            String::new(),
            "server answered 204",
        ),
    ] {
        let fault = FaultServer::start(Fault::Answer(status, content_type, body));
        let out = promote_to(&fault.url(), Some("pinion_x"), "codex", &d);
        assert_red(&out, 2, reason);
    }
    let html = FaultServer::start(Fault::Answer(200, "text/html", "<html></html>".into()));
    let out = run(pinion()
        .args([
            "verify",
            "--server",
            &html.url(),
            "--template",
            "codex",
            "--digest",
            &d,
        ])
        .env("PINION_TOKEN", "pinion_x"));
    assert_red(&out, 2, "not a pin list");
}

#[test]
fn redirects_are_not_followed_and_the_token_stays_home() {
    let elsewhere = FaultServer::start(Fault::Answer(201, "application/json", "{}".into()));
    let redirector = FaultServer::start(Fault::Redirect(format!(
        "{}/cp/admin/runtime-image/promote",
        elsewhere.url()
    )));
    let out = promote_to(&redirector.url(), Some("pinion_x"), "codex", &digest(1));
    assert_red(&out, 2, "redirects are not followed");
    assert_eq!(elsewhere.count(), 0, "nothing reached the other host");
}

#[test]
fn one_failing_target_fails_the_command_but_the_other_is_promoted() {
    let staging = pinned_fixture();
    let prod = pinned_fixture();
    let d = digest(3);
    let out = run(pinion()
        .args(["promote", "--template", "codex", "--digest", &d])
        .args(["--target", &format!("prod={}", prod.server.url())])
        .args(["--target", &format!("staging={}", staging.server.url())])
        .env("PINION_TOKEN_STAGING", &staging.promote)
        .env("PINION_TOKEN_PROD", &prod.read));
    assert_red(&out, 2, "promote failed on 1 of 2 targets: prod");
    assert!(
        out.stderr.contains("error: prod: server answered 403"),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains("prod"),
        "a failure is printed once, on stderr: {out:?}"
    );
    assert!(out.stdout.contains("staging: moved"), "{out:?}");
    assert_eq!(
        staging.server.pinned(&staging.read, "codex", "global"),
        Some(d.clone())
    );
    assert_unmoved(&prod);

    let verify = run(pinion()
        .args([
            "verify",
            "--template",
            "codex",
            "--digest",
            &d,
            "--format",
            "json",
        ])
        .args(["--target", &format!("staging={}", staging.server.url())])
        .args(["--target", &format!("prod={}", prod.server.url())])
        .env("PINION_TOKEN_STAGING", &staging.read)
        .env("PINION_TOKEN_PROD", &prod.read));
    assert_eq!(verify.code, 1, "{verify:?}");
    let report: serde_json::Value = serde_json::from_str(&verify.stdout).unwrap();
    assert_eq!(report["targets"][0]["outcome"], "match");
    assert_eq!(report["targets"][1]["outcome"], "mismatch");
    assert!(
        verify
            .reason()
            .contains("verify failed on 1 of 2 targets: prod"),
        "{verify:?}"
    );
}

#[test]
fn a_target_whose_token_is_missing_stops_everything_before_any_request() {
    let env = Env::new();
    let fault = FaultServer::start(Fault::Answer(201, "application/json", "{}".into()));
    let outputs = env.dir.path().join("github_output");
    let summary = env.dir.path().join("step_summary");
    let out = run(pinion()
        .args(["promote", "--template", "codex", "--digest", &digest(1)])
        .args(["--target", &format!("staging={}", fault.url())])
        .args(["--target", &format!("prod={}", fault.url())])
        .args(["--target", &format!("dev={}", fault.url())])
        .env("PINION_TOKEN_STAGING", "pinion_x")
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &outputs)
        .env("GITHUB_STEP_SUMMARY", &summary));
    assert_eq!(out.code, 2, "{out:?}");
    for target in ["prod", "dev"] {
        let variable = format!("PINION_TOKEN_{}", target.to_uppercase());
        assert!(
            out.stderr.contains(&format!(
                "error: {target}: the token variable `{variable}` is unset or empty"
            )),
            "every target's problem is named: {out:?}"
        );
    }
    assert_eq!(fault.count(), 0);
    // Pipelines see which targets failed, and that nothing was attempted.
    let outputs = std::fs::read_to_string(&outputs).unwrap();
    assert!(outputs.contains("failed_targets=prod,dev\n"), "{outputs}");
    assert!(outputs.contains("attempted=false\n"), "{outputs}");
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary.contains("| prod |") && summary.contains("| dev |"),
        "{summary}"
    );
    assert!(!summary.contains("| staging |"), "{summary}");
    drop(env);
}

/// Two rows for the same template and region is an answer that cannot be
/// trusted: verify refuses it (exit 2) instead of believing the first.
#[test]
fn verify_refuses_a_list_with_two_rows_for_one_pin() {
    let row = |digest: &str| {
        format!(
            r#"{{"template_name":"codex","region":"global","image_digest":"{digest}","image_ref":null,"git_sha":null,"notes":null,"promoted_at":"2026-01-01T00:00:00Z","promoted_by":"ci","revision":1,"build_sequence":null}}"#
        )
    };
    let body = format!(r#"{{"pins":[{},{}]}}"#, row(&digest(1)), row(&digest(2)));
    let fault = FaultServer::start(Fault::Answer(200, "application/json", body));
    let out = run(pinion()
        .args(["verify", "--server", &fault.url()])
        .args(["--template", "codex", "--digest", &digest(1)])
        .env("PINION_TOKEN", "pinion_x"));
    assert_red(&out, 2, "several rows for `codex`/`global`");
}

/// Failures are printed once, on stderr; stdout carries only what went well.
#[test]
fn a_failure_is_printed_once_on_stderr() {
    let fault = FaultServer::start(Fault::Answer(
        403,
        "application/json",
        r#"{"error":{"code":"forbidden","message":"no"}}"#.into(),
    ));
    let out = promote_to(&fault.url(), Some("pinion_x"), "codex", &digest(1));
    assert_red(&out, 2, "server answered 403 forbidden: no");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(out.stderr.matches("403").count(), 1, "{out:?}");
}

/// A reader that goes away (`pinion history | head -1`) ends the output,
/// not the process with a panic.
#[test]
fn a_closed_stdout_does_not_panic() {
    let fixture = Fixture::new();
    for n in 1..=30 {
        let out = promote_to(
            &fixture.server.url(),
            Some(&fixture.promote),
            "codex",
            &digest(n),
        );
        assert_eq!(out.code, 0, "{out:?}");
    }
    let mut child = pinion()
        .args([
            "history",
            "--server",
            &fixture.server.url(),
            "--limit",
            "30",
        ])
        .env("PINION_TOKEN", &fixture.read)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end at once: every write the command makes fails.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn a_refusal_names_the_server_s_request_id_which_finds_its_log_line() {
    let fixture = crate::support::Fixture::new();
    let out = run(crate::support::pinion()
        .args(["promote", "--server", &fixture.server.url()])
        .args(["--template", "nope", "--digest", &crate::support::digest(3)])
        .env("PINION_TOKEN", &fixture.promote));
    assert_eq!(out.code, 2, "{out:?}");
    let id = out
        .stderr
        .split("(request id ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("a request id on stderr: {out:?}"))
        .to_owned();
    assert!(out.stderr.contains("unknown_template"), "{out:?}");
    crate::support::eventually(
        "the server's line",
        std::time::Duration::from_secs(5),
        || {
            fixture.server.logs().iter().any(|line| {
                line.contains(&format!("request_id=\"{id}\"")) && line.contains("status=422")
            })
        },
    );
}
