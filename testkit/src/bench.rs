//! Small pieces every benchmark under benches/ needs.

use std::path::{Path, PathBuf};

/// A `usize` knob from the environment (`_` allowed as a digit separator, as in
/// `ARGUS_BENCH_SAMPLES=10_000_000`), or `default` when unset or unparsable.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A directory removed when the bench ends, however it ends (a failed step included).
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<temp>/<prefix>-<pid>`, created.
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
