//! The chunk codec: a run of one series' samples as a compact, self-contained byte string.
//!
//! Designed for what monitoring data is (issue 3 §3):
//!
//! - **Timestamps sit on a grid.** Agents stamp the scheduled tick, Prometheus scrapes at
//!   a fixed interval with a few ms of jitter. Timestamps are coded as delta-of-delta in
//!   one of three forms, whichever is smallest for the chunk: each delta against the
//!   chunk's median interval (a missed scrape costs one residual instead of two), against
//!   the previous delta (classic delta-of-delta, for an interval that changes inside the
//!   chunk), or the offset from the ideal grid `t0 + i·interval` (independent jitter then
//!   costs ±jitter, not the ±2·jitter of a delta or ±4·jitter of a plain delta-of-delta).
//!   Zero residuals are run-length coded, so a perfect grid costs a few bits per chunk,
//!   not one bit per sample.
//! - **Values are mostly decimal.** Counters like `node_cpu_seconds_total` are parsed
//!   from text such as `1234.56`, gauges are integers (bytes) or short decimals (`0.25`).
//!   Per chunk the encoder finds the smallest scale k (0..=[`MAX_SCALE`]) at which every
//!   value v is exactly `m / 10^k` for an integer m (bit for bit, checked with the same
//!   division the decoder does), then codes the integers m with the same three forms
//!   (against the median delta, a steady counter's rate, is the usual winner).
//!   Values that do not fit the scale (NaN payloads such as StaleNaN, ±inf, -0.0, a
//!   stray float) are kept as exceptions: index and raw 64 bits, so every NaN keeps its
//!   exact bits. Chunks whose values are not decimal (ratios computed in floating point)
//!   use Gorilla-style XOR with leading/trailing-zero windows, again with run-length
//!   coded repeats. The encoder computes the exact cost of each candidate and writes the
//!   smallest, so the decimal path can never lose to XOR.
//! - **Residuals** are coded with two per-chunk widths w1 ≤ w2 (chosen by exact cost over
//!   a histogram of bit lengths) and a 64-bit escape, with or without zero runs.
//!
//! **No block compressor.** Measured on [`super::mix::realistic_mix`] (10,000 series ×
//! 240 samples, 120-sample chunks; 1.648 bytes/sample encoded): lz4_flex over each chunk
//! made the data larger (+1 % as a raw block, +3 % with its size prefix), and so did
//! zstd level 3 (+5 %): bit-packed residuals leave no byte-level repetition, and the
//! frame overhead is paid per chunk. Only over batches of 1,000 whole chunks did zstd
//! save anything (−4 % at level 3, −5 % at level 19; lz4 −2 %), which would cost
//! decompressing a whole batch to read one chunk. It does not pay, so no dependency is
//! added; the persistence layer's fjall blocks may still compress whole pages.
//! Decoding runs at about 16 ns/sample (release build, same data).
//!
//! **Layout** (format version 1): byte 0 is [`FORMAT_VERSION`]; byte 1 the value codec
//! (0..=9: decimal with that scale, 0x10: XOR); a LEB128 sample count; then a bit
//! stream, most significant bit first, padded with zero bits to a byte: the timestamp
//! stream, then the value stream.
//!
//! **Decoding is total**: any byte string gives samples or a [`ChunkError`], never a
//! panic, and the sample count is capped at [`MAX_SAMPLES`] before anything is
//! allocated, so a decode allocates at most a constant (about 16 bytes × `MAX_SAMPLES`
//! for the output plus as much scratch).

use super::bits::{
    BitReader, BitWriter, bit_len, gamma_len, get_varint, long_len, put_varint, unzigzag, zigzag,
};

/// Written as the first byte of every chunk (DESIGN §3.7). A decoder refuses versions it
/// does not know rather than guess.
pub const FORMAT_VERSION: u8 = 1;

/// Most samples one chunk may hold. Bounds what a decode allocates whatever the input says.
pub const MAX_SAMPLES: usize = 8192;

