//! The agent's cost beside node_exporter's, measured in one run.
//!
//! For `ARGUS_BENCH_SECS` (default 60) seconds, at once:
//! - `argus-agent run` at a 1 s interval, collecting host, containers (10 running)
//!   and two probes (HTTP and TCP), spooling every tick to disk;
//! - Debian's `prometheus-node-exporter` on another port, scraped once a second.
//!
//! The Docker engine's CPU is measured during an idle baseline of the same length
//! before the run and during the run; the difference is work the agent asked of the
//! engine and is added to the agent's figure. Prints CPU seconds and peak RSS of each
//! and the ratios against the targets (agent ≤ 0.5× node_exporter for both).
//!
//! Run: `cargo bench -p argus-benches --bench agent_footprint`

use anyhow::{Context, Result, bail};
use argus_testkit::{docker, proc};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONTAINERS: usize = 10;
const ENGINE: &[&str] = &["dockerd", "containerd", "docker-proxy"];

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("agent_footprint: bench");
        return Ok(());
    }
    let secs: u64 = std::env::var("ARGUS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let agent_bin = argus_testkit::build::release_binary("argus-agent", "argus-agent")
        .map_err(anyhow::Error::msg)?;
    let node_exporter = PathBuf::from("/usr/bin/prometheus-node-exporter");
    if !node_exporter.exists() {
        bail!("node_exporter not found: apt-get install prometheus-node-exporter");
    }
    let containers = docker::start_sleepers("argus-bench-footprint", CONTAINERS)
        .map_err(anyhow::Error::msg)
        .context("starting the containers")?;

    let http = TcpListener::bind("127.0.0.1:0")?;
    let http_addr = http.local_addr()?;
    std::thread::spawn(move || serve_ok(http));
    let ne_port = argus_testkit::http::free_port()?;

    let engine = proc::pids_named(ENGINE);
    // The engine's idle CPU is bursty (housekeeping every few seconds), so its baseline
    // is taken in two halves, before and after the run, with the containers running.
    let half = Duration::from_secs(secs.div_ceil(2));
    println!(
        "measuring the Docker engine's idle baseline ({} s before and after the run, {CONTAINERS} containers running)...",
        half.as_secs()
    );
    let idle_half = || {
        let e0 = proc::cpu_seconds_of(&engine);
        std::thread::sleep(half);
        proc::cpu_seconds_of(&engine) - e0
    };
    let mut engine_idle = idle_half();

    let state = tempdir()?;
    let cfg = state.join("argus-agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[agent]
interval = "1s"
state_dir = "{state}"
[log]
level = "warn"
[[probe]]
name = "http"
url = "http://{http_addr}/health"
interval = "1s"
timeout = "500ms"
[[probe]]
name = "node-exporter"
address = "127.0.0.1:{ne_port}"
interval = "1s"
timeout = "500ms"
"#,
            state = state.display()
        ),
    )?;
    let ne = Killed(
        Command::new(&node_exporter)
            .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting node_exporter")?,
    );
    let agent = Killed(
        Command::new(&agent_bin)
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .stdout(Stdio::null())
            .spawn()
            .context("starting argus-agent")?,
    );
    // Let both start before accounting, so start-up costs do not dominate a short run.
    std::thread::sleep(Duration::from_secs(2));
    let (agent_pid, ne_pid) = (agent.0.id(), ne.0.id());
    let a0 = proc::cpu_seconds(agent_pid).context("agent exited early")?;
    let n0 = proc::cpu_seconds(ne_pid).context("node_exporter exited early")?;
    let e0 = proc::cpu_seconds_of(&engine);
    let start = Instant::now();
    let mut scrapes = 0u64;
    let mut scrape_bytes = 0usize;
    while start.elapsed() < Duration::from_secs(secs) {
        let tick = Instant::now();
        scrape_bytes = scrape(ne_port).context("scraping node_exporter")?;
        scrapes += 1;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    let wall = start.elapsed().as_secs_f64();
    let agent_cpu = proc::cpu_seconds(agent_pid).context("agent exited during the run")? - a0;
    let ne_cpu = proc::cpu_seconds(ne_pid).context("node_exporter exited during the run")? - n0;
    let engine_run = proc::cpu_seconds_of(&engine) - e0;
    let agent_rss = proc::peak_rss_bytes(agent_pid).unwrap_or(0) as f64 / 1e6;
    let ne_rss = proc::peak_rss_bytes(ne_pid).unwrap_or(0) as f64 / 1e6;
    let spool = dir_size(&state.join("spool"));
    drop(agent);
    drop(ne);
    engine_idle += idle_half();
    let engine_idle_secs = 2.0 * half.as_secs_f64();
    drop(containers);
    let _ = std::fs::remove_dir_all(&state);

    let engine_extra = (engine_run - engine_idle * wall / engine_idle_secs).max(0.0);
    let total = agent_cpu + engine_extra;
    println!();
    println!(
        "agent_footprint: {wall:.0} s; argus-agent at 1 s with host + {CONTAINERS} containers + 2 probes; node_exporter scraped {scrapes}x ({scrape_bytes} bytes each)"
    );
    println!(
        "{:<34} {:>8} {:>10} {:>12}",
        "", "cpu_s", "%_of_core", "peak_rss_MB"
    );
    let row = |name: &str, cpu: f64, rss: Option<f64>| {
        let rss = rss
            .map(|r| format!("{r:12.1}"))
            .unwrap_or_else(|| format!("{:>12}", "-"));
        println!("{name:<34} {cpu:8.3} {:10.2} {rss}", 100.0 * cpu / wall);
    };
    row("argus-agent", agent_cpu, Some(agent_rss));
    row("docker engine, extra over idle", engine_extra, None);
    row("argus-agent + engine extra", total, Some(agent_rss));
    row("prometheus-node-exporter", ne_cpu, Some(ne_rss));
    println!(
        "docker engine: {engine_run:.3} cpu_s during the run, {:.3} cpu_s per {wall:.0} s when idle",
        engine_idle * wall / engine_idle_secs
    );
    println!(
        "agent spool on disk after the run: {:.1} MB",
        spool as f64 / 1e6
    );
    println!(
        "ratio cpu  (agent + engine extra) / node_exporter = {:.2}  (target <= 0.50)",
        total / ne_cpu
    );
    println!(
        "ratio rss  agent / node_exporter                  = {:.2}  (target <= 0.50)",
        agent_rss / ne_rss
    );
    Ok(())
}

fn serve_ok(listener: TcpListener) {
    for mut s in listener.incoming().flatten() {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    }
}

fn scrape(port: u16) -> Result<usize> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    Ok(body.len())
}

fn tempdir() -> Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("argus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
