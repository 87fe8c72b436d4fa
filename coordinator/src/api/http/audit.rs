//! `GET /api/audit` (role admin): the replicated audit log, newest first.
//!
//! Filters (all optional, combined with AND): `actor`, `action` (exact, or a prefix
//! ending in `.`), `target`, `outcome`, `source`, `since` and `until` (Unix seconds or
//! RFC 3339, on the event time). `limit` (default 100, at most 1000) bounds the answer;
//! `before` (a record's `seq`) pages backwards, and the answer's `next_before` is the
//! value to pass for the next page (absent on the last). A bad parameter is a 400 naming
//! it.

use super::{AppState, read_state};
use crate::api::prom_json::{ApiError, ApiResponse};
use crate::api::query::parse_time;
use crate::fleet::audit::{AuditFilter, StoredRecord};
use crate::query::tiered::rfc3339;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

/// Records per answer when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most records one answer holds.
pub const MAX_LIMIT: usize = 1_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/audit", get(list))
}

/// One record as the API shows it.
#[derive(Debug, Serialize, PartialEq)]
pub struct AuditView {
    pub seq: u64,
    /// Event time, RFC 3339 UTC.
    pub time: String,
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: String,
    pub outcome: String,
    pub count: u32,
}

impl AuditView {
    fn of(r: &StoredRecord) -> Self {
        AuditView {
            seq: r.seq,
            time: rfc3339(r.record.time_ms),
            time_ms: r.record.time_ms,
            actor: r.record.actor.clone(),
            action: r.record.action.clone(),
            target: r.record.target.clone(),
            source: r.record.source.clone(),
            outcome: r.record.outcome.clone(),
            count: r.record.count,
        }
    }
}

/// The answer's `data`.
#[derive(Debug, Serialize, PartialEq)]
pub struct AuditPage {
    pub records: Vec<AuditView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

/// What a query asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct AuditQuery {
    pub filter: AuditFilter,
    pub before: Option<u64>,
    pub limit: usize,
}

fn bad(param: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_data(format!("invalid parameter \"{param}\": {why}"))
}

/// Parses the query string; unknown parameters are refused by name, so a misspelt
/// filter does not silently return everything.
pub fn parse_query(q: Option<&str>) -> Result<AuditQuery, ApiError> {
    let mut out = AuditQuery {
        filter: AuditFilter::default(),
        before: None,
        limit: DEFAULT_LIMIT,
    };
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "actor" => out.filter.actor = Some(v),
            "action" => out.filter.action = Some(v),
            "target" => out.filter.target = Some(v),
            "outcome" => out.filter.outcome = Some(v),
            "source" => out.filter.source = Some(v),
            "since" => out.filter.since_ms = Some(parse_time(&v).map_err(|e| bad("since", e))?),
            "until" => out.filter.until_ms = Some(parse_time(&v).map_err(|e| bad("until", e))?),
            "before" => {
                out.before = Some(
                    v.parse::<u64>()
                        .map_err(|_| bad("before", "expected a record's seq"))?,
                );
            }
            "limit" => {
                let n: usize = v
                    .parse()
                    .map_err(|_| bad("limit", "expected a whole number"))?;
                if n == 0 || n > MAX_LIMIT {
                    return Err(bad("limit", format!("must be from 1 to {MAX_LIMIT}")));
                }
                out.limit = n;
            }
            other => {
                return Err(bad(
                    other,
                    "unknown; expected actor, action, target, outcome, source, since, until, before or limit",
                ));
            }
        }
    }
    if let (Some(s), Some(u)) = (out.filter.since_ms, out.filter.until_ms)
        && s > u
    {
        return Err(bad("until", "is before since"));
    }
    Ok(out)
}

async fn list(State(app): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let query = match parse_query(q.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let page = {
        let sm = match read_state(&app) {
            Ok(sm) => sm,
            Err(e) => return e.into_response(),
        };
        // One more than asked tells whether a next page exists.
        let found = sm
            .fleet()
            .audit()
            .query(&query.filter, query.before, query.limit + 1);
        let more = found.len() > query.limit;
        let records: Vec<AuditView> = found
            .iter()
            .take(query.limit)
            .map(|r| AuditView::of(r))
            .collect();
        AuditPage {
            next_before: if more {
                records.last().map(|r| r.seq)
            } else {
                None
            },
            records,
        }
    };
    ApiResponse::success(page).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_parsed_and_bad_ones_named() {
        let q = parse_query(Some(
            "actor=admin&action=api_token.&since=1700000000&until=2023-11-15T00:00:00Z&limit=5&before=9",
        ))
        .unwrap();
        assert_eq!(q.filter.actor.as_deref(), Some("admin"));
        assert_eq!(q.filter.action.as_deref(), Some("api_token."));
        assert_eq!(q.filter.since_ms, Some(1_700_000_000_000));
        assert_eq!(q.filter.until_ms, Some(1_700_006_400_000));
        assert_eq!((q.limit, q.before), (5, Some(9)));
        assert_eq!(parse_query(None).unwrap().limit, DEFAULT_LIMIT);
        for (query, param) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("since=yesterday", "since"),
            ("before=-1", "before"),
            ("since=20&until=10", "until"),
            ("actr=admin", "actr"),
        ] {
            let e = parse_query(Some(query)).unwrap_err();
            assert!(
                e.message.contains(&format!("\"{param}\"")),
                "{query}: {}",
                e.message
            );
        }
    }
}
