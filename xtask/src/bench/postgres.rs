//! PostgreSQL beside SQLite: the same server, the same loads, and
//! PostgreSQL's own single-row update rate (`pgbench`) as the baseline for
//! promotions under concurrency.

use std::path::Path;
use std::process::Command;

use super::http::{RESOLVE_PATH, Seeded, header, promote_script, row, seeded_server, wrk};

pub fn run(pinion: &Path) -> Result<(), String> {
    let admin = std::env::var("PINION_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    let names: Vec<String> = ["strict", "fast"]
        .iter()
        .map(|mode| format!("pinion_bench_{mode}_{}", std::process::id()))
        .collect();
    for name in &names {
        psql(&admin, &format!("CREATE DATABASE {name}"))?;
    }
    let databases: Vec<String> = names.iter().map(|name| format!("{base}/{name}")).collect();
    let result = measure(pinion, &databases[0], &databases[1]);
    for name in &names {
        let _ = psql(
            &admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
    }
    result
}

fn psql(url: &str, sql: &str) -> Result<(), String> {
    let output = Command::new("psql")
        .args(["-q", url, "-c", sql])
        .output()
        .map_err(|err| format!("psql: {err}"))?;
    output
        .status
        .success()
        .then_some(())
        .ok_or_else(|| format!("psql: {}", String::from_utf8_lossy(&output.stderr)))
}

fn measure(pinion: &Path, postgres: &str, postgres_fast: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    header("PostgreSQL beside SQLite, 50 pins, `wrk -t1`, 10 s each (ratio: to SQLite)");
    let mut results = Vec::new();
    for (engine, database, consistency) in [
        ("sqlite", sqlite.as_str(), "auto"),
        ("postgres, strict reads (default)", postgres, "strict"),
        ("postgres, fast reads", postgres_fast, "fast"),
    ] {
        let Seeded {
            server,
            url,
            promote_token,
            read_token,
            ..
        } = seeded_server(
            pinion,
            database,
            &[("PINION_READ_CONSISTENCY", consistency)],
        )?;
        let script = promote_script(dir.path(), &promote_token)?;
        let resolve = wrk(32, &format!("{url}{RESOLVE_PATH}"), None, Some(&read_token))?;
        let promote_1 = wrk(1, &url, Some(&script), None)?;
        let promote_32 = wrk(32, &url, Some(&script), None)?;
        drop(server);
        results.push((engine, resolve, promote_1, promote_32));
    }
    let Some((_, sqlite_resolve, sqlite_1, sqlite_32)) = results.first() else {
        return Err("missing results".into());
    };
    for (index, (engine, resolve, _, _)) in results.iter().enumerate() {
        row(
            &format!("{engine}: resolve, c=32"),
            resolve,
            (index > 0).then_some(sqlite_resolve),
        );
    }
    for (index, (engine, _, promote_1, _)) in results.iter().enumerate() {
        row(
            &format!("{engine}: promote, c=1"),
            promote_1,
            (index > 0).then_some(sqlite_1),
        );
    }
    for (index, (engine, _, _, promote_32)) in results.iter().enumerate() {
        row(
            &format!("{engine}: promote, c=32"),
            promote_32,
            (index > 0).then_some(sqlite_32),
        );
    }
    let pg_32 = &results[1].3;

    // pgbench: one-row UPDATEs from 32 clients, the database's own rate.
    let pgbench_db = postgres;
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", pgbench_db])
        .output()
        .map_err(|err| format!("pgbench: {err}"))?;
    if !init.status.success() {
        return Err(format!(
            "pgbench -i: {}",
            String::from_utf8_lossy(&init.stderr)
        ));
    }
    let script = dir.path().join("update.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 100000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n",
    )
    .map_err(|err| err.to_string())?;
    let run = Command::new("pgbench")
        .args(["-n", "-c", "32", "-j", "1", "-T", "10", "-f"])
        .arg(&script)
        .arg(pgbench_db)
        .output()
        .map_err(|err| format!("pgbench: {err}"))?;
    let text = String::from_utf8_lossy(&run.stdout);
    let tps: f64 = text
        .lines()
        .find(|line| line.starts_with("tps ="))
        .and_then(|line| line.split_whitespace().nth(2))
        .and_then(|tps| tps.parse().ok())
        .ok_or_else(|| format!("pgbench printed no rate: {text}"))?;
    println!("\nPromote at concurrency 32 beside `pgbench` single-row updates, 32 clients, 10 s");
    println!("| load | per second | ratio to baseline |");
    println!("|---|---|---|");
    println!("| pgbench single-row UPDATE, c=32 (baseline) | {tps:.0} | - |");
    println!(
        "| pinion promote on PostgreSQL, c=32 | {:.0} | {:.2} |",
        pg_32.rps,
        pg_32.rps / tps
    );
    Ok(())
}
