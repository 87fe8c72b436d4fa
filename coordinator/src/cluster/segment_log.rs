//! The Raft log as a directory of append-only segment files: [`SegmentLogStorage`].
//!
//! Why not a database: the log is written once, read back within a Ready or two, and deleted a
//! checkpoint (1–2 s) later. An LSM database writes every entry twice (journal, then a table at
//! flush) and keeps a journal file of its own size whatever the live log is. A sequence of
//! files, the newest appended to, writes each entry once, and compaction gives disk back
//! exactly by deleting whole files. (etcd's WAL and TiKV's raft-engine work this way.)
//!
//! # Format, version 1
//!
//! The directory holds files named `<first record sequence number, 20 digits>.seg`. Every
//! record ever written has a sequence number one higher than the one before, across files, so
//! the name of the next file says how many records the previous one must hold: a file cut
//! short at a record boundary, or a missing file, shows as a jump in the sequence. (Entry
//! indexes cannot name files: a leader's overwrite makes them go back.)
//!
//! A file starts with a 24-byte header: the magic `ARGUSSEG`, the format version (a `u8`, 1),
//! three zero bytes, the first record's sequence number (`u64`), and a CRC32 of those 20 bytes.
//! A later format keeps the magic and the version byte where they are, so an old binary
//! refuses it ([`LogError::UnsupportedFormat`]) instead of misreading it (DESIGN §3.7).
//!
//! Records follow, each `[len: u32][crc: u32][kind: u8][body]`, where `len` counts the kind
//! byte and the body and `crc` is a CRC32 of (the record's sequence number as `u64`, `len`,
//! kind, body). All integers are little-endian. Mixing the sequence number into the checksum
//! means a stale record left behind a newer one (an old tail resurfacing after a crash) can
//! never pass for the next one. Kinds:
//!
//! | kind | body | replay |
//! |---|---|---|
//! | 1 entry | index `u64`, term `u64`, protobuf `Entry` | entries at or after `index` are replaced by it |
//! | 2 hard state | protobuf `HardState` | replaces the hard state |
//! | 3 conf state | protobuf `ConfState` | replaces the membership |
//! | 4 state | flags `u8` (bit 0: reset), base index `u64`, base term `u64`, hard-state length `u32`, protobuf `HardState`, protobuf `ConfState` (the rest) | sets base, hard state and membership; drops entries up to the base (all of them with reset) |
//!
//! Entries keep index and term in front of the protobuf so that opening the log and `term(i)`
//! never decode an entry. A leader overwriting a follower's suffix is an entry record at a lower
//! index, which supersedes (nothing is cut out of a file while it runs, so no write can
//! resurrect overwritten bytes). Hard state and membership are records in the same stream, so
//! the one fsync per Ready ([`LogStorage::sync`]) covers entries and state together: no second
//! file, no rename per Ready.
//!
//! # Crash safety
//!
//! - **Only the newest file can be torn.** Before a new file is created the one it follows is
//!   fdatasynced (and the directory fsynced if that file is not yet durable in it), so every
//!   file but the last is complete. On open, a torn or checksum-failing tail of the last file
//!   (never synced, or being written at the crash) is cut off, and the cut is synced before
//!   anything is appended; a bad record anywhere else is [`LogError::Corrupt`] naming the file
//!   and offset. A last file whose header is incomplete is removed.
//! - **Every file starts with a state record** (base, hard state, membership as they are when
//!   the file is created), so deleting the files before it never loses them.
//! - **Compaction** writes a state record with the new base, fsyncs it, and only then deletes
//!   the files (oldest first) that hold no entry at or after the base: had the deletes come
//!   first, a crash could leave a log whose base lies below entries that are gone. If a crash
//!   interrupts the deletes, the survivors replay harmlessly below the base. A file whose
//!   deletion was lost while a later one's was not shows as a jump in the sequence; replay
//!   then forgets the entries read so far (they must all lie below the final base, and a check
//!   at the end proves it: an entry missing above the base is [`LogError::Corrupt`]).
//! - **A snapshot** starts a new file whose first record is a reset state record, fsyncs it,
//!   then deletes every older file.
//! - A failed write or fsync leaves the file in an unknown state (a failed fsync may have
//!   dropped dirty pages), so the storage then refuses every write until it is reopened, which
//!   recovers from what is on disk.
//!
//! # Memory
//!
//! One [`Loc`] (32 bytes) per live entry says where its record lies and what its term is. The
//! newest entries are also kept decoded, up to [`SegmentLogConfig::cache_bytes`], because raft
//! reads them back right after appending them (to apply, to send to followers); older ones are
//! read back with positional reads and checked against their checksum. Both are bounded by the
//! live log. Files are opened only while being read, so a long log costs no descriptors.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::storage::{LogError, LogStorage, check_entries_range, to_raft, within_size};

#[cfg(test)]
mod tests;

/// Default size at which the newest file is closed and a new one started. Compaction frees
/// whole files, so this is about how much disk a compacted log keeps beyond its live entries;
/// smaller files cost one more fsync (the directory's) per file. 256 KiB: at the compression
/// benchmark's rate (2 MB of entries a second) that is a handful of directory fsyncs a
/// second beside hundreds of log fsyncs, and the log's mean size fell from 1.6 to 1.2 MB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 * 1024;
/// Default budget of decoded recent entries kept in memory.
pub const DEFAULT_CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Largest record written or accepted from disk (kind and body). A length read from disk is
/// checked against this and against the file's size before anything is allocated for it.
pub const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;

