//! API tokens with roles (issue 5 item 7): what `argus api-token create` mints and
//! every HTTP request but `/health`, `/ready` and `/metrics` presents.
//!
//! The table is replicated state, changed only by `ApiTokenCreate` and `ApiTokenRevoke`
//! entries and judged against the entry's leader time, so every node accepts the same
//! tokens. Only a hash of each secret is kept; the token is printed once. A token is
//! written `argus-api-<id>.<secret>`: the id finds the record without comparing every
//! stored hash, and the secret is then compared in constant time.

use argus_common::pki::{TokenId, TokenSecret};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Most API tokens the table holds (live, expired or revoked); a create beyond it is
/// refused the same way on every replica. Revoked and expired tokens are dropped
/// [`KEEP_DEAD_MS`] after they died, which makes room again.
pub const MAX_API_TOKENS: usize = 10_000;
/// How long a revoked or expired token stays listed before apply drops it.
pub const KEEP_DEAD_MS: i64 = 7 * 86_400_000;
/// Longest token name and `created_by`.
pub const MAX_NAME_LEN: usize = 128;
/// Longest time-to-live a token may have (ten years); no TTL means no expiry.
pub const MAX_TTL_MS: i64 = 10 * 365 * 86_400_000;

const PREFIX: &str = "argus-api-";
const DOMAIN: &[u8] = b"argus api token secret v1\0";

/// What a token may do. Roles nest: viewer < operator < admin; `Ingest` stands apart
/// and may only remote-write (admin may too). APPEND-ONLY: it is part of log entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ApiRole {
    /// Reads: PromQL, federation, services, host metrics, agents.
    Viewer,
    /// Also acts: acknowledge, restart, silence.
    Operator,
    /// Also manages tokens, agents, the cluster, and reads the audit log.
    Admin,
    /// Only `/api/v1/write`.
    Ingest,
}

impl ApiRole {
    pub const ALL: [ApiRole; 4] = [
        ApiRole::Viewer,
        ApiRole::Operator,
        ApiRole::Admin,
        ApiRole::Ingest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Viewer => "viewer",
            ApiRole::Operator => "operator",
            ApiRole::Admin => "admin",
            ApiRole::Ingest => "ingest",
        }
    }

    pub fn parse(s: &str) -> Option<ApiRole> {
        ApiRole::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether a principal with this role may do what `needed` guards.
    pub fn grants(self, needed: ApiRole) -> bool {
        use ApiRole::*;
        matches!(
            (self, needed),
            (Admin, _) | (Operator, Viewer | Operator) | (Viewer, Viewer) | (Ingest, Ingest)
        )
    }
}

impl fmt::Display for ApiRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hash stored in place of an API token's secret (domain-separated SHA-256: a
/// uniformly random 128-bit secret needs no slow hash).
pub fn secret_hash(secret: &TokenSecret) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(DOMAIN);
    ctx.update(&secret.0);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The written form of a token: `argus-api-<16 hex id>.<32 hex secret>`.
pub fn format_token(id: &TokenId, secret: &TokenSecret) -> String {
    format!("{PREFIX}{id}.{}", secret.expose())
}

/// Splits a presented bearer token into id and secret; `None` if it is not an API
/// token's shape (it may still be the admin token or the write token).
pub fn parse_token(presented: &str) -> Option<(TokenId, TokenSecret)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('.')?;
    Some((TokenId::parse(id).ok()?, TokenSecret::parse(secret).ok()?))
}

/// One API token as the replicated state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub secret_hash: [u8; 32],
    pub role: ApiRole,
    pub name: String,
    pub created_by: String,
    pub created_ms: i64,
    /// `None`: never expires.
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

impl ApiToken {
    /// `active`, `expired` or `revoked` at `now_ms`.
    pub fn status(&self, now_ms: i64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if self.expires_ms.is_some_and(|e| now_ms >= e) {
            "expired"
        } else {
            "active"
        }
    }

    fn died_ms(&self) -> Option<i64> {
        match (self.revoked_ms, self.expires_ms) {
            (Some(r), Some(e)) => Some(r.min(e)),
            (r, e) => r.or(e),
        }
    }
}

/// Why a token was not accepted; each is its own variant so the audit record and the
/// 401 say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiTokenError {
    #[error("unknown API token")]
    Unknown,
    #[error("wrong API token secret")]
    WrongSecret,
    #[error("API token expired")]
    Expired,
    #[error("API token revoked")]
    Revoked,
}

