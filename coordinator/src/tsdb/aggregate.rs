//! Downsampling: per-step aggregate windows of one series, and the [`Aggregator`] that
//! seals them once the out-of-order window has closed.
//!
//! An [`Aggregate`] holds min, max, sum, count and last of the window's samples, and for
//! counters the reset-adjusted increase, so `rate` and `increase` over old ranges stay
//! right after the raw samples are gone.
//!
//! **Windows** start on the step grid counted from the Unix epoch (`start = t - t mod
//! step`), so windows of every series and every node line up, and a coarser window (whose
//! step is a multiple, see [`super::tier`]) is exactly a run of finer ones.
//!
//! **StaleNaN** samples are left out: they end a series, they are not values, and they must
//! not turn min, max or sum into NaN. A window holding only stale markers produces nothing.
//! Any other NaN is a value, treated as Prometheus's `*_over_time` functions treat it:
//! min and max skip it unless every value is NaN, sum becomes NaN.
//!
//! **Counter increase.** The increase of window W is the reset-adjusted difference between
//! W's last sample and the last sample before W (the "carry"; for the very first window,
//! W's own first sample). A decrease is a reset, and the value after it counts as increase
//! from 0, as in Prometheus. Computed as `(last - reference) + Σ value before each reset`,
//! which equals the sum of per-pair deltas; adjacent windows therefore telescope, and the
//! increases of all windows sum to the increase of the whole series.
//!
//! **Exactness.** Sums and increases of decimal values (what exporters print: `1234.56`)
//! are added as scaled integers, so a window holds the f64 nearest the true decimal sum
//! and stays a short decimal the column codec stores in a byte or two (see
//! [`DecimalSum`]). Composing windows (5 m → 1 h) is therefore exact for min, max, count
//! and last always, and for sum and increase whenever the values are decimal (below
//! 2^63 once scaled) or the partial sums are exactly representable; otherwise float
//! addition is not associative, and the results agree to rounding.
//!
//! **Sealing.** A window may only be written once no sample can join it any more. The
//! head accepts a sample of a series if it is no older than that series' newest timestamp
//! minus the out-of-order window, so a window whose end is at or before `newest - ooo` is
//! final: the [`Aggregator`] seals it then. It must be fed the samples the head accepted,
//! in apply order, so its idea of "newest" is the head's. A series that stops never
//! advances its own clock; [`Aggregator::advance_watermark`] seals such windows against a
//! global watermark the caller chooses (newest timestamp seen minus the out-of-order
//! window, or the leader's time from the log); a sample that later lands in a window
//! already sealed is refused from the aggregates and counted (`late`); the raw tier still
//! has it. Everything is deterministic: no clocks, ordered maps only.
//!
//! **Cascade.** The aggregator serves every aggregate tier at once: raw samples make the
//! finest windows, and each sealed window of a tier is merged into the open window of the
//! next coarser tier. So a 1-day tier never buffers a day of raw samples, and the coarse
//! tiers are exactly what aggregating the finer tier gives.
//!
//! **Blocks.** Sealed windows are handed out in blocks: the windows of one series inside a
//! span of `step × k` aligned on the epoch grid, with k at most
//! [`DEFAULT_BLOCK_WINDOWS`] and dividing the tier's partition, so a block never straddles
//! a partition. Writing a block rather than a window per key keeps the per-value overhead
//! small and lets the column codec see runs. A block is released once the series'
//! frontier passes its end; replaying the log after a restart rebuilds the same blocks
//! with the same keys.
//!
//! **On disk** a block is one value: a format byte, a flags byte, the window count, then
//! one column per field (min, max, sum, count, last, and increase for counters), each a
//! chunk of the chunk codec with the window starts as timestamps (a perfect grid costs a
//! few bits) and the field as value (counts and decimal values cost a few bits each).

use std::collections::BTreeMap;

use argus_common::model::{MetricType, is_stale_nan};
use serde::{Deserialize, Serialize};

use super::bits::{get_varint, put_varint, unzigzag, zigzag};
use super::chunk::{self, ChunkError};
use super::tier::{Tiers, align_down};

/// Format of an encoded block of windows (DESIGN §3.7).
pub const BLOCK_FORMAT: u8 = 2;

/// Format 1: every column timestamped with the window starts. Still read: blocks on disk
/// and in checkpoints outlive binaries.
const BLOCK_FORMAT_V1: u8 = 1;

/// Format of an encoded [`Aggregator`] state (inside a checkpoint). Version 3 codes each
/// series' open samples as a chunk (or leaves them out, see
/// [`Aggregator::encode_state_without_samples`]) and its pending windows as a block (see
/// [`Aggregator::encode_state`]). Versions 2 (no flags, no push time) and 1 (the whole
/// state as postcard with samples as 16-byte pairs, about 3x larger) are still read,
/// since checkpoints outlive binaries.
pub const STATE_FORMAT: u8 = 3;

/// Format 2: as 3 without the header's flags and the series' push time.
const STATE_FORMAT_V2: u8 = 2;

/// Header flag of format 3: the open samples are in the state.
const STATE_HAS_SAMPLES: u8 = 1;

/// Reads the samples of a series in `[from, to]`: `(series, from, to)`.
pub type SampleSource<'a> = dyn FnMut(u64, i64, i64) -> Result<Vec<(i64, f64)>, String> + 'a;

/// The first state format: postcard of [`StateV1`].
const STATE_FORMAT_V1: u8 = 1;

/// Most windows in one block, and the default of [`AggregatorConfig::max_block_windows`]:
/// 24 makes 5 m blocks span 2 h (like a raw chunk at 60 s) and 1 h blocks a day.
pub const DEFAULT_BLOCK_WINDOWS: usize = 24;

/// Most samples one series may hold in open windows. More means a series far ahead of its
/// out-of-order window (an absurd sample rate); its oldest windows are then sealed early
/// and counted (`forced`), so memory stays bounded whatever the input.
pub const MAX_OPEN_SAMPLES: usize = 8192;

const FLAG_INCREASE: u8 = 1;
const COLUMN_NAMES: [&str; 6] = ["min", "max", "sum", "count", "last", "increase"];
/// Counts are stored as f64; above 2^53 they would no longer be exact.
const MAX_COUNT: f64 = 9_007_199_254_740_992.0;

/// One aggregate window of one series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Window start, a multiple of the step since the epoch. The window is
    /// `[start_ms, start_ms + step)`.
    pub start_ms: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// Samples in the window (StaleNaN markers not counted). Never 0.
    pub count: u64,
    /// Reset-adjusted increase, for counters only.
    pub increase: Option<f64>,
    /// Value of the window's last sample.
    pub last: f64,
}

