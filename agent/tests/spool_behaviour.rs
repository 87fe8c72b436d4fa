//! The spool as the agent relies on it: batches survive restarts and crashes, acked
//! batches are not resent, a full spool drops or refuses as configured, series refs
//! and seqs are never reused, and a restored state directory does not clash with what
//! the coordinator already applied.

use argus_agent::spool::{FsyncPolicy, FullPolicy, Spool, SpoolConfig, SpoolError};
use argus_common::model::{Labels, MetricType, PointGroup, SeriesRef, stale_nan};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 20,
        segment_bytes: 64 << 10,
        fsync: FsyncPolicy::EveryBatch,
        when_full: FullPolicy::DropOldest,
    }
}

/// A batch with `points` points whose values encode `tag`, so batches are told apart.
fn batch(tag: u64, points: usize) -> Vec<PointGroup> {
    vec![PointGroup {
        timestamp_ms: 1_700_000_000_000 + tag as i64 * 10_000,
        points: (0..points)
            .map(|i| (i as SeriesRef + 1, tag as f64 + i as f64 / 1000.0))
            .collect(),
    }]
}

fn all_pending(spool: &mut Spool) -> Vec<(u64, Vec<PointGroup>)> {
    spool.pending(0, usize::MAX).unwrap()
}

fn seqs(pending: &[(u64, Vec<PointGroup>)]) -> Vec<u64> {
    pending.iter().map(|(s, _)| *s).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("segment-"))
        })
        .collect();
    v.sort();
    v
}

fn define(spool: &mut Spool, name: &str, label: &str) -> SeriesRef {
    spool
        .define(
            name,
            &Labels::from_pairs([("device", label)]),
            MetricType::Counter,
            "bytes",
            "Bytes received.",
        )
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn replace_dir(dir: &Path, with: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
    copy_dir(with, dir);
}

#[test]
fn a_restart_keeps_pending_batches_incarnation_and_next_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let first_seq = spool.next_seq();
    for tag in 0..5 {
        spool.push(batch(tag, 3)).unwrap();
    }
    spool.ack(first_seq).unwrap();
    spool.ack(first_seq + 1).unwrap();
    let incarnation = spool.incarnation();
    let next_seq = spool.next_seq();
    let before = all_pending(&mut spool);
    assert_eq!(
        seqs(&before),
        vec![first_seq + 2, first_seq + 3, first_seq + 4]
    );
    drop(spool);

    let mut spool = Spool::open(config(tmp.path())).unwrap();
    assert_eq!(spool.incarnation(), incarnation);
    assert_eq!(spool.next_seq(), next_seq);
    assert_eq!(spool.lowest_seq(), first_seq + 2);
    let after = all_pending(&mut spool);
    assert_eq!(seqs(&after), seqs(&before), "acked batches are not resent");
    for ((_, a), (_, b)) in before.iter().zip(&after) {
        assert!(a[0].bit_eq(&b[0]));
    }
    assert_eq!(spool.stats().torn_records_total, 0);
    assert_eq!(spool.push(batch(9, 1)).unwrap().seq, next_seq);
}

#[test]
fn stale_nan_survives_the_spool_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let groups = vec![PointGroup {
        timestamp_ms: 5,
        points: vec![(1, stale_nan()), (2, f64::NAN), (3, -0.0)],
    }];
    spool.push(groups.clone()).unwrap();
    drop(spool);
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    assert!(all_pending(&mut spool)[0].1[0].bit_eq(&groups[0]));
}

#[test]
fn pending_pages_from_a_seq_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 512;
    let mut spool = Spool::open(cfg).unwrap();
    let first = spool.next_seq();
    for tag in 0..20 {
        spool.push(batch(tag, 10)).unwrap();
    }
    assert!(
        segment_files(tmp.path()).len() > 3,
        "the test spans segments"
    );
    spool.ack(first + 6).unwrap();
    let page = spool.pending(first + 5, 3).unwrap();
    assert_eq!(seqs(&page), vec![first + 5, first + 7, first + 8]);
    assert!(page[0].1[0].bit_eq(&batch(5, 10)[0]));
    let rest = spool.pending(first + 18, 100).unwrap();
    assert_eq!(seqs(&rest), vec![first + 18, first + 19]);
}

