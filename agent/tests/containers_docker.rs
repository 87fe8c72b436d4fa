//! The container collector against the real Docker engine.
//!
//! The test image is built from the host's busybox (no registry can be reached). The
//! collector is checked against the container's cgroup files, read here directly and
//! independently of the collector's parsers.

use argus_agent::collect::containers::{ContainerCollector, ContainerConfig};
use argus_agent::collect::{CollectError, Families};
use argus_testkit::docker::{self as busybox, Container};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Long enough for a slow, shared CI machine; the tests poll and stop as soon as the
/// condition holds, so this is never waited for when things work.
const DEADLINE: Duration = Duration::from_secs(60);

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The collector talks to the engine the docker CLI talks to.
fn config() -> ContainerConfig {
    let mut cfg = ContainerConfig::default();
    if let Some(host) = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| h.starts_with("unix://"))
    {
        cfg.docker_socket = host;
    }
    cfg
}

async fn collect(c: &mut ContainerCollector) -> (Families, Vec<CollectError>) {
    let mut out = Families::new();
    let mut errors = Vec::new();
    c.collect(now_s(), &mut out, &mut errors).await;
    (out, errors)
}

/// The value of `metric` for the container `id` with the extra label pairs, if any.
fn value(out: &Families, metric: &str, id: &str, extra: &[(&str, &str)]) -> Option<f64> {
    let cadvisor_id = format!("/docker/{id}");
    out.get(metric)?
        .points
        .iter()
        .find(|(l, _)| {
            l.get("id") == Some(cadvisor_id.as_str())
                && extra.iter().all(|(k, v)| l.get(k) == Some(*v))
        })
        .map(|(_, v)| *v)
}

/// Every series of the container `id`, as `metric{labels}` strings.
fn series_of(out: &Families, id: &str) -> Vec<String> {
    let cadvisor_id = format!("/docker/{id}");
    out.iter()
        .flat_map(|f| {
            f.points
                .iter()
                .filter(|(l, _)| l.get("id") == Some(cadvisor_id.as_str()))
                .map(move |(l, _)| format!("{}{:?}", f.name, l))
        })
        .collect()
}

/// The container's cgroup as the kernel shows it, found without the collector's help.
enum Cgroup {
    V1 { cpuacct: PathBuf, memory: PathBuf },
    V2 { dir: PathBuf },
}

impl Cgroup {
    fn find(id: &str) -> Cgroup {
        let root = Path::new("/sys/fs/cgroup");
        let rels = [
            format!("docker/{id}"),
            format!("system.slice/docker-{id}.scope"),
        ];
        let v2 = root.join("cgroup.controllers").exists();
        for rel in &rels {
            if v2 && root.join(rel).is_dir() {
                return Cgroup::V2 {
                    dir: root.join(rel),
                };
            }
            if !v2 && root.join("cpuacct").join(rel).is_dir() {
                return Cgroup::V1 {
                    cpuacct: root.join("cpuacct").join(rel),
                    memory: root.join("memory").join(rel),
                };
            }
        }
        panic!("no cgroup found for container {id}");
    }

    fn cpu_seconds(&self) -> f64 {
        match self {
            Cgroup::V1 { cpuacct, .. } => {
                read(&cpuacct.join("cpuacct.usage"))
                    .trim()
                    .parse::<u64>()
                    .unwrap() as f64
                    / 1e9
            }
            Cgroup::V2 { dir } => key(&read(&dir.join("cpu.stat")), "usage_usec") as f64 / 1e6,
        }
    }

