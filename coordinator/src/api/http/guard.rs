//! The axum layer that authorizes every request and audits operator and admin actions.
//!
//! One table ([`needed_role`]) says which role each route needs, so a route added later
//! is guarded by default (at least viewer; any write under `/api/` at least operator)
//! instead of open by default. The layer resolves the bearer token ([`crate::api::auth`]),
//! refuses with 401 or 403 in the API's JSON envelope, and otherwise hands the
//! [`Principal`] to the handler as a request extension.
//!
//! Auditing: a state-changing request (not GET or HEAD) that needs operator or admin is
//! written to the audit log once it has been answered, with the actor, the action, the
//! target, the peer address and the outcome, before the answer goes out. A handler may
//! name the action and target precisely by putting an [`AuditNote`] into its response's
//! extensions; otherwise the method and path stand for them. Refused requests on those
//! routes are audited too, through the aggregating [`AuditSink`], so that a flood of bad
//! tokens cannot flood the log. Data ingest is counted, not audited.

use super::{AppState, now_ms, propose, read_state};
use crate::api::auth::{self, AuthConfig, Denied, Principal};
use crate::fleet::api_tokens::ApiRole;
use crate::fleet::audit::{AuditRecord, AuditSink, outcome};
use crate::state::entry::Entry;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the guard needs from the node: how to recognize callers, where refusals are
/// aggregated, the audit retention, and its counters.
#[derive(Debug)]
pub struct Access {
    pub auth: AuthConfig,
    pub audit: AuditSink,
    /// Retention carried by every `Audit` entry this node proposes.
    pub audit_retention_ms: i64,
    /// Refused requests by reason (`argus_http_requests_denied_total`).
    pub denied: Mutex<BTreeMap<String, u64>>,
    /// Audit records proposed directly and applied (`argus_audit_records_logged_total`).
    pub audited: AtomicU64,
    /// Audit records that could not be proposed directly and went to the sink instead.
    pub audit_deferred: AtomicU64,
}

impl Access {
    pub fn new(auth: AuthConfig, audit: AuditSink, audit_retention_ms: i64) -> Self {
        Access {
            auth,
            audit,
            audit_retention_ms,
            denied: Mutex::new(BTreeMap::new()),
            audited: AtomicU64::new(0),
            audit_deferred: AtomicU64::new(0),
        }
    }

    fn deny(&self, reason: &str) {
        if let Ok(mut m) = self.denied.lock() {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }
}

/// Set by a handler on its response to name what the audit record says it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditNote {
    /// `noun.verb`, e.g. `api_token.create`.
    pub action: String,
    /// What it acted on, e.g. the token id.
    pub target: String,
}

impl AuditNote {
    pub fn new(action: impl Into<String>, target: impl Into<String>) -> Self {
        AuditNote {
            action: action.into(),
            target: target.into(),
        }
    }
}

/// Whether `path` is `prefix` or below it (on a `/` boundary).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The role a request needs; `None`: open to everyone (liveness, readiness, the node's
/// own metrics).
pub fn needed_role(method: &Method, path: &str) -> Option<ApiRole> {
    if matches!(path, "/health" | "/ready" | "/metrics") {
        return None;
    }
    if path == "/api/v1/write" {
        return Some(ApiRole::Ingest);
    }
    let reading = method == Method::GET || method == Method::HEAD;
    for admin in [
        "/api/tokens",
        "/api/api-tokens",
        "/api/audit",
        "/api/cluster",
    ] {
        if under(path, admin) {
            return Some(ApiRole::Admin);
        }
    }
    if under(path, "/api/agents") {
        return Some(if reading {
            ApiRole::Viewer
        } else {
            ApiRole::Admin
        });
    }
    // The Prometheus read API takes POST for long queries; it is still a read.
    let post_reads = [
        "/api/v1/query",
        "/api/v1/query_range",
        "/api/v1/query_exemplars",
        "/api/v1/series",
        "/api/v1/labels",
    ];
    if reading || post_reads.contains(&path) {
        return Some(ApiRole::Viewer);
    }
    // Anything else that changes something (acknowledge, restart, silence, incidents).
    Some(ApiRole::Operator)
}

/// The JSON refusal: 401 (with `WWW-Authenticate`) or 403, `errorType` `unauthorized`
/// or `forbidden`, and a message naming the problem.
pub fn refusal(d: &Denied) -> Response {
    let (status, kind) = if d.status() == 403 {
        (StatusCode::FORBIDDEN, "forbidden")
    } else {
        (StatusCode::UNAUTHORIZED, "unauthorized")
    };
    let body = serde_json::json!({
        "status": "error",
        "errorType": kind,
        "error": d.to_string(),
    });
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"argus\""),
        );
    }
    r
}

fn peer(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default()
}

fn audited(method: &Method, needed: ApiRole) -> bool {
    let writes = !(method == Method::GET || method == Method::HEAD);
    writes && matches!(needed, ApiRole::Operator | ApiRole::Admin)
}

