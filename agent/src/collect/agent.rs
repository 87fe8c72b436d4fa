//! The agent's own health, as `argus_agent_*` series under the agent's job.
//!
//! Counters are atomics so the collection loop, the spool writer and the metrics
//! endpoint can update and read them without a lock on the hot path.

use super::Families;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The collectors whose cost and failures are reported separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorKind {
    Host,
    Containers,
    Probes,
}

impl CollectorKind {
    pub const ALL: [CollectorKind; 3] = [
        CollectorKind::Host,
        CollectorKind::Containers,
        CollectorKind::Probes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CollectorKind::Host => "host",
            CollectorKind::Containers => "containers",
            CollectorKind::Probes => "probes",
        }
    }
}

/// Where the uplink stands; one-hot in `argus_agent_uplink_state{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UplinkState {
    Disabled = 0,
    Connecting = 1,
    Connected = 2,
    Disconnected = 3,
}

impl UplinkState {
    const ALL: [UplinkState; 4] = [
        UplinkState::Disabled,
        UplinkState::Connecting,
        UplinkState::Connected,
        UplinkState::Disconnected,
    ];

    fn as_str(self) -> &'static str {
        match self {
            UplinkState::Disabled => "disabled",
            UplinkState::Connecting => "connecting",
            UplinkState::Connected => "connected",
            UplinkState::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug, Default)]
pub struct AgentStats {
    collector_micros: [AtomicU64; 3],
    collector_errors: [AtomicU64; 3],
    collections: AtomicU64,
    samples: AtomicU64,
    series: AtomicU64,
    spool_bytes: AtomicU64,
    spool_batches: AtomicU64,
    dropped_samples: AtomicU64,
    uplink: AtomicU8,
    refused: Mutex<BTreeMap<String, u64>>,
}

impl AgentStats {
    pub fn record_collector(&self, kind: CollectorKind, took: Duration, errors: usize) {
        let i = kind as usize;
        self.collector_micros[i].store(took.as_micros() as u64, Relaxed);
        self.collector_errors[i].fetch_add(errors as u64, Relaxed);
    }

    pub fn record_collection(&self, samples: usize) {
        self.collections.fetch_add(1, Relaxed);
        self.samples.fetch_add(samples as u64, Relaxed);
    }

    pub fn set_series(&self, live_series: usize) {
        self.series.store(live_series as u64, Relaxed);
    }

    pub fn record_spool(&self, bytes: u64, batches: u64, dropped_samples_total: u64) {
        self.spool_bytes.store(bytes, Relaxed);
        self.spool_batches.store(batches, Relaxed);
        self.dropped_samples.store(dropped_samples_total, Relaxed);
    }

    /// Counts samples refused, locally by a limit or by the coordinator's Ack.
    pub fn record_refused(&self, reason: &str, n: u64) {
        if let Ok(mut m) = self.refused.lock() {
            *m.entry(reason.to_string()).or_default() += n;
        }
    }

    pub fn set_uplink(&self, s: UplinkState) {
        self.uplink.store(s as u8, Relaxed);
    }

    pub fn collector_errors(&self, kind: CollectorKind) -> u64 {
        self.collector_errors[kind as usize].load(Relaxed)
    }

    pub fn collect(&self, out: &mut Families) {
        for k in CollectorKind::ALL {
            let l = [("collector", k.as_str())];
            out.gauge(
                "argus_agent_collector_duration_seconds",
                "How long the collector's last run took.",
                &l,
                self.collector_micros[k as usize].load(Relaxed) as f64 / 1e6,
            );
            out.counter(
                "argus_agent_collector_errors_total",
                "Reads or checks a collector could not complete; the rest of its metrics were still collected.",
                &l,
                self.collector_errors[k as usize].load(Relaxed) as f64,
            );
        }
        out.counter(
            "argus_agent_collections_total",
            "Collections run.",
            &[],
            self.collections.load(Relaxed) as f64,
        );
        out.counter(
            "argus_agent_samples_total",
            "Samples collected.",
            &[],
            self.samples.load(Relaxed) as f64,
        );
        out.gauge(
            "argus_agent_series",
            "Series the agent currently tracks.",
            &[],
            self.series.load(Relaxed) as f64,
        );
        out.gauge(
            "argus_agent_spool_bytes",
            "Bytes held in the on-disk spool.",
            &[],
            self.spool_bytes.load(Relaxed) as f64,
        );
        out.gauge(
            "argus_agent_spool_batches",
            "Batches waiting in the spool for a final acknowledgement.",
            &[],
            self.spool_batches.load(Relaxed) as f64,
        );
        out.counter(
            "argus_agent_dropped_samples_total",
            "Samples dropped because the spool was full.",
            &[("reason", "spool_full")],
            self.dropped_samples.load(Relaxed) as f64,
        );
        if let Ok(m) = self.refused.lock() {
            for (reason, n) in m.iter() {
                out.counter(
                    "argus_agent_refused_samples_total",
                    "Samples refused, by a local limit or by the coordinator, by reason.",
                    &[("reason", reason)],
                    *n as f64,
                );
            }
        }
        let current = self.uplink.load(Relaxed);
        for s in UplinkState::ALL {
            out.gauge(
                "argus_agent_uplink_state",
                "The uplink's state: 1 for the current one.",
                &[("state", s.as_str())],
                if s as u8 == current { 1.0 } else { 0.0 },
            );
        }
        out.gauge(
            "argus_agent_build_info",
            "The agent's version.",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        if let Some((cpu, rss)) = own_process_usage() {
            out.counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                &[],
                cpu,
            );
            out.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                &[],
                rss,
            );
        }
    }
}

/// CPU seconds and resident bytes of this process, from /proc/self/stat.
fn own_process_usage() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_self_stat(&stat, clock_ticks(), page_size())
}

/// Parses /proc/<pid>/stat. The command name may contain spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_self_stat(stat: &str, ticks: f64, page: f64) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11, stime 12, rss (24) 21.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let rss: f64 = f.get(21)?.parse().ok()?;
    Some(((utime + stime) / ticks, rss * page))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as f64 } else { 4096.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_stat_is_parsed_past_odd_process_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1234 50000000 2560 18446744073709551615";
        let (cpu, rss) = parse_self_stat(stat, 100.0, 4096.0).unwrap();
        assert_eq!(cpu, 3.0);
        assert_eq!(rss, 2560.0 * 4096.0);
        assert_eq!(parse_self_stat("garbage", 100.0, 4096.0), None);
    }

    #[test]
    fn counters_show_up_with_reasons_and_one_hot_state() {
        let s = AgentStats::default();
        s.record_refused("series_limit", 3);
        s.record_refused("series_limit", 2);
        s.set_uplink(UplinkState::Connected);
        s.record_collector(CollectorKind::Containers, Duration::from_millis(5), 1);
        let mut f = Families::new();
        s.collect(&mut f);
        let refused = f.get("argus_agent_refused_samples_total").unwrap();
        assert_eq!(refused.points[0].1, 5.0);
        let state = f.get("argus_agent_uplink_state").unwrap();
        let on: Vec<_> = state
            .points
            .iter()
            .filter(|p| p.1 == 1.0)
            .map(|p| p.0.get("state").unwrap())
            .collect();
        assert_eq!(on, vec!["connected"]);
        let errs = f.get("argus_agent_collector_errors_total").unwrap();
        assert_eq!(errs.points[1].1, 1.0);
        assert_eq!(errs.points[1].0.get("collector"), Some("containers"));
    }
}
