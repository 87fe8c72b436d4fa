//! QUIC settings both ends of the agent uplink must agree on (DESIGN §6).
//!
//! One coordinator endpoint serves two ALPNs:
//! - [`ALPN_ENROLL`]: no client certificate; the agent may send one `EnrollRequest` and
//!   read the answer. The agent checks that the server's chain ends at the CA pinned in
//!   its join string, so the coordinator presents `[node certificate, CA certificate]`.
//! - [`ALPN_DATA`]: mutual TLS; the client certificate must chain to the cluster CA and
//!   name an agent. The TLS layer makes the client certificate optional (so enrollment
//!   works on the same port); the listener closes a data connection without one before
//!   reading any stream.
//!
//! quinn's defaults (30 s idle timeout, no keep-alive, windows of megabytes per stream)
//! would keep a dead agent "connected" for half a minute and let one agent park far
//! more unacknowledged data in the coordinator than its in-flight limit allows, so the
//! transport here has a ~3 s idle timeout, a 1 s keep-alive, and flow-control windows
//! derived from the in-flight limit.

use crate::pki::{
    CaPin, ClusterClientVerifier, CoordinatorServerVerifier, PkiError, crypto_provider,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;

/// ALPN of enrollment: no client certificate, one `EnrollRequest`, rate-limited.
pub const ALPN_ENROLL: &[u8] = b"argus-enroll/1";
/// ALPN of data connections: mutual TLS, `Hello` then batches.
pub const ALPN_DATA: &[u8] = b"argus-data/1";

/// A connection silent for this long is dead: with a 1 s keep-alive, three missed
/// keep-alives. An agent behind it reconnects (to this node or another) within seconds.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Keep-alive interval: keeps NAT bindings and the idle timer fresh on a quiet link.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Default number of batches an agent may have sent and not yet seen answered.
pub const DEFAULT_IN_FLIGHT: usize = 32;
/// Expected size of one batch on the wire (a busy host's 10 s tick is a few tens of
/// KiB); the windows are sized for `in_flight` of these.
pub const TYPICAL_BATCH_BYTES: u64 = 64 * 1024;
/// Smallest window, so a single larger frame (series definitions after a restart)
/// still moves in a few round trips.
pub const MIN_WINDOW: u64 = 1 << 20;
/// Largest window whatever the in-flight limit says.
pub const MAX_WINDOW: u64 = 16 << 20;

/// Why a QUIC config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("TLS config: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS config cannot be used for QUIC: {0}")]
    NotQuic(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Flow-control window for `in_flight` batches: the receiver never holds more unread
/// data from one peer than that many typical batches, within [`MIN_WINDOW`] and
/// [`MAX_WINDOW`].
pub fn window_bytes(in_flight: usize) -> u64 {
    (in_flight as u64)
        .saturating_mul(TYPICAL_BATCH_BYTES)
        .clamp(MIN_WINDOW, MAX_WINDOW)
}

/// The transport of both ends. `incoming_bidi` is how many bidirectional streams the
/// peer may open: 1 on the coordinator (the agent's session stream), 0 on the agent.
pub fn transport_config(in_flight: usize, incoming_bidi: u32) -> TransportConfig {
    let window = window_bytes(in_flight);
    let varint = VarInt::from_u64(window).unwrap_or(VarInt::MAX);
    let mut t = TransportConfig::default();
    t.max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .stream_receive_window(varint)
        .receive_window(varint)
        .send_window(window)
        .max_concurrent_bidi_streams(VarInt::from_u32(incoming_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    t
}

/// QUIC carries TLS 1.3 only.
static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn tls13() -> &'static [&'static rustls::SupportedProtocolVersion] {
    &TLS13
}

/// The coordinator's endpoint config: both ALPNs, `chain` = `[node cert, CA cert]`,
/// client certificates optional at the TLS layer but, when presented, checked in full
/// against `ca_der` (chain, clientAuth, an `argus://agent/` URI SAN).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca_der: &CertificateDer<'_>,
    in_flight: usize,
) -> Result<quinn::ServerConfig, QuicError> {
    // Whether the agent is known and not revoked is the fleet's question, asked after the
    // handshake (`FleetGate::admit`), where the answer can carry the agent record.
    let accept = Arc::new(|_: &crate::pki::ArgusIdentity| Ok(()));
    let verifier = ClusterClientVerifier::new(ca_der, crate::pki::Role::Agent, accept, true)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(tls13())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN_DATA.to_vec(), ALPN_ENROLL.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| QuicError::NotQuic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config(in_flight, 1)));
    Ok(cfg)
}

fn client_from(
    mut tls: rustls::ClientConfig,
    alpn: &[u8],
    in_flight: usize,
) -> Result<quinn::ClientConfig, QuicError> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| QuicError::NotQuic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport_config(in_flight, 0)));
    Ok(cfg)
}

/// The agent's enrollment client: no client certificate; the server's chain must
/// contain the CA whose key the join string pins, and its leaf must chain to it.
pub fn enroll_client_config(pin: CaPin) -> Result<quinn::ClientConfig, QuicError> {
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(tls13())?
        .dangerous()
        .with_custom_certificate_verifier(CoordinatorServerVerifier::pinned(pin))
        .with_no_client_auth();
    client_from(tls, ALPN_ENROLL, 1)
}

/// The agent's data client: its certificate and key, trusting the stored cluster CA.
pub fn data_client_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    ca_der: &CertificateDer<'_>,
    in_flight: usize,
) -> Result<quinn::ClientConfig, QuicError> {
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(tls13())?
        .dangerous()
        .with_custom_certificate_verifier(CoordinatorServerVerifier::with_ca(ca_der)?)
        .with_client_auth_cert(vec![cert], key)?;
    client_from(tls, ALPN_DATA, in_flight)
}

/// The ALPN a connection negotiated, if any.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The peer's leaf certificate (DER), if it presented one that passed the TLS checks.
pub fn peer_leaf(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .into_iter()
        .next()
}

/// Application close codes, so either side can log why the other hung up.
pub mod close {
    use quinn::VarInt;
    /// Orderly end (shutdown, or a replaced connection).
    pub const DONE: VarInt = VarInt::from_u32(0);
    /// The peer broke the protocol (garbage, oversized frame, wrong order).
    pub const PROTOCOL: VarInt = VarInt::from_u32(1);
    /// Refused: no certificate, unknown or revoked agent, id mismatch, enrollment refused.
    pub const REFUSED: VarInt = VarInt::from_u32(2);
    /// The certificate expired or the agent was revoked while connected.
    pub const EXPIRED: VarInt = VarInt::from_u32(3);
    /// A newer connection of the same agent took over.
    pub const REPLACED: VarInt = VarInt::from_u32(4);
    /// Too many attempts from this source.
    pub const RATE_LIMITED: VarInt = VarInt::from_u32(5);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_in_flight_limit_within_bounds() {
        assert_eq!(window_bytes(0), MIN_WINDOW);
        assert_eq!(window_bytes(32), 32 * TYPICAL_BATCH_BYTES);
        assert_eq!(window_bytes(100_000), MAX_WINDOW);
    }
}
