//! `argus.toml`: the coordinator's config. Every key has a default, documented in
//! `deploy/argus.example.toml`; `ARGUS_<SECTION>_<KEY>` overrides; errors name the file,
//! the key and what was expected (DESIGN §5).

use crate::fleet::api_tokens::ApiRole;
use crate::fleet::enroll::EnrollConfig;
use crate::ingest::IngestConfig;
use crate::query::source::QueryLimits;
use crate::server::ServeConfig;
use crate::state::machine::Limits;
use crate::state::replica::ReplicaConfig;
use crate::tsdb::HeadConfig;
use crate::tsdb::tier::{TierConfig, Tiers};
use argus_common::config::{ConfigError, EnvSections, HumanDuration, Problems, load_toml};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ENV_SECTIONS: EnvSections<'static> = EnvSections {
    sections: &[
        "serve", "limits", "tsdb", "query", "api", "audit", "enroll", "ingest",
    ],
    file_only: &["tier"],
};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CoordinatorConfig {
    pub serve: ServeSection,
    pub limits: LimitsSection,
    pub tsdb: TsdbSection,
    pub query: QuerySection,
    pub api: ApiSection,
    pub audit: AuditSection,
    pub enroll: EnrollSection,
    pub ingest: IngestSection,
    /// Empty: Argus's defaults (raw 24 h, 5 m for 30 d, 1 h for a year).
    #[serde(rename = "tier")]
    pub tiers: Vec<TierSection>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServeSection {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Bearer token for `/api/v1/write`; required to listen beyond loopback.
    pub write_token: String,
    pub max_body_bytes: usize,
    /// Addresses (`host:port`) agents and peers dial, written into join strings and the
    /// node certificate at `cluster init`; empty: the listen address.
    pub advertise: Vec<String>,
}

impl Default for ServeSection {
    fn default() -> Self {
        ServeSection {
            data_dir: "./argus-data".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 3006)),
            write_token: String::new(),
            max_body_bytes: 16 << 20,
            advertise: Vec::new(),
        }
    }
}

/// What one entry may create; each refusal is counted in
/// `argus_tsdb_samples_refused_total{reason}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct LimitsSection {
    pub max_labels: usize,
    pub max_label_name_len: usize,
    pub max_label_value_len: usize,
    pub max_series_per_agent: usize,
    pub max_points_per_batch: usize,
    pub max_clock_skew: HumanDuration,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        LimitsSection {
            max_labels: l.max_labels,
            max_label_name_len: l.max_label_name_len,
            max_label_value_len: l.max_label_value_len,
            max_series_per_agent: l.max_series_per_agent,
            max_points_per_batch: l.max_points_per_batch,
            max_clock_skew: HumanDuration(Duration::from_millis(l.max_future_ms as u64)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TsdbSection {
    pub chunk_samples: usize,
    pub out_of_order_window: HumanDuration,
    pub checkpoint_interval: HumanDuration,
    pub checkpoint_entries: u64,
    pub checkpoint_samples: u64,
}

impl Default for TsdbSection {
    fn default() -> Self {
        let (h, r) = (HeadConfig::default(), ReplicaConfig::default());
        TsdbSection {
            chunk_samples: h.chunk_samples,
            out_of_order_window: HumanDuration(Duration::from_millis(h.ooo_window_ms as u64)),
            checkpoint_interval: HumanDuration(Duration::from_millis(
                r.checkpoint_interval_ms as u64,
            )),
            checkpoint_entries: r.checkpoint_entries,
            checkpoint_samples: r.checkpoint_samples,
        }
    }
}

/// PromQL limits, named after Prometheus's `--query.*` flags; each refusal names the limit.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct QuerySection {
    pub timeout: HumanDuration,
    pub max_samples: usize,
    pub max_series: usize,
    pub max_concurrency: usize,
    pub lookback_delta: HumanDuration,
}

impl Default for QuerySection {
    fn default() -> Self {
        let q = QueryLimits::default();
        QuerySection {
            timeout: HumanDuration(q.timeout),
            max_samples: q.max_samples,
            max_series: q.max_series,
            max_concurrency: q.max_concurrent,
            lookback_delta: HumanDuration(q.lookback),
        }
    }
}

/// `[api]`: who may call the HTTP API without a bearer token.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ApiSection {
    /// Roles (`viewer`, `operator`, `ingest`; `[]` for none) granted to requests without
    /// a bearer token. Unset: viewer and ingest on a loopback listen address (ingest
    /// only without `serve.write_token`), none elsewhere.
    pub anonymous_roles: Option<Vec<String>>,
    /// Must be true for `anonymous_roles` to grant anything on a non-loopback address.
    pub anonymous_beyond_loopback: bool,
}

