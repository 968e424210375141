//! The pipeline that exists today must keep working unchanged: `curl` to
//! promote, `jq` to read back.

use std::process::Command;

use crate::support::{Fixture, assert_no_secret, digest};

fn sh(script: &str, envs: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_no_secret("curl stdout", &stdout);
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn existing_curl_and_jq_pipeline_works_unchanged() {
    let fixture = Fixture::new();
    let digest = digest(0xc0de);
    let promote = r#"
        curl -sS -o /dev/null -w '%{http_code}' -X POST "$CP/cp/admin/runtime-image/promote" \
          -H "Authorization: Bearer $CP_ADMIN_API_TOKEN" -H 'Content-Type: application/json' \
          -d "{\"template_name\":\"codex\",\"image_digest\":\"$DIGEST\",\"git_sha\":\"abc1234\",\"notes\":\"auto-promote via publish-image.yml\"}"
    "#;
    let url = fixture.server.url();
    let envs = [
        ("CP", url.as_str()),
        ("CP_ADMIN_API_TOKEN", fixture.promote.as_str()),
        ("DIGEST", digest.as_str()),
    ];
    let (code, status, stderr) = sh(promote, &envs);
    assert_eq!((code, status.as_str()), (0, "201"), "{stderr}");
    let (code, status, stderr) = sh(promote, &envs);
    assert_eq!((code, status.as_str()), (0, "200"), "{stderr}");

    let read_back = r#"
        curl -sS -f "$CP/cp/admin/runtime-image" -H "Authorization: Bearer $CP_ADMIN_API_TOKEN" \
          | jq -r '.pins[] | select(.template_name=="codex" and .region=="global") | .image_digest'
    "#;
    let (code, pinned, stderr) = sh(read_back, &envs);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(pinned.trim(), digest);

    let provenance = r#"
        curl -sS -f "$CP/cp/admin/runtime-image?template_name=codex" -H "Authorization: Bearer $CP_ADMIN_API_TOKEN" \
          | jq -r '.pins[0] | [.git_sha, .notes, .promoted_by, .image_ref] | join("|")'
    "#;
    let (_, row, _) = sh(provenance, &envs);
    assert_eq!(
        row.trim(),
        format!(
            "abc1234|auto-promote via publish-image.yml|ci|registry.example.com/team/workspace-template-codex@{digest}"
        )
    );
}
