//! Agent ingest over QUIC and mutual TLS into `argus serve`, beside Debian's
//! `victoria-metrics` fed the same samples by remote write, in one run.
//!
//! The load generator ([`argus_benches::loadgen`]) plays N agents: each enrolls with a
//! join token minted through the admin API (from its own loopback source address
//! among `127.1.x.y`, ten per address, because the coordinator limits enrollment per
//! source), opens its own mutual-TLS connection, defines 500 series named as
//! node_exporter and cAdvisor name them (values from `tsdb::mix`), and writes one batch
//! of all of them per interval: agent `i` of `n` at `i/n` of the interval
//! (`ARGUS_BENCH_ALIGNED=1`: all at once), stamped with the interval's grid tick.
//! `argus serve` runs as its own process (release build), so its CPU and RSS come from
//! /proc; the generator's own CPU is read the same way and printed as a share of the
//! machine's cores.
//!
//! Scenarios, each on a fresh data directory:
//! 1. **fleet**: 1000 agents × 500 series every 10 s (50 k samples/s), 120 s.
//! 2. **fast**: 100 agents × 500 series every 1 s (50 k samples/s), 60 s. 500 series
//!    because that is what a host with a few containers has; the rate is the fleet's,
//!    in ten times fewer and ten times more frequent batches.
//! 3. **saturation**: 100 agents × 500 series, the interval halved every 10 s from 1 s
//!    until acknowledgements fall behind (acknowledged rate under 95 % of the offered
//!    one, more than 1 % of writes late because the in-flight window was full, or p99
//!    over 1 s), then 10 s as fast as each agent's in-flight window allows.
//!
//! VictoriaMetrics gets, on a fresh instance per scenario, exactly the samples Argus
//! acknowledged (labels with `instance` set to the agent's host, as the coordinator
//! sets it; same timestamps and values), one remote-write request per batch (500
//! samples, one host's collection): in scenarios 1 and 2 at the same moments relative
//! to the start, from 8 sender threads; in scenario 3 as fast as 8 senders with one
//! request in flight each can push them.
//!
//! Printed: samples/s acknowledged, ack latency p50/p99 (from writing a batch to
//! reading its `Ack`, which the coordinator sends once the entry is committed, fsynced
//! and applied), server CPU and RSS, RSS per active series, the generator's CPU, and
//! the targets: acknowledged throughput ≥ 1.0× VictoriaMetrics's (saturation), p99 ack
//! ≤ 50 ms at 50 k samples/s (fleet and fast), RSS per active series ≤
//! VictoriaMetrics's at the same series count (fleet).
//!
//! Knobs: `ARGUS_BENCH_QUICK=1` (a smoke run under a minute: fewer agents, seconds
//! per phase), `ARGUS_BENCH_AGENTS` (fleet), `ARGUS_BENCH_ONLY=fleet|fast|saturation`,
//! `ARGUS_BENCH_ALIGNED=1`, `ARGUS_BENCH_SECONDS` (length of the fleet and fast runs).
//!
//! Run: `cargo bench -p argus-benches --bench quic_ingest`
//! (needs `apt-get install victoria-metrics`).

