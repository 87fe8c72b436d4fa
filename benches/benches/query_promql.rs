//! Argus's PromQL beside Debian's Prometheus 2.42, on the same samples, in one run.
//!
//! The data: 500 series at a 15 s interval over the 24 h ending at the last whole
//! minute at least two minutes before the bench starts (2,880,000 samples), generated
//! from a fixed seed:
//!
//! - `node_cpu_seconds_total{instance,job="node",cpu,mode}`: 10 hosts x 4 CPUs x 8
//!   modes, counters in hundredths of a second as node_exporter reads them from
//!   /proc/stat; one host reboots half-way (a counter reset);
//! - `http_request_duration_seconds_bucket{instance,job="api",handler,le}`: 5 hosts x
//!   3 handlers x 12 classic buckets, integer cumulative counts.
//!
//! Every host has its own scrape phase (0.5 to 14.5 s after the 15 s grid), so no
//! sample falls on a step or window edge of the query (its steps are on the minute):
//! Prometheus 2 windows are closed `[t - 5m, t]`, Argus's are Prometheus 3's left-open
//! `(t - 5m, t]`, and on such a grid both select the same samples. Counters start far
//! from zero (the processes have been up for a while): where a window holds a series'
//! first samples, Prometheus 2.42 and 3 extrapolate `rate` towards the counter's zero
//! point differently, and the comparison is about speed, not that known difference.
//!
//! Loading:
//! - `argus serve` (release build) gets the samples by remote write 1.0, 40 samples of
//!   every series per request (144 requests), in time order. Its raw tier keeps 24 h by
//!   default and a query over the last 24 h with a 5 m range reaches 24 h 5 m back, so
//!   the bench gives it a config file with raw retention 48 h (tiers are a documented
//!   setting; retention only decides what is dropped, not how the raw tier is read).
//! - Prometheus gets the same samples as an OpenMetrics file through `promtool tsdb
//!   create-blocks-from openmetrics` (2 h blocks), then starts on that directory. Its
//!   own compaction merges the blocks about a minute after start (into 6 h and 18 h
//!   blocks, as a Prometheus that ran for a day holds its data); the bench waits for
//!   that to finish before timing anything.
//!
//! Both are then checked to hold everything: series count, sample count
//! (`count_over_time` over the day) and the sum of the last values, against the
//! generator's own figures.
//!
//! Timing: each query goes as the same `GET /api/v1/query_range` (24 h, 60 s step) to
//! both; two warm-up requests each (whose answers are compared: same series, same
//! timestamps, values within 1e-9 relative), then `ARGUS_BENCH_RUNS` (default 9)
//! requests alternating between the two servers. Printed per query: median (min–max)
//! wall time of the whole request as the client sees it, the server's CPU per request,
//! and the ratio of the medians argus / prometheus (target <= 1.0). Peak RSS of both
//! closes the report.
//!
//! Knobs: `ARGUS_BENCH_RUNS`; `ARGUS_BENCH_ONLY=argus` skips Prometheus (no
//! comparison, for profiling); `ARGUS_BENCH_PERF=<file>` records a `perf` profile (DWARF
//! call graphs) of `argus serve` during its timed requests; `ARGUS_BENCH_KEEP=1` keeps
//! the data directories.
//!
//! Run: `cargo bench -p argus-benches --bench query_promql` (needs Debian's
//! `prometheus` package for `prometheus` and `promtool`).

