//! The Raft node's Ready loop, in one file (DESIGN §2, §4).
//!
//! [`RaftNode`] wraps a raft-rs `RawNode` and is a step function over three traits:
//! [`LogStorage`] (the log), [`Transport`] (peers) and [`Apply`] (the state machine, run by an
//! [`ApplyWorker`] off this thread). Nothing here sleeps, spawns or reads a clock for logic:
//! the threaded [`runner`](super::runner) calls [`RaftNode::tick`] on a timer and
//! [`RaftNode::on_ready`] when woken, and the cluster issue's deterministic harness calls the
//! same two functions by hand with an in-memory transport and a storage that loses unsynced
//! writes at a simulated crash.
//!
//! One [`RaftNode::on_ready`] handles one `Ready` in raft-rs's documented order:
//!
//! 1. send messages (a leader sends before persisting: it may append in parallel);
//! 2. apply a snapshot to the log;
//! 3. hand committed entries to apply;
//! 4. persist entries and hard state, with one fsync;
//! 5. send persisted messages (a follower's votes and acks, only after the fsync);
//! 6. `advance_append`, and handle the `LightReady` it returns: record the new commit index,
//!    send its messages, hand its committed entries to apply (on a one-voter group, committed
//!    entries arrive here);
//! 7. `advance_apply_to(n)`, n being the index the apply worker reported as applied, never
//!    `advance`, which would mark entries applied before they are.
//!
//! **Commit before apply.** The commit index must be durable no later than anything is
//! applied at it: a restart gives raft `applied` from the state machine, and raft refuses an
//! applied index past the persisted commit. So step 3 and step 6 queue committed entries, and
//! the queue releases to the worker only entries at or below the commit index the last fsync
//! covered. The commit index the `LightReady` brings rides on the next Ready's fsync; when no
//! Ready follows (an idle leader after its last proposal), `on_ready` makes one fsync for it.
//! Under load that costs nothing extra: proposals that arrived during the fsync make a Ready
//! whose one fsync covers both.
//!
//! **Proposals** wait in a bounded queue ([`Proposer`]); each `on_ready` moves a bounded amount
//! of them into raft, so many share a Ready and its fsync. Each is answered once applied,
//! keyed by (term, index): if the entry committed at that index has another term, another
//! leader's entry took its place and the proposer learns [`ProposeError::Lost`].
//!
//! **Backpressure.** raft's `max_uncommitted_size` bounds what is proposed but not committed;
//! the apply channel is bounded, and while committed entries wait for a full apply channel
//! beyond `max_apply_backlog_bytes`, no proposals are taken, so the proposal queue fills and
//! proposers get [`ProposeError::QueueFull`].

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Instant;

use raft::prelude::{ConfChangeV2, ConfState, Entry, Message, Snapshot};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use super::apply::{Apply, ApplyBatch, ApplyEvent, ApplyWorker};
use super::doorbell::Doorbell;
use super::logging::raft_logger;
use super::proposal::{PendingProposal, Proposal, ProposalReceipt, ProposeError, Proposer, Reply};
use super::stats::NodeStats;
use super::storage::{LogError, LogStorage};
use super::transport::Transport;

const MIB: u64 = 1024 * 1024;
/// How often (in ticks) the log's disk use is measured: it lists files, so not every tick.
const DISK_BYTES_EVERY_TICKS: u64 = 10;

