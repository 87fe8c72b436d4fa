//! Our own binaries for tests and benchmarks that run them as real processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

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

/// The debug binary `bin` of any workspace package, for an integration test of another
/// package (cargo names only the package's own, `CARGO_BIN_EXE_*`). Asked of cargo once
/// per process and name, never taken stale from an earlier build: it asks for the
/// workspace's tests, as CI's `cargo test --workspace` builds them, so under CI this is
/// a no-op, and the features of shared dependencies match (a narrower selection such as
/// `-p argus-agent` would compile them again).
pub fn workspace_binary(bin: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| "a previous build panicked".to_string())?;
    if let Some(path) = built.get(bin) {
        return Ok(path.clone());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // What cargo set for running the calling test is not the environment the build ran
    // in; passed on, it would make cargo rebuild (and the next build rebuild back).
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let set_for_the_test = k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
                "LD_LIBRARY_PATH",
            ]
            .contains(&k.as_ref());
        if set_for_the_test {
            cmd.env_remove(k.as_ref());
        }
    }
    let out = cmd
        .args([
            "test",
            "--workspace",
            "--locked",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&root)
        .output()
        .map_err(|e| format!("running cargo test --no-run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the workspace's tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == bin
                && m["profile"]["test"] == false
                && m["target"]["kind"][0] == "bin"
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo built no binary named {bin}"))?;
    built.insert(bin.to_string(), path.clone());
    Ok(path)
}
