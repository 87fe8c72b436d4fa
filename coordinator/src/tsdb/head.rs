//! The head: each series' recent samples in memory, until their chunks are sealed and
//! taken by the persistence layer.
//!
//! **Life of a sample.** An in-order sample is pushed onto the series' open chunk, a
//! plain sorted buffer. The open chunk is cut (encoded with [`chunk::encode`]) when it
//! holds [`HeadConfig::chunk_samples`] samples or the next sample falls into another
//! [`HeadConfig::chunk_range_ms`] window (chunks never straddle a multiple of it, so time
//! partitions that are multiples of it hold whole chunks). A cut chunk stays in the head
//! until the out-of-order window for its whole time range has closed, i.e. its newest
//! sample is older than the series' newest timestamp minus [`HeadConfig::ooo_window_ms`];
//! only then is it *sealed*: immutable, queued for [`Head::take_sealed`]. So a late
//! sample never needs to modify a sealed chunk.
//!
//! **Out of order.** A sample older than the series' newest timestamp is accepted while
//! it is within the window measured from that newest timestamp, and inserted in
//! timestamp order into the open buffer or into the cut chunk covering its time (decoded,
//! inserted, re-encoded: late samples are rare, and this keeps held chunks compact). A
//! chunk grown past twice `chunk_samples` is split in two. Older samples are refused as
//! [`Refusal::TooOld`]; a repeated timestamp as [`Refusal::Duplicate`] (same value bits,
//! which is what a retried remote-write looks like) or [`Refusal::DuplicateTimestamp`]
//! (a different value). StaleNaN is a sample like any other and keeps its bits.
//!
//! **Deterministic.** No clock, no randomness: given the same appends (and the same
//! [`Head::seal_idle`] calls, which take the time as an argument) every node holds the
//! same head, and [`Head::checkpoint`] gives the same snapshot.
//!
//! **Memory per series**: about 120 bytes of map entry and bookkeeping (the hash map's
//! spare capacity included), 40 bytes per held segment, the open buffer at 16 bytes per
//! sample (its capacity grows by doubling: at most 2 KiB with 120-sample chunks), and
//! each cut chunk held for the out-of-order window at its encoded size (1–2 bytes per
//! sample for typical data). Measured by `memory_per_series_stays_small` (15 s interval,
//! 10-minute window, 120-sample chunks, sealed chunks taken): 1.6 KiB per series on
//! average, 2.3 KiB at most. At a 1 s interval about five more cut chunks are held
//! (roughly 1 KiB more). Label strings live in the index, not here.

use super::TsdbError;
use super::chunk::{self, ChunkError, MAX_SAMPLES};
use super::index::SeriesId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Written before every serialized [`HeadSnapshot`] (DESIGN §3.7).
pub const HEAD_SNAPSHOT_VERSION: u8 = 1;

/// How the head cuts and seals chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Samples in a chunk before it is cut (Prometheus also uses 120: about 2 hours at
    /// 1 minute, 30 minutes at 15 s).
    pub chunk_samples: usize,
    /// Chunks never cross a multiple of this, in ms.
    pub chunk_range_ms: i64,
    /// How far behind a series' newest timestamp a sample is still accepted, in ms.
    pub ooo_window_ms: i64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            chunk_samples: 120,
            chunk_range_ms: 2 * 3_600_000,
            ooo_window_ms: 10 * 60_000,
        }
    }
}

impl HeadConfig {
    /// Checks the values; a chunk may grow to twice `chunk_samples` through late samples,
    /// so that must still fit in a chunk.
    pub fn validate(&self) -> Result<(), TsdbError> {
        let bad = |key: &'static str, reason: String| Err(TsdbError::Config { key, reason });
        if self.chunk_samples == 0 || self.chunk_samples * 2 + 1 > MAX_SAMPLES {
            return bad(
                "chunk_samples",
                format!(
                    "must be between 1 and {}, got {}",
                    (MAX_SAMPLES - 1) / 2,
                    self.chunk_samples
                ),
            );
        }
        if self.chunk_range_ms <= 0 {
            return bad(
                "chunk_range_ms",
                format!("must be positive, got {}", self.chunk_range_ms),
            );
        }
        if self.ooo_window_ms < 0 {
            return bad(
                "ooo_window_ms",
                format!("must not be negative, got {}", self.ooo_window_ms),
            );
        }
        Ok(())
    }
}

