//! Records the git commit the server is built from, for `GET /version`.
//! Builds from a tree without git (a source tarball) say null.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    println!("cargo:rerun-if-env-changed=PINION_GIT_SHA");
    let sha = std::env::var("PINION_GIT_SHA").ok().or_else(|| {
        let output = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()?;
        let sha = String::from_utf8(output.stdout).ok()?;
        let sha = sha.trim();
        (output.status.success() && sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| sha.to_owned())
    });
    if let Some(sha) = sha {
        println!("cargo:rustc-env=PINION_BUILD_GIT_SHA={sha}");
    }
}
