//! The HTTP API per the contract: promote, list, resolve, catalog, health.

use crate::support::{Env, Fixture, Server, digest, http};

fn promote_body(template: &str, digest: &str, region: Option<&str>) -> String {
    match region {
        Some(region) => format!(
            r#"{{"template_name":"{template}","image_digest":"{digest}","region":"{region}"}}"#
        ),
        None => format!(r#"{{"template_name":"{template}","image_digest":"{digest}"}}"#),
    }
}

#[test]
fn promote_answers_201_then_200_and_returns_the_stored_pin() {
    let fixture = Fixture::new();
    let path = "/cp/admin/runtime-image/promote";
    let body = promote_body("codex", &digest(1), Some("us-east-2"));
    let first = fixture.server.post(path, &fixture.promote, &body);
    assert_eq!(first.status, 201, "{first:?}");
    let pin = &first.json()["pin"];
    assert_eq!(pin["template_name"], "codex");
    assert_eq!(pin["region"], "us-east-2");
    assert_eq!(pin["image_digest"], digest(1));
    assert_eq!(pin["promoted_by"], "ci");
    assert_eq!(pin["git_sha"], serde_json::Value::Null);
    let promoted_at = pin["promoted_at"].as_str().unwrap();
    assert!(
        promoted_at.ends_with('Z') && promoted_at.contains('T'),
        "{promoted_at}"
    );

    let again = fixture.server.post(path, &fixture.promote, &body);
    assert_eq!(again.status, 200);
    assert_eq!(
        again.json()["pin"]["promoted_at"],
        promoted_at,
        "nothing was written"
    );
    assert!(first.header("x-request-id").is_some());
}

#[test]
fn resolve_falls_back_to_global_and_never_to_a_tag() {
    let fixture = Fixture::new();
    let path = "/cp/admin/runtime-image/promote";
    let resolve = |region: &str| {
        fixture.server.get(
            &format!("/cp/runtime-image/resolve?template_name=codex&region={region}"),
            &fixture.read,
        )
    };
    let missing = resolve("eu-west-1");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "runtime_pin_missing");

    assert_eq!(
        fixture
            .server
            .post(
                path,
                &fixture.promote,
                &promote_body("codex", &digest(1), None)
            )
            .status,
        201
    );
    let fallback = resolve("eu-west-1").json();
    assert_eq!(fallback["region"], "eu-west-1");
    assert_eq!(fallback["matched_region"], "global");
    assert_eq!(fallback["image_digest"], digest(1));
    assert_eq!(
        fallback["image_ref"],
        format!(
            "registry.example.com/team/workspace-template-codex@{}",
            digest(1)
        )
    );

    assert_eq!(
        fixture
            .server
            .post(
                path,
                &fixture.promote,
                &promote_body("codex", &digest(2), Some("eu-west-1"))
            )
            .status,
        201
    );
    let own = resolve("eu-west-1").json();
    assert_eq!(own["matched_region"], "eu-west-1");
    assert_eq!(own["image_digest"], digest(2));
    let global = fixture
        .server
        .get(
            "/cp/runtime-image/resolve?template_name=codex",
            &fixture.read,
        )
        .json();
    assert_eq!(global["region"], "global");
    assert_eq!(global["image_digest"], digest(1));

    let bad = resolve("EU");
    assert_eq!(bad.status, 422);
    assert_eq!(bad.error_code(), "invalid_region");
}

