//! The node's HTTP endpoints: Prometheus remote write and federation, series
//! metadata, its own metrics, liveness and readiness; join tokens in [`tokens`], agents
//! in [`agents`].

mod agents;
mod api_tokens;
mod audit;
mod guard;
mod host_metrics;
mod services;
mod tokens;
pub use guard::{Access, AuditNote, needed_role};
pub use tokens::TokenApi;

use super::exposition::{self, FederatedSample};
use super::prom_json::{ApiError, ApiResponse, MetadataData, MetadataEntry, SeriesLabels};
use super::query::{self as query_api, QueryService};
use super::remote_write::{self, DecodeLimits, WriteBatch};
use super::selector::{MatchOp as SelOp, parse_series_selector};
use crate::cluster::stats::FSYNC_BUCKETS_SECONDS;
use crate::cluster::{NodeStats, ProposeError, Proposer};
use crate::state::entry::{Entry, PushedItem, PushedKey, PushedMetadata};
use crate::state::machine::{Outcome, StateMachine};
use crate::state::replica::SharedState;
use crate::tsdb::store::Store;
use crate::tsdb::{MatchOp, Matcher, SeriesId};
use argus_common::model::{MetricType, is_stale_nan};
use argus_common::wire::RefuseReason;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Counters of the HTTP layer (what never reached the log).
#[derive(Debug, Default)]
pub struct HttpCounters {
    pub write_requests: AtomicU64,
    /// Refused before proposing, by reason (decode errors, limits, 2.0, auth).
    pub write_refused: Mutex<BTreeMap<String, u64>>,
}

impl HttpCounters {
    fn refuse(&self, reason: &str, n: u64) {
        if let Ok(mut m) = self.write_refused.lock() {
            *m.entry(reason.to_string()).or_default() += n;
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub proposer: Proposer<Outcome>,
    pub stats: Arc<NodeStats>,
    pub state: SharedState,
    pub store: Arc<Store>,
    pub counters: Arc<HttpCounters>,
    pub limits: DecodeLimits,
    pub started: Instant,
    /// PromQL query limits and the slots bounding concurrent evaluations.
    pub query: QueryService,
    /// The admin token check, CA pin and advertised addresses of `/api/tokens`.
    pub tokens: Arc<TokenApi>,
    /// The agent QUIC listener's counters, rendered on `/metrics`.
    pub ingest: Arc<crate::ingest::IngestCounters>,
    /// Who may do what ([`guard`]), and the audit log's sink and retention.
    pub access: Arc<Access>,
}

pub fn router(app: AppState, max_body: usize) -> Router {
    Router::new()
        .route("/api/v1/write", post(write))
        .route("/federate", get(federate))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route(
            "/api/v1/query",
            get(query_api::query).post(query_api::query),
        )
        .route(
            "/api/v1/query_range",
            get(query_api::query_range).post(query_api::query_range),
        )
        .route(
            "/api/v1/query_exemplars",
            get(query_api::query_exemplars).post(query_api::query_exemplars),
        )
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "OK\n" }))
        .route("/ready", get(ready))
        .merge(tokens::routes())
        .merge(agents::routes())
        .merge(api_tokens::routes())
        .merge(audit::routes())
        .merge(services::routes())
        .merge(host_metrics::routes())
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::guard,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn plain(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (status, body).into_response()
}

fn read_state(app: &AppState) -> Result<std::sync::RwLockReadGuard<'_, StateMachine>, ApiError> {
    app.state
        .read()
        .map_err(|_| ApiError::internal("state lock poisoned"))
}

/// The remote-write receiver. Answers 204 once the push is committed and applied;
/// samples already stored (a retried push) count as success, anything else refused
/// gets a 400 naming the reasons, so the sender does not retry what can never land.
async fn write(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    app.counters.write_requests.fetch_add(1, Relaxed);
    // The body limit is enforced while reading; its refusal is counted like any other.
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "body_unreadable"
            };
            app.counters.refuse(reason, 1);
            return plain(status, rejection.body_text());
        }
    };
    // The guard layer has checked the bearer token (role ingest or admin).
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let decoded = remote_write::check_content_type(
        h("content-type"),
        h("content-encoding"),
        h(remote_write::VERSION_HEADER),
    )
    .and_then(|()| remote_write::decode_body(&body, &app.limits));
    let batch: WriteBatch = match decoded {
        Ok(b) => b,
        Err(e) => {
            app.counters.refuse(e.as_str(), 1);
            return plain(e.status(), e.to_string());
        }
    };
    for r in &batch.refused {
        app.counters.refuse(r.reason.as_str(), r.samples);
    }
    let refused_at_decode = batch.refusal_summary();
    let entry = match push_entry(&app, batch) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let outcome = match propose(&app, &entry).await {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    let mut problems: Vec<String> = outcome
        .refused
        .iter()
        .filter(|(r, _)| **r != RefuseReason::Duplicate)
        .map(|(r, n)| format!("{n} samples refused: {r}"))
        .collect();
    if let Some(s) = refused_at_decode {
        problems.push(s);
    }
    if problems.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        plain(StatusCode::BAD_REQUEST, problems.join("; "))
    }
}

