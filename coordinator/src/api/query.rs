//! The Prometheus query API: `/api/v1/query`, `/api/v1/query_range` and
//! `/api/v1/query_exemplars`, answered the way Prometheus 3 answers them, so Grafana,
//! promtool and curl work unchanged.
//!
//! - Parameters come from the URL and, for a form-encoded POST, the body (the body's
//!   value wins, as Go's `FormValue` has it). Times are RFC 3339 or Unix seconds with a
//!   fraction; durations are Prometheus durations (`1h30m`) or float seconds.
//! - Parsing and evaluation run on the blocking pool, at most
//!   [`QueryLimits::max_concurrent`] at once, under the query timeout (the request's
//!   `timeout` can only shorten it). A query that runs out of time answers 503
//!   `timeout`; the abandoned evaluation stops at its next read of the store.
//! - Errors use the Prometheus envelope: malformed parameters and PromQL 400
//!   `bad_data` (with the line:column of a PromQL error where it can be found), a limit
//!   or evaluation error 422 `execution`, a storage failure 500.
//! - Every evaluated answer carries `X-Argus-Applied-Index`, the applied log index the
//!   data was read at (a lower bound, see [`crate::query::source`]).
//! - Exemplars are out of scope (DESIGN §5): the endpoint validates its parameters and
//!   answers an empty list, so dashboards that ask for them keep working.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argus_common::model::Labels;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self as promql, Expr};
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple, Serializer};
use tokio::sync::Semaphore;

use super::http::AppState;
use super::prom_json::{ApiError, ApiResponse};
use crate::query::source::{LiveSource, QueryLimits, ReadStats};
use crate::query::{
    EvalOptions, InstantSample, QueryError, QueryValue, Queryable, SeriesData, instant_query,
    range_query,
};

/// The response header naming the applied log index an answer was read at.
pub const APPLIED_INDEX_HEADER: &str = "x-argus-applied-index";

/// Times beyond this many ms from the epoch (about 36 million years) are refused, so the
/// engine's arithmetic on them (minus ranges, offsets and lookback) cannot overflow.
const TIME_BOUND_MS: i64 = i64::MAX / 8;

/// Prometheus's formatted `MinTime` and `MaxTime`, which clients send for "unbounded".
const MIN_TIME_FORMATTED: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_FORMATTED: &str = "292277025-08-18T07:12:54.999999999Z";

/// Evaluation stack an expression may need, in KiB. The engine recurses once per
/// level of the tree, and the blocking pool's threads have 2 MiB stacks; the cost of
/// each kind of node is [`node_stack_kib`], measured on an unoptimised build (whose
/// frames are the largest). A test evaluates the costliest accepted expression of
/// every kind of nesting on such a stack.
const MAX_STACK_KIB: usize = 1400;

/// Before parsing: the most operators and brackets a query may nest, an upper bound on
/// its tree depth, so that no tree too deep to drop safely is ever built.
const MAX_NESTING_BOUND: usize = 4096;

/// Error positions are searched for in queries up to this size; beyond, the parser's
/// message is given without one (the search re-parses prefixes).
const LOCATE_MAX_BYTES: usize = 64 * 1024;
/// Prefixes the grammar-error search tries at most.
const LOCATE_MAX_PARSES: usize = 256;

/// Query serving as the HTTP layer holds it: the limits and the slots that bound how
/// many queries evaluate at once.
#[derive(Debug, Clone)]
pub struct QueryService {
    pub limits: QueryLimits,
    slots: Arc<Semaphore>,
}

impl QueryService {
    pub fn new(limits: QueryLimits) -> Self {
        QueryService {
            slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            limits,
        }
    }
}

impl Default for QueryService {
    fn default() -> Self {
        QueryService::new(QueryLimits::default())
    }
}

// ---------------------------------------------------------------------------------
// Parameters

/// Request parameters: a form-encoded body's pairs first, then the URL's, so the first
/// value of a key is the one Go's `Request.FormValue` would return.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn new(
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Form {
        let mut pairs = Vec::new();
        let form_body = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if form_body && matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            pairs.extend(url::form_urlencoded::parse(body).into_owned());
        }
        pairs.extend(url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned());
        Form(pairs)
    }

    /// The first value of `key`, if given and not empty.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The first value of `key`, or "" (Go's `FormValue`).
    pub(crate) fn value(&self, key: &str) -> &str {
        self.get(key).unwrap_or("")
    }
}

fn invalid(param: &str, msg: impl fmt::Display) -> ApiError {
    ApiError::bad_data(format!("invalid parameter {param:?}: {msg}"))
}

/// A timestamp as Prometheus's API reads one: Unix seconds with an optional fraction
/// (rounded to the millisecond), or RFC 3339; in milliseconds.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    let err = || format!("cannot parse {s:?} to a valid timestamp");
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return Err(err());
        }
        let secs = f.trunc();
        let ms = secs * 1000.0 + ((f - secs) * 1000.0).round();
        if ms.abs() > TIME_BOUND_MS as f64 {
            return Err(err());
        }
        return Ok(ms as i64);
    }
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    match s {
        MIN_TIME_FORMATTED => Ok(-TIME_BOUND_MS),
        MAX_TIME_FORMATTED => Ok(TIME_BOUND_MS),
        _ => Err(err()),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, as Go's RFC3339Nano layout parses it;
/// the fraction is truncated to milliseconds.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, min, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if sep(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = &b[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        for k in 0..3 {
            frac_ms = frac_ms * 10 + digits.get(k).map_or(0, |d| i64::from(d - b'0'));
        }
    }
    let offset_s = match b.get(i) {
        Some(b'Z') if i + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b':') => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if c == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_s;
    Some(secs * 1000 + frac_ms)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A duration as Prometheus's API reads one: float seconds, or a Prometheus duration
