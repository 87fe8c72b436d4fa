//! PromQL functions over floats (native-histogram functions are out of scope, DESIGN §5).

use std::ops::Range;

use argus_common::model::{Labels, is_valid_label_name};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{Call, Expr};
use regex::Regex;

use super::aggregate::{LabelMap, kahan_inc, kahan_mean, quantile};
use super::engine::{Evaluator, StepRange};
use super::value::{METRIC_NAME, MatrixArg, QueryError, Sample, Value};

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

/// Labels `absent()` gives its answer: the selector's equality matchers, except names
/// matched more than once.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match unparen(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::new(),
    };
    let mut l = Labels::new();
    let mut seen = std::collections::HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if matches!(m.op, PMatchOp::Equal) && !seen.contains(&m.name) {
            l.set(m.name.clone(), m.value.clone());
        } else {
            l.remove(&m.name);
        }
        seen.insert(m.name.clone());
    }
    l
}

/// The result of a function over a range vector, kept series by series: labels once,
/// one value (or none) per step. Turning it into samples clones the labels for every
/// step, which costs more than computing the values; an aggregation over the function
/// reads this form instead (see `aggregate`).
pub(crate) struct SeriesSteps {
    pub labels: Labels,
    pub drop_name: bool,
    pub values: Vec<Option<f64>>,
}

/// Applies `f` to the window of every series at every step.
fn over_range_series(
    m: &MatrixArg,
    times: &[i64],
    keep_name: bool,
    mut f: impl FnMut(&[(i64, f64)], i64, i64, usize) -> Option<f64>,
) -> Vec<SeriesSteps> {
    over_range_indexed(m, times, keep_name, |_, points, w, start, end, i| {
        f(&points[w], start, end, i)
    })
}

/// Applies `f` to the window of every series at every step, giving it the series'
/// index and all of its points with the window as a range of them, for functions that
/// prepare something once per series.
///
/// A window is `(end - range, end]`, and the ends only grow from step to step, so two
/// cursors slide forward through the points instead of searching for every step.
fn over_range_indexed(
    m: &MatrixArg,
    times: &[i64],
    keep_name: bool,
    mut f: impl FnMut(usize, &[(i64, f64)], Range<usize>, i64, i64, usize) -> Option<f64>,
) -> Vec<SeriesSteps> {
    m.series
        .iter()
        .enumerate()
        .filter_map(|(k, s)| {
            let points = &s.points;
            let (mut lo, mut hi) = (0, 0);
            let mut last_end = i64::MIN;
            let mut any = false;
            let values: Vec<Option<f64>> = times
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let end = m.end_at(*t);
                    let start = end - m.range;
                    if end < last_end {
                        // Steps ascend, so this does not happen; start over if it did.
                        (lo, hi) = (0, 0);
                    }
                    last_end = end;
                    while hi < points.len() && points[hi].0 <= end {
                        hi += 1;
                    }
                    while lo < points.len() && points[lo].0 <= start {
                        lo += 1;
                    }
                    if lo >= hi {
                        return None;
                    }
                    let v = f(k, points, lo..hi, start, end, i);
                    any |= v.is_some();
                    v
                })
                .collect();
            any.then(|| SeriesSteps {
                labels: s.labels.clone(),
                drop_name: !keep_name || s.drop_name,
                values,
            })
        })
        .collect()
}

/// Samples per step, in series order within a step.
pub(crate) fn to_steps(series: Vec<SeriesSteps>, times: &[i64]) -> Vec<Vec<Sample>> {
    let mut out: Vec<Vec<Sample>> = vec![Vec::new(); times.len()];
    for s in series {
        for ((step, v), t) in out.iter_mut().zip(&s.values).zip(times) {
            if let Some(f) = v {
                step.push(Sample {
                    labels: s.labels.clone(),
                    f: *f,
                    t: *t,
                    drop_name: s.drop_name,
                });
            }
        }
    }
    out
}

/// Moves instant-vector argument `i` out of `args` (each is read once), instead of
/// copying every sample.
fn take_vector(args: &mut [Value], i: usize, name: &str) -> Result<Vec<Vec<Sample>>, QueryError> {
    match args.get_mut(i) {
        Some(Value::Vector(v)) => Ok(std::mem::take(v)),
        _ => Err(QueryError::exec(format!(
            "{name}: expected an instant vector"
        ))),
    }
}

