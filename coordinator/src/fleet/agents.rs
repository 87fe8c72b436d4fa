//! The agent table: who enrolled, under which `instance`, with which certificates, and
//! whether they were revoked (issue 5 items 3-4, DESIGN §3.6).
//!
//! Replicated state, like the join tokens next to it: it changes only when an
//! `AgentEnroll`, `AgentCert`, `AgentRevoke` or `AgentSeen` entry is applied, every
//! decision about time compares against the entry's leader time, and the proposer's
//! choices that need randomness (the agent id) are carried in the entry. So every
//! replica assigns the same instance name and keeps the same serials.
//!
//! Revocation is of the agent, not of a certificate: a revoked agent's renewals are
//! refused at apply, so no certificate it holds can outlive the revocation.

use super::tokens::{TokenError, TokenRefusal, TokenRole, Tokens, valid_host};
use argus_common::pki::{ArgusIdentity, Role, TokenId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Most agents the table holds (live, revoked or expired but still listed); an
/// enrollment beyond it is refused, the same way on every replica.
pub const MAX_AGENTS: usize = 100_000;
/// Serials kept per agent. Renewal happens at two thirds of a certificate's lifetime,
/// so at most two of an agent's certificates are valid at once; the rest are history.
pub const MAX_SERIALS_PER_AGENT: usize = 8;
/// How long a revoked or expired agent stays listed (so `argus agents list` shows what
/// happened to it) before apply drops it. A dropped agent is unknown, which admission
/// refuses as firmly as revoked.
pub const KEEP_GONE_MS: i64 = 7 * 86_400_000;
/// How long an agent whose enrollment entry applied but whose certificate serial was
/// never logged (the proposer crashed between the two) counts as live. Its retry gets
/// the same record; if it never retries, the record expires after this.
pub const ENROLL_GRACE_MS: i64 = 3_600_000;
/// Longest agent version string kept.
pub const MAX_VERSION_LEN: usize = 64;

/// One certificate issued to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedSerial {
    pub serial: [u8; 16],
    pub issued_ms: i64,
    pub not_after_ms: i64,
}

/// One agent as the replicated state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The `instance` label value: the host name, made unique among live agents.
    pub instance: String,
    /// The host name the agent enrolled with.
    pub host: String,
    /// What the agent last reported in `Hello`; `None` until it has connected.
    pub version: Option<String>,
    /// Leader time of the enrollment entry.
    pub enrolled_ms: i64,
    /// The join token it used.
    pub token_id: [u8; 8],
    /// SHA-256 of the enrolled key's SubjectPublicKeyInfo: with the token id, what makes
    /// a retried enrollment find this record again.
    pub key_sha256: [u8; 32],
    /// Certificates issued to it, oldest first, at most [`MAX_SERIALS_PER_AGENT`].
    pub serials: Vec<IssuedSerial>,
    /// Leader time of its last `AgentSeen` (updated at connection, not per batch).
    pub last_seen_ms: Option<i64>,
    /// Leader time of the revocation.
    pub revoked_ms: Option<i64>,
}

/// An agent's state in a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    Active,
    Revoked,
    /// Its newest certificate expired without a renewal.
    Expired,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Revoked => "revoked",
            AgentStatus::Expired => "expired",
        }
    }
}

impl AgentRecord {
    /// The not-after of its newest certificate.
    pub fn cert_expires_ms(&self) -> Option<i64> {
        self.serials.iter().map(|s| s.not_after_ms).max()
    }

    /// Until when the agent counts as live without a renewal.
    fn live_until_ms(&self) -> i64 {
        self.cert_expires_ms()
            .unwrap_or(self.enrolled_ms.saturating_add(ENROLL_GRACE_MS))
    }

    pub fn status(&self, now_ms: i64) -> AgentStatus {
        if self.revoked_ms.is_some() {
            AgentStatus::Revoked
        } else if now_ms >= self.live_until_ms() {
            AgentStatus::Expired
        } else {
            AgentStatus::Active
        }
    }

