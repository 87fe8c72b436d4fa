//! Join tokens: what `argus token create` mints and enrollment consumes (issue 5 item 2).
//!
//! The table is replicated state: it changes only when a `TokenCreate`, `TokenRevoke` or
//! `TokenUse` entry is applied, and every decision about time compares against the
//! entry's leader time, never the wall clock (DESIGN §3.2). Only a hash of each secret is
//! kept: the log, checkpoints and snapshots never hold anything that enrolls an agent.
//!
//! Validation ([`Tokens::check`]) is a pure function of the table, the presented secret
//! and a time, so every refusal is tested without a socket. Each refusal is its own
//! [`TokenError`], because the audit record and the agent's message must say which it was.

use argus_common::pki::{SecretHash, TokenId, TokenSecret};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most tokens the table holds (live, spent, revoked or recently expired); a create
/// beyond it is refused, the same way on every replica.
pub const MAX_TOKENS: usize = 10_000;
/// Most uses one token may grant.
pub const MAX_USES: u32 = 10_000;
/// Longest time-to-live a token may have.
pub const MAX_TTL_MS: i64 = 365 * 86_400_000;
/// How long an expired token stays listed (so `argus token list` shows why a join
/// failed) before apply drops it.
pub const KEEP_EXPIRED_MS: i64 = 86_400_000;
/// Longest host name a token may be bound to (RFC 1035).
pub const MAX_HOST_LEN: usize = 253;
/// Longest `created_by` (the admin identity that minted the token).
pub const MAX_CREATED_BY_LEN: usize = 128;

/// What a token lets its holder become. APPEND-ONLY: it is part of log entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TokenRole {
    Agent,
    /// A coordinator joining the cluster (`cluster join`); no agent token can become one.
    Coordinator,
}

impl TokenRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Agent => "agent",
            TokenRole::Coordinator => "coordinator",
        }
    }

    pub fn parse(s: &str) -> Option<TokenRole> {
        match s {
            "agent" => Some(TokenRole::Agent),
            "coordinator" => Some(TokenRole::Coordinator),
            _ => None,
        }
    }
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One token as the replicated state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub secret_hash: [u8; 32],
    pub role: TokenRole,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// Uses granted at creation.
    pub uses: u32,
    pub uses_left: u32,
    /// When set, only this host may use the token (compared ignoring ASCII case).
    pub host: Option<String>,
    pub created_by: String,
    /// Leader time of the revocation.
    pub revoked_ms: Option<i64>,
    /// SHA-256 of each public key that spent a use: a retry with the same key (an agent
    /// whose answer was lost in a coordinator crash) does not spend another. At most
    /// `uses` entries.
    pub used_by: Vec<[u8; 32]>,
}

impl JoinToken {
    /// The token's state at `now_ms`, for listings.
    pub fn status(&self, now_ms: i64) -> TokenStatus {
        if self.revoked_ms.is_some() {
            TokenStatus::Revoked
        } else if now_ms >= self.expires_ms {
            TokenStatus::Expired
        } else if self.uses_left == 0 {
            TokenStatus::Spent
        } else {
            TokenStatus::Active
        }
    }

    fn host_matches(&self, host: &str) -> bool {
        self.host
            .as_deref()
            .is_none_or(|h| h.eq_ignore_ascii_case(host))
    }
}

/// A token's state in a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    Active,
    Expired,
    Spent,
    Revoked,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Active => "active",
            TokenStatus::Expired => "expired",
            TokenStatus::Spent => "spent",
            TokenStatus::Revoked => "revoked",
        }
    }
}

/// Why a token cannot be used. Each case is distinct: the agent's message and the audit
/// record name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown join token")]
    Unknown,
    #[error("wrong secret for this join token")]
    WrongSecret,
    #[error("join token expired")]
    Expired,
    #[error("join token has no uses left")]
    Spent,
    #[error("join token is bound to another host")]
    HostMismatch,
    #[error("join token was revoked")]
    Revoked,
}

