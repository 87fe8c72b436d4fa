//! Runs Prometheus's own PromQL test scripts (the promqltest `load` / `eval` / `expect` /
//! `clear` format) against our engine, and fails if fewer blocks pass than the count kept
//! in `promql_conformance.baseline`, so conformance only ever rises.
//!
//! Blocks that need native histograms (`{{...}}` values, `load_with_nhcb` data) are
//! skipped one by one and counted; `expect info` / `expect warn` are ignored; for an
//! expected failure only the failing is checked, not the message's wording.

use std::path::{Path, PathBuf};

use argus_common::model::{Labels, stale_nan};
use argus_coordinator::query::{EvalOptions, MemStore, QueryValue, instant_query, range_query};
use argus_coordinator::tsdb::{MatchOp, Matcher};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{Expr, parse};

const EPSILON: f64 = 1e-6;

fn tests_dir() -> PathBuf {
    match std::env::var_os("ARGUS_PROMQL_TESTS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/promql-tests"
        )),
    }
}

/// promqltest's `almost.Equal`.
fn almost_equal(a: f64, b: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < EPSILON * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < EPSILON
}

/// Durations as Prometheus writes them (`1h30m`, `10s53ms`), or plain seconds.
fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(f) = s.parse::<f64>() {
        return Some((f * 1000.0).round() as i64);
    }
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let mut total: i64 = 0;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n: i64 = s[st..i].parse().ok()?;
        let us = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult = match &s[us..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total += n * mult;
    }
    Some(if neg { -total } else { total })
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        "stale" => Some(stale_nan()),
        _ => {
            if let Some(h) = s.strip_prefix("0x") {
                return i64::from_str_radix(h, 16).ok().map(|v| v as f64);
            }
            s.parse().ok()
        }
    }
}

/// One expanded value: `None` is an omitted (`_`) point.
type SeqValue = Option<f64>;

/// Expands promqltest value notation: `1 2 _ stale`, `a+bxn`, `a-bxn`, `axn`, `_xn`.
/// `Err(true)` means a native histogram appeared.
fn expand_values(text: &str) -> Result<Vec<SeqValue>, bool> {
    if text.contains("{{") {
        return Err(true);
    }
    let mut out = Vec::new();
    for tok in text.split_whitespace() {
        if let Some((base, times)) = tok.rsplit_once('x')
            && let Ok(n) = times.parse::<usize>()
        {
            if base == "_" {
                out.extend(std::iter::repeat_n(None, n));
                continue;
            }
            // a+b, a-b (the sign of b is found after the first character), or a.
            let (a, d) = match base
                .get(1..)
                .and_then(|b| b.find(['+', '-']))
                .map(|p| p + 1)
            {
                Some(p) if !base[..p].ends_with(['e', 'E']) => {
                    let a = parse_float(&base[..p]).ok_or(false)?;
                    let d = parse_float(&base[p + 1..]).ok_or(false)?;
                    (a, if &base[p..=p] == "-" { -d } else { d })
                }
                _ => (parse_float(base).ok_or(false)?, 0.0),
            };
            for k in 0..=n {
                out.push(Some(a + d * k as f64));
            }
            continue;
        }
        if tok == "_" {
            out.push(None);
        } else {
            out.push(Some(parse_float(tok).ok_or(false)?));
        }
    }
    Ok(out)
}

/// Parses `name{a="b", ...} rest` or `{...} rest`; returns labels and the rest.
fn parse_series(line: &str) -> Option<(Labels, &str)> {
    let line = line.trim();
    let mut labels = Labels::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
        i += 1;
    }
    if i > 0 {
        labels.set("__name__", &line[..i]);
    }
    if i < b.len() && b[i] == b'{' {
        i += 1;
        loop {
            while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
                i += 1;
            }
            if i >= b.len() {
                return None;
            }
            if b[i] == b'}' {
                i += 1;
                break;
            }
            let (name, ni) = if b[i] == b'"' {
                let (s, ni) = parse_quoted(line, i)?;
                (s, ni)
            } else {
                let st = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                (line[st..i].to_string(), i)
            };
            i = ni;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i < b.len() && b[i] == b'=' {
                i += 1;
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
                let (v, ni) = parse_quoted(line, i)?;
                i = ni;
                labels.set(name, v);
            } else {
                labels.set("__name__", name);
            }
        }
    } else if i == 0 {
        return None;
    }
    Some((labels, &line[i..]))
}

