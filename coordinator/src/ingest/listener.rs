//! The agent QUIC endpoint: one UDP socket serving both ALPNs, an accept loop that
//! bounds open connections, and the dispatch of each connection by its ALPN.

use super::liveness::{Liveness, up_duty};
use super::rate::EnrollLimiter;
use super::sessions::Sessions;
use super::{IngestConfig, IngestCounters, enroll, session};
use crate::cluster::{NodeStats, Proposer};
use crate::fleet::cluster_files::ClusterPaths;
use crate::fleet::gate::FleetGate;
use crate::state::machine::Outcome;
use crate::state::replica::SharedState;
use argus_common::pki::{NodeKey, PkiError, cert_from_pem};
use argus_common::quic::{
    ALPN_DATA, ALPN_ENROLL, QuicError, close, negotiated_alpn, server_config,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pki { path: PathBuf, source: PkiError },
    #[error("agent QUIC config: {0}")]
    Quic(#[from] QuicError),
    #[error("cannot listen on {addr}/udp: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The coordinator's certificate chain (node, CA) and key, and the CA agents chain to.
pub struct ServerTls {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
}

impl ServerTls {
    /// Reads the node certificate, its key and the CA certificate written by
    /// `argus cluster init`.
    pub fn from_cluster_files(paths: &ClusterPaths) -> Result<Self, IngestError> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path)
                .map_err(|source| IngestError::Read {
                    path: path.clone(),
                    source,
                })
                .map(|text| (path, text))
        };
        let (p, node_pem) = read(paths.node_cert())?;
        let node =
            cert_from_pem(&node_pem).map_err(|source| IngestError::Pki { path: p, source })?;
        let (p, ca_pem) = read(paths.ca_cert())?;
        let ca = cert_from_pem(&ca_pem).map_err(|source| IngestError::Pki { path: p, source })?;
        let (p, key_pem) = read(paths.node_key())?;
        let key = NodeKey::from_pem(&key_pem)
            .map_err(|source| IngestError::Pki { path: p, source })?
            .private_key_der();
        Ok(ServerTls {
            chain: vec![node, ca.clone()],
            key,
            ca,
        })
    }
}

/// What the listener needs of the node: proposing, leadership, and the applied state.
#[derive(Clone)]
pub struct IngestNode {
    pub proposer: Proposer<Outcome>,
    pub stats: Arc<NodeStats>,
    pub state: SharedState,
}

/// Everything a connection handler shares.
pub(crate) struct Ctx<G> {
    pub(crate) gate: Arc<G>,
    pub(crate) node: IngestNode,
    pub(crate) cfg: IngestConfig,
    pub(crate) counters: Arc<IngestCounters>,
    pub(crate) sessions: Sessions,
    pub(crate) liveness: Arc<Mutex<Liveness>>,
    pub(crate) limiter: Mutex<EnrollLimiter>,
}

/// A running listener.
pub struct Listener {
    /// The UDP address it is bound to.
    pub addr: SocketAddr,
    pub counters: Arc<IngestCounters>,
    pub liveness: Arc<Mutex<Liveness>>,
    endpoint: quinn::Endpoint,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Listener {
    /// Closes every connection and the endpoint, and stops the `up` duty.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.endpoint
            .close(close::DONE, b"coordinator shutting down");
        for t in self.tasks {
            let _ = t.await;
        }
        // Bounded: connections were closed above, this only flushes the close frames.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
    }
}

pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A close reason short enough for one packet.
pub(crate) fn close_reason(reason: &str) -> &[u8] {
    let mut end = reason.len().min(200);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

/// Binds `bind` (UDP) and serves agents; also starts the leader's `up` duty.
pub fn start<G: FleetGate>(
    bind: SocketAddr,
    tls: ServerTls,
    gate: Arc<G>,
    node: IngestNode,
    cfg: IngestConfig,
    counters: Arc<IngestCounters>,
) -> Result<Listener, IngestError> {
    let server = server_config(tls.chain, tls.key, &tls.ca, cfg.in_flight)?;
    let endpoint = quinn::Endpoint::server(server, bind)
        .map_err(|source| IngestError::Bind { addr: bind, source })?;
    let addr = endpoint
        .local_addr()
        .map_err(|source| IngestError::Bind { addr: bind, source })?;
    let liveness = Arc::new(Mutex::new(Liveness::new(cfg.max_agents)));
    let ctx = Arc::new(Ctx {
        gate,
        node: node.clone(),
        limiter: Mutex::new(EnrollLimiter::new(
            cfg.enroll_per_minute,
            60_000,
            cfg.enroll_sources,
        )),
        cfg: cfg.clone(),
        counters: counters.clone(),
        sessions: Sessions::default(),
        liveness: liveness.clone(),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let accept = tokio::spawn(accept_loop(ctx, endpoint.clone(), stopped.clone()));
    let duty = tokio::spawn(up_duty(
        node.proposer,
        node.stats,
        node.state,
        liveness.clone(),
        cfg.up_timing(),
        stopped,
    ));
    tracing::info!(%addr, "serving agents over QUIC (argus-enroll/1, argus-data/1)");
    Ok(Listener {
        addr,
        counters,
        liveness,
        endpoint,
        stop,
        tasks: vec![accept, duty],
    })
}

/// Decrements the open-connection gauge however a handler ends.
struct OpenGuard(Arc<IngestCounters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

async fn accept_loop<G: FleetGate>(
    ctx: Arc<Ctx<G>>,
    endpoint: quinn::Endpoint,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let Some(incoming) = incoming else { return };
        if ctx.counters.open.load(Relaxed) >= ctx.cfg.max_connections as u64 {
            ctx.counters.refuse("too_many_connections");
            incoming.refuse();
            continue;
        }
        ctx.counters.open.fetch_add(1, Relaxed);
        let guard = OpenGuard(ctx.counters.clone());
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let from = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // A foreign CA, an agent certificate that fails its checks, or a
                    // client that went away: nothing was read from it.
                    ctx.counters.refuse("handshake_failed");
                    tracing::info!(%from, "agent handshake failed: {e}");
                    if let Some(failure) = crate::fleet::gate::HandshakeFailure::of(&e) {
                        ctx.gate.handshake_failed(from, failure);
                    }
                    return;
                }
            };
            match negotiated_alpn(&conn).as_deref() {
                Some(a) if a == ALPN_DATA => {
                    ctx.counters.connection("argus-data/1");
                    session::serve(ctx, conn, from).await;
                }
                Some(a) if a == ALPN_ENROLL => {
                    ctx.counters.connection("argus-enroll/1");
                    enroll::serve(ctx, conn, from).await;
                }
                _ => {
                    ctx.counters.refuse("no_alpn");
                    conn.close(close::PROTOCOL, b"no supported ALPN");
                }
            }
        });
    }
}
