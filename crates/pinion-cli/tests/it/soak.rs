//! Soak between environments: a "prod" server with a "staging" soak source
//! refuses a digest until it has run on staging's pin, without interruption,
//! for the required time (`422 soak_required`); a rollback away from it voids
//! its time, a later promotion only ends it; a source that cannot be asked
//! fails closed (`503 soak_source_unavailable`), and an `admin` token with
//! `force` skips the check, which history records.

use std::time::{Duration, Instant};

use crate::support::{Env, Fault, FaultServer, Response, Server, digest, run};

const PROMOTE: &str = "/cp/admin/runtime-image/promote";
const ROLLBACK: &str = "/cp/admin/runtime-image/rollback";
/// Long enough that the steps of a test fit well inside it.
const SOAK: Duration = Duration::from_secs(4);

struct Environment {
    server: Server,
    env: Env,
    admin: String,
    ci: String,
    read: String,
}

impl Environment {
    fn new(settings: &[(&str, &str)]) -> Environment {
        let env = Env::new();
        env.add_template("codex", "registry.example.com/codex");
        let admin = env.token("platform", "admin", &[]);
        let ci = env.token("ci", "promote", &[]);
        let read = env.token("viewer", "read", &[]);
        let server = Server::start(&env.database(), settings);
        Environment {
            server,
            env,
            admin,
            ci,
            read,
        }
    }

    fn promote(&self, token: &str, n: u32, region: &str, force: bool) -> Response {
        let body = format!(
            r#"{{"template_name":"codex","region":"{region}","image_digest":"{}","force":{force}}}"#,
            digest(n)
        );
        self.server.post(PROMOTE, token, &body)
    }

    fn pinned(&self, region: &str) -> Option<String> {
        self.server.pinned(&self.read, "codex", region)
    }
}

/// Staging, and prod soaking on it for [`SOAK`] with a read token.
fn pair() -> (Environment, Environment) {
    let staging = Environment::new(&[]);
    let source = format!("staging={}", staging.server.url());
    let soak = format!("{}s", SOAK.as_secs());
    let prod = Environment::new(&[
        ("PINION_SOAK_SOURCE", source.as_str()),
        ("PINION_SOAK", soak.as_str()),
        ("PINION_SOAK_TOKEN", staging.read.as_str()),
    ]);
    (staging, prod)
}

