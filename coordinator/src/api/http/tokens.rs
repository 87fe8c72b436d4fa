//! `/api/tokens`: join tokens minted, listed and revoked by an admin (issue 5 item 2).
//!
//! Every request needs role admin (the token `cluster init` printed, or an admin API
//! token), checked by the guard layer ([`super::guard`]): a missing or wrong token gets
//! 401 in the API's JSON envelope with `errorType` `unauthorized`, a lesser role 403. Creation and
//! revocation are entries through the log: the answer comes once the entry is applied,
//! so a listing on any node that applied it shows the change.

use super::{AppState, AuditNote, now_ms, propose, read_state};
use crate::api::auth::Principal;
use crate::api::prom_json::{ApiError, ApiResponse, ErrorType};
use crate::fleet::admin_token::AdminTokenHash;
use crate::fleet::token_api::{
    CreateTokenRequest, CreatedToken, DEFAULT_TTL, TokenView, parse_role,
};
use crate::fleet::tokens::{
    MAX_CREATED_BY_LEN, MAX_TTL_MS, MAX_USES, NewToken, TokenApplied, TokenError, TokenRefusal,
    TokenRole, valid_host,
};
use crate::state::entry::Entry;
use argus_common::config::HumanDuration;
use argus_common::pki::{CaPin, JoinAddr, JoinString, SecretHash, TokenId, TokenSecret};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};

/// Largest create request body; ours are under 100 bytes.
const MAX_CREATE_BODY: usize = 4096;

/// What the token endpoints need from the node's cluster files and config.
#[derive(Debug, Clone)]
pub struct TokenApi {
    /// `None`: the node has no admin token, and every request is refused.
    pub admin_token_hash: Option<AdminTokenHash>,
    pub ca_pin: CaPin,
    /// Coordinator addresses written into join strings.
    pub advertise: Vec<JoinAddr>,
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/tokens", get(list).post(create))
        .route("/api/tokens/{id}", delete(revoke))
}

/// The audit actor of a request (`admin`, `api-token:<id> (<name>)`).
fn actor(p: &Option<Extension<Principal>>) -> String {
    p.as_ref()
        .map_or_else(|| "admin".to_string(), |Extension(p)| p.audit_actor())
}

/// The new token's entry from a request; a 400 names the bad field.
fn new_token(
    req: &CreateTokenRequest,
    now: i64,
    created_by: &str,
) -> Result<(NewToken, TokenId, TokenSecret), ApiError> {
    let bad = |field: &str, why: String| {
        ApiError::bad_data(format!("invalid parameter \"{field}\": {why}"))
    };
    let ttl = HumanDuration::parse(req.ttl.as_deref().unwrap_or(DEFAULT_TTL))
        .map_err(|e| bad("ttl", e))?;
    let ttl_ms = i64::try_from(ttl.0.as_millis()).unwrap_or(i64::MAX);
    if ttl_ms <= 0 || ttl_ms > MAX_TTL_MS {
        return Err(bad("ttl", "must be more than 0 and at most 8760h".into()));
    }
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > MAX_USES {
        return Err(bad("uses", format!("must be from 1 to {MAX_USES}")));
    }
    if let Some(h) = &req.host
        && !valid_host(h)
    {
        return Err(bad(
            "host",
            "must be a host name: 1 to 253 letters, digits, '-', '.' or '_'".into(),
        ));
    }
    let role = match &req.role {
        Some(r) => parse_role(r).map_err(|e| bad("role", e))?,
        None => TokenRole::Agent,
    };
    let id = TokenId::generate().map_err(|e| ApiError::internal(e.to_string()))?;
    let secret = TokenSecret::generate().map_err(|e| ApiError::internal(e.to_string()))?;
    let new = NewToken {
        id: id.0,
        secret_hash: SecretHash::of(&secret).0,
        expires_ms: now.saturating_add(ttl_ms),
        uses,
        host: req.host.clone(),
        role,
        created_by: created_by.chars().take(MAX_CREATED_BY_LEN).collect(),
    };
    Ok((new, id, secret))
}

fn refusal(r: TokenRefusal) -> Response {
    match r {
        TokenRefusal::Token(TokenError::Unknown) => {
            ApiError::not_found("no such join token").into_response()
        }
        TokenRefusal::TooMany => ApiError::new(ErrorType::Execution, r.to_string()).into_response(),
        TokenRefusal::Invalid(_) => ApiError::bad_data(r.to_string()).into_response(),
        other => ApiError::internal(other.to_string()).into_response(),
    }
}

