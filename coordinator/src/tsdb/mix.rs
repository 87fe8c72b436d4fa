//! A deterministic, realistic mix of monitoring samples, shared by the codec's
//! regression tests and the compression benchmark so both measure the same thing.
//!
//! The shapes are what node_exporter, cAdvisor and blackbox_exporter expose:
//! - fractional counters: `node_cpu_seconds_total`, parsed from text with two decimals,
//!   growing by a per-series rate with ±20 % noise per interval;
//! - integer counters: `node_network_receive_bytes_total`, bursty increments;
//! - sparse counters: `node_network_receive_errs_total`, `node_vmstat_oom_kill`: mostly
//!   flat, now and then a small step;
//! - wandering gauges: memory bytes moving in 4 KiB pages, and two-decimal gauges like
//!   `node_load1` doing a bounded random walk;
//! - constant gauges: `node_memory_MemTotal_bytes`, `up`;
//! - float gauges: ratios computed in floating point (not decimal; the XOR path).
//!
//! Intervals are 1, 5, 10 or 15 s; timestamps are either on the exact grid (an agent's
//! scheduled tick) or jittered by up to ±[`JITTER_MS`] (a Prometheus scrape).

/// Largest timestamp jitter, in ms, of a jittered series.
pub const JITTER_MS: i64 = 10;

/// Intervals a mixed series is drawn from, in ms.
pub const INTERVALS_MS: [i64; 4] = [1_000, 5_000, 10_000, 15_000];

/// What kind of series to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    FractionalCounter,
    IntegerCounter,
    SparseCounter,
    BytesGauge,
    DecimalGauge,
    ConstantGauge,
    FloatGauge,
}

impl Shape {
    pub const ALL: [Shape; 7] = [
        Shape::FractionalCounter,
        Shape::IntegerCounter,
        Shape::SparseCounter,
        Shape::BytesGauge,
        Shape::DecimalGauge,
        Shape::ConstantGauge,
        Shape::FloatGauge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::FractionalCounter => "fractional counter",
            Shape::IntegerCounter => "integer counter",
            Shape::SparseCounter => "sparse counter",
            Shape::BytesGauge => "bytes gauge",
            Shape::DecimalGauge => "decimal gauge",
            Shape::ConstantGauge => "constant gauge",
            Shape::FloatGauge => "float gauge",
        }
    }
}

/// One series of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesSpec {
    pub shape: Shape,
    pub interval_ms: i64,
    pub jitter: bool,
    pub seed: u64,
}

/// splitmix64: tiny, seedable and stable across releases, unlike a library RNG.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi] (inclusive).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as i64
    }
}

/// `n` samples of a series starting at `start_ms`.
pub fn generate(spec: &SeriesSpec, start_ms: i64, n: usize) -> Vec<(i64, f64)> {
    let mut rng = Rng::new(spec.seed);
    let mut out = Vec::with_capacity(n);
    // Per-series parameters.
    let cpu_rate = rng.unit(); // seconds of CPU per second, 0..1
    let mut hundredths = rng.range(0, 100_000_000); // counter value ×100
    let byte_rate = rng.range(1_000, 1_000_000) as f64; // bytes per second
    let mut bytes = rng.range(0, 1 << 40);
    let mut events = rng.range(0, 1_000);
    let mut pages = rng.range(100_000, 4_000_000); // 4 KiB pages
    let mut centi = rng.range(0, 800); // gauge ×100
    let constant = [1.0, 16_777_216_000.0, 8.0, 0.0][rng.range(0, 3) as usize];
    let float_phase = rng.unit();
    let secs = spec.interval_ms as f64 / 1000.0;
    for i in 0..n {
        let jitter = if spec.jitter {
            rng.range(-JITTER_MS, JITTER_MS)
        } else {
            0
        };
        let t = start_ms + i as i64 * spec.interval_ms + jitter;
        let v = match spec.shape {
            Shape::FractionalCounter => {
                let noise = 0.8 + 0.4 * rng.unit();
                hundredths += (cpu_rate * secs * 100.0 * noise).round() as i64;
                hundredths as f64 / 100.0
            }
            Shape::IntegerCounter => {
                let burst = if rng.unit() < 0.1 { 5.0 } else { 1.0 };
                bytes += (byte_rate * secs * burst * (0.5 + rng.unit())).round() as i64;
                bytes as f64
            }
            Shape::SparseCounter => {
                if rng.unit() < 0.03 {
                    events += rng.range(1, 3);
                }
                events as f64
            }
            Shape::BytesGauge => {
                pages += rng.range(-64, 64);
                (pages * 4096) as f64
            }
            Shape::DecimalGauge => {
                centi = (centi + rng.range(-5, 5)).clamp(0, 1_600);
                centi as f64 / 100.0
            }
            Shape::ConstantGauge => constant,
            Shape::FloatGauge => {
                let x = float_phase + i as f64 * 0.01;
                (x.sin() * 0.5 + 0.5) * (1.0 + 0.01 * rng.unit()) / 3.0
            }
        };
        out.push((t, v));
    }
    out
}

/// The mix as `count` series specs: shares of 20 % fractional counters, 15 % integer
/// counters, 15 % sparse counters, 15 % bytes gauges, 10 % decimal gauges, 20 % constant
/// gauges and 5 % float gauges; intervals spread evenly over [`INTERVALS_MS`]; half the
/// series jittered.
pub fn realistic_mix(count: usize, seed: u64) -> Vec<SeriesSpec> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let pick = rng.range(0, 99);
            let shape = match pick {
                0..=19 => Shape::FractionalCounter,
                20..=34 => Shape::IntegerCounter,
                35..=49 => Shape::SparseCounter,
                50..=64 => Shape::BytesGauge,
                65..=74 => Shape::DecimalGauge,
                75..=94 => Shape::ConstantGauge,
                _ => Shape::FloatGauge,
            };
            SeriesSpec {
                shape,
                interval_ms: INTERVALS_MS[rng.range(0, 3) as usize],
                jitter: rng.range(0, 1) == 1,
                seed: rng.next_u64(),
            }
        })
        .collect()
}