impl Aggregate {
    /// Mean of the window's samples.
    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Equality by bits, so NaN values compare equal to themselves.
    pub fn bit_eq(&self, other: &Aggregate) -> bool {
        self.start_ms == other.start_ms
            && self.min.to_bits() == other.min.to_bits()
            && self.max.to_bits() == other.max.to_bits()
            && self.sum.to_bits() == other.sum.to_bits()
            && self.count == other.count
            && self.increase.map(f64::to_bits) == other.increase.map(f64::to_bits)
            && self.last.to_bits() == other.last.to_bits()
    }

    /// Folds a later window (of the same coarse window) into this one.
    fn absorb(&mut self, later: &Aggregate) {
        self.min = self.min.min(later.min);
        self.max = self.max.max(later.max);
        self.sum = DecimalSum::of(&[self.sum, later.sum]);
        self.count += later.count;
        self.last = later.last;
        self.increase = match (self.increase, later.increase) {
            (Some(a), Some(b)) => Some(DecimalSum::of(&[a, b])),
            (a, b) => a.or(b),
        };
    }
}

/// Why aggregation input or an encoded block is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    #[error("aggregate step must be positive, got {0} ms")]
    BadStep(i64),
    #[error("out-of-order window must not be negative, got {0} ms")]
    BadOooWindow(i64),
    #[error("block of windows is empty or cut short")]
    Truncated,
    #[error(
        "block format version {0} is not supported (this build reads versions {BLOCK_FORMAT_V1} to {BLOCK_FORMAT})"
    )]
    UnsupportedVersion(u8),
    #[error("block holds {0} windows, over the limit of {max}", max = chunk::MAX_SAMPLES)]
    TooManyWindows(u64),
    #[error("block column {column}: {source}")]
    Column {
        column: &'static str,
        source: ChunkError,
    },
    #[error("block is malformed: {0}")]
    Malformed(&'static str),
    #[error("aggregator state: {0}")]
    State(String),
}

/// Whether a series of this type keeps a reset-adjusted increase. Counters do, and so do
/// the `_bucket`, `_sum` and `_count` series of a histogram; of a summary only `_sum` and
/// `_count` do (its quantiles are gauges).
pub fn is_counter(kind: MetricType, metric_name: &str) -> bool {
    match kind {
        MetricType::Counter | MetricType::Histogram => true,
        MetricType::Summary => metric_name.ends_with("_sum") || metric_name.ends_with("_count"),
        MetricType::Gauge | MetricType::Info | MetricType::Unknown => false,
    }
}

/// Aggregates one window's samples (ascending, StaleNaN already removed). `carry` is the
/// last value before the window. `None` if there are no samples.
fn window(
    start_ms: i64,
    samples: &[(i64, f64)],
    carry: Option<f64>,
    counter: bool,
) -> Option<Aggregate> {
    let (&(_, first), _) = samples.split_first()?;
    let reference = carry.unwrap_or(first);
    let mut agg = Aggregate {
        start_ms,
        min: first,
        max: first,
        sum: 0.0,
        count: 0,
        increase: None,
        last: first,
    };
    let mut previous = reference;
    let mut sum = DecimalSum::default();
    let mut increase = DecimalSum::default();
    for &(_, v) in samples {
        agg.min = agg.min.min(v);
        agg.max = agg.max.max(v);
        sum.add(v);
        agg.count += 1;
        if v < previous {
            increase.add(previous);
        }
        previous = v;
        agg.last = v;
    }
    agg.sum = sum.value();
    if counter {
        increase.add(agg.last);
        increase.add(-reference);
        agg.increase = Some(increase.value());
    }
    Some(agg)
}

/// A sum that stays exact while every term is decimal (as [`chunk::as_decimal`] sees
/// it): terms are added as integers at a common scale, and the result is the f64 nearest
/// the decimal sum. Float addition would make 0.1 + 0.2 into 0.30000000000000004, which
/// is both less accurate and, being no short decimal, stored by the column codec as raw
/// XOR bits: a window's sum and increase then cost about 8 bytes each instead of one or
/// two. Once a term is not decimal (NaN, infinity, a computed ratio) or the integer would
/// leave the i64 range, the sum falls back to float addition.
#[derive(Debug, Clone, Copy)]
struct DecimalSum {
    float: f64,
    exact: Option<(i128, u8)>,
}

impl Default for DecimalSum {
    fn default() -> Self {
        DecimalSum {
            float: 0.0,
            exact: Some((0, 0)),
        }
    }
}

impl DecimalSum {
    fn of(terms: &[f64]) -> f64 {
        let mut s = DecimalSum::default();
        for &t in terms {
            s.add(t);
        }
        s.value()
    }

    fn add(&mut self, v: f64) {
        self.float += v;
        self.exact = match (self.exact, chunk::as_decimal(v)) {
            (Some((a, ka)), Some((b, kb))) => {
                let k = ka.max(kb);
                let scale = |x: i128, from: u8| x.checked_mul(10i128.pow(u32::from(k - from)));
                scale(a, ka)
                    .zip(scale(i128::from(b), kb))
                    .and_then(|(a, b)| a.checked_add(b))
                    .filter(|s| i64::try_from(*s).is_ok())
                    .map(|s| (s, k))
            }
            _ => None,
        };
    }

    fn value(&self) -> f64 {
        match self
            .exact
            .and_then(|(m, k)| Some((i64::try_from(m).ok()?, k)))
        {
            Some((m, k)) => chunk::from_decimal(m, k),
            None => self.float,
        }
    }
}

/// Aggregates a whole series (samples ascending by timestamp; they are sorted first if not)
/// into windows of `step_ms`, the first window's increase counted from its first sample.
pub fn aggregate(
    samples: &[(i64, f64)],
    counter: bool,
    step_ms: i64,
) -> Result<Vec<Aggregate>, AggregateError> {
    if step_ms <= 0 {
        return Err(AggregateError::BadStep(step_ms));
    }
    let mut live: Vec<(i64, f64)> = samples
        .iter()
        .copied()
        .filter(|&(_, v)| !is_stale_nan(v))
        .collect();
    if !live.is_sorted_by_key(|s| s.0) {
        live.sort_by_key(|s| s.0);
    }
    let mut out = Vec::new();
    let mut carry = None;
    for run in live.chunk_by(|a, b| align_down(a.0, step_ms) == align_down(b.0, step_ms)) {
        if let Some(agg) = window(align_down(run[0].0, step_ms), run, carry, counter) {
            carry = Some(agg.last);
            out.push(agg);
        }
    }
    Ok(out)
}

/// Aggregates windows (ascending by start) into windows of a coarser `step_ms`. Exact as
/// described in the module documentation.
pub fn coarsen(windows: &[Aggregate], step_ms: i64) -> Result<Vec<Aggregate>, AggregateError> {
    if step_ms <= 0 {
        return Err(AggregateError::BadStep(step_ms));
    }
    let mut out: Vec<Aggregate> = Vec::new();
    for w in windows {
        let start = align_down(w.start_ms, step_ms);
        match out.last_mut() {
            Some(open) if open.start_ms == start => open.absorb(w),
            _ => out.push(Aggregate {
                start_ms: start,
                ..*w
            }),
        }
    }
    Ok(out)
}

