//! What the agent listener counts, rendered into `/metrics` beside the node's own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of the QUIC listener. Reasons are short fixed strings chosen by the
/// listener, never peer input, so the maps stay small.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Connections accepted (handshake done), by ALPN.
    pub connections: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections or requests refused, by reason.
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
    pub batches_acked: AtomicU64,
    pub batches_retried: AtomicU64,
    pub batches_not_leader: AtomicU64,
    pub samples_accepted: AtomicU64,
    /// Points refused at apply and reported in Acks, by reason.
    pub samples_refused: Mutex<BTreeMap<&'static str, u64>>,
    pub enrolls: AtomicU64,
    pub enrolls_rate_limited: AtomicU64,
    /// Sources the enrollment limiter forgot because its table was full.
    pub enroll_sources_evicted: AtomicU64,
    pub renewals: AtomicU64,
    /// Sessions closed because a newer connection of the same agent took over.
    pub sessions_replaced: AtomicU64,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str, n: u64) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += n;
    }
}

impl IngestCounters {
    pub fn connection(&self, alpn: &'static str) {
        bump(&self.connections, alpn, 1);
    }

    pub fn refuse(&self, reason: &'static str) {
        bump(&self.refused, reason, 1);
    }

    pub fn refused_samples(&self, reason: &'static str, n: u64) {
        bump(&self.samples_refused, reason, n);
    }

    /// Refusals so far for `reason` (for tests and logs).
    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Appends the counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let labelled = |map: &Mutex<BTreeMap<&'static str, u64>>, label: &str| {
            map.lock()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (format!("{{{label}=\"{k}\"}}"), *v))
                        .collect()
                })
                .unwrap_or_default()
        };
        let plain = |v: &AtomicU64| vec![(String::new(), v.load(Relaxed))];
        family(
            "argus_ingest_connections_total",
            "counter",
            "Agent QUIC connections accepted, by ALPN.",
            labelled(&self.connections, "alpn"),
        );
        family(
            "argus_ingest_connections_open",
            "gauge",
            "Agent QUIC connections open.",
            plain(&self.open),
        );
        family(
            "argus_ingest_refused_total",
            "counter",
            "Agent connections or requests refused, by reason.",
            labelled(&self.refused, "reason"),
        );
        family(
            "argus_ingest_batches_acked_total",
            "counter",
            "Agent batches answered with a final Ack.",
            plain(&self.batches_acked),
        );
        family(
            "argus_ingest_batches_retried_total",
            "counter",
            "Agent batches answered with Retry (log full, proposal dropped).",
            plain(&self.batches_retried),
        );
        family(
            "argus_ingest_batches_not_leader_total",
            "counter",
            "Agent batches answered with NotLeader.",
            plain(&self.batches_not_leader),
        );
        family(
            "argus_ingest_samples_accepted_total",
            "counter",
            "Agent samples stored.",
            plain(&self.samples_accepted),
        );
        family(
            "argus_ingest_samples_refused_total",
            "counter",
            "Agent samples refused at apply and reported in Acks, by reason.",
            labelled(&self.samples_refused, "reason"),
        );
        family(
            "argus_ingest_enrollments_total",
            "counter",
            "Enrollment requests answered (issued or refused by the fleet).",
            plain(&self.enrolls),
        );
        family(
            "argus_ingest_enrollments_rate_limited_total",
            "counter",
            "Enrollment connections refused by the per-source rate limit.",
            plain(&self.enrolls_rate_limited),
        );
        family(
            "argus_ingest_enroll_sources_evicted_total",
            "counter",
            "Sources the enrollment limiter forgot because its table was full.",
            plain(&self.enroll_sources_evicted),
        );
        family(
            "argus_ingest_renewals_total",
            "counter",
            "Certificate renewals answered.",
            plain(&self.renewals),
        );
        family(
            "argus_ingest_sessions_replaced_total",
            "counter",
            "Agent sessions closed because a newer connection of the same agent took over.",
            plain(&self.sessions_replaced),
        );
    }
}