/// `[audit]`: the replicated audit log.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuditSection {
    /// Records older than this are dropped (counted) as new ones are logged.
    pub retention: HumanDuration,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            retention: HumanDuration(Duration::from_millis(
                crate::fleet::audit::DEFAULT_RETENTION_MS as u64,
            )),
        }
    }
}

/// `[enroll]`: what enrollment issues.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct EnrollSection {
    /// Lifetime of an agent certificate; the agent renews at two thirds of it over its
    /// live connection, and the coordinator closes a connection whose certificate expired.
    pub cert_lifetime: HumanDuration,
}

impl Default for EnrollSection {
    fn default() -> Self {
        EnrollSection {
            cert_lifetime: HumanDuration(EnrollConfig::default().cert_lifetime),
        }
    }
}

/// Shortest agent certificate lifetime, the CA's: renewal at two thirds of it must leave
/// the agent time for a round trip before the certificate expires.
const MIN_CERT_LIFETIME: Duration = argus_common::pki::MIN_LEAF_LIFETIME;
/// Longest: an agent certificate outliving the coordinators' own (a year) buys nothing,
/// and a stolen one would stay valid that long.
const MAX_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Largest configurable frame; [`argus_common::wire::MAX_DER_LEN`] is the smallest,
/// since an enrollment request carries a CSR of up to that size.
const MAX_FRAME_LIMIT: usize = 256 << 20;

/// `[ingest]`: the agent QUIC listener's limits and the `up` duty's timing
/// ([`IngestConfig`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct IngestSection {
    pub in_flight: usize,
    pub max_frame: usize,
    pub enroll_per_minute: u32,
    pub enroll_sources: usize,
    pub max_connections: usize,
    pub first_message_timeout: HumanDuration,
    pub max_agents: usize,
    pub up_interval: HumanDuration,
    pub heartbeat_timeout: HumanDuration,
    pub reconnect_allowance: HumanDuration,
}

impl Default for IngestSection {
    fn default() -> Self {
        let i = IngestConfig::default();
        IngestSection {
            in_flight: i.in_flight,
            max_frame: i.max_frame,
            enroll_per_minute: i.enroll_per_minute,
            enroll_sources: i.enroll_sources,
            max_connections: i.max_connections,
            first_message_timeout: HumanDuration(i.first_message_timeout),
            max_agents: i.max_agents,
            up_interval: HumanDuration(i.up_interval),
            heartbeat_timeout: HumanDuration(i.heartbeat_timeout),
            reconnect_allowance: HumanDuration(i.reconnect_allowance),
        }
    }
}

impl IngestSection {
    /// The listener's settings; Err names the key and why.
    fn to_config(&self) -> Result<IngestConfig, (String, String)> {
        let bad = |key: &str, reason: String| Err((format!("ingest.{key}"), reason));
        let window = crate::state::dedup::WINDOW as usize;
        if self.in_flight == 0 || self.in_flight > window {
            return bad(
                "in_flight",
                format!(
                    "{} is outside 1..={window} (the dedup window)",
                    self.in_flight
                ),
            );
        }
        let min_frame = argus_common::wire::MAX_DER_LEN;
        if !(min_frame..=MAX_FRAME_LIMIT).contains(&self.max_frame) {
            return bad(
                "max_frame",
                format!(
                    "{} is outside {min_frame}..={MAX_FRAME_LIMIT} bytes",
                    self.max_frame
                ),
            );
        }
        for (key, zero) in [
            ("enroll_per_minute", self.enroll_per_minute == 0),
            ("enroll_sources", self.enroll_sources == 0),
            ("max_connections", self.max_connections == 0),
            ("max_agents", self.max_agents == 0),
            (
                "first_message_timeout",
                self.first_message_timeout.0.is_zero(),
            ),
            ("up_interval", self.up_interval.0.is_zero()),
            ("heartbeat_timeout", self.heartbeat_timeout.0.is_zero()),
        ] {
            if zero {
                return bad(key, "must be greater than zero".into());
            }
        }
        Ok(IngestConfig {
            in_flight: self.in_flight,
            max_frame: self.max_frame,
            enroll_per_minute: self.enroll_per_minute,
            enroll_sources: self.enroll_sources,
            max_connections: self.max_connections,
            first_message_timeout: self.first_message_timeout.0,
            max_agents: self.max_agents,
            up_interval: self.up_interval.0,
            heartbeat_timeout: self.heartbeat_timeout.0,
            reconnect_allowance: self.reconnect_allowance.0,
        })
    }
}

