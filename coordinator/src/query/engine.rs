//! Evaluation of a parsed PromQL expression over a [`Queryable`].
//!
//! Every node is evaluated once for all steps of the query (as Prometheus's range
//! evaluation does): a selector reads the store once for the whole range, a subquery
//! evaluates its inner expression once on its own aligned step grid. Instant queries
//! are range queries with one step.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argus_common::model::{Labels, is_stale_nan};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};

use super::value::{
    InstantSample, METRIC_NAME, MatrixArg, QueryError, QueryValue, Queryable, RangeSeries, Sample,
    SeriesData, Value, window, without_name,
};
use crate::tsdb::{MatchOp, Matcher};

/// Query settings; the defaults are Prometheus's.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// How far back an instant selector looks for a sample (Prometheus: 5 m).
    pub lookback_ms: i64,
    /// Step of a subquery written without one (Prometheus: the global evaluation interval).
    pub default_subquery_step_ms: i64,
    /// Bound on evaluation steps of one node, so `x[100y:1s]` cannot exhaust memory.
    pub max_steps: usize,
    /// Bound on samples read from the store by one query.
    pub max_samples: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            lookback_ms: 5 * 60 * 1000,
            default_subquery_step_ms: 60 * 1000,
            max_steps: 1_000_000,
            max_samples: 50_000_000,
        }
    }
}

/// Evaluates `expr` at one time `t` (ms).
pub fn instant_query(
    q: &dyn Queryable,
    expr: &Expr,
    t: i64,
    opts: &EvalOptions,
) -> Result<QueryValue, QueryError> {
    let mut ev = Evaluator::new(q, opts, t, t, 0);
    let r = StepRange {
        start: t,
        end: t,
        step: 1,
    };
    let v = ev.eval(expr, &r)?;
    Ok(match v {
        Value::Scalar(s) => QueryValue::Scalar {
            t,
            v: s.first().copied().unwrap_or(f64::NAN),
        },
        Value::Str(s) => QueryValue::String { t, s },
        Value::Vector(mut steps) => {
            let samples = steps.pop().unwrap_or_default();
            let samples = finish_names(samples)?;
            QueryValue::Vector(
                samples
                    .into_iter()
                    .map(|s| InstantSample {
                        labels: s.labels,
                        t,
                        v: s.f,
                    })
                    .collect(),
            )
        }
        Value::Matrix(m) => {
            let end = m.end_at(t);
            let mut out = Vec::new();
            for s in m.series {
                let pts = window(&s.points, end - m.range, end);
                if pts.is_empty() {
                    continue;
                }
                let labels = if s.drop_name {
                    without_name(&s.labels)
                } else {
                    s.labels
                };
                out.push(SeriesData {
                    labels,
                    samples: pts.to_vec(),
                });
            }
            check_unique(out.iter().map(|s| &s.labels))?;
            QueryValue::Matrix(out)
        }
    })
}

/// Evaluates `expr` at `start, start + step, ..., end` (ms); the result is a matrix.
pub fn range_query(
    q: &dyn Queryable,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    opts: &EvalOptions,
) -> Result<QueryValue, QueryError> {
    if step <= 0 {
        return Err(QueryError::exec("zero or negative query resolution step"));
    }
    if end < start {
        return Err(QueryError::exec(
            "end timestamp must not be before start time",
        ));
    }
    let mut ev = Evaluator::new(q, opts, start, end, step);
    let r = StepRange { start, end, step };
    let times = r.times(opts.max_steps)?;
    let v = ev.eval(expr, &r)?;
    match v {
        Value::Scalar(s) => Ok(QueryValue::Matrix(vec![SeriesData {
            labels: Labels::new(),
            samples: times.iter().copied().zip(s).collect(),
        }])),
        Value::Vector(steps) => {
            let mut idx: HashMap<Labels, usize> = HashMap::new();
            let mut out: Vec<SeriesData> = Vec::new();
            for (t, samples) in times.iter().zip(steps) {
                let samples = finish_names(samples)?;
                for s in samples {
                    let i = *idx.entry(s.labels.clone()).or_insert_with(|| {
                        out.push(SeriesData {
                            labels: s.labels.clone(),
                            samples: Vec::new(),
                        });
                        out.len() - 1
                    });
                    out[i].samples.push((*t, s.f));
                }
            }
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            Ok(QueryValue::Matrix(out))
        }
        Value::Str(_) | Value::Matrix(_) => Err(QueryError::exec(
            "invalid expression type for range query, must be Scalar or instant Vector",
        )),
    }
}

/// Drops `__name__` where it was marked to be dropped, and refuses a vector in which
/// two samples end up with the same labels (Prometheus: "vector cannot contain metrics
/// with the same labelset").
pub(crate) fn finish_names(samples: Vec<Sample>) -> Result<Vec<Sample>, QueryError> {
    let mut any = false;
    let out: Vec<Sample> = samples
        .into_iter()
        .map(|mut s| {
            if s.drop_name {
                any = true;
                s.labels.remove(METRIC_NAME);
                s.drop_name = false;
            }
            s
        })
        .collect();
    if any {
        check_unique(out.iter().map(|s| &s.labels))?;
    }
    Ok(out)
}

