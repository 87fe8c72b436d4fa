//! The cluster CA and the certificates it issues.
//!
//! One self-signed ECDSA P-256 CA per cluster signs every coordinator and agent
//! certificate. Its private key is only ever in memory and in its own 0600 file (DESIGN
//! §3.6); this module never puts it anywhere else. Every leaf gets a random 128-bit
//! serial, a not-before set back [`CERT_BACKDATE`] from the issue time so that a peer
//! whose clock is a little behind accepts it, and exactly one `argus://` URI SAN chosen
//! by the issuer.

use super::{ArgusIdentity, CaPin, PkiError, Role, fill_random, hex_encode, sha256};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// Default agent certificate lifetime (issue 5): short enough that a stolen key is
/// useful for at most three days without the renewal that revocation refuses.
pub const AGENT_CERT_LIFETIME: Duration = Duration::from_secs(72 * 3600);
/// How far not-before is set back from the issue time, to absorb clock skew.
pub const CERT_BACKDATE: Duration = Duration::from_secs(5 * 60);
/// The CA's lifetime. Rotating the CA is a separate, later procedure.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Default lifetime of a coordinator certificate.
pub const COORDINATOR_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Bounds on any leaf lifetime: below ten seconds renewal (at two thirds of it, over a
/// live connection) could not keep up; above the CA's lifetime the certificate would
/// outlive its issuer. Ten seconds, not more, so tests can watch renewal and expiry.
pub const MIN_LEAF_LIFETIME: Duration = Duration::from_secs(10);
/// Largest CSR accepted; ours are about 250 bytes, so this only stops abuse.
const MAX_CSR_LEN: usize = 16 * 1024;
/// Most DNS/IP SANs on a coordinator certificate.
const MAX_COORDINATOR_NAMES: usize = 64;

const CA_COMMON_NAME: &str = "Argus cluster CA";

/// A certificate serial number: 16 random bytes, the first in 0x40..=0x7f so the DER
/// INTEGER is positive and always exactly 16 bytes long (RFC 5280 allows up to 20).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(pub [u8; 16]);

impl Serial {
    fn random() -> Result<Self, PkiError> {
        let mut b = [0u8; 16];
        fill_random(&mut b)?;
        b[0] = (b[0] & 0x3f) | 0x40;
        Ok(Self(b))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

/// A certificate just issued, with what the issuer must record about it (the serial goes
/// into a log entry; the issue time is sent to the agent for renewal scheduling).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub serial: Serial,
    pub identity: ArgusIdentity,
    /// The issue time passed in, in ms since the epoch.
    pub issued_at_ms: i64,
    /// Validity bounds as written into the certificate (whole seconds), in ms.
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

/// What a coordinator certificate says besides its key.
#[derive(Debug, Clone)]
pub struct CoordinatorCertSpec {
    /// The node id, written as `argus://coordinator/<id>`.
    pub id: String,
    /// Names and addresses clients and peers dial: each parsing as an IP address becomes
    /// an IP SAN, every other one a DNS SAN. At least one is required, since a
    /// certificate no name matches cannot be used by a server.
    pub names: Vec<String>,
    pub lifetime: Duration,
}

impl CoordinatorCertSpec {
    /// A spec with the default lifetime.
    pub fn new(id: impl Into<String>, names: Vec<String>) -> Self {
        Self {
            id: id.into(),
            names,
            lifetime: COORDINATOR_CERT_LIFETIME,
        }
    }
}

/// An ECDSA P-256 key pair generated where it is used (agents and coordinators make
/// their own; only the CSR leaves the machine).
pub struct NodeKey(KeyPair);

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(<private>)")
    }
}

impl NodeKey {
    /// A fresh P-256 key from ring's system random source.
    pub fn generate() -> Result<Self, PkiError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(Self)
            .map_err(|source| PkiError::Rcgen {
                what: "generate a P-256 key",
                source,
            })
    }

    /// Loads a PKCS#8 PEM key written by [`NodeKey::to_pem`]; only P-256 is accepted.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(pem).map_err(|e| PkiError::Key {
            reason: e.to_string(),
        })?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::Key {
                reason: "not an ECDSA P-256 key".into(),
            });
        }
        Ok(Self(key))
    }

    /// PKCS#8 PEM; write it with [`super::write_private_file`].
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// The key as rustls takes it for a client or server configuration.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.0.serialize_der()))
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        self.0.subject_public_key_info()
    }

    /// SHA-256 of the SubjectPublicKeyInfo; equals
    /// [`VerifiedCsr::public_key_sha256`] of this key's CSR.
    pub fn public_key_sha256(&self) -> [u8; 32] {
        sha256(&self.spki_der())
    }

    /// A CSR for this key. It carries no names and no extensions: the issuer decides
    /// every name in the certificate, so there is nothing to ask for.
    pub fn csr_der(&self) -> Result<CertificateSigningRequestDer<'static>, PkiError> {
        Ok(self.csr()?.der().clone())
    }

    /// The CSR in PEM (`CERTIFICATE REQUEST`).
    pub fn csr_pem(&self) -> Result<String, PkiError> {
        self.csr()?.pem().map_err(|source| PkiError::Rcgen {
            what: "create a CSR",
            source,
        })
    }

    fn csr(&self) -> Result<rcgen::CertificateSigningRequest, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "argus node key");
        params
            .serialize_request(&self.0)
            .map_err(|source| PkiError::Rcgen {
                what: "create a CSR",
                source,
            })
    }
}

