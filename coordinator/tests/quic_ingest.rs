//! The agent QUIC listener over real QUIC and real certificates on 127.0.0.1: a node
//! (Raft log, store, replica in a temp dir) and the listener with a small in-test fleet
//! gate that signs with a real cluster CA. The agent is played by a minimal client made
//! of `argus_common::quic` and `wire`, so the tests can also misbehave on purpose.

use argus_common::model::{Labels, MetricType, PointGroup, SeriesDef};
use argus_common::pki::{
    AGENT_CERT_LIFETIME, CertInfo, ClusterCa, CoordinatorCertSpec, NodeKey, VerifiedCsr,
    identity_from_cert_der,
};
use argus_common::quic::{ALPN_DATA, close, data_client_config, enroll_client_config};
use argus_common::wire::{
    Batch, EnrollOk, EnrollRequest, FrameLimits, Hello, Message, RenewOk, RenewRequest, SeriesDefs,
    read_frame, write_frame,
};
use argus_coordinator::cluster::log_migration::open_migrating;
use argus_coordinator::cluster::{NoPeers, NodeConfig, NodeHandle, RaftNode, spawn};
use argus_coordinator::fleet::gate::{Admission, FleetGate, GateRefusal};
use argus_coordinator::ingest::{
    IngestConfig, IngestCounters, IngestNode, Listener, ServerTls, start,
};
use argus_coordinator::state::checkpoint_file::CheckpointFile;
use argus_coordinator::state::machine::Outcome;
use argus_coordinator::state::replica::{Replica, ReplicaConfig, SharedState};
use argus_coordinator::tsdb::store::{Store, StoreConfig};
use argus_coordinator::tsdb::tier::Tiers;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "the-right-secret";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A fleet gate that signs with a real CA: agent ids `agent-<n>`, instance
/// `host-<id>`, a revocation switch per agent.
struct TestGate {
    ca: ClusterCa,
    next: AtomicU64,
    revoked: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

impl TestGate {
    fn new(ca: ClusterCa) -> Self {
        TestGate {
            ca,
            next: AtomicU64::new(1),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    fn switch(&self, id: &str) -> tokio::sync::watch::Sender<bool> {
        self.revoked
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(false).0)
            .clone()
    }

    fn issue(&self, id: &str, csr_der: &[u8]) -> Result<(Vec<u8>, i64), GateRefusal> {
        let csr = VerifiedCsr::from_der(csr_der).map_err(|e| GateRefusal::denied(e.to_string()))?;
        let now = now_ms();
        let cert = self
            .ca
            .issue_agent(&csr, id, now, AGENT_CERT_LIFETIME)
            .map_err(|e| GateRefusal::denied(e.to_string()))?;
        Ok((cert.der.to_vec(), now))
    }
}

impl FleetGate for TestGate {
    async fn enroll(&self, req: EnrollRequest, _: SocketAddr) -> Result<EnrollOk, GateRefusal> {
        if req.token_secret != SECRET {
            return Err(GateRefusal::denied("wrong token secret"));
        }
        let id = format!("agent-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (der, at) = self.issue(&id, &req.csr_der)?;
        Ok(EnrollOk {
            certificate_der: der,
            ca_der: self.ca.cert_der().to_vec(),
            issued_at_ms: at,
            agent_id: id,
        })
    }

    async fn renew(
        &self,
        id: &str,
        req: RenewRequest,
        _: SocketAddr,
    ) -> Result<RenewOk, GateRefusal> {
        if *self.switch(id).borrow() {
            return Err(GateRefusal::denied("agent revoked"));
        }
        let (der, at) = self.issue(id, &req.csr_der)?;
        Ok(RenewOk {
            certificate_der: der,
            issued_at_ms: at,
        })
    }

    fn admit(&self, der: &[u8], _: SocketAddr) -> Result<Admission, GateRefusal> {
        let identity =
            identity_from_cert_der(der).map_err(|e| GateRefusal::denied(e.to_string()))?;
        let info = CertInfo::from_der(der).map_err(|e| GateRefusal::denied(e.to_string()))?;
        let switch = self.switch(&identity.id);
        if *switch.borrow() {
            return Err(GateRefusal::denied("agent revoked"));
        }
        Ok(Admission {
            instance: format!("host-{}", identity.id),
            agent_id: identity.id,
            cert_not_after_ms: info.not_after_ms,
            revoked: switch.subscribe(),
        })
    }
}

/// A node and its listener on 127.0.0.1:0.
struct Coordinator {
    node: NodeHandle<Outcome>,
    state: SharedState,
    listener: Listener,
    counters: Arc<IngestCounters>,
}

fn server_tls(ca: &ClusterCa) -> ServerTls {
    let key = NodeKey::generate().unwrap();
    let spec = CoordinatorCertSpec::new("n1", vec!["127.0.0.1".into(), "localhost".into()]);
    let cert = ca.issue_coordinator(&key, &spec, now_ms()).unwrap();
    ServerTls {
        chain: vec![cert.der.clone(), ca.cert_der().clone()],
        key: key.private_key_der(),
        ca: ca.cert_der().clone(),
    }
}

async fn start_coordinator(dir: &Path, gate: Arc<TestGate>, bind: SocketAddr) -> Coordinator {
    let (log, _) = open_migrating(&dir.join("raft"), &dir.join("log")).unwrap();
    let store =
        Arc::new(Store::open(dir.join("tsdb"), StoreConfig::new(Tiers::argus_defaults())).unwrap());
    let replica = Replica::open(store, CheckpointFile::new(dir), ReplicaConfig::default()).unwrap();
    let state = replica.shared();
    let parts = RaftNode::build(NodeConfig::default(), log, NoPeers, replica).unwrap();
    let node = spawn(parts, Duration::from_millis(20)).unwrap();
    for _ in 0..500 {
        if node.stats().is_leader() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        node.stats().is_leader(),
        "the single node never became leader"
    );
    let counters = Arc::new(IngestCounters::default());
    let cfg = IngestConfig {
        // The up duty is tested on its own; here it would add samples to the counts.
        up_interval: Duration::from_secs(3600),
        first_message_timeout: Duration::from_secs(2),
        ..IngestConfig::default()
    };
    let listener = start(
        bind,
        server_tls(&gate.ca),
        gate,
        IngestNode {
            proposer: node.proposer().clone(),
            stats: node.stats().clone(),
            state: state.clone(),
        },
        cfg,
        counters.clone(),
    )
    .unwrap();
    Coordinator {
        node,
        state,
        listener,
        counters,
    }
}

impl Coordinator {
    async fn stop(self) {
        self.listener.shutdown().await;
        let node = self.node;
        tokio::task::spawn_blocking(move || node.shutdown())
            .await
            .unwrap()
            .unwrap();
    }