fn check_unique<'a>(labels: impl Iterator<Item = &'a Labels>) -> Result<(), QueryError> {
    let mut seen = std::collections::HashSet::new();
    for l in labels {
        if !seen.insert(l) {
            return Err(QueryError::exec(
                "vector cannot contain metrics with the same labelset",
            ));
        }
    }
    Ok(())
}

/// The evaluation steps of one node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepRange {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl StepRange {
    pub fn len(&self) -> usize {
        if self.end < self.start {
            0
        } else {
            ((self.end - self.start) / self.step + 1) as usize
        }
    }

    pub fn times(&self, max: usize) -> Result<Vec<i64>, QueryError> {
        let n = self.len();
        if n > max {
            return Err(QueryError::Limit(format!(
                "{n} evaluation steps exceed the limit of {max}"
            )));
        }
        Ok((0..n as i64).map(|i| self.start + i * self.step).collect())
    }
}

pub(crate) fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(e) => -duration_ms(&e.duration()),
    }
}

/// The matcher sets of a selector: one, or one per `or` group, each with the metric name.
pub(crate) fn matcher_groups(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, QueryError> {
    let groups: Vec<&Vec<promql_parser::label::Matcher>> = if vs.matchers.or_matchers.is_empty() {
        vec![&vs.matchers.matchers]
    } else {
        vs.matchers.or_matchers.iter().collect()
    };
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let mut ms = Vec::with_capacity(group.len() + 1);
        if let Some(name) = &vs.name {
            ms.push(Matcher::equal(METRIC_NAME, name.clone()));
        }
        for m in group {
            let op = match m.op {
                PMatchOp::Equal => MatchOp::Equal,
                PMatchOp::NotEqual => MatchOp::NotEqual,
                PMatchOp::Re(_) => MatchOp::RegexMatch,
                PMatchOp::NotRe(_) => MatchOp::RegexNoMatch,
            };
            ms.push(
                Matcher::new(op, m.name.clone(), m.value.clone())
                    .map_err(|e| QueryError::exec(e.to_string()))?,
            );
        }
        out.push(ms);
    }
    Ok(out)
}

pub(crate) struct Evaluator<'a> {
    pub(crate) q: &'a dyn Queryable,
    pub(crate) opts: &'a EvalOptions,
    pub(crate) query_start: i64,
    pub(crate) query_end: i64,
    /// The top-level step (0 for an instant query), for `step()`.
    pub(crate) query_step: i64,
    samples_read: usize,
}

impl<'a> Evaluator<'a> {
    fn new(q: &'a dyn Queryable, opts: &'a EvalOptions, start: i64, end: i64, step: i64) -> Self {
        Evaluator {
            q,
            opts,
            query_start: start,
            query_end: end,
            query_step: step,
            samples_read: 0,
        }
    }

