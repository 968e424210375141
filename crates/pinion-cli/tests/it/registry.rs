//! Registry truth, against a real registry: `pinion digest`, the existence
//! check on promote, `pinion drift` and the server's drift watcher.

use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::oci::{Auth, TestRegistry};
use crate::support::{
    Env, Fault, FaultServer, Server, closed_port, digest, eventually, pinion, poll_until,
    register_secret, run,
};

fn pinion_digest(image: &str, extra: &[&str], env: &[(&str, &str)]) -> crate::support::Output {
    run(pinion()
        .arg("digest")
        .arg(image)
        .args(extra)
        .envs(env.iter().copied())
        .env("HOME", "/nonexistent"))
}

#[test]
fn digest_equals_skopeo_for_an_image_and_an_index() {
    let registry = TestRegistry::start(Auth::None);
    let single = registry.push_image("team/codex", "v1", "one");
    let out = pinion_digest(
        &format!("{}:v1", registry.repository("team/codex")),
        &[],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        format!("{single}\n"),
        "the digest alone on stdout"
    );

    let (index, amd64, arm64) = registry.push_index("team/multi", "latest", "two");
    let out = pinion_digest(&registry.repository("team/multi"), &[], &[]);
    assert_eq!(
        out.stdout.trim(),
        index,
        "the index digest, as skopeo reports it"
    );
    let out = pinion_digest(
        &registry.repository("team/multi"),
        &["--platform", "linux/amd64"],
        &[],
    );
    assert_eq!(out.stdout.trim(), amd64);
    let out = pinion_digest(
        &registry.repository("team/multi"),
        &["--platform", "linux/arm64"],
        &[],
    );
    assert_eq!(out.stdout.trim(), arm64);
    let out = pinion_digest(
        &registry.repository("team/multi"),
        &["--platform", "linux/s390x"],
        &[],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.reason()
            .contains("no manifest for platform `linux/s390x`"),
        "{out:?}"
    );

    let by_digest = pinion_digest(
        &format!("{}@{single}", registry.repository("team/codex")),
        &[],
        &[],
    );
    assert_eq!(by_digest.stdout.trim(), single);
}

#[test]
fn missing_things_and_unreachable_registries_are_exit_2_with_a_reason() {
    let registry = TestRegistry::start(Auth::None);
    registry.push_image("codex", "v1", "x");
    let missing_tag = pinion_digest(&format!("{}:v2", registry.repository("codex")), &[], &[]);
    assert_eq!(missing_tag.code, 2);
    assert!(
        missing_tag.reason().contains("not found in the registry"),
        "{missing_tag:?}"
    );
    let missing_repo = pinion_digest(&format!("{}:v1", registry.repository("nope")), &[], &[]);
    assert_eq!(missing_repo.code, 2);
    assert!(
        missing_repo.reason().contains("not found"),
        "{missing_repo:?}"
    );
    let unreachable = pinion_digest(&format!("127.0.0.1:{}/codex:v1", closed_port()), &[], &[]);
    assert_eq!(unreachable.code, 2);
    assert!(
        unreachable.reason().contains("is unavailable"),
        "{unreachable:?}"
    );
    let bad = pinion_digest("Codex:v1", &[], &[]);
    assert_eq!(bad.code, 2);
    assert!(missing_tag.stdout.is_empty() && bad.stdout.is_empty());
}

