//! `argus serve`: one coordinator node with its data directory, serving HTTP.
//!
//! Assembles the pieces: the Raft log (segment files of its own), the store (a fjall database),
//! the replica that applies entries, the node's threads, and the axum router. Writes
//! are answered only once their entry is committed and applied (DESIGN §2).

use crate::api::auth::{self, AuthConfig};
use crate::api::http::{Access, AppState, HttpCounters, TokenApi, router};
use crate::api::query::QueryService;
use crate::cluster::log_migration::open_migrating;
use crate::cluster::{NoPeers, NodeConfig, NodeHandle, RaftNode, spawn};
use crate::fleet::admin_token::AdminTokenHash;
use crate::fleet::api_tokens::ApiRole;
use crate::fleet::audit::AuditSink;
use crate::fleet::cluster_files::{self, ClusterFilesError, InitSpec};
use crate::fleet::enroll::{EnrollConfig, Enrollment};
use crate::query::source::QueryLimits;
use crate::state::checkpoint_file::CheckpointFile;
use crate::state::machine::Outcome;
use crate::state::replica::{Replica, ReplicaConfig};
use crate::tsdb::store::{Store, StoreConfig};
use crate::tsdb::tier::Tiers;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The Raft log's directory under the data directory (segment files).
pub const LOG_DIR: &str = "log";
/// Where binaries before the segment log kept it (a fjall database), moved at start.
const OLD_LOG_DIR: &str = "raft";

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// A shared bearer token for `/api/v1/write` (role ingest), besides API tokens.
    pub write_token: Option<String>,
    /// Roles of requests without a bearer token; `None`: the default for the listen
    /// address ([`crate::api::auth::default_anonymous`]).
    pub anonymous_roles: Option<Vec<ApiRole>>,
    /// Allows `anonymous_roles` to grant anything on a non-loopback address.
    pub anonymous_beyond_loopback: bool,
    /// Retention of the audit log, carried by every `Audit` entry this node proposes.
    pub audit_retention_ms: i64,
    /// Largest compressed remote-write body; larger ones get 413.
    pub max_body_bytes: usize,
    pub tick: Duration,
    pub replica: ReplicaConfig,
    pub tiers: Tiers,
    /// PromQL query limits (timeout, samples, series, concurrency, points).
    pub query: QueryLimits,
    /// Addresses (`host:port`) agents and peers dial, written into join strings and the
    /// node certificate; empty: the listen address (this host's name when listening on
    /// every address).
    pub advertise: Vec<String>,
    /// Enrollment: agent certificate lifetime (72 h by default).
    pub enroll: EnrollConfig,
    /// Where agents connect over QUIC (UDP); `None`: no agent listener. Default: the
    /// HTTP address (3006/tcp and 3006/udp, DESIGN §5; port 0 picks a free one).
    pub quic_listen: Option<SocketAddr>,
    /// The agent listener's limits and the `up` duty's timing.
    pub ingest: crate::ingest::IngestConfig,
}

