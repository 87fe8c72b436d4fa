//! kill -9 in the middle of pushing: every batch whose push returned is still there
//! after reopening, in order, and the spool goes on from where it was.
//!
//! The writer is this same test binary run again as a child process (selected by an
//! environment variable), so the kill hits a real process mid-write.

use argus_agent::spool::{FsyncPolicy, FullPolicy, Spool, SpoolConfig};
use argus_common::model::PointGroup;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "ARGUS_SPOOL_KILL_CHILD_DIR";

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 64 << 20,
        segment_bytes: 64 << 10,
        // No fsync: a killed process must lose nothing anyway, since every push is
        // handed to the kernel before it returns.
        fsync: FsyncPolicy::Interval(std::time::Duration::from_secs(3600)),
        when_full: FullPolicy::DropOldest,
    }
}

fn batch(seq_hint: u64) -> Vec<PointGroup> {
    vec![PointGroup {
        timestamp_ms: seq_hint as i64,
        points: (0..50).map(|i| (i + 1, seq_hint as f64)).collect(),
    }]
}

/// The child: pushes (and acks every other batch) until killed, reporting each push.
#[test]
fn spool_kill_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // Only does something when run as the child of the test below.
    };
    let mut spool = Spool::open(config(Path::new(&dir))).unwrap();
    for _ in 0..1_000_000 {
        let seq = spool.next_seq();
        let out = spool.push(batch(seq)).unwrap();
        if out.seq.is_multiple_of(2) {
            spool.ack(out.seq).unwrap();
        }
        println!("pushed {}", out.seq);
    }
}

#[test]
fn batches_whose_push_returned_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("spool");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["spool_kill_child_writer", "--exact", "--nocapture"])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last_pushed = 0u64;
    // Kept open until after the kill, so the child dies by the signal, not by a
    // broken pipe.
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(seq) = line.strip_prefix("pushed ") {
            last_pushed = seq.parse().unwrap();
            if last_pushed >= 3000 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(lines);
    assert!(
        last_pushed >= 3000,
        "the child wrote batches before it was killed"
    );

    let mut spool = Spool::open(config(&dir)).unwrap();
    assert!(spool.next_seq() > last_pushed);
    let pending = spool.pending(0, usize::MAX).unwrap();
    let kept: Vec<u64> = pending.iter().map(|(s, _)| *s).collect();
    // Every odd seq up to the last reported push was never acked: all must be there.
    let odd_reported: Vec<u64> = (1..=last_pushed).filter(|s| s % 2 == 1).collect();
    let kept_reported: Vec<u64> = kept.iter().copied().filter(|s| *s <= last_pushed).collect();
    for seq in &odd_reported {
        assert!(kept_reported.contains(seq), "batch {seq} lost by kill -9");
    }
    assert!(kept.windows(2).all(|w| w[0] < w[1]));
    for (seq, groups) in &pending {
        assert_eq!(
            groups[0].timestamp_ms, *seq as i64,
            "content of batch {seq}"
        );
    }
    let next = spool.next_seq();
    assert_eq!(spool.push(batch(next)).unwrap().seq, next);
}