const FORMAT_VERSION: u8 = 1;
const MAGIC: &[u8; 8] = b"ARGUSSEG";
const HEADER_LEN: usize = 24;
/// `len` and `crc` in front of every record.
const RECORD_HEAD: usize = 8;
/// Index and term in front of an entry's protobuf.
const ENTRY_PREFIX: usize = 16;
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
const KIND_STATE: u8 = 4;
const STATE_RESET: u8 = 1;
const SUFFIX: &str = ".seg";
const NAME_DIGITS: usize = 20;
/// Read buffer when replaying a file.
const SCAN_BUFFER: usize = 256 * 1024;
/// What a cached entry costs beyond its payload (the struct and its queue slot), for the
/// cache's byte budget.
const CACHED_ENTRY_OVERHEAD: usize = 96;

/// Tunables of [`SegmentLogStorage`].
#[derive(Debug, Clone)]
pub struct SegmentLogConfig {
    /// A new file is started once the newest reaches this size (a file holds at least one
    /// entry, so one large entry makes a larger file).
    pub segment_bytes: u64,
    /// Bytes of recent decoded entries kept in memory; 0 reads every entry from disk.
    pub cache_bytes: usize,
}

impl Default for SegmentLogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// One file of the log, keyed in [`SegmentLogStorage::segments`] by its first sequence number.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    size: u64,
    records: u64,
}

/// Where a live entry's record lies, and the entry's term.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// The record's sequence number (which also finds its file).
    seq: u64,
    /// Offset of the record (its `len` field) in its file.
    offset: u64,
    /// The whole record's length, head included.
    len: u32,
    term: u64,
}

impl Loc {
    /// The size of the entry's protobuf, which is what raft-rs's `max_size` counts.
    fn entry_size(&self) -> u64 {
        u64::from(self.len).saturating_sub((RECORD_HEAD + 1 + ENTRY_PREFIX) as u64)
    }
}

/// Everything but the entries: what a state record carries.
#[derive(Debug, Clone, Default, PartialEq)]
struct LogState {
    /// (index, term) of the entry just before the first one kept.
    base: (u64, u64),
    hard_state: HardState,
    conf_state: ConfState,
}

/// The Raft log in a directory of append-only segment files (see the module documentation).
pub struct SegmentLogStorage {
    dir: PathBuf,
    cfg: SegmentLogConfig,
    segments: BTreeMap<u64, Segment>,
    /// The newest file, open for appending and reading.
    active: File,
    /// Its first sequence number (its key in `segments`).
    active_seq: u64,
    /// The sequence number of the next record.
    next_seq: u64,
    /// (index, term) of the entry just before `locs[0]`.
    base: (u64, u64),
    locs: VecDeque<Loc>,
    /// Decoded copies of the newest entries: the last `cache.len()` of the log.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    hard_state: HardState,
    conf_state: ConfState,
    disk_bytes: u64,
    /// Bytes written to the active file since its last fdatasync.
    data_unsynced: bool,
    /// Files created or deleted since the directory's last fsync.
    dir_unsynced: bool,
    /// Set when a write or fsync failed; every later write is refused.
    failed: Option<String>,
    /// Records being encoded, reused between calls.
    buf: Vec<u8>,
}

