//! The CLI's completions and man pages, made from its flags.

use crate::support::{pinion, run};

#[test]
fn completions_for_each_shell_name_the_subcommands_and_flags() {
    for (shell, marker) in [
        ("bash", "_pinion()"),
        ("zsh", "#compdef pinion"),
        ("fish", "complete -c pinion"),
    ] {
        let output = run(pinion().args(["completions", shell]));
        assert_eq!(output.code, 0, "{shell}: {output:?}");
        assert!(
            output.stdout.contains(marker),
            "{shell}: {}",
            &output.stdout[..200.min(output.stdout.len())]
        );
        for word in ["promote", "verify", "status", "tls-cert", "ca-cert"] {
            assert!(output.stdout.contains(word), "{shell} completes {word}");
        }
    }
    let refused = run(pinion().args(["completions", "cmd.exe"]));
    assert_eq!(refused.code, 2, "{refused:?}");
}

#[test]
fn man_pages_are_made_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(pinion().arg("man-pages").arg(dir.path()));
    assert_eq!(output.code, 0, "{output:?}");
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join(format!("{name}.1")))
            .unwrap_or_else(|err| panic!("{name}.1: {err}"))
    };
    assert!(page("pinion").contains(".TH pinion"));
    let serve = page("pinion-serve");
    assert!(
        serve.contains("tls\\-cert") && serve.contains("PINION_TLS_CERT"),
        "{serve}"
    );
    let rollback = page("pinion-rollback");
    assert!(rollback.contains("The template whose pin moves back"));
    page("pinion-token-create");
    assert!(
        !dir.path().join("pinion-man-pages.1").exists(),
        "the hidden command has no page"
    );
}

#[test]
fn the_server_serves_the_committed_openapi_description() {
    let env = crate::support::Env::new();
    let server = crate::support::Server::start(&env.database(), &[]);
    let answer = crate::support::http(server.addr, "GET", "/openapi.json", None, None);
    assert_eq!(answer.status, 200, "{answer:?}");
    let served: serde_json::Value = answer.json();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(served, committed);
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/cp/admin/runtime-image/promote",
        "/cp/events",
        "/cp/admin/tokens/{name}",
        "/openapi.json",
    ] {
        assert!(served["paths"][path].is_object(), "{path} described");
    }
    // Every error a promotion can answer is listed with its code.
    let promote = &served["paths"]["/cp/admin/runtime-image/promote"]["post"]["responses"];
    for (status, code) in [
        ("409", "pin_conflict"),
        ("423", "pin_held"),
        ("422", "soak_required"),
        ("401", "unauthorized"),
        ("504", "commit_outcome_unknown"),
    ] {
        let codes = promote[status]["x-pinion-codes"]
            .as_array()
            .unwrap_or_else(|| panic!("{status}: {promote}"));
        assert!(
            codes.iter().any(|listed| listed == code),
            "{status} lists {code}"
        );
    }
}
