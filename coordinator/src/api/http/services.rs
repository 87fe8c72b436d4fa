//! `GET /api/services` (role viewer): every probed service, per agent and rolled up, in
//! the product documents' shape (`{"<service>": {"status", "uptime", "metrics", …}}`).
//!
//! Built from the probe series the agents send (blackbox_exporter's names):
//! `probe_success`, `probe_duration_seconds` and `probe_http_status_code`, labelled
//! `service` and `instance`. A `critical="true"` label marks a critical service.
//!
//! Per agent (instance): `status` is `healthy` (last check succeeded), `unhealthy` (it
//! failed) or `unknown` (no check within the lookback); `uptime` is the seconds the
//! current run of successful checks has lasted within the window (0 when down);
//! `lastCheck` is the last check's time, `responseTime` its duration in milliseconds.
//! Rolled up: `healthy` when every agent with a known status is, `unhealthy` when none
//! is, `degraded` in between; `critical` when any agent's probe says so; the shortest
//! uptime of the healthy agents, the latest check and the mean response time of the
//! agents with a known status.
//!
//! Query parameters: `service` and `instance` (exact filters) and `window` (how far
//! back uptime and availability look; default 24h, at most 7 days). A bad one is a 400
//! naming it.

use super::{AppState, now_ms, read_state};
use crate::api::prom_json::ApiError;
use crate::query::tiered::rfc3339;
use crate::state::machine::StateMachine;
use crate::tsdb::{Matcher, SeriesId};
use argus_common::config::HumanDuration;
use argus_common::model::{Labels, is_stale_nan};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::collections::BTreeMap;

/// How old a last sample may be and still count as current.
pub const LOOKBACK_MS: i64 = 5 * 60_000;
/// Default and largest `window`.
pub const DEFAULT_WINDOW_MS: i64 = 24 * 3_600_000;
pub const MAX_WINDOW_MS: i64 = 7 * 24 * 3_600_000;
/// Most probe series one answer reads; beyond it, the answer says it was cut.
pub const MAX_PROBE_SERIES: usize = 10_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/services", get(services))
}

/// One agent's view of one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentService {
    pub instance: String,
    pub status: &'static str,
    pub critical: bool,
    /// Seconds.
    pub uptime: i64,
    pub last_check: Option<String>,
    /// Milliseconds.
    pub response_time: Option<f64>,
    pub http_status: Option<u16>,
    /// Successful checks over checks in the window, 0 to 1.
    pub availability: Option<f64>,
    pub checks: u64,
    #[serde(skip)]
    last_check_ms: Option<i64>,
}

/// The `metrics` of a rolled-up service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMetrics {
    pub availability: Option<f64>,
    pub checks: u64,
    pub agents: usize,
    pub healthy_agents: usize,
}

/// A service rolled up over its agents.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub status: &'static str,
    pub critical: bool,
    pub uptime: i64,
    pub last_check: Option<String>,
    pub response_time: Option<f64>,
    pub metrics: ServiceMetrics,
    pub agents: Vec<AgentService>,
}

/// What the store holds for one (service, instance) probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeSamples {
    pub critical: bool,
    /// `probe_success` in the window, in time order, stale markers removed.
    pub success: Vec<(i64, f64)>,
    pub duration_s: Option<(i64, f64)>,
    pub http_status: Option<(i64, f64)>,
}