impl SegmentLogStorage {
    /// Opens (or creates) the log in directory `dir` with the default tunables.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::open_with(dir, SegmentLogConfig::default())
    }

    /// Opens (or creates) the log in directory `dir`, replaying its files.
    pub fn open_with(dir: impl AsRef<Path>, cfg: SegmentLogConfig) -> Result<Self, LogError> {
        let dir = dir.as_ref().to_path_buf();
        let mut dir_unsynced = false;
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
            // The directory itself must survive a crash, or its first synced file goes with it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(io_at(parent))?;
            }
        }
        let files = list_segments(&dir)?;
        let count = files.len();
        let mut replay = Replay::default();
        let mut segments = BTreeMap::new();
        let mut prev_end: Option<u64> = None;
        for (i, (seq, path)) in files.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let mut gap_from = None;
            if let Some(end) = prev_end {
                if seq < end {
                    return Err(LogError::Corrupt(format!(
                        "{} starts at record {seq}, inside the file before it (which ends at {end})",
                        path.display()
                    )));
                }
                if seq > end {
                    gap_from = Some(end);
                }
            }
            match scan_segment(&path, seq, is_last, gap_from, &mut replay)? {
                Scan::Complete { size, records } => {
                    segments.insert(
                        seq,
                        Segment {
                            path,
                            size,
                            records,
                        },
                    );
                    prev_end = Some(seq + records);
                }
                Scan::TornTail {
                    keep,
                    records,
                    len,
                    why,
                } => {
                    tracing::warn!(
                        file = %path.display(),
                        offset = keep,
                        dropped_bytes = len - keep,
                        reason = %why,
                        "raft log: cutting the unsynced tail off the newest segment"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_at(&path))?;
                    file.set_len(keep).map_err(io_at(&path))?;
                    // Synced now, so no new record can ever sit in front of old bytes.
                    file.sync_all().map_err(io_at(&path))?;
                    segments.insert(
                        seq,
                        Segment {
                            path,
                            size: keep,
                            records,
                        },
                    );
                    prev_end = Some(seq + records);
                }
                Scan::TornHeader => {
                    tracing::warn!(
                        file = %path.display(),
                        "raft log: removing a newest segment whose header was never written whole"
                    );
                    std::fs::remove_file(&path).map_err(io_at(&path))?;
                    dir_unsynced = true;
                }
            }
        }
        let (state, locs) = replay.finish(&dir)?;

        let (active_seq, active) = match segments.last_key_value() {
            Some((&seq, seg)) => {
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&seg.path)
                    .map_err(io_at(&seg.path))?;
                (seq, file)
            }
            None => {
                let seq = prev_end.unwrap_or(0);
                let (file, seg) = create_segment(&dir, seq, false, &state)?;
                file.sync_data().map_err(io_at(&seg.path))?;
                dir_unsynced = true;
                segments.insert(seq, seg);
                (seq, file)
            }
        };
        let next_seq = active_seq + segments.get(&active_seq).map_or(0, |s| s.records);
        let disk_bytes = segments.values().map(|s| s.size).sum();
        let mut log = Self {
            dir,
            cfg,
            segments,
            active,
            active_seq,
            next_seq,
            base: state.base,
            locs,
            cache: VecDeque::new(),
            cache_bytes: 0,
            hard_state: state.hard_state,
            conf_state: state.conf_state,
            disk_bytes,
            data_unsynced: false,
            dir_unsynced,
            failed: None,
            buf: Vec::new(),
        };
        if log
            .segments
            .get(&active_seq)
            .is_some_and(|s| s.records == 0)
        {
            // A file cut back to its header (a crash right after it was created) gets the
            // state record every file starts with, before anything else is appended to it.
            let state = log.current_state();
            log.write_record(KIND_STATE, |buf| encode_state(buf, false, &state))?;
        }
        log.sync()?;
        tracing::debug!(
            dir = %log.dir.display(),
            first = log.first(),
            last = log.last(),
            commit = log.hard_state.commit,
            term = log.hard_state.term,
            segments = log.segments.len(),
            "raft log opened"
        );
        Ok(log)
    }

    fn first(&self) -> u64 {
        self.base.0 + 1
    }

    fn last(&self) -> u64 {
        self.base.0 + self.locs.len() as u64
    }

    /// Position of entry `index` (which must be live) in `locs`.
    fn slot(&self, index: u64) -> usize {
        // Live indexes differ from the base by at most `locs.len()`, which is a usize.
        usize::try_from(index - self.first()).unwrap_or(usize::MAX)
    }

    fn current_state(&self) -> LogState {
        LogState {
            base: self.base,
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        }
    }

    /// The first sequence number of the file holding record `seq`.
    fn segment_of(&self, seq: u64) -> Option<u64> {
        self.segments.range(..=seq).next_back().map(|(&k, _)| k)
    }

    fn active_segment(&self) -> Option<&Segment> {
        self.segments.get(&self.active_seq)
    }

    fn check_usable(&self) -> Result<(), LogError> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(LogError::Io {
                path: self.dir.clone(),
                source: io::Error::other(format!(
                    "writes are refused after an earlier failure ({why}); reopen the log"
                )),
            }),
        }
    }

    /// Records a failed write or fsync: from now on the file's contents are unknown, so every
    /// write is refused until the log is reopened (which recovers from what is on disk).
    fn fail(&mut self, path: &Path, source: io::Error) -> LogError {
        tracing::error!(file = %path.display(), error = %source, "raft log write failed");
        self.failed = Some(format!("{}: {source}", path.display()));
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn active_path(&self) -> PathBuf {
        self.active_segment()
            .map_or_else(|| self.dir.clone(), |s| s.path.clone())
    }

    /// Writes the encoded records in `buf` (`records` of them) to the active file.
    fn flush(&mut self, records: u64) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.active.write_all(&self.buf) {
            let path = self.active_path();
            return Err(self.fail(&path, e));
        }
        let n = self.buf.len() as u64;
        self.buf.clear();
        if let Some(seg) = self.segments.get_mut(&self.active_seq) {
            seg.size += n;
            seg.records += records;
        }
        self.disk_bytes += n;
        self.data_unsynced = true;
        Ok(())
    }

    /// Whether the next record (with `pending` records encoded but not yet written) should go
    /// to a new file. A file always takes at least one record beyond its state record.
    fn should_rotate(&self, pending: u64) -> bool {
        self.active_segment().is_some_and(|s| {
            s.size + self.buf.len() as u64 >= self.cfg.segment_bytes && s.records + pending > 1
        })
    }

    /// Closes the active file and starts the next one with a state record: `state`, which
    /// drops every entry before it when `reset`.
    fn start_segment(&mut self, reset: bool, state: &LogState) -> Result<(), LogError> {
        // Every file but the newest must be complete once a newer one exists (recovery treats
        // a bad record in one as corruption, a missing one as a gap): sync its data and, if
        // it was created since, its name.
        if self.data_unsynced {
            if let Err(e) = self.active.sync_data() {
                let path = self.active_path();
                return Err(self.fail(&path, e));
            }
            self.data_unsynced = false;
        }
        if self.dir_unsynced {
            if let Err(e) = sync_dir(&self.dir) {
                let dir = self.dir.clone();
                return Err(self.fail(&dir, e));
            }
            self.dir_unsynced = false;
        }
        let seq = self.next_seq;
        let (file, seg) = match create_segment(&self.dir, seq, reset, state) {
            Ok(created) => created,
            Err(e) => {
                self.failed = Some(e.to_string());
                return Err(e);
            }
        };
        tracing::debug!(file = %seg.path.display(), reset, "raft log: new segment");
        self.disk_bytes += seg.size;
        self.next_seq = seq + seg.records;
        self.segments.insert(seq, seg);
        self.active = file;
        self.active_seq = seq;
        self.data_unsynced = true;
        self.dir_unsynced = true;
        Ok(())
    }

    /// Appends one non-entry record of `kind`, its body written by `body`.
    fn write_record(
        &mut self,
        kind: u8,
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        self.check_usable()?;
        if self.should_rotate(0) {
            let state = self.current_state();
            self.start_segment(false, &state)?;
        }
        self.buf.clear();
        let start = begin_record(&mut self.buf, kind);
        let sealed =
            body(&mut self.buf).and_then(|()| seal_record(&mut self.buf, start, self.next_seq));
        if let Err(e) = sealed {
            self.buf.clear();
            return Err(e);
        }
        self.next_seq += 1;
        self.flush(1)
    }

    /// Deletes the files `doomed` (oldest first). A file that cannot be deleted stays listed,
    /// and so does every one after it, so the next compaction tries again in the same order.
    fn delete_segments(&mut self, doomed: &[u64]) {
        for seq in doomed {
            let Some(seg) = self.segments.get(seq) else {
                continue;
            };
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %seg.path.display(), error = %e,
                        "raft log: could not delete a compacted segment; will retry");
                    return;
                }
            }
            if let Some(seg) = self.segments.remove(seq) {
                self.disk_bytes = self.disk_bytes.saturating_sub(seg.size);
            }
            self.dir_unsynced = true;
        }
    }

    /// Drops cached entries below index `to`.
    fn trim_cache_below(&mut self, to: u64) {
        let cache_start = self.last() + 1 - self.cache.len() as u64;
        let drop = to.saturating_sub(cache_start).min(self.cache.len() as u64);
        for _ in 0..drop {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes = self.cache_bytes.saturating_sub(cached_cost(&e));
            }
        }
    }

    fn read_entries(&self, low: u64, high: u64, max: Option<u64>) -> Result<Vec<Entry>, LogError> {
        let cache_start = self.last() + 1 - self.cache.len() as u64;
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut reader = SegmentReader::default();
        for index in low..high {
            let Some(loc) = self.locs.get(self.slot(index)).copied() else {
                return Err(LogError::Corrupt(format!(
                    "entry {index} is not in the index"
                )));
            };
            total = total.saturating_add(loc.entry_size());
            if !within_size(out.len(), total, max) {
                break;
            }
            let entry = match index.checked_sub(cache_start) {
                Some(i) => self
                    .cache
                    .get(usize::try_from(i).unwrap_or(usize::MAX))
                    .cloned(),
                None => None,
            };
            let entry = match entry {
                Some(e) => e,
                None => self.read_entry(index, loc, &mut reader)?,
            };
            out.push(entry);
        }
        Ok(out)
    }

    /// Reads entry `index` back from its file and checks it against its checksum and `loc`.
    fn read_entry(
        &self,
        index: u64,
        loc: Loc,
        reader: &mut SegmentReader,
    ) -> Result<Entry, LogError> {
        let seg_seq = self
            .segment_of(loc.seq)
            .ok_or_else(|| LogError::Corrupt(format!("no segment holds record {}", loc.seq)))?;
        let Some(seg) = self.segments.get(&seg_seq) else {
            return Err(LogError::Corrupt(format!(
                "segment {seg_seq} is not listed"
            )));
        };
        let file = if seg_seq == self.active_seq {
            &self.active
        } else {
            reader.open(seg_seq, &seg.path)?
        };
        let mut record = vec![0u8; loc.len as usize];
        read_exact_at(file, &mut record, loc.offset).map_err(io_at(&seg.path))?;
        let bad = |why: String| {
            LogError::Corrupt(format!(
                "{}: offset {}: entry {index}: {why}",
                seg.path.display(),
                loc.offset
            ))
        };
        let (head, body) = record.split_at(RECORD_HEAD);
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len as usize != body.len() || record_crc(loc.seq, len, body) != crc {
            return Err(bad("checksum mismatch on read".into()));
        }
        let Ok(Record::Entry {
            index: rec_index,
            term,
            proto,
        }) = decode_record(body)
        else {
            return Err(bad("not an entry record".into()));
        };
        if rec_index != index || term != loc.term {
            return Err(bad(format!("record holds entry {rec_index} (term {term})")));
        }
        let entry = Entry::parse_from_bytes(proto)?;
        if entry.index != index || entry.term != term {
            return Err(bad(format!(
                "protobuf holds entry {} (term {})",
                entry.index, entry.term
            )));
        }
        Ok(entry)
    }
}

