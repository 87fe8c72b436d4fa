//! `GET /api/metrics` (role viewer): per host, CPU usage and cores, memory used and
//! total, disks, network and containers, in the product documents' shape:
//!
//! ```json
//! {"services": {…}, "system": {"cpu": {"usage": 45.2, "cores": 8},
//!  "memory": {"used": 4294967296, "total": 8589934592}}, "docker": […],
//!  "hosts": {"<instance>": {"cpu": …, "memory": …, "disk": […], "network": […],
//!  "docker": […]}}}
//! ```
//!
//! `services` is what `/api/services` answers; `system` is the one host's figures, or
//! with several hosts their sum (CPU usage weighted by cores); `docker` lists every
//! host's containers. Everything comes from the series the agents send
//! (node_exporter's and cAdvisor's names): CPU usage is the non-idle share of
//! `node_cpu_seconds_total`'s increase over `window` (default 5m), memory is
//! `MemTotal - MemAvailable`, disks are `node_filesystem_{size,avail}_bytes`, network
//! rates are `node_network_{receive,transmit}_bytes_total` over the window, containers
//! `container_*`. A host is an `instance` label value; `instance` filters to one, and a
//! bad parameter is a 400 naming it.

use super::services::{
    LOOKBACK_MS, ServicesQuery, bad, collect_services, parse_window, plain_json, samples,
    series_named,
};
use super::{AppState, now_ms, read_state};
use crate::api::prom_json::ApiError;
use crate::state::machine::StateMachine;
use argus_common::model::Labels;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Default and largest rate window.
pub const DEFAULT_WINDOW_MS: i64 = 5 * 60_000;
pub const MAX_WINDOW_MS: i64 = 3_600_000;
/// Most series of one metric name read per answer.
pub const MAX_SERIES_PER_NAME: usize = 50_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/metrics", get(metrics))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cpu {
    /// Percent busy (0 to 100) over the window; `null` without two samples.
    pub usage: Option<f64>,
    pub cores: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Memory {
    pub used: Option<f64>,
    pub total: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub mountpoint: String,
    pub device: String,
    pub fstype: String,
    pub total: f64,
    pub used: f64,
    pub available: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub device: String,
    pub rx_bytes: Option<f64>,
    pub tx_bytes: Option<f64>,
    pub rx_bytes_per_second: Option<f64>,
    pub tx_bytes_per_second: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub host: String,
    pub name: String,
    pub image: String,
    pub state: Option<String>,
    /// Percent of one core over the window.
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub memory_limit: Option<f64>,
    pub restarts: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Host {
    pub cpu: Cpu,
    pub memory: Memory,
    pub disk: Vec<Disk>,
    pub network: Vec<Network>,
    pub docker: Vec<Container>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct System {
    pub cpu: Cpu,
    pub memory: Memory,
}

#[derive(Debug, Serialize)]
pub struct MetricsView {
    pub services: BTreeMap<String, super::services::ServiceView>,
    pub system: System,
    pub docker: Vec<Container>,
    pub hosts: BTreeMap<String, Host>,
}

/// A counter's increase over its samples, counting resets as Prometheus does.
pub fn increase(s: &[(i64, f64)]) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let mut total = 0.0;
    for w in s.windows(2) {
        let (a, b) = (w[0].1, w[1].1);
        total += if b >= a { b - a } else { b };
    }
    Some(total)
}

/// Per-second rate of a counter over its samples.
pub fn rate(s: &[(i64, f64)]) -> Option<f64> {
    let span = (s.last()?.0 - s.first()?.0) as f64 / 1000.0;
    (span > 0.0).then_some(increase(s)? / span)
}

/// Percent busy from per-(cpu, mode) increases: everything but idle and iowait.
pub fn cpu_usage(by_mode: &[(String, f64)]) -> Option<f64> {
    let total: f64 = by_mode.iter().map(|(_, v)| v).sum();
    if total <= 0.0 {
        return None;
    }
    let idle: f64 = by_mode
        .iter()
        .filter(|(m, _)| m == "idle" || m == "iowait")
        .map(|(_, v)| v)
        .sum();
    Some(((1.0 - idle / total) * 100.0 * 100.0).round() / 100.0)
}

/// The hosts' sum: cores and memory added, usage weighted by cores.
pub fn system_of(hosts: &BTreeMap<String, Host>) -> System {
    let mut s = System::default();
    let (mut busy, mut weighed) = (0.0, 0usize);
    for h in hosts.values() {
        s.cpu.cores += h.cpu.cores;
        if let Some(u) = h.cpu.usage {
            busy += u * h.cpu.cores.max(1) as f64;
            weighed += h.cpu.cores.max(1);
        }
        let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x + y),
            (x, y) => x.or(y),
        };
        s.memory.used = add(s.memory.used, h.memory.used);
        s.memory.total = add(s.memory.total, h.memory.total);
    }
    s.cpu.usage = (weighed > 0).then(|| (busy / weighed as f64 * 100.0).round() / 100.0);
    s
}

/// What a metrics query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsQuery {
    pub instance: Option<String>,
    pub window_ms: i64,
}

