use std::collections::BTreeMap;

use proptest::prelude::*;
use raft::prelude::EntryType;

use super::*;
use crate::cluster::mem_storage::MemLogStorage;
use crate::cluster::storage::tests::log_semantics;

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.set_entry_type(EntryType::EntryNormal);
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

/// Deterministic payload of `len` bytes for entry `index`.
fn payload(index: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (index as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

/// An entry as (index, term, data).
type Flat = (u64, u64, Vec<u8>);

fn all(s: &impl Storage) -> Vec<Flat> {
    let first = s.first_index().expect("first");
    let last = s.last_index().expect("last");
    s.entries(first, last + 1, None, GetEntriesContext::empty(false))
        .expect("entries")
        .into_iter()
        .map(|e| (e.index, e.term, e.data.to_vec()))
        .collect()
}

fn cfg(segment_bytes: u64, cache_bytes: usize) -> SegmentLogConfig {
    SegmentLogConfig {
        segment_bytes,
        cache_bytes,
    }
}

fn open(dir: &Path, c: &SegmentLogConfig) -> SegmentLogStorage {
    SegmentLogStorage::open_with(dir, c.clone()).expect("open")
}

/// Segment files in `dir`, oldest first, with their sizes.
fn seg_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .expect("list")
        .map(|item| {
            let item = item.expect("item");
            (item.path(), item.metadata().expect("metadata").len())
        })
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

/// Appends entries `from..from + count` (payload `size` bytes, term `term`) as the Ready loop
/// does: a batch of `per_ready`, its commit index, one sync.
fn append_readys(
    s: &mut SegmentLogStorage,
    from: u64,
    count: u64,
    term: u64,
    size: usize,
    per_ready: u64,
) {
    let mut next = from;
    while next < from + count {
        let end = (next + per_ready).min(from + count);
        let batch: Vec<Entry> = (next..end)
            .map(|i| entry(i, term, &payload(i, size)))
            .collect();
        s.append(&batch).expect("append");
        s.set_commit(end - 1).expect("commit");
        s.sync().expect("sync");
        next = end;
    }
}

#[test]
fn semantics_with_the_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = SegmentLogStorage::open(dir.path()).expect("open");
    log_semantics(&mut s);
}

#[test]
fn semantics_with_tiny_segments_and_no_cache() {
    // Every entry in a file of its own, every read from disk.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(dir.path(), &cfg(1, 0));
    log_semantics(&mut s);
    // Files are named by their first record: this many were started.
    assert!(s.active_seq > 10, "{}", s.active_seq);
    drop(s);
    let s = open(dir.path(), &cfg(1, 0));
    assert_eq!(all(&s), vec![(11, 4, b"after".to_vec())]);
    assert_eq!(s.term(10).ok(), Some(4));
    assert_eq!(s.conf_state().voters, vec![1, 2]);
}

#[test]
fn reopen_replays_overwrites_compaction_and_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(300, 0);
    let expected;
    {
        let mut s = open(dir.path(), &c);
        append_readys(&mut s, 1, 30, 1, 20, 4);
        // A new leader cuts the follower's log at 10 and replaces it (spanning files).
        let batch: Vec<Entry> = (10..=15)
            .map(|i| entry(i, 2, &payload(i + 100, 20)))
            .collect();
        s.append(&batch).expect("overwrite");
        assert_eq!(s.last_index().ok(), Some(15));
        assert_eq!(s.term(9).ok(), Some(1));
        assert_eq!(s.term(10).ok(), Some(2));
        assert!(s.term(16).is_err());
        let hs = HardState {
            term: 2,
            vote: 2,
            commit: 12,
            ..HardState::default()
        };
        s.set_hard_state(&hs).expect("hs");
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..ConfState::default()
        };
        s.set_conf_state(&cs).expect("cs");
        s.compact(5).expect("compact");
        s.sync().expect("sync");
        expected = all(&s);
        assert_eq!(expected.len(), 11);
        assert_eq!(expected[5], (10, 2, payload(110, 20)));
    }
    let mut s = open(dir.path(), &c);
    assert_eq!(s.first_index().ok(), Some(5));
    assert_eq!(s.term(4).ok(), Some(1));
    assert_eq!(all(&s), expected);
    assert_eq!(s.hard_state().commit, 12);
    assert_eq!(s.hard_state().vote, 2);
    assert_eq!(s.conf_state().learners, vec![4]);
    // The reopened log goes on where it stopped, and a second reopen agrees.
    s.append(&[entry(16, 2, b"p")]).expect("append");
    s.sync().expect("sync");
    drop(s);
    let s = open(dir.path(), &c);
    assert_eq!(s.last_index().ok(), Some(16));
    assert_eq!(all(&s).last(), Some(&(16, 2, b"p".to_vec())));
}

