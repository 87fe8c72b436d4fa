//! The state machine as the Raft node drives it: entries decoded and applied, sealed
//! chunks written to the store, checkpoints taken (DESIGN §2).
//!
//! Durability lives in the log. Every `checkpoint_interval_ms` of leader time,
//! `checkpoint_entries` entries or `checkpoint_samples` samples, whichever comes first,
//! the replica writes the chunks and aggregate blocks sealed since the last checkpoint
//! to the store, syncs it, and then writes the head, index and dedup state together with
//! the applied index they cover to the checkpoint file ([`super::checkpoint_file`]).
//! Only then may the log be compacted up to that index. Between checkpoints the store is
//! not written at all. A restart loads the last checkpoint and the node replays the log
//! after it; chunks sealed again during the replay overwrite the same keys with the same
//! bytes, because apply is deterministic.

use super::checkpoint_file::{CheckpointFile, CheckpointFileError};
use super::compression;
use super::entry::Entry;
use super::machine::{Checkpoint, Limits, Outcome, StateError, StateMachine};
use crate::cluster::{Apply, CommittedEntry, EntryKind};
use crate::tsdb::HeadConfig;
use crate::tsdb::store::{ChunkRef, Store, StoreError};
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// Where the store kept the checkpoint before it had a file of its own.
const LEGACY_CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// Version 2 adds the fleet section after the four of version 1, which is still read
/// (as an empty fleet). Version 3 is version 2 behind the version byte as one zstd
/// frame (a fifth smaller on the compression benchmark); 2 is still read, and written
/// if zstd fails.
const CHECKPOINT_VERSION: u8 = 3;
const CHECKPOINT_VERSION_PLAIN: u8 = 2;
/// How many times its compressed size a version 3 checkpoint may inflate to (the
/// benchmark's is about 1.25), plus a constant: a corrupt header cannot make a restart
/// allocate without bound.
const CHECKPOINT_MAX_RATIO: usize = 64;
const CHECKPOINT_MIN_LIMIT: usize = 64 << 20;

/// The state machine shared between the apply thread (writer) and HTTP readers.
pub type SharedState = Arc<RwLock<StateMachine>>;

#[derive(Debug, Clone, Copy)]
pub struct ReplicaConfig {
    pub head: HeadConfig,
    pub limits: Limits,
    pub checkpoint_entries: u64,
    pub checkpoint_samples: u64,
    /// Leader time between checkpoints, so a quiet node still bounds its replay.
    pub checkpoint_interval_ms: i64,
    /// A series that received nothing for this long has its open chunk sealed, so
    /// ended series leave memory.
    pub seal_idle_ms: i64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            head: HeadConfig::default(),
            limits: Limits::default(),
            checkpoint_entries: 10_000,
            checkpoint_samples: 500_000,
            checkpoint_interval_ms: 60_000,
            seal_idle_ms: 2 * 3_600_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    CheckpointFile(#[from] CheckpointFileError),
    #[error("log entry {index}: {reason}")]
    Entry { index: u64, reason: String },
    #[error("the state lock was poisoned by a panic on another thread")]
    Poisoned,
    #[error("snapshots arrive with the cluster issue; a one-voter group never receives one")]
    SnapshotUnsupported,
}

pub struct Replica {
    state: SharedState,
    store: Arc<Store>,
    checkpoint: CheckpointFile,
    /// The store still holds a checkpoint of the old layout, removed after the first
    /// checkpoint file is written.
    legacy_checkpoint: bool,
    config: ReplicaConfig,
    /// Index covered by the last synced checkpoint.
    checkpointed: u64,
    /// Leader time of the last checkpoint.
    checkpointed_at_ms: i64,
    since_checkpoint_entries: u64,
    since_checkpoint_samples: u64,
}

impl Replica {
    /// Opens the replica on `store`, from its last checkpoint (in `checkpoint`, or in the
    /// store where binaries before the checkpoint file kept it) if there is one.
    pub fn open(
        store: Arc<Store>,
        checkpoint: CheckpointFile,
        config: ReplicaConfig,
    ) -> Result<Replica, ReplicaError> {
        let legacy = store.get_meta(LEGACY_CHECKPOINT_KEY)?;
        let legacy_checkpoint = legacy.is_some();
        let sm = match checkpoint.read()?.or(legacy) {
            Some(bytes) => {
                let cp = decode_checkpoint(&bytes)?;
                StateMachine::restore(
                    &cp,
                    config.head,
                    config.limits,
                    store.tiers(),
                    &mut |id, from, to| store.read_raw(id, from, to).map_err(|e| e.to_string()),
                )?
            }
            None => StateMachine::new(config.head, config.limits, store.tiers())?,
        };
        let (checkpointed, checkpointed_at_ms) = (sm.applied(), sm.last_time_ms());
        Ok(Replica {
            state: Arc::new(RwLock::new(sm)),
            store,
            checkpoint,
            legacy_checkpoint,
            config,
            checkpointed,
            checkpointed_at_ms,
            since_checkpoint_entries: 0,
            since_checkpoint_samples: 0,
        })
    }

    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn checkpointed(&self) -> u64 {
        self.checkpointed
    }

    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, StateMachine>, ReplicaError> {
        self.state.write().map_err(|_| ReplicaError::Poisoned)
    }