/// Settings of one Raft node. Defaults suit a 100 ms tick.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id in its group; never 0.
    pub id: u64,
    /// Voters to start a brand-new group with, used only when the log is empty and has no
    /// membership yet. `vec![id]` makes a one-voter group. Empty: wait to be added.
    pub bootstrap_voters: Vec<u64>,
    /// Ticks without a leader before a follower campaigns (the lower end of raft's randomized
    /// election timeout).
    pub election_tick: usize,
    /// Upper end (exclusive) of the randomized election timeout; 0 means `2 * election_tick`,
    /// raft-rs's default. raft-rs draws the timeout from the thread's RNG, so the
    /// deterministic harness sets `election_tick + 1` to make the timeout fixed and draws the
    /// spread from its own seeded schedule instead (when each node ticks).
    pub max_election_tick: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: usize,
    /// Largest append message to a peer (DESIGN §6: about 1 MiB).
    pub max_size_per_msg: u64,
    /// Append messages in flight to one peer.
    pub max_inflight_msgs: usize,
    /// Proposed-but-uncommitted bytes beyond which raft drops proposals.
    pub max_uncommitted_size: u64,
    /// Committed bytes handed out per Ready; also the most proposal bytes taken per Ready and
    /// the largest batch given to the apply worker.
    pub max_committed_size_per_ready: u64,
    /// Proposals that may wait for the Ready thread.
    pub proposal_queue: usize,
    /// Largest proposal payload accepted.
    pub max_proposal_bytes: usize,
    /// Batches that may wait for the apply worker.
    pub apply_queue_batches: usize,
    /// Committed bytes that may wait beyond a full apply channel before proposals pause.
    pub max_apply_backlog_bytes: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            bootstrap_voters: vec![1],
            election_tick: 10,
            max_election_tick: 0,
            heartbeat_tick: 2,
            max_size_per_msg: MIB,
            max_inflight_msgs: 256,
            max_uncommitted_size: 64 * MIB,
            max_committed_size_per_ready: 16 * MIB,
            proposal_queue: 4096,
            max_proposal_bytes: 8 * MIB as usize,
            apply_queue_batches: 8,
            max_apply_backlog_bytes: 64 * MIB,
        }
    }
}

/// Errors of the Ready loop. Any of them stops the node; a restart recovers from the log.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("raft log: {0}")]
    Log(#[from] LogError),
    #[error("invalid node config: {0}")]
    Config(String),
    #[error(
        "the state machine has applied index {applied}, past the log's persisted commit index \
         {commit}: the log is not the one this state belongs to"
    )]
    AppliedPastCommit { applied: u64, commit: u64 },
    #[error(
        "the state machine has applied only up to {applied}, but the log starts at {first}: it \
         needs a snapshot"
    )]
    AppliedBehindLog { applied: u64, first: u64 },
    #[error("apply failed at index {index}: {reason}")]
    ApplyFailed { index: u64, reason: String },
    #[error("the apply worker is gone")]
    ApplyGone,
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// The node's role, as raft-rs's `StateRole`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// A reading of the node's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_index: u64,
    pub commit: u64,
    /// Commit index covered by the last fsync.
    pub durable_commit: u64,
    /// The index the apply worker last reported (and raft was advanced to).
    pub applied: u64,
}

/// What one [`RaftNode::on_ready`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadyOutcome {
    /// Proposals moved from the queue into raft.
    pub proposals: usize,
    /// Whether a raft `Ready` was handled.
    pub handled_ready: bool,
    /// fsyncs of the log.
    pub fsyncs: usize,
    pub entries_appended: usize,
    pub entries_committed: usize,
    /// Entries given to the apply worker.
    pub entries_to_apply: usize,
    /// Calling `on_ready` again now would do more (a `Ready` is pending, or committed entries
    /// wait for an fsync of their commit index).
    pub more: bool,
}

/// What [`RaftNode::build`] returns: the node, its proposer handle, its apply worker and counters.
pub struct NodeParts<S: LogStorage, T: Transport, A: Apply> {
    pub node: RaftNode<S, T, A>,
    pub proposer: Proposer<A::Outcome>,
    pub applier: ApplyWorker<A>,
    pub stats: Arc<NodeStats>,
    pub doorbell: Arc<Doorbell>,
}

/// A Raft node: raft-rs's `RawNode` and the Ready loop around it.
pub struct RaftNode<S: LogStorage, T: Transport, A: Apply> {
    raw: RawNode<S>,
    transport: T,
    cfg: NodeConfig,
    stats: Arc<NodeStats>,
    proposals: Receiver<PendingProposal<A::Outcome>>,
    /// Proposals in the log, not yet applied: index → (term proposed in, reply).
    waiters: BTreeMap<u64, (u64, Reply<A::Outcome>)>,
    apply_tx: SyncSender<ApplyBatch<A::Outcome>>,
    apply_events: Receiver<ApplyEvent>,
    /// A batch the full apply channel refused; it goes first next time.
    stalled: Option<ApplyBatch<A::Outcome>>,
    /// A snapshot to hand to the worker before any later entry.
    pending_snapshot: Option<Snapshot>,
    /// Committed entries not yet handed to the worker.
    to_apply: VecDeque<Entry>,
    /// Entry-data bytes in `to_apply` and `stalled`.
    backlog_bytes: u64,
    /// Commit index last written to the log storage.
    written_commit: u64,
    /// Commit index covered by the last fsync: entries up to here may be applied.
    durable_commit: u64,
    /// Last index the worker reported applied.
    applied: u64,
    /// Last index given to `advance_apply_to`.
    advanced: u64,
    /// Test-only: make the loop skip its fsync, to show the crash test catches that bug.
    #[cfg(test)]
    skip_sync_for_test: bool,
    /// Test-only: hand committed entries to apply before their commit index is synced, to
    /// show the cluster harness catches that bug.
    #[cfg(test)]
    apply_before_sync_for_test: bool,
    _state_machine: PhantomData<fn() -> A>,
}