/// Opens older files on demand while reading a range, one at a time.
#[derive(Default)]
struct SegmentReader {
    open: Option<(u64, File)>,
}

impl SegmentReader {
    fn open(&mut self, seq: u64, path: &Path) -> Result<&File, LogError> {
        if self.open.as_ref().is_none_or(|(s, _)| *s != seq) {
            let file = File::open(path).map_err(io_at(path))?;
            self.open = Some((seq, file));
        }
        match &self.open {
            Some((_, file)) => Ok(file),
            None => Err(LogError::Corrupt("segment reader lost its file".into())),
        }
    }
}

impl Storage for SegmentLogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        check_entries_range(low, high, self.first(), self.last())?;
        if low == high {
            return Ok(Vec::new());
        }
        let max = max_size.into().filter(|&m| m != raft::NO_LIMIT);
        self.read_entries(low, high, max).map_err(to_raft)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.base.0 {
            return Ok(self.base.1);
        }
        if idx < self.base.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.locs
            .get(self.slot(idx))
            .map(|l| l.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Snapshots are built from a state-machine checkpoint in the cluster issue; until
        // then raft is told to ask again later (as FjallLogStorage does).
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

impl LogStorage for SegmentLogStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        self.check_usable()?;
        let Some(head) = entries.first() else {
            return Ok(());
        };
        let not_contiguous = |index| LogError::NotContiguous {
            index,
            first: self.first(),
            last: self.last(),
        };
        if head.index <= self.base.0 || head.index > self.last() + 1 {
            return Err(not_contiguous(head.index));
        }
        for (offset, e) in entries.iter().enumerate() {
            if e.index != head.index + offset as u64 {
                return Err(not_contiguous(e.index));
            }
            let size = u64::from(e.compute_size()) + 1 + ENTRY_PREFIX as u64;
            if size > u64::from(MAX_RECORD_BYTES) {
                return Err(LogError::Io {
                    path: self.dir.clone(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "entry {} of {size} bytes exceeds the record limit of {MAX_RECORD_BYTES}",
                            e.index
                        ),
                    ),
                });
            }
        }

        // Encode and write; entries at or after `head.index` already in the log are
        // superseded by these records (see the module documentation).
        let mut new_locs = Vec::with_capacity(entries.len());
        self.buf.clear();
        let mut pending = 0u64;
        for e in entries {
            if self.should_rotate(pending) {
                self.flush(pending)?;
                pending = 0;
                let state = self.current_state();
                self.start_segment(false, &state)?;
            }
            let offset = self.active_segment().map_or(0, |s| s.size) + self.buf.len() as u64;
            let seq = self.next_seq;
            let start = begin_record(&mut self.buf, KIND_ENTRY);
            self.buf.extend_from_slice(&e.index.to_le_bytes());
            self.buf.extend_from_slice(&e.term.to_le_bytes());
            let sealed = e
                .write_to_vec(&mut self.buf)
                .map_err(LogError::from)
                .and_then(|()| seal_record(&mut self.buf, start, seq));
            let len = match sealed {
                Ok(len) => len,
                Err(e) => {
                    // Part of the batch may be on disk already: stop writing to be safe.
                    self.buf.clear();
                    self.failed = Some(e.to_string());
                    return Err(e);
                }
            };
            self.next_seq += 1;
            pending += 1;
            new_locs.push(Loc {
                seq,
                offset,
                len,
                term: e.term,
            });
        }
        self.flush(pending)?;

        // The cache ends where the log does: drop what the new entries replace, add them.
        let cache_start = self.last() + 1 - self.cache.len() as u64;
        let cache_keep = usize::try_from(head.index.saturating_sub(cache_start)).unwrap_or(0);
        while self.cache.len() > cache_keep {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes = self.cache_bytes.saturating_sub(cached_cost(&e));
            }
        }
        let keep = self.slot(head.index);
        self.locs.truncate(keep);
        self.locs.extend(new_locs);
        if self.cfg.cache_bytes > 0 {
            for e in entries {
                self.cache_bytes += cached_cost(e);
                self.cache.push_back(e.clone());
            }
            while self.cache_bytes > self.cfg.cache_bytes {
                match self.cache.pop_front() {
                    Some(e) => self.cache_bytes = self.cache_bytes.saturating_sub(cached_cost(&e)),
                    None => break,
                }
            }
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogError> {
        if *hs == self.hard_state {
            return self.check_usable();
        }
        self.write_record(KIND_HARD_STATE, |buf| Ok(hs.write_to_vec(buf)?))?;
        self.hard_state = hs.clone();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), LogError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogError> {
        if *cs == self.conf_state {
            return self.check_usable();
        }
        self.write_record(KIND_CONF_STATE, |buf| Ok(cs.write_to_vec(buf)?))?;
        self.conf_state = cs.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogError> {
        self.check_usable()?;
        if meta.index <= self.base.0 {
            return Err(LogError::SnapshotOutOfDate {
                index: meta.index,
                base: self.base.0,
            });
        }
        let mut hard_state = self.hard_state.clone();
        hard_state.term = hard_state.term.max(meta.term);
        hard_state.commit = hard_state.commit.max(meta.index);
        let state = LogState {
            base: (meta.index, meta.term),
            hard_state,
            conf_state: meta.get_conf_state().clone(),
        };
        // A new file that starts by resetting the log, synced, and then every older file goes.
        self.start_segment(true, &state)?;
        self.base = state.base;
        self.hard_state = state.hard_state;
        self.conf_state = state.conf_state;
        self.locs.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.sync()?;
        let doomed: Vec<u64> = self
            .segments
            .range(..self.active_seq)
            .map(|(&k, _)| k)
            .collect();
        self.delete_segments(&doomed);
        Ok(())
    }

    fn compact(&mut self, to: u64) -> Result<(), LogError> {
        self.check_usable()?;
        if to <= self.first() {
            return Ok(());
        }
        if to > self.last() + 1 {
            return Err(LogError::CompactPastEnd {
                to,
                last: self.last(),
            });
        }
        let base_term = self
            .locs
            .get(self.slot(to - 1))
            .map(|l| l.term)
            .ok_or_else(|| LogError::Corrupt(format!("entry {} is not in the index", to - 1)))?;
        let mut state = self.current_state();
        state.base = (to - 1, base_term);
        self.write_record(KIND_STATE, |buf| encode_state(buf, false, &state))?;
        self.trim_cache_below(to);
        let drop = self.slot(to);
        self.locs.drain(..drop);
        self.base = state.base;

        // Files before the one holding the first live entry hold nothing live any more.
        let keep_from = self
            .locs
            .front()
            .and_then(|l| self.segment_of(l.seq))
            .unwrap_or(self.active_seq)
            .min(self.active_seq);
        let doomed: Vec<u64> = self.segments.range(..keep_from).map(|(&k, _)| k).collect();
        if doomed.is_empty() {
            // Nothing is deleted, so the new base may become durable with the next sync: a
            // crash before it only brings back entries that are still on disk.
            return Ok(());
        }
        // The base must be durable before the entries below it disappear.
        self.sync()?;
        self.delete_segments(&doomed);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.check_usable()?;
        if self.data_unsynced {
            if let Err(e) = self.active.sync_data() {
                let path = self.active_path();
                return Err(self.fail(&path, e));
            }
            self.data_unsynced = false;
        }
        if self.dir_unsynced {
            if let Err(e) = sync_dir(&self.dir) {
                let dir = self.dir.clone();
                return Err(self.fail(&dir, e));
            }
            self.dir_unsynced = false;
        }
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn conf_state(&self) -> ConfState {
        self.conf_state.clone()
    }

    fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }
}

fn cached_cost(e: &Entry) -> usize {
    e.data.len() + e.context.len() + CACHED_ENTRY_OVERHEAD
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:0NAME_DIGITS$}{SUFFIX}"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files of `dir`, by first sequence number. Other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let item = item.map_err(io_at(dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        match parse_segment_name(name) {
            Some(seq) => out.push((seq, item.path())),
            None if name.ends_with(SUFFIX) => {
                tracing::warn!(file = %item.path().display(), "raft log: ignoring a file that is not named like a segment");
            }
            None => {}
        }
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out)
}

