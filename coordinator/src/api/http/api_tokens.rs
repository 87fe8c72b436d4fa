//! `/api/api-tokens` (role admin): API tokens with roles minted, listed and revoked.
//!
//! Creation and revocation are entries through the log; the answer comes once the entry
//! is applied. The token itself is in the create answer only: the log keeps its hash.
//! Both are audited by the guard layer, with the token id as target.

use super::{AppState, AuditNote, now_ms, propose, read_state};
use crate::api::auth::Principal;
use crate::api::prom_json::{ApiError, ApiResponse};
use crate::fleet::api_tokens::{
    ApiRole, ApiTokenView, CreateApiTokenRequest, CreatedApiToken, MAX_API_TOKENS, MAX_NAME_LEN,
    MAX_TTL_MS, NewApiToken, format_token, secret_hash,
};
use crate::state::entry::Entry;
use argus_common::config::HumanDuration;
use argus_common::pki::{TokenId, TokenSecret};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};

/// Largest create request body.
const MAX_CREATE_BODY: usize = 4096;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/api-tokens", get(list).post(create))
        .route("/api/api-tokens/{id}", delete(revoke))
}

fn bad(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_data(format!("invalid parameter \"{field}\": {why}"))
}

/// The entry of a create request; a 400 names the bad field.
pub fn new_api_token(
    req: &CreateApiTokenRequest,
    now: i64,
    created_by: &str,
) -> Result<(NewApiToken, TokenId, TokenSecret), ApiError> {
    let role = ApiRole::parse(&req.role)
        .ok_or_else(|| bad("role", "must be viewer, operator, admin or ingest"))?;
    let name = req.name.clone().unwrap_or_default();
    if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(bad(
            "name",
            format!("must be at most {MAX_NAME_LEN} bytes without control characters"),
        ));
    }
    let expires_ms = match &req.ttl {
        None => None,
        Some(t) => {
            let ttl = HumanDuration::parse(t).map_err(|e| bad("ttl", e))?;
            let ms = i64::try_from(ttl.0.as_millis()).unwrap_or(i64::MAX);
            if ms <= 0 || ms > MAX_TTL_MS {
                return Err(bad("ttl", "must be more than 0 and at most 87600h"));
            }
            Some(now.saturating_add(ms))
        }
    };
    let id = TokenId::generate().map_err(|e| ApiError::internal(e.to_string()))?;
    let secret = TokenSecret::generate().map_err(|e| ApiError::internal(e.to_string()))?;
    let new = NewApiToken {
        id: id.0,
        secret_hash: secret_hash(&secret),
        role,
        name,
        created_by: created_by.chars().take(MAX_NAME_LEN).collect(),
        expires_ms,
    };
    Ok((new, id, secret))
}

fn actor(p: &Option<Extension<Principal>>) -> String {
    p.as_ref()
        .map_or_else(|| "admin".to_string(), |Extension(p)| p.audit_actor())
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
    let req: CreateApiTokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_data(format!("invalid JSON body: {e}")).into_response(),
    };
    let (new, id, secret) = match new_api_token(&req, now_ms(), &actor(&principal)) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let entry = Entry::ApiTokenCreate {
        id: new.id,
        secret_hash: new.secret_hash,
        role: new.role,
        name: new.name.clone(),
        created_by: new.created_by.clone(),
        expires_ms: new.expires_ms,
    };
    let outcome = match propose(&app, &entry).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !outcome.applied {
        let full = read_state(&app).is_ok_and(|sm| sm.fleet().api_tokens().len() >= MAX_API_TOKENS);
        let why = if full {
            format!("the API token table is full ({MAX_API_TOKENS}); revoke unused tokens")
        } else {
            "the API token was refused (id collision or expiry before creation); try again".into()
        };
        return ApiError::execution(why).into_response();
    }
    tracing::info!(token = %id, role = %new.role, name = %new.name, "API token created");
    let data = CreatedApiToken {
        id: id.to_string(),
        token: format_token(&id, &secret),
        role: new.role.as_str().to_string(),
        name: new.name,
        expires_ms: new.expires_ms,
    };
    let mut r = (StatusCode::CREATED, ApiResponse::success(data)).into_response();
    r.extensions_mut()
        .insert(AuditNote::new("api_token.create", id.to_string()));
    r
}

async fn list(State(app): State<AppState>) -> Response {
    let now = now_ms();
    let mut views: Vec<ApiTokenView> = match read_state(&app) {
        Ok(sm) => sm
            .fleet()
            .api_tokens()
            .iter()
            .map(|(id, t)| ApiTokenView::of(id, t, now))
            .collect(),
        Err(e) => return e.into_response(),
    };
    views.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    ApiResponse::success(views).into_response()
}

async fn revoke(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = TokenId::parse(&id) else {
        return bad("id", "expected an API token id of 16 lowercase hex digits").into_response();
    };
    let known = match read_state(&app) {
        Ok(sm) => sm.fleet().api_tokens().get(&id).is_some(),
        Err(e) => return e.into_response(),
    };
    if !known {
        return ApiError::not_found(format!("no API token {id}")).into_response();
    }
    let outcome = match propose(&app, &Entry::ApiTokenRevoke { id: id.0 }).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let now = now_ms();
    let view = match read_state(&app) {
        Ok(sm) => sm
            .fleet()
            .api_tokens()
            .get(&id)
            .map(|t| ApiTokenView::of(id, t, now)),
        Err(e) => return e.into_response(),
    };
    match (outcome.applied, view) {
        (true, Some(v)) => {
            tracing::info!(token = %id, "API token revoked");
            let mut r = ApiResponse::success(v).into_response();
            r.extensions_mut()
                .insert(AuditNote::new("api_token.revoke", id.to_string()));
            r
        }
        _ => ApiError::not_found(format!("no API token {id}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn req(role: &str, name: Option<&str>, ttl: Option<&str>) -> CreateApiTokenRequest {
        CreateApiTokenRequest {
            role: role.into(),
            name: name.map(String::from),
            ttl: ttl.map(String::from),
        }
    }

    #[test]
    fn creates_are_validated_field_by_field() {
        let (new, _, secret) =
            new_api_token(&req("viewer", Some("grafana"), Some("30m")), T0, "admin").unwrap();
        assert_eq!(
            (new.role, new.name.as_str(), new.expires_ms),
            (ApiRole::Viewer, "grafana", Some(T0 + 1_800_000))
        );
        assert_eq!(new.secret_hash, secret_hash(&secret));
        let (new, _, _) = new_api_token(&req("ingest", None, None), T0, "admin").unwrap();
        assert_eq!((new.role, new.expires_ms), (ApiRole::Ingest, None));
        for (r, field) in [
            (req("root", None, None), "role"),
            (req("viewer", Some("a\nb"), None), "name"),
            (req("viewer", Some(&"x".repeat(200)), None), "name"),
            (req("viewer", None, Some("0s")), "ttl"),
            (req("viewer", None, Some("soon")), "ttl"),
        ] {
            let e = new_api_token(&r, T0, "admin").unwrap_err();
            assert!(
                e.message.contains(&format!("\"{field}\"")),
                "{field}: {}",
                e.message
            );
        }
    }
}