/// Why a token entry changed nothing. Decided at apply, so the same on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("a token with this id exists already")]
    DuplicateId,
    #[error("the cluster holds {MAX_TOKENS} tokens already; revoke some or let them expire")]
    TooMany,
    #[error("invalid token entry: {0}")]
    Invalid(&'static str),
}

/// What applying a token entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenApplied {
    Created,
    Revoked,
    /// Revoked before: nothing changed.
    AlreadyRevoked,
    /// A use was spent by a new key.
    Used,
    /// The key had spent a use before: nothing spent again.
    UsedAgain,
}

/// The fields of a `TokenCreate` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub id: [u8; 8],
    pub secret_hash: [u8; 32],
    pub expires_ms: i64,
    pub uses: u32,
    pub host: Option<String>,
    pub role: TokenRole,
    pub created_by: String,
}

impl NewToken {
    /// The checks the API makes before proposing and apply makes again (an entry from
    /// an older or faulty proposer is refused, never trusted).
    pub fn validate(&self, now_ms: i64) -> Result<(), &'static str> {
        if self.uses == 0 || self.uses > MAX_USES {
            return Err("uses must be from 1 to 10000");
        }
        if self.expires_ms <= now_ms {
            return Err("expiry must be in the future");
        }
        if self.expires_ms.saturating_sub(now_ms) > MAX_TTL_MS {
            return Err("ttl must be at most 365 days");
        }
        if let Some(h) = &self.host
            && !valid_host(h)
        {
            return Err("host must be a host name: 1 to 253 letters, digits, '-', '.' or '_'");
        }
        if self.created_by.len() > MAX_CREATED_BY_LEN {
            return Err("created_by is longer than 128 bytes");
        }
        Ok(())
    }
}

/// Whether `h` can be a host name an agent reports.
pub fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= MAX_HOST_LEN
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The token table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    tokens: BTreeMap<[u8; 8], JoinToken>,
}

impl Tokens {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn get(&self, id: &TokenId) -> Option<&JoinToken> {
        self.tokens.get(&id.0)
    }

    /// Every token in id order.
    pub fn iter(&self) -> impl Iterator<Item = (TokenId, &JoinToken)> {
        self.tokens.iter().map(|(id, t)| (TokenId(*id), t))
    }

    /// Whether `secret` may enroll `host` with token `id` at `now_ms`.
    ///
    /// The secret is checked (in constant time) before anything about the token's state
    /// is revealed, so a caller without it learns only whether the id exists.
    pub fn check(
        &self,
        id: &TokenId,
        secret: &TokenSecret,
        host: &str,
        now_ms: i64,
    ) -> Result<&JoinToken, TokenError> {
        let t = self.tokens.get(&id.0).ok_or(TokenError::Unknown)?;
        if !SecretHash(t.secret_hash).matches(secret) {
            return Err(TokenError::WrongSecret);
        }
        Self::usable(t, host, now_ms)?;
        if t.uses_left == 0 {
            return Err(TokenError::Spent);
        }
        Ok(t)
    }

    /// The state checks shared by [`Tokens::check`] and apply.
    fn usable(t: &JoinToken, host: &str, now_ms: i64) -> Result<(), TokenError> {
        if t.revoked_ms.is_some() {
            return Err(TokenError::Revoked);
        }
        if now_ms >= t.expires_ms {
            return Err(TokenError::Expired);
        }
        if !t.host_matches(host) {
            return Err(TokenError::HostMismatch);
        }
        Ok(())
    }

    /// Drops tokens expired for longer than [`KEEP_EXPIRED_MS`] at `now_ms`.
    fn prune(&mut self, now_ms: i64) {
        self.tokens
            .retain(|_, t| t.expires_ms.saturating_add(KEEP_EXPIRED_MS) > now_ms);
    }