#[test]
fn list_is_ordered_and_filtered() {
    let fixture = Fixture::new();
    let path = "/cp/admin/runtime-image/promote";
    for (template, region, n) in [
        ("hermes", "global", 1),
        ("codex", "us-east-2", 2),
        ("codex", "global", 3),
        ("hermes", "ap-south-1", 4),
    ] {
        let body = promote_body(template, &digest(n), Some(region));
        assert_eq!(
            fixture.server.post(path, &fixture.promote, &body).status,
            201
        );
    }
    let rows = |query: &str| -> Vec<String> {
        let response = fixture
            .server
            .get(&format!("/cp/admin/runtime-image{query}"), &fixture.read);
        assert_eq!(response.status, 200, "{response:?}");
        response.json()["pins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pin| {
                format!(
                    "{}/{}",
                    pin["template_name"].as_str().unwrap(),
                    pin["region"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        rows(""),
        [
            "codex/global",
            "codex/us-east-2",
            "hermes/ap-south-1",
            "hermes/global"
        ]
    );
    assert_eq!(
        rows("?template_name=hermes"),
        ["hermes/ap-south-1", "hermes/global"]
    );
    assert_eq!(rows("?region=global"), ["codex/global", "hermes/global"]);
    assert_eq!(
        rows("?template_name=codex&region=us-east-2"),
        ["codex/us-east-2"]
    );
    // A parameter that is there must parse: empty is not "no filter".
    let empty = fixture.server.get(
        "/cp/admin/runtime-image?template_name=&region=",
        &fixture.read,
    );
    assert_eq!(empty.status, 422, "{empty:?}");
    assert_eq!(empty.error_code(), "invalid_template_name");
    assert!(rows("?template_name=nothing").is_empty());
}

#[test]
fn catalog_put_and_get_with_admin_scope_only() {
    let fixture = Fixture::new();
    let body = r#"{"image": "registry.example.com/team/workspace-template-claude-code", "pinnable": true}"#;
    let put = |token: &str, name: &str, body: &str| {
        http(
            fixture.server.addr,
            "PUT",
            &format!("/cp/admin/runtimes/{name}"),
            Some(token),
            Some(body.as_bytes()),
        )
    };
    let refused = put(&fixture.promote, "claude-code", body);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code(), "forbidden");

    let created = put(&fixture.admin, "claude-code", body);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["runtime"]["name"], "claude-code");
    let updated = put(
        &fixture.admin,
        "claude-code",
        r#"{"image": "localhost:5000/cc", "pinnable": false}"#,
    );
    assert_eq!(updated.status, 200);

    let listed = fixture.server.get("/cp/runtimes", &fixture.read).json();
    let runtimes = listed["runtimes"].as_array().unwrap();
    let names: Vec<&str> = runtimes
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["claude-code", "codex", "hermes"]);
    assert_eq!(runtimes[0]["image"], "localhost:5000/cc");
    assert_eq!(runtimes[0]["pinnable"], false);

    let not_pinnable = fixture.server.post(
        "/cp/admin/runtime-image/promote",
        &fixture.promote,
        &promote_body("claude-code", &digest(1), None),
    );
    assert_eq!(not_pinnable.status, 422);
    assert_eq!(not_pinnable.error_code(), "template_not_pinnable");

    for (name, body, code) in [
        ("Bad_Name", body, "invalid_template_name"),
        ("ok", r#"{"image": "Registry/Upper"}"#, "invalid_repository"),
        ("ok", r#"{"image": "x:tag"}"#, "invalid_repository"),
        ("ok", r#"{"image": 7}"#, "invalid_request"),
        ("ok", "{", "malformed_json"),
    ] {
        let response = put(&fixture.admin, name, body);
        assert_eq!(response.error_code(), code, "{name} {body}");
    }
    let after = fixture.server.get("/cp/runtimes", &fixture.read).json();
    assert_eq!(
        after["runtimes"].as_array().unwrap().len(),
        3,
        "refusals changed nothing"
    );
}

#[test]
fn template_with_no_repository_has_a_null_image_ref() {
    let fixture = Fixture::new();
    let put = http(
        fixture.server.addr,
        "PUT",
        "/cp/admin/runtimes/bare",
        Some(&fixture.admin),
        Some(br#"{"image": null}"#),
    );
    assert_eq!(put.status, 201, "{put:?}");
    let promoted = fixture.server.post(
        "/cp/admin/runtime-image/promote",
        &fixture.promote,
        &promote_body("bare", &digest(5), None),
    );
    assert_eq!(promoted.status, 201);
    assert_eq!(promoted.json()["pin"]["image_ref"], serde_json::Value::Null);
}

#[test]
fn tokens_restricted_to_templates_see_and_touch_only_those() {
    let env = Env::new();
    env.add_template("codex", "localhost:5000/codex");
    env.add_template("hermes", "localhost:5000/hermes");
    let codex_only = env.token("codex-ci", "promote", &["codex"]);
    let admin = env.token("admin", "admin", &[]);
    let server = env.start();
    let path = "/cp/admin/runtime-image/promote";
    assert_eq!(
        server
            .post(path, &admin, &promote_body("hermes", &digest(1), None))
            .status,
        201
    );
    assert_eq!(
        server
            .post(path, &codex_only, &promote_body("codex", &digest(2), None))
            .status,
        201
    );
    let refused = server.post(path, &codex_only, &promote_body("hermes", &digest(3), None));
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code(), "forbidden");
    assert_eq!(server.pinned(&admin, "hermes", "global"), Some(digest(1)));

    let listed = server.get("/cp/admin/runtime-image", &codex_only).json();
    assert_eq!(listed["pins"].as_array().unwrap().len(), 1);
    let resolve = server.get(
        "/cp/runtime-image/resolve?template_name=hermes",
        &codex_only,
    );
    assert_eq!(resolve.status, 403);
}

#[test]
fn auth_errors_are_401_with_the_contract_body() {
    let fixture = Fixture::new();
    let addr = fixture.server.addr;
    let path = "/cp/admin/runtime-image";
    let none = http(addr, "GET", path, None, None);
    assert_eq!(
        (none.status, none.error_code().as_str()),
        (401, "unauthorized")
    );
    let wrong = http(addr, "GET", path, Some("pinion_0000"), None);
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (401, "unauthorized")
    );
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Zm9vOmJhcg==\r\nConnection: close\r\n\r\n"
    );
    let basic = crate::support::raw_http(addr, head.as_bytes(), b"");
    assert_eq!(basic.status, 401);
    assert_eq!(basic.error_code(), "unauthorized");
}

#[test]
fn health_and_readiness() {
    let fixture = Fixture::new();
    let health = http(fixture.server.addr, "GET", "/healthz", None, None);
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = http(fixture.server.addr, "GET", "/readyz", None, None);
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (200, Some("ready"))
    );
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let env = Env::new();
    let server = Server::start(&env.database(), &[]);
    let logs = server.logs.clone();
    assert_eq!(server.terminate(), Some(0));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let logs = logs.lock().unwrap();
    assert!(
        logs.iter().any(|line| line.contains("shutting down")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|line| line.contains("stopped")), "{logs:?}");
}

