//! Old data through the tiers (issue 4, acceptance "Old data through the tiers"): 40
//! simulated days of counters and gauges are applied through the replica (state
//! machine, head, aggregator, store), with retention cuts as log entries the way the
//! leader proposes them, so raw samples older than raw retention are gone. Then
//! `avg_over_time`, `max_over_time`, `increase` and `rate` over those old ranges are
//! compared with values computed here from the generated samples, and the answer must
//! name the tier that gave it. Run with Argus's default tiers and the product
//! documents' tiers.
//!
//! What a tier computes is defined in `query::tiered`: over the windows covering
//! `[A, B)` (`B` the evaluation time, `A = B - range`), the increase being the counter's
//! reset-adjusted growth from the last sample before `A` to the last sample before `B`,
//! and the rate that increase over the range's seconds. The expected values below are
//! computed from the samples by that definition, with no aggregate code involved.

use std::sync::Arc;

use argus_common::model::Labels;
use argus_coordinator::cluster::proposal::Proposal;
use argus_coordinator::cluster::{Apply, CommittedEntry, EntryKind};
use argus_coordinator::query::source::{LiveSource, QueryLimits};
use argus_coordinator::query::{EvalOptions, QueryValue, instant_query, range_query};
use argus_coordinator::state::checkpoint_file::CheckpointFile;
use argus_coordinator::state::entry::{Entry, PushedItem, PushedKey};
use argus_coordinator::state::replica::{Replica, ReplicaConfig};
use argus_coordinator::tsdb::store::{Store, StoreConfig};
use argus_coordinator::tsdb::tier::Tiers;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// End of the simulation, 2025-03-03T00:00:00Z (on every tier's grid).
const T_END: i64 = 1_740_960_000_000;
const DAYS: i64 = 40;
const T_START: i64 = T_END - DAYS * DAY;
/// One sample a minute per series.
const INTERVAL: i64 = MIN;
/// Samples per log entry: ten minutes of every series. Not more than the head's
/// out-of-order window: the aggregator seals windows against the entry's leader time
/// less that window before it takes the entry's samples, so older ones would be late.
const PER_ENTRY: i64 = 10;
/// Leader time between the replica's checkpoints (each syncs the store).
const CHECKPOINT_MS: i64 = 6 * HOUR;

/// The generated series: two counters (with resets) and two gauges, values on a binary
/// grid so sums are exact in floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gen {
    CounterA,
    CounterB,
    GaugeA,
    GaugeB,
}

const SERIES: [Gen; 4] = [Gen::CounterA, Gen::CounterB, Gen::GaugeA, Gen::GaugeB];

impl Gen {
    fn name(self) -> &'static str {
        match self {
            Gen::CounterA | Gen::CounterB => "sim_requests_total",
            Gen::GaugeA | Gen::GaugeB => "sim_temperature_celsius",
        }
    }

    fn instance(self) -> &'static str {
        match self {
            Gen::CounterA | Gen::GaugeA => "a",
            Gen::CounterB | Gen::GaugeB => "b",
        }
    }

    fn labels(self) -> Labels {
        Labels::from_pairs([("instance", self.instance()), ("job", "sim")])
    }

    /// Every sample of the series, one a minute from T_START to T_END.
    fn samples(self) -> Vec<(i64, f64)> {
        let n = (T_END - T_START) / INTERVAL;
        let mut v = 0.0;
        (0..=n)
            .map(|i| {
                let t = T_START + i * INTERVAL;
                let x = match self {
                    // +1..+5 a minute, reset to a small value every ~7 days.
                    Gen::CounterA => {
                        v = if i > 0 && i % 10_007 == 0 {
                            (i % 3) as f64
                        } else {
                            v + ((i * 7) % 5 + 1) as f64
                        };
                        v
                    }
                    // 0, 0.5, 1 or 1.5 a minute, reset every ~3 days.
                    Gen::CounterB => {
                        v = if i > 0 && i % 4_001 == 0 {
                            0.0
                        } else {
                            v + 0.5 * (i % 4) as f64
                        };
                        v
                    }
                    Gen::GaugeA => ((i * 37) % 1_000) as f64 / 4.0,
                    Gen::GaugeB => ((i * i) % 977) as f64 * 0.25 - 50.0,
                };
                (t, x)
            })
            .collect()
    }
}

struct Sim {
    _dir: tempfile::TempDir,
    replica: Replica,
    data: Vec<(Gen, Vec<(i64, f64)>)>,
}

