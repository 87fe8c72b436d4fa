//! `/api/agents`: enrolled agents listed and revoked by an admin (issue 5 items 4, 6).
//!
//! `GET /api/agents` lists every agent the applied state holds; `DELETE /api/agents/{id}`
//! (or `POST /api/agents/{id}/revoke`) revokes the agent itself through the log, so
//! that its connections close, its renewals are refused and no certificate it holds is
//! admitted again. The answer comes once the entry is applied on this node.
//!
//! Who may call them is the guard layer's decision ([`super::guard`]: reading needs
//! viewer, revoking admin); it also audits the revocation, named by the [`AuditNote`]
//! the handler puts on its answer.

use super::{AppState, AuditNote, now_ms, propose, read_state};
use crate::api::prom_json::{ApiError, ApiResponse};
use crate::fleet::agent_api::AgentView;
use crate::fleet::agents::{AgentApplied, AgentRefusal, valid_agent_id};
use crate::state::entry::Entry;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/agents", get(list))
        .route("/api/agents/{id}", delete(revoke))
        .route("/api/agents/{id}/revoke", post(revoke))
}

/// Every agent, ordered by instance name (then id), as `argus agents list` shows them.
fn views(app: &AppState, now: i64) -> Result<Vec<AgentView>, ApiError> {
    let sm = read_state(app)?;
    let mut views: Vec<AgentView> = sm
        .fleet()
        .agents()
        .iter()
        .map(|(id, a)| AgentView::of(id, a, now))
        .collect();
    views.sort_by(|a, b| (&a.instance, &a.id).cmp(&(&b.instance, &b.id)));
    Ok(views)
}

async fn list(State(app): State<AppState>) -> Response {
    match views(&app, now_ms()) {
        Ok(v) => ApiResponse::success(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn view_of(app: &AppState, id: &str) -> Result<Option<AgentView>, ApiError> {
    let sm = read_state(app)?;
    Ok(sm
        .fleet()
        .agents()
        .get(id)
        .map(|a| AgentView::of(id, a, now_ms())))
}

async fn revoke(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    if !valid_agent_id(&id) {
        return ApiError::bad_data(
            "invalid parameter \"id\": expected an agent id (letters, digits, '-', '_', '.')",
        )
        .into_response();
    }
    match view_of(&app, &id) {
        Ok(Some(_)) => {}
        Ok(None) => return ApiError::not_found(format!("no agent {id}")).into_response(),
        Err(e) => return e.into_response(),
    }
    let outcome = match propose(
        &app,
        &Entry::AgentRevoke {
            agent_id: id.clone(),
        },
    )
    .await
    {
        Ok(o) => o,
        Err(r) => return r,
    };
    match outcome.agent {
        Some(Ok(applied)) => {
            if applied == AgentApplied::Revoked {
                tracing::info!(agent = %id, "agent revoked");
            }
            match view_of(&app, &id) {
                Ok(Some(v)) => {
                    let mut r = ApiResponse::success(v).into_response();
                    r.extensions_mut()
                        .insert(AuditNote::new("agent.revoke", id.clone()));
                    r
                }
                Ok(None) => ApiError::not_found(format!("no agent {id}")).into_response(),
                Err(e) => e.into_response(),
            }
        }
        Some(Err(AgentRefusal::Unknown)) => {
            ApiError::not_found(format!("no agent {id}")).into_response()
        }
        Some(Err(r)) => ApiError::internal(r.to_string()).into_response(),
        None => ApiError::internal("the revoke entry had no agent outcome").into_response(),
    }
}
