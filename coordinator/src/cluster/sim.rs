//! The deterministic multi-node harness (issue 6): 3 or 5 real [`RaftNode`]s, the same step
//! function the threaded runner drives, over an in-memory network the simulator controls.
//!
//! Why sans-I/O: a Raft bug shows up only under one interleaving of messages, ticks, crashes
//! and fsyncs. Real threads and sockets cannot replay that interleaving; here one seeded RNG
//! picks every action, so a failure prints its seed and replays exactly.
//!
//! What one step is — one of, chosen by the seeded RNG:
//! - deliver one queued message (from a random (from, to) queue; sometimes not its oldest, so
//!   messages reorder within [`SimConfig::reorder_window`]; sometimes lost, at
//!   [`SimConfig::loss`]; sometimes delivered twice, at [`SimConfig::duplicate`]);
//! - `on_ready` of one node, or one run of its apply worker (so apply lags the Ready loop);
//! - one tick of one node (nodes tick unevenly: that, not raft-rs's thread RNG, spreads the
//!   election timeouts, see [`NodeConfig::max_election_tick`]);
//! - a client proposal to the node the client believes leads, straight into the step function
//!   or through its proposal queue (the runner's path);
//! - a fault: crash a node (its in-memory state is dropped and [`MemLogStorage::crash`] keeps
//!   only synced writes; its state machine comes back from its last checkpoint), restart a
//!   crashed node, cut the network in two, block one direction, or heal.
//!
//! After every step the invariants are checked ([`Sim::check`]):
//! 1. never more than one leader per term;
//! 2. committed entries never change: the first (term, data) seen committed at an index is the
//!    only one any node ever has there (each step re-reads new commits and a tail of
//!    [`RECHECK_TAIL`] entries per node; every [`FULL_SWEEP_EVERY`] steps and at the end every
//!    node's whole committed log is re-read);
//! 3. every node that applied index N has the same digest at N (the test state machine chains
//!    a hash over what it applied);
//! 4. no acknowledged entry is lost across crashes: when a proposer learns "applied", the
//!    entry is committed with that term and data, and it is on the synced log of a majority
//!    (else a crash of those nodes could lose it); the full sweep re-checks every
//!    acknowledged entry against the synced logs; at the end every node has applied it;
//! 5. no state machine has applied past its own log's synced commit index (the Ready loop's
//!    "commit before apply" rule: a restart must never find state ahead of the log).
//!
//! The run ends with a heal phase: every node restarts, the network heals, and a fair schedule
//! must elect a leader, commit one last proposal and bring every node to the same applied
//! index and digest (liveness after the chaos).
//!
//! Replay and the long run:
//!
//! ```text
//! ARGUS_SIM_SEED=<seed> cargo test -p argus-coordinator --lib cluster::sim::tests::replay_one_seed -- --nocapture
//! ARGUS_SIM_SEEDS=2000 cargo test -p argus-coordinator --release --lib cluster::sim::tests::long_run -- --ignored --nocapture
//! ```
//!
//! `long_run` starts at `ARGUS_SIM_BASE` (default: from the clock, printed) so each run
//! explores new seeds; `ARGUS_SIM_STEPS` and `ARGUS_SIM_NODES` (3 or 5) change the run's size.
//!
//! Test-only (`#[cfg(test)]`): it relies on crate-internal fault knobs of the node (skipping
//! the fsync, applying before the commit index is synced) and is no API of the binary. The network is here, not in `transport`, because
//! nothing but the harness uses it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use raft::prelude::{Message, Snapshot};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::apply::{Apply, ApplyWorker, CommittedEntry, EntryKind};
use super::mem_storage::MemLogStorage;
use super::node::{NodeConfig, NodeError, RaftNode, Role};
use super::proposal::{ProposalReceipt, ProposeError, Proposer};
use super::transport::Transport;

#[cfg(test)]
mod tests;

/// The env var that replays one seed.
pub(crate) const SEED_ENV: &str = "ARGUS_SIM_SEED";
/// Entries below a node's last checked commit re-read on every step.
pub(crate) const RECHECK_TAIL: u64 = 8;
/// Steps between full sweeps of every committed log and every acknowledged entry.
pub(crate) const FULL_SWEEP_EVERY: u64 = 250;
/// Actions kept for the failure report.
const TRACE_LEN: usize = 60;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a test thread panicked; the data is still the data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hash_of(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// The network

/// Messages in flight, one bounded FIFO per (from, to), and what the simulator has cut.
#[derive(Debug, Default)]
struct NetState {
    queues: BTreeMap<(u64, u64), VecDeque<Message>>,
    /// Directions messages cannot cross (partitions).
    blocked: BTreeSet<(u64, u64)>,
    /// Crashed nodes: what is addressed to them is lost.
    down: BTreeSet<u64>,
    capacity: usize,
    counts: NetCounts,
}

/// What happened to messages (every drop is counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetCounts {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub cut: u64,
    pub to_down_node: u64,
    pub queue_full: u64,
    pub duplicated: u64,
}

