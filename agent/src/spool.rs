//! The on-disk bounded queue of batches waiting for a final Ack (DESIGN §3.1, §3.5).
//!
//! A batch is written here before it is sent and deleted only after the coordinator
//! acknowledges it, so an agent restart, a lost connection or a coordinator failover
//! never loses a sample the agent collected. Delivery is at-least-once; the
//! coordinator deduplicates on (agent id, incarnation, seq).
//!
//! What lives in the spool directory:
//!
//! - `incarnation`: a random u64 chosen when the directory is first used. Seqs and
//!   series refs are scoped to it.
//! - `segment-<first seq>.log`: batch records, appended in seq order.
//! - `floor.log`: the lowest seq that may still be kept, so a restart neither resends
//!   what was acknowledged nor reuses a seq after the newest segments were deleted.
//! - `dictionary.log`: series definitions, retirements and the ref high-water mark.
//! - `lock`: held while a spool is open, so two agents never share a directory.
//!
//! Every record in every file is framed as `[len u32][crc32 u32][version u8][kind u8]
//! [postcard payload]` (see the `record` submodule). Recovery keeps every record
//! before the first torn or damaged one and cuts the file there.
//!
//! The uplink's part: send `defs_from` before batches, send `pending` batches each
//! with `lowest_seq`, call `ack` on every final Ack, and call `resume_after` on every
//! `HelloOk`, the first one after opening included.
//!
//! Durability order: a series def reaches the disk no later than any batch that uses
//! it. [`Spool::push`] syncs pending defs before writing the batch under either fsync
//! policy (defs are rare, so this costs little), and [`Spool::sync`] syncs the
//! dictionary before segments.
//!
//! The spool does blocking file I/O, including fsync under [`FsyncPolicy::EveryBatch`];
//! async callers should call it from a blocking thread.

mod dictionary;
mod meta;
mod record;
mod segments;

use argus_common::model::{Labels, MetricType, PointGroup, SeriesDef, SeriesRef};
use dictionary::Dictionary;
use meta::FloorLog;
use segments::{Removed, Segments};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

/// The first seq an incarnation hands out.
const FIRST_SEQ: u64 = 1;

const INCARNATION_FILE: &str = "incarnation";
const FLOOR_FILE: &str = "floor.log";
const DICTIONARY_FILE: &str = "dictionary.log";
const LOCK_FILE: &str = "lock";

/// When written data is forced to the disk.
///
/// Either way every push is handed to the kernel before `push` returns, so a killed
/// agent loses nothing; the policy only decides what a power loss or kernel crash can
/// take: nothing pushed (`EveryBatch`) or up to one interval of batches (`Interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before `push` returns.
    EveryBatch,
    /// fsync when the caller's timer calls [`Spool::sync`], every this often.
    Interval(Duration),
}

/// What a push does when the spool would grow past `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Drop the oldest whole segments and count what they held: fresh data matters
    /// more than old data to a monitoring system, and the coordinator's watermark
    /// moves past the gap because every batch carries the lowest kept seq.
    DropOldest,
    /// Refuse the push with [`SpoolError::Full`], writing nothing, so the caller
    /// decides (wait, or drop the newest).
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Upper bound on the bytes of all segment files together.
    pub max_bytes: u64,
    /// A segment is closed once it would grow past this; space is reclaimed and dropped
    /// a segment at a time, so this is the granularity of both.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub when_full: FullPolicy,
}

impl SpoolConfig {
    /// The defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            ..SpoolConfig::default()
        }
    }
}

