//! `argus-agent join`: enrollment over `argus-enroll/1` (issue 5 item 3).
//!
//! The key is generated here and never leaves the host. The agent trusts no CA yet:
//! the coordinator's chain must contain the CA whose public key the join string pins
//! (as kubeadm does), and the leaf must chain to it. The agent sends one
//! `EnrollRequest` with a CSR and gets its certificate, the CA and its id back.

use super::UplinkError;
use super::identity::Identity;
use argus_common::pki::{CaPin, CertInfo, JoinAddr, JoinHost, JoinString, NodeKey, Role};
use argus_common::quic::enroll_client_config;
use argus_common::wire::{EnrollRequest, FrameLimits, Message, read_frame, write_frame};
use std::net::SocketAddr;
use std::time::Duration;

/// How long one coordinator gets to answer an enrollment.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(15);

/// Resolves a join address to socket addresses and the name to check in its certificate.
pub async fn resolve(addr: &JoinAddr) -> Result<(Vec<SocketAddr>, String), UplinkError> {
    match &addr.host {
        JoinHost::Ip(ip) => Ok((vec![SocketAddr::new(*ip, addr.port)], ip.to_string())),
        JoinHost::Dns(name) => {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), addr.port))
                .await
                .map_err(|e| UplinkError::Connect {
                    addr: addr.to_string(),
                    reason: format!("cannot resolve: {e}"),
                })?
                .collect();
            Ok((found, name.clone()))
        }
    }
}

/// A client endpoint for `to`'s address family.
pub fn client_endpoint(to: &SocketAddr) -> Result<quinn::Endpoint, UplinkError> {
    let bind: SocketAddr = if to.is_ipv6() {
        "[::]:0"
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0u16; 8], 0)))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    quinn::Endpoint::client(bind).map_err(|e| UplinkError::Connect {
        addr: to.to_string(),
        reason: format!("cannot open a UDP socket: {e}"),
    })
}

/// Explains a failed handshake; a certificate problem during enrollment means the
/// server is not the cluster the join string names.
pub fn handshake_reason(e: &quinn::ConnectionError, pin: Option<&CaPin>) -> String {
    let text = e.to_string();
    match pin {
        Some(pin) if text.contains("certificate") => format!(
            "the coordinator's certificate does not chain to the CA pinned in the join string \
             ({pin}), so nothing was sent to it: the join string is from another cluster, or \
             something else answers at this address; use a join string `argus token create` \
             printed on this cluster ({text})"
        ),
        _ => text,
    }
}

/// Enrolls with the first coordinator of the join string that answers. A refusal is
/// final (the coordinator's reason is returned); an unreachable coordinator moves on to
/// the next address.
pub async fn enroll(join: &JoinString, host_name: &str) -> Result<Identity, UplinkError> {
    let key = NodeKey::generate()?;
    let csr_der = key.csr_der()?.as_ref().to_vec();
    let mut last = UplinkError::NoCoordinators;
    for addr in &join.addrs {
        let (targets, server_name) = match resolve(addr).await {
            Ok(t) => t,
            Err(e) => {
                last = e;
                continue;
            }
        };
        for to in targets {
            let req = EnrollRequest {
                token_id: join.token_id.to_string(),
                token_secret: join.secret.expose(),
                csr_der: csr_der.clone(),
                host_name: host_name.to_string(),
            };
            match tokio::time::timeout(
                ENROLL_TIMEOUT,
                enroll_at(to, &server_name, join.ca_pin, req),
            )
            .await
            {
                Ok(Ok(ok)) => return finish(join, &key, ok),
                Ok(Err(e @ UplinkError::Refused { .. })) => return Err(e),
                Ok(Err(e)) => {
                    tracing::warn!(coordinator = %to, "enrollment attempt failed: {e}");
                    last = e;
                }
                Err(_) => {
                    last = UplinkError::Connect {
                        addr: to.to_string(),
                        reason: format!("no answer within {ENROLL_TIMEOUT:?}"),
                    }
                }
            }
        }
    }
    Err(last)
}

async fn enroll_at(
    to: SocketAddr,
    server_name: &str,
    pin: CaPin,
    req: EnrollRequest,
) -> Result<argus_common::wire::EnrollOk, UplinkError> {
    let endpoint = client_endpoint(&to)?;
    let connect_err = |reason: String| UplinkError::Connect {
        addr: to.to_string(),
        reason,
    };
    let conn = endpoint
        .connect_with(enroll_client_config(pin)?, to, server_name)
        .map_err(|e| connect_err(e.to_string()))?
        .await
        .map_err(|e| connect_err(handshake_reason(&e, Some(&pin))))?;
    let result = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| connect_err(closed_reason(&e)))?;
        write_frame(
            &mut send,
            &Message::EnrollRequest(req),
            &FrameLimits::default(),
        )
        .await
        .map_err(|e| connect_err(e.to_string()))?;
        let _ = send.finish();
        match read_frame(&mut recv, &FrameLimits::default()).await {
            Ok(Some(Message::EnrollOk(ok))) => Ok(ok),
            Ok(Some(Message::Refused(r))) => Err(UplinkError::Refused {
                addr: to.to_string(),
                reason: r.reason,
            }),
            Ok(Some(other)) => Err(connect_err(format!(
                "unexpected {} in answer to EnrollRequest",
                other.kind_name()
            ))),
            Ok(None) => Err(match conn.close_reason() {
                Some(e) => refused_or(to, &e),
                None => connect_err("the coordinator closed without answering".into()),
            }),
            Err(e) => Err(match conn.close_reason() {
                Some(c) => refused_or(to, &c),
                None => connect_err(e.to_string()),
            }),
        }
    }
    .await;
    conn.close(argus_common::quic::close::DONE, b"");
    endpoint.wait_idle().await;
    result
}

/// The reason text a coordinator closed with, or the transport's description.
pub fn closed_reason(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            String::from_utf8_lossy(&c.reason).into_owned()
        }
        other => other.to_string(),
    }
}

fn refused_or(to: SocketAddr, e: &quinn::ConnectionError) -> UplinkError {
    match e {
        quinn::ConnectionError::ApplicationClosed(_) => UplinkError::Refused {
            addr: to.to_string(),
            reason: closed_reason(e),
        },
        other => UplinkError::Connect {
            addr: to.to_string(),
            reason: other.to_string(),
        },
    }
}

/// Checks what came back and builds the identity to store.
fn finish(
    join: &JoinString,
    key: &NodeKey,
    ok: argus_common::wire::EnrollOk,
) -> Result<Identity, UplinkError> {
    let bad = |reason: String| UplinkError::BadAnswer(reason);
    let ca_pin = CaPin::of_cert_der(&ok.ca_der).map_err(|e| bad(format!("CA certificate: {e}")))?;
    if ca_pin != join.ca_pin {
        return Err(bad(format!(
            "the CA returned ({ca_pin}) is not the one the join string pins ({})",
            join.ca_pin
        )));
    }
    let info =
        CertInfo::from_der(&ok.certificate_der).map_err(|e| bad(format!("certificate: {e}")))?;
    if info.identity.role != Role::Agent || info.identity.id != ok.agent_id {
        return Err(bad(format!(
            "the certificate names {} but the agent id is {:?}",
            info.identity, ok.agent_id
        )));
    }
    Ok(Identity {
        agent_id: ok.agent_id,
        key_pem: key.to_pem(),
        cert_der: ok.certificate_der,
        ca_der: ok.ca_der,
        issued_at_ms: ok.issued_at_ms,
        coordinators: join.addrs.iter().map(ToString::to_string).collect(),
    })
}
