//! Offline changes (`pinion token …`, `pinion template add` against the
//! database of a running server) take effect live, without a restart.

use std::time::{Duration, Instant};

use crate::support::{Fixture, digest};

/// Polls until `check` holds, for at most five seconds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within 5s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tokens_created_and_revoked_offline_take_effect_live() {
    let fixture = Fixture::new();
    let late = fixture.env.token("late", "read", &[]);
    eventually("the new token is accepted", || {
        fixture.server.get("/cp/admin/runtime-image", &late).status == 200
    });
    let out = crate::support::run(crate::support::pinion().args([
        "token",
        "revoke",
        "late",
        "--database",
        &fixture.env.database(),
    ]));
    assert_eq!(out.code, 0);
    eventually("the revoked token is refused", || {
        fixture.server.get("/cp/admin/runtime-image", &late).status == 401
    });
}

#[test]
fn templates_added_offline_take_effect_live() {
    let fixture = Fixture::new();
    let body = format!(
        r#"{{"template_name":"claude-code","image_digest":"{}"}}"#,
        digest(1)
    );
    let refused = fixture
        .server
        .post("/cp/admin/runtime-image/promote", &fixture.promote, &body);
    assert_eq!(refused.error_code(), "unknown_template");
    fixture
        .env
        .add_template("claude-code", "localhost:5000/claude-code");
    eventually("the new template is promotable", || {
        fixture
            .server
            .post("/cp/admin/runtime-image/promote", &fixture.promote, &body)
            .status
            == 201
    });
    let resolved = fixture
        .server
        .get(
            "/cp/runtime-image/resolve?template_name=claude-code",
            &fixture.read,
        )
        .json();
    assert_eq!(
        resolved["image_ref"],
        format!("localhost:5000/claude-code@{}", digest(1))
    );
}