impl<S: LogStorage, T: Transport, A: Apply> RaftNode<S, T, A> {
    /// Builds a node over `storage`. `state_machine.applied_index()` becomes raft's `applied`
    /// (entries up to it are not handed out again).
    pub fn build(
        cfg: NodeConfig,
        mut storage: S,
        transport: T,
        state_machine: A,
    ) -> Result<NodeParts<S, T, A>, NodeError> {
        validate(&cfg)?;
        let state = storage.initial_state()?;
        if !state.initialized() && storage.last_index()? == 0 && !cfg.bootstrap_voters.is_empty() {
            let cs = ConfState {
                voters: cfg.bootstrap_voters.clone(),
                ..ConfState::default()
            };
            storage.set_conf_state(&cs)?;
            storage.sync()?;
            tracing::info!(id = cfg.id, voters = ?cs.voters, "raft group bootstrapped");
        }
        let hard_state = storage.hard_state();
        let conf_state = storage.conf_state();
        let lone_voter = conf_state.voters == [cfg.id] && conf_state.learners.is_empty();
        let applied = state_machine.applied_index();
        if applied > hard_state.commit {
            return Err(NodeError::AppliedPastCommit {
                applied,
                commit: hard_state.commit,
            });
        }
        let first = storage.first_index()?;
        if applied + 1 < first {
            return Err(NodeError::AppliedBehindLog { applied, first });
        }

        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            max_election_tick: cfg.max_election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: cfg.max_uncommitted_size,
            max_committed_size_per_ready: cfg.max_committed_size_per_ready,
            ..raft::Config::default()
        };
        let raw = RawNode::new(&raft_cfg, storage, &raft_logger())?;

        let stats = Arc::new(NodeStats::default());
        let doorbell = Arc::new(Doorbell::new());
        let (proposal_tx, proposal_rx) = mpsc::sync_channel(cfg.proposal_queue);
        let (apply_tx, apply_rx) = mpsc::sync_channel(cfg.apply_queue_batches);
        let (event_tx, event_rx) = mpsc::channel();
        let proposer = Proposer::new(
            proposal_tx,
            cfg.proposal_queue,
            cfg.max_proposal_bytes,
            Arc::clone(&stats),
            Arc::clone(&doorbell),
        );
        let applier = ApplyWorker::new(
            state_machine,
            apply_rx,
            event_tx,
            Arc::clone(&doorbell),
            Arc::clone(&stats),
        );
        stats
            .commit_index
            .store(hard_state.commit, Ordering::Relaxed);
        stats.applied_index.store(applied, Ordering::Relaxed);
        stats.term.store(hard_state.term, Ordering::Relaxed);