/// Who the request is, or why not.
fn principal(app: &AppState, req: &Request, needed: ApiRole) -> Result<Principal, Denied> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let token = auth::bearer(header)?;
    let p = {
        let sm = read_state(app).map_err(|_| Denied::Unknown)?;
        auth::resolve(&app.access.auth, sm.fleet().api_tokens(), token, now_ms())?
    };
    auth::authorize(&p, needed)?;
    Ok(p)
}

/// The middleware: authorize, run, audit.
pub(super) async fn guard(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let Some(needed) = needed_role(&method, &path) else {
        return next.run(req).await;
    };
    let source = peer(&req);
    let p = match principal(&app, &req, needed) {
        Ok(p) => p,
        Err(d) => {
            app.access.deny(d.reason());
            if needed == ApiRole::Ingest {
                app.counters.refuse("unauthorized", 1);
            }
            if matches!(needed, ApiRole::Operator | ApiRole::Admin) {
                let actor = match &d {
                    Denied::Forbidden { actor, .. } => actor.clone(),
                    _ => "-".to_string(),
                };
                // Aggregated per actor, path, source and minute.
                app.access.audit.record(AuditRecord::new(
                    now_ms(),
                    actor,
                    format!("{method} {path}"),
                    "",
                    source_ip(&source),
                    d.reason(),
                ));
            }
            tracing::debug!(%method, %path, %source, reason = d.reason(), "request refused");
            return refusal(&d);
        }
    };
    req.extensions_mut().insert(p.clone());
    let resp = next.run(req).await;
    if audited(&method, needed) {
        let note = resp.extensions().get::<AuditNote>().cloned();
        let (action, target) = match note {
            Some(n) => (n.action, n.target),
            None => (format!("{method} {path}"), String::new()),
        };
        let status = resp.status();
        let result = if status.is_success() {
            outcome::OK.to_string()
        } else {
            format!("{}: {}", outcome::FAILED, status.as_u16())
        };
        let record = AuditRecord::new(now_ms(), p.audit_actor(), action, target, source, result);
        log_now(&app, record).await;
    }
    resp
}

/// The source of an aggregated refusal: the address without its port, so that one
/// client's many connections aggregate into one record.
fn source_ip(source: &str) -> String {
    source
        .parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| source.to_string())
}

/// Proposes one audit record and waits for it to be applied; if that fails (no
/// leader, queue full), the record goes to the sink, which the audit duty retries.
pub(super) async fn log_now(app: &AppState, record: AuditRecord) {
    let entry = Entry::Audit {
        records: vec![record.clone()],
        retention_ms: app.access.audit_retention_ms,
    };
    match propose(app, &entry).await {
        Ok(_) => {
            app.access.audited.fetch_add(1, Relaxed);
        }
        Err(resp) => {
            tracing::warn!(
                status = resp.status().as_u16(),
                action = %record.action,
                "audit record not logged now; queued for the next flush"
            );
            app.access.audit_deferred.fetch_add(1, Relaxed);
            app.access.audit.record(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_family_needs_the_documented_role() {
        use ApiRole::*;
        let cases: &[(Method, &str, Option<ApiRole>)] = &[
            (Method::GET, "/health", None),
            (Method::GET, "/ready", None),
            (Method::GET, "/metrics", None),
            (Method::POST, "/api/v1/write", Some(Ingest)),
            (Method::GET, "/api/v1/query", Some(Viewer)),
            (Method::POST, "/api/v1/query_range", Some(Viewer)),
            (Method::GET, "/federate", Some(Viewer)),
            (Method::GET, "/api/services", Some(Viewer)),
            (Method::GET, "/api/metrics", Some(Viewer)),
            (Method::GET, "/api/agents", Some(Viewer)),
            (Method::DELETE, "/api/agents/a1", Some(Admin)),
            (Method::POST, "/api/agents/a1/revoke", Some(Admin)),
            (Method::GET, "/api/tokens", Some(Admin)),
            (Method::POST, "/api/api-tokens", Some(Admin)),
            (Method::GET, "/api/audit", Some(Admin)),
            (Method::POST, "/api/services/auth/restart", Some(Operator)),
            (Method::POST, "/api/incidents", Some(Operator)),
            (Method::GET, "/api/tokensx", Some(Viewer)),
            (Method::GET, "/no/such/route", Some(Viewer)),
        ];
        for (m, p, want) in cases {
            assert_eq!(needed_role(m, p), *want, "{m} {p}");
        }
    }

    #[test]
    fn only_operator_and_admin_writes_are_audited() {
        assert!(audited(&Method::POST, ApiRole::Admin));
        assert!(audited(&Method::DELETE, ApiRole::Operator));
        assert!(!audited(&Method::GET, ApiRole::Admin));
        assert!(!audited(&Method::POST, ApiRole::Ingest));
        assert!(!audited(&Method::POST, ApiRole::Viewer));
        assert_eq!(source_ip("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(source_ip("[::1]:5000"), "::1");
        assert_eq!(source_ip(""), "");
    }
}