/// Applies the 40 days through a replica, one entry per ten minutes, each followed by
/// the end of an apply batch (where the replica writes sealed chunks and windows), and
/// the retention cuts a leader would propose, once an hour.
fn simulate(tiers: Tiers) -> Sim {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open(dir.path().join("tsdb"), StoreConfig::new(tiers.clone())).expect("open store");
    // The replica writes sealed chunks and windows to the store at its checkpoints; one
    // every 6 hours of leader time keeps the syncs few.
    let config = ReplicaConfig {
        checkpoint_entries: u64::MAX,
        checkpoint_samples: u64::MAX,
        checkpoint_interval_ms: CHECKPOINT_MS,
        ..ReplicaConfig::default()
    };
    let mut replica = Replica::open(Arc::new(store), CheckpointFile::new(dir.path()), config)
        .expect("open replica");
    let data: Vec<(Gen, Vec<(i64, f64)>)> = SERIES.iter().map(|g| (*g, g.samples())).collect();
    let total = data[0].1.len();
    let mut index = 0;
    let mut cuts = vec![i64::MIN; tiers.len()];
    let mut apply = |replica: &mut Replica, time_ms: i64, entry: &Entry| {
        index += 1;
        let payload = entry.encode();
        let out = replica
            .apply(CommittedEntry {
                index,
                term: 1,
                kind: EntryKind::Proposal(Proposal {
                    time_ms,
                    payload: &payload,
                }),
            })
            .expect("apply");
        assert_eq!(out.refused_total(), 0, "{out:?}");
        replica.end_batch().expect("end of batch");
    };
    for start in (0..total).step_by(PER_ENTRY as usize) {
        let end = (start + PER_ENTRY as usize).min(total);
        let items = data
            .iter()
            .flat_map(|(g, s)| {
                PushedItem::encode(
                    PushedKey::New {
                        name: g.name().into(),
                        labels: g.labels(),
                    },
                    &s[start..end],
                )
            })
            .collect();
        let now = data[0].1[end - 1].0;
        let entry = Entry::Push {
            items,
            metadata: Vec::new(),
        };
        apply(&mut replica, now, &entry);
        if now / HOUR != (now - PER_ENTRY * INTERVAL) / HOUR {
            for cut in tiers.retention_cuts(now) {
                let last = &mut cuts[usize::from(cut.tier)];
                if cut.before_ms > *last {
                    *last = cut.before_ms;
                    let entry = Entry::RetentionCut {
                        tier: cut.tier,
                        before_ms: cut.before_ms,
                    };
                    apply(&mut replica, now, &entry);
                }
            }
        }
    }
    Sim {
        _dir: dir,
        replica,
        data,
    }
}

impl Sim {
    fn source(&self) -> LiveSource {
        LiveSource::new(
            self.replica.shared(),
            self.replica.store().clone(),
            &QueryLimits::default(),
            None,
            T_END,
        )
    }

    fn samples(&self, g: Gen) -> &[(i64, f64)] {
        &self
            .data
            .iter()
            .find(|d| d.0 == g)
            .expect("generated series")
            .1
    }
}

/// What a function gives over the samples in `[a, b)`, by the definitions in the module
/// documentation.
fn expected(f: &str, samples: &[(i64, f64)], a: i64, b: i64) -> Option<f64> {
    let lo = samples.partition_point(|s| s.0 < a);
    let hi = samples.partition_point(|s| s.0 < b);
    let inside = &samples[lo..hi];
    if inside.is_empty() {
        return None;
    }
    let values = inside.iter().map(|s| s.1);
    let increase = || {
        // Each sample's step from the one before it (across `a` too), a drop counting
        // as a reset to zero.
        (lo..hi)
            .map(|i| {
                let (prev, cur) = (samples[i.saturating_sub(1)].1, samples[i].1);
                if i == 0 {
                    0.0
                } else if cur >= prev {
                    cur - prev
                } else {
                    cur
                }
            })
            .sum::<f64>()
    };
    Some(match f {
        "avg_over_time" => values.sum::<f64>() / inside.len() as f64,
        "max_over_time" => values.fold(f64::MIN, f64::max),
        "increase" => increase(),
        "rate" => increase() / ((b - a) as f64 / 1000.0),
        other => panic!("no expectation for {other}"),
    })
}

