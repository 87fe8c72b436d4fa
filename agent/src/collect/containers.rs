//! Container metrics from cgroups, named as cAdvisor names them.
//!
//! # Cost model
//!
//! The agent runs at a 1 s interval and must cost less than half of node_exporter,
//! counting the CPU the Docker engine spends answering us. So the engine is asked as
//! little as possible and every tick reads only kernel files:
//!
//! * each tick lists the Docker cgroup directories (one `readdir` per driver) and reads
//!   each running container's cgroup files and `/proc/<pid>/net/dev`;
//! * an inventory (name, image, labels, state, restart count, pid, start time) is kept
//!   from the engine and refreshed only at start, every
//!   [`ContainerConfig::inventory_refresh`], when the set of container cgroups changes
//!   (a container started or stopped), and when a container's main pid vanished while
//!   its cgroup stayed (a restart). A refresh is one `list` call plus an `inspect` for
//!   each container that is new or whose state changed; unchanged containers cost nothing.
//!
//! A refresh runs as its own task. A collection waits for it only briefly (500 ms by
//! default, [`ContainerCollector::with_engine_wait`]) and otherwise goes on with the
//! inventory it has, so a hung engine never stalls the tick that host metrics share;
//! failures back off from 1 s up to `inventory_refresh`.
//!
//! There is deliberately no subscription to the engine's event stream: the cgroup
//! listing and the pid check already see starts, stops and restarts within one tick,
//! without a background task or a second connection to keep alive. What only the
//! engine knows (a rename, a stopped container being removed, a pause) shows up within
//! one `inventory_refresh`.
//!
//! # Labels and names
//!
//! Every series carries `name` (the container name without its leading `/`), `image`
//! (the image as the container was created from, `Config.Image`) and `id`. `id` is
//! `/docker/<full id>`, the cgroup path cAdvisor reports under Docker's default
//! cgroupfs driver. It is used under the systemd driver too (where cAdvisor would say
//! `/system.slice/docker-<id>.scope`), so a container keeps one identity whichever
//! driver the host uses and whether or not it is running. Docker labels are kept in the
//! inventory but not copied onto series (cAdvisor's `container_label_*`), since they
//! multiply label size on every sample.
//!
//! Block I/O is reported as cAdvisor's `container_fs_reads_bytes_total` and
//! `container_fs_writes_bytes_total` with a `device` label (`/dev/sda`), the names
//! dashboards use, rather than `container_blkio_device_usage_total`.
//!
//! cAdvisor has no metric for Docker's restart count or state, so they are
//! `container_restarts` (a gauge: Docker resets it when a container is started by
//! hand) and `container_state{state}`, one 0/1 gauge per Docker state as
//! kube-state-metrics does for pod phases, so `container_state{state="running"} == 0`
//! works as an alert and a state change does not end one series and start another.
//! These two are reported for every container the engine knows, running or not; the
//! cgroup metrics only for containers that have a cgroup.
//!
//! A container whose cgroup exists but that the engine has not described yet (it is
//! unreachable) is left out until it has been: series without a name would only churn.
//! Containers under a custom `--cgroup-parent` are not found.

use super::CollectError;
use super::Families;
use super::cgroup::{CgroupDriver, CgroupLayout, CgroupReader, CgroupStats, ReadOutcome};
use argus_common::model::{Labels, MetricType};
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum,
};
use bollard::query_parameters::ListContainersOptions;
use bollard::{API_DEFAULT_VERSION, Docker};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Per-request timeout given to bollard, in seconds: long enough for a busy engine,
/// short enough that a hung one is given up on (and backed off from) soon.
const ENGINE_REQUEST_TIMEOUT_SECS: u64 = 3;

/// Upper bound on one whole inventory refresh (list plus inspects).
const REFRESH_BUDGET: Duration = Duration::from_secs(10);

/// How long a collection waits for a running refresh by default.
const ENGINE_WAIT: Duration = Duration::from_millis(500);

/// First retry delay after the engine failed; doubles up to `inventory_refresh`.
const FIRST_BACKOFF_S: f64 = 1.0;

/// How many ticks in a row a container whose inventory contradicts its cgroup (running
/// without a cgroup, a cgroup without a live pid) may cause a re-inspection. Bounded
/// so a container the agent can never reconcile (custom cgroup parent) costs one
/// inspection per refresh at most, not one per tick.
const MAX_MISMATCH_CHECKS: u8 = 5;

/// Where to find the engine and the kernel's view of containers.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    /// `unix:///path` or a plain socket path. Default `unix:///var/run/docker.sock`.
    pub docker_socket: String,
    /// Where the cgroup hierarchy is mounted. Default `/sys/fs/cgroup`; when the agent
    /// runs in a container, the host's (for example `/host/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The host's `/proc` (default `/proc`), where the engine's container pids are valid.
    pub proc_root: PathBuf,
    /// How often the inventory is re-listed from the engine even when nothing seems to
    /// have changed. Default 30 s.
    pub inventory_refresh: Duration,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            docker_socket: "unix:///var/run/docker.sock".to_string(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            proc_root: PathBuf::from("/proc"),
            inventory_refresh: Duration::from_secs(30),
        }
    }
}

/// Docker's container states, as `container_state{state}` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl ContainerState {
    pub const ALL: [ContainerState; 7] = [
        ContainerState::Created,
        ContainerState::Running,
        ContainerState::Paused,
        ContainerState::Restarting,
        ContainerState::Removing,
        ContainerState::Exited,
        ContainerState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
        }
    }

    /// States in which the container's processes, and so its cgroup, exist.
    fn has_cgroup(self) -> bool {
        matches!(self, ContainerState::Running | ContainerState::Paused)
    }

    fn from_inspect(s: ContainerStateStatusEnum) -> Option<Self> {
        Some(match s {
            ContainerStateStatusEnum::CREATED => ContainerState::Created,
            ContainerStateStatusEnum::RUNNING => ContainerState::Running,
            ContainerStateStatusEnum::PAUSED => ContainerState::Paused,
            ContainerStateStatusEnum::RESTARTING => ContainerState::Restarting,
            ContainerStateStatusEnum::REMOVING => ContainerState::Removing,
            ContainerStateStatusEnum::EXITED => ContainerState::Exited,
            ContainerStateStatusEnum::DEAD => ContainerState::Dead,
            ContainerStateStatusEnum::EMPTY | ContainerStateStatusEnum::STOPPING => return None,
        })
    }

    fn from_summary(s: ContainerSummaryStateEnum) -> Option<Self> {
        Some(match s {
            ContainerSummaryStateEnum::CREATED => ContainerState::Created,
            ContainerSummaryStateEnum::RUNNING => ContainerState::Running,
            ContainerSummaryStateEnum::PAUSED => ContainerState::Paused,
            ContainerSummaryStateEnum::RESTARTING => ContainerState::Restarting,
            ContainerSummaryStateEnum::REMOVING => ContainerState::Removing,
            ContainerSummaryStateEnum::EXITED => ContainerState::Exited,
            ContainerSummaryStateEnum::DEAD => ContainerState::Dead,
            ContainerSummaryStateEnum::EMPTY | ContainerSummaryStateEnum::STOPPING => return None,
        })
    }
}