fn encode_header(seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8] = FORMAT_VERSION;
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..].copy_from_slice(&crc.to_le_bytes());
    h
}

enum HeaderProblem {
    /// Not a whole header: torn if the file is the newest.
    Torn(String),
    /// A whole header that disagrees with the file's name.
    Mismatch(String),
    Unsupported(u8),
}

fn check_header(h: &[u8; HEADER_LEN], seq: u64) -> Result<(), HeaderProblem> {
    if &h[..8] != MAGIC {
        return Err(HeaderProblem::Torn("no segment magic".into()));
    }
    if h[8] != FORMAT_VERSION {
        return Err(HeaderProblem::Unsupported(h[8]));
    }
    let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
    if crc32fast::hash(&h[..20]) != crc {
        return Err(HeaderProblem::Torn("header checksum mismatch".into()));
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[12..20]);
    let first = u64::from_le_bytes(first);
    if first != seq {
        return Err(HeaderProblem::Mismatch(format!(
            "header says the first record is {first}, the name says {seq}"
        )));
    }
    Ok(())
}

/// Creates file `seq` holding its header and a state record, written but not synced.
fn create_segment(
    dir: &Path,
    seq: u64,
    reset: bool,
    state: &LogState,
) -> Result<(File, Segment), LogError> {
    let path = segment_path(dir, seq);
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(&encode_header(seq));
    let start = begin_record(&mut buf, KIND_STATE);
    encode_state(&mut buf, reset, state)?;
    seal_record(&mut buf, start, seq)?;
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(io_at(&path))?;
    file.write_all(&buf).map_err(io_at(&path))?;
    let seg = Segment {
        path,
        size: buf.len() as u64,
        records: 1,
    };
    Ok((file, seg))
}