    /// The record of a certificate by its serial's bytes, if it was issued to this agent.
    pub fn serial(&self, serial: &[u8]) -> Option<&IssuedSerial> {
        self.serials.iter().find(|s| s.serial.as_slice() == serial)
    }

    /// Since when it is gone (revoked or expired), for pruning.
    fn gone_since_ms(&self, now_ms: i64) -> Option<i64> {
        match self.status(now_ms) {
            AgentStatus::Active => None,
            AgentStatus::Revoked => self.revoked_ms,
            AgentStatus::Expired => Some(self.live_until_ms()),
        }
    }
}

/// The fields of an `AgentEnroll` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    /// Chosen by the proposer (random), so apply needs no randomness.
    pub agent_id: String,
    pub token_id: [u8; 8],
    pub host: String,
    pub key_sha256: [u8; 32],
}

/// What applying an agent entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentApplied {
    /// The agent the enrollment is for. `again`: the same token and key enrolled before
    /// and this is that agent (a retry); nothing was spent.
    Enrolled {
        agent_id: String,
        instance: String,
        again: bool,
    },
    CertLogged,
    /// The serial was logged before: nothing changed.
    CertLoggedAgain,
    Revoked,
    /// Revoked before: nothing changed.
    AlreadyRevoked,
    Seen,
}

/// Why an agent entry changed nothing. Decided at apply, so the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentRefusal {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("this join token is for coordinators, not agents")]
    NotAnAgentToken,
    #[error("unknown agent")]
    Unknown,
    #[error("agent is revoked")]
    Revoked,
    #[error("an agent with this id exists already")]
    DuplicateId,
    #[error("the cluster holds {MAX_AGENTS} agents already; revoke some")]
    TooMany,
    #[error("invalid agent entry: {0}")]
    Invalid(&'static str),
}

impl From<TokenRefusal> for AgentRefusal {
    fn from(r: TokenRefusal) -> Self {
        match r {
            TokenRefusal::Token(e) => AgentRefusal::Token(e),
            TokenRefusal::DuplicateId => AgentRefusal::Invalid("token id reused"),
            TokenRefusal::TooMany => AgentRefusal::Invalid("token table full"),
            TokenRefusal::Invalid(why) => AgentRefusal::Invalid(why),
        }
    }
}

/// What an agent entry did, for its proposer.
pub type AgentOutcome = Result<AgentApplied, AgentRefusal>;

/// Whether `id` can be an agent id (what the URI SAN can carry).
pub fn valid_agent_id(id: &str) -> bool {
    ArgusIdentity::new(Role::Agent, id).is_ok()
}

/// Whether `v` can be kept as an agent version: printable ASCII, bounded.
fn valid_version(v: &str) -> bool {
    v.len() <= MAX_VERSION_LEN && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// The first of `host`, `host-2`, `host-3`, ... that no name in `taken` equals
/// (ignoring ASCII case). Terminates: `taken` is finite.
pub fn unique_instance(host: &str, taken: &HashSet<String>) -> String {
    let free = |name: &str| !taken.contains(&name.to_ascii_lowercase());
    if free(host) {
        return host.to_string();
    }
    (2u64..)
        .map(|n| format!("{host}-{n}"))
        .find(|name| free(name))
        .unwrap_or_else(|| host.to_string())
}

/// The agent table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agents {
    agents: BTreeMap<String, AgentRecord>,
}

impl Agents {
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&AgentRecord> {
        self.agents.get(id)
    }

