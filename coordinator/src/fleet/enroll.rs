//! Enrollment, renewal and admission: the fleet's side of the agent listener
//! ([`FleetGate`]), issue 5 items 3-4.
//!
//! Enrollment is two entries, so that a crash anywhere leaves nothing half done:
//!
//! 1. `AgentEnroll` spends the join token and creates the agent record in one apply
//!    (idempotent on token id and CSR key hash: a retry after a crash finds the same
//!    agent and spends nothing);
//! 2. the node signs the CSR with the CA key from its own cluster files (never from
//!    replicated state), then `AgentCert` logs the serial. Only a logged serial is
//!    admitted, so a certificate signed but never logged is worthless, and the retry
//!    simply gets a new one.
//!
//! What can be decided without I/O is pure and tested here: request validation, the
//! pre-check of the secret and the token's state against the applied state, and the
//! admission decision. Failed attempts go to the node's [`AuditSink`], which merges
//! repeats per source and reason within a minute, so a flood of bad joins costs a
//! bounded number of log entries.
//!
//! Revocation reaches open connections through a watch per admitted agent: a sweep over
//! the applied state a few times a second flips it once the agent's revocation (or its
//! removal) is applied on this node.

use super::agents::{AgentApplied, AgentRecord, AgentRefusal, AgentStatus, Agents};
use super::audit::{AuditRecord, AuditSink};
use super::cluster_files::ClusterPaths;
use super::gate::{Admission, FleetGate, GateRefusal, HandshakeFailure};
use super::state::FleetState;
use super::tokens::{TokenError, TokenRole, valid_host};
use crate::cluster::{ProposeError, Proposer};
use crate::state::entry::Entry;
use crate::state::machine::Outcome;
use crate::state::replica::SharedState;
use argus_common::pki::{
    AGENT_CERT_LIFETIME, CertInfo, ClusterCa, IssuedCert, Role, TokenId, TokenSecret, VerifiedCsr,
};
use argus_common::wire::{EnrollOk, EnrollRequest, RenewOk, RenewRequest};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often the revocation sweep looks at the applied state. Revoked agents' watches
/// flip within this of the revocation being applied (the target is 1 s).
pub const REVOCATION_SWEEP: Duration = Duration::from_millis(200);
/// An agent's last-seen time is proposed at most this often (at connection, never per
/// batch), so a reconnect loop cannot fill the log.
pub const SEEN_EVERY_MS: i64 = 60_000;
/// Most agents whose last `AgentSeen` proposal time is remembered; beyond it the
/// memory is cleared (the worst case is one extra entry per agent).
const MAX_SEEN_TRACKED: usize = 100_000;
/// Longest host name accepted in a request before validation looks at it.
const MAX_TOKEN_FIELD_LEN: usize = 64;

/// Enrollment settings.
#[derive(Debug, Clone)]
pub struct EnrollConfig {
    /// Agent certificate lifetime (72 h by default; tests shorten it).
    pub cert_lifetime: Duration,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            cert_lifetime: AGENT_CERT_LIFETIME,
        }
    }
}

/// Why an enrollment or renewal failed: what the agent is told and, as a short key,
/// what the audit record says. Never carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollFailure {
    #[error("malformed enrollment request: {0}")]
    Malformed(String),
    #[error("{0}; {hint}", hint = token_hint(.0))]
    Token(TokenError),
    #[error("this join token is for coordinators, not agents")]
    NotAnAgentToken,
    #[error("unknown agent")]
    UnknownAgent,
    #[error("agent is revoked")]
    AgentRevoked,
    #[error("refused: {0}")]
    Refused(AgentRefusal),
}

/// What the operator of a refused agent can do about it: the refusal is all they see on
/// the agent's host.
fn token_hint(e: &TokenError) -> &'static str {
    match e {
        TokenError::Unknown => {
            "this cluster has no such token (is the join string from another cluster?); \
             mint one with `argus token create`"
        }
        TokenError::WrongSecret => {
            "pass the whole join string exactly as `argus token create` printed it"
        }
        TokenError::Expired => "mint a new one with `argus token create` (`--ttl` sets its life)",
        TokenError::Spent => {
            "mint a new one with `argus token create` (`--uses N` lets N hosts join with it)"
        }
        TokenError::HostMismatch => {
            "use it on the host it names, or mint one with `argus token create --host <this \
             host's name>`"
        }
        TokenError::Revoked => "mint a new one with `argus token create`",
    }
}