/// What the engine told us about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// Without the leading `/`.
    pub name: String,
    /// `Config.Image`: the image reference the container was created from.
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// `None` for a state this agent does not know.
    pub state: Option<ContainerState>,
    pub restart_count: u64,
    /// The main process, in the host's pid namespace; `None` when not running.
    pub pid: Option<u32>,
    pub started_at_s: Option<f64>,
    /// False for `host` and `container:<id>` network modes, whose counters belong to
    /// the host or to another container and would be counted twice.
    pub own_network: bool,
    /// `name`, `image`, `id`: cloned into every series of the container.
    base_labels: Labels,
    /// Consecutive ticks this entry contradicted the cgroup listing (see [`MAX_MISMATCH_CHECKS`]).
    mismatch_checks: u8,
}

impl ContainerInfo {
    /// Builds the inventory entry from an inspect answer; `None` without an id.
    pub fn from_inspect(r: &ContainerInspectResponse) -> Option<(String, ContainerInfo)> {
        let id = r.id.clone()?;
        let name = r
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        let config = r.config.as_ref();
        let image = config
            .and_then(|c| c.image.clone())
            .or_else(|| r.image.clone())
            .unwrap_or_default();
        let labels = config
            .and_then(|c| c.labels.as_ref())
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let state = r.state.as_ref();
        let pid = state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0);
        let started_at_s = state
            .and_then(|s| s.started_at.as_deref())
            .and_then(parse_docker_time);
        let network_mode = r
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.as_deref())
            .unwrap_or("");
        let own_network = network_mode != "host" && !network_mode.starts_with("container:");
        let info = ContainerInfo {
            base_labels: base_labels(&name, &image, &id),
            name,
            image,
            labels,
            state: state
                .and_then(|s| s.status)
                .and_then(ContainerState::from_inspect),
            restart_count: r
                .restart_count
                .and_then(|c| u64::try_from(c).ok())
                .unwrap_or(0),
            pid,
            started_at_s,
            own_network,
            mismatch_checks: 0,
        };
        Some((id, info))
    }

    fn rename(&mut self, name: String, id: &str) {
        self.base_labels = base_labels(&name, &self.image, id);
        self.name = name;
    }
}

fn base_labels(name: &str, image: &str, id: &str) -> Labels {
    Labels::from_pairs([
        ("name", name.to_string()),
        ("image", image.to_string()),
        ("id", format!("/docker/{id}")),
    ])
}

/// Parses Docker's RFC 3339 timestamps (`2024-05-07T21:09:36.123456789Z`) to Unix
/// seconds. Docker's zero time (`0001-01-01T00:00:00Z`, never started) gives `None`.
pub fn parse_docker_time(s: &str) -> Option<f64> {
    let num = |a: usize, b: usize| -> Option<i64> {
        let part = s.get(a..b)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let sep = |i: usize, c: u8| s.as_bytes().get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && (sep(10, b'T') || sep(10, b't') || sep(10, b' '))) {
        return None;
    }
    if !(sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if year <= 1 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut fraction = 0.0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        fraction = format!("0.{}", &frac[..digits]).parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest.get(1..)?.split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs as f64 + fraction)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the usual era-based formula:
/// years start in March so the leap day is the last day of the year).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// One interface's counters from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDevStats {
    pub interface: String,
    pub receive_bytes: u64,
    pub receive_packets: u64,
    pub receive_errors: u64,
    pub receive_dropped: u64,
    pub transmit_bytes: u64,
    pub transmit_packets: u64,
    pub transmit_errors: u64,
    pub transmit_dropped: u64,
}

/// Parses `/proc/<pid>/net/dev`, skipping the two header lines and `lo` (as cAdvisor
/// does: loopback traffic never leaves the container).
pub fn parse_net_dev(text: &str, out: &mut Vec<NetDevStats>) -> Result<(), String> {
    out.clear();
    for line in text.lines() {
        let Some((name, counters)) = line.split_once(':') else {
            continue; // headers
        };
        let name = name.trim();
        if name == "lo" || name.is_empty() || name.contains('|') {
            continue;
        }
        let mut fields = [0u64; 16];
        let mut n = 0;
        for (slot, field) in fields.iter_mut().zip(counters.split_ascii_whitespace()) {
            *slot = field
                .parse()
                .map_err(|e| format!("interface {name}: field {field:?}: {e}"))?;
            n += 1;
        }
        if n < 12 {
            return Err(format!("interface {name}: {n} counters, expected 16"));
        }
        out.push(NetDevStats {
            interface: name.to_string(),
            receive_bytes: fields[0],
            receive_packets: fields[1],
            receive_errors: fields[2],
            receive_dropped: fields[3],
            transmit_bytes: fields[8],
            transmit_packets: fields[9],
            transmit_errors: fields[10],
            transmit_dropped: fields[11],
        });
    }
    Ok(())
}

/// Parses `/proc/partitions` into `(major, minor) -> "/dev/<name>"`, the device names
/// cAdvisor puts on its filesystem I/O series.
pub fn parse_partitions(text: &str) -> HashMap<(u32, u32), String> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            let major = f.next()?.parse().ok()?;
            let minor = f.next()?.parse().ok()?;
            let _blocks = f.next()?;
            let name = f.next()?;
            Some(((major, minor), format!("/dev/{name}")))
        })
        .collect()
}

/// What one inventory refresh must do, decided from the engine's list alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RefreshPlan {
    /// Known containers the engine no longer lists.
    pub remove: Vec<String>,
    /// Containers to inspect: new ones, ones whose state changed, ones asked for.
    pub inspect: Vec<String>,
    /// Known containers listed under a new name.
    pub rename: Vec<(String, String)>,
}

/// The container's canonical name from a list entry: legacy links add aliases such as
/// `/web/db`, so the one without an inner `/` is preferred.
fn summary_name(s: &ContainerSummary) -> Option<String> {
    let names = s.names.as_ref()?;
    let pick = names
        .iter()
        .find(|n| !n.trim_start_matches('/').contains('/'))
        .or_else(|| names.first())?;
    Some(pick.trim_start_matches('/').to_string())
}

/// What a refresh needs to know of a container already in the inventory to tell
/// whether the engine's list shows a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownContainer {
    pub state: Option<ContainerState>,
    pub name: String,
}