impl Default for SpoolConfig {
    /// 256 MiB in 8 MiB segments: hours of a busy host's metrics, dropped 1/32 at a
    /// time when full. fsync on every batch: an agent pushes one batch per collection
    /// tick, seconds apart, so the cost is a few fsyncs a minute, and in exchange a
    /// pushed batch survives even a power loss. Drop-oldest when full: during a long
    /// outage the newest data is the most useful.
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("spool"),
            max_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            fsync: FsyncPolicy::EveryBatch,
            when_full: FullPolicy::DropOldest,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {path}: damaged record at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "spool {path}: record at offset {offset} has format version {version}, this agent reads version {}; it was written by a newer agent (remove the spool directory to start afresh)",
        record::FORMAT_VERSION
    )]
    UnsupportedVersion {
        path: PathBuf,
        offset: u64,
        version: u8,
    },
    /// Refused under [`FullPolicy::Block`]; a unit variant so callers match it simply
    /// (the figures are in [`Spool::stats`]).
    #[error("the spool is full; the batch was not written")]
    Full,
    #[error("spool {path}: a record of {bytes} bytes is larger than the {max} bytes allowed")]
    TooLarge { path: PathBuf, bytes: u64, max: u64 },
    #[error("spool {path}: invalid config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("spool {path}: encoding a record: {reason}")]
    Encode { path: PathBuf, reason: String },
    #[error("spool {path}: a failed write could not be undone; reopen the spool")]
    Poisoned { path: PathBuf },
    #[error("spool {path} is in use by another process (two agents sharing a state directory?)")]
    Locked { path: PathBuf },
}

/// A batch to (re)send: its seq and its points.
pub type PendingBatch = (u64, Vec<PointGroup>);

/// The result of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// The seq the batch was stored under.
    pub seq: u64,
    /// Kept batches this push dropped to make room (drop-oldest only).
    pub dropped_batches: u64,
    pub dropped_samples: u64,
}

/// The result of [`Spool::resume_after`].
#[must_use = "a changed incarnation means the connection must be re-established"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeOutcome {
    /// Kept batches removed because the coordinator had already applied them.
    pub applied_removed: u64,
    /// Set when the spool had to take a new incarnation (see `resume_after`); the
    /// uplink must then say `Hello` again with it before sending any batch.
    pub new_incarnation: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Bytes of all segment files, including not yet reclaimed acknowledged batches.
    pub bytes: u64,
    pub max_bytes: u64,
    pub segments: u64,
    /// Kept batches (not acknowledged, applied or dropped), and their samples.
    pub batches: u64,
    pub samples: u64,
    pub next_seq: u64,
    pub lowest_seq: u64,
    /// Counted since this process opened the spool.
    pub dropped_batches_total: u64,
    pub dropped_samples_total: u64,
    /// Files whose torn tail was cut off when opening.
    pub torn_records_total: u64,
    /// Kept batches that could not be read back when sending (also counted as dropped).
    pub corrupt_batches_total: u64,
    pub live_series: u64,
    /// Retired series whose def is kept until their last batch leaves the spool.
    pub retiring_series: u64,
}

/// The spool. See the module docs for what it keeps where.
pub struct Spool {
    cfg: SpoolConfig,
    incarnation: u64,
    next_seq: u64,
    segments: Segments,
    dictionary: Dictionary,
    floor: FloorLog,
    /// `next_seq` and the next ref as they were at open, until the first
    /// `resume_after`: what was handed out since then has never been sent.
    unconfirmed: Option<(u64, SeriesRef)>,
    dropped_batches_total: u64,
    dropped_samples_total: u64,
    torn_records_total: u64,
    corrupt_batches_total: u64,
    /// Held for the spool's lifetime: two writers would interleave records and reuse
    /// seqs. The OS releases it when the process dies, however it dies.
    _lock: std::fs::File,
}

impl Spool {
    /// Opens the spool in `cfg.dir`, creating it (with a new random incarnation) if it
    /// does not exist, and recovers what a crash left: torn tails are cut off and
    /// counted, every record before them is kept.
    pub fn open(cfg: SpoolConfig) -> Result<Spool, SpoolError> {
        validate(&cfg)?;
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir).map_err(record::io_err(&dir, "creating"))?;
        let lock = lock_dir(&dir)?;
        remove_leftover_temporaries(&dir);
        let incarnation = load_or_create_incarnation(&dir)?;

