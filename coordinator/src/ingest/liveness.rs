//! Agent liveness and the leader's `up{instance,job}` duty (DESIGN §3.3, §5).
//!
//! An agent is up while it has a session on this node and sent something (a batch, a
//! heartbeat) within the heartbeat timeout. The leader proposes `up` through the log
//! every interval: 1 for live agents, 0 for agents it saw that went silent, once per job
//! the agent reported. A 0 is written only after a grace period (heartbeat timeout plus
//! reconnect time) from the moment this node started or became leader, so a failover or
//! a short coordinator restart never marks the fleet down while agents reconnect. No
//! staleness markers are written for a silent agent: its spool may still replay the gap.
//!
//! A node that starts or becomes leader also remembers, from the replicated state, the
//! agents that had an `up` series (active agents only, with those series' jobs), so an
//! agent that was up before a restart or failover and never comes back is marked down
//! once the grace period is over, instead of being forgotten with its `up` frozen at 1.
//!
//! [`Liveness`] is pure (time in, samples out); [`up_duty`] drives it.

use crate::cluster::{NodeStats, Proposer};
use crate::fleet::agents::AgentStatus;
use crate::state::entry::{Entry, PushedItem, PushedKey};
use crate::state::machine::{Outcome, StateMachine};
use crate::state::replica::SharedState;
use crate::tsdb::index::{METRIC_NAME_LABEL, Matcher};
use argus_common::model::Labels;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most jobs one agent reports (`node`, `cadvisor`, `blackbox`, `argus-agent`, ...).
pub const MAX_JOBS_PER_AGENT: usize = 16;

/// What this node knows about one agent's liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    instance: String,
    jobs: BTreeSet<String>,
    last_seen_ms: i64,
    /// Open sessions (normally 0 or 1; briefly 2 while a new one replaces the old).
    sessions: u32,
}

/// One `up` sample to write.
#[derive(Debug, Clone, PartialEq)]
pub struct UpSample {
    pub instance: String,
    pub job: String,
    pub value: f64,
}

/// The agents this node has seen, bounded.
#[derive(Debug)]
pub struct Liveness {
    agents: BTreeMap<String, Seen>,
    max_agents: usize,
    /// Agents forgotten because the table was full (the longest silent first).
    pub evicted: u64,
    /// Jobs not tracked because an agent reported more than [`MAX_JOBS_PER_AGENT`].
    pub jobs_dropped: u64,
}

impl Liveness {
    pub fn new(max_agents: usize) -> Self {
        Liveness {
            agents: BTreeMap::new(),
            max_agents: max_agents.max(1),
            evicted: 0,
            jobs_dropped: 0,
        }
    }

    /// A session of `agent_id` was admitted.
    pub fn connected(&mut self, agent_id: &str, instance: &str, now_ms: i64) {
        if !self.agents.contains_key(agent_id) && self.agents.len() >= self.max_agents {
            let victim = self
                .agents
                .iter()
                .filter(|(_, s)| s.sessions == 0)
                .min_by_key(|(_, s)| s.last_seen_ms)
                .map(|(id, _)| id.clone());
            match victim {
                Some(id) => {
                    self.agents.remove(&id);
                    self.evicted += 1;
                }
                None => {
                    self.evicted += 1;
                    return;
                }
            }
        }
        let s = self.agents.entry(agent_id.to_string()).or_insert(Seen {
            instance: instance.to_string(),
            jobs: BTreeSet::new(),
            last_seen_ms: now_ms,
            sessions: 0,
        });
        s.instance = instance.to_string();
        s.sessions += 1;
        s.last_seen_ms = s.last_seen_ms.max(now_ms);
    }

