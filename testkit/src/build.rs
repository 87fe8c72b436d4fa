//! Release builds of our own binaries, for benchmarks that run them as real processes.

use std::path::PathBuf;
use std::process::Command;

/// Builds `bin` of `package` in release mode and returns its path, honouring
/// `CARGO_TARGET_DIR`. Benchmarks measure the binary users run, not a debug build.
pub fn release_binary(package: &str, bin: &str) -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", package, "--bin", bin])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of {bin} failed"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join(bin))
}