    pub fn read(&self) -> Result<RwLockReadGuard<'_, StateMachine>, ReplicaError> {
        self.state.read().map_err(|_| ReplicaError::Poisoned)
    }

    /// Takes a checkpoint when one is due: the sealed chunks and aggregate blocks go to
    /// the store, the store is synced, and then the checkpoint file is written.
    ///
    /// Between checkpoints nothing is written: sealed chunks wait in the head and blocks
    /// in the aggregator (queries read both there), covered by the log. Writing them
    /// only here lets the store ingest them as tables of their own, never through its
    /// journal (see `tsdb::store`). Chunks and blocks leave the state only once the store
    /// holds them, so a query never misses them in between; only the apply thread, which
    /// runs this, adds them, so none appear between the copy and the take.
    fn persist(&mut self, force_checkpoint: bool) -> Result<(), ReplicaError> {
        let counted_due = force_checkpoint
            || self.since_checkpoint_entries >= self.config.checkpoint_entries
            || self.since_checkpoint_samples >= self.config.checkpoint_samples;
        let (sealed, blocks) = {
            let mut sm = self.write()?;
            let due = counted_due
                || sm.last_time_ms()
                    >= self
                        .checkpointed_at_ms
                        .saturating_add(self.config.checkpoint_interval_ms);
            if !due || sm.applied() <= self.checkpointed {
                return Ok(());
            }
            sm.seal_idle(self.config.seal_idle_ms);
            (sm.sealed(), sm.blocks())
        };
        if !sealed.is_empty() || !blocks.is_empty() {
            let mut batch = self.store.batch();
            for c in &sealed {
                batch.chunk(&ChunkRef {
                    series_id: c.series,
                    min_t: c.min_t,
                    max_t: c.max_t,
                    bytes: &c.bytes,
                })?;
            }
            for b in &blocks {
                batch.block(b)?;
            }
            batch.commit()?;
        }
        {
            let mut sm = self.write()?;
            let taken = (sm.take_sealed(), sm.take_blocks());
            debug_assert_eq!((taken.0.len(), taken.1.len()), (sealed.len(), blocks.len()));
        }
        // Serializing the state takes long with many series (the head's open buffers are
        // encoded): under a read lock, so queries and agent admission go on meanwhile.
        // This thread is the only writer, so nothing changes between the take and here.
        let (cp, at_ms) = {
            let sm = self.read()?;
            (sm.checkpoint()?, sm.last_time_ms())
        };
        // The chunks the checkpoint relies on are durable before it is.
        self.store.sync()?;
        self.checkpoint.write(&encode_checkpoint(&cp))?;
        if self.legacy_checkpoint {
            self.store.delete_meta(LEGACY_CHECKPOINT_KEY)?;
            self.legacy_checkpoint = false;
        }
        self.checkpointed = cp.applied;
        self.checkpointed_at_ms = at_ms;
        self.since_checkpoint_entries = 0;
        self.since_checkpoint_samples = 0;
        tracing::debug!(applied = cp.applied, "checkpoint synced");
        Ok(())
    }

    /// Takes a checkpoint now (orderly shutdown), so a restart replays little.
    pub fn checkpoint_now(&mut self) -> Result<(), ReplicaError> {
        self.persist(true)
    }
}

impl Apply for Replica {
    type Outcome = Outcome;
    type Error = ReplicaError;

    fn applied_index(&self) -> u64 {
        self.state.read().map(|s| s.applied()).unwrap_or(0)
    }

    fn apply(&mut self, entry: CommittedEntry<'_>) -> Result<Outcome, ReplicaError> {
        let index = entry.index;
        match entry.kind {
            EntryKind::Empty | EntryKind::ConfChange(_) => {
                self.write()?.skip(index);
                Ok(Outcome::default())
            }
            EntryKind::Proposal(p) => {
                let decoded = Entry::decode(p.payload).map_err(|e| ReplicaError::Entry {
                    index,
                    reason: e.to_string(),
                })?;
                if let Entry::RetentionCut { tier, before_ms } = &decoded {
                    let dropped = self.store.drop_before(*tier, *before_ms)?;
                    tracing::info!(tier, before_ms, ?dropped, "retention cut applied");
                }
                let outcome = self.write()?.apply(index, p.time_ms, &decoded);
                self.since_checkpoint_entries += 1;
                self.since_checkpoint_samples += outcome.accepted;
                Ok(outcome)
            }
        }
    }