/// A CSR whose signature verified and whose key is ECDSA P-256. Only its public key is
/// used; everything else it asks for (subject, SANs, usages) is ignored by the issuer.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    public_key: rcgen::PublicKey,
    spki_der: Vec<u8>,
}

impl VerifiedCsr {
    /// Parses a DER CSR and checks its self-signature, which proves the requester holds
    /// the private key.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
        use x509_parser::prelude::FromDer;

        if der.len() > MAX_CSR_LEN {
            return Err(PkiError::CsrParse {
                reason: format!("{} bytes, more than the {MAX_CSR_LEN} allowed", der.len()),
            });
        }
        let (rest, parsed) =
            X509CertificationRequest::from_der(der).map_err(|e| PkiError::CsrParse {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(PkiError::CsrParse {
                reason: format!("{} trailing bytes", rest.len()),
            });
        }
        let spki = &parsed.certification_request_info.subject_pki;
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return Err(PkiError::CsrKeyAlgorithm {
                reason: format!("key algorithm is {}", spki.algorithm.algorithm),
            });
        }
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            return Err(PkiError::CsrKeyAlgorithm {
                reason: match curve {
                    Some(c) => format!("curve is {c}"),
                    None => "no named curve".into(),
                },
            });
        }
        let spki_der = spki.raw.to_vec();
        // rcgen checks the signature (ring underneath) and extracts the key.
        let params =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
                .map_err(|e| match e {
                    rcgen::Error::InvalidCertificationRequestSignature => PkiError::CsrSignature,
                    other => PkiError::CsrParse {
                        reason: other.to_string(),
                    },
                })?;
        if params.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::CsrKeyAlgorithm {
                reason: "signature algorithm is not ecdsa-with-SHA256".into(),
            });
        }
        Ok(Self {
            public_key: params.public_key,
            spki_der,
        })
    }

    /// Parses a PEM CSR (`CERTIFICATE REQUEST`).
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
            PkiError::Pem {
                what: "CSR",
                reason: e.to_string(),
            }
        })?;
        Self::from_der(&der)
    }

    /// The requested key's DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-256 of the requested key's SubjectPublicKeyInfo: with the token id, the key
    /// that makes enrollment idempotent (a retry after a coordinator crash carries the
    /// same key and gets its certificate without spending another use).
    pub fn public_key_sha256(&self) -> [u8; 32] {
        sha256(&self.spki_der)
    }
}

