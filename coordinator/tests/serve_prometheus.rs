//! Debian's Prometheus as a client of `argus serve` (issue 3, acceptance "Real
//! Prometheus as a client"): Prometheus scrapes a node_exporter and itself every second
//! and remote-writes everything into Argus; Argus's `/federate` and Prometheus's own
//! `/federate` must then list the same series with the same last values.
//!
//! Both sides move every second, and Argus trails Prometheus by the remote-write
//! delay, so the comparison takes Prometheus's `/federate` first and then polls
//! Argus's until it has caught up with every timestamp Prometheus showed. At that
//! moment both answers describe the same scrapes: the series sets must be equal, and
//! every series whose timestamps agree (at least 95%; a scrape landing in between
//! moves a whole job ahead, and the attempt is repeated) must have a bit-equal value.
//! An unequal value at an equal timestamp fails at once; differing series sets are
//! retried (a new series, such as Prometheus's counter for the `/federate` handler we
//! just called, takes a scrape and a send to arrive) and printed if they never agree.

mod common;

use argus_testkit::http::{self, encode_component};
use argus_testkit::prometheus::{LabelSet, TextSample, format_labels, parse_exposition};
use common::{prometheus_into_argus, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SELECTOR: &str = "{job=~\".+\"}";
const DEADLINE: Duration = Duration::from_secs(90);

type Federated = BTreeMap<LabelSet, TextSample>;

fn federate(addr: SocketAddr) -> Result<Federated, String> {
    let path = format!("/federate?match[]={}", encode_component(SELECTOR));
    let r = http::get(addr, &path).map_err(|e| format!("GET {addr}{path}: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET {addr}{path}: {} {}", r.status, r.text()));
    }
    let mut out = Federated::new();
    for (labels, sample) in parse_exposition(&r.text())? {
        if sample.timestamp_ms.is_none() {
            return Err(format!("{} has no timestamp", format_labels(&labels)));
        }
        if let Some(prev) = out.insert(labels.clone(), sample) {
            return Err(format!(
                "{} twice in /federate of {addr} ({prev:?}, {sample:?})",
                format_labels(&labels)
            ));
        }
    }
    Ok(out)
}

/// Whether Argus holds, for every series Prometheus showed, a sample at least as new.
fn caught_up(prom: &Federated, argus: &Federated) -> bool {
    prom.iter().all(|(k, p)| {
        argus
            .get(k)
            .is_some_and(|a| a.timestamp_ms >= p.timestamp_ms)
    })
}

fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

#[derive(Default)]
struct Comparison {
    only_prometheus: Vec<String>,
    only_argus: Vec<String>,
    matched: usize,
    /// Argus has another (newer or older) sample than Prometheus showed.
    other_timestamp: usize,
    value_mismatches: Vec<String>,
}

impl Comparison {
    fn of(prom: &Federated, argus: &Federated) -> Comparison {
        let mut c = Comparison::default();
        for (k, p) in prom {
            match argus.get(k) {
                None => c.only_prometheus.push(format_labels(k)),
                Some(a) if a.timestamp_ms != p.timestamp_ms => c.other_timestamp += 1,
                Some(a) if same_value(a.value, p.value) => c.matched += 1,
                Some(a) => c.value_mismatches.push(format!(
                    "{} at {:?}: Argus {:?}, Prometheus {:?}",
                    format_labels(k),
                    p.timestamp_ms,
                    a.value,
                    p.value
                )),
            }
        }
        c.only_argus = argus
            .keys()
            .filter(|k| !prom.contains_key(*k))
            .map(format_labels)
            .collect();
        c
    }

    fn agrees(&self, total: usize) -> bool {
        self.only_prometheus.is_empty()
            && self.only_argus.is_empty()
            && self.value_mismatches.is_empty()
            && self.matched * 100 >= total * 95
    }

    fn report(&self, total: usize) -> String {
        let first = |v: &[String]| {
            v.iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    ")
        };
        format!(
            "{total} series in Prometheus's /federate: {} matched (same timestamp, same value), \
             {} at another timestamp; {} only in Prometheus, {} only in Argus\n  only in Prometheus:\n    {}\n  only in Argus:\n    {}",
            self.matched,
            self.other_timestamp,
            self.only_prometheus.len(),
            self.only_argus.len(),
            first(&self.only_prometheus),
            first(&self.only_argus),
        )
    }
}

#[test]
fn prometheus_remote_writes_into_argus_and_both_federate_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let Some(setup) = prometheus_into_argus(dir.path(), DEADLINE) else {
        return;
    };
    let (argus, mut prom, prom_addr) = (setup.argus, setup.prometheus, setup.prometheus_addr);

    // Data of both jobs arrives through remote write.
    let deadline = Instant::now() + DEADLINE;
    wait_for("both jobs in Argus", deadline, || {
        let jobs: BTreeSet<String> = argus
            .series("up")
            .into_iter()
            .filter_map(|s| s.get("job").cloned())
            .collect();
        Ok(jobs.contains("node") && jobs.contains("prometheus"))
    });
    // Metadata travels too: /federate's TYPE lines come from it.
    wait_for("node_cpu_seconds_total metadata", deadline, || {
        let r = argus.get("/api/v1/metadata");
        let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        Ok(v["data"]["node_cpu_seconds_total"][0]["type"] == "counter")
    });

    let mut attempt = 0;
    let deadline = Instant::now() + DEADLINE;
    loop {
        attempt += 1;
        let prom_fed = federate(prom_addr).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            prom_fed.len() > 100,
            "Prometheus federates only {} series",
            prom_fed.len()
        );
        let caught_up_by = Instant::now() + Duration::from_secs(10);
        let argus_fed = loop {
            let a = federate(argus.addr).unwrap_or_else(|e| panic!("{e}"));
            if caught_up(&prom_fed, &a) || Instant::now() > caught_up_by {
                break a;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let cmp = Comparison::of(&prom_fed, &argus_fed);
        assert!(
            cmp.value_mismatches.is_empty(),
            "values differ at equal timestamps:\n{}\n{}",
            cmp.value_mismatches.join("\n"),
            cmp.report(prom_fed.len())
        );
        if cmp.agrees(prom_fed.len()) {
            let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
            for k in argus_fed.keys() {
                *per_job
                    .entry(k.get("job").map_or("", String::as_str))
                    .or_default() += 1;
            }
            eprintln!(
                "attempt {attempt}: Argus and Prometheus federate the same {} series {per_job:?}, \
                 {} of them with the same timestamp and a bit-equal value",
                argus_fed.len(),
                cmp.matched
            );
            assert!(
                per_job.get("node").is_some_and(|n| *n > 100)
                    && per_job.get("prometheus").is_some_and(|n| *n > 100),
                "both jobs are compared: {per_job:?}"
            );
            assert_eq!(argus_fed.len(), prom_fed.len(), "series counts");
            break;
        }
        eprintln!("attempt {attempt}: not yet: {}", cmp.report(prom_fed.len()));
        assert!(
            Instant::now() < deadline,
            "Argus's /federate never agreed with Prometheus's:\n{}\n{}",
            cmp.report(prom_fed.len()),
            prom.log_tail(3000)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Prometheus is a well-behaved client: nothing it sent was refused.
    let refused = argus
        .get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with("argus_http_write_refused_total{") && !l.ends_with(" 0"))
        .map(String::from)
        .collect::<Vec<_>>();
    assert!(
        refused.is_empty(),
        "Argus refused data from Prometheus: {refused:?}"
    );
    let _ = prom.terminate(Duration::from_secs(30));
}
