//! What the engine reads and what it answers.

use argus_common::model::Labels;

use super::tiered::TierView;
use crate::tsdb::Matcher;
use crate::tsdb::aggregate::Aggregate;

/// The label that carries the metric name in query results.
pub const METRIC_NAME: &str = "__name__";

/// One stored series as the engine sees it: labels including `__name__`, samples
/// sorted by timestamp (ms), StaleNaN markers included so the engine can end a series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// One stored series as an aggregate tier holds it: labels including `__name__`, windows
/// ascending by start.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSeries {
    pub labels: Labels,
    pub windows: Vec<Aggregate>,
    /// The newest sample the source holds for the series, where it knows it: windows
    /// missing before it are not stored yet rather than empty.
    pub newest_ms: Option<i64>,
}

/// A note for the query's answer: Prometheus's `infos` and `warnings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Annotation {
    /// Something the user should know to read the answer right (which tier answered).
    Info(String),
    /// The answer may be incomplete or differ from what raw samples would give.
    Warning(String),
}

/// The store as the engine needs it. Implemented by the tsdb, and by [`super::MemStore`]
/// in tests; keeping it this narrow means the engine does no I/O of its own.
///
/// Only `select` is required: a source without aggregate tiers keeps the defaults of the
/// other methods, and every function is then evaluated over raw samples.
pub trait Queryable {
    /// Every series matching all `matchers`, with its samples in `[mint, maxt]`
    /// (inclusive; the engine applies left-open windows itself).
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, QueryError>;

    /// The tiers behind this source as of this query, raw first (see
    /// [`super::tiered`]); `None` when it holds raw samples only.
    fn tier_views(&self) -> Result<Option<Vec<TierView>>, QueryError> {
        Ok(None)
    }

    /// Every series matching all `matchers`, with its windows of aggregate tier `tier`
    /// whose start is in `[mint, maxt]`; series without such windows are left out.
    fn select_windows(
        &self,
        matchers: &[Matcher],
        tier: u8,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<WindowSeries>, QueryError> {
        let _ = (matchers, tier, mint, maxt);
        Ok(Vec::new())
    }

    /// Records a note for the answer. Sources that cannot pass notes on drop them.
    fn annotate(&self, note: Annotation) {
        let _ = note;
    }
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