/// Decides which containers need an `inspect`, so a refresh costs one `list` when
/// nothing changed. `recheck` holds ids whose cgroup or pid contradicted the inventory.
pub fn plan_refresh(
    inventory: &HashMap<String, KnownContainer>,
    summaries: &[ContainerSummary],
    recheck: &HashSet<String>,
) -> RefreshPlan {
    let mut plan = RefreshPlan::default();
    let mut listed = HashSet::with_capacity(summaries.len());
    for s in summaries {
        let Some(id) = s.id.as_deref() else {
            continue;
        };
        listed.insert(id);
        let Some(known) = inventory.get(id) else {
            plan.inspect.push(id.to_string());
            continue;
        };
        let state = s.state.and_then(ContainerState::from_summary);
        if state != known.state || recheck.contains(id) {
            plan.inspect.push(id.to_string());
        } else if let Some(name) = summary_name(s).filter(|n| *n != known.name) {
            plan.rename.push((id.to_string(), name));
        }
    }
    plan.remove = inventory
        .keys()
        .filter(|id| !listed.contains(id.as_str()))
        .cloned()
        .collect();
    plan.remove.sort();
    plan
}

/// Connects and negotiates the API version once per connection: Docker 20.10 speaks
/// API 1.41, older than bollard's default, and refuses newer requests.
async fn connect(endpoint: &str) -> Result<Docker, String> {
    let path = socket_path(endpoint)?;
    Docker::connect_with_unix(path, ENGINE_REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        .map_err(|e| e.to_string())?
        .negotiate_version()
        .await
        .map_err(|e| format!("negotiating the API version: {e}"))
}

/// What a refresh task brings back. What it learnt before failing is kept, so a
/// timeout mid-way still makes progress.
#[derive(Default)]
struct RefreshResult {
    /// The connection to reuse next time; dropped after a failure.
    docker: Option<Docker>,
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    /// `None`: the container was removed between the list and its inspect.
    inspected: Vec<(String, Option<ContainerInfo>)>,
    error: Option<String>,
}

/// One refresh, run as its own task so a slow or hung engine holds up a tick for at
/// most the collector's wait, never for the whole [`REFRESH_BUDGET`].
async fn run_refresh(
    endpoint: String,
    docker: Option<Docker>,
    known: HashMap<String, KnownContainer>,
    recheck: HashSet<String>,
) -> RefreshResult {
    let mut result = RefreshResult::default();
    let steps = refresh_steps(&endpoint, docker, &known, &recheck, &mut result);
    result.error = match tokio::time::timeout(REFRESH_BUDGET, steps).await {
        Ok(outcome) => outcome.err(),
        Err(_) => Some(format!("no answer within {REFRESH_BUDGET:?}")),
    };
    result
}

/// One `list`, then an `inspect` per container the plan names.
async fn refresh_steps(
    endpoint: &str,
    docker: Option<Docker>,
    known: &HashMap<String, KnownContainer>,
    recheck: &HashSet<String>,
    result: &mut RefreshResult,
) -> Result<(), String> {
    let docker = match docker {
        Some(d) => d,
        None => connect(endpoint).await?,
    };
    result.docker = Some(docker.clone());
    let options = ListContainersOptions {
        all: true,
        ..Default::default()
    };
    let summaries = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| format!("listing containers: {e}"))?;
    let plan = plan_refresh(known, &summaries, recheck);
    result.remove = plan.remove;
    result.rename = plan.rename;
    for id in plan.inspect {
        match docker.inspect_container(&id, None).await {
            Ok(r) => {
                let info = ContainerInfo::from_inspect(&r).map(|(_, info)| info);
                result.inspected.push((id, info));
            }
            Err(e) if is_not_found(&e) => result.inspected.push((id, None)),
            Err(e) => return Err(format!("inspecting {id}: {e}")),
        }
    }
    Ok(())
}

/// A refresh task and the recheck requests it carries.
struct InFlight {
    handle: tokio::task::JoinHandle<RefreshResult>,
    recheck: HashSet<String>,
}

/// Only local sockets are supported: the agent runs beside the engine it watches.
fn socket_path(endpoint: &str) -> Result<&str, String> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        Ok(path)
    } else if endpoint.contains("://") {
        Err("only unix:// sockets are supported".to_string())
    } else {
        Ok(endpoint)
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Collects container metrics; see the module documentation for what it costs.
pub struct ContainerCollector {
    cfg: ContainerConfig,
    /// The engine connection, kept between refreshes.
    docker: Option<Docker>,
    in_flight: Option<InFlight>,
    /// How long a collection waits for a refresh before going on without it.
    engine_wait: Duration,
    /// Created on the first collection, so construction does no I/O.
    reader: Option<CgroupReader>,
    inventory: BTreeMap<String, ContainerInfo>,
    /// Containers with a cgroup at the last listing, sorted by id.
    present: Vec<(String, CgroupDriver)>,
    /// The listing being built; swapped with `present` to reuse both allocations.
    scan: Vec<(String, CgroupDriver)>,
    /// Ids the next refresh must inspect although their listed state did not change.
    recheck: HashSet<String>,
    /// A change was seen that the inventory has not caught up with yet.
    refresh_pending: bool,
    last_refresh_s: Option<f64>,
    retry_at_s: f64,
    backoff_s: f64,
    devices: HashMap<(u32, u32), String>,
    devices_loaded_s: Option<f64>,
    stats: CgroupStats,
    net: Vec<NetDevStats>,
    buf: String,
}

impl Drop for ContainerCollector {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.handle.abort();
        }
    }
}

impl ContainerCollector {
    pub fn new(cfg: ContainerConfig) -> Self {
        Self {
            cfg,
            docker: None,
            in_flight: None,
            engine_wait: ENGINE_WAIT,
            reader: None,
            inventory: BTreeMap::new(),
            present: Vec::new(),
            scan: Vec::new(),
            recheck: HashSet::new(),
            refresh_pending: true,
            last_refresh_s: None,
            retry_at_s: f64::NEG_INFINITY,
            backoff_s: FIRST_BACKOFF_S,
            devices: HashMap::new(),
            devices_loaded_s: None,
            stats: CgroupStats::default(),
            net: Vec::new(),
            buf: String::with_capacity(2048),
        }
    }

    /// Sets how long a collection waits for the engine before going on with the
    /// inventory it has (default 500 ms, well inside a 1 s interval). Tests that
    /// assert what one collection contains set it long.
    pub fn with_engine_wait(mut self, wait: Duration) -> Self {
        self.engine_wait = wait;
        self
    }

    /// The containers the engine last described, by full id.
    pub fn inventory(&self) -> impl Iterator<Item = (&str, &ContainerInfo)> {
        self.inventory.iter().map(|(id, info)| (id.as_str(), info))
    }

