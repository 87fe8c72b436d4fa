//! The agent's identity in its state directory: key, certificate, CA, agent id, the
//! certificate's issue time and the coordinator addresses it enrolled with.
//!
//! Everything is one file, `identity.json` (mode 0600), replaced atomically (temporary
//! file, fsync, rename), so a renewal or a crash never leaves a certificate beside the
//! wrong key or CA. The private key never leaves the host: the coordinator only ever
//! sees a CSR for it.

use argus_common::pki::{CertInfo, NodeKey, PkiError, write_private_file};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The identity file's name in the state directory.
pub const IDENTITY_FILE: &str = "identity.json";
/// The format this build writes.
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: PkiError },
}

/// What `identity.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IdentityFile {
    format: u32,
    agent_id: String,
    key_pem: String,
    cert_hex: String,
    ca_hex: String,
    issued_at_ms: i64,
    coordinators: Vec<String>,
}

/// An enrolled agent's credentials.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent_id: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub ca_der: Vec<u8>,
    pub issued_at_ms: i64,
    /// Where the join string said the coordinators are (`host:port`).
    pub coordinators: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Identity {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(IDENTITY_FILE)
    }

    /// The stored identity, `None` when the agent has not enrolled yet.
    pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = Self::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Read { path, source }),
        };
        let invalid = |reason: String| IdentityError::Invalid {
            path: path.clone(),
            reason,
        };
        let f: IdentityFile = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("not an identity file: {e}")))?;
        if f.format != FORMAT {
            return Err(invalid(format!(
                "format {} is not the {FORMAT} this agent reads",
                f.format
            )));
        }
        let cert_der = unhex(&f.cert_hex).ok_or_else(|| invalid("cert_hex is not hex".into()))?;
        let ca_der = unhex(&f.ca_hex).ok_or_else(|| invalid("ca_hex is not hex".into()))?;
        NodeKey::from_pem(&f.key_pem).map_err(|e| invalid(format!("key_pem: {e}")))?;
        CertInfo::from_der(&cert_der).map_err(|e| invalid(format!("certificate: {e}")))?;
        Ok(Some(Identity {
            agent_id: f.agent_id,
            key_pem: f.key_pem,
            cert_der,
            ca_der,
            issued_at_ms: f.issued_at_ms,
            coordinators: f.coordinators,
        }))
    }

    /// Writes the identity atomically, mode 0600, creating the state directory.
    pub fn store(&self, state_dir: &Path) -> Result<(), IdentityError> {
        let path = Self::path(state_dir);
        std::fs::create_dir_all(state_dir).map_err(|source| IdentityError::Read {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let f = IdentityFile {
            format: FORMAT,
            agent_id: self.agent_id.clone(),
            key_pem: self.key_pem.clone(),
            cert_hex: hex(&self.cert_der),
            ca_hex: hex(&self.ca_der),
            issued_at_ms: self.issued_at_ms,
            coordinators: self.coordinators.clone(),
        };
        let text = serde_json::to_string_pretty(&f).unwrap_or_default();
        write_private_file(&path, text.as_bytes())
            .map_err(|source| IdentityError::Write { path, source })
    }

    pub fn cert(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert_der.clone())
    }

    pub fn ca(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.ca_der.clone())
    }

    /// The private key, for TLS.
    pub fn key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        Ok(NodeKey::from_pem(&self.key_pem)?.private_key_der())
    }

    /// A CSR for the same key, for renewal.
    pub fn csr_der(&self) -> Result<Vec<u8>, PkiError> {
        Ok(NodeKey::from_pem(&self.key_pem)?
            .csr_der()?
            .as_ref()
            .to_vec())
    }

    /// The certificate's not-after.
    pub fn not_after_ms(&self) -> Option<i64> {
        CertInfo::from_der(&self.cert_der)
            .ok()
            .map(|c| c.not_after_ms)
    }
}

/// When to renew: issue time + 2/3 of the remaining lifetime, moved by `jitter` (in
/// -1..=1) times a twentieth of the lifetime, so a fleet enrolled together does not renew
/// in the same second (issue 5 item 3).
pub fn renew_at_ms(issued_at_ms: i64, not_after_ms: i64, jitter: f64) -> i64 {
    let life = not_after_ms.saturating_sub(issued_at_ms).max(0);
    let base = issued_at_ms.saturating_add(life / 3 * 2);
    let spread = (life as f64 / 20.0 * jitter.clamp(-1.0, 1.0)) as i64;
    base.saturating_add(spread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argus_common::pki::{AGENT_CERT_LIFETIME, ClusterCa, VerifiedCsr};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stored_identity_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let ca = ClusterCa::generate(1_800_000_000_000).unwrap();
        let key = NodeKey::generate().unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der().unwrap()).unwrap();
        let cert = ca
            .issue_agent(&csr, "a1", 1_800_000_000_000, AGENT_CERT_LIFETIME)
            .unwrap();
        let id = Identity {
            agent_id: "a1".into(),
            key_pem: key.to_pem(),
            cert_der: cert.der.to_vec(),
            ca_der: ca.cert_der().to_vec(),
            issued_at_ms: 1_800_000_000_000,
            coordinators: vec!["127.0.0.1:3006".into()],
        };
        id.store(dir.path()).unwrap();
        let mode = std::fs::metadata(Identity::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.agent_id, "a1");
        assert_eq!(back.cert_der, id.cert_der);
        assert_eq!(back.coordinators, id.coordinators);
        assert!(back.key().is_ok());
        assert!(!back.csr_der().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_identity_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Identity::path(dir.path()), "{").unwrap();
        let e = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("identity.json"), "{e}");
    }

    #[test]
    fn renewal_is_at_two_thirds_with_bounded_jitter() {
        assert_eq!(renew_at_ms(0, 30_000, 0.0), 20_000);
        assert_eq!(renew_at_ms(0, 30_000, 1.0), 21_500);
        assert_eq!(renew_at_ms(0, 30_000, -1.0), 18_500);
        assert_eq!(renew_at_ms(0, 30_000, 7.0), 21_500);
    }
}
