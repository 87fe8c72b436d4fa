//! Aggregation operators with `by` / `without`.

use std::collections::HashMap;

use argus_common::model::{Labels, is_valid_label_name};
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use super::engine::{Evaluator, StepRange};
use super::functions::{SeriesSteps, eval_call_series};
use super::tiered;
use super::value::{METRIC_NAME, QueryError, Sample, Value};

/// Maps keyed by label sets, hashed with foldhash (randomly seeded): the engine hashes
/// a label set per sample and step, where SipHash showed in profiles.
pub(crate) type LabelMap<V> = HashMap<Labels, V, foldhash::fast::RandomState>;

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

/// Neumaier's compensated addition, as Prometheus sums: returns the new sum and
/// compensation, so large and small addends do not cancel each other out.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Mean with Kahan summation, switching to an incremental mean on overflow, as
/// Prometheus's `avg` and `avg_over_time` do.
pub(crate) fn kahan_mean(values: impl Iterator<Item = f64>) -> f64 {
    let mut values = values;
    let Some(first) = values.next() else {
        return f64::NAN;
    };
    let (mut sum, mut c, mut n) = (first, 0.0f64, 1.0f64);
    let mut incremental = false;
    let mut mean = first;
    for v in values {
        n += 1.0;
        if !incremental {
            let (ns, nc) = kahan_inc(v, sum, c);
            if !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (n - 1.0);
            c /= n - 1.0;
        }
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        let cur = mean + c;
        let (nm, nc) = kahan_inc(v / n - cur / n, mean, c);
        mean = nm;
        c = nc;
    }
    if incremental { mean + c } else { (sum + c) / n }
}

/// Prometheus's `quantile`: linear interpolation between closest ranks; NaN sorts first.
pub(crate) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(nan_first);
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

fn nan_first(a: &f64, b: &f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// Formats a float as Go's `strconv.FormatFloat(f, 'f', -1, 64)` does.
pub(crate) fn go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{f}")
    }
}

pub(crate) fn group_key(labels: &Labels, m: Option<&LabelModifier>) -> Labels {
    match m {
        None => Labels::new(),
        Some(LabelModifier::Include(by)) => Labels::from_pairs(
            labels
                .iter()
                .filter(|(k, _)| by.labels.iter().any(|x| x == k)),
        ),
        Some(LabelModifier::Exclude(w)) => Labels::from_pairs(
            labels
                .iter()
                .filter(|(k, _)| *k != METRIC_NAME && !w.labels.iter().any(|x| x == k)),
        ),
    }
}

