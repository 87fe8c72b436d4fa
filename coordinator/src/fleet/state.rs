//! The fleet's part of the replicated state: what the state machine delegates fleet
//! entries to, and what its checkpoint carries.
//!
//! Join tokens, the agent table (agents, their certificate serials, revocations) and the
//! audit log, and API tokens. The checkpoint section is versioned; the versions before
//! (1: tokens only; 2: no agents) are still read.

use super::agents::{AgentOutcome, Agents, IssuedSerial, NewAgent};
use super::api_tokens::{ApiTokenRefusal, ApiTokens, NewApiToken};
use super::audit::{AuditLog, AuditRecord};
use super::tokens::{NewToken, TokenApplied, TokenRefusal, Tokens};
use serde::{Deserialize, Serialize};

/// Format version of the fleet's checkpoint section. Version 1 (tokens only) and 2
/// (tokens, audit, API tokens) are still read, the tables they lack empty.
const FLEET_VERSION: u8 = 3;

/// What a fleet entry did, for its proposer.
pub type FleetOutcome = Result<TokenApplied, TokenRefusal>;

#[derive(Debug, thiserror::Error)]
pub enum FleetStateError {
    #[error("fleet section has version {0}, this build reads 1 to {FLEET_VERSION}")]
    Version(u8),
    #[error("fleet section does not decode: {0}")]
    Decode(String),
    #[error("fleet section does not encode: {0}")]
    Encode(String),
}

/// The replicated fleet state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    tokens: Tokens,
    /// The audit log (issue 5 item 7), its own bounded table.
    audit: AuditLog,
    /// API tokens with roles (issue 5 item 7).
    api_tokens: ApiTokens,
    /// Enrolled agents (issue 5 items 3-4).
    agents: Agents,
}

/// The section as version 1 wrote it.
#[derive(Deserialize)]
struct FleetStateV1 {
    tokens: Tokens,
}

/// The section as version 2 wrote it, before agents.
#[derive(Deserialize)]
struct FleetStateV2 {
    tokens: Tokens,
    audit: AuditLog,
    api_tokens: ApiTokens,
}

impl FleetState {
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Applies an `Audit` entry at leader time `time_ms`.
    pub fn append_audit(&mut self, records: &[AuditRecord], retention_ms: i64, time_ms: i64) {
        self.audit.apply(records, retention_ms, time_ms);
    }

    pub fn api_tokens(&self) -> &ApiTokens {
        &self.api_tokens
    }

    /// Applies `ApiTokenCreate`.
    pub fn create_api_token(
        &mut self,
        new: &NewApiToken,
        time_ms: i64,
    ) -> Result<(), ApiTokenRefusal> {
        self.api_tokens.create(new, time_ms)
    }

    /// Applies `ApiTokenRevoke`.
    pub fn revoke_api_token(&mut self, id: &[u8; 8], time_ms: i64) -> Result<(), ApiTokenRefusal> {
        self.api_tokens.revoke(id, time_ms)
    }

    pub fn agents(&self) -> &Agents {
        &self.agents
    }

    /// Applies `AgentEnroll`: spends the token and creates (or, for a retry, finds) the
    /// agent, atomically.
    pub fn enroll_agent(&mut self, new: &NewAgent, time_ms: i64) -> AgentOutcome {
        self.agents.enroll(&mut self.tokens, new, time_ms)
    }

    /// Applies `AgentCert`.
    pub fn log_agent_cert(
        &mut self,
        agent_id: &str,
        issued: &IssuedSerial,
        time_ms: i64,
    ) -> AgentOutcome {
        self.agents.log_cert(agent_id, issued, time_ms)
    }

    /// Applies `AgentRevoke`.
    pub fn revoke_agent(&mut self, agent_id: &str, time_ms: i64) -> AgentOutcome {
        self.agents.revoke(agent_id, time_ms)
    }

    /// Applies `AgentSeen`.
    pub fn agent_seen(&mut self, agent_id: &str, version: &str, time_ms: i64) -> AgentOutcome {
        self.agents.seen(agent_id, version, time_ms)
    }

    pub fn create_token(&mut self, new: &NewToken, time_ms: i64) -> FleetOutcome {
        self.tokens.create(new, time_ms)
    }

    pub fn revoke_token(&mut self, id: &[u8; 8], time_ms: i64) -> FleetOutcome {
        self.tokens.revoke(id, time_ms)
    }

    pub fn use_token(
        &mut self,
        id: &[u8; 8],
        host: &str,
        key_sha256: &[u8; 32],
        time_ms: i64,
    ) -> FleetOutcome {
        self.tokens.spend(id, host, key_sha256, time_ms)
    }

    /// The checkpoint section: a version byte, then postcard.
    pub fn encode(&self) -> Result<Vec<u8>, FleetStateError> {
        let mut out = vec![FLEET_VERSION];
        out.extend(
            postcard::to_allocvec(self).map_err(|e| FleetStateError::Encode(e.to_string()))?,
        );
        Ok(out)
    }