/// (`1y2w3d4h5m6s7ms`, units largest first, each at most once); in milliseconds.
pub(crate) fn parse_duration(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return Err(format!("cannot parse {s:?} to a valid duration"));
        }
        // Go's time.Duration counts nanoseconds in an int64.
        if (f * 1e9).abs() >= i64::MAX as f64 {
            return Err(format!(
                "cannot parse {s:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok((f * 1000.0).trunc() as i64);
    }
    prom_duration(s).ok_or_else(|| format!("cannot parse {s:?} to a valid duration"))
}

fn prom_duration(s: &str) -> Option<i64> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    // As Go's time.Duration: at most about 292 years.
    const MAX_MS: i64 = i64::MAX / 1_000_000;
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total: i64 = 0;
    let mut next_unit = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let v: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let ulen = rest.bytes().take_while(|c| !c.is_ascii_digit()).count();
        let unit = &rest[..ulen];
        rest = &rest[ulen..];
        let pos = UNITS.iter().position(|(u, _)| *u == unit)?;
        if pos < next_unit {
            return None;
        }
        next_unit = pos + 1;
        total = total.checked_add(v.checked_mul(UNITS[pos].1)?)?;
        if total > MAX_MS {
            return None;
        }
    }
    Some(total)
}

/// Instant or range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    Instant(i64),
    Range { start: i64, end: i64, step: i64 },
}

/// A validated query request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueryRequest {
    pub query: String,
    pub span: Span,
    /// The effective timeout: the configured one, or the request's if shorter.
    pub timeout: Duration,
    pub lookback_ms: i64,
    /// Whether the answer carries a `stats` object (any non-empty `stats`).
    pub stats: bool,
}

/// `/api/v1/query`'s parameters; `time` defaults to `now_ms`.
pub(crate) fn instant_request(
    form: &Form,
    now_ms: i64,
    limits: &QueryLimits,
) -> Result<QueryRequest, ApiError> {
    let t = match form.get("time") {
        None => now_ms,
        Some(s) => parse_time(s).map_err(|e| invalid("time", e))?,
    };
    common_request(form, Span::Instant(t), limits)
}