/// The log entry for a decoded push: series already in the applied index go by id,
/// so the entry carries each label set only the first time it is ever pushed.
fn push_entry(app: &AppState, batch: WriteBatch) -> Result<Entry, ApiError> {
    // Only the lookups hold the lock that apply needs; the encoding happens after.
    let known: Vec<Option<SeriesId>> = {
        let state = read_state(app)?;
        let index = state.index();
        batch
            .series
            .iter()
            .map(|s| index.lookup(&s.name, &s.labels))
            .collect()
    };
    let items = batch
        .series
        .into_iter()
        .zip(known)
        .flat_map(|(s, id)| {
            let key = match id {
                Some(id) => PushedKey::Known(id),
                None => PushedKey::New {
                    name: s.name,
                    labels: s.labels,
                },
            };
            PushedItem::encode(key, &s.samples)
        })
        .collect();
    let metadata = batch
        .metadata
        .into_iter()
        .map(|m| PushedMetadata {
            name: m.family,
            kind: m.kind,
            unit: m.unit,
            help: m.help,
        })
        .collect();
    Ok(Entry::Push { items, metadata })
}

/// Proposes an entry and waits until it is applied.
async fn propose(app: &AppState, entry: &Entry) -> Result<Outcome, Response> {
    let bytes = entry.encode();
    let receipt = app
        .proposer
        .propose(now_ms(), &bytes)
        .map_err(propose_error)?;
    match receipt.outcome().await {
        Ok(applied) => Ok(applied.outcome),
        Err(e) => Err(propose_error(e)),
    }
}

fn propose_error(e: ProposeError) -> Response {
    match e {
        ProposeError::TooLarge { .. } => plain(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        ProposeError::QueueFull { .. } | ProposeError::NotLeader { .. } => {
            let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        other => plain(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// Query parameters, with repeated keys (`match[]`) kept in order.
fn params(q: &Option<String>, body: &Bytes) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for src in [q.as_deref().unwrap_or("").as_bytes(), body.as_ref()] {
        out.extend(url::form_urlencoded::parse(src).into_owned());
    }
    out
}

/// Parses every `match[]` into tsdb matchers; a 400 names the bad selector.
fn selectors(params: &[(String, String)]) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let mut out = Vec::new();
    for (_, s) in params.iter().filter(|(k, _)| k == "match[]") {
        let (name, ms) = parse_series_selector(s)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"match[]\": {e}")))?;
        let mut matchers = Vec::with_capacity(ms.len() + 1);
        if let Some(n) = name {
            matchers.push(Matcher::equal("__name__", n));
        }
        for m in ms {
            let op = match m.op {
                SelOp::Eq => MatchOp::Equal,
                SelOp::Ne => MatchOp::NotEqual,
                SelOp::Re => MatchOp::RegexMatch,
                SelOp::Nre => MatchOp::RegexNoMatch,
            };
            matchers.push(
                Matcher::new(op, m.name, m.value).map_err(|e| {
                    ApiError::bad_data(format!("invalid parameter \"match[]\": {e}"))
                })?,
            );
        }
        out.push(matchers);
    }
    Ok(out)
}

/// Ids of the series any selector matches, in id order.
fn matching(sm: &StateMachine, sels: &[Vec<Matcher>]) -> Result<BTreeSet<SeriesId>, ApiError> {
    let mut ids = BTreeSet::new();
    for s in sels {
        ids.extend(
            sm.index()
                .select(s)
                .map_err(|e| ApiError::bad_data(e.to_string()))?,
        );
    }
    Ok(ids)
}

/// The newest sample of a series within the lookback, from the head, else the store.
fn latest(app: &AppState, sm: &StateMachine, id: SeriesId, now: i64) -> Option<(i64, f64)> {
    const LOOKBACK_MS: i64 = 5 * 60_000;
    let from_head = sm
        .head()
        .select(id, now - LOOKBACK_MS, now)
        .ok()
        .and_then(|it| it.last());
    from_head.or_else(|| {
        app.store
            .read_raw(id, now - LOOKBACK_MS, now)
            .ok()
            .and_then(|v| v.last().copied())
    })
}