impl EnrollFailure {
    /// The audit record's outcome.
    pub fn audit_key(&self) -> &'static str {
        match self {
            EnrollFailure::Malformed(_) => "malformed",
            EnrollFailure::Token(e) => match e {
                TokenError::Unknown => "unknown_token",
                TokenError::WrongSecret => "wrong_secret",
                TokenError::Expired => "token_expired",
                TokenError::Spent => "token_spent",
                TokenError::HostMismatch => "host_mismatch",
                TokenError::Revoked => "token_revoked",
            },
            EnrollFailure::NotAnAgentToken => "not_an_agent_token",
            EnrollFailure::UnknownAgent => "unknown_agent",
            EnrollFailure::AgentRevoked => "agent_revoked",
            EnrollFailure::Refused(_) => "refused",
        }
    }
}

impl From<AgentRefusal> for EnrollFailure {
    fn from(r: AgentRefusal) -> Self {
        match r {
            AgentRefusal::Token(e) => EnrollFailure::Token(e),
            AgentRefusal::NotAnAgentToken => EnrollFailure::NotAnAgentToken,
            AgentRefusal::Unknown => EnrollFailure::UnknownAgent,
            AgentRefusal::Revoked => EnrollFailure::AgentRevoked,
            other => EnrollFailure::Refused(other),
        }
    }
}

/// An enrollment request whose fields all parsed.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub token_id: TokenId,
    pub secret: TokenSecret,
    pub csr: VerifiedCsr,
    pub host: String,
}

impl ValidRequest {
    pub fn key_sha256(&self) -> [u8; 32] {
        self.csr.public_key_sha256()
    }
}

/// Checks the request's form: token id and secret formats, host name, and the CSR
/// (parses, self-signature verifies, P-256 key). Pure.
pub fn validate(req: &EnrollRequest) -> Result<ValidRequest, EnrollFailure> {
    let bad = |what: String| EnrollFailure::Malformed(what);
    if req.token_id.len() > MAX_TOKEN_FIELD_LEN {
        return Err(bad("token id: too long".into()));
    }
    let token_id = TokenId::parse(&req.token_id).map_err(|e| bad(format!("token id: {e}")))?;
    if req.token_secret.len() > MAX_TOKEN_FIELD_LEN {
        return Err(bad("token secret: too long".into()));
    }
    let secret =
        TokenSecret::parse(&req.token_secret).map_err(|e| bad(format!("token secret: {e}")))?;
    if !valid_host(&req.host_name) {
        return Err(bad(
            "host name: must be 1 to 253 letters, digits, '-', '.' or '_'".into(),
        ));
    }
    let csr = VerifiedCsr::from_der(&req.csr_der).map_err(|e| bad(format!("CSR: {e}")))?;
    Ok(ValidRequest {
        token_id,
        secret,
        csr,
        host: req.host_name.clone(),
    })
}

/// What the node checks before proposing, against its applied state at `now_ms`: the
/// secret (constant time, before anything about the token's state is revealed), the
/// token's role and state, and that a retry is not for a revoked agent. Apply checks the
/// state again at the entry's time; the secret is checked only here, which is why the
/// entry can carry none. Pure.
pub fn precheck(fleet: &FleetState, req: &ValidRequest, now_ms: i64) -> Result<(), EnrollFailure> {
    let key = req.key_sha256();
    let tokens = fleet.tokens();
    let token = match tokens.check(&req.token_id, &req.secret, &req.host, now_ms) {
        Ok(t) => t,
        // A retry by a key that spent a use: the token has none left, but this key
        // gets its answer again.
        Err(TokenError::Spent) => match tokens.get(&req.token_id) {
            Some(t) if t.used_by.contains(&key) => t,
            _ => return Err(EnrollFailure::Token(TokenError::Spent)),
        },
        Err(e) => return Err(EnrollFailure::Token(e)),
    };
    if token.role != TokenRole::Agent {
        return Err(EnrollFailure::NotAnAgentToken);
    }
    if let Some((_, a)) = fleet.agents().by_token_and_key(&req.token_id.0, &key)
        && a.revoked_ms.is_some()
    {
        return Err(EnrollFailure::AgentRevoked);
    }
    Ok(())
}