pub(crate) fn eval_aggregate(
    ev: &mut Evaluator<'_>,
    a: &AggregateExpr,
    r: &StepRange,
) -> Result<Value, QueryError> {
    let op = a.op.to_string();
    let param = match &a.param {
        Some(p) => Some(ev.eval(p, r)?),
        None => None,
    };
    let inner = match unparen(&a.expr) {
        // A range function answered from raw samples is reduced series by series; one
        // that an aggregate tier answers (old data) comes as samples, as it does alone.
        Expr::Call(c) if REDUCING.contains(&op.as_str()) => match tiered::eval_call(ev, c, r)? {
            Some(v) => v,
            None => match eval_call_series(ev, c, r)? {
                Some(series) => {
                    return reduce_series(
                        &op,
                        series,
                        param.as_ref(),
                        a.modifier.as_ref(),
                        r.len(),
                    );
                }
                None => ev.eval(&a.expr, r)?,
            },
        },
        _ => ev.eval(&a.expr, r)?,
    };
    let Value::Vector(steps) = inner else {
        return Err(QueryError::exec(format!(
            "expected instant vector in aggregation {op}"
        )));
    };
    let modifier = a.modifier.as_ref();
    let mut out = Vec::with_capacity(steps.len());
    for (i, samples) in steps.into_iter().enumerate() {
        // Names marked for dropping stay in the grouping key (Prometheus 3's delayed
        // removal); a group drops its name if any of its members does.
        let scalar_param = match &param {
            Some(Value::Scalar(v)) => v.get(i).copied(),
            _ => None,
        };
        let res = match op.as_str() {
            "topk" | "bottomk" | "limitk" => {
                let k = scalar_param.unwrap_or(f64::NAN);
                if k.is_nan() {
                    return Err(QueryError::exec("Parameter value is NaN"));
                }
                let k = if k >= 9.0e18 {
                    usize::MAX
                } else if k < 1.0 {
                    0
                } else {
                    k as usize
                };
                select_k(&op, k, samples, modifier)
            }
            "limit_ratio" => {
                let ratio = scalar_param.unwrap_or(f64::NAN);
                if ratio.is_nan() {
                    return Err(QueryError::exec("Ratio value is NaN"));
                }
                let ratio = ratio.clamp(-1.0, 1.0);
                samples
                    .into_iter()
                    .filter(|s| {
                        let off = label_hash(&s.labels) as f64 / u64::MAX as f64;
                        if ratio >= 0.0 {
                            off < ratio
                        } else {
                            off >= 1.0 + ratio
                        }
                    })
                    .collect()
            }
            "count_values" => {
                let Some(Value::Str(label)) = &param else {
                    return Err(QueryError::exec("count_values needs a string parameter"));
                };
                if !is_valid_label_name(label) {
                    return Err(QueryError::exec(format!("invalid label name {label:?}")));
                }
                let mut idx: LabelMap<usize> = LabelMap::default();
                let mut res: Vec<Sample> = Vec::new();
                for s in samples {
                    let mut key = group_key(&s.labels, modifier);
                    key.set(label.clone(), go_float(s.f));
                    let j = *idx.entry(key.clone()).or_insert_with(|| {
                        res.push(Sample {
                            labels: key,
                            f: 0.0,
                            t: s.t,
                            drop_name: false,
                        });
                        res.len() - 1
                    });
                    res[j].f += 1.0;
                }
                res
            }
            _ => {
                let mut idx: LabelMap<usize> = LabelMap::default();
                let mut groups: Vec<(Labels, Vec<f64>, bool)> = Vec::new();
                for s in samples {
                    let key = group_key(&s.labels, modifier);
                    let j = *idx.entry(key.clone()).or_insert_with(|| {
                        groups.push((key, Vec::new(), false));
                        groups.len() - 1
                    });
                    groups[j].1.push(s.f);
                    groups[j].2 |= s.drop_name;
                }
                let mut res = Vec::with_capacity(groups.len());
                for (labels, mut vals, drop_name) in groups {
                    let f = reduce(&op, &mut vals, scalar_param)?;
                    let drop_name = drop_name && labels.get(METRIC_NAME).is_some();
                    res.push(Sample {
                        labels,
                        f,
                        t: 0,
                        drop_name,
                    });
                }
                res
            }
        };
        out.push(res);
    }
    Ok(Value::Vector(out))
}

/// Aggregations that reduce each group to one value, with nothing but the values.
const REDUCING: [&str; 9] = [
    "sum", "avg", "count", "group", "min", "max", "stddev", "stdvar", "quantile",
];