/// Prometheus's own `max_over_time` over `(a, b]`, for steps raw answers.
fn max_left_open(samples: &[(i64, f64)], a: i64, b: i64) -> Option<f64> {
    let lo = samples.partition_point(|s| s.0 <= a);
    let hi = samples.partition_point(|s| s.0 <= b);
    samples[lo..hi].iter().map(|s| s.1).reduce(f64::max)
}

fn assert_close(got: f64, want: f64, what: &str) {
    let tolerance = 1e-12 * want.abs().max(1.0);
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: got {got}, want {want}"
    );
}

fn gens_of(name: &str) -> Vec<Gen> {
    SERIES
        .iter()
        .copied()
        .filter(|g| g.name() == name)
        .collect()
}

/// The generator of the answered series `labels` of `name`.
fn gen_for(name: &str, labels: &Labels) -> Gen {
    gens_of(name)
        .into_iter()
        .find(|g| labels.get("instance") == Some(g.instance()))
        .expect("an answered series was generated")
}

/// Evaluates `f(metric[range])` at `t` and checks every series against the samples, and
/// that the answer names `tier` and has no warnings.
fn check_instant(sim: &Sim, f: &str, metric: &str, range_ms: i64, range: &str, t: i64, tier: &str) {
    let src = sim.source();
    let query = format!("{f}({metric}[{range}])");
    let expr = promql_parser::parser::parse(&query).unwrap();
    let got = match instant_query(&src, &expr, t, &EvalOptions::default()).unwrap() {
        QueryValue::Vector(v) => v,
        other => panic!("{query}: {other:?}"),
    };
    let gens = gens_of(metric);
    assert_eq!(
        got.len(),
        gens.len(),
        "{query} at {t}: {got:?}, {:?}",
        src.stats()
    );
    for g in gens {
        let s = got
            .iter()
            .find(|s| s.labels.get("instance") == Some(g.instance()))
            .unwrap_or_else(|| panic!("{query}: no answer for {}", g.instance()));
        let want = expected(f, sim.samples(g), t - range_ms, t).unwrap();
        assert_close(
            s.v,
            want,
            &format!("{query} at {t}, instance {}", g.instance()),
        );
    }
    let stats = src.into_stats();
    assert!(stats.warnings.is_empty(), "{query}: {:?}", stats.warnings);
    assert!(
        stats
            .infos
            .iter()
            .any(|i| i.contains(&query) && i.contains(&format!("aggregate tier \"{tier}\""))),
        "{query} must say tier {tier} answered: {:?}",
        stats.infos
    );
    assert!(stats.tier_windows > 0);
    assert_eq!(stats.store_samples, 0, "{query}: no raw samples are read");
}

/// The raw samples of the old ranges are gone: a function no tier answers finds nothing,
/// and says why.
fn check_raw_is_gone(sim: &Sim, t: i64) {
    let src = sim.source();
    let expr =
        promql_parser::parser::parse("stddev_over_time(sim_temperature_celsius[1d])").unwrap();
    match instant_query(&src, &expr, t, &EvalOptions::default()).unwrap() {
        QueryValue::Vector(v) => assert!(v.is_empty(), "{v:?}"),
        other => panic!("{other:?}"),
    }
    let w = src.into_stats().warnings;
    assert!(
        w.iter().any(|w| w.contains("raw tier's retention")),
        "{w:?}"
    );
}

const FUNCTIONS: [(&str, &str); 4] = [
    ("avg_over_time", "sim_temperature_celsius"),
    ("max_over_time", "sim_temperature_celsius"),
    ("increase", "sim_requests_total"),
    ("rate", "sim_requests_total"),
];

