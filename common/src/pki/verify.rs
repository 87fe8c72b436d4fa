//! Certificate checks for the QUIC endpoints, on rustls 0.23 with the ring provider.
//!
//! - An enrolling agent knows only the CA pin from its join string, so
//!   [`CoordinatorServerVerifier::pinned`] accepts a server whose presented chain
//!   contains a certificate with the pinned key and whose leaf chains to it (checked by
//!   webpki with that certificate as the only trust anchor). The coordinator must
//!   therefore send the CA certificate after its own on the enrollment port.
//! - Afterwards the agent has the CA certificate: [`CoordinatorServerVerifier::with_ca`].
//! - The coordinator checks clients with [`ClusterClientVerifier`]: a chain to the
//!   cluster CA is not enough, the leaf's URI SAN must name the expected role and the
//!   caller's [`IdentityCheck`] (the agent record: known, not revoked) must accept it.
//!
//! Both verifiers also require the server leaf to carry `argus://coordinator/<id>`, so
//! an agent certificate (clientAuth only anyway) can never pose as a coordinator.

use super::{ArgusIdentity, CaPin, PkiError, Role, identity_from_cert_der};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use std::fmt;
use std::sync::Arc;

/// The one crypto provider of the tree (DESIGN §6).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Wraps our error as a rustls certificate error, so the handshake fails with a message
/// naming what was wrong.
fn to_rustls(e: PkiError) -> rustls::Error {
    match e {
        PkiError::Chain(inner) => inner,
        other => {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(other))))
        }
    }
}

/// Our error inside a rustls error from a failed handshake, if one of our checks failed
/// (pin mismatch, wrong role, identity refused), so the caller can report it plainly
/// instead of rustls's debug rendering.
pub fn pki_error_of(e: &rustls::Error) -> Option<&PkiError> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<PkiError>()
        }
        _ => None,
    }
}

fn roots_of(ca_der: &CertificateDer<'_>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca_der.clone().into_owned())
        .map_err(PkiError::Chain)?;
    Ok(Arc::new(roots))
}

fn require_role(end_entity: &[u8], role: Role) -> Result<ArgusIdentity, PkiError> {
    let identity = identity_from_cert_der(end_entity)?;
    if identity.role != role {
        return Err(PkiError::WrongRole {
            expected: role,
            found: identity.role,
        });
    }
    Ok(identity)
}

/// Checks a server's chain against a CA pin, as an agent does on first contact: some
/// certificate in `intermediates` must have the pinned key, the leaf must chain to it
/// (signatures, validity at `now`, serverAuth usage, `server_name` in its SANs), and the
/// leaf must be a coordinator's. Returns the pinned CA certificate, which the agent then
/// stores as its trust anchor, and the coordinator's identity.
pub fn verify_chain_to_pin(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    pin: &CaPin,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(CertificateDer<'static>, ArgusIdentity), PkiError> {
    let ca = intermediates
        .iter()
        .find(|c| CaPin::of_cert_der(c).is_ok_and(|p| p == *pin))
        .ok_or(PkiError::PinMismatch { pin: *pin })?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots_of(ca)?, crypto_provider())
        .build()
        .map_err(|e| PkiError::Verifier(e.to_string()))?;
    verifier
        .verify_server_cert(end_entity, intermediates, server_name, &[], now)
        .map_err(PkiError::Chain)?;
    let identity = require_role(end_entity, Role::Coordinator)?;
    Ok((ca.clone().into_owned(), identity))
}

/// Checks a client's chain against the cluster CA (signatures, validity at `now`,
/// clientAuth usage) and that its URI SAN names `role`. The primitive under
/// [`ClusterClientVerifier`], for callers outside a handshake.
pub fn verify_chain_to_ca(
    ca_der: &CertificateDer<'_>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    role: Role,
    now: UnixTime,
) -> Result<ArgusIdentity, PkiError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots_of(ca_der)?, crypto_provider())
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
    verifier
        .verify_client_cert(end_entity, intermediates, now)
        .map_err(PkiError::Chain)?;
    require_role(end_entity, role)
}

enum Trust {
    Pin(CaPin),
    Ca(Arc<WebPkiServerVerifier>),
}