    /// Reads a section [`FleetState::encode`] wrote. Empty input is the empty state: a
    /// checkpoint written before the fleet existed has no section.
    pub fn decode(bytes: &[u8]) -> Result<Self, FleetStateError> {
        let Some((&version, body)) = bytes.split_first() else {
            return Ok(FleetState::default());
        };
        let decode_err = |e: postcard::Error| FleetStateError::Decode(e.to_string());
        match version {
            1 => {
                let v1: FleetStateV1 = postcard::from_bytes(body).map_err(decode_err)?;
                Ok(FleetState {
                    tokens: v1.tokens,
                    ..FleetState::default()
                })
            }
            2 => {
                let v2: FleetStateV2 = postcard::from_bytes(body).map_err(decode_err)?;
                Ok(FleetState {
                    tokens: v2.tokens,
                    audit: v2.audit,
                    api_tokens: v2.api_tokens,
                    ..FleetState::default()
                })
            }
            FLEET_VERSION => postcard::from_bytes(body).map_err(decode_err),
            other => Err(FleetStateError::Version(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::tokens::TokenRole;

    #[test]
    fn the_section_round_trips_and_refuses_what_it_cannot_read() {
        let mut f = FleetState::default();
        let new = NewToken {
            id: [1; 8],
            secret_hash: [2; 32],
            expires_ms: 2_000,
            uses: 3,
            host: Some("web-1".into()),
            role: TokenRole::Coordinator,
            created_by: "admin".into(),
        };
        f.create_token(&new, 1_000).unwrap();
        f.use_token(&[1; 8], "web-1", &[3; 32], 1_500).unwrap();
        let v1 = [vec![1], postcard::to_allocvec(&f.tokens).unwrap()].concat();
        assert_eq!(FleetState::decode(&v1).unwrap(), f, "version 1 still reads");
        f.append_audit(
            &[AuditRecord::new(
                1_600,
                "admin",
                "token.create",
                "",
                "",
                "ok",
            )],
            1_000,
            1_600,
        );
        let bytes = f.encode().unwrap();
        assert_eq!(FleetState::decode(&bytes).unwrap(), f);
        assert_eq!(FleetState::decode(&[]).unwrap(), FleetState::default());
        assert!(matches!(
            FleetState::decode(&[9, 0]),
            Err(FleetStateError::Version(9))
        ));
        assert!(matches!(
            FleetState::decode(&bytes[..bytes.len() - 3]),
            Err(FleetStateError::Decode(_))
        ));
    }

    #[test]
    fn agents_survive_the_section_and_versions_1_and_2_still_read() {
        let mut f = FleetState::default();
        let new = NewToken {
            id: [1; 8],
            secret_hash: [2; 32],
            expires_ms: 5_000,
            uses: 3,
            host: None,
            role: TokenRole::Agent,
            created_by: "admin".into(),
        };
        f.create_token(&new, 1_000).unwrap();
        let agent = NewAgent {
            agent_id: "a1".into(),
            token_id: [1; 8],
            host: "web-1".into(),
            key_sha256: [3; 32],
        };
        f.enroll_agent(&agent, 1_100).unwrap();
        let issued = IssuedSerial {
            serial: [4; 16],
            issued_ms: 1_100,
            not_after_ms: 90_000,
        };
        f.log_agent_cert("a1", &issued, 1_100).unwrap();
        f.agent_seen("a1", "0.1.0", 1_200).unwrap();
        f.revoke_agent("a1", 1_300).unwrap();
        let bytes = f.encode().unwrap();
        assert_eq!(bytes[0], FLEET_VERSION);
        let back = FleetState::decode(&bytes).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.agents().get("a1").unwrap().revoked_ms, Some(1_300));

        // A version-1 section (what the build before agents wrote: the token table
        // alone) reads as the same tokens and no agents.
        let v1 = [vec![1], postcard::to_allocvec(f.tokens()).unwrap()].concat();
        let old = FleetState::decode(&v1).unwrap();
        assert_eq!(old.tokens(), f.tokens());
        assert!(old.agents().is_empty());

        // Version 2 (tokens, audit, API tokens: the build before agents) reads with
        // every table but the agents.
        f.append_audit(
            &[AuditRecord::new(
                1_400,
                "admin",
                "agent.revoke",
                "a1",
                "",
                "ok",
            )],
            1_000_000,
            1_400,
        );
        #[derive(Serialize)]
        struct V2<'a> {
            tokens: &'a Tokens,
            audit: &'a AuditLog,
            api_tokens: &'a ApiTokens,
        }
        let v2 = [
            vec![2],
            postcard::to_allocvec(&V2 {
                tokens: &f.tokens,
                audit: &f.audit,
                api_tokens: &f.api_tokens,
            })
            .unwrap(),
        ]
        .concat();
        let old = FleetState::decode(&v2).unwrap();
        assert_eq!(old.tokens(), f.tokens());
        assert_eq!(old.audit(), f.audit());
        assert!(old.agents().is_empty());
    }
}
