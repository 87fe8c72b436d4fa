//! The replicated state machine (DESIGN §2, §3.2): entry kinds, and the deterministic
//! apply that every node runs in log order.
//!
//! - [`entry`]: the versioned, append-only entry kinds.
//! - [`dedup`]: exactly-once apply of agent batches over at-least-once delivery.
//! - [`machine`]: what each entry does to the series index, head and agent state.
//! - [`replica`]: the machine as the Raft node drives it: store writes and checkpoints.
//! - [`checkpoint_file`]: where a checkpoint is kept, replaced atomically.
//! - [`compression`]: zstd over large entries and checkpoints, bounded on decode.

pub mod checkpoint_file;
pub mod compression;
pub mod dedup;
pub mod entry;
pub mod machine;
pub mod replica;
