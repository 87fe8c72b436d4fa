//! Binary operators: arithmetic, comparison (with and without `bool`), set operators,
//! and one-to-one / many-to-one / one-to-many vector matching.

use std::collections::{HashMap, HashSet};

use argus_common::model::Labels;
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::engine::{Evaluator, StepRange};
use super::value::{METRIC_NAME, QueryError, Sample, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "^" => Op::Pow,
            "atan2" => Op::Atan2,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            "<" => Op::Lt,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            "and" => Op::And,
            "or" => Op::Or,
            "unless" => Op::Unless,
            _ => return None,
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le)
    }

    fn is_set(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Unless)
    }
}

/// Applies `op` to two floats: the value, and for comparisons whether it holds.
fn apply(op: Op, l: f64, r: f64) -> (f64, bool) {
    match op {
        Op::Add => (l + r, true),
        Op::Sub => (l - r, true),
        Op::Mul => (l * r, true),
        Op::Div => (l / r, true),
        Op::Mod => (l % r, true),
        Op::Pow => (l.powf(r), true),
        Op::Atan2 => (l.atan2(r), true),
        Op::Eq => (l, l == r),
        Op::Ne => (l, l != r),
        Op::Gt => (l, l > r),
        Op::Lt => (l, l < r),
        Op::Ge => (l, l >= r),
        Op::Le => (l, l <= r),
        Op::And | Op::Or | Op::Unless => (l, true),
    }
}

pub(crate) fn eval_binary(
    ev: &mut Evaluator<'_>,
    b: &BinaryExpr,
    r: &StepRange,
) -> Result<Value, QueryError> {
    let op_s = b.op.to_string();
    let op =
        Op::parse(&op_s).ok_or_else(|| QueryError::exec(format!("unknown operator {op_s}")))?;
    let return_bool = b.return_bool();
    let lhs = ev.eval(&b.lhs, r)?;
    let rhs = ev.eval(&b.rhs, r)?;
    match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(rv)) => Ok(Value::Scalar(
            l.into_iter()
                .zip(rv)
                .map(|(a, c)| {
                    let (v, keep) = apply(op, a, c);
                    if op.is_comparison() {
                        if keep { 1.0 } else { 0.0 }
                    } else {
                        v
                    }
                })
                .collect(),
        )),
        (Value::Vector(l), Value::Scalar(s)) => {
            Ok(Value::Vector(vector_scalar(op, return_bool, l, &s, false)))
        }
        (Value::Scalar(s), Value::Vector(rv)) => {
            Ok(Value::Vector(vector_scalar(op, return_bool, rv, &s, true)))
        }
        (Value::Vector(l), Value::Vector(rv)) => {
            let card = b
                .modifier
                .as_ref()
                .map(|m| m.card.clone())
                .unwrap_or(VectorMatchCardinality::OneToOne);
            let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
            let mut out = Vec::with_capacity(l.len());
            for (ls, rs) in l.into_iter().zip(rv) {
                out.push(if op.is_set() {
                    set_op(op, ls, rs, matching.as_ref())
                } else {
                    vector_vector(op, return_bool, ls, rs, &card, matching.as_ref())?
                });
            }
            Ok(Value::Vector(out))
        }
        _ => Err(QueryError::exec(format!(
            "operator {op_s} is not defined on these operand types"
        ))),
    }
}

fn vector_scalar(
    op: Op,
    return_bool: bool,
    steps: Vec<Vec<Sample>>,
    scalars: &[f64],
    swap: bool,
) -> Vec<Vec<Sample>> {
    steps
        .into_iter()
        .zip(scalars)
        .map(|(ss, &sc)| {
            ss.into_iter()
                .filter_map(|mut s| {
                    let (l, r) = if swap { (sc, s.f) } else { (s.f, sc) };
                    let (mut v, keep) = apply(op, l, r);
                    if op.is_comparison() {
                        if return_bool {
                            v = if keep { 1.0 } else { 0.0 };
                        } else if !keep {
                            return None;
                        } else {
                            v = s.f;
                        }
                    }
                    if !op.is_comparison() || return_bool {
                        s.drop_name = true;
                    }
                    s.f = v;
                    Some(s)
                })
                .collect()
        })
        .collect()
}