use anyhow::{Context, Result, bail};
use argus_benches::fleet::Admin;
use argus_benches::http::Metrics;
use argus_benches::loadgen::{self, Agent, Pace, PhaseStats, Values, Written};
use argus_benches::remote_write::send_shard;
use argus_benches::server::{Server, VM_BIN, argus_command, vm_command};
use argus_benches::stats::quantile;
use argus_common::model::{Labels, MetricType, SeriesRef};
use argus_coordinator::api::remote_write::{TimeSeries, WriteRequest, encode_body};
use argus_coordinator::tsdb::mix::{self, Shape};
use argus_testkit::bench::{TempDir, env_usize};
use argus_testkit::proc;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const SERIES: usize = 500;
const SEED: u64 = 20_251_122;
/// Agents per enrollment source address: the coordinator's default per-minute limit.
const PER_SOURCE: usize = 10;
/// Batches each agent may have unanswered (the agent's default).
const IN_FLIGHT: usize = argus_common::quic::DEFAULT_IN_FLIGHT;
/// Client endpoints (UDP sockets) the data connections share.
const ENDPOINTS: usize = 4;
/// Remote-write sender threads for VictoriaMetrics.
const VM_SENDERS: usize = 8;
/// Rows of each agent's value table (cycled).
const VALUE_ROWS: usize = 16;
/// The latency target, at 50 k samples/s.
const P99_TARGET_S: f64 = 0.050;

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("quic_ingest: bench");
        return Ok(());
    }
    if !Path::new(VM_BIN).exists() {
        println!(
            "quic_ingest: {VM_BIN} not found; install it with `apt-get install victoria-metrics` and run again"
        );
        return Ok(());
    }
    let quick = env_usize("ARGUS_BENCH_QUICK", 0) != 0;
    let only = std::env::var("ARGUS_BENCH_ONLY").unwrap_or_default();
    let aligned = env_usize("ARGUS_BENCH_ALIGNED", 0) != 0;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let argus_bin = argus_testkit::build::release_binary("argus-coordinator", "argus")
        .map_err(anyhow::Error::msg)?;
    let work = TempDir::new("argus-bench-quic")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    let secs = |full: usize, q: usize| {
        Duration::from_secs(env_usize("ARGUS_BENCH_SECONDS", if quick { q } else { full }) as u64)
    };
    let scenarios = [
        Scenario {
            name: "fleet",
            agents: env_usize("ARGUS_BENCH_AGENTS", if quick { 100 } else { 1000 }),
            interval: Duration::from_secs(10),
            duration: secs(120, 8),
        },
        Scenario {
            name: "fast",
            agents: if quick { 20 } else { 100 },
            interval: Duration::from_secs(1),
            duration: secs(60, 5),
        },
    ];
    println!(
        "quic_ingest: {} mode, {cores} cores, load average {}",
        if quick { "quick" } else { "full" },
        load_average()
    );
    let mut paced = Vec::new();
    let mut saturation: Option<(f64, f64)> = None;
    for sc in &scenarios {
        if !only.is_empty() && only != sc.name {
            continue;
        }
        let dir = work.path().join(sc.name);
        let load = Load::new(sc.agents, sc.interval);
        let a = run_argus_paced(&rt, &argus_bin, &dir, sc, &load, aligned, cores)?;
        let v = run_vm(&dir.join("vm"), &load, &a.phase.log, true, cores)?;
        print_paced(sc, &a, &v, cores);
        paced.push((sc.name, a, v));
    }
    if only.is_empty() || only == "saturation" {
        let agents = if quick { 20 } else { 100 };
        let step = if quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        let dir = work.path().join("saturation");
        let load = Load::new(agents, Duration::from_secs(1));
        let s = run_saturation(&rt, &argus_bin, &dir, &load, step, cores)?;
        let log: Vec<Written> = s
            .steps
            .iter()
            .flat_map(|st| st.1.phase.log.clone())
            .collect();
        let v = run_vm(&dir.join("vm"), &load, &log, false, cores)?;
        print_saturation(agents, &s, &v, cores);
        if let Some((_, best)) = s.best() {
            saturation = Some((best.phase.acked_rate(), v.rate()));
        }
    }
    println!("\nsummary (targets):");
    if let Some((a, v)) = saturation {
        println!(
            "  saturation: acknowledged throughput argus {a:.0} / victoria-metrics {v:.0} samples/s = {:.2} (target >= 1.0): {}",
            a / v,
            met(a >= v)
        );
    }
    for (name, a, v) in &paced {
        let p99 = quantile(&a.phase.latencies, 0.99);
        println!(
            "  {name}: p99 ack at {:.0} samples/s = {:.1} ms (target <= {:.0} ms at 50 k/s): {}",
            a.phase.acked_rate(),
            p99 * 1e3,
            P99_TARGET_S * 1e3,
            met(p99 <= P99_TARGET_S)
        );
        let (ra, rv) = (a.rss_per_series(), v.rss_end as f64 / a.series as f64);
        println!(
            "  {name}: RSS per active series argus {:.2} KB / victoria-metrics {:.2} KB = {:.2} (target <= 1.0): {}",
            ra / 1e3,
            rv / 1e3,
            ra / rv,
            met(ra <= rv)
        );
    }
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

struct Scenario {
    name: &'static str,
    agents: usize,
    interval: Duration,
    duration: Duration,
}

// ---------------------------------------------------------------------------------
// The samples
// ---------------------------------------------------------------------------------

/// Every simulated agent's host name, series and value table.
struct Load {
    hosts: Vec<String>,
    /// Per agent: (name, labels without `instance`, type) of each series, ref = index + 1.
    series: Vec<Vec<(String, Labels, MetricType)>>,
    values: Values,
}

