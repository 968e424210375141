//! The store against real SQLite files in temporary directories.

// Tests fail by panicking; helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used)]

use pinion_core::{
    Convergence, Digest, EventType, FleetCounts, InstanceId, NextStep, Region, Repository, Scope,
    TemplateName, TokenName, WebhookName, WebhookUrl,
};
use pinion_store::{
    Action, AttemptRecord, AuditEntry, AuditQuery, CiProvenance, DatabaseUrl, DeliveryState,
    DriftObservation, DueDelivery, EventPage, EventQuery, EventRecord, Expectation, Finish,
    FleetTransition, HistoryQuery, InstanceRecord, NewToken, PromoteOutcome, Promotion, Redelivery,
    Refusal, Rollback, RollbackOutcome, RuntimeRecord, Store, StoreError, WebhookPut,
    WebhookUpdate,
};
use time::OffsetDateTime;

fn digest(n: u8) -> Digest {
    Digest::from_sha256(&[n; 32])
}

/// A fresh, empty database of one engine: a SQLite file in a temporary
/// directory, or a PostgreSQL database created for this test and dropped
/// after it.
enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres { admin: String, name: String },
}

impl TestDb {
    fn url(&self) -> DatabaseUrl {
        match self {
            TestDb::Sqlite(dir) => {
                DatabaseUrl::parse(&format!("sqlite://{}", dir.path().join("p.db").display()))
                    .unwrap()
            }
            TestDb::Postgres { admin, name } => {
                DatabaseUrl::parse(&with_database(admin, name)).unwrap()
            }
        }
    }

    /// Runs SQL with the engine's own shell; returns whether it succeeded.
    fn exec_raw(&self, sql: &str) -> bool {
        let mut command = match self {
            TestDb::Sqlite(dir) => {
                let mut command = std::process::Command::new("sqlite3");
                command.arg(dir.path().join("p.db")).arg(sql);
                command
            }
            TestDb::Postgres { admin, name } => {
                let mut command = std::process::Command::new("psql");
                command.args([
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-q",
                    &with_database(admin, name),
                    "-c",
                    sql,
                ]);
                command
            }
        };
        command
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    }