    /// Applies `TokenCreate` at leader time `now_ms`.
    pub fn create(&mut self, new: &NewToken, now_ms: i64) -> Result<TokenApplied, TokenRefusal> {
        new.validate(now_ms).map_err(TokenRefusal::Invalid)?;
        self.prune(now_ms);
        if self.tokens.contains_key(&new.id) {
            return Err(TokenRefusal::DuplicateId);
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(TokenRefusal::TooMany);
        }
        self.tokens.insert(
            new.id,
            JoinToken {
                secret_hash: new.secret_hash,
                role: new.role,
                created_ms: now_ms,
                expires_ms: new.expires_ms,
                uses: new.uses,
                uses_left: new.uses,
                host: new.host.clone(),
                created_by: new.created_by.clone(),
                revoked_ms: None,
                used_by: Vec::new(),
            },
        );
        Ok(TokenApplied::Created)
    }

    /// Applies `TokenRevoke` at leader time `now_ms`.
    pub fn revoke(&mut self, id: &[u8; 8], now_ms: i64) -> Result<TokenApplied, TokenRefusal> {
        self.prune(now_ms);
        let t = self.tokens.get_mut(id).ok_or(TokenError::Unknown)?;
        if t.revoked_ms.is_some() {
            return Ok(TokenApplied::AlreadyRevoked);
        }
        t.revoked_ms = Some(now_ms);
        Ok(TokenApplied::Revoked)
    }

