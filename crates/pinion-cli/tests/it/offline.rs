//! Offline changes (`pinion token …`, `pinion template add` against the
//! database of a running server) take effect live, without a restart.

use std::time::Duration;

use crate::support::{Fixture, digest};

/// Polls until `check` holds, for at most five seconds.
fn eventually(what: &str, check: impl FnMut() -> bool) {
    crate::support::eventually(what, Duration::from_secs(5), check);
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

/// An offline command never quietly makes a new, empty database: the first
/// `template add` says it created one, and reads refuse a missing one.
#[test]
fn a_new_database_is_announced_and_a_missing_one_is_not_made_by_reads() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("new.db").display());
    for read in [vec!["token", "list"], vec!["token", "revoke", "ci"]] {
        let out = crate::support::run(
            crate::support::pinion()
                .args(&read)
                .args(["--database", &url]),
        );
        assert_eq!(out.code, 2, "{read:?}: {out:?}");
        assert!(out.reason().contains("no database at"), "{out:?}");
        assert!(
            !dir.path().join("new.db").exists(),
            "{read:?} made a database"
        );
    }
    let add = |name: &str| {
        crate::support::run(crate::support::pinion().args([
            "template",
            "add",
            name,
            "--repository",
            "localhost:5000/x",
            "--database",
            &url,
        ]))
    };
    let first = add("codex");
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stderr.contains("created new database"), "{first:?}");
    let second = add("hermes");
    assert_eq!(second.code, 0, "{second:?}");
    assert!(
        !second.stderr.contains("created new database"),
        "{second:?}"
    );
}