    pub(crate) fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        at.as_ref().map(|a| match a {
            AtModifier::Start => self.query_start,
            AtModifier::End => self.query_end,
            AtModifier::At(t) => system_time_ms(t),
        })
    }

    pub(crate) fn eval(&mut self, expr: &Expr, r: &StepRange) -> Result<Value, QueryError> {
        let n = r.len();
        match expr {
            Expr::NumberLiteral(n_) => Ok(Value::Scalar(vec![n_.val; n])),
            Expr::StringLiteral(s) => Ok(Value::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, r),
            Expr::Unary(u) => match self.eval(&u.expr, r)? {
                Value::Scalar(v) => Ok(Value::Scalar(v.into_iter().map(|x| -x).collect())),
                Value::Vector(steps) => Ok(Value::Vector(
                    steps
                        .into_iter()
                        .map(|ss| {
                            ss.into_iter()
                                .map(|mut s| {
                                    s.f = -s.f;
                                    s.drop_name = true;
                                    s
                                })
                                .collect()
                        })
                        .collect(),
                )),
                _ => Err(QueryError::exec("unary minus on a non-numeric value")),
            },
            Expr::VectorSelector(vs) => self.eval_vector_selector(vs, r),
            Expr::MatrixSelector(ms) => {
                let offset = offset_ms(&ms.vs.offset);
                let at = self.at_ms(&ms.vs.at);
                let range = duration_ms(&ms.range);
                let (lo, hi) = match at {
                    Some(a) => (a - offset, a - offset),
                    None => (r.start - offset, r.end - offset),
                };
                let data = self.fetch(&ms.vs, lo - range, hi)?;
                let series = data
                    .into_iter()
                    .filter_map(|s| {
                        let points: Vec<(i64, f64)> = s
                            .samples
                            .into_iter()
                            .filter(|p| !is_stale_nan(p.1))
                            .collect();
                        (!points.is_empty()).then_some(RangeSeries {
                            labels: s.labels,
                            drop_name: false,
                            points,
                        })
                    })
                    .collect();
                Ok(Value::Matrix(MatrixArg {
                    series,
                    range,
                    offset,
                    at,
                }))
            }
            Expr::Subquery(sq) => self.eval_subquery(sq, r),
            Expr::Binary(b) => super::binary::eval_binary(self, b, r),
            Expr::Aggregate(a) => super::aggregate::eval_aggregate(self, a, r),
            Expr::Call(c) => match super::tiered::eval_call(self, c, r)? {
                Some(v) => Ok(v),
                None => super::functions::eval_call(self, c, r),
            },
            Expr::Extension(_) => Err(QueryError::exec("unsupported expression extension")),
        }
    }

    /// Reads the series of a selector with samples in `[mint, maxt]`.
    pub(crate) fn fetch(
        &mut self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, QueryError> {
        let mut out: Vec<SeriesData> = Vec::new();
        let mut seen: std::collections::HashSet<Labels> = std::collections::HashSet::new();
        for ms in matcher_groups(vs)? {
            for s in self.q.select(&ms, mint, maxt)? {
                self.count_read(s.samples.len())?;
                if seen.insert(s.labels.clone()) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Adds `n` samples (or aggregate windows) read, refusing the query past the limit.
    pub(crate) fn count_read(&mut self, n: usize) -> Result<(), QueryError> {
        self.samples_read = self.samples_read.saturating_add(n);
        if self.samples_read > self.opts.max_samples {
            return Err(QueryError::Limit(format!(
                "query processing would load more than {} samples",
                self.opts.max_samples
            )));
        }
        Ok(())
    }

    fn eval_vector_selector(
        &mut self,
        vs: &VectorSelector,
        r: &StepRange,
    ) -> Result<Value, QueryError> {
        let offset = offset_ms(&vs.offset);
        let at = self.at_ms(&vs.at);
        let times = r.times(self.opts.max_steps)?;
        let lb = self.opts.lookback_ms;
        let (lo, hi) = match at {
            Some(a) => (a - offset, a - offset),
            None => (r.start - offset, r.end - offset),
        };
        let data = self.fetch(vs, lo - lb, hi)?;
        let mut steps: Vec<Vec<Sample>> = vec![Vec::new(); times.len()];
        for s in &data {
            for (i, t) in times.iter().enumerate() {
                let te = at.unwrap_or(*t) - offset;
                let pts = window(&s.samples, te - lb, te);
                if let Some(&(ts, f)) = pts.last() {
                    if is_stale_nan(f) {
                        continue;
                    }
                    steps[i].push(Sample {
                        labels: s.labels.clone(),
                        f,
                        t: ts,
                        drop_name: false,
                    });
                }
            }
        }
        Ok(Value::Vector(steps))
    }

    fn eval_subquery(&mut self, sq: &SubqueryExpr, r: &StepRange) -> Result<Value, QueryError> {
        let offset = offset_ms(&sq.offset);
        let at = self.at_ms(&sq.at);
        let range = duration_ms(&sq.range);
        let step = sq
            .step
            .as_ref()
            .map(duration_ms)
            .unwrap_or(self.opts.default_subquery_step_ms);
        if step <= 0 {
            return Err(QueryError::exec("subquery step must be positive"));
        }
        let (lo, hi) = match at {
            Some(a) => (a - offset, a - offset),
            None => (r.start - offset, r.end - offset),
        };
        let first = lo - range;
        let mut start = first.div_euclid(step) * step;
        if start <= first {
            start += step;
        }
        let inner = StepRange {
            start,
            end: hi,
            step,
        };
        let series = if inner.end < inner.start {
            Vec::new()
        } else {
            let times = inner.times(self.opts.max_steps)?;
            match self.eval(&sq.expr, &inner)? {
                Value::Scalar(v) => vec![RangeSeries {
                    labels: Labels::new(),
                    drop_name: false,
                    points: times.iter().copied().zip(v).collect(),
                }],
                Value::Vector(steps) => {
                    let mut idx: HashMap<Labels, usize> = HashMap::new();
                    let mut out: Vec<RangeSeries> = Vec::new();
                    for (t, samples) in times.iter().zip(steps) {
                        for s in finish_names(samples)? {
                            let i = *idx.entry(s.labels.clone()).or_insert_with(|| {
                                out.push(RangeSeries {
                                    labels: s.labels.clone(),
                                    drop_name: false,
                                    points: Vec::new(),
                                });
                                out.len() - 1
                            });
                            out[i].points.push((*t, s.f));
                        }
                    }
                    out
                }
                _ => {
                    return Err(QueryError::exec(
                        "subquery is only allowed on instant vector or scalar",
                    ));
                }
            }
        };
        Ok(Value::Matrix(MatrixArg {
            series,
            range,
            offset,
            at,
        }))
    }
}
