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
use crate::uplink::{Uplink, UplinkError, UplinkSettings, backoff_delay};
use argus_common::model::PointGroup;
use argus_common::pki::JoinString;
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

/// Most points one spool batch carries. A tick with more is split into several batches
/// (each its own seq, same timestamp), so that no batch can outgrow the wire's frame
/// limit (4 MiB; a point encodes in at most 19 bytes) and be retried forever.
pub const MAX_POINTS_PER_BATCH: usize = 50_000;

/// How long a refused enrollment (wrong or spent token, rate limit) waits before the
/// next attempt: the refusal will not change by itself, and each attempt is audited.
const ENROLL_REFUSED_RETRY: Duration = Duration::from_secs(60);

/// Where the uplink's identity comes from.
enum Enrollment {
    /// `<state_dir>/identity.json`.
    Enrolled(Identity),
    /// `uplink.join_token`, used in the background until it works, so an unreachable
    /// coordinator at start never stops the agent from collecting into its spool.
    Join(JoinString),
}

pub struct Runner {
    collectors: Collectors,
    tracker: SeriesTracker,
    /// Shared with the uplink, which drains it; both run on the agent's one thread.
    spool: Arc<Mutex<Spool>>,
    /// Rung after every push so the uplink sends the new batch at once.
    pushed: Arc<tokio::sync::Notify>,
    /// The uplink to start with `run`, when the agent is enrolled or has a join token.
    uplink: Option<(UplinkSettings, Enrollment)>,
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
        let mut all = points.points;
        let mut seq = spool.next_seq().saturating_sub(1);
        // An empty tick is still one (empty) batch: it keeps the seq sequence moving.
        loop {
            let rest = if all.len() > MAX_POINTS_PER_BATCH {
                all.split_off(MAX_POINTS_PER_BATCH)
            } else {
                Vec::new()
            };
            let count = all.len();
            match spool.push(vec![PointGroup {
                timestamp_ms: tick_ms,
                points: all,
            }]) {
                Ok(outcome) => seq = outcome.seq,
                Err(SpoolError::Full) => {
                    // when_full = "block": this part of the tick is lost and counted; the
                    // ended series' refs are still retired so the dictionary cannot grow
                    // without bound.
                    self.stats.record_refused("spool_full", count as u64);
                    tracing::warn!(
                        samples = count,
                        "spool full (when_full = \"block\"): tick not stored"
                    );
                }
                Err(e) => return Err(e.into()),
            }
            if rest.is_empty() {
                break;
            }
            all = rest;
        }
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
        let uplink = self.uplink.take().map(|(settings, enrollment)| {
            let state_dir = self.state_dir.clone();
            let spool = self.spool.clone();
            let pushed = self.pushed.clone();
            let stats = self.stats.clone();
            let mut stop = uplink_stopped;
            tokio::spawn(async move {
                let identity = match enrollment {
                    Enrollment::Enrolled(id) => id,
                    Enrollment::Join(join) => {
                        match enroll_until_done(&join, &settings, &state_dir, &stats, &mut stop)
                            .await
                        {
                            Some(id) => id,
                            None => return,
                        }
                    }
                };
                Uplink {
                    settings,
                    state_dir,
                    identity,
                    spool,
                    pushed,
                    stats,
                }
                .run(stop)
                .await
            })
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

/// The uplink settings and identity `run` starts with: the stored identity, or the
/// join token to enroll with (in the background, see [`enroll_until_done`]). Without
/// either the agent only collects into its spool, which is sent once it is enrolled.
async fn prepare_uplink(
    cfg: &AgentConfig,
) -> Result<Option<(UplinkSettings, Enrollment)>, RunError> {
    let host = crate::collection::host_name(&cfg.host.proc_root);
    let settings = UplinkSettings {
        coordinators: cfg.uplink.coordinators.clone(),
        in_flight: cfg.uplink.in_flight,
        backoff_min: cfg.uplink.backoff_min.0,
        backoff_max: cfg.uplink.backoff_max.0,
        heartbeat: cfg.uplink.heartbeat.0,
        host_name: host,
    };
    let enrollment = match Identity::load(&cfg.agent.state_dir).map_err(UplinkError::from)? {
        Some(id) => Enrollment::Enrolled(id),
        // A join string that does not parse never will: that stops the start.
        None if !cfg.uplink.join_token.is_empty() => Enrollment::Join(
            JoinString::parse(cfg.uplink.join_token.trim()).map_err(UplinkError::from)?,
        ),
        None => {
            tracing::info!(
                state_dir = %cfg.agent.state_dir.display(),
                "not enrolled (run `argus-agent join` or set uplink.join_token): collecting into the spool only"
            );
            return Ok(None);
        }
    };
    Ok(Some((settings, enrollment)))
}

/// Enrolls with `join` until it works or the agent stops (`None`), while the collection
/// loop keeps filling the spool. An unreachable coordinator is retried with the
/// uplink's backoff; a refusal every [`ENROLL_REFUSED_RETRY`], logged as an error.
async fn enroll_until_done(
    join: &JoinString,
    settings: &UplinkSettings,
    state_dir: &std::path::Path,
    stats: &AgentStats,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Identity> {
    let mut attempt = 0u32;
    loop {
        if *stop.borrow() {
            return None;
        }
        stats.set_uplink(UplinkState::Connecting);
        let pause = match crate::uplink::enroll::enroll(join, &settings.host_name).await {
            Ok(id) => {
                // Without the stored identity a restart would enroll again and find the
                // token spent; the session still runs with the one in memory.
                match id.store(state_dir) {
                    Ok(()) => {
                        tracing::info!(agent_id = %id.agent_id, "enrolled with uplink.join_token")
                    }
                    Err(e) => {
                        tracing::error!(agent_id = %id.agent_id, "enrolled, but the identity could not be stored: {e}")
                    }
                }
                return Some(id);
            }
            Err(e @ UplinkError::Refused { .. }) => {
                tracing::error!(
                    "enrollment with uplink.join_token refused: {e}; collecting into the spool, trying again in {ENROLL_REFUSED_RETRY:?}"
                );
                ENROLL_REFUSED_RETRY
            }
            Err(e) => {
                tracing::warn!("enrollment failed: {e}; collecting into the spool and retrying");
                let d = backoff_delay(
                    attempt,
                    settings.backoff_min,
                    settings.backoff_max,
                    rand::random(),
                );
                attempt = attempt.saturating_add(1);
                d
            }
        };
        stats.set_uplink(UplinkState::Disconnected);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            () = crate::uplink::stopped(stop) => return None,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    /// A `/proc` whose `net/dev` lists `devices` interfaces (16 series each).
    fn fake_proc(root: &std::path::Path, devices: usize) {
        std::fs::create_dir_all(root.join("net")).unwrap();
        std::fs::write(root.join("loadavg"), "0.10 0.20 0.30 1/100 4242\n").unwrap();
        let mut dev =
            String::from("Inter-| Receive | Transmit\n face |bytes packets|bytes packets\n");
        for d in 0..devices {
            dev.push_str(&format!("e{d}: 1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0\n"));
        }
        std::fs::write(root.join("net/dev"), dev).unwrap();
    }

    #[tokio::test]
    async fn a_tick_larger_than_a_batch_is_split_into_batches_of_the_same_tick() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let devices = MAX_POINTS_PER_BATCH / 16 + 10;
        fake_proc(&proc_root, devices);
        let mut cfg = AgentConfig::default();
        cfg.agent.state_dir = dir.path().join("state");
        cfg.agent.interval = HumanDuration(Duration::from_secs(1));
        cfg.containers.enabled = false;
        cfg.host.proc_root = proc_root;
        cfg.host.sys_root = dir.path().join("sys");
        let mut runner = Runner::start(cfg).await.unwrap();
        runner.tick(10_000).await.unwrap();
        let batches = runner.spool().pending(0, 10).unwrap();
        assert_eq!(batches.len(), 2, "one tick, two batches");
        let sizes: Vec<usize> = batches
            .iter()
            .map(|(_, groups)| {
                assert!(groups.iter().all(|g| g.timestamp_ms == 10_000));
                groups.iter().map(|g| g.points.len()).sum()
            })
            .collect();
        assert_eq!(sizes[0], MAX_POINTS_PER_BATCH);
        assert!(sizes[1] >= 16 * 10, "{sizes:?}");
        assert_eq!(batches[1].0, batches[0].0 + 1, "consecutive seqs");
    }
}