/// The cluster CA: its certificate and the key that signs with it.
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new CA (ECDSA P-256, "Argus cluster CA") valid from `now_ms` − 5 min for
    /// [`CA_LIFETIME`]. Its path length is 0: it signs leaves only.
    pub fn generate(now_ms: i64) -> Result<Self, PkiError> {
        let key = NodeKey::generate()?.0;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&Serial::random()?.0));
        let (nb, na) = validity(now_ms, CA_LIFETIME)?;
        params.not_before = to_datetime(nb)?;
        params.not_after = to_datetime(na)?;
        let cert = params.self_signed(&key).map_err(|source| PkiError::Rcgen {
            what: "self-sign the CA",
            source,
        })?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and private key PEM, checking that the
    /// certificate is a CA and that the key is the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::Pem {
                what: "CA certificate",
                reason: e.to_string(),
            })?;
        let key = NodeKey::from_pem(key_pem)?.0;
        {
            let (_, x509) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| {
                PkiError::CertParse {
                    reason: e.to_string(),
                }
            })?;
            if !x509.is_ca() {
                return Err(PkiError::NotACa);
            }
            if x509.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
                return Err(PkiError::KeyMismatch);
            }
        }
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| PkiError::Rcgen {
                what: "load the CA certificate",
                source,
            })?;
        Ok(Self {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM; public, goes to every node.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Secret: write it only with [`Self::write_key`].
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Writes the private key to `path`, mode 0600, atomically.
    pub fn write_key(&self, path: &Path) -> Result<(), PkiError> {
        super::write_private_file(path, self.key_pem().as_bytes())
    }

    /// The pin join strings carry.
    pub fn pin(&self) -> CaPin {
        CaPin::of_spki_der(&self.issuer.key().subject_public_key_info())
    }

    /// Issues a coordinator certificate for a key held here (`cluster init`).
    pub fn issue_coordinator(
        &self,
        key: &NodeKey,
        spec: &CoordinatorCertSpec,
        now_ms: i64,
    ) -> Result<IssuedCert, PkiError> {
        self.issue_coordinator_inner(&key.0, spec, now_ms)
    }

    /// Issues a coordinator certificate for a key that stayed on another node
    /// (`cluster join`).
    pub fn issue_coordinator_for_csr(
        &self,
        csr: &VerifiedCsr,
        spec: &CoordinatorCertSpec,
        now_ms: i64,
    ) -> Result<IssuedCert, PkiError> {
        self.issue_coordinator_inner(&csr.public_key, spec, now_ms)
    }

    fn issue_coordinator_inner(
        &self,
        key: &impl PublicKeyData,
        spec: &CoordinatorCertSpec,
        now_ms: i64,
    ) -> Result<IssuedCert, PkiError> {
        let identity = ArgusIdentity::new(Role::Coordinator, &spec.id)?;
        if spec.names.is_empty() {
            return Err(PkiError::InvalidName {
                name: String::new(),
                reason: "a coordinator certificate needs at least one DNS name or address".into(),
            });
        }
        if spec.names.len() > MAX_COORDINATOR_NAMES {
            return Err(PkiError::InvalidName {
                name: format!("{} names", spec.names.len()),
                reason: format!("at most {MAX_COORDINATOR_NAMES} are allowed"),
            });
        }
        let mut sans = Vec::with_capacity(spec.names.len());
        for name in &spec.names {
            sans.push(name_san(name)?);
        }
        self.issue_leaf(
            key,
            identity,
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            now_ms,
            spec.lifetime,
        )
    }

    /// Issues an agent certificate: clientAuth only, `argus://agent/<agent_id>` as its
    /// only name (whatever the CSR asked for), valid from `now_ms` − 5 min to `now_ms` +
    /// `lifetime` ([`AGENT_CERT_LIFETIME`] by default).
    pub fn issue_agent(
        &self,
        csr: &VerifiedCsr,
        agent_id: &str,
        now_ms: i64,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let identity = ArgusIdentity::new(Role::Agent, agent_id)?;
        self.issue_leaf(
            &csr.public_key,
            identity,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            now_ms,
            lifetime,
        )
    }

    fn issue_leaf(
        &self,
        key: &impl PublicKeyData,
        identity: ArgusIdentity,
        mut sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        now_ms: i64,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        if lifetime < MIN_LEAF_LIFETIME {
            return Err(PkiError::Lifetime {
                lifetime,
                reason: "shorter than ten seconds",
            });
        }
        if lifetime > CA_LIFETIME {
            return Err(PkiError::Lifetime {
                lifetime,
                reason: "longer than the CA's lifetime",
            });
        }
        let uri = rcgen::string::Ia5String::try_from(identity.uri()).map_err(|source| {
            PkiError::Rcgen {
                what: "encode the identity URI",
                source,
            }
        })?;
        sans.push(SanType::URI(uri));
        let serial = Serial::random()?;
        let (nb, na) = validity(now_ms, lifetime)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("argus {} {}", identity.role, identity.id),
        );
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.serial_number = Some(SerialNumber::from_slice(&serial.0));
        params.not_before = to_datetime(nb)?;
        params.not_after = to_datetime(na)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|source| PkiError::Rcgen {
                what: "sign the certificate",
                source,
            })?;
        Ok(IssuedCert {
            der: cert.der().clone(),
            pem: cert.pem(),
            serial,
            identity,
            issued_at_ms: now_ms,
            not_before_ms: nb,
            not_after_ms: na,
        })
    }
}