    /// Fills `out` for the tick at `now_s` (Unix seconds of the scheduled tick, used for
    /// `container_last_seen` and to pace inventory refreshes, so tests need no clock).
    ///
    /// What cannot be read goes to `errors` and the rest carries on: an unreachable
    /// engine adds at most one [`CollectError::Docker`] per collection, and the cgroups
    /// of containers already known keep being read meanwhile.
    pub async fn collect(
        &mut self,
        now_s: f64,
        out: &mut Families,
        errors: &mut Vec<CollectError>,
    ) {
        if self.scan_cgroups(errors) {
            self.refresh_pending = true;
        }
        self.refresh(now_s, errors).await;
        if self.devices_due(now_s) {
            self.reload_devices(now_s, errors);
        }
        self.emit(now_s, out, errors);
    }

    fn reader(&mut self) -> &mut CgroupReader {
        self.reader
            .get_or_insert_with(|| CgroupReader::new(CgroupLayout::detect(&self.cfg.cgroup_root)))
    }

    /// Lists which containers have a cgroup; true if the set changed since last tick.
    fn scan_cgroups(&mut self, errors: &mut Vec<CollectError>) -> bool {
        let mut scan = std::mem::take(&mut self.scan);
        scan.clear();
        let layout = self.reader().layout().clone();
        for driver in [CgroupDriver::Cgroupfs, CgroupDriver::Systemd] {
            let dir = layout.listing_dir(driver);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    errors.push(CollectError::Read {
                        path: dir,
                        source: e,
                    });
                    continue;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if let Some(id) = name.to_str().and_then(|n| driver.container_id(n)) {
                    scan.push((id.to_string(), driver));
                }
            }
        }
        scan.sort();
        scan.dedup_by(|a, b| a.0 == b.0);
        let changed = scan != self.present;
        self.scan = std::mem::replace(&mut self.present, scan);
        changed
    }

    fn refresh_due(&self, now_s: f64) -> bool {
        if now_s < self.retry_at_s {
            return false; // backing off after a failure
        }
        let periodic = match self.last_refresh_s {
            None => true,
            // A clock that stepped back counts as due rather than stalling refreshes.
            Some(last) => now_s >= last + self.cfg.inventory_refresh.as_secs_f64() || now_s < last,
        };
        periodic || self.refresh_pending || !self.recheck.is_empty()
    }

    /// Starts a refresh when one is due and none is running, then waits for it at
    /// most `engine_wait`; a refresh that takes longer is applied at a later tick.
    async fn refresh(&mut self, now_s: f64, errors: &mut Vec<CollectError>) {
        if self.in_flight.is_none() {
            if !self.refresh_due(now_s) {
                return;
            }
            self.start_refresh();
        }
        let Some(in_flight) = self.in_flight.as_mut() else {
            return;
        };
        let Ok(joined) = tokio::time::timeout(self.engine_wait, &mut in_flight.handle).await else {
            return; // still running
        };
        let Some(InFlight { recheck, .. }) = self.in_flight.take() else {
            return;
        };
        let result = joined.unwrap_or_else(|e| RefreshResult {
            error: Some(format!("refresh task: {e}")),
            ..RefreshResult::default()
        });
        self.apply_refresh(result, recheck, now_s, errors);
    }

    fn start_refresh(&mut self) {
        let known = self
            .inventory
            .iter()
            .map(|(id, info)| {
                let known = KnownContainer {
                    state: info.state,
                    name: info.name.clone(),
                };
                (id.clone(), known)
            })
            .collect();
        let recheck = self.recheck.clone();
        self.refresh_pending = false;
        let task = run_refresh(
            self.cfg.docker_socket.clone(),
            self.docker.clone(),
            known,
            recheck.clone(),
        );
        self.in_flight = Some(InFlight {
            handle: tokio::spawn(task),
            recheck,
        });
    }

    fn apply_refresh(
        &mut self,
        r: RefreshResult,
        rechecked: HashSet<String>,
        now_s: f64,
        errors: &mut Vec<CollectError>,
    ) {
        for id in &r.remove {
            self.inventory.remove(id);
            self.recheck.remove(id);
        }
        for (id, name) in r.rename {
            if let Some(info) = self.inventory.get_mut(&id) {
                info.rename(name, &id);
            }
        }
        for (id, info) in r.inspected {
            match info {
                Some(mut info) => {
                    if let Some(old) = self.inventory.get(&id) {
                        info.mismatch_checks = old.mismatch_checks;
                    }
                    self.inventory.insert(id, info);
                }
                None => {
                    self.inventory.remove(&id);
                }
            }
        }
        match r.error {
            None => {
                self.docker = r.docker;
                for id in &rechecked {
                    self.recheck.remove(id);
                }
                self.last_refresh_s = Some(now_s);
                self.retry_at_s = f64::NEG_INFINITY;
                self.backoff_s = FIRST_BACKOFF_S;
            }
            Some(reason) => {
                let endpoint = self.cfg.docker_socket.clone();
                tracing::debug!(%endpoint, %reason, "container inventory refresh failed");
                errors.push(CollectError::Docker { endpoint, reason });
                self.docker = None;
                self.refresh_pending = true;
                self.retry_at_s = now_s + self.backoff_s;
                let cap = self
                    .cfg
                    .inventory_refresh
                    .as_secs_f64()
                    .max(FIRST_BACKOFF_S);
                self.backoff_s = (self.backoff_s * 2.0).min(cap);
            }
        }
    }

    /// Device names change only when disks are added, so they are re-read on the
    /// inventory's schedule, independently of whether the engine answers.
    fn devices_due(&self, now_s: f64) -> bool {
        match self.devices_loaded_s {
            None => true,
            Some(t) => now_s >= t + self.cfg.inventory_refresh.as_secs_f64() || now_s < t,
        }
    }

    fn reload_devices(&mut self, now_s: f64, errors: &mut Vec<CollectError>) {
        self.devices_loaded_s = Some(now_s);
        let path = self.cfg.proc_root.join("partitions");
        match read_into(&path, &mut self.buf) {
            Ok(()) => self.devices = parse_partitions(&self.buf),
            Err(source) => errors.push(CollectError::Read { path, source }),
        }
    }

    fn emit(&mut self, now_s: f64, out: &mut Families, errors: &mut Vec<CollectError>) {
        let ids: Vec<String> = self.inventory.keys().cloned().collect();
        for id in ids {
            let driver = self
                .present
                .binary_search_by(|(p, _)| p.as_str().cmp(&id))
                .ok()
                .map(|i| self.present[i].1);
            self.emit_container(&id, driver, now_s, out, errors);
        }
    }

    fn emit_container(
        &mut self,
        id: &str,
        driver: Option<CgroupDriver>,
        now_s: f64,
        out: &mut Families,
        errors: &mut Vec<CollectError>,
    ) {
        let Some(info) = self.inventory.get(id) else {
            return;
        };
        let expects_cgroup = info.state.is_some_and(ContainerState::has_cgroup);
        let (pid, own_network, started_at_s) = (info.pid, info.own_network, info.started_at_s);
        let base = info.base_labels.clone();

        let Some(driver) = driver else {
            // Running without a cgroup: it stopped since the last refresh.
            self.reconcile(id, !expects_cgroup);
            if let Some(info) = self.inventory.get(id) {
                emit_inventory(info, &base, out);
            }
            return;
        };
        let mut stats = std::mem::take(&mut self.stats);
        if self.reader().read(driver, id, &mut stats, errors) == ReadOutcome::Gone {
            // Stopped between the listing and the read: no series this tick, and the
            // next tick's listing brings the inventory up to date.
            self.refresh_pending = true;
            self.stats = stats;
            return;
        }
        if let Some(info) = self.inventory.get(id) {
            emit_inventory(info, &base, out);
        }
        emit_cgroup(&stats, &base, &self.devices, out);
        self.stats = stats;
        if let Some(started) = started_at_s {
            out.gauge_labels(START_TIME, START_TIME_HELP, &base, started);
        }
        out.gauge_labels(LAST_SEEN, LAST_SEEN_HELP, &base, now_s);
        // A cgroup whose recorded main process is gone, or was not known yet, means
        // the container restarted or started after it was inspected.
        let pid_alive = self.emit_network(pid, own_network, &base, out, errors);
        self.reconcile(id, pid_alive);
    }

    /// Network counters of the container's main process. Returns whether that
    /// process still exists.
    fn emit_network(
        &mut self,
        pid: Option<u32>,
        own_network: bool,
        base: &Labels,
        out: &mut Families,
        errors: &mut Vec<CollectError>,
    ) -> bool {
        let Some(pid) = pid else {
            return false;
        };
        let proc_dir = self.cfg.proc_root.join(pid.to_string());
        if !own_network {
            return proc_dir.exists();
        }
        let path = proc_dir.join("net/dev");
        if let Err(source) = read_into(&path, &mut self.buf) {
            if !proc_dir.exists() {
                return false;
            }
            errors.push(CollectError::Read { path, source });
            return true;
        }
        let mut net = std::mem::take(&mut self.net);
        match parse_net_dev(&self.buf, &mut net) {
            Ok(()) => emit_network(&net, base, out),
            Err(reason) => errors.push(CollectError::Parse { path, reason }),
        }
        self.net = net;
        true
    }

    /// Counts the ticks in a row in which the inventory contradicted the kernel, and
    /// asks the next refresh to re-inspect the container for the first
    /// [`MAX_MISMATCH_CHECKS`] of them. A consistent tick resets the count.
    fn reconcile(&mut self, id: &str, consistent: bool) {
        let Some(info) = self.inventory.get_mut(id) else {
            return;
        };
        if consistent {
            info.mismatch_checks = 0;
        } else if self.in_flight.is_none() && info.mismatch_checks < MAX_MISMATCH_CHECKS {
            // While a refresh is running the contradiction may already be resolved by
            // it, so those ticks do not use up the budget.
            info.mismatch_checks += 1;
            self.recheck.insert(id.to_string());
        }
    }
}