#[test]
fn compaction_gives_the_disk_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = 4096u64;
    let c = cfg(seg, 16 * 1024);
    let mut s = open(dir.path(), &c);
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: 0,
        ..HardState::default()
    };
    s.set_hard_state(&hs).expect("hs");
    let cs = ConfState {
        voters: vec![1],
        ..ConfState::default()
    };
    s.set_conf_state(&cs).expect("cs");
    // 400 entries of 256 bytes: about 27 files of 4 KiB.
    append_readys(&mut s, 1, 400, 1, 256, 10);
    let before = s.disk_bytes();
    let files_before = seg_files(dir.path());
    assert!(files_before.len() > 20, "{} files", files_before.len());
    assert_eq!(before, files_before.iter().map(|(_, n)| n).sum::<u64>());

    s.compact(398).expect("compact");
    let after = s.disk_bytes();
    let files_after = seg_files(dir.path());
    // What remains: the file holding entries 398..=400 and maybe the one before it.
    assert!(files_after.len() <= 2, "{} files", files_after.len());
    assert!(after <= 2 * seg + 1024, "{after} bytes left of {before}");
    assert_eq!(after, files_after.iter().map(|(_, n)| n).sum::<u64>());
    assert_eq!(
        all(&s).iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![398, 399, 400]
    );
    assert_eq!(all(&s)[0].2, payload(398, 256));
    assert_eq!(s.term(397).ok(), Some(1));

    // Compacting everything keeps only the newest file.
    s.compact(401).expect("compact all");
    assert_eq!(s.first_index().ok(), Some(401));
    assert_eq!(s.last_index().ok(), Some(400));
    assert_eq!(seg_files(dir.path()).len(), 1);
    s.sync().expect("sync");
    drop(s);

    let mut s = open(dir.path(), &c);
    assert_eq!(s.first_index().ok(), Some(401));
    assert_eq!(s.term(400).ok(), Some(1));
    assert_eq!(s.hard_state().commit, 400);
    assert_eq!(s.hard_state().vote, 1);
    assert_eq!(s.conf_state().voters, vec![1]);
    append_readys(&mut s, 401, 5, 1, 256, 10);
    assert_eq!(all(&s).len(), 5);
}

#[test]
fn compaction_survives_reopen_with_entries_above_the_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(1024, 0);
    let mut s = open(dir.path(), &c);
    append_readys(&mut s, 1, 100, 3, 64, 7);
    s.compact(60).expect("compact");
    let expected = all(&s);
    drop(s);
    let s = open(dir.path(), &c);
    assert_eq!(s.first_index().ok(), Some(60));
    assert_eq!(s.term(59).ok(), Some(3));
    assert_eq!(all(&s), expected);
    assert_eq!(s.hard_state().commit, 100);
}