impl ServeConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        ServeConfig {
            data_dir,
            listen,
            write_token: None,
            anonymous_roles: None,
            anonymous_beyond_loopback: false,
            audit_retention_ms: crate::fleet::audit::DEFAULT_RETENTION_MS,
            max_body_bytes: 16 << 20,
            tick: Duration::from_millis(100),
            replica: ReplicaConfig::default(),
            tiers: Tiers::argus_defaults(),
            query: QueryLimits::default(),
            advertise: Vec::new(),
            enroll: EnrollConfig::default(),
            quic_listen: Some(listen),
            ingest: crate::ingest::IngestConfig::default(),
        }
    }

    /// What `cluster init` (explicit, or implicit on the first start) writes for this
    /// node.
    pub fn init_spec(&self) -> Result<InitSpec, ClusterFilesError> {
        Ok(InitSpec {
            node_id: NodeConfig::default().id.to_string(),
            advertise: cluster_files::advertised(self.listen, &self.advertise)?,
            url: cluster_files::local_url(self.listen),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to start: {0}")]
    Anonymous(#[from] crate::api::auth::AnonymousError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("raft log: {0}")]
    Log(#[from] crate::cluster::LogError),
    #[error("store: {0}")]
    Store(#[from] crate::tsdb::store::StoreError),
    #[error("state: {0}")]
    Replica(#[from] crate::state::replica::ReplicaError),
    #[error("raft node: {0}")]
    Node(#[from] crate::cluster::NodeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the node's threads: {0}")]
    Threads(std::io::Error),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("agent listener: {0}")]
    Ingest(#[from] crate::ingest::IngestError),
    #[error("cluster files: {0}")]
    Cluster(#[from] ClusterFilesError),
}

/// A running node: its HTTP address and the handle that stops it.
pub struct Running {
    pub addr: SocketAddr,
    /// The fleet's gate (enroll, renew, admit) that the agent listener asks; tests call
    /// it directly.
    pub fleet_gate: Arc<Enrollment>,
    /// The agent QUIC listener's UDP address, when it runs.
    pub quic_addr: Option<SocketAddr>,
    quic: Option<crate::ingest::Listener>,
    node: NodeHandle<Outcome>,
    http: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Stops serving, then stops the node's threads.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        if let Some(quic) = self.quic {
            quic.shutdown().await;
        }
        let _ = self.stop.send(true);
        match self.http.await {
            Ok(r) => r.map_err(ServeError::Http)?,
            Err(e) => tracing::warn!("HTTP task: {e}"),
        }
        tokio::task::spawn_blocking(move || self.node.shutdown())
            .await
            .map_err(|e| ServeError::Threads(std::io::Error::other(e)))??;
        Ok(())
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The leader's retention duty: every minute, propose a `RetentionCut` per tier. The cut
/// is an entry, not a timer in the store, so every replica drops the same partitions at
/// the same point of the log (DESIGN §3.2); a new leader simply carries on.
async fn retention_duty(
    proposer: crate::cluster::Proposer<Outcome>,
    stats: Arc<crate::cluster::NodeStats>,
    tiers: Tiers,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut last: Vec<i64> = vec![i64::MIN; tiers.iter().count()];
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        if !stats.snapshot().is_leader {
            continue;
        }
        let now = wall_ms();
        for cut in tiers.retention_cuts(now) {
            let slot = &mut last[usize::from(cut.tier)];
            if cut.before_ms <= *slot {
                continue;
            }
            let entry = crate::state::entry::Entry::RetentionCut {
                tier: cut.tier,
                before_ms: cut.before_ms,
            };
            match proposer.propose(now, &entry.encode()) {
                Ok(receipt) => {
                    if receipt.outcome().await.is_ok() {
                        *slot = cut.before_ms;
                    }
                }
                Err(e) => tracing::debug!("retention cut not proposed: {e}"),
            }
        }
    }
}

/// How often the audit sink's aggregated records are proposed.
const AUDIT_FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Flushes the [`AuditSink`] (aggregated refusals, records that could not be logged at
/// once) into the log every [`AUDIT_FLUSH_EVERY`], and once more at shutdown. Any node
/// may propose; a follower's proposal fails and the records wait for the next flush,
/// bounded by the sink.
async fn audit_duty(
    proposer: crate::cluster::Proposer<Outcome>,
    sink: AuditSink,
    retention_ms: i64,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(AUDIT_FLUSH_EVERY);
    loop {
        let stopping = tokio::select! {
            _ = every.tick() => false,
            _ = stopped.wait_for(|s| *s) => true,
        };
        for records in sink.drain() {
            let entry = crate::state::entry::Entry::Audit {
                records: records.clone(),
                retention_ms,
            };
            let logged = match proposer.propose(wall_ms(), &entry.encode()) {
                Ok(receipt) => receipt.outcome().await.is_ok(),
                Err(e) => {
                    tracing::debug!("audit records not proposed: {e}");
                    false
                }
            };
            if !logged && !stopping {
                for r in records {
                    sink.record(r);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Opens the data directory, starts the node and binds the HTTP listener.
pub async fn start(cfg: ServeConfig) -> Result<Running, ServeError> {
    let anonymous = match &cfg.anonymous_roles {
        Some(roles) => roles.clone(),
        None => auth::default_anonymous(cfg.listen.ip().is_loopback(), cfg.write_token.is_some()),
    };
    auth::check_anonymous(&anonymous, cfg.listen, cfg.anonymous_beyond_loopback)?;
    let dir_err = |path: &PathBuf| {
        let path = path.clone();
        move |source| ServeError::DataDir { path, source }
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(dir_err(&cfg.data_dir))?;
    let spec = cfg.init_spec()?;
    let (cluster, created) = cluster_files::ensure(&cfg.data_dir, &spec, wall_ms())?;
    if let Some(c) = &created {
        // The token itself is not logged: it is in the 0600 CLI config file.
        tracing::info!(
            ca_pin = %c.ca_pin,
            names = ?c.node_names,
            cli_config = %c.paths.cli_config().display(),
            "initialized a new cluster in the empty data directory; the admin token is in the CLI config file"
        );
    }
    let tsdb_dir = cfg.data_dir.join("tsdb");
    let (log, _) = open_migrating(&cfg.data_dir.join(OLD_LOG_DIR), &cfg.data_dir.join(LOG_DIR))?;
    let store = Arc::new(Store::open(&tsdb_dir, StoreConfig::new(cfg.tiers.clone()))?);
    let replica = Replica::open(
        store.clone(),
        CheckpointFile::new(&cfg.data_dir),
        cfg.replica,
    )?;
    let state = replica.shared();
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        checkpoint = replica.checkpointed(),
        "state loaded; replaying the log after the checkpoint"
    );
    let parts = RaftNode::build(NodeConfig::default(), log, NoPeers, replica)?;
    let node = spawn(parts, cfg.tick).map_err(ServeError::Threads)?;
    // Refusals (and failed enrollments) are audited through this sink, which merges
    // repeats per source and minute; audit_duty flushes it into the log.
    let audit_sink = AuditSink::default();
    // The fleet's gate: what the agent listener asks (enroll, renew, admit).
    let fleet_gate = Enrollment::new(
        node.proposer().clone(),
        state.clone(),
        cluster.paths.clone(),
        cfg.enroll.clone(),
        audit_sink.clone(),
    );
    let ingest_counters = Arc::new(crate::ingest::IngestCounters::default());
    let quic = match cfg.quic_listen {
        Some(bind) => Some(crate::ingest::start(
            bind,
            crate::ingest::ServerTls::from_cluster_files(&cluster.paths)?,
            fleet_gate.clone(),
            crate::ingest::IngestNode {
                proposer: node.proposer().clone(),
                stats: node.stats().clone(),
                state: state.clone(),
            },
            cfg.ingest.clone(),
            ingest_counters.clone(),
        )?),
        None => None,
    };
    let app = AppState {
        ingest: ingest_counters,
        proposer: node.proposer().clone(),
        stats: node.stats().clone(),
        state,
        store,
        counters: Arc::new(HttpCounters::default()),
        limits: Default::default(),
        started: std::time::Instant::now(),
        query: QueryService::new(cfg.query),
        tokens: Arc::new(TokenApi {
            admin_token_hash: Some(cluster.admin_token_hash),
            ca_pin: cluster.ca_pin,
            advertise: spec.advertise,
        }),
        access: Arc::new(Access::new(
            AuthConfig {
                admin_token_hash: Some(cluster.admin_token_hash),
                write_token_hash: cfg.write_token.as_deref().map(AdminTokenHash::of),
                anonymous,
            },
            audit_sink.clone(),
            cfg.audit_retention_ms,
        )),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(retention_duty(
        node.proposer().clone(),
        node.stats().clone(),
        cfg.tiers.clone(),
        stop.subscribe(),
    ));
    fleet_gate.spawn_revocation_sweep(stop.subscribe());
    tokio::spawn(audit_duty(
        node.proposer().clone(),
        audit_sink.clone(),
        cfg.audit_retention_ms,
        stop.subscribe(),
    ));
    let service =
        router(app, cfg.max_body_bytes).into_make_service_with_connect_info::<SocketAddr>();
    let http = tokio::spawn(async move {
        axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(%addr, "serving HTTP");
    Ok(Running {
        addr,
        fleet_gate,
        quic_addr: quic.as_ref().map(|q| q.addr),
        quic,
        node,
        http,
        stop,
    })
}
