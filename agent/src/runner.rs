//! `run`: collect on the interval grid and append each tick to the spool.
//!
//! The spool is the only hand-off to the uplink: what is in it survives a crash and is
//! sent until acknowledged. Series refs come from the spool's dictionary, so a restart
//! keeps them and still ends (StaleNaN) series that vanished while the agent was down.

use crate::collect::agent::{AgentStats, UplinkState};
use crate::collection::{Collectors, next_tick_after};
use crate::config::{AgentConfig, FsyncSetting, WhenFull};
use crate::series::{SeriesLimits, SeriesTracker};
use crate::spool::{FsyncPolicy, FullPolicy, Spool, SpoolConfig, SpoolError};
use crate::uplink::identity::Identity;
use crate::uplink::{Uplink, UplinkError, UplinkSettings};
use argus_common::model::PointGroup;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Collect(#[from] crate::collect::CollectError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error("creating state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
}

pub struct Runner {
    collectors: Collectors,
    tracker: SeriesTracker,
    /// Shared with the uplink, which drains it; both run on the agent's one thread.
    spool: Arc<Mutex<Spool>>,
    /// Rung after every push so the uplink sends the new batch at once.
    pushed: Arc<tokio::sync::Notify>,
    /// The uplink to start with `run`, when the agent is enrolled.
    uplink: Option<(UplinkSettings, Identity)>,
    state_dir: std::path::PathBuf,
    stats: Arc<AgentStats>,
    interval_ms: i64,
    /// Error messages already logged at warn level; repeats go to debug so a missing
    /// Docker engine does not flood the log every second. Bounded.
    logged: HashSet<String>,
}

impl Runner {
    pub async fn start(cfg: AgentConfig) -> Result<Runner, RunError> {
        let dir = cfg.agent.state_dir.join("spool");
        std::fs::create_dir_all(&dir).map_err(|source| RunError::StateDir {
            path: dir.display().to_string(),
            source,
        })?;
        let spool = Spool::open(SpoolConfig {
            dir,
            max_bytes: cfg.spool.max_bytes,
            segment_bytes: cfg.spool.segment_bytes,
            fsync: match cfg.spool.fsync {
                FsyncSetting::EveryBatch => FsyncPolicy::EveryBatch,
                FsyncSetting::Every(d) => FsyncPolicy::Interval(d),
            },
            when_full: match cfg.spool.when_full {
                WhenFull::DropOldest => FullPolicy::DropOldest,
                WhenFull::Block => FullPolicy::Block,
            },
        })?;
        let limits = SeriesLimits {
            max_series: cfg.limits.max_series,
            max_labels: cfg.limits.max_labels,
            max_label_value_len: cfg.limits.max_label_value_len,
        };
        let tracker = SeriesTracker::new(
            limits,
            spool
                .dictionary()
                .map(|d| ((d.name.clone(), d.labels.clone()), d.series_ref)),
        );
        let stats = Arc::new(AgentStats::default());
        stats.set_uplink(UplinkState::Disabled);
        tracing::info!(
            incarnation = format_args!("{:016x}", spool.incarnation()),
            next_seq = spool.next_seq(),
            series = tracker.live_series(),
            "spool opened"
        );
        let uplink = prepare_uplink(&cfg).await?;
        Ok(Runner {
            collectors: Collectors::from_config(&cfg, stats.clone())?,
            tracker,
            spool: Arc::new(Mutex::new(spool)),
            pushed: Arc::new(tokio::sync::Notify::new()),
            uplink,
            state_dir: cfg.agent.state_dir.clone(),
            stats,
            interval_ms: cfg.agent.interval.0.as_millis() as i64,
            logged: HashSet::new(),
        })
    }

    pub fn stats(&self) -> &Arc<AgentStats> {
        &self.stats
    }