/// The matching key of a sample: `on` keeps the listed labels, `ignoring` (and no
/// modifier) drops them and always `__name__`.
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(on)) => Labels::from_pairs(
            labels
                .iter()
                .filter(|(k, _)| on.labels.iter().any(|x| x == k)),
        ),
        Some(LabelModifier::Exclude(ign)) => Labels::from_pairs(
            labels
                .iter()
                .filter(|(k, _)| *k != METRIC_NAME && !ign.labels.iter().any(|x| x == k)),
        ),
        None => Labels::from_pairs(labels.iter().filter(|(k, _)| *k != METRIC_NAME)),
    }
}

fn set_op(
    op: Op,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    matching: Option<&LabelModifier>,
) -> Vec<Sample> {
    match op {
        Op::And => {
            let right: HashSet<Labels> =
                rhs.iter().map(|s| signature(&s.labels, matching)).collect();
            lhs.into_iter()
                .filter(|s| right.contains(&signature(&s.labels, matching)))
                .collect()
        }
        Op::Unless => {
            let right: HashSet<Labels> =
                rhs.iter().map(|s| signature(&s.labels, matching)).collect();
            lhs.into_iter()
                .filter(|s| !right.contains(&signature(&s.labels, matching)))
                .collect()
        }
        _ => {
            let left: HashSet<Labels> =
                lhs.iter().map(|s| signature(&s.labels, matching)).collect();
            let mut out = lhs;
            out.extend(
                rhs.into_iter()
                    .filter(|s| !left.contains(&signature(&s.labels, matching))),
            );
            out
        }
    }
}

fn show(l: &Labels) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in l.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!("{k}=\"{v}\""));
    }
    s.push('}');
    s
}

fn vector_vector(
    op: Op,
    return_bool: bool,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    card: &VectorMatchCardinality,
    matching: Option<&LabelModifier>,
) -> Result<Vec<Sample>, QueryError> {
    if matches!(card, VectorMatchCardinality::ManyToMany) {
        return Err(QueryError::exec(
            "many-to-many only allowed for set operators",
        ));
    }
    let swap = matches!(card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if swap { (rhs, lhs) } else { (lhs, rhs) };
    let include: Vec<String> = match card {
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
            l.labels.clone()
        }
        _ => Vec::new(),
    };
    let mut one_by_sig: HashMap<Labels, usize> = HashMap::new();
    for (i, s) in one.iter().enumerate() {
        let sig = signature(&s.labels, matching);
        if let Some(&j) = one_by_sig.get(&sig) {
            let side = if swap { "left" } else { "right" };
            return Err(QueryError::exec(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                show(&sig),
                show(&one[j].labels),
                show(&s.labels)
            )));
        }
        one_by_sig.insert(sig, i);
    }
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    let mut matched_many: HashSet<Labels> = HashSet::new();
    let mut out_labels: HashSet<Labels> = HashSet::new();
    let mut out = Vec::new();
    for ms in many {
        let sig = signature(&ms.labels, matching);
        let Some(&oi) = one_by_sig.get(&sig) else {
            continue;
        };
        let os = &one[oi];
        if one_to_one && !matched_many.insert(sig.clone()) {
            return Err(QueryError::exec(format!(
                "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right): {}",
                show(&sig)
            )));
        }
        let (fl, fr) = if swap { (os.f, ms.f) } else { (ms.f, os.f) };
        let (mut v, keep) = apply(op, fl, fr);
        if return_bool {
            v = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        // Result labels.
        let mut labels = ms.labels.clone();
        let drop_name = ms.drop_name || !op.is_comparison() || return_bool;
        if one_to_one {
            match matching {
                Some(LabelModifier::Include(on)) => {
                    labels = Labels::from_pairs(
                        labels
                            .iter()
                            .filter(|(k, _)| on.labels.iter().any(|x| x == k)),
                    );
                }
                Some(LabelModifier::Exclude(ign)) => {
                    for k in &ign.labels {
                        labels.remove(k);
                    }
                }
                None => {}
            }
        } else {
            for k in &include {
                match os.labels.get(k) {
                    Some(v) => labels.set(k.clone(), v),
                    None => {
                        labels.remove(k);
                    }
                }
            }
        }
        if !one_to_one {
            let key = if drop_name {
                let mut l = labels.clone();
                l.remove(METRIC_NAME);
                l
            } else {
                labels.clone()
            };
            if !out_labels.insert(key) {
                return Err(QueryError::exec(
                    "multiple matches for labels: grouping labels must ensure unique matches",
                ));
            }
        }
        out.push(Sample {
            labels,
            f: v,
            t: ms.t,
            drop_name,
        });
    }
    Ok(out)
}
