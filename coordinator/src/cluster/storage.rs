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

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
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

/// Applies raft-rs's `max_size` rule: the first entry always, then more while the running
/// total stays within the limit.
pub(crate) fn within_size(taken: usize, total: u64, max: Option<u64>) -> bool {
    taken == 0 || max.is_none_or(|m| total <= m)
}

/// The Raft log and hard state in their own fjall database.
pub struct FjallLogStorage {
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
        let db = Database::builder(path.as_ref())
            // Durability is ours to decide: one explicit fsync per Ready, nothing in between.
            .manual_journal_persist(true)
            .open()?;
        let entries = db.keyspace("raft_entries", KeyspaceCreateOptions::default)?;
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
            db,
            entries,
            meta,
            hard_state,
            conf_state,
            truncated,
            last,
        })
    }

    /// Bytes the log database takes on disk (journal included), for `/metrics`.
    pub fn disk_space(&self) -> Result<u64, LogError> {
        Ok(self.db.disk_space()?)
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
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last.0 + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
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
        self.truncated = base;
        self.last = base;
        self.hard_state = hs;
        self.conf_state = cs;
        self.remove_keys_before(None)
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
        // The new base goes first: if a crash interrupts the deletes below, the leftovers
        // sit below the base, where nothing reads them, and the next compaction removes them.
        self.meta.insert(META_TRUNCATED, encode_truncated(base))?;
        self.truncated = base;
        if self.last.0 < to {
            self.last = base;
        }
        self.remove_keys_before(Some(to))
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

    /// The behaviour both log storages must share; run against each.
    fn log_semantics(s: &mut impl LogStorage) {
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
