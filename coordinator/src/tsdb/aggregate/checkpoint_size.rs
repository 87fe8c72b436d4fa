//! How many bytes each part of a checkpoint takes per series under a realistic load: the
//! figures behind checkpointing every one or two million samples.
//!
//! The load is [`mix::realistic_mix`] with node_exporter, cAdvisor and blackbox_exporter
//! names and labels (100 series per host), applied in time order through a series index,
//! a head and an aggregator with Argus's default tiers, as the state machine applies it
//! (watermark advanced every minute of data, sealed chunks and blocks taken as the
//! replica takes them).

use super::*;
use crate::tsdb::index::{IndexSnapshot, Metadata, SeriesIndex};
use crate::tsdb::mix::{self, Shape};
use crate::tsdb::{Head, HeadConfig};
use argus_common::model::Labels;

const T0: i64 = 1_700_000_000_000;
const MIN: i64 = 60_000;

/// The name, labels and type of series `i` of the mix: 100 series per host, and on each
/// host 10 containers whose cAdvisor labels (id, image, name) recur in several metrics,
/// as they do in practice.
fn identity(i: usize, shape: Shape) -> (String, Labels, MetricType) {
    const MODES: [&str; 8] = [
        "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
    ];
    const NETWORK: [&str; 4] = [
        "receive_bytes",
        "transmit_bytes",
        "receive_packets",
        "transmit_packets",
    ];
    const MEMORY: [&str; 5] = ["working_set", "rss", "cache", "usage", "mapped_file"];
    let h = i / 100;
    let k = i % 100;
    let mut labels: Vec<(String, String)> =
        vec![("instance".into(), format!("web-{h:03}.eu-west-1.prod"))];
    // Container k % 10 of host h; k / 10 picks the metric, so every series is unique.
    let c = k % 10;
    let container = |labels: &mut Vec<(String, String)>| {
        let seed = mix::Rng::new((h * 10 + c) as u64).next_u64();
        labels.push((
            "id".into(),
            format!(
                "/system.slice/docker-{seed:016x}{:048x}.scope",
                seed.rotate_left(17)
            ),
        ));
        labels.push((
            "image".into(),
            format!("registry.example.com/shop/service-{c}:1.{}.0", c % 3),
        ));
        labels.push(("name".into(), format!("service-{c}-{:05x}", seed & 0xfffff)));
    };
    let (name, job, kind) = match shape {
        Shape::FractionalCounter => {
            labels.push(("cpu".into(), (k % 16).to_string()));
            labels.push(("mode".into(), MODES[(k / 16) % 8].into()));
            (
                "node_cpu_seconds_total".to_owned(),
                "node",
                MetricType::Counter,
            )
        }
        Shape::IntegerCounter if k.is_multiple_of(2) => {
            labels.push(("device".into(), format!("eth{k}")));
            (
                "node_network_receive_bytes_total".to_owned(),
                "node",
                MetricType::Counter,
            )
        }
        Shape::IntegerCounter => {
            container(&mut labels);
            labels.push(("interface".into(), format!("eth{}", k / 40)));
            let metric = NETWORK[(k / 10) % 4];
            (
                format!("container_network_{metric}_total"),
                "cadvisor",
                MetricType::Counter,
            )
        }
        Shape::SparseCounter => {
            labels.push(("device".into(), format!("eth{k}")));
            (
                "node_network_receive_errs_total".to_owned(),
                "node",
                MetricType::Counter,
            )
        }
        Shape::BytesGauge => {
            container(&mut labels);
            labels.push(("scope".into(), format!("s{}", k / 50)));
            let metric = MEMORY[(k / 10) % 5];
            (
                format!("container_memory_{metric}_bytes"),
                "cadvisor",
                MetricType::Gauge,
            )
        }
        Shape::DecimalGauge => {
            labels.push((
                "target".into(),
                format!("https://service-{k}.shop.svc.cluster.local/health"),
            ));
            (
                "probe_duration_seconds".to_owned(),
                "blackbox",
                MetricType::Gauge,
            )
        }
        Shape::ConstantGauge => {
            labels.push(("device".into(), format!("/dev/nvme{}n1p{}", k / 10, k % 10)));
            labels.push(("fstype".into(), "ext4".into()));
            labels.push(("mountpoint".into(), format!("/srv/data{k}")));
            (
                "node_filesystem_size_bytes".to_owned(),
                "node",
                MetricType::Gauge,
            )
        }
        Shape::FloatGauge => {
            container(&mut labels);
            (
                format!("container_cpu_load_ratio_{}", k / 10),
                "cadvisor",
                MetricType::Gauge,
            )
        }
    };
    labels.push(("job".into(), job.into()));
    (name, Labels::from_pairs(labels), kind)
}