/// Encodes windows (ascending by start, at most [`chunk::MAX_SAMPLES`]) as one block.
///
/// Format 2: the count column carries the window starts as its timestamps; every other
/// column is timestamped by window position (0, 1, 2, ...), which the chunk codec codes in
/// a few bits, where format 1 repeated the starts in every column. Blocks hold about
/// ten windows on average (a checkpoint's pending ones fewer), so the repeated start
/// timestamps were a third of a block.
pub fn encode_block(windows: &[Aggregate]) -> Result<Vec<u8>, AggregateError> {
    if windows.len() > chunk::MAX_SAMPLES {
        return Err(AggregateError::TooManyWindows(windows.len() as u64));
    }
    let has_increase = windows.iter().any(|w| w.increase.is_some());
    let mut out = vec![BLOCK_FORMAT, if has_increase { FLAG_INCREASE } else { 0 }];
    put_varint(&mut out, windows.len() as u64);
    let mut put_column = |i: usize, column: &[(i64, f64)]| {
        let bytes = chunk::encode(column).map_err(|source| AggregateError::Column {
            column: COLUMN_NAMES[i],
            source,
        })?;
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(&bytes);
        Ok::<(), AggregateError>(())
    };
    let counts: Vec<(i64, f64)> = windows
        .iter()
        .map(|w| (w.start_ms, w.count as f64))
        .collect();
    put_column(COUNT, &counts)?;
    let mut column = Vec::with_capacity(windows.len());
    for i in [MIN, MAX, SUM, LAST, INCREASE] {
        if i == INCREASE && !has_increase {
            break;
        }
        column.clear();
        // A sparse increase column (a series whose type changed inside the block) simply
        // lists the windows that have one; its positions say which.
        column.extend(
            windows
                .iter()
                .enumerate()
                .filter_map(|(at, w)| field(w, i).map(|v| (at as i64, v))),
        );
        put_column(i, &column)?;
    }
    Ok(out)
}

/// Column positions in [`COLUMN_NAMES`].
const MIN: usize = 0;
const MAX: usize = 1;
const SUM: usize = 2;
const COUNT: usize = 3;
const LAST: usize = 4;
const INCREASE: usize = 5;

fn field(w: &Aggregate, column: usize) -> Option<f64> {
    match column {
        MIN => Some(w.min),
        MAX => Some(w.max),
        SUM => Some(w.sum),
        COUNT => Some(w.count as f64),
        LAST => Some(w.last),
        _ => w.increase,
    }
}

/// Decodes a block of format 2 or 1. Total: any bytes give windows or an error, never a
/// panic, and what it allocates is bounded by [`chunk::MAX_SAMPLES`] windows.
pub fn decode_block(bytes: &[u8]) -> Result<Vec<Aggregate>, AggregateError> {
    let (&version, rest) = bytes.split_first().ok_or(AggregateError::Truncated)?;
    if version != BLOCK_FORMAT && version != BLOCK_FORMAT_V1 {
        return Err(AggregateError::UnsupportedVersion(version));
    }
    let (&flags, _) = rest.split_first().ok_or(AggregateError::Truncated)?;
    if flags & !FLAG_INCREASE != 0 {
        return Err(AggregateError::Malformed("unknown flags"));
    }
    let mut pos = 2;
    let n = get_varint(bytes, &mut pos).ok_or(AggregateError::Truncated)?;
    if n > chunk::MAX_SAMPLES as u64 {
        return Err(AggregateError::TooManyWindows(n));
    }
    let n = n as usize;
    let has_increase = flags & FLAG_INCREASE != 0;
    let order: &[usize] = match (version, has_increase) {
        (BLOCK_FORMAT_V1, true) => &[MIN, MAX, SUM, COUNT, LAST, INCREASE],
        (BLOCK_FORMAT_V1, false) => &[MIN, MAX, SUM, COUNT, LAST],
        (_, true) => &[COUNT, MIN, MAX, SUM, LAST, INCREASE],
        (_, false) => &[COUNT, MIN, MAX, SUM, LAST],
    };
    let mut decoded: [Vec<(i64, f64)>; 6] = Default::default();
    for &i in order {
        let len = get_varint(bytes, &mut pos).ok_or(AggregateError::Truncated)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| pos.checked_add(len))
            .filter(|&end| end <= bytes.len())
            .ok_or(AggregateError::Truncated)?;
        decoded[i] = chunk::decode(&bytes[pos..end]).map_err(|source| AggregateError::Column {
            column: COLUMN_NAMES[i],
            source,
        })?;
        pos = end;
    }
    if pos != bytes.len() {
        return Err(AggregateError::Malformed("bytes after the last column"));
    }
    if [MIN, MAX, SUM, COUNT, LAST]
        .iter()
        .any(|&i| decoded[i].len() != n)
    {
        return Err(AggregateError::Malformed("columns differ in length"));
    }
    // Format 1 timestamps every column with the window starts, format 2 all but the
    // count column with window positions.
    let starts_column = if version == BLOCK_FORMAT_V1 {
        MIN
    } else {
        COUNT
    };
    let key = |i: usize, at: usize| -> i64 {
        if version == BLOCK_FORMAT_V1 || i == COUNT {
            decoded[starts_column][at].0
        } else {
            at as i64
        }
    };
    let mut increases = has_increase.then(|| decoded[INCREASE].iter().peekable());
    let mut out = Vec::with_capacity(n);
    // Indexed: each step reads the same position of five columns.
    #[allow(clippy::needless_range_loop)]
    for at in 0..n {
        let start_ms = decoded[starts_column][at].0;
        if [MIN, MAX, SUM, COUNT, LAST]
            .iter()
            .any(|&i| decoded[i][at].0 != key(i, at))
        {
            return Err(AggregateError::Malformed(
                "columns disagree on window starts",
            ));
        }
        if out
            .last()
            .is_some_and(|p: &Aggregate| p.start_ms >= start_ms)
        {
            return Err(AggregateError::Malformed("window starts do not ascend"));
        }
        let c = decoded[COUNT][at].1;
        if !((1.0..=MAX_COUNT).contains(&c) && c.fract() == 0.0) {
            return Err(AggregateError::Malformed(
                "window count is not a positive integer",
            ));
        }
        let increase = match increases.as_mut() {
            Some(it) => it
                .next_if(|(t, _)| *t == key(INCREASE, at))
                .map(|&(_, v)| v),
            None => None,
        };
        out.push(Aggregate {
            start_ms,
            min: decoded[MIN][at].1,
            max: decoded[MAX][at].1,
            sum: decoded[SUM][at].1,
            count: c as u64,
            increase,
            last: decoded[LAST][at].1,
        });
    }
    if increases.is_some_and(|mut it| it.next().is_some()) {
        return Err(AggregateError::Malformed(
            "increase for a window the block does not hold",
        ));
    }
    Ok(out)
}