    /// Every agent in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AgentRecord)> {
        self.agents.iter().map(|(id, a)| (id.as_str(), a))
    }

    /// The agent a (token, key) pair enrolled, if any.
    pub fn by_token_and_key(
        &self,
        token_id: &[u8; 8],
        key_sha256: &[u8; 32],
    ) -> Option<(&str, &AgentRecord)> {
        self.iter()
            .find(|(_, a)| &a.token_id == token_id && &a.key_sha256 == key_sha256)
    }

    /// Instance names of agents live at `now_ms`, lowercased.
    fn live_instances(&self, now_ms: i64) -> HashSet<String> {
        self.agents
            .values()
            .filter(|a| a.status(now_ms) == AgentStatus::Active)
            .map(|a| a.instance.to_ascii_lowercase())
            .collect()
    }

    /// Drops agents gone for longer than [`KEEP_GONE_MS`] at `now_ms`.
    fn prune(&mut self, now_ms: i64) {
        self.agents.retain(|_, a| {
            a.gone_since_ms(now_ms)
                .is_none_or(|since| since.saturating_add(KEEP_GONE_MS) > now_ms)
        });
    }

    /// Applies `AgentEnroll` at leader time `now_ms`: spends a use of the token (whose
    /// secret the proposer checked) and creates the agent, or, for a retry with the same
    /// token and key, finds the agent created before without spending again. Both in one
    /// entry, so a use is never spent without an agent to show for it.
    pub fn enroll(&mut self, tokens: &mut Tokens, new: &NewAgent, now_ms: i64) -> AgentOutcome {
        if !valid_agent_id(&new.agent_id) {
            return Err(AgentRefusal::Invalid("agent id is not a valid identity"));
        }
        if !valid_host(&new.host) {
            return Err(AgentRefusal::Invalid("host is not a host name"));
        }
        self.prune(now_ms);
        let token = tokens
            .get(&TokenId(new.token_id))
            .ok_or(AgentRefusal::Token(TokenError::Unknown))?;
        if token.role != TokenRole::Agent {
            return Err(AgentRefusal::NotAnAgentToken);
        }
        let earlier = self
            .by_token_and_key(&new.token_id, &new.key_sha256)
            .map(|(id, a)| (id.to_string(), a.clone()));
        if earlier.is_none() {
            if self.agents.contains_key(&new.agent_id) {
                return Err(AgentRefusal::DuplicateId);
            }
            if self.agents.len() >= MAX_AGENTS {
                return Err(AgentRefusal::TooMany);
            }
        }
        // The token's state (revoked, expired, host, uses) is checked here, at the
        // entry's time; a retry spends nothing.
        tokens.spend(&new.token_id, &new.host, &new.key_sha256, now_ms)?;
        if let Some((agent_id, a)) = earlier {
            if a.revoked_ms.is_some() {
                return Err(AgentRefusal::Revoked);
            }
            return Ok(AgentApplied::Enrolled {
                agent_id,
                instance: a.instance,
                again: true,
            });
        }
        let instance = unique_instance(&new.host, &self.live_instances(now_ms));
        self.agents.insert(
            new.agent_id.clone(),
            AgentRecord {
                instance: instance.clone(),
                host: new.host.clone(),
                version: None,
                enrolled_ms: now_ms,
                token_id: new.token_id,
                key_sha256: new.key_sha256,
                serials: Vec::new(),
                last_seen_ms: None,
                revoked_ms: None,
            },
        );
        Ok(AgentApplied::Enrolled {
            agent_id: new.agent_id.clone(),
            instance,
            again: false,
        })
    }

    /// Applies `AgentCert`: logs a serial issued to the agent. A revoked agent's serial
    /// is refused, so the certificate, though signed, is never admitted.
    pub fn log_cert(&mut self, agent_id: &str, issued: &IssuedSerial, now_ms: i64) -> AgentOutcome {
        if issued.not_after_ms <= issued.issued_ms {
            return Err(AgentRefusal::Invalid(
                "not-after is not after the issue time",
            ));
        }
        let a = self.agents.get_mut(agent_id).ok_or(AgentRefusal::Unknown)?;
        if a.revoked_ms.is_some() {
            return Err(AgentRefusal::Revoked);
        }
        if a.serials.iter().any(|s| s.serial == issued.serial) {
            return Ok(AgentApplied::CertLoggedAgain);
        }
        a.serials.retain(|s| s.not_after_ms > now_ms);
        a.serials.push(issued.clone());
        if a.serials.len() > MAX_SERIALS_PER_AGENT {
            let extra = a.serials.len() - MAX_SERIALS_PER_AGENT;
            a.serials.drain(..extra);
        }
        Ok(AgentApplied::CertLogged)
    }

    /// Applies `AgentRevoke`.
    pub fn revoke(&mut self, agent_id: &str, now_ms: i64) -> AgentOutcome {
        let a = self.agents.get_mut(agent_id).ok_or(AgentRefusal::Unknown)?;
        if a.revoked_ms.is_some() {
            return Ok(AgentApplied::AlreadyRevoked);
        }
        a.revoked_ms = Some(now_ms);
        Ok(AgentApplied::Revoked)
    }

    /// Applies `AgentSeen`: the agent connected and reported `version` (empty: not
    /// known yet, the one kept stays).
    pub fn seen(&mut self, agent_id: &str, version: &str, now_ms: i64) -> AgentOutcome {
        if !valid_version(version) {
            return Err(AgentRefusal::Invalid(
                "version must be at most 64 printable ASCII characters",
            ));
        }
        let a = self.agents.get_mut(agent_id).ok_or(AgentRefusal::Unknown)?;
        a.last_seen_ms = Some(a.last_seen_ms.map_or(now_ms, |t| t.max(now_ms)));
        if !version.is_empty() {
            a.version = Some(version.to_string());
        }
        Ok(AgentApplied::Seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::tokens::NewToken;

    const T0: i64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    fn token(tokens: &mut Tokens, id: u8, uses: u32, role: TokenRole) -> [u8; 8] {
        let new = NewToken {
            id: [id; 8],
            secret_hash: [0; 32],
            expires_ms: T0 + HOUR,
            uses,
            host: None,
            role,
            created_by: "admin".into(),
        };
        tokens.create(&new, T0).unwrap();
        [id; 8]
    }

    fn new_agent(id: &str, token_id: [u8; 8], host: &str, key: u8) -> NewAgent {
        NewAgent {
            agent_id: id.into(),
            token_id,
            host: host.into(),
            key_sha256: [key; 32],
        }
    }

    fn cert(serial: u8, issued_ms: i64, lifetime: i64) -> IssuedSerial {
        IssuedSerial {
            serial: [serial; 16],
            issued_ms,
            not_after_ms: issued_ms + lifetime,
        }
    }

    fn instance(out: AgentOutcome) -> String {
        match out {
            Ok(AgentApplied::Enrolled { instance, .. }) => instance,
            other => panic!("not enrolled: {other:?}"),
        }
    }

    #[test]
    fn instances_are_unique_among_live_agents_only() {
        let mut tokens = Tokens::default();
        let mut agents = Agents::default();
        let t = token(&mut tokens, 1, 10, TokenRole::Agent);
        let e = |agents: &mut Agents, tokens: &mut Tokens, id: &str, host: &str, key: u8| {
            instance(agents.enroll(tokens, &new_agent(id, t, host, key), T0))
        };
        assert_eq!(e(&mut agents, &mut tokens, "a1", "web-1", 1), "web-1");
        assert_eq!(e(&mut agents, &mut tokens, "a2", "web-1", 2), "web-1-2");
        assert_eq!(e(&mut agents, &mut tokens, "a3", "WEB-1", 3), "WEB-1-3");
        // A host literally named like a suffixed instance gets its own suffix.
        assert_eq!(e(&mut agents, &mut tokens, "a4", "web-1-2", 4), "web-1-2-2");
        // Once an agent is revoked its name is free again.
        agents.revoke("a1", T0).unwrap();
        assert_eq!(e(&mut agents, &mut tokens, "a5", "web-1", 5), "web-1");
        assert_eq!(
            unique_instance("db", &HashSet::from(["db".into(), "db-2".into()])),
            "db-3"
        );
    }

    #[test]
    fn a_retried_enrollment_finds_the_same_agent_and_spends_nothing() {
        let mut tokens = Tokens::default();
        let mut agents = Agents::default();
        let t = token(&mut tokens, 1, 1, TokenRole::Agent);
        let first = agents.enroll(&mut tokens, &new_agent("a1", t, "web-1", 9), T0);
        assert_eq!(
            first,
            Ok(AgentApplied::Enrolled {
                agent_id: "a1".into(),
                instance: "web-1".into(),
                again: false
            })
        );
        // The retry carries a new proposer-chosen id; apply answers with the first one.
        let retry = agents.enroll(&mut tokens, &new_agent("zz", t, "web-1", 9), T0 + 10);
        assert_eq!(
            retry,
            Ok(AgentApplied::Enrolled {
                agent_id: "a1".into(),
                instance: "web-1".into(),
                again: true
            })
        );
        assert_eq!(agents.len(), 1);
        assert_eq!(tokens.get(&TokenId(t)).unwrap().uses_left, 0);
        // Another key finds the single use spent.
        assert_eq!(
            agents.enroll(&mut tokens, &new_agent("a2", t, "web-2", 8), T0),
            Err(AgentRefusal::Token(TokenError::Spent))
        );
        // A revoked agent cannot come back through a retry.
        agents.revoke("a1", T0 + 20).unwrap();
        assert_eq!(
            agents.enroll(&mut tokens, &new_agent("zz", t, "web-1", 9), T0 + 30),
            Err(AgentRefusal::Revoked)
        );
    }

    #[test]
    fn enrollment_refusals_change_nothing() {
        let mut tokens = Tokens::default();
        let mut agents = Agents::default();
        let t = token(&mut tokens, 1, 2, TokenRole::Agent);
        let c = token(&mut tokens, 2, 2, TokenRole::Coordinator);
        let before = (tokens.clone(), agents.clone());
        let cases = [
            (
                new_agent("a1", c, "h", 1),
                T0,
                AgentRefusal::NotAnAgentToken,
            ),
            (
                new_agent("a1", [7; 8], "h", 1),
                T0,
                AgentRefusal::Token(TokenError::Unknown),
            ),
            (
                new_agent("a1", t, "h", 1),
                T0 + HOUR,
                AgentRefusal::Token(TokenError::Expired),
            ),
            (
                new_agent("bad id!", t, "h", 1),
                T0,
                AgentRefusal::Invalid("agent id is not a valid identity"),
            ),
            (
                new_agent("a1", t, "not a host", 1),
                T0,
                AgentRefusal::Invalid("host is not a host name"),
            ),
        ];
        for (new, at, want) in cases {
            assert_eq!(agents.enroll(&mut tokens, &new, at), Err(want));
        }
        assert_eq!((tokens.clone(), agents.clone()), before);
        tokens.revoke(&t, T0).unwrap();
        assert_eq!(
            agents.enroll(&mut tokens, &new_agent("a1", t, "h", 1), T0),
            Err(AgentRefusal::Token(TokenError::Revoked))
        );
        assert!(agents.is_empty());
    }

    #[test]
    fn serials_are_logged_bounded_and_refused_after_revocation() {
        let mut tokens = Tokens::default();
        let mut agents = Agents::default();
        let t = token(&mut tokens, 1, 1, TokenRole::Agent);
        agents
            .enroll(&mut tokens, &new_agent("a1", t, "h", 1), T0)
            .unwrap();
        let a = agents.get("a1").unwrap();
        assert_eq!(a.status(T0), AgentStatus::Active);
        assert_eq!(a.status(T0 + ENROLL_GRACE_MS), AgentStatus::Expired);
        assert_eq!(
            agents.log_cert("a1", &cert(1, T0, 72 * HOUR), T0),
            Ok(AgentApplied::CertLogged)
        );
        assert_eq!(
            agents.log_cert("a1", &cert(1, T0, 72 * HOUR), T0),
            Ok(AgentApplied::CertLoggedAgain)
        );
        for s in 2..20u8 {
            agents
                .log_cert("a1", &cert(s, T0 + i64::from(s), 72 * HOUR), T0 + 1)
                .unwrap();
        }
        let a = agents.get("a1").unwrap();
        assert_eq!(a.serials.len(), MAX_SERIALS_PER_AGENT);
        assert!(a.serial(&[19; 16]).is_some() && a.serial(&[1; 16]).is_none());
        assert_eq!(a.cert_expires_ms(), Some(T0 + 19 + 72 * HOUR));
        assert_eq!(a.status(T0 + 19 + 72 * HOUR), AgentStatus::Expired);
        assert_eq!(
            agents.log_cert("nobody", &cert(1, T0, HOUR), T0),
            Err(AgentRefusal::Unknown)
        );
        assert!(matches!(
            agents.log_cert("a1", &cert(30, T0, 0), T0),
            Err(AgentRefusal::Invalid(_))
        ));
        assert_eq!(agents.revoke("a1", T0 + 5), Ok(AgentApplied::Revoked));
        assert_eq!(
            agents.revoke("a1", T0 + 6),
            Ok(AgentApplied::AlreadyRevoked)
        );
        assert_eq!(agents.revoke("nobody", T0), Err(AgentRefusal::Unknown));
        assert_eq!(
            agents.log_cert("a1", &cert(31, T0 + 7, HOUR), T0 + 7),
            Err(AgentRefusal::Revoked)
        );
        assert_eq!(agents.get("a1").unwrap().status(T0), AgentStatus::Revoked);
    }

    #[test]
    fn seen_keeps_the_latest_time_and_a_bounded_version() {
        let mut tokens = Tokens::default();
        let mut agents = Agents::default();
        let t = token(&mut tokens, 1, 1, TokenRole::Agent);
        agents
            .enroll(&mut tokens, &new_agent("a1", t, "h", 1), T0)
            .unwrap();
        agents.seen("a1", "0.1.0", T0 + 10).unwrap();
        agents.seen("a1", "0.1.1", T0 + 5).unwrap();
        agents.seen("a1", "", T0 + 6).unwrap();
        let a = agents.get("a1").unwrap();
        assert_eq!(
            (a.last_seen_ms, a.version.as_deref()),
            (Some(T0 + 10), Some("0.1.1"))
        );
        assert!(matches!(
            agents.seen("a1", &"x".repeat(65), T0),
            Err(AgentRefusal::Invalid(_))
        ));
        assert!(matches!(
            agents.seen("a1", "bad\nversion", T0),
            Err(AgentRefusal::Invalid(_))
        ));
        assert_eq!(agents.seen("zz", "1", T0), Err(AgentRefusal::Unknown));
    }

    #[test]
    fn gone_agents_are_dropped_after_a_week() {
        let mut tokens = Tokens::default();
        let mut agents = Agents::default();
        let t = token(&mut tokens, 1, 3, TokenRole::Agent);
        agents
            .enroll(&mut tokens, &new_agent("a1", t, "h", 1), T0)
            .unwrap();
        agents.revoke("a1", T0).unwrap();
        agents
            .enroll(&mut tokens, &new_agent("a2", t, "h", 2), T0 + 1)
            .unwrap();
        assert_eq!(agents.len(), 2);
        // A week later (token long expired), the next enrollment's apply prunes a1; its
        // own refusal changes nothing else.
        let later = T0 + KEEP_GONE_MS + 1;
        assert!(
            agents
                .enroll(&mut tokens, &new_agent("a3", t, "h", 3), later)
                .is_err()
        );
        assert!(agents.get("a1").is_none());
        // a2 expired (no certificate within the grace) later, so it is still listed.
        assert_eq!(
            agents.get("a2").map(|a| a.status(later)),
            Some(AgentStatus::Expired)
        );
    }
}
