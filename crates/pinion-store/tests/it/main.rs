//! The store against real SQLite files in temporary directories.

// Tests fail by panicking; helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used)]

use pinion_core::{Digest, Region, Repository, Scope, TemplateName, TokenName};
use pinion_store::{
    DatabaseUrl, NewToken, PromoteOutcome, Promotion, RuntimeRecord, Store, StoreError,
};
use time::OffsetDateTime;

fn digest(n: u8) -> Digest {
    Digest::from_sha256(&[n; 32])
}

fn open(dir: &tempfile::TempDir) -> Store {
    let url =
        DatabaseUrl::parse(&format!("sqlite://{}", dir.path().join("p.db").display())).unwrap();
    Store::open(&url).unwrap()
}

fn promotion(template: &str, region: &str, digest: Digest) -> Promotion {
    Promotion {
        template: TemplateName::parse(template).unwrap(),
        region: Region::parse(region).unwrap(),
        digest,
        git_sha: None,
        notes: None,
        actor: TokenName::parse("ci").unwrap(),
        at: OffsetDateTime::now_utc(),
    }
}

fn add_template(store: &mut Store, name: &str, pinnable: bool) {
    let runtime = RuntimeRecord {
        name: TemplateName::parse(name).unwrap(),
        repository: Some(Repository::parse(&format!("localhost:5000/{name}")).unwrap()),
        pinnable,
    };
    store
        .put_runtime(&runtime, OffsetDateTime::now_utc())
        .unwrap();
}

#[test]
fn promote_moves_then_reports_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    add_template(&mut store, "codex", true);

    let first = store
        .promote(&promotion("codex", "global", digest(1)))
        .unwrap();
    assert!(matches!(
        first,
        PromoteOutcome::Moved { previous: None, .. }
    ));
    let again = store
        .promote(&promotion("codex", "global", digest(1)))
        .unwrap();
    assert!(matches!(again, PromoteOutcome::Unchanged { .. }));
    let moved = store
        .promote(&promotion("codex", "global", digest(2)))
        .unwrap();
    match moved {
        PromoteOutcome::Moved { pin, previous } => {
            assert_eq!(previous, Some(digest(1)));
            assert_eq!(pin.digest, digest(2));
        }
        other => panic!("expected a move, got {other:?}"),
    }
    let snapshot = store.snapshot().unwrap();
    assert_eq!(snapshot.pins.len(), 1);
    assert_eq!(snapshot.pins[0].digest, digest(2));
}

#[test]
fn promote_refuses_unknown_and_unpinnable_templates_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    add_template(&mut store, "frozen", false);
    assert_eq!(
        store
            .promote(&promotion("codx", "global", digest(1)))
            .unwrap(),
        PromoteOutcome::UnknownTemplate
    );
    assert_eq!(
        store
            .promote(&promotion("frozen", "global", digest(1)))
            .unwrap(),
        PromoteOutcome::NotPinnable
    );
    assert!(store.snapshot().unwrap().pins.is_empty());
}

#[test]
fn state_survives_reopening_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        store
            .promote(&promotion("codex", "eu-west-1", digest(7)))
            .unwrap();
    }
    let mut store = open(&dir);
    let snapshot = store.snapshot().unwrap();
    assert_eq!(snapshot.runtimes.len(), 1);
    assert_eq!(snapshot.pins[0].region.as_str(), "eu-west-1");
    assert_eq!(snapshot.pins[0].digest, digest(7));
}

#[test]
fn pins_are_ordered_by_template_then_region() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    for name in ["zeta", "alpha"] {
        add_template(&mut store, name, true);
        for region in ["us-east-2", "global", "eu-west-1"] {
            store.promote(&promotion(name, region, digest(3))).unwrap();
        }
    }
    let order: Vec<String> = store
        .snapshot()
        .unwrap()
        .pins
        .iter()
        .map(|pin| format!("{}/{}", pin.template, pin.region))
        .collect();
    assert_eq!(
        order,
        [
            "alpha/eu-west-1",
            "alpha/global",
            "alpha/us-east-2",
            "zeta/eu-west-1",
            "zeta/global",
            "zeta/us-east-2"
        ]
    );
}

fn token(name: &str, hash: u8) -> NewToken {
    NewToken {
        name: TokenName::parse(name).unwrap(),
        scope: Scope::Promote,
        templates: Some(vec![TemplateName::parse("codex").unwrap()]),
        secret_hash: [hash; 32],
        created_at: OffsetDateTime::now_utc(),
    }
}

#[test]
fn token_names_are_unique_among_active_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store.create_token(&token("ci", 1)).unwrap();
    assert!(matches!(
        store.create_token(&token("ci", 2)),
        Err(StoreError::TokenNameTaken(_))
    ));
    let name = TokenName::parse("ci").unwrap();
    assert!(
        store
            .revoke_token(&name, OffsetDateTime::now_utc())
            .unwrap()
    );
    assert!(
        !store
            .revoke_token(&name, OffsetDateTime::now_utc())
            .unwrap()
    );
    store.create_token(&token("ci", 3)).unwrap();

    let all = store.tokens().unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].revoked_at.is_some());
    let active = store.snapshot().unwrap().tokens;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].secret_hash, [3; 32]);
    assert_eq!(active[0].templates.as_ref().unwrap()[0].as_str(), "codex");
}

#[test]
fn data_version_moves_when_another_connection_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = open(&dir);
    let reader = open(&dir);
    let before = reader.data_version().unwrap();
    add_template(&mut writer, "codex", true);
    assert_ne!(reader.data_version().unwrap(), before);
}

#[test]
fn refuses_a_database_from_a_newer_pinion() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    let raw = bump_schema_version(&dir);
    assert!(raw, "bumped the schema version");
    let url =
        DatabaseUrl::parse(&format!("sqlite://{}", dir.path().join("p.db").display())).unwrap();
    assert!(matches!(
        Store::open(&url),
        Err(StoreError::SchemaTooNew { .. })
    ));
}

/// Raises the schema version with the sqlite3 shell, as a newer release would.
fn bump_schema_version(dir: &tempfile::TempDir) -> bool {
    std::process::Command::new("sqlite3")
        .arg(dir.path().join("p.db"))
        .arg("PRAGMA user_version = 999;")
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}