#[test]
fn basic_auth_credentials_come_from_the_docker_config() {
    let registry = TestRegistry::start(Auth::Basic("ci", "registry-password-7f3a"));
    register_secret("registry-password-7f3a");
    let pushed = registry.push_image("codex", "latest", "auth");
    let image = registry.repository("codex");
    let config_dir = tempfile::tempdir().unwrap();
    let write_config = |user: &str, password: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let config = serde_json::json!({"auths": {registry.host(): {"auth": auth}}});
        std::fs::write(config_dir.path().join("config.json"), config.to_string()).unwrap();
    };
    let docker_config = config_dir.path().to_str().unwrap().to_owned();

    let anonymous = pinion_digest(&image, &[], &[]);
    assert_eq!(anonymous.code, 2);
    assert!(
        anonymous.reason().contains("refused access"),
        "{anonymous:?}"
    );

    write_config("ci", "registry-password-7f3a");
    let good = pinion_digest(&image, &[], &[("DOCKER_CONFIG", &docker_config)]);
    assert_eq!(good.code, 0, "{good:?}");
    assert_eq!(good.stdout.trim(), pushed);

    write_config("ci", "wrong-password-91c2");
    register_secret("wrong-password-91c2");
    let wrong = pinion_digest(&image, &[], &[("DOCKER_CONFIG", &docker_config)]);
    assert_eq!(wrong.code, 2);
    assert!(wrong.reason().contains("refused access"), "{wrong:?}");

    // REGISTRY_AUTH_FILE names the file directly (podman, skopeo).
    write_config("ci", "registry-password-7f3a");
    let auth_file = config_dir.path().join("config.json");
    let via_auth_file = pinion_digest(
        &image,
        &[],
        &[("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap())],
    );
    assert_eq!(via_auth_file.stdout.trim(), pushed, "{via_auth_file:?}");
}

#[test]
fn bearer_challenges_fetch_a_token_from_the_realm() {
    // The token issuer is a stand-in (distribution's `silly` auth accepts any
    // token); the registry, its challenge and the manifest are real.
    let issuer = FaultServer::start(Fault::Answer(
        200,
        "application/json",
        r#"{"token":"test-token"}"#.into(),
    ));
    let registry = TestRegistry::start(Auth::SillyBearer(format!("{}/token", issuer.url())));
    let pushed = registry.push_image("team/codex", "latest", "bearer");
    let out = pinion_digest(&registry.repository("team/codex"), &[], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), pushed);
    let asked = issuer.requests();
    assert!(!asked.is_empty(), "the realm was asked for a token");
    assert!(asked[0].contains("service=pinion-test"), "{asked:?}");
    assert!(
        asked[0].contains("scope=repository%3Ateam%2Fcodex%3Apull"),
        "{asked:?}"
    );
}

#[test]
fn a_lying_registry_is_refused() {
    let body = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    let liar = FaultServer::start(Fault::LyingRegistry(body.into(), digest(1)));
    let out = pinion_digest(&format!("{}/codex:latest", liar.addr), &[], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.reason().contains("gave an invalid answer"), "{out:?}");
    assert!(out.reason().contains("Docker-Content-Digest"), "{out:?}");
    assert!(out.stdout.is_empty());
}

#[test]
fn an_oversized_manifest_is_refused() {
    let huge = format!(
        r#"{{"schemaVersion":2,"pad":"{}"}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    let bloated = FaultServer::start(Fault::Answer(
        200,
        "application/vnd.oci.image.manifest.v1+json",
        huge,
    ));
    let out = pinion_digest(&format!("{}/codex:latest", bloated.addr), &[], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.reason().contains("larger than"), "{out:?}");
}

#[test]
fn the_server_reads_registry_credentials_like_the_cli() {
    let registry = TestRegistry::start(Auth::Basic("ci", "server-side-password-5d1e"));
    register_secret("server-side-password-5d1e");
    let pushed = registry.push_image("codex", "latest", "server-auth");
    let config_dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:server-side-password-5d1e");
    let config = serde_json::json!({"auths": {registry.host(): {"auth": auth}}});
    std::fs::write(config_dir.path().join("config.json"), config.to_string()).unwrap();
    let docker_config = config_dir.path().to_str().unwrap().to_owned();
    let (_env, server, token, read) = server_for(&registry, &[("DOCKER_CONFIG", &docker_config)]);
    assert_eq!(promote(&server, &token, &pushed).status, 201);
    let missing = promote(&server, &token, &digest(3));
    assert_eq!(missing.error_code(), "digest_not_in_registry");
    assert_eq!(server.pinned(&read, "codex", "global"), Some(pushed));

    let (_env, anonymous, token, _read) = server_for(&registry, &[]);
    let refused = promote(&anonymous, &token, &digest(3));
    assert_eq!(
        refused.status, 503,
        "no credentials: the registry refuses, nothing is written"
    );
    assert_eq!(refused.error_code(), "registry_unavailable");
}