#[test]
fn apply_snapshot_resets_the_log_and_deletes_old_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(2048, 4096);
    let mut s = open(dir.path(), &c);
    append_readys(&mut s, 1, 200, 2, 100, 10);
    assert!(seg_files(dir.path()).len() > 5);
    let mut meta = SnapshotMetadata {
        index: 1000,
        term: 5,
        ..SnapshotMetadata::default()
    };
    meta.mut_conf_state().voters = vec![1, 2, 3];
    s.apply_snapshot(&meta).expect("snapshot");
    assert_eq!(seg_files(dir.path()).len(), 1);
    assert!(s.disk_bytes() < 200, "{}", s.disk_bytes());
    assert_eq!(s.first_index().ok(), Some(1001));
    assert_eq!(s.last_index().ok(), Some(1000));
    assert!(matches!(
        s.entries(200, 201, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    drop(s);

    let mut s = open(dir.path(), &c);
    assert_eq!(s.first_index().ok(), Some(1001));
    assert_eq!(s.term(1000).ok(), Some(5));
    assert_eq!(s.hard_state().commit, 1000);
    assert_eq!(s.hard_state().term, 5);
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    s.append(&[entry(1001, 5, b"next")]).expect("append");
    s.sync().expect("sync");
    drop(s);
    let s = open(dir.path(), &c);
    assert_eq!(all(&s), vec![(1001, 5, b"next".to_vec())]);
}

#[test]
fn the_cache_is_bounded_and_reads_fall_back_to_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(dir.path(), &cfg(4096, 2000));
    append_readys(&mut s, 1, 100, 1, 100, 10);
    assert!(s.cache_bytes <= 2000);
    assert!(!s.cache.is_empty() && s.cache.len() < 100);
    // The cache holds exactly the newest entries.
    assert_eq!(s.cache.back().map(|e| e.index), Some(100));
    let expected: Vec<_> = (1..=100).map(|i| (i, 1, payload(i, 100))).collect();
    assert_eq!(all(&s), expected);
    // An overwrite below the cached range empties it and refills it with the new tail.
    s.append(&[entry(5, 2, b"x")]).expect("overwrite");
    assert_eq!(s.cache.len(), 1);
    assert_eq!(all(&s).last(), Some(&(5, 2, b"x".to_vec())));
    s.compact(6).expect("compact");
    assert!(s.cache.is_empty());
    assert_eq!(s.cache_bytes, 0);
}

#[test]
fn a_damaged_record_is_a_read_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(dir.path(), &cfg(1 << 20, 0));
    append_readys(&mut s, 1, 5, 1, 50, 5);
    let loc = s.locs[2];
    let path = s.segments[&s.active_seq].path.clone();
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[loc.offset as usize + 30] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");
    assert!(
        s.entries(1, 6, None, GetEntriesContext::empty(false))
            .is_err()
    );
    assert!(
        s.entries(1, 3, None, GetEntriesContext::empty(false))
            .is_ok()
    );
    // term() never touches the file.
    assert_eq!(s.term(3).ok(), Some(1));
}

/// Files of a log directory in memory, to lay down again, changed, for each attempt.
struct Image {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Image {
    fn take(dir: &Path) -> Self {
        let files = seg_files(dir)
            .into_iter()
            .map(|(p, _)| {
                let name = PathBuf::from(p.file_name().expect("name"));
                let bytes = std::fs::read(&p).expect("read");
                (name, bytes)
            })
            .collect();
        Self { files }
    }

    /// Writes the files into `dir` (emptied first), the last one through `last`.
    fn lay_down(&self, dir: &Path, last: impl FnOnce(&mut Vec<u8>)) {
        for (p, _) in seg_files(dir) {
            std::fs::remove_file(p).expect("remove");
        }
        let mut last = Some(last);
        for (i, (name, bytes)) in self.files.iter().enumerate() {
            let mut bytes = bytes.clone();
            if i + 1 == self.files.len()
                && let Some(f) = last.take()
            {
                f(&mut bytes);
            }
            std::fs::write(dir.join(name), &bytes).expect("write");
        }
    }

