//! Tokens over HTTP: an admin makes, lists and revokes tokens without the
//! database; a made token works at once, stops at its expiry or its
//! revocation, and never grants more than the token that made it. The
//! secret is shown once.

use std::time::Duration;

use crate::support::{Env, Response, Server, eventually, http, register_secret};

const TOKENS: &str = "/cp/admin/tokens";

fn create(server: &Server, token: &str, body: &str) -> Response {
    let answer = server.post(TOKENS, token, body);
    if answer.status == 201 {
        register_secret(answer.json()["secret"].as_str().unwrap());
    }
    answer
}

fn pins(server: &Server, token: &str) -> u16 {
    server.get("/cp/admin/runtime-image", token).status
}

#[test]
fn an_admin_makes_uses_and_revokes_tokens_over_http() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    env.add_template("hermes", "registry.example.com/hermes");
    let admin = env.token("platform", "admin", &[]);
    let read = env.token("viewer", "read", &[]);
    let server = Server::start(&env.database(), &[]);

    // Only an admin.
    let refused = server.post(TOKENS, &read, r#"{"name":"x","scope":"read"}"#);
    assert_eq!(refused.status, 403, "{refused:?}");

    let made = create(&server, &admin, r#"{"name":"dashboard","scope":"read"}"#);
    assert_eq!(made.status, 201, "{made:?}");
    let body = made.json();
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("pinion_"), "{body}");
    assert_eq!(body["token"]["name"], "dashboard");
    assert_eq!(body["token"]["scope"], "read");
    assert_eq!(body["token"]["created_by"], "platform");
    assert!(body["token"]["templates"].is_null());
    // It works at once, and only as what it is.
    assert_eq!(pins(&server, &secret), 200);
    let promote = server.post(
        "/cp/admin/runtime-image/promote",
        &secret,
        &format!(
            r#"{{"template_name":"codex","image_digest":"sha256:{}"}}"#,
            "a".repeat(64)
        ),
    );
    assert_eq!(promote.status, 403, "{promote:?}");

    // Listed without any secret; the name is taken while it is active.
    let listed = server.get(TOKENS, &admin);
    assert_eq!(listed.status, 200, "{listed:?}");
    assert!(!listed.body.contains(&secret));
    assert!(!listed.body.contains("secret"), "{listed:?}");
    let names: Vec<String> = listed.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|token| token["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["platform", "viewer", "dashboard"]);
    let again = create(&server, &admin, r#"{"name":"dashboard","scope":"read"}"#);
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(again.error_code(), "token_name_taken");

    // Hostile input writes nothing.
    for (body, code) in [
        (
            r#"{"name":"bad name","scope":"read"}"#,
            "invalid_token_name",
        ),
        (r#"{"name":"ok","scope":"root"}"#, "invalid_scope"),
        (
            r#"{"name":"ok","scope":"read","templates":[]}"#,
            "invalid_template_name",
        ),
        (
            r#"{"name":"ok","scope":"read","expires_at":"tomorrow"}"#,
            "invalid_expires_at",
        ),
        (
            r#"{"name":"ok","scope":"read","expires_at":"2001-01-01T00:00:00Z"}"#,
            "invalid_expires_at",
        ),
        (
            r#"{"name":"ok","scope":"read","secret":"pinion_00"}"#,
            "invalid_request",
        ),
    ] {
        let answer = create(&server, &admin, body);
        assert_eq!(answer.status, 422, "{body}: {answer:?}");
        assert_eq!(answer.error_code(), code, "{body}");
    }

    // Expiry is enforced.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let brief = create(
        &server,
        &admin,
        &format!(r#"{{"name":"brief","scope":"read","expires_at":"{soon}"}}"#),
    );
    assert_eq!(brief.status, 201, "{brief:?}");
    let brief_secret = brief.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(pins(&server, &brief_secret), 200);
    eventually("the token expires", Duration::from_secs(5), || {
        pins(&server, &brief_secret) == 401
    });
    let expired = server.get("/cp/admin/runtime-image", &brief_secret);
    assert!(expired.body.contains("expired"), "{expired:?}");

    // Revoked: refused at once on this server; revoking again is 404.
    let revoke = |name: &str, token: &str| {
        http(
            server.addr,
            "DELETE",
            &format!("{TOKENS}/{name}"),
            Some(token),
            None,
        )
    };
    assert_eq!(revoke("dashboard", &admin).status, 204);
    assert_eq!(pins(&server, &secret), 401);
    let missing = revoke("dashboard", &admin);
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.error_code(), "token_not_found");

    // Both are in the change feed, without the secret.
    let events = server.get("/cp/events?type=token.created&type=token.revoked", &admin);
    assert!(!events.body.contains(&secret));
    let kinds: Vec<String> = events.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            format!(
                "{} {}",
                event["type"].as_str().unwrap(),
                event["data"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "token.created dashboard",
            "token.created brief",
            "token.revoked dashboard"
        ]
    );
}

#[test]
fn a_token_never_grants_more_than_the_token_that_makes_it() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    env.add_template("hermes", "registry.example.com/hermes");
    let admin = env.token("platform", "admin", &[]);
    let codex_admin = env.token("codex-lead", "admin", &["codex"]);
    let server = Server::start(&env.database(), &[]);

    for body in [
        r#"{"name":"wide","scope":"read"}"#,
        r#"{"name":"other","scope":"read","templates":["hermes"]}"#,
        r#"{"name":"mixed","scope":"promote","templates":["codex","hermes"]}"#,
    ] {
        let answer = create(&server, &codex_admin, body);
        assert_eq!(answer.status, 403, "{body}: {answer:?}");
    }
    let made = create(
        &server,
        &codex_admin,
        r#"{"name":"codex-ci","scope":"promote","templates":["codex"]}"#,
    );
    assert_eq!(made.status, 201, "{made:?}");
    let codex_ci = made.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(pins(&server, &codex_ci), 200);

    // A restricted admin sees and revokes only tokens within its grant.
    let listed = server.get(TOKENS, &codex_admin).json();
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|token| token["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["codex-lead", "codex-ci"]);
    let revoke = |name: &str, token: &str| {
        http(
            server.addr,
            "DELETE",
            &format!("{TOKENS}/{name}"),
            Some(token),
            None,
        )
    };
    assert_eq!(revoke("platform", &codex_admin).status, 404);
    assert_eq!(pins(&server, &admin), 200, "the wider token still works");
    assert_eq!(revoke("codex-ci", &codex_admin).status, 204);
    assert_eq!(pins(&server, &codex_ci), 401);

    // A token that expires makes only tokens that expire no later.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::minutes(10))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let later = (time::OffsetDateTime::now_utc() + time::Duration::minutes(20))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let temporary = create(
        &server,
        &admin,
        &format!(r#"{{"name":"temp-admin","scope":"admin","expires_at":"{soon}"}}"#),
    );
    assert_eq!(temporary.status, 201, "{temporary:?}");
    let temporary = temporary.json()["secret"].as_str().unwrap().to_owned();
    for body in [
        r#"{"name":"forever","scope":"read"}"#.to_owned(),
        format!(r#"{{"name":"longer","scope":"read","expires_at":"{later}"}}"#),
    ] {
        let answer = create(&server, &temporary, &body);
        assert_eq!(answer.status, 403, "{body}: {answer:?}");
    }
    let within = create(
        &server,
        &temporary,
        &format!(r#"{{"name":"within","scope":"read","expires_at":"{soon}"}}"#),
    );
    assert_eq!(within.status, 201, "{within:?}");
}
