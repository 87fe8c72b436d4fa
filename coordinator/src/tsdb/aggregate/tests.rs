use super::*;
use crate::tsdb::tier::TierConfig;
use argus_common::model::stale_nan;
use proptest::prelude::*;
use std::time::Duration;

const MIN: i64 = 60_000;
const STEP_5M: i64 = 5 * MIN;
const STEP_1H: i64 = 60 * MIN;

/// The obvious per-sample computation the real one must match: per-pair deltas, a
/// decrease counting the new value from 0, each delta booked to the window of its sample.
fn naive(samples: &[(i64, f64)], counter: bool, step: i64) -> Vec<Aggregate> {
    let mut out: Vec<Aggregate> = Vec::new();
    let mut previous: Option<f64> = None;
    for &(t, v) in samples {
        if is_stale_nan(v) {
            continue;
        }
        let start = t.div_euclid(step) * step;
        let delta = match previous {
            None => 0.0,
            Some(p) if v >= p => v - p,
            Some(_) => v,
        };
        previous = Some(v);
        if out.last().map(|w| w.start_ms) != Some(start) {
            out.push(Aggregate {
                start_ms: start,
                min: v,
                max: v,
                sum: 0.0,
                count: 0,
                increase: counter.then_some(0.0),
                last: v,
            });
        }
        let w = out.last_mut().unwrap();
        if v < w.min {
            w.min = v;
        }
        if v > w.max {
            w.max = v;
        }
        w.sum += v;
        w.count += 1;
        w.last = v;
        if let Some(inc) = w.increase.as_mut() {
            *inc += delta;
        }
    }
    out
}

fn assert_bit_eq(a: &[Aggregate], b: &[Aggregate]) {
    assert_eq!(a.len(), b.len(), "\n{a:?}\n{b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!(x.bit_eq(y), "\n{x:?}\n{y:?}");
    }
}

/// Strictly ascending timestamps with gaps of 1 s to 20 min, integer values (some
/// counters with resets, some wandering) and now and then a StaleNaN.
fn series() -> impl Strategy<Value = Vec<(i64, f64)>> {
    prop::collection::vec((1_000i64..1_200_000, -50i64..200, 0u8..20), 1..400).prop_map(|steps| {
        let mut t = 1_700_000_000_000i64;
        let mut v = 0i64;
        steps
            .into_iter()
            .map(|(gap, dv, kind)| {
                t += gap;
                match kind {
                    0 => (t, stale_nan()),
                    // A reset: the counter starts again from a small value.
                    1 => {
                        v = dv.abs() % 7;
                        (t, v as f64)
                    }
                    _ => {
                        v += dv.abs();
                        (t, v as f64)
                    }
                }
            })
            .collect()
    })
}

fn tiers_5m_1h() -> Tiers {
    Tiers::new(vec![
        TierConfig::raw(Duration::from_secs(3_600), Duration::from_secs(900)),
        TierConfig::aggregate(
            "5m",
            Duration::from_secs(300),
            Duration::from_secs(86_400),
            Duration::from_secs(7_200),
        ),
        TierConfig::aggregate(
            "1h",
            Duration::from_secs(3_600),
            Duration::from_secs(7 * 86_400),
            Duration::from_secs(86_400),
        ),
    ])
    .unwrap()
}

