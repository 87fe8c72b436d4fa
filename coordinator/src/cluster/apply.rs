//! The state-machine seam ([`Apply`]) and the worker that runs it off the Ready thread.
//!
//! Apply can be slow (a large batch, a checkpoint write); the Ready thread must keep ticking
//! and heartbeating meanwhile (DESIGN §2). So the Ready thread hands committed entries to an
//! [`ApplyWorker`] through a bounded channel, and the worker reports back, in order, on a
//! second channel: the index it has applied (the Ready thread passes exactly that to
//! `advance_apply_to`), configuration changes for the Ready thread to give to
//! `apply_conf_change` (raft-rs state lives there), and how far the log may be compacted.
//!
//! The worker is not tied to a thread: [`ApplyWorker::run`] blocks on its own thread in
//! production, and [`ApplyWorker::run_pending`] applies what is queued, synchronously, for a
//! deterministic harness.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};

use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeSingle, ConfChangeV2, Entry, EntryType, Snapshot};

use super::doorbell::Doorbell;
use super::proposal::{Applied, Proposal, ProposeError, Reply};
use super::stats::NodeStats;

/// One committed entry as the state machine sees it.
#[derive(Debug, Clone, Copy)]
pub struct CommittedEntry<'a> {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind<'a>,
}

/// What a committed entry holds.
#[derive(Debug, Clone, Copy)]
pub enum EntryKind<'a> {
    /// A new leader's no-op: nothing to apply, but the index counts as applied.
    Empty,
    /// A proposal: the leader's time and the state machine's payload.
    Proposal(Proposal<'a>),
    /// A membership change. The worker hands it to the Ready thread after this call; the
    /// state machine records membership it replicates (members, addresses) if it keeps any.
    ConfChange(&'a ConfChangeV2),
}

/// A replicated state machine the node drives. One implementation per Raft group kind; a
/// second group is a second node with its own state machine (DESIGN §8).
///
/// Apply must be deterministic (DESIGN §3.2): the same entries in the same order give the same
/// state on every replica. It reads no clock; time comes from the entry.
pub trait Apply: Send + 'static {
    /// What the proposer of an entry learns once it is applied.
    type Outcome: Send + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    /// The index the state machine has applied, as restored from its last checkpoint. Read
    /// once at start: raft then hands only entries after it.
    fn applied_index(&self) -> u64;

    /// Applies one committed entry. An error stops this node's apply for good (the node
    /// returns it from `on_ready`): a restart replays from the last checkpoint.
    fn apply(&mut self, entry: CommittedEntry<'_>) -> Result<Self::Outcome, Self::Error>;

    /// Called after each batch of entries, before their proposers are answered: the place to
    /// write what the batch changed in one store write.
    fn end_batch(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Replaces the whole state with a snapshot's (a follower that fell behind the leader's
    /// compacted log). The cluster issue builds snapshots; until then a one-voter group never
    /// receives one.
    fn restore_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), Self::Error>;

    /// Index up to which (exclusive) the log is no longer needed: a checkpoint covering
    /// everything before it is synced (DESIGN §2). Polled after each batch.
    fn compact_log_to(&mut self) -> Option<u64> {
        None
    }
}

/// Committed work handed from the Ready thread to the worker.
pub(crate) struct ApplyBatch<O> {
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) entries: Vec<Entry>,
    /// Proposers waiting on entries of this batch, by index, ascending.
    pub(crate) waiters: Vec<(u64, Reply<O>)>,
}

/// What the worker reports to the Ready thread, in apply order.
#[derive(Debug)]
pub(crate) enum ApplyEvent {
    /// Everything up to and including this index is applied.
    Applied(u64),
    /// The entry at `index` changes membership: give it to `apply_conf_change`.
    ConfChange { index: u64, change: ConfChangeV2 },
    /// The log before this index may be deleted.
    Compact(u64),
    /// Apply failed at `index`; the worker applies nothing more.
    Failed { index: u64, reason: String },
}

/// Applies committed entries to a state machine, answers proposers, reports progress.
pub struct ApplyWorker<A: Apply> {
    sm: A,
    rx: Receiver<ApplyBatch<A::Outcome>>,
    events: Sender<ApplyEvent>,
    doorbell: Arc<Doorbell>,
    stats: Arc<NodeStats>,
    applied: u64,
    failed: Option<String>,
}

impl<A: Apply> ApplyWorker<A> {
    pub(crate) fn new(
        sm: A,
        rx: Receiver<ApplyBatch<A::Outcome>>,
        events: Sender<ApplyEvent>,
        doorbell: Arc<Doorbell>,
        stats: Arc<NodeStats>,
    ) -> Self {
        let applied = sm.applied_index();
        Self {
            sm,
            rx,
            events,
            doorbell,
            stats,
            applied,
            failed: None,
        }
    }

    /// Applies every batch queued now and returns how many there were (deterministic drive).
    pub fn run_pending(&mut self) -> usize {
        let mut n = 0;
        while let Ok(batch) = self.rx.try_recv() {
            self.apply_batch(batch);
            n += 1;
        }
        n
    }

    /// Applies batches until the node is dropped (the worker's own thread).
    pub fn run(mut self) -> A {
        while let Ok(batch) = self.rx.recv() {
            self.apply_batch(batch);
        }
        self.sm
    }

    /// The state machine (tests and the harness inspect it).
    pub fn state_machine(&self) -> &A {
        &self.sm
    }