/// Why a sample was not stored; the state machine counts these by [`Refusal::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// Older than the series' newest timestamp minus the out-of-order window, or not
    /// newer than a chunk already sealed.
    #[error("sample is older than the out-of-order window")]
    TooOld,
    /// The timestamp is already stored with the same value bits.
    #[error("duplicate sample")]
    Duplicate,
    /// The timestamp is already stored with another value (Prometheus: "duplicate
    /// sample for timestamp").
    #[error("duplicate sample for timestamp with a different value")]
    DuplicateTimestamp,
    /// A chunk held in memory failed to decode. Only a bug or memory corruption can
    /// cause this (held chunks are our own encodings or were validated on restore);
    /// it is counted rather than hidden.
    #[error("a chunk held in the head is corrupt")]
    Corrupt,
}

impl Refusal {
    /// A stable label for counters.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooOld => "too_old",
            Refusal::Duplicate => "duplicate",
            Refusal::DuplicateTimestamp => "duplicate_timestamp",
            Refusal::Corrupt => "corrupt",
        }
    }
}

/// A chunk whose out-of-order window has closed, for the persistence layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedChunk {
    pub series: SeriesId,
    pub min_t: i64,
    pub max_t: i64,
    pub samples: u32,
    /// A [`chunk`] encoding.
    pub bytes: Vec<u8>,
}

/// An encoded chunk still held in the head.
#[derive(Debug, Clone)]
struct CutChunk {
    min_t: i64,
    max_t: i64,
    samples: u32,
    bytes: Box<[u8]>,
}

impl CutChunk {
    /// Encodes non-empty, sorted samples.
    fn encode(samples: &[(i64, f64)]) -> Result<CutChunk, ChunkError> {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return Err(ChunkError::Malformed("empty chunk"));
        };
        Ok(CutChunk {
            min_t: first.0,
            max_t: last.0,
            samples: samples.len() as u32,
            bytes: chunk::encode(samples)?.into_boxed_slice(),
        })
    }
}

/// A run of a series' unsealed samples. Only the last segment can be open.
#[derive(Debug, Clone)]
enum Segment {
    /// Sorted, never empty.
    Open(Vec<(i64, f64)>),
    Cut(CutChunk),
}

impl Segment {
    fn min_t(&self) -> i64 {
        match self {
            Segment::Open(buf) => buf.first().map_or(i64::MAX, |s| s.0),
            Segment::Cut(c) => c.min_t,
        }
    }

    fn max_t(&self) -> i64 {
        match self {
            Segment::Open(buf) => buf.last().map_or(i64::MIN, |s| s.0),
            Segment::Cut(c) => c.max_t,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct SeriesHead {
    /// Newest timestamp ever accepted.
    newest: Option<i64>,
    /// Newest timestamp of the last sealed chunk; nothing at or before it is accepted.
    sealed_through: Option<i64>,
    /// Ordered, non-overlapping, each inside one `chunk_range_ms` window.
    segments: Vec<Segment>,
}

/// Sizes for `/metrics` and capacity planning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadStats {
    pub series: usize,
    pub open_samples: usize,
    pub cut_chunks: usize,
    pub cut_samples: usize,
    pub cut_bytes: usize,
    pub sealed_chunks: usize,
    pub sealed_bytes: usize,
    /// Estimate of the heap the head uses, from the figures in the module doc.
    pub approx_memory_bytes: usize,
}

/// The in-memory head of every series; see the module doc.
#[derive(Debug)]
pub struct Head {
    config: HeadConfig,
    series: HashMap<SeriesId, SeriesHead>,
    /// Sealed, not yet taken; by series, then time.
    sealed: BTreeMap<SeriesId, Vec<SealedChunk>>,
}

/// A [`Head`] as data, for checkpoints: what is needed to continue exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadSnapshot {
    /// Sorted by id.
    pub series: Vec<SeriesSnapshot>,
    /// Sealed chunks not yet taken, in the order [`Head::take_sealed`] gives them.
    pub sealed: Vec<SealedChunk>,
}

/// One series in a [`HeadSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesSnapshot {
    pub id: SeriesId,
    pub newest: Option<i64>,
    pub sealed_through: Option<i64>,
    /// The unsealed segments, oldest first, each a [`chunk`] encoding.
    pub chunks: Vec<Vec<u8>>,
    /// Whether the last chunk is the open one, which takes further in-order samples.
    pub last_open: bool,
}