/// Concatenates the windows of all blocks of `tier`, checking each block stays inside
/// one block span.
fn windows_of(blocks: &[SealedBlock], tier: u8, series: u64) -> Vec<Aggregate> {
    let mut out = Vec::new();
    for b in blocks
        .iter()
        .filter(|b| b.tier == tier && b.series_id == series)
    {
        assert!(!b.windows.is_empty());
        out.extend_from_slice(&b.windows);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn aggregates_match_the_naive_reference(s in series(), counter: bool) {
        for step in [STEP_5M, STEP_1H] {
            assert_bit_eq(&aggregate(&s, counter, step).unwrap(), &naive(&s, counter, step));
        }
    }

    #[test]
    fn window_increases_sum_to_the_total_increase(s in series()) {
        let windows = aggregate(&s, true, STEP_5M).unwrap();
        let by_windows: f64 = windows.iter().map(|w| w.increase.unwrap()).sum();
        // The series' whole increase, pair by pair.
        let live: Vec<f64> = s.iter().map(|x| x.1).filter(|v| !is_stale_nan(*v)).collect();
        let total: f64 = live.windows(2).map(|p| if p[1] >= p[0] { p[1] - p[0] } else { p[1] }).sum();
        prop_assert_eq!(by_windows, total);
    }

    #[test]
    fn five_minute_windows_compose_exactly_into_hours(s in series(), counter: bool) {
        let direct = aggregate(&s, counter, STEP_1H).unwrap();
        let composed = coarsen(&aggregate(&s, counter, STEP_5M).unwrap(), STEP_1H).unwrap();
        assert_bit_eq(&composed, &direct);
    }

    #[test]
    fn decimal_values_aggregate_exactly(
        steps in prop::collection::vec((1_000i64..600_000, 0i64..100_000), 1..300),
    ) {
        // Fractional counters (two decimals, as parsed from text): min, max, count and
        // last are the naive ones; sum and increase are the f64 nearest the decimal
        // result, computed here in integers (cents).
        let mut t = 0i64;
        let mut v = 0i64;
        let cents: Vec<(i64, i64)> = steps
            .into_iter()
            .map(|(gap, dv)| {
                t += gap;
                v += dv;
                (t, v)
            })
            .collect();
        let s: Vec<(i64, f64)> = cents.iter().map(|&(t, c)| (t, c as f64 / 100.0)).collect();
        let got = aggregate(&s, true, STEP_5M).unwrap();
        let want = naive(&s, true, STEP_5M);
        prop_assert_eq!(got.len(), want.len());
        let mut previous_last: Option<i64> = None;
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(
                (g.start_ms, g.min, g.max, g.count, g.last),
                (w.start_ms, w.min, w.max, w.count, w.last)
            );
            let in_window: Vec<i64> = cents
                .iter()
                .filter(|(t, _)| align_down(*t, STEP_5M) == g.start_ms)
                .map(|&(_, c)| c)
                .collect();
            let sum: i64 = in_window.iter().sum();
            prop_assert_eq!(g.sum, sum as f64 / 100.0);
            // Never a reset here: the increase is last minus the value before the window.
            let last = *in_window.last().unwrap();
            let increase = last - previous_last.unwrap_or(in_window[0]);
            prop_assert_eq!(g.increase, Some(increase as f64 / 100.0));
            previous_last = Some(last);
        }
    }

    /// Fed in batches, each pushed newest half first (out of order within the window), the
    /// aggregator seals exactly what aggregating the whole series at once gives, for both
    /// tiers, and nothing is late.
    #[test]
    fn aggregator_matches_one_shot_aggregation(s in series(), counter: bool, batch in 1usize..40) {
        let tiers = tiers_5m_1h();
        let ooo = 10 * MIN;
        let mut agg = Aggregator::new(&tiers, AggregatorConfig::new(ooo)).unwrap();
        let mut blocks = Vec::new();
        let mut i = 0;
        while i < s.len() {
            // A batch spans at most the out-of-order window, so its older half is still
            // accepted after its newer half.
            let t0 = s[i].0;
            let mut j = i + 1;
            while j < s.len() && j - i < batch && s[j].0 - t0 <= ooo {
                j += 1;
            }
            let mid = i + (j - i) / 2;
            let a = agg.push(7, counter, &s[mid..j]);
            let b = agg.push(7, counter, &s[i..mid]);
            prop_assert_eq!(a.late + b.late, 0);
            prop_assert_eq!(a.duplicate + b.duplicate, 0);
            blocks.extend(agg.take_blocks());
            i = j;
        }
        agg.advance_watermark(i64::MAX);
        blocks.extend(agg.take_blocks());
        prop_assert_eq!(agg.open_samples(), 0);
        assert_bit_eq(&windows_of(&blocks, 1, 7), &aggregate(&s, counter, STEP_5M).unwrap());
        assert_bit_eq(&windows_of(&blocks, 2, 7), &aggregate(&s, counter, STEP_1H).unwrap());
        for b in &blocks {
            let span = if b.tier == 1 { 24 * STEP_5M } else { 24 * STEP_1H };
            let first = align_down(b.windows[0].start_ms, span);
            prop_assert!(b.windows.iter().all(|w| align_down(w.start_ms, span) == first));
        }
    }

    #[test]
    fn blocks_round_trip_bit_for_bit(
        windows in prop::collection::vec(
            (1i64..10_000_000, any::<u64>(), any::<u64>(), any::<f64>(), 1u64..1_000_000, prop::option::of(any::<f64>()), any::<f64>()),
            0..200,
        ),
    ) {
        let mut start = -5_000_000i64;
        let windows: Vec<Aggregate> = windows
            .into_iter()
            .map(|(gap, min_bits, max_bits, sum, count, increase, last)| {
                start += gap;
                Aggregate {
                    start_ms: start,
                    min: f64::from_bits(min_bits),
                    max: f64::from_bits(max_bits),
                    sum,
                    count,
                    increase,
                    last,
                }
            })
            .collect();
        let bytes = encode_block(&windows).unwrap();
        assert_bit_eq(&decode_block(&bytes).unwrap(), &windows);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_block(&bytes);
        let mut framed = vec![BLOCK_FORMAT, FLAG_INCREASE];
        framed.extend_from_slice(&bytes);
        let _ = decode_block(&framed);
    }

    #[test]
    fn damaged_blocks_are_refused_or_decoded_never_panic(s in series(), at: prop::sample::Index, xor in 1u8..=255) {
        let windows = aggregate(&s, true, STEP_5M).unwrap();
        let mut bytes = encode_block(&windows).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Ok(decoded) = decode_block(&bytes) {
            prop_assert!(decoded.len() <= chunk::MAX_SAMPLES);
            prop_assert!(decoded.iter().all(|w| w.count >= 1));
        }
        bytes.truncate(i);
        prop_assert!(decode_block(&bytes).is_err());
    }
}