/// Settings of an [`Aggregator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregatorConfig {
    /// The head's out-of-order window: how far behind a series' newest timestamp a sample
    /// is still accepted.
    pub ooo_window_ms: i64,
    /// Most windows per block (see the module documentation).
    pub max_block_windows: usize,
}

impl AggregatorConfig {
    pub fn new(ooo_window_ms: i64) -> Self {
        AggregatorConfig {
            ooo_window_ms,
            max_block_windows: DEFAULT_BLOCK_WINDOWS,
        }
    }
}

/// Sealed windows of one series and one tier, ready for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedBlock {
    pub tier: u8,
    pub series_id: u64,
    /// Ascending by start, all inside one block span (and so one partition).
    pub windows: Vec<Aggregate>,
}

/// What became of the samples of one [`Aggregator::push`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Buffered into open windows.
    pub accepted: usize,
    /// StaleNaN markers: they advance the series' clock but join no window.
    pub stale: usize,
    /// Older than a window already sealed for the series: left out of the aggregates.
    pub late: usize,
    /// A sample at a timestamp already buffered: the first one is kept.
    pub duplicate: usize,
}

/// Counters of an [`Aggregator`], for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatorStats {
    pub late: u64,
    pub duplicate: u64,
    /// Times a series' oldest windows were sealed early because it held
    /// [`MAX_OPEN_SAMPLES`] samples.
    pub forced: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Level {
    tier: u8,
    step_ms: i64,
    block_ms: i64,
}