/// One agent's view of a service at `now_ms`.
pub fn agent_service(instance: &str, p: &ProbeSamples, now_ms: i64) -> AgentService {
    let last = p.success.last().copied();
    let current = last.filter(|(t, _)| now_ms - t <= LOOKBACK_MS);
    let status = match current {
        None => "unknown",
        Some((_, v)) if v >= 1.0 => "healthy",
        Some(_) => "unhealthy",
    };
    // The current run of successes: from the first success after the last failure.
    let uptime = match current {
        Some((t_last, v)) if v >= 1.0 => {
            let start = p
                .success
                .iter()
                .rev()
                .take_while(|(_, v)| *v >= 1.0)
                .last()
                .map_or(t_last, |(t, _)| *t);
            (t_last - start) / 1000
        }
        _ => 0,
    };
    let checks = p.success.len() as u64;
    let ok = p.success.iter().filter(|(_, v)| *v >= 1.0).count() as f64;
    let fresh = |s: Option<(i64, f64)>| s.filter(|(t, _)| now_ms - t <= LOOKBACK_MS);
    AgentService {
        instance: instance.to_string(),
        status,
        critical: p.critical,
        uptime,
        last_check: last.map(|(t, _)| rfc3339(t)),
        last_check_ms: last.map(|(t, _)| t),
        response_time: fresh(p.duration_s).map(|(_, s)| (s * 1e6).round() / 1e3),
        http_status: fresh(p.http_status)
            .and_then(|(_, c)| u16::try_from(c as i64).ok())
            .filter(|c| *c > 0),
        availability: (checks > 0).then(|| ok / checks as f64),
        checks,
    }
}

/// A service rolled up over its agents' views.
pub fn roll_up(agents: Vec<AgentService>) -> ServiceView {
    let known: Vec<&AgentService> = agents.iter().filter(|a| a.status != "unknown").collect();
    let healthy: Vec<&AgentService> = known
        .iter()
        .copied()
        .filter(|a| a.status == "healthy")
        .collect();
    let status = if known.is_empty() {
        "unknown"
    } else if healthy.len() == known.len() {
        "healthy"
    } else if healthy.is_empty() {
        "unhealthy"
    } else {
        "degraded"
    };
    let times: Vec<f64> = known.iter().filter_map(|a| a.response_time).collect();
    let checks: u64 = agents.iter().map(|a| a.checks).sum();
    let ok: f64 = agents
        .iter()
        .map(|a| a.availability.unwrap_or(0.0) * a.checks as f64)
        .sum();
    let last = agents.iter().filter_map(|a| a.last_check_ms).max();
    ServiceView {
        status,
        critical: agents.iter().any(|a| a.critical),
        uptime: healthy.iter().map(|a| a.uptime).min().unwrap_or(0),
        last_check: last.map(rfc3339),
        response_time: (!times.is_empty())
            .then(|| (times.iter().sum::<f64>() / times.len() as f64 * 1e3).round() / 1e3),
        metrics: ServiceMetrics {
            availability: (checks > 0).then(|| ok / checks as f64),
            checks,
            agents: agents.len(),
            healthy_agents: healthy.len(),
        },
        agents,
    }
}

/// Samples of a series in `[from, to]` from the store and the head, in time order, one
/// per timestamp, stale markers removed.
pub(super) fn samples(
    app: &AppState,
    sm: &StateMachine,
    id: SeriesId,
    from: i64,
    to: i64,
) -> Vec<(i64, f64)> {
    let mut out: BTreeMap<i64, f64> = BTreeMap::new();
    if let Ok(stored) = app.store.read_raw(id, from, to) {
        out.extend(stored);
    }
    if let Ok(head) = sm.head().select(id, from, to) {
        out.extend(head);
    }
    out.into_iter().filter(|(_, v)| !is_stale_nan(*v)).collect()
}

/// Series of metric `name` whose labels pass `keep`, at most `max`, and whether more
/// were left out.
pub(super) fn series_named(
    sm: &StateMachine,
    name: &str,
    max: usize,
) -> (Vec<(SeriesId, Labels)>, bool) {
    let ids = sm
        .index()
        .select(&[Matcher::equal("__name__", name)])
        .unwrap_or_default();
    let cut = ids.len() > max;
    let out = ids
        .into_iter()
        .take(max)
        .filter_map(|id| sm.index().series(id).map(|s| (id, s.labels.clone())))
        .collect();
    (out, cut)
}