/// The agent's (and a joining coordinator's) check of a coordinator's certificate.
pub struct CoordinatorServerVerifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for CoordinatorServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.trust {
            Trust::Pin(pin) => write!(f, "CoordinatorServerVerifier(pinned {pin})"),
            Trust::Ca(_) => f.write_str("CoordinatorServerVerifier(cluster CA)"),
        }
    }
}

impl CoordinatorServerVerifier {
    /// For enrollment: trust whatever CA in the presented chain has the pinned key.
    pub fn pinned(pin: CaPin) -> Arc<Self> {
        Arc::new(Self {
            trust: Trust::Pin(pin),
            provider: crypto_provider(),
        })
    }

    /// For data connections: trust the stored cluster CA certificate.
    pub fn with_ca(ca_der: &CertificateDer<'_>) -> Result<Arc<Self>, PkiError> {
        let provider = crypto_provider();
        let inner =
            WebPkiServerVerifier::builder_with_provider(roots_of(ca_der)?, provider.clone())
                .build()
                .map_err(|e| PkiError::Verifier(e.to_string()))?;
        Ok(Arc::new(Self {
            trust: Trust::Ca(inner),
            provider,
        }))
    }
}

impl ServerCertVerifier for CoordinatorServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            Trust::Pin(pin) => {
                verify_chain_to_pin(end_entity, intermediates, pin, server_name, now)
                    .map_err(to_rustls)?;
            }
            Trust::Ca(inner) => {
                inner.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                )?;
                require_role(end_entity, Role::Coordinator).map_err(to_rustls)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The caller's decision on an identity whose chain verified: for agents, whether the
/// agent record exists and is not revoked. Return `Err(reason)` to refuse.
pub trait IdentityCheck: Send + Sync {
    fn check(&self, identity: &ArgusIdentity) -> Result<(), String>;
}

impl<F> IdentityCheck for F
where
    F: Fn(&ArgusIdentity) -> Result<(), String> + Send + Sync,
{
    fn check(&self, identity: &ArgusIdentity) -> Result<(), String> {
        self(identity)
    }
}

/// The coordinator's check of client certificates: webpki chain to the cluster CA with
/// clientAuth, then the URI SAN's role, then the caller's [`IdentityCheck`].
pub struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    role: Role,
    check: Arc<dyn IdentityCheck>,
}

impl fmt::Debug for ClusterClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterClientVerifier")
            .field("role", &self.role)
            .field("mandatory", &self.inner.client_auth_mandatory())
            .finish_non_exhaustive()
    }
}

impl ClusterClientVerifier {
    /// A verifier accepting clients of `role` whose identity `check` accepts.
    ///
    /// With `optional`, a client may present no certificate at all: that is how one
    /// endpoint serves `argus-enroll/1` (no certificate, enrollment only) beside
    /// `argus-data/1`; the caller must then refuse anything but enrollment on a
    /// connection without a peer certificate. A certificate that is presented is always
    /// checked in full.
    pub fn new(
        ca_der: &CertificateDer<'_>,
        role: Role,
        check: Arc<dyn IdentityCheck>,
        optional: bool,
    ) -> Result<Arc<Self>, PkiError> {
        let builder =
            WebPkiClientVerifier::builder_with_provider(roots_of(ca_der)?, crypto_provider());
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        let inner = builder
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
        Ok(Arc::new(Self { inner, role, check }))
    }
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity = require_role(end_entity, self.role).map_err(to_rustls)?;
        self.check
            .check(&identity)
            .map_err(|reason| to_rustls(PkiError::IdentityRefused { identity, reason }))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{
        AGENT_CERT_LIFETIME, ClusterCa, CoordinatorCertSpec, IssuedCert, NodeKey, VerifiedCsr,
    };
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000_000;

