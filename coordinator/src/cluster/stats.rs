//! Counters of the Raft node for `/metrics`.
//!
//! Plain atomics, written by the Ready thread, the apply worker and proposers, read by the
//! HTTP layer at scrape time; nothing here locks or allocates on the hot path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the fsync-duration histogram buckets; the last bucket is +Inf.
pub const FSYNC_BUCKETS_SECONDS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Live counters. Counters only grow; `*_index`, `leader_id`, `term` and `is_leader` are gauges.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Proposals raft accepted into the log.
    pub proposals: AtomicU64,
    /// Proposals refused because this node is not the leader.
    pub refused_not_leader: AtomicU64,
    /// Proposals refused because the proposal queue was full.
    pub refused_queue_full: AtomicU64,
    /// Proposals refused for exceeding the size limit.
    pub refused_too_large: AtomicU64,
    /// Proposals raft dropped (uncommitted limit, leadership transfer).
    pub dropped_by_raft: AtomicU64,
    /// Proposals whose slot in the log went to another leader's entry.
    pub lost: AtomicU64,
    /// Entries written to the log (leader's own and replicated).
    pub entries_appended: AtomicU64,
    /// Bytes of entry data written to the log.
    pub bytes_appended: AtomicU64,
    /// Entries known committed.
    pub entries_committed: AtomicU64,
    /// The commit index.
    pub commit_index: AtomicU64,
    /// The index the state machine reports as applied.
    pub applied_index: AtomicU64,
    /// Batches handed to the apply worker.
    pub apply_batches: AtomicU64,
    /// Ready structs handled.
    pub readies: AtomicU64,
    /// Logical clock ticks.
    pub ticks: AtomicU64,
    /// Log fsyncs.
    pub fsyncs: AtomicU64,
    /// Total time in log fsyncs, nanoseconds.
    pub fsync_nanos: AtomicU64,
    /// Fsync durations by bucket of [`FSYNC_BUCKETS_SECONDS`] (non-cumulative), then +Inf.
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS_SECONDS.len() + 1],
    /// Log entries removed by compaction.
    pub entries_compacted: AtomicU64,
    /// Bytes the log takes on disk (refreshed every few ticks).
    pub log_disk_bytes: AtomicU64,
    /// Current term.
    pub term: AtomicU64,
    /// Leader id as this node last saw it; 0 when unknown.
    pub leader_id: AtomicU64,
    /// Whether this node is the leader (as of its last Ready).
    pub is_leader: AtomicBool,
}

impl NodeStats {
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Relaxed)
    }

    /// The leader's id, if known.
    pub fn leader(&self) -> Option<u64> {
        match self.leader_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    pub(crate) fn observe_fsync(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos.fetch_add(nanos, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = FSYNC_BUCKETS_SECONDS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(FSYNC_BUCKETS_SECONDS.len());
        if let Some(slot) = self.fsync_buckets.get(bucket) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A consistent-enough copy for one scrape.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            proposals: get(&self.proposals),
            refused_not_leader: get(&self.refused_not_leader),
            refused_queue_full: get(&self.refused_queue_full),
            refused_too_large: get(&self.refused_too_large),
            dropped_by_raft: get(&self.dropped_by_raft),
            lost: get(&self.lost),
            entries_appended: get(&self.entries_appended),
            bytes_appended: get(&self.bytes_appended),
            entries_committed: get(&self.entries_committed),
            commit_index: get(&self.commit_index),
            applied_index: get(&self.applied_index),
            apply_batches: get(&self.apply_batches),
            readies: get(&self.readies),
            ticks: get(&self.ticks),
            fsyncs: get(&self.fsyncs),
            fsync_seconds: get(&self.fsync_nanos) as f64 / 1e9,
            fsync_buckets: std::array::from_fn(|i| get(&self.fsync_buckets[i])),
            entries_compacted: get(&self.entries_compacted),
            log_disk_bytes: get(&self.log_disk_bytes),
            term: get(&self.term),
            leader_id: self.leader(),
            is_leader: self.is_leader(),
        }
    }
}

/// One reading of [`NodeStats`].
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    pub proposals: u64,
    pub refused_not_leader: u64,
    pub refused_queue_full: u64,
    pub refused_too_large: u64,
    pub dropped_by_raft: u64,
    pub lost: u64,
    pub entries_appended: u64,
    pub bytes_appended: u64,
    pub entries_committed: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub apply_batches: u64,
    pub readies: u64,
    pub ticks: u64,
    pub fsyncs: u64,
    pub fsync_seconds: f64,
    /// Non-cumulative counts per [`FSYNC_BUCKETS_SECONDS`] bucket, then +Inf.
    pub fsync_buckets: [u64; FSYNC_BUCKETS_SECONDS.len() + 1],
    pub entries_compacted: u64,
    pub log_disk_bytes: u64,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub is_leader: bool,
}

impl StatsSnapshot {
    /// Committed entries the state machine has not applied yet.
    pub fn apply_lag(&self) -> u64 {
        self.commit_index.saturating_sub(self.applied_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_durations_land_in_their_buckets() {
        let stats = NodeStats::default();
        stats.observe_fsync(Duration::from_micros(100));
        stats.observe_fsync(Duration::from_millis(3));
        stats.observe_fsync(Duration::from_secs(5));
        let snap = stats.snapshot();
        assert_eq!(snap.fsyncs, 3);
        assert_eq!(snap.fsync_buckets[0], 1);
        assert_eq!(snap.fsync_buckets[4], 1, "3 ms is in the <=5 ms bucket");
        assert_eq!(snap.fsync_buckets[FSYNC_BUCKETS_SECONDS.len()], 1, "+Inf");
        assert!((snap.fsync_seconds - 5.0031).abs() < 1e-6);
    }
}