/// A server whose catalog points `codex` at the test registry.
fn server_for(registry: &TestRegistry, env_vars: &[(&str, &str)]) -> (Env, Server, String, String) {
    let env = Env::new();
    env.add_template("codex", &registry.repository("codex"));
    let promote = env.token("ci", "promote", &[]);
    let read = env.token("reader", "read", &[]);
    let mut vars = vec![("PINION_REGISTRY_CHECK", "require")];
    vars.extend_from_slice(env_vars);
    let server = Server::start(&env.database(), &vars);
    (env, server, promote, read)
}

fn promote(server: &Server, token: &str, digest: &str) -> crate::support::Response {
    server.post(
        "/cp/admin/runtime-image/promote",
        token,
        &format!(r#"{{"template_name":"codex","image_digest":"{digest}"}}"#),
    )
}

#[test]
fn promote_checks_the_digest_exists_in_the_registry() {
    let mut registry = TestRegistry::start(Auth::None);
    let real = registry.push_image("codex", "latest", "exists");
    let (_env, server, token, read) = server_for(&registry, &[]);
    assert_eq!(promote(&server, &token, &real).status, 201);

    let ghost = digest(0xdead);
    let refused = promote(&server, &token, &ghost);
    assert_eq!(refused.status, 422, "{refused:?}");
    assert_eq!(refused.error_code(), "digest_not_in_registry");
    assert_eq!(server.pinned(&read, "codex", "global"), Some(real.clone()));

    registry.stop();
    let unavailable = promote(&server, &token, &digest(0xbeef));
    assert_eq!(unavailable.status, 503, "{unavailable:?}");
    assert_eq!(unavailable.error_code(), "registry_unavailable");
    assert_eq!(server.pinned(&read, "codex", "global"), Some(real));
}

#[test]
fn warn_mode_promotes_a_missing_digest_and_logs_it() {
    let registry = TestRegistry::start(Auth::None);
    let (_env, server, token, _read) = server_for(&registry, &[("PINION_REGISTRY_CHECK", "warn")]);
    let response = promote(&server, &token, &digest(5));
    assert_eq!(response.status, 201, "{response:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        server
            .logs()
            .iter()
            .any(|line| line.contains("digest not in the registry")),
        "{:?}",
        server.logs()
    );
}

#[test]
fn drift_finds_a_stale_pin_and_clears_once_promoted() {
    let registry = TestRegistry::start(Auth::None);
    let first = registry.push_image("codex", "latest", "first");
    let (_env, server, token, read) = server_for(&registry, &[]);
    assert_eq!(promote(&server, &token, &first).status, 201);
    let drift = || {
        run(pinion()
            .args(["drift", "--server", &server.url(), "--format", "json"])
            .env("PINION_TOKEN", &read)
            .env("HOME", "/nonexistent"))
    };
    let clean = drift();
    assert_eq!(clean.code, 0, "{clean:?}");

    let second = registry.push_image("codex", "latest", "second");
    let stale = drift();
    assert_eq!(stale.code, 1, "{stale:?}");
    let report: serde_json::Value = serde_json::from_str(&stale.stdout).unwrap();
    let row = &report["targets"][0]["pins"][0];
    assert_eq!(row["status"], "stale");
    assert_eq!(row["image_digest"], first);
    assert_eq!(row["tag_digest"], second);
    assert!(
        stale.stderr.contains("pin `codex`/`global` is stale"),
        "{stale:?}"
    );

    assert_eq!(promote(&server, &token, &second).status, 201);
    let fresh = drift();
    assert_eq!(fresh.code, 0, "{fresh:?}");
}

#[test]
fn drift_reports_missing_tags_unpinned_templates_and_disagreeing_targets() {
    let registry = TestRegistry::start(Auth::None);
    let image = registry.push_image("codex", "latest", "a");
    let (staging_env, staging, staging_token, staging_read) = server_for(&registry, &[]);
    let (_prod_env, prod, prod_token, prod_read) = server_for(&registry, &[]);
    staging_env.add_template("hermes", &registry.repository("hermes"));
    let older = registry.push_image("codex", "previous", "b");
    assert_eq!(promote(&staging, &staging_token, &image).status, 201);
    assert_eq!(promote(&prod, &prod_token, &older).status, 201);
    std::thread::sleep(Duration::from_millis(1200));
    let out = run(pinion()
        .args(["drift", "--format", "json"])
        .args(["--target", &format!("staging={}", staging.url())])
        .args(["--target", &format!("prod={}", prod.url())])
        .env("PINION_TOKEN_STAGING", &staging_read)
        .env("PINION_TOKEN_PROD", &prod_read)
        .env("HOME", "/nonexistent"));
    assert_eq!(out.code, 1, "prod is stale: {out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let statuses: Vec<(String, String, String)> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|target| {
            target["pins"].as_array().unwrap().iter().map(move |row| {
                (
                    target["target"].as_str().unwrap().to_owned(),
                    row["template_name"].as_str().unwrap().to_owned(),
                    row["status"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect();
    let expect = |target: &str, template: &str, status: &str| {
        (target.to_owned(), template.to_owned(), status.to_owned())
    };
    assert!(
        statuses.contains(&expect("staging", "codex", "current")),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&expect("staging", "hermes", "unpinned")),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&expect("prod", "codex", "stale")),
        "{statuses:?}"
    );
    let disagreement = &report["disagreements"][0];
    assert_eq!(disagreement["template_name"], "codex");
    assert_eq!(disagreement["digests"]["staging"], image);
    assert_eq!(disagreement["digests"]["prod"], older);
    assert!(
        out.stderr.contains("targets disagree on `codex`/`global`"),
        "{out:?}"
    );

    let missing_tag = run(pinion()
        .args([
            "drift",
            "--server",
            &staging.url(),
            "--tag",
            "nightly",
            "--format",
            "json",
        ])
        .env("PINION_TOKEN", &staging_read)
        .env("HOME", "/nonexistent"));
    assert_eq!(missing_tag.code, 0, "{missing_tag:?}");
    let report: serde_json::Value = serde_json::from_str(&missing_tag.stdout).unwrap();
    assert_eq!(report["targets"][0]["pins"][0]["status"], "tag_missing");
}

/// Reads one gauge from `/metrics`.
fn metric(server: &Server, line_prefix: &str) -> Option<String> {
    let response = crate::support::http(server.addr, "GET", "/metrics", None, None);
    assert_eq!(response.status, 200);
    response
        .body
        .lines()
        .find(|line| line.starts_with(line_prefix))
        .map(|line| line.rsplit(' ').next().unwrap_or_default().to_owned())
}

#[test]
fn the_watcher_flips_pin_stale_within_one_interval() {
    let registry = TestRegistry::start(Auth::None);
    let first = registry.push_image("codex", "latest", "w1");
    let (_env, server, token, read) = server_for(&registry, &[("PINION_DRIFT_INTERVAL", "300ms")]);
    assert_eq!(promote(&server, &token, &first).status, 201);
    let stale_gauge = r#"pinion_pin_stale{template="codex",region="global"}"#;
    let wait_for = |value: &str| {
        poll_until(
            &format!("pinion_pin_stale becoming {value}"),
            Duration::from_secs(5),
            || (metric(&server, stale_gauge).as_deref() == Some(value)).then(Instant::now),
        )
    };
    wait_for("0");
    registry.push_image("codex", "latest", "w2");
    let pushed = Instant::now();
    let flipped = wait_for("1");
    assert!(
        flipped - pushed < Duration::from_millis(1500),
        "seen within about one interval: {:?}",
        flipped - pushed
    );
    let promoted_at: f64 = metric(
        &server,
        r#"pinion_pin_promoted_timestamp_seconds{template="codex",region="global"}"#,
    )
    .unwrap()
    .parse()
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - promoted_at).abs() < 60.0,
        "{promoted_at} against {now}"
    );
    assert_eq!(
        metric(
            &server,
            &format!(r#"pinion_pin_info{{template="codex",region="global",digest="{first}"}}"#)
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(
            &server,
            r#"pinion_pin_check_ok{template="codex",region="global"}"#
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&server, "pinion_drift_check_errors_total").as_deref(),
        Some("0")
    );

    let report = server.get("/cp/admin/runtime-image/drift", &read).json();
    assert_eq!(report["tag"], "latest");
    assert_eq!(report["pins"][0]["status"], "stale");
    assert!(report["pins"][0]["stale_since"].is_string());

    // The flip is an event, once; promoting the new tag flips it back.
    let second = report["pins"][0]["tag_digest"].as_str().unwrap().to_owned();
    let flips = |kind: &str| {
        server.get(&format!("/cp/events?type={kind}"), &read).json()["events"]
            .as_array()
            .unwrap()
            .clone()
    };
    let stale = flips("pin.stale");
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0]["data"]["image_digest"], first.as_str());
    assert_eq!(stale[0]["data"]["tag_digest"], second.as_str());
    assert!(stale[0]["data"]["stale_since"].is_string());
    assert_eq!(promote(&server, &token, &second).status, 201);
    wait_for("0");
    let fresh = poll_until("pin.fresh", Duration::from_secs(5), || {
        let fresh = flips("pin.fresh");
        (!fresh.is_empty()).then_some(fresh)
    });
    assert_eq!(fresh[0]["data"]["image_digest"], second.as_str());
    thread::sleep(Duration::from_millis(700));
    assert_eq!(flips("pin.stale").len(), 1, "no flip, no event");
}

#[test]
fn watcher_errors_are_counted() {
    let mut registry = TestRegistry::start(Auth::None);
    registry.push_image("codex", "latest", "e1");
    let (_env, server, _token, _read) =
        server_for(&registry, &[("PINION_DRIFT_INTERVAL", "200ms")]);
    registry.stop();
    eventually(
        "the failed checks being counted",
        Duration::from_secs(10),
        || metric(&server, "pinion_drift_check_errors_total").as_deref() != Some("0"),
    );
}

/// Checks the exposition format the way `promtool check metrics` would at
/// its core: every sample belongs to the family the last `# TYPE` line
/// declared (families are not interleaved; a histogram's samples are its
/// `_bucket`, `_sum` and `_count`), and every value is a number.
fn assert_well_formed(text: &str) {
    let mut family = String::new();
    let mut histogram = false;
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split(' ');
            let name = words.next().unwrap().to_owned();
            histogram = words.next() == Some("histogram");
            assert!(seen.insert(name.clone()), "{name} declared twice");
            family = name;
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let name = if histogram {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
        } else {
            name
        };
        assert_eq!(name, family, "a sample outside its family: {line}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value == "NaN" || value.parse::<f64>().is_ok(),
            "not a number: {line}"
        );
    }
}

#[test]
fn a_registry_outage_keeps_a_stale_pin_stale_and_says_the_check_failed() {
    let mut registry = TestRegistry::start(Auth::None);
    let first = registry.push_image("codex", "latest", "o1");
    let (_env, server, token, _read) = server_for(&registry, &[("PINION_DRIFT_INTERVAL", "300ms")]);
    assert_eq!(promote(&server, &token, &first).status, 201);
    let second = registry.push_image("codex", "latest", "o2");
    let stale = r#"pinion_pin_stale{template="codex",region="global"}"#;
    let check_ok = r#"pinion_pin_check_ok{template="codex",region="global"}"#;
    let wait_for = |what: &str, want: (&str, &str)| {
        poll_until(what, Duration::from_secs(10), || {
            let seen = (metric(&server, stale), metric(&server, check_ok));
            (seen.0.as_deref() == Some(want.0) && seen.1.as_deref() == Some(want.1)).then_some(())
        });
    };
    wait_for("stale, checked", ("1", "1"));

    // The registry goes away: still stale, and the check says it failed.
    registry.stop();
    wait_for("stale, not checked", ("1", "0"));
    thread::sleep(Duration::from_millis(700));
    assert_eq!(
        metric(&server, stale).as_deref(),
        Some("1"),
        "never 0 while unknown"
    );
    let text = crate::support::http(server.addr, "GET", "/metrics", None, None).body;
    assert_well_formed(&text);
    let checked = promtool_check(&text).expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {checked:?}"
    );

    // Back: checked again, still stale; promoted to the tag, fresh.
    registry.run();
    wait_for("stale, checked again", ("1", "1"));
    assert_eq!(promote(&server, &token, &second).status, 201);
    wait_for("fresh, checked", ("0", "1"));
    assert_well_formed(&crate::support::http(server.addr, "GET", "/metrics", None, None).body);
}

