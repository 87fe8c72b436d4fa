//! Tiers: what resolution the store keeps for how long, and which tier answers a range.
//!
//! Tier 0 holds raw samples; every further tier holds per-step aggregates
//! ([`super::aggregate::Aggregate`]) computed from the tier before it. Each tier is split
//! into time partitions aligned on the epoch grid, and retention drops whole partitions
//! ([`super::store::Store::drop_before`]), so disk is given back at once.
//!
//! Everything here is pure: the leader asks [`Tiers::retention_cuts`] what to propose as
//! `RetentionCut` entries, and the select path asks [`Tiers::tier_for`] which single tier
//! answers a range. Neither reads a clock; `now_ms` is an argument.
//!
//! Rules a configuration must follow (checked by [`Tiers::new`], which is the only way to
//! build one):
//! - tier 0 is raw (no step), every other tier has a step; steps increase and each is a
//!   whole multiple of the one before, so a coarse window is exactly a run of finer ones
//!   and aggregates compose exactly;
//! - retention strictly increases from tier to tier (a coarser tier that kept less would
//!   never be chosen);
//! - a partition is at most the retention and, for aggregate tiers, a whole multiple of the
//!   step, so no window straddles two partitions;
//! - a tier holds at most [`MAX_PARTITIONS`] partitions at once, because every partition is
//!   its own LSM tree with its own memtable and files.

use std::time::Duration;

/// Most tiers a configuration may have. Tier ids are `u8` in `RetentionCut` entries.
pub const MAX_TIERS: usize = 16;

/// Most partitions one tier may hold at once (`retention / partition`, rounded up, plus the
/// partition being written).
pub const MAX_PARTITIONS: i64 = 1024;

/// Longest duration any tier setting may have: 100 years keeps every `now ± duration` far
/// from `i64` overflow.
const MAX_DURATION_MS: i64 = 100 * 366 * 24 * 3_600_000;

/// Longest tier name; names appear in logs, metrics and select results.
const MAX_NAME_LEN: usize = 32;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

/// One tier as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierConfig {
    /// Shown in select results, logs and metrics (`raw`, `5m`, ...).
    pub name: String,
    /// Window length of the aggregates; `None` for the raw tier.
    pub step: Option<Duration>,
    /// How long data is kept: data newer than `now - retention` is never dropped.
    pub retention: Duration,
    /// Span of one time partition (one fjall keyspace). Retention gives disk back one whole
    /// partition at a time, so a tier holds between `retention` and
    /// `retention + partition` of data.
    pub partition: Duration,
}

impl TierConfig {
    pub fn raw(retention: Duration, partition: Duration) -> Self {
        TierConfig {
            name: "raw".to_owned(),
            step: None,
            retention,
            partition,
        }
    }

    pub fn aggregate(
        name: impl Into<String>,
        step: Duration,
        retention: Duration,
        partition: Duration,
    ) -> Self {
        TierConfig {
            name: name.into(),
            step: Some(step),
            retention,
            partition,
        }
    }
}

/// Why a tier configuration is refused. Every variant names the tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierError {
    #[error("no tiers configured: at least the raw tier is needed")]
    Empty,
    #[error("{0} tiers configured, at most {MAX_TIERS} are allowed")]
    TooMany(usize),
    #[error("tier {index}: the name must be 1 to {MAX_NAME_LEN} characters")]
    BadName { index: usize },
    #[error("tier {index} ({name}): the name is used by an earlier tier too")]
    DuplicateName { index: usize, name: String },
    #[error("tier 0 ({name}) must be the raw tier (no step)")]
    FirstNotRaw { name: String },
    #[error("tier {index} ({name}): only tier 0 may be raw; this tier needs a step")]
    RawNotFirst { index: usize, name: String },
    #[error(
        "tier {index} ({name}): {field} must be a whole number of milliseconds between 1 ms and 100 years"
    )]
    BadDuration {
        index: usize,
        name: String,
        field: &'static str,
    },
    #[error(
        "tier {index} ({name}): step {step_ms} ms must be larger than and a whole multiple of the previous tier's step {previous_ms} ms"
    )]
    StepNotMultiple {
        index: usize,
        name: String,
        step_ms: i64,
        previous_ms: i64,
    },
    #[error(
        "tier {index} ({name}): retention {retention_ms} ms must be longer than the previous tier's {previous_ms} ms"
    )]
    RetentionNotIncreasing {
        index: usize,
        name: String,
        retention_ms: i64,
        previous_ms: i64,
    },
    #[error(
        "tier {index} ({name}): partition {partition_ms} ms must not be longer than the retention {retention_ms} ms"
    )]
    PartitionOverRetention {
        index: usize,
        name: String,
        partition_ms: i64,
        retention_ms: i64,
    },
    #[error(
        "tier {index} ({name}): partition {partition_ms} ms must be a whole multiple of the step {step_ms} ms, so no window straddles two partitions"
    )]
    PartitionNotMultipleOfStep {
        index: usize,
        name: String,
        partition_ms: i64,
        step_ms: i64,
    },
    #[error(
        "tier {index} ({name}): retention / partition is {count}, over the limit of {MAX_PARTITIONS} partitions per tier"
    )]
    TooManyPartitions {
        index: usize,
        name: String,
        count: i64,
    },
}

