use super::*;
use argus_common::model::{STALE_NAN_BITS, stale_nan};
use proptest::prelude::*;
use std::collections::BTreeMap;

const T0: i64 = 1_700_000_400_000; // a multiple of 2 h plus 400 s
const S: i64 = 15_000;

fn head() -> Head {
    Head::new(HeadConfig::default()).unwrap()
}

fn all(h: &Head, id: SeriesId) -> Vec<(i64, u64)> {
    h.select(id, i64::MIN, i64::MAX)
        .unwrap()
        .map(|(t, v)| (t, v.to_bits()))
        .collect()
}

fn decoded(c: &SealedChunk) -> Vec<(i64, f64)> {
    chunk::decode(&c.bytes).unwrap()
}

#[test]
fn chunks_are_cut_at_the_sample_count_and_sealed_once_the_window_closes() {
    let mut h = head();
    // Start on a 2 h boundary so only the sample count cuts.
    let start = T0 - T0.rem_euclid(7_200_000);
    for k in 0..=160 {
        h.append(7, start + k * S, k as f64).unwrap();
        if k < 160 {
            // Chunk 0 ends at 119·15 s; the window is 600 s: it closes at sample 160.
            assert!(h.take_sealed().is_empty(), "sealed too early at sample {k}");
        }
    }
    let sealed = h.take_sealed();
    assert_eq!(sealed.len(), 1);
    let c = &sealed[0];
    assert_eq!(
        (c.series, c.min_t, c.max_t, c.samples),
        (7, start, start + 119 * S, 120)
    );
    assert_eq!(
        decoded(c),
        (0..120)
            .map(|k| (start + k * S, k as f64))
            .collect::<Vec<_>>()
    );
    // Taken chunks are no longer the head's; the rest still is.
    assert_eq!(all(&h, 7).len(), 41);
    assert_eq!(all(&h, 7)[0].0, start + 120 * S);
    let st = h.stats();
    assert_eq!((st.series, st.open_samples, st.cut_chunks), (1, 41, 0));
}

#[test]
fn chunks_never_cross_the_chunk_range() {
    let mut h = head();
    let boundary = T0 - T0.rem_euclid(7_200_000) + 7_200_000;
    for k in -10..200 {
        h.append(1, boundary + k * S, 1.0).unwrap();
    }
    let sealed = h.take_sealed();
    assert_eq!(sealed[0].max_t, boundary - S);
    assert_eq!(sealed[0].samples, 10);
    assert_eq!(sealed[1].min_t, boundary);
    for c in &sealed {
        assert_eq!(c.min_t.div_euclid(7_200_000), c.max_t.div_euclid(7_200_000));
    }
}

#[test]
fn late_samples_within_the_window_land_in_order() {
    let mut h = head();
    // Every other grid slot first, then the missing ones, newest first.
    for k in (0..130).step_by(2) {
        h.append(3, T0 + k * S, k as f64).unwrap();
    }
    for k in (0..64).rev().map(|j| 2 * j + 1) {
        let r = h.append(3, T0 + k * S, k as f64);
        let age = 128 * S - k * S;
        if age <= 600_000 {
            assert_eq!(r, Ok(()), "slot {k}");
        } else {
            assert_eq!(r, Err(Refusal::TooOld), "slot {k}");
        }
    }
    let got = all(&h, 3);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    // 65 even slots, and the odd ones within 600 s of the newest (t = 128·15 s).
    assert_eq!(
        got.len(),
        65 + (1..128)
            .step_by(2)
            .filter(|k| (128 - k) * S <= 600_000)
            .count()
    );
    // The window's edge is inclusive: slot 88 is a duplicate, not too old.
    assert_eq!(
        h.append(3, T0 + 128 * S - 600_001, 0.0),
        Err(Refusal::TooOld)
    );
    assert_eq!(
        h.append(3, T0 + 128 * S - 600_000, 88.0),
        Err(Refusal::Duplicate)
    );
}