/// `/federate`: the latest value of every matching series, with HELP and TYPE, as a
/// Prometheus federating from this node expects. Stale series are left out.
async fn federate(State(app): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let ps = params(&q, &Bytes::new());
    let sels = match selectors(&ps) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return ApiError::bad_data("at least one match[] is required").into_response(),
        Err(e) => return e.into_response(),
    };
    let now = now_ms();
    let samples = {
        let sm = match read_state(&app) {
            Ok(s) => s,
            Err(e) => return e.into_response(),
        };
        let ids = match matching(&sm, &sels) {
            Ok(ids) => ids,
            Err(e) => return e.into_response(),
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(series) = sm.index().series(id) else {
                continue;
            };
            let Some((t, v)) = latest(&app, &sm, id, now) else {
                continue;
            };
            if is_stale_nan(v) {
                continue;
            }
            let meta = sm.index().metadata(&family(&series.name));
            out.push(FederatedSample {
                name: series.name.clone(),
                labels: series.labels.clone(),
                kind: meta.map_or(MetricType::Unknown, |m| m.kind),
                help: meta.map(|m| m.help.clone()).unwrap_or_default(),
                timestamp_ms: t,
                value: v,
            });
        }
        out
    };
    (
        [(header::CONTENT_TYPE, exposition::CONTENT_TYPE)],
        exposition::render(&samples),
    )
        .into_response()
}

/// The metadata family of a series name: histogram and summary parts share their
/// base name's metadata.
fn family(name: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base.to_string();
        }
    }
    name.to_string()
}