#[test]
fn counter_resets_count_the_new_value_from_zero() {
    // 10, 20, 30 | reset to 5, 15 | 2 (reset), 4.
    let s = [
        (0, 10.0),
        (60_000, 20.0),
        (120_000, 30.0),
        (300_000, 5.0),
        (360_000, 15.0),
        (600_000, 2.0),
        (660_000, 4.0),
    ];
    let w = aggregate(&s, true, STEP_5M).unwrap();
    let inc: Vec<f64> = w.iter().map(|w| w.increase.unwrap()).collect();
    // First window from its own first sample: 20. Second: 30 → 5 is a reset (+5), +10.
    // Third: 15 → 2 a reset (+2), +2.
    assert_eq!(inc, vec![20.0, 15.0, 4.0]);
    assert_eq!(inc.iter().sum::<f64>(), 39.0);
    // Gauges keep no increase.
    assert!(
        aggregate(&s, false, STEP_5M)
            .unwrap()
            .iter()
            .all(|w| w.increase.is_none())
    );
}

#[test]
fn stale_markers_are_left_out_of_every_field() {
    let s = [
        (0, 3.0),
        (60_000, stale_nan()),
        (120_000, 1.0),
        (360_000, stale_nan()),
    ];
    let w = aggregate(&s, true, STEP_5M).unwrap();
    // The second window holds only a marker: no window at all.
    assert_eq!(w.len(), 1);
    let w = w[0];
    assert_eq!(
        (w.min, w.max, w.sum, w.count, w.last),
        (1.0, 3.0, 4.0, 2, 1.0)
    );
    // 3 → 1 is a reset: the increase is 1.
    assert_eq!(w.increase, Some(1.0));
    assert_eq!(w.avg(), 2.0);
}

#[test]
fn ordinary_nan_is_a_value_as_in_prometheus() {
    let s = [(0, 1.0), (1, f64::NAN), (2, 3.0)];
    let w = aggregate(&s, false, STEP_5M).unwrap()[0];
    assert_eq!((w.min, w.max, w.count), (1.0, 3.0, 3));
    assert!(w.sum.is_nan());
}

#[test]
fn windows_sit_on_the_epoch_grid() {
    let w = aggregate(&[(-1, 1.0), (299_999, 2.0), (300_000, 3.0)], false, STEP_5M).unwrap();
    let starts: Vec<i64> = w.iter().map(|w| w.start_ms).collect();
    assert_eq!(starts, vec![-300_000, 0, 300_000]);
    assert_eq!(aggregate(&[], false, 0), Err(AggregateError::BadStep(0)));
}

#[test]
fn is_counter_follows_the_metric_type() {
    assert!(is_counter(MetricType::Counter, "node_cpu_seconds_total"));
    assert!(is_counter(
        MetricType::Histogram,
        "http_request_duration_seconds_bucket"
    ));
    assert!(is_counter(
        MetricType::Summary,
        "rpc_duration_seconds_count"
    ));
    assert!(!is_counter(MetricType::Summary, "rpc_duration_seconds"));
    assert!(!is_counter(MetricType::Gauge, "node_load1"));
}

