//! `argus-agent.toml`: every key, its default, and validation that names the file,
//! the key and what was expected.
//!
//! Loading is split in two so one typo never blinds a host: [`AgentConfig::load`]
//! returns the config it could build plus every problem found. `check-config` fails on
//! any problem; `run` refuses only problems it cannot work around (a value of the wrong
//! type) and otherwise logs them and keeps collecting what it can (an unknown key is
//! ignored, a probe with a malformed URL is left out).

use argus_common::config::{ConfigError, EnvSections, load_toml, parse_toml};
pub use argus_common::config::{HumanDuration, Problems};
use serde::{Deserialize, Deserializer};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn secs(s: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(s))
}

/// The whole agent config. Section names are single words so that
/// `ARGUS_<SECTION>_<KEY>` splits unambiguously.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct AgentConfig {
    pub agent: AgentSection,
    pub log: LogSection,
    pub host: HostSection,
    pub containers: ContainersSection,
    pub jobs: JobsSection,
    pub spool: SpoolSection,
    pub limits: LimitsSection,
    pub metrics: MetricsSection,
    pub uplink: UplinkSection,
    #[serde(rename = "probe")]
    pub probes: Vec<ProbeConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct AgentSection {
    /// The `instance` label; empty means the host name.
    pub name: String,
    pub interval: HumanDuration,
    pub state_dir: PathBuf,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            name: String::new(),
            interval: secs(10),
            state_dir: PathBuf::from("/var/lib/argus-agent"),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `argus_agent=debug`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct HostSection {
    pub enabled: bool,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// Where the host's `/` is visible: `/host/root` for a containerized agent.
    pub root_fs: PathBuf,
    /// Replaces the default list of pseudo filesystem types when set.
    pub fs_types_exclude: Option<Vec<String>>,
    /// Replaces the default mount point exclusions when set (`/dev*` style prefixes).
    pub mount_points_exclude: Option<Vec<String>>,
    pub net_devices_exclude: Option<Vec<String>>,
    pub disk_devices_exclude: Option<Vec<String>>,
}

impl Default for HostSection {
    fn default() -> Self {
        HostSection {
            enabled: true,
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
            root_fs: "/".into(),
            fs_types_exclude: None,
            mount_points_exclude: None,
            net_devices_exclude: None,
            disk_devices_exclude: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ContainersSection {
    pub enabled: bool,
    pub docker_socket: String,
    pub cgroup_root: PathBuf,
    pub inventory_refresh: HumanDuration,
}

impl Default for ContainersSection {
    fn default() -> Self {
        ContainersSection {
            enabled: true,
            docker_socket: "unix:///var/run/docker.sock".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            inventory_refresh: secs(30),
        }
    }
}

/// The `job` label per collector family (DESIGN §5).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct JobsSection {
    pub node: String,
    pub cadvisor: String,
    pub blackbox: String,
    pub agent: String,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            node: "node".into(),
            cadvisor: "cadvisor".into(),
            blackbox: "blackbox".into(),
            agent: "argus-agent".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    DropOldest,
    Block,
}

/// `fsync = "batch"` syncs every batch; `fsync = "1s"` (any duration) syncs on a timer,
/// trading up to that much of the newest data on power loss for far fewer syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncSetting {
    EveryBatch,
    Every(Duration),
}

impl<'de> Deserialize<'de> for FsyncSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "batch" {
            return Ok(FsyncSetting::EveryBatch);
        }
        HumanDuration::parse(&s)
            .map(|h| FsyncSetting::Every(h.0))
            .map_err(|e| serde::de::Error::custom(format!("expected \"batch\" or a duration: {e}")))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct SpoolSection {
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: FsyncSetting,
    pub when_full: WhenFull,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            max_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            fsync: FsyncSetting::EveryBatch,
            when_full: WhenFull::DropOldest,
        }
    }
}