    pub fn into_state_machine(self) -> A {
        self.sm
    }

    /// The last index applied by this worker.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    fn apply_batch(&mut self, batch: ApplyBatch<A::Outcome>) {
        let ApplyBatch {
            snapshot,
            entries,
            waiters,
        } = batch;
        if let Some(reason) = &self.failed {
            refuse_all(waiters, reason);
            return;
        }
        let mut waiters = waiters.into_iter().peekable();
        let mut answers = Vec::new();
        let start = self.applied;

        if let Some(snap) = snapshot {
            let index = snap.get_metadata().index;
            if let Err(e) = self.sm.restore_snapshot(&snap) {
                self.fail(
                    index,
                    format!("restoring snapshot at {index}: {e}"),
                    waiters,
                );
                return;
            }
            // Proposals covered by a snapshot cannot be matched to an outcome.
            while let Some((_, reply)) = waiters.next_if(|(i, _)| *i <= index) {
                let _ = reply.send(Err(ProposeError::OutcomeUnknown));
            }
            self.applied = self.applied.max(index);
        }

        for entry in &entries {
            if entry.index <= self.applied {
                // Already in the state (restored checkpoint or snapshot): never apply twice.
                continue;
            }
            let conf_change = match decode_conf_change(entry) {
                Ok(cc) => cc,
                Err(reason) => {
                    self.fail(entry.index, reason, waiters);
                    return;
                }
            };
            let kind = match &conf_change {
                Some(cc) => EntryKind::ConfChange(cc),
                None if entry.data.is_empty() => EntryKind::Empty,
                None => match Proposal::decode(&entry.data) {
                    Ok(p) => EntryKind::Proposal(p),
                    Err(e) => {
                        self.fail(entry.index, format!("entry {}: {e}", entry.index), waiters);
                        return;
                    }
                },
            };
            let outcome = self.sm.apply(CommittedEntry {
                index: entry.index,
                term: entry.term,
                kind,
            });
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    self.fail(entry.index, format!("entry {}: {e}", entry.index), waiters);
                    return;
                }
            };
            while let Some((_, reply)) = waiters.next_if(|(i, _)| *i < entry.index) {
                // The node only attaches waiters to entries of the batch; be safe anyway.
                let _ = reply.send(Err(ProposeError::OutcomeUnknown));
            }
            if let Some((_, reply)) = waiters.next_if(|(i, _)| *i == entry.index) {
                answers.push((
                    reply,
                    Applied {
                        index: entry.index,
                        term: entry.term,
                        outcome,
                    },
                ));
            }
            if let Some(change) = conf_change {
                let _ = self.events.send(ApplyEvent::ConfChange {
                    index: entry.index,
                    change,
                });
            }
            self.applied = entry.index;
        }

        if let Err(e) = self.sm.end_batch() {
            let reason = format!("ending batch after {}: {e}", self.applied);
            for (reply, _) in answers {
                let _ = reply.send(Err(ProposeError::ApplyFailed {
                    reason: reason.clone(),
                }));
            }
            let index = self.applied;
            self.fail(index, reason, waiters);
            return;
        }
        // Answer only now: the batch's writes are done.
        for (reply, applied) in answers {
            let _ = reply.send(Ok(applied));
        }
        for (_, reply) in waiters {
            let _ = reply.send(Err(ProposeError::OutcomeUnknown));
        }
        self.stats.apply_batches.fetch_add(1, Ordering::Relaxed);
        if self.applied > start {
            self.stats
                .applied_index
                .store(self.applied, Ordering::Relaxed);
            let _ = self.events.send(ApplyEvent::Applied(self.applied));
        }
        if let Some(to) = self.sm.compact_log_to() {
            let _ = self.events.send(ApplyEvent::Compact(to));
        }
        self.doorbell.ring();
    }

    fn fail(
        &mut self,
        index: u64,
        reason: String,
        waiters: impl Iterator<Item = (u64, Reply<A::Outcome>)>,
    ) {
        tracing::error!(index, %reason, "apply failed; this node stops applying");
        refuse_all(waiters, &reason);
        let _ = self.events.send(ApplyEvent::Failed {
            index,
            reason: reason.clone(),
        });
        self.failed = Some(reason);
        self.doorbell.ring();
    }
}

fn refuse_all<O>(waiters: impl IntoIterator<Item = (u64, Reply<O>)>, reason: &str) {
    for (_, reply) in waiters {
        let _ = reply.send(Err(ProposeError::ApplyFailed {
            reason: reason.to_owned(),
        }));
    }
}

/// Decodes a configuration-change entry (either protobuf version) into the V2 form raft-rs
/// applies; `None` for a normal entry.
fn decode_conf_change(entry: &Entry) -> Result<Option<ConfChangeV2>, String> {
    match entry.get_entry_type() {
        EntryType::EntryNormal => Ok(None),
        EntryType::EntryConfChange => {
            let mut v1 = ConfChange::parse_from_bytes(&entry.data)
                .map_err(|e| format!("conf change at {}: {e}", entry.index))?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut v2 = ConfChangeV2::default();
            v2.mut_changes().push(single);
            v2.context = v1.take_context();
            Ok(Some(v2))
        }
        EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&entry.data)
            .map(Some)
            .map_err(|e| format!("conf change at {}: {e}", entry.index)),
    }
}