/// A validated tier with its durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    config: TierConfig,
    step_ms: Option<i64>,
    retention_ms: i64,
    partition_ms: i64,
}

impl Tier {
    pub fn config(&self) -> &TierConfig {
        &self.config
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Aggregate window length, `None` for raw.
    pub fn step_ms(&self) -> Option<i64> {
        self.step_ms
    }

    pub fn is_raw(&self) -> bool {
        self.step_ms.is_none()
    }

    pub fn retention_ms(&self) -> i64 {
        self.retention_ms
    }

    pub fn partition_ms(&self) -> i64 {
        self.partition_ms
    }

    /// Start of the partition holding timestamp `t` (epoch grid).
    pub fn partition_start(&self, t: i64) -> i64 {
        align_down(t, self.partition_ms)
    }

    /// Oldest timestamp this tier still guarantees to hold at `now_ms`.
    pub fn oldest_ms(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.retention_ms)
    }
}

/// A validated, ordered tier configuration (tier 0 raw, then coarser and coarser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers(Vec<Tier>);

/// What a selector needs from the tier that answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Raw samples only (instant values, `/federate`, exact last values).
    Raw,
    /// Windows no coarser than this (a range query at this step or finer).
    Resolution(Duration),
    /// Whatever tier reaches furthest back at the finest resolution.
    Any,
}

/// Which single tier answers a range, as the select API reports it. The select API
/// never mixes tiers inside one selector: a range older than a tier's retention is
/// answered entirely from a coarser tier, or marked incomplete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierChoice {
    pub tier: u8,
    pub name: String,
    /// `None` when the answer is raw samples.
    pub step_ms: Option<i64>,
    /// The tier guarantees data from here on (older data may already be dropped).
    pub oldest_ms: i64,
    /// False when no tier allowed by the [`Needs`] still covers the start of the range:
    /// the answer then starts at `oldest_ms`, and the caller must say so.
    pub complete: bool,
}

/// One `RetentionCut` a leader would propose: drop every partition of `tier` that ends at
/// or before `before_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionCut {
    pub tier: u8,
    pub before_ms: i64,
}