pub fn parse_metrics_query(q: Option<&str>) -> Result<MetricsQuery, ApiError> {
    let mut out = MetricsQuery {
        instance: None,
        window_ms: DEFAULT_WINDOW_MS,
    };
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "instance" => out.instance = Some(v.into_owned()),
            "window" => out.window_ms = parse_window(&v, MAX_WINDOW_MS)?,
            other => return Err(bad(other, "unknown; expected instance or window")),
        }
    }
    Ok(out)
}

/// Series of one metric name: `(instance, labels, samples)`.
type Read = Vec<(String, Labels, Vec<(i64, f64)>)>;

/// A filesystem: (instance, mountpoint, device, fstype) → (size, available).
type Disks = BTreeMap<(String, String, String, String), (Option<f64>, Option<f64>)>;

/// Reads the series of the hosts at `now` from the state.
struct Reader<'a> {
    app: &'a AppState,
    sm: &'a StateMachine,
    q: &'a MetricsQuery,
    now: i64,
    cut: bool,
}

impl Reader<'_> {
    /// `(instance, labels, samples in the window)` of every series of `name`.
    fn window(&mut self, name: &str) -> Read {
        self.read(name, self.now - self.q.window_ms)
    }

    /// Like [`Reader::window`], only the lookback (for gauges' latest value).
    fn latest(&mut self, name: &str) -> Vec<(String, Labels, f64)> {
        self.read(name, self.now - LOOKBACK_MS)
            .into_iter()
            .filter_map(|(i, l, s)| s.last().map(|(_, v)| (i, l, *v)))
            .collect()
    }

    fn read(&mut self, name: &str, from: i64) -> Read {
        let (series, cut) = series_named(self.sm, name, MAX_SERIES_PER_NAME);
        self.cut |= cut;
        series
            .into_iter()
            .filter_map(|(id, labels)| {
                let instance = labels.get("instance").unwrap_or("").to_string();
                if self.q.instance.as_ref().is_some_and(|i| *i != instance) {
                    return None;
                }
                let s = samples(self.app, self.sm, id, from, self.now);
                (!s.is_empty()).then_some((instance, labels, s))
            })
            .collect()
    }
}

fn label(l: &Labels, name: &str) -> String {
    l.get(name).unwrap_or("").to_string()
}

fn hosts(r: &mut Reader<'_>) -> BTreeMap<String, Host> {
    let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
    let mut modes: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    let mut cores: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (inst, l, s) in r.window("node_cpu_seconds_total") {
        cores
            .entry(inst.clone())
            .or_default()
            .insert(label(&l, "cpu"));
        if let Some(inc) = increase(&s) {
            modes
                .entry(inst)
                .or_default()
                .push((label(&l, "mode"), inc));
        }
    }
    for (inst, set) in cores {
        let h = hosts.entry(inst.clone()).or_default();
        h.cpu.cores = set.len();
        h.cpu.usage = modes.get(&inst).and_then(|m| cpu_usage(m));
    }
    for (inst, _, v) in r.latest("node_memory_MemTotal_bytes") {
        hosts.entry(inst).or_default().memory.total = Some(v);
    }
    for (inst, _, v) in r.latest("node_memory_MemAvailable_bytes") {
        let h = hosts.entry(inst).or_default();
        h.memory.used = h.memory.total.map(|t| (t - v).max(0.0));
    }
    let mut disks: Disks = BTreeMap::new();
    for (name, size) in [
        ("node_filesystem_size_bytes", true),
        ("node_filesystem_avail_bytes", false),
    ] {
        for (inst, l, v) in r.latest(name) {
            let key = (
                inst,
                label(&l, "mountpoint"),
                label(&l, "device"),
                label(&l, "fstype"),
            );
            let e = disks.entry(key).or_default();
            if size { e.0 = Some(v) } else { e.1 = Some(v) }
        }
    }
    for ((inst, mountpoint, device, fstype), (total, avail)) in disks {
        let (Some(total), Some(available)) = (total, avail) else {
            continue;
        };
        hosts.entry(inst).or_default().disk.push(Disk {
            mountpoint,
            device,
            fstype,
            total,
            used: (total - available).max(0.0),
            available,
        });
    }
    let mut nets: BTreeMap<(String, String), Network> = BTreeMap::new();
    for (name, rx) in [
        ("node_network_receive_bytes_total", true),
        ("node_network_transmit_bytes_total", false),
    ] {
        for (inst, l, s) in r.window(name) {
            let device = label(&l, "device");
            let n = nets.entry((inst, device.clone())).or_insert(Network {
                device,
                rx_bytes: None,
                tx_bytes: None,
                rx_bytes_per_second: None,
                tx_bytes_per_second: None,
            });
            let (total, per_s) = (s.last().map(|(_, v)| *v), rate(&s));
            if rx {
                (n.rx_bytes, n.rx_bytes_per_second) = (total, per_s);
            } else {
                (n.tx_bytes, n.tx_bytes_per_second) = (total, per_s);
            }
        }
    }
    for ((inst, _), n) in nets {
        hosts.entry(inst).or_default().network.push(n);
    }
    for (inst, c) in containers(r) {
        hosts.entry(inst).or_default().docker.push(c);
    }
    hosts
}

