//! Who a certificate belongs to, and the CA pin.
//!
//! Identity lives in exactly one URI SAN, `argus://agent/<id>` or
//! `argus://coordinator/<id>`, set by the issuer; subject names are for people reading
//! certificates and are never used for authorization.

use super::{PkiError, hex_decode, hex_encode, sha256};
use std::fmt;
use x509_parser::extensions::GeneralName;

/// The URI scheme and authority every identity SAN starts with.
const URI_PREFIX: &str = "argus://";
/// Longest id accepted, so identities stay bounded wherever they are stored or logged.
pub const MAX_ID_LEN: usize = 128;

/// What a certificate's holder is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Agent,
    Coordinator,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Coordinator => "coordinator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role and id a certificate's URI SAN names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArgusIdentity {
    pub role: Role,
    pub id: String,
}

impl ArgusIdentity {
    /// Checks the id and builds the identity.
    pub fn new(role: Role, id: &str) -> Result<Self, PkiError> {
        validate_id(role, id)?;
        Ok(Self {
            role,
            id: id.to_owned(),
        })
    }

    /// The URI SAN form, `argus://<role>/<id>`.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.role, self.id)
    }

    /// Parses `argus://<role>/<id>`.
    pub fn from_uri(uri: &str) -> Result<Self, PkiError> {
        let bad = |reason| PkiError::BadIdentityUri {
            uri: uri.chars().take(2 * MAX_ID_LEN).collect(),
            reason,
        };
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| bad("does not start with argus://"))?;
        let (role, id) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected argus://<role>/<id>"))?;
        let role = match role {
            "agent" => Role::Agent,
            "coordinator" => Role::Coordinator,
            _ => return Err(bad("role must be agent or coordinator")),
        };
        validate_id(role, id).map_err(|e| match e {
            PkiError::InvalidId { reason, .. } => bad(reason),
            other => other,
        })?;
        Ok(Self {
            role,
            id: id.to_owned(),
        })
    }
}

impl fmt::Display for ArgusIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{URI_PREFIX}{}/{}", self.role, self.id)
    }
}

/// Ids are 1..=128 characters of `[A-Za-z0-9._-]`: safe in a URI path, a file name, a
/// label value and a log line without escaping.
pub(crate) fn validate_id(role: Role, id: &str) -> Result<(), PkiError> {
    let bad = |reason| PkiError::InvalidId {
        role,
        id: id.chars().take(MAX_ID_LEN).collect(),
        reason,
    };
    if id.is_empty() {
        return Err(bad("is empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad("is longer than 128 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("may contain only A-Z a-z 0-9 . _ -"));
    }
    if id == "." || id == ".." {
        return Err(bad("may not be . or .."));
    }
    Ok(())
}

/// Reads the Argus identity from a DER certificate's URI SANs.
///
/// Exactly one `argus://` URI SAN is required: two would leave it to the reader which one
/// counts. Other SANs (DNS, IP, non-argus URIs) are ignored.
pub fn identity_from_cert_der(der: &[u8]) -> Result<ArgusIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::CertParse {
        reason: e.to_string(),
    })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::CertParse {
            reason: format!("subjectAltName: {e}"),
        })?;
    let mut found: Vec<&str> = Vec::new();
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with(URI_PREFIX)
            {
                found.push(uri);
            }
        }
    }
    match found.as_slice() {
        [] => Err(PkiError::NoIdentity),
        [uri] => ArgusIdentity::from_uri(uri),
        many => Err(PkiError::MultipleIdentities { count: many.len() }),
    }
}

/// SHA-256 of a CA's DER SubjectPublicKeyInfo: what a join string carries and the agent
/// pins on first contact (kubeadm's discovery-token-ca-cert-hash). The key, not the whole
/// certificate, is hashed so that re-issuing the CA certificate with the same key keeps
/// old join strings valid.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaPin(pub [u8; 32]);

impl CaPin {
    /// The pin of a DER certificate's public key.
    pub fn of_cert_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::CertParse {
                reason: e.to_string(),
            })?;
        Ok(Self::of_spki_der(cert.tbs_certificate.subject_pki.raw))
    }

    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki_der(spki: &[u8]) -> Self {
        Self(sha256(spki))
    }

    /// Parses the `sha256:<64 lowercase hex>` form that [`fmt::Display`] writes.
    pub fn parse(s: &str) -> Result<Self, PkiError> {
        s.strip_prefix("sha256:")
            .and_then(hex_decode::<32>)
            .map(Self)
            .ok_or_else(|| PkiError::BadPin(s.chars().take(80).collect()))
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex_encode(&self.0))
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaPin({self})")
    }
}

impl std::str::FromStr for CaPin {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips() {
        for (role, id) in [(Role::Agent, "a-1.b_2"), (Role::Coordinator, "n1")] {
            let ident = ArgusIdentity::new(role, id).unwrap();
            assert_eq!(ArgusIdentity::from_uri(&ident.uri()).unwrap(), ident);
        }
    }

    #[test]
    fn bad_uris_name_the_problem() {
        let cases = [
            ("https://agent/x", "does not start with argus://"),
            ("argus://agent", "expected argus://<role>/<id>"),
            ("argus://admin/x", "role must be agent or coordinator"),
            ("argus://agent/", "is empty"),
            ("argus://agent/a/b", "may contain only A-Z a-z 0-9 . _ -"),
            ("argus://agent/..", "may not be . or .."),
        ];
        for (uri, want) in cases {
            match ArgusIdentity::from_uri(uri) {
                Err(PkiError::BadIdentityUri { reason, .. }) => assert_eq!(reason, want, "{uri}"),
                other => panic!("{uri}: {other:?}"),
            }
        }
        let long = format!("argus://agent/{}", "a".repeat(MAX_ID_LEN + 1));
        assert!(matches!(
            ArgusIdentity::from_uri(&long),
            Err(PkiError::BadIdentityUri {
                reason: "is longer than 128 characters",
                ..
            })
        ));
    }

    #[test]
    fn pin_parses_its_display_and_rejects_others() {
        let pin = CaPin::of_spki_der(b"some key");
        assert_eq!(CaPin::parse(&pin.to_string()).unwrap(), pin);
        for bad in [
            "",
            "sha256:",
            "sha1:00",
            &pin.to_string().to_uppercase(),
            &pin.to_string()[..70],
        ] {
            assert!(
                matches!(CaPin::parse(bad), Err(PkiError::BadPin(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbage_certificate_is_a_parse_error() {
        assert!(matches!(
            identity_from_cert_der(b"\x30\x03abc"),
            Err(PkiError::CertParse { .. })
        ));
        assert!(matches!(
            CaPin::of_cert_der(b""),
            Err(PkiError::CertParse { .. })
        ));
    }
}