impl Tiers {
    /// Validates a configuration (see the module documentation for the rules).
    pub fn new(configs: Vec<TierConfig>) -> Result<Tiers, TierError> {
        if configs.is_empty() {
            return Err(TierError::Empty);
        }
        if configs.len() > MAX_TIERS {
            return Err(TierError::TooMany(configs.len()));
        }
        let mut tiers: Vec<Tier> = Vec::with_capacity(configs.len());
        for (index, config) in configs.into_iter().enumerate() {
            let name = config.name.clone();
            if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
                return Err(TierError::BadName { index });
            }
            if tiers.iter().any(|t| t.config.name == name) {
                return Err(TierError::DuplicateName { index, name });
            }
            let ms = |field: &'static str, d: Duration| {
                duration_ms(d).ok_or_else(|| TierError::BadDuration {
                    index,
                    name: name.clone(),
                    field,
                })
            };
            let retention_ms = ms("retention", config.retention)?;
            let partition_ms = ms("partition", config.partition)?;
            let step_ms = config.step.map(|s| ms("step", s)).transpose()?;
            match (index, step_ms) {
                (0, Some(_)) => return Err(TierError::FirstNotRaw { name }),
                (1.., None) => return Err(TierError::RawNotFirst { index, name }),
                _ => {}
            }
            if let (Some(step), Some(previous)) = (step_ms, tiers.last().and_then(|t| t.step_ms))
                && (step <= previous || step % previous != 0)
            {
                return Err(TierError::StepNotMultiple {
                    index,
                    name,
                    step_ms: step,
                    previous_ms: previous,
                });
            }
            if let Some(previous) = tiers.last()
                && retention_ms <= previous.retention_ms
            {
                return Err(TierError::RetentionNotIncreasing {
                    index,
                    name,
                    retention_ms,
                    previous_ms: previous.retention_ms,
                });
            }
            if partition_ms > retention_ms {
                return Err(TierError::PartitionOverRetention {
                    index,
                    name,
                    partition_ms,
                    retention_ms,
                });
            }
            if let Some(step) = step_ms
                && partition_ms % step != 0
            {
                return Err(TierError::PartitionNotMultipleOfStep {
                    index,
                    name,
                    partition_ms,
                    step_ms: step,
                });
            }
            // Both are positive and under 100 years, so this cannot overflow.
            let count = (retention_ms + partition_ms - 1) / partition_ms + 1;
            if count > MAX_PARTITIONS {
                return Err(TierError::TooManyPartitions { index, name, count });
            }
            tiers.push(Tier {
                config,
                step_ms,
                retention_ms,
                partition_ms,
            });
        }
        Ok(Tiers(tiers))
    }

    /// Argus's defaults: raw for 24 h (2 h partitions), 5-minute aggregates for 30 days
    /// (1-day partitions), 1-hour aggregates for a year (7-day partitions).
    pub fn argus_defaults() -> Tiers {
        Tiers(vec![
            Tier {
                config: TierConfig::raw(DAY, 2 * HOUR),
                step_ms: None,
                retention_ms: 86_400_000,
                partition_ms: 7_200_000,
            },
            Tier {
                config: TierConfig::aggregate("5m", 5 * MINUTE, 30 * DAY, DAY),
                step_ms: Some(300_000),
                retention_ms: 30 * 86_400_000,
                partition_ms: 86_400_000,
            },
            Tier {
                config: TierConfig::aggregate("1h", HOUR, 365 * DAY, 7 * DAY),
                step_ms: Some(3_600_000),
                retention_ms: 365 * 86_400_000,
                partition_ms: 7 * 86_400_000,
            },
        ])
    }

    /// The product documents' tiers: raw for 1 h, 5 m for 24 h, 1 h for 7 d, 1 d for 30 d.
    /// Partitions are chosen so that each tier holds at most about 10 % more than its
    /// retention: 15 min, 2 h, 1 d and 3 d.
    pub fn product_docs() -> Result<Tiers, TierError> {
        Tiers::new(vec![
            TierConfig::raw(HOUR, 15 * MINUTE),
            TierConfig::aggregate("5m", 5 * MINUTE, DAY, 2 * HOUR),
            TierConfig::aggregate("1h", HOUR, 7 * DAY, DAY),
            TierConfig::aggregate("1d", DAY, 30 * DAY, 3 * DAY),
        ])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a validated configuration; present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, tier: u8) -> Option<&Tier> {
        self.0.get(usize::from(tier))
    }

    /// Tiers with their ids, raw first.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &Tier)> {
        // `new` caps the count at MAX_TIERS, so the index fits a u8.
        self.0.iter().enumerate().map(|(i, t)| (i as u8, t))
    }

    /// Chooses the one tier that answers a range starting at `range_start_ms`: the finest
    /// tier allowed by `needs` whose retention still covers the range start. When none
    /// does, the allowed tier that reaches furthest back answers, with `complete: false`.
    ///
    /// An aggregate tier also ends early: its newest windows are written once sealed (the
    /// out-of-order window, and up to one block, behind the newest sample). A caller that
    /// completes the recent end from the raw tier or the head is mixing tiers and must
    /// say so in its answer.
    pub fn tier_for(&self, range_start_ms: i64, now_ms: i64, needs: Needs) -> TierChoice {
        let limit_ms = match needs {
            Needs::Raw => Some(0),
            Needs::Resolution(d) => Some(duration_ms(d).unwrap_or(i64::MAX)),
            Needs::Any => None,
        };
        let allowed = |t: &Tier| match (limit_ms, t.step_ms) {
            (_, None) | (None, _) => true,
            (Some(limit), Some(step)) => step <= limit,
        };
        let mut fallback = None;
        for (id, tier) in self.iter().filter(|(_, t)| allowed(t)) {
            if tier.oldest_ms(now_ms) <= range_start_ms {
                return choice(id, tier, now_ms, true);
            }
            fallback = Some((id, tier));
        }
        // Tier 0 is raw and always allowed, so there is a fallback; the raw tier covers
        // the degenerate case of an empty configuration, which `new` refuses anyway.
        match fallback {
            Some((id, tier)) => choice(id, tier, now_ms, false),
            None => TierChoice {
                tier: 0,
                name: String::new(),
                step_ms: None,
                oldest_ms: now_ms,
                complete: false,
            },
        }
    }

    /// What a leader would propose at `now_ms`: for each tier, drop the partitions that end
    /// at or before `now - retention`, rounded down to the partition grid. The rounding
    /// makes the proposal change once per partition, so a leader proposes a cut only when
    /// it differs from the last one applied, and every replica drops the same partitions.
    pub fn retention_cuts(&self, now_ms: i64) -> Vec<RetentionCut> {
        self.iter()
            .map(|(tier, t)| RetentionCut {
                tier,
                before_ms: align_down(t.oldest_ms(now_ms), t.partition_ms),
            })
            .collect()
    }
}