        let (mut floor, floor_torn) = FloorLog::open(&dir.join(FLOOR_FILE))?;
        let opened = Segments::open(&dir, floor.floor(), cfg.segment_bytes)?;
        let segments = opened.segments;
        let next_seq = FIRST_SEQ
            .max(floor.floor())
            .max(floor.next_seq())
            .max(opened.next_seq_hint);
        let lowest = segments.lowest_live().unwrap_or(next_seq);
        floor.raise(lowest)?;
        let (dictionary, dict_torn) = Dictionary::open(&dir.join(DICTIONARY_FILE), lowest)?;
        let torn_records_total = opened.torn + u64::from(floor_torn) + u64::from(dict_torn);

        let unconfirmed = Some((next_seq, dictionary.next_ref()));
        let mut spool = Spool {
            cfg,
            incarnation,
            next_seq,
            segments,
            dictionary,
            floor,
            unconfirmed,
            dropped_batches_total: 0,
            dropped_samples_total: 0,
            torn_records_total,
            corrupt_batches_total: 0,
            _lock: lock,
        };
        spool.compact_dictionary_if_due()?;
        info!(
            dir = %spool.cfg.dir.display(),
            incarnation = spool.incarnation,
            next_seq = spool.next_seq,
            kept_batches = spool.segments.live(),
            torn = torn_records_total,
            "spool opened"
        );
        Ok(spool)
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The seq the next push will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The lowest seq still kept (`next_seq` when empty): every `Batch` carries it, so
    /// the coordinator's watermark moves past batches this spool dropped.
    pub fn lowest_seq(&self) -> u64 {
        self.segments.lowest_live().unwrap_or(self.next_seq)
    }

    /// Allocates a new series ref for a definition and writes the def beside the spool.
    /// A ref is never handed out twice within an incarnation.
    pub fn define(
        &mut self,
        name: &str,
        labels: &Labels,
        kind: MetricType,
        unit: &str,
        help: &str,
    ) -> Result<SeriesRef, SpoolError> {
        let r = self.dictionary.define(name, labels, kind, unit, help)?;
        self.compact_dictionary_if_due()?;
        Ok(r)
    }

    /// The defs of series not retired: after a restart, the collection loop rebuilds
    /// its series key → ref map from these instead of defining everything anew.
    pub fn dictionary(&self) -> impl Iterator<Item = &SeriesDef> {
        self.dictionary.live()
    }

    /// Every def a kept batch may reference, with ref >= `first_ref`, in ref order.
    ///
    /// The uplink sends `defs_from(0)` once per connection before any batch, then,
    /// since refs only grow, `defs_from(highest ref sent + 1)` before later batches.
    pub fn defs_from(&self, first_ref: SeriesRef) -> impl Iterator<Item = &SeriesDef> {
        self.dictionary.kept_from(first_ref)
    }

    /// The series' StaleNaN was pushed in batch `stale_in_seq`. Its def is forgotten
    /// once that batch and every one before it has left the spool (acknowledged,
    /// applied or dropped), since no kept batch can reference it after that.
    pub fn retire(&mut self, series_ref: SeriesRef, stale_in_seq: u64) -> Result<(), SpoolError> {
        let lowest = self.lowest_seq();
        self.dictionary.retire(series_ref, stale_in_seq, lowest)?;
        self.compact_dictionary_if_due()
    }

