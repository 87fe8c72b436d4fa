//! The Argus coordinator (DESIGN §2, §4).
//!
//! Dependencies point one way: `api` → `state` → (`fleet`, `tsdb`); `cluster` drives the Raft log
//! and hands committed entries to `state`. Nothing below imports what is above it.
//!
//! - [`cluster`]: the Raft node (its Ready loop in one file), log storage, peer transport.
//! - [`state`]: the replicated state machine and its versioned entry kinds.
//! - [`tsdb`]: series index, compressed chunks, tiers and retention.
//! - [`fleet`]: cluster init (CA, node certificate, admin token), join tokens.
//! - [`ingest`]: the agent QUIC listener: enrollment, data sessions, `up`.
//! - [`api`]: HTTP endpoints (remote write, federation, series metadata).
//! - [`server`]: `argus serve`: one node assembled from all of the above.
//! - [`config`]: the coordinator config file, `argus.toml`.

pub mod api;
pub mod cluster;
pub mod config;
pub mod fleet;
pub mod ingest;
pub mod query;
pub mod server;
pub mod state;
pub mod tsdb;
