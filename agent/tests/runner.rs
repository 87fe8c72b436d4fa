//! `argus-agent run` end to end on a real spool: ticks land as batches on the grid,
//! series that vanish end with StaleNaN, and a restart keeps every ref.

use argus_agent::config::{AgentConfig, HumanDuration};
use argus_agent::runner::Runner;
use argus_agent::spool::{Spool, SpoolConfig};
use argus_common::model::{SeriesRef, is_stale_nan};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

fn net_dev(devices: &[(&str, u64)]) -> String {
    let mut s = String::from(
        "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n",
    );
    for (d, rx) in devices {
        s.push_str(&format!(
            "{d:>6}: {rx} 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n"
        ));
    }
    s
}

fn config(state: &Path, proc_root: &Path) -> AgentConfig {
    let mut cfg = AgentConfig::default();
    cfg.agent.state_dir = state.to_path_buf();
    cfg.agent.interval = HumanDuration(Duration::from_secs(1));
    cfg.containers.enabled = false;
    cfg.host.proc_root = proc_root.to_path_buf();
    cfg
}

/// Refs of `node_network_receive_bytes_total` by device, from the spool's dictionary.
fn rx_refs(spool: &Spool) -> HashMap<String, SeriesRef> {
    spool
        .dictionary()
        .filter(|d| d.name == "node_network_receive_bytes_total")
        .map(|d| (d.labels.get("device").unwrap().to_string(), d.series_ref))
        .collect()
}

#[tokio::test]
async fn ticks_are_spooled_and_vanished_series_end_with_stale_nan() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    std::fs::create_dir_all(proc_root.join("net")).unwrap();
    std::fs::write(proc_root.join("loadavg"), "0.10 0.20 0.30 1/100 4242\n").unwrap();
    std::fs::write(
        proc_root.join("net/dev"),
        net_dev(&[("eth0", 100), ("veth9", 5)]),
    )
    .unwrap();
    let state = dir.path().join("state");

    let mut runner = Runner::start(config(&state, &proc_root)).await.unwrap();
    runner.tick(10_000).await.unwrap();
    std::fs::write(proc_root.join("net/dev"), net_dev(&[("eth0", 150)])).unwrap();
    runner.tick(11_000).await.unwrap();
    let incarnation = runner.spool().incarnation();
    drop(runner);

    let mut spool = Spool::open(SpoolConfig::new(state.join("spool"))).unwrap();
    assert_eq!(spool.incarnation(), incarnation);
    let refs = rx_refs(&spool);
    let eth0 = refs["eth0"];
    let batches = spool.pending(0, 10).unwrap();
    assert_eq!(batches.len(), 2);
    let (first, second) = (&batches[0].1, &batches[1].1);
    assert_eq!(
        first[0].timestamp_ms, 10_000,
        "timestamps are the scheduled tick"
    );
    assert_eq!(second[0].timestamp_ms, 11_000);
    let value = |groups: &Vec<argus_common::model::PointGroup>, r: SeriesRef| {
        groups[0].points.iter().find(|p| p.0 == r).map(|p| p.1)
    };
    assert_eq!(value(first, eth0), Some(100.0));
    assert_eq!(value(second, eth0), Some(150.0));
    let load1 = spool
        .dictionary()
        .find(|d| d.name == "node_load1")
        .expect("node_load1 defined");
    assert_eq!(load1.labels.get("job"), Some("node"));
    assert_eq!(value(second, load1.series_ref), Some(0.1));

    // veth9 vanished: its series got StaleNaN in the second batch. Its def stays in
    // the dictionary while a kept batch still needs it.
    let veth_stale: Vec<_> = second[0]
        .points
        .iter()
        .filter(|p| is_stale_nan(p.1))
        .map(|p| p.0)
        .collect();
    // Retired defs are no longer live but stay available to the uplink.
    assert!(
        spool
            .dictionary()
            .all(|d| d.labels.get("device") != Some("veth9"))
    );
    let veth9_refs: Vec<SeriesRef> = spool
        .defs_from(0)
        .filter(|d| d.labels.get("device") == Some("veth9"))
        .map(|d| d.series_ref)
        .collect();
    assert!(!veth9_refs.is_empty());
    for r in &veth9_refs {
        assert!(
            veth_stale.contains(r),
            "series {r} of veth9 has no StaleNaN"
        );
    }
    assert_eq!(
        veth_stale.len(),
        veth9_refs.len(),
        "only veth9's series end"
    );
    drop(spool);

    // Restart: same incarnation, same refs; veth9 is not resurrected.
    let mut runner = Runner::start(config(&state, &proc_root)).await.unwrap();
    runner.tick(12_000).await.unwrap();
    assert_eq!(runner.spool().incarnation(), incarnation);
    drop(runner);
    let mut spool = Spool::open(SpoolConfig::new(state.join("spool"))).unwrap();
    assert_eq!(rx_refs(&spool)["eth0"], eth0);
    let third = spool.pending(0, 10).unwrap().pop().unwrap();
    assert_eq!(third.1[0].timestamp_ms, 12_000);
    assert!(third.1[0].points.iter().all(|p| !is_stale_nan(p.1)));
    assert!(third.1[0].points.iter().all(|p| !veth9_refs.contains(&p.0)));
}
