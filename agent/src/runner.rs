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
use argus_common::model::PointGroup;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Collect(#[from] crate::collect::CollectError),
    #[error("creating state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
}

pub struct Runner {
    collectors: Collectors,
    tracker: SeriesTracker,
    spool: Spool,
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
        Ok(Runner {
            collectors: Collectors::from_config(&cfg, stats.clone())?,
            tracker,
            spool,
            stats,
            interval_ms: cfg.agent.interval.0.as_millis() as i64,
            logged: HashSet::new(),
        })
    }

    pub fn stats(&self) -> &Arc<AgentStats> {
        &self.stats
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
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
        let spool = &mut self.spool;
        let points = self
            .tracker
            .observe(&collection.jobs, |name, labels, kind, unit, help| {
                spool.define(name, labels, kind, unit, help)
            })?;
        for (reason, n) in &points.refused {
            self.stats.record_refused(reason.as_str(), *n);
        }
        let count = points.points.len();
        let pushed = self.spool.push(vec![PointGroup {
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
                self.spool.next_seq().saturating_sub(1)
            }
            Err(e) => return Err(e.into()),
        };
        for r in points.ended {
            self.spool.retire(r, seq)?;
        }
        let s = self.spool.stats();
        self.stats.set_series(self.tracker.live_series());
        self.stats
            .record_spool(s.bytes, s.batches, s.dropped_samples_total);
        Ok(())
    }

    /// Collects on the grid until SIGINT or SIGTERM, then syncs the spool.
    pub async fn run_until_signal(mut self) -> Result<(), RunError> {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let stop = async move {
            match term.as_mut() {
                Some(t) => {
                    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = t.recv() => {} }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        tokio::pin!(stop);
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
            if let Some(every) = self.spool.sync_interval()
                && last_sync.elapsed() >= every
            {
                if self.spool.needs_sync() {
                    self.spool.sync()?;
                }
                last_sync = std::time::Instant::now();
            }
        }
        tracing::info!("stopping: syncing the spool");
        self.spool.close()?;
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