fn begin_record(buf: &mut Vec<u8>, kind: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEAD]);
    buf.push(kind);
    start
}

/// Fills in the length and checksum of the record that starts at `start` and runs to the end
/// of `buf`; returns the whole record's length.
fn seal_record(buf: &mut [u8], start: usize, seq: u64) -> Result<u32, LogError> {
    let body = &buf[start + RECORD_HEAD..];
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_RECORD_BYTES)
        .ok_or_else(|| LogError::Corrupt(format!("record of {} bytes is too large", body.len())))?;
    let crc = record_crc(seq, len, body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(len + RECORD_HEAD as u32)
}

fn record_crc(seq: u64, len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

fn encode_state(buf: &mut Vec<u8>, reset: bool, state: &LogState) -> Result<(), LogError> {
    buf.push(if reset { STATE_RESET } else { 0 });
    buf.extend_from_slice(&state.base.0.to_le_bytes());
    buf.extend_from_slice(&state.base.1.to_le_bytes());
    let hs = state.hard_state.write_to_bytes()?;
    let hs_len = u32::try_from(hs.len())
        .map_err(|_| LogError::Corrupt(format!("hard state of {} bytes", hs.len())))?;
    buf.extend_from_slice(&hs_len.to_le_bytes());
    buf.extend_from_slice(&hs);
    state.conf_state.write_to_vec(buf)?;
    Ok(())
}

/// A record's body, decoded as far as replay needs.
enum Record<'a> {
    Entry {
        index: u64,
        term: u64,
        proto: &'a [u8],
    },
    HardState(HardState),
    ConfState(ConfState),
    State {
        reset: bool,
        state: LogState,
    },
}

