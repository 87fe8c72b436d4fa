//! Argus's store beside VictoriaMetrics's, fed the same remote-write requests in one run.
//!
//! The workload is `argus_coordinator::tsdb::mix` (the mix the chunk codec's tests use):
//! `ARGUS_BENCH_SERIES` series (default 5,000) of fractional, integer and sparse
//! counters, wandering byte and decimal gauges, constant gauges and float ratios, at 1,
//! 5, 10 or 15 s, half of them on the exact grid (an agent's tick) and half with ±10 ms
//! of jitter and a per-target phase (a Prometheus scrape). Every series covers the same
//! stretch of time ending a minute ago, sized so the total is `ARGUS_BENCH_SAMPLES`
//! (default 10,000,000) samples.
//!
//! The samples are cut into remote-write 1.0 requests the way Prometheus sends them:
//! each series belongs to one of `ARGUS_BENCH_SENDERS` shards (default 16), each shard
//! sends its samples in time order, `ARGUS_BENCH_BATCH` samples per request (default
//! 2,000, Prometheus's `max_samples_per_send`), one `TimeSeries` per sample, one request
//! in flight per shard, retrying 5xx and 429. The bodies are encoded once, before
//! either server starts, and the same bytes go to both, one server after the other:
//!
//! - `argus serve` (release build) through the full path: decode, propose, Raft log
//!   fsync, apply, answer;
//! - Debian's `victoria-metrics` on `/api/v1/write`.
//!
//! Printed for each: samples/s appended (first request to last 2xx), the server's CPU
//! and peak RSS, fsyncs per second and fsync p99, and bytes per sample on disk.
//!
//! - **fsyncs.** Argus's come from its `/metrics` (`argus_raft_fsyncs_total` and the
//!   `argus_raft_fsync_duration_seconds` histogram). VictoriaMetrics keeps no fsync
//!   metrics, so after its timed pass the same load is sent again to a fresh instance
//!   under `strace -f --seccomp-bpf -ttt -T` (only fsync, fdatasync and sync_file_range
//!   stop it), which gives every call and its duration. The timed pass is untraced:
//!   every traced call is a round trip to strace, which slows the server (for Argus a
//!   lot, its fsync being on the path of every answer). `ARGUS_BENCH_STRACE=2` adds
//!   such a pass for Argus too (every file, not only the log); `0` skips them.
//! - **Disk.** VictoriaMetrics gets `/internal/force_flush` and `/internal/force_merge`,
//!   is stopped with SIGTERM once no merge runs, and its `data` and `indexdb` are counted
//!   (`cache` is printed but not counted: it is rebuilt when missing). Argus is stopped
//!   with SIGTERM and measured as it left its directory; having no "compact now"
//!   endpoint, its store (a fjall database) is then flushed and major-compacted offline
//!   by the bench (`Store::flush_and_compact`) and measured again, journals and tables
//!   apart, with the checkpoint file beside it. The Raft log is compacted only up to the
//!   last synced checkpoint, so its size swings between nothing and a checkpoint
//!   interval of entries; its steady-state size is taken as its mean size during the
//!   load (sampled twice a second).
//!
//! Then the ratios against the targets: bytes per sample Argus/VM ≤ 1.0 (Argus: store
//! compacted, plus the checkpoint file, which holds the head's samples not yet in the
//! store, plus the log at its mean size; other ways of counting are printed below it)
//! and throughput Argus/VM ≥ 0.5. A reference line gives the chunk codec alone (no
//! server, no index) on the same samples, per shape, in 120-sample chunks.
//!
//! Other knobs: `ARGUS_BENCH_ONLY=argus|vm` runs one server; `ARGUS_BENCH_KEEP=1` keeps
//! the data directories; `ARGUS_BENCH_PERF=<file>` records a `perf` profile (DWARF call
//! graphs) of `argus serve` during the load.
//!
//! Run: `cargo bench -p argus-benches --bench tsdb_compression`
//! (needs `apt-get install victoria-metrics`; `strace` and `perf` are optional).