fn five_minute_only(partition: Duration) -> Tiers {
    Tiers::new(vec![
        TierConfig::raw(Duration::from_secs(3_600), Duration::from_secs(900)),
        TierConfig::aggregate(
            "5m",
            Duration::from_secs(300),
            Duration::from_secs(86_400),
            partition,
        ),
    ])
    .unwrap()
}

#[test]
fn a_window_is_sealed_only_after_the_out_of_order_window_has_closed() {
    // Partitions of one window make every block a single window, so each seal shows.
    let tiers = five_minute_only(Duration::from_secs(300));
    let ooo = 10 * MIN;
    let mut agg = Aggregator::new(&tiers, AggregatorConfig::new(ooo)).unwrap();
    let minutes = |from: i64, to: i64| -> Vec<(i64, f64)> {
        (from..to).map(|m| (m * MIN, m as f64)).collect()
    };

    // Window [0, 5m) is complete at 4m, but samples up to 14m keep it open: the head
    // would still accept a sample at newest - 10m >= 4m.
    agg.push(1, false, &minutes(0, 15));
    assert!(agg.take_blocks().is_empty());
    // At 15m, newest - ooo = 5m = the window's end: sealed.
    agg.push(1, false, &minutes(15, 16));
    let blocks = agg.take_blocks();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].windows[0].start_ms, 0);
    assert_eq!(blocks[0].windows[0].count, 5);

    // Out of order but inside the window (15m - 10m = 5m <= 5.5m): joins window [5m, 10m).
    let o = agg.push(1, false, &[(5 * MIN + 30_000, 100.0)]);
    assert_eq!((o.accepted, o.late), (1, 0));
    // Too old: its window is sealed. Left out of the aggregates and counted.
    let o = agg.push(1, false, &[(4 * MIN + 30_000, -1.0)]);
    assert_eq!((o.accepted, o.late), (0, 1));
    // A timestamp already buffered keeps its first value.
    let o = agg.push(1, false, &[(12 * MIN, -1.0)]);
    assert_eq!(o.duplicate, 1);
    assert_eq!(
        agg.stats(),
        AggregatorStats {
            late: 1,
            duplicate: 1,
            forced: 0
        }
    );

    agg.push(1, false, &minutes(16, 20));
    assert!(agg.take_blocks().is_empty(), "19m - 10m = 9m < 10m");
    agg.push(1, false, &minutes(20, 21));
    let w = agg.take_blocks()[0].windows[0];
    assert_eq!(
        (w.start_ms, w.count, w.max, w.sum),
        (5 * MIN, 6, 100.0, 135.0)
    );

    // A series that stops never closes its own window; the global watermark does.
    agg.push(2, false, &minutes(0, 3));
    assert!(agg.take_blocks().is_empty());
    agg.advance_watermark(4 * MIN);
    assert!(agg.take_blocks().is_empty(), "the window ends at 5m");
    agg.advance_watermark(5 * MIN);
    let blocks = agg.take_blocks();
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0].series_id, blocks[0].windows[0].count), (2, 3));
}

#[test]
fn a_series_far_ahead_of_its_window_is_bounded() {
    // An absurd out-of-order window with 1 ms samples: the buffer would grow without end.
    let tiers = five_minute_only(Duration::from_secs(300));
    let mut agg = Aggregator::new(&tiers, AggregatorConfig::new(24 * STEP_1H)).unwrap();
    let samples: Vec<(i64, f64)> = (0..100_000).map(|t| (t, 1.0)).collect();
    for batch in samples.chunks(10_000) {
        agg.push(1, false, batch);
        assert!(agg.open_samples() <= MAX_OPEN_SAMPLES + 10_000);
    }
    assert!(agg.stats().forced > 0);
    assert!(agg.open_samples() <= MAX_OPEN_SAMPLES);
}

#[test]
fn a_restored_checkpoint_continues_exactly() {
    let tiers = tiers_5m_1h();
    let config = AggregatorConfig::new(10 * MIN);
    let samples: Vec<(i64, f64)> = (0..2_000).map(|i| (i * 37_000, (i * 3) as f64)).collect();
    let (first, second) = samples.split_at(1_234);

    let mut straight = Aggregator::new(&tiers, config).unwrap();
    straight.push(3, true, first);
    let state = straight.encode_state();
    straight.push(3, true, second);
    straight.advance_watermark(i64::MAX);

    let mut restored = Aggregator::decode_state(&state, &tiers, config).unwrap();
    restored.push(3, true, second);
    restored.advance_watermark(i64::MAX);
    assert_eq!(restored.take_blocks(), straight.take_blocks());
    assert_eq!(restored.stats(), straight.stats());

    // Another out-of-order window, another tier set, or damaged bytes are refused.
    assert!(Aggregator::decode_state(&state, &tiers, AggregatorConfig::new(MIN)).is_err());
    let other = five_minute_only(Duration::from_secs(7_200));
    assert!(Aggregator::decode_state(&state, &other, config).is_err());
    assert!(Aggregator::decode_state(&state[..state.len() / 2], &tiers, config).is_err());
    assert!(Aggregator::decode_state(&[], &tiers, config).is_err());
}