/// Why a create or revoke entry changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiTokenRefusal {
    #[error("an API token with this id exists")]
    DuplicateId,
    #[error("the API token table is full ({MAX_API_TOKENS})")]
    TooMany,
    #[error("no such API token")]
    Unknown,
    #[error("invalid API token: {0}")]
    Invalid(&'static str),
}

/// A create as its entry carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiToken {
    pub id: [u8; 8],
    pub secret_hash: [u8; 32],
    pub role: ApiRole,
    pub name: String,
    pub created_by: String,
    pub expires_ms: Option<i64>,
}

/// The replicated table of API tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokens {
    tokens: BTreeMap<[u8; 8], ApiToken>,
}

impl ApiTokens {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn get(&self, id: &TokenId) -> Option<&ApiToken> {
        self.tokens.get(&id.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (TokenId, &ApiToken)> {
        self.tokens.iter().map(|(id, t)| (TokenId(*id), t))
    }

    /// The token a request presents, if it is live at `now_ms`. Compares the secret's
    /// hash in constant time.
    pub fn check(
        &self,
        id: &TokenId,
        secret: &TokenSecret,
        now_ms: i64,
    ) -> Result<&ApiToken, ApiTokenError> {
        use subtle::ConstantTimeEq;
        let t = self.tokens.get(&id.0).ok_or(ApiTokenError::Unknown)?;
        if !bool::from(secret_hash(secret).ct_eq(&t.secret_hash)) {
            return Err(ApiTokenError::WrongSecret);
        }
        if t.revoked_ms.is_some() {
            return Err(ApiTokenError::Revoked);
        }
        if t.expires_ms.is_some_and(|e| now_ms >= e) {
            return Err(ApiTokenError::Expired);
        }
        Ok(t)
    }

    /// Applies an `ApiTokenCreate` at leader time `now_ms`.
    pub fn create(&mut self, new: &NewApiToken, now_ms: i64) -> Result<(), ApiTokenRefusal> {
        self.prune(now_ms);
        if new.name.len() > MAX_NAME_LEN || new.created_by.len() > MAX_NAME_LEN {
            return Err(ApiTokenRefusal::Invalid("name or creator too long"));
        }
        if new.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(ApiTokenRefusal::Invalid("expires before it is created"));
        }
        if self.tokens.contains_key(&new.id) {
            return Err(ApiTokenRefusal::DuplicateId);
        }
        if self.tokens.len() >= MAX_API_TOKENS {
            return Err(ApiTokenRefusal::TooMany);
        }
        self.tokens.insert(
            new.id,
            ApiToken {
                secret_hash: new.secret_hash,
                role: new.role,
                name: new.name.clone(),
                created_by: new.created_by.clone(),
                created_ms: now_ms,
                expires_ms: new.expires_ms,
                revoked_ms: None,
            },
        );
        Ok(())
    }

    /// Applies an `ApiTokenRevoke` at leader time `now_ms`; revoking twice keeps the
    /// first time.
    pub fn revoke(&mut self, id: &[u8; 8], now_ms: i64) -> Result<(), ApiTokenRefusal> {
        let t = self.tokens.get_mut(id).ok_or(ApiTokenRefusal::Unknown)?;
        t.revoked_ms.get_or_insert(now_ms);
        Ok(())
    }

    /// Drops tokens dead for longer than [`KEEP_DEAD_MS`].
    fn prune(&mut self, now_ms: i64) {
        self.tokens
            .retain(|_, t| t.died_ms().is_none_or(|d| now_ms - d <= KEEP_DEAD_MS));
    }
}

/// `POST /api/api-tokens` body; every field optional but `role`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    /// `viewer`, `operator`, `admin` or `ingest`.
    pub role: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Time to live (`90s`, `30m`, `720h`); absent: the token does not expire.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// The answer to a create: the only time the token itself is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedApiToken {
    pub id: String,
    pub token: String,
    pub role: String,
    pub name: String,
    pub expires_ms: Option<i64>,
}

/// A token as listings show it (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenView {
    pub id: String,
    pub role: String,
    pub name: String,
    pub created_by: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    /// `active`, `expired` or `revoked`.
    pub status: String,
}