#[test]
fn acks_out_of_order_free_whole_segments_and_a_restart_resends_little() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 512;
    let mut spool = Spool::open(cfg.clone()).unwrap();
    let first = spool.next_seq();
    for tag in 0..30 {
        spool.push(batch(tag, 10)).unwrap();
    }
    let segments_before = segment_files(tmp.path()).len();
    // Acks arrive in reverse within a window.
    for seq in (first..first + 20).rev() {
        spool.ack(seq).unwrap();
    }
    spool.ack(first + 25).unwrap();
    assert_eq!(spool.lowest_seq(), first + 20);
    assert!(segment_files(tmp.path()).len() < segments_before);
    let bytes = spool.stats().bytes;
    let on_disk: u64 = segment_files(tmp.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(bytes, on_disk);
    drop(spool);

    let mut spool = Spool::open(cfg).unwrap();
    let pending = seqs(&all_pending(&mut spool));
    // Everything below the contiguous acked prefix stays gone; the out-of-order ack
    // above it may be resent (at-least-once), nothing else is.
    let expected: Vec<u64> = (first + 20..first + 30).collect();
    let without_25: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|s| *s != first + 25)
        .collect();
    assert!(pending == expected || pending == without_25, "{pending:?}");
}

#[test]
fn a_torn_tail_is_cut_and_counted_and_everything_before_it_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let first = spool.next_seq();
    for tag in 0..3 {
        spool.push(batch(tag, 4)).unwrap();
    }
    drop(spool);
    let seg = segment_files(tmp.path()).pop().unwrap();
    let good_len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&[0x17, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 1, 0x55])
        .unwrap();

    let mut spool = Spool::open(config(tmp.path())).unwrap();
    assert_eq!(spool.stats().torn_records_total, 1);
    assert_eq!(
        seqs(&all_pending(&mut spool)),
        vec![first, first + 1, first + 2]
    );
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        good_len,
        "file cut at the tear"
    );
    assert_eq!(spool.push(batch(3, 4)).unwrap().seq, first + 3);
    drop(spool);

    let mut spool = Spool::open(config(tmp.path())).unwrap();
    assert_eq!(spool.stats().torn_records_total, 0, "the cut is durable");
    assert_eq!(
        seqs(&all_pending(&mut spool)),
        vec![first, first + 1, first + 2, first + 3]
    );
}

#[test]
fn a_record_cut_mid_write_is_dropped_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let first = spool.next_seq();
    for tag in 0..3 {
        spool.push(batch(tag, 4)).unwrap();
    }
    drop(spool);
    let seg = segment_files(tmp.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    let mut spool = Spool::open(config(tmp.path())).unwrap();
    assert_eq!(spool.stats().torn_records_total, 1);
    let pending = all_pending(&mut spool);
    assert_eq!(seqs(&pending), vec![first, first + 1]);
    assert!(pending[1].1[0].bit_eq(&batch(1, 4)[0]));
}

/// Overwrites the length field of the record holding `nth` (0-based) in a segment.
fn corrupt_length(seg: &Path, nth: usize, len: u32) {
    let bytes = std::fs::read(seg).unwrap();
    let mut offset = 0usize;
    for _ in 0..nth {
        let l = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + l;
    }
    let mut f = OpenOptions::new().write(true).open(seg).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset as u64)).unwrap();
    f.write_all(&len.to_le_bytes()).unwrap();
}

#[test]
fn a_corrupt_length_truncates_instead_of_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 400;
    let mut spool = Spool::open(cfg.clone()).unwrap();
    let first = spool.next_seq();
    for tag in 0..8 {
        spool.push(batch(tag, 10)).unwrap();
    }
    let files = segment_files(tmp.path());
    assert!(files.len() >= 3);
    let per_segment = seqs(&spool.pending(0, usize::MAX).unwrap()).len() / files.len();
    drop(spool);
    // Damage the second record of the first segment: it and the rest of that segment
    // are lost, later segments are untouched.
    corrupt_length(&files[0], 1, 0xFFFF_FFF0);

    let mut spool = Spool::open(cfg).unwrap();
    assert_eq!(spool.stats().torn_records_total, 1);
    let pending = seqs(&all_pending(&mut spool));
    assert_eq!(pending[0], first);
    assert!(!pending.contains(&(first + 1)));
    assert_eq!(*pending.last().unwrap(), first + 7);
    assert!(pending.len() >= 8 - per_segment);
}