/// What a services query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesQuery {
    pub service: Option<String>,
    pub instance: Option<String>,
    pub window_ms: i64,
}

pub(super) fn bad(param: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_data(format!("invalid parameter \"{param}\": {why}"))
}

/// Parses `window` (a duration, from 1s to 7 days); shared with `/api/metrics`.
pub(super) fn parse_window(v: &str, max_ms: i64) -> Result<i64, ApiError> {
    let d = HumanDuration::parse(v).map_err(|e| bad("window", e))?;
    let ms = i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX);
    if ms < 1_000 || ms > max_ms {
        return Err(bad(
            "window",
            format!("must be from 1s to {}h", max_ms / 3_600_000),
        ));
    }
    Ok(ms)
}

pub fn parse_services_query(q: Option<&str>) -> Result<ServicesQuery, ApiError> {
    let mut out = ServicesQuery {
        service: None,
        instance: None,
        window_ms: DEFAULT_WINDOW_MS,
    };
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "service" => out.service = Some(v.into_owned()),
            "instance" => out.instance = Some(v.into_owned()),
            "window" => out.window_ms = parse_window(&v, MAX_WINDOW_MS)?,
            other => return Err(bad(other, "unknown; expected service, instance or window")),
        }
    }
    Ok(out)
}

/// Every (service, instance) probe in the store, filtered, as of `now`.
pub(super) fn collect_services(
    app: &AppState,
    sm: &StateMachine,
    q: &ServicesQuery,
    now: i64,
) -> (BTreeMap<String, ServiceView>, bool) {
    let key = |l: &Labels| -> Option<(String, String)> {
        let service = l.get("service").or_else(|| l.get("job"))?.to_string();
        let instance = l.get("instance").unwrap_or("").to_string();
        let wanted = q.service.as_ref().is_none_or(|s| *s == service)
            && q.instance.as_ref().is_none_or(|i| *i == instance);
        wanted.then_some((service, instance))
    };
    let from = now - q.window_ms;
    let mut probes: BTreeMap<(String, String), ProbeSamples> = BTreeMap::new();
    let (success, cut) = series_named(sm, "probe_success", MAX_PROBE_SERIES);
    for (id, labels) in &success {
        let Some(k) = key(labels) else { continue };
        let p = probes.entry(k).or_default();
        p.critical |= labels.get("critical") == Some("true");
        let mut s = samples(app, sm, *id, from, now);
        p.success.append(&mut s);
        p.success.sort_by_key(|(t, _)| *t);
    }
    for (name, duration) in [
        ("probe_duration_seconds", true),
        ("probe_http_status_code", false),
    ] {
        let (series, _) = series_named(sm, name, MAX_PROBE_SERIES);
        for (id, labels) in &series {
            let Some(k) = key(labels) else { continue };
            let Some(p) = probes.get_mut(&k) else {
                continue;
            };
            let last = samples(app, sm, *id, now - LOOKBACK_MS, now)
                .last()
                .copied();
            let slot = if duration {
                &mut p.duration_s
            } else {
                &mut p.http_status
            };
            if last.is_some_and(|(t, _)| slot.is_none_or(|(s, _)| t > s)) {
                *slot = last;
            }
        }
    }
    let mut by_service: BTreeMap<String, Vec<AgentService>> = BTreeMap::new();
    for ((service, instance), p) in &probes {
        by_service
            .entry(service.clone())
            .or_default()
            .push(agent_service(instance, p, now));
    }
    let views = by_service
        .into_iter()
        .map(|(s, agents)| (s, roll_up(agents)))
        .collect();
    (views, cut)
}

/// A JSON answer without the Prometheus envelope: the product documents' shape.
pub(super) fn plain_json<T: Serialize>(value: &T, cut: bool) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => {
            let mut r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            if cut {
                r.headers_mut().insert(
                    "X-Argus-Truncated",
                    header::HeaderValue::from_static("true"),
                );
            }
            r
        }
        Err(e) => ApiError::internal(format!("serialising the answer: {e}")).into_response(),
    }
}

