//! Crash safety of `argus serve` (issue 3, acceptance "Crash safety"): `kill -9` during a
//! remote-write load at random moments, restart on the same data directory, and at the
//! end every batch that got a 2xx is present exactly once.
//!
//! - Writers (threads) remote-write batches: each writer owns a few series and gives
//!   every sample a unique, increasing timestamp, so the expected content of every
//!   series is known exactly. Values mix decimal counters, arbitrary floats and
//!   StaleNaN markers, whose bits must survive the log and the replay.
//! - The main thread waits for load to flow, kills the server at a random moment
//!   (seeded; the seed is printed and `ARGUS_CRASH_SEED` replays the kill delays, the
//!   values and the resend choices; thread timing still varies), restarts it,
//!   prints the replay time (start to `/ready`) and the Raft log size, and goes on.
//!   A batch whose request failed because of the kill is resent after the restart or
//!   abandoned (seeded coin): resending is what Prometheus does, and the dedup on
//!   (series, timestamp) must make it harmless; abandoning leaves a batch whose fate
//!   is unknown, which must be all there or not at all.
//! - `ARGUS_CRASH_ROUNDS` sets the number of kills (3 here, 20 in
//!   `scripts/crash-soak.sh`).
//!
//! Reading the samples back: there is no query API yet (PromQL is the next issue) and
//! `/federate` shows only the last sample of a series, so the test stops the server
//! with SIGTERM and opens its data directory in-process exactly as `server::start`
//! does (log, store, replica, node), lets it replay, proposes an empty entry as a
//! barrier (once it is applied, everything before it is too), stops the node and reads
//! every series from the head and the store. A sample in both, or twice in either,
//! shows up as a duplicate timestamp.

mod common;

use argus_common::model::STALE_NAN_BITS;
use argus_coordinator::api::remote_write::{TimeSeries, WriteRequest, encode_body};
use argus_coordinator::cluster::{
    NoPeers, NodeConfig, ProposeError, RaftNode, SegmentLogStorage, spawn,
};
use argus_coordinator::server::{LOG_DIR, ServeConfig};
use argus_coordinator::state::checkpoint_file::CheckpointFile;
use argus_coordinator::state::entry::Entry;
use argus_coordinator::state::replica::Replica;
use argus_coordinator::tsdb::store::{Store, StoreConfig};
use argus_testkit::http;
use common::{Argus, WRITE_HEADERS, dir_bytes, now_ms};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const WRITERS: usize = 3;
const SERIES_PER_WRITER: usize = 4;
const SAMPLES_PER_BATCH: usize = 5;
/// Samples of a series are this far apart, starting `HISTORY_MS` before now: close
/// enough to now that the head's idle sealing (2 h by the leader's clock) leaves them
/// alone, as it would a live Prometheus's. A writer has (130 - 33) min / 50 ms = 116 000
/// timestamps (23 000 batches) before the clock-skew bound (10 min ahead of the
/// leader) would refuse them.
const STEP_MS: i64 = 50;
const HISTORY_MS: i64 = 100 * 60_000;
/// Every `JUMP_EVERY` batches (at most `MAX_JUMPS` times) a writer's next batch jumps
/// past the out-of-order window, so chunks are sealed and reach the store even when a
/// slow machine sends few batches.
const JUMP_EVERY: u64 = 300;
const JUMP_MS: i64 = 11 * 60_000;
const MAX_JUMPS: u64 = 3;
/// Acks to see after a restart before the kill may come, so every round kills a node
/// under load rather than one still starting.
const ACKS_BEFORE_KILL: u64 = 3;
const METRIC: &str = "crash_test_value";

/// One remote-write batch as sent.
#[derive(Debug, Clone)]
struct Batch {
    writer: usize,
    number: u64,
    /// (series index within the writer, samples).
    series: Vec<(usize, Vec<(i64, f64)>)>,
}

