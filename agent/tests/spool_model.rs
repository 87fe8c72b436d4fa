//! Random push / ack / reopen sequences against a model of what the spool must keep:
//! every pushed batch that was neither acknowledged nor dropped is pending exactly
//! once, in seq order, with its content; a reopen may bring back only batches that
//! were acknowledged (at-least-once), never lose or reorder one.

use argus_agent::spool::{FsyncPolicy, FullPolicy, Spool, SpoolConfig};
use argus_common::model::PointGroup;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    /// Ack the n-th kept batch (modulo how many there are).
    AckKept(usize),
    /// Ack `next_seq - n`: often already gone or never pushed.
    AckRecent(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1usize..40).prop_map(Op::Push),
        3 => (0usize..64).prop_map(Op::AckKept),
        1 => (0u64..8).prop_map(Op::AckRecent),
        1 => Just(Op::Reopen),
    ]
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 3000,
        segment_bytes: 600,
        // Reopening after a clean drop loses nothing under either policy; this one
        // keeps the test free of fsyncs.
        fsync: FsyncPolicy::Interval(std::time::Duration::from_secs(1)),
        when_full: FullPolicy::DropOldest,
    }
}

/// The batch pushed as the `tag`-th push: its content identifies it.
fn batch(tag: u64, points: usize) -> Vec<PointGroup> {
    vec![PointGroup {
        timestamp_ms: tag as i64,
        points: (0..points).map(|i| (i as u64 + 1, tag as f64)).collect(),
    }]
}

struct Model {
    /// Kept batches: seq → (tag, points), in seq order.
    kept: BTreeMap<u64, (u64, usize)>,
    /// Acknowledged batches a reopen may legitimately bring back.
    acked: BTreeMap<u64, (u64, usize)>,
    next_seq: u64,
    pushes: u64,
}

fn check(spool: &mut Spool, model: &Model) -> Result<(), TestCaseError> {
    let pending = spool.pending(0, usize::MAX).unwrap();
    let got: Vec<u64> = pending.iter().map(|(s, _)| *s).collect();
    let want: Vec<u64> = model.kept.keys().copied().collect();
    prop_assert_eq!(&got, &want);
    for (seq, groups) in &pending {
        let (tag, points) = model.kept[seq];
        prop_assert!(
            groups[0].bit_eq(&batch(tag, points)[0]),
            "content of {}",
            seq
        );
    }
    prop_assert_eq!(
        spool.lowest_seq(),
        want.first().copied().unwrap_or(model.next_seq)
    );
    prop_assert_eq!(spool.next_seq(), model.next_seq);
    let stats = spool.stats();
    prop_assert_eq!(stats.batches, want.len() as u64);
    prop_assert!(stats.bytes <= 3000);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let incarnation = spool.incarnation();
    let mut model = Model {
        kept: BTreeMap::new(),
        acked: BTreeMap::new(),
        next_seq: spool.next_seq(),
        pushes: 0,
    };
    for op in ops {
        match op {
            Op::Push(points) => {
                let tag = model.pushes;
                model.pushes += 1;
                let out = spool.push(batch(tag, points)).unwrap();
                prop_assert_eq!(out.seq, model.next_seq);
                // Drop-oldest removes the oldest kept batches, never newer ones.
                let mut dropped_samples = 0u64;
                for _ in 0..out.dropped_batches {
                    let (_, (_, p)) = model.kept.pop_first().expect("dropped a kept batch");
                    dropped_samples += p as u64;
                }
                prop_assert_eq!(out.dropped_samples, dropped_samples);
                model.kept.insert(out.seq, (tag, points));
                model.next_seq += 1;
            }
            Op::AckKept(n) => {
                if let Some(seq) = model.kept.keys().nth(n % model.kept.len().max(1)).copied() {
                    spool.ack(seq).unwrap();
                    let v = model.kept.remove(&seq).unwrap();
                    model.acked.insert(seq, v);
                }
            }
            Op::AckRecent(back) => {
                let seq = model.next_seq.saturating_sub(back);
                spool.ack(seq).unwrap();
                if let Some(v) = model.kept.remove(&seq) {
                    model.acked.insert(seq, v);
                }
            }
            Op::Reopen => {
                drop(spool);
                spool = Spool::open(config(tmp.path())).unwrap();
                prop_assert_eq!(spool.incarnation(), incarnation);
                prop_assert_eq!(spool.stats().torn_records_total, 0);
                let back: BTreeSet<u64> = spool
                    .pending(0, usize::MAX)
                    .unwrap()
                    .iter()
                    .map(|(s, _)| *s)
                    .collect();
                for seq in model.kept.keys() {
                    prop_assert!(back.contains(seq), "kept batch {} lost by reopen", seq);
                }
                let extra: Vec<u64> = back
                    .iter()
                    .copied()
                    .filter(|s| !model.kept.contains_key(s))
                    .collect();
                for seq in &extra {
                    let v = model.acked.remove(seq);
                    prop_assert!(v.is_some(), "batch {} came back but was never acked", seq);
                    if let Some(v) = v {
                        model.kept.insert(*seq, v);
                    }
                }
            }
        }
        check(&mut spool, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn every_kept_batch_is_pending_exactly_once_in_order(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