/// Largest decimal scale tried: 10^9 covers nanosecond-like fractions; beyond it values
/// are rarely decimal and the scaled integers would leave no room for the value.
pub const MAX_SCALE: u8 = 9;

const CODEC_XOR: u8 = 0x10;
/// Scaled integers must fit an i64. Exactness needs no bound of its own: every value
/// is checked by the very division the decoder performs, so a byte counter past 2^53
/// (an even integer as an f64) still takes the decimal path.
const MAX_INT: f64 = 9_223_372_036_854_775_808.0; // 2^63
const POW10: [f64; MAX_SCALE as usize + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Why a byte string is not a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk is empty or its header is cut short")]
    Header,
    #[error(
        "chunk format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u8),
    #[error("unknown chunk value codec {0:#x}")]
    UnknownCodec(u8),
    #[error("chunk holds {0} samples, over the limit of {MAX_SAMPLES}")]
    TooManySamples(u64),
    #[error("chunk is truncated")]
    Truncated,
    #[error("chunk is malformed: {0}")]
    Malformed(&'static str),
    #[error("{0} bytes follow the last sample of the chunk")]
    TrailingBytes(usize),
}

/// How a chunk's values are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueCodec {
    /// Integers m with value = m / 10^scale, plus raw exceptions.
    Decimal { scale: u8 },
    /// Gorilla-style XOR of consecutive values.
    Xor,
}

/// What a chunk's header says, read without decoding the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkStats {
    pub samples: usize,
    pub bytes: usize,
    pub codec: ValueCodec,
}

impl ChunkStats {
    pub fn bytes_per_sample(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.bytes as f64 / self.samples as f64
        }
    }
}

/// Reads the header of a chunk.
pub fn stats(bytes: &[u8]) -> Result<ChunkStats, ChunkError> {
    let header = Header::parse(bytes)?;
    Ok(ChunkStats {
        samples: header.samples,
        bytes: bytes.len(),
        codec: header.codec,
    })
}

/// Encodes samples into one chunk.
///
/// Any sequence round-trips exactly (timestamps and value bits; the arithmetic wraps, so
/// even descending or extreme timestamps survive), but the codec is built for strictly
/// ascending timestamps, which is what the head hands it. More than [`MAX_SAMPLES`]
/// samples are refused, since no decoder would accept the result.
pub fn encode(samples: &[(i64, f64)]) -> Result<Vec<u8>, ChunkError> {
    if samples.len() > MAX_SAMPLES {
        return Err(ChunkError::TooManySamples(samples.len() as u64));
    }
    let timestamps: Vec<i64> = samples.iter().map(|s| s.0).collect();
    let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let mut scratch = Vec::with_capacity(samples.len());

    let decimal = plan_decimal(&values, &mut scratch).filter(|d| {
        // XOR spends 64 bits on the first value and at least 3 on each change; only
        // when the decimal plan is not already cheaper than that is XOR tried for real.
        let changes = values
            .windows(2)
            .filter(|w| w[0].to_bits() != w[1].to_bits());
        if d.cost <= 64 + 3 * changes.count() as u64 {
            return true;
        }
        let mut w = BitWriter::default();
        write_xor(&mut w, &values);
        d.cost < w.bit_len() as u64
    });

    let mut header = vec![
        FORMAT_VERSION,
        decimal.as_ref().map_or(CODEC_XOR, |d| d.scale),
    ];
    put_varint(&mut header, samples.len() as u64);
    let mut w = BitWriter::with_prefix(header);
    if samples.is_empty() {
        return Ok(w.finish());
    }
    let ts_plan = plan_ints(&timestamps, &mut scratch);
    write_ints(&mut w, &timestamps, &ts_plan, &mut scratch);
    match decimal {
        Some(d) => {
            w.write_bit(!d.exceptions.is_empty());
            if !d.exceptions.is_empty() {
                w.write_long(d.exceptions.len() as u64);
                let mut next = 0usize;
                for &(index, bits) in &d.exceptions {
                    w.write_long((index - next) as u64);
                    w.write(bits, 64);
                    next = index + 1;
                }
            }
            write_ints(&mut w, &d.ints, &d.plan, &mut scratch);
        }
        None => write_xor(&mut w, &values),
    }
    Ok(w.finish())
}