#[test]
fn a_batch_damaged_after_open_is_dropped_and_counted_not_retried_forever() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let first = spool.next_seq();
    for tag in 0..3 {
        spool.push(batch(tag, 4)).unwrap();
    }
    let seg = segment_files(tmp.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[12] ^= 0xff; // inside the first record's payload
    std::fs::write(&seg, &bytes).unwrap();

    assert_eq!(seqs(&all_pending(&mut spool)), vec![first + 1, first + 2]);
    let stats = spool.stats();
    assert_eq!(stats.corrupt_batches_total, 1);
    assert_eq!(stats.dropped_batches_total, 1);
    assert_eq!(stats.dropped_samples_total, 4);
    assert_eq!(spool.lowest_seq(), first + 1);
}

#[test]
fn when_full_drop_oldest_drops_whole_segments_and_the_next_batch_carries_the_new_lowest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 1024;
    cfg.max_bytes = 4096;
    let mut spool = Spool::open(cfg).unwrap();
    let first = spool.next_seq();
    spool.push(batch(0, 20)).unwrap();
    spool.ack(first).unwrap();
    let mut outcome = None;
    for tag in 1..200 {
        let o = spool.push(batch(tag, 20)).unwrap();
        assert!(spool.stats().bytes <= 4096);
        if o.dropped_batches > 0 {
            outcome = Some(o);
            break;
        }
    }
    let o = outcome.expect("the spool filled up");
    let pending = seqs(&all_pending(&mut spool));
    let new_lowest = spool.lowest_seq();
    assert_eq!(pending[0], new_lowest);
    assert!(new_lowest > first + 1);
    // Everything between the acked batch and the new lowest was dropped and counted;
    // the acked one is not counted as dropped.
    assert_eq!(o.dropped_batches, new_lowest - (first + 1));
    assert_eq!(o.dropped_samples, o.dropped_batches * 20);
    let stats = spool.stats();
    assert_eq!(stats.dropped_batches_total, o.dropped_batches);
    assert_eq!(stats.dropped_samples_total, o.dropped_samples);
    assert_eq!(*pending.last().unwrap(), o.seq);
    assert_eq!(pending.len() as u64, stats.batches);
    // The next batch is sent with the new lowest seq, not the dropped ones.
    let next = spool.push(batch(999, 1)).unwrap();
    assert_eq!(spool.pending(next.seq, 1).unwrap()[0].0, next.seq);
    assert!(spool.lowest_seq() >= new_lowest);
}

#[test]
fn when_full_block_refuses_without_writing_and_accepts_again_after_acks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 1024;
    cfg.max_bytes = 4096;
    cfg.when_full = FullPolicy::Block;
    let mut spool = Spool::open(cfg).unwrap();
    let first = spool.next_seq();
    let mut refused = false;
    for tag in 0..200 {
        match spool.push(batch(tag, 20)) {
            Ok(o) => assert_eq!(o.dropped_batches, 0),
            Err(SpoolError::Full) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused);
    let before = spool.stats();
    let pending_before = seqs(&all_pending(&mut spool));
    assert!(matches!(spool.push(batch(1, 20)), Err(SpoolError::Full)));
    assert_eq!(spool.stats(), before, "a refused push changes nothing");
    assert_eq!(seqs(&all_pending(&mut spool)), pending_before);
    assert_eq!(pending_before[0], first, "nothing was dropped");

    for seq in pending_before.iter().take(pending_before.len() / 2) {
        spool.ack(*seq).unwrap();
    }
    let o = spool.push(batch(500, 20)).unwrap();
    assert_eq!(o.seq, before.next_seq);
    assert_eq!(spool.stats().dropped_batches_total, 0);
}

#[test]
fn a_too_large_batch_is_refused_under_either_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 1024;
    cfg.max_bytes = 2048;
    let mut spool = Spool::open(cfg).unwrap();
    assert!(matches!(
        spool.push(batch(1, 1000)),
        Err(SpoolError::TooLarge { .. })
    ));
    assert_eq!(spool.stats().batches, 0);
}