impl HeadSnapshot {
    /// The version byte, then the postcard encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TsdbError> {
        postcard::to_extend(self, vec![HEAD_SNAPSHOT_VERSION]).map_err(|e| TsdbError::Corrupt {
            what: "head snapshot",
            reason: e.to_string(),
        })
    }

    /// Decodes what [`HeadSnapshot::to_bytes`] wrote; validation happens in
    /// [`Head::restore`].
    pub fn from_bytes(bytes: &[u8]) -> Result<HeadSnapshot, TsdbError> {
        let corrupt = |reason: String| TsdbError::Corrupt {
            what: "head snapshot",
            reason,
        };
        let (&version, body) = bytes.split_first().ok_or_else(|| corrupt("empty".into()))?;
        if version != HEAD_SNAPSHOT_VERSION {
            return Err(TsdbError::UnsupportedVersion {
                what: "head snapshot",
                found: version,
                supported: HEAD_SNAPSHOT_VERSION,
            });
        }
        let (snapshot, rest) =
            postcard::take_from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
        if !rest.is_empty() {
            return Err(corrupt(format!("{} bytes after the end", rest.len())));
        }
        Ok(snapshot)
    }
}

fn duplicate(stored: f64, v: f64) -> Refusal {
    if stored.to_bits() == v.to_bits() {
        Refusal::Duplicate
    } else {
        Refusal::DuplicateTimestamp
    }
}

