//! Promotion policy's costs: a resolve by instance on a pin with a canary
//! (each request hashes its instance into a bucket) against the same pin's
//! plain resolve; and a promotion on a server that asks a soak source first
//! against one that does not.

use std::path::Path;
use std::process::Command;

use super::http::{
    ROUND_SECONDS, Seeded, Side, TEMPLATES, compare, promote_script, rounds, seeded_server, wrk_for,
};
use super::serve;

/// A wrk script resolving `t-7` with a new `parameter` every request:
/// `instance_id` (a new instance), or one the server ignores, so that both
/// sides of the comparison cost the load generator the same.
fn instance_script(dir: &Path, token: &str, parameter: &str) -> Result<std::path::PathBuf, String> {
    let script = format!(
        r#"
counter = 0
wrk.headers["Authorization"] = "Bearer {token}"
request = function()
  counter = counter + 1
  return wrk.format(nil, string.format("/cp/runtime-image/resolve?template_name=t-7&region=us-east-2&{parameter}=ws-%d", counter))
end
"#
    );
    let path = dir.join(format!("{parameter}.lua"));
    std::fs::write(&path, script).map_err(|err| err.to_string())?;
    Ok(path)
}

/// A wrk script that moves `t-N`'s pin between two digests, `A` and `B`
/// (see [`pair`]), one promotion a request: every promotion is a real move.
fn alternating_script(dir: &Path, token: &str) -> Result<std::path::PathBuf, String> {
    let script = format!(
        r#"
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
request = function()
  local template = counter % {TEMPLATES}
  local side = math.floor(counter / {TEMPLATES}) % 2 + 1
  counter = counter + 1
  local body = string.format('{{"template_name":"t-%d","image_digest":"sha256:%064x"}}', template, side * 1048576 + template)
  return wrk.format(nil, "/cp/admin/runtime-image/promote", nil, body)
end
"#
    );
    let path = dir.join("alternate.lua");
    std::fs::write(&path, script).map_err(|err| err.to_string())?;
    Ok(path)
}

/// The digests `alternating_script` moves template `t` between: side 1
/// (`A`) and side 2 (`B`).
fn pair(template: usize, side: usize) -> String {
    format!("sha256:{:064x}", side * 1_048_576 + template)
}

fn post(url: &str, token: &str, body: &str) -> Result<String, String> {
    let output = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .args(["-H", "content-type: application/json", "-d", body, url])
        .output()
        .map_err(|err| format!("curl: {err}"))?;
    if !output.status.success() {
        return Err(format!("POST {url} failed"));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn run(pinion: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    canary(pinion, dir.path())?;
    soak(pinion, dir.path())
}

fn canary(pinion: &Path, dir: &Path) -> Result<(), String> {
    let database = format!("sqlite://{}", dir.join("canary.db").display());
    let Seeded {
        server,
        url,
        promote_token,
        read_token,
        ..
    } = seeded_server(pinion, &database, &[])?;
    let canary = format!(
        r#"{{"template_name":"t-7","image_digest":"sha256:{:064x}","percent":50}}"#,
        1000
    );
    post(
        &format!("{url}/cp/admin/runtime-image/canary"),
        &promote_token,
        &canary,
    )?;
    let script = instance_script(dir, &read_token, "instance_id")?;
    let plain = instance_script(dir, &read_token, "sequence")?;
    let pid = server.0.id();
    compare(
        "Canary resolve, `wrk -t1 -c32`: a new instance id every request on a pin with a 50 % canary; baseline: the same pin's resolve without an instance (a new ignored parameter every request, so the load generator's work is the same)",
        rounds(),
        &[(
            Side {
                label: "resolve t-7, no instance_id".into(),
                connections: 32,
                url: url.clone(),
                script: Some(&plain),
                token: None,
                pids: vec![pid],
            },
            Side {
                label: "resolve t-7 with instance_id (canary pin)".into(),
                connections: 32,
                url: url.clone(),
                script: Some(&script),
                token: None,
                pids: vec![pid],
            },
        )],
    )
}

fn soak(pinion: &Path, dir: &Path) -> Result<(), String> {
    let staging_db = format!("sqlite://{}", dir.join("staging.db").display());
    let plain_db = format!("sqlite://{}", dir.join("plain.db").display());
    let soaked_db = format!("sqlite://{}", dir.join("soaked.db").display());
    let staging = seeded_server(pinion, &staging_db, &[])?;
    // A staging history of some length: about 100 moves per template.
    let staging_dir = dir.join("staging");
    std::fs::create_dir_all(&staging_dir).map_err(|err| err.to_string())?;
    let fill = promote_script(&staging_dir, &staging.promote_token)?;
    let filled = wrk_for(8, &staging.url, Some(&fill), None, "4", &[])?;
    println!(
        "\nstaging history: {:.0} promotions/s for 4 s over {TEMPLATES} templates",
        filled.rps
    );
    // Then each template's `A` and `B` soak their second on staging: `A`
    // until `B` replaces it (a promotion, so `A` keeps its window), `B`
    // from then on. Every promotion the soaked server is sent passes.
    let promote = format!("{}/cp/admin/runtime-image/promote", staging.url);
    for side in [1, 2] {
        for template in 0..TEMPLATES {
            let body = format!(
                r#"{{"template_name":"t-{template}","image_digest":"{}"}}"#,
                pair(template, side)
            );
            post(&promote, &staging.promote_token, &body)?;
        }
        std::thread::sleep(std::time::Duration::from_millis(1300));
    }
    let plain = seeded_server(pinion, &plain_db, &[])?;
    // Seeded without a source (its first pins never ran on staging), then
    // served again with one.
    let Seeded {
        server: seeding,
        promote_token: soaked_token,
        ..
    } = seeded_server(pinion, &soaked_db, &[])?;
    drop(seeding);
    let source = format!("staging={}", staging.url);
    let (soaked_server, soaked_url) = serve(
        pinion,
        &soaked_db,
        &[
            ("PINION_REGISTRY_CHECK", "off"),
            ("PINION_SOAK_SOURCE", &source),
            ("PINION_SOAK", "1s"),
            ("PINION_SOAK_TOKEN", &staging.read_token),
        ],
    )?;
    let plain_dir = dir.join("plain");
    let soaked_dir = dir.join("soaked");
    for made in [&plain_dir, &soaked_dir] {
        std::fs::create_dir_all(made).map_err(|err| err.to_string())?;
    }
    let plain_script = alternating_script(&plain_dir, &plain.promote_token)?;
    let soaked_script = alternating_script(&soaked_dir, &soaked_token)?;
    let side = |label: &str, connections, url: &str, script, pid: u32| Side {
        label: label.to_owned(),
        connections,
        url: url.to_owned(),
        script: Some(script),
        token: None,
        pids: vec![pid],
    };
    compare(
        &format!(
            "Promotions asking a soak source (staging on the same machine) against none; alternating rounds of {ROUND_SECONDS} s"
        ),
        rounds(),
        &[
            (
                side(
                    "promote c=1, no soak source",
                    1,
                    &plain.url,
                    &plain_script,
                    plain.server.0.id(),
                ),
                side(
                    "promote c=1, soak source asked",
                    1,
                    &soaked_url,
                    &soaked_script,
                    soaked_server.0.id(),
                ),
            ),
            (
                side(
                    "promote c=32, no soak source",
                    32,
                    &plain.url,
                    &plain_script,
                    plain.server.0.id(),
                ),
                side(
                    "promote c=32, soak source asked",
                    32,
                    &soaked_url,
                    &soaked_script,
                    soaked_server.0.id(),
                ),
            ),
        ],
    )
}
