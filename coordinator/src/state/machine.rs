//! The deterministic core of apply: entries in, series index, head and dedup state out.
//!
//! No I/O, no clock, no randomness (DESIGN §3.2): time comes from the entry (the
//! leader's stamp), and everything else from the entries applied before. The replica
//! around it persists sealed chunks and checkpoints; this file decides what an entry
//! does, so every rule (dedup, limits, clock skew, out-of-order) is tested here
//! without a disk.

use super::dedup::{SeqWindow, Verdict};
use super::entry::{Entry, PushedItem, PushedKey, PushedMetadata, PushedSeries};
use crate::fleet::state::{FleetOutcome, FleetState};
use crate::fleet::tokens::NewToken;
use crate::tsdb::aggregate::{
    Aggregate, Aggregator, AggregatorConfig, SampleSource, SealedBlock, is_counter,
};
use crate::tsdb::chunk;
use crate::tsdb::tier::Tiers;
use crate::tsdb::{
    Head, HeadConfig, HeadSnapshot, IndexSnapshot, Metadata, Refusal, SealedChunk, SeriesId,
    SeriesIndex, TsdbError,
};
use argus_common::model::{
    Labels, MetricType, PointGroup, SeriesDef, SeriesRef, is_valid_label_name,
};
use argus_common::wire::RefuseReason;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bounds on what entries may create. Each refusal is counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_labels: usize,
    pub max_label_name_len: usize,
    pub max_label_value_len: usize,
    pub max_series_per_agent: usize,
    pub max_points_per_batch: usize,
    /// Samples stamped further ahead of the entry's leader time are refused.
    pub max_future_ms: i64,
    /// Incarnations remembered per agent; the least recently used is forgotten.
    pub max_incarnations_per_agent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_labels: 64,
            max_label_name_len: 1024,
            max_label_value_len: 2048,
            max_series_per_agent: 100_000,
            max_points_per_batch: 1_000_000,
            max_future_ms: 10 * 60_000,
            max_incarnations_per_agent: 4,
        }
    }
}

/// What the proposer of an entry learns once it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// False when the whole entry was a duplicate (an agent batch seen before).
    pub applied: bool,
    /// For agent batches that must be sent again later (beyond the dedup window).
    pub retry: bool,
    pub accepted: u64,
    pub refused: BTreeMap<RefuseReason, u64>,
    /// What a fleet entry (tokens) did; `None` for every other kind.
    pub fleet: Option<FleetOutcome>,
    /// What an agent entry (enroll, cert, revoke, seen) did; `None` for every other kind.
    pub agent: Option<crate::fleet::agents::AgentOutcome>,
}

impl Outcome {
    fn refuse(&mut self, reason: RefuseReason, n: u64) {
        if n > 0 {
            *self.refused.entry(reason).or_default() += n;
        }
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// One agent incarnation's dedup window and series refs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Incarnation {
    window: SeqWindow,
    /// Ref → series, and whether its aggregates keep a counter's increase: decided once
    /// when the ref is defined, not per point.
    refs: BTreeMap<SeriesRef, (SeriesId, bool)>,
    highest_ref: Option<SeriesRef>,
    /// Leader time of the last entry that used it, for least-recently-used eviction.
    last_used_ms: i64,
}

/// Counters of what apply did, part of the replicated state so that every replica
/// reports the same figures for the same index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyCounters {
    pub entries: u64,
    pub samples_appended: u64,
    pub refused: BTreeMap<String, u64>,
    pub incarnations_evicted: u64,
}

/// The dedup and agent part of a checkpoint; the head and index have their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AgentsSnapshot {
    agents: BTreeMap<String, BTreeMap<u64, Incarnation>>,
    counters: ApplyCounters,
    last_time_ms: i64,
}

/// Everything needed to rebuild the state at `applied`, each part versioned.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub applied: u64,
    pub index: Vec<u8>,
    pub head: Vec<u8>,
    pub agents: Vec<u8>,
    pub aggregates: Vec<u8>,
    /// The fleet's section ([`FleetState::encode`]); empty in checkpoints written before
    /// the fleet existed, which restore as an empty fleet.
    pub fleet: Vec<u8>,
}

