//! The Raft log's storage: the [`LogStorage`] trait the Ready loop persists through, and
//! [`FjallLogStorage`], the log in its own fjall database.
//!
//! The log has a database (and so a journal) of its own (DESIGN §2): the Ready loop fsyncs it
//! once per Ready, and that fsync never forces the time-series store, which writes without
//! syncing, to flush.
//!
//! Layout, two keyspaces in that database:
//!
//! - `raft_entries`: key = log index as 8 bytes big-endian (so keys sort by index and a prefix
//!   of the log is a key range); value = `[format: u8 = 1][term: u64 BE][protobuf Entry]`. The
//!   term sits in front so `term(i)` does not decode a whole (large) entry.
//! - `raft_meta`: `format` (layout version), `hard_state` and `conf_state` (protobuf), and
//!   `truncated` (index and term of the last entry removed by compaction or covered by a
//!   snapshot; 16 bytes big-endian).
//!
//! Writes become visible at once (raft reads them back through [`raft::Storage`] before the
//! fsync) and durable at [`LogStorage::sync`].
//!
//! **Disk use follows the log's logical size.** The log is written once, read back soon, and
//! deleted a checkpoint later (every second or two under load), so compaction must be cheap
//! and give disk back at once:
//! 1. the new base is written and synced first;
//! 2. every table whose keys all lie below the cut is removed from the tree without being
//!    rewritten (lsm-tree's `drop_range`). A synced base must come first because the drop is
//!    durable at once: were the base lost in a crash, the log would restart with a hole;
//! 3. what remains below the cut (in the memtable, or in a table that also holds live
//!    entries) gets a tombstone, so nothing below the base is ever read back;
//! 4. the entries memtable is rotated. fjall unlinks dropped tables when it next cleans up
//!    versions, which a rotation does; the flush writes the tombstones and the short live tail
//!    (values deleted in the same memtable are not written to a table), and that table is
//!    dropped whole by the next compaction. So tables hold about one checkpoint interval.
//!
//! The journal is fjall's: a journal file is preallocated to 64 MiB (sparse: [`LogStorage::
//! disk_bytes`] counts allocated blocks), is sealed at the first memtable flush after 64 MB
//! were written to it (fjall 3.1.13 hard-codes both), and is deleted once every keyspace has
//! flushed what it holds. The log database caps sealed journals at fjall's minimum (64 MiB):
//! `raft_meta`, written every Ready but tiny, never fills its memtable, so without the cap
//! its unflushed hard-state writes would pin every sealed journal up to fjall's default of
//! 512 MiB. With it, the journal is the active file (at most about 64 MB written) plus,
//! briefly, the one just sealed.
//!
//! Steps 2 and 4 use fjall API that fjall 3 marks hidden (`Keyspace::tree`,
//! `AbstractTree::drop_range`, `Keyspace::rotate_memtable`), as the tsdb store's retention
//! does (docs/decisions.md, entry 10): `Cargo.lock` pins fjall 3.1.13, and the tests cover each
//! use.

use std::path::{Path, PathBuf};