/// What a stored or presented certificate says about itself: read by the agent to
/// schedule renewal from its stored certificate, and by the coordinator to close a data
/// connection when the peer's certificate expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: ArgusIdentity,
    /// The serial's big-endian bytes as written (16 for certificates issued here).
    pub serial: Vec<u8>,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

impl CertInfo {
    /// Parses a DER certificate issued by a cluster CA (one `argus://` URI SAN). Says
    /// nothing about whether it is trustworthy: verify the chain first.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let identity = super::identity_from_cert_der(der)?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::CertParse {
                reason: e.to_string(),
            })?;
        let v = cert.validity();
        Ok(Self {
            identity,
            serial: cert.raw_serial().to_vec(),
            not_before_ms: v.not_before.timestamp().saturating_mul(1000),
            not_after_ms: v.not_after.timestamp().saturating_mul(1000),
        })
    }
}

/// The first certificate of a PEM text, as DER.
pub fn cert_from_pem(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem {
        what: "certificate",
        reason: e.to_string(),
    })
}

/// One configured coordinator name as a SAN: an IP SAN when it parses as an address, a
/// DNS SAN when it is a valid DNS name, an error otherwise.
fn name_san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = |reason: String| PkiError::InvalidName {
        name: name.chars().take(256).collect(),
        reason,
    };
    rustls::pki_types::DnsName::try_from(name)
        .map_err(|_| bad("neither an IP address nor a valid DNS name".into()))?;
    rcgen::string::Ia5String::try_from(name.to_owned())
        .map(SanType::DnsName)
        .map_err(|e| bad(e.to_string()))
}

/// Not-before and not-after in ms, truncated to whole seconds as X.509 stores them.
fn validity(now_ms: i64, lifetime: Duration) -> Result<(i64, i64), PkiError> {
    let out_of_range = || PkiError::TimeOutOfRange { ms: now_ms };
    let back = i64::try_from(CERT_BACKDATE.as_millis()).map_err(|_| out_of_range())?;
    let life = i64::try_from(lifetime.as_millis()).map_err(|_| out_of_range())?;
    let nb = now_ms.checked_sub(back).ok_or_else(out_of_range)?;
    let na = now_ms.checked_add(life).ok_or_else(out_of_range)?;
    Ok((nb.div_euclid(1000) * 1000, na.div_euclid(1000) * 1000))
}

/// Whole seconds since the epoch as rcgen's time type; X.509 can carry years 0..=9999.
fn to_datetime(ms: i64) -> Result<time::OffsetDateTime, PkiError> {
    const MAX_SECS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = ms.div_euclid(1000);
    if !(0..=MAX_SECS).contains(&secs) {
        return Err(PkiError::TimeOutOfRange { ms });
    }
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| PkiError::TimeOutOfRange { ms })
}