/// The container a series belongs to (by host and `name`), created on first sight.
fn container<'m>(
    out: &'m mut BTreeMap<(String, String), Container>,
    inst: &str,
    l: &Labels,
) -> &'m mut Container {
    out.entry((inst.to_string(), label(l, "name")))
        .or_insert_with(|| Container {
            host: inst.to_string(),
            name: label(l, "name"),
            image: label(l, "image"),
            ..Container::default()
        })
}

fn containers(r: &mut Reader<'_>) -> Vec<(String, Container)> {
    let mut out: BTreeMap<(String, String), Container> = BTreeMap::new();
    for (inst, l, v) in r.latest("container_state") {
        let c = container(&mut out, &inst, &l);
        if v >= 1.0 {
            c.state = Some(label(&l, "state"));
        }
    }
    for (inst, l, s) in r.window("container_cpu_usage_seconds_total") {
        container(&mut out, &inst, &l).cpu = rate(&s).map(|x| (x * 100.0 * 100.0).round() / 100.0);
    }
    for (inst, l, v) in r.latest("container_memory_usage_bytes") {
        container(&mut out, &inst, &l).memory = Some(v);
    }
    for (inst, l, v) in r.latest("container_spec_memory_limit_bytes") {
        container(&mut out, &inst, &l).memory_limit = Some(v).filter(|x| *x > 0.0);
    }
    for (inst, l, v) in r.latest("container_restarts") {
        container(&mut out, &inst, &l).restarts = Some(v);
    }
    out.into_iter()
        .filter(|((_, name), _)| !name.is_empty())
        .map(|((inst, _), c)| (inst, c))
        .collect()
}

async fn metrics(State(app): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let query = match parse_metrics_query(q.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let now = now_ms();
    let (view, cut) = {
        let sm = match read_state(&app) {
            Ok(sm) => sm,
            Err(e) => return e.into_response(),
        };
        let services_q = ServicesQuery {
            service: None,
            instance: query.instance.clone(),
            window_ms: super::services::DEFAULT_WINDOW_MS,
        };
        let (services, services_cut) = collect_services(&app, &sm, &services_q, now);
        let mut r = Reader {
            app: &app,
            sm: &sm,
            q: &query,
            now,
            cut: services_cut,
        };
        let hosts = hosts(&mut r);
        let view = MetricsView {
            services,
            system: system_of(&hosts),
            docker: hosts.values().flat_map(|h| h.docker.clone()).collect(),
            hosts,
        };
        (view, r.cut)
    };
    plain_json(&view, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_increase_across_resets() {
        assert_eq!(increase(&[(0, 5.0)]), None);
        assert_eq!(increase(&[(0, 5.0), (1_000, 7.0), (2_000, 1.0)]), Some(3.0));
        assert_eq!(rate(&[(0, 0.0), (10_000, 50.0)]), Some(5.0));
        assert_eq!(rate(&[(0, 0.0), (0, 50.0)]), None);
    }

    #[test]
    fn cpu_usage_is_the_non_idle_share() {
        let m = |pairs: &[(&str, f64)]| -> Vec<(String, f64)> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        assert_eq!(
            cpu_usage(&m(&[("idle", 60.0), ("user", 30.0), ("system", 10.0)])),
            Some(40.0)
        );
        assert_eq!(
            cpu_usage(&m(&[("idle", 50.0), ("iowait", 50.0)])),
            Some(0.0)
        );
        assert_eq!(cpu_usage(&[]), None);
    }

    #[test]
    fn the_system_sums_hosts_and_weighs_usage_by_cores() {
        let host = |usage, cores, used, total| Host {
            cpu: Cpu {
                usage: Some(usage),
                cores,
            },
            memory: Memory {
                used: Some(used),
                total: Some(total),
            },
            ..Host::default()
        };
        let hosts = BTreeMap::from([
            ("a".to_string(), host(10.0, 2, 1.0, 4.0)),
            ("b".to_string(), host(40.0, 6, 2.0, 8.0)),
        ]);
        let s = system_of(&hosts);
        assert_eq!(
            s.cpu,
            Cpu {
                usage: Some(32.5),
                cores: 8
            }
        );
        assert_eq!(
            s.memory,
            Memory {
                used: Some(3.0),
                total: Some(12.0)
            }
        );
        assert_eq!(system_of(&BTreeMap::new()).cpu.usage, None);
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let q = parse_metrics_query(Some("instance=web-1:9100&window=1m")).unwrap();
        assert_eq!(
            (q.instance.as_deref(), q.window_ms),
            (Some("web-1:9100"), 60_000)
        );
        for (query, param) in [("window=2h", "window"), ("host=x", "host")] {
            let e = parse_metrics_query(Some(query)).unwrap_err();
            assert!(
                e.message.contains(&format!("\"{param}\"")),
                "{query}: {}",
                e.message
            );
        }
    }
}