/// The in-memory network shared by the simulator and every node's [`SimTransport`].
#[derive(Debug, Clone, Default)]
pub(crate) struct SimNet(Arc<Mutex<NetState>>);

impl SimNet {
    fn new(capacity: usize) -> Self {
        let net = SimNet::default();
        lock(&net.0).capacity = capacity;
        net
    }

    fn enqueue(&self, from: u64, msg: Message) {
        let mut net = lock(&self.0);
        net.counts.sent += 1;
        let to = msg.to;
        if net.blocked.contains(&(from, to)) {
            net.counts.cut += 1;
            return;
        }
        if net.down.contains(&to) {
            net.counts.to_down_node += 1;
            return;
        }
        let capacity = net.capacity;
        let q = net.queues.entry((from, to)).or_default();
        if q.len() >= capacity {
            net.counts.queue_full += 1;
            return;
        }
        q.push_back(msg);
    }

    /// Takes one message: from a random non-empty queue, one of its first `window`.
    fn take(&self, rng: &mut StdRng, window: usize) -> Option<Message> {
        let mut net = lock(&self.0);
        let keys: Vec<(u64, u64)> = net
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return None;
        }
        let key = keys[rng.random_range(0..keys.len())];
        let q = net.queues.get_mut(&key)?;
        let at = rng.random_range(0..q.len().min(window.max(1)));
        q.remove(at)
    }

    fn pending(&self) -> usize {
        lock(&self.0).queues.values().map(VecDeque::len).sum()
    }

    fn set_down(&self, id: u64, down: bool) {
        let mut net = lock(&self.0);
        if down {
            net.down.insert(id);
            // What was on its way to the node dies with it.
            let n: usize = net
                .queues
                .iter()
                .filter(|((_, to), _)| *to == id)
                .map(|(_, q)| q.len())
                .sum();
            net.counts.to_down_node += n as u64;
            net.queues.retain(|(_, to), _| *to != id);
        } else {
            net.down.remove(&id);
        }
    }

    fn is_blocked(&self, from: u64, to: u64) -> bool {
        lock(&self.0).blocked.contains(&(from, to))
    }

    fn counts(&self) -> NetCounts {
        lock(&self.0).counts
    }
}

/// One node's side of the [`SimNet`].
pub(crate) struct SimTransport {
    from: u64,
    net: SimNet,
}

impl Transport for SimTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            self.net.enqueue(self.from, m);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test state machine

/// What survives a crash of the state machine: its last checkpoint.
#[derive(Debug, Default, Clone, Copy)]
struct Checkpoint {
    applied: u64,
    digest: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("sim state machine: {0}")]
pub(crate) struct SimSmError(String);