    fn last_len(&self) -> usize {
        self.files.last().map_or(0, |(_, b)| b.len())
    }
}

/// Builds a log whose first `synced` entries (and a commit index) were synced and whose
/// following entries, up to `total`, were written but not synced. `fresh_file` starts a new
/// file right after the sync, so that the unsynced writes are a whole file. Returns the image
/// of the directory, the synced length of the last file (0 for a fresh file) and every entry
/// written.
fn half_synced_log(fresh_file: bool) -> (Image, usize, Vec<Flat>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(dir.path(), &cfg(1 << 20, 0));
    let synced = 4u64;
    let batch: Vec<Entry> = (1..=synced).map(|i| entry(i, 1, &payload(i, 12))).collect();
    s.append(&batch).expect("append");
    s.set_commit(synced).expect("commit");
    s.sync().expect("sync");
    let synced_len = if fresh_file {
        // Close the active file now, so the unsynced writes go to a new one.
        let state = s.current_state();
        s.start_segment(false, &state).expect("rotate");
        s.sync().expect("sync");
        0
    } else {
        seg_files(dir.path()).last().expect("file").1 as usize
    };
    // Unsynced: three Readys of two entries, each with its commit index.
    for r in 0..3u64 {
        let from = synced + 1 + 2 * r;
        let batch = [
            entry(from, 2, &payload(from, 12)),
            entry(from + 1, 2, &payload(from + 1, 12)),
        ];
        s.append(&batch).expect("append");
        s.set_commit(from + 1).expect("commit");
    }
    let written = all(&s);
    let image = Image::take(dir.path());
    drop(s);
    (image, synced_len, written)
}

/// Opens the laid-down log and checks that it holds a prefix of `written` at least as long as
/// the synced part, and a commit index within it.
fn assert_synced_prefix(dir: &Path, written: &[Flat], what: &str) -> usize {
    let s = SegmentLogStorage::open_with(dir, cfg(1 << 20, 0))
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let got = all(&s);
    assert!(got.len() >= 4, "{what}: lost synced entries: {got:?}");
    assert_eq!(got[..], written[..got.len()], "{what}: not a prefix");
    assert!(s.hard_state().commit >= 4, "{what}: lost the synced commit");
    assert!(s.hard_state().commit <= s.last_index().expect("last"));
    got.len()
}

#[test]
fn a_torn_tail_is_cut_at_every_point() {
    for fresh_file in [false, true] {
        let (image, synced_len, written) = half_synced_log(fresh_file);
        let dir = tempfile::tempdir().expect("tempdir");
        let full = image.last_len();
        assert!(
            full - synced_len > 100,
            "the unsynced tail is {} bytes",
            full - synced_len
        );
        let mut longest = 0;
        for cut in synced_len..=full {
            image.lay_down(dir.path(), |b| b.truncate(cut));
            let what = format!("fresh file {fresh_file}, cut at {cut} of {full}");
            let kept = assert_synced_prefix(dir.path(), &written, &what);
            assert!(kept >= longest, "{what}: a longer file kept fewer entries");
            longest = kept;
            if cut % 41 == 0 || cut == full {
                // The repaired log takes new writes and keeps them.
                let mut s = open(dir.path(), &cfg(1 << 20, 0));
                let next = s.last_index().expect("last") + 1;
                s.append(&[entry(next, 3, b"new")]).expect("append");
                s.sync().expect("sync");
                drop(s);
                let s = open(dir.path(), &cfg(1 << 20, 0));
                assert_eq!(all(&s).last(), Some(&(next, 3, b"new".to_vec())), "{what}");
            }
        }
        assert_eq!(longest, written.len(), "the whole file keeps everything");
    }
}

#[test]
fn a_damaged_byte_in_the_unsynced_tail_loses_only_the_tail() {
    for fresh_file in [false, true] {
        let (image, synced_len, written) = half_synced_log(fresh_file);
        let dir = tempfile::tempdir().expect("tempdir");
        for at in synced_len..image.last_len() {
            // The version byte is the one byte that is refused rather than repaired: a newer
            // format must never be mistaken for a torn file.
            if fresh_file && at == 8 {
                continue;
            }
            image.lay_down(dir.path(), |b| b[at] ^= 0x5a);
            let what = format!("fresh file {fresh_file}, byte {at} damaged");
            assert_synced_prefix(dir.path(), &written, &what);
        }
    }
}

/// A log of several files with entries 1..=60, all synced; returns its files.
fn many_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut s = open(dir, &cfg(600, 0));
    append_readys(&mut s, 1, 60, 1, 40, 5);
    drop(s);
    let files = seg_files(dir);
    assert!(files.len() >= 4, "{} files", files.len());
    files
}

/// Offsets at which the records of a segment file end.
fn record_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = HEADER_LEN;
    while at + RECORD_HEAD <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        at += RECORD_HEAD + len as usize;
        ends.push(at);
    }
    ends
}

fn open_error(dir: &Path) -> LogError {
    match SegmentLogStorage::open_with(dir, cfg(600, 0)) {
        Ok(_) => panic!("opened a damaged log"),
        Err(e) => e,
    }
}

