use super::*;
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied())
}

fn m(op: MatchOp, name: &str, value: &str) -> Matcher {
    Matcher::new(op, name, value).expect("valid matcher")
}

use MatchOp::{Equal as EQ, NotEqual as NE, RegexMatch as RE, RegexNoMatch as NRE};

/// A small fleet: two hosts' node metrics, a probe and an `up` without `job`.
fn fleet() -> (SeriesIndex, Vec<SeriesId>) {
    let mut idx = SeriesIndex::new();
    let defs: [(&str, &[(&str, &str)]); 6] = [
        ("up", &[("instance", "a"), ("job", "node")]),
        ("up", &[("instance", "b"), ("job", "node")]),
        ("node_load1", &[("instance", "a"), ("job", "node")]),
        (
            "node_cpu_seconds_total",
            &[
                ("cpu", "0"),
                ("instance", "a"),
                ("job", "node"),
                ("mode", "idle"),
            ],
        ),
        (
            "probe_success",
            &[("instance", "https://x\ny"), ("job", "blackbox")],
        ),
        ("up", &[("instance", "c")]),
    ];
    let ids = defs
        .iter()
        .map(|(name, l)| idx.get_or_create(name, &labels(l)).unwrap().0)
        .collect();
    (idx, ids)
}

#[test]
fn ids_are_sequential_and_never_reused() {
    let (mut idx, ids) = fleet();
    assert_eq!(ids, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(
        idx.get_or_create("up", &labels(&[("job", "node"), ("instance", "b")]))
            .unwrap(),
        (1, false)
    );
    assert_eq!(
        idx.lookup("up", &labels(&[("instance", "b"), ("job", "node")])),
        Some(1)
    );
    assert_eq!(idx.remove(&[1, 99]), 1);
    assert_eq!(
        idx.lookup("up", &labels(&[("instance", "b"), ("job", "node")])),
        None
    );
    assert_eq!(
        idx.get_or_create("up", &labels(&[("instance", "b"), ("job", "node")]))
            .unwrap(),
        (6, true)
    );
    // Another node applying the same sequence assigns the same ids.
    let (mut other, _) = fleet();
    other.remove(&[1]);
    assert_eq!(
        other
            .get_or_create("up", &labels(&[("instance", "b"), ("job", "node")]))
            .unwrap()
            .0,
        6
    );
    assert_eq!(other.snapshot(), idx.snapshot());
}

#[test]
fn an_empty_label_value_is_the_same_as_no_label() {
    let mut idx = SeriesIndex::new();
    let (a, _) = idx.get_or_create("up", &labels(&[("job", "x")])).unwrap();
    let (b, created) = idx
        .get_or_create("up", &labels(&[("job", "x"), ("zone", "")]))
        .unwrap();
    assert_eq!((a, created), (b, false));
    assert_eq!(idx.series(a).unwrap().labels, labels(&[("job", "x")]));
}

#[test]
fn bad_names_are_refused() {
    let mut idx = SeriesIndex::new();
    assert_eq!(
        idx.get_or_create("1up", &Labels::new()),
        Err(TsdbError::InvalidMetricName("1up".into()))
    );
    assert_eq!(
        idx.get_or_create("up", &labels(&[("__meta_x", "1")])),
        Err(TsdbError::ReservedLabelName("__meta_x".into()))
    );
    assert_eq!(
        idx.get_or_create("up", &labels(&[("__name__", "other")])),
        Err(TsdbError::ReservedLabelName("__name__".into()))
    );
    assert_eq!(
        idx.get_or_create("up", &labels(&[("a-b", "1")])),
        Err(TsdbError::InvalidLabelName("a-b".into()))
    );
    // Labels decoded from the network need not be sorted.
    let unsorted: Labels = serde_json::from_str(r#"[["b","1"],["a","2"]]"#).unwrap();
    assert_eq!(
        idx.get_or_create("up", &unsorted),
        Err(TsdbError::UnsortedLabels)
    );
    assert!(idx.is_empty());
}

#[test]
fn matchers_follow_prometheus() {
    let (idx, _) = fleet();
    let cases: Vec<(Vec<Matcher>, Vec<SeriesId>)> = vec![
        (vec![m(EQ, "__name__", "up")], vec![0, 1, 5]),
        (vec![m(EQ, "job", "node")], vec![0, 1, 2, 3]),
        (vec![m(EQ, "__name__", "up"), m(NE, "job", "node")], vec![5]),
        (vec![m(EQ, "__name__", "up"), m(EQ, "job", "")], vec![5]),
        (vec![m(EQ, "__name__", "up"), m(NE, "job", "")], vec![0, 1]),
        (vec![m(RE, "__name__", "node_.*")], vec![2, 3]),
        // Fully anchored: "node" does not match "node_load1".
        (vec![m(RE, "__name__", "node")], vec![]),
        (
            vec![
                m(RE, "__name__", "up|node_load1"),
                m(NRE, "instance", "a|c"),
            ],
            vec![1],
        ),
        (vec![m(RE, "job", "n.*|black.*")], vec![0, 1, 2, 3, 4]),
        (vec![m(RE, "job", ".+")], vec![0, 1, 2, 3, 4]),
        (vec![m(EQ, "__name__", "up"), m(RE, "job", "")], vec![5]),
        (vec![m(EQ, "__name__", "up"), m(NRE, "job", ".*")], vec![]),
        // `.` matches a newline, as in Prometheus.
        (vec![m(RE, "instance", "https://.*")], vec![4]),
        (
            vec![m(EQ, "job", "node"), m(EQ, "nosuch", "")],
            vec![0, 1, 2, 3],
        ),
        (vec![m(EQ, "nosuch", "x")], vec![]),
        (
            vec![
                m(EQ, "__name__", "up"),
                m(EQ, "instance", "a"),
                m(EQ, "job", "node"),
            ],
            vec![0],
        ),
    ];
    for (matchers, want) in cases {
        assert_eq!(idx.select(&matchers).unwrap(), want, "{matchers:?}");
    }
}

#[test]
fn a_selector_must_not_match_everything() {
    let (idx, _) = fleet();
    for matchers in [
        vec![],
        vec![m(RE, "job", ".*")],
        vec![m(NE, "job", "node")],
        vec![m(EQ, "job", "")],
        vec![m(NRE, "job", "node"), m(RE, "__name__", ".*")],
    ] {
        assert_eq!(
            idx.select(&matchers),
            Err(TsdbError::EmptySelector),
            "{matchers:?}"
        );
    }
}

#[test]
fn hostile_or_invalid_regexes_are_refused() {
    for re in [
        "(a{1000}){1000}",
        "(",
        "[z-a]",
        &"a".repeat(MAX_REGEX_LEN + 1),
    ] {
        match Matcher::new(RE, "job", re) {
            Err(TsdbError::BadRegex { label, .. }) => assert_eq!(label, "job"),
            other => panic!("{re:.20}: {other:?}"),
        }
    }
}

#[test]
fn label_names_values_and_metadata() {
    let (mut idx, _) = fleet();
    assert_eq!(
        idx.label_names(),
        vec!["__name__", "cpu", "instance", "job", "mode"]
    );
    assert_eq!(idx.label_values("job"), vec!["blackbox", "node"]);
    assert_eq!(
        idx.label_values("__name__"),
        vec![
            "node_cpu_seconds_total",
            "node_load1",
            "probe_success",
            "up"
        ]
    );
    assert!(idx.label_values("nosuch").is_empty());

    let meta = Metadata {
        kind: MetricType::Gauge,
        unit: String::new(),
        help: "1-minute load".into(),
    };
    idx.set_metadata("node_load1", meta.clone()).unwrap();
    assert_eq!(idx.metadata("node_load1"), Some(&meta));
    assert!(idx.set_metadata("bad name", meta.clone()).is_err());

    // Removing the last series of a metric drops its postings and metadata.
    idx.remove(&[2, 3]);
    assert_eq!(idx.metadata("node_load1"), None);
    assert_eq!(idx.label_names(), vec!["__name__", "instance", "job"]);
    assert_eq!(idx.label_values("__name__"), vec!["probe_success", "up"]);
    assert_eq!(idx.select(&[m(EQ, "job", "node")]).unwrap(), vec![0, 1]);
}

#[test]
fn snapshots_restore_the_same_index() {
    let (mut idx, _) = fleet();
    idx.remove(&[2]);
    idx.set_metadata(
        "up",
        Metadata {
            kind: MetricType::Gauge,
            unit: String::new(),
            help: "ok".into(),
        },
    )
    .unwrap();
    let bytes = idx.snapshot().to_bytes().unwrap();
    let mut back = SeriesIndex::restore(IndexSnapshot::from_bytes(&bytes).unwrap()).unwrap();
    assert_eq!(back.snapshot(), idx.snapshot());
    assert_eq!(back.select(&[m(EQ, "job", "node")]).unwrap(), vec![0, 1, 3]);
    assert_eq!(
        back.get_or_create("new", &Labels::new()).unwrap(),
        (6, true)
    );

    let mut newer = bytes.clone();
    newer[0] = INDEX_SNAPSHOT_VERSION + 1;
    assert!(matches!(
        IndexSnapshot::from_bytes(&newer),
        Err(TsdbError::UnsupportedVersion { .. })
    ));
    assert!(IndexSnapshot::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    assert!(IndexSnapshot::from_bytes(&[]).is_err());
}

#[test]
fn corrupt_snapshots_are_refused() {
    let series = |name: &str| Series {
        name: name.into(),
        labels: Labels::new(),
    };
    let bad = [
        IndexSnapshot {
            next_id: 1,
            series: vec![(1, series("up"))],
            metadata: vec![],
        },
        IndexSnapshot {
            next_id: 5,
            series: vec![(1, series("up")), (1, series("x"))],
            metadata: vec![],
        },
        IndexSnapshot {
            next_id: 5,
            series: vec![(1, series("up")), (2, series("up"))],
            metadata: vec![],
        },
        IndexSnapshot {
            next_id: 5,
            series: vec![(1, series("1up"))],
            metadata: vec![],
        },
    ];
    for s in bad {
        assert!(SeriesIndex::restore(s.clone()).is_err(), "{s:?}");
    }
}

const NAMES: [&str; 3] = ["up", "node_load1", "x"];
const KEYS: [&str; 3] = ["job", "instance", "zone"];
const VALUES: [&str; 4] = ["", "a", "b", "ab"];

fn arb_series() -> impl Strategy<Value = (usize, Vec<usize>)> {
    (
        0..NAMES.len(),
        proptest::collection::vec(0..VALUES.len(), KEYS.len()),
    )
}

fn arb_matcher() -> impl Strategy<Value = Matcher> {
    let ops = prop_oneof![Just(EQ), Just(NE), Just(RE), Just(NRE)];
    let labels = prop_oneof![
        Just("__name__"),
        Just("job"),
        Just("instance"),
        Just("zone"),
        Just("nosuch")
    ];
    let values = prop_oneof![
        Just(""),
        Just("a"),
        Just("b"),
        Just("up"),
        Just("a.*"),
        Just(".*"),
        Just(".+"),
        Just("a|b"),
        Just("x|up")
    ];
    (ops, labels, values).prop_map(|(op, l, v)| m(op, l, v))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The postings agree with checking every series against the matchers directly, after
    /// any sequence of creations and removals, and a snapshot restores the same answers.
    #[test]
    fn select_agrees_with_brute_force(
        ops in proptest::collection::vec((any::<bool>(), arb_series()), 1..40),
        selectors in proptest::collection::vec(proptest::collection::vec(arb_matcher(), 1..4), 1..8),
    ) {
        let mut idx = SeriesIndex::new();
        for (create, (name, vals)) in &ops {
            let l = Labels::from_pairs(KEYS.iter().zip(vals).map(|(k, &v)| (*k, VALUES[v])));
            if *create {
                idx.get_or_create(NAMES[*name], &l).unwrap();
            } else if let Some(id) = idx.lookup(NAMES[*name], &l) {
                idx.remove(&[id]);
            }
        }
        let restored = SeriesIndex::restore(
            IndexSnapshot::from_bytes(&idx.snapshot().to_bytes().unwrap()).unwrap(),
        ).unwrap();
        for matchers in &selectors {
            let want: Vec<SeriesId> = idx
                .iter()
                .filter(|(_, s)| matchers.iter().all(|m| {
                    let v = if m.name() == METRIC_NAME_LABEL { Some(s.name.as_str()) } else { s.labels.get(m.name()) };
                    m.matches(v.unwrap_or(""))
                }))
                .map(|(id, _)| id)
                .collect();
            match idx.select(matchers) {
                Ok(got) => prop_assert_eq!(&got, &want),
                Err(e) => {
                    prop_assert_eq!(e, TsdbError::EmptySelector);
                    prop_assert!(matchers.iter().all(|m| m.matches("")));
                }
            }
            prop_assert_eq!(idx.select(matchers), restored.select(matchers));
        }
    }

    #[test]
    fn arbitrary_snapshot_bytes_never_panic(
        version in 1u8..=2,
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut b = vec![version];
        b.extend_from_slice(&bytes);
        if let Ok(s) = IndexSnapshot::from_bytes(&b) {
            let _ = SeriesIndex::restore(s);
        }
    }
}

/// The fleet with a gap in its ids and metadata: what the format tests encode.
fn fleet_snapshot() -> IndexSnapshot {
    let (mut idx, _) = fleet();
    idx.remove(&[2]);
    idx.set_metadata(
        "up",
        Metadata {
            kind: MetricType::Gauge,
            unit: String::new(),
            help: "1 if the target answered.".into(),
        },
    )
    .unwrap();
    idx.set_metadata(
        "node_cpu_seconds_total",
        Metadata {
            kind: MetricType::Counter,
            unit: "seconds".into(),
            help: "Seconds the CPUs spent in each mode.".into(),
        },
    )
    .unwrap();
    idx.snapshot()
}

/// Version 1 bytes of [`fleet_snapshot`], as the build before format 2 wrote them:
/// checkpoints outlive binaries, so they must still load.
const SNAPSHOT_V1: &[u8] = include_bytes!("snapshot-v1.bin");

#[test]
fn format_1_snapshots_still_load() {
    // Format 1 is the version byte and postcard of the unchanged struct.
    let v1 = postcard::to_extend(&fleet_snapshot(), vec![1]).unwrap();
    assert_eq!(v1, SNAPSHOT_V1);
    assert_eq!(
        IndexSnapshot::from_bytes(SNAPSHOT_V1).unwrap(),
        fleet_snapshot()
    );
    let mut longer = SNAPSHOT_V1.to_vec();
    longer.push(0);
    assert!(IndexSnapshot::from_bytes(&longer).is_err());
}

#[test]
fn format_2_round_trips_and_names_each_string_once() {
    let snapshot = fleet_snapshot();
    let bytes = snapshot.to_bytes().unwrap();
    assert_eq!(bytes[0], INDEX_SNAPSHOT_VERSION);
    let back = IndexSnapshot::from_bytes(&bytes).unwrap();
    assert_eq!(back, snapshot);
    assert_eq!(back.to_bytes().unwrap(), bytes, "deterministic");
    // "instance", "job" and "node" recur in most series but are written once each.
    let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(count(b"instance"), 1);
    assert_eq!(count(b"node"), 1 + count(b"node_cpu_seconds_total"));
    assert!(
        bytes.len() < SNAPSHOT_V1.len(),
        "{} vs {}",
        bytes.len(),
        SNAPSHOT_V1.len()
    );

    let empty = SeriesIndex::new().snapshot();
    assert_eq!(
        IndexSnapshot::from_bytes(&empty.to_bytes().unwrap()).unwrap(),
        empty
    );
}

#[test]
fn damaged_format_2_snapshots_are_refused_never_panic() {
    let bytes = fleet_snapshot().to_bytes().unwrap();
    for len in 0..bytes.len() {
        assert!(
            IndexSnapshot::from_bytes(&bytes[..len]).is_err(),
            "cut at {len}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(IndexSnapshot::from_bytes(&longer).is_err());
    for at in 1..bytes.len() {
        for xor in [0x01, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[at] ^= xor;
            if let Ok(s) = IndexSnapshot::from_bytes(&damaged) {
                let _ = SeriesIndex::restore(s);
            }
        }
    }
    // Hand-made: [version, next id, strings..., series..., metadata count].
    let cases: [(&str, &[u8]); 4] = [
        ("not UTF-8", &[2, 5, 1, 2, 0xc3, 0x28, 0, 0]),
        (
            "position past the table",
            &[2, 5, 1, 2, b'u', b'p', 1, 0, 1, 0, 0],
        ),
        (
            "labels out of order",
            &[
                2, 5, 3, 1, b'x', 1, b'b', 1, b'a', 1, 0, 0, 2, 1, 0, 2, 0, 0,
            ],
        ),
        (
            "bad metric type",
            &[2, 5, 1, 2, b'u', b'p', 0, 1, 0, 99, 0, 0],
        ),
    ];
    for (what, b) in cases {
        assert!(IndexSnapshot::from_bytes(b).is_err(), "{what}");
    }
}

/// One long string named by a thousand series would copy 64 MiB out of 70 KiB: refused
/// before it is built.
#[test]
fn strings_cannot_expand_without_bound() {
    let long = vec![b'a'; 1 << 16];
    let mut b = vec![2, 0];
    b.push(1);
    b.extend_from_slice(&[0x80, 0x80, 0x04]); // 65,536
    b.extend_from_slice(&long);
    b.extend_from_slice(&[0xe8, 0x07]); // 1,000 series
    for _ in 0..1_000 {
        b.extend_from_slice(&[0, 0, 0]);
    }
    b.push(0);
    let err = IndexSnapshot::from_bytes(&b).unwrap_err();
    assert!(err.to_string().contains("expand"), "{err}");
}