/// A state machine whose whole state is a hash chained over every entry it applied: two
/// replicas with the same digest at N applied the same entries up to N.
struct DigestSm {
    applied: u64,
    digest: u64,
    batches: u64,
    /// Checkpoint every this many batches (the real one checkpoints now and then, too).
    checkpoint_every: u64,
    checkpoint: Arc<Mutex<Checkpoint>>,
    /// (index, digest after it), for the simulator to compare across nodes.
    applied_log: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl Apply for DigestSm {
    /// The digest after the entry.
    type Outcome = u64;
    type Error = SimSmError;

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn apply(&mut self, entry: CommittedEntry<'_>) -> Result<u64, SimSmError> {
        if entry.index != self.applied + 1 {
            return Err(SimSmError(format!(
                "entry {} applied after {}",
                entry.index, self.applied
            )));
        }
        let body: Vec<u8> = match entry.kind {
            EntryKind::Empty => vec![0],
            EntryKind::ConfChange(_) => vec![1],
            EntryKind::Proposal(p) => {
                let mut b = vec![2];
                b.extend_from_slice(&p.time_ms.to_le_bytes());
                b.extend_from_slice(p.payload);
                b
            }
        };
        self.digest = hash_of(&[
            &self.digest.to_le_bytes(),
            &entry.index.to_le_bytes(),
            &entry.term.to_le_bytes(),
            &body,
        ]);
        self.applied = entry.index;
        lock(&self.applied_log).push((entry.index, self.digest));
        Ok(self.digest)
    }

    fn end_batch(&mut self) -> Result<(), SimSmError> {
        self.batches += 1;
        if self.batches.is_multiple_of(self.checkpoint_every) {
            *lock(&self.checkpoint) = Checkpoint {
                applied: self.applied,
                digest: self.digest,
            };
        }
        Ok(())
    }

    fn restore_snapshot(&mut self, _snapshot: &Snapshot) -> Result<(), SimSmError> {
        // The harness never compacts, so no leader ever needs to send one.
        Err(SimSmError("snapshots are not part of this harness".into()))
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator

/// Knobs of one run. All randomness comes from the seed.
#[derive(Debug, Clone)]
pub(crate) struct SimConfig {
    pub nodes: u64,
    pub steps: u64,
    /// Probability that a delivered message is lost instead.
    pub loss: f64,
    /// Weight of client proposals among the actions (deliver 400, on_ready 220, apply 100,
    /// tick 160, fault 10).
    pub proposal_weight: u32,
    /// Probability that a delivered message is also queued again, to arrive a second time.
    pub duplicate: f64,
    /// A delivery takes one of the first this-many messages of its queue.
    pub reorder_window: usize,
    /// Messages one (from, to) queue holds; more are dropped (counted).
    pub queue_capacity: usize,
    /// Test-only fault: the nodes skip their fsync (while believing they did it).
    pub fault_skip_fsync: bool,
    /// Test-only fault: the nodes apply committed entries before their commit index is synced.
    pub fault_apply_before_sync: bool,
    /// Check the rules that read synced state directly (rule 4's "synced on a majority" and
    /// rule 5). Off only to show that crashes alone expose a loop that skips its fsync.
    pub check_sync_rules: bool,
}

impl SimConfig {
    /// A run whose loss rate and size are drawn from the seed.
    pub(crate) fn for_seed(seed: u64, nodes: u64, steps: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_C0DE);
        Self {
            nodes,
            steps,
            loss: [0.0, 0.02, 0.1, 0.25][rng.random_range(0..4)],
            proposal_weight: 110,
            duplicate: [0.0, 0.02][rng.random_range(0..2)],
            reorder_window: [1, 2, 4][rng.random_range(0..3)],
            queue_capacity: 256,
            fault_skip_fsync: false,
            fault_apply_before_sync: false,
            check_sync_rules: true,
        }
    }
}

/// A failed invariant (or a node error), with what is needed to replay it.
#[derive(Debug)]
pub(crate) struct SimFailure {
    pub seed: u64,
    pub nodes: u64,
    pub steps: u64,
    /// Whether a test-only fault was switched on (the replay command does not switch it on).
    pub faulty: bool,
    pub step: u64,
    pub what: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {}: {}",
            self.seed, self.step, self.what
        )?;
        writeln!(
            f,
            "replay: {SEED_ENV}={} ARGUS_SIM_NODES={} ARGUS_SIM_STEPS={} cargo test -p \
             argus-coordinator --lib cluster::sim::tests::replay_one_seed -- --nocapture{}",
            self.seed,
            self.nodes,
            self.steps,
            if self.faulty {
                " (with this test's fault switched on)"
            } else {
                ""
            }
        )?;
        writeln!(f, "last actions:")?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}

/// What a run did, to show it exercised what it claims.
#[derive(Debug, Default, Clone)]
pub(crate) struct SimReport {
    pub steps: u64,
    pub proposals: u64,
    pub acked: u64,
    pub refused: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub max_term: u64,
    pub elections: u64,
    pub final_commit: u64,
    pub net: NetCounts,
}

type Node = RaftNode<MemLogStorage, SimTransport, DigestSm>;

struct Live {
    node: Node,
    worker: ApplyWorker<DigestSm>,
    /// The queue the runner's proposers use; the client sends half its proposals here.
    proposer: Proposer<u64>,
    /// Highest commit index of this node already compared with the global record.
    checked_commit: u64,
}

/// One node: what survives a crash (the log storage, the checkpoint) and what does not.
struct Slot {
    id: u64,
    storage: MemLogStorage,
    checkpoint: Arc<Mutex<Checkpoint>>,
    applied_log: Arc<Mutex<Vec<(u64, u64)>>>,
    checkpoint_every: u64,
    live: Option<Live>,
}

struct Pending {
    node: u64,
    time_ms: i64,
    payload: Vec<u8>,
    receipt: ProposalReceipt<u64>,
    /// Proposed in the heal phase: its acknowledgement ends the run.
    is_final: bool,
}

/// An entry whose proposer was told it was applied.
#[derive(Debug, Clone)]
struct Acked {
    index: u64,
    term: u64,
    data_hash: u64,
}

pub(crate) struct Sim {
    seed: u64,
    cfg: SimConfig,
    rng: StdRng,
    net: SimNet,
    slots: Vec<Slot>,
    step: u64,
    trace: VecDeque<String>,
    /// term → the node that led it.
    leaders: BTreeMap<u64, u64>,
    /// index → (term, hash of data) as first seen committed.
    committed: BTreeMap<u64, (u64, u64)>,
    /// index → digest after it, as first applied anywhere.
    digests: BTreeMap<u64, u64>,
    pending: Vec<Pending>,
    acked: Vec<Acked>,
    /// The node the client sends proposals to.
    client_target: u64,
    /// The first acknowledged proposal of the heal phase.
    final_ack: Option<Acked>,
    report: SimReport,
}

fn node_config(id: u64, nodes: u64) -> NodeConfig {
    NodeConfig {
        id,
        bootstrap_voters: (1..=nodes).collect(),
        election_tick: 6,
        max_election_tick: 7,
        heartbeat_tick: 2,
        // Small batches, so a Ready holds a few entries and applies come in slices.
        max_committed_size_per_ready: 512,
        max_size_per_msg: 1024,
        max_inflight_msgs: 16,
        max_uncommitted_size: 64 * 1024,
        proposal_queue: 64,
        apply_queue_batches: 4,
        ..NodeConfig::default()
    }
}

impl Sim {
    pub(crate) fn new(seed: u64, cfg: SimConfig) -> Result<Self, SimFailure> {
        if cfg.nodes == 0 || cfg.queue_capacity == 0 || cfg.reorder_window == 0 {
            return Err(SimFailure {
                seed,
                nodes: cfg.nodes,
                steps: cfg.steps,
                faulty: false,
                step: 0,
                what: "nodes, queue_capacity and reorder_window must be at least 1".into(),
                trace: Vec::new(),
            });
        }
        let net = SimNet::new(cfg.queue_capacity);
        let mut rng = StdRng::seed_from_u64(seed);
        let slots = (1..=cfg.nodes)
            .map(|id| Slot {
                id,
                storage: MemLogStorage::new(),
                checkpoint: Arc::default(),
                applied_log: Arc::default(),
                checkpoint_every: rng.random_range(1..=6),
                live: None,
            })
            .collect();
        let mut sim = Sim {
            seed,
            cfg,
            rng,
            net,
            slots,
            step: 0,
            trace: VecDeque::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            digests: BTreeMap::new(),
            pending: Vec::new(),
            acked: Vec::new(),
            client_target: 1,
            final_ack: None,
            report: SimReport::default(),
        };
        for i in 0..sim.slots.len() {
            sim.start(i)?;
        }
        Ok(sim)
    }