/// Functions that map each series of a range vector to one value per step.
const RANGE_FUNCTIONS: [&str; 27] = [
    "rate",
    "increase",
    "delta",
    "irate",
    "idelta",
    "sum_over_time",
    "avg_over_time",
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "last_over_time",
    "first_over_time",
    "ts_of_last_over_time",
    "ts_of_first_over_time",
    "ts_of_max_over_time",
    "ts_of_min_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "mad_over_time",
    "quantile_over_time",
    "present_over_time",
    "changes",
    "resets",
    "deriv",
    "predict_linear",
    "double_exponential_smoothing",
    "holt_winters",
];

/// Evaluates `c` series by series when it is one of [`RANGE_FUNCTIONS`]; `None` for any
/// other expression, which the caller evaluates the usual way.
pub(crate) fn eval_call_series(
    ev: &mut Evaluator<'_>,
    c: &Call,
    r: &StepRange,
) -> Result<Option<Vec<SeriesSteps>>, QueryError> {
    if !RANGE_FUNCTIONS.contains(&c.func.name) {
        return Ok(None);
    }
    let times = r.times(ev.opts.max_steps)?;
    let mut args = Vec::with_capacity(c.args.args.len());
    for a in &c.args.args {
        args.push(ev.eval(a, r)?);
    }
    range_function(c.func.name, &args, &times).map(Some)
}

/// One of [`RANGE_FUNCTIONS`] over evaluated arguments.
/// Argument `i` of function `name` as a range vector, or an error saying it is not one.
fn matrix_arg<'a>(name: &str, args: &'a [Value], i: usize) -> Result<&'a MatrixArg, QueryError> {
    match args.get(i) {
        Some(Value::Matrix(m)) => Ok(m),
        _ => Err(QueryError::exec(format!("{name}: expected a range vector"))),
    }
}

/// Argument `i` of function `name` as a scalar's per-step values.
fn scalar_arg(name: &str, args: &[Value], i: usize) -> Result<Vec<f64>, QueryError> {
    match args.get(i) {
        Some(Value::Scalar(v)) => Ok(v.clone()),
        _ => Err(QueryError::exec(format!("{name}: expected a scalar"))),
    }
}

