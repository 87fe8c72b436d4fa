//! The newcomer's path (issue 5 item 8): `argus demo` on an empty directory starts a
//! coordinator, enrolls its local agent over QUIC and mTLS, and the local host's series
//! become queryable; Ctrl-C stops it cleanly; a second run reuses the data directory
//! (the agent keeps its identity, no second join token is spent).

mod common;

use argus_coordinator::fleet::cli_config::CliConfig;
use argus_coordinator::fleet::cluster_files::ClusterPaths;
use argus_testkit::child::ChildGuard;
use argus_testkit::http::{self, Response};
use common::{BIN, start_on_free_port, wait_for};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Loose: a debug build on a loaded 2-core machine; the agent collects every second.
const SERIES_WITHIN: Duration = Duration::from_secs(90);

fn start_demo(data_dir: &Path, log: &Path) -> (ChildGuard, SocketAddr) {
    let dir = data_dir.display().to_string();
    start_on_free_port(
        "argus demo",
        Path::new(BIN),
        |port| {
            [
                "demo",
                "--data-dir",
                &dir,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--interval",
                "1s",
            ]
            .map(String::from)
            .to_vec()
        },
        log,
        "/ready",
        Duration::from_secs(90),
    )
}

fn get(addr: SocketAddr, path: &str, token: &str) -> Result<Response, String> {
    http::request(
        addr,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {token}"))],
        &[],
        Duration::from_secs(10),
    )
    .map_err(|e| format!("GET {path}: {e}"))
}

/// `node_load1` of the local host, as the demo's agent sent it: `(instance, job)` of
/// each series the query returns.
fn node_load1(addr: SocketAddr, token: &str) -> Result<Vec<(String, String)>, String> {
    let r = get(addr, "/api/v1/query?query=node_load1", token)?;
    if r.status != 200 {
        return Err(format!("status {}: {}", r.status, r.text()));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    Ok(result
        .iter()
        .map(|s| {
            let label = |k: &str| s["metric"][k].as_str().unwrap_or_default().to_string();
            (label("instance"), label("job"))
        })
        .collect())
}

#[test]
fn demo_enrolls_its_agent_serves_the_host_and_restarts_on_the_same_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("argus-data");
    let log = tmp.path().join("demo.log");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();

    let (mut demo, addr) = start_demo(&data, &log);
    let token = CliConfig::read(&ClusterPaths::of_data_dir(&data).cli_config())
        .expect("the demo wrote the CLI config with the admin token")
        .token;
    wait_for(
        "node_load1 from the demo's enrolled agent",
        Instant::now() + SERIES_WITHIN,
        || {
            let series = node_load1(addr, &token)?;
            Ok(series.iter().any(|(_, job)| job == "node"))
        },
    );
    let series = node_load1(addr, &token).unwrap();
    assert!(
        series.iter().any(|(instance, _)| *instance == host),
        "the agent's instance is this host's name {host:?}: {series:?}"
    );
    // The agent list shows it with the version its Hello carried.
    wait_for(
        "the demo agent listed with its version",
        Instant::now() + SERIES_WITHIN,
        || {
            let r = get(addr, "/api/agents", &token)?;
            let v: serde_json::Value =
                serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
            let agent = &v["data"][0];
            if agent["instance"] != host.as_str() || agent["state"] != "active" {
                return Err(format!("not listed as active {host}: {v}"));
            }
            Ok(agent["version"].as_str().is_some_and(|s| !s.is_empty()))
        },
    );
    let banner = std::fs::read_to_string(&log).unwrap();
    assert!(
        banner.contains(&format!("Bearer {token}")) && banner.contains("/api/v1/query"),
        "the banner shows the admin token and curl lines:\n{banner}"
    );

    let status = demo.terminate(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "clean exit on a stop signal: {status}");

    // Again on the same directory: the agent reconnects with its identity.
    let (mut again, addr) = start_demo(&data, &tmp.path().join("demo-2.log"));
    let before = Instant::now();
    wait_for(
        "fresh node_load1 after the restart",
        Instant::now() + SERIES_WITHIN,
        || {
            let r = get(addr, "/api/v1/query?query=timestamp(node_load1)", &token)?;
            let v: serde_json::Value =
                serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
            let newest = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
            let started = common::now_ms() as f64 / 1000.0 - before.elapsed().as_secs_f64();
            Ok(newest >= started)
        },
    );
    let tokens = get(addr, "/api/tokens", &token).unwrap();
    let tokens: serde_json::Value = serde_json::from_slice(&tokens.body).unwrap();
    assert_eq!(
        tokens["data"].as_array().map(Vec::len),
        Some(1),
        "the second run spent no second join token: {tokens}"
    );
    let status = again.terminate(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "clean exit on a stop signal: {status}");
}
