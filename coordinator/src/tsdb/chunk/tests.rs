use super::*;
use crate::tsdb::mix::{self, SeriesSpec, Shape};
use argus_common::model::{STALE_NAN_BITS, stale_nan};
use proptest::prelude::*;

fn bits(samples: &[(i64, f64)]) -> Vec<(i64, u64)> {
    samples.iter().map(|&(t, v)| (t, v.to_bits())).collect()
}

fn round_trip(samples: &[(i64, f64)]) -> Vec<u8> {
    let bytes = encode(samples).expect("within MAX_SAMPLES");
    let back = decode(&bytes).expect("own encoding decodes");
    assert_eq!(bits(&back), bits(samples));
    assert_eq!(stats(&bytes).expect("header").samples, samples.len());
    bytes
}

/// Values as they occur, plus every edge case a float can be.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        (any::<i32>(), 0u32..=12).prop_map(|(m, k)| f64::from(m) / 10f64.powi(k as i32)),
        (-1_000_000i64..1_000_000).prop_map(|m| m as f64 / 100.0),
        Just(stale_nan()),
        Just(f64::NAN),
        Just(-f64::NAN),
        Just(f64::from_bits(0x7ff8_0000_dead_beef)),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(0.0),
        Just(f64::MIN_POSITIVE / 4.0),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(9_007_199_254_740_993.0),
        Just(0.1 + 0.2),
    ]
}

/// Timestamps: a grid with optional jitter and gaps, or anything at all.
fn timestamps(n: usize) -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        (
            any::<i64>(),
            1i64..100_000,
            proptest::collection::vec(-20i64..20, n),
        )
            .prop_map(|(start, step, jitter)| {
                jitter
                    .iter()
                    .enumerate()
                    .map(|(i, j)| {
                        start
                            .wrapping_add(step.wrapping_mul(i as i64))
                            .wrapping_add(*j)
                    })
                    .collect()
            }),
        proptest::collection::vec(any::<i64>(), n).prop_map(|mut v| {
            v.sort_unstable();
            v
        }),
        proptest::collection::vec(any::<i64>(), n),
        Just(vec![i64::MIN; n]),
    ]
}

fn samples() -> impl Strategy<Value = Vec<(i64, f64)>> {
    (0usize..300).prop_flat_map(|n| {
        (timestamps(n), proptest::collection::vec(value(), n))
            .prop_map(|(t, v)| t.into_iter().zip(v).collect())
    })
}