/// PEM with 64-column lines and LF endings, as rcgen writes it on Unix.
fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    const NOW: i64 = 1_800_000_000_123;

    fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    #[test]
    fn ca_is_a_p256_ca_with_the_right_name() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let cert = parse(ca.cert_der());
        assert!(cert.is_ca());
        assert_eq!(cert.subject().to_string(), "CN=Argus cluster CA");
        assert_eq!(
            cert.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
        );
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert_eq!(bc.path_len_constraint, Some(0));
        assert_eq!(
            cert.validity().not_before.timestamp(),
            (NOW - 300_000).div_euclid(1000)
        );
        assert_eq!(ca.pin(), CaPin::of_cert_der(ca.cert_der()).unwrap());
    }

    #[test]
    fn ca_round_trips_through_pem_and_still_signs() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let loaded = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem(), "our PEM matches rcgen's");
        assert_eq!(loaded.pin(), ca.pin());
        let key = NodeKey::generate().unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der().unwrap()).unwrap();
        let cert = loaded
            .issue_agent(&csr, "a1", NOW, AGENT_CERT_LIFETIME)
            .unwrap();
        let parsed = parse(&cert.der);
        assert_eq!(parsed.issuer(), parse(ca.cert_der()).subject());
        // The loaded CA's signature verifies with the original CA's key.
        parsed
            .verify_signature(Some(parse(ca.cert_der()).public_key()))
            .unwrap();
    }

    #[test]
    fn ca_key_file_is_private_and_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(NOW).unwrap();
        let key_path = dir.path().join("ca.key");
        ca.write_key(&key_path).unwrap();
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key_pem = std::fs::read_to_string(&key_path).unwrap();
        let loaded = ClusterCa::from_pem(ca.cert_pem(), &key_pem).unwrap();
        assert_eq!(loaded.pin(), ca.pin());
    }

    #[test]
    fn loading_a_ca_with_another_key_or_a_leaf_fails() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let other = ClusterCa::generate(NOW).unwrap();
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), &other.key_pem()),
            Err(PkiError::KeyMismatch)
        ));
        let key = NodeKey::generate().unwrap();
        let leaf = ca
            .issue_coordinator(
                &key,
                &CoordinatorCertSpec::new("n1", vec!["localhost".into()]),
                NOW,
            )
            .unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&leaf.pem, &key.to_pem()),
            Err(PkiError::NotACa)
        ));
        assert!(matches!(
            ClusterCa::from_pem("not pem", &ca.key_pem()),
            Err(PkiError::Pem { .. })
        ));
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), "not pem"),
            Err(PkiError::Key { .. })
        ));
    }

    #[test]
    fn coordinator_cert_has_both_ekus_names_and_uri() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let key = NodeKey::generate().unwrap();
        let spec = CoordinatorCertSpec::new(
            "node-1",
            vec![
                "argus-1.example.org".into(),
                "127.0.0.1".into(),
                "::1".into(),
            ],
        );
        let issued = ca.issue_coordinator(&key, &spec, NOW).unwrap();
        let cert = parse(&issued.der);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!eku.any && !eku.code_signing);
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(names.contains(&GeneralName::DNSName("argus-1.example.org")));
        assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert!(names.contains(&GeneralName::IPAddress(&v6)));
        assert!(names.contains(&GeneralName::URI("argus://coordinator/node-1")));
        assert!(!cert.is_ca());
        assert_eq!(
            cert.tbs_certificate.subject_pki.raw,
            key.spki_der().as_slice()
        );
        assert_eq!(
            crate::pki::identity_from_cert_der(&issued.der).unwrap(),
            ArgusIdentity::new(Role::Coordinator, "node-1").unwrap()
        );
    }

    #[test]
    fn coordinator_names_are_checked() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let key = NodeKey::generate().unwrap();
        for names in [vec![], vec!["bad name!".to_string()], vec!["".to_string()]] {
            let err = ca
                .issue_coordinator(&key, &CoordinatorCertSpec::new("n1", names.clone()), NOW)
                .unwrap_err();
            assert!(
                matches!(err, PkiError::InvalidName { .. }),
                "{names:?}: {err}"
            );
        }
        let err = ca
            .issue_coordinator(
                &key,
                &CoordinatorCertSpec::new("n 1", vec!["localhost".into()]),
                NOW,
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidId { .. }), "{err}");
    }

    #[test]
    fn agent_cert_is_client_only_with_issuer_chosen_uri_and_72h() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let key = NodeKey::generate().unwrap();
        let csr = VerifiedCsr::from_pem(&key.csr_pem().unwrap()).unwrap();
        assert_eq!(csr.spki_der(), key.spki_der().as_slice());
        let issued = ca
            .issue_agent(&csr, "agent-7", NOW, AGENT_CERT_LIFETIME)
            .unwrap();
        let cert = parse(&issued.der);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert!(!eku.server_auth && !eku.any);
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(names, &vec![GeneralName::URI("argus://agent/agent-7")]);
        assert_eq!(cert.raw_serial(), issued.serial.0.as_slice());
        assert_eq!(issued.issued_at_ms, NOW);
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        assert_eq!(nb * 1000, issued.not_before_ms);
        assert_eq!(na * 1000, issued.not_after_ms);
        assert_eq!(nb, (NOW - 5 * 60 * 1000).div_euclid(1000));
        assert_eq!(na, (NOW + 72 * 3600 * 1000).div_euclid(1000));
        assert_eq!(
            cert.tbs_certificate.subject_pki.raw,
            key.spki_der().as_slice()
        );

        let short = ca
            .issue_agent(&csr, "agent-7", NOW, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(
            short.not_after_ms,
            (NOW + 3_600_000).div_euclid(1000) * 1000
        );
        assert_ne!(short.serial, issued.serial, "serials are random");
    }

    #[test]
    fn cert_info_reads_back_what_was_issued() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let key = NodeKey::generate().unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der().unwrap()).unwrap();
        assert_eq!(csr.public_key_sha256(), key.public_key_sha256());
        let issued = ca
            .issue_agent(&csr, "a9", NOW, AGENT_CERT_LIFETIME)
            .unwrap();
        let info = CertInfo::from_der(&cert_from_pem(&issued.pem).unwrap()).unwrap();
        assert_eq!(
            info,
            CertInfo {
                identity: issued.identity.clone(),
                serial: issued.serial.0.to_vec(),
                not_before_ms: issued.not_before_ms,
                not_after_ms: issued.not_after_ms,
            }
        );
        // The CA itself has no argus:// identity.
        assert!(matches!(
            CertInfo::from_der(ca.cert_der()),
            Err(PkiError::NoIdentity)
        ));
    }

    #[test]
    fn agent_uri_ignores_what_the_csr_asks_for() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            rcgen::string::Ia5String::try_from("argus://coordinator/n1").unwrap(),
        ));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = params.serialize_request(&key).unwrap();
        let csr = VerifiedCsr::from_der(csr.der()).unwrap();
        let issued = ca
            .issue_agent(&csr, "a1", NOW, AGENT_CERT_LIFETIME)
            .unwrap();
        let cert = parse(&issued.der);
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(names, &vec![GeneralName::URI("argus://agent/a1")]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(!eku.server_auth);
    }

    #[test]
    fn csr_with_a_bad_signature_is_rejected() {
        let key = NodeKey::generate().unwrap();
        let mut der = key.csr_der().unwrap().to_vec();
        // The signature BIT STRING is last; flipping its final byte breaks the signature
        // while the DER stays well-formed.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert!(matches!(
            VerifiedCsr::from_der(&der),
            Err(PkiError::CsrSignature)
        ));
        // A CSR signed by one key but carrying another's public key.
        let other = NodeKey::generate().unwrap();
        let good = key.csr_der().unwrap().to_vec();
        let (k1, k2) = (key.spki_der(), other.spki_der());
        let pos = good
            .windows(k1.len())
            .position(|w| w == k1.as_slice())
            .unwrap();
        let mut swapped = good.clone();
        swapped[pos..pos + k2.len()].copy_from_slice(&k2);
        assert!(matches!(
            VerifiedCsr::from_der(&swapped),
            Err(PkiError::CsrSignature)
        ));
    }

    #[test]
    fn non_p256_csr_and_garbage_are_rejected() {
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let csr = CertificateParams::default().serialize_request(&ed).unwrap();
        assert!(matches!(
            VerifiedCsr::from_der(csr.der()),
            Err(PkiError::CsrKeyAlgorithm { .. })
        ));
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&p384)
            .unwrap();
        assert!(matches!(
            VerifiedCsr::from_der(csr.der()),
            Err(PkiError::CsrKeyAlgorithm { .. })
        ));
        for bad in [&b""[..], b"\x30\x00", b"garbage", &[0x30; 20_000]] {
            assert!(
                matches!(VerifiedCsr::from_der(bad), Err(PkiError::CsrParse { .. })),
                "{:?}",
                &bad[..bad.len().min(8)]
            );
        }
        assert!(matches!(
            VerifiedCsr::from_pem("nope"),
            Err(PkiError::Pem { .. })
        ));
    }

    #[test]
    fn lifetimes_and_times_are_bounded() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let csr = VerifiedCsr::from_der(&NodeKey::generate().unwrap().csr_der().unwrap()).unwrap();
        assert!(matches!(
            ca.issue_agent(&csr, "a", NOW, Duration::from_secs(1)),
            Err(PkiError::Lifetime { .. })
        ));
        assert!(ca.issue_agent(&csr, "a", NOW, MIN_LEAF_LIFETIME).is_ok());
        assert!(matches!(
            ca.issue_agent(&csr, "a", NOW, CA_LIFETIME * 2),
            Err(PkiError::Lifetime { .. })
        ));
        for t in [i64::MIN, i64::MAX, -1, 300_000_000_000_000] {
            assert!(
                matches!(
                    ca.issue_agent(&csr, "a", t, AGENT_CERT_LIFETIME),
                    Err(PkiError::TimeOutOfRange { .. })
                ),
                "{t}"
            );
        }
        assert!(matches!(
            ca.issue_agent(&csr, "", NOW, AGENT_CERT_LIFETIME),
            Err(PkiError::InvalidId { .. })
        ));
    }

    #[test]
    fn node_key_round_trips_and_rejects_other_curves() {
        let key = NodeKey::generate().unwrap();
        let back = NodeKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(back.spki_der(), key.spki_der());
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(matches!(
            NodeKey::from_pem(&ed.serialize_pem()),
            Err(PkiError::Key { .. })
        ));
        assert!(format!("{key:?}").contains("private"));
    }
}
