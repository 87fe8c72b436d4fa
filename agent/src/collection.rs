//! One collection: every enabled collector run for one scheduled tick.
//!
//! Timestamps are the scheduled tick on the interval grid (DESIGN §5), never the
//! moment a read finished, so consecutive timestamps differ by exactly the interval
//! and compress to almost nothing in the store.

use crate::collect::agent::{AgentStats, CollectorKind};
use crate::collect::containers::{ContainerCollector, ContainerConfig};
use crate::collect::host::{HostCollector, HostConfig};
use crate::collect::probes::ProbeCollector;
use crate::collect::{CollectError, Families};
use crate::config::{AgentConfig, JobsSection};
use std::sync::Arc;
use std::time::Instant;

/// Everything collected at one tick, grouped by `job`.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    pub timestamp_ms: i64,
    pub jobs: Vec<(String, Families)>,
}

impl Collection {
    pub fn sample_count(&self) -> usize {
        self.jobs.iter().map(|(_, f)| f.sample_count()).sum()
    }
}

/// The latest tick at or before `now_ms` on the grid of `interval_ms`.
pub fn tick_at_or_before(now_ms: i64, interval_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(interval_ms.max(1))
}

/// The first tick strictly after `now_ms`: a loop that overran skips the ticks it
/// missed instead of bunching collections together.
pub fn next_tick_after(now_ms: i64, interval_ms: i64) -> i64 {
    tick_at_or_before(now_ms, interval_ms) + interval_ms.max(1)
}

/// The enabled collectors with their jobs.
pub struct Collectors {
    host: Option<HostCollector>,
    containers: Option<ContainerCollector>,
    probes: ProbeCollector,
    jobs: JobsSection,
    stats: Arc<AgentStats>,
}

impl Collectors {
    pub fn from_config(cfg: &AgentConfig, stats: Arc<AgentStats>) -> Result<Self, CollectError> {
        let host = cfg.host.enabled.then(|| {
            let mut hc = HostConfig {
                proc_root: cfg.host.proc_root.clone(),
                sys_root: cfg.host.sys_root.clone(),
                root_fs: cfg.host.root_fs.clone(),
                ..HostConfig::default()
            };
            if let Some(v) = &cfg.host.fs_types_exclude {
                hc.fs_types_exclude = v.clone();
            }
            if let Some(v) = &cfg.host.mount_points_exclude {
                hc.mount_points_exclude = v.clone();
            }
            if let Some(v) = &cfg.host.net_devices_exclude {
                hc.net_devices_exclude = v.clone();
            }
            if let Some(v) = &cfg.host.disk_devices_exclude {
                hc.disk_devices_exclude = v.clone();
            }
            HostCollector::new(hc)
        });
        let containers = cfg.containers.enabled.then(|| {
            ContainerCollector::new(ContainerConfig {
                docker_socket: cfg.containers.docker_socket.clone(),
                cgroup_root: cfg.containers.cgroup_root.clone(),
                proc_root: cfg.host.proc_root.clone(),
                inventory_refresh: cfg.containers.inventory_refresh.0,
            })
        });
        Ok(Collectors {
            host,
            containers,
            probes: ProbeCollector::new(&cfg.probes)?,
            jobs: cfg.jobs.clone(),
            stats,
        })
    }

    pub fn probes(&self) -> &ProbeCollector {
        &self.probes
    }

    /// Runs every collector for `tick_ms`. Errors are returned for the caller to log;
    /// they never stop the other collectors.
    pub async fn collect(&mut self, tick_ms: i64) -> (Collection, Vec<CollectError>) {
        let mut errors = Vec::new();
        let mut jobs = Vec::with_capacity(4);

        if let Some(host) = &mut self.host {
            let (mut f, start, before) = (Families::new(), Instant::now(), errors.len());
            host.collect(&mut f, &mut errors);
            self.stats.record_collector(
                CollectorKind::Host,
                start.elapsed(),
                errors.len() - before,
            );
            jobs.push((self.jobs.node.clone(), f));
        }

        let (mut cf, mut pf) = (Families::new(), Families::new());
        let (mut cerr, mut perr) = (Vec::new(), Vec::new());
        let stats = &self.stats;
        let containers = async {
            if let Some(c) = &mut self.containers {
                let start = Instant::now();
                c.collect(tick_ms as f64 / 1000.0, &mut cf, &mut cerr).await;
                stats.record_collector(CollectorKind::Containers, start.elapsed(), cerr.len());
            }
        };
        let probes = async {
            let start = Instant::now();
            self.probes.collect(tick_ms, &mut pf, &mut perr).await;
            stats.record_collector(CollectorKind::Probes, start.elapsed(), perr.len());
        };
        tokio::join!(containers, probes);
        errors.extend(cerr);
        errors.extend(perr);
        if self.containers.is_some() {
            jobs.push((self.jobs.cadvisor.clone(), cf));
        }
        jobs.push((self.jobs.blackbox.clone(), pf));

        let mut own = Families::new();
        self.stats.collect(&mut own);
        jobs.push((self.jobs.agent.clone(), own));
        let collection = Collection {
            timestamp_ms: tick_ms,
            jobs,
        };
        self.stats.record_collection(collection.sample_count());
        (collection, errors)
    }
}

/// The host's name as the host sees it: from `<proc_root>/sys/kernel/hostname`, so a
/// containerized agent reading /host/proc reports the node, not its pod.
pub fn host_name(proc_root: &std::path::Path) -> String {
    std::fs::read_to_string(proc_root.join("sys/kernel/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_sit_on_the_grid() {
        assert_eq!(tick_at_or_before(10_999, 1_000), 10_000);
        assert_eq!(tick_at_or_before(10_000, 1_000), 10_000);
        assert_eq!(next_tick_after(10_000, 1_000), 11_000);
        assert_eq!(next_tick_after(10_001, 15_000), 15_000);
        assert_eq!(tick_at_or_before(-1, 1_000), -1_000);
    }
}
