//! Support shared by integration tests and benchmarks.
//!
//! - [`docker`]: a test image built from Debian's busybox-static (no registry can be
//!   reached), and containers that are removed however the test ends.
//! - [`bench`]: environment knobs and a self-removing directory for benchmarks.
//! - [`proc`]: CPU and memory of processes, for benchmarks.
//! - [`promtool`]: the real promtool validating our exposition output.

pub mod bench;
pub mod build;
pub mod child;
pub mod docker;
pub mod http;
pub mod proc;
pub mod prometheus;
pub mod promtool;