/// Decodes a chunk into its samples.
pub fn decode(bytes: &[u8]) -> Result<Vec<(i64, f64)>, ChunkError> {
    let header = Header::parse(bytes)?;
    let n = header.samples;
    let mut r = BitReader::new(bytes.get(header.len..).unwrap_or_default());
    let mut out = Vec::with_capacity(n);
    if n > 0 {
        let mut scratch = Vec::with_capacity(n);
        let mut timestamps = Vec::with_capacity(n);
        read_ints(&mut r, n, &mut timestamps, &mut scratch)?;
        match header.codec {
            ValueCodec::Xor => {
                let mut values = Vec::with_capacity(n);
                read_xor(&mut r, n, &mut values)?;
                out.extend(
                    timestamps
                        .into_iter()
                        .zip(values.into_iter().map(f64::from_bits)),
                );
            }
            ValueCodec::Decimal { scale } => {
                let exceptions = read_exceptions(&mut r, n)?;
                let mut ints = Vec::with_capacity(n - exceptions.len());
                read_ints(&mut r, n - exceptions.len(), &mut ints, &mut scratch)?;
                let p = POW10[usize::from(scale)];
                let mut ints = ints.into_iter();
                let mut exceptions = exceptions.into_iter().peekable();
                for (i, t) in timestamps.into_iter().enumerate() {
                    let bits = match exceptions.next_if(|e| e.0 == i) {
                        Some((_, bits)) => bits,
                        None => {
                            let m = ints.next().ok_or(ChunkError::Truncated)?;
                            (m as f64 / p).to_bits()
                        }
                    };
                    out.push((t, f64::from_bits(bits)));
                }
            }
        }
    }
    let rest = r.remaining();
    if rest >= 8 {
        return Err(ChunkError::TrailingBytes(rest / 8));
    }
    if r.read(rest as u32) != Some(0) {
        return Err(ChunkError::Malformed("padding bits are not zero"));
    }
    Ok(out)
}

/// Total encoded bytes per sample when `samples` are cut into chunks of `chunk_len`
/// (for the benchmark and the tests' regression bounds).
pub fn bytes_per_sample(samples: &[(i64, f64)], chunk_len: usize) -> Result<f64, ChunkError> {
    if samples.is_empty() {
        return Ok(0.0);
    }
    let mut total = 0usize;
    for chunk in samples.chunks(chunk_len.clamp(1, MAX_SAMPLES)) {
        total += encode(chunk)?.len();
    }
    Ok(total as f64 / samples.len() as f64)
}

struct Header {
    samples: usize,
    codec: ValueCodec,
    /// Bytes the header takes.
    len: usize,
}

impl Header {
    fn parse(bytes: &[u8]) -> Result<Header, ChunkError> {
        let (&version, rest) = bytes.split_first().ok_or(ChunkError::Header)?;
        if version != FORMAT_VERSION {
            return Err(ChunkError::UnsupportedVersion(version));
        }
        let &codec = rest.first().ok_or(ChunkError::Header)?;
        let codec = match codec {
            CODEC_XOR => ValueCodec::Xor,
            k if k <= MAX_SCALE => ValueCodec::Decimal { scale: k },
            other => return Err(ChunkError::UnknownCodec(other)),
        };
        let mut pos = 2;
        let n = get_varint(bytes, &mut pos).ok_or(ChunkError::Header)?;
        if n > MAX_SAMPLES as u64 {
            return Err(ChunkError::TooManySamples(n));
        }
        Ok(Header {
            samples: n as usize,
            codec,
            len: pos,
        })
    }
}

// ---------------------------------------------------------------- residual blocks