    /// Remembers an agent known from the replicated state (see [`known_agents`]) with
    /// no session on this node: it counts as down until it connects, which is reported
    /// only after the grace period. An agent already tracked is left as it is.
    pub fn remember(&mut self, agent_id: &str, instance: &str, jobs: &[String], now_ms: i64) {
        if self.agents.contains_key(agent_id) {
            return;
        }
        if self.agents.len() >= self.max_agents {
            self.evicted += 1;
            return;
        }
        let mut kept = BTreeSet::new();
        for job in jobs {
            if kept.len() >= MAX_JOBS_PER_AGENT {
                self.jobs_dropped += 1;
            } else {
                kept.insert(job.clone());
            }
        }
        self.agents.insert(
            agent_id.to_string(),
            Seen {
                instance: instance.to_string(),
                jobs: kept,
                last_seen_ms: now_ms,
                sessions: 0,
            },
        );
    }

    /// The agent sent something.
    pub fn seen(&mut self, agent_id: &str, now_ms: i64) {
        if let Some(s) = self.agents.get_mut(agent_id) {
            s.last_seen_ms = s.last_seen_ms.max(now_ms);
        }
    }

    /// The agent defined a series with this `job` label.
    pub fn job(&mut self, agent_id: &str, job: &str) {
        if let Some(s) = self.agents.get_mut(agent_id)
            && !s.jobs.contains(job)
        {
            if s.jobs.len() >= MAX_JOBS_PER_AGENT {
                self.jobs_dropped += 1;
            } else {
                s.jobs.insert(job.to_string());
            }
        }
    }

    /// A session of the agent ended.
    pub fn disconnected(&mut self, agent_id: &str, now_ms: i64) {
        if let Some(s) = self.agents.get_mut(agent_id) {
            s.sessions = s.sessions.saturating_sub(1);
            s.last_seen_ms = s.last_seen_ms.max(now_ms);
        }
    }

    /// Whether the agent counts as up at `now_ms`.
    fn is_up(s: &Seen, now_ms: i64, timeout: Duration) -> bool {
        s.sessions > 0 && now_ms.saturating_sub(s.last_seen_ms) <= timeout.as_millis() as i64
    }