#[test]
fn damage_in_an_older_file_is_corruption_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = many_files(dir.path());
    let (victim, len) = files[1].clone();
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let original = std::fs::read(&victim).expect("read");

    // A flipped byte in the middle.
    let mut bytes = original.clone();
    bytes[len as usize / 2] ^= 1;
    std::fs::write(&victim, &bytes).expect("write");
    let e = open_error(dir.path());
    assert!(
        matches!(&e, LogError::Corrupt(m) if m.contains(&name)),
        "{e}"
    );

    // A torn record at its end.
    std::fs::write(&victim, &original[..original.len() - 3]).expect("write");
    let e = open_error(dir.path());
    assert!(
        matches!(&e, LogError::Corrupt(m) if m.contains(&name)),
        "{e}"
    );

    // A length field claiming 4 GiB is refused without being allocated.
    let mut bytes = original.clone();
    let at = HEADER_LEN;
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&victim, &bytes).expect("write");
    let e = open_error(dir.path());
    assert!(
        matches!(&e, LogError::Corrupt(m) if m.contains(&name) && m.contains("length")),
        "{e}"
    );

    // A file cut short at a record boundary shows as a hole in the log.
    let ends = record_ends(&original);
    assert!(ends.len() > 3);
    std::fs::write(&victim, &original[..ends[ends.len() - 3]]).expect("write");
    let e = open_error(dir.path());
    assert!(
        matches!(&e, LogError::Corrupt(m) if m.contains("missing")),
        "{e}"
    );

    // So does a missing file.
    std::fs::remove_file(&victim).expect("remove");
    let e = open_error(dir.path());
    assert!(
        matches!(&e, LogError::Corrupt(m) if m.contains("missing")),
        "{e}"
    );

    std::fs::write(&victim, &original).expect("restore");
    let s = open(dir.path(), &cfg(600, 0));
    assert_eq!(all(&s).len(), 60);
}

#[test]
fn a_segment_left_behind_by_an_interrupted_compaction_is_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(600, 0);
    let mut s = open(dir.path(), &c);
    append_readys(&mut s, 1, 60, 1, 40, 5);
    let before = Image::take(dir.path());
    s.compact(58).expect("compact");
    let expected = all(&s);
    drop(s);
    let after: Vec<PathBuf> = seg_files(dir.path())
        .into_iter()
        .map(|(p, _)| PathBuf::from(p.file_name().expect("name")))
        .collect();
    let deleted: Vec<&(PathBuf, Vec<u8>)> = before
        .files
        .iter()
        .filter(|(name, _)| !after.contains(name))
        .collect();
    assert!(deleted.len() > 3, "{} files deleted", deleted.len());
    // Deletions can reach the disk out of order in a crash: bring back the first deleted
    // file, one from the middle, the last one (the first two leave a jump in the record
    // sequence after them).
    for pick in [0, deleted.len() / 2, deleted.len() - 1] {
        let (name, bytes) = deleted[pick];
        std::fs::write(dir.path().join(name), bytes).expect("restore");
        let s = open(dir.path(), &c);
        assert_eq!(
            s.first_index().ok(),
            Some(58),
            "deleted file {pick} restored"
        );
        assert_eq!(all(&s), expected);
        drop(s);
        std::fs::remove_file(dir.path().join(name)).expect("remove");
    }
}

#[test]
fn commit_past_the_last_entry_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = open(dir.path(), &cfg(1 << 20, 0));
    s.append(&[entry(1, 1, b"a")]).expect("append");
    let hs = HardState {
        term: 1,
        commit: 5,
        ..HardState::default()
    };
    s.set_hard_state(&hs).expect("hs");
    s.sync().expect("sync");
    drop(s);
    let e = open_error(dir.path());
    assert!(
        matches!(&e, LogError::Corrupt(m) if m.contains("commit")),
        "{e}"
    );
}

#[test]
fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path(), &cfg(1 << 20, 0)));
    let (path, _) = seg_files(dir.path()).pop().expect("file");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[8] = FORMAT_VERSION + 1;
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(
        open_error(dir.path()),
        LogError::UnsupportedFormat { found, known: FORMAT_VERSION } if found == FORMAT_VERSION + 1
    ));
    // The refused file is left as it was.
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
}