impl Load {
    fn new(agents: usize, interval: Duration) -> Load {
        let hosts: Vec<String> = (0..agents).map(|i| format!("bench-{i:05}")).collect();
        let mut series = Vec::with_capacity(agents);
        let mut values = Vec::with_capacity(agents);
        for a in 0..agents {
            let specs = mix::realistic_mix(SERIES, SEED ^ (a as u64).wrapping_mul(0x9e37));
            series.push(
                specs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| series_of(i, s.shape))
                    .collect(),
            );
            let cols: Vec<Vec<(i64, f64)>> = specs
                .iter()
                .map(|s| {
                    let spec = mix::SeriesSpec {
                        interval_ms: interval.as_millis() as i64,
                        jitter: false,
                        ..*s
                    };
                    mix::generate(&spec, 0, VALUE_ROWS)
                })
                .collect();
            values.push(
                (0..VALUE_ROWS)
                    .map(|r| {
                        cols.iter()
                            .enumerate()
                            .map(|(i, c)| (i as SeriesRef + 1, c[r].1))
                            .collect()
                    })
                    .collect(),
            );
        }
        Load {
            hosts,
            series,
            values: Arc::new(values),
        }
    }

    fn series_count(&self) -> usize {
        self.series.iter().map(Vec::len).sum()
    }

    /// The remote-write body of one written batch: the same samples, `instance` set to
    /// the agent's host as the coordinator sets it.
    fn remote_write_body(&self, w: &Written) -> Result<(Vec<u8>, usize)> {
        let host = &self.hosts[w.agent];
        let row = &self.values[w.agent][w.row];
        let timeseries = self.series[w.agent]
            .iter()
            .zip(row)
            .map(|((name, labels, _), (_, v))| {
                let mut l: Vec<(String, String)> = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                l.push(("__name__".into(), name.clone()));
                l.push(("instance".into(), host.clone()));
                l.sort();
                TimeSeries {
                    labels: l,
                    samples: vec![(w.ts, *v)],
                    ..Default::default()
                }
            })
            .collect();
        let req = WriteRequest {
            timeseries,
            metadata: Vec::new(),
        };
        Ok((encode_body(&req)?, row.len()))
    }
}

/// A series named as node_exporter or cAdvisor would name one of its shape; `i` keeps
/// the label sets of one host distinct.
fn series_of(i: usize, shape: Shape) -> (String, Labels, MetricType) {
    use MetricType::{Counter, Gauge};
    let (name, kind, pairs): (&str, MetricType, Vec<(&str, String)>) = match shape {
        Shape::FractionalCounter => (
            "node_cpu_seconds_total",
            Counter,
            vec![("cpu", i.to_string()), ("mode", "user".into())],
        ),
        Shape::IntegerCounter => (
            "node_network_receive_bytes_total",
            Counter,
            vec![("device", format!("eth{i}"))],
        ),
        Shape::SparseCounter => (
            "node_network_receive_errs_total",
            Counter,
            vec![("device", format!("eth{i}"))],
        ),
        Shape::BytesGauge => (
            "container_memory_working_set_bytes",
            Gauge,
            vec![
                ("name", format!("app-{i}")),
                ("image", "registry/app:1".into()),
            ],
        ),
        Shape::DecimalGauge => (
            "node_hwmon_temp_celsius",
            Gauge,
            vec![("sensor", format!("temp{i}"))],
        ),
        Shape::ConstantGauge => (
            "node_filesystem_size_bytes",
            Gauge,
            vec![
                ("mountpoint", format!("/srv/{i}")),
                ("fstype", "ext4".into()),
            ],
        ),
        Shape::FloatGauge => (
            "container_cpu_load_ratio",
            Gauge,
            vec![("name", format!("app-{i}"))],
        ),
    };
    let job = if name.starts_with("container_") {
        "cadvisor"
    } else {
        "node"
    };
    let mut pairs = pairs;
    pairs.push(("job", job.into()));
    (name.to_string(), Labels::from_pairs(pairs), kind)
}

// ---------------------------------------------------------------------------------
// Argus
// ---------------------------------------------------------------------------------

/// A running `argus serve` with enrolled, connected simulated agents.
struct Fleet {
    server: Server,
    agents: Vec<Agent>,
    endpoints: Vec<quinn::Endpoint>,
    enroll_secs: f64,
    connect_secs: f64,
    /// Server RSS once every agent is connected and its definitions applied.
    rss_connected: u64,
}