    fn at(ms: i64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_millis(ms as u64))
    }

    fn agent(ca: &ClusterCa, id: &str, now_ms: i64) -> (NodeKey, IssuedCert) {
        let key = NodeKey::generate().unwrap();
        let csr = VerifiedCsr::from_der(&key.csr_der().unwrap()).unwrap();
        let cert = ca
            .issue_agent(&csr, id, now_ms, AGENT_CERT_LIFETIME)
            .unwrap();
        (key, cert)
    }

    fn coordinator(ca: &ClusterCa, now_ms: i64) -> (NodeKey, IssuedCert) {
        let key = NodeKey::generate().unwrap();
        let spec = CoordinatorCertSpec::new("n1", vec!["localhost".into(), "127.0.0.1".into()]);
        let cert = ca.issue_coordinator(&key, &spec, now_ms).unwrap();
        (key, cert)
    }

    fn localhost() -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }

    fn accept_all() -> Arc<dyn IdentityCheck> {
        Arc::new(|_: &ArgusIdentity| Ok(()))
    }

    #[test]
    fn agent_chain_verifies_against_its_ca_and_not_another() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let (_, cert) = agent(&ca, "a1", NOW);
        let id = verify_chain_to_ca(ca.cert_der(), &cert.der, &[], Role::Agent, at(NOW)).unwrap();
        assert_eq!(id, ArgusIdentity::new(Role::Agent, "a1").unwrap());

        let foreign = ClusterCa::generate(NOW).unwrap();
        let err = verify_chain_to_ca(foreign.cert_der(), &cert.der, &[], Role::Agent, at(NOW))
            .unwrap_err();
        assert!(matches!(err, PkiError::Chain(_)), "{err}");

        // Expired, and not yet valid.
        let late = NOW + 73 * 3600 * 1000;
        assert!(matches!(
            verify_chain_to_ca(ca.cert_der(), &cert.der, &[], Role::Agent, at(late)),
            Err(PkiError::Chain(rustls::Error::InvalidCertificate(
                CertificateError::ExpiredContext { .. }
            )))
        ));
        let early = NOW - 10 * 60 * 1000;
        assert!(matches!(
            verify_chain_to_ca(ca.cert_der(), &cert.der, &[], Role::Agent, at(early)),
            Err(PkiError::Chain(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYetContext { .. }
            )))
        ));
        // Within the 5-minute backdate it is already valid.
        verify_chain_to_ca(ca.cert_der(), &cert.der, &[], Role::Agent, at(NOW - 60_000)).unwrap();
    }

    #[test]
    fn role_is_enforced() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let (_, coord) = coordinator(&ca, NOW);
        assert!(matches!(
            verify_chain_to_ca(ca.cert_der(), &coord.der, &[], Role::Agent, at(NOW)),
            Err(PkiError::WrongRole {
                expected: Role::Agent,
                found: Role::Coordinator
            })
        ));
        verify_chain_to_ca(ca.cert_der(), &coord.der, &[], Role::Coordinator, at(NOW)).unwrap();
    }

    #[test]
    fn pin_check_accepts_the_pinned_chain_only() {
        let ca = ClusterCa::generate(NOW).unwrap();
        let (_, coord) = coordinator(&ca, NOW);
        let chain = [ca.cert_der().clone()];
        let (got_ca, id) =
            verify_chain_to_pin(&coord.der, &chain, &ca.pin(), &localhost(), at(NOW)).unwrap();
        assert_eq!(&got_ca, ca.cert_der());
        assert_eq!(id, ArgusIdentity::new(Role::Coordinator, "n1").unwrap());
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        verify_chain_to_pin(&coord.der, &chain, &ca.pin(), &ip, at(NOW)).unwrap();

        // Another CA's pin.
        let foreign = ClusterCa::generate(NOW).unwrap();
        assert!(matches!(
            verify_chain_to_pin(&coord.der, &chain, &foreign.pin(), &localhost(), at(NOW)),
            Err(PkiError::PinMismatch { .. })
        ));
        // No CA sent at all.
        assert!(matches!(
            verify_chain_to_pin(&coord.der, &[], &ca.pin(), &localhost(), at(NOW)),
            Err(PkiError::PinMismatch { .. })
        ));
        // The pinned CA is sent, but the leaf was signed by another CA.
        let (_, foreign_leaf) = coordinator(&foreign, NOW);
        assert!(matches!(
            verify_chain_to_pin(&foreign_leaf.der, &chain, &ca.pin(), &localhost(), at(NOW)),
            Err(PkiError::Chain(_))
        ));
        // A name the certificate does not carry.
        let other = ServerName::try_from("evil.example").unwrap();
        assert!(matches!(
            verify_chain_to_pin(&coord.der, &chain, &ca.pin(), &other, at(NOW)),
            Err(PkiError::Chain(_))
        ));
        // An agent certificate cannot serve (no serverAuth, and not a coordinator).
        let (_, agent_cert) = agent(&ca, "a1", NOW);
        assert!(
            verify_chain_to_pin(&agent_cert.der, &chain, &ca.pin(), &localhost(), at(NOW)).is_err()
        );
    }

    /// Drives a TLS 1.3 handshake between the two configs in memory.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
        name: ServerName<'static>,
    ) -> Result<Option<Vec<CertificateDer<'static>>>, rustls::Error> {
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            let server_result = s.process_new_packets();
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            let client_result = c.process_new_packets();
            // The side that refused has the reason; the other only sees an alert.
            server_result?;
            client_result?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s.peer_certificates().map(|p| p.to_vec()));
            }
        }
        panic!("handshake did not finish in 20 rounds");
    }

    fn now_ms() -> i64 {
        // Handshakes read the system clock, so these certificates are issued for it.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    fn server_config(
        ca: &ClusterCa,
        check: Arc<dyn IdentityCheck>,
        optional: bool,
    ) -> Arc<rustls::ServerConfig> {
        let (key, cert) = coordinator(ca, now_ms());
        let verifier =
            ClusterClientVerifier::new(ca.cert_der(), Role::Agent, check, optional).unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(vec![cert.der, ca.cert_der().clone()], key.private_key_der())
                .unwrap(),
        )
    }

    fn client_config(
        verifier: Arc<CoordinatorServerVerifier>,
        client_cert: Option<(NodeKey, IssuedCert)>,
    ) -> Arc<rustls::ClientConfig> {
        let b = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        Arc::new(match client_cert {
            Some((key, cert)) => b
                .with_client_auth_cert(vec![cert.der], key.private_key_der())
                .unwrap(),
            None => b.with_no_client_auth(),
        })
    }

    #[test]
    fn mtls_handshake_maps_the_agent_identity() {
        let ca = ClusterCa::generate(now_ms()).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let check: Arc<dyn IdentityCheck> = Arc::new(move |id: &ArgusIdentity| {
            seen2.lock().unwrap().push(id.clone());
            if id.id == "revoked" {
                Err("agent is revoked".into())
            } else {
                Ok(())
            }
        });
        let server = server_config(&ca, check, false);
        let trust = CoordinatorServerVerifier::with_ca(ca.cert_der()).unwrap();

        let peer = handshake(
            client_config(trust.clone(), Some(agent(&ca, "a1", now_ms()))),
            server.clone(),
            localhost(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            identity_from_cert_der(&peer[0]).unwrap(),
            ArgusIdentity::new(Role::Agent, "a1").unwrap()
        );

        let err = handshake(
            client_config(trust.clone(), Some(agent(&ca, "revoked", now_ms()))),
            server.clone(),
            localhost(),
        )
        .unwrap_err();
        assert!(
            matches!(pki_error_of(&err), Some(PkiError::IdentityRefused { reason, .. }) if reason == "agent is revoked"),
            "{err}"
        );
        assert_eq!(
            seen.lock()
                .unwrap()
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>(),
            ["a1", "revoked"]
        );

        // A certificate from a foreign CA, and no certificate, are refused.
        let foreign = ClusterCa::generate(now_ms()).unwrap();
        assert!(
            handshake(
                client_config(trust.clone(), Some(agent(&foreign, "a1", now_ms()))),
                server.clone(),
                localhost(),
            )
            .is_err()
        );
        assert!(handshake(client_config(trust, None), server, localhost()).is_err());
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "the check runs after the chain"
        );
    }

    #[test]
    fn enrollment_handshake_needs_the_right_pin() {
        let ca = ClusterCa::generate(now_ms()).unwrap();
        let server = server_config(&ca, accept_all(), true);
        // No client certificate is fine on an optional-auth endpoint.
        let peer = handshake(
            client_config(CoordinatorServerVerifier::pinned(ca.pin()), None),
            server.clone(),
            localhost(),
        )
        .unwrap();
        assert!(peer.is_none());

        let foreign = ClusterCa::generate(now_ms()).unwrap();
        let err = handshake(
            client_config(CoordinatorServerVerifier::pinned(foreign.pin()), None),
            server,
            localhost(),
        )
        .unwrap_err();
        assert!(
            matches!(pki_error_of(&err), Some(PkiError::PinMismatch { pin }) if *pin == foreign.pin()),
            "{err}"
        );
        assert!(pki_error_of(&rustls::Error::HandshakeNotComplete).is_none());
    }
}