/// Index, head and aggregator after `minutes` of the mix over `series` series.
fn realistic_load(series: usize, minutes: i64) -> (SeriesIndex, Head, Aggregator) {
    let config = HeadConfig::default();
    let mut index = SeriesIndex::new();
    let mut head = Head::new(config).unwrap();
    let mut agg = Aggregator::new(
        &Tiers::argus_defaults(),
        AggregatorConfig::new(config.ooo_window_ms),
    )
    .unwrap();
    let mut events: Vec<(i64, u64, f64)> = Vec::new();
    let mut counters = Vec::with_capacity(series);
    for (i, spec) in mix::realistic_mix(series, 42).iter().enumerate() {
        let (name, labels, kind) = identity(i, spec.shape);
        let (id, created) = index.get_or_create(&name, &labels).unwrap();
        assert!(created, "series {i} repeats another's labels");
        let metadata = Metadata {
            kind,
            unit: String::new(),
            help: format!("{name} as the exporter documents it."),
        };
        index.set_metadata(&name, metadata).unwrap();
        counters.push(is_counter(kind, &name));
        let n = (minutes * MIN / spec.interval_ms) as usize;
        events.extend(
            mix::generate(spec, T0, n)
                .into_iter()
                .map(|(t, v)| (t, id, v)),
        );
    }
    events.sort_by_key(|e| (e.0, e.1));
    let mut minute = T0 / MIN;
    for (t, id, v) in events {
        if t / MIN != minute {
            minute = t / MIN;
            agg.advance_watermark(t - config.ooo_window_ms);
            head.take_sealed();
            agg.take_blocks();
        }
        if head.append(id, t, v).is_ok() {
            agg.push(id, counters[id as usize], &[(t, v)]);
        }
    }
    head.take_sealed();
    agg.take_blocks();
    (index, head, agg)
}

/// Bytes per series of (index, head, aggregates).
fn parts_per_series(index: &SeriesIndex, head: &Head, agg: &Aggregator) -> [f64; 3] {
    let n = index.len() as f64;
    [
        index.snapshot().to_bytes().unwrap().len() as f64 / n,
        head.checkpoint().unwrap().to_bytes().unwrap().len() as f64 / n,
        agg.encode_state().len() as f64 / n,
    ]
}

/// The parts that had a compact format added stay several times smaller than in their
/// first format on realistic data: the aggregator's state (6x at 30 minutes, 9x at 10)
/// and the index (5x), and both still round-trip.
#[test]
fn checkpoint_parts_are_a_fraction_of_format_1() {
    let (index, _, agg) = realistic_load(300, 30);
    let n = index.len() as f64;
    let v1 = agg.encode_state_v1().len();
    let v2 = agg.encode_state().len();
    assert!(
        v2 * 4 < v1,
        "aggregates: format 2 {v2} bytes, format 1 {v1}"
    );
    assert!(
        v2 as f64 / n < 900.0,
        "aggregates: {:.0} bytes per series",
        v2 as f64 / n
    );
    let config = AggregatorConfig::new(HeadConfig::default().ooo_window_ms);
    let back =
        Aggregator::decode_state(&agg.encode_state(), &Tiers::argus_defaults(), config).unwrap();
    assert_eq!(back.encode_state(), agg.encode_state());

    let snapshot = index.snapshot();
    let v1 = postcard::to_extend(&snapshot, vec![1]).unwrap().len();
    let v2 = snapshot.to_bytes().unwrap();
    assert!(
        v2.len() * 3 < v1,
        "index: format 2 {} bytes, format 1 {v1}",
        v2.len()
    );
    assert_eq!(IndexSnapshot::from_bytes(&v2).unwrap(), snapshot);
}