fn read_into(path: &Path, buf: &mut String) -> io::Result<()> {
    buf.clear();
    File::open(path)?.read_to_string(buf)?;
    Ok(())
}

const CPU_USAGE: &str = "container_cpu_usage_seconds_total";
const CPU_USER: &str = "container_cpu_user_seconds_total";
const CPU_SYSTEM: &str = "container_cpu_system_seconds_total";
const MEM_USAGE: &str = "container_memory_usage_bytes";
const MEM_WORKING_SET: &str = "container_memory_working_set_bytes";
const MEM_RSS: &str = "container_memory_rss";
const MEM_CACHE: &str = "container_memory_cache";
const MEM_LIMIT: &str = "container_spec_memory_limit_bytes";
const FS_READS: &str = "container_fs_reads_bytes_total";
const FS_WRITES: &str = "container_fs_writes_bytes_total";
const LAST_SEEN: &str = "container_last_seen";
const LAST_SEEN_HELP: &str = "Last time the container was seen by the agent, in Unix seconds.";
const START_TIME: &str = "container_start_time_seconds";
const START_TIME_HELP: &str = "Start time of the container, in Unix seconds.";
const RESTART_COUNT: &str = "container_restarts";
const STATE: &str = "container_state";

/// Network metric names and help, in [`NetDevStats`] field order.
const NET_METRICS: [(&str, &str); 8] = [
    ("container_network_receive_bytes_total", "Bytes received."),
    (
        "container_network_receive_packets_total",
        "Packets received.",
    ),
    (
        "container_network_receive_errors_total",
        "Errors while receiving.",
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Packets dropped while receiving.",
    ),
    (
        "container_network_transmit_bytes_total",
        "Bytes transmitted.",
    ),
    (
        "container_network_transmit_packets_total",
        "Packets transmitted.",
    ),
    (
        "container_network_transmit_errors_total",
        "Errors while transmitting.",
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Packets dropped while transmitting.",
    ),
];

/// Small extension so series reuse a container's prepared labels.
trait FamiliesExt {
    fn gauge_labels(&mut self, name: &str, help: &str, labels: &Labels, value: f64);
    fn counter_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &Labels,
        extra: (&str, &str),
        value: f64,
    );
    fn gauge_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &Labels,
        extra: (&str, &str),
        value: f64,
    );
}

impl FamiliesExt for Families {
    fn gauge_labels(&mut self, name: &str, help: &str, labels: &Labels, value: f64) {
        self.add(name, MetricType::Gauge, help, labels.clone(), value);
    }

    fn counter_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &Labels,
        extra: (&str, &str),
        value: f64,
    ) {
        let mut l = labels.clone();
        l.set(extra.0, extra.1);
        self.add(name, MetricType::Counter, help, l, value);
    }

    fn gauge_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &Labels,
        extra: (&str, &str),
        value: f64,
    ) {
        let mut l = labels.clone();
        l.set(extra.0, extra.1);
        self.add(name, MetricType::Gauge, help, l, value);
    }
}

fn emit_inventory(info: &ContainerInfo, base: &Labels, out: &mut Families) {
    for state in ContainerState::ALL {
        let value = if info.state == Some(state) { 1.0 } else { 0.0 };
        out.gauge_with(
            STATE,
            "Whether the container is in this Docker state (1) or not (0).",
            base,
            ("state", state.as_str()),
            value,
        );
    }
    out.gauge_labels(
        RESTART_COUNT,
        "Times Docker restarted the container by its restart policy since it was last started by hand.",
        base,
        info.restart_count as f64,
    );
}