use fjall::{AbstractTree, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// What the Ready loop needs from the log beyond reading it (`raft::Storage`).
///
/// Every write is visible to `raft::Storage` reads as soon as the call returns, and durable
/// only after the next [`LogStorage::sync`]: a crash loses what was written since.
pub trait LogStorage: Storage {
    /// Appends `entries` (contiguous indexes), replacing every entry at or after the first
    /// one's index: a follower's log that conflicts with the leader's is cut there.
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError>;
    /// Replaces the hard state (term, vote, commit).
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogError>;
    /// Sets only the commit index of the hard state.
    fn set_commit(&mut self, commit: u64) -> Result<(), LogError>;
    /// Replaces the membership (after a configuration change is applied).
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogError>;
    /// Resets the log to a snapshot: every entry goes, the snapshot's index and term become
    /// the log's base, its conf state the membership, and the commit index at least its index.
    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogError>;
    /// Deletes every entry before index `to` (a prefix). Entries at or after `to` stay.
    fn compact(&mut self, to: u64) -> Result<(), LogError>;
    /// Makes every write so far durable: one fsync.
    fn sync(&mut self) -> Result<(), LogError>;
    /// The hard state as last written (not necessarily synced).
    fn hard_state(&self) -> HardState;
    /// The membership as last written (not necessarily synced).
    fn conf_state(&self) -> ConfState;
    /// Bytes the log takes on disk, for `/metrics`; 0 where that means nothing.
    fn disk_bytes(&self) -> u64 {
        0
    }
}

/// Errors of the log storage.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log database: {0}")]
    Db(#[from] fjall::Error),
    #[error("log record encoding: {0}")]
    Codec(#[from] protobuf::ProtobufError),
    #[error("log is corrupt: {0}")]
    Corrupt(String),
    #[error("log layout version {found} is not understood by this binary (it knows {known})")]
    UnsupportedFormat { found: u8, known: u8 },
    #[error("append starting at index {index} does not fit the log [{first}, {last}]")]
    NotContiguous { index: u64, first: u64, last: u64 },
    #[error("cannot compact to {to}: the log ends at {last}")]
    CompactPastEnd { to: u64, last: u64 },
    #[error("snapshot at index {index} is not newer than the log's base {base}")]
    SnapshotOutOfDate { index: u64, base: u64 },
    #[error("log directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Wraps a log error the way raft-rs expects storage errors.
pub(crate) fn to_raft(e: LogError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

const LOG_FORMAT: u8 = 1;
const ENTRY_FORMAT_V1: u8 = 1;
const META_FORMAT: &[u8] = b"format";
const META_HARD_STATE: &[u8] = b"hard_state";
const META_CONF_STATE: &[u8] = b"conf_state";
const META_TRUNCATED: &[u8] = b"truncated";
/// Tombstones per write batch when compacting, so one compaction never builds an unbounded batch.
const COMPACT_CHUNK: usize = 4096;
/// Memtable budget of `raft_entries` (fjall's default is 64 MiB). Entries die a checkpoint after
/// they are written and compaction rotates the memtable anyway; this bounds memory, and the
/// delay before a full journal is sealed, when checkpoints are rarer than that. fjall stores a
/// keyspace's options when it creates it, so a log created before this setting keeps its own.
const ENTRIES_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
/// Budget of sealed journals: fjall's minimum. Once the sealed ones reach it, the keyspaces
/// that pin the oldest are flushed (see the module documentation).
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

fn entry_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_key(key: &[u8]) -> Result<u64, LogError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| LogError::Corrupt(format!("entry key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) fn encode_entry(e: &Entry) -> Result<Vec<u8>, LogError> {
    let body = e.write_to_bytes()?;
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(ENTRY_FORMAT_V1);
    out.extend_from_slice(&e.term.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn entry_term(value: &[u8]) -> Result<u64, LogError> {
    match value {
        [ENTRY_FORMAT_V1, rest @ ..] if rest.len() >= 8 => {
            let mut term = [0u8; 8];
            term.copy_from_slice(&rest[..8]);
            Ok(u64::from_be_bytes(term))
        }
        [version, ..] if *version != ENTRY_FORMAT_V1 => Err(LogError::UnsupportedFormat {
            found: *version,
            known: ENTRY_FORMAT_V1,
        }),
        _ => Err(LogError::Corrupt(format!(
            "entry record of {} bytes",
            value.len()
        ))),
    }
}

pub(crate) fn decode_entry(index: u64, value: &[u8]) -> Result<Entry, LogError> {
    let term = entry_term(value)?;
    let entry = Entry::parse_from_bytes(&value[9..])?;
    if entry.index != index || entry.term != term {
        return Err(LogError::Corrupt(format!(
            "record at index {index} (term {term}) holds entry {} (term {})",
            entry.index, entry.term
        )));
    }
    Ok(entry)
}

fn encode_truncated((index, term): (u64, u64)) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&index.to_be_bytes());
    out[8..].copy_from_slice(&term.to_be_bytes());
    out
}

fn decode_truncated(v: &[u8]) -> Result<(u64, u64), LogError> {
    let bytes: [u8; 16] = v
        .try_into()
        .map_err(|_| LogError::Corrupt(format!("truncated marker of {} bytes", v.len())))?;
    let (i, t) = bytes.split_at(8);
    let mut index = [0u8; 8];
    let mut term = [0u8; 8];
    index.copy_from_slice(i);
    term.copy_from_slice(t);
    Ok((u64::from_be_bytes(index), u64::from_be_bytes(term)))
}

/// raft-rs's contract for `Storage::entries(low, high)` on a log holding `[first, last]`:
/// below the first entry is `Compacted`, past the end (or an inverted range) `Unavailable`.
pub(crate) fn check_entries_range(low: u64, high: u64, first: u64, last: u64) -> raft::Result<()> {
    if low < first {
        return Err(raft::Error::Store(StorageError::Compacted));
    }
    if high > last + 1 || low > high {
        return Err(raft::Error::Store(StorageError::Unavailable));
    }
    Ok(())
}

/// Applies raft-rs's `max_size` rule: the first entry always, then more while the running
/// total stays within the limit.
pub(crate) fn within_size(taken: usize, total: u64, max: Option<u64>) -> bool {
    taken == 0 || max.is_none_or(|m| total <= m)
}

/// The Raft log and hard state in their own fjall database.
pub struct FjallLogStorage {
    /// The database's directory, whose files [`LogStorage::disk_bytes`] measures.
    dir: PathBuf,
    db: Database,
    entries: Keyspace,
    meta: Keyspace,
    hard_state: HardState,
    conf_state: ConfState,
    /// (index, term) of the entry just before the first one kept.
    truncated: (u64, u64),
    /// (index, term) of the last entry; equal to `truncated` when the log is empty.
    last: (u64, u64),
}

impl FjallLogStorage {
    /// Opens (or creates) the log database in directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogError> {
        let dir = path.as_ref().to_path_buf();
        let db = Database::builder(&dir)
            // Durability is ours to decide: one explicit fsync per Ready, nothing in between.
            .manual_journal_persist(true)
            .max_journaling_size(JOURNAL_BYTES)
            .open()?;
        let entries = db.keyspace("raft_entries", || {
            KeyspaceCreateOptions::default().max_memtable_size(ENTRIES_MEMTABLE_BYTES)
        })?;
        let meta = db.keyspace("raft_meta", KeyspaceCreateOptions::default)?;

        match meta.get(META_FORMAT)? {
            Some(v) => match v.first() {
                Some(&LOG_FORMAT) => {}
                Some(&found) => {
                    return Err(LogError::UnsupportedFormat {
                        found,
                        known: LOG_FORMAT,
                    });
                }
                None => return Err(LogError::Corrupt("empty format marker".into())),
            },
            None => {
                meta.insert(META_FORMAT, [LOG_FORMAT])?;
                db.persist(PersistMode::SyncAll)?;
            }
        }
        let hard_state = match meta.get(META_HARD_STATE)? {
            Some(v) => HardState::parse_from_bytes(&v)?,
            None => HardState::default(),
        };
        let conf_state = match meta.get(META_CONF_STATE)? {
            Some(v) => ConfState::parse_from_bytes(&v)?,
            None => ConfState::default(),
        };
        let truncated = match meta.get(META_TRUNCATED)? {
            Some(v) => decode_truncated(&v)?,
            None => (0, 0),
        };
        let last = match entries.last_key_value() {
            Some(guard) => {
                let (k, v) = guard.into_inner()?;
                let index = decode_key(&k)?;
                if index > truncated.0 {
                    (index, entry_term(&v)?)
                } else {
                    // Only leftovers of an interrupted compaction remain.
                    truncated
                }
            }
            None => truncated,
        };
        if hard_state.commit > last.0 {
            return Err(LogError::Corrupt(format!(
                "commit index {} is past the last entry {}",
                hard_state.commit, last.0
            )));
        }
        tracing::debug!(
            first = truncated.0 + 1,
            last = last.0,
            commit = hard_state.commit,
            term = hard_state.term,
            "raft log opened"
        );
        Ok(Self {
            dir,
            db,
            entries,
            meta,
            hard_state,
            conf_state,
            truncated,
            last,
        })
    }

    /// Bytes allocated to the log database's files (journal included), for `/metrics`.
    ///
    /// fjall's own `Database::disk_space` counts each journal at its apparent size, which is
    /// 64 MiB from the moment it is created (preallocated, sparse), so it would report a fresh
    /// log as 64 MiB; this counts the blocks the files hold.
    pub fn disk_space(&self) -> Result<u64, LogError> {
        allocated_bytes(&self.dir).map_err(|source| LogError::Io {
            path: self.dir.clone(),
            source,
        })
    }

    fn first(&self) -> u64 {
        self.truncated.0 + 1
    }

    fn read_entries(&self, low: u64, high: u64, max: Option<u64>) -> Result<Vec<Entry>, LogError> {
        let mut out = Vec::new();
        let mut total = 0u64;
        for guard in self.entries.range(entry_key(low)..entry_key(high)) {
            let (k, v) = guard.into_inner()?;
            let index = decode_key(&k)?;
            let expected = low + out.len() as u64;
            if index != expected {
                return Err(LogError::Corrupt(format!(
                    "entry {expected} is missing (found {index})"
                )));
            }
            let entry = decode_entry(index, &v)?;
            total += u64::from(entry.compute_size());
            if !within_size(out.len(), total, max) {
                return Ok(out);
            }
            out.push(entry);
        }
        if out.len() as u64 != high - low {
            return Err(LogError::Corrupt(format!(
                "entries [{low}, {high}) are incomplete: {} found",
                out.len()
            )));
        }
        Ok(out)
    }
}

impl Storage for FjallLogStorage {
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
        check_entries_range(low, high, self.first(), self.last.0)?;
        if low == high {
            return Ok(Vec::new());
        }
        let max = max_size.into().filter(|&m| m != raft::NO_LIMIT);
        self.read_entries(low, high, max).map_err(to_raft)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last.0 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.last.0 {
            return Ok(self.last.1);
        }
        match self.entries.get(entry_key(idx)) {
            Ok(Some(v)) => entry_term(&v).map_err(to_raft),
            Ok(None) => Err(to_raft(LogError::Corrupt(format!(
                "entry {idx} is missing"
            )))),
            Err(e) => Err(to_raft(e.into())),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last.0)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Snapshots are built from a state-machine checkpoint in the cluster issue; until
        // then raft is told to ask again later.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

impl LogStorage for FjallLogStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let (Some(head), Some(tail)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        if head.index <= self.truncated.0 || head.index > self.last.0 + 1 {
            return Err(LogError::NotContiguous {
                index: head.index,
                first: self.first(),
                last: self.last.0,
            });
        }
        let mut batch = self.db.batch();
        for (offset, e) in entries.iter().enumerate() {
            if e.index != head.index + offset as u64 {
                return Err(LogError::NotContiguous {
                    index: e.index,
                    first: self.first(),
                    last: self.last.0,
                });
            }
            batch.insert(&self.entries, entry_key(e.index), encode_entry(e)?);
        }
        // Entries past the new tail belonged to a log the leader has overruled.
        for stale in tail.index + 1..=self.last.0 {
            batch.remove(&self.entries, entry_key(stale));
        }
        batch.commit()?;
        self.last = (tail.index, tail.term);
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogError> {
        self.meta.insert(META_HARD_STATE, hs.write_to_bytes()?)?;
        self.hard_state = hs.clone();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), LogError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogError> {
        self.meta.insert(META_CONF_STATE, cs.write_to_bytes()?)?;
        self.conf_state = cs.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogError> {
        if meta.index <= self.truncated.0 {
            return Err(LogError::SnapshotOutOfDate {
                index: meta.index,
                base: self.truncated.0,
            });
        }
        let base = (meta.index, meta.term);
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let cs = meta.get_conf_state().clone();
        // Base, membership and hard state first, in one atomic batch; then the old entries.
        let mut batch = self.db.batch();
        batch.insert(&self.meta, META_TRUNCATED, encode_truncated(base));
        batch.insert(&self.meta, META_HARD_STATE, hs.write_to_bytes()?);
        batch.insert(&self.meta, META_CONF_STATE, cs.write_to_bytes()?);
        batch.commit()?;
        // The drop below is durable at once; the base it relies on must be so first.
        self.db.persist(PersistMode::SyncAll)?;
        self.truncated = base;
        self.last = base;
        self.hard_state = hs;
        self.conf_state = cs;
        self.discard_before(None)
    }

    fn compact(&mut self, to: u64) -> Result<(), LogError> {
        if to <= self.first() {
            return Ok(());
        }
        if to > self.last.0 + 1 {
            return Err(LogError::CompactPastEnd {
                to,
                last: self.last.0,
            });
        }
        let base_term = self
            .term(to - 1)
            .map_err(|e| LogError::Corrupt(format!("term of entry {} unreadable: {e}", to - 1)))?;
        let base = (to - 1, base_term);
        // The new base goes first, synced, because dropping tables is durable at once: a
        // crash after it must find the base that the missing entries lie below. If a crash
        // interrupts the deletes, the leftovers sit below the base, where nothing reads them,
        // and a later compaction removes them. The sync also makes durable whatever the Ready
        // loop wrote since its last one, which is early, never wrong.
        self.meta.insert(META_TRUNCATED, encode_truncated(base))?;
        self.db.persist(PersistMode::SyncAll)?;
        self.truncated = base;
        if self.last.0 < to {
            self.last = base;
        }
        self.discard_before(Some(to))
    }

    fn sync(&mut self) -> Result<(), LogError> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    fn hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn conf_state(&self) -> ConfState {
        self.conf_state.clone()
    }

    fn disk_bytes(&self) -> u64 {
        self.disk_space().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not measure the raft log's disk use");
            0
        })
    }
}

impl FjallLogStorage {
    /// Removes every entry record below `to` (all of them for `None`): drops the tables that
    /// hold nothing else, deletes the rest, then rotates the memtable so that fjall unlinks
    /// the dropped files now (see the module documentation). The base must already be synced.
    fn discard_before(&mut self, to: Option<u64>) -> Result<(), LogError> {
        let dropped = match to {
            Some(to) => self.entries.tree.drop_range(..entry_key(to)),
            None => self.entries.tree.drop_range::<&[u8], _>(..),
        };
        dropped.map_err(fjall::Error::from)?;
        self.remove_keys_before(to)?;
        // A rotation cleans up old versions, which is when dropped tables are unlinked. An
        // empty memtable is not rotated, so then `raft_meta`'s (holding at least the base
        // just written) is: the clean-up covers every keyspace of the database.
        if !self.entries.rotate_memtable()? {
            self.meta.rotate_memtable()?;
        }
        Ok(())
    }

    /// Deletes entry records below `to` (all of them for `None`), a bounded batch at a time.
    fn remove_keys_before(&mut self, to: Option<u64>) -> Result<(), LogError> {
        let iter = match to {
            Some(to) => self.entries.range(..entry_key(to)),
            None => self.entries.iter(),
        };
        let mut batch = self.db.batch();
        for guard in iter {
            let key = guard.key()?;
            batch.remove(&self.entries, key);
            if batch.len() >= COMPACT_CHUNK {
                std::mem::replace(&mut batch, self.db.batch()).commit()?;
            }
        }
        batch.commit()?;
        Ok(())
    }
}

/// Bytes allocated to the files under `dir`, recursively (blocks, not apparent sizes: fjall's
/// journals are sparse). Files that vanish while walking (fjall removing a table or journal)
/// are skipped.
fn allocated_bytes(dir: &Path) -> std::io::Result<u64> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let listing = match std::fs::read_dir(&d) {
            Ok(listing) => listing,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        for item in listing {
            let item = match item {
                Ok(item) => item,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            match item.metadata() {
                Ok(m) if m.is_dir() => pending.push(item.path()),
                Ok(m) => total = total.saturating_add(allocated(&m)),
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks().saturating_mul(512)
}

#[cfg(not(unix))]
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::mem_storage::MemLogStorage;
    use raft::prelude::EntryType;

    pub(crate) fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryNormal);
        e.index = index;
        e.term = term;
        e.data = data.to_vec().into();
        e
    }

    fn all(s: &impl Storage) -> Vec<(u64, u64, Vec<u8>)> {
        let first = s.first_index().expect("first");
        let last = s.last_index().expect("last");
        s.entries(first, last + 1, None, GetEntriesContext::empty(false))
            .expect("entries")
            .into_iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect()
    }

    /// The behaviour every log storage must share; run against each.
    pub(crate) fn log_semantics(s: &mut impl LogStorage) {
        assert_eq!(s.first_index().ok(), Some(1));
        assert_eq!(s.last_index().ok(), Some(0));
        assert_eq!(s.term(0).ok(), Some(0));

        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"c")])
            .expect("append");
        assert_eq!(s.last_index().ok(), Some(3));
        assert_eq!(s.term(2).ok(), Some(1));
        assert_eq!(s.term(3).ok(), Some(2));
        assert!(s.term(4).is_err());

        // A conflicting suffix is replaced, and entries past the new tail disappear.
        s.append(&[entry(2, 3, b"B")]).expect("overwrite");
        assert_eq!(all(s), vec![(1, 1, b"a".to_vec()), (2, 3, b"B".to_vec())]);
        // Gaps and overwriting compacted entries are refused, not panicked on.
        assert!(matches!(
            s.append(&[entry(5, 3, b"x")]),
            Err(LogError::NotContiguous { .. })
        ));
        s.append(&[entry(3, 3, b"c"), entry(4, 3, b"d"), entry(5, 3, b"e")])
            .expect("append");

        // max_size: the first entry always, then while within the limit.
        let one = s
            .entries(1, 6, Some(0), GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(one.len(), 1);
        let size2 = u64::from(entry(1, 1, b"a").compute_size() + entry(2, 3, b"B").compute_size());
        let two = s
            .entries(1, 6, Some(size2), GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(two.len(), 2);

        // Compaction removes a prefix and keeps the term of the entry before the first.
        s.compact(3).expect("compact");
        assert_eq!(s.first_index().ok(), Some(3));
        assert_eq!(s.term(2).ok(), Some(3));
        assert!(matches!(
            s.entries(2, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.term(1),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(all(s).len(), 3);
        assert!(matches!(
            s.append(&[entry(2, 4, b"z")]),
            Err(LogError::NotContiguous { .. })
        ));
        assert!(matches!(s.compact(9), Err(LogError::CompactPastEnd { .. })));
        s.compact(2).expect("compacting below the base is a no-op");
        assert_eq!(s.first_index().ok(), Some(3));
        // Reading past the end is an error, not a panic.
        assert!(
            s.entries(3, 9, None, GetEntriesContext::empty(false))
                .is_err()
        );

        let hs = HardState {
            term: 3,
            vote: 1,
            commit: 4,
            ..HardState::default()
        };
        s.set_hard_state(&hs).expect("hs");
        s.set_commit(5).expect("commit");
        assert_eq!(s.hard_state().commit, 5);
        assert_eq!(s.hard_state().vote, 1);
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        };
        s.set_conf_state(&cs).expect("cs");
        let state = s.initial_state().expect("state");
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(state.hard_state.commit, 5);

        // A snapshot resets the log to its base.
        let mut meta = SnapshotMetadata {
            index: 10,
            term: 4,
            ..SnapshotMetadata::default()
        };
        meta.mut_conf_state().voters = vec![1, 2];
        s.apply_snapshot(&meta).expect("snapshot");
        assert_eq!(s.first_index().ok(), Some(11));
        assert_eq!(s.last_index().ok(), Some(10));
        assert_eq!(s.term(10).ok(), Some(4));
        assert_eq!(s.hard_state().commit, 10);
        assert_eq!(s.hard_state().term, 4);
        assert_eq!(s.conf_state().voters, vec![1, 2]);
        assert!(matches!(
            s.apply_snapshot(&meta),
            Err(LogError::SnapshotOutOfDate { .. })
        ));
        s.append(&[entry(11, 4, b"after")])
            .expect("append after snapshot");
        assert_eq!(all(s), vec![(11, 4, b"after".to_vec())]);
        s.sync().expect("sync");
    }

    #[test]
    fn fjall_log_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FjallLogStorage::open(dir.path()).expect("open");
        log_semantics(&mut s);
    }

    #[test]
    fn mem_log_semantics() {
        let mut s = MemLogStorage::new();
        log_semantics(&mut s);
    }

    #[test]
    fn fjall_log_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = FjallLogStorage::open(dir.path()).expect("open");
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"c")])
                .expect("append");
            let hs = HardState {
                term: 2,
                vote: 7,
                commit: 3,
                ..HardState::default()
            };
            s.set_hard_state(&hs).expect("hs");
            let cs = ConfState {
                voters: vec![7],
                ..ConfState::default()
            };
            s.set_conf_state(&cs).expect("cs");
            s.compact(2).expect("compact");
            s.sync().expect("sync");
        }
        let s = FjallLogStorage::open(dir.path()).expect("reopen");
        assert_eq!(s.first_index().ok(), Some(2));
        assert_eq!(s.last_index().ok(), Some(3));
        assert_eq!(s.term(1).ok(), Some(1));
        assert_eq!(all(&s), vec![(2, 1, b"b".to_vec()), (3, 2, b"c".to_vec())]);
        let state = s.initial_state().expect("state");
        assert_eq!(
            (
                state.hard_state.term,
                state.hard_state.vote,
                state.hard_state.commit
            ),
            (2, 7, 3)
        );
        assert_eq!(state.conf_state.voters, vec![7]);
        assert!(s.disk_space().expect("disk space") > 0);
    }

    /// Incompressible bytes (xorshift), so that fjall's lz4 (journal and blocks) cannot
    /// shrink them and the sizes measured are the sizes written.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Allocated bytes of the journal files (`*.jnl`, at the database's root), allocated
    /// bytes of everything else (tables, versions, metadata), and the number of journals.
    fn split_disk(dir: &Path) -> (u64, u64, usize) {
        let total = allocated_bytes(dir).expect("walk");
        let mut journal = 0;
        let mut journals = 0;
        for item in std::fs::read_dir(dir).expect("list") {
            let item = item.expect("entry");
            if item.path().extension().is_some_and(|e| e == "jnl") {
                journal += allocated(&item.metadata().expect("metadata"));
                journals += 1;
            }
        }
        (journal, total.saturating_sub(journal), journals)
    }

    const MIB: u64 = 1024 * 1024;
    /// Entry payload in the disk-use tests: about an agent batch of a busy host.
    const PAYLOAD: usize = 64 * 1024;
    /// Entries per Ready (one fsync each) in the disk-use tests.
    const PER_READY: u64 = 16;

    /// Appends entries `from..from + count` (term 1) as the Ready loop would: a batch, the
    /// commit index, one fsync.
    fn append_readys(s: &mut FjallLogStorage, from: u64, count: u64) {
        let mut next = from;
        while next < from + count {
            let end = (next + PER_READY).min(from + count);
            let batch: Vec<Entry> = (next..end)
                .map(|i| entry(i, 1, &noise(i, PAYLOAD)))
                .collect();
            s.append(&batch).expect("append");
            s.set_commit(end - 1).expect("commit");
            s.sync().expect("sync");
            next = end;
        }
    }

    /// Waits until fjall's background workers have flushed every sealed memtable of the
    /// entries, so that a measurement does not depend on a flush still in flight (such a
    /// flush can register a table below the cut just after the drop; the next compaction
    /// drops it). Bounded: a flush that never ends fails the test.
    fn settle_flushes(s: &FjallLogStorage) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while s.entries.sealed_memtable_count() > 0 || s.db.outstanding_flushes() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "fjall's flushes did not finish within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn assert_entries_intact(s: &FjallLogStorage, from: u64, to: u64) {
        let got = s
            .entries(from, to + 1, None, GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(got.len() as u64, to + 1 - from);
        for e in got {
            assert_eq!(
                e.data.to_vec(),
                noise(e.index, PAYLOAD),
                "entry {}",
                e.index
            );
        }
    }

    /// A burst of 50 MiB, then a compaction of all but the last Ready's worth: the tables
    /// give their space back at once, nothing below the cut can be read, the tail can, and
    /// all of it holds across a reopen.
    #[test]
    #[ignore = "depends on fjall's background flushes finishing in time: failed under load; \
                the fjall log is only read now (migration), run by hand when changing it"]
    fn compaction_gives_table_space_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FjallLogStorage::open(dir.path()).expect("open");
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: 0,
            ..HardState::default()
        };
        s.set_hard_state(&hs).expect("hs");
        // 800 entries of 64 KiB: 50 MiB, flushed by fjall in 8 MiB memtables as it goes.
        let count = 800u64;
        append_readys(&mut s, 1, count);
        settle_flushes(&s);
        let (journal_before, tables_before, _) = split_disk(dir.path());
        assert!(
            tables_before > 32 * MIB,
            "the burst reached tables: {tables_before} B"
        );

        let keep_from = count - PER_READY + 1;
        let started = std::time::Instant::now();
        s.compact(keep_from).expect("compact");
        let took = started.elapsed();
        let (journal_after, tables_after, journals) = split_disk(dir.path());
        println!(
            "50 MiB burst: before compaction {} B ({journal_before} journal, \
             {tables_before} tables and metadata); after {} B ({journal_after} journal, \
             {tables_after} tables and metadata); compaction took {took:?}",
            journal_before + tables_before,
            journal_after + tables_after,
        );
        // What may remain besides the journal: the live tail (16 x 64 KiB = 1 MiB) in the
        // memtable and in the table its rotation is flushing, tombstones for the entries the
        // memtable held below the cut, version files and `raft_meta`: under 3 MiB. The
        // tables the burst was flushed to (over 32 MiB) are gone.
        assert!(
            tables_after < 3 * MIB,
            "tables and metadata after compaction: {tables_after} B"
        );
        // 50 MiB is less than fjall writes to a journal before sealing it, so the journal
        // stays until later writes fill it (see `the_journal_is_cut_back_under_load`).
        assert_eq!(journals, 1);
        assert!(journal_after <= JOURNAL_BYTES + ENTRIES_MEMTABLE_BYTES);

        // Below the cut nothing is readable, not even in the keyspace itself.
        assert!(s.entries.range(..entry_key(keep_from)).next().is_none());
        assert!(matches!(
            s.entries(
                keep_from - 1,
                keep_from + 1,
                None,
                GetEntriesContext::empty(false)
            ),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.term(keep_from - 1).ok(), Some(1));
        assert_entries_intact(&s, keep_from, count);

        drop(s);
        let s = FjallLogStorage::open(dir.path()).expect("reopen");
        assert_eq!(s.first_index().ok(), Some(keep_from));
        assert_eq!(s.last_index().ok(), Some(count));
        assert_eq!(s.term(keep_from - 1).ok(), Some(1));
        let state = s.initial_state().expect("state");
        assert_eq!(
            (
                state.hard_state.term,
                state.hard_state.vote,
                state.hard_state.commit
            ),
            (1, 1, count)
        );
        assert!(s.entries.range(..entry_key(keep_from)).next().is_none());
        assert_entries_intact(&s, keep_from, count);
    }

    /// Steady state: 200 MiB through the log, compacted every 4 MiB (as checkpoints would)
    /// to all but the last Ready. Disk stays near fjall's journal cycle (up to 64 MB written
    /// to the active journal) plus about one interval of tables; journals are deleted as
    /// they are sealed instead of piling up (without the journal budget, `raft_meta`'s
    /// unflushed memtable pins every sealed journal: 3 here, 192 MiB).
    #[test]
    #[ignore = "pushes 200 MiB through fjall; the fjall log is only read now (migration), \
                run by hand when changing it"]
    fn the_journal_is_cut_back_under_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FjallLogStorage::open(dir.path()).expect("open");
        let interval = 64u64;
        let total = 3200u64;
        let mut next = 1u64;
        let mut max_disk = 0;
        let mut max_journals = 0;
        let mut times = Vec::new();
        while next <= total {
            append_readys(&mut s, next, interval);
            next += interval;
            let started = std::time::Instant::now();
            s.compact(next - PER_READY).expect("compact");
            times.push(started.elapsed());
            let (journal, other, journals) = split_disk(dir.path());
            max_disk = max_disk.max(journal + other);
            max_journals = max_journals.max(journals);
        }
        times.sort();
        let (journal, other, journals) = split_disk(dir.path());
        println!(
            "200 MiB in 4 MiB intervals: disk at most {max_disk} B, at the end {journal} B \
             journal ({journals} files) + {other} B tables and metadata; compaction median \
             {:?}, max {:?}",
            times[times.len() / 2],
            times[times.len() - 1],
        );
        // At most the active journal and the one just sealed, whose flushes are under way.
        assert!(max_journals <= 2, "{max_journals} journals at once");
        // One sealed journal (up to 64 MB + a memtable) and the active one, plus tables of
        // about an interval and an in-flight memtable: under 128 MiB; far below the 200 MiB
        // written.
        assert!(max_disk < 128 * MIB, "disk reached {max_disk} B");
        assert!(journal <= JOURNAL_BYTES + ENTRIES_MEMTABLE_BYTES);
        assert!(
            other < 16 * MIB,
            "tables and metadata at the end: {other} B"
        );
        assert_entries_intact(&s, next - PER_READY, total);
    }

    /// fjall's own count takes the journal's apparent size (64 MiB, preallocated and
    /// sparse); the gauge counts allocated blocks, so a fresh log is small.
    #[test]
    fn disk_bytes_counts_allocated_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = FjallLogStorage::open(dir.path()).expect("open");
        assert!(s.db.disk_space().expect("fjall's count") >= 64 * MIB);
        let fresh = s.disk_bytes();
        assert!(fresh > 0 && fresh < MIB, "fresh log: {fresh} B");
        append_readys(&mut s, 1, 32);
        let written = s.disk_bytes() - fresh;
        // 2 MiB of entries went to the journal (framing adds a little).
        assert!(
            (2 * MIB..3 * MIB).contains(&written),
            "2 MiB of entries took {written} B"
        );
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        assert!(decode_entry(1, &[]).is_err());
        assert!(decode_entry(1, &[1, 0, 0]).is_err());
        assert!(matches!(
            decode_entry(1, &[9; 20]),
            Err(LogError::UnsupportedFormat { found: 9, .. })
        ));
        let good = encode_entry(&entry(5, 2, b"x")).expect("encode");
        assert_eq!(decode_entry(5, &good).expect("decode").data.to_vec(), b"x");
        // A record filed under the wrong index is caught.
        assert!(decode_entry(6, &good).is_err());
        let mut bad = good.clone();
        bad.truncate(12);
        assert!(decode_entry(5, &bad).is_err());
        assert!(decode_key(&[1, 2, 3]).is_err());
        assert!(decode_truncated(&[0; 15]).is_err());
    }
}
