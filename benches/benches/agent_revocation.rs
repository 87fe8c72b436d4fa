//! How long a revoked agent stays connected: from `DELETE /api/agents/{id}` (what
//! `argus agents revoke` calls) to the agent's connection closing, over several trials,
//! against `argus serve` as its own process while other agents stream.
//!
//! Agents are the load generator's ([`argus_benches::loadgen`]): enrolled with a join
//! token from the admin API, each on its own mutual-TLS connection. `ARGUS_BENCH_TRIALS`
//! agents (default 20) sit connected with a few series each; meanwhile
//! `ARGUS_BENCH_LOAD_AGENTS` others (default 50) write 500 series every second, so the
//! revocation entry queues behind real batches in the log. Each trial revokes one
//! connected agent and times, on the agent's side, until quinn reports the connection
//! closed, and checks that it was closed as revoked (`close::EXPIRED`), not lost.
//!
//! Printed: every trial, min / median / p90 / max, how long the API took to answer, and
//! the target: the agent's connection closes within 1 s of the revocation (MET when
//! every trial does).
//!
//! `ARGUS_BENCH_QUICK=1`: 5 trials beside 10 streaming agents.
//!
//! Run: `cargo bench -p argus-benches --bench agent_revocation`

use anyhow::{Context, Result, bail};
use argus_benches::fleet::Admin;
use argus_benches::loadgen::{self, Pace, Values};
use argus_benches::server::{Server, argus_command};
use argus_benches::stats::quantile;
use argus_common::model::{Labels, MetricType};
use argus_common::quic::close;
use argus_testkit::bench::{TempDir, env_usize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The target: a revoked agent's connection closes within this.
const TARGET: Duration = Duration::from_secs(1);
/// Agents per enrollment source address (the coordinator's default limit a minute).
const PER_SOURCE: usize = 10;
const LOAD_SERIES: usize = 500;

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("agent_revocation: bench");
        return Ok(());
    }
    let quick = env_usize("ARGUS_BENCH_QUICK", 0) != 0;
    let trials = env_usize("ARGUS_BENCH_TRIALS", if quick { 5 } else { 20 }).max(1);
    let loaders = env_usize("ARGUS_BENCH_LOAD_AGENTS", if quick { 10 } else { 50 });
    let bin = argus_testkit::build::release_binary("argus-coordinator", "argus")
        .map_err(anyhow::Error::msg)?;
    let work = TempDir::new("argus-bench-revoke")?;
    let data = work.path().join("data");
    let port = argus_testkit::http::free_port()?;
    let mut server = Server::start(
        argus_command(&bin, &data, port),
        work.path(),
        port,
        "/ready",
        false,
    )?;
    let admin = Admin::from_data_dir(port, &data)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let hosts: Vec<String> = (0..trials + loaders)
        .map(|i| format!("revoke-{i:04}"))
        .collect();
    let join = admin.join_token(hosts.len() as u32, "1h")?;
    let enrolled = rt
        .block_on(loadgen::enroll_all(to, &join, &hosts, PER_SOURCE, 16))
        .context("enrolling")?;
    let endpoints = {
        let _runtime = rt.enter();
        loadgen::data_endpoints(2)?
    };
    let few = series(4);
    let many = series(LOAD_SERIES);
    let (targets, load) = rt.block_on(async {
        let mut targets = Vec::new();
        let mut load = Vec::new();
        for (i, e) in enrolled.iter().enumerate() {
            let ep = &endpoints[i % endpoints.len()];
            let defs = if i < trials { &few } else { &many };
            let a = loadgen::connect(ep, to, e, defs, 32, 0x5eed + i as u64).await?;
            if i < trials {
                targets.push(a);
            } else {
                load.push(a);
            }
        }
        anyhow::Ok((targets, load))
    })?;
    let values: Values = Arc::new(vec![
        (0..16)
            .map(|r| {
                (1..=LOAD_SERIES as u64)
                    .map(|s| (s, (r * s) as f64))
                    .collect()
            })
            .collect(),
    ]);
    // The background load runs until the trials are done (bounded by its duration).
    let background = (!load.is_empty()).then(|| {
        rt.spawn(loadgen::run_phase(
            load,
            values,
            Pace::Every {
                interval: Duration::from_secs(1),
                aligned: false,
            },
            Duration::from_secs(5 + trials as u64),
            Duration::from_secs(30),
        ))
    });
    // Let the load reach its steady rate.
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "agent_revocation: {trials} trials, {loaders} other agents writing {LOAD_SERIES} series every second ({} samples/s), load average {}",
        loaders * LOAD_SERIES,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:>6} {:>28} {:>14} {:>16}",
        "trial", "agent", "api answer ms", "closed after ms"
    );
    let mut closed_after = Vec::new();
    let mut api_after = Vec::new();
    for (n, agent) in targets.iter().enumerate() {
        if let Some(why) = agent.ended() {
            bail!("{} was disconnected before its trial: {why}", agent.host);
        }
        let t = Instant::now();
        admin.revoke(&agent.agent_id)?;
        let api = t.elapsed();
        let reason = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), agent.conn.closed()).await
        });
        let took = t.elapsed();
        match reason {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == close::EXPIRED => {}
            other => bail!("{}: expected a close as revoked, got {other:?}", agent.host),
        }
        println!(
            "{:>6} {:>28} {:>14.1} {:>16.1}",
            n + 1,
            agent.agent_id,
            api.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3
        );
        closed_after.push(took.as_secs_f64());
        api_after.push(api.as_secs_f64());
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(bg) = background {
        let (agents, stats) = rt.block_on(bg)??;
        println!(
            "background load: {} samples acknowledged at {:.0} samples/s, p99 ack {:.1} ms, {} batches unanswered",
            stats.points_acked,
            stats.acked_rate(),
            quantile(&stats.latencies, 0.99) * 1e3,
            stats.unanswered
        );
        for a in &agents {
            a.conn.close(close::DONE, b"bench done");
        }
    }
    let max = closed_after.iter().copied().fold(0.0, f64::max);
    println!(
        "revocation to connection closed: min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms over {} trials; API answered in median {:.1} ms, max {:.1} ms",
        closed_after.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
        quantile(&closed_after, 0.5) * 1e3,
        quantile(&closed_after, 0.9) * 1e3,
        max * 1e3,
        closed_after.len(),
        quantile(&api_after, 0.5) * 1e3,
        api_after.iter().copied().fold(0.0, f64::max) * 1e3
    );
    println!(
        "target: closed within {} ms of the revocation in every trial: {}",
        TARGET.as_millis(),
        if max <= TARGET.as_secs_f64() {
            "MET"
        } else {
            "NOT MET"
        }
    );
    server.stop(Duration::from_secs(60))?;
    Ok(())
}

/// `n` gauges of one agent.
fn series(n: usize) -> Vec<argus_common::model::SeriesDef> {
    let labels: Vec<(String, Labels, MetricType)> = (0..n)
        .map(|i| {
            (
                "node_hwmon_temp_celsius".to_string(),
                Labels::from_pairs([("job", "node".to_string()), ("sensor", format!("temp{i}"))]),
                MetricType::Gauge,
            )
        })
        .collect();
    loadgen::series_defs(&labels)
}
