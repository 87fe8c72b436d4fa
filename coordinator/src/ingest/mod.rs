//! The agent QUIC listener (DESIGN §2, §4, §6): enrollment on `argus-enroll/1`, data
//! sessions on `argus-data/1`, and the leader's `up` duty fed by session liveness.
//!
//! - [`listener`]: the endpoint, its accept loop and the per-connection dispatch by ALPN.
//! - [`enroll`]: one `EnrollRequest` per certificate-less connection, rate-limited.
//! - [`session`]: an admitted agent's `Hello`, series definitions, batches and answers.
//! - [`sessions`]: one live connection per agent id.
//! - [`rate`]: the per-source enrollment limiter.
//! - [`liveness`]: who is up, and the duty that writes `up{instance,job}`.
//! - [`counters`]: what the listener counts, rendered on `/metrics`.
//!
//! Who may enroll and which agents are admitted is the fleet's decision, asked through
//! [`crate::fleet::gate::FleetGate`].

pub mod counters;
pub mod enroll;
pub mod listener;
pub mod liveness;
pub mod rate;
pub mod session;
pub mod sessions;

pub use counters::IngestCounters;
pub use listener::{IngestError, IngestNode, Listener, ServerTls, start};

use crate::fleet::gate::{Admission, FleetGate, GateRefusal};
use argus_common::wire::{EnrollOk, EnrollRequest, RenewOk, RenewRequest};
use std::net::SocketAddr;
use std::time::Duration;

/// Listener settings; every field has a default (see [`IngestConfig::default`]).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Batches one connection may have proposed and not yet answered. Must not exceed
    /// the dedup window ([`crate::state::dedup::WINDOW`]). Default 32.
    pub in_flight: usize,
    /// Largest frame accepted from an agent. Default 4 MiB.
    pub max_frame: usize,
    /// Enrollment attempts allowed per source address per minute. Default 10.
    pub enroll_per_minute: u32,
    /// Source addresses the enrollment limiter tracks. Default 4096.
    pub enroll_sources: usize,
    /// Open connections (enrolling and data) at most; more are refused and counted.
    /// Default 20,000.
    pub max_connections: usize,
    /// Time a new connection has for its first message. Default 5 s.
    pub first_message_timeout: Duration,
    /// Agents whose liveness is tracked for `up`. Default 100,000.
    pub max_agents: usize,
    /// How often the leader writes `up`. Default 10 s.
    pub up_interval: Duration,
    /// An agent that sent nothing for this long is down. Default 15 s (the agent sends
    /// a heartbeat every 5 s when it has nothing else to send).
    pub heartbeat_timeout: Duration,
    /// Time an agent needs to reconnect after a coordinator restart or failover (its
    /// backoff is capped at a few seconds); with the timeout it makes the grace period.
    /// Default 10 s.
    pub reconnect_allowance: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            in_flight: argus_common::quic::DEFAULT_IN_FLIGHT,
            max_frame: argus_common::wire::DEFAULT_MAX_FRAME,
            enroll_per_minute: 10,
            enroll_sources: 4096,
            max_connections: 20_000,
            first_message_timeout: Duration::from_secs(5),
            max_agents: 100_000,
            up_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(15),
            reconnect_allowance: Duration::from_secs(10),
        }
    }
}

impl IngestConfig {
    /// DESIGN §3.3: heartbeat timeout plus reconnect time.
    pub fn grace(&self) -> Duration {
        self.heartbeat_timeout + self.reconnect_allowance
    }

    pub fn up_timing(&self) -> liveness::UpTiming {
        liveness::UpTiming {
            interval: self.up_interval,
            timeout: self.heartbeat_timeout,
            grace: self.grace(),
        }
    }
}

/// A gate that refuses everything, for a node whose fleet cannot enroll or admit yet:
/// the port is up and answers with a reason instead of timing out.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClosedGate;

impl FleetGate for ClosedGate {
    async fn enroll(&self, _: EnrollRequest, _: SocketAddr) -> Result<EnrollOk, GateRefusal> {
        Err(GateRefusal::unavailable(
            "enrollment is not available on this node",
        ))
    }

    async fn renew(&self, _: &str, _: RenewRequest, _: SocketAddr) -> Result<RenewOk, GateRefusal> {
        Err(GateRefusal::unavailable(
            "renewal is not available on this node",
        ))
    }

    fn admit(&self, _: &[u8], _: SocketAddr) -> Result<Admission, GateRefusal> {
        Err(GateRefusal::unavailable(
            "agents are not admitted on this node",
        ))
    }
}