impl Fleet {
    fn start(rt: &tokio::runtime::Runtime, bin: &Path, dir: &Path, load: &Load) -> Result<Fleet> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        let port = argus_testkit::http::free_port()?;
        let server = Server::start(argus_command(bin, &data, port), dir, port, "/ready", false)?;
        let admin = Admin::from_data_dir(port, &data)?;
        let join = admin.join_token(load.hosts.len() as u32, "2h")?;
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let t = Instant::now();
        let enrolled = rt
            .block_on(loadgen::enroll_all(to, &join, &load.hosts, PER_SOURCE, 16))
            .context("enrolling the simulated agents")?;
        let enroll_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let endpoints = {
            let _runtime = rt.enter();
            loadgen::data_endpoints(ENDPOINTS)?
        };
        let (agents, reconnects) = rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            let gate = Arc::new(tokio::sync::Semaphore::new(16));
            for (i, e) in enrolled.into_iter().enumerate() {
                let ep = endpoints[i % endpoints.len()].clone();
                let defs = loadgen::series_defs(&load.series[i]);
                let gate = gate.clone();
                tasks.spawn(async move {
                    let _p = gate.acquire_owned().await?;
                    let inc = SEED.wrapping_mul(i as u64 + 1) | 1;
                    // As the agent does, a failed handshake is tried again after a pause
                    // (on a busy 2-core machine a handshake can outlast the 3 s idle timeout).
                    let mut attempt = 0;
                    loop {
                        match loadgen::connect(&ep, to, &e, &defs, IN_FLIGHT, inc).await {
                            Ok(a) => return anyhow::Ok((i, a, attempt)),
                            Err(err) if attempt < 5 => {
                                attempt += 1;
                                tracing_note(&e.host, attempt, &err);
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(err) => return Err(err),
                        }
                    }
                });
            }
            let mut out: Vec<Option<Agent>> = (0..load.hosts.len()).map(|_| None).collect();
            let mut reconnects = 0;
            while let Some(r) = tasks.join_next().await {
                let (i, a, retried) = r??;
                reconnects += retried;
                out[i] = Some(a);
            }
            anyhow::Ok((out.into_iter().flatten().collect::<Vec<_>>(), reconnects))
        })?;
        if reconnects > 0 {
            println!("{reconnects} data handshakes were tried again");
        }
        wait_applied(port, Duration::from_secs(300))?;
        let connect_secs = t.elapsed().as_secs_f64();
        let rss_connected = proc::rss_bytes(server.pid).unwrap_or(0);
        Ok(Fleet {
            server,
            agents,
            endpoints,
            enroll_secs,
            connect_secs,
            rss_connected,
        })
    }

    fn phase(
        &mut self,
        rt: &tokio::runtime::Runtime,
        load: &Load,
        pace: Pace,
        duration: Duration,
        cores: usize,
    ) -> Result<Measured> {
        let pid = self.server.pid;
        let me = std::process::id();
        let (cpu0, gen0, t) = (
            proc::cpu_seconds(pid).context("argus exited")?,
            proc::cpu_seconds(me).unwrap_or(0.0),
            Instant::now(),
        );
        let agents = std::mem::take(&mut self.agents);
        let drain = Duration::from_secs(120);
        let (agents, phase) = rt.block_on(loadgen::run_phase(
            agents,
            load.values.clone(),
            pace,
            duration,
            drain,
        ))?;
        self.agents = agents;
        let wall = t.elapsed().as_secs_f64();
        let cpu = proc::cpu_seconds(pid).context("argus exited during the load")? - cpu0;
        let gen_cpu = proc::cpu_seconds(me).unwrap_or(0.0) - gen0;
        Ok(Measured {
            phase,
            wall,
            server_cpu: cpu,
            gen_share: gen_cpu / (wall * cores as f64),
            rss_end: proc::rss_bytes(pid).unwrap_or(0),
            rss_peak: proc::peak_rss_bytes(pid).unwrap_or(0),
        })
    }

    fn stop(mut self, rt: &tokio::runtime::Runtime) -> Result<(Metrics, f64)> {
        let metrics = Metrics::scrape(self.server.port)?;
        for a in &self.agents {
            a.conn.close(argus_common::quic::close::DONE, b"bench done");
        }
        rt.block_on(async {
            for ep in &self.endpoints {
                let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
            }
        });
        let stop = self.server.stop(Duration::from_secs(120))?;
        Ok((metrics, stop))
    }
}

/// Says why a simulated agent connects again.
fn tracing_note(host: &str, attempt: usize, err: &anyhow::Error) {
    println!(
        "{host}: connecting again (attempt {}) after: {err:#}",
        attempt + 1
    );
}