fn range_function(
    name: &str,
    args: &[Value],
    times: &[i64],
) -> Result<Vec<SeriesSteps>, QueryError> {
    let n = times.len();
    let matrix = |i: usize| matrix_arg(name, args, i);
    let scalars = |i: usize| scalar_arg(name, args, i);
    Ok(match name {
        "rate" | "increase" | "delta" => {
            let m = matrix(0)?;
            let (counter, rate) = match name {
                "rate" => (true, true),
                "increase" => (true, false),
                _ => (false, false),
            };
            let range = m.range;
            // Counter resets before each point of the current series, counted once per
            // series: a window without one skips the walk through its points.
            let mut resets: Vec<u32> = Vec::new();
            let mut current = usize::MAX;
            over_range_indexed(m, times, false, |k, points, w, s, e, _| {
                if counter && k != current {
                    current = k;
                    resets.clear();
                    let mut n = 0;
                    resets.push(n);
                    for pair in points.windows(2) {
                        if pair[1].1 < pair[0].1 {
                            n += 1;
                        }
                        resets.push(n);
                    }
                }
                let may_reset = counter && resets[w.end - 1] != resets[w.start];
                extrapolated_rate(&points[w], s, e, range, counter, rate, may_reset)
            })
        }
        "irate" | "idelta" => {
            let m = matrix(0)?;
            let is_rate = name == "irate";
            over_range_series(m, times, false, |p, _, _, _| {
                if p.len() < 2 {
                    return None;
                }
                let (l, pr) = (p[p.len() - 1], p[p.len() - 2]);
                let mut v = l.1 - pr.1;
                if is_rate {
                    if l.1 < pr.1 {
                        v = l.1;
                    }
                    let dt = l.0 - pr.0;
                    if dt == 0 {
                        return None;
                    }
                    v /= dt as f64 / 1000.0;
                }
                Some(v)
            })
        }
        "sum_over_time" => over_range_series(matrix(0)?, times, false, |p, _, _, _| {
            let (mut s, mut c) = (0.0, 0.0);
            for &(_, v) in p {
                (s, c) = kahan_inc(v, s, c);
            }
            Some(s + c)
        }),
        "avg_over_time" => over_range_series(matrix(0)?, times, false, |p, _, _, _| {
            Some(kahan_mean(p.iter().map(|x| x.1)))
        }),
        "count_over_time" => {
            over_range_series(matrix(0)?, times, false, |p, _, _, _| Some(p.len() as f64))
        }
        "min_over_time" => over_range_series(matrix(0)?, times, false, |p, _, _, _| {
            Some(p.iter().skip(1).fold(
                p[0].1,
                |m, &(_, v)| {
                    if v < m || m.is_nan() { v } else { m }
                },
            ))
        }),
        "max_over_time" => over_range_series(matrix(0)?, times, false, |p, _, _, _| {
            Some(p.iter().skip(1).fold(
                p[0].1,
                |m, &(_, v)| {
                    if v > m || m.is_nan() { v } else { m }
                },
            ))
        }),
        "last_over_time" => {
            over_range_series(matrix(0)?, times, true, |p, _, _, _| p.last().map(|x| x.1))
        }
        "first_over_time" => {
            over_range_series(matrix(0)?, times, true, |p, _, _, _| p.first().map(|x| x.1))
        }
        "ts_of_last_over_time" => over_range_series(matrix(0)?, times, false, |p, _, _, _| {
            p.last().map(|x| x.0 as f64 / 1000.0)
        }),
        "ts_of_first_over_time" => over_range_series(matrix(0)?, times, false, |p, _, _, _| {
            p.first().map(|x| x.0 as f64 / 1000.0)
        }),
        "ts_of_max_over_time" | "ts_of_min_over_time" => {
            let max = name == "ts_of_max_over_time";
            over_range_series(matrix(0)?, times, false, |p, _, _, _| {
                let mut best = p[0];
                for &x in &p[1..] {
                    let better = if max { x.1 >= best.1 } else { x.1 <= best.1 };
                    if better || best.1.is_nan() {
                        best = x;
                    }
                }
                Some(best.0 as f64 / 1000.0)
            })
        }
        "stddev_over_time" => over_range_series(matrix(0)?, times, false, |p, _, _, _| {
            Some(stdvar(p).sqrt())
        }),
        "stdvar_over_time" => {
            over_range_series(matrix(0)?, times, false, |p, _, _, _| Some(stdvar(p)))
        }
        "mad_over_time" => over_range_series(matrix(0)?, times, false, |p, _, _, _| {
            let vals: Vec<f64> = p.iter().map(|x| x.1).collect();
            if vals.iter().any(|v| v.is_nan()) {
                return Some(f64::NAN);
            }
            let med = quantile(0.5, vals.clone());
            Some(quantile(
                0.5,
                vals.iter().map(|v| (v - med).abs()).collect(),
            ))
        }),
        "quantile_over_time" => {
            let q = scalars(0)?;
            over_range_series(matrix(1)?, times, false, |p, _, _, i| {
                Some(quantile(q[i], p.iter().map(|x| x.1).collect()))
            })
        }
        "present_over_time" => over_range_series(matrix(0)?, times, false, |_, _, _, _| Some(1.0)),
        "changes" | "resets" => {
            let changes = name == "changes";
            over_range_series(matrix(0)?, times, false, |p, _, _, _| {
                let mut n = 0.0;
                for w in p.windows(2) {
                    let (a, b) = (w[0].1, w[1].1);
                    if changes {
                        if !(a == b || (a.is_nan() && b.is_nan())) {
                            n += 1.0;
                        }
                    } else if b < a {
                        n += 1.0;
                    }
                }
                Some(n)
            })
        }
        "deriv" => over_range_series(matrix(0)?, times, false, |p, _, _, _| {
            (p.len() >= 2).then(|| linear_regression(p, p[0].0).0)
        }),
        "predict_linear" => {
            let m = matrix(0)?;
            let d = scalars(1)?;
            over_range_series(m, times, false, |p, _, _, i| {
                if p.len() < 2 {
                    return None;
                }
                let (slope, icpt) = linear_regression(p, times[i]);
                Some(slope * d[i] + icpt)
            })
        }
        "double_exponential_smoothing" | "holt_winters" => {
            let m = matrix(0)?;
            let sf = scalars(1)?;
            let tf = scalars(2)?;
            for i in 0..n {
                if !(sf[i] > 0.0 && sf[i] < 1.0) {
                    return Err(QueryError::exec(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {}",
                        sf[i]
                    )));
                }
                if !(tf[i] > 0.0 && tf[i] < 1.0) {
                    return Err(QueryError::exec(format!(
                        "invalid trend factor. Expected: 0 < tf < 1, got: {}",
                        tf[i]
                    )));
                }
            }
            over_range_series(m, times, false, |p, _, _, i| {
                if p.len() < 2 {
                    return None;
                }
                let (sf, tf) = (sf[i], tf[i]);
                let (mut s0, mut s1) = (0.0, p[0].1);
                let mut b = p[1].1 - p[0].1;
                for (j, x) in p.iter().enumerate().skip(1) {
                    if j > 1 {
                        b = tf * (s1 - s0) + (1.0 - tf) * b;
                    }
                    let y = (1.0 - sf) * (s1 + b);
                    (s0, s1) = (s1, sf * x.1 + y);
                }
                Some(s1)
            })
        }
        other => {
            return Err(QueryError::exec(format!(
                "function {other}() is not a range function"
            )));
        }
    })
}