impl Level {
    /// Most windows one block of this level holds.
    fn windows_per_block(&self) -> usize {
        usize::try_from(self.block_ms / self.step_ms).unwrap_or(usize::MAX)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LevelState {
    /// The coarse window being filled from sealed finer windows (unused for the finest).
    open: Option<Aggregate>,
    /// Sealed windows whose block is not complete yet.
    block: Vec<Aggregate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeriesState {
    counter: bool,
    /// Newest timestamp pushed (StaleNaN included).
    newest: i64,
    /// Every finest window ending at or before this is sealed.
    sealed_until: i64,
    /// Samples of open finest windows: ascending, unique timestamps, no StaleNaN.
    raw: Vec<(i64, f64)>,
    /// Last value sealed, the reference for the next window's increase.
    carry: Option<f64>,
    levels: Vec<LevelState>,
    /// Caller's time (the leader's) of the last push; 0 where unknown (states of format
    /// 1 and 2), which counts as long quiet. See [`Aggregator::advance_watermark`].
    #[serde(skip)]
    pushed_ms: i64,
}

/// Seals aggregate windows for every aggregate tier, per series, once the out-of-order
/// window has closed (see the module documentation).
#[derive(Debug, Clone)]
pub struct Aggregator {
    levels: Vec<Level>,
    ooo_ms: i64,
    series: BTreeMap<u64, SeriesState>,
    out: Vec<SealedBlock>,
    stats: AggregatorStats,
}

/// What a version-1 checkpoint holds of an aggregator (postcard).
#[derive(Serialize, Deserialize)]
struct StateV1 {
    levels: Vec<Level>,
    ooo_ms: i64,
    series: BTreeMap<u64, SeriesState>,
    out: Vec<(u8, u64, Vec<Aggregate>)>,
    stats: AggregatorStats,
}

/// Per-series flags of state format 2.
const SERIES_COUNTER: u8 = 1;
const SERIES_CARRY: u8 = 2;
const SERIES_KNOWN: u8 = SERIES_COUNTER | SERIES_CARRY;

/// How a level's open window is stored in state format 2, in the low bits of the level's
/// tag (the block's window count is above them).
const OPEN_NONE: u64 = 0;
/// As the last window of the level's block (it always starts after them).
const OPEN_IN_BLOCK: u64 = 1;
/// In a block of its own; only if the invariant above were ever broken.
const OPEN_ALONE: u64 = 2;

impl Aggregator {
    /// An aggregator for every aggregate tier of `tiers` (none if only raw is configured).
    pub fn new(tiers: &Tiers, config: AggregatorConfig) -> Result<Aggregator, AggregateError> {
        if config.ooo_window_ms < 0 {
            return Err(AggregateError::BadOooWindow(config.ooo_window_ms));
        }
        let levels = tiers
            .iter()
            .filter_map(|(tier, t)| {
                let step_ms = t.step_ms()?;
                let per_partition = usize::try_from(t.partition_ms() / step_ms).unwrap_or(1);
                let k = (1..=config.max_block_windows.max(1))
                    .rev()
                    .find(|k| per_partition % k == 0)
                    .unwrap_or(1);
                Some(Level {
                    tier,
                    step_ms,
                    block_ms: step_ms * k as i64,
                })
            })
            .collect();
        Ok(Aggregator {
            levels,
            ooo_ms: config.ooo_window_ms,
            series: BTreeMap::new(),
            out: Vec::new(),
            stats: AggregatorStats::default(),
        })
    }

    /// Feeds samples the head accepted for one series (any order; usually ascending), and
    /// seals the windows the series' own clock has closed. As [`Aggregator::push_at`] at
    /// time 0, for callers with no clock (the series then counts as quiet).
    pub fn push(&mut self, series_id: u64, counter: bool, samples: &[(i64, f64)]) -> PushOutcome {
        self.push_at(series_id, counter, samples, 0)
    }

    /// [`Aggregator::push`] at the caller's time `now_ms` (the leader's, from the log),
    /// which [`Aggregator::advance_watermark`] compares with.
    pub fn push_at(
        &mut self,
        series_id: u64,
        counter: bool,
        samples: &[(i64, f64)],
        now_ms: i64,
    ) -> PushOutcome {
        let mut outcome = PushOutcome::default();
        if self.levels.is_empty() {
            return outcome;
        }
        let levels = self.levels.len();
        let st = self.series.entry(series_id).or_insert_with(|| SeriesState {
            counter,
            newest: i64::MIN,
            sealed_until: i64::MIN,
            raw: Vec::new(),
            carry: None,
            levels: vec![LevelState::default(); levels],
            pushed_ms: now_ms,
        });
        st.counter = counter;
        st.pushed_ms = now_ms;
        for &(t, v) in samples {
            st.newest = st.newest.max(t);
            if t < st.sealed_until {
                outcome.late += 1;
            } else if is_stale_nan(v) {
                outcome.stale += 1;
            } else if st.raw.last().is_none_or(|last| last.0 < t) {
                st.raw.push((t, v));
                outcome.accepted += 1;
            } else {
                match st.raw.binary_search_by_key(&t, |s| s.0) {
                    Ok(_) => outcome.duplicate += 1,
                    Err(i) => {
                        st.raw.insert(i, (t, v));
                        outcome.accepted += 1;
                    }
                }
            }
        }
        self.stats.late += outcome.late as u64;
        self.stats.duplicate += outcome.duplicate as u64;
        let mut frontier = st.newest.saturating_sub(self.ooo_ms);
        if st.raw.len() > MAX_OPEN_SAMPLES {
            // Seal through the end of the window holding the oldest sample to keep, so at
            // most MAX_OPEN_SAMPLES stay whatever the sample rate.
            let step = self.levels[0].step_ms;
            let keep_from = st.raw[st.raw.len() - MAX_OPEN_SAMPLES].0;
            let forced = align_down(keep_from, step).saturating_add(step);
            if forced > frontier {
                frontier = forced;
                self.stats.forced += 1;
            }
        }
        seal(&self.levels, series_id, st, frontier, &mut self.out);
        outcome
    }

    /// Seals, for every series last pushed at or before `watermark_ms` (caller's time,
    /// as given to [`Aggregator::push_at`]), the windows ending at or before it, as well
    /// as those each series' own clock has closed. For series that went quiet; see the
    /// module documentation for what it costs a series that later resumes inside such a
    /// window. A series still being pushed is sealed by its own clock only, so one
    /// catching up on old samples (a remote-write queue draining after an outage) keeps
    /// them in its aggregates.
    pub fn advance_watermark(&mut self, watermark_ms: i64) {
        for (&id, st) in &mut self.series {
            let own = st.newest.saturating_sub(self.ooo_ms);
            let frontier = if st.pushed_ms <= watermark_ms {
                own.max(watermark_ms)
            } else {
                own
            };
            seal(&self.levels, id, st, frontier, &mut self.out);
        }
    }

    /// Blocks sealed since the last call, in the order they were sealed.
    pub fn take_blocks(&mut self) -> Vec<SealedBlock> {
        std::mem::take(&mut self.out)
    }

    /// Copies of the blocks [`Aggregator::take_blocks`] would hand out, so that they can
    /// be written before they leave (a reader then never misses them).
    pub fn blocks(&self) -> Vec<SealedBlock> {
        self.out.clone()
    }

    /// Sealed windows of a series in `tier` starting in `[mint, maxt]` that the
    /// aggregator still holds (handed-out blocks not taken, windows of a block not
    /// complete yet), ascending. With the store's windows they are every sealed window.
    pub fn sealed_windows(&self, series_id: u64, tier: u8, mint: i64, maxt: i64) -> Vec<Aggregate> {
        let Some(level) = self.levels.iter().position(|l| l.tier == tier) else {
            return Vec::new();
        };
        let in_range = |w: &&Aggregate| (mint..=maxt).contains(&w.start_ms);
        let mut out: Vec<Aggregate> = self
            .out
            .iter()
            .filter(|b| b.tier == tier && b.series_id == series_id)
            .flat_map(|b| b.windows.iter().filter(in_range).copied())
            .collect();
        if let Some(st) = self.series.get(&series_id) {
            out.extend(st.levels[level].block.iter().filter(in_range).copied());
        }
        out.sort_by_key(|w| w.start_ms);
        out.dedup_by_key(|w| w.start_ms);
        out
    }

    pub fn stats(&self) -> AggregatorStats {
        self.stats
    }

    /// Series the aggregator holds state for.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Samples buffered in open windows, over all series.
    pub fn open_samples(&self) -> usize {
        self.series.values().map(|s| s.raw.len()).sum()
    }

    /// Serializes the whole state (open windows, pending blocks, unsent output, counters)
    /// for a checkpoint, in format [`STATE_FORMAT`] (3):
    ///
    /// - a header: a flags byte (whether the open samples are included), the levels (tier
    ///   byte, step and block span), the out-of-order window, the counters, then the
    ///   unsent blocks (tier byte, series id, windows);
    /// - the series in id order, each: its id as the gap from the previous one, a flags
    ///   byte (counter, carry present), its newest timestamp as the difference from the
    ///   previous series' newest (series advance together, so 1–3 bytes), how far
    ///   `sealed_until` lags that, the last push time's difference from the newest
    ///   timestamp, the carry's 8 bytes, the open samples (if included) as a chunk of
    ///   the chunk codec (1.5–3 bytes a sample instead of 14; NaN payloads keep their
    ///   bits, and StaleNaN never reaches them), then per level a tag byte and the
    ///   pending windows, the open window last, as a block of [`encode_block`].
    ///
    /// Integers are LEB128 varints, signed ones zigzagged; differences wrap, so every
    /// i64 (`i64::MIN` for "nothing yet") comes back exactly. Samples and windows are
    /// written as lists of chunks or blocks of at most [`chunk::MAX_SAMPLES`] each, so
    /// no size makes the codecs refuse them. Should they refuse anyway (a bug), the state
    /// is written in format 1, which every build that reads 2 also reads.
    pub fn encode_state(&self) -> Vec<u8> {
        match self.encode_state_v3() {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "aggregator state falls back to format 1");
                self.encode_state_v1()
            }
        }
    }

    /// The state with no open samples, for a checkpoint whose head and store still hold
    /// them (see [`Aggregator::decode_state_with`]): about half the size at a 10-minute
    /// out-of-order window. Falls back as [`Aggregator::encode_state`] does.
    pub fn encode_state_without_samples(&self) -> Vec<u8> {
        match self.encode_state_body(false) {
            Ok(bytes) => bytes,
            Err(_) => self.encode_state(),
        }
    }

    fn encode_state_v3(&self) -> Result<Vec<u8>, AggregateError> {
        self.encode_state_body(true)
    }

    fn encode_state_body(&self, samples: bool) -> Result<Vec<u8>, AggregateError> {
        let mut out = vec![STATE_FORMAT];
        out.push(if samples { STATE_HAS_SAMPLES } else { 0 });
        put_varint(&mut out, self.levels.len() as u64);
        for level in &self.levels {
            out.push(level.tier);
            put_varint(&mut out, zigzag(level.step_ms));
            put_varint(&mut out, zigzag(level.block_ms));
        }
        put_varint(&mut out, zigzag(self.ooo_ms));
        for counter in [self.stats.late, self.stats.duplicate, self.stats.forced] {
            put_varint(&mut out, counter);
        }
        put_varint(&mut out, self.out.len() as u64);
        for block in &self.out {
            out.push(block.tier);
            put_varint(&mut out, block.series_id);
            put_windows(&mut out, &block.windows)?;
        }
        put_varint(&mut out, self.series.len() as u64);
        let mut previous_id = None;
        let mut previous_newest = 0i64;
        for (&id, st) in &self.series {
            put_varint(
                &mut out,
                previous_id.map_or(id, |p: u64| id.wrapping_sub(p).wrapping_sub(1)),
            );
            previous_id = Some(id);
            let mut flags = 0;
            if st.counter {
                flags |= SERIES_COUNTER;
            }
            if st.carry.is_some() {
                flags |= SERIES_CARRY;
            }
            out.push(flags);
            put_varint(&mut out, zigzag(st.newest.wrapping_sub(previous_newest)));
            previous_newest = st.newest;
            put_varint(&mut out, zigzag(st.newest.wrapping_sub(st.sealed_until)));
            put_varint(&mut out, zigzag(st.pushed_ms.wrapping_sub(st.newest)));
            if let Some(carry) = st.carry {
                out.extend_from_slice(&carry.to_bits().to_le_bytes());
            }
            let raw: &[(i64, f64)] = if samples { &st.raw } else { &[] };
            put_varint(&mut out, raw.len().div_ceil(chunk::MAX_SAMPLES) as u64);
            for piece in raw.chunks(chunk::MAX_SAMPLES) {
                let bytes = chunk::encode(piece)
                    .map_err(|e| AggregateError::State(format!("open samples: {e}")))?;
                put_sized(&mut out, &bytes);
            }
            for level in &st.levels {
                let after_block = level
                    .block
                    .last()
                    .is_none_or(|last| level.open.is_none_or(|open| open.start_ms > last.start_ms));
                let mode = match level.open {
                    None => OPEN_NONE,
                    Some(_) if after_block => OPEN_IN_BLOCK,
                    Some(_) => OPEN_ALONE,
                };
                let has_block = !level.block.is_empty();
                out.push(mode as u8 | u8::from(has_block) << 2);
                match (mode, level.open) {
                    (OPEN_IN_BLOCK, Some(open)) => {
                        let mut windows = level.block.clone();
                        windows.push(open);
                        put_windows(&mut out, &windows)?;
                    }
                    (_, open) => {
                        if has_block {
                            put_windows(&mut out, &level.block)?;
                        }
                        if let Some(open) = open {
                            put_windows(&mut out, &[open])?;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// State format 1: the version byte, then postcard. Only a fallback now (and what
    /// the tests use to check that old checkpoints still load).
    fn encode_state_v1(&self) -> Vec<u8> {
        let state = StateV1Ref {
            levels: &self.levels,
            ooo_ms: self.ooo_ms,
            series: &self.series,
            out: self
                .out
                .iter()
                .map(|b| (b.tier, b.series_id, &b.windows))
                .collect(),
            stats: self.stats,
        };
        // Serializing plain data into a Vec cannot fail; were it to, the version byte
        // alone is refused on restore rather than taken for an empty state.
        postcard::to_extend(&state, vec![STATE_FORMAT_V1]).unwrap_or_else(|_| vec![STATE_FORMAT_V1])
    }

    /// Restores a state written by [`Aggregator::encode_state`], in format 2 or 1.
    /// Refused if it was written for other tiers or another out-of-order window than
    /// `tiers` and `config` give now, and if it breaks any invariant the aggregator
    /// keeps (open samples ascending, after what is sealed and at most
    /// [`MAX_OPEN_SAMPLES`]; windows on their grid, inside one block span, ascending).
    ///
    /// Total: any bytes give an aggregator or an error. What it allocates is bounded by
    /// [`MAX_OPEN_SAMPLES`] samples and a block's windows per series, and each series
    /// takes at least a few bytes of input; sizes are checked in the chunk and block
    /// headers before anything is decoded.
    pub fn decode_state(
        bytes: &[u8],
        tiers: &Tiers,
        config: AggregatorConfig,
    ) -> Result<Aggregator, AggregateError> {
        Self::decode_state_with(bytes, tiers, config, &mut |_, _, _| {
            Err("the open samples were left out of this state, and no source was given".into())
        })
    }

    /// As [`Aggregator::decode_state`], and also a state without its open samples
    /// ([`Aggregator::encode_state_without_samples`]), which `samples(series, from, to)`
    /// gives: every sample the head
    /// accepted for the series in `[from, to]` (the store's and the head's, merged).
    /// Only those the aggregator would have kept are taken: from `sealed_until` to its
    /// newest timestamp, StaleNaN left out, one per timestamp.
    pub fn decode_state_with(
        bytes: &[u8],
        tiers: &Tiers,
        config: AggregatorConfig,
        samples: &mut SampleSource<'_>,
    ) -> Result<Aggregator, AggregateError> {
        let fresh = Aggregator::new(tiers, config)?;
        let (&version, body) = bytes
            .split_first()
            .ok_or_else(|| AggregateError::State("empty".into()))?;
        let (mut restored, has_samples) = match version {
            STATE_FORMAT => {
                let (&flags, body) = body
                    .split_first()
                    .ok_or_else(|| AggregateError::State("no flags".into()))?;
                if flags & !STATE_HAS_SAMPLES != 0 {
                    return Err(AggregateError::State(format!("unknown flags {flags:#x}")));
                }
                (
                    decode_v2(body, &fresh, true)?,
                    flags & STATE_HAS_SAMPLES != 0,
                )
            }
            STATE_FORMAT_V2 => (decode_v2(body, &fresh, false)?, true),
            STATE_FORMAT_V1 => (decode_v1(body, &fresh)?, true),
            _ => {
                return Err(AggregateError::State(format!(
                    "format version {version}, this build reads {STATE_FORMAT_V1} to \
                     {STATE_FORMAT}"
                )));
            }
        };
        if !has_samples {
            for (&id, st) in &mut restored.series {
                if st.newest < st.sealed_until {
                    continue;
                }
                let mut got = samples(id, st.sealed_until, st.newest).map_err(|e| {
                    AggregateError::State(format!("open samples of series {id}: {e}"))
                })?;
                got.retain(|&(t, v)| t >= st.sealed_until && t <= st.newest && !is_stale_nan(v));
                got.sort_by_key(|s| s.0);
                got.dedup_by_key(|s| s.0);
                st.raw = got;
            }
        }
        for (id, st) in &restored.series {
            check_series(&fresh.levels, st)
                .map_err(|reason| AggregateError::State(format!("series {id}: {reason}")))?;
        }
        for block in &restored.out {
            let level = fresh
                .levels
                .iter()
                .find(|l| l.tier == block.tier)
                .ok_or_else(|| {
                    AggregateError::State(format!(
                        "unsent block of tier {}, which is not aggregated",
                        block.tier
                    ))
                })?;
            if block.windows.is_empty() {
                return Err(AggregateError::State("unsent block holds no window".into()));
            }
            check_block(level, &block.windows).map_err(|reason| {
                AggregateError::State(format!(
                    "unsent block of series {}: {reason}",
                    block.series_id
                ))
            })?;
        }
        Ok(restored)
    }
}

/// Reads state format 1 (postcard).
fn decode_v1(body: &[u8], fresh: &Aggregator) -> Result<Aggregator, AggregateError> {
    let (state, rest): (StateV1, _) =
        postcard::take_from_bytes(body).map_err(|e| AggregateError::State(e.to_string()))?;
    if !rest.is_empty() {
        return Err(AggregateError::State(format!(
            "{} bytes after the end",
            rest.len()
        )));
    }
    if state.levels != fresh.levels || state.ooo_ms != fresh.ooo_ms {
        return Err(mismatch());
    }
    Ok(Aggregator {
        levels: fresh.levels.clone(),
        ooo_ms: fresh.ooo_ms,
        series: state.series,
        out: state
            .out
            .into_iter()
            .map(|(tier, series_id, windows)| SealedBlock {
                tier,
                series_id,
                windows,
            })
            .collect(),
        stats: state.stats,
    })
}

/// Reads the body of format 2, or of format 3 (`v3`: with each series' push time).
fn decode_v2(body: &[u8], fresh: &Aggregator, v3: bool) -> Result<Aggregator, AggregateError> {
    let mut r = Reader {
        bytes: body,
        pos: 0,
    };
    if r.varint()? != fresh.levels.len() as u64 {
        return Err(mismatch());
    }
    for level in &fresh.levels {
        let (tier, step_ms, block_ms) = (r.byte()?, r.signed()?, r.signed()?);
        if (tier, step_ms, block_ms) != (level.tier, level.step_ms, level.block_ms) {
            return Err(mismatch());
        }
    }
    if r.signed()? != fresh.ooo_ms {
        return Err(mismatch());
    }
    let stats = AggregatorStats {
        late: r.varint()?,
        duplicate: r.varint()?,
        forced: r.varint()?,
    };
    // Counts are not trusted for preallocation: every item takes input bytes, so a
    // false count only runs into the end of the input.
    let blocks = r.varint()?;
    let mut out = Vec::new();
    for _ in 0..blocks {
        let tier = r.byte()?;
        let series_id = r.varint()?;
        let level = fresh
            .levels
            .iter()
            .find(|l| l.tier == tier)
            .ok_or_else(|| {
                AggregateError::State(format!(
                    "unsent block of tier {tier}, which is not aggregated"
                ))
            })?;
        let windows = r.windows(level.windows_per_block())?;
        out.push(SealedBlock {
            tier,
            series_id,
            windows,
        });
    }
    let count = r.varint()?;
    let mut series = BTreeMap::new();
    let mut previous_id: Option<u64> = None;
    let mut previous_newest = 0i64;
    for _ in 0..count {
        let gap = r.varint()?;
        let id = match previous_id {
            None => gap,
            Some(p) => p
                .checked_add(gap)
                .and_then(|id| id.checked_add(1))
                .ok_or_else(|| AggregateError::State("series id overflows".into()))?,
        };
        previous_id = Some(id);
        let flags = r.byte()?;
        if flags & !SERIES_KNOWN != 0 {
            return Err(AggregateError::State(format!(
                "series {id}: unknown flags {flags:#x}"
            )));
        }
        let newest = previous_newest.wrapping_add(r.signed()?);
        previous_newest = newest;
        let sealed_until = newest.wrapping_sub(r.signed()?);
        let pushed_ms = if v3 {
            newest.wrapping_add(r.signed()?)
        } else {
            0
        };
        let carry = if flags & SERIES_CARRY != 0 {
            Some(f64::from_bits(r.u64_le()?))
        } else {
            None
        };
        let raw = r.samples(MAX_OPEN_SAMPLES)?;
        let mut levels = Vec::with_capacity(fresh.levels.len());
        for level in &fresh.levels {
            // A block's windows plus the open one.
            let most = level.windows_per_block().saturating_add(1);
            let tag = r.byte()?;
            let (mode, has_block) = (u64::from(tag & 3), tag & 4 != 0);
            if tag & !7 != 0 || mode > OPEN_ALONE {
                return Err(AggregateError::State(format!(
                    "series {id}: bad level tag {tag:#x}"
                )));
            }
            let mut state = LevelState::default();
            if has_block || mode == OPEN_IN_BLOCK {
                state.block = r.windows(most)?;
                if mode == OPEN_IN_BLOCK {
                    state.open = state.block.pop();
                }
                if has_block == state.block.is_empty()
                    || (mode == OPEN_IN_BLOCK && state.open.is_none())
                {
                    return Err(AggregateError::State(format!(
                        "series {id}: level tag disagrees with its windows"
                    )));
                }
            }
            if mode == OPEN_ALONE {
                match r.windows(1)?.as_slice() {
                    [open] => state.open = Some(*open),
                    _ => {
                        return Err(AggregateError::State(format!(
                            "series {id}: open window missing"
                        )));
                    }
                }
            }
            levels.push(state);
        }
        let st = SeriesState {
            counter: flags & SERIES_COUNTER != 0,
            newest,
            sealed_until,
            raw,
            carry,
            levels,
            pushed_ms,
        };
        // Ids strictly ascend by construction, so none is replaced.
        series.insert(id, st);
    }
    if r.pos != body.len() {
        return Err(AggregateError::State(format!(
            "{} bytes after the end",
            body.len() - r.pos
        )));
    }
    Ok(Aggregator {
        levels: fresh.levels.clone(),
        ooo_ms: fresh.ooo_ms,
        series,
        out,
        stats,
    })
}

fn mismatch() -> AggregateError {
    AggregateError::State("written for another tier configuration or out-of-order window".into())
}

/// Checks what the aggregator keeps true of a series, so a restored state behaves as one
/// that was never written.
fn check_series(levels: &[Level], st: &SeriesState) -> Result<(), &'static str> {
    if st.levels.len() != levels.len() {
        return Err("holds another number of levels");
    }
    if st.raw.len() > MAX_OPEN_SAMPLES {
        return Err("holds more open samples than allowed");
    }
    if !st.raw.is_sorted_by(|a, b| a.0 < b.0) {
        return Err("open samples are not strictly ascending");
    }
    if st.raw.iter().any(|&(_, v)| is_stale_nan(v)) {
        return Err("open samples hold a StaleNaN");
    }
    if let (Some(first), Some(last)) = (st.raw.first(), st.raw.last())
        && (first.0 < st.sealed_until || last.0 > st.newest)
    {
        return Err("open samples lie outside the open windows");
    }
    for (i, (level, state)) in levels.iter().zip(&st.levels).enumerate() {
        check_block(level, &state.block)?;
        if let Some(open) = state.open {
            if i == 0 {
                return Err("the finest level holds an open window");
            }
            if open.start_ms.rem_euclid(level.step_ms) != 0 {
                return Err("open window is off the step grid");
            }
            if state
                .block
                .last()
                .is_some_and(|last| last.start_ms >= open.start_ms)
            {
                return Err("open window does not follow the pending ones");
            }
            check_window(&open)?;
        }
    }
    Ok(())
}

/// Checks windows of one block: on the level's grid, ascending, inside one block span.
fn check_block(level: &Level, windows: &[Aggregate]) -> Result<(), &'static str> {
    let Some(first) = windows.first() else {
        return Ok(());
    };
    if windows.len() > level.windows_per_block() {
        return Err("more windows than a block holds");
    }
    let span = align_down(first.start_ms, level.block_ms);
    for (i, w) in windows.iter().enumerate() {
        if w.start_ms.rem_euclid(level.step_ms) != 0 {
            return Err("window is off the step grid");
        }
        if align_down(w.start_ms, level.block_ms) != span {
            return Err("windows straddle a block span");
        }
        if i > 0 && windows[i - 1].start_ms >= w.start_ms {
            return Err("windows do not ascend");
        }
        check_window(w)?;
    }
    Ok(())
}

fn check_window(w: &Aggregate) -> Result<(), &'static str> {
    if w.count == 0 {
        return Err("window counts no sample");
    }
    Ok(())
}

/// Writes a length, then the bytes.
fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Writes windows as a count of blocks, then each block sized.
fn put_windows(out: &mut Vec<u8>, windows: &[Aggregate]) -> Result<(), AggregateError> {
    put_varint(out, windows.len().div_ceil(chunk::MAX_SAMPLES) as u64);
    for piece in windows.chunks(chunk::MAX_SAMPLES) {
        put_sized(out, &encode_block(piece)?);
    }
    Ok(())
}

/// A cursor over state bytes; every read is checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn cut_short() -> AggregateError {
        AggregateError::State("cut short".into())
    }

    fn byte(&mut self) -> Result<u8, AggregateError> {
        let b = *self.bytes.get(self.pos).ok_or_else(Self::cut_short)?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, AggregateError> {
        get_varint(self.bytes, &mut self.pos).ok_or_else(Self::cut_short)
    }

    fn signed(&mut self) -> Result<i64, AggregateError> {
        Ok(unzigzag(self.varint()?))
    }

    fn u64_le(&mut self) -> Result<u64, AggregateError> {
        let bytes = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(word))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], AggregateError> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(Self::cut_short)?;
        let bytes = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn sized(&mut self) -> Result<&'a [u8], AggregateError> {
        let len = self.varint()?;
        self.take(len)
    }

    /// Samples written as chunks; more than `most` in all is refused before decoding.
    fn samples(&mut self, most: usize) -> Result<Vec<(i64, f64)>, AggregateError> {
        let pieces = self.varint()?;
        let mut out = Vec::new();
        for _ in 0..pieces {
            let bytes = self.sized()?;
            let bad = |source| AggregateError::State(format!("open samples: {source}"));
            if out.len() + chunk::stats(bytes).map_err(bad)?.samples > most {
                return Err(AggregateError::State("too many open samples".into()));
            }
            out.extend(chunk::decode(bytes).map_err(bad)?);
        }
        Ok(out)
    }

    /// Windows written as blocks; more than `most` in all is refused before decoding.
    fn windows(&mut self, most: usize) -> Result<Vec<Aggregate>, AggregateError> {
        let pieces = self.varint()?;
        let mut out = Vec::new();
        for _ in 0..pieces {
            let bytes = self.sized()?;
            if out.len() as u64 + block_len(bytes)? > most as u64 {
                return Err(AggregateError::State("too many windows".into()));
            }
            out.extend(decode_block(bytes)?);
        }
        Ok(out)
    }
}

/// The window count in a block's header, read without decoding it.
fn block_len(bytes: &[u8]) -> Result<u64, AggregateError> {
    let mut pos = 2;
    if bytes.len() < pos {
        return Err(AggregateError::Truncated);
    }
    get_varint(bytes, &mut pos).ok_or(AggregateError::Truncated)
}

#[derive(Serialize)]
struct StateV1Ref<'a> {
    levels: &'a Vec<Level>,
    ooo_ms: i64,
    series: &'a BTreeMap<u64, SeriesState>,
    out: Vec<(u8, u64, &'a Vec<Aggregate>)>,
    stats: AggregatorStats,
}

/// Seals everything of one series that ends at or before `frontier`.
fn seal(
    levels: &[Level],
    series_id: u64,
    st: &mut SeriesState,
    frontier: i64,
    out: &mut Vec<SealedBlock>,
) {
    let Some(finest) = levels.first() else {
        return;
    };
    let sealed = align_down(frontier, finest.step_ms);
    if sealed > st.sealed_until {
        let split = st.raw.partition_point(|s| s.0 < sealed);
        let closed: Vec<(i64, f64)> = st.raw.drain(..split).collect();
        for run in closed
            .chunk_by(|a, b| align_down(a.0, finest.step_ms) == align_down(b.0, finest.step_ms))
        {
            let start = align_down(run[0].0, finest.step_ms);
            if let Some(agg) = window(start, run, st.carry, st.counter) {
                st.carry = Some(agg.last);
                emit(levels, series_id, st, 0, agg, out);
            }
        }
        st.sealed_until = sealed;
    }
    for i in 0..levels.len() {
        let level = &levels[i];
        if i > 0
            && let Some(open) = st.levels[i].open
            && open.start_ms.saturating_add(level.step_ms) <= frontier
        {
            st.levels[i].open = None;
            emit(levels, series_id, st, i, open, out);
        }
        let block = &mut st.levels[i].block;
        if let Some(first) = block.first()
            && align_down(first.start_ms, level.block_ms).saturating_add(level.block_ms) <= frontier
        {
            out.push(SealedBlock {
                tier: level.tier,
                series_id,
                windows: std::mem::take(block),
            });
        }
    }
}

/// Hands a sealed window of level `i` to its block and to the next coarser level.
fn emit(
    levels: &[Level],
    series_id: u64,
    st: &mut SeriesState,
    i: usize,
    agg: Aggregate,
    out: &mut Vec<SealedBlock>,
) {
    let level = &levels[i];
    let block = &mut st.levels[i].block;
    if let Some(first) = block.first()
        && align_down(first.start_ms, level.block_ms) != align_down(agg.start_ms, level.block_ms)
    {
        out.push(SealedBlock {
            tier: level.tier,
            series_id,
            windows: std::mem::take(block),
        });
    }
    block.push(agg);
    let Some(coarser) = levels.get(i + 1) else {
        return;
    };
    let start = align_down(agg.start_ms, coarser.step_ms);
    match st.levels[i + 1].open.as_mut() {
        Some(open) if open.start_ms == start => open.absorb(&agg),
        _ => {
            let finished = st.levels[i + 1].open.replace(Aggregate {
                start_ms: start,
                ..agg
            });
            if let Some(finished) = finished {
                emit(levels, series_id, st, i + 1, finished, out);
            }
        }
    }
}

#[cfg(test)]
#[path = "aggregate/tests.rs"]
mod tests;

#[cfg(test)]
#[path = "aggregate/checkpoint_size.rs"]
mod checkpoint_size;