/// How a block of zigzagged residuals is coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Every residual is zero: nothing follows.
    AllZero = 0,
    /// `0`+w1 bits | `10`+w2 bits | `11`+64 bits.
    Plain = 1,
    /// `0`+gamma(run of zeros) | `10`+w1 | `110`+w2 | `111`+64.
    Runs = 2,
    /// Every residual in exactly w1 bits, no prefixes: noise such as jitter, where
    /// all residuals have about the same size.
    Fixed = 3,
}

#[derive(Debug, Clone, Copy)]
struct BlockPlan {
    variant: Variant,
    w1: u32,
    w2: u32,
    cost: u64,
}

/// Picks the variant and widths with the fewest bits, computed exactly.
fn plan_block(res: &[u64]) -> BlockPlan {
    let mut hist = [0u64; 65];
    let mut runs_cost = 0u64;
    let mut run = 0u64;
    for &r in res {
        hist[bit_len(r) as usize] += 1;
        if r == 0 {
            run += 1;
        } else if run > 0 {
            runs_cost += 1 + gamma_len(run);
            run = 0;
        }
    }
    if run > 0 {
        runs_cost += 1 + gamma_len(run);
    }
    if hist[0] == res.len() as u64 {
        return BlockPlan {
            variant: Variant::AllZero,
            w1: 0,
            w2: 0,
            cost: 2,
        };
    }
    // le[w]: residuals with bit length ≤ w.
    let mut le = [0u64; 65];
    let mut acc = 0;
    for (w, &count) in hist.iter().enumerate() {
        acc += count;
        le[w] = acc;
    }
    let total = res.len() as u64;
    let present: Vec<u32> = (0..=64u32).filter(|&w| hist[w as usize] > 0).collect();
    let widest = present.last().copied().unwrap_or(64);
    let mut best = BlockPlan {
        variant: Variant::Fixed,
        w1: widest,
        w2: widest,
        cost: 9 + total * u64::from(widest),
    };
    for (i, &w1) in present.iter().enumerate() {
        for &w2 in &present[i..] {
            let (a, b) = (le[w1 as usize], le[w2 as usize]);
            let plain =
                16 + a * u64::from(1 + w1) + (b - a) * u64::from(2 + w2) + (total - b) * (2 + 64);
            if plain < best.cost {
                best = BlockPlan {
                    variant: Variant::Plain,
                    w1,
                    w2,
                    cost: plain,
                };
            }
            if w1 == 0 {
                continue;
            }
            // Zeros are coded as runs, so only nonzero residuals use the width classes.
            let (a, b, nz) = (a - hist[0], b - hist[0], total - hist[0]);
            let runs = 16
                + runs_cost
                + a * u64::from(2 + w1)
                + (b - a) * u64::from(3 + w2)
                + (nz - b) * (3 + 64);
            if runs < best.cost {
                best = BlockPlan {
                    variant: Variant::Runs,
                    w1,
                    w2,
                    cost: runs,
                };
            }
        }
    }
    best
}

fn write_block(w: &mut BitWriter, res: &[u64], plan: &BlockPlan) {
    w.write(plan.variant as u64, 2);
    match plan.variant {
        Variant::AllZero => return,
        Variant::Fixed => {
            w.write(u64::from(plan.w1), 7);
            for &r in res {
                w.write(r, plan.w1);
            }
            return;
        }
        Variant::Plain | Variant::Runs => {}
    }
    w.write(u64::from(plan.w1), 7);
    w.write(u64::from(plan.w2), 7);
    let mut i = 0;
    while i < res.len() {
        let r = res[i];
        let len = bit_len(r);
        if plan.variant == Variant::Runs {
            if r == 0 {
                let run = res[i..].iter().take_while(|&&x| x == 0).count();
                w.write_bit(false);
                w.write_gamma(run as u64);
                i += run;
                continue;
            }
            w.write_bit(true);
        }
        if len <= plan.w1 {
            w.write_bit(false);
            w.write(r, plan.w1);
        } else if len <= plan.w2 {
            w.write(0b10, 2);
            w.write(r, plan.w2);
        } else {
            w.write(0b11, 2);
            w.write(r, 64);
        }
        i += 1;
    }
}