/// Whether a renewal for `agent_id` may be signed at `now_ms`. Pure.
pub fn may_renew(agents: &Agents, agent_id: &str) -> Result<(), EnrollFailure> {
    match agents.get(agent_id) {
        None => Err(EnrollFailure::UnknownAgent),
        Some(a) if a.revoked_ms.is_some() => Err(EnrollFailure::AgentRevoked),
        Some(_) => Ok(()),
    }
}

/// Why a data connection's certificate is not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitRefusal {
    #[error("client certificate does not parse: {0}")]
    Certificate(String),
    #[error("client certificate is not an agent's (it names {0})")]
    NotAnAgent(String),
    #[error("unknown agent {0}")]
    UnknownAgent(String),
    #[error("agent {0} is revoked")]
    Revoked(String),
    #[error("certificate serial was not issued to agent {0}")]
    SerialNotIssued(String),
    #[error("client certificate expired")]
    Expired,
}

/// The agent record a certificate maps to, or why it does not. The chain was verified
/// by the TLS layer; this checks what a valid chain alone cannot: that the agent in the
/// URI SAN exists, is not revoked, and was issued this very serial. Pure.
pub fn admit_decision<'a>(
    agents: &'a Agents,
    cert: &CertInfo,
    now_ms: i64,
) -> Result<&'a AgentRecord, AdmitRefusal> {
    if cert.identity.role != Role::Agent {
        return Err(AdmitRefusal::NotAnAgent(cert.identity.to_string()));
    }
    let id = cert.identity.id.as_str();
    let agent = agents
        .get(id)
        .ok_or_else(|| AdmitRefusal::UnknownAgent(id.to_string()))?;
    if agent.status(now_ms) == AgentStatus::Revoked {
        return Err(AdmitRefusal::Revoked(id.to_string()));
    }
    let issued = agent
        .serial(&cert.serial)
        .ok_or_else(|| AdmitRefusal::SerialNotIssued(id.to_string()))?;
    if now_ms >= cert.not_after_ms.min(issued.not_after_ms) {
        return Err(AdmitRefusal::Expired);
    }
    Ok(agent)
}

/// The audit record of one failed attempt from `from`: the source is the address
/// without its port, so every attempt from one host merges into one record per action,
/// target, reason and minute.
pub fn failure_record(
    action: &str,
    target: &str,
    from: SocketAddr,
    now_ms: i64,
    failure: &EnrollFailure,
) -> AuditRecord {
    AuditRecord::new(
        now_ms,
        "-",
        action,
        target,
        from.ip().to_string(),
        failure.audit_key(),
    )
}

