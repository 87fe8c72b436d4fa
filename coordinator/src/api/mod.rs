//! The coordinator's HTTP API (DESIGN §4: axum routers, auth, error mapping).
//!
//! The Prometheus-protocol pieces are pure and I/O-free, so they are tested without
//! sockets; the server wiring calls them:
//!
//! - [`remote_write`]: remote-write 1.0 decoding (snappy + protobuf), validation with
//!   per-series refusals, header checks, and an encoder for tests and benchmarks.
//! - [`exposition`]: text format 0.0.4 for `/federate`.
//! - [`selector`]: `match[]` series selectors (`name{a="b",c=~"d.*"}`).
//! - [`prom_json`]: the Prometheus HTTP API JSON envelope and data shapes.
//! - [`query`]: `/api/v1/query`, `/api/v1/query_range` and `/api/v1/query_exemplars`.
//! - [`auth`]: bearer token to principal with a role, and the role each route needs.
//! - `protowire`: the protobuf wire-format reader and writer under `remote_write`.

pub mod auth;
pub mod exposition;
pub mod http;
pub mod prom_json;
mod protowire;
pub mod query;
pub mod remote_write;
pub mod selector;