/// Waits until the node has applied everything it committed and its applied index has
/// stood still for a second (the agents' definitions are in).
fn wait_applied(port: u16, limit: Duration) -> Result<()> {
    let t = Instant::now();
    let mut last = (-1.0, Instant::now());
    while t.elapsed() < limit {
        let m = Metrics::scrape(port)?;
        let applied = m.get("argus_raft_applied_index");
        if m.get("argus_raft_apply_lag_entries") == 0.0 && applied == last.0 {
            if last.1.elapsed() >= Duration::from_secs(1) {
                return Ok(());
            }
        } else {
            last = (applied, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the node was still applying after {limit:?}")
}

/// One measured phase of the load on the server.
struct Measured {
    phase: PhaseStats,
    wall: f64,
    server_cpu: f64,
    gen_share: f64,
    rss_end: u64,
    rss_peak: u64,
}

struct ArgusPaced {
    m: Measured,
    phase: PhaseStats,
    series: usize,
    enroll_secs: f64,
    connect_secs: f64,
    rss_connected: u64,
    metrics: Metrics,
    stop_secs: f64,
}

impl ArgusPaced {
    fn rss_per_series(&self) -> f64 {
        self.m.rss_end as f64 / self.series as f64
    }
}

fn run_argus_paced(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    sc: &Scenario,
    load: &Load,
    aligned: bool,
    cores: usize,
) -> Result<ArgusPaced> {
    println!(
        "\n--- {}: {} agents x {SERIES} series every {:?} for {:?} ---",
        sc.name, sc.agents, sc.interval, sc.duration
    );
    let mut fleet = Fleet::start(rt, bin, dir, load)?;
    println!(
        "enrolled {} agents in {:.1} s from {} loopback addresses; sessions and {} series definitions in {:.1} s",
        fleet.agents.len(),
        fleet.enroll_secs,
        sc.agents.div_ceil(PER_SOURCE),
        load.series_count(),
        fleet.connect_secs
    );
    let pace = Pace::Every {
        interval: sc.interval,
        aligned,
    };
    let mut m = fleet.phase(rt, load, pace, sc.duration, cores)?;
    let (enroll_secs, connect_secs, rss_connected) =
        (fleet.enroll_secs, fleet.connect_secs, fleet.rss_connected);
    let (metrics, stop_secs) = fleet.stop(rt)?;
    let phase = std::mem::take(&mut m.phase);
    Ok(ArgusPaced {
        m,
        phase,
        series: load.series_count(),
        enroll_secs,
        connect_secs,
        rss_connected,
        metrics,
        stop_secs,
    })
}

struct Saturation {
    /// (nominal interval, or None when unpaced; what the step measured)
    steps: Vec<(Option<Duration>, Measured)>,
    series: usize,
}

impl Saturation {
    fn best(&self) -> Option<&(Option<Duration>, Measured)> {
        self.steps
            .iter()
            .max_by(|a, b| a.1.phase.acked_rate().total_cmp(&b.1.phase.acked_rate()))
    }
}

/// Whether a step's acknowledgements kept up with what it was asked to offer.
fn behind(m: &Measured, nominal: f64) -> bool {
    let p = &m.phase;
    p.acked_rate() < 0.95 * nominal
        || p.late_writes * 100 > p.batches
        || quantile(&p.latencies, 0.99) > 1.0
        || p.unanswered > 0
}

fn run_saturation(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    load: &Load,
    step: Duration,
    cores: usize,
) -> Result<Saturation> {
    let agents = load.hosts.len();
    println!(
        "\n--- saturation: {agents} agents x {SERIES} series, interval halved every {step:?} from 1 s until acknowledgements fall behind, then unpaced ---"
    );
    let mut fleet = Fleet::start(rt, bin, dir, load)?;
    println!(
        "enrolled {agents} agents in {:.1} s; sessions and {} series definitions in {:.1} s",
        fleet.enroll_secs,
        load.series_count(),
        fleet.connect_secs
    );
    println!(
        "{:>10} {:>12} {:>12} {:>12} {:>9} {:>9} {:>7} {:>9} {:>10} {:>8} {:>8}",
        "interval",
        "nominal/s",
        "offered/s",
        "acked/s",
        "p50 ms",
        "p99 ms",
        "late %",
        "retries",
        "argus cpu",
        "gen cpu",
        "reconn"
    );
    let mut steps = Vec::new();
    let mut interval = Duration::from_secs(1);
    loop {
        let nominal = (agents * SERIES) as f64 / interval.as_secs_f64();
        let pace = Pace::Every {
            interval,
            aligned: false,
        };
        let m = fleet.phase(rt, load, pace, step, cores)?;
        print_step(&format!("{:?}", interval), nominal, &m, cores);
        let stop = behind(&m, nominal) || interval < Duration::from_millis(8);
        steps.push((Some(interval), m));
        if stop {
            break;
        }
        interval /= 2;
    }
    let m = fleet.phase(rt, load, Pace::Unpaced, step, cores)?;
    print_step("unpaced", f64::NAN, &m, cores);
    steps.push((None, m));
    let (metrics, _) = fleet.stop(rt)?;
    let refused = metrics.sum_prefix("argus_tsdb_samples_refused_total");
    if refused > 0.0 {
        println!("argus refused {refused} samples (see argus_tsdb_samples_refused_total)");
    }
    Ok(Saturation {
        steps,
        series: load.series_count(),
    })
}

fn print_step(name: &str, nominal: f64, m: &Measured, cores: usize) {
    let p = &m.phase;
    println!(
        "{:>10} {:>12.0} {:>12.0} {:>12.0} {:>9.1} {:>9.1} {:>7.1} {:>9} {:>9.0}% {:>7.0}% {:>8}",
        name,
        nominal,
        p.offered_rate(),
        p.acked_rate(),
        quantile(&p.latencies, 0.5) * 1e3,
        quantile(&p.latencies, 0.99) * 1e3,
        100.0 * p.late_writes as f64 / p.batches.max(1) as f64,
        p.retries,
        100.0 * m.server_cpu / (m.wall * cores as f64),
        100.0 * m.gen_share,
        p.reconnects
    );
}

// ---------------------------------------------------------------------------------
// VictoriaMetrics
// ---------------------------------------------------------------------------------

struct VmRun {
    samples_ok: usize,
    failures: usize,
    first_failure: Option<String>,
    retries: usize,
    /// First request to last 2xx.
    wall: f64,
    cpu: f64,
    rss_end: u64,
    rss_peak: u64,
    gen_share: f64,
    late: usize,
}

impl VmRun {
    fn rate(&self) -> f64 {
        self.samples_ok as f64 / self.wall.max(1e-9)
    }
}

/// Sends the samples of `log` to a fresh VictoriaMetrics: each batch as one request,
/// at its moment relative to the start when `paced`, else as fast as the senders go.
/// Sender `t` sends the batches of agents `a % VM_SENDERS == t`, in order.
fn run_vm(dir: &Path, load: &Load, log: &[Written], paced: bool, cores: usize) -> Result<VmRun> {
    std::fs::create_dir_all(dir)?;
    let t = Instant::now();
    let mut shards: Vec<Vec<(Duration, Vec<u8>, usize)>> = vec![Vec::new(); VM_SENDERS];
    std::thread::scope(|s| -> Result<()> {
        let parts: Vec<_> = (0..VM_SENDERS)
            .map(|k| {
                s.spawn(move || -> Result<Vec<(Duration, Vec<u8>, usize)>> {
                    log.iter()
                        .filter(|w| w.agent % VM_SENDERS == k)
                        .map(|w| load.remote_write_body(w).map(|(b, n)| (w.at, b, n)))
                        .collect()
                })
            })
            .collect();
        for (k, p) in parts.into_iter().enumerate() {
            shards[k] = p
                .join()
                .map_err(|_| anyhow::anyhow!("encoder panicked"))??;
        }
        Ok(())
    })?;
    let bytes: usize = shards.iter().flatten().map(|r| r.1.len()).sum();
    println!(
        "victoria-metrics: {} requests ({:.1} MB of snappy bodies) encoded in {:.1} s; sending {}",
        log.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        if paced {
            "at the moments argus got them"
        } else {
            "as fast as 8 senders go"
        }
    );
    let port = argus_testkit::http::free_port()?;
    let mut server = Server::start(
        vm_command(&dir.join("data"), port),
        dir,
        port,
        "/health",
        false,
    )?;
    let pid = server.pid;
    let me = std::process::id();
    let cpu0 = proc::cpu_seconds(pid).context("victoria-metrics exited")?;
    let gen0 = proc::cpu_seconds(me).unwrap_or(0.0);
    let give_up = AtomicBool::new(false);
    let start = Instant::now();
    let outcomes: Vec<(argus_benches::remote_write::ShardOutcome, usize)> =
        std::thread::scope(|s| {
            let handles: Vec<_> = shards
                .iter()
                .map(|shard| {
                    let give_up = &give_up;
                    s.spawn(move || {
                        let mut late = 0;
                        let out = send_shard(
                            port,
                            shard.iter().map(|r| (r.1.as_slice(), r.2)),
                            give_up,
                            |i| {
                                if paced {
                                    let due = start + shard[i].0;
                                    let now = Instant::now();
                                    if now < due {
                                        std::thread::sleep(due - now);
                                    } else if now - due > Duration::from_millis(100) {
                                        late += 1;
                                    }
                                }
                            },
                        );
                        (out, late)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
    let wall_all = start.elapsed().as_secs_f64();
    let cpu = proc::cpu_seconds(pid).context("victoria-metrics exited during the load")? - cpu0;
    let gen_cpu = proc::cpu_seconds(me).unwrap_or(0.0) - gen0;
    let last = outcomes.iter().filter_map(|o| o.0.last_ok).max();
    let mut r = VmRun {
        samples_ok: 0,
        failures: 0,
        first_failure: None,
        retries: 0,
        wall: last.map_or(wall_all, |l| l.duration_since(start).as_secs_f64()),
        cpu,
        rss_end: proc::rss_bytes(pid).unwrap_or(0),
        rss_peak: proc::peak_rss_bytes(pid).unwrap_or(0),
        gen_share: gen_cpu / (wall_all * cores as f64),
        late: 0,
    };
    for (o, late) in outcomes {
        r.samples_ok += o.ok;
        r.failures += o.failures;
        r.retries += o.retries;
        r.late += late;
        if r.first_failure.is_none() {
            r.first_failure = o.first_failure;
        }
    }
    if let Some(f) = &r.first_failure {
        println!("victoria-metrics: first failure: {f}");
    }
    server.stop(Duration::from_secs(120))?;
    Ok(r)
}

// ---------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------

fn print_paced(sc: &Scenario, a: &ArgusPaced, v: &VmRun, cores: usize) {
    let p = &a.phase;
    let offered = (sc.agents * SERIES) as f64 / sc.interval.as_secs_f64();
    println!(
        "{}: {} agents x {SERIES} series every {:?} = {:.0} samples/s offered, {} active series, {:.0} s",
        sc.name,
        sc.agents,
        sc.interval,
        offered,
        a.series,
        sc.duration.as_secs_f64()
    );
    let row = |name: &str, argus: String, vm: String| {
        println!("  {name:<44} {argus:>18} {vm:>18}");
    };
    row("", "argus (QUIC)".into(), "victoria-metrics".into());
    row(
        "samples written / acknowledged (2xx)",
        format!("{} / {}", p.points_written, p.points_acked),
        format!("{} / {}", p.points_written, v.samples_ok),
    );
    row(
        "samples/s acknowledged",
        format!("{:.0}", p.acked_rate()),
        format!("{:.0}", v.rate()),
    );
    row(
        "ack latency p50 / p99 ms",
        format!(
            "{:.1} / {:.1}",
            quantile(&p.latencies, 0.5) * 1e3,
            quantile(&p.latencies, 0.99) * 1e3
        ),
        "-".into(),
    );
    let steady = p.latencies_after(sc.interval.as_secs_f64());
    row(
        "ack p50 / p99 ms after the first interval",
        format!(
            "{:.1} / {:.1}",
            quantile(&steady, 0.5) * 1e3,
            quantile(&steady, 0.99) * 1e3
        ),
        "-".into(),
    );
    row(
        "ack latency max ms",
        format!(
            "{:.1}",
            p.latencies.iter().copied().fold(0.0, f64::max) * 1e3
        ),
        "-".into(),
    );
    row(
        "late writes / requests (> 100 ms after slot)",
        p.late_writes.to_string(),
        v.late.to_string(),
    );
    row(
        "connections lost and reopened, acks lost",
        format!("{} {}", p.reconnects, p.acked_unmeasured),
        "-".into(),
    );
    row(
        "retries, refused samples, unanswered batches",
        format!("{} {} {}", p.retries, p.points_refused, p.unanswered),
        format!("{} - {}", v.retries, v.failures),
    );
    let pct = |cpu: f64, wall: f64| format!("{:.1}%", 100.0 * cpu / (wall * cores as f64));
    row(
        &format!("server CPU (share of {cores} cores)"),
        pct(a.m.server_cpu, a.m.wall),
        pct(v.cpu, v.wall),
    );
    row(
        "server CPU ms per 1000 samples",
        format!("{:.2}", a.m.server_cpu * 1e6 / p.points_acked.max(1) as f64),
        format!("{:.2}", v.cpu * 1e6 / v.samples_ok.max(1) as f64),
    );
    row(
        "server RSS MB at the end / peak",
        format!(
            "{:.1} / {:.1}",
            a.m.rss_end as f64 / 1e6,
            a.m.rss_peak as f64 / 1e6
        ),
        format!(
            "{:.1} / {:.1}",
            v.rss_end as f64 / 1e6,
            v.rss_peak as f64 / 1e6
        ),
    );
    row(
        "RSS per active series KB (end)",
        format!("{:.2}", a.rss_per_series() / 1e3),
        format!("{:.2}", v.rss_end as f64 / a.series as f64 / 1e3),
    );
    row(
        "generator CPU (share of the cores)",
        format!("{:.1}%", 100.0 * a.m.gen_share),
        format!("{:.1}%", 100.0 * v.gen_share),
    );
    println!(
        "  argus: enrollment {:.1} s, sessions + definitions {:.1} s, RSS with every agent connected and defined {:.1} MB, stopped in {:.1} s",
        a.enroll_secs,
        a.connect_secs,
        a.rss_connected as f64 / 1e6,
        a.stop_secs
    );
    println!(
        "  argus: /metrics says {} samples accepted over QUIC, {} batches acked, {} retried, {} series, {} fsyncs",
        a.metrics.get("argus_ingest_samples_accepted_total"),
        a.metrics.get("argus_ingest_batches_acked_total"),
        a.metrics.get("argus_ingest_batches_retried_total"),
        a.metrics.get("argus_tsdb_series"),
        a.metrics.get("argus_raft_fsyncs_total")
    );
    let p99 = quantile(&p.latencies, 0.99);
    println!(
        "  p99 ack {:.1} ms at {:.0} samples/s (target <= {:.0} ms at 50 k/s): {}",
        p99 * 1e3,
        p.acked_rate(),
        P99_TARGET_S * 1e3,
        met(p99 <= P99_TARGET_S)
    );
    let (ra, rv) = (a.rss_per_series(), v.rss_end as f64 / a.series as f64);
    println!(
        "  RSS per active series argus / victoria-metrics = {:.2} (target <= 1.0): {}",
        ra / rv,
        met(ra <= rv)
    );
}

fn print_saturation(agents: usize, s: &Saturation, v: &VmRun, cores: usize) {
    println!(
        "saturation: {agents} agents, {} active series; victoria-metrics got every sample of every step, {} requests of {SERIES} samples",
        s.series,
        s.steps.iter().map(|x| x.1.phase.batches).sum::<u64>()
    );
    let Some((iv, best)) = s.best() else {
        return;
    };
    let p = &best.phase;
    println!(
        "  argus: highest acknowledged rate {:.0} samples/s ({}), p50 {:.1} ms, p99 {:.1} ms, server CPU {:.0}% of {cores} cores, RSS {:.1} MB, generator {:.0}%",
        p.acked_rate(),
        iv.map_or("unpaced".to_string(), |d| format!("interval {d:?}")),
        quantile(&p.latencies, 0.5) * 1e3,
        quantile(&p.latencies, 0.99) * 1e3,
        100.0 * best.server_cpu / (best.wall * cores as f64),
        best.rss_end as f64 / 1e6,
        100.0 * best.gen_share
    );
    let last_kept = s
        .steps
        .iter()
        .filter(|(iv, m)| {
            iv.is_some_and(|d| !behind(m, (agents * SERIES) as f64 / d.as_secs_f64()))
        })
        .map(|(_, m)| m.phase.acked_rate())
        .fold(0.0, f64::max);
    println!("  argus: highest paced rate that kept up {last_kept:.0} samples/s");
    println!(
        "  victoria-metrics: {} samples in {:.1} s = {:.0} samples/s, CPU {:.0}% of {cores} cores, RSS {:.1} MB (peak {:.1}), {} failed requests, sender CPU {:.0}%",
        v.samples_ok,
        v.wall,
        v.rate(),
        100.0 * v.cpu / (v.wall * cores as f64),
        v.rss_end as f64 / 1e6,
        v.rss_peak as f64 / 1e6,
        v.failures,
        100.0 * v.gen_share
    );
    let ratio = p.acked_rate() / v.rate();
    println!(
        "  ratio throughput argus / victoria-metrics = {ratio:.2} (target >= 1.0): {}",
        met(ratio >= 1.0)
    );
}