    /// Writes a batch and returns its seq. Under [`FullPolicy::DropOldest`] it first
    /// drops the oldest segments as needed and reports what they held.
    pub fn push(&mut self, groups: Vec<PointGroup>) -> Result<PushOutcome, SpoolError> {
        let seq = self.next_seq;
        let samples: u64 = groups.iter().map(|g| g.points.len() as u64).sum();
        let bytes = segments::encode_batch(seq, samples, &groups)
            .map_err(|e| e.into_spool_error(&self.cfg.dir))?;
        let len = bytes.len() as u64;
        if len > self.cfg.max_bytes {
            return Err(SpoolError::TooLarge {
                path: self.cfg.dir.clone(),
                bytes: len,
                max: self.cfg.max_bytes,
            });
        }
        let dropped = self.make_room(len)?;
        // Any def this batch uses must be durable before the batch is.
        self.dictionary.sync()?;
        self.segments.append(seq, &bytes, samples)?;
        self.next_seq = seq + 1;
        if self.cfg.fsync == FsyncPolicy::EveryBatch {
            self.segments.sync()?;
        }
        Ok(PushOutcome {
            seq,
            dropped_batches: dropped.batches,
            dropped_samples: dropped.samples,
        })
    }

    /// Frees room for `len` more bytes per the full policy.
    fn make_room(&mut self, len: u64) -> Result<Removed, SpoolError> {
        let mut dropped = Removed::default();
        while self.segments.bytes() + len > self.cfg.max_bytes {
            if self.cfg.when_full == FullPolicy::Block {
                return Err(SpoolError::Full);
            }
            let Some(r) = self.segments.drop_oldest() else {
                break;
            };
            dropped.batches += r.batches;
            dropped.samples += r.samples;
        }
        if dropped.batches > 0 {
            warn!(
                dir = %self.cfg.dir.display(),
                batches = dropped.batches,
                samples = dropped.samples,
                "spool full: dropped the oldest batches"
            );
            self.dropped_batches_total += dropped.batches;
            self.dropped_samples_total += dropped.samples;
        }
        self.settle()?;
        Ok(dropped)
    }

    /// Up to `max` kept batches with seq >= `from_seq`, in seq order, read from disk.
    ///
    /// Takes `&mut self` because a batch that can no longer be read (disk damage) is
    /// dropped and counted here, so the uplink is never stuck retrying it.
    pub fn pending(&mut self, from_seq: u64, max: usize) -> Result<Vec<PendingBatch>, SpoolError> {
        let (batches, bad) = self.segments.read_pending(from_seq, max)?;
        if !bad.is_empty() {
            for seq in bad {
                if let Some(r) = self.segments.remove(seq) {
                    self.corrupt_batches_total += 1;
                    self.dropped_batches_total += r.batches;
                    self.dropped_samples_total += r.samples;
                }
            }
            self.settle()?;
        }
        Ok(batches)
    }

