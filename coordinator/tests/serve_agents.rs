//! Enrollment, listing and revocation on a real node (started in-process, so the test
//! can call its fleet gate the way the agent QUIC listener does, without a socket): a
//! join token minted with the real `argus token create`, a real CSR, a certificate that
//! verifies against the cluster CA as a client certificate only, `/api/agents` and
//! `argus agents list|revoke`, and a revocation that closes the agent's door: admission
//! and renewal refused, the connection's watch flipped.

mod common;

use argus_common::pki::{
    AGENT_CERT_LIFETIME, CERT_BACKDATE, CertInfo, JoinString, NodeKey, Role, cert_from_pem,
    verify_chain_to_ca,
};
use argus_common::wire::{EnrollRequest, RenewRequest};
use argus_coordinator::fleet::cli_config::CliConfig;
use argus_coordinator::fleet::gate::{FleetGate, RefusalKind};
use argus_coordinator::server::{ServeConfig, start};
use argus_testkit::http;
use common::{argus_cli, ok};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// The admin token `cluster init` (implicit at the first start) wrote to the CLI config.
fn argus(args: &[&str]) -> Output {
    argus_cli(args, &[])
}

fn admin_token(data: &Path) -> String {
    CliConfig::read(&data.join("cluster/cli.toml"))
        .expect("cli.toml")
        .token
}

fn api_agents(addr: SocketAddr, token: &str) -> Vec<serde_json::Value> {
    let auth = format!("Bearer {token}");
    let r = http::request(
        addr,
        "GET",
        "/api/agents",
        &[("Authorization", auth.as_str())],
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], "success", "{v}");
    v["data"].as_array().unwrap().clone()
}

fn request(join: &JoinString, key: &NodeKey, host: &str) -> EnrollRequest {
    EnrollRequest {
        token_id: join.token_id.to_string(),
        token_secret: join.secret.expose(),
        csr_der: key.csr_der().unwrap().to_vec(),
        host_name: host.into(),
    }
}

