//! argus-agent: collects host, container and probe metrics on one host.
//!
//! - [`collect`]: one collector per family (host, containers, probes, the agent itself).
//! - [`collection`]: one tick of every collector, stamped with the scheduled time.
//! - [`series`]: refs for series and StaleNaN for those that vanished.
//! - [`spool`]: the on-disk bounded queue batches wait in until acknowledged.
//! - [`exposition`]: the Prometheus text format and JSON renderings.
//! - [`runner`] and [`serve`]: the `run` and `serve-metrics` commands.
//! - [`uplink`]: enrollment and the QUIC session that drains the spool.
//! - [`config`]: the agent's TOML config file.

pub mod collect;
pub mod collection;
pub mod config;
pub mod exposition;
pub mod runner;
pub mod series;
pub mod serve;
pub mod spool;
pub mod tls;
pub mod uplink;