    /// A final Ack: the batch may be deleted. Acks may arrive in any order; an ack for
    /// a batch no longer kept is ignored.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if self.segments.remove(seq).is_some() {
            self.settle()?;
        }
        Ok(())
    }

    /// Applies what `HelloOk` says: the highest seq the coordinator applied for this
    /// incarnation and the highest series ref it knows.
    ///
    /// `highest_applied_seq` must be a contiguous watermark (every seq up to it applied):
    /// kept batches up to it are removed as applied. The spool then never hands out a
    /// seq or ref at or below these, so a spool rewound by a power loss or restored from
    /// an older copy never reuses one.
    ///
    /// One case cannot be fixed by moving forward: batches pushed (or refs defined)
    /// since the spool was opened, before this first `HelloOk`, whose numbers the
    /// coordinator has already seen from the lost timeline. Renumbering them would mean
    /// rewriting them and every batch that references them; instead the spool takes a
    /// fresh incarnation, in which nothing collides, and reports it so the uplink says
    /// `Hello` again. Kept batches from before the open that are at or below the
    /// watermark are still removed, as they were applied.
    pub fn resume_after(
        &mut self,
        highest_applied_seq: Option<u64>,
        highest_series_ref: Option<u64>,
    ) -> Result<ResumeOutcome, SpoolError> {
        let since_open = self.unconfirmed.take();
        if let Some((first_seq, first_ref)) = since_open {
            let seq_clash =
                self.next_seq > first_seq && highest_applied_seq.is_some_and(|a| a >= first_seq);
            let ref_clash = self.dictionary.next_ref() > first_ref
                && highest_series_ref.is_some_and(|h| h >= first_ref);
            if seq_clash || ref_clash {
                return self.take_new_incarnation(highest_applied_seq, first_seq);
            }
        }
        // Nothing kept is removed here: `highest_applied_seq` is the highest seq applied,
        // not the highest below which every seq was, and a batch answered `Retry` may
        // sit below one that was applied. Kept batches are sent again and the
        // coordinator's dedup answers those it applied as duplicates.
        if let Some(applied) = highest_applied_seq {
            self.next_seq = self.next_seq.max(applied.saturating_add(1));
        }
        if let Some(highest) = highest_series_ref {
            self.dictionary.raise_next_ref(highest.saturating_add(1))?;
        }
        self.settle()?;
        Ok(ResumeOutcome {
            applied_removed: 0,
            new_incarnation: None,
        })
    }

    fn take_new_incarnation(
        &mut self,
        highest_applied_seq: Option<u64>,
        first_seq_since_open: u64,
    ) -> Result<ResumeOutcome, SpoolError> {
        // The new identity is made durable first: a crash right after it can only
        // leave applied batches to be sent again (a duplicate), never unsent ones
        // removed as if they were applied.
        let old = self.incarnation;
        let new = new_incarnation(old);
        meta::write_incarnation(&self.cfg.dir.join(INCARNATION_FILE), new)?;
        self.incarnation = new;
        let mut removed = Removed::default();
        if let Some(applied) = highest_applied_seq {
            let through = applied.min(first_seq_since_open.saturating_sub(1));
            removed = self.segments.remove_through(through);
        }
        self.settle()?;
        warn!(
            dir = %self.cfg.dir.display(),
            old, new,
            "spool: the coordinator has seen seqs or refs this spool handed out again (restored or rewound state directory); continuing under a new incarnation"
        );
        Ok(ResumeOutcome {
            applied_removed: removed.batches,
            new_incarnation: Some(new),
        })
    }

    /// Brings derived state in line after batches left: persists the new floor and
    /// forgets defs no kept batch needs.
    fn settle(&mut self) -> Result<(), SpoolError> {
        let lowest = self.lowest_seq();
        self.floor.raise(lowest)?;
        // The segments no longer show how far seqs went (the newest segment was
        // acknowledged and deleted, or seqs jumped): record it, or a restart would hand
        // out acknowledged seqs again.
        let on_disk = self.segments.last_seq().map_or(0, |s| s.saturating_add(1));
        if self.floor.floor().max(on_disk) < self.next_seq {
            self.floor.raise_next_seq(self.next_seq)?;
        }
        self.dictionary.forget_below(lowest);
        self.compact_dictionary_if_due()
    }

    fn compact_dictionary_if_due(&mut self) -> Result<(), SpoolError> {
        if self.dictionary.wants_compaction() {
            // Compaction removes forgotten defs for good; the floor that made them
            // forgettable must not be lost to a power loss, or a resent batch could
            // reference a def that is gone.
            self.floor.sync()?;
            self.dictionary.compact()?;
        }
        Ok(())
    }

    /// Forces everything written to the disk: dictionary first, then segments, then
    /// the floor. Under [`FsyncPolicy::Interval`] the caller's timer calls this; it is
    /// cheap when nothing changed.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.dictionary.sync()?;
        self.segments.sync()?;
        self.floor.sync()
    }

    /// Whether anything was written since the last sync: a caller on the interval
    /// policy may call [`sync`](Self::sync) only then.
    pub fn needs_sync(&self) -> bool {
        self.dictionary.is_dirty() || self.segments.is_dirty() || self.floor.is_dirty()
    }

    /// How often the caller should call [`sync`](Self::sync); `None` when every push
    /// syncs by itself. The spool keeps no clock or timer of its own.
    pub fn sync_interval(&self) -> Option<Duration> {
        match self.cfg.fsync {
            FsyncPolicy::EveryBatch => None,
            FsyncPolicy::Interval(d) => Some(d),
        }
    }

    /// Syncs and closes, for an orderly shutdown.
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.sync()
    }

    pub fn stats(&self) -> SpoolStats {
        let (live_series, retiring_series) = self.dictionary.counts();
        SpoolStats {
            bytes: self.segments.bytes(),
            max_bytes: self.cfg.max_bytes,
            segments: self.segments.segment_count(),
            batches: self.segments.live(),
            samples: self.segments.live_samples(),
            next_seq: self.next_seq,
            lowest_seq: self.lowest_seq(),
            dropped_batches_total: self.dropped_batches_total,
            dropped_samples_total: self.dropped_samples_total,
            torn_records_total: self.torn_records_total,
            corrupt_batches_total: self.corrupt_batches_total,
            live_series,
            retiring_series,
        }
    }
}