const AGENTS_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Tsdb(#[from] TsdbError),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Aggregate(#[from] crate::tsdb::aggregate::AggregateError),
    #[error("checkpoint: {0}")]
    Fleet(#[from] crate::fleet::state::FleetStateError),
}

/// How often, in leader time, quiet series have their aggregate windows sealed. Sealing
/// walks every series, so it is not done per entry. A quiet series' windows are
/// therefore sealed within this plus the out-of-order window of leader time.
pub const WATERMARK_EVERY_MS: i64 = 60_000;

pub struct StateMachine {
    applied: u64,
    index: SeriesIndex,
    head: Head,
    /// Downsampling for the aggregate tiers, fed every sample the head accepts.
    aggregator: Aggregator,
    agents: BTreeMap<String, BTreeMap<u64, Incarnation>>,
    counters: ApplyCounters,
    limits: Limits,
    last_time_ms: i64,
    /// Join tokens (and, as enrollment lands, agents and certificates).
    fleet: FleetState,
}

impl StateMachine {
    pub fn new(head: HeadConfig, limits: Limits, tiers: &Tiers) -> Result<Self, StateError> {
        Ok(StateMachine {
            applied: 0,
            index: SeriesIndex::new(),
            head: Head::new(head)?,
            aggregator: Aggregator::new(tiers, AggregatorConfig::new(head.ooo_window_ms))?,
            agents: BTreeMap::new(),
            counters: ApplyCounters::default(),
            limits,
            last_time_ms: 0,
            fleet: FleetState::default(),
        })
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn index(&self) -> &SeriesIndex {
        &self.index
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    pub fn counters(&self) -> &ApplyCounters {
        &self.counters
    }

    pub fn fleet(&self) -> &FleetState {
        &self.fleet
    }

    /// The leader time of the last applied entry: the replicated notion of "now".
    pub fn last_time_ms(&self) -> i64 {
        self.last_time_ms
    }

    /// Chunks whose out-of-order window closed, for the replica to persist.
    pub fn take_sealed(&mut self) -> Vec<SealedChunk> {
        self.head.take_sealed()
    }

    /// Copies of the sealed chunks [`StateMachine::take_sealed`] would hand over.
    pub fn sealed(&self) -> Vec<SealedChunk> {
        self.head.sealed()
    }

    /// Aggregate windows sealed for the downsampled tiers, for the replica to persist.
    pub fn take_blocks(&mut self) -> Vec<SealedBlock> {
        self.aggregator.take_blocks()
    }

    /// Copies of the blocks [`StateMachine::take_blocks`] would hand over.
    pub fn blocks(&self) -> Vec<SealedBlock> {
        self.aggregator.blocks()
    }

    /// Sealed aggregate windows of a series that are not in the store yet (see
    /// [`Aggregator::sealed_windows`]).
    pub fn sealed_windows(
        &self,
        series: SeriesId,
        tier: u8,
        mint: i64,
        maxt: i64,
    ) -> Vec<Aggregate> {
        self.aggregator.sealed_windows(series, tier, mint, maxt)
    }

    /// What `HelloOk` tells an agent incarnation: highest settled seq and highest ref.
    pub fn agent_progress(
        &self,
        agent_id: &str,
        incarnation: u64,
    ) -> (Option<u64>, Option<SeriesRef>) {
        self.agents
            .get(agent_id)
            .and_then(|m| m.get(&incarnation))
            .map_or((None, None), |i| {
                (i.window.highest_applied(), i.highest_ref)
            })
    }

    /// Marks an index with no state change (a leader's no-op, a conf change).
    pub fn skip(&mut self, index: u64) {
        self.applied = index;
    }

    /// Applies one entry stamped with the leader's time.
    pub fn apply(&mut self, index: u64, time_ms: i64, entry: &Entry) -> Outcome {
        self.applied = index;
        let previous = self.last_time_ms;
        self.last_time_ms = self.last_time_ms.max(time_ms);
        if self.last_time_ms / WATERMARK_EVERY_MS != previous / WATERMARK_EVERY_MS {
            let ooo = self.head.config().ooo_window_ms;
            self.aggregator
                .advance_watermark(self.last_time_ms.saturating_sub(ooo));
        }
        self.counters.entries += 1;
        let outcome = match entry {
            Entry::SeriesDefs {
                agent_id,
                incarnation,
                defs,
            } => self.apply_defs(agent_id, *incarnation, defs, time_ms),
            Entry::AgentBatch {
                agent_id,
                incarnation,
                seq,
                lowest_seq,
                groups,
            } => self.apply_batch(agent_id, *incarnation, *seq, *lowest_seq, groups, time_ms),
            Entry::RemoteWrite { series, metadata } => self.apply_push(series, metadata, time_ms),
            Entry::Push { items, metadata } => self.apply_compact_push(items, metadata, time_ms),
            // The replica drops the store's partitions; the head holds only recent data.
            Entry::RetentionCut { .. } => Outcome {
                applied: true,
                ..Outcome::default()
            },
            Entry::TokenCreate {
                id,
                secret_hash,
                expires_ms,
                uses,
                host,
                role,
                created_by,
            } => {
                let new = NewToken {
                    id: *id,
                    secret_hash: *secret_hash,
                    expires_ms: *expires_ms,
                    uses: *uses,
                    host: host.clone(),
                    role: *role,
                    created_by: created_by.clone(),
                };
                fleet_outcome(self.fleet.create_token(&new, time_ms))
            }
            Entry::TokenRevoke { id } => fleet_outcome(self.fleet.revoke_token(id, time_ms)),
            Entry::TokenUse {
                id,
                host,
                key_sha256,
            } => fleet_outcome(self.fleet.use_token(id, host, key_sha256, time_ms)),
            Entry::AgentEnroll {
                agent_id,
                token_id,
                host,
                key_sha256,
            } => {
                let new = crate::fleet::agents::NewAgent {
                    agent_id: agent_id.clone(),
                    token_id: *token_id,
                    host: host.clone(),
                    key_sha256: *key_sha256,
                };
                agent_outcome(self.fleet.enroll_agent(&new, time_ms))
            }
            Entry::AgentCert {
                agent_id,
                serial,
                issued_ms,
                not_after_ms,
            } => {
                let issued = crate::fleet::agents::IssuedSerial {
                    serial: *serial,
                    issued_ms: *issued_ms,
                    not_after_ms: *not_after_ms,
                };
                agent_outcome(self.fleet.log_agent_cert(agent_id, &issued, time_ms))
            }
            Entry::AgentRevoke { agent_id } => {
                agent_outcome(self.fleet.revoke_agent(agent_id, time_ms))
            }
            Entry::AgentSeen { agent_id, version } => {
                agent_outcome(self.fleet.agent_seen(agent_id, version, time_ms))
            }
            Entry::Audit {
                records,
                retention_ms,
            } => {
                self.fleet.append_audit(records, *retention_ms, time_ms);
                Outcome {
                    applied: true,
                    ..Outcome::default()
                }
            }
            // A refused create or revoke (duplicate id, full table, unknown id) is
            // `applied: false`; the proposer reads the table for the reason.
            Entry::ApiTokenCreate {
                id,
                secret_hash,
                role,
                name,
                created_by,
                expires_ms,
            } => {
                let new = crate::fleet::api_tokens::NewApiToken {
                    id: *id,
                    secret_hash: *secret_hash,
                    role: *role,
                    name: name.clone(),
                    created_by: created_by.clone(),
                    expires_ms: *expires_ms,
                };
                Outcome {
                    applied: self.fleet.create_api_token(&new, time_ms).is_ok(),
                    ..Outcome::default()
                }
            }
            Entry::ApiTokenRevoke { id } => Outcome {
                applied: self.fleet.revoke_api_token(id, time_ms).is_ok(),
                ..Outcome::default()
            },
        };
        for (reason, n) in &outcome.refused {
            *self
                .counters
                .refused
                .entry(reason.as_str().to_string())
                .or_default() += n;
        }
        self.counters.samples_appended += outcome.accepted;
        outcome
    }

    /// Validates a series identity against the limits; `__` labels other than the
    /// metric name are refused here too, whatever the decoder let through.
    fn check_labels(&self, labels: &Labels) -> Result<(), RefuseReason> {
        if labels.len() > self.limits.max_labels {
            return Err(RefuseReason::LabelLimit);
        }
        for (k, v) in labels.iter() {
            if k.starts_with("__") || !is_valid_label_name(k) {
                return Err(RefuseReason::Other);
            }
            if k.len() > self.limits.max_label_name_len || v.len() > self.limits.max_label_value_len
            {
                return Err(RefuseReason::LabelLimit);
            }
        }
        Ok(())
    }

    fn incarnation(&mut self, agent_id: &str, incarnation: u64, time_ms: i64) -> &mut Incarnation {
        Self::incarnation_in(
            &mut self.agents,
            &mut self.counters,
            self.limits.max_incarnations_per_agent,
            agent_id,
            incarnation,
            time_ms,
        )
    }

    /// The incarnation's record, created if new; borrows only the fields it needs so
    /// callers can hold it while appending to the head.
    fn incarnation_in<'a>(
        agents: &'a mut BTreeMap<String, BTreeMap<u64, Incarnation>>,
        counters: &mut ApplyCounters,
        max: usize,
        agent_id: &str,
        incarnation: u64,
        time_ms: i64,
    ) -> &'a mut Incarnation {
        let max = max.max(1);
        let known = agents.entry(agent_id.to_string()).or_default();
        if !known.contains_key(&incarnation) && known.len() >= max {
            // Deterministic eviction: oldest use, then lowest incarnation.
            if let Some(victim) = known
                .iter()
                .min_by_key(|(inc, i)| (i.last_used_ms, **inc))
                .map(|(inc, _)| *inc)
            {
                known.remove(&victim);
                counters.incarnations_evicted += 1;
            }
        }
        let inc = known.entry(incarnation).or_default();
        inc.last_used_ms = inc.last_used_ms.max(time_ms);
        inc
    }

    fn apply_defs(
        &mut self,
        agent_id: &str,
        incarnation: u64,
        defs: &[SeriesDef],
        time_ms: i64,
    ) -> Outcome {
        let mut out = Outcome {
            applied: true,
            ..Outcome::default()
        };
        let limit = self.limits.max_series_per_agent;
        for def in defs {
            if let Err(r) = self.check_labels(&def.labels) {
                out.refuse(r, 1);
                continue;
            }
            let known = self.incarnation(agent_id, incarnation, time_ms).refs.len();
            let existing = self
                .agents
                .get(agent_id)
                .and_then(|m| m.get(&incarnation))
                .is_some_and(|i| i.refs.contains_key(&def.series_ref));
            if !existing && known >= limit {
                out.refuse(RefuseReason::SeriesLimit, 1);
                continue;
            }
            match self.index.get_or_create(&def.name, &def.labels) {
                Ok((id, _)) => {
                    let _ = self.index.set_metadata(
                        &def.name,
                        Metadata {
                            kind: def.kind,
                            unit: def.unit.clone(),
                            help: def.help.clone(),
                        },
                    );
                    let counter = counter_series(&self.index, id);
                    let inc = self.incarnation(agent_id, incarnation, time_ms);
                    inc.refs.insert(def.series_ref, (id, counter));
                    inc.highest_ref = inc.highest_ref.max(Some(def.series_ref));
                }
                Err(_) => out.refuse(RefuseReason::Other, 1),
            }
        }
        out
    }

    fn apply_batch(
        &mut self,
        agent_id: &str,
        incarnation: u64,
        seq: u64,
        lowest_seq: u64,
        groups: &[PointGroup],
        time_ms: i64,
    ) -> Outcome {
        let points: usize = groups.iter().map(|g| g.points.len()).sum();
        let max_future = self.limits.max_future_ms;
        let max_points = self.limits.max_points_per_batch;
        let inc = Self::incarnation_in(
            &mut self.agents,
            &mut self.counters,
            self.limits.max_incarnations_per_agent,
            agent_id,
            incarnation,
            time_ms,
        );
        match inc.window.admit(seq, lowest_seq) {
            Verdict::Duplicate => return Outcome::default(),
            Verdict::AheadOfWindow => {
                return Outcome {
                    retry: true,
                    ..Outcome::default()
                };
            }
            Verdict::Apply => {}
        }
        let mut out = Outcome {
            applied: true,
            ..Outcome::default()
        };
        if points > max_points {
            out.refuse(RefuseReason::Other, points as u64);
            return out;
        }
        // `inc` borrows the agents map and the head is a separate field: no copy of
        // the ref map per batch.
        let head = &mut self.head;
        let aggregator = &mut self.aggregator;
        for g in groups {
            if g.timestamp_ms > time_ms.saturating_add(max_future) {
                out.refuse(RefuseReason::TooFarAhead, g.points.len() as u64);
                continue;
            }
            for &(r, v) in &g.points {
                match inc.refs.get(&r) {
                    None => out.refuse(RefuseReason::UnknownSeries, 1),
                    Some(&(id, counter)) => {
                        let sample = (g.timestamp_ms, v);
                        append(head, aggregator, (id, counter), sample, time_ms, &mut out)
                    }
                }
            }
        }
        out
    }

    fn apply_push(
        &mut self,
        series: &[PushedSeries],
        metadata: &[PushedMetadata],
        time_ms: i64,
    ) -> Outcome {
        let mut out = self.push_metadata(metadata);
        for s in series {
            let n = s.samples.len() as u64;
            if let Some(id) = self.pushed_series(&s.name, &s.labels, n, &mut out) {
                self.append_pushed(id, &s.samples, time_ms, &mut out);
            }
        }
        out
    }

    fn apply_compact_push(
        &mut self,
        items: &[PushedItem],
        metadata: &[PushedMetadata],
        time_ms: i64,
    ) -> Outcome {
        let mut out = self.push_metadata(metadata);
        for item in items {
            let Ok(samples) = chunk::decode(&item.samples) else {
                // The proposer encoded it; only a corrupt entry gets here, and every
                // replica refuses it alike.
                out.refuse(RefuseReason::Other, 1);
                continue;
            };
            let n = samples.len() as u64;
            let id = match &item.key {
                PushedKey::Known(id) if self.index.series(*id).is_some() => Some(*id),
                PushedKey::Known(_) => {
                    out.refuse(RefuseReason::UnknownSeries, n);
                    None
                }
                PushedKey::New { name, labels } => self.pushed_series(name, labels, n, &mut out),
            };
            if let Some(id) = id {
                self.append_pushed(id, &samples, time_ms, &mut out);
            }
        }
        out
    }

    /// Records a push's metadata; the outcome the push's samples then add to.
    fn push_metadata(&mut self, metadata: &[PushedMetadata]) -> Outcome {
        for m in metadata {
            let _ = self.index.set_metadata(
                &m.name,
                Metadata {
                    kind: m.kind,
                    unit: m.unit.clone(),
                    help: m.help.clone(),
                },
            );
        }
        Outcome {
            applied: true,
            ..Outcome::default()
        }
    }

    /// The series a pushed label set names, created if new; `None` (its `n` samples
    /// refused) when the labels break a limit.
    fn pushed_series(
        &mut self,
        name: &str,
        labels: &Labels,
        n: u64,
        out: &mut Outcome,
    ) -> Option<SeriesId> {
        if let Err(r) = self.check_labels(labels) {
            out.refuse(r, n);
            return None;
        }
        match self.index.get_or_create(name, labels) {
            Ok((id, _)) => Some(id),
            Err(_) => {
                out.refuse(RefuseReason::Other, n);
                None
            }
        }
    }

    fn append_pushed(
        &mut self,
        id: SeriesId,
        samples: &[(i64, f64)],
        time_ms: i64,
        out: &mut Outcome,
    ) {
        let horizon = time_ms.saturating_add(self.limits.max_future_ms);
        // The aggregator takes what the head accepted in one call per series, not one per
        // sample: it looks the series up and checks what to seal once.
        let mut accepted = Vec::with_capacity(samples.len());
        for &(t, v) in samples {
            if t > horizon {
                out.refuse(RefuseReason::TooFarAhead, 1);
            } else if append_to_head(&mut self.head, id, (t, v), out) {
                accepted.push((t, v));
            }
        }
        if !accepted.is_empty() {
            let counter = counter_series(&self.index, id);
            self.aggregator.push_at(id, counter, &accepted, time_ms);
        }
    }

    /// Seals chunks of series idle for `idle_ms` at the replicated time, so a series
    /// that stopped does not hold its last chunk in memory forever.
    pub fn seal_idle(&mut self, idle_ms: i64) -> usize {
        self.head.seal_idle(self.last_time_ms, idle_ms)
    }

    /// The state at `applied`, for a checkpoint. Sealed chunks not yet taken are part
    /// of the head's snapshot, so nothing is lost between a take and a write.
    pub fn checkpoint(&self) -> Result<Checkpoint, StateError> {
        let agents = AgentsSnapshot {
            agents: self.agents.clone(),
            counters: self.counters.clone(),
            last_time_ms: self.last_time_ms,
        };
        let mut agent_bytes = vec![AGENTS_VERSION];
        agent_bytes.extend(
            postcard::to_allocvec(&agents).map_err(|e| StateError::Checkpoint(e.to_string()))?,
        );
        Ok(Checkpoint {
            applied: self.applied,
            index: self.index.snapshot().to_bytes()?,
            head: self.head.checkpoint()?.to_bytes()?,
            agents: agent_bytes,
            aggregates: self.aggregator.encode_state_without_samples(),
            fleet: self.fleet.encode()?,
        })
    }

    /// Rebuilds the state from a checkpoint. `stored(series, from, to)` reads the
    /// store's raw samples of a series in `[from, to]`: the aggregator's open samples
    /// are not in the checkpoint (they are the head's and the store's), and are read
    /// back from both.
    ///
    /// The store holds every chunk sealed up to the checkpoint, and possibly chunks of a
    /// later checkpoint that a crash interrupted before its file was written. Those can
    /// only add samples the replay is about to apply again; the aggregator then keeps the
    /// one it has (values at a timestamp are the head's, so equal) and counts a
    /// duplicate.
    pub fn restore(
        cp: &Checkpoint,
        head: HeadConfig,
        limits: Limits,
        tiers: &Tiers,
        stored: &mut SampleSource<'_>,
    ) -> Result<Self, StateError> {
        let index = SeriesIndex::restore(IndexSnapshot::from_bytes(&cp.index)?)?;
        let ooo_window_ms = head.ooo_window_ms;
        let head = Head::restore(head, HeadSnapshot::from_bytes(&cp.head)?)?;
        let aggregator = Aggregator::decode_state_with(
            &cp.aggregates,
            tiers,
            AggregatorConfig::new(ooo_window_ms),
            &mut |id, from, to| {
                let mut samples = stored(id, from, to)?;
                let in_head = head.select(id, from, to).map_err(|e| e.to_string())?;
                samples.extend(in_head);
                Ok(samples)
            },
        )?;
        let (&version, body) = cp
            .agents
            .split_first()
            .ok_or_else(|| StateError::Checkpoint("empty agents section".into()))?;
        if version != AGENTS_VERSION {
            return Err(StateError::Checkpoint(format!(
                "agents section has version {version}, this build reads {AGENTS_VERSION}"
            )));
        }
        let agents: AgentsSnapshot =
            postcard::from_bytes(body).map_err(|e| StateError::Checkpoint(e.to_string()))?;
        Ok(StateMachine {
            applied: cp.applied,
            index,
            head,
            aggregator,
            agents: agents.agents,
            counters: agents.counters,
            limits,
            last_time_ms: agents.last_time_ms,
            fleet: FleetState::decode(&cp.fleet)?,
        })
    }
}

/// A fleet entry's outcome: applied when it changed the state or repeated an earlier
/// change; a refusal is in `fleet` for the proposer to report.
fn fleet_outcome(result: FleetOutcome) -> Outcome {
    Outcome {
        applied: result.is_ok(),
        fleet: Some(result),
        ..Outcome::default()
    }
}

/// An agent entry's outcome, like [`fleet_outcome`]'s for tokens.
fn agent_outcome(result: crate::fleet::agents::AgentOutcome) -> Outcome {
    Outcome {
        applied: result.is_ok(),
        agent: Some(result),
        ..Outcome::default()
    }
}

/// Whether a series keeps a counter's reset-adjusted increase in its aggregates. Without
/// metadata (a push whose metadata has not arrived yet) the naming conventions decide.
fn counter_series(index: &SeriesIndex, id: SeriesId) -> bool {
    let Some(series) = index.series(id) else {
        return false;
    };
    let name = series.name.as_str();
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    match index.metadata(name).or_else(|| index.metadata(family)) {
        Some(m) if m.kind != MetricType::Unknown => is_counter(m.kind, name),
        _ => name.ends_with("_total") || name.ends_with("_bucket") || name.ends_with("_count"),
    }
}

/// Appends one sample to the head, and what it accepted to the aggregator. Pushes carry
/// no seq, so the head's own duplicate check on (series, timestamp) is what makes a
/// retried push idempotent.
///
/// `time_ms` is the entry's leader time: the aggregator seals a series against the
/// replicated clock only once it has not been pushed for the out-of-order window.
fn append(
    head: &mut Head,
    aggregator: &mut Aggregator,
    (id, counter): (SeriesId, bool),
    (t, v): (i64, f64),
    time_ms: i64,
    out: &mut Outcome,
) {
    if append_to_head(head, id, (t, v), out) {
        aggregator.push_at(id, counter, &[(t, v)], time_ms);
    }
}

/// Appends one sample to the head, counting it as accepted or refused by reason;
/// whether it was accepted.
fn append_to_head(head: &mut Head, id: SeriesId, (t, v): (i64, f64), out: &mut Outcome) -> bool {
    match head.append(id, t, v) {
        Ok(()) => {
            out.accepted += 1;
            return true;
        }
        Err(Refusal::TooOld) => out.refuse(RefuseReason::OutOfOrder, 1),
        Err(Refusal::Duplicate | Refusal::DuplicateTimestamp) => {
            out.refuse(RefuseReason::Duplicate, 1)
        }
        Err(Refusal::Corrupt) => out.refuse(RefuseReason::Other, 1),
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use argus_common::model::{MetricType, stale_nan};

    const T0: i64 = 1_700_000_000_000;

    fn sm() -> StateMachine {
        StateMachine::new(
            HeadConfig::default(),
            Limits::default(),
            &Tiers::argus_defaults(),
        )
        .unwrap()
    }

    impl StateMachine {
        fn fleet_apply(&mut self, index: u64, t: i64, e: &Entry) -> Option<FleetOutcome> {
            self.apply(index, t, e).fleet
        }
    }

    fn def(r: SeriesRef, device: &str) -> SeriesDef {
        SeriesDef {
            series_ref: r,
            name: "node_network_receive_bytes_total".into(),
            labels: Labels::from_pairs([("device", device), ("instance", "h1"), ("job", "node")]),
            kind: MetricType::Counter,
            unit: "bytes".into(),
            help: "Received bytes.".into(),
        }
    }

    fn defs(agent: &str, inc: u64) -> Entry {
        Entry::SeriesDefs {
            agent_id: agent.into(),
            incarnation: inc,
            defs: vec![def(1, "eth0"), def(2, "eth1")],
        }
    }

    fn batch(inc: u64, seq: u64, lowest: u64, t: i64, points: Vec<(SeriesRef, f64)>) -> Entry {
        Entry::AgentBatch {
            agent_id: "a1".into(),
            incarnation: inc,
            seq,
            lowest_seq: lowest,
            groups: vec![PointGroup {
                timestamp_ms: t,
                points,
            }],
        }
    }

    fn samples(sm: &StateMachine, device: &str) -> Vec<(i64, f64)> {
        let labels = Labels::from_pairs([("device", device), ("instance", "h1"), ("job", "node")]);
        let id = sm
            .index()
            .lookup("node_network_receive_bytes_total", &labels)
            .unwrap();
        sm.head().select(id, i64::MIN, i64::MAX).unwrap().collect()
    }

    #[test]
    fn an_agent_batch_applies_exactly_once() {
        let mut s = sm();
        s.apply(1, T0, &defs("a1", 7));
        let b = batch(7, 1, 1, T0, vec![(1, 10.0), (2, 20.0)]);
        let first = s.apply(2, T0, &b);
        assert!(first.applied);
        assert_eq!(first.accepted, 2);
        // Redelivery after a lost Ack: acknowledged again, stored once.
        let again = s.apply(3, T0 + 5, &b);
        assert!(!again.applied);
        assert_eq!(again.accepted, 0);
        assert_eq!(samples(&s, "eth0"), vec![(T0, 10.0)]);
        assert_eq!(s.agent_progress("a1", 7), (Some(1), Some(2)));
        assert_eq!(s.counters().samples_appended, 2);
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let mut s = sm();
        s.apply(1, T0, &defs("a1", 7));
        let out = s.apply(
            2,
            T0,
            &Entry::AgentBatch {
                agent_id: "a1".into(),
                incarnation: 7,
                seq: 1,
                lowest_seq: 1,
                groups: vec![
                    PointGroup {
                        timestamp_ms: T0,
                        points: vec![(1, 1.0), (99, 1.0)],
                    },
                    PointGroup {
                        timestamp_ms: T0 + 3_600_000,
                        points: vec![(1, 2.0)],
                    },
                ],
            },
        );
        assert_eq!(out.accepted, 1);
        assert_eq!(out.refused[&RefuseReason::UnknownSeries], 1);
        assert_eq!(out.refused[&RefuseReason::TooFarAhead], 1);
        assert_eq!(s.counters().refused["unknown_series"], 1);
    }

    #[test]
    fn a_retried_push_is_stored_once() {
        let mut s = sm();
        let push = Entry::RemoteWrite {
            series: vec![PushedSeries {
                name: "up".into(),
                labels: Labels::from_pairs([("instance", "x:9100"), ("job", "node")]),
                samples: vec![(T0, 1.0), (T0 + 15_000, stale_nan())],
            }],
            metadata: vec![PushedMetadata {
                name: "up".into(),
                kind: MetricType::Gauge,
                unit: String::new(),
                help: "Scrape health.".into(),
            }],
        };
        assert_eq!(s.apply(1, T0, &push).accepted, 2);
        let again = s.apply(2, T0, &push);
        assert_eq!(again.accepted, 0);
        assert_eq!(again.refused[&RefuseReason::Duplicate], 2);
        assert_eq!(s.index().metadata("up").unwrap().help, "Scrape health.");
    }

    #[test]
    fn compact_pushes_name_series_by_id_once_known() {
        let mut s = sm();
        let labels = Labels::from_pairs([("instance", "x:9100"), ("job", "node")]);
        let new = Entry::Push {
            items: PushedItem::encode(
                PushedKey::New {
                    name: "up".into(),
                    labels: labels.clone(),
                },
                &[(T0, 1.0), (T0 + 15_000, 1.0)],
            ),
            metadata: vec![],
        };
        assert_eq!(s.apply(1, T0, &new).accepted, 2);
        let id = s.index().lookup("up", &labels).unwrap();
        let known = |t: i64, v: f64, id: SeriesId| Entry::Push {
            items: PushedItem::encode(PushedKey::Known(id), &[(t, v)]),
            metadata: vec![],
        };
        assert_eq!(
            s.apply(2, T0, &known(T0 + 30_000, stale_nan(), id))
                .accepted,
            1
        );
        // Retried: stored once.
        let again = s.apply(3, T0, &known(T0 + 30_000, stale_nan(), id));
        assert_eq!(again.refused[&RefuseReason::Duplicate], 1);
        // An id no replica has is refused alike everywhere, not guessed.
        let unknown = s.apply(4, T0, &known(T0 + 45_000, 1.0, id + 100));
        assert_eq!(unknown.refused[&RefuseReason::UnknownSeries], 1);
        // A corrupt item is refused, the rest of the entry applies.
        let mut items = PushedItem::encode(PushedKey::Known(id), &[(T0 + 45_000, 2.0)]);
        items.push(PushedItem {
            key: PushedKey::Known(id),
            samples: vec![0xff, 3],
        });
        let mixed = s.apply(
            5,
            T0,
            &Entry::Push {
                items,
                metadata: vec![],
            },
        );
        assert_eq!((mixed.accepted, mixed.refused_total()), (1, 1));
        let stored: Vec<(i64, u64)> = s
            .head()
            .select(id, i64::MIN, i64::MAX)
            .unwrap()
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        assert_eq!(
            stored,
            vec![
                (T0, 1f64.to_bits()),
                (T0 + 15_000, 1f64.to_bits()),
                (T0 + 30_000, stale_nan().to_bits()),
                (T0 + 45_000, 2f64.to_bits()),
            ]
        );
    }

    #[test]
    fn reserved_and_oversized_labels_are_refused() {
        let mut s = StateMachine::new(
            HeadConfig::default(),
            Limits {
                max_labels: 2,
                ..Limits::default()
            },
            &Tiers::argus_defaults(),
        )
        .unwrap();
        let series = |labels: Labels| PushedSeries {
            name: "x".into(),
            labels,
            samples: vec![(T0, 1.0)],
        };
        let out = s.apply(
            1,
            T0,
            &Entry::RemoteWrite {
                series: vec![
                    series(Labels::from_pairs([("__meta", "1")])),
                    series(Labels::from_pairs([("a", "1"), ("b", "2"), ("c", "3")])),
                    series(Labels::from_pairs([("a", "1")])),
                ],
                metadata: vec![],
            },
        );
        assert_eq!(out.accepted, 1);
        assert_eq!(out.refused[&RefuseReason::Other], 1);
        assert_eq!(out.refused[&RefuseReason::LabelLimit], 1);
        assert_eq!(s.index().len(), 1, "refused series are not indexed");
    }

    #[test]
    fn incarnations_are_bounded_and_evicted_deterministically() {
        let mut s = StateMachine::new(
            HeadConfig::default(),
            Limits {
                max_incarnations_per_agent: 2,
                ..Limits::default()
            },
            &Tiers::argus_defaults(),
        )
        .unwrap();
        for (i, inc) in [10u64, 11, 12].iter().enumerate() {
            s.apply(i as u64 + 1, T0 + i as i64, &defs("a1", *inc));
        }
        assert_eq!(s.agent_progress("a1", 10), (None, None));
        assert_eq!(s.agent_progress("a1", 12).1, Some(2));
        assert_eq!(s.counters().incarnations_evicted, 1);
    }

    /// A checkpoint restored and fed the same entries ends in the same state as the
    /// replica that never stopped: the basis of restart and of replica agreement.
    #[test]
    fn checkpoint_restore_then_replay_matches_a_replica_that_never_stopped() {
        let entries: Vec<Entry> = std::iter::once(defs("a1", 7))
            .chain((1..=300u64).map(|seq| {
                let t = T0 + seq as i64 * 15_000;
                batch(7, seq, 1, t, vec![(1, seq as f64 * 1.5), (2, 0.25)])
            }))
            .collect();
        let mut a = sm();
        let mut b = sm();
        for (i, e) in entries.iter().enumerate().take(250) {
            let t = T0 + i as i64 * 15_000;
            a.apply(i as u64 + 1, t, e);
            b.apply(i as u64 + 1, t, e);
        }
        // As the replica does: sealed chunks go to the store before the checkpoint,
        // and the restore reads the aggregator's open samples back from it.
        let stored = b.take_sealed();
        assert_eq!(a.take_sealed(), stored);
        assert!(!stored.is_empty());
        let cp = b.checkpoint().unwrap();
        let mut b = StateMachine::restore(
            &cp,
            HeadConfig::default(),
            Limits::default(),
            &Tiers::argus_defaults(),
            &mut |id, from, to| {
                let mut out = Vec::new();
                for c in stored.iter().filter(|c| c.series == id) {
                    let samples =
                        crate::tsdb::chunk::decode(&c.bytes).map_err(|e| e.to_string())?;
                    out.extend(samples.into_iter().filter(|s| (from..=to).contains(&s.0)));
                }
                Ok(out)
            },
        )
        .unwrap();
        assert_eq!(
            a.aggregator.encode_state(),
            b.aggregator.encode_state(),
            "open samples read back from the store and the head"
        );
        assert_eq!(b.applied(), 250);
        for (i, e) in entries.iter().enumerate().skip(250) {
            let t = T0 + i as i64 * 15_000;
            assert_eq!(a.apply(i as u64 + 1, t, e), b.apply(i as u64 + 1, t, e));
        }
        let (sa, sb) = (a.take_sealed(), b.take_sealed());
        assert_eq!(sa, sb);
        assert_eq!(samples(&a, "eth0"), samples(&b, "eth0"));
        assert_eq!(a.checkpoint().unwrap(), b.checkpoint().unwrap());
        assert_eq!(a.aggregator.encode_state(), b.aggregator.encode_state());
        assert_eq!(a.counters(), b.counters());
    }

    /// Token entries apply against the entry's leader time, deterministically, and the
    /// token table survives a checkpoint; a checkpoint without a fleet section (written
    /// before the fleet existed) restores an empty one.
    #[test]
    fn token_entries_apply_by_leader_time_and_survive_a_checkpoint() {
        use crate::fleet::tokens::{TokenApplied, TokenError, TokenRefusal, TokenRole};
        use argus_common::pki::{SecretHash, TokenId, TokenSecret};
        const HOUR: i64 = 3_600_000;
        let secret = TokenSecret::generate().unwrap();
        let id = TokenId::generate().unwrap();
        let create = Entry::TokenCreate {
            id: id.0,
            secret_hash: SecretHash::of(&secret).0,
            expires_ms: T0 + HOUR,
            uses: 1,
            host: None,
            role: TokenRole::Agent,
            created_by: "admin".into(),
        };
        let spend = |key: u8| Entry::TokenUse {
            id: id.0,
            host: "h1".into(),
            key_sha256: [key; 32],
        };
        let mut a = sm();
        let out = a.apply(1, T0, &create);
        assert_eq!(out.fleet, Some(Ok(TokenApplied::Created)));
        assert!(out.applied);
        // Same entry again (a retried proposal): refused the same on every replica.
        assert_eq!(
            a.apply(2, T0, &create).fleet,
            Some(Err(TokenRefusal::DuplicateId))
        );
        let cp = a.checkpoint().unwrap();
        let restore = |cp: &Checkpoint| {
            StateMachine::restore(
                cp,
                HeadConfig::default(),
                Limits::default(),
                &Tiers::argus_defaults(),
                &mut |_, _, _| Ok(Vec::new()),
            )
            .unwrap()
        };
        let mut b = restore(&cp);
        assert_eq!(b.fleet(), a.fleet());
        assert!(b.fleet().tokens().check(&id, &secret, "h1", T0 + 1).is_ok());
        // Expiry is the entry's time: the same entry stamped later is refused.
        for s in [&mut a, &mut b] {
            assert_eq!(
                s.fleet_apply(3, T0 + HOUR, &spend(1)),
                Some(Err(TokenRefusal::Token(TokenError::Expired)))
            );
            assert_eq!(
                s.fleet_apply(4, T0 + 10, &spend(1)),
                Some(Ok(TokenApplied::Used))
            );
            assert_eq!(
                s.fleet_apply(5, T0 + 11, &spend(2)),
                Some(Err(TokenRefusal::Token(TokenError::Spent)))
            );
            assert_eq!(
                s.fleet_apply(6, T0 + 12, &Entry::TokenRevoke { id: id.0 }),
                Some(Ok(TokenApplied::Revoked))
            );
        }
        assert_eq!(a.checkpoint().unwrap(), b.checkpoint().unwrap());
        let old = Checkpoint {
            fleet: Vec::new(),
            ..cp
        };
        assert!(restore(&old).fleet().tokens().is_empty());
    }

    /// Samples the head accepts also feed the downsampled tiers: a counter ramp comes
    /// out as 5-minute windows whose increases are exact, once the out-of-order window
    /// has passed them.
    #[test]
    fn accepted_samples_are_downsampled_for_the_aggregate_tiers() {
        let mut s = sm();
        let step = 15_000;
        for i in 0..(3 * 240) {
            let t = T0 - T0 % 300_000 + i * step;
            let push = Entry::RemoteWrite {
                series: vec![PushedSeries {
                    name: "requests_total".into(),
                    labels: Labels::from_pairs([("job", "api")]),
                    samples: vec![(t, i as f64 * 2.5)],
                }],
                metadata: vec![],
            };
            s.apply(i as u64 + 1, t, &push);
        }
        let blocks = s.take_blocks();
        let five_min: Vec<_> = blocks
            .iter()
            .filter(|b| b.tier == 1)
            .flat_map(|b| b.windows.iter())
            .collect();
        assert!(five_min.len() >= 20, "{} windows sealed", five_min.len());
        // 20 samples per window, 2.5 apart: each full window after the first rises by 50.
        for w in &five_min[1..] {
            assert_eq!(w.count, 20);
            assert_eq!(w.increase, Some(50.0));
        }
    }

    /// A remote-write queue draining after an outage pushes samples far older than the
    /// leader's time, in order, over many entries. The head takes them (each is newer
    /// than the series' newest); so must the aggregates: the replicated clock seals only
    /// series that have stopped being pushed.
    #[test]
    fn samples_caught_up_after_an_outage_reach_the_aggregates() {
        let mut s = sm();
        let (step, n) = (15_000, 480i64);
        let start = T0 - T0 % 300_000 - 3 * 3_600_000;
        let (mut index, mut accepted) = (0u64, 0u64);
        for batch in 0..(n / 10) {
            let samples = (0..10)
                .map(|k| {
                    let i = batch * 10 + k;
                    (start + i * step, i as f64)
                })
                .collect();
            index += 1;
            let push = Entry::RemoteWrite {
                series: vec![PushedSeries {
                    name: "requests_total".into(),
                    labels: Labels::from_pairs([("job", "api")]),
                    samples,
                }],
                metadata: vec![],
            };
            // One entry every 30 s of leader time, hours after the samples.
            accepted += s.apply(index, T0 + batch * 30_000, &push).accepted;
        }
        assert_eq!(accepted, n as u64);
        // Quiet for long enough: the replicated clock seals the rest.
        index += 1;
        s.apply(
            index,
            T0 + 3_600_000,
            &Entry::RetentionCut {
                tier: 9,
                before_ms: 0,
            },
        );
        let counted: u64 = s
            .take_blocks()
            .iter()
            .filter(|b| b.tier == 1)
            .flat_map(|b| b.windows.iter())
            .map(|w| w.count)
            .sum();
        assert_eq!(
            counted, n as u64,
            "every caught-up sample is in a 5-minute window"
        );
        assert_eq!(s.aggregator.stats().late, 0);
    }
}
