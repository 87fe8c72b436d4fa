//! What the engine reads and what it answers.

use argus_common::model::Labels;

use crate::tsdb::Matcher;

/// The label that carries the metric name in query results.
pub const METRIC_NAME: &str = "__name__";

/// One stored series as the engine sees it: labels including `__name__`, samples
/// sorted by timestamp (ms), StaleNaN markers included so the engine can end a series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// The store as the engine needs it. Implemented by the tsdb, and by [`super::MemStore`]
/// in tests; keeping it this narrow means the engine does no I/O of its own.
pub trait Queryable {
    /// Every series matching all `matchers`, with its samples in `[mint, maxt]`
    /// (inclusive; the engine applies left-open windows itself).
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, QueryError>;
}

/// Why a query failed. `Bad*` are the user's fault (HTTP 400/422); `Store` is ours.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("{0}")]
    Execution(String),
    #[error("query limit exceeded: {0}")]
    Limit(String),
    #[error("storage error: {0}")]
    Store(String),
}

impl QueryError {
    pub(crate) fn exec(msg: impl Into<String>) -> QueryError {
        QueryError::Execution(msg.into())
    }
}

/// One element of an instant vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantSample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}

/// The answer to a query, shaped like Prometheus's `resultType`s.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    Scalar { t: i64, v: f64 },
    String { t: i64, s: String },
    Vector(Vec<InstantSample>),
    Matrix(Vec<SeriesData>),
}

/// A sample inside the engine: besides value and labels it remembers the timestamp of
/// the stored sample (for `timestamp()`) and whether `__name__` is to be dropped at the
/// end (Prometheus 3's delayed name removal, so `label_replace` can still read it).
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub labels: Labels,
    pub f: f64,
    pub t: i64,
    pub drop_name: bool,
}

/// A series of points inside a range-vector argument.
#[derive(Debug, Clone)]
pub(crate) struct RangeSeries {
    pub labels: Labels,
    pub drop_name: bool,
    pub points: Vec<(i64, f64)>,
}

/// A range vector: the points of every series, and how to find the window `(te - range, te]`
/// for an evaluation step `t`, where `te = at.unwrap_or(t) - offset`.
#[derive(Debug, Clone)]
pub(crate) struct MatrixArg {
    pub series: Vec<RangeSeries>,
    pub range: i64,
    pub offset: i64,
    pub at: Option<i64>,
}

impl MatrixArg {
    /// The window end for step `t`.
    pub fn end_at(&self, t: i64) -> i64 {
        self.at.unwrap_or(t) - self.offset
    }
}

/// Points of `points` inside `(start, end]`.
pub(crate) fn window(points: &[(i64, f64)], start: i64, end: i64) -> &[(i64, f64)] {
    let lo = points.partition_point(|p| p.0 <= start);
    let hi = points.partition_point(|p| p.0 <= end);
    if lo >= hi { &[] } else { &points[lo..hi] }
}

/// An intermediate value: one entry per evaluation step for scalars and vectors.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Scalar(Vec<f64>),
    Str(String),
    Vector(Vec<Vec<Sample>>),
    Matrix(MatrixArg),
}

/// Labels without `__name__`.
pub(crate) fn without_name(l: &Labels) -> Labels {
    let mut l = l.clone();
    l.remove(METRIC_NAME);
    l
}