impl Batch {
    fn request(&self) -> WriteRequest {
        WriteRequest {
            timeseries: self
                .series
                .iter()
                .map(|(s, samples)| {
                    let (w, s) = (self.writer.to_string(), s.to_string());
                    TimeSeries::new(
                        METRIC,
                        &[("job", "crash"), ("series", &s), ("writer", &w)],
                        samples.clone(),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    fn samples(&self) -> usize {
        self.series.iter().map(|(_, s)| s.len()).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Got a 2xx (`resent`: after its first attempt died with the server).
    Acked { resent: bool },
    /// In flight when the server was killed, and not sent again.
    Unknown,
}

/// What the main thread and the writers share.
struct Control {
    /// The server accepts writes; false from just before a kill until it is ready.
    up: bool,
    /// Incremented at every restart.
    epoch: u64,
    stop: bool,
    acked: u64,
    /// Requests that died while the server was up: must stay empty.
    unexplained: Vec<String>,
}

struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
}

impl Shared {
    /// The control state; a panicking thread (a failed assertion) does not hide it.
    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the server is up (or the test stops): its epoch, or None to stop.
    fn wait_up(&self, newer_than: Option<u64>) -> Option<u64> {
        let mut c = self.lock();
        loop {
            if c.stop {
                return None;
            }
            if c.up && newer_than.is_none_or(|e| c.epoch > e) {
                return Some(c.epoch);
            }
            c = self.changed.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn set(&self, f: impl FnOnce(&mut Control)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

/// A writer's values: a counter with decimal increments, arbitrary floats, a gauge
/// that ends and restarts with StaleNaN markers, and a constant.
fn value(series: usize, i: u64, rng: &mut StdRng, counter: &mut f64) -> f64 {
    match series {
        0 => {
            *counter += f64::from(rng.random_range(1u32..500)) / 100.0;
            *counter
        }
        1 => rng.random::<f64>() * 1e6 - 5e5,
        2 if i % 7 == 6 => f64::from_bits(STALE_NAN_BITS),
        2 => (i % 100) as f64 * 0.25,
        _ => 42.0,
    }
}

fn writer(
    w: usize,
    seed: u64,
    addr: SocketAddr,
    shared: Arc<Shared>,
    start_ms: i64,
) -> Vec<(Batch, Fate)> {
    let mut rng =
        StdRng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(w as u64 + 1)));
    let mut counter = 0.0;
    let mut next_ts = start_ms;
    let mut sample_no = 0u64;
    let mut out = Vec::new();
    for number in 0.. {
        if shared.wait_up(None).is_none() {
            return out;
        }
        if number > 0 && number % JUMP_EVERY == 0 && number / JUMP_EVERY <= MAX_JUMPS {
            next_ts += JUMP_MS;
        }
        let mut series: Vec<(usize, Vec<(i64, f64)>)> =
            (0..SERIES_PER_WRITER).map(|s| (s, Vec::new())).collect();
        for k in 0..SAMPLES_PER_BATCH {
            let t = next_ts + k as i64 * STEP_MS;
            for (s, samples) in series.iter_mut() {
                samples.push((t, value(*s, sample_no + k as u64, &mut rng, &mut counter)));
            }
        }
        next_ts += SAMPLES_PER_BATCH as i64 * STEP_MS;
        sample_no += SAMPLES_PER_BATCH as u64;
        let batch = Batch {
            writer: w,
            number,
            series,
        };
        assert!(
            next_ts < now_ms() + 5 * 60_000,
            "writer {w} ran out of timestamps: lower STEP_MS"
        );
        let body = encode_body(&batch.request()).expect("encode");
        let mut resent = false;
        let fate = loop {
            // The epoch the request goes out in: an error from a later one is a kill.
            let Some(sent_in) = shared.wait_up(None) else {
                break Some(Fate::Unknown);
            };
            match http::post(addr, "/api/v1/write", &WRITE_HEADERS, &body) {
                Ok(r) if (200..300).contains(&r.status) => break Some(Fate::Acked { resent }),
                Ok(r) if r.status == 503 => {
                    // Not leader yet, or the proposal queue is full: a sender retries.
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(r) => {
                    shared.set(|c| {
                        c.unexplained.push(format!(
                            "writer {w} batch {number}: HTTP {} {}",
                            r.status,
                            r.text()
                        ));
                        c.stop = true;
                    });
                    break None;
                }
                Err(e) => {
                    {
                        let c = shared.lock();
                        if c.up && c.epoch == sent_in && !c.stop {
                            drop(c);
                            shared.set(|c| {
                                c.unexplained.push(format!(
                                    "writer {w} batch {number}: {e} while the server was up"
                                ));
                                c.stop = true;
                            });
                            break None;
                        }
                    }
                    // The server was killed under this request. Resend after the
                    // restart, or leave its fate unknown.
                    if shared.wait_up(Some(sent_in)).is_none() {
                        break Some(Fate::Unknown);
                    }
                    if rng.random_bool(0.5) {
                        resent = true;
                    } else {
                        break Some(Fate::Unknown);
                    }
                }
            }
        };
        let Some(fate) = fate else {
            out.push((batch, Fate::Unknown));
            return out;
        };
        if matches!(fate, Fate::Acked { .. }) {
            shared.set(|c| c.acked += 1);
        }
        out.push((batch, fate));
    }
    out
}

/// Waits until `n` more batches were acked than `from`, or fails the test.
fn wait_acks(shared: &Shared, from: u64, n: u64, argus: &Argus) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut c = shared.lock();
    let failure = loop {
        if !c.unexplained.is_empty() {
            break format!("writers failed: {:?}", c.unexplained);
        }
        if c.acked >= from + n {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break "no write was acked for 60 s".to_string();
        }
        c = shared
            .changed
            .wait_timeout(c, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    };
    c.stop = true;
    drop(c);
    shared.changed.notify_all();
    panic!("{failure}\n{}", argus.log_tail());
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

#[test]
fn acked_remote_writes_survive_kill_9_exactly_once() {
    let seed = env_u64("ARGUS_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let rounds = env_u64("ARGUS_CRASH_ROUNDS").unwrap_or(3);
    eprintln!("crash test: seed {seed} (replay with ARGUS_CRASH_SEED={seed}), {rounds} kills");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut argus = Argus::start(&data, &[]);
    let start_ms = (now_ms() - HISTORY_MS) / 1000 * 1000;
    let shared = Arc::new(Shared {
        control: Mutex::new(Control {
            up: true,
            epoch: 0,
            stop: false,
            acked: 0,
            unexplained: Vec::new(),
        }),
        changed: Condvar::new(),
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let shared = shared.clone();
            let addr = argus.addr;
            std::thread::spawn(move || writer(w, seed, addr, shared, start_ms))
        })
        .collect();

    let mut replays = Vec::new();
    for round in 1..=rounds {
        let acked_before = shared.lock().acked;
        wait_acks(&shared, acked_before, ACKS_BEFORE_KILL, &argus);
        let delay = Duration::from_millis(rng.random_range(0..1500));
        std::thread::sleep(delay);
        // The node's own figure (measured about once a second) just before the kill.
        let metric_log_bytes = argus
            .metric("argus_raft_log_disk_bytes", &[])
            .unwrap_or(f64::NAN);
        shared.set(|c| c.up = false);
        argus.kill9();
        let acked = shared.lock().acked;
        let log_bytes = dir_bytes(&data.join(LOG_DIR));
        argus.restart().expect("restart argus serve");
        let replay = argus
            .wait_ready()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        eprintln!(
            "round {round:>2}: killed {:>4} ms after load resumed, {acked:>6} batches acked so far; \
             replay to /ready {:>5} ms; raft log: du {:>9} bytes, argus_raft_log_disk_bytes {}",
            delay.as_millis(),
            replay.as_millis(),
            log_bytes,
            metric_log_bytes,
        );
        replays.push((replay, log_bytes));
        shared.set(|c| {
            c.epoch += 1;
            c.up = true;
        });
    }
    let acked_before = shared.lock().acked;
    wait_acks(&shared, acked_before, ACKS_BEFORE_KILL, &argus);
    shared.set(|c| c.stop = true);
    let sent: Vec<(Batch, Fate)> = writers
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect();
    let unexplained = shared.lock().unexplained.clone();
    assert!(
        unexplained.is_empty(),
        "writers failed: {unexplained:?}\n{}",
        argus.log_tail()
    );
    let status = argus.terminate().expect("orderly shutdown");
    assert!(
        status.success(),
        "argus serve exited with {status}\n{}",
        argus.log_tail()
    );

    let stored = read_back(&data);
    verify(&sent, &stored);
    let max = replays.iter().map(|r| r.0).max().unwrap_or_default();
    let max_log = replays.iter().map(|r| r.1).max().unwrap_or_default();
    eprintln!(
        "crash test: seed {seed}: {rounds} kills, longest replay {} ms, largest raft log {max_log} bytes",
        max.as_millis()
    );
}

/// Every sample of every series in the data directory, per (writer, series).
fn read_back(data: &Path) -> BTreeMap<(usize, usize), Vec<(i64, f64)>> {
    // The same configuration `argus serve` uses.
    let cfg = ServeConfig::new(data.to_path_buf(), SocketAddr::from(([127, 0, 0, 1], 0)));
    let log = SegmentLogStorage::open(data.join(LOG_DIR)).expect("open raft log");
    let store = Arc::new(
        Store::open(data.join("tsdb"), StoreConfig::new(cfg.tiers.clone())).expect("open store"),
    );
    let replica =
        Replica::open(store.clone(), CheckpointFile::new(data), cfg.replica).expect("open replica");
    let checkpoint = replica.checkpointed();
    let state = replica.shared();
    let parts = RaftNode::build(NodeConfig::default(), log, NoPeers, replica).expect("build node");
    let node = spawn(parts, cfg.tick).expect("start node");
    let barrier = Entry::RemoteWrite {
        series: Vec::new(),
        metadata: Vec::new(),
    }
    .encode();
    let deadline = Instant::now() + common::READY_TIMEOUT;
    loop {
        match node.proposer().propose(now_ms(), &barrier) {
            Ok(receipt) => {
                receipt.blocking_outcome().expect("barrier applied");
                break;
            }
            Err(ProposeError::NotLeader { .. } | ProposeError::QueueFull { .. }) => {
                assert!(Instant::now() < deadline, "no leader after replay");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("barrier: {e}"),
        }
    }
    // Stopping joins the apply thread: sealed chunks taken from the head are in the
    // store before anything is read.
    node.shutdown().expect("node shutdown");
    let sm = state.read().expect("state");
    let mut out = BTreeMap::new();
    let (mut from_head, mut from_store) = (0, 0);
    for (id, series) in sm.index().iter() {
        assert_eq!(series.name, METRIC, "unexpected series {series:?}");
        let get = |k: &str| -> usize {
            series
                .labels
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("series without {k}: {series:?}"))
        };
        let key = (get("writer"), get("series"));
        let mut samples: Vec<(i64, f64)> = sm
            .head()
            .select(id, i64::MIN, i64::MAX)
            .expect("head select")
            .collect();
        from_head += samples.len();
        let stored = store.read_raw(id, i64::MIN, i64::MAX).expect("store read");
        from_store += stored.len();
        samples.extend(stored);
        samples.sort_by_key(|s| s.0);
        assert!(out.insert(key, samples).is_none(), "series {key:?} twice");
    }
    eprintln!(
        "read back: last checkpoint at index {checkpoint}, replayed to {}; {from_store} samples \
         from sealed chunks in the store, {from_head} from the head",
        sm.applied()
    );
    out
}

fn verify(sent: &[(Batch, Fate)], stored: &BTreeMap<(usize, usize), Vec<(i64, f64)>>) {
    // Stored samples by (writer, series, timestamp); a repeated timestamp is a duplicate.
    let mut index: BTreeMap<(usize, usize, i64), u64> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for (&(w, s), samples) in stored {
        for w2 in samples.windows(2) {
            if w2[0].0 == w2[1].0 {
                duplicates.push(format!("writer {w} series {s} at {}", w2[0].0));
            }
        }
        for &(t, v) in samples {
            index.insert((w, s, t), v.to_bits());
        }
    }
    assert!(duplicates.is_empty(), "duplicated samples: {duplicates:?}");

    let (mut acked, mut resent, mut unknown_present, mut unknown_absent) = (0, 0, 0, 0);
    let mut expected_samples = 0usize;
    let mut problems = Vec::new();
    for (batch, fate) in sent {
        let mut present = 0usize;
        for (s, samples) in &batch.series {
            for &(t, v) in samples {
                match index.get(&(batch.writer, *s, t)) {
                    Some(&bits) if bits == v.to_bits() => present += 1,
                    Some(&bits) => problems.push(format!(
                        "writer {} batch {} series {s} at {t}: stored {:?}, sent {v:?}",
                        batch.writer,
                        batch.number,
                        f64::from_bits(bits)
                    )),
                    None => {}
                }
            }
        }
        let all = batch.samples();
        match fate {
            Fate::Acked { resent: r } => {
                acked += 1;
                resent += usize::from(*r);
                expected_samples += all;
                if present != all {
                    problems.push(format!(
                        "writer {} batch {} was acked but has {present} of {all} samples",
                        batch.writer, batch.number
                    ));
                }
            }
            Fate::Unknown if present == all => {
                unknown_present += 1;
                expected_samples += all;
            }
            Fate::Unknown if present == 0 => unknown_absent += 1,
            Fate::Unknown => problems.push(format!(
                "writer {} batch {} (in flight at a kill) is half there: {present} of {all} samples",
                batch.writer, batch.number
            )),
        }
    }
    let stored_samples: usize = stored.values().map(Vec::len).sum();
    if stored_samples != expected_samples {
        problems.push(format!(
            "{stored_samples} samples stored, {expected_samples} expected from the batches present"
        ));
    }
    eprintln!(
        "crash test: {} batches sent: {acked} acked ({resent} of them resent after a kill), \
         {} in flight at a kill and not resent ({unknown_present} present, {unknown_absent} absent); \
         {stored_samples} samples stored",
        sent.len(),
        unknown_present + unknown_absent,
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(acked > 0, "nothing was acked");
}