#[test]
fn decoders_refuse_short_and_unknown_records() {
    assert!(decode_record(&[]).is_err());
    assert!(decode_record(&[KIND_ENTRY, 1, 2, 3]).is_err());
    assert!(decode_record(&[KIND_STATE, 0, 1]).is_err());
    assert!(decode_record(&[99, 0]).is_err());
    // A state record whose hard-state length runs past its end.
    let mut state = vec![KIND_STATE, 0];
    state.extend_from_slice(&[0; 16]);
    state.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_record(&state).is_err());
    let mut buf = Vec::new();
    encode_state(&mut buf, true, &LogState::default()).expect("encode");
    buf.insert(0, KIND_STATE);
    assert!(matches!(
        decode_record(&buf),
        Ok(Record::State { reset: true, .. })
    ));
    buf[1] = 0x80;
    assert!(decode_record(&buf).is_err());
    assert_eq!(parse_segment_name("00000000000000000042.seg"), Some(42));
    assert_eq!(parse_segment_name("42.seg"), None);
    assert_eq!(parse_segment_name("99999999999999999999.seg"), None);
    assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Op {
    /// Append `count` entries starting `back` places before the end (never at or below the
    /// commit index, as raft never does), in a new term when `new_term`.
    Append {
        back: u8,
        count: u8,
        new_term: bool,
        size: u8,
    },
    /// Raise the commit index by a fraction of what is uncommitted.
    Commit(u8),
    Vote(u8),
    Conf(u8),
    /// Compact to a point at or below commit + 1; then sync (see `model_crash`).
    Compact(u8),
    /// Install a snapshot `ahead` entries past the end; then sync.
    Snapshot(u8),
    Sync,
    Reopen,
    /// Lose everything written since the last sync, then reopen.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), 1..5u8, prop::bool::weighted(0.2), any::<u8>())
            .prop_map(|(back, count, new_term, size)| Op::Append { back, count, new_term, size }),
        3 => any::<u8>().prop_map(Op::Commit),
        1 => any::<u8>().prop_map(Op::Vote),
        1 => (1..5u8).prop_map(Op::Conf),
        2 => any::<u8>().prop_map(Op::Compact),
        1 => (0..3u8).prop_map(Op::Snapshot),
        3 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn same(real: &SegmentLogStorage, model: &MemLogStorage) -> Result<(), TestCaseError> {
    let first = model.first_index().expect("first");
    prop_assert_eq!(real.first_index().ok(), Some(first));
    prop_assert_eq!(real.last_index().ok(), model.last_index().ok());
    prop_assert_eq!(real.term(first - 1).ok(), model.term(first - 1).ok());
    prop_assert_eq!(all(real), all(model));
    prop_assert_eq!(real.hard_state(), model.hard_state());
    prop_assert_eq!(real.conf_state(), model.conf_state());
    prop_assert_eq!(
        real.disk_bytes(),
        seg_files(&real.dir).iter().map(|(_, n)| n).sum::<u64>()
    );
    Ok(())
}

/// Sizes of the files as the last sync left them: what a power loss keeps at worst.
fn durable(dir: &Path) -> BTreeMap<PathBuf, u64> {
    seg_files(dir).into_iter().collect()
}

/// A power loss: files created since the last sync vanish, the others lose what was
/// appended since. (Compaction and snapshots are followed by a sync in the model, as the
/// segment log syncs inside them but the in-memory model does not.)
fn crash_files(dir: &Path, synced: &BTreeMap<PathBuf, u64>) {
    for (path, len) in seg_files(dir) {
        match synced.get(&path) {
            None => std::fs::remove_file(&path).expect("remove"),
            Some(&keep) if keep < len => {
                let f = OpenOptions::new().write(true).open(&path).expect("open");
                f.set_len(keep).expect("truncate");
            }
            Some(_) => {}
        }
    }
}

fn run_model(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(300, 400);
    let mut real = Some(open(dir.path(), &c));
    let mut model = MemLogStorage::new();
    let mut synced = durable(dir.path());
    let mut term = 1u64;
    for op in ops {
        let s = real.as_mut().expect("open log");
        let first = model.first_index().expect("first");
        let last = model.last_index().expect("last");
        let commit = model.hard_state().commit;
        match op {
            Op::Append {
                back,
                count,
                new_term,
                size,
            } => {
                if *new_term {
                    term += 1;
                }
                let lo = first.max(commit + 1);
                let span = last + 2 - lo;
                let start = last + 1 - u64::from(*back) % span;
                let batch: Vec<Entry> = (start..start + u64::from(*count))
                    .map(|i| entry(i, term, &payload(i ^ term, usize::from(*size % 40))))
                    .collect();
                s.append(&batch).expect("append");
                model.append(&batch).expect("model append");
            }
            Op::Commit(f) => {
                let c = commit + (last - commit) * u64::from(*f) / 255;
                s.set_commit(c).expect("commit");
                model.set_commit(c).expect("model commit");
            }
            Op::Vote(v) => {
                let hs = HardState {
                    term,
                    vote: u64::from(*v % 4),
                    commit,
                    ..HardState::default()
                };
                s.set_hard_state(&hs).expect("hs");
                model.set_hard_state(&hs).expect("model hs");
            }
            Op::Conf(n) => {
                let cs = ConfState {
                    voters: (1..=u64::from(*n)).collect(),
                    ..ConfState::default()
                };
                s.set_conf_state(&cs).expect("cs");
                model.set_conf_state(&cs).expect("model cs");
            }
            Op::Compact(f) => {
                let hi = (commit + 1).min(last + 1).max(first);
                let to = first + (hi - first) * u64::from(*f) / 255;
                s.compact(to).expect("compact");
                model.compact(to).expect("model compact");
                s.sync().expect("sync");
                model.sync().expect("model sync");
                synced = durable(dir.path());
            }
            Op::Snapshot(ahead) => {
                let mut meta = SnapshotMetadata {
                    index: last + 1 + u64::from(*ahead),
                    term,
                    ..SnapshotMetadata::default()
                };
                meta.mut_conf_state().voters = vec![1, 2, 3];
                s.apply_snapshot(&meta).expect("snapshot");
                model.apply_snapshot(&meta).expect("model snapshot");
                s.sync().expect("sync");
                model.sync().expect("model sync");
                synced = durable(dir.path());
            }
            Op::Sync => {
                s.sync().expect("sync");
                model.sync().expect("model sync");
                synced = durable(dir.path());
            }
            Op::Reopen => {
                // Not a sync: what was written since the last one is still not durable.
                drop(real.take());
                real = Some(open(dir.path(), &c));
            }
            Op::Crash => {
                drop(real.take());
                crash_files(dir.path(), &synced);
                model.crash();
                real = Some(open(dir.path(), &c));
                synced = durable(dir.path());
                // Terms go on from where the durable log stands.
                term = term.max(model.hard_state().term);
            }
        }
        same(real.as_ref().expect("open log"), &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Against the in-memory log: same entries, base, hard state and membership after every
    /// step, across reopens and simulated power losses.
    #[test]
    fn behaves_like_the_in_memory_log(ops in prop::collection::vec(op(), 1..40)) {
        run_model(&ops)?;
    }
}

/// Figures for the report (not a test of speed): appends per second of 2 KiB entries with
/// a sync every 10 entries and a compaction every 200, against FjallLogStorage. Run with
/// `cargo test --release -p argus-coordinator --lib segment_log::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "prints figures; run by hand"]
fn throughput() {
    use crate::cluster::storage::FjallLogStorage;

    fn written_bytes() -> u64 {
        std::fs::read_to_string("/proc/self/io")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("write_bytes: ").map(str::to_owned))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn run(name: &str, s: &mut impl LogStorage) {
        let count = 20_000u64;
        let data = payload(7, 2048);
        let started = std::time::Instant::now();
        let io_before = written_bytes();
        let mut max_disk = 0;
        for ready in 0..count / 10 {
            let from = ready * 10 + 1;
            let batch: Vec<Entry> = (from..from + 10).map(|i| entry(i, 1, &data)).collect();
            s.append(&batch).expect("append");
            s.set_commit(from + 9).expect("commit");
            s.sync().expect("sync");
            if (from + 9) % 200 == 0 {
                s.compact(from + 9 - 20).expect("compact");
                max_disk = max_disk.max(s.disk_bytes());
            }
        }
        let took = started.elapsed();
        let written = written_bytes() - io_before;
        println!(
            "{name}: {count} entries of 2 KiB in {took:?}: {:.0} entries/s, {:.1} MB/s; \
             disk writes {:.2} bytes per payload byte; max disk {} KiB",
            count as f64 / took.as_secs_f64(),
            (count * 2048) as f64 / took.as_secs_f64() / 1e6,
            written as f64 / (count * 2048) as f64,
            max_disk / 1024
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut seg = SegmentLogStorage::open(dir.path().join("seg")).expect("open");
    run("segment log", &mut seg);
    let mut fjall = FjallLogStorage::open(dir.path().join("fjall")).expect("open");
    run("fjall log", &mut fjall);
}