fn emit_cgroup(
    stats: &CgroupStats,
    base: &Labels,
    devices: &HashMap<(u32, u32), String>,
    out: &mut Families,
) {
    if let Some(total) = stats.cpu_total_seconds {
        out.counter_with(
            CPU_USAGE,
            "Cumulative CPU time consumed, in seconds.",
            base,
            ("cpu", "total"),
            total,
        );
    }
    if let Some((user, system)) = stats.cpu_user_system_seconds {
        let mut add = |name, help, v| out.add(name, MetricType::Counter, help, base.clone(), v);
        add(
            CPU_USER,
            "Cumulative user CPU time consumed, in seconds.",
            user,
        );
        add(
            CPU_SYSTEM,
            "Cumulative system CPU time consumed, in seconds.",
            system,
        );
    }
    if let Some(m) = stats.memory {
        let figures = [
            (
                MEM_USAGE,
                "Memory usage in bytes, including page cache.",
                m.usage_bytes,
            ),
            (
                MEM_WORKING_SET,
                "Working set in bytes: usage minus inactive file pages.",
                m.working_set_bytes,
            ),
            (MEM_RSS, "Anonymous memory (RSS) in bytes.", m.rss_bytes),
            (MEM_CACHE, "Page cache in bytes.", m.cache_bytes),
        ];
        for (name, help, v) in figures {
            out.gauge_labels(name, help, base, v as f64);
        }
    }
    if let Some(limit) = stats.memory_limit_bytes {
        out.gauge_labels(
            MEM_LIMIT,
            "Memory limit in bytes; 0 when unlimited.",
            base,
            limit as f64,
        );
    }
    for d in stats.io.iter().flatten() {
        let fallback;
        let device = match devices.get(&(d.major, d.minor)) {
            Some(name) => name.as_str(),
            None => {
                fallback = format!("{}:{}", d.major, d.minor);
                fallback.as_str()
            }
        };
        out.counter_with(
            FS_READS,
            "Cumulative bytes read from the device.",
            base,
            ("device", device),
            d.read_bytes as f64,
        );
        out.counter_with(
            FS_WRITES,
            "Cumulative bytes written to the device.",
            base,
            ("device", device),
            d.write_bytes as f64,
        );
    }
}