impl Head {
    pub fn new(config: HeadConfig) -> Result<Head, TsdbError> {
        config.validate()?;
        Ok(Head {
            config,
            series: HashMap::new(),
            sealed: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &HeadConfig {
        &self.config
    }

    /// Stores one sample, or says why not.
    pub fn append(&mut self, series: SeriesId, ts: i64, v: f64) -> Result<(), Refusal> {
        let config = self.config;
        let range = |t: i64| t.div_euclid(config.chunk_range_ms);
        let s = self.series.entry(series).or_default();
        if s.sealed_through.is_some_and(|st| ts <= st) {
            return Err(Refusal::TooOld);
        }
        match s.newest {
            Some(newest) if ts <= newest => {
                if ts < newest.saturating_sub(config.ooo_window_ms) {
                    return Err(Refusal::TooOld);
                }
                insert_late(s, &config, ts, v)
            }
            _ => {
                match s.segments.last_mut() {
                    Some(Segment::Open(buf))
                        if buf.len() < config.chunk_samples
                            && buf.first().is_some_and(|f| range(f.0) == range(ts)) =>
                    {
                        buf.push((ts, v));
                    }
                    last => {
                        if let Some(last) = last
                            && let Segment::Open(buf) = last
                        {
                            *last =
                                Segment::Cut(CutChunk::encode(buf).map_err(|_| Refusal::Corrupt)?);
                        }
                        s.segments.push(Segment::Open(vec![(ts, v)]));
                    }
                }
                s.newest = Some(ts);
                let horizon = ts.saturating_sub(config.ooo_window_ms);
                let due = s
                    .segments
                    .iter()
                    .take_while(|seg| seg.max_t() < horizon)
                    .count();
                if due > 0 {
                    let out = self.sealed.entry(series).or_default();
                    seal(series, s, due, out).map_err(|_| Refusal::Corrupt)?;
                }
                Ok(())
            }
        }
    }

    /// Seals everything held for series whose newest sample is older than
    /// `now_ms - idle_ms`, so a series that stopped (or a stale one) does not keep its
    /// samples in memory forever; later samples at or before what was sealed are then
    /// refused as too old. `now_ms` is the leader's time from the log entry, which keeps
    /// this deterministic. Returns how many chunks were sealed.
    pub fn seal_idle(&mut self, now_ms: i64, idle_ms: i64) -> usize {
        let horizon = now_ms.saturating_sub(idle_ms);
        let mut ids: Vec<SeriesId> = self
            .series
            .iter()
            .filter(|(_, s)| !s.segments.is_empty() && s.newest.is_some_and(|n| n < horizon))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        let mut sealed = 0;
        for id in ids {
            if let Some(s) = self.series.get_mut(&id) {
                let n = s.segments.len();
                let out = self.sealed.entry(id).or_default();
                // Encoding can only fail for an oversized chunk, which the config rules
                // out; on failure the series keeps its segments.
                if seal(id, s, n, out).is_ok() {
                    sealed += n;
                }
            }
        }
        sealed
    }

    /// Hands over every sealed chunk, by series id then time; the head forgets them, so
    /// the caller must persist them before the next checkpoint stops covering them.
    pub fn take_sealed(&mut self) -> Vec<SealedChunk> {
        std::mem::take(&mut self.sealed)
            .into_values()
            .flatten()
            .collect()
    }

    /// Copies of the sealed chunks not yet taken, in [`Head::take_sealed`]'s order, so the
    /// caller can write them out while reads still find them here.
    pub fn sealed(&self) -> Vec<SealedChunk> {
        self.sealed.values().flatten().cloned().collect()
    }

    /// Samples of a series with `mint <= t <= maxt` held in the head (open, cut and
    /// sealed-not-taken chunks), in timestamp order.
    pub fn select(
        &self,
        series: SeriesId,
        mint: i64,
        maxt: i64,
    ) -> Result<impl Iterator<Item = (i64, f64)> + use<>, TsdbError> {
        let mut out = Vec::new();
        let in_range = |t: &(i64, f64)| t.0 >= mint && t.0 <= maxt;
        for c in self.sealed.get(&series).into_iter().flatten() {
            if c.max_t >= mint && c.min_t <= maxt {
                out.extend(chunk::decode(&c.bytes)?.into_iter().filter(in_range));
            }
        }
        for seg in self
            .series
            .get(&series)
            .into_iter()
            .flat_map(|s| &s.segments)
        {
            if seg.max_t() < mint || seg.min_t() > maxt {
                continue;
            }
            match seg {
                Segment::Open(buf) => out.extend(buf.iter().copied().filter(in_range)),
                Segment::Cut(c) => {
                    out.extend(chunk::decode(&c.bytes)?.into_iter().filter(in_range));
                }
            }
        }
        Ok(out.into_iter())
    }

    /// The newest timestamp accepted for a series.
    pub fn newest(&self, series: SeriesId) -> Option<i64> {
        self.series.get(&series).and_then(|s| s.newest)
    }

    /// Forgets a series entirely (retention removed it from the index).
    pub fn remove_series(&mut self, series: SeriesId) -> bool {
        let held = self.series.remove(&series).is_some();
        self.sealed.remove(&series).is_some() || held
    }

    pub fn stats(&self) -> HeadStats {
        let mut st = HeadStats {
            series: self.series.len(),
            ..HeadStats::default()
        };
        let mut memory = self.series.capacity() * (size_of::<(SeriesId, SeriesHead)>() + 1);
        for s in self.series.values() {
            memory += s.segments.capacity() * size_of::<Segment>();
            for seg in &s.segments {
                match seg {
                    Segment::Open(buf) => {
                        st.open_samples += buf.len();
                        memory += buf.capacity() * size_of::<(i64, f64)>();
                    }
                    Segment::Cut(c) => {
                        st.cut_chunks += 1;
                        st.cut_samples += c.samples as usize;
                        st.cut_bytes += c.bytes.len();
                        memory += c.bytes.len();
                    }
                }
            }
        }
        for c in self.sealed.values().flatten() {
            st.sealed_chunks += 1;
            st.sealed_bytes += c.bytes.len();
            memory += c.bytes.len() + size_of::<SealedChunk>();
        }
        st.approx_memory_bytes = memory;
        st
    }

    /// The head as data, series in id order. Open buffers are encoded as chunks, so a
    /// checkpoint is about as compact as the sealed data.
    pub fn checkpoint(&self) -> Result<HeadSnapshot, TsdbError> {
        let mut ids: Vec<&SeriesId> = self.series.keys().collect();
        ids.sort_unstable();
        let mut series = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(s) = self.series.get(id) else {
                continue;
            };
            let mut chunks = Vec::with_capacity(s.segments.len());
            for seg in &s.segments {
                chunks.push(match seg {
                    Segment::Open(buf) => chunk::encode(buf)?,
                    Segment::Cut(c) => c.bytes.to_vec(),
                });
            }
            series.push(SeriesSnapshot {
                id: *id,
                newest: s.newest,
                sealed_through: s.sealed_through,
                chunks,
                last_open: matches!(s.segments.last(), Some(Segment::Open(_))),
            });
        }
        Ok(HeadSnapshot {
            series,
            sealed: self.sealed.values().flatten().cloned().collect(),
        })
    }

    /// Rebuilds a head from a checkpoint, checking every invariant a corrupt snapshot
    /// could break (each chunk decodes, is sorted, chunks do not overlap, nothing is at
    /// or before what was sealed, the newest timestamp is the last held one).
    pub fn restore(config: HeadConfig, snapshot: HeadSnapshot) -> Result<Head, TsdbError> {
        let mut head = Head::new(config)?;
        let corrupt = |reason: String| TsdbError::Corrupt {
            what: "head snapshot",
            reason,
        };
        for snap in snapshot.series {
            let id = snap.id;
            if head.series.contains_key(&id) {
                return Err(corrupt(format!("series {id} appears twice")));
            }
            let mut s = SeriesHead {
                newest: snap.newest,
                sealed_through: snap.sealed_through,
                segments: Vec::with_capacity(snap.chunks.len()),
            };
            if s.newest.is_none() && (s.sealed_through.is_some() || !snap.chunks.is_empty()) {
                return Err(corrupt(format!(
                    "series {id} holds data but no newest sample"
                )));
            }
            if let (Some(n), Some(st)) = (s.newest, s.sealed_through)
                && n < st
            {
                return Err(corrupt(format!(
                    "series {id} sealed past its newest sample"
                )));
            }
            let mut floor = s.sealed_through;
            let count = snap.chunks.len();
            for (i, bytes) in snap.chunks.into_iter().enumerate() {
                let samples = chunk::decode(&bytes)?;
                check_sorted(&samples, floor).map_err(|r| corrupt(format!("series {id}: {r}")))?;
                floor = samples.last().map(|l| l.0);
                let segment = if snap.last_open && i + 1 == count {
                    Segment::Open(samples)
                } else {
                    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
                        return Err(corrupt(format!("series {id}: empty chunk")));
                    };
                    Segment::Cut(CutChunk {
                        min_t: first.0,
                        max_t: last.0,
                        samples: samples.len() as u32,
                        bytes: bytes.into_boxed_slice(),
                    })
                };
                s.segments.push(segment);
            }
            if count == 0 && snap.last_open {
                return Err(corrupt(format!(
                    "series {id} has an open chunk but no chunks"
                )));
            }
            if let Some(last) = s.segments.last()
                && s.newest != Some(last.max_t())
            {
                return Err(corrupt(format!(
                    "series {id}: newest sample is not the last one held"
                )));
            }
            head.series.insert(id, s);
        }
        for c in snapshot.sealed {
            let samples = chunk::decode(&c.bytes)?;
            check_sorted(&samples, None)
                .map_err(|r| corrupt(format!("sealed chunk of series {}: {r}", c.series)))?;
            let matches = samples.first().map(|f| f.0) == Some(c.min_t)
                && samples.last().map(|l| l.0) == Some(c.max_t)
                && samples.len() == c.samples as usize;
            if !matches {
                return Err(corrupt(format!(
                    "sealed chunk of series {} does not match its header",
                    c.series
                )));
            }
            let list = head.sealed.entry(c.series).or_default();
            if list.last().is_some_and(|prev| prev.max_t >= c.min_t) {
                return Err(corrupt(format!(
                    "sealed chunks of series {} overlap",
                    c.series
                )));
            }
            list.push(c);
        }
        Ok(head)
    }
}

/// Checks a decoded chunk: not empty, strictly ascending, all after `floor`.
fn check_sorted(samples: &[(i64, f64)], floor: Option<i64>) -> Result<(), &'static str> {
    if samples.is_empty() {
        return Err("empty chunk");
    }
    if samples.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err("chunk timestamps are not strictly ascending");
    }
    if floor.is_some_and(|f| samples[0].0 <= f) {
        return Err("chunk overlaps earlier data");
    }
    Ok(())
}

