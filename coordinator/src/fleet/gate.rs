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

    /// A connection from `from` failed its TLS handshake, so nothing was read from it:
    /// a client certificate from a foreign CA, or an agent whose join string pins
    /// another CA and so refused this coordinator. The fleet audits it (merged per
    /// source and minute, like every failed attempt).
    fn handshake_failed(&self, _from: SocketAddr, _failure: HandshakeFailure) {}
}

/// Which side of a failed TLS handshake said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client refused this coordinator's certificate: for an enrolling agent, its
    /// join string pins another cluster's CA.
    ClientRefusedServer,
    /// This coordinator refused the client's certificate (a foreign CA, not an agent's).
    ServerRefusedClient,
}

impl HandshakeFailure {
    /// The failure a TLS error of `e` means, `None` for one that is not about
    /// certificates (a timeout, a client that went away), which is only counted.
    pub fn of(e: &quinn::ConnectionError) -> Option<HandshakeFailure> {
        // QUIC carries TLS alerts as CRYPTO_ERROR codes 0x100..=0x1ff (RFC 9001 §4.8).
        let tls_alert = |code: u64| (0x100..=0x1ff).contains(&code);
        match e {
            quinn::ConnectionError::ConnectionClosed(c) if tls_alert(c.error_code.into()) => {
                Some(HandshakeFailure::ClientRefusedServer)
            }
            quinn::ConnectionError::TransportError(t) if tls_alert(t.code.into()) => {
                Some(HandshakeFailure::ServerRefusedClient)
            }
            _ => None,
        }
    }

    /// The audit record's outcome.
    pub fn audit_key(self) -> &'static str {
        match self {
            HandshakeFailure::ClientRefusedServer => "client_refused_coordinator_certificate",
            HandshakeFailure::ServerRefusedClient => "client_certificate_refused",
        }
    }
}
