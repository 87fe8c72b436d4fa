//! argus-common: everything the agent and the coordinator must agree on.
//!
//! - [`model`]: samples, labels, series definitions and metric naming rules.
//! - [`wire`]: the framed, versioned protocol spoken over QUIC.
//! - [`config`]: the error type every config loader reports through.
//! - [`pki`]: the cluster CA, certificates, identities, join strings and TLS verifiers.
//! - [`quic`]: ALPNs, transport settings and TLS configs of the agent uplink.

pub mod config;
pub mod model;
pub mod pki;
pub mod quic;
pub mod wire;
