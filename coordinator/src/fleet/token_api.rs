//! The JSON shapes of the join token API (`/api/tokens`), shared by the node's handlers
//! and the `argus token` commands so the two cannot drift apart.

use super::tokens::{JoinToken, TokenRole};
use argus_common::pki::TokenId;
use serde::{Deserialize, Serialize};

/// `POST /api/tokens`. Every field is optional; unknown fields are refused by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Time to live as `90s`, `30m`, `1h`, ...; default [`DEFAULT_TTL`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Enrollments it allows; default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    /// Only this host may use it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `agent` (default) or `coordinator`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

pub const DEFAULT_TTL: &str = "1h";

/// What `POST /api/tokens` answers: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: String,
    /// `argus-join:v1:...`, for `argus-agent join`.
    pub join: String,
    pub role: String,
    pub uses: u32,
    pub expires_ms: i64,
    pub host: Option<String>,
}

/// One token in `GET /api/tokens`: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub role: String,
    /// `active`, `expired`, `spent` or `revoked`.
    pub status: String,
    pub uses: u32,
    pub uses_left: u32,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub host: Option<String>,
    pub revoked: bool,
    pub created_by: String,
}

impl TokenView {
    pub fn of(id: TokenId, t: &JoinToken, now_ms: i64) -> TokenView {
        TokenView {
            id: id.to_string(),
            role: t.role.as_str().to_string(),
            status: t.status(now_ms).as_str().to_string(),
            uses: t.uses,
            uses_left: t.uses_left,
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            host: t.host.clone(),
            revoked: t.revoked_ms.is_some(),
            created_by: t.created_by.clone(),
        }
    }
}

/// A role as the API names it.
pub fn parse_role(s: &str) -> Result<TokenRole, String> {
    TokenRole::parse(s).ok_or_else(|| format!("invalid role {s:?}: expected agent or coordinator"))
}
