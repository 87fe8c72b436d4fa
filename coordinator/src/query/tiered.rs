//! Range functions over old data, answered from the store's aggregate tiers (issue 4,
//! "Long ranges").
//!
//! Raw samples are kept for a short time only (a day by default); older data lives in
//! aggregate windows ([`Aggregate`]: min, max, sum, count, last and a counter's
//! reset-adjusted increase). A window keeps enough to answer some range functions over
//! a run of windows without the samples: `sum_over_time`, `count_over_time` and
//! `avg_over_time` from sum and count, `min_over_time` and `max_over_time` from min and
//! max, `last_over_time` from last, `increase` and `rate` from the increase. Those
//! functions, applied directly to a matrix selector, are evaluated here; everything else
//! reads raw samples as before.
//!
//! **What a tier computes.** For an evaluation step whose selector window is `(A, B]`
//! (`B` the step time less the offset, `A = B - range`), the tier's windows lying wholly
//! inside the covered span `[from, to)` are used; when the tier answers exactly, that span
//! is `[A, B)`.
//! - `sum`, `count`, `avg`, `min`, `max`, `last` over time: of the samples in those
//!   windows. The span is left-closed, Prometheus's window left-open: a sample exactly at
//!   `A` counts here and one exactly at `B` does not.
//! - `increase`: the sum of the windows' increases. A window's increase counts from the
//!   last sample before it, so the sum is the counter's reset-adjusted growth from the
//!   last sample before `from` to the last sample before `to`. Prometheus instead
//!   extrapolates the samples inside `(A, B]` to the window's edges; over a counter that
//!   grows steadily, sampled on a regular grid, the two agree.
//! - `rate`: that increase divided by the covered seconds (`to - from`, the range when
//!   exact).
//!
//! A series whose windows keep no increase (a gauge) gets no `rate` or `increase` from a
//! tier; it is left out with a warning.
//!
//! **Which source answers** ([`plan`], pure). Steps whose whole window `(A, B]` raw data
//! (the store's raw tier and the head) still covers are evaluated from raw samples by the
//! ordinary functions: only raw reproduces Prometheus's answers, so a coarser tier is
//! never preferred where raw exists. The older steps of the selector are answered by one
//! aggregate tier:
//! 1. the coarsest tier that answers every one of them exactly: `A` and `B` on its step
//!    grid, its retention reaching `A`, and all its windows ending by `B` sealed and
//!    stored (a tier's newest windows are written only once sealed, up to a block and the
//!    out-of-order window behind the newest sample, see [`TierView::complete_until_ms`]);
//! 2. failing that, the tier (or raw, partly) that covers the most of their windows,
//!    with a warning naming it and saying what it left out.
//!
//! So one selector reads at most two sources, one tier for its older steps and raw for
//! its recent ones, never two inside one step's window, and the answer names them:
//! an info annotation (`infos` in the JSON answer, which Grafana shows on the panel)
//! says which tier answered which evaluation times, and a warning says where an answer is
//! inexact.

use argus_common::model::Labels;
use promql_parser::parser::{Call, Expr};

use super::aggregate::kahan_inc;
use super::engine::{Evaluator, StepRange, duration_ms, matcher_groups, offset_ms};
use super::value::{Annotation, QueryError, Sample, Value, WindowSeries, without_name};
use crate::tsdb::aggregate::Aggregate;
use crate::tsdb::tier::align_down;

/// A range function a window can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFn {
    Sum,
    Count,
    Avg,
    Min,
    Max,
    Last,
    Increase,
    Rate,
}

impl WindowFn {
    pub fn from_name(name: &str) -> Option<WindowFn> {
        Some(match name {
            "sum_over_time" => WindowFn::Sum,
            "count_over_time" => WindowFn::Count,
            "avg_over_time" => WindowFn::Avg,
            "min_over_time" => WindowFn::Min,
            "max_over_time" => WindowFn::Max,
            "last_over_time" => WindowFn::Last,
            "increase" => WindowFn::Increase,
            "rate" => WindowFn::Rate,
            _ => return None,
        })
    }

    /// Whether the result keeps `__name__` (Prometheus keeps it for `last_over_time` only).
    fn keeps_name(self) -> bool {
        self == WindowFn::Last
    }
}