/// Moves the first `n` segments of a series to `out` as sealed chunks.
fn seal(
    id: SeriesId,
    s: &mut SeriesHead,
    n: usize,
    out: &mut Vec<SealedChunk>,
) -> Result<(), ChunkError> {
    // Encode first, so that a failure leaves the series as it was.
    let mut chunks = Vec::with_capacity(n);
    for seg in &s.segments[..n] {
        chunks.push(match seg {
            Segment::Open(buf) => CutChunk::encode(buf)?,
            Segment::Cut(c) => c.clone(),
        });
    }
    s.segments.drain(..n);
    for c in chunks {
        s.sealed_through = Some(c.max_t);
        out.push(SealedChunk {
            series: id,
            min_t: c.min_t,
            max_t: c.max_t,
            samples: c.samples,
            bytes: c.bytes.into_vec(),
        });
    }
    Ok(())
}

/// Inserts a sample at or before the series' newest timestamp (already checked to be
/// within the window and after anything sealed).
fn insert_late(s: &mut SeriesHead, config: &HeadConfig, ts: i64, v: f64) -> Result<(), Refusal> {
    let range = |t: i64| t.div_euclid(config.chunk_range_ms);
    // The first segment reaching ts; it exists because the last holds the newest sample.
    let i = s.segments.partition_point(|seg| seg.max_t() < ts);
    let Some(seg) = s.segments.get_mut(i) else {
        s.segments.push(Segment::Open(vec![(ts, v)]));
        return Ok(());
    };
    if ts < seg.min_t() && range(ts) != range(seg.min_t()) {
        // In a gap before this segment and in an earlier window: a chunk of its own.
        let c = CutChunk::encode(&[(ts, v)]).map_err(|_| Refusal::Corrupt)?;
        s.segments.insert(i, Segment::Cut(c));
        return Ok(());
    }
    let limit = config.chunk_samples * 2;
    match seg {
        Segment::Open(buf) => {
            match buf.binary_search_by(|p| p.0.cmp(&ts)) {
                Ok(j) => return Err(duplicate(buf[j].1, v)),
                Err(j) => buf.insert(j, (ts, v)),
            }
            if buf.len() > limit {
                let tail = buf.split_off(buf.len() / 2);
                let head = CutChunk::encode(buf).map_err(|_| Refusal::Corrupt)?;
                let tail = CutChunk::encode(&tail).map_err(|_| Refusal::Corrupt)?;
                *seg = Segment::Cut(head);
                s.segments.insert(i + 1, Segment::Cut(tail));
            }
        }
        Segment::Cut(c) => {
            let mut samples = chunk::decode(&c.bytes).map_err(|_| Refusal::Corrupt)?;
            match samples.binary_search_by(|p| p.0.cmp(&ts)) {
                Ok(j) => return Err(duplicate(samples[j].1, v)),
                Err(j) => samples.insert(j, (ts, v)),
            }
            if samples.len() > limit {
                let tail = samples.split_off(samples.len() / 2);
                let head = CutChunk::encode(&samples).map_err(|_| Refusal::Corrupt)?;
                let tail = CutChunk::encode(&tail).map_err(|_| Refusal::Corrupt)?;
                *c = head;
                s.segments.insert(i + 1, Segment::Cut(tail));
            } else {
                *c = CutChunk::encode(&samples).map_err(|_| Refusal::Corrupt)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
