//! The seam between the agent QUIC listener (`ingest`) and the fleet.
//!
//! The listener owns sockets, TLS and framing; the fleet owns who may enroll, which
//! certificates are issued, and which agents are admitted. Keeping the questions the
//! listener asks in one trait lets each side be tested without the other: ingest tests
//! use a small in-test gate, fleet tests call the implementation without a socket.

use argus_common::wire::{EnrollOk, EnrollRequest, RenewOk, RenewRequest};
use std::future::Future;
use std::net::SocketAddr;

/// Why the fleet said no. `reason` goes back to the agent (in `Refused`) and into the
/// log; it names what is wrong ("token expired", "agent revoked") but never echoes a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct GateRefusal {
    pub kind: RefusalKind,
    pub reason: String,
}

/// What kind of no, so the listener can decide between closing and telling the agent to
/// come back later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The request is not acceptable and retrying will not help (bad token, revoked).
    Denied,
    /// Too many attempts from this source; try again later.
    RateLimited,
    /// This node cannot decide now (not the leader, log full); try again or elsewhere.
    Unavailable,
}

impl GateRefusal {
    pub fn denied(reason: impl Into<String>) -> Self {
        GateRefusal {
            kind: RefusalKind::Denied,
            reason: reason.into(),
        }
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        GateRefusal {
            kind: RefusalKind::Unavailable,
            reason: reason.into(),
        }
    }
}

/// An admitted data connection: what the coordinator knows about the agent behind a
/// certificate that passed the chain check and the agent-record check.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The agent id from the certificate's URI SAN; `Hello.agent_id` must equal it.
    pub agent_id: String,
    /// The agent's `instance` label value, unique among live agents.
    pub instance: String,
    /// The presented certificate's not-after; the listener closes the connection then.
    pub cert_not_after_ms: i64,
    /// Turns true when the agent is revoked; the listener closes the connection within
    /// a second of it.
    pub revoked: tokio::sync::watch::Receiver<bool>,
}

/// What the agent listener asks the fleet.
pub trait FleetGate: Send + Sync + 'static {
    /// Enrollment over `argus-enroll/1` (no client certificate): spend the token through
    /// the log, sign the CSR, log the serial. Idempotent on (token id, CSR key hash).
    fn enroll(
        &self,
        req: EnrollRequest,
        from: SocketAddr,
    ) -> impl Future<Output = Result<EnrollOk, GateRefusal>> + Send;

    /// Renewal over an admitted `argus-data/1` connection.
    fn renew(
        &self,
        agent_id: &str,
        req: RenewRequest,
        from: SocketAddr,
    ) -> impl Future<Output = Result<RenewOk, GateRefusal>> + Send;

    /// Checks a data connection's leaf certificate (DER, chain already verified against
    /// the cluster CA) against the agent record: a known, unrevoked agent whose id is the
    /// certificate's URI SAN.
    fn admit(&self, cert_der: &[u8], from: SocketAddr) -> Result<Admission, GateRefusal>;

    /// An admitted agent's `Hello` was accepted: the fleet records its version and that it
    /// was seen (sparsely: how often that becomes a log entry is the fleet's business).
    fn hello(&self, _agent_id: &str, _agent_version: &str) {}
}