#[test]
fn duplicates_are_told_apart_by_value_bits() {
    let mut h = head();
    h.append(1, T0, 1.5).unwrap();
    h.append(1, T0 + S, stale_nan()).unwrap();
    assert_eq!(h.append(1, T0, 1.5), Err(Refusal::Duplicate));
    assert_eq!(h.append(1, T0, 2.5), Err(Refusal::DuplicateTimestamp));
    assert_eq!(h.append(1, T0 + S, stale_nan()), Err(Refusal::Duplicate));
    assert_eq!(
        h.append(1, T0 + S, f64::NAN),
        Err(Refusal::DuplicateTimestamp)
    );
    assert_eq!(
        all(&h, 1),
        vec![(T0, 1.5f64.to_bits()), (T0 + S, STALE_NAN_BITS)]
    );
    // Another series is independent.
    h.append(2, T0 - 3_600_000, 1.0).unwrap();
    assert_eq!(Refusal::DuplicateTimestamp.reason(), "duplicate_timestamp");
}

#[test]
fn a_late_sample_in_an_earlier_range_gets_its_own_chunk() {
    let cfg = HeadConfig {
        chunk_samples: 120,
        chunk_range_ms: 60_000,
        ooo_window_ms: 600_000,
    };
    let mut h = Head::new(cfg).unwrap();
    h.append(1, 120_000, 1.0).unwrap();
    h.append(1, 125_000, 2.0).unwrap();
    h.append(1, 30_000, 3.0).unwrap(); // range 0, before the open chunk in range 2
    h.append(1, 90_000, 4.0).unwrap(); // range 1
    h.append(1, 121_000, 5.0).unwrap(); // into the open chunk
    assert_eq!(
        all(&h, 1).iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![30_000, 90_000, 120_000, 121_000, 125_000]
    );
    h.append(1, 800_000, 6.0).unwrap();
    let sealed = h.take_sealed();
    assert_eq!(
        sealed
            .iter()
            .map(|c| (c.min_t, c.max_t))
            .collect::<Vec<_>>(),
        vec![(30_000, 30_000), (90_000, 90_000), (120_000, 125_000)]
    );
}

#[test]
fn idle_series_are_sealed_and_stay_sealed() {
    let mut h = head();
    for k in 0..10 {
        h.append(1, T0 + k * S, 1.0).unwrap();
        h.append(2, T0 + k * S, 2.0).unwrap();
    }
    h.append(2, T0 + 3_600_000, 2.0).unwrap();
    // Series 1 last wrote at T0+135 s; series 2 is recent.
    assert_eq!(h.seal_idle(T0 + 3_600_000, 1_800_000), 1);
    let sealed = h.take_sealed();
    assert_eq!(sealed.len(), 1);
    assert_eq!((sealed[0].series, sealed[0].samples), (1, 10));
    // Within the window of its newest sample, but already sealed: refused.
    assert_eq!(h.append(1, T0 + 9 * S, 1.0), Err(Refusal::TooOld));
    assert_eq!(h.append(1, T0 + 9 * S - 1, 1.0), Err(Refusal::TooOld));
    h.append(1, T0 + 10 * S, 1.0).unwrap();
    assert_eq!(all(&h, 1), vec![(T0 + 10 * S, 1f64.to_bits())]);
    assert_eq!(h.seal_idle(T0 + 3_600_000, 1_800_000), 1);
}

#[test]
fn removed_series_are_forgotten() {
    let mut h = head();
    for k in 0..200 {
        h.append(1, T0 + k * S, 1.0).unwrap();
    }
    assert!(h.remove_series(1));
    assert!(!h.remove_series(1));
    assert!(h.take_sealed().is_empty());
    assert_eq!(all(&h, 1), vec![]);
    assert_eq!(h.newest(1), None);
    h.append(1, T0, 1.0).unwrap();
}