fn parse_quoted(s: &str, start: usize) -> Option<(String, usize)> {
    let b = s.as_bytes();
    let q = *b.get(start)?;
    if q != b'"' && q != b'\'' && q != b'`' {
        return None;
    }
    let mut out = Vec::new();
    let mut i = start + 1;
    while i < b.len() {
        let c = b[i];
        if c == q {
            return Some((String::from_utf8_lossy(&out).into_owned(), i + 1));
        }
        if c == b'\\' && q != b'`' && i + 1 < b.len() {
            i += 1;
            match b[i] {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'"' => out.push(b'"'),
                b'\'' => out.push(b'\''),
                other => {
                    out.push(b'\\');
                    out.push(other);
                }
            }
        } else {
            out.push(c);
        }
        i += 1;
    }
    None
}

#[derive(Debug)]
enum Expect {
    /// Expected series (labels, values); a scalar is one entry with no labels.
    Values(Vec<(Labels, Vec<SeqValue>)>),
    Scalar(f64),
    Str(String),
}

#[derive(Debug)]
struct Eval {
    line: usize,
    expr: String,
    start: i64,
    end: i64,
    step: i64,
    range: bool,
    fail: bool,
    ordered: bool,
    expect: Expect,
    needs_histograms: bool,
}

#[derive(Default)]
struct Tally {
    pass: usize,
    fail: usize,
    skipped: usize,
    failures: Vec<String>,
}

fn collect_selectors<'a>(e: &'a Expr, out: &mut Vec<&'a promql_parser::parser::VectorSelector>) {
    match e {
        Expr::Aggregate(a) => {
            collect_selectors(&a.expr, out);
            if let Some(p) = &a.param {
                collect_selectors(p, out);
            }
        }
        Expr::Unary(u) => collect_selectors(&u.expr, out),
        Expr::Binary(b) => {
            collect_selectors(&b.lhs, out);
            collect_selectors(&b.rhs, out);
        }
        Expr::Paren(p) => collect_selectors(&p.expr, out),
        Expr::Subquery(s) => collect_selectors(&s.expr, out),
        Expr::VectorSelector(v) => out.push(v),
        Expr::MatrixSelector(m) => out.push(&m.vs),
        Expr::Call(c) => {
            for a in &c.args.args {
                collect_selectors(a, out);
            }
        }
        _ => {}
    }
}

/// Whether any selector of `expr` matches a series that holds native histograms.
fn touches(expr: &Expr, hist: &MemStore) -> bool {
    let mut sels = Vec::new();
    collect_selectors(expr, &mut sels);
    sels.iter().any(|vs| {
        let groups: Vec<&Vec<promql_parser::label::Matcher>> = if vs.matchers.or_matchers.is_empty()
        {
            vec![&vs.matchers.matchers]
        } else {
            vs.matchers.or_matchers.iter().collect()
        };
        groups.iter().any(|g| {
            let mut ms = Vec::new();
            if let Some(n) = &vs.name {
                ms.push(Matcher::equal("__name__", n.clone()));
            }
            for m in g.iter() {
                let op = match m.op {
                    PMatchOp::Equal => MatchOp::Equal,
                    PMatchOp::NotEqual => MatchOp::NotEqual,
                    PMatchOp::Re(_) => MatchOp::RegexMatch,
                    PMatchOp::NotRe(_) => MatchOp::RegexNoMatch,
                };
                match Matcher::new(op, m.name.clone(), m.value.clone()) {
                    Ok(x) => ms.push(x),
                    Err(_) => return false,
                }
            }
            hist.matching(&ms).next().is_some()
        })
    })
}