    fn fail(&self, what: impl Into<String>) -> SimFailure {
        SimFailure {
            seed: self.seed,
            nodes: self.cfg.nodes,
            steps: self.cfg.steps,
            faulty: self.cfg.fault_skip_fsync || self.cfg.fault_apply_before_sync,
            step: self.step,
            what: what.into(),
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn node_err(&self, id: u64, e: NodeError) -> SimFailure {
        self.fail(format!("node {id}: {e}"))
    }

    fn note(&mut self, action: String) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>6} {action}", self.step));
    }

    /// Builds slot `i`'s node from its storage and its state machine's last checkpoint.
    fn start(&mut self, i: usize) -> Result<(), SimFailure> {
        let slot = &self.slots[i];
        let ckpt = *lock(&slot.checkpoint);
        let sm = DigestSm {
            applied: ckpt.applied,
            digest: ckpt.digest,
            batches: 0,
            checkpoint_every: slot.checkpoint_every,
            checkpoint: Arc::clone(&slot.checkpoint),
            applied_log: Arc::clone(&slot.applied_log),
        };
        let transport = SimTransport {
            from: slot.id,
            net: self.net.clone(),
        };
        let id = slot.id;
        let parts = RaftNode::build(
            node_config(id, self.cfg.nodes),
            slot.storage.clone(),
            transport,
            sm,
        )
        .map_err(|e| self.fail(format!("node {id} failed to start: {e}")))?;
        let mut node = parts.node;
        if self.cfg.fault_skip_fsync {
            node.set_skip_sync_for_test(true);
        }
        if self.cfg.fault_apply_before_sync {
            node.set_apply_before_sync_for_test(true);
        }
        self.net.set_down(id, false);
        self.slots[i].live = Some(Live {
            node,
            worker: parts.applier,
            proposer: parts.proposer,
            checked_commit: 0,
        });
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.live = None;
        slot.storage.crash();
        let id = slot.id;
        self.net.set_down(id, true);
        self.report.crashes += 1;
    }