    fn end_batch(&mut self) -> Result<(), ReplicaError> {
        self.persist(false)
    }

    fn restore_snapshot(
        &mut self,
        _snapshot: &raft::prelude::Snapshot,
    ) -> Result<(), ReplicaError> {
        Err(ReplicaError::SnapshotUnsupported)
    }

    fn compact_log_to(&mut self) -> Option<u64> {
        // Everything at or below the synced checkpoint is covered by it.
        (self.checkpointed > 0).then_some(self.checkpointed + 1)
    }
}

fn encode_checkpoint(cp: &Checkpoint) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&cp.applied.to_be_bytes());
    for part in [&cp.index, &cp.head, &cp.agents, &cp.aggregates, &cp.fleet] {
        body.extend_from_slice(&(part.len() as u64).to_be_bytes());
        body.extend_from_slice(part);
    }
    let (version, body) = match compression::compress(&body) {
        Some(frame) => (CHECKPOINT_VERSION, frame),
        None => (CHECKPOINT_VERSION_PLAIN, body),
    };
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(version);
    out.extend_from_slice(&body);
    out
}

/// A checkpoint file's contents (any format this build reads), for restarts and for
/// tools that report what a checkpoint holds.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, ReplicaError> {
    let bad = |reason: String| StateError::Checkpoint(reason);
    let (&version, mut rest) = bytes
        .split_first()
        .ok_or_else(|| bad("empty checkpoint".into()))?;
    let inflated;
    if version == CHECKPOINT_VERSION {
        let limit = rest
            .len()
            .saturating_mul(CHECKPOINT_MAX_RATIO)
            .max(CHECKPOINT_MIN_LIMIT);
        inflated = compression::decompress(rest, limit).map_err(|e| bad(e.to_string()))?;
        rest = &inflated;
    }
    let count = match version {
        1 => 4,
        CHECKPOINT_VERSION_PLAIN | CHECKPOINT_VERSION => 5,
        _ => {
            return Err(bad(format!(
                "checkpoint format {version}, this build reads 1 to {CHECKPOINT_VERSION}"
            ))
            .into());
        }
    };
    let take_u64 = |rest: &mut &[u8]| -> Result<u64, StateError> {
        let (head, tail) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("truncated checkpoint".into()))?;
        *rest = tail;
        Ok(u64::from_be_bytes(*head))
    };
    let applied = take_u64(&mut rest)?;
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let len = take_u64(&mut rest)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= rest.len())
            .ok_or_else(|| bad("checkpoint part runs past its end".into()))?;
        let (part, tail) = rest.split_at(len);
        parts.push(part.to_vec());
        rest = tail;
    }
    let fleet = if count == 5 {
        parts.pop().unwrap_or_default()
    } else {
        Vec::new()
    };
    let aggregates = parts.pop().unwrap_or_default();
    let agents = parts.pop().unwrap_or_default();
    let head = parts.pop().unwrap_or_default();
    let index = parts.pop().unwrap_or_default();
    Ok(Checkpoint {
        applied,
        index,
        head,
        agents,
        aggregates,
        fleet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::proposal::Proposal;
    use crate::state::entry::{PushedItem, PushedKey};
    use crate::tsdb::store::StoreConfig;
    use crate::tsdb::tier::Tiers;
    use argus_common::model::Labels;

    const T0: i64 = 1_704_067_200_000;

    fn open(dir: &std::path::Path) -> Replica {
        let store = Store::open(dir.join("tsdb"), StoreConfig::new(Tiers::argus_defaults()));
        Replica::open(
            Arc::new(store.unwrap()),
            CheckpointFile::new(dir),
            ReplicaConfig::default(),
        )
        .unwrap()
    }

    /// Applies `entry` as the committed entry `index` stamped with leader time `t`.
    fn apply_at(
        r: &mut Replica,
        index: u64,
        t: i64,
        entry: &Entry,
    ) -> Result<Outcome, ReplicaError> {
        let payload = entry.encode();
        let kind = EntryKind::Proposal(Proposal {
            time_ms: t,
            payload: &payload,
        });
        r.apply(CommittedEntry {
            index,
            term: 1,
            kind,
        })
    }

    fn push(r: &mut Replica, index: u64, t: i64) {
        let entry = Entry::Push {
            items: PushedItem::encode(
                PushedKey::New {
                    name: "up".into(),
                    labels: Labels::from_pairs([("job", "node")]),
                },
                &[(t, 1.0)],
            ),
            metadata: vec![],
        };
        let out = apply_at(r, index, t, &entry);
        assert_eq!(out.unwrap().accepted, 1);
    }

    fn token(r: &mut Replica, index: u64, t: i64, id: u8) {
        let entry = Entry::TokenCreate {
            id: [id; 8],
            secret_hash: [id; 32],
            expires_ms: t + 3_600_000,
            uses: 1,
            host: None,
            role: crate::fleet::tokens::TokenRole::Agent,
            created_by: "admin".into(),
        };
        let out = apply_at(r, index, t, &entry);
        assert_eq!(
            out.unwrap().fleet,
            Some(Ok(crate::fleet::tokens::TokenApplied::Created))
        );
    }

    /// Version 1 as binaries before the fleet wrote it: four parts.
    fn encode_v1(cp: &Checkpoint) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend_from_slice(&cp.applied.to_be_bytes());
        for part in [&cp.index, &cp.head, &cp.agents, &cp.aggregates] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn the_fleet_is_checkpointed_and_a_version_1_checkpoint_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut r = open(dir.path());
            push(&mut r, 1, T0);
            token(&mut r, 2, T0 + 1, 7);
            r.checkpoint_now().unwrap();
        }
        let bytes = std::fs::read(dir.path().join("checkpoint")).unwrap();
        assert_eq!(bytes[0], CHECKPOINT_VERSION);
        let cp = decode_checkpoint(&bytes).unwrap();
        assert_eq!(decode_checkpoint(&encode_checkpoint(&cp)).unwrap(), cp);
        {
            let r = open(dir.path());
            assert_eq!(r.checkpointed(), 2);
            let sm = r.read().unwrap();
            assert_eq!(sm.fleet().tokens().len(), 1);
            assert!(
                sm.fleet()
                    .tokens()
                    .get(&argus_common::pki::TokenId([7; 8]))
                    .is_some()
            );
        }
        // The same state written as version 1 (no fleet section) opens with an empty fleet
        // and everything else intact.
        // Version 2, the same sections uncompressed, reads back the same.
        let mut v2 = vec![CHECKPOINT_VERSION_PLAIN];
        v2.extend_from_slice(&cp.applied.to_be_bytes());
        for part in [&cp.index, &cp.head, &cp.agents, &cp.aggregates, &cp.fleet] {
            v2.extend_from_slice(&(part.len() as u64).to_be_bytes());
            v2.extend_from_slice(part);
        }
        assert!(bytes.len() < v2.len(), "{} vs {}", bytes.len(), v2.len());
        assert_eq!(decode_checkpoint(&v2).unwrap(), cp);
        let v1 = decode_checkpoint(&encode_v1(&cp)).unwrap();
        assert!(v1.fleet.is_empty());
        assert_eq!(
            (v1.applied, &v1.index, &v1.head),
            (cp.applied, &cp.index, &cp.head)
        );
        std::fs::write(dir.path().join("checkpoint"), encode_v1(&cp)).unwrap();
        let r = open(dir.path());
        assert_eq!(r.checkpointed(), 2);
        let sm = r.read().unwrap();
        assert!(sm.fleet().tokens().is_empty());
        assert_eq!(sm.index().len(), 1);
        // A format from the future, or a truncated one, is an error naming it.
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(
            decode_checkpoint(&future)
                .unwrap_err()
                .to_string()
                .contains("format 9")
        );
        assert!(decode_checkpoint(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_checkpoint_lives_in_its_file_and_an_old_store_checkpoint_is_read_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut r = open(dir.path());
            push(&mut r, 1, T0);
            push(&mut r, 2, T0 + 15_000);
            r.checkpoint_now().unwrap();
            assert_eq!(r.checkpointed(), 2);
            assert_eq!(r.compact_log_to(), Some(3));
            // What binaries before the checkpoint file left: the same bytes in the store.
            let bytes = std::fs::read(dir.path().join("checkpoint")).unwrap();
            r.store().put_meta(LEGACY_CHECKPOINT_KEY, &bytes).unwrap();
        }
        std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        {
            let mut r = open(dir.path());
            assert_eq!(
                r.checkpointed(),
                2,
                "restored from the store's old checkpoint"
            );
            push(&mut r, 3, T0 + 30_000);
            r.checkpoint_now().unwrap();
            assert_eq!(r.store().get_meta(LEGACY_CHECKPOINT_KEY).unwrap(), None);
        }
        let r = open(dir.path());
        assert_eq!(r.checkpointed(), 3);
        let sm = r.read().unwrap();
        let id = sm
            .index()
            .lookup("up", &Labels::from_pairs([("job", "node")]))
            .unwrap();
        let stored: Vec<i64> = sm
            .head()
            .select(id, i64::MIN, i64::MAX)
            .unwrap()
            .map(|s| s.0)
            .collect();
        assert_eq!(stored, vec![T0, T0 + 15_000, T0 + 30_000]);
    }
}