        let mut node = RaftNode {
            raw,
            transport,
            cfg,
            stats: Arc::clone(&stats),
            proposals: proposal_rx,
            waiters: BTreeMap::new(),
            apply_tx,
            apply_events: event_rx,
            stalled: None,
            pending_snapshot: None,
            to_apply: VecDeque::new(),
            backlog_bytes: 0,
            written_commit: hard_state.commit,
            durable_commit: hard_state.commit,
            applied,
            advanced: applied,
            #[cfg(test)]
            skip_sync_for_test: false,
            #[cfg(test)]
            apply_before_sync_for_test: false,
            _state_machine: PhantomData,
        };
        // A lone voter need not wait out an election timeout to lead its own group.
        if lone_voter {
            node.raw.campaign()?;
        }
        Ok(NodeParts {
            node,
            proposer,
            applier,
            stats,
            doorbell,
        })
    }

    /// Advances the logical clock by one tick (elections, heartbeats, quorum checks).
    pub fn tick(&mut self) -> bool {
        let ticks = self.stats.ticks.fetch_add(1, Ordering::Relaxed);
        if ticks.is_multiple_of(DISK_BYTES_EVERY_TICKS) {
            let bytes = self.raw.store().disk_bytes();
            self.stats.log_disk_bytes.store(bytes, Ordering::Relaxed);
        }
        self.raw.tick()
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, msg: Message) -> Result<(), NodeError> {
        Ok(self.raw.step(msg)?)
    }

    /// Starts an election now.
    pub fn campaign(&mut self) -> Result<(), NodeError> {
        Ok(self.raw.campaign()?)
    }

    /// Proposes directly from the Ready thread (the deterministic harness's path; the runner's
    /// proposers go through [`Proposer`]).
    pub fn propose(
        &mut self,
        time_ms: i64,
        payload: &[u8],
    ) -> Result<ProposalReceipt<A::Outcome>, ProposeError> {
        if payload.len() > self.cfg.max_proposal_bytes {
            self.stats.refused_too_large.fetch_add(1, Ordering::Relaxed);
            return Err(ProposeError::TooLarge {
                size: payload.len(),
                max: self.cfg.max_proposal_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.propose_data(Proposal { time_ms, payload }.encode(), reply);
        let mut receipt = ProposalReceipt::new(rx);
        // Refusals are known at once: return them as errors, not as a resolved receipt.
        match receipt.try_outcome() {
            Some(Err(e)) => Err(e),
            _ => Ok(receipt),
        }
    }

    /// Proposes a membership change (the cluster issue's `cluster join` path).
    pub fn propose_conf_change(&mut self, change: ConfChangeV2) -> Result<(), ProposeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        self.raw
            .propose_conf_change(Vec::new(), change)
            .map_err(|_| ProposeError::Dropped)
    }

    /// Handles whatever is ready; see the module documentation for the order.
    pub fn on_ready(&mut self) -> Result<ReadyOutcome, NodeError> {
        let mut out = ReadyOutcome::default();
        self.process_apply_events()?;
        self.take_proposals(&mut out);
        if self.raw.has_ready() {
            self.handle_ready(&mut out)?;
        }
        // Proposals that came in during the fsync make the next Ready, whose fsync will cover
        // the commit index just learned; only when there is none is a commit-only fsync due.
        self.take_proposals(&mut out);
        if self.commit_awaits_sync() && !self.raw.has_ready() {
            self.persist(&mut out)?;
        }
        self.hand_to_apply(&mut out)?;
        self.process_apply_events()?;
        self.advance_apply();
        out.more = self.raw.has_ready() || self.commit_awaits_sync();
        Ok(out)
    }

    /// Deletes the log before index `to`, but never past what the state machine applied.
    pub fn compact_log(&mut self, to: u64) -> Result<(), NodeError> {
        let to = to.min(self.applied + 1);
        let first = self.raw.store().first_index()?;
        if to > first {
            self.raw.mut_store().compact(to)?;
            self.stats
                .entries_compacted
                .fetch_add(to - first, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        NodeStatus {
            id: raft.id,
            role: raft.state.into(),
            term: raft.term,
            leader: self.leader(),
            last_index: raft.raft_log.last_index(),
            commit: raft.raft_log.committed,
            durable_commit: self.durable_commit,
            applied: self.advanced,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Entries `[low, high)` of raft's log, whether already written to storage or still
    /// unstable: the harness compares every node's committed prefix through this.
    pub fn log_entries(&self, low: u64, high: u64) -> Result<Vec<Entry>, NodeError> {
        Ok(self
            .raw
            .raft
            .raft_log
            .slice(low, high, None, raft::GetEntriesContext::empty(false))?)
    }

    /// The log storage (tests and the harness inspect it).
    pub fn storage(&self) -> &S {
        self.raw.store()
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn stats(&self) -> &Arc<NodeStats> {
        &self.stats
    }

    /// Test-only knob: skip the fsync (while believing it happened). The crash test uses it
    /// to prove that it notices a loop that acknowledges unsynced entries.
    #[cfg(test)]
    pub(crate) fn set_skip_sync_for_test(&mut self, skip: bool) {
        self.skip_sync_for_test = skip;
    }

    /// Test-only knob: apply committed entries before their commit index is synced.
    #[cfg(test)]
    pub(crate) fn set_apply_before_sync_for_test(&mut self, on: bool) {
        self.apply_before_sync_for_test = on;
    }

    /// Entries up to this index may go to the state machine: the synced commit index.
    fn releasable_commit(&self) -> u64 {
        #[cfg(test)]
        if self.apply_before_sync_for_test {
            return self.raw.raft.raft_log.committed;
        }
        self.durable_commit
    }

    fn leader(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            raft::INVALID_ID => None,
            id => Some(id),
        }
    }

    fn handle_ready(&mut self, out: &mut ReadyOutcome) -> Result<(), NodeError> {
        let mut rd = self.raw.ready();
        out.handled_ready = true;
        self.stats.readies.fetch_add(1, Ordering::Relaxed);
        if let Some(ss) = rd.ss() {
            let leader = ss.leader_id;
            let is_leader = ss.raft_state == StateRole::Leader;
            self.stats.leader_id.store(leader, Ordering::Relaxed);
            self.stats.is_leader.store(is_leader, Ordering::Relaxed);
            tracing::info!(id = self.cfg.id, role = ?ss.raft_state, leader, "raft role changed");
        }

        // 1. Messages: a leader sends appends before its own fsync.
        let msgs = rd.take_messages();
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }

        // 2. A snapshot resets the log; the state machine restores it before later entries.
        let mut wrote = false;
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let index = snap.get_metadata().index;
            self.raw.mut_store().apply_snapshot(snap.get_metadata())?;
            self.written_commit = self.written_commit.max(index);
            self.to_apply.retain(|e| e.index > index);
            self.backlog_bytes = self
                .to_apply
                .iter()
                .chain(self.stalled.iter().flat_map(|b| b.entries.iter()))
                .map(|e| e.data.len() as u64)
                .sum();
            self.pending_snapshot = Some(snap);
            wrote = true;
        }

        // 3. Committed entries go to the apply queue (released once their commit is durable).
        self.queue_committed(rd.take_committed_entries(), out);

        // 4. Entries and hard state, then one fsync.
        if !rd.entries().is_empty() {
            let n = rd.entries().len();
            let bytes: u64 = rd.entries().iter().map(|e| e.data.len() as u64).sum();
            self.raw.mut_store().append(rd.entries())?;
            self.stats
                .entries_appended
                .fetch_add(n as u64, Ordering::Relaxed);
            self.stats
                .bytes_appended
                .fetch_add(bytes, Ordering::Relaxed);
            out.entries_appended += n;
            wrote = true;
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs)?;
            self.written_commit = self.written_commit.max(hs.commit);
            self.stats.term.store(hs.term, Ordering::Relaxed);
        }
        // raft-rs's `must_sync` is false when only the commit index changed; that change
        // still needs the fsync if committed entries wait for it before they may be applied.
        if wrote || rd.must_sync() || self.commit_awaits_sync() {
            self.persist(out)?;
        }

        // 5. Messages that promise what was just persisted (votes, append acks).
        let persisted = rd.take_persisted_messages();
        if !persisted.is_empty() {
            self.transport.send(persisted);
        }

        // 6. advance_append and its LightReady.
        let mut light = self.raw.advance_append(rd);
        if let Some(commit) = light.commit_index() {
            // Written now, durable with the next fsync, which comes before these entries apply.
            self.raw.mut_store().set_commit(commit)?;
            self.written_commit = self.written_commit.max(commit);
        }
        let msgs = light.take_messages();
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
        self.queue_committed(light.take_committed_entries(), out);
        self.stats
            .commit_index
            .store(self.raw.raft.raft_log.committed, Ordering::Relaxed);
        Ok(())
    }

    /// One fsync of everything written so far; the commit index written becomes durable.
    fn persist(&mut self, out: &mut ReadyOutcome) -> Result<(), NodeError> {
        #[cfg(test)]
        if self.skip_sync_for_test {
            self.durable_commit = self.written_commit;
            return Ok(());
        }
        let started = Instant::now();
        self.raw.mut_store().sync()?;
        self.stats.observe_fsync(started.elapsed());
        out.fsyncs += 1;
        self.durable_commit = self.written_commit;
        Ok(())
    }

    /// Committed entries wait for an fsync of the commit index that covers them.
    fn commit_awaits_sync(&self) -> bool {
        self.written_commit > self.durable_commit
            && (self
                .to_apply
                .front()
                .is_some_and(|e| e.index > self.durable_commit)
                || self
                    .pending_snapshot
                    .as_ref()
                    .is_some_and(|s| s.get_metadata().index > self.durable_commit))
    }

    fn queue_committed(&mut self, entries: Vec<Entry>, out: &mut ReadyOutcome) {
        if entries.is_empty() {
            return;
        }
        out.entries_committed += entries.len();
        self.stats
            .entries_committed
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        for e in entries {
            self.backlog_bytes += e.data.len() as u64;
            self.to_apply.push_back(e);
        }
    }

    /// Moves queued proposals into raft: a bounded amount per call, none while apply is far
    /// behind (the bounded queue then pushes back on proposers).
    fn take_proposals(&mut self, out: &mut ReadyOutcome) {
        if self.backlog_bytes > self.cfg.max_apply_backlog_bytes {
            return;
        }
        let mut bytes = 0u64;
        while bytes < self.cfg.max_committed_size_per_ready {
            let Ok(p) = self.proposals.try_recv() else {
                break;
            };
            bytes += p.data.len() as u64;
            out.proposals += 1;
            self.propose_data(p.data, p.reply);
        }
    }

    fn propose_data(&mut self, data: Vec<u8>, reply: Reply<A::Outcome>) {
        if self.raw.raft.state != StateRole::Leader {
            self.stats
                .refused_not_leader
                .fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(ProposeError::NotLeader {
                leader: self.leader(),
            }));
            return;
        }
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                let term = self.raw.raft.term;
                self.stats.proposals.fetch_add(1, Ordering::Relaxed);
                if let Some((_, old)) = self.waiters.insert(index, (term, reply)) {
                    // An earlier proposal at this index was cut from the log.
                    self.stats.lost.fetch_add(1, Ordering::Relaxed);
                    let _ = old.send(Err(ProposeError::Lost));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "raft dropped a proposal");
                self.stats.dropped_by_raft.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(ProposeError::Dropped));
            }
        }
    }

    /// Gives the worker every committed entry whose commit index is durable, in batches of
    /// at most `max_committed_size_per_ready` bytes, without ever blocking on a full channel.
    fn hand_to_apply(&mut self, out: &mut ReadyOutcome) -> Result<(), NodeError> {
        if let Some(batch) = self.stalled.take()
            && !self.send_batch(batch)?
        {
            return Ok(());
        }
        let releasable = self.releasable_commit();
        loop {
            let snapshot = match &self.pending_snapshot {
                Some(s) if s.get_metadata().index <= releasable => self.pending_snapshot.take(),
                _ => None,
            };
            let mut entries = Vec::new();
            let mut bytes = 0u64;
            while let Some(e) = self.to_apply.front() {
                if e.index > releasable
                    || (!entries.is_empty()
                        && bytes + e.data.len() as u64 > self.cfg.max_committed_size_per_ready)
                {
                    break;
                }
                bytes += e.data.len() as u64;
                if let Some(e) = self.to_apply.pop_front() {
                    entries.push(e);
                }
            }
            if snapshot.is_none() && entries.is_empty() {
                return Ok(());
            }
            out.entries_to_apply += entries.len();
            let waiters = self.take_waiters(snapshot.as_ref(), &entries);
            if !self.send_batch(ApplyBatch {
                snapshot,
                entries,
                waiters,
            })? {
                return Ok(());
            }
        }
    }

    /// Detaches the waiters of a batch's entries; a waiter whose entry was replaced by
    /// another term's learns it was lost.
    fn take_waiters(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Vec<(u64, Reply<A::Outcome>)> {
        let mut out = Vec::new();
        let upto = entries
            .last()
            .map(|e| e.index)
            .or(snapshot.map(|s| s.get_metadata().index))
            .unwrap_or(0);
        let covered = self.waiters.split_off(&(upto + 1));
        let taken = std::mem::replace(&mut self.waiters, covered);
        let first_entry = entries.first().map_or(u64::MAX, |e| e.index);
        for (index, (term, reply)) in taken {
            let entry_term = index
                .checked_sub(first_entry)
                .and_then(|off| entries.get(usize::try_from(off).ok()?))
                .map(|e| e.term);
            match entry_term {
                Some(t) if t == term => out.push((index, reply)),
                Some(_) => {
                    self.stats.lost.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(ProposeError::Lost));
                }
                // Covered by the snapshot: the worker answers OutcomeUnknown.
                None => out.push((index, reply)),
            }
        }
        out
    }

    /// Tries to queue a batch for the worker; `false` if the channel is full (kept for later).
    fn send_batch(&mut self, batch: ApplyBatch<A::Outcome>) -> Result<bool, NodeError> {
        let bytes: u64 = batch.entries.iter().map(|e| e.data.len() as u64).sum();
        match self.apply_tx.try_send(batch) {
            Ok(()) => {
                self.backlog_bytes = self.backlog_bytes.saturating_sub(bytes);
                Ok(true)
            }
            Err(TrySendError::Full(batch)) => {
                self.stalled = Some(batch);
                Ok(false)
            }
            Err(TrySendError::Disconnected(_)) => Err(NodeError::ApplyGone),
        }
    }

    /// Takes the worker's reports: applied index, membership changes, compaction, failure.
    fn process_apply_events(&mut self) -> Result<(), NodeError> {
        loop {
            match self.apply_events.try_recv() {
                Ok(ApplyEvent::Applied(index)) => self.applied = self.applied.max(index),
                Ok(ApplyEvent::ConfChange { index, change }) => {
                    self.apply_conf_change(index, &change)?
                }
                Ok(ApplyEvent::Compact(to)) => self.compact_log(to)?,
                Ok(ApplyEvent::Failed { index, reason }) => {
                    return Err(NodeError::ApplyFailed { index, reason });
                }
                Err(TryRecvError::Empty) => return Ok(()),
                // The worker keeps its sender until it exits; gone means it panicked.
                Err(TryRecvError::Disconnected) => return Err(NodeError::ApplyGone),
            }
        }
    }

    fn apply_conf_change(&mut self, index: u64, change: &ConfChangeV2) -> Result<(), NodeError> {
        match self.raw.apply_conf_change(change) {
            Ok(cs) => {
                tracing::info!(index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                // Synced at once: a restart must not find a state machine that applied this
                // change next to a log that forgot it.
                self.raw.mut_store().set_conf_state(&cs)?;
                let mut ignored = ReadyOutcome::default();
                self.persist(&mut ignored)
            }
            Err(e) => {
                // Every replica refuses the same change the same way; the entry stays a no-op.
                tracing::warn!(index, error = %e, ?change, "configuration change refused");
                Ok(())
            }
        }
    }

    /// Tells raft what the worker reported as applied (step 7).
    fn advance_apply(&mut self) {
        if self.applied > self.advanced {
            self.raw.advance_apply_to(self.applied);
            self.advanced = self.applied;
        }
    }
}

fn validate(cfg: &NodeConfig) -> Result<(), NodeError> {
    let fail = |m: &str| Err(NodeError::Config(m.to_owned()));
    if cfg.id == 0 {
        return fail("id must not be 0");
    }
    if cfg.bootstrap_voters.contains(&0) {
        return fail("bootstrap_voters must not contain 0");
    }
    if cfg.heartbeat_tick == 0 || cfg.election_tick <= cfg.heartbeat_tick {
        return fail("election_tick must be greater than heartbeat_tick, which must be > 0");
    }
    if cfg.max_election_tick != 0 && cfg.max_election_tick <= cfg.election_tick {
        return fail("max_election_tick must be 0 (default) or greater than election_tick");
    }
    if cfg.proposal_queue == 0 || cfg.apply_queue_batches == 0 {
        return fail("proposal_queue and apply_queue_batches must be > 0");
    }
    if cfg.max_committed_size_per_ready == 0 || cfg.max_uncommitted_size < cfg.max_size_per_msg {
        return fail(
            "max_committed_size_per_ready must be > 0 and max_uncommitted_size >= max_size_per_msg",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