/// `/api/v1/query_range`'s parameters, with Prometheus's checks and messages.
pub(crate) fn range_request(form: &Form, limits: &QueryLimits) -> Result<QueryRequest, ApiError> {
    let start = parse_time(form.value("start")).map_err(|e| invalid("start", e))?;
    let end = parse_time(form.value("end")).map_err(|e| invalid("end", e))?;
    if end < start {
        return Err(ApiError::bad_data(
            "end timestamp must not be before start time",
        ));
    }
    let step = parse_duration(form.value("step")).map_err(|e| invalid("step", e))?;
    if step <= 0 {
        return Err(ApiError::bad_data(
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if (end - start) / step > limits.max_points_per_series {
        return Err(ApiError::bad_data(format!(
            "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
            thousands(limits.max_points_per_series)
        )));
    }
    common_request(form, Span::Range { start, end, step }, limits)
}

fn common_request(form: &Form, span: Span, limits: &QueryLimits) -> Result<QueryRequest, ApiError> {
    let mut timeout = limits.timeout;
    if let Some(s) = form.get("timeout") {
        let ms = parse_duration(s).map_err(|e| invalid("timeout", e))?;
        timeout = timeout.min(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    }
    let mut lookback_ms = i64::try_from(limits.lookback.as_millis()).unwrap_or(i64::MAX);
    if let Some(s) = form.get("lookback_delta") {
        let ms = parse_duration(s).map_err(|e| {
            ApiError::bad_data(format!("error parsing lookback delta duration: {e}"))
        })?;
        // As Prometheus: zero or less means the configured default.
        if ms > 0 {
            lookback_ms = ms;
        }
    }
    Ok(QueryRequest {
        query: form.value("query").to_string(),
        span,
        timeout,
        lookback_ms,
        stats: form.get("stats").is_some(),
    })
}

/// `11000` as `11,000`, the way Prometheus's message writes it.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------
// PromQL parsing with positions

/// What a quick scan of a query tells before it is parsed: token boundaries (for error
/// positions) and an upper bound on the depth of its tree.
struct Scan {
    tokens: Vec<(usize, usize)>,
    /// Operators (each binary or unary operator, each `[`) plus the deepest bracket
    /// nesting: every level of the tree needs one of them.
    nesting_bound: usize,
}

fn scan(q: &str) -> Scan {
    let b = q.as_bytes();
    let mut tokens = Vec::new();
    let (mut depth, mut max_depth, mut ops) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\\' && c != b'`' {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if b[i - 1] == c {
                        break;
                    }
                }
                i = i.min(b.len());
            }
            b'(' | b'{' => {
                depth += 1;
                max_depth = max_depth.max(depth);
                i += 1;
            }
            b')' | b'}' | b']' => {
                if c != b']' {
                    depth = depth.saturating_sub(1);
                }
                i += 1;
            }
            b'[' | b'+' | b'-' | b'*' | b'/' | b'%' | b'^' => {
                ops += 1;
                i += 1;
            }
            b'=' | b'!' | b'<' | b'>' => {
                i += 1;
                if matches!(b.get(i), Some(b'=' | b'~')) {
                    i += 1;
                }
                if !(c == b'=' && i == start + 1) {
                    ops += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = q.get(start..i).unwrap_or("");
                if ["and", "or", "unless", "atan2"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    ops += 1;
                }
            }
            c if c.is_ascii_digit() || c == b'.' => {
                while i < b.len() {
                    let d = b[i];
                    let exp_sign = (d == b'+' || d == b'-')
                        && matches!(b[i - 1], b'e' | b'E')
                        && b[start..i - 1]
                            .iter()
                            .all(|x| x.is_ascii_digit() || *x == b'.');
                    if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' || exp_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            _ => {
                // One character, whatever its UTF-8 length.
                i += q
                    .get(i..)
                    .and_then(|r| r.chars().next())
                    .map_or(1, char::len_utf8);
            }
        }
        tokens.push((start, i));
    }
    Scan {
        tokens,
        nesting_bound: ops + max_depth + 1,
    }
}

/// Evaluation stack (KiB) one node takes, measured in a debug build on 2 MiB stacks:
/// function calls nest about 88 deep, subquery-in-call pairs 75, aggregations 360,
/// binary operators 410, parentheses and unary minus over a thousand.
fn node_stack_kib(e: &Expr) -> usize {
    match e {
        Expr::Call(_) => 24,
        Expr::Aggregate(_) => 6,
        Expr::Binary(_) => 5,
        Expr::Subquery(_) => 4,
        Expr::Paren(_) | Expr::Unary(_) => 2,
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::Extension(_) => 2,
    }
}

/// The evaluation stack (KiB) of the costliest path from the root to a leaf, walked
/// without recursion.
fn stack_kib(e: &Expr) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&Expr, usize)> = vec![(e, node_stack_kib(e))];
    while let Some((e, cost)) = stack.pop() {
        max = max.max(cost);
        stack.extend(
            children(e)
                .into_iter()
                .map(|c| (c, cost + node_stack_kib(c))),
        );
    }
    max
}

/// The sub-expressions of an expression.
fn children(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Aggregate(a) => {
            let mut v = vec![&*a.expr];
            v.extend(a.param.as_deref());
            v
        }
        Expr::Unary(u) => vec![&*u.expr],
        Expr::Binary(b) => vec![&*b.lhs, &*b.rhs],
        Expr::Paren(p) => vec![&*p.expr],
        Expr::Subquery(s) => vec![&*s.expr],
        Expr::Call(c) => c.args.args.iter().map(|a| &**a).collect(),
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::Extension(_) => Vec::new(),
    }
}

/// `line:column` (1-based, column in bytes, as Prometheus counts) of a byte offset.
fn line_col(q: &str, pos: usize) -> String {
    let pos = pos.min(q.len());
    let before = &q.as_bytes()[..pos];
    let line = 1 + before.iter().filter(|&&c| c == b'\n').count();
    let col = pos
        - before
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    format!("{line}:{col}")
}

fn lex_error(q: &str) -> Option<String> {
    promql::lex::lexer(q).err()
}

/// Lexer messages that are only raised at the end of the input.
fn at_end_of_input(msg: &str) -> bool {
    [
        "end of input",
        "unterminated",
        "not terminated",
        "unclosed",
        "can not be at the end",
    ]
    .iter()
    .any(|k| msg.contains(k))
}

/// Where the lexer stops: the lexer reports its first error, so the shortest prefix
/// that fails with the same message ends at the offending character.
fn lex_error_position(q: &str, msg: &str) -> Option<usize> {
    if at_end_of_input(msg) {
        return Some(q.len());
    }
    if q.len() > LOCATE_MAX_BYTES {
        return None;
    }
    let ends: Vec<usize> = q.char_indices().map(|(i, c)| i + c.len_utf8()).collect();
    let same = |e: usize| lex_error(&q[..e]).as_deref() == Some(msg);
    let (mut lo, mut hi) = (0usize, ends.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if same(ends[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let end = *ends.get(lo)?;
    same(end).then(|| q[..end].char_indices().last().map_or(0, |(i, _)| i))
}

/// Where the grammar stops: the token after the longest prefix that parses, alone or
/// completed by an operand (so a trailing operator counts as a fine prefix).
fn grammar_error_position(q: &str, tokens: &[(usize, usize)]) -> Option<usize> {
    if q.len() > LOCATE_MAX_BYTES {
        return None;
    }
    let viable = |end: usize| {
        q.get(..end).is_some_and(|prefix| {
            promql::parse(prefix).is_ok() || promql::parse(&format!("{prefix} 0")).is_ok()
        })
    };
    let n = tokens.len();
    for k in (1..=n).rev().take(LOCATE_MAX_PARSES / 2) {
        if viable(tokens[k - 1].1) {
            return Some(tokens.get(k).map_or(q.len(), |t| t.0));
        }
    }
    if n <= LOCATE_MAX_PARSES / 2 {
        return tokens.first().map(|t| t.0);
    }
    None
}

/// Parses a query as Prometheus would accept it, or says why not in Prometheus's
/// `line:col: parse error: message` form (the position when it can be found).
pub(crate) fn parse_query(q: &str) -> Result<Expr, String> {
    let sc = scan(q);
    if sc.nesting_bound > MAX_NESTING_BOUND {
        return Err(format!(
            "parse error: the expression nests too deeply (over {MAX_NESTING_BOUND} operators and brackets)"
        ));
    }
    match promql::parse(q) {
        Ok(e) => {
            let kib = stack_kib(&e);
            if kib > MAX_STACK_KIB {
                return Err(format!(
                    "parse error: the expression nests too deeply to evaluate: its deepest branch \
                     needs about {kib} KiB of stack, more than the {MAX_STACK_KIB} KiB allowed; \
                     nest fewer function calls, aggregations or operators"
                ));
            }
            Ok(e)
        }
        Err(msg) => {
            let (pos, text) = match lex_error(q) {
                Some(lmsg) => (lex_error_position(q, &lmsg), lmsg),
                None => {
                    let pos = grammar_error_position(q, &sc.tokens);
                    // The parser's generic message says nothing; name what it met.
                    let text = if msg == "invalid promql query" {
                        match pos.and_then(|p| sc.tokens.iter().find(|t| t.0 == p)) {
                            Some(&(s, e)) => {
                                format!("unexpected {:?}", q.get(s..e).unwrap_or(""))
                            }
                            None if pos == Some(q.len()) => "unexpected end of input".into(),
                            None => msg,
                        }
                    } else {
                        msg
                    };
                    (pos, text)
                }
            };
            Err(match pos {
                Some(p) => format!("{}: parse error: {text}", line_col(q, p)),
                None => format!("parse error: {text}"),
            })
        }
    }
}

// ---------------------------------------------------------------------------------
// Evaluation

/// What an evaluation produced, and how long its parts took.
pub(crate) struct Evaluated {
    pub result: Result<QueryValue, QueryError>,
    pub read: ReadStats,
    /// The applied index when the query read no data (a literal): read at the end.
    pub applied_fallback: Option<u64>,
    pub queued: Duration,
    pub prep: Duration,
    pub eval: Duration,
}

/// Parses and evaluates `req` over `source`. A parse error (or a range query over
/// something not a scalar or instant vector) is the caller's 400.
pub(crate) fn evaluate(
    source: &dyn Queryable,
    req: &QueryRequest,
) -> Result<(Result<QueryValue, QueryError>, Duration, Duration), ApiError> {
    let t0 = Instant::now();
    let expr = parse_query(&req.query).map_err(|e| invalid("query", e))?;
    if let Span::Range { .. } = req.span {
        let ty = expr.value_type();
        if !matches!(ty, ValueType::Scalar | ValueType::Vector) {
            return Err(invalid(
                "query",
                format!(
                    "invalid expression type {:?} for range query, must be Scalar or instant Vector",
                    documented_type(ty)
                ),
            ));
        }
    }
    let prep = t0.elapsed();
    let opts = EvalOptions {
        lookback_ms: req.lookback_ms,
        ..EvalOptions::default()
    };
    let t1 = Instant::now();
    let result = match req.span {
        Span::Instant(t) => instant_query(source, &expr, t, &opts),
        Span::Range { start, end, step } => range_query(source, &expr, start, end, step, &opts),
    };
    Ok((result, prep, t1.elapsed()))
}

/// Prometheus's `parser.DocumentedType`.
fn documented_type(t: ValueType) -> &'static str {
    match t {
        ValueType::Vector => "instant vector",
        ValueType::Matrix => "range vector",
        ValueType::Scalar => "scalar",
        ValueType::String => "string",
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn timeout_error(while_doing: &str) -> ApiError {
    ApiError::timeout(format!("query timed out in {while_doing}"))
}

/// Runs a validated request: waits for a slot, evaluates on the blocking pool, answers.
async fn execute(app: &AppState, req: QueryRequest, received: Instant) -> Response {
    let deadline = received + req.timeout;
    let tokio_deadline = tokio::time::Instant::from_std(deadline);
    let slots = app.query.slots.clone();
    let permit = match tokio::time::timeout_at(tokio_deadline, slots.acquire_owned()).await {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return ApiError::internal("query slots are closed").into_response(),
        Err(_) => return timeout_error("the queue for a free query slot").into_response(),
    };
    let (state, store, limits) = (app.state.clone(), app.store.clone(), app.query.limits);
    let stats = req.stats;
    // Dropped with this future when the client goes away (axum drops a handler whose
    // connection closed), which stops the evaluation and frees its slot.
    let cancel = CancelOnDrop::default();
    let flag = cancel.0.clone();
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let queued = received.elapsed();
        let source =
            LiveSource::new(state, store, &limits, Some(deadline), now_ms()).with_cancel(flag);
        let (result, prep, eval) = evaluate(&source, &req)?;
        let read = source.stats();
        let applied_fallback = match read.applied {
            Some(_) => None,
            None => source.applied_now().ok(),
        };
        Ok::<_, ApiError>(Evaluated {
            result,
            read,
            applied_fallback,
            queued,
            prep,
            eval,
        })
    });
    let outcome = tokio::time::timeout_at(tokio_deadline, task).await;
    cancel.disarm();
    match outcome {
        Err(_) => timeout_error("expression evaluation").into_response(),
        Ok(Err(join)) => {
            tracing::error!(error = %join, "query evaluation failed");
            ApiError::internal(format!("query evaluation failed: {join}")).into_response()
        }
        Ok(Ok(Err(e))) => e.into_response(),
        Ok(Ok(Ok(ev))) => respond(ev, stats, received.elapsed()),
    }
}

/// Sets its flag when dropped before [`CancelOnDrop::disarm`]: the request future was
/// dropped mid-evaluation.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>, bool);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.1 = true;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            tracing::debug!("query canceled: the client went away");
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// The error answer for an evaluation failure, as Prometheus's `returnAPIError` maps it.
fn query_error(e: QueryError, timed_out: bool) -> ApiError {
    match e {
        _ if timed_out => timeout_error("expression evaluation"),
        QueryError::Parse(m) => ApiError::bad_data(m),
        QueryError::Execution(m) => ApiError::execution(m),
        QueryError::Limit(m) => ApiError::execution(format!("query limit exceeded: {m}")),
        QueryError::Store(m) => ApiError::internal(format!("storage error: {m}")),
    }
}

fn respond(ev: Evaluated, with_stats: bool, total: Duration) -> Response {
    let applied = ev.read.applied.or(ev.applied_fallback);
    let mut resp = match ev.result {
        Ok(value) => {
            let stats = with_stats.then(|| QueryStats {
                timings: Timings {
                    eval_total_time: (ev.prep + ev.eval).as_secs_f64(),
                    result_sort_time: 0.0,
                    query_preparation_time: ev.prep.as_secs_f64(),
                    inner_eval_time: ev.eval.as_secs_f64(),
                    exec_queue_time: ev.queued.as_secs_f64(),
                    exec_total_time: total.as_secs_f64(),
                },
                samples: SampleStats {
                    total_queryable_samples: ev.read.samples as u64,
                    peak_samples: ev.read.samples as u64,
                },
            });
            let mut r = ApiResponse::success(QueryData {
                value: &value,
                stats,
            });
            for w in &ev.read.warnings {
                r = r.with_warning(w.clone());
            }
            for i in &ev.read.infos {
                r = r.with_info(i.clone());
            }
            r.into_response()
        }
        Err(e) => {
            let mut r: ApiResponse<()> = query_error(e, ev.read.timed_out).into();
            for w in &ev.read.warnings {
                r = r.with_warning(w.clone());
            }
            r.into_response()
        }
    };
    if let Some(a) = applied {
        resp.headers_mut()
            .insert(APPLIED_INDEX_HEADER, HeaderValue::from(a));
    }
    resp
}

// ---------------------------------------------------------------------------------
// JSON shapes

/// `data` of a query answer: `resultType`, `result` and, when asked for, `stats`.
pub(crate) struct QueryData<'a> {
    pub value: &'a QueryValue,
    pub stats: Option<QueryStats>,
}

impl Serialize for QueryData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2 + usize::from(self.stats.is_some())))?;
        let kind = match self.value {
            QueryValue::Scalar { .. } => "scalar",
            QueryValue::String { .. } => "string",
            QueryValue::Vector(_) => "vector",
            QueryValue::Matrix(_) => "matrix",
        };
        m.serialize_entry("resultType", kind)?;
        match self.value {
            QueryValue::Scalar { t, v } => m.serialize_entry("result", &Point(*t, *v))?,
            QueryValue::String { t, s } => m.serialize_entry("result", &(Ts(*t), s))?,
            QueryValue::Vector(v) => m.serialize_entry("result", &Seq(v, VectorElem))?,
            QueryValue::Matrix(mx) => m.serialize_entry("result", &Seq(mx, MatrixElem))?,
        }
        if let Some(st) = &self.stats {
            m.serialize_entry("stats", st)?;
        }
        m.end()
    }
}

/// A slice serialised element by element through a wrapper.
struct Seq<'a, T, W>(&'a [T], fn(&'a T) -> W);

impl<'a, T, W: Serialize> Serialize for Seq<'a, T, W> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for x in self.0 {
            seq.serialize_element(&(self.1)(x))?;
        }
        seq.end()
    }
}

/// `{"metric": {...}, "value": [t, "v"]}`.
struct VectorElem<'a>(&'a InstantSample);

impl Serialize for VectorElem<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("metric", &Metric(&self.0.labels))?;
        m.serialize_entry("value", &Point(self.0.t, self.0.v))?;
        m.end()
    }
}

/// `{"metric": {...}, "values": [[t, "v"], ...]}`.
struct MatrixElem<'a>(&'a SeriesData);

impl Serialize for MatrixElem<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("metric", &Metric(&self.0.labels))?;
        m.serialize_entry("values", &Seq(&self.0.samples, |&(t, v)| Point(t, v)))?;
        m.end()
    }
}

/// Labels as a JSON object, in their (byte-sorted) order.
struct Metric<'a>(&'a Labels);

impl Serialize for Metric<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// `[<unix seconds>, "<value>"]`.
struct Point(i64, f64);

impl Serialize for Point {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&Ts(self.0))?;
        t.serialize_element(&format_value(self.1))?;
        t.end()
    }
}

/// A millisecond timestamp as Unix seconds: an integer when whole, else the shortest
/// decimal, which for a millisecond value has at most three decimals (as Prometheus
/// writes it).
struct Ts(i64);

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            s.serialize_i64(self.0 / 1000)
        } else {
            s.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

/// A sample value as Prometheus writes it: `+Inf`, `-Inf`, `NaN`, else the shortest
/// decimal that reads back to the same float, with an exponent (Go's `%e` style:
/// `1e+21`, `1.5e-07`) below 1e-6 and from 1e21 on.
pub(crate) fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        let e = format!("{v:e}");
        if let Some((mant, exp)) = e.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            return format!("{mant}e{sign}{digits:0>2}");
        }
        return e;
    }
    format!("{v}")
}

/// `stats` of a query answer, in Prometheus's field names and order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct QueryStats {
    pub timings: Timings,
    pub samples: SampleStats,
}

/// Seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Timings {
    pub eval_total_time: f64,
    pub result_sort_time: f64,
    pub query_preparation_time: f64,
    pub inner_eval_time: f64,
    pub exec_queue_time: f64,
    pub exec_total_time: f64,
}

/// Samples loaded from the head and the store. Prometheus counts samples per step in
/// its windows; ours are the samples read, which both figures are bounded by, so
/// `peakSamples` repeats the total as an upper bound. Per-step counts
/// (`stats=all`'s `totalQueryableSamplesPerStep`) are not kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SampleStats {
    pub total_queryable_samples: u64,
    pub peak_samples: u64,
}

// ---------------------------------------------------------------------------------
// Handlers

fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| ApiError::bad_data(format!("reading the request body: {}", r.body_text())))
}

/// `/api/v1/query`, GET or POST.
pub async fn query(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let form = Form::new(&method, &headers, q.as_deref(), &body);
    match instant_request(&form, now_ms(), &app.query.limits) {
        Ok(req) => execute(&app, req, received).await,
        Err(e) => e.into_response(),
    }
}

/// `/api/v1/query_range`, GET or POST.
pub async fn query_range(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let form = Form::new(&method, &headers, q.as_deref(), &body);
    match range_request(&form, &app.query.limits) {
        Ok(req) => execute(&app, req, received).await,
        Err(e) => e.into_response(),
    }
}

/// `/api/v1/query_exemplars`: validated like Prometheus, answered with no exemplars.
pub async fn query_exemplars(
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let form = Form::new(&method, &headers, q.as_deref(), &body);
    let checked = exemplar_params(&form);
    let checked = match checked {
        Ok(query) => tokio::task::spawn_blocking(move || {
            parse_query(&query)
                .map(drop)
                .map_err(|e| invalid("query", e))
        })
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("parsing the query: {e}")))),
        Err(e) => Err(e),
    };
    match checked {
        Ok(()) => ApiResponse::success(Vec::<()>::new()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Checks `start` and `end` of an exemplar query; returns its `query`.
fn exemplar_params(form: &Form) -> Result<String, ApiError> {
    let start = match form.get("start") {
        None => -TIME_BOUND_MS,
        Some(s) => parse_time(s).map_err(|e| invalid("start", e))?,
    };
    let end = match form.get("end") {
        None => TIME_BOUND_MS,
        Some(s) => parse_time(s).map_err(|e| invalid("end", e))?,
    };
    if end < start {
        return Err(ApiError::bad_data(
            "end timestamp must not be before start timestamp",
        ));
    }
    Ok(form.value("query").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::MemStore;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn msg(e: ApiError) -> String {
        e.message
    }

    #[test]
    fn a_dropped_request_cancels_its_evaluation_and_an_answered_one_does_not() {
        let dropped = CancelOnDrop::default();
        let flag = dropped.0.clone();
        drop(dropped);
        assert!(flag.load(Ordering::Relaxed));
        let answered = CancelOnDrop::default();
        let flag = answered.0.clone();
        answered.disarm();
        assert!(!flag.load(Ordering::Relaxed));
    }

    #[test]
    fn times_are_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time("1435781451.781"), Ok(1_435_781_451_781));
        assert_eq!(parse_time("1435781451"), Ok(1_435_781_451_000));
        assert_eq!(parse_time("-1.5"), Ok(-1500));
        assert_eq!(parse_time("0.0005"), Ok(1), "rounded to the millisecond");
        assert_eq!(parse_time("1e3"), Ok(1_000_000));
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z"),
            Ok(1_435_781_451_781)
        );
        assert_eq!(parse_time("2015-07-01T20:10:51Z"), Ok(1_435_781_451_000));
        assert_eq!(
            parse_time("2015-07-01T22:10:51.781999999+02:00"),
            Ok(1_435_781_451_781),
            "an offset, and nanoseconds truncated"
        );
        assert_eq!(parse_time("1970-01-01T00:00:00-00:30"), Ok(1_800_000));
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), Ok(-1000));
        assert_eq!(parse_time(MIN_TIME_FORMATTED), Ok(-TIME_BOUND_MS));
        assert_eq!(parse_time(MAX_TIME_FORMATTED), Ok(TIME_BOUND_MS));
        for bad in [
            "",
            "yesterday",
            "NaN",
            "Inf",
            "1e300",
            "2023-02-29T00:00:00Z",
            "2015-13-01T00:00:00Z",
            "2015-07-01 20:10:51Z",
            "2015-07-01T20:10:51",
            "2015-07-01T24:00:00Z",
            "2015-07-01T20:10:51.Z",
            "2015-07-01T20:10:51+0200",
        ] {
            assert_eq!(
                parse_time(bad),
                Err(format!("cannot parse {bad:?} to a valid timestamp")),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations_are_prometheus_durations_or_float_seconds() {
        for (s, ms) in [
            ("15s", 15_000),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
            ("2d", 172_800_000),
            ("1w", 604_800_000),
            ("1y", 31_536_000_000),
            ("1h1m1s1ms", 3_661_001),
            ("500ms", 500),
            ("0", 0),
            ("15", 15_000),
            ("1.5", 1500),
            ("0.0001", 0),
            ("-15", -15_000),
            ("1e3", 1_000_000),
        ] {
            assert_eq!(parse_duration(s), Ok(ms), "{s}");
        }
        for bad in [
            "", "30s1m", "1m1m", "5x", "s", "1.5m", "-1m", "NaN", "Inf", "300y",
        ] {
            assert_eq!(
                parse_duration(bad),
                Err(format!("cannot parse {bad:?} to a valid duration")),
                "{bad}"
            );
        }
        assert!(
            parse_duration("1e20")
                .unwrap_err()
                .contains("overflows int64")
        );
    }

    #[test]
    fn form_values_come_from_the_body_first_then_the_url() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        let f = Form::new(
            &Method::POST,
            &h,
            Some("query=url&time=1"),
            b"query=sum%28x%29+by+%28a%29&step=15s",
        );
        assert_eq!(f.value("query"), "sum(x) by (a)");
        assert_eq!(f.value("time"), "1");
        assert_eq!(f.value("step"), "15s");
        assert_eq!(f.get("missing"), None);
        // A GET's body, or a POST body of another type, is not a form.
        let f = Form::new(&Method::GET, &h, Some("query=url"), b"query=body");
        assert_eq!(f.value("query"), "url");
        let f = Form::new(&Method::POST, &HeaderMap::new(), None, b"query=body");
        assert_eq!(f.value("query"), "");
        // An empty value counts as absent, as in Go.
        assert_eq!(form(&[("time", "")]).get("time"), None);
    }

    #[test]
    fn instant_parameters_and_their_defaults() {
        let limits = QueryLimits::default();
        let r = instant_request(&form(&[("query", "up")]), 123_000, &limits).unwrap();
        assert_eq!(
            r,
            QueryRequest {
                query: "up".into(),
                span: Span::Instant(123_000),
                timeout: Duration::from_secs(120),
                lookback_ms: 300_000,
                stats: false,
            }
        );
        let r = instant_request(
            &form(&[
                ("query", "up"),
                ("time", "10.5"),
                ("timeout", "5s"),
                ("lookback_delta", "1m"),
                ("stats", "all"),
            ]),
            0,
            &limits,
        )
        .unwrap();
        assert_eq!(r.span, Span::Instant(10_500));
        assert_eq!(r.timeout, Duration::from_secs(5));
        assert_eq!(r.lookback_ms, 60_000);
        assert!(r.stats);
        // A longer timeout than configured does not extend it; a zero lookback is the default.
        let r = instant_request(
            &form(&[("timeout", "1h"), ("lookback_delta", "0")]),
            0,
            &limits,
        )
        .unwrap();
        assert_eq!(r.timeout, Duration::from_secs(120));
        assert_eq!(r.lookback_ms, 300_000);
        assert_eq!(
            msg(instant_request(&form(&[("time", "x")]), 0, &limits).unwrap_err()),
            r#"invalid parameter "time": cannot parse "x" to a valid timestamp"#
        );
        assert_eq!(
            msg(instant_request(&form(&[("timeout", "soon")]), 0, &limits).unwrap_err()),
            r#"invalid parameter "timeout": cannot parse "soon" to a valid duration"#
        );
        assert_eq!(
            msg(instant_request(&form(&[("lookback_delta", "x")]), 0, &limits).unwrap_err()),
            r#"error parsing lookback delta duration: cannot parse "x" to a valid duration"#
        );
    }

    #[test]
    fn range_parameters_are_checked_as_prometheus_checks_them() {
        let limits = QueryLimits::default();
        let ok = range_request(
            &form(&[
                ("query", "up"),
                ("start", "0"),
                ("end", "3600"),
                ("step", "15s"),
            ]),
            &limits,
        )
        .unwrap();
        assert_eq!(
            ok.span,
            Span::Range {
                start: 0,
                end: 3_600_000,
                step: 15_000
            }
        );
        let err = |pairs: &[(&str, &str)]| msg(range_request(&form(pairs), &limits).unwrap_err());
        assert_eq!(
            err(&[("end", "1"), ("step", "1")]),
            r#"invalid parameter "start": cannot parse "" to a valid timestamp"#
        );
        assert_eq!(
            err(&[("start", "10"), ("end", "1"), ("step", "1")]),
            "end timestamp must not be before start time"
        );
        assert_eq!(
            err(&[("start", "0"), ("end", "1"), ("step", "x")]),
            r#"invalid parameter "step": cannot parse "x" to a valid duration"#
        );
        assert_eq!(
            err(&[("start", "0"), ("end", "1"), ("step", "0")]),
            "zero or negative query resolution step widths are not accepted. Try a positive integer"
        );
        // 11,000 points are fine, one more is not.
        assert!(
            range_request(
                &form(&[("start", "0"), ("end", "11000"), ("step", "1")]),
                &limits
            )
            .is_ok()
        );
        assert_eq!(
            err(&[("start", "0"), ("end", "11001"), ("step", "1")]),
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn values_are_formatted_as_prometheus_formats_them() {
        for (v, s) in [
            (1.0, "1"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1.0 / 3.0, "0.3333333333333333"),
            (123_456_789.123, "123456789.123"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (1e-6, "0.000001"),
            (1.5e-7, "1.5e-07"),
            (-1e-300, "-1e-300"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(format_value(v), s, "{v:e}");
        }
    }

    fn json(value: &QueryValue, stats: Option<QueryStats>) -> String {
        ApiResponse::success(QueryData { value, stats })
            .to_json()
            .unwrap()
    }

    #[test]
    fn result_shapes_match_prometheus() {
        let labels = Labels::from_pairs([("__name__", "up"), ("job", "node"), ("A", "x")]);
        assert_eq!(
            json(
                &QueryValue::Scalar {
                    t: 1_435_781_451_781,
                    v: 1.0
                },
                None
            ),
            r#"{"status":"success","data":{"resultType":"scalar","result":[1435781451.781,"1"]}}"#
        );
        assert_eq!(
            json(
                &QueryValue::String {
                    t: 5000,
                    s: "a\"b".into()
                },
                None
            ),
            r#"{"status":"success","data":{"resultType":"string","result":[5,"a\"b"]}}"#
        );
        assert_eq!(
            json(
                &QueryValue::Vector(vec![InstantSample {
                    labels: labels.clone(),
                    t: 1_500,
                    v: f64::NAN
                }]),
                None
            ),
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"A":"x","__name__":"up","job":"node"},"value":[1.5,"NaN"]}]}}"#
        );
        assert_eq!(
            json(&QueryValue::Vector(Vec::new()), None),
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#
        );
        assert_eq!(
            json(
                &QueryValue::Matrix(vec![SeriesData {
                    labels: Labels::from_pairs([("job", "node")]),
                    samples: vec![(-1_050, 1e21), (0, -0.5), (60_000, f64::INFINITY)],
                }]),
                None
            ),
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"node"},"values":[[-1.05,"1e+21"],[0,"-0.5"],[60,"+Inf"]]}]}}"#
        );
        let stats = QueryStats {
            timings: Timings {
                eval_total_time: 0.5,
                result_sort_time: 0.0,
                query_preparation_time: 0.25,
                inner_eval_time: 0.25,
                exec_queue_time: 0.125,
                exec_total_time: 0.75,
            },
            samples: SampleStats {
                total_queryable_samples: 42,
                peak_samples: 42,
            },
        };
        assert_eq!(
            json(&QueryValue::Vector(Vec::new()), Some(stats)),
            concat!(
                r#"{"status":"success","data":{"resultType":"vector","result":[],"stats":{"timings":"#,
                r#"{"evalTotalTime":0.5,"resultSortTime":0.0,"queryPreparationTime":0.25,"#,
                r#""innerEvalTime":0.25,"execQueueTime":0.125,"execTotalTime":0.75},"#,
                r#""samples":{"totalQueryableSamples":42,"peakSamples":42}}}}"#
            )
        );
    }

    #[test]
    fn parse_errors_name_the_position() {
        let cases = [
            ("foo bar", r#"1:5: parse error: unexpected "bar""#),
            (
                "sum(rate(x[5m])) +* 3",
                r#"1:19: parse error: unexpected "*""#,
            ),
            ("1 +", "1:4: parse error: unexpected end of input"),
            (
                "foo{a*\"b\"}",
                "1:6: parse error: unexpected character inside braces: '*'",
            ),
            ("up\n  and $", "2:7: parse error: unexpected character: '$'"),
            ("(1))", "1:4: parse error: unexpected right parenthesis ')'"),
        ];
        for (q, want) in cases {
            assert_eq!(parse_query(q).unwrap_err(), want, "{q}");
        }
        // Errors only found at the end point there.
        let e = parse_query("sum(rate(x[5m])").unwrap_err();
        assert!(e.starts_with("1:16: parse error: "), "{e}");
        // The parser's own specific messages are kept.
        let e = parse_query("rate(x)").unwrap_err();
        assert!(e.contains("parse error: ") && e.contains("rate"), "{e}");
        assert!(parse_query("").unwrap_err().contains("parse error"));
        assert!(parse_query("sum by (job) (rate(x[5m]))").is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_before_it_can_exhaust_the_stack() {
        let deep = format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000));
        let e = parse_query(&deep).unwrap_err();
        assert!(e.contains("nests too deeply"), "{e}");
        let chain = format!("x{}", " + x".repeat(50_000));
        assert!(
            parse_query(&chain)
                .unwrap_err()
                .contains("nests too deeply")
        );
        // The deepest query parsed at all is parsed, measured and dropped on a 2 MiB stack.
        let n = MAX_NESTING_BOUND - 2;
        let at_bound = format!("{}x{}", "(".repeat(n), ")".repeat(n));
        let chain = format!("x{}", " + x".repeat(n));
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for q in [at_bound, chain] {
                    let e = parse_query(&q).unwrap_err();
                    assert!(
                        e.contains(&format!("the {MAX_STACK_KIB} KiB allowed")),
                        "{e}"
                    );
                }
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
        let calls = format!("{}x{}", "abs(".repeat(100), ")".repeat(100));
        let e = parse_query(&calls).unwrap_err();
        assert!(e.contains("nests too deeply to evaluate"), "{e}");
        // Ordinary nesting is far from the limit.
        assert!(
            parse_query(
                "histogram_quantile(0.9, sum by (le) (rate(label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\")[5m:1m])))"
            )
            .is_ok()
        );
    }

    /// The costliest accepted expression of every kind of nesting, evaluated on a
    /// thread with the blocking pool's 2 MiB stack (instant and range).
    #[test]
    fn the_deepest_accepted_expressions_evaluate_on_a_blocking_pool_stack() {
        let wrap = |open: &str, close: &str, inner: &str| -> Box<dyn Fn(usize) -> String> {
            let (open, close, inner) = (open.to_string(), close.to_string(), inner.to_string());
            Box::new(move |n| format!("{}{inner}{}", open.repeat(n), close.repeat(n)))
        };
        let kinds: Vec<Box<dyn Fn(usize) -> String>> = vec![
            Box::new(|n| format!("x{}", " + x".repeat(n))),
            wrap("(", ")", "x"),
            wrap("abs(", ")", "x"),
            wrap("sum(", ")", "x"),
            wrap("-(", ")", "x"),
            wrap("max_over_time(", "[2m:1m])", "x"),
            wrap("sum by (a) (", " * 2)", "x"),
            wrap("topk(1, ", ")", "x"),
            wrap("label_replace(", ", \"b\", \"$1\", \"a\", \"(.*)\")", "x"),
        ];
        let mut queries = Vec::new();
        for make in &kinds {
            // The largest nesting still accepted.
            let mut n = 1;
            while parse_query(&make(n + 1)).is_ok() {
                n += 1;
            }
            assert!(n >= 20, "{:.40}: only {n} levels accepted", make(n));
            queries.push(make(n));
        }
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let mut store = MemStore::new();
                store.add(
                    Labels::from_pairs([("__name__", "x"), ("a", "1")]),
                    (0..20).map(|i| (i * 15_000, i as f64)),
                );
                for q in &queries {
                    for span in [
                        Span::Instant(240_000),
                        Span::Range {
                            start: 0,
                            end: 240_000,
                            step: 60_000,
                        },
                    ] {
                        let req = QueryRequest {
                            query: q.clone(),
                            span,
                            timeout: Duration::from_secs(60),
                            lookback_ms: 300_000,
                            stats: false,
                        };
                        let (result, _, _) = evaluate(&store, &req).expect("parses");
                        result.unwrap_or_else(|e| panic!("{q:.40}: {e}"));
                    }
                }
            })
            .unwrap();
        handle.join().expect("no stack overflow");
    }

    #[test]
    fn evaluation_checks_the_expression_type_of_range_queries() {
        let mut store = MemStore::new();
        store.add(
            Labels::from_pairs([("__name__", "x"), ("job", "a")]),
            [(0, 1.0), (60_000, 2.0)],
        );
        let req = |q: &str, span| QueryRequest {
            query: q.into(),
            span,
            timeout: Duration::from_secs(1),
            lookback_ms: 300_000,
            stats: false,
        };
        let range = Span::Range {
            start: 0,
            end: 60_000,
            step: 30_000,
        };
        let e = evaluate(&store, &req("x[5m]", range)).unwrap_err();
        assert_eq!(
            e.message,
            r#"invalid parameter "query": invalid expression type "range vector" for range query, must be Scalar or instant Vector"#
        );
        let (r, _, _) = evaluate(&store, &req("x[5m]", Span::Instant(60_000))).unwrap();
        assert!(matches!(r, Ok(QueryValue::Matrix(m)) if m[0].samples.len() == 2));
        let (r, _, _) = evaluate(&store, &req("x * 2", range)).unwrap();
        match r.unwrap() {
            QueryValue::Matrix(m) => {
                assert_eq!(m[0].samples, [(0, 2.0), (30_000, 2.0), (60_000, 4.0)])
            }
            other => panic!("{other:?}"),
        }
        let e = evaluate(&store, &req("x +", Span::Instant(0))).unwrap_err();
        assert!(
            e.message
                .starts_with("invalid parameter \"query\": 1:4: parse error"),
            "{}",
            e.message
        );
    }

    #[test]
    fn evaluation_errors_map_to_prometheus_error_types() {
        use crate::api::prom_json::ErrorType;
        let kind = |e, t| query_error(e, t).kind;
        assert_eq!(
            kind(QueryError::Limit("x".into()), false),
            ErrorType::Execution
        );
        assert_eq!(
            kind(QueryError::Execution("x".into()), false),
            ErrorType::Execution
        );
        assert_eq!(
            kind(QueryError::Parse("x".into()), false),
            ErrorType::BadData
        );
        assert_eq!(
            kind(QueryError::Store("x".into()), false),
            ErrorType::Internal
        );
        assert_eq!(
            kind(QueryError::Execution("x".into()), true),
            ErrorType::Timeout
        );
        assert!(
            query_error(QueryError::Limit("too many".into()), false)
                .message
                .contains("too many")
        );
    }

    #[test]
    fn exemplar_parameters_are_validated() {
        assert_eq!(exemplar_params(&form(&[("query", "up")])).unwrap(), "up");
        assert_eq!(
            msg(exemplar_params(&form(&[("start", "10"), ("end", "5")])).unwrap_err()),
            "end timestamp must not be before start timestamp"
        );
        assert_eq!(
            msg(exemplar_params(&form(&[("start", "x")])).unwrap_err()),
            r#"invalid parameter "start": cannot parse "x" to a valid timestamp"#
        );
    }
}
