//! The time-series store (DESIGN §2, §4), reached only through its append and select API.
//!
//! Layout:
//! - [`index`]: series identity (metric name + sorted labels → [`SeriesId`]), the inverted
//!   index behind label matchers, and per-metric metadata.
//! - [`head`]: recent samples in memory: an open chunk per series, out-of-order
//!   handling, and chunks sealed once their out-of-order window has closed, waiting for
//!   the persistence layer to take them.
//! - [`chunk`]: the codec for a run of one series' samples (bit-level helpers in `bits`).
//! - [`mix`]: the realistic sample mix the codec tests and the benchmark share.
//!
//! Everything here is deterministic: no clocks, no randomness in logical state, time
//! passed in as arguments, because the same apply runs on every Raft node (DESIGN §3.2).
//! The persistence layer (fjall), tiers and retention build on these types.

pub mod aggregate;
mod bits;
pub mod chunk;
pub mod head;
pub mod index;
pub mod mix;
pub mod store;
pub mod tier;

pub use chunk::ChunkError;
pub use head::{Head, HeadConfig, HeadSnapshot, HeadStats, Refusal, SealedChunk, SeriesSnapshot};
pub use index::{IndexSnapshot, MatchOp, Matcher, Metadata, SeriesId, SeriesIndex};

/// Errors of the store layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsdbError {
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("invalid metric name {0:?}")]
    InvalidMetricName(String),
    #[error("invalid label name {0:?}")]
    InvalidLabelName(String),
    #[error("label name {0:?} is reserved: names starting with \"__\" are refused")]
    ReservedLabelName(String),
    #[error("labels are not sorted by name or repeat a name")]
    UnsortedLabels,
    #[error("a selector must contain at least one matcher that does not match the empty string")]
    EmptySelector,
    #[error("invalid regular expression {regex:?} for label {label:?}: {reason}")]
    BadRegex {
        label: String,
        regex: String,
        reason: String,
    },
    #[error(
        "{what} format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        what: &'static str,
        found: u8,
        supported: u8,
    },
    #[error("invalid tsdb setting {key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
}