fn choice(id: u8, tier: &Tier, now_ms: i64, complete: bool) -> TierChoice {
    TierChoice {
        tier: id,
        name: tier.config.name.clone(),
        step_ms: tier.step_ms,
        oldest_ms: tier.oldest_ms(now_ms),
        complete,
    }
}

/// Whole milliseconds in `1 ..= 100 years`, or `None`.
fn duration_ms(d: Duration) -> Option<i64> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return None;
    }
    let ms = i64::try_from(d.as_millis()).ok()?;
    (1..=MAX_DURATION_MS).contains(&ms).then_some(ms)
}

/// Rounds `t` down to a multiple of `step` (towards minus infinity, so negative
/// timestamps land on the same grid). `step` must be positive.
pub fn align_down(t: i64, step: i64) -> i64 {
    t - t.rem_euclid(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(configs: Vec<TierConfig>) -> TierError {
        Tiers::new(configs).unwrap_err()
    }

    #[test]
    fn argus_defaults_are_valid() {
        let d = Tiers::argus_defaults();
        // The hand-written defaults must pass the same checks as a user's configuration.
        let rebuilt = Tiers::new(d.0.iter().map(|t| t.config.clone()).collect()).unwrap();
        assert_eq!(rebuilt, d);
        assert_eq!(d.len(), 3);
        assert_eq!(d.get(1).unwrap().step_ms(), Some(300_000));
        assert_eq!(d.get(2).unwrap().retention_ms(), 365 * 86_400_000);
    }

    #[test]
    fn product_document_tiers_are_expressible() {
        let t = Tiers::product_docs().unwrap();
        let summary: Vec<_> = t
            .iter()
            .map(|(id, t)| (id, t.name().to_owned(), t.step_ms(), t.retention_ms()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, "raw".to_owned(), None, 3_600_000),
                (1, "5m".to_owned(), Some(300_000), 86_400_000),
                (2, "1h".to_owned(), Some(3_600_000), 7 * 86_400_000),
                (3, "1d".to_owned(), Some(86_400_000), 30 * 86_400_000),
            ]
        );
    }

    #[test]
    fn invalid_configurations_are_refused_with_the_tier_named() {
        let raw = || TierConfig::raw(HOUR, 15 * MINUTE);
        assert_eq!(err(vec![]), TierError::Empty);
        assert!(matches!(
            err(vec![TierConfig::aggregate("5m", 5 * MINUTE, DAY, HOUR)]),
            TierError::FirstNotRaw { .. }
        ));
        assert!(matches!(
            err(vec![raw(), TierConfig::raw(DAY, HOUR)]),
            TierError::DuplicateName { index: 1, .. }
        ));
        assert!(matches!(
            err(vec![
                raw(),
                TierConfig {
                    name: "x".into(),
                    ..TierConfig::raw(DAY, HOUR)
                }
            ]),
            TierError::RawNotFirst { index: 1, .. }
        ));
        // 7 minutes is not a multiple of 5 minutes.
        assert!(matches!(
            err(vec![
                raw(),
                TierConfig::aggregate("5m", 5 * MINUTE, DAY, HOUR),
                TierConfig::aggregate("7m", 7 * MINUTE, 2 * DAY, 7 * HOUR),
            ]),
            TierError::StepNotMultiple {
                index: 2,
                step_ms: 420_000,
                previous_ms: 300_000,
                ..
            }
        ));
        // Decreasing steps.
        assert!(matches!(
            err(vec![
                raw(),
                TierConfig::aggregate("1h", HOUR, DAY, HOUR),
                TierConfig::aggregate("5m", 5 * MINUTE, 2 * DAY, HOUR),
            ]),
            TierError::StepNotMultiple { index: 2, .. }
        ));
        assert!(matches!(
            err(vec![
                raw(),
                TierConfig::aggregate("5m", 5 * MINUTE, HOUR, HOUR)
            ]),
            TierError::RetentionNotIncreasing { index: 1, .. }
        ));
        assert!(matches!(
            err(vec![TierConfig::raw(HOUR, 2 * HOUR)]),
            TierError::PartitionOverRetention { index: 0, .. }
        ));
        assert!(matches!(
            err(vec![
                raw(),
                TierConfig::aggregate("1h", HOUR, DAY, 90 * MINUTE)
            ]),
            TierError::PartitionNotMultipleOfStep { index: 1, .. }
        ));
        assert!(matches!(
            err(vec![TierConfig::raw(365 * DAY, MINUTE)]),
            TierError::TooManyPartitions { index: 0, .. }
        ));
        assert!(matches!(
            err(vec![TierConfig::raw(
                Duration::from_micros(1500),
                Duration::from_millis(1)
            )]),
            TierError::BadDuration {
                field: "retention",
                ..
            }
        ));
        assert!(matches!(
            err(vec![TierConfig::raw(HOUR, Duration::ZERO)]),
            TierError::BadDuration {
                field: "partition",
                ..
            }
        ));
        let msg = err(vec![
            raw(),
            TierConfig::aggregate("1h", HOUR, DAY, 90 * MINUTE),
        ])
        .to_string();
        assert!(msg.contains("tier 1 (1h)"), "{msg}");
    }

    #[test]
    fn tier_for_picks_the_finest_tier_that_covers_the_range_start() {
        let t = Tiers::product_docs().unwrap();
        let now = 100 * 86_400_000;
        let h = 3_600_000;
        let pick = |start: i64, needs| t.tier_for(start, now, needs);

        let c = pick(now - 30 * 60_000, Needs::Any);
        assert_eq!((c.tier, c.step_ms, c.complete), (0, None, true));
        // Exactly at the raw retention is still covered.
        assert_eq!(pick(now - h, Needs::Any).tier, 0);
        assert_eq!(pick(now - h - 1, Needs::Any).tier, 1);
        assert_eq!(pick(now - 3 * 86_400_000, Needs::Any).name, "1h");
        let c = pick(now - 20 * 86_400_000, Needs::Any);
        assert_eq!(
            (c.tier, c.complete, c.oldest_ms),
            (3, true, now - 30 * 86_400_000)
        );
        // Older than any tier: the longest tier answers, marked incomplete.
        let c = pick(now - 60 * 86_400_000, Needs::Any);
        assert_eq!((c.tier, c.complete), (3, false));
        // A resolution limit never lets a coarser tier answer.
        let c = pick(now - 3 * 86_400_000, Needs::Resolution(5 * MINUTE));
        assert_eq!(
            (c.tier, c.complete, c.oldest_ms),
            (1, false, now - 86_400_000)
        );
        let c = pick(now - 3 * 86_400_000, Needs::Raw);
        assert_eq!((c.tier, c.complete, c.oldest_ms), (0, false, now - h));
        assert!(pick(now - 10 * 60_000, Needs::Raw).complete);
    }

    #[test]
    fn retention_cuts_are_aligned_to_partitions() {
        let t = Tiers::product_docs().unwrap();
        let day = 86_400_000;
        let now = 40 * day + 7 * 3_600_000 + 12 * 60_000; // day 40, 07:12
        let cuts = t.retention_cuts(now);
        assert_eq!(
            cuts,
            vec![
                // raw: now - 1 h = 06:12 → 06:00 on the 15-minute grid.
                RetentionCut {
                    tier: 0,
                    before_ms: 40 * day + 6 * 3_600_000
                },
                // 5m: day 39 07:12 → 06:00 on the 2 h grid.
                RetentionCut {
                    tier: 1,
                    before_ms: 39 * day + 6 * 3_600_000
                },
                // 1h: day 33 07:12 → day 33 on the day grid.
                RetentionCut {
                    tier: 2,
                    before_ms: 33 * day
                },
                // 1d: day 10 07:12 → day 9 on the 3-day grid.
                RetentionCut {
                    tier: 3,
                    before_ms: 9 * day
                },
            ]
        );
        // Every cut leaves at least the retention and less than retention + partition.
        for (cut, (_, tier)) in cuts.iter().zip(t.iter()) {
            let kept = now - cut.before_ms;
            assert!(kept >= tier.retention_ms());
            assert!(kept < tier.retention_ms() + tier.partition_ms());
        }
    }

    #[test]
    fn align_down_handles_negative_timestamps() {
        assert_eq!(align_down(-1, 1000), -1000);
        assert_eq!(align_down(-1000, 1000), -1000);
        assert_eq!(align_down(999, 1000), 0);
        assert_eq!(align_down(1000, 1000), 1000);
    }
}