fn refused_for_soak(answer: &Response) -> String {
    assert_eq!(answer.status, 422, "{answer:?}");
    assert_eq!(answer.error_code(), "soak_required", "{answer:?}");
    answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn sleep_until(at: Instant) {
    if let Some(left) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

#[test]
fn a_digest_must_run_on_the_source_for_the_soak_without_interruption() {
    let (staging, prod) = pair();

    // 1 is promoted on staging; prod refuses it until it has soaked.
    assert_eq!(staging.promote(&staging.ci, 1, "global", false).status, 201);
    let promoted_1 = Instant::now();
    let message = refused_for_soak(&prod.promote(&prod.ci, 1, "global", false));
    assert!(message.contains("`staging`"), "{message}");
    assert!(message.contains("must soak 4s"), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert_eq!(prod.pinned("global"), None);

    // 7 never ran on staging: it has soaked nothing.
    let message = refused_for_soak(&prod.promote(&prod.ci, 7, "global", false));
    assert!(message.contains("has soaked 0s"), "{message}");

    // A `promote` token's force does not skip the soak.
    refused_for_soak(&prod.promote(&prod.ci, 7, "global", true));

    // 2 runs on staging for a second, then a newer build replaces it: its
    // window ends there (not voided, but one second is not four).
    sleep_until(promoted_1 + Duration::from_millis(300));
    assert_eq!(staging.promote(&staging.ci, 2, "global", false).status, 201);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(staging.promote(&staging.ci, 3, "global", false).status, 201);
    let promoted_3 = Instant::now();

    // A region of prod soaks on staging's global pin when staging has no
    // pin of that region; 1 ran there 0.3 s, short.
    refused_for_soak(&prod.promote(&prod.ci, 1, "eu-west", false));

    // 3 soaks its four seconds and goes through, with the figures in
    // history; 2, interrupted after a second, is still refused, and
    // earlier windows do not add up.
    sleep_until(promoted_3 + SOAK + Duration::from_millis(200));
    let message = refused_for_soak(&prod.promote(&prod.ci, 2, "global", false));
    assert!(message.contains("has soaked 1s"), "{message}");
    let moved = prod.promote(&prod.ci, 3, "global", false);
    assert_eq!(moved.status, 201, "{moved:?}");
    assert_eq!(prod.pinned("global").as_deref(), Some(digest(3).as_str()));
    let history = prod.server.history(&prod.read, "codex");
    assert_eq!(history.len(), 1, "{history:?}");
    let entry = &history[0];
    assert_eq!(entry["to_digest"], digest(3), "{history:?}");
    assert_eq!(entry["forced"], false, "{entry}");
    assert_eq!(entry["soak"]["source"], "staging", "{entry}");
    assert_eq!(entry["soak"]["required_seconds"], 4, "{entry}");
    let soaked = entry["soak"]["soaked_seconds"].as_u64().unwrap();
    assert!((4..60).contains(&soaked), "{entry}");

    // The same promotion again is idempotent, whatever the soak says.
    assert_eq!(prod.promote(&prod.ci, 3, "global", false).status, 200);

    // An admin forces an unsoaked digest: it moves, and history says it was
    // forced.
    let forced = prod.promote(&prod.admin, 7, "global", true);
    assert_eq!(forced.status, 201, "{forced:?}");
    let history = prod.server.history(&prod.read, "codex");
    let last = history.last().unwrap();
    assert_eq!(last["to_digest"], digest(7), "{history:?}");
    assert_eq!(last["forced"], true, "{last}");
}

#[test]
fn a_rollback_away_from_a_digest_voids_its_soak_and_a_promotion_away_does_not() {
    let (staging, prod) = pair();
    // 1 soaks, then 2 replaces it by a promotion: 1 keeps its window.
    assert_eq!(staging.promote(&staging.ci, 1, "global", false).status, 201);
    sleep_until(Instant::now() + SOAK + Duration::from_millis(200));
    assert_eq!(staging.promote(&staging.ci, 2, "global", false).status, 201);
    // 2 soaks too; then staging finds it bad and rolls back to 1.
    sleep_until(Instant::now() + SOAK + Duration::from_millis(200));
    let rolled = staging
        .server
        .post(ROLLBACK, &staging.ci, r#"{"template_name":"codex"}"#);
    assert_eq!(rolled.status, 201, "{rolled:?}");
    assert_eq!(
        staging.pinned("global").as_deref(),
        Some(digest(1).as_str())
    );

    let message = refused_for_soak(&prod.promote(&prod.ci, 2, "global", false));
    assert!(message.contains("has soaked 0s"), "{message}");
    assert_eq!(prod.pinned("global"), None);

    // 1's first window, ended by a promotion, still counts.
    let moved = prod.promote(&prod.ci, 1, "global", false);
    assert_eq!(moved.status, 201, "{moved:?}");

    // The gate says why it was refused, and exits 2.
    let out = run(crate::support::pinion()
        .args([
            "promote",
            "--server",
            &prod.server.url(),
            "--template",
            "codex",
        ])
        .args(["--digest", &digest(2)])
        .env("PINION_TOKEN", &prod.ci));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("soak_required"), "{out:?}");
    assert_eq!(prod.pinned("global").as_deref(), Some(digest(1).as_str()));
}

#[test]
fn a_source_that_cannot_be_asked_fails_closed_and_changes_nothing() {
    let (staging, prod) = pair();
    assert_eq!(staging.promote(&staging.ci, 1, "global", false).status, 201);
    sleep_until(Instant::now() + SOAK + Duration::from_millis(200));
    assert_eq!(prod.promote(&prod.ci, 1, "global", false).status, 201);
    assert_eq!(staging.promote(&staging.ci, 2, "global", false).status, 201);

    // Staging goes away.
    let Environment {
        server: source,
        env: _source_env,
        ..
    } = staging;
    drop(source);
    let answer = prod.promote(&prod.ci, 2, "global", false);
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.error_code(), "soak_source_unavailable", "{answer:?}");
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`staging`")
    );
    assert_eq!(prod.pinned("global").as_deref(), Some(digest(1).as_str()));
    // Already there needs no source.
    assert_eq!(prod.promote(&prod.ci, 1, "global", false).status, 200);
    // An admin's force does not ask.
    assert_eq!(prod.promote(&prod.admin, 2, "global", true).status, 201);
}

#[test]
fn a_source_that_hangs_fails_lies_or_refuses_the_token_fails_closed() {
    let garbage = r#"{"history":[{"template_name":"hermes"}]}"#.to_owned();
    let hanging = FaultServer::start(Fault::Hang);
    let failing = FaultServer::start(Fault::Answer(500, "text/plain", "boom".into()));
    let lying = FaultServer::start(Fault::Answer(200, "application/json", garbage));
    let forbidding = FaultServer::start(Fault::Answer(
        401,
        "application/json",
        r#"{"error":{"code":"unauthorized","message":"no"}}"#.into(),
    ));
    for (what, source, timeout) in [
        ("hangs", &hanging, "2"),
        ("fails", &failing, "30"),
        ("lies", &lying, "30"),
        ("refuses the token", &forbidding, "30"),
    ] {
        let url = format!("staging={}", source.url());
        let prod = Environment::new(&[
            ("PINION_SOAK_SOURCE", url.as_str()),
            ("PINION_SOAK", "1s"),
            (
                "PINION_SOAK_TOKEN",
                "pinion_not_a_real_token_for_the_fault_server",
            ),
            ("PINION_REQUEST_TIMEOUT", timeout),
        ]);
        let asked = Instant::now();
        let answer = prod.promote(&prod.ci, 1, "global", false);
        assert_eq!(answer.status, 503, "a source that {what}: {answer:?}");
        assert_eq!(answer.error_code(), "soak_source_unavailable", "{what}");
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "a source that {what} is given up on by the deadline"
        );
        assert_eq!(prod.pinned("global"), None, "{what}");
        let audit = prod.server.get("/cp/admin/audit?limit=10", &prod.admin);
        assert!(
            audit.body.contains("soak_source_unavailable"),
            "the refusal is audited: {audit:?}"
        );
        // The source got the token as a bearer token, and it is not echoed.
        assert!(source.requests().iter().any(|head| {
            head.to_ascii_lowercase()
                .contains("authorization: bearer pinion_not_a_real_token")
        }));
        assert!(!answer.body.contains("pinion_not_a_real_token"), "{what}");
    }
}