fn read_block(r: &mut BitReader<'_>, count: usize, out: &mut Vec<u64>) -> Result<(), ChunkError> {
    out.clear();
    let variant = r.read(2).ok_or(ChunkError::Truncated)?;
    if variant == Variant::AllZero as u64 {
        out.resize(count, 0);
        return Ok(());
    }
    let w1 = r.read(7).ok_or(ChunkError::Truncated)? as u32;
    if w1 > 64 {
        return Err(ChunkError::Malformed("residual width over 64 bits"));
    }
    if variant == Variant::Fixed as u64 {
        for _ in 0..count {
            out.push(r.read(w1).ok_or(ChunkError::Truncated)?);
        }
        return Ok(());
    }
    let runs = variant == Variant::Runs as u64;
    let w2 = r.read(7).ok_or(ChunkError::Truncated)? as u32;
    if w2 > 64 {
        return Err(ChunkError::Malformed("residual width over 64 bits"));
    }
    while out.len() < count {
        if runs && !r.read_bit().ok_or(ChunkError::Truncated)? {
            let run = r.read_gamma().ok_or(ChunkError::Truncated)?;
            if run > (count - out.len()) as u64 {
                return Err(ChunkError::Malformed("run of zeros past the sample count"));
            }
            out.resize(out.len() + run as usize, 0);
            continue;
        }
        let width = if !r.read_bit().ok_or(ChunkError::Truncated)? {
            w1
        } else if !r.read_bit().ok_or(ChunkError::Truncated)? {
            w2
        } else {
            64
        };
        out.push(r.read(width).ok_or(ChunkError::Truncated)?);
    }
    Ok(())
}

// ---------------------------------------------------------------- integer streams

/// What each delta is coded against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reference {
    /// `x[i] - x[i-1] - base`: a fixed interval (or a steady counter rate).
    Base = 0,
    /// `x[i] - x[i-1] - (x[i-1] - x[i-2])`, the first delta against `base`: classic
    /// delta-of-delta, for an interval that changes inside the chunk.
    Prev = 1,
    /// `x[i] - (x[0] + i·base + shift)`: the offset from an ideal grid, `shift` being the
    /// median offset, for independent jitter around the grid, which then costs ±jitter
    /// instead of ±2·jitter.
    Grid = 2,
}

#[derive(Debug, Clone, Copy)]
struct IntPlan {
    reference: Reference,
    base: i64,
    /// Only for [`Reference::Grid`].
    shift: i64,
    /// Every residual is a multiple of this; the block holds the quotients.
    divisor: u64,
    block: BlockPlan,
    cost: u64,
}