/// One tier as the planner sees it at query time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierView {
    pub tier: u8,
    pub name: String,
    /// Window length; `None` for raw.
    pub step_ms: Option<i64>,
    /// The oldest timestamp the tier still guarantees to hold (now less its retention).
    pub oldest_ms: i64,
    /// Every window ending at or before this is stored; windows after it may still be
    /// open or waiting in the aggregator. `i64::MAX` for raw, which the head completes.
    pub complete_until_ms: i64,
}

/// The span `[from, to)` a tier's windows cover for one step.
pub type Span = (i64, i64);

/// Which source answers the steps of one selector (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Steps from this index on are evaluated from raw samples; those before it by `tier`.
    pub raw_from: usize,
    pub tier: Option<TierPlan>,
}

/// The aggregate tier answering the older steps of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierPlan {
    /// Index into the views given to [`plan`].
    pub view: usize,
    /// Covered span per step, for the steps before [`Plan::raw_from`].
    pub spans: Vec<Span>,
    /// `None` when every span is the step's whole window.
    pub shortfall: Option<Shortfall>,
}

/// Why a tier's answer is not exact; every field is a reason that applied to some step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shortfall {
    /// Some window edge or the range is not on the tier's step grid.
    pub unaligned: bool,
    /// Some window starts before the tier's retention (this oldest guaranteed time).
    pub before_retention: Option<i64>,
    /// Some window ends after the tier's newest stored window (which ends here).
    pub unsealed_after: Option<i64>,
    /// Covered milliseconds over all steps, and the milliseconds asked for.
    pub covered_ms: i64,
    pub wanted_ms: i64,
}

/// Chooses the source of every step of one selector. `ends` are the steps' window ends
/// (`B`), ascending; `views` are the tiers, raw first.
pub fn plan(views: &[TierView], ends: &[i64], range_ms: i64) -> Plan {
    let no_tier = Plan {
        raw_from: 0,
        tier: None,
    };
    let Some(raw) = views.first() else {
        return no_tier;
    };
    // A step's window start rises with its end, so the steps raw covers are a suffix.
    let raw_from = ends.partition_point(|&b| b.saturating_sub(range_ms) < raw.oldest_ms);
    let old = &ends[..raw_from];
    if old.is_empty() || range_ms <= 0 {
        return no_tier;
    }
    let aggregate = || {
        views
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.step_ms.filter(|s| *s > 0).map(|s| (i, v, s)))
            .rev()
    };
    // 1. The coarsest tier exact at every old step.
    for (i, v, step) in aggregate() {
        let exact = range_ms % step == 0
            && old
                .iter()
                .all(|&b| b % step == 0 && b - range_ms >= v.oldest_ms && b <= v.complete_until_ms);
        if exact {
            return Plan {
                raw_from,
                tier: Some(TierPlan {
                    view: i,
                    spans: old.iter().map(|&b| (b - range_ms, b)).collect(),
                    shortfall: None,
                }),
            };
        }
    }
    // 2. The tier covering the most; raw (partly covering) if it covers more still.
    let wanted_ms = range_ms.saturating_mul(old.len() as i64);
    let mut best: Option<(usize, Vec<Span>, i64)> = None;
    for (i, v, step) in aggregate() {
        let spans: Vec<Span> = old.iter().map(|&b| covered(v, step, b, range_ms)).collect();
        let total: i64 = spans.iter().map(|s| s.1 - s.0).sum();
        if total > best.as_ref().map_or(0, |b| b.2) {
            best = Some((i, spans, total));
        }
    }
    let raw_total: i64 = old
        .iter()
        .map(|&b| (b - (b - range_ms).max(raw.oldest_ms)).max(0))
        .sum();
    match best {
        Some((i, spans, total)) if total > raw_total => {
            let v = &views[i];
            let step = v.step_ms.unwrap_or(1);
            let shortfall = Shortfall {
                unaligned: range_ms % step != 0 || old.iter().any(|b| b % step != 0),
                before_retention: old
                    .iter()
                    .any(|&b| b - range_ms < v.oldest_ms)
                    .then_some(v.oldest_ms),
                unsealed_after: old
                    .iter()
                    .any(|&b| b > v.complete_until_ms)
                    .then_some(v.complete_until_ms),
                covered_ms: total,
                wanted_ms,
            };
            Plan {
                raw_from,
                tier: Some(TierPlan {
                    view: i,
                    spans,
                    shortfall: Some(shortfall),
                }),
            }
        }
        _ => no_tier,
    }
}