#[test]
fn every_answer_carries_a_request_id_and_a_plain_caller_id_is_kept() {
    let fixture = Fixture::new();
    let addr = fixture.server.addr;
    let get = |extra: &str| {
        let head = format!(
            "GET /cp/runtimes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n{extra}Connection: close\r\n\r\n",
            fixture.read
        );
        crate::support::raw_http(addr, head.as_bytes(), b"")
    };
    let kept = get("X-Request-Id: deploy-42.a_b\r\n");
    assert_eq!(kept.status, 200);
    assert_eq!(kept.header("x-request-id"), Some("deploy-42.a_b"));

    // Made up here: distinct per request, and never the unsafe value sent.
    let first = get("X-Request-Id: has space\r\n");
    let second = get(&format!("X-Request-Id: {}\r\n", "a".repeat(65)));
    let made: Vec<String> = [&first, &second]
        .iter()
        .map(|answer| answer.header("x-request-id").expect("an id").to_owned())
        .collect();
    assert_ne!(made[0], made[1]);
    for id in &made {
        assert!(
            id.len() <= 25 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{id}"
        );
    }
    // Errors made by routing carry one too, with the contract's body.
    let missing = crate::support::raw_http(
        addr,
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "not_found");
    assert!(missing.header("x-request-id").is_some());
}