/// The node's [`FleetGate`]: proposes through the node's log, reads its applied state,
/// signs with the CA from its cluster directory, audits failures to its sink.
pub struct Enrollment {
    proposer: Proposer<Outcome>,
    state: SharedState,
    ca_paths: ClusterPaths,
    ca: Mutex<Option<Arc<ClusterCa>>>,
    cfg: EnrollConfig,
    audit: AuditSink,
    /// One revocation watch per admitted agent with open connections.
    watches: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// When this node last proposed each agent's `AgentSeen`.
    seen: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("ca_paths", &self.ca_paths)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh agent id: 8 random bytes as 16 lowercase hex digits.
fn new_agent_id() -> Result<String, GateRefusal> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| GateRefusal::unavailable("no randomness for an agent id"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn propose_refusal(e: ProposeError) -> GateRefusal {
    GateRefusal::unavailable(format!("cannot record the enrollment now: {e}"))
}

impl Enrollment {
    /// The gate of a node: its proposer and applied state, the cluster directory whose
    /// `ca.pem`/`ca.key` sign certificates (read on first use), and the audit sink the
    /// server flushes.
    pub fn new(
        proposer: Proposer<Outcome>,
        state: SharedState,
        ca_paths: ClusterPaths,
        cfg: EnrollConfig,
        audit: AuditSink,
    ) -> Arc<Self> {
        Arc::new(Enrollment {
            proposer,
            state,
            ca_paths,
            ca: Mutex::new(None),
            cfg,
            audit,
            watches: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the revocation sweep; it ends when `stop` turns true.
    pub fn spawn_revocation_sweep(
        self: &Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REVOCATION_SWEEP);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => me.sweep(),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    }

    /// Flips the watch of every watched agent that is revoked or gone in the applied
    /// state; forgets watches nobody holds any more.
    pub fn sweep(&self) {
        let Ok(mut watches) = self.watches.lock() else {
            return;
        };
        if watches.is_empty() {
            return;
        }
        let Ok(sm) = self.state.read() else {
            return;
        };
        let agents = sm.fleet().agents();
        watches.retain(|id, tx| {
            if tx.receiver_count() == 0 {
                return false;
            }
            let gone = agents.get(id).is_none_or(|a| a.revoked_ms.is_some());
            if gone && !*tx.borrow() {
                tracing::info!(agent = %id, "agent revoked: closing its connections");
                tx.send_replace(true);
            }
            true
        });
    }

    /// The CA, read from the cluster directory on first use.
    fn ca(&self) -> Result<Arc<ClusterCa>, GateRefusal> {
        let mut slot = self
            .ca
            .lock()
            .map_err(|_| GateRefusal::unavailable("CA lock poisoned"))?;
        if let Some(ca) = slot.as_ref() {
            return Ok(Arc::clone(ca));
        }
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let loaded = read(self.ca_paths.ca_cert())
            .and_then(|cert| read(self.ca_paths.ca_key()).map(|key| (cert, key)))
            .and_then(|(cert, key)| ClusterCa::from_pem(&cert, &key).map_err(|e| e.to_string()));
        match loaded {
            Ok(ca) => {
                let ca = Arc::new(ca);
                *slot = Some(Arc::clone(&ca));
                Ok(ca)
            }
            Err(e) => {
                tracing::error!("cannot sign agent certificates: {e}");
                Err(GateRefusal::unavailable(
                    "this coordinator cannot sign certificates (no CA key); try another",
                ))
            }
        }
    }

    fn sign(
        &self,
        csr: &VerifiedCsr,
        agent_id: &str,
        now: i64,
    ) -> Result<(IssuedCert, Vec<u8>), GateRefusal> {
        let ca = self.ca()?;
        let cert = ca
            .issue_agent(csr, agent_id, now, self.cfg.cert_lifetime)
            .map_err(|e| {
                tracing::error!(agent = %agent_id, "signing failed: {e}");
                GateRefusal::unavailable(format!("signing failed: {e}"))
            })?;
        Ok((cert, ca.cert_der().to_vec()))
    }

    async fn propose(&self, entry: &Entry, now: i64) -> Result<Outcome, GateRefusal> {
        let receipt = self
            .proposer
            .propose(now, &entry.encode())
            .map_err(propose_refusal)?;
        receipt
            .outcome()
            .await
            .map(|a| a.outcome)
            .map_err(propose_refusal)
    }

    /// Logs a just-issued certificate's serial; the certificate is worthless until then.
    async fn log_cert(&self, agent_id: &str, cert: &IssuedCert, now: i64) -> Result<(), Failed> {
        let entry = Entry::AgentCert {
            agent_id: agent_id.to_string(),
            serial: cert.serial.0,
            issued_ms: cert.issued_at_ms,
            not_after_ms: cert.not_after_ms,
        };
        let outcome = self.propose(&entry, now).await.map_err(Failed::Gate)?;
        match outcome.agent {
            Some(Ok(_)) => Ok(()),
            Some(Err(r)) => Err(Failed::Enroll(r.into())),
            None => Err(Failed::Gate(GateRefusal::unavailable(
                "the certificate entry had no outcome",
            ))),
        }
    }

    /// Audits a failure (merged per source, action and reason within a minute) and turns
    /// it into the refusal the agent reads.
    fn refuse(
        &self,
        action: &str,
        target: &str,
        from: SocketAddr,
        now: i64,
        failed: Failed,
    ) -> GateRefusal {
        match failed {
            Failed::Gate(g) => g,
            Failed::Enroll(f) => {
                tracing::info!(%from, action, target, reason = %f, "refused");
                self.audit
                    .record(failure_record(action, target, from, now, &f));
                GateRefusal::denied(f.to_string())
            }
        }
    }

    async fn try_enroll(&self, req: &ValidRequest, now: i64) -> Result<EnrollOk, Failed> {
        {
            let sm = self
                .state
                .read()
                .map_err(|_| Failed::Gate(GateRefusal::unavailable("state lock poisoned")))?;
            precheck(sm.fleet(), req, now).map_err(Failed::Enroll)?;
        }
        let entry = Entry::AgentEnroll {
            agent_id: new_agent_id().map_err(Failed::Gate)?,
            token_id: req.token_id.0,
            host: req.host.clone(),
            key_sha256: req.key_sha256(),
        };
        let outcome = self.propose(&entry, now).await.map_err(Failed::Gate)?;
        let (agent_id, instance, again) = match outcome.agent {
            Some(Ok(AgentApplied::Enrolled {
                agent_id,
                instance,
                again,
            })) => (agent_id, instance, again),
            Some(Ok(other)) => {
                return Err(Failed::Gate(GateRefusal::unavailable(format!(
                    "unexpected enrollment outcome {other:?}"
                ))));
            }
            Some(Err(r)) => return Err(Failed::Enroll(r.into())),
            None => {
                return Err(Failed::Gate(GateRefusal::unavailable(
                    "the enrollment entry had no outcome",
                )));
            }
        };
        let (cert, ca_der) = self.sign(&req.csr, &agent_id, now).map_err(Failed::Gate)?;
        self.log_cert(&agent_id, &cert, now).await?;
        tracing::info!(
            agent = %agent_id, %instance, host = %req.host, token = %req.token_id,
            serial = %cert.serial, retry = again, "agent enrolled"
        );
        Ok(EnrollOk {
            certificate_der: cert.der.to_vec(),
            ca_der,
            issued_at_ms: cert.issued_at_ms,
            agent_id,
        })
    }

    async fn try_renew(
        &self,
        agent_id: &str,
        req: &RenewRequest,
        now: i64,
    ) -> Result<RenewOk, Failed> {
        let csr = VerifiedCsr::from_der(&req.csr_der)
            .map_err(|e| Failed::Enroll(EnrollFailure::Malformed(format!("CSR: {e}"))))?;
        {
            let sm = self
                .state
                .read()
                .map_err(|_| Failed::Gate(GateRefusal::unavailable("state lock poisoned")))?;
            may_renew(sm.fleet().agents(), agent_id).map_err(Failed::Enroll)?;
        }
        let (cert, _) = self.sign(&csr, agent_id, now).map_err(Failed::Gate)?;
        self.log_cert(agent_id, &cert, now).await?;
        tracing::info!(agent = %agent_id, serial = %cert.serial, "agent certificate renewed");
        Ok(RenewOk {
            certificate_der: cert.der.to_vec(),
            issued_at_ms: cert.issued_at_ms,
        })
    }

    /// Records that `agent_id` connected and runs `version`: proposes `AgentSeen` unless
    /// this node did so for the agent less than [`SEEN_EVERY_MS`] ago with the same
    /// version. Fire and forget: last-seen is informational.
    pub fn seen(&self, agent_id: &str, version: &str) {
        let now = now_ms();
        let known_version = self
            .state
            .read()
            .ok()
            .and_then(|sm| sm.fleet().agents().get(agent_id).map(|a| a.version.clone()));
        let Some(known_version) = known_version else {
            return;
        };
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let recent = seen
            .get(agent_id)
            .is_some_and(|t| now.saturating_sub(*t) < SEEN_EVERY_MS);
        if recent && known_version.as_deref() == Some(version) {
            return;
        }
        if seen.len() >= MAX_SEEN_TRACKED {
            seen.retain(|_, t| now.saturating_sub(*t) < SEEN_EVERY_MS);
            if seen.len() >= MAX_SEEN_TRACKED {
                seen.clear();
            }
        }
        seen.insert(agent_id.to_string(), now);
        drop(seen);
        let entry = Entry::AgentSeen {
            agent_id: agent_id.to_string(),
            version: version.to_string(),
        };
        match self.proposer.propose(now, &entry.encode()) {
            // The outcome is not awaited: nothing depends on it.
            Ok(_) => {}
            Err(e) => tracing::debug!(agent = %agent_id, "last-seen not recorded: {e}"),
        }
    }

    /// The watch that turns true when `agent_id` is revoked.
    fn watch(&self, agent_id: &str) -> watch::Receiver<bool> {
        match self.watches.lock() {
            Ok(mut w) => w
                .entry(agent_id.to_string())
                .or_insert_with(|| watch::channel(false).0)
                .subscribe(),
            // A poisoned map cannot track the agent: refuse nothing, but the
            // connection's certificate expiry still bounds it.
            Err(_) => watch::channel(false).1,
        }
    }
}

/// An internal failure: one the agent is told about and the audit records, or one of the
/// node's (not leader, cannot sign) passed through as is.
enum Failed {
    Enroll(EnrollFailure),
    Gate(GateRefusal),
}

impl FleetGate for Enrollment {
    async fn enroll(&self, req: EnrollRequest, from: SocketAddr) -> Result<EnrollOk, GateRefusal> {
        let now = now_ms();
        let valid = match validate(&req) {
            Ok(v) => v,
            Err(f) => return Err(self.refuse("agent.enroll", "", from, now, Failed::Enroll(f))),
        };
        let target = valid.token_id.to_string();
        self.try_enroll(&valid, now).await.map_err(|f| {
            // A random token id is not worth a record of its own: merge them.
            let target = match &f {
                Failed::Enroll(EnrollFailure::Token(TokenError::Unknown)) => "",
                _ => target.as_str(),
            };
            let wrong_host = matches!(
                f,
                Failed::Enroll(EnrollFailure::Token(TokenError::HostMismatch))
            );
            let mut refusal = self.refuse("agent.enroll", target, from, now, f);
            if wrong_host {
                // The name the token was bound to stays secret; the agent's own is news
                // to nobody and tells the operator what `--host` would need.
                refusal.reason = format!("{} (this host is {:?})", refusal.reason, valid.host);
            }
            refusal
        })
    }

    async fn renew(
        &self,
        agent_id: &str,
        req: RenewRequest,
        from: SocketAddr,
    ) -> Result<RenewOk, GateRefusal> {
        let now = now_ms();
        self.try_renew(agent_id, &req, now)
            .await
            .map_err(|f| self.refuse("agent.renew", agent_id, from, now, f))
    }

    fn admit(&self, cert_der: &[u8], from: SocketAddr) -> Result<Admission, GateRefusal> {
        let now = now_ms();
        let info = CertInfo::from_der(cert_der)
            .map_err(|e| AdmitRefusal::Certificate(e.to_string()))
            .map_err(|r| GateRefusal::denied(r.to_string()))?;
        let decided = {
            let sm = self
                .state
                .read()
                .map_err(|_| GateRefusal::unavailable("state lock poisoned"))?;
            admit_decision(sm.fleet().agents(), &info, now).map(|a| {
                (
                    info.identity.id.clone(),
                    a.instance.clone(),
                    a.version.clone(),
                )
            })
        };
        let (agent_id, instance, version) = decided.map_err(|r| {
            tracing::info!(%from, reason = %r, "data connection refused");
            GateRefusal::denied(r.to_string())
        })?;
        let revoked = self.watch(&agent_id);
        self.seen(&agent_id, version.as_deref().unwrap_or(""));
        Ok(Admission {
            agent_id,
            instance,
            cert_not_after_ms: info.not_after_ms,
            revoked,
        })
    }

    fn hello(&self, agent_id: &str, agent_version: &str) {
        self.seen(agent_id, agent_version);
    }

    fn handshake_failed(&self, from: SocketAddr, failure: HandshakeFailure) {
        self.audit.record(AuditRecord::new(
            now_ms(),
            "-",
            "agent.handshake",
            "",
            from.ip().to_string(),
            failure.audit_key(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::agents::{IssuedSerial, NewAgent};
    use crate::fleet::tokens::NewToken;
    use argus_common::pki::{ArgusIdentity, NodeKey, SecretHash};

    const T0: i64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    struct Fixture {
        fleet: FleetState,
        id: TokenId,
        secret: TokenSecret,
        key: NodeKey,
    }

    fn fixture(uses: u32, host: Option<&str>, role: TokenRole) -> Fixture {
        let mut fleet = FleetState::default();
        let id = TokenId::generate().unwrap();
        let secret = TokenSecret::generate().unwrap();
        fleet
            .create_token(
                &NewToken {
                    id: id.0,
                    secret_hash: SecretHash::of(&secret).0,
                    expires_ms: T0 + HOUR,
                    uses,
                    host: host.map(String::from),
                    role,
                    created_by: "admin".into(),
                },
                T0,
            )
            .unwrap();
        Fixture {
            fleet,
            id,
            secret,
            key: NodeKey::generate().unwrap(),
        }
    }

    fn request(f: &Fixture, host: &str) -> EnrollRequest {
        EnrollRequest {
            token_id: f.id.to_string(),
            token_secret: f.secret.expose(),
            csr_der: f.key.csr_der().unwrap().to_vec(),
            host_name: host.into(),
        }
    }

    /// What the gate does around the log, without the log: precheck, then apply.
    fn enroll(
        f: &mut Fixture,
        host: &str,
        agent_id: &str,
        now: i64,
    ) -> Result<String, EnrollFailure> {
        let v = validate(&request(f, host))?;
        precheck(&f.fleet, &v, now)?;
        let new = NewAgent {
            agent_id: agent_id.into(),
            token_id: v.token_id.0,
            host: v.host.clone(),
            key_sha256: v.key_sha256(),
        };
        match f.fleet.enroll_agent(&new, now)? {
            AgentApplied::Enrolled { agent_id, .. } => Ok(agent_id),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_requests_name_the_bad_field() {
        let f = fixture(1, None, TokenRole::Agent);
        let good = request(&f, "web-1");
        assert!(validate(&good).is_ok());
        let cases: [(EnrollRequest, &str); 5] = [
            (
                EnrollRequest {
                    token_id: "xyz".into(),
                    ..good.clone()
                },
                "token id",
            ),
            (
                EnrollRequest {
                    token_secret: "0".repeat(31),
                    ..good.clone()
                },
                "token secret",
            ),
            (
                EnrollRequest {
                    host_name: "a b".into(),
                    ..good.clone()
                },
                "host name",
            ),
            (
                EnrollRequest {
                    csr_der: vec![0x30, 0x03, 1, 2, 3],
                    ..good.clone()
                },
                "CSR",
            ),
            (
                EnrollRequest {
                    token_secret: "9".repeat(100_000),
                    ..good.clone()
                },
                "token secret",
            ),
        ];
        for (req, field) in cases {
            let err = validate(&req).unwrap_err();
            assert_eq!(err.audit_key(), "malformed");
            assert!(err.to_string().contains(field), "{field}: {err}");
            assert!(!err.to_string().contains(&f.secret.expose()));
        }
    }

    #[test]
    fn each_failed_attempt_is_refused_with_its_reason() {
        // Wrong secret.
        let f = fixture(1, None, TokenRole::Agent);
        let mut req = request(&f, "web-1");
        req.token_secret = TokenSecret::generate().unwrap().expose();
        let v = validate(&req).unwrap();
        let err = precheck(&f.fleet, &v, T0).unwrap_err();
        assert_eq!(err.audit_key(), "wrong_secret");
        // Unknown token.
        let mut req = request(&f, "web-1");
        req.token_id = TokenId::generate().unwrap().to_string();
        let err = precheck(&f.fleet, &validate(&req).unwrap(), T0).unwrap_err();
        assert_eq!(err.audit_key(), "unknown_token");
        // Expired.
        let v = validate(&request(&f, "web-1")).unwrap();
        let err = precheck(&f.fleet, &v, T0 + HOUR).unwrap_err();
        assert_eq!(err.audit_key(), "token_expired");
        assert!(
            err.to_string()
                .starts_with("join token expired; mint a new one with `argus token create`"),
            "the refusal says what is wrong and what to do: {err}"
        );
        // Host mismatch.
        let f = fixture(1, Some("db-1"), TokenRole::Agent);
        let v = validate(&request(&f, "web-1")).unwrap();
        assert_eq!(
            precheck(&f.fleet, &v, T0).unwrap_err().audit_key(),
            "host_mismatch"
        );
        // A coordinator token cannot enroll an agent.
        let f = fixture(1, None, TokenRole::Coordinator);
        let v = validate(&request(&f, "web-1")).unwrap();
        assert_eq!(
            precheck(&f.fleet, &v, T0).unwrap_err(),
            EnrollFailure::NotAnAgentToken
        );
        // Spent, by another key.
        let mut f = fixture(1, None, TokenRole::Agent);
        enroll(&mut f, "web-1", "a1", T0).unwrap();
        f.key = NodeKey::generate().unwrap();
        assert_eq!(
            enroll(&mut f, "web-2", "a2", T0).unwrap_err().audit_key(),
            "token_spent"
        );
    }

    #[test]
    fn a_retry_passes_the_precheck_and_gets_the_same_agent() {
        let mut f = fixture(1, None, TokenRole::Agent);
        assert_eq!(enroll(&mut f, "web-1", "a1", T0).unwrap(), "a1");
        // The single use is spent, but the same key retrying (say, after the answer was
        // lost in a crash) gets the same agent, and spends nothing.
        assert_eq!(enroll(&mut f, "web-1", "b2", T0 + 5).unwrap(), "a1");
        assert_eq!(f.fleet.agents().len(), 1);
        assert_eq!(f.fleet.tokens().get(&f.id).unwrap().uses_left, 0);
        // Once the agent is revoked, the retry is refused before anything is proposed.
        f.fleet.revoke_agent("a1", T0 + 6).unwrap();
        assert_eq!(
            enroll(&mut f, "web-1", "c3", T0 + 7).unwrap_err(),
            EnrollFailure::AgentRevoked
        );
        assert_eq!(
            may_renew(f.fleet.agents(), "a1"),
            Err(EnrollFailure::AgentRevoked)
        );
        assert_eq!(
            may_renew(f.fleet.agents(), "zz"),
            Err(EnrollFailure::UnknownAgent)
        );
    }

    fn cert_info(id: &str, serial: [u8; 16], not_after_ms: i64) -> CertInfo {
        CertInfo {
            identity: ArgusIdentity::new(Role::Agent, id).unwrap(),
            serial: serial.to_vec(),
            not_before_ms: T0 - 300_000,
            not_after_ms,
        }
    }

    #[test]
    fn admission_needs_a_known_unrevoked_agent_and_a_serial_issued_to_it() {
        let mut f = fixture(2, None, TokenRole::Agent);
        enroll(&mut f, "web-1", "a1", T0).unwrap();
        let issued = IssuedSerial {
            serial: [7; 16],
            issued_ms: T0,
            not_after_ms: T0 + 72 * HOUR,
        };
        f.fleet.log_agent_cert("a1", &issued, T0).unwrap();
        let agents = f.fleet.agents().clone();
        let ok = cert_info("a1", [7; 16], T0 + 72 * HOUR);
        let a = admit_decision(&agents, &ok, T0 + 1).unwrap();
        assert_eq!(a.instance, "web-1");
        assert_eq!(
            admit_decision(&agents, &cert_info("a1", [8; 16], T0 + HOUR), T0),
            Err(AdmitRefusal::SerialNotIssued("a1".into()))
        );
        assert_eq!(
            admit_decision(&agents, &cert_info("nobody", [7; 16], T0 + HOUR), T0),
            Err(AdmitRefusal::UnknownAgent("nobody".into()))
        );
        assert_eq!(
            admit_decision(&agents, &ok, T0 + 72 * HOUR),
            Err(AdmitRefusal::Expired)
        );
        let mut coordinator = ok.clone();
        coordinator.identity = ArgusIdentity::new(Role::Coordinator, "1").unwrap();
        assert!(matches!(
            admit_decision(&agents, &coordinator, T0),
            Err(AdmitRefusal::NotAnAgent(_))
        ));
        f.fleet.revoke_agent("a1", T0 + 2).unwrap();
        assert_eq!(
            admit_decision(f.fleet.agents(), &ok, T0 + 3),
            Err(AdmitRefusal::Revoked("a1".into()))
        );
    }

    #[test]
    fn failures_are_audited_once_per_source_reason_and_minute() {
        let sink = AuditSink::default();
        let refusal = |ip: [u8; 4], at: i64, f: EnrollFailure| {
            // Every attempt from its own port, as reconnecting clients do.
            let from = SocketAddr::from((ip, 40_000 + (at % 1000) as u16));
            sink.record(failure_record("agent.enroll", "", from, at, &f));
        };
        for i in 0..1000 {
            refusal(
                [10, 0, 0, 1],
                T0 + i,
                EnrollFailure::Token(TokenError::WrongSecret),
            );
        }
        refusal(
            [10, 0, 0, 2],
            T0,
            EnrollFailure::Token(TokenError::WrongSecret),
        );
        refusal([10, 0, 0, 1], T0, EnrollFailure::Token(TokenError::Expired));
        refusal(
            [10, 0, 0, 1],
            T0 + 60_000,
            EnrollFailure::Token(TokenError::WrongSecret),
        );
        let batches = sink.drain();
        let records: Vec<AuditRecord> = batches.into_iter().flatten().collect();
        assert_eq!(records.len(), 4, "{records:?}");
        let flood = records
            .iter()
            .find(|r| {
                r.source == "10.0.0.1" && r.outcome == "wrong_secret" && r.time_ms < T0 + 60_000
            })
            .unwrap();
        assert_eq!((flood.count, flood.action.as_str()), (1000, "agent.enroll"));
    }
}