#[test]
fn blocks_never_straddle_a_partition() {
    // 35-minute partitions hold 7 windows: blocks of 7 (the largest divisor under 24).
    let tiers = five_minute_only(Duration::from_secs(35 * 60));
    let mut agg = Aggregator::new(&tiers, AggregatorConfig::new(0)).unwrap();
    let samples: Vec<(i64, f64)> = (0..200).map(|m| (m * MIN, 1.0)).collect();
    agg.push(1, false, &samples);
    agg.advance_watermark(i64::MAX);
    let blocks = agg.take_blocks();
    assert!(blocks.iter().all(|b| b.windows.len() <= 7));
    for b in &blocks {
        let p = align_down(b.windows[0].start_ms, 35 * MIN);
        assert!(
            b.windows
                .iter()
                .all(|w| align_down(w.start_ms, 35 * MIN) == p)
        );
    }
    assert_eq!(blocks.iter().map(|b| b.windows.len()).sum::<usize>(), 40);
}

/// One push: series id, counter or not, samples.
type Push = (u64, bool, Vec<(i64, f64)>);

/// Pushes that leave an aggregator holding everything a checkpoint may hold: a counter
/// with a reset, StaleNaN markers, samples out of order and repeated, a NaN payload, a
/// late sample, windows pending in blocks of both aggregate tiers, an open 1 h window, and
/// (unless the caller takes them) sealed blocks not yet taken. The second list continues
/// the first.
fn eventful_pushes() -> [Vec<Push>; 2] {
    // 92 minutes into a 2 h block of the 5 m tier, so a block completes.
    const T: i64 = 1_700_004_723_000;
    let counter: Vec<(i64, f64)> = (0..160i64)
        .map(|i| {
            let v = match i {
                70 => stale_nan(),
                i if i >= 90 => (i - 90) as f64 * 1.5,
                i => i as f64 * 3.0,
            };
            (T + i * 30_000, v)
        })
        .collect();
    let gauge: Vec<(i64, f64)> = (0..50i64)
        .map(|i| {
            let v = if i == 17 {
                f64::from_bits(0x7ff8_0000_0000_1234)
            } else {
                i as f64 * 0.25 - 3.0
            };
            (T + 7_000 + i * 60_000, v)
        })
        .collect();
    let mut before = Vec::new();
    for (n, batch) in counter[..120].chunks(10).enumerate() {
        // Every other batch arrives in reverse order; one sample is sent twice.
        let mut batch = batch.to_vec();
        if n % 2 == 1 {
            batch.reverse();
        }
        if n == 3 {
            batch.push(batch[0]);
        }
        before.push((3, true, batch));
    }
    before.push((9, false, gauge[..40].to_vec()));
    // Far behind what series 3 has sealed: counted as late.
    before.push((3, true, vec![(T + 30_000, 2.0)]));
    let after = vec![
        (3, true, counter[120..].to_vec()),
        (9, false, gauge[40..].to_vec()),
    ];
    [before, after]
}

/// The aggregator after the first list of [`eventful_pushes`], with Argus's tiers.
fn eventful_aggregator() -> Aggregator {
    let mut agg =
        Aggregator::new(&Tiers::argus_defaults(), AggregatorConfig::new(10 * MIN)).unwrap();
    let [before, _] = eventful_pushes();
    for (i, (id, counter, samples)) in before.iter().enumerate() {
        if i == 4 {
            // Blocks sealed before this point were persisted; later ones are pending.
            agg.take_blocks();
        }
        agg.push(*id, *counter, samples);
    }
    agg
}

/// Blocks compared bit for bit, so NaN sums compare equal to themselves.
fn assert_same_blocks(a: &[SealedBlock], b: &[SealedBlock]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.tier, x.series_id), (y.tier, y.series_id));
        assert_bit_eq(&x.windows, &y.windows);
    }
}