fn run_eval(store: &MemStore, ev: &Eval) -> Result<(), String> {
    let expr = match parse(&ev.expr) {
        Ok(e) => e,
        Err(e) => {
            return if ev.fail {
                Ok(())
            } else {
                Err(format!("parse error: {e}"))
            };
        }
    };
    let opts = EvalOptions::default();
    let res = if ev.range {
        range_query(store, &expr, ev.start, ev.end, ev.step, &opts)
    } else {
        instant_query(store, &expr, ev.start, &opts)
    };
    let res = match (res, ev.fail) {
        (Err(_), true) => return Ok(()),
        (Ok(_), true) => return Err("expected an error, got a result".into()),
        (Err(e), false) => return Err(format!("error: {e}")),
        (Ok(r), false) => r,
    };
    // Results as (labels, points).
    let got: Vec<(Labels, Vec<(i64, f64)>)> = match (&res, &ev.expect) {
        (QueryValue::String { s, .. }, Expect::Str(want)) => {
            return if s == want {
                Ok(())
            } else {
                Err(format!("string {s:?}, want {want:?}"))
            };
        }
        (_, Expect::Str(want)) => return Err(format!("got {res:?}, want string {want:?}")),
        (QueryValue::Scalar { v, .. }, Expect::Scalar(want)) => {
            return if almost_equal(*v, *want) {
                Ok(())
            } else {
                Err(format!("scalar {v}, want {want}"))
            };
        }
        (QueryValue::Scalar { v, .. }, Expect::Values(w)) if w.is_empty() => {
            return Err(format!("scalar {v}, want an empty vector"));
        }
        (_, Expect::Scalar(want)) => return Err(format!("got {res:?}, want scalar {want}")),
        (QueryValue::Vector(v), _) => v
            .iter()
            .map(|s| (s.labels.clone(), vec![(s.t, s.v)]))
            .collect(),
        (QueryValue::Matrix(m), _) => m
            .iter()
            .map(|s| (s.labels.clone(), s.samples.clone()))
            .collect(),
        (other, _) => return Err(format!("unexpected result {other:?}")),
    };
    let Expect::Values(want) = &ev.expect else {
        return Err("unreachable expectation".into());
    };
    if got.len() != want.len() {
        return Err(format!(
            "{} series, want {}: got {:?}",
            got.len(),
            want.len(),
            got.iter().map(|g| g.0.to_string()).collect::<Vec<_>>()
        ));
    }
    let instant_matrix = !ev.range && matches!(res, QueryValue::Matrix(_));
    for (gi, (gl, gp)) in got.iter().enumerate() {
        let Some(wi) = want.iter().position(|w| &w.0 == gl) else {
            return Err(format!("unexpected series {gl}"));
        };
        if ev.ordered && wi != gi {
            return Err(format!("series {gl} at position {gi}, want {wi}"));
        }
        let wv = &want[wi].1;
        let expected: Vec<(i64, f64)> = if ev.range {
            wv.iter()
                .enumerate()
                .filter_map(|(k, v)| v.map(|v| (ev.start + k as i64 * ev.step, v)))
                .collect()
        } else if instant_matrix {
            // Values only; the points' timestamps follow the data.
            let vals: Vec<f64> = wv.iter().flatten().copied().collect();
            if vals.len() != gp.len() || !vals.iter().zip(gp).all(|(a, b)| almost_equal(*a, b.1)) {
                return Err(format!(
                    "{gl}: got {:?}, want {vals:?}",
                    gp.iter().map(|p| p.1).collect::<Vec<_>>()
                ));
            }
            continue;
        } else {
            wv.iter().flatten().map(|v| (ev.start, *v)).collect()
        };
        let same = expected.len() == gp.len()
            && expected
                .iter()
                .zip(gp)
                .all(|(a, b)| a.0 == b.0 && almost_equal(a.1, b.1));
        if !same {
            return Err(format!("{gl}: got {gp:?}, want {expected:?}"));
        }
    }
    Ok(())
}

