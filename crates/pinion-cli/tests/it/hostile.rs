//! Hostile HTTP input gets a 4xx with the contract's error body: never a 5xx,
//! never a crash, and the pin does not move.

use crate::support::{Fixture, digest, http, raw_http};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";

#[test]
fn hostile_bodies_get_4xx_and_change_nothing() {
    let fixture = Fixture::new();
    let before = digest(1);
    let body = format!(r#"{{"template_name":"codex","image_digest":"{before}"}}"#);
    assert_eq!(
        fixture.server.post(PROMOTE, &fixture.promote, &body).status,
        201
    );
    let d = digest(2);
    // 100,000 levels is over the body limit; 30,000 fits under it and
    // reaches the parser's recursion limit instead.
    let too_deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let deep_array = "[".repeat(30_000) + &"]".repeat(30_000);
    let deep_object = r#"{"template_name":"#.to_owned() + &"[".repeat(30_000);
    let deep_value = format!(
        r#"{{"template_name":"codex","image_digest":"{d}","notes":{}{}}}"#,
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let cases: Vec<(String, u16, &str)> = vec![
        ("not json".into(), 400, "malformed_json"),
        ("".into(), 400, "malformed_json"),
        ("{".into(), 400, "malformed_json"),
        ("\u{0}\u{1}".into(), 400, "malformed_json"),
        ("null".into(), 400, "body_not_object"),
        ("[]".into(), 400, "body_not_object"),
        (r#""codex""#.into(), 400, "body_not_object"),
        (
            format!(r#"{{"template_name":1,"image_digest":"{d}"}}"#),
            422,
            "invalid_request",
        ),
        (
            format!(r#"{{"template_name":"codex","image_digest":["{d}"]}}"#),
            422,
            "invalid_request",
        ),
        (
            format!(r#"{{"template_name":"codex","image_digest":"{d}","region":false}}"#),
            422,
            "invalid_request",
        ),
        (
            r#"{"template_name":"codex"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            format!(r#"{{"image_digest":"{d}"}}"#),
            422,
            "invalid_request",
        ),
        (
            format!(r#"{{"template_name":"codex","image_digest":"{d}","admin":true}}"#),
            422,
            "invalid_request",
        ),
        (
            format!(r#"{{"template_name":"codex ","image_digest":"{d}"}}"#),
            422,
            "invalid_template_name",
        ),
        (
            format!(r#"{{"template_name":"../codex","image_digest":"{d}"}}"#),
            422,
            "invalid_template_name",
        ),
        (
            format!(r#"{{"template_name":"codex'--","image_digest":"{d}"}}"#),
            422,
            "invalid_template_name",
        ),
        (
            format!(r#"{{"template_name":"codex","image_digest":"{d}","region":"EU"}}"#),
            422,
            "invalid_region",
        ),
        (
            format!(r#"{{"template_name":"codex","image_digest":"{d}","git_sha":"main"}}"#),
            422,
            "invalid_git_sha",
        ),
        (
            format!(r#"{{"template_name":"codex","image_digest":"{d}","notes":"a\rb"}}"#),
            422,
            "invalid_notes",
        ),
        (
            format!(
                r#"{{"template_name":"codex","image_digest":"{d}","notes":"{}"}}"#,
                "x".repeat(5000)
            ),
            422,
            "invalid_notes",
        ),
        (too_deep, 413, "payload_too_large"),
        (deep_array, 400, "body_not_object"),
        (deep_object, 422, "invalid_request"),
        (deep_value, 422, "invalid_request"),
    ];
    for (body, status, code) in &cases {
        let response = fixture.server.post(PROMOTE, &fixture.promote, body);
        assert_eq!(
            response.status,
            *status,
            "body {:?}: {response:?}",
            &body[..body.len().min(60)]
        );
        assert_eq!(
            response.error_code(),
            *code,
            "body {:?}",
            &body[..body.len().min(60)]
        );
    }
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        Some(before.clone())
    );
}

#[test]
fn a_ten_megabyte_body_is_refused_with_413() {
    let fixture = Fixture::new();
    let d = digest(2);
    let huge = format!(
        r#"{{"template_name":"codex","image_digest":"{d}","notes":"{}"}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    let response = http(
        fixture.server.addr,
        "POST",
        PROMOTE,
        Some(&fixture.promote),
        Some(huge.as_bytes()),
    );
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.error_code(), "payload_too_large");
    assert_eq!(
        fixture.server.pinned(&fixture.read, "codex", "global"),
        None
    );
    // Without a length up front: chunked, so the limit is enforced while reading.
    let head = format!(
        "POST {PROMOTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        fixture.promote
    );
    let chunk = "y".repeat(1024 * 1024);
    let mut body = String::new();
    for _ in 0..10 {
        body.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    body.push_str("0\r\n\r\n");
    let chunked = raw_http(fixture.server.addr, head.as_bytes(), body.as_bytes());
    assert_eq!(chunked.status, 413, "{chunked:?}");
    assert_eq!(chunked.error_code(), "payload_too_large");
}

#[test]
fn wrong_methods_and_paths_get_the_error_body() {
    let fixture = Fixture::new();
    let addr = fixture.server.addr;
    for (method, path, status, code) in [
        ("GET", PROMOTE, 405, "method_not_allowed"),
        (
            "DELETE",
            "/cp/admin/runtime-image",
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/cp/runtime-image/resolve",
            405,
            "method_not_allowed",
        ),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("GET", "/cp/admin/runtimes/codex", 405, "method_not_allowed"),
        ("GET", "/nope", 404, "not_found"),
        (
            "GET",
            "/cp/admin/runtime-image/../../etc/passwd",
            404,
            "not_found",
        ),
    ] {
        let response = http(addr, method, path, Some(&fixture.admin), None);
        assert_eq!(response.status, status, "{method} {path}: {response:?}");
        assert_eq!(response.error_code(), code, "{method} {path}");
    }
    let garbage = raw_http(addr, b"BLAH /\r\n\r\n", b"");
    assert!((400..500).contains(&garbage.status), "{garbage:?}");
    let health = http(addr, "GET", "/healthz", None, None);
    assert_eq!(health.status, 200, "still serving after the abuse");
}

#[test]
fn hostile_query_strings_and_paths() {
    let fixture = Fixture::new();
    for query in [
        "template_name=%00",
        "template_name=codex%0A",
        "template_name=C0DEX",
        "template_name=codex&region=%27%3B--",
        "template_name=%FF%FE",
        "region=global",
    ] {
        let response = fixture
            .server
            .get(&format!("/cp/runtime-image/resolve?{query}"), &fixture.read);
        assert_eq!(response.status, 422, "{query}: {response:?}");
        assert!(response.error_code().starts_with("invalid_"), "{query}");
    }
    let response = http(
        fixture.server.addr,
        "PUT",
        "/cp/admin/runtimes/%FF",
        Some(&fixture.admin),
        Some(b"{}"),
    );
    assert!((400..500).contains(&response.status), "{response:?}");
    response.error_code();
}