    /// Raises the schema version, as a newer release would.
    fn bump_schema(&self) -> bool {
        match self {
            TestDb::Sqlite(_) => self.exec_raw("PRAGMA user_version = 999;"),
            TestDb::Postgres { .. } => self.exec_raw("UPDATE pinion_schema SET version = 999;"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { admin, name } = self {
            let _ = std::process::Command::new("psql")
                .args([
                    "-q",
                    admin.as_str(),
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .output();
        }
    }
}

/// `postgres://user@host:port/x` with the database part replaced.
fn with_database(admin: &str, name: &str) -> String {
    let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
    format!("{base}/{name}")
}

/// Both engines: a SQLite file, and a PostgreSQL database on the server
/// `PINION_TEST_POSTGRES_URL` names (an admin connection that may create
/// databases), else on the machine's own at 127.0.0.1:5432. No PostgreSQL
/// is a failure that says so, never a test that passes half run.
fn databases() -> Vec<TestDb> {
    let admin = std::env::var("PINION_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "pinion_store_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let created = std::process::Command::new("psql")
        .args(["-q", &admin, "-c", &format!("CREATE DATABASE {name}")])
        .output();
    let created = created.is_ok_and(|out| out.status.success());
    assert!(
        created,
        "the store suite runs on PostgreSQL too, and none let it create a database at \
         PINION_TEST_POSTGRES_URL or 127.0.0.1:5432; run `cargo xtask test`, which installs and starts one"
    );
    vec![
        TestDb::Sqlite(tempfile::tempdir().unwrap()),
        TestDb::Postgres { admin, name },
    ]
}

fn open(db: &TestDb) -> Store {
    Store::open(&db.url()).unwrap()
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
        ci: CiProvenance::default(),
        expect: Expectation::Any,
        build_sequence: None,
        force: false,
        may_override_hold: false,
        soak: pinion_core::Soak::NotRequired,
        soak_source: None,
        keep_canary: false,
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
    for dir in databases() {
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
}

#[test]
fn promote_refuses_unknown_and_unpinnable_templates_without_writing() {
    for dir in databases() {
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
}

#[test]
fn state_survives_reopening_and_migrations_are_idempotent() {
    for dir in databases() {
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
}

#[test]
fn pins_are_ordered_by_template_then_region() {
    for dir in databases() {
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
}

fn token(name: &str, hash: u8) -> NewToken {
    NewToken {
        name: TokenName::parse(name).unwrap(),
        scope: Scope::Promote,
        templates: Some(vec![TemplateName::parse("codex").unwrap()]),
        secret_hash: [hash; 32],
        created_at: OffsetDateTime::now_utc(),
        created_by: None,
        expires_at: None,
    }
}

#[test]
fn token_names_are_unique_among_active_tokens_only() {
    for dir in databases() {
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
}

#[test]
fn data_version_moves_when_another_connection_commits() {
    for dir in databases() {
        let mut writer = open(&dir);
        let mut reader = open(&dir);
        let before = reader.data_version().unwrap();
        add_template(&mut writer, "codex", true);
        assert_ne!(reader.data_version().unwrap(), before);
    }
}

#[test]
fn refuses_a_database_from_a_newer_pinion() {
    for dir in databases() {
        drop(open(&dir));
        assert!(dir.bump_schema(), "bumped the schema version");
        assert!(matches!(
            Store::open(&dir.url()),
            Err(StoreError::SchemaTooNew { .. })
        ));
    }
}

fn history(store: &mut Store, template: &str) -> Vec<pinion_store::HistoryEntry> {
    store
        .history(&HistoryQuery {
            template: Some(TemplateName::parse(template).unwrap()),
            limit: 1000,
            ..HistoryQuery::default()
        })
        .unwrap()
}

#[test]
fn every_move_appends_one_history_entry_in_a_linear_chain() {
    for dir in databases() {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        for n in [1, 2, 2, 3] {
            store
                .promote(&promotion("codex", "global", digest(n)))
                .unwrap();
        }
        let entries = history(&mut store, "codex");
        assert_eq!(entries.len(), 3, "the repeat wrote nothing");
        assert!(
            entries
                .windows(2)
                .all(|pair| pair[0].revision > pair[1].revision),
            "newest first"
        );
        assert_eq!(entries[2].from_digest, None);
        assert_eq!(entries[1].from_digest, Some(digest(1)));
        assert_eq!(entries[0].from_digest, Some(digest(2)));
        assert_eq!(entries[0].to_digest, digest(3));
        let pin = store.snapshot().unwrap().pins.remove(0);
        assert_eq!(pin.revision, entries[0].revision);
    }
}

#[test]
fn compare_and_swap_refuses_a_stale_expectation_without_writing() {
    for dir in databases() {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        let mut first = promotion("codex", "global", digest(1));
        first.expect = Expectation::Digest(digest(9));
        assert_eq!(
            store.promote(&first).unwrap(),
            PromoteOutcome::Conflict { current: None },
            "expecting a digest of a pin that does not exist"
        );
        store
            .promote(&promotion("codex", "global", digest(1)))
            .unwrap();
        let mut stale = promotion("codex", "global", digest(2));
        stale.expect = Expectation::Digest(digest(7));
        assert!(matches!(
            store.promote(&stale).unwrap(),
            PromoteOutcome::Conflict { current: Some(_) }
        ));
        let mut good = promotion("codex", "global", digest(2));
        good.expect = Expectation::Digest(digest(1));
        assert!(matches!(
            store.promote(&good).unwrap(),
            PromoteOutcome::Moved { .. }
        ));
        let revision = store.snapshot().unwrap().pins[0].revision;
        let mut by_revision = promotion("codex", "global", digest(3));
        by_revision.expect = Expectation::Revision(revision - 1);
        assert!(matches!(
            store.promote(&by_revision).unwrap(),
            PromoteOutcome::Conflict { .. }
        ));
        by_revision.expect = Expectation::Revision(revision);
        assert!(matches!(
            store.promote(&by_revision).unwrap(),
            PromoteOutcome::Moved { .. }
        ));
        assert_eq!(history(&mut store, "codex").len(), 3);
    }
}

#[test]
fn an_older_build_cannot_overwrite_a_newer_one_unless_forced() {
    for dir in databases() {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        let mut newer = promotion("codex", "global", digest(2));
        newer.build_sequence = Some(20);
        store.promote(&newer).unwrap();
        let mut older = promotion("codex", "global", digest(1));
        older.build_sequence = Some(19);
        assert!(matches!(
            store.promote(&older).unwrap(),
            PromoteOutcome::StaleBuild { .. }
        ));
        let unsequenced = promotion("codex", "global", digest(3));
        assert!(matches!(
            store.promote(&unsequenced).unwrap(),
            PromoteOutcome::Moved { .. }
        ));
        assert_eq!(
            store.snapshot().unwrap().pins[0].build_sequence,
            Some(20),
            "the newest build is remembered"
        );
        assert!(matches!(
            store.promote(&older).unwrap(),
            PromoteOutcome::StaleBuild { .. }
        ));
        older.force = true;
        assert!(matches!(
            store.promote(&older).unwrap(),
            PromoteOutcome::Moved { .. }
        ));
    }
}

fn rollback(to: Option<Digest>) -> Rollback {
    Rollback {
        template: TemplateName::parse("codex").unwrap(),
        region: Region::global(),
        to,
        actor: TokenName::parse("oncall").unwrap(),
        at: OffsetDateTime::now_utc(),
        notes: None,
        hold: None,
        expected: None,
        keep_canary: false,
    }
}

#[test]
fn rollback_returns_to_the_previous_digest_and_is_history() {
    for dir in databases() {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        assert_eq!(
            store.rollback(&rollback(None)).unwrap(),
            RollbackOutcome::NoPin
        );
        store
            .promote(&promotion("codex", "global", digest(1)))
            .unwrap();
        assert_eq!(
            store.rollback(&rollback(None)).unwrap(),
            RollbackOutcome::NoPrevious
        );
        store
            .promote(&promotion("codex", "global", digest(2)))
            .unwrap();
        store
            .promote(&promotion("codex", "global", digest(3)))
            .unwrap();

        match store.rollback(&rollback(None)).unwrap() {
            RollbackOutcome::Moved { pin, previous } => {
                assert_eq!((pin.digest, previous), (digest(2), digest(3)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.rollback(&rollback(Some(digest(9)))).unwrap(),
            RollbackOutcome::NotInHistory
        );
        assert!(matches!(
            store.rollback(&rollback(Some(digest(2)))).unwrap(),
            RollbackOutcome::Unchanged { .. }
        ));
        assert!(matches!(
            store.rollback(&rollback(Some(digest(1)))).unwrap(),
            RollbackOutcome::Moved { .. }
        ));
        let entries = history(&mut store, "codex");
        assert_eq!(entries[0].action, Action::Rollback);
        assert_eq!(entries[0].actor.as_str(), "oncall");
        assert_eq!(
            (entries[0].from_digest.clone(), entries[0].to_digest.clone()),
            (Some(digest(2)), digest(1))
        );
        assert_eq!(entries[1].action, Action::Rollback);
        assert_eq!(entries.len(), 5);
    }
}

#[test]
fn history_cannot_be_rewritten() {
    for dir in databases() {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        store
            .promote(&promotion("codex", "global", digest(1)))
            .unwrap();
        for sql in [
            "UPDATE history SET to_digest = 'x';",
            "DELETE FROM history;",
        ] {
            assert!(!dir.exec_raw(sql), "{sql} must fail");
        }
        assert!(dir.exec_raw("SELECT 1;"), "the shell itself works");
        assert_eq!(history(&mut store, "codex").len(), 1);
    }
}

#[test]
fn history_pages_by_revision() {
    for dir in databases() {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        for n in 1..=5 {
            store
                .promote(&promotion("codex", "global", digest(n)))
                .unwrap();
        }
        let page = store
            .history(&HistoryQuery {
                limit: 2,
                ..HistoryQuery::default()
            })
            .unwrap();
        assert_eq!(page.len(), 2);
        let next = store
            .history(&HistoryQuery {
                limit: 2,
                before: Some(page[1].revision),
                ..HistoryQuery::default()
            })
            .unwrap();
        assert_eq!(next[0].revision, page[1].revision - 1);
        assert_eq!(next[0].to_digest, digest(3));
    }
}

fn refusal(actor: Option<&str>, template: &str, code: String) -> Refusal {
    Refusal {
        at: OffsetDateTime::now_utc(),
        actor: actor.map(|name| TokenName::parse(name).unwrap()),
        template: Some(TemplateName::parse(template).unwrap()),
        region: None,
        action: "promote".into(),
        status: 403,
        code,
        source: actor.is_none().then(|| "192.0.2.7".to_owned()),
        count: if actor.is_none() { 42 } else { 1 },
    }
}

fn audit(store: &mut Store, before: Option<i64>, templates: Option<&[&str]>) -> Vec<AuditEntry> {
    store
        .audit(&AuditQuery {
            limit: 100,
            before,
            templates: templates.map(|names| {
                names
                    .iter()
                    .map(|name| TemplateName::parse(name).unwrap())
                    .collect()
            }),
        })
        .unwrap()
}

#[test]
fn audit_keeps_a_bounded_number_of_refusals_per_class() {
    for dir in databases() {
        let mut store = open(&dir);
        for n in 0..7u16 {
            store
                .record_refusal(&refusal(Some("ci"), "codex", format!("code_{n}")), 5)
                .unwrap();
        }
        // Strangers' failures, however many, keep to their own class.
        for n in 0..20u16 {
            store
                .record_refusal(&refusal(None, "codex", format!("anon_{n}")), 5)
                .unwrap();
        }
        let entries = audit(&mut store, None, None);
        let tokens: Vec<&AuditEntry> = entries
            .iter()
            .filter(|e| e.refusal.actor.is_some())
            .collect();
        let strangers: Vec<&AuditEntry> = entries
            .iter()
            .filter(|e| e.refusal.actor.is_none())
            .collect();
        assert_eq!(tokens.len(), 5, "{entries:?}");
        assert_eq!(tokens[0].refusal.code, "code_6");
        assert_eq!(tokens[4].refusal.code, "code_2");
        assert_eq!(strangers.len(), 5);
        assert_eq!(strangers[0].refusal.code, "anon_19");
        assert_eq!(strangers[0].refusal.count, 42);
        assert_eq!(strangers[0].refusal.source.as_deref(), Some("192.0.2.7"));
        assert_eq!(
            audit(&mut store, Some(tokens[1].id), None)
                .iter()
                .filter(|e| e.refusal.actor.is_some())
                .count(),
            3
        );
    }
}

#[test]
fn restricted_reads_see_only_their_templates() {
    for dir in databases() {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        add_template(&mut store, "hermes", true);
        for (n, template) in ["codex", "hermes", "codex"].into_iter().enumerate() {
            store
                .record_refusal(&refusal(Some("ci"), template, format!("code_{n}")), 100)
                .unwrap();
            store
                .promote(&promotion(template, "global", digest(n as u8 + 1)))
                .unwrap();
        }
        let codex = audit(&mut store, None, Some(&["codex"]));
        assert_eq!(codex.len(), 2);
        assert!(
            codex
                .iter()
                .all(|entry| entry.refusal.template.as_ref().unwrap().as_str() == "codex")
        );
        assert_eq!(audit(&mut store, None, Some(&[])).len(), 0);
        assert_eq!(audit(&mut store, None, Some(&["codex", "hermes"])).len(), 3);
        let history = store
            .history(&HistoryQuery {
                limit: 10,
                templates: Some(vec![TemplateName::parse("hermes").unwrap()]),
                ..HistoryQuery::default()
            })
            .unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].template.as_str(), "hermes");
    }
}

/// Makes every write of `digest` into `pins` fail, after its history entry
/// was written: a failure in the middle of a promotion.
fn inject_failure(db: &TestDb, digest: &Digest) {
    let sql = match db {
        TestDb::Sqlite(_) => format!(
            "CREATE TRIGGER inject_insert BEFORE INSERT ON pins WHEN NEW.image_digest = '{digest}' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END; \
             CREATE TRIGGER inject_update BEFORE UPDATE ON pins WHEN NEW.image_digest = '{digest}' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        ),
        TestDb::Postgres { .. } => format!(
            "CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.image_digest = '{digest}' THEN RAISE EXCEPTION 'injected failure'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER inject_failure BEFORE INSERT OR UPDATE ON pins \
             FOR EACH ROW EXECUTE FUNCTION inject_failure();"
        ),
    };
    assert!(db.exec_raw(&sql), "could not install the failing trigger");
}

fn pinned(store: &mut Store, template: &str, region: &str) -> Option<Digest> {
    store
        .snapshot()
        .unwrap()
        .pins
        .into_iter()
        .find(|pin| pin.template.as_str() == template && pin.region.as_str() == region)
        .map(|pin| pin.digest)
}

/// Group commit: a write that fails inside a batch leaves nothing behind
/// and does not undo the others; alone, it leaves nothing behind either.
#[test]
fn a_failing_write_leaves_nothing_and_spares_the_rest_of_its_batch() {
    for db in databases() {
        let mut store = open(&db);
        add_template(&mut store, "codex", true);
        add_template(&mut store, "hermes", true);
        for template in ["codex", "hermes"] {
            let moved = store.promote(&promotion(template, "global", digest(1)));
            assert!(matches!(moved, Ok(PromoteOutcome::Moved { .. })));
        }
        inject_failure(&db, &digest(66));

        let batch = [
            promotion("codex", "global", digest(2)),
            promotion("hermes", "global", digest(66)),
            promotion("codex", "eu-west-1", digest(3)),
        ];
        let results = store
            .batch(batch.len(), true, |writes| {
                Finish::Commit(
                    batch
                        .iter()
                        .map(|promotion| writes.promote(promotion))
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap()
            .unwrap();
        assert!(matches!(results[0], Ok(PromoteOutcome::Moved { .. })));
        assert!(
            matches!(&results[1], Err(err) if !err.is_unavailable()),
            "a failed statement is a bug, not an outage: {:?}",
            results[1]
        );
        assert!(matches!(results[2], Ok(PromoteOutcome::Moved { .. })));
        assert_eq!(pinned(&mut store, "codex", "global"), Some(digest(2)));
        assert_eq!(pinned(&mut store, "codex", "eu-west-1"), Some(digest(3)));
        assert_eq!(pinned(&mut store, "hermes", "global"), Some(digest(1)));
        assert_eq!(
            history(&mut store, "hermes").len(),
            1,
            "no entry of the failed move"
        );
        assert_eq!(history(&mut store, "codex").len(), 3);

        // Alone: the whole transaction goes, history entry included.
        let alone = store.batch(1, true, |writes| {
            Finish::Commit(writes.promote(&promotion("hermes", "global", digest(66))))
        });
        assert!(alone.is_err(), "{alone:?}");
        assert_eq!(pinned(&mut store, "hermes", "global"), Some(digest(1)));
        assert_eq!(history(&mut store, "hermes").len(), 1);
        // And the store goes on writing.
        let next = store.batch(1, true, |writes| {
            Finish::Commit(writes.promote(&promotion("hermes", "global", digest(4))))
        });
        assert!(matches!(next, Ok(Some(Ok(PromoteOutcome::Moved { .. })))));
        assert_eq!(history(&mut store, "hermes").len(), 2);
    }
}

/// A batch whose caller decides, at the end, not to commit leaves nothing:
/// the writer's way to drop writes whose callers gave up meanwhile.
#[test]
fn a_batch_rolled_back_at_the_end_leaves_nothing() {
    for db in databases() {
        let mut store = open(&db);
        add_template(&mut store, "codex", true);
        let ended = store
            .batch(2, true, |writes| {
                let first = writes.promote(&promotion("codex", "global", digest(1)));
                let second = writes.promote(&promotion("codex", "eu", digest(2)));
                assert!(matches!(first, Ok(PromoteOutcome::Moved { .. })));
                assert!(matches!(second, Ok(PromoteOutcome::Moved { .. })));
                Finish::<()>::RollBack
            })
            .unwrap();
        assert!(ended.is_none());
        assert_eq!(pinned(&mut store, "codex", "global"), None);
        assert_eq!(pinned(&mut store, "codex", "eu"), None);
        assert!(history(&mut store, "codex").is_empty());
        // The next write goes through, and is revision 1's successor: no gap
        // matters, but nothing of the rolled-back batch is visible.
        store
            .promote(&promotion("codex", "global", digest(3)))
            .unwrap();
        assert_eq!(pinned(&mut store, "codex", "global"), Some(digest(3)));
        assert_eq!(history(&mut store, "codex").len(), 1);
    }
}

/// A SQLite file deleted or replaced under an open store is noticed: no
/// write goes into the file nobody will read again.
#[test]
fn a_replaced_sqlite_file_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let url = DatabaseUrl::parse(&format!("sqlite://{}", path.display())).unwrap();
    let mut store = Store::open(&url).unwrap();
    add_template(&mut store, "codex", true);
    store.check_identity().unwrap();
    store.ping().unwrap();
    std::fs::rename(&path, dir.path().join("moved.db")).unwrap();
    // A new, different file at the same path.
    drop(Store::open(&url).unwrap());
    let refused = store.promote(&promotion("codex", "global", digest(1)));
    assert!(
        matches!(&refused, Err(err) if err.is_unavailable()),
        "{refused:?}"
    );
    assert!(store.check_identity().is_err());
    assert!(store.ping().is_err());
    std::fs::remove_file(&path).unwrap();
    assert!(
        store.check_identity().is_err(),
        "a missing file is noticed too"
    );
}

#[test]
fn a_database_that_must_exist_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        DatabaseUrl::parse(&format!("sqlite://{}", dir.path().join("p.db").display())).unwrap();
    let missing = Store::open_with(&url, false);
    assert!(
        matches!(&missing, Err(StoreError::Missing(_))),
        "{:?}",
        missing.err()
    );
    assert!(!dir.path().join("p.db").exists());
    drop(Store::open(&url).unwrap());
    Store::open_with(&url, false).unwrap();

    let db = databases().pop().unwrap();
    let missing = Store::open_with(&db.url(), false);
    assert!(
        matches!(&missing, Err(StoreError::Missing(_))),
        "{:?}",
        missing.err()
    );
    drop(Store::open(&db.url()).unwrap());
    Store::open_with(&db.url(), false).unwrap();
}

fn events(store: &mut Store, after: i64) -> EventPage {
    store
        .events(&EventQuery {
            after,
            limit: 1000,
            ..EventQuery::default()
        })
        .unwrap()
}

fn data(event: &EventRecord) -> serde_json::Value {
    serde_json::from_str(&event.data).unwrap()
}

/// Every change is an event, written in its transaction: ids strictly
/// increase, and a change that did not commit left none.
#[test]
fn changes_are_events_in_their_own_transaction() {
    for db in databases() {
        let mut store = open(&db);
        add_template(&mut store, "codex", true);
        store
            .promote(&promotion("codex", "global", digest(1)))
            .unwrap();
        store
            .promote(&promotion("codex", "global", digest(2)))
            .unwrap();
        // Unchanged: no event.
        store
            .promote(&promotion("codex", "global", digest(2)))
            .unwrap();
        store
            .rollback(&Rollback {
                template: TemplateName::parse("codex").unwrap(),
                region: Region::global(),
                to: None,
                actor: TokenName::parse("oncall").unwrap(),
                at: OffsetDateTime::now_utc(),
                notes: None,
                hold: None,
                expected: None,
                keep_canary: false,
            })
            .unwrap();
        let page = events(&mut store, 0);
        let kinds: Vec<&str> = page.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "runtime.changed",
                "pin.promoted",
                "pin.promoted",
                "pin.rolled_back"
            ]
        );
        assert!(page.events.windows(2).all(|pair| pair[0].id < pair[1].id));
        assert_eq!(page.head, page.events.last().unwrap().id);
        let moved = data(&page.events[2]);
        assert_eq!(moved["from_digest"], digest(1).as_str());
        assert_eq!(moved["to_digest"], digest(2).as_str());
        assert_eq!(moved["actor"], "ci");
        assert_eq!(
            moved["image_ref"],
            format!("localhost:5000/codex@{}", digest(2))
        );
        let back = data(&page.events[3]);
        assert_eq!(back["to_digest"], digest(1).as_str());
        assert_eq!(back["actor"], "oncall");
        assert_eq!(page.events[3].template.as_ref().unwrap().as_str(), "codex");

        // A failed write and a rolled-back batch leave no event.
        inject_failure(&db, &digest(66));
        assert!(
            store
                .promote(&promotion("codex", "global", digest(66)))
                .is_err()
        );
        store
            .batch(1, true, |writes| {
                writes
                    .promote(&promotion("codex", "global", digest(3)))
                    .unwrap();
                Finish::<()>::RollBack
            })
            .unwrap();
        assert_eq!(events(&mut store, 0).events.len(), 4);
        // Paging: after, limit, filters.
        let first = page.events[0].id;
        assert_eq!(events(&mut store, first).events.len(), 3);
        let promoted = store
            .events(&EventQuery {
                after: 0,
                limit: 1,
                types: vec![EventType::PinPromoted],
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(promoted.events.len(), 1);
        assert_eq!(promoted.events[0].id, page.events[1].id);
        let elsewhere = store
            .events(&EventQuery {
                after: 0,
                limit: 10,
                templates: Some(vec![TemplateName::parse("hermes").unwrap()]),
                ..EventQuery::default()
            })
            .unwrap();
        assert!(elsewhere.events.is_empty());
        assert_eq!(elsewhere.head, page.head, "the head is the whole log's");
    }
}

#[test]
fn pruning_keeps_the_newest_and_the_recent_and_says_where_it_cut() {
    for db in databases() {
        let mut store = open(&db);
        add_template(&mut store, "codex", true);
        for n in 1..=10 {
            store
                .promote(&promotion("codex", "global", digest(n)))
                .unwrap();
        }
        let all = events(&mut store, 0);
        assert_eq!(all.events.len(), 11);
        // Recent: nothing goes, however many there are.
        let long_ago = OffsetDateTime::now_utc() - time::Duration::days(7);
        assert_eq!(store.prune_events(long_ago, 3).unwrap(), 0);
        // Old: all but the newest 3 go.
        let later = OffsetDateTime::now_utc() + time::Duration::minutes(1);
        assert_eq!(store.prune_events(later, 3).unwrap(), 8);
        let left = events(&mut store, 0);
        assert_eq!(left.events.len(), 3);
        assert_eq!(left.pruned_through, all.events[7].id);
        assert_eq!(left.head, all.head);
    }
}

#[test]
fn drift_flips_are_events_once_whichever_replica_sees_them() {
    for db in databases() {
        let mut one = open(&db);
        let mut two = open(&db);
        let seen = |stale: bool, tag: u8| DriftObservation {
            template: TemplateName::parse("codex").unwrap(),
            region: Region::global(),
            digest: digest(1),
            tag: "latest".into(),
            tag_digest: digest(tag),
            stale,
            stale_since: stale.then(OffsetDateTime::now_utc),
            at: OffsetDateTime::now_utc(),
        };
        assert!(one.record_drift(&[seen(false, 1)]).unwrap().is_empty());
        assert_eq!(one.record_drift(&[seen(true, 2)]).unwrap().len(), 1);
        assert!(
            two.record_drift(&[seen(true, 2)]).unwrap().is_empty(),
            "the same flip twice"
        );
        assert_eq!(
            two.record_drift(&[seen(true, 3)]).unwrap().len(),
            1,
            "the tag moved again"
        );
        assert_eq!(one.record_drift(&[seen(false, 1)]).unwrap().len(), 1);
        let kinds: Vec<EventType> = events(&mut one, 0).events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventType::PinStale,
                EventType::PinStale,
                EventType::PinFresh
            ]
        );
    }
}

fn webhook(
    name: &str,
    events: Option<Vec<EventType>>,
    templates: Option<&[&str]>,
) -> WebhookUpdate {
    WebhookUpdate {
        name: WebhookName::parse(name).unwrap(),
        url: WebhookUrl::parse("http://127.0.0.1:9/hook").unwrap(),
        events,
        templates: templates.map(|names| {
            names
                .iter()
                .map(|n| TemplateName::parse(n).unwrap())
                .collect()
        }),
        sealed_secret: vec![7; 40],
        at: OffsetDateTime::now_utc(),
    }
}

/// The outbox: an event queues a delivery to every enabled webhook whose
/// filters take it, in its own transaction; claims lease deliveries to one
/// claimer at a time; attempts follow the schedule; a 410 disables.
#[test]
fn the_outbox_queues_claims_and_records_deliveries() {
    for db in databases() {
        let mut store = open(&db);
        add_template(&mut store, "codex", true);
        add_template(&mut store, "hermes", true);
        assert!(matches!(
            store.put_webhook(&webhook("all", None, None)).unwrap(),
            WebhookPut::Created(_)
        ));
        store
            .put_webhook(&webhook(
                "codex-moves",
                Some(vec![EventType::PinPromoted]),
                Some(&["codex"]),
            ))
            .unwrap();
        store
            .promote(&promotion("codex", "global", digest(1)))
            .unwrap();
        store
            .promote(&promotion("hermes", "global", digest(1)))
            .unwrap();
        let name = |n: &str| WebhookName::parse(n).unwrap();
        assert_eq!(store.deliveries(&name("all"), 10).unwrap().len(), 2);
        let codex = store.deliveries(&name("codex-moves"), 10).unwrap();
        assert_eq!(codex.len(), 1);
        assert_eq!(codex[0].state, DeliveryState::Pending);

        let now = OffsetDateTime::now_utc() + time::Duration::seconds(1);
        let claimed = store.claim_deliveries(now, 10, &[]).unwrap();
        assert_eq!(claimed.len(), 3);
        assert!(
            open(&db).claim_deliveries(now, 10, &[]).unwrap().is_empty(),
            "leased"
        );
        let ms = |at: OffsetDateTime| (at.unix_timestamp_nanos() / 1_000_000) as i64;
        let attempt = |due: &DueDelivery, status: u16, next: NextStep| AttemptRecord {
            webhook: due.webhook.clone(),
            event_id: due.event.id,
            at_ms: ms(now),
            status: Some(status),
            error: (status != 200).then(|| "no".to_owned()),
            next,
        };
        let (codex_due, others): (Vec<_>, Vec<_>) = claimed
            .iter()
            .partition(|due| due.webhook.as_str() == "codex-moves");
        let appended = store
            .record_attempts(&[
                attempt(others[0], 200, NextStep::Delivered),
                attempt(
                    others[1],
                    500,
                    NextStep::RetryAfter(std::time::Duration::from_secs(5)),
                ),
                attempt(codex_due[0], 410, NextStep::Disable),
            ])
            .unwrap();
        assert!(appended, "the 410 appended webhook.disabled");
        let all = store.deliveries(&name("all"), 10).unwrap();
        let states: Vec<(DeliveryState, i64)> = all.iter().map(|d| (d.state, d.attempts)).collect();
        assert!(states.contains(&(DeliveryState::Delivered, 1)));
        assert!(states.contains(&(DeliveryState::Pending, 1)));
        let retried = all
            .iter()
            .find(|d| d.state == DeliveryState::Pending && d.attempts == 1)
            .unwrap();
        assert_eq!(retried.next_attempt_ms, ms(now) + 5000);
        assert_eq!(retried.last_error.as_deref(), Some("no"));
        let disabled = store.webhook(&name("codex-moves")).unwrap().unwrap();
        assert!(disabled.disabled_at.is_some());
        let newest = events(&mut store, 0).events.pop().unwrap();
        assert_eq!(newest.kind, EventType::WebhookDisabled);
        assert_eq!(data(&newest)["webhook"], "codex-moves");
        // Nothing more is queued for a disabled webhook; a PUT enables it.
        store
            .promote(&promotion("codex", "global", digest(2)))
            .unwrap();
        assert_eq!(store.deliveries(&name("codex-moves"), 10).unwrap().len(), 1);
        assert!(matches!(
            store.put_webhook(&webhook("codex-moves", None, Some(&["codex"]))).unwrap(),
            WebhookPut::Changed(record) if record.disabled_at.is_none() && record.sealed_secret == vec![7; 40]
        ));
        assert_eq!(
            store
                .redeliver(&name("all"), newest.id + 100, OffsetDateTime::now_utc())
                .unwrap(),
            Redelivery::Unknown
        );
        assert!(store.delete_webhook(&name("all")).unwrap());
        assert!(store.deliveries(&name("all"), 10).unwrap().is_empty());
        assert!(!store.delete_webhook(&name("all")).unwrap());
    }
}

fn instance(id: &str, template: &str, region: &str, digest_n: u8, seen_ms: i64) -> InstanceRecord {
    InstanceRecord {
        id: InstanceId::parse(id).unwrap(),
        template: TemplateName::parse(template).unwrap(),
        region: Region::parse(region).unwrap(),
        digest: digest(digest_n),
        healthy: Some(true),
        ttl_seconds: 60,
        first_seen_ms: seen_ms,
        last_seen_ms: seen_ms,
        digest_since_ms: seen_ms,
        deleted: false,
        updated_ms: seen_ms,
        reporter: None,
    }
}

/// Instances' last reports are written in batches, read back whole or by
/// what changed, deleted as tombstones, and forgotten when long silent.
#[test]
fn instance_reports_flush_reload_delete_and_are_forgotten() {
    for db in databases() {
        let mut store = open(&db);
        let rows: Vec<InstanceRecord> = (0..250)
            .map(|n| instance(&format!("pod-{n}"), "codex", "eu", 1, 1_000 + n))
            .collect();
        store.flush_instances(&rows).unwrap();
        assert_eq!(store.instances().unwrap().len(), 250);
        let mut moved = rows[7].clone();
        moved.digest = digest(2);
        moved.last_seen_ms = 5_000;
        moved.updated_ms = 5_000;
        store.flush_instances(&[moved.clone()]).unwrap();
        let changed = store.instances_changed_since(5_000).unwrap();
        assert_eq!(changed, [moved.clone()]);
        assert!(store.delete_instance(&moved.id, 6_000).unwrap());
        assert!(
            !store.delete_instance(&moved.id, 6_001).unwrap(),
            "deleted once"
        );
        assert_eq!(store.instances().unwrap().len(), 249);
        let tombstone = store.instances_changed_since(6_000).unwrap();
        assert!(tombstone[0].deleted, "replicas learn of deletions");
        // Silent past their TTL since before 70 s: forgotten, tombstone too.
        assert_eq!(store.forget_instances(70_000).unwrap(), 250);
        assert!(store.instances().unwrap().is_empty());
    }
}

#[test]
fn convergence_transitions_are_events_once_per_revision() {
    for db in databases() {
        let mut one = open(&db);
        let mut two = open(&db);
        let transition = |revision: i64, state: Convergence| FleetTransition {
            template: TemplateName::parse("codex").unwrap(),
            region: Region::global(),
            digest: digest(1),
            revision,
            state,
            counts: FleetCounts {
                current: 3,
                behind: 0,
                unknown: 1,
            },
            at: OffsetDateTime::now_utc(),
        };
        assert!(
            one.record_fleet_transitions(&[transition(1, Convergence::Converging)])
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            one.record_fleet_transitions(&[transition(1, Convergence::Converged)])
                .unwrap()
                .len(),
            1
        );
        assert!(
            two.record_fleet_transitions(&[transition(1, Convergence::Converged)])
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            two.record_fleet_transitions(&[transition(2, Convergence::Stalled)])
                .unwrap()
                .len(),
            1
        );
        let kinds: Vec<EventType> = events(&mut one, 0).events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventType::FleetConverged, EventType::FleetStalled]);
        assert_eq!(data(&events(&mut one, 0).events[0])["current"], 3);
    }
}

#[test]
fn recent_digests_are_the_newest_per_pin() {
    for db in databases() {
        let mut store = open(&db);
        add_template(&mut store, "codex", true);
        for n in 1..=5 {
            store
                .promote(&promotion("codex", "global", digest(n)))
                .unwrap();
        }
        store.promote(&promotion("codex", "eu", digest(9))).unwrap();
        let mut recent = store.recent_digests(2).unwrap();
        recent.sort_by(|a, b| (a.1.as_str(), a.2.as_str()).cmp(&(b.1.as_str(), b.2.as_str())));
        let found: Vec<(&str, Digest)> = recent
            .iter()
            .map(|(_, r, d)| (r.as_str(), d.clone()))
            .collect();
        let mut expected = vec![
            ("eu", digest(9)),
            ("global", digest(4)),
            ("global", digest(5)),
        ];
        expected.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
        assert_eq!(found, expected);
    }
}

#[test]
fn report_tokens_exist_after_the_scope_migration() {
    for db in databases() {
        let mut store = open(&db);
        store
            .create_token(&NewToken {
                name: TokenName::parse("provisioner").unwrap(),
                scope: Scope::Report,
                templates: None,
                secret_hash: [5; 32],
                created_at: OffsetDateTime::now_utc(),
                created_by: None,
                expires_at: None,
            })
            .unwrap();
        let tokens = store.tokens().unwrap();
        assert_eq!(tokens[0].scope, Scope::Report);
    }
}

fn canary_on(store: &mut Store, to: Digest) {
    let outcome = store
        .start_canary(&pinion_store::CanaryRequest {
            template: TemplateName::parse("codex").unwrap(),
            region: Region::global(),
            digest: to,
            percent: pinion_core::Percent::new(99).unwrap(),
            actor: TokenName::parse("ci").unwrap(),
            at: OffsetDateTime::now_utc(),
            force: false,
            may_override_hold: false,
        })
        .unwrap();
    assert!(
        matches!(outcome, pinion_store::CanaryOutcome::Started { .. }),
        "{outcome:?}"
    );
}

fn canary_of(store: &mut Store) -> Option<Digest> {
    let snapshot = store.snapshot().unwrap();
    let pin = snapshot
        .pins
        .iter()
        .find(|pin| pin.template.as_str() == "codex" && pin.region == Region::global())
        .unwrap();
    pin.canary.as_ref().map(|canary| canary.digest.clone())
}

#[test]
fn a_move_past_a_canary_ends_it_in_the_same_transaction_unless_kept() {
    for dir in databases() {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        store
            .promote(&promotion("codex", "global", digest(1)))
            .unwrap();
        canary_on(&mut store, digest(2));
        let head = events(&mut store, 0).head;

        // A promotion of another digest ends the canary: the answer's pin
        // has none, the table has none, and `canary.aborted` says why.
        let PromoteOutcome::Moved { pin, .. } = store
            .promote(&promotion("codex", "global", digest(3)))
            .unwrap()
        else {
            panic!("not moved")
        };
        assert!(pin.canary.is_none());
        assert_eq!(canary_of(&mut store), None);
        let page = events(&mut store, head);
        let kinds: Vec<&str> = page.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["pin.promoted", "canary.aborted"]);
        let aborted = data(&page.events[1]);
        assert_eq!(aborted["cause"], "superseded");
        assert_eq!(aborted["image_digest"], digest(2).as_str());
        assert_eq!(aborted["stable_digest"], digest(3).as_str());

        // Kept on request, by a promotion and by a rollback.
        canary_on(&mut store, digest(2));
        let kept = Promotion {
            keep_canary: true,
            ..promotion("codex", "global", digest(4))
        };
        let PromoteOutcome::Moved { pin, .. } = store.promote(&kept).unwrap() else {
            panic!("not moved")
        };
        assert_eq!(pin.canary.map(|canary| canary.digest), Some(digest(2)));
        let keep_back = Rollback {
            keep_canary: true,
            ..rollback(Some(digest(3)))
        };
        assert!(matches!(
            store.rollback(&keep_back).unwrap(),
            RollbackOutcome::Moved { .. }
        ));
        assert_eq!(canary_of(&mut store), Some(digest(2)));

        // A rollback ends it too; one to the canary's digest graduates it.
        let head = events(&mut store, 0).head;
        assert!(matches!(
            store.rollback(&rollback(Some(digest(4)))).unwrap(),
            RollbackOutcome::Moved { .. }
        ));
        assert_eq!(canary_of(&mut store), None);
        let page = events(&mut store, head);
        let kinds: Vec<&str> = page.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["pin.rolled_back", "canary.aborted"]);
        canary_on(&mut store, digest(1));
        store
            .promote(&promotion("codex", "global", digest(1)))
            .unwrap();
        let page = events(&mut store, head);
        assert_eq!(
            page.events.last().map(|e| e.kind.as_str()),
            Some("canary.promoted")
        );
    }
}

#[test]
fn a_rollback_with_an_expected_digest_is_a_compare_and_swap() {
    for dir in databases() {
        let mut store = open(&dir);
        add_template(&mut store, "codex", true);
        for n in [1, 2] {
            store
                .promote(&promotion("codex", "global", digest(n)))
                .unwrap();
        }
        let from_b = || Rollback {
            expected: Some(digest(2)),
            ..rollback(Some(digest(1)))
        };
        let before = events(&mut store, 0).head;
        // The first of two rollbacks aimed at B moves the pin; the second
        // finds it elsewhere and writes nothing.
        assert!(matches!(
            store.rollback(&from_b()).unwrap(),
            RollbackOutcome::Moved { .. }
        ));
        let after_first = events(&mut store, 0).head;
        assert!(after_first > before);
        match store.rollback(&from_b()).unwrap() {
            RollbackOutcome::Conflict { current } => assert_eq!(current.digest, digest(1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(events(&mut store, 0).head, after_first);
        let history = store
            .history(&HistoryQuery {
                template: Some(TemplateName::parse("codex").unwrap()),
                region: Some(Region::global()),
                limit: 100,
                ..HistoryQuery::default()
            })
            .unwrap();
        assert_eq!(history.len(), 3);
    }
}

/// Pruning never drops an event a delivery still waits for (nor anything
/// after it): at least once holds however long a receiver is down.
#[test]
fn pruning_keeps_every_event_a_delivery_waits_for() {
    for db in databases() {
        let mut store = open(&db);
        add_template(&mut store, "codex", true);
        store.put_webhook(&webhook("all", None, None)).unwrap();
        // Events from before the webhook have no delivery to wait for.
        let unwatched = events(&mut store, 0).events.len() as u64;
        for n in 1..=10 {
            store
                .promote(&promotion("codex", "global", digest(n)))
                .unwrap();
        }
        let all = events(&mut store, 0);
        let all = EventPage {
            events: all.events[usize::try_from(unwatched).unwrap()..].to_vec(),
            ..all
        };
        let later = OffsetDateTime::now_utc() + time::Duration::minutes(1);
        // Every delivery is pending: only what no delivery waits for goes.
        assert_eq!(store.prune_events(later, 0).unwrap(), unwatched);
        // Deliver the first five: those events may go, and no more.
        let now = OffsetDateTime::now_utc() + time::Duration::seconds(1);
        let claimed = store.claim_deliveries(now, 100, &[]).unwrap();
        let done: Vec<AttemptRecord> = claimed
            .iter()
            .filter(|due| due.event.id <= all.events[4].id)
            .map(|due| AttemptRecord {
                webhook: due.webhook.clone(),
                event_id: due.event.id,
                at_ms: 0,
                status: Some(200),
                error: None,
                next: NextStep::Delivered,
            })
            .collect();
        assert_eq!(done.len(), 5);
        store.record_attempts(&done).unwrap();
        assert_eq!(store.prune_events(later, 0).unwrap(), 5);
        let left = events(&mut store, 0);
        assert_eq!(left.events.first().map(|e| e.id), Some(all.events[5].id));
        let name = WebhookName::parse("all").unwrap();
        let pending = store.deliveries(&name, 100).unwrap();
        assert_eq!(pending.len(), 5);
        assert!(pending.iter().all(|d| d.state == DeliveryState::Pending));
    }
}

/// Claims pass over the webhooks the caller asks to skip.
#[test]
fn claims_skip_the_webhooks_named() {
    for db in databases() {
        let mut store = open(&db);
        add_template(&mut store, "codex", true);
        store.put_webhook(&webhook("slow", None, None)).unwrap();
        store.put_webhook(&webhook("fast", None, None)).unwrap();
        store
            .promote(&promotion("codex", "global", digest(1)))
            .unwrap();
        let now = OffsetDateTime::now_utc() + time::Duration::seconds(1);
        let skip = [WebhookName::parse("slow").unwrap()];
        let claimed = store.claim_deliveries(now, 10, &skip).unwrap();
        let names: Vec<&str> = claimed.iter().map(|due| due.webhook.as_str()).collect();
        assert_eq!(names, ["fast"]);
        let rest = store.claim_deliveries(now, 10, &[]).unwrap();
        let names: Vec<&str> = rest.iter().map(|due| due.webhook.as_str()).collect();
        assert_eq!(names, ["slow"]);
    }
}
