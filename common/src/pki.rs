//! The cluster's public-key infrastructure (issue 5, DESIGN §3.6): the cluster CA,
//! coordinator and agent certificates, the identities their URI SANs carry, join strings,
//! and the certificate checks the QUIC endpoints use.
//!
//! Everything here is a pure library: functions that need the time take it as an
//! argument (milliseconds since the Unix epoch, as log entries carry it), so the
//! coordinator can sign with the time of the entry that consumed the token. Randomness
//! (keys, serials, token secrets) comes from ring's `SystemRandom`; rustls runs with the
//! ring provider only, as there is to be one crypto provider in the tree (DESIGN §6).
//!
//! - [`ca`]: the cluster CA, certificate issuing, node keys and CSRs.
//! - [`identity`]: `argus://agent/<id>` and `argus://coordinator/<id>` URI SANs, CA pins.
//! - [`join`]: the join string and the token secret's hash.
//! - [`verify`]: chain-to-pin checks and the rustls certificate verifiers built on them.
//! - [`files`]: writing private keys with mode 0600, atomically.

pub mod ca;
pub mod files;
pub mod identity;
pub mod join;
pub mod verify;

pub use ca::{
    AGENT_CERT_LIFETIME, CA_LIFETIME, CERT_BACKDATE, COORDINATOR_CERT_LIFETIME, CertInfo,
    ClusterCa, CoordinatorCertSpec, IssuedCert, MIN_LEAF_LIFETIME, NodeKey, Serial, VerifiedCsr,
    cert_from_pem,
};
pub use files::write_private_file;
pub use identity::{ArgusIdentity, CaPin, Role, identity_from_cert_der};
pub use join::{JoinAddr, JoinHost, JoinString, SecretHash, TokenId, TokenSecret};
pub use verify::{
    ClusterClientVerifier, CoordinatorServerVerifier, IdentityCheck, crypto_provider, pki_error_of,
    verify_chain_to_ca, verify_chain_to_pin,
};

use std::path::PathBuf;

/// Which part of a join string is wrong, so callers (and tests) can tell the cases apart
/// without matching on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinPart {
    /// The whole string (too long, not ASCII, wrong number of `@`).
    Layout,
    /// The `argus-join:` prefix.
    Prefix,
    /// The format version after the prefix.
    Version,
    /// The token id.
    TokenId,
    /// The token secret.
    Secret,
    /// The CA pin.
    CaPin,
    /// One of the coordinator addresses.
    Address,
}

impl std::fmt::Display for JoinPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JoinPart::Layout => "layout",
            JoinPart::Prefix => "prefix",
            JoinPart::Version => "version",
            JoinPart::TokenId => "token id",
            JoinPart::Secret => "secret",
            JoinPart::CaPin => "CA pin",
            JoinPart::Address => "coordinator address",
        })
    }
}

/// Everything that can go wrong in this module, each variant naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {what}: {source}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what}: not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("certificate cannot be parsed: {reason}")]
    CertParse { reason: String },
    #[error("the CA certificate is not a CA (no basicConstraints cA=true)")]
    NotACa,
    #[error("the CA private key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("private key: {reason}")]
    Key { reason: String },
    #[error("CSR cannot be parsed: {reason}")]
    CsrParse { reason: String },
    #[error("CSR signature does not verify")]
    CsrSignature,
    #[error("CSR public key must be ECDSA P-256: {reason}")]
    CsrKeyAlgorithm { reason: String },
    #[error("{role} id {id:?}: {reason}")]
    InvalidId {
        role: Role,
        id: String,
        reason: &'static str,
    },
    #[error("coordinator name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("certificate lifetime {lifetime:?}: {reason}")]
    Lifetime {
        lifetime: std::time::Duration,
        reason: &'static str,
    },
    #[error("time {ms} ms since the epoch is out of the range a certificate can carry")]
    TimeOutOfRange { ms: i64 },
    #[error("certificate carries no argus:// URI SAN")]
    NoIdentity,
    #[error("certificate carries {count} argus:// URI SANs; exactly one is allowed")]
    MultipleIdentities { count: usize },
    #[error("URI SAN {uri:?}: {reason}")]
    BadIdentityUri { uri: String, reason: &'static str },
    #[error("certificate belongs to a {found}, a {expected} is required")]
    WrongRole { expected: Role, found: Role },
    #[error("identity {identity} refused: {reason}")]
    IdentityRefused {
        identity: ArgusIdentity,
        reason: String,
    },
    #[error("join string {part}: {reason}")]
    Join { part: JoinPart, reason: String },
    #[error("CA pin {0:?}: expected sha256:<64 lowercase hex digits>")]
    BadPin(String),
    #[error("no certificate in the presented chain has the pinned CA key {pin}")]
    PinMismatch { pin: CaPin },
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("certificate chain does not verify: {0}")]
    Chain(rustls::Error),
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("random number generator failed")]
    Random,
}

/// Fills `buf` from ring's system random source.
fn fill_random(buf: &mut [u8]) -> Result<(), PkiError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| PkiError::Random)
}

/// Lowercase hex; the formats here use it because it survives copy-paste, shells and URLs.
fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Decodes exactly `N` bytes of lowercase hex; `None` on any other input.
fn hex_decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

/// SHA-256 of `data`.
fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let bytes = [0x00, 0x7f, 0x80, 0xff, 0x1a];
        let s = hex_encode(&bytes);
        assert_eq!(s, "007f80ff1a");
        assert_eq!(hex_decode::<5>(&s), Some(bytes));
        assert_eq!(hex_decode::<5>("007F80FF1A"), None, "uppercase is refused");
        assert_eq!(hex_decode::<5>("007f80ff1"), None, "odd length");
        assert_eq!(hex_decode::<5>("007f80ff1g"), None, "not hex");
        assert_eq!(hex_decode::<2>("é1"), None, "multi-byte char");
    }
}