/// One group's value for a [`REDUCING`] aggregation; `vals` are in input order (it
/// decides the order of float additions) and are not empty.
fn reduce(op: &str, vals: &mut Vec<f64>, scalar_param: Option<f64>) -> Result<f64, QueryError> {
    Ok(match op {
        "sum" => {
            let (mut s, mut c) = (0.0, 0.0);
            for v in vals.iter() {
                (s, c) = kahan_inc(*v, s, c);
            }
            s + c
        }
        "avg" => kahan_mean(vals.iter().copied()),
        "count" => vals.len() as f64,
        "group" => 1.0,
        "min" => vals
            .iter()
            .skip(1)
            .fold(vals[0], |m, &v| if m > v || m.is_nan() { v } else { m }),
        "max" => vals
            .iter()
            .skip(1)
            .fold(vals[0], |m, &v| if m < v || m.is_nan() { v } else { m }),
        "stddev" | "stdvar" => {
            let (mut n, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
            for &v in vals.iter() {
                n += 1.0;
                let d = v - mean;
                mean += d / n;
                m2 += d * (v - mean);
            }
            let var = m2 / n;
            if op == "stddev" { var.sqrt() } else { var }
        }
        "quantile" => quantile(scalar_param.unwrap_or(f64::NAN), std::mem::take(vals)),
        other => {
            return Err(QueryError::exec(format!("unsupported aggregation {other}")));
        }
    })
}

/// A [`REDUCING`] aggregation over a range function's result kept per series: the group
/// of each series is worked out once instead of once per step, and no sample (with
/// its copy of the labels) is made for the inner function. Same answer as the general
/// path: per step, groups in order of their first member, values in series order.
fn reduce_series(
    op: &str,
    series: Vec<SeriesSteps>,
    param: Option<&Value>,
    modifier: Option<&LabelModifier>,
    steps: usize,
) -> Result<Value, QueryError> {
    let mut idx: LabelMap<usize> = LabelMap::default();
    let mut keys: Vec<Labels> = Vec::new();
    let group_of: Vec<usize> = series
        .iter()
        .map(|s| {
            let key = group_key(&s.labels, modifier);
            match idx.get(&key) {
                Some(&g) => g,
                None => {
                    keys.push(key.clone());
                    idx.insert(key, keys.len() - 1);
                    keys.len() - 1
                }
            }
        })
        .collect();
    let mut vals: Vec<Vec<f64>> = vec![Vec::new(); keys.len()];
    let mut drop_names = vec![false; keys.len()];
    let mut order: Vec<usize> = Vec::new();
    let mut out = Vec::with_capacity(steps);
    for i in 0..steps {
        let scalar_param = match param {
            Some(Value::Scalar(v)) => v.get(i).copied(),
            _ => None,
        };
        for (s, &g) in series.iter().zip(&group_of) {
            if let Some(Some(v)) = s.values.get(i) {
                if vals[g].is_empty() {
                    order.push(g);
                }
                vals[g].push(*v);
                drop_names[g] |= s.drop_name;
            }
        }
        let mut res = Vec::with_capacity(order.len());
        for &g in &order {
            let f = reduce(op, &mut vals[g], scalar_param)?;
            vals[g].clear();
            let labels = keys[g].clone();
            let drop_name = std::mem::take(&mut drop_names[g]) && labels.get(METRIC_NAME).is_some();
            res.push(Sample {
                labels,
                f,
                t: 0,
                drop_name,
            });
        }
        order.clear();
        out.push(res);
    }
    Ok(Value::Vector(out))
}

/// FNV-1a over the labels: a stable per-series number for `limit_ratio`.
fn label_hash(l: &Labels) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for (k, v) in l.iter() {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

fn select_k(op: &str, k: usize, samples: Vec<Sample>, m: Option<&LabelModifier>) -> Vec<Sample> {
    let mut idx: LabelMap<usize> = LabelMap::default();
    let mut groups: Vec<Vec<Sample>> = Vec::new();
    for s in samples {
        let key = group_key(&s.labels, m);
        let j = *idx.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[j].push(s);
    }
    let mut out = Vec::new();
    for mut g in groups {
        match op {
            "topk" => g.sort_by(|a, b| nan_first(&b.f, &a.f)),
            "bottomk" => g.sort_by(|a, b| {
                // NaN sorts last for bottomk as well.
                match (a.f.is_nan(), b.f.is_nan()) {
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => a.f.partial_cmp(&b.f).unwrap_or(std::cmp::Ordering::Equal),
                }
            }),
            _ => {}
        }
        g.truncate(k);
        out.extend(g);
    }
    out
}

#[cfg(test)]
mod tests {
    use argus_common::model::{Labels, stale_nan};
    use promql_parser::parser::parse;

    use crate::query::{EvalOptions, MemStore, QueryValue, range_query};

    /// Counters and gauges with what makes grouping per step differ from step to step:
    /// series that start late or end early, a counter reset, a stale marker, a NaN.
    fn store() -> MemStore {
        let mut m = MemStore::new();
        for inst in 0..4 {
            for (k, mode) in ["idle", "user", "system"].iter().enumerate() {
                let labels = Labels::from_pairs([
                    ("__name__", "m"),
                    ("inst", &format!("i{inst}") as &str),
                    ("mode", mode),
                ]);
                let (from, to) = match (inst, k) {
                    (1, 0) => (40, 160),
                    (2, 1) => (0, 90),
                    _ => (0, 160),
                };
                let samples = (from..to).map(|j| {
                    let t = j * 15_000 + 1_000 * inst;
                    let v = match (inst, k, j) {
                        (3, 2, 70) => f64::NAN,
                        (0, 1, 100) => stale_nan(),
                        (2, 2, j) if j >= 80 => (j - 80) as f64 * 0.5,
                        _ => (j * (k as i64 + 1) * (inst + 2)) as f64 * 0.25,
                    };
                    (t, v)
                });
                m.add(labels, samples);
            }
        }
        m.add(
            Labels::from_pairs([("__name__", "other"), ("inst", "i0"), ("mode", "idle")]),
            (0..160).map(|j| (j * 15_000, 1.0)),
        );
        m
    }

    fn run(m: &MemStore, q: &str) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let expr = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        match range_query(m, &expr, 0, 2_400_000, 30_000, &EvalOptions::default()) {
            Ok(QueryValue::Matrix(series)) => {
                series.into_iter().map(|s| (s.labels, s.samples)).collect()
            }
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn reducing_a_range_function_per_series_answers_as_per_step() {
        let m = store();
        let mut checked = 0;
        for (open, param) in [
            ("sum", ""),
            ("avg", ""),
            ("count", ""),
            ("group", ""),
            ("min", ""),
            ("max", ""),
            ("stddev", ""),
            ("stdvar", ""),
            ("quantile", "0.3,"),
        ] {
            for modifier in ["", " by (mode)", " without (inst)", " by (__name__, mode)"] {
                for f in [
                    "rate(m[2m])",
                    "last_over_time(m[1m])",
                    "max_over_time(m[90s])",
                ] {
                    // `+ 0` makes the argument a binary expression, which takes the
                    // per-step path; the value is the same (0 + x = x).
                    let fused = format!("{open}{modifier}({param} {f})");
                    let stepwise = format!("{open}{modifier}({param} {f} + 0)");
                    let (a, b) = (run(&m, &fused), run(&m, &stepwise));
                    let a_labels: Vec<&Labels> = a.iter().map(|s| &s.0).collect();
                    let b_labels: Vec<&Labels> = b.iter().map(|s| &s.0).collect();
                    if modifier.contains("__name__") && f.starts_with("last") {
                        // last_over_time keeps the name, `+ 0` drops it: only the values
                        // can be compared.
                        assert_eq!(a.len(), b.len(), "{fused}");
                    } else {
                        assert_eq!(a_labels, b_labels, "{fused}");
                    }
                    assert!(!a.is_empty(), "{fused}: no answer");
                    for ((_, x), (_, y)) in a.iter().zip(&b) {
                        assert_eq!(x.len(), y.len(), "{fused}");
                        for (p, q) in x.iter().zip(y) {
                            let same = p.1 == q.1 || (p.1.is_nan() && q.1.is_nan());
                            assert!(p.0 == q.0 && same, "{fused}: {p:?} vs {q:?}");
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 9 * 4 * 3);
    }
}