/// The figures, printed: `cargo test -p argus-coordinator --lib checkpoint_size -- --ignored
/// --nocapture`.
#[test]
#[ignore = "prints figures; run by hand"]
fn print_checkpoint_bytes_per_series() {
    for minutes in [10, 30, 70] {
        let (index, head, agg) = realistic_load(2_000, minutes);
        let [i, h, a] = parts_per_series(&index, &head, &agg);
        let samples = head.stats().open_samples + head.stats().cut_samples;
        println!(
            "{minutes:>3} min, 2000 series: index {i:.0} B, head {h:.0} B ({:.2} B/sample held), \
             aggregates {a:.0} B ({} samples open), total {:.0} B per series",
            h * 2_000.0 / samples as f64,
            agg.open_samples(),
            i + h + a,
        );
        let snapshot = head.checkpoint().unwrap();
        let chunk_bytes: usize = snapshot
            .series
            .iter()
            .flat_map(|s| &s.chunks)
            .map(Vec::len)
            .sum();
        let chunks: usize = snapshot.series.iter().map(|s| s.chunks.len()).sum();
        println!(
            "     head: chunk bytes {:.0} B in {:.2} chunks, framing {:.0} B per series",
            chunk_bytes as f64 / 2_000.0,
            chunks as f64 / 2_000.0,
            h - chunk_bytes as f64 / 2_000.0,
        );
        let (mut raw, mut windows, mut count) = (0usize, 0usize, 0usize);
        for st in agg.series.values() {
            raw += chunk::encode(&st.raw).unwrap().len();
            for l in &st.levels {
                let mut w = l.block.clone();
                w.extend(l.open);
                count += w.len();
                if !w.is_empty() {
                    windows += encode_block(&w).unwrap().len();
                }
            }
        }
        println!(
            "     aggregates: open samples {:.0} B, pending windows {:.0} B ({:.1} windows) per series",
            raw as f64 / 2_000.0,
            windows as f64 / 2_000.0,
            count as f64 / 2_000.0
        );
    }
}

/// Where a pending block's bytes go, column by column: `cargo test -p argus-coordinator
/// --lib checkpoint_size -- --ignored --nocapture`.
#[test]
#[ignore = "prints figures; run by hand"]
fn print_block_bytes_per_column() {
    let (_, _, agg) = realistic_load(2_000, 100);
    let mut per_column = [0usize; 6];
    let (mut blocks, mut windows, mut total, mut xor) = (0usize, 0usize, 0usize, [0usize; 6]);
    for st in agg.series.values() {
        for l in &st.levels {
            let mut w = l.block.clone();
            w.extend(l.open);
            if w.is_empty() {
                continue;
            }
            blocks += 1;
            windows += w.len();
            total += encode_block(&w).unwrap().len();
            let fields: [fn(&Aggregate) -> Option<f64>; 6] = [
                |w| Some(w.min),
                |w| Some(w.max),
                |w| Some(w.sum),
                |w| Some(w.count as f64),
                |w| Some(w.last),
                |w| w.increase,
            ];
            for (i, f) in fields.iter().enumerate() {
                let col: Vec<(i64, f64)> = w
                    .iter()
                    .filter_map(|a| f(a).map(|v| (a.start_ms, v)))
                    .collect();
                if col.is_empty() {
                    continue;
                }
                let bytes = chunk::encode(&col).unwrap();
                if bytes[1] == 0x10 {
                    xor[i] += 1;
                }
                per_column[i] += bytes.len();
            }
        }
    }
    println!(
        "{blocks} blocks, {windows} windows, {:.1} B/window; per column B/window: {}; XOR-coded blocks per column: {xor:?}",
        total as f64 / windows as f64,
        COLUMN_NAMES
            .iter()
            .zip(per_column)
            .map(|(n, b)| format!("{n} {:.2}", b as f64 / windows as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