#[test]
fn resolve_decodes_percent_and_plus_in_the_query() {
    let fixture = Fixture::new();
    let promoted = fixture.server.post(
        "/cp/admin/runtime-image/promote",
        &fixture.promote,
        &promote_body("codex", &digest(1), None),
    );
    assert_eq!(promoted.status, 201);
    let resolved = fixture.server.get(
        "/cp/runtime-image/resolve?template%5Fname=co%64ex&region=eu%2Dwest-1",
        &fixture.read,
    );
    assert_eq!(resolved.status, 200, "{resolved:?}");
    assert_eq!(resolved.json()["region"], "eu-west-1");
    assert_eq!(resolved.json()["image_digest"], digest(1));
    // `+` is a space once decoded, which no template name contains.
    let spaced = fixture.server.get(
        "/cp/runtime-image/resolve?template_name=co+dex",
        &fixture.read,
    );
    assert_eq!(spaced.status, 422);
    assert_eq!(spaced.error_code(), "invalid_template_name");
}

#[test]
fn serve_runs_the_number_of_http_workers_asked_for() {
    let env = Env::new();
    // The runtime's own count, as the server logs it at start.
    let workers = |server: &Server| {
        server
            .logs()
            .iter()
            .find_map(|line| {
                let count = line.split("answering HTTP on ").nth(1)?;
                count.split_whitespace().next()?.parse::<usize>().ok()
            })
            .expect("the start-up line with the worker count")
    };
    for asked in [1, 3] {
        let server = Server::start(&env.database(), &[("PINION_WORKERS", &asked.to_string())]);
        assert_eq!(workers(&server), asked);
        let answer = http(server.addr, "GET", "/healthz", None, None);
        assert_eq!(answer.status, 200);
    }
    let default = Server::start(&env.database(), &[]);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(
        workers(&default),
        (cores - 1).max(1),
        "one per core but one by default"
    );
    for bad in ["0", "many", "-1"] {
        let refused = crate::support::run(
            crate::support::pinion()
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--database",
                    &env.database(),
                ])
                .env("PINION_WORKERS", bad),
        );
        assert_eq!(refused.code, 2, "{bad}: {refused:?}");
        assert!(refused.stderr.contains("--workers"), "{refused:?}");
    }
}

#[test]
fn json_logs_are_one_object_a_line_and_a_request_finds_its_lines() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let ci = env.token("ci", "promote", &[]);
    let server = Server::start(&env.database(), &[("PINION_LOG_FORMAT", "json")]);
    let body = promote_body("codex", &digest(7), None);
    let head = format!(
        "POST /cp/admin/runtime-image/promote HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ci}\r\nX-Request-Id: t-1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let promoted = crate::support::raw_http(server.addr, head.as_bytes(), body.as_bytes());
    assert_eq!(promoted.status, 201, "{promoted:?}");
    let read = server.get("/cp/admin/runtime-image?template_name=codex", &ci);
    assert_eq!(read.status, 200);
    let logs = server.logs.clone();
    assert_eq!(server.terminate(), Some(0));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines = logs.lock().unwrap().clone();
    assert!(lines.len() > 3, "{lines:?}");
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect();
    for line in &parsed {
        assert!(
            line["level"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
    let answered: Vec<&serde_json::Value> = parsed
        .iter()
        .filter(|line| line["span"]["request_id"] == "t-1")
        .collect();
    assert!(!answered.is_empty(), "the request's lines: {lines:?}");
    let last = answered.last().unwrap();
    assert_eq!(last["message"], "answered", "{last}");
    assert_eq!(last["span"]["method"], "POST");
    assert_eq!(last["span"]["route"], "/cp/admin/runtime-image/promote");
    assert_eq!(last["span"]["actor"], "ci");
    assert_eq!(last["span"]["status"], 201);
    let elapsed = last["span"]["elapsed_ms"].as_f64().expect("a number");
    assert!(elapsed > 0.0 && elapsed < 10_000.0, "{last}");
    // Milliseconds to the microsecond: no float noise in the digits.
    let text = last["span"]["elapsed_ms"].to_string();
    assert!(
        text.split('.')
            .nth(1)
            .is_none_or(|decimals| decimals.len() <= 3),
        "{text}"
    );
    // Reads are logged too, each with its own id and route.
    assert!(
        parsed
            .iter()
            .any(|line| line["span"]["route"] == "/cp/admin/runtime-image"
                && line["span"]["method"] == "GET"
                && line["span"]["status"] == 200),
        "{lines:?}"
    );
}
