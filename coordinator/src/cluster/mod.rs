//! The Raft node (DESIGN §2, §4, §8).
//!
//! - [`node`]: the Ready loop, in one file, as a step function over three traits: [`LogStorage`],
//!   [`Transport`] and [`Apply`]. The threaded [`runner`] and the cluster issue's deterministic
//!   harness drive the same step function.
//! - [`storage`]: the [`LogStorage`] trait, and the log in a fjall database as older
//!   binaries kept it.
//! - [`segment_log`]: the log as append-only segment files, what a node runs on.
//! - [`log_migration`]: carries an old fjall log over into segment files.
//! - [`mem_storage`]: an in-memory log that loses unsynced writes at a simulated crash (tests).
//! - [`transport`]: the peer transport seam; only "no peers" exists until the cluster issue.
//! - [`apply`]: the state-machine seam and the apply worker that runs off the Ready thread.
//! - [`proposal`]: the entry envelope (leader's time + payload) and the proposer handle.
//! - `sim` (tests only): the deterministic multi-node harness over the same step function,
//!   with an in-memory network, crashes and restarts, replayable from a printed seed.
//! - [`stats`]: counters for `/metrics`.
//! - [`doorbell`], [`logging`]: a wake-up primitive and the raft-rs → tracing log bridge.

pub mod apply;
pub mod doorbell;
pub mod log_migration;
pub mod logging;
pub mod mem_storage;
pub mod node;
pub mod proposal;
pub mod runner;
pub mod segment_log;
#[cfg(test)]
mod sim;
pub mod stats;
pub mod storage;
pub mod transport;

pub use apply::{Apply, ApplyWorker, CommittedEntry, EntryKind};
pub use mem_storage::MemLogStorage;
pub use node::{NodeConfig, NodeError, NodeParts, NodeStatus, RaftNode, ReadyOutcome, Role};
pub use proposal::{Applied, ProposalReceipt, ProposeError, Proposer};
pub use runner::{NodeHandle, spawn};
pub use segment_log::SegmentLogStorage;
pub use stats::{NodeStats, StatsSnapshot};
pub use storage::{FjallLogStorage, LogError, LogStorage};
pub use transport::{NoPeers, Transport};