fn take_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// Decodes kind and body (a record after its length and checksum).
fn decode_record(body: &[u8]) -> Result<Record<'_>, String> {
    let (&kind, rest) = body.split_first().ok_or("empty record")?;
    match kind {
        KIND_ENTRY => match (take_u64(rest, 0), take_u64(rest, 8)) {
            (Some(index), Some(term)) => Ok(Record::Entry {
                index,
                term,
                proto: &rest[ENTRY_PREFIX..],
            }),
            _ => Err(format!("entry record of {} bytes", rest.len())),
        },
        KIND_HARD_STATE => HardState::parse_from_bytes(rest)
            .map(Record::HardState)
            .map_err(|e| format!("hard state: {e}")),
        KIND_CONF_STATE => ConfState::parse_from_bytes(rest)
            .map(Record::ConfState)
            .map_err(|e| format!("conf state: {e}")),
        KIND_STATE => {
            let short = || format!("state record of {} bytes", rest.len());
            let (&flags, rest) = rest.split_first().ok_or_else(short)?;
            let index = take_u64(rest, 0).ok_or_else(short)?;
            let term = take_u64(rest, 8).ok_or_else(short)?;
            let hs_len = rest
                .get(16..20)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(short)?;
            let hs_bytes = rest
                .get(20..20usize.saturating_add(hs_len))
                .ok_or_else(short)?;
            let cs_bytes = &rest[20 + hs_len..];
            if flags & !STATE_RESET != 0 {
                return Err(format!("state record with unknown flags {flags:#x}"));
            }
            let hard_state =
                HardState::parse_from_bytes(hs_bytes).map_err(|e| format!("hard state: {e}"))?;
            let conf_state =
                ConfState::parse_from_bytes(cs_bytes).map_err(|e| format!("conf state: {e}"))?;
            Ok(Record::State {
                reset: flags & STATE_RESET != 0,
                state: LogState {
                    base: (index, term),
                    hard_state,
                    conf_state,
                },
            })
        }
        other => Err(format!("unknown record kind {other}")),
    }
}

/// What scanning one file found.
enum Scan {
    Complete {
        size: u64,
        records: u64,
    },
    /// The newest file's bytes from `keep` on (of `len`) are not whole records.
    TornTail {
        keep: u64,
        records: u64,
        len: u64,
        why: String,
    },
    /// The newest file's header is not whole: nothing in it was ever synced.
    TornHeader,
}

/// Reads file `path` (first record `seq`), feeding its records to `replay`. `gap_from` is
/// where the record sequence stood if it jumps at this file; replay hears of the jump only
/// once the header shows the file is whole (a torn newest file must not wipe what came before).
fn scan_segment(
    path: &Path,
    seq: u64,
    is_last: bool,
    gap_from: Option<u64>,
    replay: &mut Replay,
) -> Result<Scan, LogError> {
    let file = File::open(path).map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    let corrupt = |offset: u64, why: &str| {
        LogError::Corrupt(format!("{}: offset {offset}: {why}", path.display()))
    };
    if len < HEADER_LEN as u64 {
        return if is_last {
            Ok(Scan::TornHeader)
        } else {
            Err(corrupt(0, "shorter than a segment header"))
        };
    }
    let mut r = BufReader::with_capacity(SCAN_BUFFER, file);
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).map_err(io_at(path))?;
    match check_header(&header, seq) {
        Ok(()) => {}
        Err(HeaderProblem::Unsupported(found)) => {
            return Err(LogError::UnsupportedFormat {
                found,
                known: FORMAT_VERSION,
            });
        }
        Err(HeaderProblem::Torn(_)) if is_last => return Ok(Scan::TornHeader),
        Err(HeaderProblem::Torn(why) | HeaderProblem::Mismatch(why)) => {
            return Err(corrupt(0, &why));
        }
    }
    if let Some(expected) = gap_from {
        replay.gap(expected, seq, path);
    }

    let mut offset = HEADER_LEN as u64;
    let mut records = 0u64;
    let mut body = Vec::new();
    loop {
        if offset == len {
            return Ok(Scan::Complete { size: len, records });
        }
        // A bad record ends the newest file (its tail was never synced) and is corruption in
        // any other.
        let bad = |why: String| {
            if is_last {
                Ok(Scan::TornTail {
                    keep: offset,
                    records,
                    len,
                    why,
                })
            } else {
                Err(corrupt(offset, &why))
            }
        };
        let rest = len - offset;
        if rest < RECORD_HEAD as u64 {
            return bad(format!("{rest} bytes, less than a record header"));
        }
        let mut head = [0u8; RECORD_HEAD];
        r.read_exact(&mut head).map_err(io_at(path))?;
        let rlen = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if rlen == 0 || rlen > MAX_RECORD_BYTES || u64::from(rlen) > rest - RECORD_HEAD as u64 {
            return bad(format!(
                "record length {rlen} does not fit the {} bytes left",
                rest - RECORD_HEAD as u64
            ));
        }
        // Bounded by the file's size and MAX_RECORD_BYTES, both checked above.
        body.clear();
        body.resize(rlen as usize, 0);
        r.read_exact(&mut body).map_err(io_at(path))?;
        let rec_seq = seq + records;
        if record_crc(rec_seq, rlen, &body) != crc {
            return bad("checksum mismatch".into());
        }
        // From here on the record is exactly what was written: a problem is corruption (or a
        // bug), even in the newest file.
        let record = decode_record(&body).map_err(|why| corrupt(offset, &why))?;
        if records == 0 && !matches!(record, Record::State { .. }) {
            return Err(corrupt(offset, "the first record is not a state record"));
        }
        let applied = match record {
            Record::Entry { index, term, .. } => replay.entry(
                index,
                Loc {
                    seq: rec_seq,
                    offset,
                    len: rlen + RECORD_HEAD as u32,
                    term,
                },
            ),
            Record::HardState(hs) => {
                replay.state.hard_state = hs;
                Ok(())
            }
            Record::ConfState(cs) => {
                replay.state.conf_state = cs;
                Ok(())
            }
            Record::State { reset, state } => replay.state(reset, state),
        };
        applied.map_err(|why| corrupt(offset, &why))?;
        offset += u64::from(rlen) + RECORD_HEAD as u64;
        records += 1;
    }
}