fn emit_network(net: &[NetDevStats], base: &Labels, out: &mut Families) {
    for iface in net {
        let values = [
            iface.receive_bytes,
            iface.receive_packets,
            iface.receive_errors,
            iface.receive_dropped,
            iface.transmit_bytes,
            iface.transmit_packets,
            iface.transmit_errors,
            iface.transmit_dropped,
        ];
        for ((name, help), v) in NET_METRICS.iter().zip(values) {
            out.counter_with(name, help, base, ("interface", &iface.interface), v as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerConfig as DockerConfig, ContainerState as DockerState, HostConfig,
    };

    const ID: &str = "d287de47412f4bf7a7dbf8b3d1736df33cafd717605463cf5422a3d2b83afada";
    const ID2: &str = "0000000000000000000000000000000000000000000000000000000000000002";

    #[test]
    fn docker_times_parse_to_unix_seconds() {
        assert_eq!(
            parse_docker_time("2024-05-07T21:09:36Z"),
            Some(1_715_116_176.0)
        );
        assert_eq!(
            parse_docker_time("2024-05-07T21:09:36.25Z"),
            Some(1_715_116_176.25)
        );
        let nanos = parse_docker_time("2024-05-07T21:09:36.123456789Z").unwrap();
        assert!((nanos - 1_715_116_176.123_456).abs() < 1e-5);
        assert_eq!(
            parse_docker_time("2000-02-29T00:00:00Z"),
            Some(951_782_400.0)
        );
        assert_eq!(
            parse_docker_time("2026-11-21T19:50:01+02:00"),
            Some(1_795_283_401.0)
        );
        // Docker's zero time: the container never started.
        assert_eq!(parse_docker_time("0001-01-01T00:00:00Z"), None);
        for bad in [
            "",
            "2024-05-07",
            "2024-13-07T21:09:36Z",
            "2024-05-07T21:09:36",
            "2024-05-07T21:09:36.Z",
            "2024-05-07T21:09:36+0200",
            "2024-05-07T2é:09:36Z",
        ] {
            assert_eq!(parse_docker_time(bad), None, "{bad:?}");
        }
    }

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0
  eth0:   15720     186    1    2    0     0          0         0     4410      45    3    4    0     0       0          0
  eth1: 9000000000000 7    0    0    0     0          0         0        0       0    0    0    0     0       0          0
";

    #[test]
    fn net_dev_skips_headers_and_loopback() {
        let mut out = vec![NetDevStats::default()]; // stale content must go
        parse_net_dev(NET_DEV, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                NetDevStats {
                    interface: "eth0".into(),
                    receive_bytes: 15720,
                    receive_packets: 186,
                    receive_errors: 1,
                    receive_dropped: 2,
                    transmit_bytes: 4410,
                    transmit_packets: 45,
                    transmit_errors: 3,
                    transmit_dropped: 4,
                },
                NetDevStats {
                    interface: "eth1".into(),
                    receive_bytes: 9_000_000_000_000,
                    receive_packets: 7,
                    ..NetDevStats::default()
                },
            ]
        );
    }

    #[test]
    fn net_dev_rejects_malformed_lines() {
        let mut out = Vec::new();
        assert!(parse_net_dev("  eth0: 1 2 3\n", &mut out).is_err());
        assert!(
            parse_net_dev("  eth0: 1 2 x 4 5 6 7 8 9 10 11 12 13 14 15 16\n", &mut out).is_err()
        );
        parse_net_dev("", &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn partitions_name_devices() {
        let text = "major minor  #blocks  name\n\n   8        0  104857600 sda\n   8        1     102400 sda1\n 253        0   52428800 dm-0\n";
        let map = parse_partitions(text);
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&(8, 0)).map(String::as_str), Some("/dev/sda"));
        assert_eq!(map.get(&(253, 0)).map(String::as_str), Some("/dev/dm-0"));
    }

    fn inspect(
        id: &str,
        name: &str,
        status: ContainerStateStatusEnum,
        pid: i64,
    ) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some(id.to_string()),
            name: Some(format!("/{name}")),
            image: Some("sha256:abc".to_string()),
            restart_count: Some(3),
            state: Some(DockerState {
                status: Some(status),
                pid: Some(pid),
                started_at: Some("2024-05-07T21:09:36Z".to_string()),
                ..Default::default()
            }),
            config: Some(DockerConfig {
                image: Some("nginx:1.27".to_string()),
                labels: Some(HashMap::from([("team".to_string(), "web".to_string())])),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some("bridge".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn inspect_answers_become_inventory_entries() {
        let (id, info) = ContainerInfo::from_inspect(&inspect(
            ID,
            "web",
            ContainerStateStatusEnum::RUNNING,
            4242,
        ))
        .unwrap();
        assert_eq!(id, ID);
        assert_eq!(info.name, "web");
        assert_eq!(info.image, "nginx:1.27");
        assert_eq!(info.labels.get("team").map(String::as_str), Some("web"));
        assert_eq!(info.state, Some(ContainerState::Running));
        assert_eq!(info.restart_count, 3);
        assert_eq!(info.pid, Some(4242));
        assert_eq!(info.started_at_s, Some(1_715_116_176.0));
        assert!(info.own_network);
        assert_eq!(
            info.base_labels.get("id"),
            Some(format!("/docker/{ID}").as_str())
        );

        // A stopped container reports pid 0: there is no process to read.
        let (_, stopped) =
            ContainerInfo::from_inspect(&inspect(ID, "web", ContainerStateStatusEnum::EXITED, 0))
                .unwrap();
        assert_eq!(stopped.pid, None);
        assert_eq!(stopped.state, Some(ContainerState::Exited));

        for mode in ["host", "container:abc"] {
            let mut r = inspect(ID, "web", ContainerStateStatusEnum::RUNNING, 1);
            r.host_config = Some(HostConfig {
                network_mode: Some(mode.to_string()),
                ..Default::default()
            });
            let (_, info) = ContainerInfo::from_inspect(&r).unwrap();
            assert!(!info.own_network, "{mode}");
        }
        assert!(ContainerInfo::from_inspect(&ContainerInspectResponse::default()).is_none());
    }

    fn summary(id: &str, names: &[&str], state: ContainerSummaryStateEnum) -> ContainerSummary {
        ContainerSummary {
            id: Some(id.to_string()),
            names: Some(names.iter().map(|n| n.to_string()).collect()),
            state: Some(state),
            ..Default::default()
        }
    }

    fn entry(id: &str, name: &str, status: ContainerStateStatusEnum) -> (String, KnownContainer) {
        let (id, info) = ContainerInfo::from_inspect(&inspect(id, name, status, 10)).unwrap();
        let known = KnownContainer {
            state: info.state,
            name: info.name,
        };
        (id, known)
    }

    #[test]
    fn a_refresh_with_nothing_changed_inspects_nothing() {
        let inventory = HashMap::from([entry(ID, "web", ContainerStateStatusEnum::RUNNING)]);
        let listed = [summary(ID, &["/web"], ContainerSummaryStateEnum::RUNNING)];
        assert_eq!(
            plan_refresh(&inventory, &listed, &HashSet::new()),
            RefreshPlan::default()
        );
    }

    #[test]
    fn a_refresh_inspects_new_changed_and_rechecked_containers() {
        let inventory = HashMap::from([
            entry(ID, "web", ContainerStateStatusEnum::RUNNING),
            entry(ID2, "db", ContainerStateStatusEnum::RUNNING),
            entry("gone", "old", ContainerStateStatusEnum::EXITED),
        ]);
        let listed = [
            summary(ID, &["/web"], ContainerSummaryStateEnum::EXITED),
            summary(ID2, &["/db"], ContainerSummaryStateEnum::RUNNING),
            summary("new", &["/cache"], ContainerSummaryStateEnum::RUNNING),
        ];
        let plan = plan_refresh(&inventory, &listed, &HashSet::from([ID2.to_string()]));
        assert_eq!(
            plan.inspect,
            vec![ID.to_string(), ID2.to_string(), "new".to_string()]
        );
        assert_eq!(plan.remove, vec!["gone".to_string()]);
        assert!(plan.rename.is_empty());
    }

    #[test]
    fn a_rename_needs_no_inspect() {
        let inventory = HashMap::from([entry(ID, "web", ContainerStateStatusEnum::RUNNING)]);
        // A legacy link alias (`/other/alias`) is not the container's name.
        let listed = [summary(
            ID,
            &["/other/alias", "/frontend"],
            ContainerSummaryStateEnum::RUNNING,
        )];
        let plan = plan_refresh(&inventory, &listed, &HashSet::new());
        assert_eq!(plan.rename, vec![(ID.to_string(), "frontend".to_string())]);
        assert!(plan.inspect.is_empty() && plan.remove.is_empty());
    }

    #[test]
    fn only_unix_sockets_are_accepted() {
        assert_eq!(
            socket_path("unix:///var/run/docker.sock"),
            Ok("/var/run/docker.sock")
        );
        assert_eq!(socket_path("/run/docker.sock"), Ok("/run/docker.sock"));
        assert!(socket_path("tcp://10.0.0.1:2375").is_err());
    }

    /// A fake host: a cgroup v2 tree with one container, its process's net/dev and
    /// /proc/partitions, and a Docker socket that does not exist.
    struct FakeHost {
        dir: tempfile::TempDir,
    }

    impl FakeHost {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("cgroup");
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("cgroup.controllers"), "cpu io memory\n").unwrap();
            let cg = root.join("docker").join(ID);
            std::fs::create_dir_all(&cg).unwrap();
            let files = [
                (
                    "cpu.stat",
                    "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n",
                ),
                ("memory.current", "1048576\n"),
                (
                    "memory.stat",
                    "anon 524288\nfile 262144\ninactive_file 131072\n",
                ),
                ("memory.max", "max\n"),
                (
                    "io.stat",
                    "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
                ),
            ];
            for (name, text) in files {
                std::fs::write(cg.join(name), text).unwrap();
            }
            let proc = dir.path().join("proc");
            std::fs::create_dir_all(proc.join("4242/net")).unwrap();
            std::fs::write(proc.join("4242/net/dev"), NET_DEV).unwrap();
            std::fs::write(
                proc.join("partitions"),
                "major minor  #blocks  name\n\n   8        0  1024 sda\n",
            )
            .unwrap();
            Self { dir }
        }

        fn config(&self) -> ContainerConfig {
            ContainerConfig {
                docker_socket: format!("unix://{}", self.dir.path().join("docker.sock").display()),
                cgroup_root: self.dir.path().join("cgroup"),
                proc_root: self.dir.path().join("proc"),
                inventory_refresh: Duration::from_secs(30),
            }
        }

        /// Waits for the engine as long as it takes, so each collection's errors are
        /// deterministic.
        fn collector_without_inventory(&self) -> ContainerCollector {
            ContainerCollector::new(self.config()).with_engine_wait(Duration::from_secs(60))
        }

        /// A collector that already knows the container, as if the engine had answered
        /// before going away.
        fn collector(&self) -> ContainerCollector {
            let mut c = self.collector_without_inventory();
            let (id, info) = ContainerInfo::from_inspect(&inspect(
                ID,
                "web",
                ContainerStateStatusEnum::RUNNING,
                4242,
            ))
            .unwrap();
            c.inventory.insert(id, info);
            c
        }
    }

    fn value(out: &Families, name: &str, extra: &[(&str, &str)]) -> Option<f64> {
        out.get(name)?
            .points
            .iter()
            .find(|(l, _)| extra.iter().all(|(k, v)| l.get(k) == Some(*v)))
            .map(|(_, v)| *v)
    }

    #[tokio::test]
    async fn known_containers_are_collected_while_the_engine_is_unreachable() {
        let host = FakeHost::new();
        let mut c = host.collector();
        let mut out = Families::new();
        let mut errors = Vec::new();
        c.collect(1000.0, &mut out, &mut errors).await;

        assert_eq!(errors.len(), 1, "{errors:?}");
        match &errors[0] {
            CollectError::Docker { endpoint, .. } => assert!(endpoint.ends_with("docker.sock")),
            other => panic!("expected a Docker error, got {other:?}"),
        }
        let id = format!("/docker/{ID}");
        let who = [
            ("name", "web"),
            ("image", "nginx:1.27"),
            ("id", id.as_str()),
        ];
        let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
            who.iter().copied().chain(extra.iter().copied()).collect()
        };
        assert_eq!(
            value(&out, CPU_USAGE, &with(&[("cpu", "total")])),
            Some(3.0)
        );
        assert_eq!(value(&out, CPU_USER, &who), Some(2.0));
        assert_eq!(value(&out, CPU_SYSTEM, &who), Some(1.0));
        assert_eq!(value(&out, MEM_USAGE, &who), Some(1_048_576.0));
        assert_eq!(value(&out, MEM_WORKING_SET, &who), Some(917_504.0));
        assert_eq!(value(&out, MEM_RSS, &who), Some(524_288.0));
        assert_eq!(value(&out, MEM_CACHE, &who), Some(262_144.0));
        assert_eq!(value(&out, MEM_LIMIT, &who), Some(0.0));
        assert_eq!(
            value(&out, FS_READS, &with(&[("device", "/dev/sda")])),
            Some(4096.0)
        );
        assert_eq!(
            value(&out, FS_WRITES, &with(&[("device", "/dev/sda")])),
            Some(8192.0)
        );
        assert_eq!(
            value(
                &out,
                "container_network_receive_bytes_total",
                &with(&[("interface", "eth0")])
            ),
            Some(15720.0)
        );
        assert_eq!(
            value(
                &out,
                "container_network_transmit_packets_dropped_total",
                &with(&[("interface", "eth0")])
            ),
            Some(4.0)
        );
        let net = out.get("container_network_receive_bytes_total").unwrap();
        assert!(
            net.points
                .iter()
                .all(|(l, _)| l.get("interface") != Some("lo"))
        );
        assert_eq!(value(&out, LAST_SEEN, &who), Some(1000.0));
        assert_eq!(value(&out, START_TIME, &who), Some(1_715_116_176.0));
        assert_eq!(value(&out, RESTART_COUNT, &who), Some(3.0));
        let states = &out.get(STATE).unwrap().points;
        assert_eq!(states.len(), ContainerState::ALL.len());
        for (labels, v) in states {
            let expected = if labels.get("state") == Some("running") {
                1.0
            } else {
                0.0
            };
            assert_eq!(*v, expected, "{labels:?}");
        }

        // Within the back-off the engine is not asked again, so no new error.
        let mut out = Families::new();
        let mut errors = Vec::new();
        c.collect(1000.5, &mut out, &mut errors).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(value(&out, LAST_SEEN, &who), Some(1000.5));

        // After it, one error again, never more than one per collection.
        let mut errors = Vec::new();
        c.collect(1001.0, &mut Families::new(), &mut errors).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[tokio::test]
    async fn a_hung_engine_does_not_hold_up_the_collection() {
        let host = FakeHost::new();
        // A socket that accepts connections and never answers.
        let listener = tokio::net::UnixListener::bind(host.dir.path().join("docker.sock")).unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut c = host
            .collector_without_inventory()
            .with_engine_wait(Duration::from_millis(100));
        let (id, info) = ContainerInfo::from_inspect(&inspect(
            ID,
            "web",
            ContainerStateStatusEnum::RUNNING,
            4242,
        ))
        .unwrap();
        c.inventory.insert(id, info);

        let mut out = Families::new();
        let mut errors = Vec::new();
        c.collect(1000.0, &mut out, &mut errors).await;
        // The refresh is still waiting for the engine (its budget is seconds, the
        // collection's wait 100 ms), and the known container was collected meanwhile.
        assert!(errors.is_empty(), "{errors:?}");
        assert!(c.in_flight.is_some());
        assert!(out.get(CPU_USAGE).is_some());
        server.abort();
    }

    #[tokio::test]
    async fn an_unknown_engine_yields_no_series_and_one_error() {
        let host = FakeHost::new();
        let mut c = host.collector_without_inventory();
        let mut out = Families::new();
        let mut errors = Vec::new();
        c.collect(1000.0, &mut out, &mut errors).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(matches!(errors[0], CollectError::Docker { .. }));
        // The cgroup exists, but without a name it would only make series that churn.
        assert_eq!(out.sample_count(), 0);
    }

    #[tokio::test]
    async fn a_stopped_container_loses_its_cgroup_series_but_keeps_its_state() {
        let host = FakeHost::new();
        let mut c = host.collector();
        c.collect(1000.0, &mut Families::new(), &mut Vec::new())
            .await;
        std::fs::remove_dir_all(host.dir.path().join("cgroup/docker").join(ID)).unwrap();

        let mut out = Families::new();
        c.collect(1001.0, &mut out, &mut Vec::new()).await;
        assert!(out.get(CPU_USAGE).is_none());
        assert!(out.get(LAST_SEEN).is_none());
        assert!(out.get("container_network_receive_bytes_total").is_none());
        // The engine still has to say it stopped; until then the last known state stays.
        assert!(out.get(STATE).is_some());
        assert!(
            c.refresh_pending,
            "a changed cgroup set must trigger a refresh"
        );
        assert!(
            c.recheck.contains(ID),
            "running without a cgroup must be rechecked"
        );
    }

    #[tokio::test]
    async fn a_vanished_pid_asks_for_a_bounded_number_of_rechecks() {
        let host = FakeHost::new();
        let mut c = host.collector();
        std::fs::remove_dir_all(host.dir.path().join("proc/4242")).unwrap();
        let mut now = 1000.0;
        for _ in 0..(MAX_MISMATCH_CHECKS + 3) {
            let mut out = Families::new();
            let mut errors = Vec::new();
            c.collect(now, &mut out, &mut errors).await;
            // A restarted container's old pid is not an error; its cgroup is still read.
            assert!(
                errors
                    .iter()
                    .all(|e| matches!(e, CollectError::Docker { .. })),
                "{errors:?}"
            );
            assert!(out.get(CPU_USAGE).is_some());
            assert!(out.get("container_network_receive_bytes_total").is_none());
            now += 1.0;
        }
        // The engine never answered, so the recheck is still wanted, but the counter
        // stopped growing: an unreconcilable container cannot cost an inspect per tick.
        assert!(c.recheck.contains(ID));
        assert_eq!(c.inventory[ID].mismatch_checks, MAX_MISMATCH_CHECKS);

        // Once the kernel agrees with the inventory again, a later restart is
        // noticed afresh.
        let proc = host.dir.path().join("proc/4242/net");
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::write(proc.join("dev"), NET_DEV).unwrap();
        c.collect(now, &mut Families::new(), &mut Vec::new()).await;
        assert_eq!(c.inventory[ID].mismatch_checks, 0);
    }
}