    fn live_indexes(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].live.is_some())
            .collect()
    }

    /// Runs every step and the heal phase; the report on success.
    ///
    /// raft-rs panics when it meets a log that contradicts what it was told (a follower asked
    /// to commit past its last index after losing acknowledged entries, say): that panic is
    /// turned into a failure with the seed like any other broken invariant.
    pub(crate) fn run(mut self) -> Result<SimReport, SimFailure> {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while self.step < self.cfg.steps {
                self.step += 1;
                self.random_action()?;
                self.check()?;
            }
            self.heal()?;
            self.full_sweep()
        }));
        match outcome {
            Ok(result) => result?,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                return Err(self.fail(format!("panic: {msg}")));
            }
        }
        self.report.steps = self.step;
        self.report.net = self.net.counts();
        self.report.max_term = self.leaders.keys().next_back().copied().unwrap_or(0);
        self.report.elections = self.leaders.len() as u64;
        Ok(self.report)
    }

    fn random_action(&mut self) -> Result<(), SimFailure> {
        let live = self.live_indexes();
        // Weights: deliver 400, on_ready 220, apply 100, tick 160, propose (configured),
        // fault 10.
        let propose_to = 880 + self.cfg.proposal_weight;
        let roll = self.rng.random_range(0..propose_to + 10);
        let pick = |rng: &mut StdRng| live[rng.random_range(0..live.len())];
        match roll {
            0..400 => self.deliver_one(),
            400..620 if !live.is_empty() => {
                let i = pick(&mut self.rng);
                self.ready(i)
            }
            620..720 if !live.is_empty() => {
                let i = pick(&mut self.rng);
                self.apply(i);
                Ok(())
            }
            720..880 if !live.is_empty() => {
                let i = pick(&mut self.rng);
                self.tick(i);
                Ok(())
            }
            r if (880..propose_to).contains(&r) => self.propose(),
            r if r >= propose_to => self.fault(),
            _ => Ok(()),
        }
    }

    fn deliver_one(&mut self) -> Result<(), SimFailure> {
        let window = self.cfg.reorder_window;
        let Some(msg) = self.net.take(&mut self.rng, window) else {
            return Ok(());
        };
        let (from, to) = (msg.from, msg.to);
        if self.rng.random_bool(self.cfg.loss) {
            lock(&self.net.0).counts.lost += 1;
            self.note(format!("lose {:?} {from}->{to}", msg.get_msg_type()));
            return Ok(());
        }
        // A partition made after the message was sent cuts it too.
        if self.net.is_blocked(from, to) {
            lock(&self.net.0).counts.cut += 1;
            return Ok(());
        }
        let i = usize::try_from(to - 1).unwrap_or(usize::MAX);
        let Some(live) = self.slots.get_mut(i).and_then(|s| s.live.as_mut()) else {
            lock(&self.net.0).counts.to_down_node += 1;
            return Ok(());
        };
        lock(&self.net.0).counts.delivered += 1;
        // Now and then the network delivers a message twice (a retransmission).
        if self.rng.random_bool(self.cfg.duplicate) {
            lock(&self.net.0).counts.duplicated += 1;
            self.net.enqueue(from, msg.clone());
        }
        let kind = msg.get_msg_type();
        live.node.step(msg).map_err(|e| self.node_err(to, e))?;
        self.note(format!("deliver {kind:?} {from}->{to}"));
        Ok(())
    }

    fn ready(&mut self, i: usize) -> Result<(), SimFailure> {
        let id = self.slots[i].id;
        let Some(live) = self.slots[i].live.as_mut() else {
            return Ok(());
        };
        let out = live.node.on_ready().map_err(|e| self.node_err(id, e))?;
        self.note(format!(
            "ready {id}: appended {} committed {} to_apply {} fsyncs {}",
            out.entries_appended, out.entries_committed, out.entries_to_apply, out.fsyncs
        ));
        Ok(())
    }

    fn apply(&mut self, i: usize) {
        let id = self.slots[i].id;
        if let Some(live) = self.slots[i].live.as_mut() {
            let n = live.worker.run_pending();
            let applied = live.worker.applied();
            self.note(format!("apply {id}: {n} batches, applied {applied}"));
        }
    }

    fn tick(&mut self, i: usize) {
        let id = self.slots[i].id;
        if let Some(live) = self.slots[i].live.as_mut() {
            live.node.tick();
            self.note(format!("tick {id}"));
        }
    }

    fn propose(&mut self) -> Result<(), SimFailure> {
        let target = self.client_target;
        let i = usize::try_from(target - 1).unwrap_or(0);
        let Some(live) = self.slots[i].live.as_mut() else {
            self.client_target = self.rng.random_range(1..=self.cfg.nodes);
            return Ok(());
        };
        let time_ms = self.step as i64;
        let payload = format!("p{}-{}", self.seed, self.report.proposals).into_bytes();
        self.report.proposals += 1;
        // Straight into the step function, or through the proposal queue that the next
        // `on_ready` drains (the threaded runner's path).
        let queued = self.rng.random_bool(0.5);
        let result = if queued {
            live.proposer.propose(time_ms, &payload)
        } else {
            live.node.propose(time_ms, &payload)
        };
        match result {
            Ok(receipt) => {
                self.note(format!("propose to {target} (queued: {queued})"));
                self.pending.push(Pending {
                    node: target,
                    time_ms,
                    payload,
                    receipt,
                    is_final: false,
                });
            }
            Err(e) => {
                self.report.refused += 1;
                self.client_target = match e {
                    ProposeError::NotLeader { leader: Some(l) } => l,
                    _ => self.rng.random_range(1..=self.cfg.nodes),
                };
                self.note(format!("propose to {target} refused: {e}"));
            }
        }
        Ok(())
    }

    fn fault(&mut self) -> Result<(), SimFailure> {
        let n = self.cfg.nodes;
        let live = self.live_indexes();
        let down: Vec<usize> = (0..self.slots.len())
            .filter(|i| !live.contains(i))
            .collect();
        match self.rng.random_range(0..6u32) {
            // Crash. Mostly a majority stays up so that runs make progress between faults;
            // now and then a majority goes down too (safety must hold; progress waits).
            0 | 1
                if live.len() > 1
                    && ((down.len() as u64) < n / 2 || self.rng.random_bool(0.15)) =>
            {
                let i = live[self.rng.random_range(0..live.len())];
                self.crash(i);
                self.note(format!("CRASH {}", i + 1));
            }
            2 if !down.is_empty() => {
                let i = down[self.rng.random_range(0..down.len())];
                self.start(i)?;
                self.report.restarts += 1;
                self.note(format!("RESTART {}", i + 1));
            }
            3 => {
                // Split into two sides; nothing crosses.
                let side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                let mut net = lock(&self.net.0);
                net.blocked.clear();
                for a in 1..=n {
                    for b in 1..=n {
                        if side[(a - 1) as usize] != side[(b - 1) as usize] {
                            net.blocked.insert((a, b));
                        }
                    }
                }
                drop(net);
                self.report.partitions += 1;
                self.note(format!("PARTITION {side:?}"));
            }
            4 => {
                let a = self.rng.random_range(1..=n);
                let b = self.rng.random_range(1..=n);
                if a != b {
                    lock(&self.net.0).blocked.insert((a, b));
                    self.report.partitions += 1;
                    self.note(format!("BLOCK {a}->{b}"));
                }
            }
            _ => {
                lock(&self.net.0).blocked.clear();
                self.note("HEAL".into());
            }
        }
        Ok(())
    }

    /// The invariants, after every step.
    fn check(&mut self) -> Result<(), SimFailure> {
        // 1. One leader per term.
        for slot in &self.slots {
            let Some(live) = &slot.live else { continue };
            let st = live.node.status();
            if st.role == Role::Leader {
                match self.leaders.get(&st.term) {
                    Some(&other) if other != slot.id => {
                        return Err(self.fail(format!(
                            "two leaders in term {}: {other} and {}",
                            st.term, slot.id
                        )));
                    }
                    Some(_) => {}
                    None => {
                        self.leaders.insert(st.term, slot.id);
                    }
                }
            }
        }
        // 2. Committed entries never change.
        for i in 0..self.slots.len() {
            self.check_committed(i, false)?;
        }
        // 3. Same digest at the same index.
        for i in 0..self.slots.len() {
            let fresh: Vec<(u64, u64)> = std::mem::take(&mut *lock(&self.slots[i].applied_log));
            for (index, digest) in fresh {
                let known = *self.digests.entry(index).or_insert(digest);
                if known != digest {
                    return Err(self.fail(format!(
                        "node {} applied index {index} with digest {digest:#x}, another node \
                         with {known:#x}",
                        i + 1
                    )));
                }
            }
        }
        // 5. No state machine is ahead of its log's synced commit index: a crash then would
        //    restart it next to a log that may commit something else at those indexes.
        for slot in self.slots.iter().filter(|_| self.cfg.check_sync_rules) {
            let Some(live) = &slot.live else { continue };
            let (applied, synced) = (live.worker.applied(), slot.storage.durable_commit());
            if applied > synced {
                return Err(self.fail(format!(
                    "node {} applied up to {applied} while its synced commit index is {synced}",
                    slot.id
                )));
            }
        }
        // 4. Acknowledged entries: committed as proposed, and synced on a majority.
        let mut still = Vec::new();
        for mut p in std::mem::take(&mut self.pending) {
            match p.receipt.try_outcome() {
                None => still.push(p),
                Some(Err(_)) => {}
                Some(Ok(applied)) => {
                    let data = super::proposal::Proposal {
                        time_ms: p.time_ms,
                        payload: &p.payload,
                    }
                    .encode();
                    let ack = Acked {
                        index: applied.index,
                        term: applied.term,
                        data_hash: hash_of(&[&data]),
                    };
                    self.note(format!(
                        "ACK from {} index {} term {}",
                        p.node, ack.index, ack.term
                    ));
                    self.report.acked += 1;
                    self.check_ack(&ack)?;
                    if p.is_final && self.final_ack.is_none() {
                        self.final_ack = Some(ack.clone());
                    }
                    self.acked.push(ack);
                }
            }
        }
        self.pending = still;
        if self.step.is_multiple_of(FULL_SWEEP_EVERY) {
            self.full_sweep()?;
        }
        Ok(())
    }

    fn check_ack(&mut self, ack: &Acked) -> Result<(), SimFailure> {
        match self.committed.get(&ack.index) {
            Some(&(term, hash)) if (term, hash) != (ack.term, ack.data_hash) => {
                return Err(self.fail(format!(
                    "acknowledged entry {} (term {}) is not what was committed there (term \
                     {term})",
                    ack.index, ack.term
                )));
            }
            Some(_) => {}
            None => {
                self.committed.insert(ack.index, (ack.term, ack.data_hash));
            }
        }
        if self.cfg.check_sync_rules {
            let synced = self
                .slots
                .iter()
                .filter(|s| s.storage.durable_term(ack.index) == Some(ack.term))
                .count() as u64;
            if synced <= self.cfg.nodes / 2 {
                return Err(self.fail(format!(
                    "acknowledged entry {} (term {}) is synced on {synced} of {} nodes: a crash \
                     could lose it",
                    ack.index, ack.term, self.cfg.nodes
                )));
            }
        }
        Ok(())
    }

    /// Compares slot `i`'s committed log with the record; `all` re-reads it from index 1.
    fn check_committed(&mut self, i: usize, all: bool) -> Result<(), SimFailure> {
        let id = self.slots[i].id;
        let Some(live) = self.slots[i].live.as_mut() else {
            return Ok(());
        };
        let commit = live.node.status().commit;
        let from = if all {
            1
        } else {
            (live.checked_commit + 1).min(commit.saturating_sub(RECHECK_TAIL) + 1)
        }
        .max(1);
        if from > commit {
            return Ok(());
        }
        let entries = live
            .node
            .log_entries(from, commit + 1)
            .map_err(|e| format!("node {id}: reading committed entries {from}..={commit}: {e}"));
        let entries = match entries {
            Ok(entries) => entries,
            Err(what) => return Err(self.fail(what)),
        };
        let Some(live) = self.slots[i].live.as_mut() else {
            return Ok(());
        };
        live.checked_commit = live.checked_commit.max(commit);
        for e in entries {
            let got = (e.term, hash_of(&[&e.data]));
            let known = *self.committed.entry(e.index).or_insert(got);
            if known != got {
                return Err(self.fail(format!(
                    "node {id} has term {} at committed index {}; term {} was committed there \
                     first (committed entries changed)",
                    got.0, e.index, known.0
                )));
            }
        }
        Ok(())
    }

    fn full_sweep(&mut self) -> Result<(), SimFailure> {
        for i in 0..self.slots.len() {
            self.check_committed(i, true)?;
        }
        if self.cfg.check_sync_rules {
            for ack in &self.acked {
                let synced = self
                    .slots
                    .iter()
                    .filter(|s| s.storage.durable_term(ack.index) == Some(ack.term))
                    .count() as u64;
                if synced <= self.cfg.nodes / 2 {
                    return Err(self.fail(format!(
                        "acknowledged entry {} (term {}) is synced on only {synced} nodes",
                        ack.index, ack.term
                    )));
                }
            }
        }
        Ok(())
    }

    /// Restarts every node, heals the network and runs a fair schedule: a leader must
    /// emerge, commit a last proposal, and every node must apply everything acknowledged.
    fn heal(&mut self) -> Result<(), SimFailure> {
        lock(&self.net.0).blocked.clear();
        self.note("HEAL PHASE".into());
        for i in 0..self.slots.len() {
            if self.slots[i].live.is_none() {
                self.start(i)?;
                self.report.restarts += 1;
            }
        }
        // A proposal whose leader is deposed before it commits stays unanswered until some
        // entry commits at its index (it may still commit: another node may hold it). Like a
        // client with a timeout, propose again after this many rounds without an answer.
        const RETRY_ROUNDS: u64 = 40;
        let mut last_final: Option<u64> = None;
        let rounds = 2_000u64;
        for round in 0..rounds {
            self.step += 1;
            for i in 0..self.slots.len() {
                self.tick(i);
                self.ready(i)?;
                self.apply(i);
                self.ready(i)?;
            }
            // Fair delivery: everything queued now, without loss.
            for _ in 0..self.net.pending() {
                let Some(msg) = self.net.take(&mut self.rng, 1) else {
                    break;
                };
                let to = msg.to;
                let i = usize::try_from(to - 1).unwrap_or(usize::MAX);
                if let Some(live) = self.slots.get_mut(i).and_then(|s| s.live.as_mut()) {
                    live.node.step(msg).map_err(|e| self.node_err(to, e))?;
                }
            }
            self.check()?;
            let due = last_final.is_none_or(|at| round >= at + RETRY_ROUNDS);
            if self.final_ack.is_none()
                && due
                && let Some(i) = (0..self.slots.len()).find(|&i| {
                    self.slots[i]
                        .live
                        .as_ref()
                        .is_some_and(|l| l.node.is_leader())
                })
            {
                let payload = format!("final-{}-{round}", self.seed).into_bytes();
                let time_ms = self.step as i64;
                let result = self.slots[i]
                    .live
                    .as_mut()
                    .map(|l| l.node.propose(time_ms, &payload));
                self.note(format!(
                    "final proposal to {}: {:?}",
                    i + 1,
                    result.as_ref().map(|r| r.as_ref().map(|_| ()))
                ));
                if let Some(Ok(receipt)) = result {
                    last_final = Some(round);
                    self.pending.push(Pending {
                        node: i as u64 + 1,
                        time_ms,
                        payload,
                        receipt,
                        is_final: true,
                    });
                }
            }
            if let Some(ack) = self.final_ack.clone()
                && self.converged(&ack)
            {
                let commit = self.slots[0]
                    .live
                    .as_ref()
                    .map_or(0, |l| l.node.status().commit);
                self.report.final_commit = commit;
                return self.check_all_acked_applied();
            }
        }
        let statuses: Vec<String> = self
            .slots
            .iter()
            .filter_map(|s| s.live.as_ref())
            .map(|l| format!("{:?}", l.node.status()))
            .collect();
        Err(self.fail(format!(
            "no convergence after {rounds} fair rounds of the heal phase (final proposal \
             acknowledged: {}); nodes: {}",
            self.final_ack.is_some(),
            statuses.join("; ")
        )))
    }

    /// Every node applied the same last index, and the final proposal is acknowledged.
    fn converged(&self, final_ack: &Acked) -> bool {
        let statuses: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| s.live.as_ref().map(|l| l.node.status()))
            .collect();
        statuses.len() == self.slots.len()
            && statuses.iter().all(|s| {
                s.applied == statuses[0].applied
                    && s.commit == statuses[0].commit
                    && s.applied >= final_ack.index
            })
    }

    fn check_all_acked_applied(&self) -> Result<(), SimFailure> {
        for slot in &self.slots {
            let applied = slot.live.as_ref().map_or(0, |l| l.node.status().applied);
            if let Some(ack) = self.acked.iter().find(|a| a.index > applied) {
                return Err(self.fail(format!(
                    "node {} applied up to {applied}, short of acknowledged entry {}",
                    slot.id, ack.index
                )));
            }
        }
        Ok(())
    }
}