#[test]
fn the_dictionary_survives_a_restart_with_the_same_refs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let a = define(&mut spool, "node_network_receive_bytes_total", "eth0");
    let b = define(&mut spool, "node_network_receive_bytes_total", "eth1");
    assert_ne!(a, b);
    let before: Vec<_> = spool.dictionary().cloned().collect();
    drop(spool);

    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let after: Vec<_> = spool.dictionary().cloned().collect();
    assert_eq!(after, before);
    assert_eq!(after[0].unit, "bytes");
    assert_eq!(after[0].labels.get("device"), Some("eth0"));
    let c = define(&mut spool, "node_network_receive_bytes_total", "eth2");
    assert!(c > a.max(b));
}

#[test]
fn a_retired_def_stays_until_its_stale_batch_leaves_and_refs_are_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let keep = define(&mut spool, "node_load1", "x");
    let gone = define(&mut spool, "container_cpu_usage_seconds_total", "c1");
    let seq = spool
        .push(vec![PointGroup {
            timestamp_ms: 1,
            points: vec![(keep, 1.0), (gone, stale_nan())],
        }])
        .unwrap()
        .seq;
    spool.retire(gone, seq).unwrap();
    // The batch still needs the def: the uplink can still send it, the collection
    // loop no longer maps to it.
    assert!(spool.defs_from(0).any(|d| d.series_ref == gone));
    assert!(!spool.dictionary().any(|d| d.series_ref == gone));
    drop(spool);
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    assert!(
        spool.defs_from(0).any(|d| d.series_ref == gone),
        "kept across restart"
    );
    assert_eq!(spool.stats().retiring_series, 1);

    spool.ack(seq).unwrap();
    assert!(!spool.defs_from(0).any(|d| d.series_ref == gone));
    assert!(spool.defs_from(0).any(|d| d.series_ref == keep));
    drop(spool);
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    assert!(
        !spool.defs_from(0).any(|d| d.series_ref == gone),
        "forgotten across restart"
    );
    assert!(define(&mut spool, "x", "y") > gone);
}

#[test]
fn retire_compaction_and_restart_never_reuse_a_ref() {
    let tmp = tempfile::tempdir().unwrap();
    let dict = tmp.path().join("dictionary.log");
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    let live = define(&mut spool, "node_load1", "");
    let mut refs = Vec::new();
    for i in 0..3000 {
        refs.push(define(&mut spool, "probe_success", &format!("target{i}")));
    }
    let highest = *refs.last().unwrap();
    let seq = spool
        .push(vec![PointGroup {
            timestamp_ms: 1,
            points: refs.iter().map(|r| (*r, stale_nan())).collect(),
        }])
        .unwrap()
        .seq;
    for r in &refs {
        spool.retire(*r, seq).unwrap();
    }
    let grown = std::fs::metadata(&dict).unwrap().len();
    spool.ack(seq).unwrap();
    let compacted = std::fs::metadata(&dict).unwrap().len();
    assert!(
        compacted * 20 < grown,
        "compaction shrank the dictionary: {grown} -> {compacted}"
    );
    assert_eq!(
        spool.dictionary().map(|d| d.series_ref).collect::<Vec<_>>(),
        vec![live]
    );
    drop(spool);

    let mut spool = Spool::open(config(tmp.path())).unwrap();
    assert_eq!(
        spool.dictionary().map(|d| d.series_ref).collect::<Vec<_>>(),
        vec![live]
    );
    assert_eq!(define(&mut spool, "probe_success", "again"), highest + 1);
}

#[test]
fn a_new_spool_directory_gets_its_own_random_incarnation() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ia = Spool::open(config(a.path())).unwrap().incarnation();
    let ib = Spool::open(config(b.path())).unwrap().incarnation();
    assert_ne!(ia, ib);
    assert_eq!(Spool::open(config(a.path())).unwrap().incarnation(), ia);
}

/// The timeline the coordinator saw: a copy of the state directory taken early, then
/// more batches and defs the coordinator applied.
struct Restored {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    incarnation: u64,
    applied: u64,
    highest_ref: SeriesRef,
}