    /// The samples the leader writes at `now_ms`: 1 per job of each live agent; 0 per job
    /// of each silent one, but only once `now_ms` is `grace` past `grace_from_ms` (when
    /// this node started or became leader).
    pub fn up_samples(
        &self,
        now_ms: i64,
        timeout: Duration,
        grace_from_ms: i64,
        grace: Duration,
    ) -> Vec<UpSample> {
        let graced = now_ms.saturating_sub(grace_from_ms) >= grace.as_millis() as i64;
        let mut out = Vec::new();
        for s in self.agents.values() {
            let up = Self::is_up(s, now_ms, timeout);
            if !up && !graced {
                continue;
            }
            for job in &s.jobs {
                out.push(UpSample {
                    instance: s.instance.clone(),
                    job: job.clone(),
                    value: if up { 1.0 } else { 0.0 },
                });
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

/// One agent the replicated state knows: id, instance, and the jobs of its `up` series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownAgent {
    pub agent_id: String,
    pub instance: String,
    pub jobs: Vec<String>,
}

/// The active agents (not revoked, certificate not expired at `now_ms`) that have an
/// `up` series in the store, with its jobs, at most `max`: who was being watched before
/// this node started or became leader.
pub fn known_agents(state: &StateMachine, now_ms: i64, max: usize) -> Vec<KnownAgent> {
    let by_instance: BTreeMap<&str, &str> = state
        .fleet()
        .agents()
        .iter()
        .filter(|(_, r)| r.status(now_ms) == AgentStatus::Active)
        .map(|(id, r)| (r.instance.as_str(), id))
        .collect();
    let index = state.index();
    let ids = index
        .select(&[Matcher::equal(METRIC_NAME_LABEL, "up")])
        .unwrap_or_default();
    let mut jobs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for id in ids {
        let Some(series) = index.series(id) else {
            continue;
        };
        let (Some(instance), Some(job)) = (series.labels.get("instance"), series.labels.get("job"))
        else {
            continue;
        };
        if let Some(agent_id) = by_instance.get(instance) {
            jobs.entry(agent_id).or_default().push(job.to_string());
        }
    }
    let instances: BTreeMap<&str, &str> = by_instance.iter().map(|(i, a)| (*a, *i)).collect();
    jobs.into_iter()
        .take(max)
        .filter_map(|(agent_id, jobs)| {
            Some(KnownAgent {
                agent_id: agent_id.to_string(),
                instance: instances.get(agent_id)?.to_string(),
                jobs,
            })
        })
        .collect()
}

/// The log entry for one round of `up` samples at `t_ms`.
pub fn up_entry(samples: &[UpSample], t_ms: i64) -> Entry {
    let items = samples
        .iter()
        .flat_map(|s| {
            let labels =
                Labels::from_pairs([("instance", s.instance.as_str()), ("job", s.job.as_str())]);
            PushedItem::encode(
                PushedKey::New {
                    name: "up".into(),
                    labels,
                },
                &[(t_ms, s.value)],
            )
        })
        .collect();
    Entry::Push {
        items,
        metadata: Vec::new(),
    }
}

/// Timing of the `up` duty.
#[derive(Debug, Clone, Copy)]
pub struct UpTiming {
    /// How often `up` is written.
    pub interval: Duration,
    /// An agent silent this long is down.
    pub timeout: Duration,
    /// Wait after start or election before writing any 0 (timeout + reconnect time).
    pub grace: Duration,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The leader's `up` duty: every interval, while this node leads, proposes the samples
/// of [`Liveness::up_samples`] as one `Push` entry, timestamped on the interval grid.
///
/// On becoming leader (a single node: at start) it first remembers the agents of
/// [`known_agents`], so the grace period applies to them too.
pub async fn up_duty(
    proposer: Proposer<Outcome>,
    stats: Arc<NodeStats>,
    state: SharedState,
    liveness: Arc<Mutex<Liveness>>,
    timing: UpTiming,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let interval_ms = (timing.interval.as_millis() as i64).max(1);
    let mut every = tokio::time::interval(timing.interval.max(Duration::from_millis(10)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started_ms = wall_ms();
    let mut leader_since: Option<i64> = None;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let now = wall_ms();
        if !stats.is_leader() {
            leader_since = None;
            continue;
        }
        let first_round = leader_since.is_none();
        let since = *leader_since.get_or_insert(now);
        // Every round of the grace period, not just the first: a node that just started
        // may still be applying its log when it first leads.
        if now.saturating_sub(since) < timing.grace.as_millis() as i64 {
            let known = match state.read() {
                Ok(st) => known_agents(&st, now, usize::MAX),
                Err(_) => return,
            };
            match liveness.lock() {
                Ok(mut l) => {
                    for a in &known {
                        l.remember(&a.agent_id, &a.instance, &a.jobs, now);
                    }
                }
                Err(_) => return,
            }
            if first_round && !known.is_empty() {
                tracing::info!(
                    agents = known.len(),
                    grace_s = timing.grace.as_secs(),
                    "leading: agents with an `up` series that do not reconnect within the grace period will be marked down"
                );
            }
        }
        let samples = match liveness.lock() {
            Ok(l) => l.up_samples(now, timing.timeout, since.max(started_ms), timing.grace),
            Err(_) => return,
        };
        if samples.is_empty() {
            continue;
        }
        let t = now - now.rem_euclid(interval_ms);
        match proposer.propose(now, &up_entry(&samples, t).encode()) {
            Ok(receipt) => {
                if let Err(e) = receipt.outcome().await {
                    tracing::debug!("up samples not applied: {e}");
                }
            }
            Err(e) => tracing::debug!("up samples not proposed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(15);
    const GRACE: Duration = Duration::from_secs(25);

    fn values(l: &Liveness, now: i64, from: i64) -> Vec<(String, String, f64)> {
        l.up_samples(now, T, from, GRACE)
            .into_iter()
            .map(|s| (s.instance, s.job, s.value))
            .collect()
    }

    #[test]
    fn a_live_agent_is_up_once_per_job() {
        let mut l = Liveness::new(10);
        l.connected("a1", "web-1", 0);
        l.job("a1", "node");
        l.job("a1", "argus-agent");
        l.job("a1", "node");
        assert_eq!(
            values(&l, 1_000, 0),
            vec![
                ("web-1".into(), "argus-agent".into(), 1.0),
                ("web-1".into(), "node".into(), 1.0)
            ]
        );
    }

    #[test]
    fn no_zero_before_the_grace_period_after_start_or_election() {
        let mut l = Liveness::new(10);
        l.connected("a1", "web-1", 0);
        l.job("a1", "node");
        l.disconnected("a1", 1_000);
        // Silent, but within the grace period counted from the election at 500.
        assert!(values(&l, 20_000, 500).is_empty());
        // After it: down.
        assert_eq!(
            values(&l, 26_000, 500),
            vec![("web-1".into(), "node".into(), 0.0)]
        );
        // Reconnected: up again.
        l.connected("a1", "web-1", 27_000);
        assert_eq!(values(&l, 27_500, 500)[0].2, 1.0);
    }

    #[test]
    fn a_connected_agent_that_stops_talking_is_down_after_the_timeout() {
        let mut l = Liveness::new(10);
        l.connected("a1", "web-1", 0);
        l.job("a1", "node");
        l.seen("a1", 10_000);
        assert_eq!(values(&l, 25_000, -100_000)[0].2, 1.0);
        assert_eq!(values(&l, 25_001, -100_000)[0].2, 0.0);
    }

    #[test]
    fn a_remembered_agent_is_down_after_the_grace_period_unless_it_reconnects() {
        let mut l = Liveness::new(10);
        let jobs = vec!["node".to_string(), "argus-agent".to_string()];
        l.remember("a1", "web-1", &jobs, 1_000);
        l.remember("a2", "web-2", &jobs[..1], 1_000);
        // Within the grace period from the start at 1_000: nothing said about either.
        assert!(values(&l, 20_000, 1_000).is_empty());
        // a1 reconnects: up; a remembered agent is not remembered over its session.
        l.connected("a1", "web-1", 21_000);
        l.remember("a1", "other", &[], 21_000);
        assert_eq!(
            values(&l, 22_000, 1_000),
            vec![
                ("web-1".into(), "argus-agent".into(), 1.0),
                ("web-1".into(), "node".into(), 1.0)
            ]
        );
        // a2 never came back: down once the grace period is over.
        let after = values(&l, 26_000, 1_000);
        assert!(
            after.contains(&("web-2".into(), "node".into(), 0.0)),
            "{after:?}"
        );
        assert!(
            after.contains(&("web-1".into(), "node".into(), 1.0)),
            "{after:?}"
        );
    }

    #[test]
    fn tables_are_bounded() {
        let mut l = Liveness::new(2);
        l.connected("a1", "i1", 0);
        l.disconnected("a1", 1);
        l.connected("a2", "i2", 2);
        l.connected("a3", "i3", 3);
        assert_eq!(l.len(), 2);
        assert_eq!(l.evicted, 1);
        for j in 0..20 {
            l.job("a2", &format!("j{j}"));
        }
        assert_eq!(l.jobs_dropped, 4);
    }

    #[test]
    fn the_entry_writes_up_with_instance_and_job() {
        let e = up_entry(
            &[UpSample {
                instance: "web-1".into(),
                job: "node".into(),
                value: 1.0,
            }],
            10_000,
        );
        let Entry::Push { items, .. } = e else {
            panic!("not a push")
        };
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[0].key,
            PushedKey::New {
                name: "up".into(),
                labels: Labels::from_pairs([("instance", "web-1"), ("job", "node")])
            }
        );
    }
}