/// The log being rebuilt from its records, in order.
#[derive(Default)]
struct Replay {
    state: LogState,
    /// Index of `locs[0]`.
    start: u64,
    locs: VecDeque<Loc>,
    /// Where the record sequence last jumped, for the error a hole in the log then causes.
    gap: Option<String>,
}

impl Replay {
    fn last(&self) -> u64 {
        if self.locs.is_empty() {
            self.state.base.0
        } else {
            self.start + self.locs.len() as u64 - 1
        }
    }

    fn entry(&mut self, index: u64, loc: Loc) -> Result<(), String> {
        if index <= self.state.base.0 {
            return Err(format!(
                "entry {index} is at or below the log's base {}",
                self.state.base.0
            ));
        }
        if !self.locs.is_empty() && index >= self.start && index <= self.last() + 1 {
            // The next entry, or one that replaces the suffix from `index` on.
            self.locs
                .truncate(usize::try_from(index - self.start).unwrap_or(usize::MAX));
        } else {
            // The first entry above the base, or one after entries that were deleted (those
            // must end up below the base; `finish` checks).
            self.locs.clear();
            self.start = index;
        }
        self.locs.push_back(loc);
        Ok(())
    }

    fn state(&mut self, reset: bool, state: LogState) -> Result<(), String> {
        let (index, term) = state.base;
        let (old_index, old_term) = self.state.base;
        if index < old_index || (index == old_index && term != old_term) {
            return Err(format!(
                "base ({index}, term {term}) is behind the base before it ({old_index}, term {old_term})"
            ));
        }
        if reset {
            self.locs.clear();
        } else if !self.locs.is_empty() && index >= self.start {
            let last = self.last();
            if index > last {
                return Err(format!("base {index} is past the last entry {last}"));
            }
            let cut = usize::try_from(index - self.start).unwrap_or(usize::MAX);
            let at = self.locs.get(cut).map(|l| l.term);
            if at != Some(term) {
                return Err(format!(
                    "base ({index}, term {term}) disagrees with the entry there (term {at:?})"
                ));
            }
            self.locs.drain(..=cut);
            self.start = index + 1;
        }
        self.state = state;
        Ok(())
    }

    /// The record sequence jumps from `expected` to `found`: the files in between were deleted
    /// by a compaction (a deletion lost in a crash while a later one was not). Entries read so
    /// far are forgotten; the next file's state record says where the log stands.
    fn gap(&mut self, expected: u64, found: u64, path: &Path) {
        self.locs.clear();
        self.gap = Some(format!(
            "the record sequence jumps from {expected} to {found} at {}",
            path.display()
        ));
    }

    fn finish(self, dir: &Path) -> Result<(LogState, VecDeque<Loc>), LogError> {
        let base = self.state.base.0;
        if !self.locs.is_empty() && self.start != base + 1 {
            return Err(LogError::Corrupt(format!(
                "log in {}: entries {} to {} are missing ({})",
                dir.display(),
                base + 1,
                self.start - 1,
                self.gap
                    .as_deref()
                    .unwrap_or("no gap in the record sequence")
            )));
        }
        let last = self.last();
        if self.state.hard_state.commit > last {
            return Err(LogError::Corrupt(format!(
                "log in {}: commit index {} is past the last entry {last}",
                dir.display(),
                self.state.hard_state.commit
            )));
        }
        Ok((self.state, self.locs))
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// Makes the directory's entries (files created or deleted) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