fn restored_older_copy() -> Restored {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let copy = tmp.path().join("copy");
    let mut spool = Spool::open(config(&dir)).unwrap();
    let r = define(&mut spool, "node_load1", "a");
    for tag in 0..3 {
        spool
            .push(vec![PointGroup {
                timestamp_ms: tag,
                points: vec![(r, 1.0)],
            }])
            .unwrap();
    }
    spool.ack(spool.lowest_seq()).unwrap();
    copy_dir(&dir, &copy);
    // The original goes on; the coordinator applies all of it.
    let mut highest_ref = r;
    for tag in 3..10 {
        highest_ref = define(&mut spool, "node_load1", &format!("later{tag}"));
        spool
            .push(vec![PointGroup {
                timestamp_ms: tag,
                points: vec![(highest_ref, 1.0)],
            }])
            .unwrap();
    }
    let applied = spool.next_seq() - 1;
    for seq in spool.lowest_seq()..=applied {
        spool.ack(seq).unwrap();
    }
    let incarnation = spool.incarnation();
    drop(spool);
    replace_dir(&dir, &copy);
    Restored {
        _tmp: tmp,
        dir,
        incarnation,
        applied,
        highest_ref,
    }
}

#[test]
fn a_restored_older_state_dir_continues_past_what_was_applied() {
    let r = restored_older_copy();
    let mut spool = Spool::open(config(&r.dir)).unwrap();
    assert_eq!(spool.incarnation(), r.incarnation);
    assert!(spool.next_seq() <= r.applied, "the copy is rewound");
    assert!(!all_pending(&mut spool).is_empty());

    let outcome = spool
        .resume_after(Some(r.applied), Some(r.highest_ref))
        .unwrap();
    assert_eq!(outcome.new_incarnation, None);
    // The copy's kept batches go out again: HelloOk's highest applied seq does not say
    // every seq below it was applied, and the coordinator answers the ones it applied
    // as duplicates. New seqs start past the applied one.
    let kept = seqs(&all_pending(&mut spool));
    assert!(
        !kept.is_empty() && kept.iter().all(|&s| s <= r.applied),
        "{kept:?}"
    );
    let new_ref = define(&mut spool, "node_load1", "new");
    assert!(new_ref > r.highest_ref);
    let pushed = spool.push(batch(1, 1)).unwrap();
    assert_eq!(pushed.seq, r.applied + 1);
    drop(spool);

    // And it stays so after another restart, before any HelloOk.
    let mut spool = Spool::open(config(&r.dir)).unwrap();
    assert_eq!(spool.next_seq(), r.applied + 2);
    assert!(define(&mut spool, "node_load1", "newer") > new_ref);
}

#[test]
fn a_restored_dir_that_pushed_before_hello_ok_takes_a_new_incarnation() {
    let r = restored_older_copy();
    let mut spool = Spool::open(config(&r.dir)).unwrap();
    let old_kept = seqs(&all_pending(&mut spool));
    // Collection runs before the uplink connects: these seqs and this ref were already
    // used by the lost timeline.
    let clashing_ref = define(&mut spool, "node_load1", "b");
    assert!(clashing_ref <= r.highest_ref);
    let pushed = spool.push(batch(42, 2)).unwrap().seq;
    assert!(pushed <= r.applied);

    let outcome = spool
        .resume_after(Some(r.applied), Some(r.highest_ref))
        .unwrap();
    let new = outcome.new_incarnation.expect("a new incarnation");
    assert_ne!(new, r.incarnation);
    assert_eq!(spool.incarnation(), new);
    assert_eq!(outcome.applied_removed, old_kept.len() as u64);
    // The batch collected since the open is still to be sent, with its defs.
    let pending = all_pending(&mut spool);
    assert_eq!(seqs(&pending), vec![pushed]);
    assert!(pending[0].1[0].bit_eq(&batch(42, 2)[0]));
    assert!(spool.defs_from(0).any(|d| d.series_ref == clashing_ref));
    // The new incarnation starts fresh on the coordinator.
    let again = spool.resume_after(None, None).unwrap();
    assert_eq!(again.new_incarnation, None);
    drop(spool);
    let mut spool = Spool::open(config(&r.dir)).unwrap();
    assert_eq!(spool.incarnation(), new);
    assert_eq!(seqs(&all_pending(&mut spool)), vec![pushed]);
}

