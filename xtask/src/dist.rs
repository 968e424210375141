//! `cargo xtask dist`: the release binary, statically linked (glibc's
//! static libraries, `+crt-static`, so it runs on any x86_64 Linux without
//! the build machine's shared libraries), with its SHA-256, in
//! `target/dist/`: `pinion`, `pinion.sha256` (as `sha256sum` writes it)
//! and an empty `state/` for the Dockerfile's volume.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const TARGET: &str = "x86_64-unknown-linux-gnu";

pub fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let build_dir = root.join("target").join("dist-build");
    eprintln!("==> cargo build --release (static, {TARGET})");
    // With `--target`, RUSTFLAGS reach the binary but not build scripts or
    // proc macros, which cannot be static.
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "pinion-cli",
            "--target",
            TARGET,
        ])
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env("CARGO_TARGET_DIR", &build_dir)
        .current_dir(&root)
        .status()
        .map_err(|err| format!("cargo build: {err}"))?;
    if !status.success() {
        return Err(format!("the static build failed ({status})"));
    }
    let built = build_dir.join(TARGET).join("release").join("pinion");
    let bytes = std::fs::read(&built).map_err(|err| format!("{}: {err}", built.display()))?;
    if has_interpreter(&bytes)? {
        return Err(format!(
            "{} asks for a dynamic loader: not statically linked",
            built.display()
        ));
    }
    let out: PathBuf = root.join("target").join("dist");
    std::fs::create_dir_all(out.join("state")).map_err(|err| err.to_string())?;
    let binary = out.join("pinion");
    std::fs::write(&binary, &bytes).map_err(|err| format!("{}: {err}", binary.display()))?;
    set_executable(&binary)?;
    let hash: String = Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let sums = out.join("pinion.sha256");
    std::fs::write(&sums, format!("{hash}  pinion\n")).map_err(|err| err.to_string())?;
    println!(
        "{} ({} bytes, static)\n{hash}  pinion",
        binary.display(),
        bytes.len()
    );
    Ok(())
}

/// Whether an ELF executable has a `PT_INTERP` program header (it asks
/// for a dynamic loader).
pub fn has_interpreter(elf: &[u8]) -> Result<bool, String> {
    let read = |at: usize, len: usize| -> Result<u64, String> {
        let bytes = elf.get(at..at + len).ok_or("a truncated ELF file")?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |value, byte| value << 8 | u64::from(*byte)))
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let phoff = read(0x20, 8)? as usize;
    let phentsize = read(0x36, 2)? as usize;
    let phnum = read(0x38, 2)? as usize;
    for index in 0..phnum {
        const PT_INTERP: u64 = 3;
        if read(phoff + index * phentsize, 4)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

fn set_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|err| format!("{}: {err}", path.display()))
}