/// Mostly-decimal values with a few oddities, the case the exception list is for.
fn mostly_decimal() -> impl Strategy<Value = Vec<(i64, f64)>> {
    proptest::collection::vec((0i64..1_000, 0u8..20), 1..250).prop_map(|steps| {
        let mut m = 0i64;
        steps
            .iter()
            .enumerate()
            .map(|(i, &(d, odd))| {
                m += d;
                let v = match odd {
                    0 => stale_nan(),
                    1 => -0.0,
                    2 => 0.1 + 0.2,
                    _ => m as f64 / 1000.0,
                };
                (1_700_000_000_000 + i as i64 * 15_000, v)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_samples_round_trip_bit_for_bit(s in samples()) {
        round_trip(&s);
    }

    #[test]
    fn mostly_decimal_values_round_trip(s in mostly_decimal()) {
        round_trip(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
        let _ = stats(&bytes);
        // The same bytes behind a valid header reach the bit-stream decoders.
        for codec in [CODEC_XOR, 2] {
            let mut b = vec![FORMAT_VERSION, codec, 100];
            b.extend_from_slice(&bytes);
            if let Ok(out) = decode(&b) {
                prop_assert_eq!(out.len(), 100);
            }
        }
    }

    #[test]
    fn corrupted_chunks_never_panic(s in samples(), flips in proptest::collection::vec(any::<usize>(), 1..4), cut in any::<usize>()) {
        let bytes = encode(&s).expect("within MAX_SAMPLES");
        let mut bad = bytes.clone();
        for f in &flips {
            let bit = f % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
        }
        if let Ok(out) = decode(&bad) {
            prop_assert!(out.len() <= MAX_SAMPLES);
        }
        let _ = decode(&bytes[..cut % (bytes.len() + 1)]);
    }
}

#[test]
fn stale_nan_and_nan_payloads_keep_their_bits() {
    let mut s: Vec<(i64, f64)> = (0..119).map(|i| (i * 15_000, 12.5 + i as f64)).collect();
    s.push((119 * 15_000, stale_nan()));
    let bytes = round_trip(&s);
    assert_eq!(
        stats(&bytes).unwrap().codec,
        ValueCodec::Decimal { scale: 1 }
    );
    let back = decode(&bytes).unwrap();
    assert_eq!(back[119].1.to_bits(), STALE_NAN_BITS);

    let payloads: Vec<(i64, f64)> = [STALE_NAN_BITS, 0x7ff8_0000_0000_0001, 0xfff0_0000_0000_0001]
        .iter()
        .enumerate()
        .map(|(i, &b)| (i as i64, f64::from_bits(b)))
        .collect();
    round_trip(&payloads);
}

#[test]
fn codec_follows_the_data() {
    let counter: Vec<(i64, f64)> = (0..120)
        .map(|i| (i * 1000, 1234.56 + i as f64 * 0.37))
        .collect();
    assert_eq!(
        stats(&round_trip(&counter)).unwrap().codec,
        ValueCodec::Decimal { scale: 2 }
    );
    let ints: Vec<(i64, f64)> = (0..120).map(|i| (i * 1000, (i * i) as f64)).collect();
    assert_eq!(
        stats(&round_trip(&ints)).unwrap().codec,
        ValueCodec::Decimal { scale: 0 }
    );
    let floats: Vec<(i64, f64)> = (0..120)
        .map(|i| (i * 1000, (i as f64 * 0.1).sin() / 3.0))
        .collect();
    assert_eq!(stats(&round_trip(&floats)).unwrap().codec, ValueCodec::Xor);
}

#[test]
fn edges_of_the_format() {
    assert_eq!(decode(&round_trip(&[])).unwrap(), vec![]);
    round_trip(&[(i64::MIN, f64::MAX)]);
    round_trip(&[(i64::MIN, 1.0), (i64::MAX, -1.0), (i64::MIN, 0.5)]);

    assert_eq!(decode(&[]), Err(ChunkError::Header));
    assert_eq!(decode(&[FORMAT_VERSION]), Err(ChunkError::Header));
    assert_eq!(decode(&[9, 0, 0]), Err(ChunkError::UnsupportedVersion(9)));
    assert_eq!(
        decode(&[FORMAT_VERSION, 0x42, 0]),
        Err(ChunkError::UnknownCodec(0x42))
    );
    assert_eq!(
        decode(&[FORMAT_VERSION, CODEC_XOR, 0, 0]),
        Err(ChunkError::TrailingBytes(1))
    );
    assert_eq!(
        decode(&[FORMAT_VERSION, CODEC_XOR, 5]),
        Err(ChunkError::Truncated)
    );
    // A count over the cap is refused before anything is allocated.
    let mut huge = vec![FORMAT_VERSION, CODEC_XOR];
    put_varint(&mut huge, u64::MAX);
    assert_eq!(decode(&huge), Err(ChunkError::TooManySamples(u64::MAX)));

    let too_many = vec![(0, 0.0); MAX_SAMPLES + 1];
    assert_eq!(
        encode(&too_many),
        Err(ChunkError::TooManySamples(MAX_SAMPLES as u64 + 1))
    );
    let most: Vec<(i64, f64)> = (0..MAX_SAMPLES as i64).map(|i| (i, 1.0)).collect();
    round_trip(&most);
}

#[test]
fn a_chunk_whose_runs_overflow_its_count_is_refused() {
    // A grid with one late sample at the end: the timestamp residuals are a run of
    // zeros and one nonzero value. Claiming fewer samples makes the run too long.
    let mut s: Vec<(i64, f64)> = (0..100).map(|i| (i * 1000, 7.0)).collect();
    s[99].0 += 5;
    let mut bytes = encode(&s).unwrap();
    assert_eq!(bytes[2], 100);
    bytes[2] = 50;
    assert!(
        matches!(decode(&bytes), Err(ChunkError::Malformed(_))),
        "{:?}",
        decode(&bytes)
    );
}

/// Bytes per sample of one shape over `series` series of 120-sample chunks.
fn measure(shape: Shape, interval_ms: i64, jitter: bool) -> f64 {
    let mut total = 0.0;
    let series = 20;
    for seed in 0..series {
        let spec = SeriesSpec {
            shape,
            interval_ms,
            jitter,
            seed,
        };
        let s = mix::generate(&spec, 1_700_000_000_000, 360);
        for c in s.chunks(120) {
            round_trip(c);
        }
        total += bytes_per_sample(&s, 120).unwrap();
    }
    total / series as f64
}

/// The figures a regression would move (print them with `--nocapture`). Measured when
/// the codec was written, as the largest over the four intervals, without / with jitter:
/// fractional counter 1.22 / 1.90, integer counter 3.25 / 3.92, sparse counter
/// 0.22 / 0.90, bytes gauge 1.19 / 1.87, decimal gauge 0.64 / 1.32, constant gauge
/// 0.14 / 0.82, float gauge 6.89 / 7.57; the whole mix 1.56. Jitter of ±10 ms costs
/// about 0.68 bytes/sample in timestamps whatever the values. The bounds sit 20–30 %
/// above, except the float gauge's, which is near the 8.x bytes a raw sample would cost
/// anyway.
#[test]
fn realistic_mix_stays_compact() {
    let bounds = [
        // (shape, bound on an exact grid, bound with ±10 ms jitter)
        (Shape::FractionalCounter, 1.5, 2.3),
        (Shape::IntegerCounter, 4.0, 4.7),
        (Shape::SparseCounter, 0.3, 1.1),
        (Shape::BytesGauge, 1.5, 2.3),
        (Shape::DecimalGauge, 0.8, 1.6),
        (Shape::ConstantGauge, 0.18, 1.0),
        (Shape::FloatGauge, 7.3, 8.0),
    ];
    for (shape, plain_bound, jitter_bound) in bounds {
        for interval in mix::INTERVALS_MS {
            for jitter in [false, true] {
                let bps = measure(shape, interval, jitter);
                let bound = if jitter { jitter_bound } else { plain_bound };
                println!(
                    "{:<20} {:>3}s jitter={:<5} {:.3} bytes/sample (bound {bound})",
                    shape.name(),
                    interval / 1000,
                    jitter,
                    bps
                );
                assert!(
                    bps < bound,
                    "{} at {interval} ms jitter={jitter}: {bps:.3} ≥ {bound}",
                    shape.name()
                );
            }
        }
    }
    // The whole mix, as the benchmark writes it.
    let specs = mix::realistic_mix(300, 7);
    let (mut bytes, mut n) = (0.0, 0usize);
    for spec in &specs {
        let s = mix::generate(spec, 1_700_000_000_000, 240);
        bytes += bytes_per_sample(&s, 120).unwrap() * s.len() as f64;
        n += s.len();
    }
    let overall = bytes / n as f64;
    println!("realistic mix overall: {overall:.3} bytes/sample");
    assert!(overall < 1.9, "realistic mix: {overall:.3} bytes/sample");
}

#[test]
fn integers_past_2_pow_53_stay_decimal() {
    // A byte counter past 9 PB: even integers, exactly representable, still scale 0.
    let s: Vec<(i64, f64)> = (0..120)
        .map(|i| (i * 1000, 9_007_199_254_740_992.0 + (i * 4096) as f64))
        .collect();
    let bytes = round_trip(&s);
    assert_eq!(
        stats(&bytes).unwrap().codec,
        ValueCodec::Decimal { scale: 0 }
    );
    round_trip(&[(0, 9.2e18), (1, -9.2e18), (2, 1e300), (3, -1e-300)]);
}