#[test]
fn resume_after_a_normal_reconnect_keeps_every_batch_and_moves_seqs_past_the_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    // The first connection: the coordinator knows nothing of this incarnation yet.
    assert_eq!(
        spool.resume_after(None, None).unwrap().new_incarnation,
        None
    );
    let first = spool.next_seq();
    for tag in 0..5 {
        spool.push(batch(tag, 1)).unwrap();
    }
    // Sent; the first was answered `Retry`, the next two applied, connection lost. The
    // next HelloOk reports the highest applied, which says nothing of the first: every
    // kept batch goes out again (the coordinator answers the applied ones as
    // duplicates), and new seqs start past the highest applied.
    let o = spool.resume_after(Some(first + 2), Some(0)).unwrap();
    assert_eq!(o.new_incarnation, None);
    assert_eq!(o.applied_removed, 0);
    assert_eq!(
        seqs(&all_pending(&mut spool)),
        (first..first + 5).collect::<Vec<_>>()
    );
    assert_eq!(spool.next_seq(), first + 5);
    // A spool rewound behind the applied seq (nothing pushed since the open) continues
    // past it instead of reusing applied seqs.
    let o = spool.resume_after(Some(first + 9), Some(0)).unwrap();
    assert_eq!(o.new_incarnation, None);
    assert_eq!(spool.next_seq(), first + 10);
}

#[test]
fn the_interval_policy_leaves_syncing_to_the_caller() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.fsync = FsyncPolicy::Interval(std::time::Duration::from_millis(500));
    let mut spool = Spool::open(cfg).unwrap();
    assert_eq!(
        spool.sync_interval(),
        Some(std::time::Duration::from_millis(500))
    );
    spool.push(batch(1, 1)).unwrap();
    assert!(spool.needs_sync());
    spool.sync().unwrap();
    assert!(!spool.needs_sync());
    // Not synced, but handed to the kernel: a killed process loses nothing.
    spool.push(batch(2, 1)).unwrap();
    drop(spool);
    let mut cfg = config(tmp.path());
    cfg.fsync = FsyncPolicy::EveryBatch;
    let mut spool = Spool::open(cfg).unwrap();
    assert_eq!(all_pending(&mut spool).len(), 2);
    assert_eq!(spool.sync_interval(), None);
}

#[test]
fn an_invalid_config_is_refused_naming_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = cfg.max_bytes * 2;
    let err = Spool::open(cfg).err().expect("refused");
    assert!(matches!(err, SpoolError::Config { .. }));
    assert!(err.to_string().contains(&tmp.path().display().to_string()));
}

#[test]
fn next_seq_survives_a_restart_after_the_newest_segment_was_acked_away() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 512;
    let mut spool = Spool::open(cfg.clone()).unwrap();
    let first = spool.next_seq();
    for tag in 0..12 {
        spool.push(batch(tag, 10)).unwrap();
    }
    // The oldest batch is still in flight; everything newer is acknowledged, so the
    // newest segments are deleted and no batch on disk shows how far seqs went.
    for seq in first + 1..first + 12 {
        spool.ack(seq).unwrap();
    }
    assert_eq!(segment_files(tmp.path()).len(), 1);
    let next = spool.next_seq();
    drop(spool);
    let mut spool = Spool::open(cfg).unwrap();
    assert_eq!(spool.next_seq(), next);
    assert_eq!(seqs(&all_pending(&mut spool))[0], first);
    assert_eq!(spool.push(batch(99, 1)).unwrap().seq, next);
}

#[test]
fn a_spool_directory_is_used_by_one_spool_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(tmp.path())).unwrap();
    assert!(matches!(
        Spool::open(config(tmp.path())),
        Err(SpoolError::Locked { .. })
    ));
    drop(spool);
    assert!(Spool::open(config(tmp.path())).is_ok());
}

#[test]
fn a_spool_written_by_a_newer_format_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(tmp.path())).unwrap();
    spool.push(batch(1, 1)).unwrap();
    drop(spool);
    let seg = segment_files(tmp.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let body_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    bytes[8] += 1; // the format version
    let crc = crc32fast::hash(&bytes[8..8 + body_len]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();

    let err = Spool::open(config(tmp.path())).err().expect("refused");
    assert!(
        matches!(err, SpoolError::UnsupportedVersion { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&seg.display().to_string()));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was cut");
}