/// Bounds on what one agent may create, so a runaway label (a container per request)
/// cannot exhaust the agent or the cluster. What they refuse is counted in
/// `argus_agent_refused_samples_total{reason}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct LimitsSection {
    pub max_series: usize,
    pub max_labels: usize,
    pub max_label_value_len: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_series: 100_000,
            max_labels: 30,
            max_label_value_len: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct MetricsSection {
    /// Where `serve-metrics` listens unless `--listen` says otherwise.
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: "127.0.0.1:9100".into(),
        }
    }
}

/// `[uplink]`: how the agent reaches the coordinators (DESIGN §6).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct UplinkSection {
    /// Coordinator addresses (`host:port`, 3006/udp). Empty (the default): the addresses
    /// of the join string the agent enrolled with.
    pub coordinators: Vec<String>,
    /// A join string (`argus-join:v1:...`) `run` enrolls with when the state directory
    /// holds no identity yet. Empty (the default): enroll with `argus-agent join`.
    pub join_token: String,
    /// Batches sent and not yet answered, at most. Default 32; at most 1024 (the
    /// coordinator's deduplication window).
    pub in_flight: usize,
    /// First reconnect delay; doubles per failed attempt, with jitter. Default 200ms.
    pub backoff_min: HumanDuration,
    /// Longest reconnect delay. Default 5s.
    pub backoff_max: HumanDuration,
    /// A heartbeat is sent when nothing else was sent for this long, so the coordinator
    /// knows the agent is up. Default 5s (the coordinator's timeout is 15 s).
    pub heartbeat: HumanDuration,
}

impl Default for UplinkSection {
    fn default() -> Self {
        UplinkSection {
            coordinators: Vec::new(),
            join_token: String::new(),
            in_flight: 32,
            backoff_min: HumanDuration(Duration::from_millis(200)),
            backoff_max: secs(5),
            heartbeat: secs(5),
        }
    }
}

/// One `[[probe]]`: an HTTP check when `url` is set, a TCP connect when `address` is.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProbeConfig {
    pub name: String,
    pub url: Option<String>,
    pub address: Option<String>,
    pub interval: HumanDuration,
    pub timeout: HumanDuration,
    /// Extra attempts within one check before it counts as failed.
    pub retries: u32,
    /// Kept in the agent's probe record for the services API, never as a label,
    /// so flipping it does not fork the series.
    pub critical: bool,
    /// Accepted HTTP status range, `"200-399"` or a single code.
    pub expect_status: String,
    pub body_contains: Option<String>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            name: String::new(),
            url: None,
            address: None,
            interval: secs(30),
            timeout: secs(5),
            retries: 0,
            critical: false,
            expect_status: "200-399".into(),
            body_contains: None,
        }
    }
}

/// A validated probe target.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeTarget {
    Http(url::Url),
    Tcp { host: String, port: u16 },
}

/// Parses an `expect_status` value into an inclusive range.
pub fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let parse = |p: &str| -> Result<u16, String> {
        let v: u16 = p
            .trim()
            .parse()
            .map_err(|_| format!("`{p}` is not an HTTP status code"))?;
        if (100..=599).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{v} is outside 100-599"))
        }
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let v = parse(s)?;
            (v, v)
        }
    };
    if lo > hi {
        return Err(format!("range `{s}` is empty"));
    }
    Ok((lo, hi))
}

impl ProbeConfig {
    /// The probe's target, or why it is unusable.
    pub fn target(&self) -> Result<ProbeTarget, (String, String)> {
        match (&self.url, &self.address) {
            (Some(_), Some(_)) => Err((
                "url".into(),
                "set either url (HTTP) or address (TCP), not both".into(),
            )),
            (None, None) => Err((
                "url".into(),
                "one of url (HTTP) or address (TCP) is required".into(),
            )),
            (Some(u), None) => {
                let parsed = url::Url::parse(u)
                    .map_err(|e| ("url".to_string(), format!("`{u}` is not a valid URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(("url".into(), format!("`{u}`: scheme must be http or https")));
                }
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(("url".into(), format!("`{u}` has no host")));
                }
                Ok(ProbeTarget::Http(parsed))
            }
            (None, Some(a)) => {
                let (host, port) = a
                    .rsplit_once(':')
                    .ok_or_else(|| ("address".to_string(), format!("`{a}` must be host:port")))?;
                let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    (
                        "address".to_string(),
                        format!("`{a}`: port must be 1-65535"),
                    )
                })?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(("address".into(), format!("`{a}` has no host")));
                }
                Ok(ProbeTarget::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
        }
    }
}

