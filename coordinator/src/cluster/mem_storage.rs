//! An in-memory [`LogStorage`] that can simulate a crash.
//!
//! It keeps two copies of the log: what was written (visible to reads at once) and what was
//! synced. [`MemLogStorage::crash`] throws the unsynced writes away, as a power loss does, so a
//! test of the Ready loop can show that everything acknowledged was fsynced first: a version of
//! the loop that skips the fsync loses acknowledged entries here. (kill -9 keeps the page cache
//! and cannot show that.) Clones share the same log, so a test keeps one to crash and restart
//! from while the node owns another.

use std::sync::{Arc, Mutex, MutexGuard};

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::storage::{LogError, LogStorage, check_entries_range, within_size};

#[derive(Debug, Clone, Default)]
struct LogState {
    /// (index, term) of the entry just before `entries[0]`.
    truncated: (u64, u64),
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
}

impl LogState {
    fn first(&self) -> u64 {
        self.truncated.0 + 1
    }

    fn last(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }

    fn slot(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.first())?;
        self.entries.get(usize::try_from(offset).ok()?)
    }
}

#[derive(Debug, Default)]
struct Inner {
    live: LogState,
    durable: LogState,
    syncs: u64,
}

/// The in-memory log with crash simulation.
#[derive(Debug, Clone, Default)]
pub struct MemLogStorage {
    inner: Arc<Mutex<Inner>>,
}

impl MemLogStorage {
    pub fn new() -> Self {
        Self::default()
    }

    // A poisoned lock means a test thread panicked; the data is still the data.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a power loss: every write since the last sync is gone.
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.live = inner.durable.clone();
    }

    /// The entries that would survive a crash now.
    pub fn durable_entries(&self) -> Vec<Entry> {
        self.lock().durable.entries.clone()
    }

    /// The hard state that would survive a crash now.
    pub fn durable_hard_state(&self) -> HardState {
        self.lock().durable.hard_state.clone()
    }

    /// The term of the entry at `index` that would survive a crash now, if there is one
    /// (cheaper than [`Self::durable_entries`] for a check made after every step).
    pub fn durable_term(&self, index: u64) -> Option<u64> {
        self.lock().durable.slot(index).map(|e| e.term)
    }

    /// The commit index that would survive a crash now.
    pub fn durable_commit(&self) -> u64 {
        self.lock().durable.hard_state.commit
    }

    /// How many times `sync` was called.
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }
}

impl Storage for MemLogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let inner = self.lock();
        Ok(RaftState::new(
            inner.live.hard_state.clone(),
            inner.live.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let inner = self.lock();
        let log = &inner.live;
        check_entries_range(low, high, log.first(), log.last())?;
        let max = max_size.into().filter(|&m| m != raft::NO_LIMIT);
        let mut out = Vec::new();
        let mut total = 0u64;
        for index in low..high {
            let Some(e) = log.slot(index) else {
                return Err(raft::Error::Store(StorageError::Unavailable));
            };
            total += u64::from(protobuf::Message::compute_size(e));
            if !within_size(out.len(), total, max) {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let inner = self.lock();
        let log = &inner.live;
        if idx == log.truncated.0 {
            return Ok(log.truncated.1);
        }
        if idx < log.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        log.slot(idx)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.lock().live.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.lock().live.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

impl LogStorage for MemLogStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let Some(head) = entries.first() else {
            return Ok(());
        };
        let mut inner = self.lock();
        let log = &mut inner.live;
        let not_contiguous = |index| LogError::NotContiguous {
            index,
            first: log.first(),
            last: log.last(),
        };
        if head.index < log.first() || head.index > log.last() + 1 {
            return Err(not_contiguous(head.index));
        }
        if let Some(e) = entries
            .iter()
            .enumerate()
            .find(|(offset, e)| e.index != head.index + *offset as u64)
        {
            return Err(not_contiguous(e.1.index));
        }
        let keep = usize::try_from(head.index - log.first())
            .map_err(|_| LogError::Corrupt("log longer than memory".into()))?;
        log.entries.truncate(keep);
        log.entries.extend_from_slice(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogError> {
        self.lock().live.hard_state = hs.clone();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), LogError> {
        self.lock().live.hard_state.commit = commit;
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogError> {
        self.lock().live.conf_state = cs.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogError> {
        let mut inner = self.lock();
        let log = &mut inner.live;
        if meta.index <= log.truncated.0 {
            return Err(LogError::SnapshotOutOfDate {
                index: meta.index,
                base: log.truncated.0,
            });
        }
        log.truncated = (meta.index, meta.term);
        log.entries.clear();
        log.hard_state.term = log.hard_state.term.max(meta.term);
        log.hard_state.commit = log.hard_state.commit.max(meta.index);
        log.conf_state = meta.get_conf_state().clone();
        Ok(())
    }

    fn compact(&mut self, to: u64) -> Result<(), LogError> {
        let mut inner = self.lock();
        let log = &mut inner.live;
        if to <= log.first() {
            return Ok(());
        }
        if to > log.last() + 1 {
            return Err(LogError::CompactPastEnd {
                to,
                last: log.last(),
            });
        }
        let base_term = log
            .slot(to - 1)
            .map(|e| e.term)
            .ok_or_else(|| LogError::Corrupt(format!("entry {} is missing", to - 1)))?;
        let drop = usize::try_from(to - log.first())
            .map_err(|_| LogError::Corrupt("log longer than memory".into()))?;
        log.entries.drain(..drop);
        log.truncated = (to - 1, base_term);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        let mut inner = self.lock();
        inner.durable = inner.live.clone();
        inner.syncs += 1;
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.lock().live.hard_state.clone()
    }

    fn conf_state(&self) -> ConfState {
        self.lock().live.conf_state.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::storage::tests::entry;

    #[test]
    fn crash_loses_exactly_the_unsynced_writes() {
        let mut s = MemLogStorage::new();
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")])
            .expect("append");
        let hs = HardState {
            term: 1,
            commit: 2,
            ..HardState::default()
        };
        s.set_hard_state(&hs).expect("hs");
        s.sync().expect("sync");
        s.append(&[entry(3, 1, b"c")]).expect("append");
        s.set_commit(3).expect("commit");
        assert_eq!(s.last_index().ok(), Some(3));

        let survivor = s.clone();
        drop(s);
        survivor.crash();
        assert_eq!(survivor.last_index().ok(), Some(2));
        assert_eq!(survivor.hard_state().commit, 2);
        assert_eq!(survivor.durable_entries().len(), 2);
        assert_eq!(survivor.sync_count(), 1);
    }
}
