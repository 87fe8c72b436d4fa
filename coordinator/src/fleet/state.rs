//! The fleet's part of the replicated state: what the state machine delegates fleet
//! entries to, and what its checkpoint carries.
//!
//! Agents, issued certificate serials and revocations join the join tokens here as the
//! enrollment items land; the checkpoint section is versioned so they can.

use super::api_tokens::{ApiTokenRefusal, ApiTokens, NewApiToken};
use super::audit::{AuditLog, AuditRecord};
use super::tokens::{NewToken, TokenApplied, TokenRefusal, Tokens};
use serde::{Deserialize, Serialize};

/// Format version of the fleet's checkpoint section. Version 1 (tokens only) is still
/// read, with an empty audit table.
const FLEET_VERSION: u8 = 2;

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
}

/// The section as version 1 wrote it.
#[derive(Deserialize)]
struct FleetStateV1 {
    tokens: Tokens,
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
}
