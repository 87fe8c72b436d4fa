//! `argus serve` as a real process, for the acceptance tests that run it.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use argus_coordinator::api::remote_write::{
    CONTENT_ENCODING, CONTENT_TYPE, VERSION_1, VERSION_HEADER, WriteRequest, encode_body,
};
use argus_testkit::child::ChildGuard;
use argus_testkit::http::{self, Response, encode_component};
use argus_testkit::prometheus::{LabelSet, find_binary, parse_exposition};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_argus");

/// How long a start (with its log replay) may take before the test fails. Generous:
/// CI is a loaded 2-core machine running a debug build.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Headers of a remote-write 1.0 request, as Prometheus sends them.
pub const WRITE_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", CONTENT_TYPE),
    ("Content-Encoding", CONTENT_ENCODING),
    (VERSION_HEADER, VERSION_1),
];

/// One `argus serve` process on a data directory; killed when dropped.
pub struct Argus {
    /// Where to connect (loopback when it listens on an unspecified address).
    pub addr: SocketAddr,
    listen: SocketAddr,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    log: PathBuf,
    proc: ChildGuard,
}

impl Argus {
    /// Starts on a free loopback port and waits until `/ready` answers 200.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Argus {
        let mut last = String::new();
        for _ in 0..5 {
            let port = http::free_port().expect("free port");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut a = Argus::spawn(data_dir, addr, extra).expect("spawn argus");
            match a.wait_ready() {
                Ok(_) => return a,
                // Someone took the port between our probe and the server's bind.
                Err(e) if e.contains("cannot listen") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("argus serve never found a free port: {last}");
    }

    /// Starts the process listening on `listen` without waiting for it.
    pub fn spawn(data_dir: &Path, listen: SocketAddr, extra: &[&str]) -> std::io::Result<Argus> {
        let log = data_dir.with_extension("log");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let proc = ChildGuard::spawn("argus serve", serve_command(data_dir, listen, &extra), &log)?;
        let addr = if listen.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        } else {
            listen
        };
        Ok(Argus {
            addr,
            listen,
            data_dir: data_dir.to_path_buf(),
            extra,
            log,
            proc,
        })
    }

    /// Starts the same node again (same data directory, port and flags) after a kill,
    /// without waiting for it.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.proc.kill9()?;
        self.proc = ChildGuard::spawn(
            "argus serve",
            serve_command(&self.data_dir, self.listen, &self.extra),
            &self.log,
        )?;
        Ok(())
    }

    /// Polls `/ready` until 200; returns how long it took. An error if the process
    /// exits first (with its log) or the deadline passes.
    pub fn wait_ready(&mut self) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.proc.exited() {
                return Err(format!(
                    "argus serve exited ({status}) before it was ready\n{}",
                    self.proc.log_tail(4000)
                ));
            }
            if let Ok(r) =
                http::request(self.addr, "GET", "/ready", &[], &[], Duration::from_secs(5))
                && r.status == 200
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "argus serve not ready after {READY_TIMEOUT:?}\n{}",
                    self.proc.log_tail(4000)
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn kill9(&mut self) -> ExitStatus {
        self.proc.kill9().expect("kill -9 argus serve")
    }

    /// SIGTERM and wait for the orderly exit.
    pub fn terminate(&mut self) -> Result<ExitStatus, String> {
        self.proc.terminate(Duration::from_secs(60))
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.exited()
    }

    pub fn log_tail(&self) -> String {
        self.proc.log_tail(4000)
    }

    pub fn get(&self, path: &str) -> Response {
        http::get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Posts a raw body to `/api/v1/write` with remote-write 1.0 headers.
    pub fn write_raw(&self, body: &[u8]) -> std::io::Result<Response> {
        http::post(self.addr, "/api/v1/write", &WRITE_HEADERS, body)
    }

    /// Encodes and posts a remote-write request.
    pub fn write(&self, req: &WriteRequest) -> Response {
        let body = encode_body(req).expect("encode remote-write body");
        self.write_raw(&body).expect("POST /api/v1/write")
    }

    /// `/api/v1/series?match[]=selector` as label sets (`__name__` included).
    pub fn series(&self, selector: &str) -> Vec<LabelSet> {
        let r = self.get(&format!(
            "/api/v1/series?match[]={}",
            encode_component(selector)
        ));
        assert_eq!(r.status, 200, "/api/v1/series: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("series JSON");
        assert_eq!(v["status"], "success", "{v}");
        serde_json::from_value(v["data"].clone()).expect("series data")
    }

    /// The value of one sample of `/metrics`: `name` with every label in `labels`.
    /// `None` when the node does not export it (yet).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        let samples = parse_exposition(&r.text()).expect("/metrics parses");
        samples
            .into_iter()
            .find(|(ls, _)| {
                ls.get("__name__").map(String::as_str) == Some(name)
                    && labels
                        .iter()
                        .all(|(k, v)| ls.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, s)| s.value)
    }
}

fn serve_command(data_dir: &Path, addr: SocketAddr, extra: &[String]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(addr.to_string())
        .args(extra)
        .env("RUST_LOG", "info");
    cmd
}

/// Disk space of all files under `dir`, as `du` counts it (allocated blocks, so a
/// preallocated, sparse journal counts for what it really takes).
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.blocks() * 512).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Wall-clock milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Polls `ok` until it says true; panics at `deadline` with the last error it gave.
pub fn wait_for(what: &str, deadline: Instant, mut ok: impl FnMut() -> Result<bool, String>) {
    let mut last = String::new();
    while Instant::now() < deadline {
        match ok() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what} (last error: {last})");
}