async fn series(State(app): State<AppState>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let ps = params(&q, &body);
    let sels = match selectors(&ps) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return ApiError::bad_data("no match[] parameter provided").into_response(),
        Err(e) => return e.into_response(),
    };
    let sm = match read_state(&app) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match matching(&sm, &sels) {
        Ok(ids) => {
            let data: Vec<SeriesLabels> = ids
                .into_iter()
                .filter_map(|id| sm.index().series(id))
                .map(|s| SeriesLabels {
                    name: s.name.clone(),
                    labels: s.labels.clone(),
                })
                .collect();
            ApiResponse::success(data).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn labels(State(app): State<AppState>) -> Response {
    match read_state(&app) {
        Ok(sm) => {
            let names: Vec<String> = sm
                .index()
                .label_names()
                .into_iter()
                .map(String::from)
                .collect();
            ApiResponse::success(names).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn label_values(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    match read_state(&app) {
        Ok(sm) => {
            let values: Vec<String> = sm
                .index()
                .label_values(&name)
                .into_iter()
                .map(String::from)
                .collect();
            ApiResponse::success(values).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn metadata(State(app): State<AppState>) -> Response {
    match read_state(&app) {
        Ok(sm) => {
            let mut data = MetadataData::new();
            for (name, m) in sm.index().all_metadata() {
                data.insert(
                    name.to_string(),
                    vec![MetadataEntry::new(m.kind, m.help.clone(), m.unit.clone())],
                );
            }
            ApiResponse::success(data).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Ready once a leader is known and the state has caught up with the commit index.
async fn ready(State(app): State<AppState>) -> Response {
    let s = app.stats.snapshot();
    if s.leader_id.is_some() && s.apply_lag() == 0 {
        plain(StatusCode::OK, "ready")
    } else {
        plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: leader {:?}, apply lag {} entries",
                s.leader_id,
                s.apply_lag()
            ),
        )
    }
}

/// `{reason="…"}` label strings and values of a by-reason counter map.
fn by_reason(counts: &BTreeMap<String, u64>) -> Vec<(String, f64)> {
    counts
        .iter()
        .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n as f64))
        .collect()
}

fn as_samples(rows: &[(String, f64)]) -> Vec<(&str, f64)> {
    rows.iter().map(|(l, v)| (l.as_str(), *v)).collect()
}

/// The node's own metrics in the text format.
async fn metrics(State(app): State<AppState>) -> Response {
    let s = app.stats.snapshot();
    let mut out = String::with_capacity(4096);
    let mut m = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    m(
        "argus_raft_proposals_total",
        "counter",
        "Proposals accepted into the queue.",
        &[("", s.proposals as f64)],
    );
    m(
        "argus_raft_proposals_refused_total",
        "counter",
        "Proposals refused, by reason.",
        &[
            ("{reason=\"not_leader\"}", s.refused_not_leader as f64),
            ("{reason=\"queue_full\"}", s.refused_queue_full as f64),
            ("{reason=\"too_large\"}", s.refused_too_large as f64),
        ],
    );
    m(
        "argus_raft_entries_committed_total",
        "counter",
        "Log entries committed.",
        &[("", s.entries_committed as f64)],
    );
    m(
        "argus_raft_commit_index",
        "gauge",
        "Highest committed log index.",
        &[("", s.commit_index as f64)],
    );
    m(
        "argus_raft_applied_index",
        "gauge",
        "Highest applied log index.",
        &[("", s.applied_index as f64)],
    );
    m(
        "argus_raft_apply_lag_entries",
        "gauge",
        "Committed entries not yet applied.",
        &[("", s.apply_lag() as f64)],
    );
    m(
        "argus_raft_fsyncs_total",
        "counter",
        "fsyncs of the Raft log.",
        &[("", s.fsyncs as f64)],
    );
    m(
        "argus_raft_fsync_seconds_total",
        "counter",
        "Time spent in fsync of the Raft log.",
        &[("", s.fsync_seconds)],
    );
    m(
        "argus_raft_log_disk_bytes",
        "gauge",
        "Bytes of the Raft log on disk.",
        &[("", s.log_disk_bytes as f64)],
    );
    m(
        "argus_raft_term",
        "gauge",
        "Current Raft term.",
        &[("", s.term as f64)],
    );
    m(
        "argus_raft_is_leader",
        "gauge",
        "1 if this node leads its group.",
        &[("", f64::from(u8::from(s.is_leader)))],
    );
    if let Ok(sm) = app.state.read() {
        let c = sm.counters();
        m(
            "argus_tsdb_samples_appended_total",
            "counter",
            "Samples stored.",
            &[("", c.samples_appended as f64)],
        );
        m(
            "argus_tsdb_series",
            "gauge",
            "Series in the index.",
            &[("", sm.index().len() as f64)],
        );
        let refused = by_reason(&c.refused);
        m(
            "argus_tsdb_samples_refused_total",
            "counter",
            "Samples refused at apply, by reason.",
            &as_samples(&refused),
        );
    }
    if let Ok(bytes) = app.store.disk_bytes() {
        m(
            "argus_tsdb_disk_bytes",
            "gauge",
            "Bytes of the series store on disk.",
            &[("", bytes as f64)],
        );
    }
    m(
        "argus_http_write_requests_total",
        "counter",
        "Remote-write requests received.",
        &[("", app.counters.write_requests.load(Relaxed) as f64)],
    );
    if let Ok(r) = app.counters.write_refused.lock() {
        let refused = by_reason(&r);
        m(
            "argus_http_write_refused_total",
            "counter",
            "Remote-write requests or samples refused before reaching the log, by reason.",
            &as_samples(&refused),
        );
    }
    if let Ok(r) = app.access.denied.lock() {
        let denied = by_reason(&r);
        m(
            "argus_http_requests_denied_total",
            "counter",
            "Requests refused by authentication (401) or authorization (403), by reason.",
            &as_samples(&denied),
        );
    }
    m(
        "argus_audit_records_logged_total",
        "counter",
        "Audit records of actions this node proposed and saw applied.",
        &[("", app.access.audited.load(Relaxed) as f64)],
    );
    m(
        "argus_audit_records_deferred_total",
        "counter",
        "Audit records that could not be logged at once and were queued for the next flush.",
        &[("", app.access.audit_deferred.load(Relaxed) as f64)],
    );
    m(
        "argus_audit_sink_dropped_total",
        "counter",
        "Audited events dropped because too many distinct records were pending.",
        &[("", app.access.audit.dropped() as f64)],
    );
    if let Ok(sm) = app.state.read() {
        let audit = sm.fleet().audit();
        let d = audit.drops();
        m(
            "argus_audit_records",
            "gauge",
            "Records in the replicated audit log.",
            &[("", audit.len() as f64)],
        );
        m(
            "argus_audit_records_dropped_total",
            "counter",
            "Audit records dropped from the replicated log, by reason.",
            &[
                ("{reason=\"expired\"}", d.expired as f64),
                ("{reason=\"over_capacity\"}", d.over_capacity as f64),
                ("{reason=\"over_entry_limit\"}", d.over_entry_limit as f64),
            ],
        );
    }
    m(
        "process_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        &[("", app.started.elapsed().as_secs_f64())],
    );
    app.ingest.render(&mut out);
    // The fsyncs of argus_raft_fsyncs_total as a histogram, so a p99 can be read. The node
    // keeps non-cumulative bucket counts; the exposition format wants cumulative ones.
    let _ = writeln!(
        out,
        "# HELP argus_raft_fsync_duration_seconds Duration of fsyncs of the Raft log.\n# TYPE argus_raft_fsync_duration_seconds histogram"
    );
    let mut cumulative = 0u64;
    for (i, count) in s.fsync_buckets.iter().enumerate() {
        cumulative += count;
        let le = FSYNC_BUCKETS_SECONDS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), f64::to_string);
        let _ = writeln!(
            out,
            "argus_raft_fsync_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "argus_raft_fsync_duration_seconds_sum {}\nargus_raft_fsync_duration_seconds_count {cumulative}",
        s.fsync_seconds
    );
    ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], out).into_response()
}
