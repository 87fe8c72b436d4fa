//! The error every config loader reports through, so that a mistake always names
//! the file, the key and what was expected (DESIGN §5).

use std::path::PathBuf;

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
