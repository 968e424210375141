//! Promotion policy's costs: a resolve by instance on a pin with a canary
//! (each request hashes its instance into a bucket) against the same pin's
//! plain resolve; and a promotion on a server that asks a soak source first
//! against one that does not.

use std::path::Path;
use std::process::Command;

use super::http::{
    ROUND_SECONDS, Seeded, Side, compare, promote_script, rounds, seeded_server, wrk_for,
};

/// A wrk script resolving `t-7` for a new instance every request.
fn instance_script(dir: &Path, token: &str) -> Result<std::path::PathBuf, String> {
    let script = format!(
        r#"
counter = 0
wrk.headers["Authorization"] = "Bearer {token}"
request = function()
  counter = counter + 1
  return wrk.format(nil, string.format("/cp/runtime-image/resolve?template_name=t-7&region=us-east-2&instance_id=ws-%d", counter))
end
"#
    );
    let path = dir.join("instances.lua");
    std::fs::write(&path, script).map_err(|err| err.to_string())?;
    Ok(path)
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
    let script = instance_script(dir, &read_token)?;
    let pid = server.0.id();
    compare(
        "Canary resolve, `wrk -t1 -c32`: a new instance id every request on a pin with a 50 % canary; baseline: the same pin's resolve without an instance",
        rounds(),
        &[(
            Side {
                label: "resolve t-7, no instance_id".into(),
                connections: 32,
                url: format!("{url}/cp/runtime-image/resolve?template_name=t-7&region=us-east-2"),
                script: None,
                token: Some(&read_token),
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
        "\nstaging history: {:.0} promotions/s for 4 s over 50 templates",
        filled.rps
    );
    let plain = seeded_server(pinion, &plain_db, &[])?;
    let source = format!("staging={}", staging.url);
    // A soak of 0 s: every digest passes, and the cost measured is asking.
    let soaked = seeded_server(
        pinion,
        &soaked_db,
        &[
            ("PINION_SOAK_SOURCE", &source),
            ("PINION_SOAK", "0s"),
            ("PINION_SOAK_TOKEN", &staging.read_token),
        ],
    )?;
    let plain_dir = dir.join("plain");
    let soaked_dir = dir.join("soaked");
    for made in [&plain_dir, &soaked_dir] {
        std::fs::create_dir_all(made).map_err(|err| err.to_string())?;
    }
    let plain_script = promote_script(&plain_dir, &plain.promote_token)?;
    let soaked_script = promote_script(&soaked_dir, &soaked.promote_token)?;
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
                    &soaked.url,
                    &soaked_script,
                    soaked.server.0.id(),
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
                    &soaked.url,
                    &soaked_script,
                    soaked.server.0.id(),
                ),
            ),
        ],
    )
}