#[test]
fn an_agent_enrolls_is_listed_and_revoked() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = ServeConfig::new(data.clone(), SocketAddr::from(([127, 0, 0, 1], 0)));
    // Join strings carry the advertised address; port 0 (any free port) cannot be one,
    // and this test enrolls without dialing it.
    cfg.advertise = vec!["127.0.0.1:3006".into()];
    let running = rt.block_on(start(cfg)).expect("start in-process node");
    let addr = running.addr;
    let url = format!("http://{addr}");
    let deadline = Instant::now() + common::READY_TIMEOUT;
    while http::get(addr, "/ready").ok().map(|r| r.status) != Some(200) {
        assert!(Instant::now() < deadline, "node never became ready");
        std::thread::sleep(Duration::from_millis(25));
    }
    let admin = admin_token(&data);
    let gate = running.fleet_gate.clone();
    let from = SocketAddr::from(([127, 0, 0, 1], 45_678));

    // A single-use token, minted by the real CLI.
    let data_s = data.to_str().unwrap();
    let out = ok(&argus(&[
        "token",
        "create",
        "--data-dir",
        data_s,
        "--url",
        &url,
    ]));
    let join = JoinString::parse(out.trim()).expect("token create prints a join string");

    // Enrollment with a real CSR: a certificate for the assigned id, from the cluster CA.
    let key = NodeKey::generate().unwrap();
    let enrolled = rt
        .block_on(gate.enroll(request(&join, &key, "web-1"), from))
        .expect("enrollment");
    let ca_pem = std::fs::read_to_string(data.join("cluster/ca.pem")).unwrap();
    let ca_der = cert_from_pem(&ca_pem).unwrap();
    assert_eq!(enrolled.ca_der, ca_der.to_vec());
    let cert = CertificateDer::from(enrolled.certificate_der.clone());
    let identity = verify_chain_to_ca(&ca_der, &cert, &[], Role::Agent, UnixTime::now())
        .expect("the certificate verifies against the CA as a client certificate");
    assert_eq!(identity.id, enrolled.agent_id);
    assert_eq!(
        identity.uri(),
        format!("argus://agent/{}", enrolled.agent_id)
    );
    let info = CertInfo::from_der(&cert).unwrap();
    let issued_s = enrolled.issued_at_ms.div_euclid(1000) * 1000;
    assert_eq!(
        info.not_after_ms - issued_s,
        AGENT_CERT_LIFETIME.as_millis() as i64
    );
    assert_eq!(
        issued_s - info.not_before_ms,
        CERT_BACKDATE.as_millis() as i64
    );
    // clientAuth only: as a server certificate it fails on its usage.
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
        {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca_der.clone()).unwrap();
            std::sync::Arc::new(roots)
        },
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let err = rustls::client::danger::ServerCertVerifier::verify_server_cert(
        server.as_ref(),
        &cert,
        &[],
        &ServerName::try_from("web-1").unwrap(),
        &[],
        UnixTime::now(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::InvalidPurpose
                    | rustls::CertificateError::InvalidPurposeContext { .. }
            )
        ),
        "{err:?}"
    );

    // A retry with the same key (its answer lost in a crash) gets the same agent and a
    // certificate, without spending another use: another key finds the token spent.
    let again = rt
        .block_on(gate.enroll(request(&join, &key, "web-1"), from))
        .expect("retried enrollment");
    assert_eq!(again.agent_id, enrolled.agent_id);
    let other = NodeKey::generate().unwrap();
    let spent = rt
        .block_on(gate.enroll(request(&join, &other, "web-2"), from))
        .unwrap_err();
    assert_eq!(spent.kind, RefusalKind::Denied);
    assert!(spent.reason.contains("no uses left"), "{spent:?}");
    let mut wrong = request(&join, &other, "web-2");
    wrong.token_secret = "0".repeat(32);
    let refused = rt.block_on(gate.enroll(wrong, from)).unwrap_err();
    assert!(refused.reason.contains("wrong secret"), "{refused:?}");

    // Admission maps the certificate to the agent record.
    let admitted = gate.admit(&cert, from).expect("admission");
    assert_eq!(admitted.agent_id, enrolled.agent_id);
    assert_eq!(admitted.instance, "web-1");
    assert_eq!(admitted.cert_not_after_ms, info.not_after_ms);
    let mut revoked = admitted.revoked.clone();
    assert!(!*revoked.borrow());

    // Listed over the API and by the CLI.
    let agents = api_agents(addr, &admin);
    assert_eq!(agents.len(), 1, "{agents:?}");
    let a = &agents[0];
    assert_eq!(a["id"], enrolled.agent_id.as_str());
    assert_eq!(
        (
            a["instance"].as_str(),
            a["host"].as_str(),
            a["state"].as_str()
        ),
        (Some("web-1"), Some("web-1"), Some("active"))
    );
    assert!(a["cert_expires"].as_i64().unwrap() >= info.not_after_ms);
    let table = ok(&argus(&[
        "agents", "list", "--url", &url, "--token", &admin,
    ]));
    let row = table
        .lines()
        .find(|l| l.starts_with(&enrolled.agent_id))
        .unwrap_or_else(|| panic!("agent not listed:\n{table}"));
    assert!(row.contains("web-1") && row.ends_with("active"), "{row}");
    // A wrong token is refused; revoking needs the admin role.
    let wrong = http::request(
        addr,
        "GET",
        "/api/agents",
        &[("Authorization", "Bearer argus-admin-0123")],
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    let anonymous = http::request(
        addr,
        "DELETE",
        &format!("/api/agents/{}", enrolled.agent_id),
        &[],
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        matches!(anonymous.status, 401 | 403),
        "{}: {}",
        anonymous.status,
        anonymous.text()
    );

    // Revoked by the CLI: the watch flips, admission and renewal are refused.
    let out = ok(&argus(&[
        "agents",
        "revoke",
        &enrolled.agent_id,
        "--url",
        &url,
        "--token",
        &admin,
    ]));
    assert!(out.contains("revoked"), "{out}");
    // The target is 1 s; the bound here is three times looser.
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), revoked.wait_for(|r| *r))
            .await
            .expect("the revoked watch flips within 3 s")
            .expect("the gate keeps the watch");
    });
    let refused = gate.admit(&cert, from).unwrap_err();
    assert!(refused.reason.contains("revoked"), "{refused:?}");
    let renew = rt
        .block_on(gate.renew(
            &enrolled.agent_id,
            RenewRequest {
                csr_der: key.csr_der().unwrap().to_vec(),
            },
            from,
        ))
        .unwrap_err();
    assert!(renew.reason.contains("revoked"), "{renew:?}");
    let agents = api_agents(addr, &admin);
    assert_eq!(agents[0]["state"], "revoked");
    let table = ok(&argus(&[
        "agents", "list", "--url", &url, "--token", &admin,
    ]));
    assert!(table.contains("revoked"), "{table}");
    // Unknown and malformed ids are told apart.
    let missing = argus(&[
        "agents",
        "revoke",
        "0000000000000000",
        "--url",
        &url,
        "--token",
        &admin,
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no agent"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    rt.block_on(running.shutdown()).expect("orderly shutdown");
}
