//! The CLI config file `cluster init` writes (`<data>/cluster/cli.toml`, 0600) and the
//! admin commands (`argus token ...`) read: where the coordinator is and the admin token.
//!
//! Each setting comes from, in order: a flag, the environment (`ARGUS_URL`,
//! `ARGUS_TOKEN`), then the first config file found among `--cli-config`,
//! `<data-dir>/cluster/cli.toml` (`--data-dir`, default `./argus-data`, where `argus
//! serve` and `argus demo` keep their data), and `~/.config/argus/cli.toml`.

use argus_common::pki::write_private_file;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CliConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(
        "no {what}: pass --{flag}, set {env}, or run this where `argus cluster init` wrote its cli.toml (looked in: {looked})"
    )]
    Missing {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
        looked: String,
    },
}

/// Where the admin API is and the token it takes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// Base URL of a coordinator's HTTP API, e.g. `http://127.0.0.1:3006`.
    pub url: String,
    /// Bearer token sent with every request.
    pub token: String,
}

impl std::fmt::Debug for CliConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Largest config file read; ours are about 100 bytes.
const MAX_FILE_BYTES: u64 = 64 << 10;

impl CliConfig {
    /// Writes the file with mode 0600, atomically: it holds the admin token.
    pub fn write(&self, path: &Path) -> Result<(), CliConfigError> {
        let body = toml::to_string(self).map_err(|e| CliConfigError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let text = format!(
            "# Written by `argus cluster init`; read by `argus token ...`. Holds the admin token: keep it 0600.\n{body}"
        );
        write_private_file(path, text.as_bytes()).map_err(|e| CliConfigError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    pub fn read(path: &Path) -> Result<CliConfig, CliConfigError> {
        use std::io::Read as _;
        let io = |source| CliConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(io)?;
        toml::from_str(&text).map_err(|e| CliConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })
    }

    /// Fills what the flags and environment left out from the first file of `files`
    /// that exists. A file that exists but cannot be read is an error, not skipped: the
    /// user meant it.
    pub fn resolve(
        url: Option<String>,
        token: Option<String>,
        files: &[PathBuf],
    ) -> Result<CliConfig, CliConfigError> {
        let (url, token) = match (url, token) {
            (Some(u), Some(t)) => (Some(u), Some(t)),
            (u, t) => match files.iter().find(|p| p.exists()) {
                Some(p) => {
                    let c = CliConfig::read(p)?;
                    (u.or(Some(c.url)), t.or(Some(c.token)))
                }
                None => (u, t),
            },
        };
        let looked = || {
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let url = url.ok_or_else(|| CliConfigError::Missing {
            what: "coordinator URL",
            flag: "url",
            env: "ARGUS_URL",
            looked: looked(),
        })?;
        let token = token.ok_or_else(|| CliConfigError::Missing {
            what: "admin token",
            flag: "token",
            env: "ARGUS_TOKEN",
            looked: looked(),
        })?;
        Ok(CliConfig { url, token })
    }

    /// The files [`CliConfig::resolve`] looks in, in order.
    pub fn candidates(
        explicit: Option<&Path>,
        data_dir: &Path,
        home: Option<&Path>,
    ) -> Vec<PathBuf> {
        if let Some(p) = explicit {
            return vec![p.to_path_buf()];
        }
        let mut out = vec![
            data_dir
                .join(super::cluster_files::CLUSTER_DIR)
                .join("cli.toml"),
        ];
        if let Some(h) = home {
            out.push(h.join(".config/argus/cli.toml"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn flags_win_then_the_first_file_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        CliConfig {
            url: "http://a".into(),
            token: "ta".into(),
        }
        .write(&b)
        .unwrap();
        assert_eq!(
            std::fs::metadata(&b).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let files = vec![a.clone(), b.clone()];
        let c = CliConfig::resolve(None, None, &files).unwrap();
        assert_eq!((c.url.as_str(), c.token.as_str()), ("http://a", "ta"));
        let c = CliConfig::resolve(Some("http://flag".into()), None, &files).unwrap();
        assert_eq!((c.url.as_str(), c.token.as_str()), ("http://flag", "ta"));
        let err = CliConfig::resolve(Some("http://x".into()), None, std::slice::from_ref(&a))
            .unwrap_err();
        assert!(err.to_string().contains("ARGUS_TOKEN"), "{err}");
        std::fs::write(&a, "url = 3\n").unwrap();
        let err = CliConfig::resolve(None, None, &files).unwrap_err();
        assert!(err.to_string().contains("a.toml"), "{err}");
        assert!(!format!("{c:?}").contains("ta\""));
    }

    #[test]
    fn candidates_put_an_explicit_file_alone() {
        let home = Path::new("/home/u");
        assert_eq!(
            CliConfig::candidates(None, Path::new("d"), Some(home)),
            vec![
                PathBuf::from("d/cluster/cli.toml"),
                PathBuf::from("/home/u/.config/argus/cli.toml")
            ]
        );
        assert_eq!(
            CliConfig::candidates(Some(Path::new("x.toml")), Path::new("d"), Some(home)),
            vec![PathBuf::from("x.toml")]
        );
    }
}