use anyhow::{Context, Result, bail};
use argus_benches::http::{Metrics, http_get};
use argus_benches::remote_write::send_shard;
use argus_benches::server::{Server, VM_BIN, argus_command, vm_command, which};
use argus_benches::stats::{histogram_quantile, quantile};
use argus_coordinator::api::remote_write::{TimeSeries, WriteRequest, encode_body};
use argus_coordinator::server::LOG_DIR;
use argus_coordinator::tsdb::chunk;
use argus_coordinator::tsdb::mix::{self, SeriesSpec, Shape};
use argus_coordinator::tsdb::store::{Store, StoreConfig};
use argus_coordinator::tsdb::tier::Tiers;
use argus_testkit::bench::{TempDir, env_usize};
use argus_testkit::proc;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIX_SEED: u64 = 20_240_917;
/// Series per simulated host: they share an `instance` label.
const SERIES_PER_HOST: usize = 40;
/// The head's chunk length (`HeadConfig::default().chunk_samples`), for the codec line.
const CHUNK_SAMPLES: usize = 120;

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("tsdb_compression: bench");
        return Ok(());
    }
    let samples = env_usize("ARGUS_BENCH_SAMPLES", 10_000_000);
    let series = env_usize("ARGUS_BENCH_SERIES", 5_000).max(1);
    let senders = env_usize("ARGUS_BENCH_SENDERS", 16).max(1);
    let batch = env_usize("ARGUS_BENCH_BATCH", 2_000).max(1);
    // 0: no strace; 1: VictoriaMetrics only (it keeps no fsync metrics of its own); 2: both.
    let strace_mode = if which("strace").is_some() {
        env_usize("ARGUS_BENCH_STRACE", 1)
    } else {
        0
    };
    let only = std::env::var("ARGUS_BENCH_ONLY").unwrap_or_default();
    if !Path::new(VM_BIN).exists() {
        println!(
            "tsdb_compression: {VM_BIN} not found; install it with `apt-get install victoria-metrics` and run again"
        );
        return Ok(());
    }
    let argus_bin = argus_testkit::build::release_binary("argus-coordinator", "argus")
        .map_err(anyhow::Error::msg)?;

    let work = TempDir::new("argus-bench-tsdb")?;
    let t_gen = Instant::now();
    let load = Workload::generate(samples, series)?;
    load.print_mix();
    load.print_codec_reference()?;
    let requests = load.requests(senders, batch)?;
    let body_bytes: usize = requests.iter().flatten().map(|r| r.body.len()).sum();
    let n_requests: usize = requests.iter().map(Vec::len).sum();
    let distinct: usize = requests.iter().flatten().map(|r| r.series).sum();
    println!(
        "requests: {n_requests} ({senders} senders, {batch} samples each, one TimeSeries per sample as Prometheus sends them, {:.0} distinct series per request on average), {:.1} MB of snappy bodies; workload built in {:.1} s",
        distinct as f64 / n_requests as f64,
        body_bytes as f64 / 1e6,
        t_gen.elapsed().as_secs_f64()
    );
    match strace_mode {
        0 => println!(
            "strace: off (not installed, or ARGUS_BENCH_STRACE=0): no fsync figures for VictoriaMetrics"
        ),
        1 => println!(
            "strace: a second, traced pass of VictoriaMetrics for its fsyncs (ARGUS_BENCH_STRACE=2: of argus too)"
        ),
        _ => println!("strace: a second, traced pass of each server for its fsyncs"),
    }
    let mut runs = Vec::new();
    if only != "vm" {
        println!("\n--- argus serve ---");
        let dir = work.path().join("argus");
        runs.push((
            "argus",
            run_argus(&argus_bin, &dir, &requests, strace_mode >= 2)?,
        ));
    }
    if only != "argus" {
        println!("\n--- victoria-metrics ---");
        let dir = work.path().join("vm");
        runs.push((
            "victoria-metrics",
            run_vm(&dir, &requests, strace_mode >= 1)?,
        ));
    }
    println!();
    let runs: Vec<(&str, &RunResult)> = runs.iter().map(|(n, r)| (*n, r)).collect();
    report(&load, senders, batch, &runs);
    if env_usize("ARGUS_BENCH_KEEP", 0) != 0 {
        println!("data kept in {}", work.path().display());
        std::mem::forget(work);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------

struct Series {
    spec: SeriesSpec,
    labels: Vec<(String, String)>,
    samples: Vec<(i64, f64)>,
}

struct Workload {
    series: Vec<Series>,
    total: usize,
    start_ms: i64,
    end_ms: i64,
}

/// One encoded request and the samples it carries.
struct Request {
    body: Vec<u8>,
    samples: usize,
    /// Distinct series among the samples (each sample still carries its labels).
    series: usize,
}

impl Workload {
    /// `total` samples over `count` series, all covering the same stretch of time ending a
    /// minute ago, so each series has as many samples as its interval allows.
    fn generate(total: usize, count: usize) -> Result<Workload> {
        let specs = mix::realistic_mix(count, MIX_SEED);
        let rate: f64 = specs.iter().map(|s| 1.0 / s.interval_ms as f64).sum();
        let span_ms = total as f64 / rate;
        let mut counts: Vec<usize> = specs
            .iter()
            .map(|s| (span_ms / s.interval_ms as f64) as usize)
            .collect();
        // Rounding down leaves fewer than `count` samples over; hand them out one each.
        let short = total.saturating_sub(counts.iter().sum());
        for c in counts.iter_mut().take(short) {
            *c += 1;
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
        let end_ms = (now_ms - 60_000) / 15_000 * 15_000;
        let start_ms = end_ms - span_ms as i64;
        let series: Vec<Series> = specs
            .into_iter()
            .zip(counts)
            .enumerate()
            .map(|(i, (spec, n))| {
                // A scrape has a per-target phase; an agent stamps the aligned tick.
                let phase = if spec.jitter {
                    (spec.seed % spec.interval_ms as u64) as i64
                } else {
                    0
                };
                let first = start_ms / spec.interval_ms * spec.interval_ms + phase;
                Series {
                    labels: labels_for(i, spec.shape),
                    samples: mix::generate(&spec, first, n),
                    spec,
                }
            })
            .collect();
        let total = series.iter().map(|s| s.samples.len()).sum();
        Ok(Workload {
            series,
            total,
            start_ms,
            end_ms,
        })
    }

    fn print_mix(&self) {
        println!(
            "tsdb_compression: {} samples, {} series over {:.2} h (ending a minute ago), mix seed {MIX_SEED}",
            self.total,
            self.series.len(),
            (self.end_ms - self.start_ms) as f64 / 3.6e6
        );
        println!(
            "{:<20} {:>7} {:>11} {:>7}   by interval 1s/5s/10s/15s   jittered",
            "mix", "series", "samples", "share"
        );
        for shape in Shape::ALL {
            let of: Vec<&Series> = self
                .series
                .iter()
                .filter(|s| s.spec.shape == shape)
                .collect();
            let n: usize = of.iter().map(|s| s.samples.len()).sum();
            let by_iv: Vec<String> = mix::INTERVALS_MS
                .iter()
                .map(|iv| {
                    of.iter()
                        .filter(|s| s.spec.interval_ms == *iv)
                        .count()
                        .to_string()
                })
                .collect();
            println!(
                "{:<20} {:>7} {:>11} {:>6.1}%   {:<27} {}",
                shape.name(),
                of.len(),
                n,
                100.0 * n as f64 / self.total as f64,
                by_iv.join("/"),
                of.iter().filter(|s| s.spec.jitter).count()
            );
        }
    }

    /// The chunk codec alone on the same samples: the floor the server's store builds on.
    fn print_codec_reference(&self) -> Result<()> {
        let mut by_shape: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let t = Instant::now();
        for s in &self.series {
            let bytes = s
                .samples
                .chunks(CHUNK_SAMPLES)
                .map(|c| chunk::encode(c).map(|b| b.len()))
                .sum::<Result<usize, _>>()?;
            let e = by_shape.entry(s.spec.shape.name()).or_default();
            e.0 += bytes;
            e.1 += s.samples.len();
        }
        let took = t.elapsed().as_secs_f64();
        let (bytes, n) = by_shape
            .values()
            .fold((0, 0), |(b, n), (b2, n2)| (b + b2, n + n2));
        let per: Vec<String> = Shape::ALL
            .iter()
            .filter_map(|s| by_shape.get(s.name()).map(|(b, n)| (s.name(), b, n)))
            .map(|(name, b, n)| format!("{name} {:.3}", *b as f64 / *n as f64))
            .collect();
        println!(
            "codec alone ({CHUNK_SAMPLES}-sample chunks, no index, no server): {:.3} bytes/sample overall, {:.0} ns/sample to encode; per shape: {}",
            bytes as f64 / n as f64,
            took * 1e9 / n as f64,
            per.join(", ")
        );
        Ok(())
    }

    /// Shard `i` owns the series with `index % senders == i` (so one series' samples are
    /// always sent in order) and sends them merged in time order.
    fn requests(&self, senders: usize, batch: usize) -> Result<Vec<Vec<Request>>> {
        let shards: Vec<usize> = (0..senders).collect();
        let out = Mutex::new(Vec::new());
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::thread::scope(|scope| {
            for part in shards.chunks(senders.div_ceil(threads)) {
                let out = &out;
                scope.spawn(move || {
                    for &shard in part {
                        let reqs = self.shard_requests(shard, senders, batch);
                        if let Ok(mut o) = out.lock() {
                            o.push((shard, reqs));
                        }
                    }
                });
            }
        });
        let mut all = out.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
        all.sort_by_key(|(shard, _)| *shard);
        all.into_iter().map(|(_, r)| r).collect()
    }

    fn shard_requests(&self, shard: usize, senders: usize, batch: usize) -> Result<Vec<Request>> {
        let mut stream: Vec<(i64, u32, u32)> = Vec::new();
        for (i, s) in self.series.iter().enumerate().skip(shard).step_by(senders) {
            for (j, (t, _)) in s.samples.iter().enumerate() {
                stream.push((*t, i as u32, j as u32));
            }
        }
        stream.sort_unstable();
        stream
            .chunks(batch)
            .map(|part| {
                let req = WriteRequest {
                    timeseries: part
                        .iter()
                        .map(|&(_, i, j)| {
                            let s = &self.series[i as usize];
                            TimeSeries {
                                labels: s.labels.clone(),
                                samples: vec![s.samples[j as usize]],
                                ..Default::default()
                            }
                        })
                        .collect(),
                    metadata: Vec::new(),
                };
                let mut ids: Vec<u32> = part.iter().map(|p| p.1).collect();
                ids.sort_unstable();
                ids.dedup();
                Ok(Request {
                    body: encode_body(&req)?,
                    samples: part.len(),
                    series: ids.len(),
                })
            })
            .collect()
    }
}

/// Labels as node_exporter and cAdvisor would name such a series, sorted, `__name__`
/// included; the series number keeps every label set distinct.
fn labels_for(i: usize, shape: Shape) -> Vec<(String, String)> {
    let (name, key, value) = match shape {
        Shape::FractionalCounter => ("node_cpu_seconds_total", "cpu", format!("{}", i % 64)),
        Shape::IntegerCounter => (
            "node_network_receive_bytes_total",
            "device",
            format!("eth{i}"),
        ),
        Shape::SparseCounter => (
            "node_network_receive_errs_total",
            "device",
            format!("eth{i}"),
        ),
        Shape::BytesGauge => (
            "container_memory_working_set_bytes",
            "name",
            format!("app-{i}"),
        ),
        Shape::DecimalGauge => ("node_hwmon_temp_celsius", "sensor", format!("temp{i}")),
        Shape::ConstantGauge => (
            "node_filesystem_size_bytes",
            "mountpoint",
            format!("/srv/{i}"),
        ),
        Shape::FloatGauge => ("container_cpu_load_ratio", "name", format!("app-{i}")),
    };
    let mut labels: Vec<(String, String)> = [
        ("__name__", name.to_string()),
        (key, value),
        ("instance", format!("host-{:04}:9100", i / SERIES_PER_HOST)),
        ("job", "node".to_string()),
        ("series", i.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if shape == Shape::FractionalCounter {
        labels.push(("mode".into(), "user".into()));
    }
    labels.sort();
    labels
}

// ---------------------------------------------------------------------------------
// Running one server
// ---------------------------------------------------------------------------------

/// What one server did with the load.
#[derive(Default)]
struct RunResult {
    samples_ok: usize,
    requests_failed: usize,
    first_failure: Option<String>,
    retries: usize,
    wall: f64,
    cpu: f64,
    peak_rss_mb: f64,
    /// The server's own fsync count, mean and p99 (None where it keeps none).
    own_fsyncs: Option<(u64, f64, f64)>,
    /// Every sync call of every file, from strace.
    traced: Option<Traced>,
    /// Parts of the data directory as the server left it: (name, allocated bytes,
    /// apparent bytes, counted).
    disk: Vec<DiskPart>,
    /// Sizes sampled during the load: (name, mean allocated bytes, max).
    during: Vec<(String, f64, u64)>,
    /// The same after the bench compacted it offline (Argus, which has no endpoint for it).
    disk_compacted: Option<Vec<DiskPart>>,
    /// Samples the server says it stored.
    stored: Option<f64>,
    notes: Vec<String>,
}

/// Sync calls strace saw during the load of a separate, traced pass.
struct Traced {
    /// Calls by syscall name.
    calls: BTreeMap<String, u64>,
    /// Every call's duration, seconds.
    durations: Vec<f64>,
    /// The traced pass's wall time and acknowledged samples (it is slower than the
    /// untraced one, so its rate is per its own time).
    wall: f64,
    samples: usize,
}

type DiskPart = (String, u64, u64, bool);

fn counted(parts: &[DiskPart]) -> u64 {
    parts.iter().filter(|d| d.3).map(|d| d.1).sum()
}

impl RunResult {
    /// Counted bytes after compaction: what the ratio compares.
    fn final_disk(&self) -> u64 {
        counted(self.disk_compacted.as_deref().unwrap_or(&self.disk))
    }
}

/// A second pass of the same load on a fresh directory under strace, for the fsync
/// figures only: tracing puts a round trip to strace on every sync call, so the main,
/// timed pass runs untraced.
fn traced_pass(
    dir: &Path,
    ready: &str,
    command: impl Fn(&Path, u16) -> Command,
    requests: &[Vec<Request>],
) -> Result<Traced> {
    let port = argus_testkit::http::free_port()?;
    let data = dir.join("data");
    std::fs::create_dir_all(dir)?;
    let mut server = Server::start(command(&data, port), dir, port, ready, true)?;
    let r = drive(&mut server, requests, &[])?;
    server.stop(Duration::from_secs(120))?;
    let (calls, durations) = server.traced()?.context("strace left no output")?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(Traced {
        calls,
        durations,
        wall: r.wall,
        samples: r.samples_ok,
    })
}

fn run_argus(bin: &Path, dir: &Path, requests: &[Vec<Request>], strace: bool) -> Result<RunResult> {
    let port = argus_testkit::http::free_port()?;
    let data = dir.join("data");
    std::fs::create_dir_all(dir)?;
    let mut server = Server::start(argus_command(bin, &data, port), dir, port, "/ready", false)?;
    let before = Metrics::scrape(port)?;
    // ARGUS_BENCH_PERF=<file>: a CPU profile of the server during the load, call graphs
    // from DWARF (the release build keeps line tables, not frame pointers).
    let perf = match std::env::var_os("ARGUS_BENCH_PERF") {
        Some(out) => Some(
            Command::new("perf")
                .args(["record", "-F", "199", "--call-graph", "dwarf,16384", "-o"])
                .arg(&out)
                .arg("-p")
                .arg(server.pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf record")?,
        ),
        None => None,
    };
    let watch = [
        ("raft log", data.join(LOG_DIR)),
        ("store", data.join("tsdb")),
    ];
    let mut r = drive(&mut server, requests, &watch)?;
    if let Some(mut perf) = perf {
        // SAFETY: kill has no memory preconditions; perf is our child.
        unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
        let _ = perf.wait();
    }
    let after = Metrics::scrape(port)?;
    let fsyncs = after.get("argus_raft_fsyncs_total") - before.get("argus_raft_fsyncs_total");
    let secs =
        after.get("argus_raft_fsync_seconds_total") - before.get("argus_raft_fsync_seconds_total");
    let p99 = histogram_quantile(
        0.99,
        &after.buckets("argus_raft_fsync_duration_seconds_bucket"),
        &before.buckets("argus_raft_fsync_duration_seconds_bucket"),
    );
    r.own_fsyncs = Some((
        fsyncs as u64,
        secs / fsyncs.max(1.0),
        p99.unwrap_or(f64::NAN),
    ));
    r.stored = Some(after.get("argus_tsdb_samples_appended_total"));
    let refused = after.sum_prefix("argus_tsdb_samples_refused_total")
        + after.sum_prefix("argus_http_write_refused_total");
    if refused > 0.0 {
        r.notes.push(format!(
            "argus refused {refused} samples (see its /metrics)"
        ));
    }
    r.notes.push(format!(
        "argus: raft log {:.1} MB at the end of the load (its own gauge), {} entries committed",
        after.get("argus_raft_log_disk_bytes") / 1e6,
        after.get("argus_raft_entries_committed_total")
            - before.get("argus_raft_entries_committed_total")
    ));
    // Let background flushes settle, then stop cleanly and measure.
    wait_stable(&data, Duration::from_secs(3), Duration::from_secs(60));
    let stop = server.stop(Duration::from_secs(120))?;
    r.notes
        .push(format!("argus: stopped with SIGTERM in {stop:.1} s"));
    r.disk = argus_disk(&data);
    // Argus has no "compact now" endpoint, so the analogue of VictoriaMetrics's force
    // merge is done offline: flush every memtable and major-compact both databases.
    let t = Instant::now();
    let tables = compact_argus_offline(&data)?;
    r.notes.push(format!(
        "argus: offline flush + major compaction of the log and the store took {:.1} s; store tables after it: {tables}",
        t.elapsed().as_secs_f64()
    ));
    r.disk_compacted = Some(argus_disk(&data));
    if strace {
        println!("second pass under strace, for the fsync figures...");
        let cmd = |data: &Path, port: u16| argus_command(bin, data, port);
        r.traced = Some(traced_pass(&dir.join("traced"), "/ready", cmd, requests)?);
    }
    Ok(r)
}

/// The raft log's segment files, and the store's fjall database split into its journals
/// (`*.jnl`, the write-ahead tail, kept until fjall rotates them at 64 MB) and the rest
/// (tables, manifests).
fn argus_disk(data: &Path) -> Vec<DiskPart> {
    let mut parts = Vec::new();
    for (db, name) in [(LOG_DIR, "raft log"), ("tsdb", "store")] {
        let dir = data.join(db);
        let (mut journal_alloc, mut journal_len) = (0, 0);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "jnl") {
                let (a, l) = du(&e.path());
                journal_alloc += a;
                journal_len += l;
            }
        }
        let (alloc, len) = du(&dir);
        let files = if db == LOG_DIR { "segments" } else { "tables" };
        parts.push((
            format!("{name} {files}"),
            alloc.saturating_sub(journal_alloc),
            len.saturating_sub(journal_len),
            true,
        ));
        parts.push((format!("{name} journal"), journal_alloc, journal_len, true));
    }
    let (alloc, len) = du(&data.join("checkpoint"));
    parts.push(("checkpoint file".into(), alloc, len, true));
    let other = du(data).0.saturating_sub(parts.iter().map(|d| d.1).sum());
    parts.push(("other".into(), other, other, true));
    parts
}

/// What `Store::flush_and_compact` does for the store. The raft log's segment files need
/// nothing: a log compaction deletes whole segments at once.
fn compact_argus_offline(data: &Path) -> Result<String> {
    let tiers = Tiers::argus_defaults();
    let store = Store::open(data.join("tsdb"), StoreConfig::new(tiers.clone()))?;
    store.flush_and_compact()?;
    let usage = store.disk_usage()?;
    let checkpoint = std::fs::read(data.join("checkpoint"))
        .ok()
        .and_then(|cp| checkpoint_parts(&cp));
    drop(store);
    let mut parts: Vec<String> = tiers
        .iter()
        .zip(&usage.per_tier)
        .map(|((_, t), bytes)| {
            let step = t
                .step_ms()
                .map_or("raw".into(), |s| format!("{} s step", s / 1000));
            format!("{step} {:.2} MB", *bytes as f64 / 1e6)
        })
        .collect();
    let meta = usage.tables.saturating_sub(usage.per_tier.iter().sum());
    parts.push(format!(
        "index, metadata and checkpoint {:.2} MB",
        meta as f64 / 1e6
    ));
    if let Some(cp) = checkpoint {
        parts.push(format!("the checkpoint's parts: {cp}"));
    }
    Ok(parts.join(", "))
}

/// Sizes of the parts of the replica's checkpoint, uncompressed, for the report; None if
/// it does not decode.
fn checkpoint_parts(cp: &[u8]) -> Option<String> {
    let cp = argus_coordinator::state::replica::decode_checkpoint(cp).ok()?;
    let parts = [
        ("series index", &cp.index),
        ("head", &cp.head),
        ("agents", &cp.agents),
        ("aggregates", &cp.aggregates),
        ("fleet", &cp.fleet),
    ];
    Some(
        parts
            .iter()
            .map(|(name, b)| format!("{name} {:.2} MB", b.len() as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
            + " (uncompressed)",
    )
}

fn run_vm(dir: &Path, requests: &[Vec<Request>], strace: bool) -> Result<RunResult> {
    let port = argus_testkit::http::free_port()?;
    let data = dir.join("data");
    std::fs::create_dir_all(dir)?;
    let mut server = Server::start(vm_command(&data, port), dir, port, "/health", false)?;
    let watch = [
        ("data", data.join("data")),
        ("indexdb", data.join("indexdb")),
    ];
    let mut r = drive(&mut server, requests, &watch)?;
    // Flush the in-memory parts, merge everything, and wait until no merge runs.
    let t = Instant::now();
    http_get(port, "/internal/force_flush")?;
    http_get(port, "/internal/force_merge?partition_prefix=")?;
    std::thread::sleep(Duration::from_secs(1));
    let mut quiet = 0;
    while quiet < 3 && t.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_secs(1));
        let m = Metrics::scrape(port)?;
        let busy = m.get("vm_active_force_merges") + m.sum_prefix("vm_active_merges");
        quiet = if busy == 0.0 { quiet + 1 } else { 0 };
    }
    let m = Metrics::scrape(port)?;
    r.stored = Some(m.get("vm_rows_added_to_storage_total"));
    r.notes.push(format!(
        "vm: force flush + force merge done in {:.1} s; parts: {} small, {} big rows",
        t.elapsed().as_secs_f64(),
        m.get("vm_rows{type=\"storage/small\"}"),
        m.get("vm_rows{type=\"storage/big\"}"),
    ));
    let stop = server.stop(Duration::from_secs(120))?;
    r.notes
        .push(format!("vm: stopped with SIGTERM in {stop:.1} s"));
    if strace {
        println!("second pass under strace, for the fsync figures...");
        r.traced = Some(traced_pass(
            &dir.join("traced"),
            "/health",
            vm_command,
            requests,
        )?);
    }
    r.disk = vec![
        du_part(&data.join("data"), "data (parts)", true),
        du_part(&data.join("indexdb"), "indexdb", true),
        du_part(&data.join("cache"), "cache (not counted)", false),
    ];
    let other = du(&data)
        .0
        .saturating_sub(r.disk.iter().map(|d| d.1).sum::<u64>());
    r.disk
        .push(("other (metadata, locks)".into(), other, other, true));
    Ok(r)
}

/// Sends every shard's requests from its own thread, one in flight each, while a monitor
/// samples the allocated size of each of `watch` twice a second.
fn drive(
    server: &mut Server,
    requests: &[Vec<Request>],
    watch: &[(&str, PathBuf)],
) -> Result<RunResult> {
    let pid = server.pid;
    let Some(cpu0) = proc::cpu_seconds(pid) else {
        bail!("server (pid {pid}) exited: {}", server.log_tail());
    };
    let first = Mutex::new(None::<Instant>);
    let last_ok = Mutex::new(None::<Instant>);
    let results = Mutex::new(Vec::new());
    let failed = AtomicBool::new(false);
    server.window_start = Some(SystemTime::now());
    let done = AtomicBool::new(false);
    let during = Mutex::new(vec![Vec::new(); watch.len()]);
    std::thread::scope(|scope| {
        let (done, during) = (&done, &during);
        scope.spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                if let Ok(mut d) = during.lock() {
                    for (i, (_, dir)) in watch.iter().enumerate() {
                        d[i].push(du(dir).0);
                    }
                }
            }
        });
        let mut senders = Vec::new();
        for shard in requests {
            let (first, last_ok, results, failed) = (&first, &last_ok, &results, &failed);
            let port = server.port;
            senders.push(scope.spawn(move || {
                if let Ok(mut f) = first.lock() {
                    let now = Instant::now();
                    *f = Some(f.map_or(now, |f| f.min(now)));
                }
                let out = send_shard(
                    port,
                    shard.iter().map(|r| (r.body.as_slice(), r.samples)),
                    failed,
                    |_| {},
                );
                if let (Some(now), Ok(mut l)) = (out.last_ok, last_ok.lock()) {
                    *l = Some(l.map_or(now, |l| l.max(now)));
                }
                let (ok, failures, first_failure, retries) =
                    (out.ok, out.failures, out.first_failure, out.retries);
                if let Ok(mut r) = results.lock() {
                    r.push((ok, failures, first_failure, retries));
                }
            }));
        }
        for s in senders {
            let _ = s.join();
        }
        done.store(true, Ordering::Relaxed);
    });
    server.window_end = Some(SystemTime::now());
    let cpu = proc::cpu_seconds(pid).context("server exited during the load")? - cpu0;
    let peak_rss_mb = proc::peak_rss_bytes(pid).unwrap_or(0) as f64 / 1e6;
    let (first, last) = (
        first.into_inner().ok().flatten(),
        last_ok.into_inner().ok().flatten(),
    );
    let wall = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => bail!("no request succeeded; server log: {}", server.log_tail()),
    };
    let during = during.into_inner().unwrap_or_default();
    let mut r = RunResult {
        wall,
        cpu,
        peak_rss_mb,
        during: watch
            .iter()
            .zip(during)
            .map(|((name, _), sizes)| {
                let mean = sizes.iter().sum::<u64>() as f64 / sizes.len().max(1) as f64;
                (name.to_string(), mean, sizes.into_iter().max().unwrap_or(0))
            })
            .collect(),
        ..Default::default()
    };
    for (ok, failures, first_failure, retries) in results.into_inner().unwrap_or_default() {
        r.samples_ok += ok;
        r.requests_failed += failures;
        r.retries += retries;
        if r.first_failure.is_none() {
            r.first_failure = first_failure;
        }
    }
    println!(
        "{} samples acknowledged in {wall:.1} s ({:.0} samples/s), {} requests failed, {} retries",
        r.samples_ok,
        r.samples_ok as f64 / wall,
        r.requests_failed,
        r.retries
    );
    if let Some(f) = &r.first_failure {
        println!("first failure: {f}");
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------

fn report(load: &Workload, senders: usize, batch: usize, runs: &[(&str, &RunResult)]) {
    println!(
        "tsdb_compression: {} samples, {} series, {senders} senders x {batch} samples per request, same bodies to each server",
        load.total,
        load.series.len()
    );
    let f = |x: f64, p: usize| format!("{x:.p$}");
    let row = |name: &str, cell: &dyn Fn(&RunResult) -> String| {
        let cells: String = runs
            .iter()
            .map(|(_, r)| format!(" {:>16}", cell(r)))
            .collect();
        println!("{name:<44}{cells}");
    };
    let names: String = runs.iter().map(|(n, _)| format!(" {n:>16}")).collect();
    println!("{:<44}{names}", "");
    row("samples acknowledged (2xx)", &|r| r.samples_ok.to_string());
    row("samples stored (server's own counter)", &|r| {
        r.stored.map_or("-".into(), |s| f(s, 0))
    });
    row("requests failed / retried", &|r| {
        format!("{} / {}", r.requests_failed, r.retries)
    });
    row("wall s (first request to last 2xx)", &|r| f(r.wall, 2));
    let tput = |r: &RunResult| r.samples_ok as f64 / r.wall;
    row("samples/s appended", &|r| f(tput(r), 0));
    row("server cpu s during the load", &|r| f(r.cpu, 2));
    row("server peak RSS MB", &|r| f(r.peak_rss_mb, 1));
    let own = |r: &RunResult, what: usize| match r.own_fsyncs {
        Some((n, mean, p99)) => match what {
            0 => f(n as f64 / r.wall, 1),
            1 => f(mean * 1e3, 3),
            _ => f(p99 * 1e3, 3),
        },
        None => "n/a".into(),
    };
    row("fsyncs/s, server's own (Raft log)", &|r| own(r, 0));
    row("fsync mean ms, server's own", &|r| own(r, 1));
    row("fsync p99 ms, server's own (histogram)", &|r| own(r, 2));
    let traced = |r: &RunResult, what: usize| match &r.traced {
        Some(t) => match what {
            0 => f(t.calls.values().sum::<u64>() as f64 / t.wall, 1),
            1 => f(quantile(&t.durations, 0.5) * 1e3, 3),
            2 => f(quantile(&t.durations, 0.99) * 1e3, 3),
            3 => f(t.samples as f64 / t.wall, 0),
            _ => t
                .calls
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(" "),
        },
        None => "n/a".into(),
    };
    row("strace pass: samples/s (slowed by tracing)", &|r| {
        traced(r, 3)
    });
    row("strace pass: sync calls/s (all files)", &|r| traced(r, 0));
    row("strace pass: sync p50 ms", &|r| traced(r, 1));
    row("strace pass: sync p99 ms", &|r| traced(r, 2));
    row("strace pass: sync calls by name", &|r| traced(r, 4));
    println!(
        "disk (du: allocated MB, apparent MB, allocated bytes per sample; Argus as left by SIGTERM, then compacted offline; VictoriaMetrics after force flush + force merge and SIGTERM):"
    );
    for (who, r) in runs {
        let stages = [
            ("", Some(&r.disk)),
            ("compacted", r.disk_compacted.as_ref()),
        ];
        for (stage, parts) in stages {
            for (part, alloc, apparent, counted) in parts.into_iter().flatten() {
                let name = if stage.is_empty() {
                    part.clone()
                } else {
                    format!("{part}, {stage}")
                };
                println!(
                    "  {who:<17} {name:<45} {:>9.2} {:>9.2} {:>8.3}{}",
                    *alloc as f64 / 1e6,
                    *apparent as f64 / 1e6,
                    *alloc as f64 / load.total as f64,
                    if *counted { "" } else { "  (not counted)" }
                );
            }
        }
    }
    let per_sample = |bytes: u64| bytes as f64 / load.total as f64;
    row("bytes/sample on disk, as left at stop", &|r| {
        f(per_sample(counted(&r.disk)), 3)
    });
    row("bytes/sample on disk, after compaction", &|r| {
        f(per_sample(r.final_disk()), 3)
    });
    let store_only = |r: &RunResult| {
        let parts = r.disk_compacted.as_ref()?;
        Some(per_sample(
            parts
                .iter()
                .filter(|d| d.0.starts_with("store") || d.0 == "checkpoint file")
                .map(|d| d.1)
                .sum(),
        ))
    };
    row("bytes/sample, store + checkpoint, compacted", &|r| {
        store_only(r).map_or("-".into(), |b| f(b, 3))
    });
    for (who, r) in runs {
        for (name, mean, max) in &r.during {
            println!(
                "{who}: {name} during the load: mean {:.1} MB, max {:.1} MB",
                mean / 1e6,
                *max as f64 / 1e6
            );
        }
    }
    for (_, r) in runs {
        for n in &r.notes {
            println!("{n}");
        }
    }
    let [(_, a), (_, v)] = runs else {
        return;
    };
    if v.traced.is_none() {
        println!(
            "vm fsync p99: n/a: VictoriaMetrics keeps no fsync metrics and strace was not used"
        );
    }
    let vm_bps = per_sample(v.final_disk());
    // The log's steady-state size: its mean size over the load (a log compacted right
    // after a checkpoint holds nothing, one just before holds a whole checkpoint interval).
    let log_mean = a.during.iter().find(|d| d.0 == "raft log").map(|d| d.1);
    if let (Some(log), Some(store)) = (log_mean, store_only(a)) {
        println!(
            "ratio bytes/sample argus / victoria-metrics   = {:.2}  (target <= 1.0; argus: store compacted + checkpoint file + raft log at its mean size during the load; vm: force-merged data + indexdb)",
            (store + per_sample(log as u64)) / vm_bps
        );
    }
    println!(
        "      argus as left at stop / vm              = {:.2}",
        per_sample(counted(&a.disk)) / vm_bps
    );
    println!(
        "      argus store + log both compacted / vm   = {:.2}",
        per_sample(a.final_disk()) / vm_bps
    );
    if let Some(store) = store_only(a) {
        println!(
            "      argus store + checkpoint, compacted / vm = {:.2}",
            store / vm_bps
        );
    }
    if let Some(parts) = &a.disk_compacted
        && let Some(tables) = parts.iter().find(|d| d.0 == "store tables")
    {
        println!(
            "      argus store tables alone (no journal) / vm = {:.2}",
            per_sample(tables.1) / vm_bps
        );
    }
    println!(
        "ratio throughput   argus / victoria-metrics   = {:.2}  (target >= 0.5)",
        tput(a) / tput(v)
    );
}

// ---------------------------------------------------------------------------------
// Small HTTP/1.1 client (keep-alive, Content-Length and chunked bodies)
// ---------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------
// Files, processes, build
// ---------------------------------------------------------------------------------

/// (allocated bytes, apparent bytes) of everything under `p`.
fn du(p: &Path) -> (u64, u64) {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return (0, 0);
    };
    let mut total = (meta.blocks() * 512, meta.len());
    if meta.is_dir() {
        total = (0, 0);
        if let Ok(dir) = std::fs::read_dir(p) {
            for e in dir.flatten() {
                let (a, b) = du(&e.path());
                total.0 += a;
                total.1 += b;
            }
        }
    }
    total
}

fn du_part(p: &Path, name: &str, counted: bool) -> (String, u64, u64, bool) {
    let (alloc, apparent) = du(p);
    (name.to_string(), alloc, apparent, counted)
}

/// Waits until the allocated size of `dir` has not changed for `quiet`, at most `limit`.
fn wait_stable(dir: &Path, quiet: Duration, limit: Duration) {
    let t = Instant::now();
    let mut last = du(dir).0;
    let mut since = Instant::now();
    while t.elapsed() < limit && since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(500));
        let now = du(dir).0;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}