async fn create(
    State(app): State<AppState>,
    principal: Option<Extension<Principal>>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_CREATE_BODY {
        return ApiError::bad_data(format!("request body over {MAX_CREATE_BODY} bytes"))
            .into_response();
    }
    let req: CreateTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CreateTokenRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return ApiError::bad_data(format!("invalid JSON body: {e}")).into_response();
            }
        }
    };
    let (new, id, secret) = match new_token(&req, now_ms(), &actor(&principal)) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let join = match JoinString::new(id, secret, app.tokens.ca_pin, app.tokens.advertise.clone()) {
        Ok(j) => j.encode(),
        Err(e) => return ApiError::internal(format!("join string: {e}")).into_response(),
    };
    let entry = Entry::TokenCreate {
        id: new.id,
        secret_hash: new.secret_hash,
        expires_ms: new.expires_ms,
        uses: new.uses,
        host: new.host.clone(),
        role: new.role,
        created_by: new.created_by.clone(),
    };
    let outcome = match propose(&app, &entry).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    match outcome.fleet {
        Some(Ok(_)) => {
            tracing::info!(token = %id, role = %new.role, uses = new.uses, host = ?new.host, "join token created");
            let data = CreatedToken {
                id: id.to_string(),
                join,
                role: new.role.as_str().to_string(),
                uses: new.uses,
                expires_ms: new.expires_ms,
                host: new.host,
            };
            let mut r = (StatusCode::CREATED, ApiResponse::success(data)).into_response();
            r.extensions_mut()
                .insert(AuditNote::new("token.create", id.to_string()));
            r
        }
        Some(Err(r)) => refusal(r),
        None => ApiError::internal("the token entry had no fleet outcome").into_response(),
    }
}

async fn list(State(app): State<AppState>) -> Response {
    let now = now_ms();
    let mut views: Vec<TokenView> = match read_state(&app) {
        Ok(sm) => sm
            .fleet()
            .tokens()
            .iter()
            .map(|(id, t)| TokenView::of(id, t, now))
            .collect(),
        Err(e) => return e.into_response(),
    };
    views.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    ApiResponse::success(views).into_response()
}

async fn revoke(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match TokenId::parse(&id) {
        Ok(id) => id,
        Err(_) => {
            return ApiError::bad_data(
                "invalid parameter \"id\": expected a token id of 16 lowercase hex digits",
            )
            .into_response();
        }
    };
    let known = match read_state(&app) {
        Ok(sm) => sm.fleet().tokens().get(&id).is_some(),
        Err(e) => return e.into_response(),
    };
    if !known {
        return ApiError::not_found(format!("no join token {id}")).into_response();
    }
    let outcome = match propose(&app, &Entry::TokenRevoke { id: id.0 }).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    match outcome.fleet {
        Some(Ok(applied)) => {
            if applied == TokenApplied::Revoked {
                tracing::info!(token = %id, "join token revoked");
            }
            let now = now_ms();
            match read_state(&app) {
                Ok(sm) => match sm.fleet().tokens().get(&id) {
                    Some(t) => {
                        let mut r = ApiResponse::success(TokenView::of(id, t, now)).into_response();
                        r.extensions_mut()
                            .insert(AuditNote::new("token.revoke", id.to_string()));
                        r
                    }
                    None => ApiError::not_found(format!("no join token {id}")).into_response(),
                },
                Err(e) => e.into_response(),
            }
        }
        Some(Err(r)) => refusal(r),
        None => ApiError::internal("the token entry had no fleet outcome").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn requests_are_validated_field_by_field() {
        let (new, _, secret) = new_token(&CreateTokenRequest::default(), T0, "admin").unwrap();
        assert_eq!(new.expires_ms, T0 + 3_600_000);
        assert_eq!(
            (new.uses, new.role, new.host.as_deref()),
            (1, TokenRole::Agent, None)
        );
        assert!(SecretHash(new.secret_hash).matches(&secret));
        assert_eq!(new.validate(T0), Ok(()));
        let cases = [
            (
                CreateTokenRequest {
                    ttl: Some("0s".into()),
                    ..Default::default()
                },
                "ttl",
            ),
            (
                CreateTokenRequest {
                    ttl: Some("1d".into()),
                    ..Default::default()
                },
                "ttl",
            ),
            (
                CreateTokenRequest {
                    ttl: Some("9000h".into()),
                    ..Default::default()
                },
                "ttl",
            ),
            (
                CreateTokenRequest {
                    uses: Some(0),
                    ..Default::default()
                },
                "uses",
            ),
            (
                CreateTokenRequest {
                    host: Some("a b".into()),
                    ..Default::default()
                },
                "host",
            ),
            (
                CreateTokenRequest {
                    role: Some("admin".into()),
                    ..Default::default()
                },
                "role",
            ),
        ];
        for (req, field) in cases {
            let err = new_token(&req, T0, "admin").unwrap_err();
            assert!(
                err.message.contains(&format!("\"{field}\"")),
                "{field}: {}",
                err.message
            );
        }
        let (new, _, _) = new_token(
            &CreateTokenRequest {
                ttl: Some("30m".into()),
                uses: Some(5),
                host: Some("web-1".into()),
                role: Some("coordinator".into()),
            },
            T0,
            "admin",
        )
        .unwrap();
        assert_eq!(new.expires_ms, T0 + 1_800_000);
        assert_eq!(new.role, TokenRole::Coordinator);
    }
}