fn run_file(path: &Path, tally: &mut Tally) -> (usize, usize, usize) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut store = MemStore::new();
    let mut hist = MemStore::new();
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    let mut i = 0;
    let is_body = |l: &str| {
        !l.trim().is_empty()
            && (l.starts_with(' ') || l.starts_with('\t'))
            && !l.trim_start().starts_with('#')
    };
    while i < lines.len() {
        let line = lines[i].trim_end();
        let t = line.trim();
        i += 1;
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut words = t.split_whitespace();
        let cmd = words.next().unwrap_or("");
        if cmd == "clear" {
            store.clear();
            hist.clear();
            continue;
        }
        if cmd == "load" || cmd == "load_with_nhcb" {
            let nhcb = cmd == "load_with_nhcb";
            let interval = words.next().and_then(parse_duration_ms).unwrap_or(60_000);
            while i < lines.len() && (is_body(lines[i]) || lines[i].trim_start().starts_with('#')) {
                let l = lines[i];
                i += 1;
                if l.trim_start().starts_with('#') {
                    continue;
                }
                let Some((labels, rest)) = parse_series(l) else {
                    continue;
                };
                match expand_values(rest) {
                    Ok(vals) => {
                        if nhcb {
                            // Prometheus also loads a native histogram with custom
                            // buckets under the base name; queries on it are skipped.
                            let mut h = labels.clone();
                            h.remove("le");
                            if let Some(n) = h.get("__name__").map(str::to_string) {
                                for suffix in ["_bucket", "_count", "_sum"] {
                                    if let Some(b) = n.strip_suffix(suffix) {
                                        h.set("__name__", b);
                                    }
                                }
                            }
                            hist.add(h, std::iter::empty());
                        }
                        let pts: Vec<(i64, f64)> = vals
                            .iter()
                            .enumerate()
                            .filter_map(|(k, v)| v.map(|v| (k as i64 * interval, v)))
                            .collect();
                        store.add(labels, pts);
                    }
                    Err(_) => {
                        // Native histograms: float values of the same line are not loaded
                        // either; queries touching the series are skipped.
                        hist.add(labels, std::iter::empty());
                    }
                }
            }
            continue;
        }
        if !cmd.starts_with("eval") {
            continue;
        }
        let start_line = i;
        let mut fail_ = cmd == "eval_fail";
        let mut ordered = cmd == "eval_ordered";
        let kind = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        let (range, st, en, stp, expr) = if kind == "instant" && rest.first() == Some(&"at") {
            let at = rest.get(1).and_then(|s| parse_duration_ms(s)).unwrap_or(0);
            (false, at, at, 0, rest[2..].join(" "))
        } else if kind == "range" && rest.first() == Some(&"from") {
            let st = rest.get(1).and_then(|s| parse_duration_ms(s)).unwrap_or(0);
            let en = rest.get(3).and_then(|s| parse_duration_ms(s)).unwrap_or(0);
            let stp = rest.get(5).and_then(|s| parse_duration_ms(s)).unwrap_or(1);
            (
                true,
                st,
                en,
                stp,
                rest.get(6..).map(|r| r.join(" ")).unwrap_or_default(),
            )
        } else {
            continue;
        };
        // The expression as written (keep its own spacing).
        let expr = {
            let marker = if range {
                format!(" step {} ", rest.get(5).copied().unwrap_or(""))
            } else {
                format!("at {} ", rest.get(1).copied().unwrap_or(""))
            };
            match t.find(&marker) {
                Some(p) => t[p + marker.len()..].to_string(),
                None => expr,
            }
        };
        let mut expected: Vec<(Labels, Vec<SeqValue>)> = Vec::new();
        let mut scalar = None;
        let mut string = None;
        let mut needs_histograms = false;
        let mut bad = false;
        while i < lines.len() && is_body(lines[i]) {
            let l = lines[i].trim();
            i += 1;
            if let Some(e) = l.strip_prefix("expect ") {
                let e = e.trim();
                if e.starts_with("fail") {
                    fail_ = true;
                } else if e == "ordered" {
                    ordered = true;
                } else if let Some(s) = e.strip_prefix("string") {
                    string = parse_quoted(s.trim(), 0).map(|x| x.0);
                }
                continue;
            }
            if l.contains("{{") {
                needs_histograms = true;
                continue;
            }
            if let Some(v) = parse_float(l) {
                scalar = Some(v);
                continue;
            }
            match parse_series(l) {
                Some((labels, rest)) => match expand_values(rest) {
                    Ok(v) => expected.push((labels, v)),
                    Err(true) => needs_histograms = true,
                    Err(false) => bad = true,
                },
                None => bad = true,
            }
        }
        let expect = match (string, scalar) {
            (Some(s), _) => Expect::Str(s),
            (None, Some(v)) if expected.is_empty() => Expect::Scalar(v),
            _ => Expect::Values(expected),
        };
        if let Ok(e) = parse(&expr)
            && touches(&e, &hist)
        {
            needs_histograms = true;
        }
        let ev = Eval {
            line: start_line,
            expr,
            start: st,
            end: en,
            step: stp,
            range,
            fail: fail_,
            ordered,
            expect,
            needs_histograms,
        };
        if ev.needs_histograms {
            skip += 1;
            continue;
        }
        let outcome = if bad {
            Err("could not parse the expected result".to_string())
        } else {
            run_eval(&store, &ev)
        };
        match outcome {
            Ok(()) => pass += 1,
            Err(e) => {
                fail += 1;
                tally
                    .failures
                    .push(format!("{name}:{} {}\n    {e}", ev.line, ev.expr));
            }
        }
        let _ = ev.end;
    }
    (pass, fail, skip)
}

