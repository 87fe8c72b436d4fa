//! The error every config loader reports through, so that a mistake always names
//! the file, the key and what was expected (DESIGN §5).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config problem located precisely enough for an operator to fix it without
/// reading our source.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    #[error("{file}: {key}: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{file}: unknown key `{key}`{hint}")]
    UnknownKey {
        file: PathBuf,
        key: String,
        /// Either empty or `; did you mean `x`?`.
        hint: String,
    },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
}

/// A duration written as `500ms`, `10s`, `5m` or `1h`, as Prometheus writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
            format!("`{s}` has no unit; expected a number followed by ms, s, m or h")
        })?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` does not start with a whole number"))?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => {
                return Err(format!(
                    "`{s}` has unknown unit `{unit}`; expected ms, s, m or h"
                ));
            }
        };
        ms.map(|ms| HumanDuration(Duration::from_millis(ms)))
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms > 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms > 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Every problem found while loading a config file, in file order where known.
#[derive(Debug, Default)]
pub struct Problems {
    /// Problems that leave no usable config (syntax, a value of the wrong type).
    pub errors: Vec<ConfigError>,
    /// Problems a running program can work around: unknown keys, unusable entries.
    pub recoverable: Vec<ConfigError>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty() && self.recoverable.is_empty()
    }

    pub fn all(&self) -> impl Iterator<Item = &ConfigError> {
        self.errors.iter().chain(&self.recoverable)
    }
}

/// Which `ARGUS_<SECTION>_<KEY>` variables a program reads.
#[derive(Debug, Clone, Copy)]
pub struct EnvSections<'a> {
    /// Sections a variable may override.
    pub sections: &'a [&'a str],
    /// Sections that exist only in the file (arrays of tables); a variable naming one is
    /// reported rather than applied.
    pub file_only: &'a [&'a str],
}

/// Parses TOML `text` into `T`, applying `ARGUS_<SECTION>_<KEY>` overrides from `env`.
///
/// Errors name the file and the dotted key (`spool.max_bytes`, `probe[2].url`); a syntax
/// error names the line. Unknown keys do not fail the parse: they come back as
/// recoverable problems, so a caller decides whether they are fatal. `T` must use
/// `#[serde(default)]` for a file to be allowed to leave keys out.
pub fn parse_toml<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
    sections: EnvSections<'_>,
) -> (Option<T>, Problems) {
    let mut problems = Problems::default();
    let file = path.to_path_buf();
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            problems.errors.push(ConfigError::Invalid {
                file,
                key: line_of(text, e.span()),
                reason: e.message().to_string(),
            });
            return (None, problems);
        }
    };
    apply_env(&mut table, env, sections, &mut problems);
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(toml::Value::Table(table), &mut track);
    let parsed: Result<T, _> = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()));
    match parsed {
        Ok(cfg) => {
            for key in unknown {
                problems.recoverable.push(ConfigError::UnknownKey {
                    file: file.clone(),
                    key,
                    hint: String::new(),
                });
            }
            (Some(cfg), problems)
        }
        Err(e) => {
            problems.errors.push(ConfigError::Invalid {
                file,
                key: track.path().to_string(),
                reason: e.to_string(),
            });
            (None, problems)
        }
    }
}

/// As [`parse_toml`], reading the file first.
pub fn load_toml<T: DeserializeOwned>(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
    sections: EnvSections<'_>,
) -> (Option<T>, Problems) {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_toml(&text, path, env, sections),
        Err(e) => {
            let mut p = Problems::default();
            p.errors.push(ConfigError::Unreadable {
                file: path.to_path_buf(),
                reason: e.to_string(),
            });
            (None, p)
        }
    }
}

/// Where a TOML syntax error is, as `line N`.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return "(syntax)".into();
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    format!("line {line}")
}

/// Applies `ARGUS_<SECTION>_<KEY>=value` overrides. A value that parses as TOML
/// (number, bool, array) keeps that type; anything else is a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    sections: EnvSections<'_>,
    problems: &mut Problems,
) {
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("ARGUS_") else {
            continue;
        };
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if sections.file_only.contains(&section.as_str()) {
            problems.recoverable.push(ConfigError::Env {
                var,
                reason: format!("[[{section}]] can only be configured in the file"),
            });
            continue;
        }
        // The ARGUS_ prefix is shared by every Argus program; a section this one does
        // not have is another program's variable, not a mistake.
        if !sections.sections.contains(&section.as_str()) {
            continue;
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, value);
            }
            _ => problems.errors.push(ConfigError::Env {
                var,
                reason: format!("`{section}` is not a section"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(
            HumanDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            HumanDuration::parse("2m").unwrap().0,
            Duration::from_secs(120)
        );
        assert_eq!(HumanDuration::parse("1h").unwrap().to_string(), "1h");
        assert!(HumanDuration::parse("10").unwrap_err().contains("no unit"));
        assert!(
            HumanDuration::parse("10d")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(HumanDuration::parse("99999999999999999999h").is_err());
    }
}
