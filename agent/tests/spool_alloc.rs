//! A corrupt length field on disk must not make the agent allocate what it claims.
//!
//! This test binary installs an allocator that records the largest single request,
//! so it is its own file: the allocator applies to the whole binary.

use argus_agent::spool::{FsyncPolicy, FullPolicy, Spool, SpoolConfig};
use argus_common::model::PointGroup;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

#[test]
fn a_corrupt_length_does_not_allocate_what_it_claims() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        dir: tmp.path().to_path_buf(),
        max_bytes: 1 << 20,
        segment_bytes: 64 << 10,
        fsync: FsyncPolicy::EveryBatch,
        when_full: FullPolicy::DropOldest,
    };
    let mut spool = Spool::open(cfg.clone()).unwrap();
    for tag in 0..3 {
        spool
            .push(vec![PointGroup {
                timestamp_ms: tag,
                points: vec![(1, 1.0), (2, 2.0)],
            }])
            .unwrap();
    }
    let seg = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("segment-"))
        .unwrap();
    drop(spool);
    // The third record claims about 4 GiB, then one claiming just under the largest
    // record allowed (16 MiB) but running past the end of the file.
    let len = std::fs::metadata(&seg).unwrap().len();
    let third = len - (len / 3);
    let mut f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.seek(SeekFrom::Start(third)).unwrap();
    f.write_all(&0xFFFF_FFF0u32.to_le_bytes()).unwrap();
    drop(f);

    LARGEST.store(0, Ordering::Relaxed);
    let mut spool = Spool::open(cfg.clone()).unwrap();
    assert!(LARGEST.load(Ordering::Relaxed) < 1 << 20);
    assert_eq!(spool.stats().torn_records_total, 1);
    assert_eq!(spool.pending(0, 10).unwrap().len(), 2);

    spool
        .push(vec![PointGroup {
            timestamp_ms: 9,
            points: vec![(1, 1.0)],
        }])
        .unwrap();
    drop(spool);
    let len = std::fs::metadata(&seg).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&((16u32 << 20) - 16).to_le_bytes()).unwrap();
    f.write_all(&[0u8; 12]).unwrap();
    drop(f);
    assert!(std::fs::metadata(&seg).unwrap().len() > len);

    LARGEST.store(0, Ordering::Relaxed);
    let spool = Spool::open(cfg).unwrap();
    assert!(LARGEST.load(Ordering::Relaxed) < 1 << 20);
    assert_eq!(spool.stats().torn_records_total, 1);
    assert_eq!(spool.stats().batches, 3);
}