#[test]
fn config_is_validated() {
    for (cfg, key) in [
        (
            HeadConfig {
                chunk_samples: 0,
                ..HeadConfig::default()
            },
            "chunk_samples",
        ),
        (
            HeadConfig {
                chunk_samples: MAX_SAMPLES,
                ..HeadConfig::default()
            },
            "chunk_samples",
        ),
        (
            HeadConfig {
                chunk_range_ms: 0,
                ..HeadConfig::default()
            },
            "chunk_range_ms",
        ),
        (
            HeadConfig {
                ooo_window_ms: -1,
                ..HeadConfig::default()
            },
            "ooo_window_ms",
        ),
    ] {
        match Head::new(cfg) {
            Err(TsdbError::Config { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{cfg:?}: {other:?}"),
        }
    }
}

#[test]
fn select_honours_the_range_and_includes_sealed_chunks_not_yet_taken() {
    let mut h = head();
    for k in 0..300 {
        h.append(1, T0 + k * S, k as f64).unwrap();
    }
    assert!(h.stats().sealed_chunks > 0);
    let got: Vec<i64> = h
        .select(1, T0 + 10 * S, T0 + 250 * S)
        .unwrap()
        .map(|s| s.0)
        .collect();
    assert_eq!(got, (10..=250).map(|k| T0 + k * S).collect::<Vec<_>>());
    assert_eq!(h.select(2, i64::MIN, i64::MAX).unwrap().count(), 0);
}

#[test]
fn memory_per_series_stays_small() {
    let mut h = head();
    // 1,000 series at 15 s, sealed chunks taken as the persistence layer would; memory
    // measured at every step of the second and third chunk (steady state).
    let (mut sum, mut max, mut n) = (0, 0, 0);
    for k in 0..360 {
        for id in 0..1_000 {
            h.append(id, T0 + k * S, (id % 7) as f64 + k as f64 * 0.25)
                .unwrap();
        }
        h.take_sealed();
        if k >= 120 {
            let per_series = h.stats().approx_memory_bytes / 1_000;
            sum += per_series;
            max = max.max(per_series);
            n += 1;
        }
    }
    let mean = sum / n;
    println!("head memory: {mean} bytes/series on average, {max} at most (15 s, 10 min window)");
    assert!(mean < 2_000, "{mean} bytes/series on average");
    assert!(max < 2_800, "{max} bytes/series at most");
}

#[test]
fn corrupt_snapshots_are_refused() {
    let mut h = head();
    for k in 0..150 {
        h.append(1, T0 + k * S, 1.0).unwrap();
    }
    let good = h.checkpoint().unwrap();
    let series = good.series[0].clone();
    let enc = |s: &[(i64, f64)]| chunk::encode(s).unwrap();
    let mutate = |f: &dyn Fn(&mut SeriesSnapshot)| {
        let mut snap = good.clone();
        f(&mut snap.series[0]);
        snap
    };
    let bad = [
        mutate(&|s| s.newest = Some(T0)),
        mutate(&|s| s.newest = None),
        mutate(&|s| s.sealed_through = Some(T0 + 200 * S)),
        mutate(&|s| s.chunks[0] = vec![1, 2, 3]),
        mutate(&|s| s.chunks[0] = enc(&[(T0, 1.0), (T0, 2.0)])),
        mutate(&|s| s.chunks[0] = enc(&[])),
        mutate(&|s| s.chunks.reverse()),
        mutate(&|s| {
            s.chunks.clear();
        }),
        HeadSnapshot {
            series: vec![series.clone(), series.clone()],
            sealed: vec![],
        },
        HeadSnapshot {
            series: vec![],
            sealed: vec![SealedChunk {
                series: 1,
                min_t: 0,
                max_t: 5,
                samples: 1,
                bytes: enc(&[(0, 1.0)]),
            }],
        },
    ];
    for snap in bad {
        assert!(
            Head::restore(HeadConfig::default(), snap.clone()).is_err(),
            "{snap:?}"
        );
    }
    let bytes = good.to_bytes().unwrap();
    let mut newer = bytes.clone();
    newer[0] += 1;
    assert!(matches!(
        HeadSnapshot::from_bytes(&newer),
        Err(TsdbError::UnsupportedVersion { .. })
    ));
    assert!(HeadSnapshot::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let back = Head::restore(
        HeadConfig::default(),
        HeadSnapshot::from_bytes(&bytes).unwrap(),
    )
    .unwrap();
    assert_eq!(all(&back, 1), all(&h, 1));
}

/// One step of a random workload.
#[derive(Debug, Clone)]
enum Op {
    /// Series, time step from the series' newest (may be negative), value choice.
    Append(u64, i64, u8),
    Take,
    Restore,
    SealIdle(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (0u64..3, -400i64..200, 0u8..6).prop_map(|(s, d, v)| Op::Append(s, d, v)),
        1 => Just(Op::Take),
        1 => Just(Op::Restore),
        1 => (0i64..2_000).prop_map(Op::SealIdle),
    ]
}

fn value(choice: u8, t: i64) -> f64 {
    match choice {
        0 => stale_nan(),
        1 => f64::from_bits(0x7ff8_0000_0000_0bad),
        2 => -0.0,
        _ => (t % 17) as f64 * 0.5,
    }
}

#[derive(Default)]
struct Model {
    samples: BTreeMap<i64, u64>,
    newest: Option<i64>,
    sealed_through: Option<i64>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The head refuses exactly what the rules say, and what it hands out (sealed
    /// chunks in the order taken, then what it still holds) is every accepted sample,
    /// in order, exactly once, with chunks inside their range and size bounds; a head
    /// restored from checkpoints along the way ends identical to one never restored.
    #[test]
    fn head_matches_the_model(
        chunk_samples in 2usize..8,
        chunk_range_ms in prop_oneof![Just(50i64), Just(400), Just(1_000_000)],
        ooo_window_ms in 0i64..300,
        ops in proptest::collection::vec(op(), 1..250),
    ) {
        let cfg = HeadConfig { chunk_samples, chunk_range_ms, ooo_window_ms };
        let mut h = Head::new(cfg).unwrap();
        let mut twin = Head::new(cfg).unwrap();
        let mut models: BTreeMap<u64, Model> = BTreeMap::new();
        let mut handed: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
        let mut clock = 1_000i64;
        let take = |h: &mut Head, twin: &mut Head, handed: &mut BTreeMap<u64, Vec<(i64, u64)>>| {
            let sealed = h.take_sealed();
            assert_eq!(sealed, twin.take_sealed());
            for c in sealed {
                let samples = decoded(&c);
                assert_eq!(samples.len(), c.samples as usize);
                assert!(samples.len() <= 2 * chunk_samples);
                assert_eq!((samples[0].0, samples[samples.len() - 1].0), (c.min_t, c.max_t));
                assert_eq!(c.min_t.div_euclid(chunk_range_ms), c.max_t.div_euclid(chunk_range_ms));
                handed.entry(c.series).or_default().extend(samples.iter().map(|&(t, v)| (t, v.to_bits())));
            }
        };
        for op in ops {
            match op {
                Op::Append(id, step, choice) => {
                    let m = models.entry(id).or_default();
                    let t = m.newest.unwrap_or(clock) + step;
                    clock = clock.max(t);
                    let v = value(choice, t);
                    let want = if m.sealed_through.is_some_and(|st| t <= st)
                        || m.newest.is_some_and(|n| t < n - ooo_window_ms)
                    {
                        Err(Refusal::TooOld)
                    } else if let Some(&bits) = m.samples.get(&t) {
                        Err(if bits == v.to_bits() { Refusal::Duplicate } else { Refusal::DuplicateTimestamp })
                    } else {
                        m.samples.insert(t, v.to_bits());
                        m.newest = Some(m.newest.map_or(t, |n| n.max(t)));
                        Ok(())
                    };
                    prop_assert_eq!(h.append(id, t, v), want);
                    prop_assert_eq!(twin.append(id, t, v), want);
                }
                Op::Take => take(&mut h, &mut twin, &mut handed),
                Op::Restore => {
                    let bytes = h.checkpoint().unwrap().to_bytes().unwrap();
                    h = Head::restore(cfg, HeadSnapshot::from_bytes(&bytes).unwrap()).unwrap();
                }
                Op::SealIdle(idle) => {
                    for m in models.values_mut() {
                        let holds = m.samples.keys().next_back().is_some_and(|&t| m.sealed_through.is_none_or(|st| t > st));
                        if holds && m.newest.is_some_and(|n| n < clock - idle) {
                            m.sealed_through = m.newest;
                        }
                    }
                    prop_assert_eq!(h.seal_idle(clock, idle), twin.seal_idle(clock, idle));
                }
            }
        }
        prop_assert_eq!(h.checkpoint().unwrap(), twin.checkpoint().unwrap());
        take(&mut h, &mut twin, &mut handed);
        for (id, m) in &models {
            let mut got = handed.get(id).cloned().unwrap_or_default();
            got.extend(all(&h, *id));
            let want: Vec<(i64, u64)> = m.samples.iter().map(|(&t, &b)| (t, b)).collect();
            prop_assert_eq!(got, want, "series {}", id);
        }
    }

    #[test]
    fn arbitrary_snapshot_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut b = vec![HEAD_SNAPSHOT_VERSION];
        b.extend_from_slice(&bytes);
        if let Ok(s) = HeadSnapshot::from_bytes(&b) {
            let _ = Head::restore(HeadConfig::default(), s);
        }
    }
}