fn validate(cfg: &SpoolConfig) -> Result<(), SpoolError> {
    let bad = |reason: &str| {
        Err(SpoolError::Config {
            path: cfg.dir.clone(),
            reason: reason.to_string(),
        })
    };
    if cfg.segment_bytes == 0 {
        return bad("segment_bytes must be above 0");
    }
    if cfg.max_bytes < cfg.segment_bytes {
        return bad("max_bytes must be at least segment_bytes");
    }
    if let FsyncPolicy::Interval(d) = cfg.fsync
        && d.is_zero()
    {
        return bad("the fsync interval must be above 0 (use EveryBatch to sync every push)");
    }
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(record::io_err(&path, "opening"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(record::io_err(&path, "locking")(e)),
    }
}

/// A crash during an atomic replace can leave its temporary behind; it is never valid.
fn remove_leftover_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".tmp"))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn load_or_create_incarnation(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join(INCARNATION_FILE);
    if let Some(incarnation) = meta::read_incarnation(&path)? {
        return Ok(incarnation);
    }
    // Batches or defs without an incarnation cannot be attributed to one: they are
    // leftovers of a directory whose identity was deleted, not a crash (the
    // incarnation is written before anything else).
    for stale in [FLOOR_FILE, DICTIONARY_FILE] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.starts_with("segment-")) {
                warn!(path = %entry.path().display(), "spool: removing a segment without an incarnation");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let incarnation = new_incarnation(0);
    meta::write_incarnation(&path, incarnation)?;
    Ok(incarnation)
}

/// A random incarnation, never 0 (reads as "none" too easily) nor equal to `previous`.
fn new_incarnation(previous: u64) -> u64 {
    loop {
        let n: u64 = rand::random();
        if n != 0 && n != previous {
            return n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_def_is_synced_before_the_batch_that_uses_it_even_on_the_interval_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = SpoolConfig::new(tmp.path());
        cfg.fsync = FsyncPolicy::Interval(Duration::from_secs(3600));
        let mut spool = Spool::open(cfg).unwrap();
        let r = spool
            .define("node_load1", &Labels::new(), MetricType::Gauge, "", "")
            .unwrap();
        assert!(spool.dictionary.is_dirty());
        spool
            .push(vec![PointGroup {
                timestamp_ms: 0,
                points: vec![(r, 0.5)],
            }])
            .unwrap();
        assert!(
            !spool.dictionary.is_dirty(),
            "the def reached the disk first"
        );
        assert!(
            spool.segments.is_dirty(),
            "the batch waits for the interval"
        );
        spool.sync().unwrap();
        assert!(!spool.needs_sync());
    }

    #[test]
    fn the_default_config_is_valid_and_bounded() {
        let cfg = SpoolConfig::new("/nonexistent");
        assert!(validate(&cfg).is_ok());
        assert_eq!(cfg.max_bytes / cfg.segment_bytes, 32);
    }

    #[test]
    fn a_new_incarnation_differs_from_the_old_and_is_never_zero() {
        for previous in [0, 1, u64::MAX] {
            let n = new_incarnation(previous);
            assert_ne!(n, previous);
            assert_ne!(n, 0);
        }
    }
}