    fn samples_appended(&self) -> u64 {
        self.state.read().unwrap().counters().samples_appended
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client(localhost()).unwrap()
}

/// Enrolls over `argus-enroll/1` with `secret`: (key, EnrollOk) or the refusal reason.
async fn enroll(
    to: SocketAddr,
    ca: &ClusterCa,
    secret: &str,
) -> Result<(NodeKey, EnrollOk), String> {
    let ep = endpoint();
    let conn = ep
        .connect_with(enroll_client_config(ca.pin()).unwrap(), to, "127.0.0.1")
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    let key = NodeKey::generate().unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let req = EnrollRequest {
        token_id: "0011223344556677".into(),
        token_secret: secret.into(),
        csr_der: key.csr_der().unwrap().as_ref().to_vec(),
        host_name: "web-1".into(),
    };
    write_frame(
        &mut send,
        &Message::EnrollRequest(req),
        &FrameLimits::default(),
    )
    .await
    .unwrap();
    let answer = read_frame(&mut recv, &FrameLimits::default()).await;
    conn.close(close::DONE, b"");
    match answer {
        Ok(Some(Message::EnrollOk(ok))) => Ok((key, ok)),
        Ok(Some(Message::Refused(r))) => Err(r.reason),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// A data connection of a test agent.
struct AgentConn {
    _ep: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl AgentConn {
    async fn open(
        to: SocketAddr,
        key: &NodeKey,
        cert_der: &[u8],
        ca: &ClusterCa,
    ) -> Result<AgentConn, String> {
        let ep = endpoint();
        let cfg = data_client_config(
            cert_der.to_vec().into(),
            key.private_key_der(),
            ca.cert_der(),
            32,
        )
        .unwrap();
        let conn = ep
            .connect_with(cfg, to, "127.0.0.1")
            .unwrap()
            .await
            .map_err(|e| e.to_string())?;
        let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        Ok(AgentConn {
            _ep: ep,
            conn,
            send,
            recv,
        })
    }

    async fn send(&mut self, msg: Message) {
        let _ = write_frame(&mut self.send, &msg, &FrameLimits::default()).await;
    }

    async fn raw(&mut self, bytes: &[u8]) {
        let _ = self.send.write_all(bytes).await;
    }

    async fn recv(&mut self) -> Option<Message> {
        tokio::time::timeout(
            Duration::from_secs(10),
            read_frame(&mut self.recv, &FrameLimits::default()),
        )
        .await
        .ok()?
        .ok()?
    }

    async fn hello(&mut self, id: &str, incarnation: u64) -> Message {
        self.send(Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            agent_id: id.into(),
            incarnation,
            host_name: "web-1".into(),
            agent_version: "test".into(),
            capabilities: vec![],
        }))
        .await;
        self.recv().await.expect("an answer to Hello")
    }

    /// The application close code the coordinator closed with, waiting at most 10 s.
    async fn closed_code(&self) -> Option<quinn::VarInt> {
        match tokio::time::timeout(Duration::from_secs(10), self.conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code),
            _ => None,
        }
    }
}

fn defs() -> Message {
    let def = |r: u64, name: &str| SeriesDef {
        series_ref: r,
        name: name.into(),
        labels: Labels::from_pairs([("instance", "spoofed"), ("job", "node")]),
        kind: MetricType::Gauge,
        unit: String::new(),
        help: String::new(),
    };
    Message::SeriesDefs(SeriesDefs {
        defs: vec![def(1, "test_a"), def(2, "test_b")],
    })
}

fn batch(incarnation: u64, seq: u64, base: i64) -> Message {
    Message::Batch(Batch {
        incarnation,
        seq,
        lowest_seq: 1,
        groups: vec![PointGroup {
            timestamp_ms: base + seq as i64 * 1000,
            points: vec![(1, seq as f64), (2, 2.0 * seq as f64)],
        }],
    })
}

/// Reads answers until every seq in `seqs` was acknowledged; panics on anything else.
async fn acks(agent: &mut AgentConn, seqs: std::ops::RangeInclusive<u64>) -> u64 {
    let mut want: std::collections::BTreeSet<u64> = seqs.collect();
    let mut accepted = 0;
    while !want.is_empty() {
        match agent.recv().await {
            Some(Message::Ack(a)) => {
                want.remove(&a.seq);
                accepted += a.accepted;
            }
            other => panic!("expected Ack, got {other:?}; still waiting for {want:?}"),
        }
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_agent_streams_batches_and_a_restart_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(now_ms()).unwrap();
    let gate = Arc::new(TestGate::new(
        ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap(),
    ));
    let c = start_coordinator(dir.path(), gate.clone(), localhost()).await;
    let addr = c.listener.addr;

    assert_eq!(
        enroll(addr, &ca, "wrong").await.unwrap_err(),
        "wrong token secret"
    );
    let (key, ok) = enroll(addr, &ca, SECRET).await.unwrap();
    let id = ok.agent_id.clone();

    let inc = 0x5eed;
    let base = now_ms() - 60_000;
    let mut a = AgentConn::open(addr, &key, &ok.certificate_der, &ca)
        .await
        .unwrap();
    match a.hello(&id, inc).await {
        Message::HelloOk(h) => {
            assert_eq!(h.highest_applied_seq, None);
            assert_eq!(h.highest_series_ref, None);
        }
        other => panic!("expected HelloOk, got {other:?}"),
    }
    a.send(defs()).await;
    for seq in 1..=10 {
        a.send(batch(inc, seq, base)).await;
    }
    assert_eq!(acks(&mut a, 1..=10).await, 20);
    {
        let st = c.state.read().unwrap();
        let instance = format!("host-{id}");
        let labels = Labels::from_pairs([("instance", instance.as_str()), ("job", "node")]);
        assert!(
            st.index().lookup("test_a", &labels).is_some(),
            "instance is the coordinator's"
        );
        let spoofed = Labels::from_pairs([("instance", "spoofed"), ("job", "node")]);
        assert!(st.index().lookup("test_a", &spoofed).is_none());
    }
    assert_eq!(c.samples_appended(), 20);

    // Batches 11..=20 go out; the coordinator stops before the agent reads any answer.
    for seq in 11..=20 {
        a.send(batch(inc, seq, base)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bound = c.listener.addr;
    c.stop().await;
    drop(a);

    // Restarted on the same port and data: the agent says Hello and resends every batch
    // it holds without a final Ack.
    let c = start_coordinator(dir.path(), gate.clone(), bound).await;
    let mut a = AgentConn::open(bound, &key, &ok.certificate_der, &ca)
        .await
        .unwrap();
    let applied = match a.hello(&id, inc).await {
        Message::HelloOk(h) => h.highest_applied_seq.unwrap_or(0),
        other => panic!("expected HelloOk, got {other:?}"),
    };
    assert!(applied >= 10, "{applied}");
    a.send(defs()).await;
    for seq in 11..=20 {
        a.send(batch(inc, seq, base)).await;
    }
    acks(&mut a, 11..=20).await;
    // Every sample exactly once: 20 batches of 2 points.
    assert_eq!(c.samples_appended(), 40);
    assert_eq!(c.counters.refused_count("protocol_error"), 0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_disconnected_while_a_good_agent_keeps_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(now_ms()).unwrap();
    let gate = Arc::new(TestGate::new(
        ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap(),
    ));
    let c = start_coordinator(dir.path(), gate.clone(), localhost()).await;
    let addr = c.listener.addr;
    let base = now_ms() - 60_000;

    let (good_key, good) = enroll(addr, &ca, SECRET).await.unwrap();
    let mut g = AgentConn::open(addr, &good_key, &good.certificate_der, &ca)
        .await
        .unwrap();
    assert!(matches!(
        g.hello(&good.agent_id, 1).await,
        Message::HelloOk(_)
    ));
    g.send(defs()).await;
    let mut seq = 0;
    let mut still_served = async |g: &mut AgentConn| {
        seq += 1;
        g.send(batch(1, seq, base)).await;
        acks(g, seq..=seq).await;
    };
    still_served(&mut g).await;

    let (bad_key, bad) = enroll(addr, &ca, SECRET).await.unwrap();

    // A Hello naming another agent than the certificate: Refused, then closed.
    let mut m = AgentConn::open(addr, &bad_key, &bad.certificate_der, &ca)
        .await
        .unwrap();
    match m.hello(&good.agent_id, 1).await {
        Message::Refused(r) => assert!(r.reason.contains("does not match"), "{}", r.reason),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(m.closed_code().await, Some(close::REFUSED));
    still_served(&mut g).await;

    // A Batch before Hello.
    let mut m = AgentConn::open(addr, &bad_key, &bad.certificate_der, &ca)
        .await
        .unwrap();
    m.send(batch(1, 1, base)).await;
    assert_eq!(m.closed_code().await, Some(close::PROTOCOL));
    still_served(&mut g).await;

    // Garbage: a plausible length, then bytes that decode to nothing.
    let mut m = AgentConn::open(addr, &bad_key, &bad.certificate_der, &ca)
        .await
        .unwrap();
    let mut junk = 64u32.to_be_bytes().to_vec();
    junk.extend(std::iter::repeat_n(0xff, 64));
    m.raw(&junk).await;
    assert_eq!(m.closed_code().await, Some(close::PROTOCOL));
    still_served(&mut g).await;

    // An oversized length prefix: refused before any buffer for it exists.
    let mut m = AgentConn::open(addr, &bad_key, &bad.certificate_der, &ca)
        .await
        .unwrap();
    m.raw(&u32::MAX.to_be_bytes()).await;
    assert_eq!(m.closed_code().await, Some(close::PROTOCOL));
    still_served(&mut g).await;

    // No client certificate on argus-data/1: closed before any stream is read.
    let ep = endpoint();
    let mut tls = rustls::ClientConfig::builder_with_provider(argus_common::pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(
            argus_common::pki::CoordinatorServerVerifier::with_ca(ca.cert_der()).unwrap(),
        )
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_DATA.to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let conn = ep
        .connect_with(cfg, addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, close::REFUSED)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    still_served(&mut g).await;

    // A certificate from a foreign CA: the handshake fails, no stream can be opened.
    let foreign = ClusterCa::generate(now_ms()).unwrap();
    let fkey = NodeKey::generate().unwrap();
    let fcsr = VerifiedCsr::from_der(&fkey.csr_der().unwrap()).unwrap();
    let fcert = foreign
        .issue_agent(&fcsr, &good.agent_id, now_ms(), AGENT_CERT_LIFETIME)
        .unwrap();
    let opened = AgentConn::open(addr, &fkey, &fcert.der, &ca).await;
    if let Ok(mut f) = opened {
        // The client may see its handshake complete before the server's refusal.
        assert!(f.recv().await.is_none(), "a foreign-CA client was answered");
    }
    still_served(&mut g).await;

    assert!(c.counters.refused_count("protocol_error") >= 3);
    assert!(c.counters.refused_count("id_mismatch") == 1);
    assert!(c.counters.refused_count("no_certificate") == 1);
    assert!(c.counters.refused_count("handshake_failed") >= 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agent_closes_its_session_and_it_cannot_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate(now_ms()).unwrap();
    let gate = Arc::new(TestGate::new(
        ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap(),
    ));
    let c = start_coordinator(dir.path(), gate.clone(), localhost()).await;
    let addr = c.listener.addr;
    let (key, ok) = enroll(addr, &ca, SECRET).await.unwrap();
    let mut a = AgentConn::open(addr, &key, &ok.certificate_der, &ca)
        .await
        .unwrap();
    assert!(matches!(
        a.hello(&ok.agent_id, 1).await,
        Message::HelloOk(_)
    ));

    let started = std::time::Instant::now();
    gate.switch(&ok.agent_id).send_replace(true);
    assert_eq!(a.closed_code().await, Some(close::EXPIRED));
    // Target 1 s; asserted three times looser.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // The coordinator refuses the revoked agent as soon as it has its certificate, which
    // may be before opening the stream has completed on this side: either way it is
    // turned away, never served.
    match AgentConn::open(addr, &key, &ok.certificate_der, &ca).await {
        Err(e) => assert!(e.contains("revoked"), "{e}"),
        Ok(mut again) => {
            again
                .send(Message::Hello(Hello {
                    min_version: 1,
                    max_version: 1,
                    agent_id: ok.agent_id.clone(),
                    incarnation: 1,
                    host_name: "web-1".into(),
                    agent_version: "test".into(),
                    capabilities: vec![],
                }))
                .await;
            assert_eq!(again.closed_code().await, Some(close::REFUSED));
        }
    }
    c.stop().await;
}