#[test]
fn old_ranges_are_answered_from_the_argus_default_tiers() {
    // Raw 24 h, 5 m for 30 d, 1 h for a year.
    let sim = simulate(Tiers::argus_defaults());
    check_raw_is_gone(&sim, T_END - 10 * DAY);
    for (f, metric) in FUNCTIONS {
        // Older than the 5m tier's retention: the hourly tier.
        check_instant(&sim, f, metric, DAY, "1d", T_END - 35 * DAY, "1h");
        check_instant(
            &sim,
            f,
            metric,
            6 * HOUR,
            "6h",
            T_END - 10 * DAY - 3 * HOUR,
            "1h",
        );
        // Off the hourly grid: the 5m tier, exact on its own grid.
        check_instant(
            &sim,
            f,
            metric,
            2 * HOUR,
            "2h",
            T_END - 3 * DAY + 5 * MIN,
            "5m",
        );
    }

    // A range query over old data: every step from the hourly tier.
    let src = sim.source();
    let (start, end, step) = (T_END - 39 * DAY, T_END - 2 * DAY, 6 * HOUR);
    let expr = promql_parser::parser::parse("rate(sim_requests_total[1h])").unwrap();
    let got = match range_query(&src, &expr, start, end, step, &EvalOptions::default()).unwrap() {
        QueryValue::Matrix(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), 2);
    for s in &got {
        let g = gen_for("sim_requests_total", &s.labels);
        assert_eq!(s.samples.len() as i64, (end - start) / step + 1);
        for &(t, v) in &s.samples {
            let want = expected("rate", sim.samples(g), t - HOUR, t).unwrap();
            assert_close(v, want, &format!("rate at {t}"));
        }
    }
    let stats = src.into_stats();
    assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    assert!(
        stats.infos.iter().any(|i| i.contains("tier \"1h\"")),
        "{:?}",
        stats.infos
    );

    // A range query from old data to the end: the old steps from one tier (the hourly
    // one, stored up to a day ago, which is where raw takes over), the recent ones from
    // raw with Prometheus's left-open windows; the answer names both.
    let src = sim.source();
    let (start, end, step) = (T_END - 3 * DAY, T_END, HOUR);
    let expr = promql_parser::parser::parse("max_over_time(sim_temperature_celsius[1h])").unwrap();
    let got = match range_query(&src, &expr, start, end, step, &EvalOptions::default()).unwrap() {
        QueryValue::Matrix(m) => m,
        other => panic!("{other:?}"),
    };
    let raw_from = T_END - DAY + HOUR;
    for s in &got {
        let g = gen_for("sim_temperature_celsius", &s.labels);
        assert_eq!(s.samples.len() as i64, (end - start) / step + 1);
        for &(t, v) in &s.samples {
            let want = if t < raw_from {
                expected("max_over_time", sim.samples(g), t - HOUR, t)
            } else {
                max_left_open(sim.samples(g), t - HOUR, t)
            };
            assert_close(v, want.unwrap(), &format!("max_over_time at {t}"));
        }
    }
    let stats = src.into_stats();
    assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    assert!(
        stats.infos.iter().any(|i| i.contains("tier \"1h\"")),
        "{:?}",
        stats.infos
    );
    assert!(
        stats
            .infos
            .iter()
            .any(|i| i.contains("from raw samples from evaluation time 2025-03-02T01:00:00.000Z")),
        "{:?}",
        stats.infos
    );
}

#[test]
fn old_ranges_are_answered_from_the_product_document_tiers() {
    // Raw 1 h, 5 m for 1 d, 1 h for 7 d, 1 d for 30 d.
    let sim = simulate(Tiers::product_docs().expect("product tiers"));
    check_raw_is_gone(&sim, T_END - 2 * DAY);
    for (f, metric) in FUNCTIONS {
        check_instant(&sim, f, metric, DAY, "1d", T_END - 20 * DAY, "1d");
        check_instant(&sim, f, metric, 2 * DAY, "2d", T_END - 10 * DAY, "1d");
        check_instant(&sim, f, metric, 6 * HOUR, "6h", T_END - 5 * DAY, "1h");
        check_instant(&sim, f, metric, 30 * MIN, "30m", T_END - 10 * HOUR, "5m");
    }

    // An off-grid time over old data: only whole windows inside the range are used, and
    // a warning says how much of it they cover.
    let src = sim.source();
    let t = T_END - 5 * DAY + 7 * MIN;
    let expr = promql_parser::parser::parse("increase(sim_requests_total[1d])").unwrap();
    let got = match instant_query(&src, &expr, t, &EvalOptions::default()).unwrap() {
        QueryValue::Vector(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), 2);
    for s in &got {
        let g = gen_for("sim_requests_total", &s.labels);
        // The hourly windows inside (t - 1d, t]: 23 hours.
        let (a, b) = (t - 7 * MIN - DAY + HOUR, t - 7 * MIN);
        assert_close(
            s.v,
            expected("increase", sim.samples(g), a, b).unwrap(),
            "increase",
        );
    }
    let w = src.into_stats().warnings;
    assert!(
        w.iter().any(|w| w.contains("tier \"1h\" covers 95.8 %")),
        "{w:?}"
    );
}
