//! Every operation the server describes enforces the scope it declares:
//! read from the server's own `/openapi.json`, each operation is called with
//! a token one scope too low (`403 forbidden`), or none for `read` (`401`),
//! and with a token of exactly its scope (never `401` or `403`).

use crate::support::{Env, http};

/// The scope just below `scope`; `None` below `read`.
fn below(scope: &str) -> Option<&'static str> {
    match scope {
        "read" => None,
        "report" => Some("read"),
        "promote" => Some("report"),
        "admin" => Some("promote"),
        other => panic!("unknown scope `{other}`"),
    }
}

#[test]
fn every_operation_enforces_the_scope_it_declares() {
    let env = Env::new();
    env.add_template("codex", "registry.example.com/codex");
    let tokens: Vec<(&str, String)> = ["read", "report", "promote", "admin"]
        .into_iter()
        .map(|scope| (scope, env.token(&format!("a-{scope}"), scope, &[])))
        .collect();
    let token = |scope: &str| -> String {
        tokens
            .iter()
            .find(|(named, _)| *named == scope)
            .map(|(_, secret)| secret.clone())
            .unwrap_or_else(|| panic!("unknown scope `{scope}`"))
    };
    let server = env.start();
    let document = http(server.addr, "GET", "/openapi.json", None, None).json();
    let mut checked = 0;
    for (path, methods) in document["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{name}", "codex")
            .replace("{instance_id}", "ws-1")
            .replace("{event_id}", "1");
        for (method, operation) in methods.as_object().unwrap() {
            let Some(scope) = operation["x-pinion-scope"].as_str() else {
                assert_eq!(
                    operation["security"],
                    serde_json::json!([]),
                    "{method} {path}: no scope, so no token"
                );
                continue;
            };
            let method = method.to_ascii_uppercase();
            let body = matches!(method.as_str(), "POST" | "PUT").then_some(&b"{}"[..]);
            let call = |token: Option<&str>| http(server.addr, &method, &concrete, token, body);
            match below(scope) {
                Some(lower) => {
                    let answer = call(Some(&token(lower)));
                    assert_eq!(
                        (answer.status, answer.error_code()),
                        (403, "forbidden".to_owned()),
                        "{method} {path} declares `{scope}`; a `{lower}` token got {answer:?}"
                    );
                }
                None => {
                    let answer = call(None);
                    assert_eq!(
                        answer.status, 401,
                        "{method} {path} declares `{scope}`; no token got {answer:?}"
                    );
                }
            }
            let answer = call(Some(&token(scope)));
            assert!(
                !matches!(answer.status, 401 | 403),
                "{method} {path} declares `{scope}`; a `{scope}` token got {answer:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 27, "only {checked} operations checked");
}