#[test]
fn a_window_older_than_the_first_page_of_history_is_found() {
    let staging = Environment::new(&[]);
    let source = format!("staging={}", staging.server.url());
    let prod = Environment::new(&[
        ("PINION_SOAK_SOURCE", source.as_str()),
        ("PINION_SOAK", "1s"),
        ("PINION_SOAK_TOKEN", staging.read.as_str()),
    ]);
    assert_eq!(staging.promote(&staging.ci, 1, "global", false).status, 201);
    sleep_until(Instant::now() + Duration::from_millis(1200));
    // 40 newer moves of the template's other pin: the global pin's window
    // is past the newest 25 entries the source is asked for first.
    for n in 0..40 {
        let moved = staging.promote(&staging.ci, 1000 + n, "us-east", false);
        assert_eq!(moved.status, 201, "{moved:?}");
    }
    let moved = prod.promote(&prod.ci, 1, "global", false);
    assert_eq!(moved.status, 201, "{moved:?}");
    // The pin of the region itself soaked nothing, and its global pin did.
    let moved = prod.promote(&prod.ci, 1, "eu-west", false);
    assert_eq!(moved.status, 201, "{moved:?}");
    // A digest staging's us-east pin ran only a moment is refused, after
    // the whole history was read.
    let message = refused_for_soak(&prod.promote(&prod.ci, 1000, "us-east", false));
    assert!(message.contains("has soaked 0s"), "{message}");
}