/// Starts `bin` with `args(port)` on a free port, retrying when the port was taken in
/// between, until `GET probe` answers 200 (within `up_within` per attempt).
pub fn start_on_free_port(
    name: &str,
    bin: &Path,
    args: impl Fn(u16) -> Vec<String>,
    log: &Path,
    probe: &str,
    up_within: Duration,
) -> (ChildGuard, SocketAddr) {
    for _ in 0..5 {
        let port = http::free_port().expect("free port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(bin);
        cmd.args(args(port));
        let mut child = ChildGuard::spawn(name, cmd, log).expect("spawn");
        let deadline = Instant::now() + up_within;
        loop {
            if child.exited().is_some() {
                eprintln!(
                    "{name} exited early; trying another port\n{}",
                    child.log_tail(2000)
                );
                break;
            }
            if http::get(addr, probe).is_ok_and(|r| r.status == 200) {
                return (child, addr);
            }
            assert!(
                Instant::now() < deadline,
                "{name} not up after {up_within:?}\n{}",
                child.log_tail(4000)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("{name} could not be started");
}

/// Debian's Prometheus scraping a node_exporter (job `node`) and itself (job
/// `prometheus`) every second and remote-writing everything, metadata included, into a
/// fresh `argus serve`: the setup of the tests that compare Argus with Prometheus.
pub struct PrometheusIntoArgus {
    pub argus: Argus,
    pub prometheus: ChildGuard,
    pub prometheus_addr: SocketAddr,
    _node_exporter: ChildGuard,
}

/// Starts [`PrometheusIntoArgus`] under `dir`; `None` when the binaries are missing
/// (`find_binary` says so loudly, and fails the test under CI).
pub fn prometheus_into_argus(dir: &Path, up_within: Duration) -> Option<PrometheusIntoArgus> {
    let prometheus = find_binary(&["prometheus"], "prometheus")?;
    let node_exporter = find_binary(
        &["prometheus-node-exporter", "node_exporter"],
        "prometheus-node-exporter",
    )?;
    let argus = Argus::start(&dir.join("argus"), &[]);
    let (node_exporter, ne_addr) = start_on_free_port(
        "node_exporter",
        &node_exporter,
        |port| vec![format!("--web.listen-address=127.0.0.1:{port}")],
        &dir.join("node_exporter.log"),
        "/metrics",
        up_within,
    );
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("prometheus dir");
    let config = prom_dir.join("prometheus.yml");
    let (prom, prom_addr) = start_on_free_port(
        "prometheus",
        &prometheus,
        |port| {
            let yaml = format!(
                r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: node
    static_configs: [{{targets: ["{ne_addr}"]}}]
  - job_name: prometheus
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
remote_write:
  - url: http://{argus}/api/v1/write
    queue_config:
      batch_send_deadline: 100ms
      max_samples_per_send: 2000
      min_backoff: 50ms
      max_backoff: 1s
    metadata_config:
      send_interval: 1s
"#,
                argus = argus.addr
            );
            std::fs::write(&config, yaml).expect("prometheus.yml");
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ]
        },
        &dir.join("prometheus.log"),
        "/-/ready",
        up_within,
    );
    Some(PrometheusIntoArgus {
        argus,
        prometheus: prom,
        prometheus_addr: prom_addr,
        _node_exporter: node_exporter,
    })
}

/// Runs an `argus` admin command with `env` and nothing else that could point it at
/// another coordinator (no `ARGUS_URL`, `ARGUS_TOKEN`, `ARGUS_CLI_CONFIG`, no home
/// directory config).
pub fn argus_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("ARGUS_URL")
        .env_remove("ARGUS_TOKEN")
        .env_remove("ARGUS_CLI_CONFIG")
        .env("HOME", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run argus")
}

/// Stdout of a command that must have succeeded; otherwise fails with both streams.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "argus failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