/// Fills `out` with the zigzagged residuals divided by their greatest common divisor,
/// and returns that divisor. Memory gauges move in whole pages and `/proc/meminfo` is in
/// kB, so a divisor of 1024 or 4096 saves 10 to 12 bits per sample on those series.
fn residuals(xs: &[i64], reference: Reference, base: i64, shift: i64, out: &mut Vec<u64>) -> u64 {
    out.clear();
    let Some(&first) = xs.first() else { return 1 };
    let mut expected = base;
    let mut divisor = 0u64;
    for (i, pair) in xs.windows(2).enumerate() {
        let delta = pair[1].wrapping_sub(pair[0]);
        let residual = match reference {
            Reference::Base | Reference::Prev => delta.wrapping_sub(expected),
            Reference::Grid => pair[1]
                .wrapping_sub(first)
                .wrapping_sub(base.wrapping_mul(i as i64 + 1))
                .wrapping_sub(shift),
        };
        // Noisy residuals reach 1 within a few samples; stop computing gcds then.
        if divisor != 1 {
            divisor = gcd(divisor, residual.unsigned_abs());
        }
        out.push(residual as u64);
        if reference == Reference::Prev {
            expected = delta;
        }
    }
    // 2^63 (only i64::MIN residuals) cannot divide as an i64; 0 means all residuals are 0.
    let divisor = if divisor == 0 || divisor > i64::MAX as u64 {
        1
    } else {
        divisor
    };
    if divisor == 1 {
        for r in out.iter_mut() {
            *r = zigzag(*r as i64);
        }
    } else {
        for r in out.iter_mut() {
            *r = zigzag((*r as i64) / divisor as i64);
        }
    }
    divisor
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Chooses the reference (and so the residuals) with the fewest bits, computed exactly.
fn plan_ints(xs: &[i64], scratch: &mut Vec<u64>) -> IntPlan {
    let first_cost = xs.first().map_or(0, |&x| long_len(zigzag(x)));
    let mut best = IntPlan {
        reference: Reference::Base,
        base: 0,
        shift: 0,
        divisor: 1,
        block: BlockPlan {
            variant: Variant::AllZero,
            w1: 0,
            w2: 0,
            cost: 0,
        },
        cost: first_cost,
    };
    if xs.len() < 2 {
        return best;
    }
    let mut deltas: Vec<i64> = xs.windows(2).map(|p| p[1].wrapping_sub(p[0])).collect();
    let first_delta = deltas[0];
    let mid = deltas.len() / 2;
    let median = *deltas.select_nth_unstable(mid).1;
    // Reuse the deltas' buffer for the offsets from the grid through x[0].
    for (i, (slot, &x)) in deltas.iter_mut().zip(&xs[1..]).enumerate() {
        *slot = x
            .wrapping_sub(xs[0])
            .wrapping_sub(median.wrapping_mul(i as i64 + 1));
    }
    let shift = *deltas.select_nth_unstable(mid).1;
    best.cost = u64::MAX;
    for (reference, base, shift) in [
        (Reference::Base, median, 0),
        (Reference::Prev, first_delta, 0),
        (Reference::Grid, median, shift),
    ] {
        let divisor = residuals(xs, reference, base, shift, scratch);
        let block = plan_block(scratch);
        let mut cost = first_cost + 2 + long_len(zigzag(base)) + divisor_len(divisor) + block.cost;
        if reference == Reference::Grid {
            cost += long_len(zigzag(shift));
        }
        if cost < best.cost {
            best = IntPlan {
                reference,
                base,
                shift,
                divisor,
                block,
                cost,
            };
        }
    }
    best
}

fn divisor_len(divisor: u64) -> u64 {
    if divisor > 1 {
        1 + long_len(divisor)
    } else {
        1
    }
}

fn write_ints(w: &mut BitWriter, xs: &[i64], plan: &IntPlan, scratch: &mut Vec<u64>) {
    let Some(&first) = xs.first() else { return };
    w.write_long(zigzag(first));
    if xs.len() < 2 {
        return;
    }
    w.write(plan.reference as u64, 2);
    w.write_long(zigzag(plan.base));
    if plan.reference == Reference::Grid {
        w.write_long(zigzag(plan.shift));
    }
    w.write_bit(plan.divisor > 1);
    if plan.divisor > 1 {
        w.write_long(plan.divisor);
    }
    residuals(xs, plan.reference, plan.base, plan.shift, scratch);
    write_block(w, scratch, &plan.block);
}

fn read_ints(
    r: &mut BitReader<'_>,
    count: usize,
    out: &mut Vec<i64>,
    scratch: &mut Vec<u64>,
) -> Result<(), ChunkError> {
    out.clear();
    if count == 0 {
        return Ok(());
    }
    let first = unzigzag(r.read_long().ok_or(ChunkError::Truncated)?);
    out.push(first);
    if count == 1 {
        return Ok(());
    }
    let reference = match r.read(2).ok_or(ChunkError::Truncated)? {
        0 => Reference::Base,
        1 => Reference::Prev,
        2 => Reference::Grid,
        _ => return Err(ChunkError::Malformed("unknown delta reference")),
    };
    let base = unzigzag(r.read_long().ok_or(ChunkError::Truncated)?);
    let shift = if reference == Reference::Grid {
        unzigzag(r.read_long().ok_or(ChunkError::Truncated)?)
    } else {
        0
    };
    let divisor = if r.read_bit().ok_or(ChunkError::Truncated)? {
        let d = r.read_long().ok_or(ChunkError::Truncated)?;
        i64::try_from(d).map_err(|_| ChunkError::Malformed("residual divisor over 2^63"))?
    } else {
        1
    };
    read_block(r, count - 1, scratch)?;
    let (mut x, mut expected) = (first, base);
    for (i, &res) in scratch.iter().enumerate() {
        let res = unzigzag(res).wrapping_mul(divisor);
        x = match reference {
            Reference::Base | Reference::Prev => {
                let delta = expected.wrapping_add(res);
                if reference == Reference::Prev {
                    expected = delta;
                }
                x.wrapping_add(delta)
            }
            Reference::Grid => first
                .wrapping_add(base.wrapping_mul(i as i64 + 1))
                .wrapping_add(shift)
                .wrapping_add(res),
        };
        out.push(x);
    }
    Ok(())
}

// ---------------------------------------------------------------- decimal values

struct DecimalPlan {
    scale: u8,
    /// (index, raw bits) of values that are not m / 10^scale.
    exceptions: Vec<(usize, u64)>,
    ints: Vec<i64>,
    plan: IntPlan,
    cost: u64,
}

/// The integer m with `m / 10^k == v` bit for bit, if there is one in the i64 range.
fn scaled(v: f64, k: u8) -> Option<i64> {
    let p = POW10[usize::from(k)];
    let s = (v * p).round();
    // Also refuses NaN and infinities.
    if s.is_nan() || s.abs() >= MAX_INT {
        return None;
    }
    let m = s as i64;
    ((m as f64 / p).to_bits() == v.to_bits()).then_some(m)
}

fn min_scale(v: f64) -> Option<u8> {
    (0..=MAX_SCALE).find(|&k| scaled(v, k).is_some())
}

/// `v` as `(m, k)` with `m / 10^k == v` bit for bit and the smallest such k, if `v` is
/// decimal the way this codec codes it. Lets other code keep arithmetic on decimal
/// values exact, so its results stay decimal and cheap to store.
pub fn as_decimal(v: f64) -> Option<(i64, u8)> {
    (0..=MAX_SCALE).find_map(|k| scaled(v, k).map(|m| (m, k)))
}

/// The f64 nearest `m / 10^k`, computed as the decoder computes decimal values.
pub fn from_decimal(m: i64, k: u8) -> f64 {
    m as f64 / POW10[usize::from(k.min(MAX_SCALE))]
}

/// Tries each scale some value needs and keeps the cheapest, counting the exceptions
/// it leaves; `None` when no value is decimal at all.
fn plan_decimal(values: &[f64], scratch: &mut Vec<u64>) -> Option<DecimalPlan> {
    let mut candidates = [false; MAX_SCALE as usize + 1];
    for &v in values {
        if let Some(k) = min_scale(v) {
            candidates[usize::from(k)] = true;
        }
    }
    let mut best: Option<DecimalPlan> = None;
    for k in (0..=MAX_SCALE).filter(|&k| candidates[usize::from(k)]) {
        let mut ints = Vec::with_capacity(values.len());
        let mut exceptions = Vec::new();
        let mut cost = 1u64;
        let mut next = 0usize;
        for (i, &v) in values.iter().enumerate() {
            match scaled(v, k) {
                Some(m) => ints.push(m),
                None => {
                    exceptions.push((i, v.to_bits()));
                    cost += long_len((i - next) as u64) + 64;
                    next = i + 1;
                }
            }
        }
        if !exceptions.is_empty() {
            cost += long_len(exceptions.len() as u64);
        }
        let plan = plan_ints(&ints, scratch);
        cost += plan.cost;
        if best.as_ref().is_none_or(|b| cost < b.cost) {
            best = Some(DecimalPlan {
                scale: k,
                exceptions,
                ints,
                plan,
                cost,
            });
        }
    }
    best
}

fn read_exceptions(r: &mut BitReader<'_>, n: usize) -> Result<Vec<(usize, u64)>, ChunkError> {
    if !r.read_bit().ok_or(ChunkError::Truncated)? {
        return Ok(Vec::new());
    }
    let count = r.read_long().ok_or(ChunkError::Truncated)?;
    if count == 0 || count > n as u64 {
        return Err(ChunkError::Malformed("exception count out of range"));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut next = 0u64;
    for _ in 0..count {
        let gap = r.read_long().ok_or(ChunkError::Truncated)?;
        let index =
            next.checked_add(gap)
                .filter(|&i| i < n as u64)
                .ok_or(ChunkError::Malformed(
                    "exception index past the sample count",
                ))?;
        let bits = r.read(64).ok_or(ChunkError::Truncated)?;
        out.push((index as usize, bits));
        next = index + 1;
    }
    Ok(out)
}

// ---------------------------------------------------------------- XOR values

fn write_xor(w: &mut BitWriter, values: &[f64]) {
    let Some(first) = values.first() else { return };
    let mut prev = first.to_bits();
    w.write(prev, 64);
    let mut window: Option<(u32, u32)> = None;
    let mut i = 1;
    while i < values.len() {
        let bits = values[i].to_bits();
        let x = bits ^ prev;
        if x == 0 {
            let run = values[i..]
                .iter()
                .take_while(|v| v.to_bits() == prev)
                .count();
            w.write_bit(false);
            w.write_gamma(run as u64);
            i += run;
            continue;
        }
        let lead = x.leading_zeros();
        let trail = x.trailing_zeros();
        match window {
            Some((pl, pt)) if lead >= pl && trail >= pt => {
                w.write(0b10, 2);
                w.write(x >> pt, 64 - pl - pt);
            }
            _ => {
                let meaningful = 64 - lead - trail;
                w.write(0b11, 2);
                w.write(u64::from(lead), 6);
                w.write(u64::from(meaningful - 1), 6);
                w.write(x >> trail, meaningful);
                window = Some((lead, trail));
            }
        }
        prev = bits;
        i += 1;
    }
}

fn read_xor(r: &mut BitReader<'_>, n: usize, out: &mut Vec<u64>) -> Result<(), ChunkError> {
    let mut prev = r.read(64).ok_or(ChunkError::Truncated)?;
    out.push(prev);
    let mut window: Option<(u32, u32)> = None;
    while out.len() < n {
        if !r.read_bit().ok_or(ChunkError::Truncated)? {
            let run = r.read_gamma().ok_or(ChunkError::Truncated)?;
            if run > (n - out.len()) as u64 {
                return Err(ChunkError::Malformed(
                    "run of repeats past the sample count",
                ));
            }
            out.resize(out.len() + run as usize, prev);
            continue;
        }
        let x = if !r.read_bit().ok_or(ChunkError::Truncated)? {
            let (pl, pt) = window.ok_or(ChunkError::Malformed("XOR window used before set"))?;
            r.read(64 - pl - pt).ok_or(ChunkError::Truncated)? << pt
        } else {
            let lead = r.read(6).ok_or(ChunkError::Truncated)? as u32;
            let meaningful = r.read(6).ok_or(ChunkError::Truncated)? as u32 + 1;
            if lead + meaningful > 64 {
                return Err(ChunkError::Malformed("XOR window wider than 64 bits"));
            }
            let trail = 64 - lead - meaningful;
            window = Some((lead, trail));
            r.read(meaningful).ok_or(ChunkError::Truncated)? << trail
        };
        prev ^= x;
        out.push(prev);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