/// Prometheus's `extrapolatedRate`: the change over the samples, extrapolated to the
/// window edges unless the series seems to start or end inside it. `may_reset` false
/// says the caller knows no counter reset lies in `pts`.
fn extrapolated_rate(
    pts: &[(i64, f64)],
    start: i64,
    end: i64,
    range_ms: i64,
    counter: bool,
    rate: bool,
    may_reset: bool,
) -> Option<f64> {
    if pts.len() < 2 {
        return None;
    }
    let first = pts[0];
    let last = pts[pts.len() - 1];
    let mut result = last.1 - first.1;
    if counter && may_reset {
        let mut prev = first.1;
        for p in &pts[1..] {
            if p.1 < prev {
                result += prev;
            }
            prev = p.1;
        }
    }
    let mut to_start = (first.0 - start) as f64 / 1000.0;
    let mut to_end = (end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg = sampled / (pts.len() - 1) as f64;
    let threshold = avg * 1.1;
    if to_start >= threshold {
        to_start = avg / 2.0;
    }
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if rate {
        factor /= range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

fn linear_regression(pts: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init = pts[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in pts.iter().enumerate() {
        if const_y && i > 0 && v != init {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn stdvar(pts: &[(i64, f64)]) -> f64 {
    let (mut n, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in pts {
        n += 1.0;
        let d = v - (mean + cm);
        (mean, cm) = kahan_inc(d / n, mean, cm);
        (aux, ca) = kahan_inc(d * (v - (mean + cm)), aux, ca);
    }
    (aux + ca) / n
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn date_fn(name: &str, secs: f64) -> f64 {
    let s = secs as i64;
    let days = s.div_euclid(86_400);
    let sod = s.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    match name {
        "year" => y as f64,
        "month" => m as f64,
        "day_of_month" => d as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => {
            let mut doy = d;
            for mm in 1..m {
                doy += days_in_month(y, mm);
            }
            doy as f64
        }
        "days_in_month" => days_in_month(y, m) as f64,
        "hour" => (sod / 3600) as f64,
        "minute" => ((sod % 3600) / 60) as f64,
        _ => f64::NAN,
    }
}

fn math_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sqrt" => f64::sqrt,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "deg" => f64::to_degrees,
        "rad" => f64::to_radians,
        "sgn" => |v: f64| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        _ => return None,
    })
}

/// Natural order: digit runs compare as numbers, as Prometheus's `sort_by_label` does.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let na = a[si..i].trim_start_matches('0');
            let nb = b[sj..j].trim_start_matches('0');
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            if ab[i] != bb[j] {
                return ab[i].cmp(&bb[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

fn string_arg(args: &[Value], i: usize, fname: &str) -> Result<String, QueryError> {
    match args.get(i) {
        Some(Value::Str(s)) => Ok(s.clone()),
        _ => Err(QueryError::exec(format!(
            "{fname}: argument {} must be a string",
            i + 1
        ))),
    }
}

/// Bucket quantile over classic `le` buckets, as Prometheus's `BucketQuantile`.
fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Coalesce equal bounds.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == b.0 => last.1 += b.1,
            _ => merged.push(b),
        }
    }
    let mut buckets = merged;
    // Monotonicity, ignoring tiny deltas.
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let cur = b.1;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, 1e-12) || cur < prev {
            b.1 = prev;
            continue;
        }
        prev = cur;
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let n = buckets.len();
    let obs = buckets[n - 1].1;
    if obs == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * obs;
    let b = buckets[..n - 1].partition_point(|x| x.1 < rank);
    if b == n - 1 {
        return buckets[n - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let end = buckets[b].0;
    let mut count = buckets[b].1;
    let mut start = 0.0;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// Fraction of observations between `lower` and `upper` in classic buckets,
/// interpolating linearly inside a bucket, as Prometheus's `BucketFraction`.
fn bucket_fraction(lower: f64, upper: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == b.0 => last.1 += b.1,
            _ => merged.push(b),
        }
    }
    let count = merged[merged.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lr, mut ur) = (0.0, 0.0, 0.0);
    let (mut lset, mut uset) = (false, false);
    for (i, &(ub, c)) in merged.iter().enumerate() {
        let lb = if i > 0 {
            merged[i - 1].0
        } else if ub > 0.0 {
            0.0
        } else {
            f64::NEG_INFINITY
        };
        let interp = |v: f64| rank + (c - rank) * (v - lb) / (ub - lb);
        if !lset && lb >= lower {
            lr = rank;
            lset = true;
        }
        if !uset && lb >= upper {
            ur = rank;
            uset = true;
        }
        if lset && uset {
            break;
        }
        if !lset && lb < lower && ub > lower {
            lr = interp(lower);
            lset = true;
        }
        if !uset && lb < upper && ub > upper {
            ur = interp(upper);
            uset = true;
        }
        if lset && uset {
            break;
        }
        rank = c;
    }
    if !lset || lr > count {
        lr = count;
    }
    if !uset || ur > count {
        ur = count;
    }
    (ur - lr) / count
}

/// Relative float comparison as Prometheus's `almost.Equal`.
pub fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < eps * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

pub(crate) fn eval_call(
    ev: &mut Evaluator<'_>,
    c: &Call,
    r: &StepRange,
) -> Result<Value, QueryError> {
    let name = c.func.name;
    let times = r.times(ev.opts.max_steps)?;
    let n = times.len();
    let mut args = Vec::with_capacity(c.args.args.len());
    for a in &c.args.args {
        args.push(ev.eval(a, r)?);
    }
    let arg_expr = |i: usize| c.args.args.get(i).map(|b| b.as_ref());
    let matrix = |i: usize| matrix_arg(name, &args, i);
    let scalars = |i: usize| scalar_arg(name, &args, i);
    let map_vec = |v: Vec<Vec<Sample>>, f: &dyn Fn(f64, usize) -> f64| -> Value {
        Value::Vector(
            v.into_iter()
                .enumerate()
                .map(|(i, ss)| {
                    ss.into_iter()
                        .map(|mut s| {
                            s.f = f(s.f, i);
                            s.drop_name = true;
                            s
                        })
                        .collect()
                })
                .collect(),
        )
    };

    if let Some(f) = math_fn(name) {
        return Ok(map_vec(take_vector(&mut args, 0, name)?, &|v, _| f(v)));
    }
    if RANGE_FUNCTIONS.contains(&name) {
        let series = range_function(name, &args, &times)?;
        return Ok(Value::Vector(to_steps(series, &times)));
    }
    let v = match name {
        "absent_over_time" => {
            let m = matrix(0)?;
            let present = to_steps(
                over_range_series(m, &times, false, |_, _, _, _| Some(1.0)),
                &times,
            );
            let labels = absent_labels(arg_expr(0).unwrap_or(&Expr::from(0.0)));
            absent_result(present, &times, labels)
        }
        "absent" => {
            let v = take_vector(&mut args, 0, name)?;
            let labels = absent_labels(arg_expr(0).unwrap_or(&Expr::from(0.0)));
            absent_result(v, &times, labels)
        }
        "time" => Value::Scalar(times.iter().map(|t| *t as f64 / 1000.0).collect()),
        "pi" => Value::Scalar(vec![std::f64::consts::PI; n]),
        "step" => Value::Scalar(vec![ev.query_step as f64 / 1000.0; n]),
        "range" => Value::Scalar(vec![(ev.query_end - ev.query_start) as f64 / 1000.0; n]),
        "start" => Value::Scalar(vec![ev.query_start as f64 / 1000.0; n]),
        "end" => Value::Scalar(vec![ev.query_end as f64 / 1000.0; n]),
        "min_of" | "max_of" => {
            let (a, b) = (scalars(0)?, scalars(1)?);
            let max = name == "max_of";
            Value::Scalar(
                a.iter()
                    .zip(&b)
                    .map(|(x, y)| {
                        if x.is_nan() || y.is_nan() {
                            f64::NAN
                        } else if max {
                            x.max(*y)
                        } else {
                            x.min(*y)
                        }
                    })
                    .collect(),
            )
        }
        "vector" => {
            let s = scalars(0)?;
            Value::Vector(
                s.into_iter()
                    .zip(&times)
                    .map(|(f, t)| {
                        vec![Sample {
                            labels: Labels::new(),
                            f,
                            t: *t,
                            drop_name: false,
                        }]
                    })
                    .collect(),
            )
        }
        "scalar" => {
            let v = take_vector(&mut args, 0, name)?;
            Value::Scalar(
                v.into_iter()
                    .map(|ss| if ss.len() == 1 { ss[0].f } else { f64::NAN })
                    .collect(),
            )
        }
        "timestamp" => {
            let from_selector = matches!(arg_expr(0).map(unparen), Some(Expr::VectorSelector(_)));
            let v = take_vector(&mut args, 0, name)?;
            Value::Vector(
                v.into_iter()
                    .zip(&times)
                    .map(|(ss, t)| {
                        ss.into_iter()
                            .map(|mut s| {
                                s.f = if from_selector { s.t } else { *t } as f64 / 1000.0;
                                s.drop_name = true;
                                s
                            })
                            .collect()
                    })
                    .collect(),
            )
        }
        "round" => {
            let to = if args.len() > 1 {
                scalars(1)?
            } else {
                vec![1.0; n]
            };
            map_vec(take_vector(&mut args, 0, name)?, &|v, i| {
                let inv = 1.0 / to[i];
                (v * inv + 0.5).floor() / inv
            })
        }
        "clamp" => {
            let (lo, hi) = (scalars(1)?, scalars(2)?);
            let v = take_vector(&mut args, 0, name)?;
            Value::Vector(
                v.into_iter()
                    .enumerate()
                    .map(|(i, ss)| {
                        if hi[i] < lo[i] {
                            return Vec::new();
                        }
                        ss.into_iter()
                            .map(|mut s| {
                                s.f = s.f.max(lo[i]).min(hi[i]);
                                s.drop_name = true;
                                s
                            })
                            .collect()
                    })
                    .collect(),
            )
        }
        "clamp_min" => {
            let lo = scalars(1)?;
            map_vec(take_vector(&mut args, 0, name)?, &|v, i| v.max(lo[i]))
        }
        "clamp_max" => {
            let hi = scalars(1)?;
            map_vec(take_vector(&mut args, 0, name)?, &|v, i| v.min(hi[i]))
        }
        "year" | "month" | "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month"
        | "hour" | "minute" => {
            if args.is_empty() {
                Value::Vector(
                    times
                        .iter()
                        .map(|t| {
                            vec![Sample {
                                labels: Labels::new(),
                                f: date_fn(name, *t as f64 / 1000.0),
                                t: *t,
                                drop_name: false,
                            }]
                        })
                        .collect(),
                )
            } else {
                map_vec(take_vector(&mut args, 0, name)?, &|v, _| {
                    if v.is_finite() { date_fn(name, v) } else { v }
                })
            }
        }
        "label_replace" => {
            let v = take_vector(&mut args, 0, name)?;
            let dst = string_arg(&args, 1, name)?;
            let repl = string_arg(&args, 2, name)?;
            let src = string_arg(&args, 3, name)?;
            let re_s = string_arg(&args, 4, name)?;
            let re = Regex::new(&format!("^(?s:{re_s})$")).map_err(|e| {
                QueryError::exec(format!(
                    "invalid regular expression in label_replace(): {e}"
                ))
            })?;
            if !is_valid_label_name(&dst) {
                return Err(QueryError::exec(format!("invalid label name {dst:?}")));
            }
            let mut out = Vec::with_capacity(n);
            for ss in v {
                let mut step = Vec::with_capacity(ss.len());
                for mut s in ss {
                    let sv = s.labels.get(&src).unwrap_or("").to_string();
                    if let Some(caps) = re.captures(&sv) {
                        let mut res = String::new();
                        caps.expand(&repl, &mut res);
                        if res.is_empty() {
                            s.labels.remove(&dst);
                        } else {
                            s.labels.set(dst.clone(), res);
                        }
                        if dst == METRIC_NAME {
                            s.drop_name = false;
                        }
                    }
                    step.push(s);
                }
                check_dupes(&step)?;
                out.push(step);
            }
            Value::Vector(out)
        }
        "label_join" => {
            let v = take_vector(&mut args, 0, name)?;
            let dst = string_arg(&args, 1, name)?;
            let sep = string_arg(&args, 2, name)?;
            let mut srcs = Vec::new();
            for i in 3..args.len() {
                let s = string_arg(&args, i, name)?;
                if !is_valid_label_name(&s) {
                    return Err(QueryError::exec(format!("invalid label name {s:?}")));
                }
                srcs.push(s);
            }
            if !is_valid_label_name(&dst) {
                return Err(QueryError::exec(format!("invalid label name {dst:?}")));
            }
            let mut out = Vec::with_capacity(n);
            for ss in v {
                let mut step = Vec::with_capacity(ss.len());
                for mut s in ss {
                    let joined = srcs
                        .iter()
                        .map(|k| s.labels.get(k).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(&sep);
                    if joined.is_empty() {
                        s.labels.remove(&dst);
                    } else {
                        s.labels.set(dst.clone(), joined);
                    }
                    if dst == METRIC_NAME {
                        s.drop_name = false;
                    }
                    step.push(s);
                }
                check_dupes(&step)?;
                out.push(step);
            }
            Value::Vector(out)
        }
        "sort" | "sort_desc" => {
            let desc = name == "sort_desc";
            let mut v = take_vector(&mut args, 0, name)?;
            for ss in &mut v {
                ss.sort_by(|a, b| match (a.f.is_nan(), b.f.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => {
                        let o = a.f.partial_cmp(&b.f).unwrap_or(std::cmp::Ordering::Equal);
                        if desc { o.reverse() } else { o }
                    }
                });
            }
            Value::Vector(v)
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let desc = name == "sort_by_label_desc";
            let mut keys = Vec::new();
            for i in 1..args.len() {
                keys.push(string_arg(&args, i, name)?);
            }
            let mut v = take_vector(&mut args, 0, name)?;
            for ss in &mut v {
                ss.sort_by(|a, b| {
                    let mut o = std::cmp::Ordering::Equal;
                    for k in &keys {
                        o = natural_cmp(
                            a.labels.get(k).unwrap_or(""),
                            b.labels.get(k).unwrap_or(""),
                        );
                        if o != std::cmp::Ordering::Equal {
                            break;
                        }
                    }
                    if o == std::cmp::Ordering::Equal {
                        o = a.labels.cmp(&b.labels);
                    }
                    if desc { o.reverse() } else { o }
                });
            }
            Value::Vector(v)
        }
        "histogram_quantile" | "histogram_quantiles" | "histogram_fraction" => {
            // One calculation per output series of a group: the label it adds, and
            // its value from the group's buckets at step i.
            type Calc<'c> = Box<dyn Fn(usize, Vec<(f64, f64)>) -> f64 + 'c>;
            let mut calcs: Vec<(Option<(String, String)>, Calc)> = Vec::new();
            let vi = match name {
                "histogram_quantile" => {
                    let q = scalars(0)?;
                    calcs.push((None, Box::new(move |i, b| bucket_quantile(q[i], b))));
                    1
                }
                "histogram_fraction" => {
                    let (lo, hi) = (scalars(0)?, scalars(1)?);
                    calcs.push((None, Box::new(move |i, b| bucket_fraction(lo[i], hi[i], b))));
                    2
                }
                _ => {
                    let label = string_arg(&args, 1, name)?;
                    if !is_valid_label_name(&label) {
                        return Err(QueryError::exec(format!("invalid label name {label:?}")));
                    }
                    for k in 2..args.len() {
                        let q = scalars(k)?;
                        let lv = super::aggregate::go_float(q.first().copied().unwrap_or(f64::NAN));
                        calcs.push((
                            Some((label.clone(), lv)),
                            Box::new(move |i, b| bucket_quantile(q[i], b)),
                        ));
                    }
                    0
                }
            };
            let v = take_vector(&mut args, vi, name)?;
            // The histogram and bucket of each distinct input series, worked out once
            // for all steps: most steps hold the same series as the one before. The name
            // stays in a histogram's labels until the end, so buckets of different
            // histograms never mix (they clash there if only names told them apart).
            let mut member: LabelMap<Option<(usize, f64)>> = LabelMap::default();
            let mut histograms: LabelMap<usize> = LabelMap::default();
            let mut labels_of: Vec<Labels> = Vec::new();
            let mut buckets: Vec<Vec<(f64, f64)>> = Vec::new();
            // Histograms with buckets at this step, in order of their first bucket.
            let mut order: Vec<usize> = Vec::new();
            let mut out = Vec::with_capacity(n);
            for (i, ss) in v.into_iter().enumerate() {
                for s in ss {
                    let m = match member.get(&s.labels) {
                        Some(m) => *m,
                        None => {
                            let m = match s.labels.get("le").map(parse_le) {
                                Some(Ok(ub)) => {
                                    let mut key = s.labels.clone();
                                    key.remove("le");
                                    let h = match histograms.get(&key) {
                                        Some(&h) => h,
                                        None => {
                                            labels_of.push(key.clone());
                                            buckets.push(Vec::new());
                                            histograms.insert(key, labels_of.len() - 1);
                                            labels_of.len() - 1
                                        }
                                    };
                                    Some((h, ub))
                                }
                                _ => None,
                            };
                            member.insert(s.labels, m);
                            m
                        }
                    };
                    let Some((h, ub)) = m else {
                        continue;
                    };
                    if buckets[h].is_empty() {
                        order.push(h);
                    }
                    buckets[h].push((ub, s.f));
                }
                let mut step = Vec::with_capacity(order.len() * calcs.len());
                for &h in &order {
                    let b = std::mem::take(&mut buckets[h]);
                    for (extra, calc) in &calcs {
                        let mut l = labels_of[h].clone();
                        if let Some((k, v)) = extra {
                            l.set(k.clone(), v.clone());
                        }
                        step.push(Sample {
                            labels: l,
                            f: calc(i, b.clone()),
                            t: times[i],
                            drop_name: true,
                        });
                    }
                }
                order.clear();
                out.push(step);
            }
            Value::Vector(out)
        }
        other => {
            return Err(QueryError::exec(format!(
                "function {other}() is not supported"
            )));
        }
    };
    Ok(v)
}

fn parse_le(s: &str) -> Result<f64, std::num::ParseFloatError> {
    match s.trim() {
        "+Inf" | "Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        t => t.parse(),
    }
}

fn check_dupes(step: &[Sample]) -> Result<(), QueryError> {
    let mut seen = std::collections::HashSet::new();
    for s in step {
        let key = if s.drop_name {
            let mut l = s.labels.clone();
            l.remove(METRIC_NAME);
            l
        } else {
            s.labels.clone()
        };
        if !seen.insert(key) {
            return Err(QueryError::exec(
                "vector cannot contain metrics with the same labelset",
            ));
        }
    }
    Ok(())
}

fn absent_result(v: Vec<Vec<Sample>>, times: &[i64], labels: Labels) -> Value {
    Value::Vector(
        v.into_iter()
            .zip(times)
            .map(|(ss, t)| {
                if ss.is_empty() {
                    vec![Sample {
                        labels: labels.clone(),
                        f: 1.0,
                        t: *t,
                        drop_name: false,
                    }]
                } else {
                    Vec::new()
                }
            })
            .collect(),
    )
}