    /// usage minus inactive file pages, as cAdvisor defines the working set.
    fn working_set(&self) -> f64 {
        let (usage, stat, inactive) = match self {
            Cgroup::V1 { memory, .. } => (
                memory.join("memory.usage_in_bytes"),
                memory.join("memory.stat"),
                "total_inactive_file",
            ),
            Cgroup::V2 { dir } => (
                dir.join("memory.current"),
                dir.join("memory.stat"),
                "inactive_file",
            ),
        };
        let usage: u64 = read(&usage).trim().parse().unwrap();
        usage.saturating_sub(key(&read(&stat), inactive)) as f64
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn key(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text:?}"))
}

fn setup(test: &str) -> bool {
    if !busybox::require_engine(test) {
        return false;
    }
    if let Err(e) = busybox::ensure_image() {
        panic!("building the test image: {e}");
    }
    true
}

#[tokio::test]
async fn a_busy_container_is_measured_from_its_cgroup_and_disappears_when_removed() {
    if !setup("a_busy_container_is_measured_from_its_cgroup_and_disappears_when_removed") {
        return;
    }
    let name = busybox::unique_name("argus-test-cpu");
    let container = Container::run(
        &name,
        &["--memory", "64m"],
        &["sh", "-c", "while :; do :; done"],
    )
    .unwrap_or_else(|e| panic!("starting the container: {e}"));
    let id = container.id.clone();
    let cgroup = Cgroup::find(&id);
    // Wait for the engine as long as it takes: this test asserts what each single
    // collection holds, and a busy CI engine may answer slower than the default wait.
    let mut collector = ContainerCollector::new(config()).with_engine_wait(DEADLINE);

    let cpu_before = cgroup.cpu_seconds();
    let ws_before = cgroup.working_set();
    let (first, errors) = collect(&mut collector).await;
    let cpu_after = cgroup.cpu_seconds();
    let ws_after = cgroup.working_set();
    assert!(errors.is_empty(), "errors: {errors:#?}");

    // Labels as cAdvisor names them.
    let cadvisor_id = format!("/docker/{id}");
    let cpu_family = first
        .get("container_cpu_usage_seconds_total")
        .expect("no CPU family");
    let (labels, cpu1) = cpu_family
        .points
        .iter()
        .find(|(l, _)| l.get("id") == Some(cadvisor_id.as_str()))
        .unwrap_or_else(|| panic!("container {name} missing from {:?}", series_of(&first, &id)));
    assert_eq!(labels.get("name"), Some(name.as_str()));
    assert_eq!(labels.get("image"), Some(busybox::IMAGE));
    assert_eq!(labels.get("cpu"), Some("total"));

    // The counter lies between the two direct reads around the collection.
    assert!(
        cpu_before - 1e-9 <= *cpu1 && *cpu1 <= cpu_after + 1e-9,
        "collected {cpu1} s, cgroup said {cpu_before} s before and {cpu_after} s after"
    );

    // Memory moves a little between reads; the working set must be close to the
    // cgroup's own figure and never zero for a running shell.
    let ws = value(&first, "container_memory_working_set_bytes", &id, &[]).expect("no working set");
    let tolerance = 1024.0 * 1024.0;
    assert!(ws > 0.0, "zero working set");
    assert!(
        ws_before.min(ws_after) - tolerance <= ws && ws <= ws_before.max(ws_after) + tolerance,
        "working set {ws}, cgroup said {ws_before} before and {ws_after} after"
    );
    assert_eq!(
        value(&first, "container_spec_memory_limit_bytes", &id, &[]),
        Some(64.0 * 1024.0 * 1024.0)
    );
    assert!(value(&first, "container_memory_usage_bytes", &id, &[]).is_some_and(|v| v >= ws));
    assert_eq!(
        value(&first, "container_state", &id, &[("state", "running")]),
        Some(1.0)
    );
    assert_eq!(
        value(&first, "container_state", &id, &[("state", "exited")]),
        Some(0.0)
    );
    assert!(value(&first, "container_start_time_seconds", &id, &[]).is_some_and(|t| t > 1e9));
    assert!(value(&first, "container_last_seen", &id, &[]).is_some());

    // The container is on the default bridge: eth0 is counted, loopback is not.
    let rx1 = value(
        &first,
        "container_network_receive_bytes_total",
        &id,
        &[("interface", "eth0")],
    )
    .expect("no eth0 receive counter");
    assert!(
        value(
            &first,
            "container_network_transmit_packets_total",
            &id,
            &[("interface", "eth0")]
        )
        .is_some()
    );
    assert!(
        value(
            &first,
            "container_network_receive_bytes_total",
            &id,
            &[("interface", "lo")]
        )
        .is_none()
    );

    // Let the busy loop burn measurable CPU, then collect again: the counter rose.
    let started = Instant::now();
    while cgroup.cpu_seconds() < cpu1 + 0.05 {
        assert!(
            started.elapsed() < DEADLINE,
            "the busy container got no CPU for {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (second, errors) = collect(&mut collector).await;
    assert!(errors.is_empty(), "errors: {errors:#?}");
    let cpu2 = value(
        &second,
        "container_cpu_usage_seconds_total",
        &id,
        &[("cpu", "total")],
    )
    .expect("container missing from the second collection");
    assert!(cpu2 > *cpu1, "CPU counter did not rise: {cpu1} then {cpu2}");
    assert!(value(&second, "container_cpu_user_seconds_total", &id, &[]).is_some_and(|v| v > 0.0));
    let rx2 = value(
        &second,
        "container_network_receive_bytes_total",
        &id,
        &[("interface", "eth0")],
    )
    .expect("no eth0 receive counter in the second collection");
    assert!(rx2 >= rx1, "receive counter went back: {rx1} then {rx2}");

    // Removed: the next collection has no series for it at all.
    container
        .remove()
        .unwrap_or_else(|e| panic!("removing the container: {e}"));
    let (third, errors) = collect(&mut collector).await;
    assert!(errors.is_empty(), "errors: {errors:#?}");
    let left = series_of(&third, &id);
    assert!(left.is_empty(), "series left after removal: {left:#?}");
}

#[tokio::test]
async fn a_restart_is_seen_without_waiting_for_the_periodic_refresh() {
    if !setup("a_restart_is_seen_without_waiting_for_the_periodic_refresh") {
        return;
    }
    let name = busybox::unique_name("argus-test-restart");
    let container = Container::run(
        &name,
        &["--restart", "on-failure:20", "--network", "none"],
        &["sh", "-c", "sleep 2; exit 1"],
    )
    .unwrap_or_else(|e| panic!("starting the container: {e}"));
    let id = container.id.clone();
    // An hour between periodic refreshes: only the cgroup and pid checks can notice.
    let mut collector = ContainerCollector::new(ContainerConfig {
        inventory_refresh: Duration::from_secs(3600),
        ..config()
    });

    let (first, errors) = collect(&mut collector).await;
    assert!(errors.is_empty(), "errors: {errors:#?}");
    let restarts = value(&first, "container_restarts", &id, &[]).expect("no restart count");

    let started = Instant::now();
    loop {
        let (out, errors) = collect(&mut collector).await;
        assert!(errors.is_empty(), "errors: {errors:#?}");
        if value(&out, "container_restarts", &id, &[]).is_some_and(|r| r > restarts) {
            // No network namespace of its own but `none`: only loopback, nothing reported.
            assert!(value(&out, "container_network_receive_bytes_total", &id, &[]).is_none());
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "restart count still {restarts} after {DEADLINE:?}: {:#?}",
            series_of(&out, &id)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(container);
}

/// Through the whole `run` path: a container's series are spooled while it runs, and
/// after `docker rm` the next tick writes StaleNaN for each of them.
#[tokio::test]
async fn a_removed_container_ends_with_stale_nan_in_the_spool() {
    use argus_agent::config::{AgentConfig, HumanDuration};
    use argus_agent::runner::Runner;
    use argus_agent::spool::{Spool, SpoolConfig};
    use argus_common::model::is_stale_nan;

    if !setup("a_removed_container_ends_with_stale_nan_in_the_spool") {
        return;
    }
    let container = Container::run(
        &busybox::unique_name("argus-test-stale"),
        &[],
        &["sleep", "600"],
    )
    .unwrap_or_else(|e| panic!("starting the container: {e}"));
    let cadvisor_id = format!("/docker/{}", container.id);
    let state = tempfile::tempdir().unwrap();
    let mut cfg = AgentConfig::default();
    cfg.agent.state_dir = state.path().to_path_buf();
    cfg.agent.interval = HumanDuration(Duration::from_secs(1));
    cfg.containers.docker_socket = config().docker_socket;

    let mut runner = Runner::start(cfg.clone()).await.unwrap();
    // The first ticks may not know the container's name yet; wait until they do.
    let started = Instant::now();
    let mut tick = 1_000_000;
    loop {
        runner.tick(tick).await.unwrap();
        tick += 1_000;
        let named = runner.spool().dictionary().any(|d| {
            d.labels.get("id") == Some(cadvisor_id.as_str()) && d.labels.get("name").is_some()
        });
        if named {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the container never showed up"
        );
    }
    container.remove().unwrap();
    runner.tick(tick).await.unwrap();
    drop(runner);

    let mut spool = Spool::open(SpoolConfig::new(state.path().join("spool"))).unwrap();
    let refs: Vec<u64> = spool
        .defs_from(0)
        .filter(|d| {
            d.labels.get("id") == Some(cadvisor_id.as_str())
                && d.name.starts_with("container_")
                && !d.name.starts_with("container_state")
                && d.name != "container_restarts"
        })
        .map(|d| d.series_ref)
        .collect();
    assert!(refs.len() >= 5, "few series for the container: {refs:?}");
    let last = spool.pending(0, 10_000).unwrap().pop().unwrap();
    let stale: Vec<u64> = last.1[0]
        .points
        .iter()
        .filter(|p| is_stale_nan(p.1))
        .map(|p| p.0)
        .collect();
    for r in &refs {
        assert!(
            stale.contains(r),
            "series {r} of the removed container has no StaleNaN"
        );
    }
}

/// `collect --once` with a container running still passes promtool (container names
/// and label values go through the exposition escaping).
#[test]
fn collect_once_with_containers_passes_promtool() {
    if !setup("collect_once_with_containers_passes_promtool") {
        return;
    }
    let Some(promtool) = argus_testkit::promtool::find() else {
        return;
    };
    let _c = Container::run(
        &busybox::unique_name("argus-test-prom"),
        &[],
        &["sleep", "600"],
    )
    .unwrap_or_else(|e| panic!("starting the container: {e}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_argus-agent"))
        .args(["collect", "--once"])
        .env("ARGUS_CONTAINERS_DOCKER_SOCKET", config().docker_socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("container_cpu_usage_seconds_total{"),
        "no container metrics"
    );
    if let Err(e) = argus_testkit::promtool::check_metrics(&promtool, &text) {
        panic!("{e}");
    }
}