/// Feeds the second list of [`eventful_pushes`], closes every window, and hands out all
/// blocks.
fn finish(mut agg: Aggregator) -> (Vec<SealedBlock>, AggregatorStats) {
    let [_, after] = eventful_pushes();
    for (id, counter, samples) in &after {
        agg.push(*id, *counter, samples);
    }
    agg.advance_watermark(i64::MAX);
    (agg.take_blocks(), agg.stats())
}

#[test]
fn the_eventful_state_holds_what_it_claims() {
    let agg = eventful_aggregator();
    assert!(!agg.out.is_empty(), "blocks sealed but not taken");
    assert_eq!(agg.stats.late, 1);
    assert_eq!(agg.stats.duplicate, 1);
    let counter = &agg.series[&3];
    assert!(!counter.raw.is_empty() && counter.carry.is_some());
    assert!(!counter.levels[0].block.is_empty(), "5 m windows pending");
    assert!(counter.levels[1].open.is_some(), "an open 1 h window");
    let (blocks, _) = finish(eventful_aggregator());
    let nan_sum = blocks
        .iter()
        .flat_map(|b| &b.windows)
        .any(|w| w.sum.to_bits() == 0x7ff8_0000_0000_1234);
    assert!(
        nan_sum,
        "the NaN payload reaches a window's sum bit for bit"
    );
}

#[test]
fn state_round_trips_exactly_and_continues_as_if_never_written() {
    let tiers = Tiers::argus_defaults();
    let config = AggregatorConfig::new(10 * MIN);
    let agg = eventful_aggregator();
    let bytes = agg.encode_state();
    assert_eq!(bytes[0], STATE_FORMAT);
    let restored = Aggregator::decode_state(&bytes, &tiers, config).unwrap();
    assert_eq!(restored.encode_state(), bytes);
    for (id, st) in &agg.series {
        let back = &restored.series[id];
        let bits = |raw: &[(i64, f64)]| -> Vec<(i64, u64)> {
            raw.iter().map(|&(t, v)| (t, v.to_bits())).collect()
        };
        assert_eq!(bits(&back.raw), bits(&st.raw), "series {id}");
        assert_eq!(
            (back.newest, back.sealed_until, back.counter),
            (st.newest, st.sealed_until, st.counter)
        );
    }
    let (want, want_stats) = finish(agg);
    let (got, got_stats) = finish(restored);
    assert_same_blocks(&got, &want);
    assert_eq!(got_stats, want_stats);
}

/// Version 1 bytes written by the build before format 2 (the same pushes): checkpoints
/// outlive binaries, so they must still load, and continue exactly.
const STATE_V1: &[u8] = include_bytes!("state-v1.bin");

#[test]
fn format_1_states_still_load() {
    let tiers = Tiers::argus_defaults();
    let config = AggregatorConfig::new(10 * MIN);
    // The fallback writer still writes what the old build wrote.
    assert_eq!(eventful_aggregator().encode_state_v1(), STATE_V1);
    let old = Aggregator::decode_state(STATE_V1, &tiers, config).unwrap();
    assert_eq!(old.encode_state(), eventful_aggregator().encode_state());
    let (got, got_stats) = finish(old);
    let (want, want_stats) = finish(eventful_aggregator());
    assert_same_blocks(&got, &want);
    assert_eq!(got_stats, want_stats);
    // Small: its few samples and windows leave format 2 less to gain than on realistic
    // data (see `checkpoint_size`).
    let v2 = eventful_aggregator().encode_state().len();
    assert!(
        v2 * 3 < STATE_V1.len() * 2,
        "{v2} bytes in format 2, {} in format 1",
        STATE_V1.len()
    );
}

#[test]
fn damaged_states_are_refused_never_panic() {
    let tiers = Tiers::argus_defaults();
    let config = AggregatorConfig::new(10 * MIN);
    for bytes in [eventful_aggregator().encode_state(), STATE_V1.to_vec()] {
        for len in 0..bytes.len() {
            assert!(
                Aggregator::decode_state(&bytes[..len], &tiers, config).is_err(),
                "cut at {len} of {}",
                bytes.len()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Aggregator::decode_state(&longer, &tiers, config).is_err());
        for at in 0..bytes.len() {
            for xor in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= xor;
                // A flip inside a value may still decode; it must not panic, and what it
                // gives must be usable.
                if let Ok(mut agg) = Aggregator::decode_state(&damaged, &tiers, config) {
                    agg.push(3, true, &[(i64::MAX - 1, 1.0)]);
                    agg.advance_watermark(i64::MAX);
                    agg.take_blocks();
                }
            }
        }
    }
    let mut unknown = eventful_aggregator().encode_state();
    unknown[0] = STATE_FORMAT + 1;
    let err = Aggregator::decode_state(&unknown, &tiers, config).unwrap_err();
    assert!(err.to_string().contains("format version 4"), "{err}");
}

