//! The real `promtool` (Debian package `prometheus`) as the judge of what we emit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Lint findings Argus keeps on purpose, each because node_exporter emits the same
/// name and renaming it would break the dashboards and rules users already have.
pub const KNOWN_LINTS: &[&str] = &[
    // node_memory_MemTotal_bytes and friends keep /proc/meminfo's field names.
    "metric names should be written in 'snake_case' not 'camelCase'",
    // node_entropy_available_bits and node_entropy_pool_size_bits.
    "use base unit \"bytes\" instead of \"bits\"",
];

/// The promtool binary, or None after a loud skip message. With `CI` set a missing
/// promtool fails the test instead: CI installs it.
pub fn find() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is required in CI (Debian package `prometheus`)"
        );
        eprintln!("\n*** SKIPPED: promtool not found (apt-get install prometheus) ***\n");
    }
    found
}

/// Runs `promtool check metrics` on `text`: its exit code (0 clean, 1 unparsable,
/// 3 lint findings) and everything it printed.
pub fn run_check_metrics(promtool: &Path, text: &str) -> Result<(Option<i32>, String), String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("promtool has no stdin")?;
    stdin
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing to promtool: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for promtool: {e}"))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code(), report))
}

/// Runs `promtool check metrics` on `text`. Err carries every parse error and every
/// lint finding not in [`KNOWN_LINTS`].
pub fn check_metrics(promtool: &Path, text: &str) -> Result<(), String> {
    let (code, report) = run_check_metrics(promtool, text)?;
    if code == Some(1) || report.contains("error while linting") {
        return Err(format!("promtool could not parse the output:\n{report}"));
    }
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !KNOWN_LINTS.iter().any(|k| l.contains(k)))
        .collect();
    if unexpected.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "unexpected promtool findings:\n{}",
            unexpected.join("\n")
        ))
    }
}
