//! Pieces the benchmarks under `benches/` share.
//!
//! - [`server`] runs `argus serve` and `victoria-metrics` as measured child processes;
//! - [`http`] is a keep-alive HTTP/1.1 client with `/metrics` scrapes;
//! - [`remote_write`] sends prepared remote-write bodies as Prometheus does;
//! - [`stats`] has quantiles;
//! - [`fleet`] is a coordinator's admin API: join tokens and agent revocation;
//! - [`loadgen`] plays simulated agents over real QUIC and mutual TLS.

pub mod fleet;
pub mod http;
pub mod loadgen;
pub mod remote_write;
pub mod server;
pub mod stats;