#[test]
fn a_pin_never_checked_or_without_its_tag_is_unknown_from_the_first_scrape() {
    let registry = TestRegistry::start(Auth::None);
    let first = registry.push_image("codex", "latest", "n1");
    // A tag that does not exist: every check is a failure to check.
    let (_env, server, token, _read) = server_for(
        &registry,
        &[
            ("PINION_DRIFT_INTERVAL", "300ms"),
            ("PINION_DRIFT_TAG", "no-such-tag"),
        ],
    );
    assert_eq!(promote(&server, &token, &first).status, 201);
    // Its series are there at once, and say unknown, not fresh.
    let stale = r#"pinion_pin_stale{template="codex",region="global"}"#;
    let check_ok = r#"pinion_pin_check_ok{template="codex",region="global"}"#;
    assert_eq!(metric(&server, stale).as_deref(), Some("NaN"));
    assert_eq!(metric(&server, check_ok).as_deref(), Some("0"));
    // After several passes: still unknown.
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(metric(&server, stale).as_deref(), Some("NaN"));
    assert_eq!(metric(&server, check_ok).as_deref(), Some("0"));
    let text = crate::support::http(server.addr, "GET", "/metrics", None, None).body;
    assert!(text.contains(r#"pinion_build_info{version=""#), "{text}");
    assert_well_formed(&text);

    // The version, without a token.
    let version = crate::support::http(server.addr, "GET", "/version", None, None);
    assert_eq!(version.status, 200, "{version:?}");
    let version = version.json();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    match version["git_sha"].as_str() {
        Some(sha) => assert!(
            sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()),
            "{sha}"
        ),
        None => assert!(version["git_sha"].is_null()),
    }
}

#[test]
fn every_answer_is_counted_by_route_method_and_status() {
    let env = crate::support::Env::new();
    env.add_template("codex", "localhost:5000/codex");
    let read = env.token("viewer", "read", &[]);
    let server = crate::support::Server::start(&env.database(), &[]);
    let resolve = "/cp/runtime-image/resolve?template_name=codex";
    for _ in 0..3 {
        server.get(resolve, &read);
    }
    crate::support::http(server.addr, "GET", resolve, None, None);
    crate::support::http(server.addr, "GET", "/no/such/path/1", None, None);
    crate::support::http(server.addr, "GET", "/no/such/path/2", None, None);
    crate::support::http(
        server.addr,
        "GET",
        "/cp/admin/tokens/someone",
        Some(&read),
        None,
    );
    let text = crate::support::http(server.addr, "GET", "/metrics", None, None).body;
    assert_well_formed(&text);
    let sample = |series: &str| -> Option<String> {
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .map(|line| line.rsplit(' ').next().unwrap().to_owned())
    };
    // The resolves without a pin are 404s; with and without a token.
    assert_eq!(
        sample(r#"pinion_http_requests_total{route="/cp/runtime-image/resolve",method="GET",status="404"}"#).as_deref(),
        Some("3"),
        "{text}"
    );
    assert_eq!(
        sample(r#"pinion_http_requests_total{route="/cp/runtime-image/resolve",method="GET",status="401"}"#).as_deref(),
        Some("1")
    );
    // Made-up paths share one series, never one each.
    assert_eq!(
        sample(r#"pinion_http_requests_total{route="unmatched",method="GET",status="404"}"#)
            .as_deref(),
        Some("2")
    );
    assert!(!text.contains("/no/such/path"));
    // The route as registered, not the name in the path.
    assert!(
        text.contains(r#"pinion_http_requests_total{route="/cp/admin/tokens/{name}",method="GET",status="405"} 1"#),
        "{text}"
    );
    assert!(!text.contains("someone"));
    assert_eq!(
        sample(r#"pinion_http_request_duration_seconds_count{route="/cp/runtime-image/resolve"}"#)
            .as_deref(),
        Some("4")
    );
    assert_eq!(
        sample(r#"pinion_http_request_duration_seconds_bucket{route="/cp/runtime-image/resolve",le="+Inf"}"#).as_deref(),
        Some("4")
    );
    // And promtool's own check (Debian's `prometheus` package; `cargo
    // xtask test` installs it).
    let output = promtool_check(&text)
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    assert!(
        output.status.success(),
        "promtool check metrics: {output:?}"
    );
}

/// `promtool check metrics` over `text`.
fn promtool_check(text: &str) -> std::io::Result<std::process::Output> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    child.wait_with_output()
}