use anyhow::{Context, Result, bail};
use argus_coordinator::api::remote_write::{
    CONTENT_ENCODING, CONTENT_TYPE, TimeSeries, VERSION_1, VERSION_HEADER, WriteRequest,
    encode_body,
};
use argus_coordinator::tsdb::mix::Rng;
use argus_testkit::bench::{TempDir, env_usize};
use argus_testkit::child::ChildGuard;
use argus_testkit::http::{self, Response, encode_component};
use argus_testkit::proc;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SEED: u64 = 20_250_401;
const INTERVAL_MS: i64 = 15_000;
const SPAN_MS: i64 = 86_400_000;
const STEP_S: i64 = 60;
const NODE_HOSTS: usize = 10;
const CPUS: usize = 4;
/// node_exporter's CPU modes, with the share of time each gets on average.
const MODES: [(&str, f64); 8] = [
    ("idle", 0.70),
    ("iowait", 0.03),
    ("irq", 0.01),
    ("nice", 0.01),
    ("softirq", 0.02),
    ("steal", 0.01),
    ("system", 0.07),
    ("user", 0.15),
];
/// The host whose counters restart half-way through the day.
const REBOOTED_HOST: usize = 3;
const API_HOSTS: usize = 5;
/// Handlers, with their median latency (s) and requests per scrape interval.
const HANDLERS: [(&str, f64, f64); 3] = [
    ("/api/v1/query", 0.08, 120.0),
    ("/api/v1/write", 0.012, 900.0),
    ("/metrics", 0.004, 4.0),
];
/// Prometheus's default buckets plus +Inf.
const BUCKETS: [f64; 12] = [
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    f64::INFINITY,
];
/// Samples of every series per remote-write request (10 minutes).
const TICKS_PER_REQUEST: usize = 40;
const NAMES: &str = "node_cpu_seconds_total|http_request_duration_seconds_bucket";
const QUERIES: [(&str, &str); 2] = [
    (
        "cpu rate",
        "sum by (mode)(rate(node_cpu_seconds_total[5m]))",
    ),
    (
        "histogram_quantile",
        "histogram_quantile(0.9, sum by (le, handler)(rate(http_request_duration_seconds_bucket[5m])))",
    ),
];
const WRITE_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", CONTENT_TYPE),
    ("Content-Encoding", CONTENT_ENCODING),
    (VERSION_HEADER, VERSION_1),
];
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);
const ARGUS_CONFIG: &str = r#"# query_promql bench: Argus's default tiers, with the raw tier kept 48 h instead of 24 h
# so that a query over the last 24 h (plus its 5 m range) is served from raw samples.
[[tier]]
name = "raw"
retention = "48h"
partition = "2h"
[[tier]]
name = "5m"
step = "5m"
retention = "720h"
partition = "24h"
[[tier]]
name = "1h"
step = "1h"
retention = "8760h"
partition = "168h"
"#;

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("query_promql: bench");
        return Ok(());
    }
    let runs = env_usize("ARGUS_BENCH_RUNS", 9).max(1);
    let only_argus = std::env::var("ARGUS_BENCH_ONLY").is_ok_and(|o| o == "argus");
    let Some(prometheus_bin) =
        argus_testkit::prometheus::find_binary(&["prometheus"], "prometheus")
    else {
        return Ok(());
    };
    let Some(promtool_bin) = argus_testkit::prometheus::find_binary(&["promtool"], "prometheus")
    else {
        return Ok(());
    };
    let argus_bin = argus_testkit::build::release_binary("argus-coordinator", "argus")
        .map_err(anyhow::Error::msg)?;
    let work = TempDir::new("argus-bench-query")?;

    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let end_ms = (now_ms - 120_000) / 60_000 * 60_000;
    let data = Data::generate(end_ms);
    println!(
        "query_promql: {} series ({} node_cpu_seconds_total, {} http_request_duration_seconds_bucket), {} s interval, {:.0} h ending {} s before the start ({} samples), seed {SEED}",
        data.series.len(),
        NODE_HOSTS * CPUS * MODES.len(),
        API_HOSTS * HANDLERS.len() * BUCKETS.len(),
        INTERVAL_MS / 1000,
        SPAN_MS as f64 / 3.6e6,
        (now_ms - end_ms) / 1000,
        data.samples()
    );

    // Prometheus first: its compaction starts a minute after it does, and Argus loads
    // meanwhile.
    let mut prom = if only_argus {
        println!("prometheus: skipped (ARGUS_BENCH_ONLY=argus)");
        None
    } else {
        let blocks = backfill(&promtool_bin, &data, work.path())?;
        let server = Server::start_prometheus(&prometheus_bin, work.path(), &blocks)?;
        Some((server, Instant::now()))
    };

    let mut argus = Server::start_argus(&argus_bin, work.path())?;
    let t = Instant::now();
    let requests = data.write_requests()?;
    let bytes: usize = requests.iter().map(Vec::len).sum();
    for (i, body) in requests.iter().enumerate() {
        let r = http::request(
            argus.addr,
            "POST",
            "/api/v1/write",
            &WRITE_HEADERS,
            body,
            QUERY_TIMEOUT,
        )
        .with_context(|| format!("remote write request {i}"))?;
        if !(200..300).contains(&r.status) {
            bail!(
                "argus refused remote write request {i}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    println!(
        "argus: {} remote-write requests ({:.1} MB snappy) acknowledged in {:.1} s; raw tier retention 48 h (bench config)",
        requests.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    drop(requests);

    data.wait_complete(&mut argus, end_ms)?;
    let mut servers = vec![argus];
    if let Some((mut server, started)) = prom.take() {
        server.wait_compacted(started)?;
        data.wait_complete(&mut server, end_ms)?;
        servers.push(server);
    }
    println!(
        "{} hold all {} series and {} samples, and the same last values as generated",
        if servers.len() == 2 {
            "both"
        } else {
            "argus: does"
        },
        data.series.len(),
        data.samples()
    );

    let start_ms = end_ms - SPAN_MS;
    let mut ratios = Vec::new();
    for (name, q) in QUERIES {
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step={STEP_S}",
            encode_component(q),
            start_ms / 1000,
            end_ms / 1000
        );
        println!("\nquery {name}: {q}");
        println!(
            "  24 h at a {STEP_S} s step ({} steps), GET /api/v1/query_range on both",
            SPAN_MS / 1000 / STEP_S + 1
        );
        let mut answers = Vec::new();
        for server in servers.iter_mut() {
            let mut last = None;
            for _ in 0..2 {
                last = Some(server.query(&path)?.1);
            }
            answers.push(parse_matrix(last.as_ref().context("no warm-up")?)?);
        }
        if let [a, p] = answers.as_slice() {
            compare(a, p);
        }
        let perf = match std::env::var_os("ARGUS_BENCH_PERF") {
            Some(out) => Some(Perf::record(servers[0].pid(), &out, name)?),
            None => None,
        };
        let mut times = vec![Vec::new(); servers.len()];
        let mut cpu = vec![0.0; servers.len()];
        for _ in 0..runs {
            for (k, server) in servers.iter_mut().enumerate() {
                let c0 = proc::cpu_seconds(server.pid()).unwrap_or(0.0);
                let (took, _) = server.query(&path)?;
                cpu[k] += proc::cpu_seconds(server.pid()).unwrap_or(0.0) - c0;
                times[k].push(took);
            }
        }
        drop(perf);
        let med: Vec<f64> = times.iter().map(|t| median(t)).collect();
        for (k, server) in servers.iter().enumerate() {
            let lo = times[k].iter().copied().fold(f64::INFINITY, f64::min);
            let hi = times[k].iter().copied().fold(0.0, f64::max);
            println!(
                "  {:<11} median {:>9.1} ms  (min {:.1}, max {:.1}, {runs} runs)  server cpu {:.1} ms/query",
                server.name,
                med[k] * 1e3,
                lo * 1e3,
                hi * 1e3,
                cpu[k] / runs as f64 * 1e3
            );
        }
        if let [a, p] = med.as_slice() {
            let ratio = a / p;
            println!("  ratio argus / prometheus = {ratio:.2}  (target <= 1.0)");
            ratios.push((name, ratio));
        }
    }
    println!();
    for (name, ratio) in &ratios {
        println!("query_promql: {name:<19} argus / prometheus = {ratio:.2}  (target <= 1.0)");
    }
    let rss: Vec<String> = servers
        .iter()
        .map(|s| {
            format!(
                "{} {:.1} MB",
                s.name,
                proc::peak_rss_bytes(s.pid()).unwrap_or(0) as f64 / 1e6
            )
        })
        .collect();
    println!("peak RSS (whole run, loading included): {}", rss.join(", "));
    for s in &mut servers {
        s.stop();
    }
    if env_usize("ARGUS_BENCH_KEEP", 0) != 0 {
        println!("data kept in {}", work.path().display());
        std::mem::forget(work);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------

struct Series {
    /// Sorted by name, `__name__` included.
    labels: Vec<(String, String)>,
    samples: Vec<(i64, f64)>,
}

struct Data {
    series: Vec<Series>,
}

/// A host's scrape phase: between 0.5 and 14.5 s after the 15 s grid, never on it.
fn phase_ms(host: usize) -> i64 {
    500 + (host as i64 * 4_657) % 14_000
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut l: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    l
}

impl Data {
    fn generate(end_ms: i64) -> Data {
        let ticks = (SPAN_MS / INTERVAL_MS) as usize;
        let first = |host: usize| end_ms - SPAN_MS + phase_ms(host);
        let mut rng = Rng::new(SEED);
        let mut series = Vec::new();
        for host in 0..NODE_HOSTS {
            let instance = format!("node-{host:02}:9100");
            for cpu in 0..CPUS {
                let cpu_name = cpu.to_string();
                for (mode, share) in MODES {
                    // Centiseconds since boot, as /proc/stat counts them.
                    let mut cs = rng.next_u64() % 100_000_000;
                    let samples = (0..ticks)
                        .map(|j| {
                            if host == REBOOTED_HOST && j == ticks / 2 {
                                cs = 0;
                            }
                            cs += (share * 1500.0 * (0.5 + rng.unit())).round() as u64;
                            (first(host) + j as i64 * INTERVAL_MS, cs as f64 / 100.0)
                        })
                        .collect();
                    series.push(Series {
                        labels: labels(&[
                            ("__name__", "node_cpu_seconds_total"),
                            ("cpu", &cpu_name),
                            ("instance", &instance),
                            ("job", "node"),
                            ("mode", mode),
                        ]),
                        samples,
                    });
                }
            }
        }
        for host in 0..API_HOSTS {
            let instance = format!("api-{host:02}:8080");
            let g = NODE_HOSTS + host;
            for (handler, median, per_tick) in HANDLERS {
                // Cumulative counts per bucket, from a log-logistic latency distribution
                // around the handler's median.
                // The server has been up for a while: counts start well above zero, so
                // no window extrapolates towards a counter's zero point (where Prometheus
                // 2.42 and 3 differ, see the module doc).
                let up = 100_000.0 + 900_000.0 * rng.unit();
                let mut cum = [0u64; BUCKETS.len()];
                for (b, le) in BUCKETS.iter().enumerate() {
                    cum[b] = (up / (1.0 + (median / le).powi(2))).round() as u64;
                }
                let mut points: Vec<Vec<(i64, f64)>> =
                    vec![Vec::with_capacity(ticks); BUCKETS.len()];
                for j in 0..ticks {
                    let n = (per_tick * (0.5 + rng.unit())).round();
                    let slow = 1.0 + 0.5 * rng.unit();
                    for (b, le) in BUCKETS.iter().enumerate() {
                        let share = 1.0 / (1.0 + (median * slow / le).powi(2));
                        cum[b] += (n * share).round() as u64;
                        points[b].push((first(g) + j as i64 * INTERVAL_MS, cum[b] as f64));
                    }
                }
                for (b, samples) in points.into_iter().enumerate() {
                    let le = if BUCKETS[b].is_infinite() {
                        "+Inf".to_string()
                    } else {
                        format!("{}", BUCKETS[b])
                    };
                    series.push(Series {
                        labels: labels(&[
                            ("__name__", "http_request_duration_seconds_bucket"),
                            ("handler", handler),
                            ("instance", &instance),
                            ("job", "api"),
                            ("le", &le),
                        ]),
                        samples,
                    });
                }
            }
        }
        Data { series }
    }

    fn samples(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }

    fn last_value_sum(&self) -> f64 {
        self.series
            .iter()
            .filter_map(|s| s.samples.last())
            .map(|p| p.1)
            .sum()
    }

    /// Every series' samples, series after series, as promtool reads them; returns the
    /// file's size.
    fn write_openmetrics(&self, path: &Path) -> Result<u64> {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        for s in &self.series {
            let name = &s.labels[0].1;
            let rest: Vec<String> = s.labels[1..]
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            let head = format!("{name}{{{}}}", rest.join(","));
            for (t, v) in &s.samples {
                writeln!(w, "{head} {v} {}.{:03}", t / 1000, t % 1000)?;
            }
        }
        writeln!(w, "# EOF")?;
        w.flush()?;
        Ok(std::fs::metadata(path)?.len())
    }

    /// Snappy remote-write bodies, in time order: each carries the next
    /// [`TICKS_PER_REQUEST`] samples of every series.
    fn write_requests(&self) -> Result<Vec<Vec<u8>>> {
        let ticks = self
            .series
            .iter()
            .map(|s| s.samples.len())
            .max()
            .unwrap_or(0);
        (0..ticks)
            .step_by(TICKS_PER_REQUEST)
            .map(|from| {
                let req = WriteRequest {
                    timeseries: self
                        .series
                        .iter()
                        .map(|s| TimeSeries {
                            labels: s.labels.clone(),
                            samples: s.samples[from.min(s.samples.len())
                                ..(from + TICKS_PER_REQUEST).min(s.samples.len())]
                                .to_vec(),
                            ..Default::default()
                        })
                        .collect(),
                    metadata: Vec::new(),
                };
                Ok(encode_body(&req)?)
            })
            .collect()
    }

    /// Polls `server` until it holds every series and sample and the same last values.
    fn wait_complete(&self, server: &mut Server, end_ms: i64) -> Result<()> {
        let checks = [
            (
                format!("count({{__name__=~\"{NAMES}\"}})"),
                self.series.len() as f64,
            ),
            (
                format!("sum(count_over_time({{__name__=~\"{NAMES}\"}}[1d]))"),
                self.samples() as f64,
            ),
            (
                format!("sum({{__name__=~\"{NAMES}\"}})"),
                self.last_value_sum(),
            ),
        ];
        let t = Instant::now();
        loop {
            let mut last = String::new();
            let mut ok = true;
            for (q, want) in &checks {
                let got = server.instant(q, end_ms)?;
                if got.is_none_or(|g| !close(g, *want)) {
                    last = format!("{q}: {got:?}, want {want}");
                    ok = false;
                    break;
                }
            }
            if ok {
                println!(
                    "{}: holds everything ({:.1} s after loading)",
                    server.name,
                    t.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!(
                    "{} does not hold all the data after 120 s: {last}\n{}",
                    server.name,
                    server.child.log_tail(3000)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

// ---------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------

struct Server {
    name: &'static str,
    child: ChildGuard,
    addr: SocketAddr,
}

impl Server {
    fn start_argus(bin: &Path, work: &Path) -> Result<Server> {
        let config = work.join("argus.toml");
        std::fs::write(&config, ARGUS_CONFIG)?;
        Server::start("argus", work, "/ready", |port| {
            let mut cmd = Command::new(bin);
            cmd.arg("serve")
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(work.join("argus"))
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn");
            cmd
        })
    }

    fn start_prometheus(bin: &Path, work: &Path, data: &Path) -> Result<Server> {
        let config = work.join("prometheus.yml");
        std::fs::write(&config, "global:\n  evaluation_interval: 1m\n")?;
        Server::start("prometheus", work, "/-/ready", |port| {
            let mut cmd = Command::new(bin);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg("--storage.tsdb.retention.time=30d")
                .arg(format!("--web.listen-address=127.0.0.1:{port}"));
            cmd
        })
    }

    /// Starts on a free port (retrying if another process took it meanwhile) and waits
    /// until `ready` answers 200.
    fn start(
        name: &'static str,
        work: &Path,
        ready: &str,
        command: impl Fn(u16) -> Command,
    ) -> Result<Server> {
        let log = work.join(format!("{name}.log"));
        for _ in 0..5 {
            let port = http::free_port()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut child = ChildGuard::spawn(name, command(port), &log)?;
            let t = Instant::now();
            loop {
                if child.exited().is_some() {
                    eprintln!("{name} exited early; trying another port");
                    break;
                }
                if http::get(addr, ready).is_ok_and(|r| r.status == 200) {
                    return Ok(Server { name, child, addr });
                }
                if t.elapsed() > Duration::from_secs(120) {
                    bail!("{name} not ready after 120 s\n{}", child.log_tail(3000));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        bail!(
            "{name} could not be started:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Times one request: the wall time until the whole answer is read, and the answer.
    fn query(&mut self, path: &str) -> Result<(f64, Response)> {
        let t = Instant::now();
        let r = http::request(self.addr, "GET", path, &[], &[], QUERY_TIMEOUT)
            .with_context(|| format!("{}: GET {path}", self.name))?;
        let took = t.elapsed().as_secs_f64();
        if r.status != 200 {
            bail!("{}: GET {path}: {} {}", self.name, r.status, r.text());
        }
        Ok((took, r))
    }

    /// The value of a one-element instant vector at `t_ms` (None when empty).
    fn instant(&mut self, q: &str, t_ms: i64) -> Result<Option<f64>> {
        let path = format!(
            "/api/v1/query?query={}&time={}.{:03}",
            encode_component(q),
            t_ms / 1000,
            t_ms % 1000
        );
        let (_, r) = self.query(&path)?;
        let v: serde_json::Value = serde_json::from_slice(&r.body)?;
        let result = &v["data"]["result"];
        match result.as_array().map(Vec::as_slice) {
            Some([one]) => Ok(Some(parse_value(&one["value"][1])?)),
            Some([]) => Ok(None),
            _ => bail!("{}: {q}: unexpected answer {v}", self.name),
        }
    }

    /// Waits until Prometheus's own compaction of the backfilled blocks has run and
    /// settled: it first runs a minute after start and merges until nothing is left to
    /// merge (thirteen 2 h blocks always give it something). Settled: at least one
    /// compaction done, the block count unchanged for 10 s, and the process idle (under
    /// 5 % of a core over the last second), so none runs beside the timed queries.
    fn wait_compacted(&mut self, started: Instant) -> Result<()> {
        let t = Instant::now();
        let mut blocks = self.metric("prometheus_tsdb_blocks_loaded")?;
        let before = blocks;
        let mut since = Instant::now();
        loop {
            let cpu0 = proc::cpu_seconds(self.pid()).unwrap_or(0.0);
            std::thread::sleep(Duration::from_secs(1));
            let busy = proc::cpu_seconds(self.pid()).unwrap_or(0.0) - cpu0;
            let now = self.metric("prometheus_tsdb_blocks_loaded")?;
            if now != blocks {
                blocks = now;
                since = Instant::now();
            }
            let done = self.metric("prometheus_tsdb_compactions_total")?;
            if done >= 1.0 && since.elapsed() > Duration::from_secs(10) && busy < 0.05 {
                break;
            }
            if started.elapsed() > Duration::from_secs(300) {
                println!("prometheus: compaction not settled after 300 s; timing anyway");
                break;
            }
        }
        println!(
            "prometheus: its compaction merged {before} blocks into {blocks} ({} compactions); waited {:.1} s for it",
            self.metric("prometheus_tsdb_compactions_total")?,
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// One unlabelled sample of the server's `/metrics`.
    fn metric(&mut self, name: &str) -> Result<f64> {
        let r = http::get(self.addr, "/metrics")?;
        let text = r.text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("{}: no {name} in /metrics", self.name))
    }

    fn stop(&mut self) {
        if let Err(e) = self.child.terminate(Duration::from_secs(60)) {
            println!("{}: {e}", self.name);
        }
    }
}

/// Writes the samples as OpenMetrics and has promtool turn them into blocks; returns
/// the directory Prometheus is to start on.
fn backfill(promtool: &Path, data: &Data, work: &Path) -> Result<PathBuf> {
    let t = Instant::now();
    let om = work.join("samples.om");
    let om_bytes = data.write_openmetrics(&om)?;
    let blocks = work.join("prometheus");
    let out = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "--quiet", "openmetrics"])
        .arg(&om)
        .arg(&blocks)
        .stdin(Stdio::null())
        .output()
        .context("running promtool")?;
    if !out.status.success() {
        bail!(
            "promtool create-blocks-from failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_file(&om)?;
    println!(
        "prometheus: promtool tsdb create-blocks-from openmetrics: {:.0} MB of OpenMetrics into {} blocks in {:.1} s",
        om_bytes as f64 / 1e6,
        count_blocks(&blocks),
        t.elapsed().as_secs_f64()
    );
    Ok(blocks)
}

/// `perf record` of one process until dropped.
struct Perf(std::process::Child);

impl Perf {
    fn record(pid: u32, out: &std::ffi::OsStr, query: &str) -> Result<Perf> {
        let mut file = PathBuf::from(out).into_os_string();
        file.push(format!(".{}", query.replace(' ', "_")));
        let child = Command::new("perf")
            .args(["record", "-F", "999", "--call-graph", "dwarf,32768", "-o"])
            .arg(&file)
            .arg("-p")
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        // perf needs a moment to attach.
        std::thread::sleep(Duration::from_millis(500));
        println!("  perf profile of argus: {}", PathBuf::from(file).display());
        Ok(Perf(child))
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; perf is our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

fn count_blocks(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("meta.json").is_file())
                .count()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------

/// A matrix answer: series (labels as text) → points.
type Matrix = BTreeMap<String, Vec<(f64, f64)>>;

fn parse_value(v: &serde_json::Value) -> Result<f64> {
    let s = v.as_str().context("sample value is not a string")?;
    s.parse::<f64>()
        .with_context(|| format!("sample value {s:?}"))
}

fn parse_matrix(r: &Response) -> Result<Matrix> {
    let v: serde_json::Value = serde_json::from_slice(&r.body)?;
    if v["data"]["resultType"] != "matrix" {
        bail!("not a matrix: {}", r.text());
    }
    let mut out = Matrix::new();
    for s in v["data"]["result"].as_array().context("no result")? {
        let labels: BTreeMap<String, String> = serde_json::from_value(s["metric"].clone())?;
        let points = s["values"]
            .as_array()
            .context("no values")?
            .iter()
            .map(|p| Ok((p[0].as_f64().context("timestamp")?, parse_value(&p[1])?)))
            .collect::<Result<Vec<_>>>()?;
        out.insert(format!("{labels:?}"), points);
    }
    Ok(out)
}

/// Prints whether the two answers agree: same series, same timestamps, values within
/// 1e-9 relative; the first disagreements are printed in full.
fn compare(argus: &Matrix, prom: &Matrix) {
    let mut shown = 0;
    let mut bad = 0;
    let mut points = 0;
    let mut max_rel: f64 = 0.0;
    let mut show = |what: String| {
        if shown < 5 {
            println!("  DISAGREE: {what}");
            shown += 1;
        }
    };
    for (k, a) in argus {
        let Some(p) = prom.get(k) else {
            bad += 1;
            show(format!("{k}: only in argus's answer ({} points)", a.len()));
            continue;
        };
        if a.len() != p.len() {
            bad += 1;
            show(format!(
                "{k}: {} points in argus's answer, {} in prometheus's",
                a.len(),
                p.len()
            ));
            continue;
        }
        for (x, y) in a.iter().zip(p) {
            points += 1;
            if x.0 != y.0 || !close(x.1, y.1) {
                bad += 1;
                show(format!("{k} at {}: argus {:?}, prometheus {:?}", y.0, x, y));
            } else if x.1 != y.1 {
                max_rel = max_rel.max((x.1 - y.1).abs() / x.1.abs().max(y.1.abs()));
            }
        }
    }
    for (k, p) in prom {
        if !argus.contains_key(k) {
            bad += 1;
            show(format!(
                "{k}: only in prometheus's answer ({} points)",
                p.len()
            ));
        }
    }
    if bad == 0 {
        println!(
            "  answers agree: {} series, {points} points, largest relative difference {max_rel:.1e}",
            argus.len()
        );
    } else {
        println!("  answers DISAGREE in {bad} places ({points} points compared)");
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