/// One `[[tier]]`: the first is raw (no `step`), each later one aggregates.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierSection {
    pub name: String,
    pub step: Option<HumanDuration>,
    pub retention: HumanDuration,
    pub partition: HumanDuration,
}

impl CoordinatorConfig {
    /// Reads, overrides from `env`, and validates. `check-config` fails on any problem;
    /// `serve` refuses to start on errors and logs the recoverable ones.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> (Option<CoordinatorConfig>, Problems) {
        let (cfg, mut problems) = load_toml::<CoordinatorConfig>(path, env, ENV_SECTIONS);
        let Some(cfg) = cfg else {
            return (None, problems);
        };
        if let Err(e) = cfg.to_serve() {
            problems.errors.push(ConfigError::Invalid {
                file: path.to_path_buf(),
                key: e.0,
                reason: e.1,
            });
            return (None, problems);
        }
        (Some(cfg), problems)
    }

    /// The server's settings; Err names the key and why.
    pub fn to_serve(&self) -> Result<ServeConfig, (String, String)> {
        let mut s = ServeConfig::new(self.serve.data_dir.clone(), self.serve.listen);
        s.write_token = Some(self.serve.write_token.clone()).filter(|t| !t.is_empty());
        if self.serve.max_body_bytes < 1024 {
            return Err((
                "serve.max_body_bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        s.max_body_bytes = self.serve.max_body_bytes;
        for a in &self.serve.advertise {
            argus_common::pki::JoinAddr::parse(a)
                .map_err(|e| ("serve.advertise".to_string(), format!("{a:?}: {e}")))?;
        }
        s.advertise = self.serve.advertise.clone();
        if let Some(names) = &self.api.anonymous_roles {
            let mut roles = Vec::new();
            for n in names {
                let role = ApiRole::parse(n).ok_or_else(|| {
                    (
                        "api.anonymous_roles".to_string(),
                        format!("{n:?} is not a role (viewer, operator, ingest)"),
                    )
                })?;
                if !roles.contains(&role) {
                    roles.push(role);
                }
            }
            s.anonymous_roles = Some(roles);
        }
        s.anonymous_beyond_loopback = self.api.anonymous_beyond_loopback;
        if let Some(roles) = &s.anonymous_roles {
            crate::api::auth::check_anonymous(roles, s.listen, s.anonymous_beyond_loopback)
                .map_err(|e| ("api.anonymous_roles".to_string(), e.to_string()))?;
        }
        let retention = self.audit.retention.0;
        if retention.is_zero() {
            return Err(("audit.retention".into(), "must be greater than zero".into()));
        }
        s.audit_retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let lifetime = self.enroll.cert_lifetime;
        if !(MIN_CERT_LIFETIME..=MAX_CERT_LIFETIME).contains(&lifetime.0) {
            return Err((
                "enroll.cert_lifetime".into(),
                format!(
                    "{lifetime} is outside {}..{}",
                    HumanDuration(MIN_CERT_LIFETIME),
                    HumanDuration(MAX_CERT_LIFETIME)
                ),
            ));
        }
        s.enroll = EnrollConfig {
            cert_lifetime: lifetime.0,
        };
        s.ingest = self.ingest.to_config()?;
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_labels", l.max_labels),
            ("limits.max_label_name_len", l.max_label_name_len),
            ("limits.max_label_value_len", l.max_label_value_len),
            ("limits.max_series_per_agent", l.max_series_per_agent),
            ("limits.max_points_per_batch", l.max_points_per_batch),
        ] {
            if v == 0 {
                return Err((key.into(), "must be greater than zero".into()));
            }
        }
        s.replica.limits = Limits {
            max_labels: l.max_labels,
            max_label_name_len: l.max_label_name_len,
            max_label_value_len: l.max_label_value_len,
            max_series_per_agent: l.max_series_per_agent,
            max_points_per_batch: l.max_points_per_batch,
            max_future_ms: l.max_clock_skew.0.as_millis() as i64,
            ..Limits::default()
        };
        s.replica.head.chunk_samples = self.tsdb.chunk_samples;
        s.replica.head.ooo_window_ms = self.tsdb.out_of_order_window.0.as_millis() as i64;
        s.replica
            .head
            .validate()
            .map_err(|e| ("tsdb".to_string(), e.to_string()))?;
        s.replica.checkpoint_interval_ms = self.tsdb.checkpoint_interval.0.as_millis() as i64;
        s.replica.checkpoint_entries = self.tsdb.checkpoint_entries.max(1);
        s.replica.checkpoint_samples = self.tsdb.checkpoint_samples.max(1);
        let q = &self.query;
        for (key, zero) in [
            ("query.timeout", q.timeout.0.is_zero()),
            ("query.max_samples", q.max_samples == 0),
            ("query.max_series", q.max_series == 0),
            ("query.max_concurrency", q.max_concurrency == 0),
            ("query.lookback_delta", q.lookback_delta.0.is_zero()),
        ] {
            if zero {
                return Err((key.into(), "must be greater than zero".into()));
            }
        }
        s.query = QueryLimits {
            timeout: q.timeout.0,
            max_samples: q.max_samples,
            max_series: q.max_series,
            max_concurrent: q.max_concurrency,
            lookback: q.lookback_delta.0,
            ..QueryLimits::default()
        };
        if !self.tiers.is_empty() {
            let configs = self
                .tiers
                .iter()
                .map(|t| TierConfig {
                    name: t.name.clone(),
                    step: t.step.map(|d| d.0),
                    retention: t.retention.0,
                    partition: t.partition.0,
                })
                .collect();
            s.tiers = Tiers::new(configs).map_err(|e| ("tier".to_string(), e.to_string()))?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Option<CoordinatorConfig>, Problems) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("argus.toml");
        std::fs::write(&p, text).unwrap();
        CoordinatorConfig::load(&p, Vec::new())
    }

    #[test]
    fn the_example_states_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/argus.example.toml");
        let (cfg, problems) = CoordinatorConfig::load(&example, Vec::new());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.unwrap(), CoordinatorConfig::default());
    }

    #[test]
    fn anonymous_access_and_audit_retention_are_checked_by_key() {
        let (cfg, _) =
            load("[api]\nanonymous_roles = [\"viewer\"]\n[audit]\nretention = \"24h\"\n");
        let s = cfg.unwrap().to_serve().unwrap();
        assert_eq!(s.anonymous_roles, Some(vec![ApiRole::Viewer]));
        assert_eq!(s.audit_retention_ms, 86_400_000);
        let cases = [
            (
                "[api]\nanonymous_roles = [\"root\"]\n",
                "api.anonymous_roles",
            ),
            (
                "[api]\nanonymous_roles = [\"admin\"]\n",
                "api.anonymous_roles",
            ),
            (
                "[serve]\nlisten = \"0.0.0.0:3006\"\n[api]\nanonymous_roles = [\"viewer\"]\n",
                "api.anonymous_roles",
            ),
            ("[audit]\nretention = \"0s\"\n", "audit.retention"),
        ];
        for (text, key) in cases {
            let (cfg, problems) = load(text);
            assert!(cfg.is_none(), "{text}");
            assert!(
                format!("{problems:?}").contains(key),
                "{text}: {problems:?}"
            );
        }
        let (cfg, _) = load(
            "[serve]\nlisten = \"0.0.0.0:3006\"\n[api]\nanonymous_roles = [\"viewer\"]\nanonymous_beyond_loopback = true\n",
        );
        assert!(cfg.is_some(), "explicitly allowed beyond loopback");
    }

    #[test]
    fn enroll_and_ingest_keys_reach_the_server_config() {
        let (cfg, problems) = load(
            "[enroll]\ncert_lifetime = \"30s\"\n[ingest]\nenroll_per_minute = 600\nin_flight = 8\nmax_frame = 1048576\nheartbeat_timeout = \"3s\"\nreconnect_allowance = \"2s\"\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let s = cfg.unwrap().to_serve().unwrap();
        assert_eq!(s.enroll.cert_lifetime, Duration::from_secs(30));
        assert_eq!(
            (
                s.ingest.enroll_per_minute,
                s.ingest.in_flight,
                s.ingest.max_frame
            ),
            (600, 8, 1 << 20)
        );
        assert_eq!(s.ingest.grace(), Duration::from_secs(5));
        assert_eq!(
            s.ingest.max_connections,
            IngestConfig::default().max_connections
        );

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("argus.toml");
        std::fs::write(&p, "").unwrap();
        let env = [
            (
                "ARGUS_INGEST_ENROLL_PER_MINUTE".to_string(),
                "5000".to_string(),
            ),
            ("ARGUS_ENROLL_CERT_LIFETIME".to_string(), "1h".to_string()),
        ];
        let (cfg, problems) = CoordinatorConfig::load(&p, env);
        assert!(problems.is_empty(), "{problems:?}");
        let s = cfg.unwrap().to_serve().unwrap();
        assert_eq!(s.ingest.enroll_per_minute, 5000);
        assert_eq!(s.enroll.cert_lifetime, Duration::from_secs(3600));

        let cases = [
            ("[enroll]\ncert_lifetime = \"5s\"\n", "enroll.cert_lifetime"),
            (
                "[enroll]\ncert_lifetime = \"9000h\"\n",
                "enroll.cert_lifetime",
            ),
            ("[enroll]\ncert_lifetime = 30\n", "enroll.cert_lifetime"),
            ("[ingest]\nin_flight = 0\n", "ingest.in_flight"),
            ("[ingest]\nin_flight = 5000\n", "ingest.in_flight"),
            ("[ingest]\nmax_frame = 100\n", "ingest.max_frame"),
            (
                "[ingest]\nenroll_per_minute = 0\n",
                "ingest.enroll_per_minute",
            ),
            (
                "[ingest]\nenroll_per_minute = -1\n",
                "ingest.enroll_per_minute",
            ),
            ("[ingest]\nenroll_sources = 0\n", "ingest.enroll_sources"),
            ("[ingest]\nmax_connections = 0\n", "ingest.max_connections"),
            ("[ingest]\nmax_agents = 0\n", "ingest.max_agents"),
            (
                "[ingest]\nfirst_message_timeout = \"0s\"\n",
                "ingest.first_message_timeout",
            ),
            ("[ingest]\nup_interval = \"0s\"\n", "ingest.up_interval"),
            (
                "[ingest]\nheartbeat_timeout = \"0ms\"\n",
                "ingest.heartbeat_timeout",
            ),
            (
                "[ingest]\nreconnect_allowance = \"soon\"\n",
                "ingest.reconnect_allowance",
            ),
        ];
        for (text, key) in cases {
            let (cfg, problems) = load(text);
            assert!(cfg.is_none(), "{text}");
            let text_of = |e: &ConfigError| e.to_string();
            let errors: Vec<String> = problems.errors.iter().map(text_of).collect();
            assert!(errors.iter().any(|e| e.contains(key)), "{text}: {errors:?}");
        }
    }

    #[test]
    fn the_product_documents_tiers_are_expressible() {
        let (cfg, problems) = load(
            r#"
[[tier]]
name = "raw"
retention = "1h"
partition = "1h"
[[tier]]
name = "5m"
step = "5m"
retention = "24h"
partition = "6h"
[[tier]]
name = "1h"
step = "1h"
retention = "168h"
partition = "24h"
[[tier]]
name = "1d"
step = "24h"
retention = "720h"
partition = "168h"
"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let serve = cfg.unwrap().to_serve().unwrap();
        assert_eq!(serve.tiers.iter().count(), 4);
    }

    #[test]
    fn bad_values_name_their_key() {
        let (cfg, problems) = load("[limits]\nmax_labels = 0\n");
        assert!(cfg.is_none());
        assert!(problems.errors[0].to_string().contains("limits.max_labels"));
        let (_, problems) = load("[tsdb]\nout_of_order_window = 10\n");
        assert!(
            problems.errors[0]
                .to_string()
                .contains("tsdb.out_of_order_window")
        );
        let (_, problems) = load(
            "[[tier]]\nname = \"raw\"\nstep = \"5m\"\nretention = \"1h\"\npartition = \"1h\"\n",
        );
        assert!(
            problems.errors[0].to_string().contains("tier"),
            "{:?}",
            problems.errors
        );
        let (cfg, problems) = load("[serve]\nlisten = \"127.0.0.1:3006\"\nbogus = 1\n");
        assert!(cfg.is_some());
        assert!(
            problems.recoverable[0]
                .to_string()
                .contains("unknown key `serve.bogus`")
        );
    }

    #[test]
    fn query_limits_come_from_the_query_section_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("argus.toml");
        std::fs::write(&p, "[query]\nmax_samples = 1000\ntimeout = \"30s\"\n").unwrap();
        let env = [("ARGUS_QUERY_MAX_SERIES".to_string(), "7".to_string())];
        let (cfg, problems) = CoordinatorConfig::load(&p, env);
        assert!(problems.errors.is_empty(), "{:?}", problems.errors);
        let q = cfg.unwrap().to_serve().unwrap().query;
        assert_eq!(
            (q.max_samples, q.max_series, q.timeout),
            (1000, 7, Duration::from_secs(30))
        );
        assert_eq!(
            q.max_points_per_series,
            QueryLimits::default().max_points_per_series
        );
        let (cfg, problems) = load("[query]\nmax_concurrency = 0\n");
        assert!(cfg.is_none());
        assert!(
            problems.errors[0]
                .to_string()
                .contains("query.max_concurrency")
        );
    }
}
