//! What ships beside the binary: the systemd unit passes `systemd-analyze
//! verify` (every directive parses, the command exists) and its offline
//! security review rates it well.

use std::path::PathBuf;
use std::process::Command;

fn unit() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pinion.service");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The unit with its binary path pointed at the binary under test (verify
/// checks that the command exists), in a directory of its own.
fn installable(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pinion.service");
    let text = text.replace("/usr/local/bin/pinion", env!("CARGO_BIN_EXE_pinion"));
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn analyze(args: &[&str], unit: &PathBuf) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd; `cargo xtask test` installs it)")
}

#[test]
fn the_systemd_unit_verifies_clean_and_is_hardened() {
    let text = unit();
    let (_dir, path) = installable(&text);
    let verified = analyze(&["verify"], &path);
    assert!(verified.status.success(), "{verified:?}");
    assert_eq!(
        String::from_utf8_lossy(&verified.stderr).trim(),
        "",
        "systemd-analyze verify says nothing"
    );
    let security = analyze(&["security", "--offline=yes", "--no-pager"], &path);
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for pinion.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (0 best, 10 worst): {report}"
    );
    // The check can fail: a directive that does not parse is reported.
    let (_bad_dir, bad) = installable(&text.replace("ProtectSystem=strict", "ProtectSystem=bogus"));
    let refused = analyze(&["verify"], &bad);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("bogus"),
        "{refused:?}"
    );
}