    /// The spool; the guard must not be held across an await.
    pub fn spool(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Collects one tick into the spool.
    pub async fn tick(&mut self, tick_ms: i64) -> Result<(), RunError> {
        let (collection, errors) = self.collectors.collect(tick_ms).await;
        for e in errors {
            let msg = e.to_string();
            if self.logged.len() < 1024 && self.logged.insert(msg.clone()) {
                tracing::warn!("{msg}");
            } else {
                tracing::debug!("{msg}");
            }
        }
        let mut guard = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        let spool = &mut *guard;
        let points = self
            .tracker
            .observe(&collection.jobs, |name, labels, kind, unit, help| {
                spool.define(name, labels, kind, unit, help)
            })?;
        for (reason, n) in &points.refused {
            self.stats.record_refused(reason.as_str(), *n);
        }
        let count = points.points.len();
        let pushed = spool.push(vec![PointGroup {
            timestamp_ms: tick_ms,
            points: points.points,
        }]);
        let seq = match pushed {
            Ok(outcome) => outcome.seq,
            Err(SpoolError::Full) => {
                // when_full = "block": this tick is lost and counted; the ended series'
                // refs are still retired so the dictionary cannot grow without bound.
                self.stats.record_refused("spool_full", count as u64);
                tracing::warn!(
                    samples = count,
                    "spool full (when_full = \"block\"): tick not stored"
                );
                spool.next_seq().saturating_sub(1)
            }
            Err(e) => return Err(e.into()),
        };
        for r in points.ended {
            spool.retire(r, seq)?;
        }
        let s = spool.stats();
        drop(guard);
        self.pushed.notify_one();
        self.stats.set_series(self.tracker.live_series());
        self.stats
            .record_spool(s.bytes, s.batches, s.dropped_samples_total);
        Ok(())
    }

    /// Collects on the grid until SIGINT or SIGTERM, then syncs the spool.
    pub async fn run_until_signal(self) -> Result<(), RunError> {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        self.run_until(async move {
            match term.as_mut() {
                Some(t) => {
                    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = t.recv() => {} }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        })
        .await
    }

    /// Collects on the grid and streams through the uplink until `stop` completes, then
    /// stops the uplink and syncs the spool. `argus demo` runs an agent in its own
    /// process this way.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), RunError> {
        tokio::pin!(stop);
        let (stop_uplink, uplink_stopped) = tokio::sync::watch::channel(false);
        let uplink = self.uplink.take().map(|(settings, identity)| {
            tokio::spawn(
                Uplink {
                    settings,
                    state_dir: self.state_dir.clone(),
                    identity,
                    spool: self.spool.clone(),
                    pushed: self.pushed.clone(),
                    stats: self.stats.clone(),
                }
                .run(uplink_stopped),
            )
        });
        let mut last_sync = std::time::Instant::now();
        loop {
            let now = now_ms();
            let next = next_tick_after(now, self.interval_ms);
            let sleep = tokio::time::sleep(Duration::from_millis((next - now).max(0) as u64));
            tokio::select! {
                _ = &mut stop => break,
                _ = sleep => {}
            }
            self.tick(next).await?;
            let mut spool = self.spool();
            if let Some(every) = spool.sync_interval()
                && last_sync.elapsed() >= every
            {
                if spool.needs_sync() {
                    spool.sync()?;
                }
                last_sync = std::time::Instant::now();
            }
        }
        let _ = stop_uplink.send(true);
        if let Some(task) = uplink {
            let _ = task.await;
        }
        tracing::info!("stopping: syncing the spool");
        self.spool().sync()?;
        Ok(())
    }
}

/// The uplink settings and identity `run` starts with: the stored identity, or a fresh
/// enrollment with `uplink.join_token` when there is none. Without either the agent only
/// collects into its spool, which is sent once it is enrolled.
async fn prepare_uplink(cfg: &AgentConfig) -> Result<Option<(UplinkSettings, Identity)>, RunError> {
    let host = crate::collection::host_name(&cfg.host.proc_root);
    let settings = UplinkSettings {
        coordinators: cfg.uplink.coordinators.clone(),
        in_flight: cfg.uplink.in_flight,
        backoff_min: cfg.uplink.backoff_min.0,
        backoff_max: cfg.uplink.backoff_max.0,
        heartbeat: cfg.uplink.heartbeat.0,
        host_name: host.clone(),
    };
    let identity = match Identity::load(&cfg.agent.state_dir).map_err(UplinkError::from)? {
        Some(id) => id,
        None if !cfg.uplink.join_token.is_empty() => {
            let join = argus_common::pki::JoinString::parse(&cfg.uplink.join_token)
                .map_err(UplinkError::from)?;
            let id = crate::uplink::enroll::enroll(&join, &host).await?;
            id.store(&cfg.agent.state_dir).map_err(UplinkError::from)?;
            tracing::info!(agent_id = %id.agent_id, "enrolled with uplink.join_token");
            id
        }
        None => {
            tracing::info!(
                state_dir = %cfg.agent.state_dir.display(),
                "not enrolled (run `argus-agent join` or set uplink.join_token): collecting into the spool only"
            );
            return Ok(None);
        }
    };
    Ok(Some((settings, identity)))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