async fn services(State(app): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let query = match parse_services_query(q.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let now = now_ms();
    let (views, cut) = {
        let sm = match read_state(&app) {
            Ok(sm) => sm,
            Err(e) => return e.into_response(),
        };
        collect_services(&app, &sm, &query, now)
    };
    plain_json(&views, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn probe(success: &[(i64, f64)], duration: f64) -> ProbeSamples {
        ProbeSamples {
            critical: false,
            success: success.iter().map(|(t, v)| (NOW + t, *v)).collect(),
            duration_s: Some((NOW, duration)),
            http_status: Some((NOW, 200.0)),
        }
    }

    #[test]
    fn an_agent_reports_status_uptime_and_response_time() {
        let up = probe(
            &[(-90_000, 1.0), (-60_000, 0.0), (-30_000, 1.0), (0, 1.0)],
            0.045,
        );
        let a = agent_service("web-1", &up, NOW);
        assert_eq!(a.status, "healthy");
        assert_eq!(
            a.uptime, 30,
            "since the first success after the last failure"
        );
        assert_eq!(a.response_time, Some(45.0));
        assert_eq!(a.http_status, Some(200));
        assert_eq!((a.checks, a.availability), (4, Some(0.75)));
        assert_eq!(a.last_check.as_deref(), Some("2023-11-14T22:13:20.000Z"));
        let down = agent_service("web-2", &probe(&[(-30_000, 1.0), (0, 0.0)], 2.0), NOW);
        assert_eq!((down.status, down.uptime), ("unhealthy", 0));
        let old = agent_service("web-3", &probe(&[(-LOOKBACK_MS - 1, 1.0)], 0.1), NOW);
        assert_eq!((old.status, old.uptime), ("unknown", 0));
        let none = agent_service("web-4", &ProbeSamples::default(), NOW);
        assert_eq!(
            (none.status, none.availability, none.last_check),
            ("unknown", None, None)
        );
    }

    #[test]
    fn services_roll_up_over_their_agents() {
        let healthy = agent_service("a", &probe(&[(-60_000, 1.0), (0, 1.0)], 0.010), NOW);
        let unhealthy = agent_service("b", &probe(&[(0, 0.0)], 0.030), NOW);
        let mut critical = probe(&[(-LOOKBACK_MS * 2, 1.0)], 0.0);
        critical.critical = true;
        let unknown = agent_service("c", &critical, NOW);
        let s = roll_up(vec![healthy.clone(), unhealthy.clone(), unknown.clone()]);
        assert_eq!(s.status, "degraded");
        assert!(s.critical);
        assert_eq!(s.uptime, 60);
        assert_eq!(s.response_time, Some(20.0));
        assert_eq!(s.metrics.checks, 4);
        assert_eq!(s.metrics.availability, Some(0.75));
        assert_eq!((s.metrics.agents, s.metrics.healthy_agents), (3, 1));
        assert_eq!(roll_up(vec![healthy]).status, "healthy");
        assert_eq!(roll_up(vec![unhealthy]).status, "unhealthy");
        assert_eq!(roll_up(vec![unknown]).status, "unknown");
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let q = parse_services_query(Some("service=auth&window=1h")).unwrap();
        assert_eq!(
            (q.service.as_deref(), q.window_ms),
            (Some("auth"), 3_600_000)
        );
        for (query, param) in [
            ("window=0s", "window"),
            ("window=200h", "window"),
            ("window=x", "window"),
            ("svc=auth", "svc"),
        ] {
            let e = parse_services_query(Some(query)).unwrap_err();
            assert!(
                e.message.contains(&format!("\"{param}\"")),
                "{query}: {}",
                e.message
            );
        }
    }
}
