//! Moves a Raft log kept by older binaries (a fjall database, [`FjallLogStorage`]) into
//! the segment log ([`SegmentLogStorage`]) that replaced it (docs/decisions.md, entry 16).
//!
//! Log entries outlive the binary that wrote them (DESIGN §3.7): the entries after the
//! last checkpoint exist only in the old log, so a node upgraded in place must carry them
//! over rather than start an empty log. The copy is built in a temporary directory and
//! renamed into place once synced, and the old database is removed only after that, so a
//! crash at any point leaves either the old log or the complete new one.

use std::path::Path;

use raft::Storage;
use raft::prelude::SnapshotMetadata;

use super::segment_log::SegmentLogStorage;
use super::storage::{FjallLogStorage, LogError, LogStorage};

/// Entries copied per read, so a long old log is never held in memory whole.
const COPY_BATCH: u64 = 1024;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the segment log in `new`, first moving the old log at `old` into it when only
/// the old one exists. Returns the log and how many entries were carried over.
pub fn open_migrating(old: &Path, new: &Path) -> Result<(SegmentLogStorage, u64), LogError> {
    if new.exists() || !old.exists() {
        return Ok((SegmentLogStorage::open(new)?, 0));
    }
    let temp = new.with_extension("migrating");
    if temp.exists() {
        // An earlier attempt was cut short; the old log is still whole.
        std::fs::remove_dir_all(&temp).map_err(io(&temp))?;
    }
    let copied = {
        let from = FjallLogStorage::open(old)?;
        let mut to = SegmentLogStorage::open(&temp)?;
        let state = from
            .initial_state()
            .map_err(|e| LogError::Corrupt(e.to_string()))?;
        let first = from
            .first_index()
            .map_err(|e| LogError::Corrupt(e.to_string()))?;
        let last = from
            .last_index()
            .map_err(|e| LogError::Corrupt(e.to_string()))?;
        let base_term = from
            .term(first - 1)
            .map_err(|e| LogError::Corrupt(e.to_string()))?;
        if first > 1 {
            to.apply_snapshot(&SnapshotMetadata {
                index: first - 1,
                term: base_term,
                conf_state: Some(state.conf_state.clone()).into(),
                ..Default::default()
            })?;
        }
        let mut next = first;
        while next <= last {
            let hi = (next + COPY_BATCH).min(last + 1);
            let entries = from
                .entries(next, hi, None, raft::GetEntriesContext::empty(false))
                .map_err(|e| LogError::Corrupt(e.to_string()))?;
            to.append(&entries)?;
            next = hi;
        }
        to.set_conf_state(&state.conf_state)?;
        to.set_hard_state(&state.hard_state)?;
        to.sync()?;
        last + 1 - first
    };
    std::fs::rename(&temp, new).map_err(io(new))?;
    if let Some(parent) = new.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io(parent))?;
    }
    std::fs::remove_dir_all(old).map_err(io(old))?;
    tracing::info!(
        entries = copied,
        from = %old.display(),
        to = %new.display(),
        "raft log moved from the fjall database to segment files"
    );
    Ok((SegmentLogStorage::open(new)?, copied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::{ConfState, Entry, HardState};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("payload {index}").into_bytes().into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_old_fjall_log_is_carried_over_whole_and_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("raft"), dir.path().join("log"));
        let hs = HardState {
            term: 3,
            vote: 1,
            commit: 2_500,
            ..Default::default()
        };
        let cs = ConfState {
            voters: vec![1],
            ..Default::default()
        };
        {
            let mut log = FjallLogStorage::open(&old).unwrap();
            let entries: Vec<Entry> = (1..=3_000).map(|i| entry(i, 1 + i / 1_000)).collect();
            log.append(&entries).unwrap();
            log.compact(1_201).unwrap();
            log.set_conf_state(&cs).unwrap();
            log.set_hard_state(&hs).unwrap();
            log.sync().unwrap();
        }
        let (log, copied) = open_migrating(&old, &new).unwrap();
        assert_eq!(copied, 1_800);
        assert!(
            !old.exists(),
            "the old database is gone once the new log is synced"
        );
        let check = |log: &SegmentLogStorage| {
            assert_eq!(log.first_index().unwrap(), 1_201);
            assert_eq!(log.last_index().unwrap(), 3_000);
            assert_eq!(log.term(1_200).unwrap(), 2);
            let got = log
                .entries(2_999, 3_001, None, raft::GetEntriesContext::empty(false))
                .unwrap();
            assert_eq!(got, vec![entry(2_999, 3), entry(3_000, 4)]);
            let state = log.initial_state().unwrap();
            assert_eq!(
                (state.hard_state, state.conf_state),
                (hs.clone(), cs.clone())
            );
        };
        check(&log);
        drop(log);
        // Later starts just open the new log.
        let (log, copied) = open_migrating(&old, &new).unwrap();
        assert_eq!(copied, 0);
        check(&log);
    }

    #[test]
    fn a_fresh_node_gets_an_empty_segment_log() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("raft"), dir.path().join("log"));
        let (log, copied) = open_migrating(&old, &new).unwrap();
        assert_eq!((copied, log.last_index().unwrap()), (0, 0));
        assert!(!old.exists());
    }
}