    /// Applies `TokenUse` at leader time `now_ms`: the proposer checked the secret; apply
    /// checks the state again, because the token may have been revoked, spent or expired
    /// between the check and the commit.
    pub fn spend(
        &mut self,
        id: &[u8; 8],
        host: &str,
        key_sha256: &[u8; 32],
        now_ms: i64,
    ) -> Result<TokenApplied, TokenRefusal> {
        self.prune(now_ms);
        let t = self.tokens.get_mut(id).ok_or(TokenError::Unknown)?;
        Self::usable(t, host, now_ms)?;
        if t.used_by.contains(key_sha256) {
            return Ok(TokenApplied::UsedAgain);
        }
        if t.uses_left == 0 {
            return Err(TokenError::Spent.into());
        }
        t.uses_left -= 1;
        t.used_by.push(*key_sha256);
        Ok(TokenApplied::Used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    fn minted(tokens: &mut Tokens, uses: u32, host: Option<&str>) -> (TokenId, TokenSecret) {
        let id = TokenId::generate().unwrap();
        let secret = TokenSecret::generate().unwrap();
        let new = NewToken {
            id: id.0,
            secret_hash: SecretHash::of(&secret).0,
            expires_ms: T0 + HOUR,
            uses,
            host: host.map(String::from),
            role: TokenRole::Agent,
            created_by: "admin".into(),
        };
        assert_eq!(tokens.create(&new, T0), Ok(TokenApplied::Created));
        (id, secret)
    }

    #[test]
    fn each_refusal_is_its_own_error() {
        let mut t = Tokens::default();
        let (id, secret) = minted(&mut t, 1, None);
        assert!(t.check(&id, &secret, "h1", T0 + 1).is_ok());
        let other = TokenId::generate().unwrap();
        assert_eq!(
            t.check(&other, &secret, "h1", T0).unwrap_err(),
            TokenError::Unknown
        );
        let wrong = TokenSecret::generate().unwrap();
        assert_eq!(
            t.check(&id, &wrong, "h1", T0).unwrap_err(),
            TokenError::WrongSecret
        );
        assert_eq!(
            t.check(&id, &secret, "h1", T0 + HOUR).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            t.spend(&id.0, "h1", &[1; 32], T0 + 2),
            Ok(TokenApplied::Used)
        );
        assert_eq!(
            t.check(&id, &secret, "h1", T0 + 3).unwrap_err(),
            TokenError::Spent
        );
        let (bound, bsecret) = minted(&mut t, 1, Some("Web-1"));
        assert!(t.check(&bound, &bsecret, "web-1", T0).is_ok());
        assert_eq!(
            t.check(&bound, &bsecret, "web-2", T0).unwrap_err(),
            TokenError::HostMismatch
        );
        assert_eq!(t.revoke(&bound.0, T0 + 5), Ok(TokenApplied::Revoked));
        assert_eq!(t.revoke(&bound.0, T0 + 6), Ok(TokenApplied::AlreadyRevoked));
        assert_eq!(
            t.check(&bound, &bsecret, "web-1", T0 + 7).unwrap_err(),
            TokenError::Revoked
        );
        // The secret is checked before any state is revealed.
        assert_eq!(
            t.check(&bound, &wrong, "web-1", T0 + 7).unwrap_err(),
            TokenError::WrongSecret
        );
    }

    #[test]
    fn a_retry_with_the_same_key_spends_no_second_use() {
        let mut t = Tokens::default();
        let (id, _) = minted(&mut t, 2, None);
        assert_eq!(t.spend(&id.0, "a", &[1; 32], T0), Ok(TokenApplied::Used));
        assert_eq!(
            t.spend(&id.0, "a", &[1; 32], T0),
            Ok(TokenApplied::UsedAgain)
        );
        assert_eq!(t.get(&id).unwrap().uses_left, 1);
        assert_eq!(t.spend(&id.0, "b", &[2; 32], T0), Ok(TokenApplied::Used));
        assert_eq!(
            t.spend(&id.0, "c", &[3; 32], T0),
            Err(TokenRefusal::Token(TokenError::Spent))
        );
        // Even spent, the keys that used it still get their answer again.
        assert_eq!(
            t.spend(&id.0, "b", &[2; 32], T0),
            Ok(TokenApplied::UsedAgain)
        );
        // But not once it expired or was revoked: apply compares the entry's time.
        assert_eq!(
            t.spend(&id.0, "b", &[2; 32], T0 + HOUR),
            Err(TokenRefusal::Token(TokenError::Expired))
        );
    }

    #[test]
    fn apply_refuses_bad_entries_and_bounds_the_table() {
        let mut t = Tokens::default();
        let mut new = NewToken {
            id: [7; 8],
            secret_hash: [0; 32],
            expires_ms: T0 + HOUR,
            uses: 0,
            host: None,
            role: TokenRole::Agent,
            created_by: "admin".into(),
        };
        assert!(matches!(t.create(&new, T0), Err(TokenRefusal::Invalid(_))));
        new.uses = 1;
        new.host = Some("bad host!".into());
        assert!(matches!(t.create(&new, T0), Err(TokenRefusal::Invalid(_))));
        new.host = None;
        assert!(matches!(
            t.create(&new, T0 + HOUR),
            Err(TokenRefusal::Invalid(_))
        ));
        assert_eq!(t.create(&new, T0), Ok(TokenApplied::Created));
        assert_eq!(t.create(&new, T0), Err(TokenRefusal::DuplicateId));
        assert_eq!(
            t.revoke(&[9; 8], T0),
            Err(TokenRefusal::Token(TokenError::Unknown))
        );
        for i in 1..MAX_TOKENS as u64 {
            new.id = i.to_be_bytes();
            assert_eq!(t.create(&new, T0), Ok(TokenApplied::Created));
        }
        new.id = u64::MAX.to_be_bytes();
        assert_eq!(t.create(&new, T0), Err(TokenRefusal::TooMany));
        // Once they have been expired long enough, apply drops them and there is room.
        assert_eq!(
            t.create(
                &NewToken {
                    expires_ms: T0 + HOUR + KEEP_EXPIRED_MS + HOUR,
                    ..new.clone()
                },
                T0 + HOUR + KEEP_EXPIRED_MS
            ),
            Ok(TokenApplied::Created)
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn status_follows_revocation_expiry_and_uses() {
        let mut t = Tokens::default();
        let (id, _) = minted(&mut t, 1, None);
        let tok = t.get(&id).unwrap().clone();
        assert_eq!(tok.status(T0), TokenStatus::Active);
        assert_eq!(tok.status(T0 + HOUR), TokenStatus::Expired);
        t.spend(&id.0, "x", &[0; 32], T0).unwrap();
        assert_eq!(t.get(&id).unwrap().status(T0), TokenStatus::Spent);
        t.revoke(&id.0, T0).unwrap();
        assert_eq!(t.get(&id).unwrap().status(T0), TokenStatus::Revoked);
    }
}