/// The part of `[b - range, b)` made of whole windows of `v` that it guarantees to hold.
fn covered(v: &TierView, step: i64, b: i64, range_ms: i64) -> Span {
    let from = align_up((b - range_ms).max(v.oldest_ms), step);
    let to = align_down(b.min(v.complete_until_ms), step);
    if to > from { (from, to) } else { (from, from) }
}

fn align_up(t: i64, step: i64) -> i64 {
    let down = align_down(t, step);
    if down == t {
        t
    } else {
        down.saturating_add(step)
    }
}

/// A tier could not answer `rate` or `increase` for a series: its windows keep no
/// increase, because the series is not a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotCounter;

/// `f` over the windows of one series lying wholly inside `[from, to)`; `None` when there
/// are none. `windows` ascend by start.
pub fn compute(
    f: WindowFn,
    windows: &[Aggregate],
    step_ms: i64,
    (from, to): Span,
) -> Result<Option<f64>, NotCounter> {
    let lo = windows.partition_point(|w| w.start_ms < from);
    let hi = windows.partition_point(|w| w.start_ms <= to.saturating_sub(step_ms));
    if lo >= hi {
        return Ok(None);
    }
    let ws = &windows[lo..hi];
    let sum = |g: fn(&Aggregate) -> f64| {
        let (s, c) = ws
            .iter()
            .fold((0.0, 0.0), |(s, c), w| kahan_inc(g(w), s, c));
        s + c
    };
    let count = || ws.iter().map(|w| w.count).sum::<u64>() as f64;
    let increase = || -> Result<f64, NotCounter> {
        let (s, c) = ws.iter().try_fold((0.0, 0.0), |(s, c), w| {
            w.increase.map(|i| kahan_inc(i, s, c)).ok_or(NotCounter)
        })?;
        Ok(s + c)
    };
    // Prometheus's min and max skip NaN unless every value is NaN; so do the windows'.
    let pick = |better: fn(f64, f64) -> bool, g: fn(&Aggregate) -> f64| {
        ws.iter().skip(1).fold(g(&ws[0]), |m, w| {
            let v = g(w);
            if better(v, m) || m.is_nan() { v } else { m }
        })
    };
    Ok(Some(match f {
        WindowFn::Sum => sum(|w| w.sum),
        WindowFn::Count => count(),
        WindowFn::Avg => sum(|w| w.sum) / count(),
        WindowFn::Min => pick(|v, m| v < m, |w| w.min),
        WindowFn::Max => pick(|v, m| v > m, |w| w.max),
        WindowFn::Last => ws[ws.len() - 1].last,
        WindowFn::Increase => increase()?,
        WindowFn::Rate => increase()? / ((to - from) as f64 / 1000.0),
    }))
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

/// Evaluates `c` from an aggregate tier where [`plan`] says one answers some of its
/// steps; `None` leaves the call to the ordinary functions, over raw samples.
pub(crate) fn eval_call(
    ev: &mut Evaluator<'_>,
    c: &Call,
    r: &StepRange,
) -> Result<Option<Value>, QueryError> {
    let Some(f) = WindowFn::from_name(c.func.name) else {
        return Ok(None);
    };
    let [arg] = c.args.args.as_slice() else {
        return Ok(None);
    };
    let Expr::MatrixSelector(ms) = unparen(arg) else {
        return Ok(None);
    };
    let Some(views) = ev.q.tier_views()? else {
        return Ok(None);
    };
    let times = r.times(ev.opts.max_steps)?;
    let offset = offset_ms(&ms.vs.offset);
    let at = ev.at_ms(&ms.vs.at);
    let range = duration_ms(&ms.range);
    let ends: Vec<i64> = times.iter().map(|t| at.unwrap_or(*t) - offset).collect();
    let p = plan(&views, &ends, range);
    let Some(tp) = p.tier else {
        return Ok(None);
    };
    let view = &views[tp.view];
    let step = view.step_ms.unwrap_or(1);
    let mint = tp.spans.iter().map(|s| s.0).min().unwrap_or(0);
    let maxt = tp.spans.iter().map(|s| s.1).max().unwrap_or(0) - step;
    let mut series: Vec<WindowSeries> = Vec::new();
    if maxt >= mint {
        let mut seen = std::collections::HashSet::new();
        for group in matcher_groups(&ms.vs)? {
            for s in ev.q.select_windows(&group, view.tier, mint, maxt)? {
                ev.count_read(s.windows.len())?;
                if seen.insert(s.labels.clone()) {
                    series.push(s);
                }
            }
        }
    }
    let mut out: Vec<Vec<Sample>> = vec![Vec::new(); times.len()];
    let mut not_counters: Vec<&Labels> = Vec::new();
    // Series with newer samples than their stored windows reach: the end of a span past
    // the stored windows is not stored yet (not empty), so that answer is left out.
    let mut unstored: Vec<(&Labels, i64)> = Vec::new();
    for s in &series {
        let stored_end = s.windows.last().map_or(i64::MIN, |w| w.start_ms + step);
        for (i, span) in tp.spans.iter().enumerate() {
            if span.1 > stored_end && s.newest_ms.is_some_and(|n| n >= span.1) {
                unstored.push((&s.labels, stored_end));
                break;
            }
            match compute(f, &s.windows, step, *span) {
                Ok(Some(v)) => out[i].push(Sample {
                    labels: s.labels.clone(),
                    f: v,
                    t: times[i],
                    drop_name: !f.keeps_name(),
                }),
                Ok(None) => {}
                Err(NotCounter) => {
                    not_counters.push(&s.labels);
                    break;
                }
            }
        }
    }
    let call = c.to_string();
    let when = |i: usize| rfc3339(times[i]);
    let answered = if p.raw_from == 1 {
        format!("at {}", when(0))
    } else {
        format!(
            "for evaluation times {} to {}",
            when(0),
            when(p.raw_from - 1)
        )
    };
    let how = match tp.shortfall {
        None => "exactly: whole windows cover each range",
        Some(_) => "inexactly, see the warning",
    };
    ev.q.annotate(Annotation::Info(format!(
        "{call}: answered {answered} from aggregate tier \"{}\" ({how}; raw samples no \
         longer cover those ranges)",
        view.name
    )));
    if p.raw_from < times.len() {
        ev.q.annotate(Annotation::Info(format!(
            "{call}: answered from raw samples from evaluation time {} on",
            when(p.raw_from)
        )));
    }
    if let Some(sf) = &tp.shortfall {
        let mut why = Vec::new();
        if sf.unaligned {
            why.push(format!(
                "the range or evaluation times are not on the tier's {step} ms grid, \
                 so only whole windows inside each range are used"
            ));
        }
        if let Some(t) = sf.before_retention {
            why.push(format!(
                "the tier's retention reaches back to {} only",
                rfc3339(t)
            ));
        }
        if let Some(t) = sf.unsealed_after {
            why.push(format!(
                "the tier's windows after {} are not stored yet",
                rfc3339(t)
            ));
        }
        let pct = 100.0 * sf.covered_ms as f64 / sf.wanted_ms.max(1) as f64;
        let rate_note = if f == WindowFn::Rate {
            "; rate divides by the covered time"
        } else {
            ""
        };
        ev.q.annotate(Annotation::Warning(format!(
            "{call}: aggregate tier \"{}\" covers {pct:.1} % of the requested ranges ({}){rate_note}",
            view.name,
            why.join("; ")
        )));
    }
    if let Some((first, end)) = unstored.first() {
        ev.q.annotate(Annotation::Warning(format!(
            "{call}: aggregate tier \"{}\" has not stored the newest windows of {} series \
             yet (e.g. {} after {}); their answers from there on are left out",
            view.name,
            unstored.len(),
            without_name(first),
            rfc3339(*end)
        )));
    }
    if let Some(first) = not_counters.first() {
        ev.q.annotate(Annotation::Warning(format!(
            "{call}: {} series (e.g. {}) left out: aggregate tier \"{}\" keeps an increase \
             for counters only, and raw samples no longer cover the range",
            not_counters.len(),
            without_name(first),
            view.name
        )));
    }
    if p.raw_from < times.len() {
        let rest = StepRange {
            start: times[p.raw_from],
            end: r.end,
            step: r.step,
        };
        match super::functions::eval_call(ev, c, &rest)? {
            Value::Vector(steps) => {
                for (slot, step_out) in out[p.raw_from..].iter_mut().zip(steps) {
                    *slot = step_out;
                }
            }
            _ => {
                return Err(QueryError::exec(format!(
                    "{}: expected a vector",
                    c.func.name
                )));
            }
        }
    }
    Ok(Some(Value::Vector(out)))
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds, for annotations.
pub(crate) fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::memstore::MemStore;
    use crate::query::value::{QueryValue, Queryable, SeriesData};
    use crate::query::{EvalOptions, instant_query, range_query};
    use crate::tsdb::Matcher;
    use crate::tsdb::aggregate::aggregate;
    use std::cell::RefCell;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 86_400_000;
    /// A Monday at midnight UTC, 2025-03-03, on every tier's grid.
    const NOW: i64 = 1_740_960_000_000;

    /// The product documents' tiers at NOW: raw 1 h, 5 m for 1 d, 1 h for 7 d, 1 d for
    /// 30 d, each complete up to a little behind NOW.
    fn views() -> Vec<TierView> {
        let v = |tier: u8, name: &str, step: Option<i64>, retention: i64, complete: i64| TierView {
            tier,
            name: name.into(),
            step_ms: step,
            oldest_ms: NOW - retention,
            complete_until_ms: complete,
        };
        vec![
            v(0, "raw", None, HOUR, i64::MAX),
            v(1, "5m", Some(5 * MIN), DAY, NOW - 2 * HOUR),
            v(2, "1h", Some(HOUR), 7 * DAY, NOW - DAY),
            v(3, "1d", Some(DAY), 30 * DAY, NOW - 3 * DAY),
        ]
    }

    #[test]
    fn ranges_raw_still_covers_stay_raw() {
        let p = plan(&views(), &[NOW - 10 * MIN, NOW], 30 * MIN);
        assert_eq!(
            p,
            Plan {
                raw_from: 0,
                tier: None
            }
        );
        // Exactly at the raw horizon is still raw.
        assert_eq!(plan(&views(), &[NOW], HOUR).tier, None);
    }

    #[test]
    fn the_coarsest_exact_tier_answers_old_aligned_ranges() {
        let b = NOW - 10 * DAY;
        let p = plan(&views(), &[b], DAY);
        let tp = p.tier.unwrap();
        assert_eq!((p.raw_from, tp.view, tp.shortfall), (1, 3, None));
        assert_eq!(tp.spans, [(b - DAY, b)]);
        // Six hours is not on the day grid: the hourly tier answers it exactly, where its
        // retention (7 d) reaches.
        let tp = plan(&views(), &[NOW - 5 * DAY], 6 * HOUR).tier.unwrap();
        assert_eq!((tp.view, tp.shortfall), (2, None));
        // A day ending yesterday: the 1d tier has not stored it yet, the 1h tier has.
        let tp = plan(&views(), &[NOW - DAY], DAY).tier.unwrap();
        assert_eq!((tp.view, tp.shortfall), (2, None));
        // Two hours ending half an hour ago: no tier has stored the last windows, and raw
        // covers more of the range (1 h) than the 5m tier (30 min), so raw answers.
        assert!(plan(&views(), &[NOW - 30 * MIN], 2 * HOUR).tier.is_none());
    }

    #[test]
    fn a_range_query_splits_into_an_old_tier_part_and_a_recent_raw_part() {
        // Every 15 minutes over the last 3 hours, 15-minute ranges.
        let ends: Vec<i64> = (0..=12).map(|i| NOW - 3 * HOUR + i * 15 * MIN).collect();
        let p = plan(&views(), &ends, 15 * MIN);
        // Raw (1 h) covers the windows ending from NOW - 45 min on.
        assert_eq!(p.raw_from, 9);
        let tp = p.tier.unwrap();
        assert_eq!(tp.view, 1, "the 5m tier");
        // Windows ending after NOW - 2 h are not sealed yet: covered only partly.
        let sf = tp.shortfall.unwrap();
        assert_eq!(sf.unsealed_after, Some(NOW - 2 * HOUR));
        assert!(!sf.unaligned);
        assert_eq!(tp.spans[4], (NOW - 2 * HOUR - 15 * MIN, NOW - 2 * HOUR));
        assert_eq!(tp.spans[5].1 - tp.spans[5].0, 0, "{:?}", tp.spans);
        assert_eq!(sf.covered_ms, 5 * 15 * MIN);
        assert_eq!(sf.wanted_ms, 9 * 15 * MIN);
    }

    #[test]
    fn unaligned_ranges_use_the_whole_windows_inside_with_a_shortfall() {
        let b = NOW - 5 * DAY + 7 * MIN;
        let tp = plan(&views(), &[b], DAY).tier.unwrap();
        // The day tier would cover nothing whole; the hourly tier 23 of 24 hours.
        assert_eq!(tp.view, 2);
        assert_eq!(tp.spans, [(b - 7 * MIN - DAY + HOUR, b - 7 * MIN)]);
        let sf = tp.shortfall.unwrap();
        assert!(sf.unaligned);
        assert_eq!((sf.covered_ms, sf.wanted_ms), (23 * HOUR, DAY));
    }

    #[test]
    fn beyond_every_retention_or_where_raw_covers_more_no_tier_answers() {
        assert!(plan(&views(), &[NOW - 40 * DAY], DAY).tier.is_none());
        // 5 minutes ending 61 minutes ago: raw has 4 of them, no tier has a sealed one.
        let p = plan(&views(), &[NOW - 61 * MIN], 5 * MIN);
        assert_eq!(
            p,
            Plan {
                raw_from: 0,
                tier: None
            }
        );
        // A week ending now: raw has an hour, the hourly tier six days (it is stored up
        // to a day ago), the 5m tier its retention less the unsealed 2 hours.
        let tp = plan(&views(), &[NOW], 7 * DAY).tier.unwrap();
        assert_eq!(tp.view, 2);
        let sf = tp.shortfall.unwrap();
        assert_eq!(sf.unsealed_after, Some(NOW - DAY));
        assert_eq!(sf.covered_ms, 6 * DAY);
        assert_eq!(sf.before_retention, None);
    }

    fn windows(samples: &[(i64, f64)], counter: bool, step: i64) -> Vec<Aggregate> {
        aggregate(samples, counter, step).unwrap()
    }

    #[test]
    fn functions_over_windows_match_the_samples_they_hold() {
        // A counter every minute for 3 hours, +1, +2, +3, ... with a reset at 100.
        let mut v = 0.0;
        let samples: Vec<(i64, f64)> = (0..180)
            .map(|i| {
                v = if i == 100 {
                    5.0
                } else {
                    v + (i % 3 + 1) as f64
                };
                (NOW + i * MIN, v)
            })
            .collect();
        let ws = windows(&samples, true, HOUR);
        let span = (NOW + HOUR, NOW + 3 * HOUR);
        let inside: Vec<f64> = samples
            .iter()
            .filter(|s| (span.0..span.1).contains(&s.0))
            .map(|s| s.1)
            .collect();
        let get = |f| compute(f, &ws, HOUR, span).unwrap().unwrap();
        assert_eq!(get(WindowFn::Count), 120.0);
        assert_eq!(get(WindowFn::Sum), inside.iter().sum::<f64>());
        assert_eq!(get(WindowFn::Avg), inside.iter().sum::<f64>() / 120.0);
        assert_eq!(get(WindowFn::Min), 5.0, "the value after the reset");
        assert_eq!(
            get(WindowFn::Max),
            inside.iter().cloned().fold(f64::MIN, f64::max)
        );
        assert_eq!(get(WindowFn::Last), samples[179].1);
        // Increase from the last sample before the span (minute 59) to the last one in
        // it, across the reset: the per-step increments, with the reset counting 5.
        let want: f64 = (60..180)
            .map(|i| if i == 100 { 5.0 } else { (i % 3 + 1) as f64 })
            .sum();
        assert_eq!(get(WindowFn::Increase), want);
        assert_eq!(get(WindowFn::Rate), want / 7200.0);
        // Only whole windows inside the span count; none inside means no value.
        let part = compute(
            WindowFn::Count,
            &ws,
            HOUR,
            (NOW + 30 * MIN, NOW + 150 * MIN),
        );
        assert_eq!(part, Ok(Some(60.0)));
        assert_eq!(
            compute(WindowFn::Count, &ws, HOUR, (NOW + 5 * HOUR, NOW + 6 * HOUR)),
            Ok(None)
        );
        // A gauge keeps no increase.
        let gauge = windows(&samples, false, HOUR);
        assert_eq!(compute(WindowFn::Rate, &gauge, HOUR, span), Err(NotCounter));
        assert!(compute(WindowFn::Max, &gauge, HOUR, span).is_ok());
    }

    #[test]
    fn min_and_max_skip_nan_windows_unless_all_are_nan() {
        let samples = [
            (NOW, f64::NAN),
            (NOW + HOUR, 3.0),
            (NOW + 2 * HOUR, f64::NAN),
        ];
        let ws = windows(&samples, false, HOUR);
        let span = (NOW, NOW + 3 * HOUR);
        assert_eq!(compute(WindowFn::Max, &ws, HOUR, span), Ok(Some(3.0)));
        assert_eq!(compute(WindowFn::Min, &ws, HOUR, span), Ok(Some(3.0)));
        let only_nan = compute(WindowFn::Max, &ws[..1], HOUR, span)
            .unwrap()
            .unwrap();
        assert!(only_nan.is_nan());
    }

    /// A source with tiers: every sample in memory, raw reads limited to raw retention,
    /// aggregate reads computed from the samples.
    struct Tiered {
        all: MemStore,
        views: Vec<TierView>,
        notes: RefCell<Vec<Annotation>>,
    }

    impl Queryable for Tiered {
        fn select(
            &self,
            matchers: &[Matcher],
            mint: i64,
            maxt: i64,
        ) -> Result<Vec<SeriesData>, QueryError> {
            self.all
                .select(matchers, mint.max(self.views[0].oldest_ms), maxt)
        }

        fn tier_views(&self) -> Result<Option<Vec<TierView>>, QueryError> {
            Ok(Some(self.views.clone()))
        }

        fn select_windows(
            &self,
            matchers: &[Matcher],
            tier: u8,
            mint: i64,
            maxt: i64,
        ) -> Result<Vec<WindowSeries>, QueryError> {
            let step = self.views[usize::from(tier)].step_ms.unwrap();
            Ok(self
                .all
                .matching(matchers)
                .map(|s| {
                    let counter = s.labels.get("__name__").unwrap().ends_with("_total");
                    let windows = windows(&s.samples, counter, step)
                        .into_iter()
                        .filter(|w| (mint..=maxt).contains(&w.start_ms))
                        .collect();
                    WindowSeries {
                        labels: s.labels.clone(),
                        windows,
                        newest_ms: s.samples.last().map(|p| p.0),
                    }
                })
                .filter(|s| !s.windows.is_empty())
                .collect())
        }

        fn annotate(&self, note: Annotation) {
            self.notes.borrow_mut().push(note);
        }
    }

    /// `c_total` rising by 2 every minute and `g` cycling 0..=9, over 10 days to NOW.
    fn source() -> Tiered {
        let mut all = MemStore::new();
        let ts = (0..10 * 24 * 60).map(|i| NOW - 10 * DAY + i * MIN);
        let name = |n: &str| Labels::from_pairs([("__name__", n), ("job", "x")]);
        all.add(
            name("c_total"),
            ts.clone().map(|t| (t, (t - NOW) as f64 / 30_000.0)),
        );
        all.add(name("g"), ts.map(|t| (t, ((t / MIN) % 10) as f64)));
        Tiered {
            all,
            views: views(),
            notes: RefCell::new(Vec::new()),
        }
    }

    fn value(q: &dyn Queryable, expr: &str, t: i64) -> Vec<(Labels, f64)> {
        let expr = promql_parser::parser::parse(expr).unwrap();
        match instant_query(q, &expr, t, &EvalOptions::default()).unwrap() {
            QueryValue::Vector(v) => v.into_iter().map(|s| (s.labels, s.v)).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_engine_answers_old_ranges_from_a_tier_and_says_which() {
        let src = source();
        let t = NOW - 5 * DAY;
        let job = Labels::from_pairs([("job", "x")]);
        // 6 hours of +2 per minute, counted from the sample before the range.
        assert_eq!(
            value(&src, "increase(c_total[6h])", t),
            [(job.clone(), 720.0)]
        );
        assert_eq!(
            value(&src, "rate(c_total[6h])", t),
            [(job.clone(), 720.0 / 21_600.0)]
        );
        assert_eq!(value(&src, "max_over_time(g[6h])", t), [(job.clone(), 9.0)]);
        assert_eq!(value(&src, "avg_over_time(g[6h])", t), [(job.clone(), 4.5)]);
        assert_eq!(
            value(&src, "count_over_time(g[6h] offset 1d)", t + DAY),
            [(job.clone(), 360.0)]
        );
        // last_over_time keeps the name: the last sample before t.
        let last = value(&src, "last_over_time(g[6h])", t);
        assert_eq!(last[0].0.get("__name__"), Some("g"));
        assert_eq!(last[0].1, 9.0);
        let notes = src.notes.borrow();
        assert!(
            notes.iter().all(|n| matches!(n, Annotation::Info(m) if m.contains("tier \"1h\"") && m.contains("exactly"))),
            "{notes:?}"
        );
        // Raw no longer covers the range: the ordinary functions would see nothing.
        let raw_only = {
            let mut m = MemStore::new();
            for s in src.all.matching(&[]) {
                m.add(
                    s.labels.clone(),
                    s.samples.iter().copied().filter(|p| p.0 >= NOW - HOUR),
                );
            }
            m
        };
        assert!(value(&raw_only, "increase(c_total[6h])", t).is_empty());
    }

    #[test]
    fn a_range_query_reads_the_tier_for_old_steps_and_raw_for_recent_ones() {
        let src = source();
        let expr = promql_parser::parser::parse("max_over_time(g[10m])").unwrap();
        let start = NOW - 3 * HOUR;
        let got = match range_query(&src, &expr, start, NOW, 10 * MIN, &EvalOptions::default())
            .unwrap()
        {
            QueryValue::Matrix(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(got.len(), 1);
        // The 5m tier is sealed up to NOW - 2 h: steps up to then come from it, steps whose
        // range raw covers from raw; the ones in between are partly covered (a warning).
        let by_t: std::collections::BTreeMap<i64, f64> = got[0].samples.iter().copied().collect();
        for t in (start..=NOW - 2 * HOUR).step_by(10 * MIN as usize) {
            assert_eq!(by_t.get(&t), Some(&9.0), "tier step {t}");
        }
        for t in (NOW - 50 * MIN..=NOW).step_by(10 * MIN as usize) {
            assert_eq!(by_t.get(&t), Some(&9.0), "raw step {t}");
        }
        assert!(
            !by_t.contains_key(&(NOW - HOUR)),
            "neither the tier nor raw has it"
        );
        let notes = src.notes.borrow();
        let infos: Vec<&String> = notes
            .iter()
            .filter_map(|n| match n {
                Annotation::Info(m) => Some(m),
                _ => None,
            })
            .collect();
        assert!(infos.iter().any(|m| m.contains("tier \"5m\"")), "{notes:?}");
        assert!(
            infos
                .iter()
                .any(|m| m.contains("from raw samples from evaluation time"))
        );
        assert!(
            notes
                .iter()
                .any(|n| matches!(n, Annotation::Warning(m) if m.contains("not stored yet"))),
            "{notes:?}"
        );
    }

    #[test]
    fn inexact_and_gauge_answers_warn() {
        let src = source();
        let t = NOW - 5 * DAY + 7 * MIN;
        // Off the grid: the hourly windows inside the day, 23 hours of +2 per minute.
        assert_eq!(
            value(&src, "increase(c_total[1d])", t),
            [(Labels::from_pairs([("job", "x")]), 23.0 * 120.0)]
        );
        assert!(value(&src, "rate(g[1d])", NOW - 5 * DAY).is_empty());
        let notes = src.notes.borrow();
        let warnings: Vec<&String> = notes
            .iter()
            .filter_map(|n| match n {
                Annotation::Warning(m) => Some(m),
                _ => None,
            })
            .collect();
        assert!(
            warnings
                .iter()
                .any(|m| m.contains("95.8 %") && m.contains("not on the tier's")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|m| m.contains("counters only") && m.contains("job=\"x\"")),
            "{warnings:?}"
        );
    }

    #[test]
    fn sources_without_tiers_and_other_functions_read_raw() {
        let mut m = MemStore::new();
        m.add(
            Labels::from_pairs([("__name__", "c_total")]),
            (0..10).map(|i| (i * MIN, i as f64)),
        );
        // MemStore has no tiers: the ordinary, extrapolating increase.
        let v = value(&m, "increase(c_total[5m])", 9 * MIN);
        assert_eq!(v.len(), 1);
        // A function no window answers reads raw even with tiers.
        let src = source();
        assert!(value(&src, "stddev_over_time(g[6h])", NOW - 5 * DAY).is_empty());
        assert!(src.notes.borrow().is_empty());
    }

    #[test]
    fn times_are_formatted_as_rfc3339() {
        assert_eq!(rfc3339(NOW), "2025-03-03T00:00:00.000Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000 + 1), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }
}