impl UplinkSection {
    fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if !(1..=1024).contains(&self.in_flight) {
            bad(
                "uplink.in_flight",
                format!("{} is outside 1..1024", self.in_flight),
            );
        }
        let (lo, hi) = (self.backoff_min.0, self.backoff_max.0);
        if lo.is_zero() || lo > Duration::from_secs(60) {
            bad(
                "uplink.backoff_min",
                format!("{} is outside 1ms..60s", self.backoff_min),
            );
        }
        if hi < lo || hi > Duration::from_secs(300) {
            bad(
                "uplink.backoff_max",
                format!(
                    "{} must be at least uplink.backoff_min ({}) and at most 5m",
                    self.backoff_max, self.backoff_min
                ),
            );
        }
        let hb = self.heartbeat.0;
        if hb < Duration::from_millis(100) || hb > Duration::from_secs(60) {
            bad(
                "uplink.heartbeat",
                format!("{} is outside 100ms..60s", self.heartbeat),
            );
        }
        if !self.join_token.is_empty()
            && let Err(e) = argus_common::pki::JoinString::parse(&self.join_token)
        {
            bad("uplink.join_token", e.to_string());
        }
        for (i, c) in self.coordinators.iter().enumerate() {
            if let Err(e) = argus_common::pki::JoinAddr::parse(c) {
                bad(&format!("uplink.coordinators[{i}]"), e.to_string());
            }
        }
    }
}

impl AgentConfig {
    /// Reads and validates a config file, applying `ARGUS_<SECTION>_<KEY>` overrides from `env`.
    ///
    /// Returns the config (defaults filled in, unusable probes removed) unless an
    /// unrecoverable problem prevents building one; `problems` lists everything found.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> (Option<AgentConfig>, Problems) {
        let (cfg, problems) = load_toml(path, env, ENV_SECTIONS);
        Self::validated(cfg, path, problems)
    }

    /// As [`AgentConfig::load`], from text already read; `path` is only used in messages.
    pub fn from_str(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> (Option<AgentConfig>, Problems) {
        let (cfg, problems) = parse_toml(text, path, env, ENV_SECTIONS);
        Self::validated(cfg, path, problems)
    }

    fn validated(
        cfg: Option<AgentConfig>,
        path: &Path,
        mut problems: Problems,
    ) -> (Option<AgentConfig>, Problems) {
        let Some(mut cfg) = cfg else {
            return (None, problems);
        };
        cfg.validate(path, &mut problems);
        (Some(cfg), problems)
    }

    /// Checks cross-field rules serde cannot express; drops unusable probes so the rest run.
    fn validate(&mut self, file: &Path, problems: &mut Problems) {
        let mut bad = |key: &str, reason: String| {
            problems.errors.push(ConfigError::Invalid {
                file: file.to_path_buf(),
                key: key.to_string(),
                reason,
            })
        };
        let iv = self.agent.interval.0;
        if iv < Duration::from_millis(100) || iv > Duration::from_secs(3600) {
            bad(
                "agent.interval",
                format!("{} is outside 100ms..1h", self.agent.interval),
            );
        }
        if self.spool.max_bytes < self.spool.segment_bytes.saturating_mul(2) {
            bad(
                "spool.max_bytes",
                "must hold at least two segments (2 × spool.segment_bytes)".into(),
            );
        }
        if self.spool.segment_bytes < 64 << 10 {
            bad("spool.segment_bytes", "must be at least 65536".into());
        }
        for (key, v) in [
            ("jobs.node", &self.jobs.node),
            ("jobs.cadvisor", &self.jobs.cadvisor),
            ("jobs.blackbox", &self.jobs.blackbox),
            ("jobs.agent", &self.jobs.agent),
        ] {
            if v.is_empty() {
                bad(key, "must not be empty".into());
            }
        }
        if self.limits.max_labels == 0
            || self.limits.max_series == 0
            || self.limits.max_label_value_len == 0
        {
            bad("limits", "limits must be greater than zero".into());
        }
        self.uplink.validate(&mut bad);
        let mut names = HashSet::new();
        let mut keep = Vec::with_capacity(self.probes.len());
        for (i, p) in std::mem::take(&mut self.probes).into_iter().enumerate() {
            let mut reasons = Vec::new();
            if p.name.is_empty() {
                reasons.push(("name".to_string(), "is required".to_string()));
            } else if !names.insert(p.name.clone()) {
                reasons.push((
                    "name".into(),
                    format!("`{}` is used by an earlier probe", p.name),
                ));
            }
            if let Err(r) = p.target() {
                reasons.push(r);
            }
            if let Err(r) = parse_status_range(&p.expect_status) {
                reasons.push(("expect_status".into(), r));
            }
            if p.timeout.0.is_zero() {
                reasons.push(("timeout".into(), "must be greater than zero".into()));
            }
            if p.interval.0 < iv {
                reasons.push((
                    "interval".into(),
                    format!(
                        "{} is shorter than agent.interval ({})",
                        p.interval, self.agent.interval
                    ),
                ));
            }
            if reasons.is_empty() {
                keep.push(p);
            } else {
                for (k, reason) in reasons {
                    problems.recoverable.push(ConfigError::Invalid {
                        file: file.to_path_buf(),
                        key: format!("probe[{i}].{k}"),
                        reason,
                    });
                }
            }
        }
        self.probes = keep;
    }

    /// The `instance` label: the configured name, else the host name.
    pub fn instance(&self, host_name: &str) -> String {
        if self.agent.name.is_empty() {
            host_name.to_string()
        } else {
            self.agent.name.clone()
        }
    }
}