/// What a breakage is called, and what it does to series 3.
type Breakage = (&'static str, fn(&mut SeriesState));

#[test]
fn states_breaking_an_invariant_are_refused_in_either_format() {
    let tiers = Tiers::argus_defaults();
    let config = AggregatorConfig::new(10 * MIN);
    let breakages: [Breakage; 7] = [
        ("unsorted raw", |st| st.raw.reverse()),
        ("stale raw", |st| st.raw[0].1 = stale_nan()),
        ("raw before sealed", |st| st.sealed_until = st.raw[1].0),
        ("raw after newest", |st| st.newest = st.raw[0].0),
        ("open finest window", |st| {
            st.levels[0].open = st.levels[0].block.first().copied()
        }),
        ("off-grid window", |st| st.levels[0].block[0].start_ms += 1),
        ("open before pending", |st| {
            let mut open = st.levels[1].open.unwrap();
            open.start_ms = i64::MIN;
            st.levels[1].open = Some(open);
            st.levels[1].block.push(open);
            st.levels[1].block[0].start_ms = 0;
        }),
    ];
    for (what, breakage) in breakages {
        let mut agg = eventful_aggregator();
        breakage(agg.series.get_mut(&3).unwrap());
        for bytes in [agg.encode_state(), agg.encode_state_v1()] {
            assert!(
                Aggregator::decode_state(&bytes, &tiers, config).is_err(),
                "{what} (format {})",
                bytes[0]
            );
        }
    }
    // An unsent block reaching into another block span.
    let mut agg = eventful_aggregator();
    let mut far = agg.out[0].windows[0];
    far.start_ms += 7 * 86_400_000;
    agg.out[0].windows.push(far);
    for bytes in [agg.encode_state(), agg.encode_state_v1()] {
        assert!(
            Aggregator::decode_state(&bytes, &tiers, config).is_err(),
            "format {}",
            bytes[0]
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A checkpoint at any point, with samples out of order, StaleNaN and NaN payloads,
    /// changes nothing of what comes out.
    #[test]
    fn a_checkpoint_anywhere_changes_nothing(
        s in series(),
        counter: bool,
        split: prop::sample::Index,
        batch in 1usize..30,
        nan: prop::sample::Index,
    ) {
        let tiers = tiers_5m_1h();
        let config = AggregatorConfig::new(10 * MIN);
        let mut s = s;
        let at = nan.index(s.len());
        s[at].1 = f64::from_bits(0x7ff8_dead_beef_0001);
        let (first, second) = s.split_at(split.index(s.len() + 1));
        let mut straight = Aggregator::new(&tiers, config).unwrap();
        let feed = |agg: &mut Aggregator, part: &[(i64, f64)]| {
            for (n, b) in part.chunks(batch).enumerate() {
                let mut b = b.to_vec();
                if n % 3 == 1 {
                    b.reverse();
                }
                agg.push(5, counter, &b);
            }
        };
        feed(&mut straight, first);
        let bytes = straight.encode_state();
        let mut restored = Aggregator::decode_state(&bytes, &tiers, config).unwrap();
        prop_assert_eq!(restored.encode_state(), bytes);
        feed(&mut straight, second);
        feed(&mut restored, second);
        straight.advance_watermark(i64::MAX);
        restored.advance_watermark(i64::MAX);
        assert_same_blocks(&restored.take_blocks(), &straight.take_blocks());
        prop_assert_eq!(restored.stats(), straight.stats());
    }

    /// A checkpoint without the open samples, restored with them read back from what
    /// the head accepted (here every sample pushed: timestamps are unique, as the head
    /// makes them), is the same aggregator as one that never stopped.
    #[test]
    fn a_checkpoint_without_samples_restores_them_from_the_source(
        s in series(),
        counter: bool,
        split: prop::sample::Index,
        batch in 1usize..30,
    ) {
        let tiers = tiers_5m_1h();
        let config = AggregatorConfig::new(10 * MIN);
        let mut s = s;
        let mut seen = std::collections::HashSet::new();
        s.retain(|x| seen.insert(x.0));
        let (first, second) = s.split_at(split.index(s.len() + 1));
        let mut straight = Aggregator::new(&tiers, config).unwrap();
        for b in first.chunks(batch) {
            straight.push(5, counter, b);
        }
        let bytes = straight.encode_state_without_samples();
        prop_assert_eq!(&bytes[..2], &[STATE_FORMAT, 0]);
        if straight.open_samples() > 0 {
            prop_assert!(Aggregator::decode_state(&bytes, &tiers, config).is_err());
        }
        let mut asked = Vec::new();
        let mut restored = Aggregator::decode_state_with(&bytes, &tiers, config, &mut |id, from, to| {
            asked.push(id);
            Ok(first.iter().copied().filter(|x| (from..=to).contains(&x.0)).collect())
        })
        .unwrap();
        prop_assert!(asked.iter().all(|&id| id == 5));
        prop_assert_eq!(restored.encode_state(), straight.encode_state());
        for b in second.chunks(batch) {
            straight.push(5, counter, b);
            restored.push(5, counter, b);
        }
        straight.advance_watermark(i64::MAX);
        restored.advance_watermark(i64::MAX);
        assert_same_blocks(&restored.take_blocks(), &straight.take_blocks());
        prop_assert_eq!(restored.stats(), straight.stats());
    }

    #[test]
    fn arbitrary_state_bytes_never_panic(
        version in 1u8..=3,
        bytes in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut b = vec![version];
        b.extend_from_slice(&bytes);
        let _ = Aggregator::decode_state(&b, &tiers_5m_1h(), AggregatorConfig::new(10 * MIN));
    }
}

/// Format 1 as the binaries before format 2 wrote it: every column a chunk timestamped
/// with the window starts.
fn encode_block_v1(windows: &[Aggregate]) -> Vec<u8> {
    let has_increase = windows.iter().any(|w| w.increase.is_some());
    let mut out = vec![
        BLOCK_FORMAT_V1,
        if has_increase { FLAG_INCREASE } else { 0 },
    ];
    put_varint(&mut out, windows.len() as u64);
    let columns = if has_increase { 6 } else { 5 };
    for i in 0..columns {
        let column: Vec<(i64, f64)> = windows
            .iter()
            .filter_map(|w| field(w, i).map(|v| (w.start_ms, v)))
            .collect();
        let bytes = chunk::encode(&column).unwrap();
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(&bytes);
    }
    out
}

#[test]
fn format_1_blocks_still_decode_and_format_2_is_smaller() {
    let mut s: Vec<(i64, f64)> = (0..600)
        .map(|i| (i * 15_000, 100.0 + i as f64 * 0.25))
        .collect();
    // A reset and a sparse stretch, so the increase column and gaps are exercised.
    s.extend((600..700).map(|i| (i * 15_000 + 3_600_000, (i - 600) as f64 * 1.5)));
    let windows = aggregate(&s, true, STEP_5M).unwrap();
    let v1 = encode_block_v1(&windows);
    let v2 = encode_block(&windows).unwrap();
    assert_bit_eq(&decode_block(&v1).unwrap(), &windows);
    assert_bit_eq(&decode_block(&v2).unwrap(), &windows);
    assert!(
        v2.len() < v1.len(),
        "format 2 {} bytes, format 1 {}",
        v2.len(),
        v1.len()
    );
    // A gauge: no increase column.
    let gauge = aggregate(&s, false, STEP_5M).unwrap();
    assert_bit_eq(&decode_block(&encode_block_v1(&gauge)).unwrap(), &gauge);
}

#[test]
fn decimal_sums_are_exact_and_compose_exactly() {
    // 0.1 + 0.2 in floats is 0.30000000000000004; the window keeps the decimal sum.
    let s = [
        (0, 0.1),
        (15_000, 0.2),
        (30_000, 0.4),
        (320_000, 0.7),
        (330_000, 0.1),
    ];
    let w = aggregate(&s, true, STEP_5M).unwrap();
    assert_eq!(w[0].sum, 0.7);
    assert_eq!(w[0].increase, Some(0.3));
    assert_eq!(w[1].increase, Some(0.4));
    // The 10-minute window composed from the two 5-minute ones equals the one
    // aggregated from the raw samples, bit for bit.
    let direct = aggregate(&s, true, 2 * STEP_5M).unwrap();
    let composed = coarsen(&w, 2 * STEP_5M).unwrap();
    assert_bit_eq(&composed, &direct);
    assert_eq!(direct[0].sum, 1.5);
    assert_eq!(direct[0].increase, Some(0.7));
}
