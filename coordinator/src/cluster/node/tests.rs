//! Tests of the Ready loop, driven synchronously (as the cluster harness will) and through
//! the threaded runner.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Message, Snapshot};
use raft::{GetEntriesContext, Storage};

use super::*;
use crate::cluster::apply::{Apply, ApplyWorker, CommittedEntry, EntryKind};
use crate::cluster::mem_storage::MemLogStorage;
use crate::cluster::proposal::{Applied, ProposalReceipt, ProposeError, Proposer};
use crate::cluster::runner;
use crate::cluster::segment_log::SegmentLogStorage;
use crate::cluster::transport::{NoPeers, Transport};

/// What the test state machine saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Empty(u64),
    Proposal {
        index: u64,
        time_ms: i64,
        payload: Vec<u8>,
    },
    ConfChange(u64),
}

impl Seen {
    fn index(&self) -> u64 {
        match self {
            Seen::Empty(i) | Seen::ConfChange(i) | Seen::Proposal { index: i, .. } => *i,
        }
    }
}

/// A gate the test opens to let a slow apply continue.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.cv.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("test state machine: {0}")]
struct RecorderError(&'static str);

/// A tiny state machine: records each entry; the outcome echoes the time and payload size.
struct Recorder {
    applied: u64,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Option<Arc<Gate>>,
}

impl Recorder {
    fn new(applied: u64) -> (Self, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (
            Recorder {
                applied,
                seen: Arc::clone(&seen),
                gate: None,
            },
            seen,
        )
    }
}

impl Apply for Recorder {
    type Outcome = (i64, usize);
    type Error = RecorderError;

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn apply(&mut self, entry: CommittedEntry<'_>) -> Result<(i64, usize), RecorderError> {
        if let Some(gate) = &self.gate {
            gate.wait();
        }
        if entry.index != self.applied + 1 {
            return Err(RecorderError("entries out of order"));
        }
        self.applied = entry.index;
        let (seen, outcome) = match entry.kind {
            EntryKind::Empty => (Seen::Empty(entry.index), (0, 0)),
            EntryKind::ConfChange(_) => (Seen::ConfChange(entry.index), (0, 0)),
            EntryKind::Proposal(p) => (
                Seen::Proposal {
                    index: entry.index,
                    time_ms: p.time_ms,
                    payload: p.payload.to_vec(),
                },
                (p.time_ms, p.payload.len()),
            ),
        };
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(seen);
        Ok(outcome)
    }

    fn restore_snapshot(&mut self, _snapshot: &Snapshot) -> Result<(), RecorderError> {
        Err(RecorderError("snapshots are not used here"))
    }
}

type Receipt = ProposalReceipt<(i64, usize)>;

fn cfg(id: u64, voters: &[u64]) -> NodeConfig {
    NodeConfig {
        id,
        bootstrap_voters: voters.to_vec(),
        ..NodeConfig::default()
    }
}

fn seen(log: &Mutex<Vec<Seen>>) -> Vec<Seen> {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs the loop and the apply worker, alternately, until neither has anything left to do.
fn settle<S: LogStorage, T: Transport>(
    node: &mut RaftNode<S, T, Recorder>,
    worker: &mut ApplyWorker<Recorder>,
) {
    for _ in 0..100 {
        let out = node.on_ready().expect("on_ready");
        let ran = worker.run_pending();
        if !out.more && ran == 0 && !out.handled_ready && out.fsyncs == 0 {
            return;
        }
    }
    panic!("the node did not settle");
}

fn outcome(receipt: &mut Receipt) -> Result<Applied<(i64, usize)>, ProposeError> {
    receipt.try_outcome().expect("the outcome is known")
}

#[test]
fn one_voter_applies_in_order_answers_proposers_and_restarts_from_fjall() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raft-log");
    let n = 20u64;
    {
        let storage = SegmentLogStorage::open(&path).expect("open log");
        let (sm, log) = Recorder::new(0);
        let parts = RaftNode::build(cfg(1, &[1]), storage, NoPeers, sm).expect("node");
        let (mut node, mut worker, proposer) = (parts.node, parts.applier, parts.proposer);
        settle(&mut node, &mut worker);
        assert!(node.is_leader(), "a lone voter leads its group");

        // Half straight into the step function, half through the proposer's queue.
        let mut receipts: Vec<(i64, Vec<u8>, Receipt)> = Vec::new();
        for i in 0..n {
            let time_ms = 1_700_000_000_000 + i as i64;
            let payload = format!("proposal {i}").into_bytes();
            let receipt = if i % 2 == 0 {
                node.propose(time_ms, &payload).expect("propose")
            } else {
                proposer.propose(time_ms, &payload).expect("queue")
            };
            receipts.push((time_ms, payload, receipt));
        }
        settle(&mut node, &mut worker);

        // Every proposer learns its applied outcome; the state machine saw the leader's no-op,
        // then each proposal once, in log order, with the time its proposer stamped.
        let mut by_index = Vec::new();
        for (time_ms, payload, receipt) in &mut receipts {
            let applied = outcome(receipt).expect("applied");
            assert_eq!(applied.outcome, (*time_ms, payload.len()));
            by_index.push(Seen::Proposal {
                index: applied.index,
                time_ms: *time_ms,
                payload: payload.clone(),
            });
        }
        by_index.sort_by_key(Seen::index);
        let applied = seen(&log);
        assert_eq!(applied.first(), Some(&Seen::Empty(1)));
        assert_eq!(applied[1..], by_index[..]);
        let status = node.status();
        assert_eq!(status.last_index, n + 1);
        assert_eq!(status.commit, n + 1);
        assert_eq!(status.durable_commit, n + 1);
        assert_eq!(status.applied, n + 1);
        let stats = node.stats().snapshot();
        assert_eq!(stats.proposals, n);
        assert_eq!(stats.applied_index, n + 1);
        assert_eq!(stats.apply_lag(), 0);
        assert!(stats.fsyncs >= 1);
    }

    // The log, the hard state and the commit index are on disk.
    let storage = SegmentLogStorage::open(&path).expect("reopen log");
    assert_eq!(storage.last_index().ok(), Some(n + 1));
    let hs = storage.hard_state();
    assert_eq!(hs.commit, n + 1);
    assert_eq!(hs.vote, 1);
    assert_eq!(storage.conf_state().voters, vec![1]);
    let entries = storage
        .entries(1, n + 2, None, GetEntriesContext::empty(false))
        .expect("entries");
    assert_eq!(entries.len() as u64, n + 1);

    // Restart with the state machine at index 11: 12.. are applied again, nothing before.
    let (sm, log) = Recorder::new(11);
    let parts = RaftNode::build(cfg(1, &[1]), storage, NoPeers, sm).expect("restart");
    let (mut node, mut worker) = (parts.node, parts.applier);
    settle(&mut node, &mut worker);
    let replayed = seen(&log);
    let indexes: Vec<u64> = replayed.iter().map(Seen::index).collect();
    // n + 2 is the new term's no-op.
    assert_eq!(indexes, (12..=n + 2).collect::<Vec<_>>());
    assert!(matches!(replayed.last(), Some(Seen::Empty(i)) if *i == n + 2));
    assert!(
        replayed[..replayed.len() - 1]
            .iter()
            .all(|s| matches!(s, Seen::Proposal { .. }))
    );
}

/// Proposes in rounds, stepping the loop and the worker after each, and returns every
/// (index, payload) whose proposer was answered "applied" before the crash point.
///
/// With `log` given, it also checks after every step that the commit index on durable storage
/// is never behind what the state machine applied (a restart must not find state ahead of the
/// log's commit index).
fn propose_and_ack(
    node: &mut RaftNode<MemLogStorage, NoPeers, Recorder>,
    worker: &mut ApplyWorker<Recorder>,
    proposer: &Proposer<(i64, usize)>,
    rounds: usize,
    log: Option<&MemLogStorage>,
) -> Vec<(u64, Vec<u8>)> {
    let check = |worker: &ApplyWorker<Recorder>| {
        if let Some(log) = log {
            let durable = log.durable_hard_state().commit;
            assert!(
                durable >= worker.applied(),
                "applied {} while the durable commit index is {durable}",
                worker.applied()
            );
        }
    };
    let mut acked = Vec::new();
    let mut open: Vec<(Vec<u8>, Receipt)> = Vec::new();
    for round in 0..rounds {
        // Through the queue, as the runner's proposers do; the small per-Ready budget makes
        // the loop take them in slices, so some arrive while a commit index is not yet synced.
        for k in 0..10 {
            let payload = format!("round {round} item {k}").into_bytes();
            let receipt = proposer.propose(round as i64, &payload).expect("propose");
            open.push((payload, receipt));
        }
        // One step of the loop and of apply per round: the crash below comes at a point
        // where some proposals are acknowledged and others are still in flight.
        node.on_ready().expect("on_ready");
        worker.run_pending();
        check(worker);
        node.on_ready().expect("on_ready");
        worker.run_pending();
        check(worker);
        open.retain_mut(|(payload, receipt)| match receipt.try_outcome() {
            Some(Ok(applied)) => {
                acked.push((applied.index, payload.clone()));
                false
            }
            Some(Err(e)) => panic!("proposal failed: {e}"),
            None => true,
        });
    }
    acked
}

/// Acknowledged entries missing from `log` after a crash: the invariant check.
fn acked_but_lost(acked: &[(u64, Vec<u8>)], log: &MemLogStorage) -> Vec<u64> {
    let durable = log.durable_entries();
    acked
        .iter()
        .filter(|(index, payload)| {
            let found = durable.iter().find(|e| e.index == *index);
            let same = found
                .and_then(|e| Proposal::decode(&e.data).ok())
                .map(|p| p.payload.to_vec());
            same.as_ref() != Some(payload)
        })
        .map(|(index, _)| *index)
        .collect()
}

/// (acknowledged (index, payload), acknowledged-but-lost indexes, re-applied after restart)
type CrashRun = (Vec<(u64, Vec<u8>)>, Vec<u64>, Vec<Seen>);

/// Runs proposals to a crash after `rounds` rounds, restarts, and returns
/// (acknowledged, acknowledged-but-lost, what the restarted node re-applied).
fn crash_run(skip_sync: bool, rounds: usize) -> CrashRun {
    let storage = MemLogStorage::new();
    let (sm, _) = Recorder::new(0);
    let config = NodeConfig {
        max_committed_size_per_ready: 100,
        ..cfg(1, &[1])
    };
    let parts = RaftNode::build(config, storage.clone(), NoPeers, sm).expect("node");
    let (mut node, mut worker, proposer) = (parts.node, parts.applier, parts.proposer);
    node.set_skip_sync_for_test(skip_sync);
    settle(&mut node, &mut worker);
    let checked = (!skip_sync).then_some(&storage);
    let acked = propose_and_ack(&mut node, &mut worker, &proposer, rounds, checked);
    drop((node, worker));

    storage.crash();
    let lost = acked_but_lost(&acked, &storage);

    // Restart on what survived; a fresh state machine replays the whole log.
    let (sm, log) = Recorder::new(0);
    let parts = RaftNode::build(cfg(1, &[1]), storage, NoPeers, sm).expect("restart");
    let (mut node, mut worker) = (parts.node, parts.applier);
    settle(&mut node, &mut worker);
    (acked, lost, seen(&log))
}

#[test]
fn every_acknowledged_entry_survives_a_crash_that_drops_unsynced_writes() {
    for rounds in [1, 2, 5] {
        let (acked, lost, replayed) = crash_run(false, rounds);
        assert!(
            !acked.is_empty(),
            "the run acknowledged something ({rounds} rounds)"
        );
        assert!(
            lost.is_empty(),
            "acknowledged entries {lost:?} lost at the crash"
        );
        for (index, payload) in &acked {
            let applied_again = replayed.iter().filter(|s| {
                matches!(s, Seen::Proposal { index: i, payload: p, .. } if i == index && p == payload)
            });
            assert_eq!(
                applied_again.count(),
                1,
                "entry {index} replayed exactly once"
            );
        }
    }
}

#[test]
fn the_crash_check_catches_a_loop_that_skips_the_fsync() {
    for rounds in [1, 2, 5] {
        let (acked, lost, _) = crash_run(true, rounds);
        assert!(!acked.is_empty());
        assert!(
            !lost.is_empty(),
            "a loop without fsync acknowledged entries that the crash took, and the check must see it"
        );
    }
}

#[test]
fn a_non_leader_refuses_proposals_and_names_the_leader() {
    // Node 1 of a two-voter group, alone: no leader at all.
    let (sm, _) = Recorder::new(0);
    let parts = RaftNode::build(cfg(1, &[1, 2]), MemLogStorage::new(), NoPeers, sm).expect("node");
    let (mut node, mut worker, proposer) = (parts.node, parts.applier, parts.proposer);
    settle(&mut node, &mut worker);
    assert_eq!(
        node.propose(0, b"x").err(),
        Some(ProposeError::NotLeader { leader: None })
    );
    assert!(matches!(
        proposer.propose(0, b"x"),
        Err(ProposeError::NotLeader { leader: None })
    ));

    // Two nodes wired together: node 2 follows node 1 and points proposers at it.
    let wire = Wire::default();
    let mut nodes = Vec::new();
    for id in [1, 2] {
        let (sm, log) = Recorder::new(0);
        let parts = RaftNode::build(cfg(id, &[1, 2]), MemLogStorage::new(), wire.clone(), sm)
            .expect("node");
        nodes.push((parts.node, parts.applier, parts.proposer, log));
    }
    nodes[0].0.campaign().expect("campaign");
    run_pair(&mut nodes, &wire);
    assert!(nodes[0].0.is_leader());
    assert_eq!(nodes[1].0.status().leader, Some(1));
    assert_eq!(
        nodes[1].0.propose(0, b"x").err(),
        Some(ProposeError::NotLeader { leader: Some(1) })
    );
    assert!(matches!(
        nodes[1].2.propose(0, b"x"),
        Err(ProposeError::NotLeader { leader: Some(1) })
    ));
    assert!(nodes[1].0.stats().snapshot().refused_not_leader >= 2);

    // The leader's proposal commits on both and both apply it with the leader's time.
    let mut receipt = nodes[0].0.propose(42, b"both").expect("propose");
    run_pair(&mut nodes, &wire);
    assert_eq!(outcome(&mut receipt).expect("applied").outcome, (42, 4));
    for (_, _, _, log) in &nodes {
        assert!(seen(log).iter().any(|s| matches!(s,
            Seen::Proposal { time_ms: 42, payload, .. } if payload == b"both")));
    }
}

/// An in-memory network for two nodes.
#[derive(Clone, Default)]
struct Wire(Arc<Mutex<Vec<Message>>>);

impl Transport for Wire {
    fn send(&mut self, msgs: Vec<Message>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(msgs);
    }
}

type Peer = (
    RaftNode<MemLogStorage, Wire, Recorder>,
    ApplyWorker<Recorder>,
    Proposer<(i64, usize)>,
    Arc<Mutex<Vec<Seen>>>,
);

fn run_pair(nodes: &mut [Peer], wire: &Wire) {
    for _ in 0..50 {
        for (node, worker, _, _) in nodes.iter_mut() {
            node.on_ready().expect("on_ready");
            worker.run_pending();
        }
        let msgs: Vec<Message> =
            std::mem::take(&mut *wire.0.lock().unwrap_or_else(|e| e.into_inner()));
        for m in msgs {
            let to = usize::try_from(m.to).expect("id") - 1;
            let _ = nodes[to].0.step(m);
        }
    }
}

#[test]
fn a_full_queue_and_an_oversized_payload_are_refused_clearly() {
    let config = NodeConfig {
        proposal_queue: 2,
        max_proposal_bytes: 8,
        ..cfg(1, &[1])
    };
    let (sm, _) = Recorder::new(0);
    let parts = RaftNode::build(config, MemLogStorage::new(), NoPeers, sm).expect("node");
    let (mut node, mut worker, proposer) = (parts.node, parts.applier, parts.proposer);
    settle(&mut node, &mut worker);

    let mut first = proposer.propose(1, b"a").expect("queued");
    let _second = proposer.propose(2, b"b").expect("queued");
    assert_eq!(
        proposer.propose(3, b"c").err(),
        Some(ProposeError::QueueFull { capacity: 2 })
    );
    assert_eq!(
        proposer.propose(4, b"123456789").err(),
        Some(ProposeError::TooLarge { size: 9, max: 8 })
    );
    assert_eq!(
        node.propose(4, b"123456789").err(),
        Some(ProposeError::TooLarge { size: 9, max: 8 })
    );
    let stats = node.stats().snapshot();
    assert_eq!(stats.refused_queue_full, 1);
    assert_eq!(stats.refused_too_large, 2);

    // Once the loop drains the queue there is room again, and the queued ones are applied.
    settle(&mut node, &mut worker);
    assert!(outcome(&mut first).is_ok());
    assert!(proposer.propose(5, b"d").is_ok());
}

#[test]
fn ticks_go_on_while_apply_is_slow_and_applied_catches_up() {
    let gate = Arc::new(Gate::default());
    let (mut sm, log) = Recorder::new(0);
    sm.gate = Some(Arc::clone(&gate));
    let parts = RaftNode::build(cfg(1, &[1]), MemLogStorage::new(), NoPeers, sm).expect("node");
    let (mut node, worker) = (parts.node, parts.applier);
    let apply_thread = std::thread::spawn(move || worker.run());

    for _ in 0..3 {
        node.on_ready().expect("on_ready");
    }
    assert!(node.is_leader());
    let mut receipts: Vec<Receipt> = (0..10)
        .map(|i| node.propose(i, b"slow").expect("propose"))
        .collect();
    // Apply is stuck on its first entry; the Ready thread still ticks, commits and returns.
    for _ in 0..30 {
        node.tick();
        node.on_ready().expect("on_ready");
    }
    let status = node.status();
    assert_eq!(status.commit, 11, "everything committed without apply");
    assert_eq!(status.applied, 0, "nothing applied yet");
    let stats = node.stats().snapshot();
    assert_eq!(stats.ticks, 30);
    assert_eq!(stats.apply_lag(), 11);
    assert!(
        node.is_leader(),
        "still leading: heartbeats and quorum checks ran"
    );
    assert!(receipts.iter_mut().all(|r| r.try_outcome().is_none()));

    gate.open();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.status().applied < 11 {
        assert!(Instant::now() < deadline, "apply never caught up");
        node.on_ready().expect("on_ready");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(node.stats().snapshot().apply_lag(), 0);
    for r in &mut receipts {
        assert_eq!(outcome(r).expect("applied").outcome.1, 4);
    }
    drop(node);
    let sm = apply_thread.join().expect("apply thread");
    assert_eq!(sm.applied, 11);
    assert_eq!(seen(&log).len(), 11);
}

#[test]
fn the_runner_ticks_during_a_slow_apply_and_answers_after_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(Gate::default());
    let (mut sm, log) = Recorder::new(0);
    sm.gate = Some(Arc::clone(&gate));
    let storage = SegmentLogStorage::open(dir.path()).expect("open");
    let parts = RaftNode::build(cfg(1, &[1]), storage, NoPeers, sm).expect("node");
    let handle = runner::spawn(parts, Duration::from_millis(2)).expect("spawn");
    let stats = Arc::clone(handle.stats());

    let deadline = Instant::now() + Duration::from_secs(20);
    while !stats.is_leader() {
        assert!(Instant::now() < deadline, "never became leader");
        std::thread::sleep(Duration::from_millis(1));
    }
    let receipts: Vec<Receipt> = (0..5)
        .map(|i| handle.proposer().propose(i, b"runner").expect("propose"))
        .collect();
    // Apply is held at the gate; the Ready thread keeps ticking and commits everything.
    let ticks_before = stats.snapshot().ticks;
    while stats.snapshot().ticks < ticks_before + 20 || stats.snapshot().commit_index < 6 {
        assert!(
            Instant::now() < deadline,
            "the Ready thread stalled behind apply"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(stats.snapshot().applied_index, 0);
    assert!(handle.is_running());
    assert!(
        stats.snapshot().log_disk_bytes > 0,
        "the log's disk use is measured"
    );

    gate.open();
    for r in receipts {
        let applied = r.blocking_outcome().expect("applied");
        assert_eq!(applied.outcome.1, 6);
    }
    handle.shutdown().expect("clean shutdown");
    assert_eq!(seen(&log).len(), 6);
}

#[test]
fn conf_change_entries_come_back_to_the_ready_thread() {
    let storage = MemLogStorage::new();
    let (sm, log) = Recorder::new(0);
    let parts = RaftNode::build(cfg(1, &[1]), storage.clone(), NoPeers, sm).expect("node");
    let (mut node, mut worker) = (parts.node, parts.applier);
    settle(&mut node, &mut worker);

    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddLearnerNode);
    single.node_id = 2;
    let mut change = ConfChangeV2::default();
    change.mut_changes().push(single);
    node.propose_conf_change(change).expect("propose");
    settle(&mut node, &mut worker);

    assert!(seen(&log).contains(&Seen::ConfChange(2)));
    // raft applied it (node 2 is a learner now) and the membership is durable.
    storage.crash();
    assert_eq!(storage.conf_state().learners, vec![2]);
    assert_eq!(storage.conf_state().voters, vec![1]);
}

#[test]
fn an_entry_apply_cannot_read_stops_the_node_and_fails_its_proposer() {
    let (sm, _) = Recorder::new(0);
    let parts = RaftNode::build(cfg(1, &[1]), MemLogStorage::new(), NoPeers, sm).expect("node");
    let (mut node, mut worker) = (parts.node, parts.applier);
    settle(&mut node, &mut worker);
    // An entry from a future format, as a newer binary would write it.
    let (reply, rx) = tokio::sync::oneshot::channel();
    node.propose_data(vec![9, 0, 1, 2], reply);
    let mut receipt = ProposalReceipt::new(rx);
    let mut failed = None;
    for _ in 0..10 {
        match node.on_ready() {
            Ok(_) => {
                worker.run_pending();
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    assert!(matches!(
        failed,
        Some(NodeError::ApplyFailed { index: 2, .. })
    ));
    assert!(matches!(
        outcome(&mut receipt),
        Err(ProposeError::ApplyFailed { .. })
    ));
}

#[test]
fn an_empty_election_timeout_range_is_refused_by_name() {
    let (sm, _) = Recorder::new(0);
    let config = NodeConfig {
        max_election_tick: 10,
        ..cfg(1, &[1])
    };
    let err = RaftNode::build(config, MemLogStorage::new(), NoPeers, sm).err();
    assert!(
        matches!(&err, Some(NodeError::Config(m)) if m.contains("max_election_tick")),
        "{:?}",
        err.map(|e| e.to_string())
    );
}

#[test]
fn state_past_the_logs_commit_is_refused_at_start() {
    let (sm, _) = Recorder::new(50);
    let err = RaftNode::build(cfg(1, &[1]), MemLogStorage::new(), NoPeers, sm).err();
    assert!(matches!(
        err,
        Some(NodeError::AppliedPastCommit {
            applied: 50,
            commit: 0
        })
    ));
}

#[test]
fn compaction_never_passes_what_was_applied() {
    let storage = MemLogStorage::new();
    let (sm, _) = Recorder::new(0);
    let parts = RaftNode::build(cfg(1, &[1]), storage.clone(), NoPeers, sm).expect("node");
    let (mut node, mut worker) = (parts.node, parts.applier);
    settle(&mut node, &mut worker);
    for i in 0..5 {
        node.propose(i, b"c").expect("propose");
    }
    settle(&mut node, &mut worker);
    assert_eq!(node.status().applied, 6);
    node.compact_log(100).expect("compact");
    assert_eq!(storage.first_index().ok(), Some(7));
    assert_eq!(node.stats().snapshot().entries_compacted, 6);
    // The node goes on appending after a full compaction.
    let mut r = node.propose(9, b"after").expect("propose");
    settle(&mut node, &mut worker);
    assert_eq!(outcome(&mut r).expect("applied").index, 7);
}