/// The sections `ARGUS_<SECTION>_<KEY>` may address.
const ENV_SECTIONS: EnvSections<'static> = EnvSections {
    sections: &[
        "agent",
        "log",
        "host",
        "containers",
        "jobs",
        "spool",
        "limits",
        "metrics",
        "uplink",
    ],
    file_only: &["probe"],
};

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Option<AgentConfig>, Problems) {
        AgentConfig::from_str(text, Path::new("argus-agent.toml"), Vec::new())
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let (cfg, p) = load("");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(cfg.unwrap(), AgentConfig::default());
    }

    #[test]
    fn unknown_key_is_named_with_its_path_and_the_rest_still_loads() {
        let (cfg, p) = load("[agent]\nintervall = \"5s\"\n[spool]\nmax_bytes = 1073741824\n");
        let cfg = cfg.unwrap();
        assert_eq!(cfg.spool.max_bytes, 1 << 30);
        let msgs: Vec<String> = p.all().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            vec!["argus-agent.toml: unknown key `agent.intervall`"]
        );
        assert!(p.errors.is_empty());
    }

    #[test]
    fn mistyped_value_names_the_key_and_expected_type() {
        let (cfg, p) = load("[agent]\ninterval = 5\n");
        assert!(cfg.is_none());
        let msg = p.errors[0].to_string();
        assert!(
            msg.starts_with("argus-agent.toml: agent.interval:"),
            "{msg}"
        );
        assert!(msg.contains("string"), "{msg}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let (cfg, p) = load("[agent]\nname = \"x\"\ninterval = \n");
        assert!(cfg.is_none());
        assert!(
            p.errors[0].to_string().contains("line 3"),
            "{}",
            p.errors[0]
        );
    }

    #[test]
    fn malformed_probe_is_dropped_and_named_while_good_ones_stay() {
        let text = r#"
[[probe]]
name = "web"
url = "http://127.0.0.1:8080/health"

[[probe]]
name = "broken"
url = "http//missing-colon"

[[probe]]
name = "db"
address = "127.0.0.1:5432"
expect_status = "600"
"#;
        let (cfg, p) = load(text);
        let cfg = cfg.unwrap();
        assert_eq!(cfg.probes.len(), 1);
        assert_eq!(cfg.probes[0].name, "web");
        let msgs: Vec<String> = p.recoverable.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs[0].starts_with(
                "argus-agent.toml: probe[1].url: `http//missing-colon` is not a valid URL"
            ),
            "{msgs:?}"
        );
        assert!(
            msgs[1].contains("probe[2].expect_status: 600 is outside"),
            "{msgs:?}"
        );
    }

    #[test]
    fn probe_rules() {
        let p = |url: Option<&str>, addr: Option<&str>| ProbeConfig {
            name: "x".into(),
            url: url.map(Into::into),
            address: addr.map(Into::into),
            ..ProbeConfig::default()
        };
        assert!(p(None, None).target().is_err());
        assert!(p(Some("http://a"), Some("a:1")).target().is_err());
        assert!(
            p(Some("ftp://a/"), None)
                .target()
                .unwrap_err()
                .1
                .contains("scheme")
        );
        assert_eq!(
            p(None, Some("[::1]:22")).target().unwrap(),
            ProbeTarget::Tcp {
                host: "::1".into(),
                port: 22
            }
        );
        assert!(p(None, Some("host:0")).target().is_err());
        assert!(p(None, Some("host")).target().is_err());
        assert_eq!(parse_status_range("200-299"), Ok((200, 299)));
        assert!(parse_status_range("300-200").is_err());
    }

    #[test]
    fn env_overrides_keep_types_and_report_bad_sections() {
        let env = vec![
            ("ARGUS_SPOOL_MAX_BYTES".to_string(), "33554432".to_string()),
            ("ARGUS_AGENT_NAME".to_string(), "web-1".to_string()),
            ("ARGUS_SPOOL_FSYNC".to_string(), "batch".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
            (
                "ARGUS_RAFT_TICK".to_string(),
                "other tools' variables are left alone".to_string(),
            ),
        ];
        let (cfg, p) =
            AgentConfig::from_str("[agent]\nname = \"file\"\n", Path::new("f.toml"), env);
        assert!(p.is_empty(), "{p:?}");
        let cfg = cfg.unwrap();
        assert_eq!(cfg.spool.max_bytes, 32 << 20);
        assert_eq!(cfg.agent.name, "web-1");
        assert_eq!(cfg.spool.fsync, FsyncSetting::EveryBatch);
    }

    #[test]
    fn uplink_keys_are_checked_and_named() {
        let (cfg, p) = load(
            "[uplink]\nin_flight = 0\nbackoff_min = \"2s\"\nbackoff_max = \"1s\"\njoin_token = \"nope\"\ncoordinators = [\"10.0.0.1:3006\", \"no-port\"]\n",
        );
        assert!(cfg.is_some());
        let keys: Vec<String> = p
            .errors
            .iter()
            .map(|e| match e {
                ConfigError::Invalid { key, .. } => key.clone(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                "uplink.in_flight",
                "uplink.backoff_max",
                "uplink.join_token",
                "uplink.coordinators[1]"
            ]
        );
        let (cfg, p) = load("");
        assert!(p.is_empty());
        let u = cfg.unwrap().uplink;
        assert_eq!(u.in_flight, 32);
        assert_eq!(u.backoff_max.0, Duration::from_secs(5));
    }

    #[test]
    fn cross_field_rules_are_enforced() {
        let (_, p) = load(
            "[agent]\ninterval = \"2h\"\n[spool]\nmax_bytes = 100000\nsegment_bytes = 65536\n",
        );
        let keys: Vec<String> = p
            .errors
            .iter()
            .map(|e| match e {
                ConfigError::Invalid { key, .. } => key.clone(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(keys, vec!["agent.interval", "spool.max_bytes"]);
    }
}