#[test]
fn promql_conformance() {
    let dir = tests_dir();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "test"))
            .collect(),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("PromQL test scripts missing at {}: {e}", dir.display());
            }
            eprintln!(
                "\n!!! SKIPPED: PromQL test scripts not found at {} ({e}); set ARGUS_PROMQL_TESTS\n",
                dir.display()
            );
            return;
        }
    };
    files.sort();
    let mut tally = Tally::default();
    let mut summary = Vec::new();
    for f in &files {
        let (p, fl, s) = run_file(f, &mut tally);
        tally.pass += p;
        tally.fail += fl;
        tally.skipped += s;
        summary.push(format!(
            "{:<28} {p:>4} / {:<4} passed ({s} skipped: native histograms)",
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            p + fl
        ));
    }
    for fl in &tally.failures {
        println!("FAIL {fl}");
    }
    for s in &summary {
        println!("{s}");
    }
    let total = tally.pass + tally.fail;
    println!(
        "TOTAL {} / {total} passed ({:.1}%), {} skipped (native histograms)",
        tally.pass,
        100.0 * tally.pass as f64 / total.max(1) as f64,
        tally.skipped
    );
    let baseline_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/promql_conformance.baseline"
    );
    let baseline: usize = std::fs::read_to_string(baseline_path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| !l.starts_with('#'))
                .and_then(|l| l.trim().parse().ok())
        })
        .unwrap_or(0);
    assert!(
        tally.pass >= baseline,
        "conformance fell: {} blocks pass, the baseline in {baseline_path} is {baseline}",
        tally.pass
    );
    if tally.pass > baseline {
        println!(
            "conformance rose above the baseline {baseline}: raise {baseline_path} to {}",
            tally.pass
        );
    }
}