impl ApiTokenView {
    pub fn of(id: TokenId, t: &ApiToken, now_ms: i64) -> Self {
        ApiTokenView {
            id: id.to_string(),
            role: t.role.as_str().to_string(),
            name: t.name.clone(),
            created_by: t.created_by.clone(),
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            revoked_ms: t.revoked_ms,
            status: t.status(now_ms).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn new(id: u8, role: ApiRole, expires_ms: Option<i64>) -> (NewApiToken, TokenSecret) {
        let secret = TokenSecret([id; 16]);
        (
            NewApiToken {
                id: [id; 8],
                secret_hash: secret_hash(&secret),
                role,
                name: format!("t{id}"),
                created_by: "admin".into(),
                expires_ms,
            },
            secret,
        )
    }

    #[test]
    fn roles_nest_and_ingest_stands_apart() {
        use ApiRole::*;
        let grants = |r: ApiRole| -> Vec<ApiRole> {
            ApiRole::ALL.into_iter().filter(|n| r.grants(*n)).collect()
        };
        assert_eq!(grants(Viewer), vec![Viewer]);
        assert_eq!(grants(Operator), vec![Viewer, Operator]);
        assert_eq!(grants(Admin), vec![Viewer, Operator, Admin, Ingest]);
        assert_eq!(grants(Ingest), vec![Ingest]);
        for r in ApiRole::ALL {
            assert_eq!(ApiRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(ApiRole::parse("root"), None);
    }

    #[test]
    fn tokens_are_written_and_parsed_back() {
        let (id, secret) = (TokenId([0xab; 8]), TokenSecret([7; 16]));
        let s = format_token(&id, &secret);
        assert!(s.starts_with("argus-api-abab"));
        assert_eq!(parse_token(&s), Some((id, secret)));
        for bad in [
            "",
            "argus-api-",
            "argus-api-zz.00",
            "argus-admin-00",
            &s[..s.len() - 1],
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn check_names_each_refusal_by_the_given_time() {
        let mut t = ApiTokens::default();
        let (a, sa) = new(1, ApiRole::Viewer, Some(T0 + 1_000));
        let (b, sb) = new(2, ApiRole::Admin, None);
        t.create(&a, T0).unwrap();
        t.create(&b, T0).unwrap();
        assert_eq!(
            t.check(&TokenId(a.id), &sa, T0 + 999).unwrap().role,
            ApiRole::Viewer
        );
        assert_eq!(
            t.check(&TokenId(a.id), &sa, T0 + 1_000),
            Err(ApiTokenError::Expired)
        );
        assert_eq!(
            t.check(&TokenId(a.id), &sb, T0),
            Err(ApiTokenError::WrongSecret)
        );
        assert_eq!(
            t.check(&TokenId([9; 8]), &sa, T0),
            Err(ApiTokenError::Unknown)
        );
        t.revoke(&b.id, T0 + 5).unwrap();
        t.revoke(&b.id, T0 + 6).unwrap();
        assert_eq!(t.get(&TokenId(b.id)).unwrap().revoked_ms, Some(T0 + 5));
        assert_eq!(
            t.check(&TokenId(b.id), &sb, T0 + 7),
            Err(ApiTokenError::Revoked)
        );
        assert_eq!(t.revoke(&[9; 8], T0), Err(ApiTokenRefusal::Unknown));
        assert_eq!(t.create(&a, T0 + 10), Err(ApiTokenRefusal::DuplicateId));
    }

    #[test]
    fn creates_are_validated_and_dead_tokens_make_room_later() {
        let mut t = ApiTokens::default();
        let (mut a, _) = new(1, ApiRole::Viewer, Some(T0));
        assert!(matches!(t.create(&a, T0), Err(ApiTokenRefusal::Invalid(_))));
        a.expires_ms = Some(T0 + 1);
        a.name = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(t.create(&a, T0), Err(ApiTokenRefusal::Invalid(_))));
        a.name = "ok".into();
        t.create(&a, T0).unwrap();
        let (b, _) = new(2, ApiRole::Viewer, None);
        t.create(&b, T0 + 1 + KEEP_DEAD_MS).unwrap();
        assert_eq!(t.len(), 2, "dead exactly KEEP_DEAD_MS: still listed");
        let (c, _) = new(3, ApiRole::Viewer, None);
        t.create(&c, T0 + 2 + KEEP_DEAD_MS).unwrap();
        assert!(t.get(&TokenId(a.id)).is_none());
        assert_eq!(t.len(), 2);
    }
}
