//! PromQL evaluation (DESIGN §4 `query/`): promql-parser parses, we evaluate.
//!
//! - [`value`]: the data the engine reads ([`Queryable`]) and returns ([`QueryValue`]).
//! - [`engine`]: instant and range evaluation of a parsed expression, with
//!   Prometheus 3 semantics (left-open windows, 5 m lookback, StaleNaN, delayed
//!   `__name__` removal).
//! - [`binary`], [`aggregate`], [`functions`]: operators, aggregations, function calls.
//! - [`memstore`]: an in-memory [`Queryable`] for tests and the conformance runner.
//! - [`source`]: the [`Queryable`] over the node's live data (index, head, raw and
//!   aggregate tiers) with the per-query limits the HTTP API enforces.
//! - [`tiered`]: range functions over old data answered from the aggregate tiers.

pub mod aggregate;
pub mod binary;
pub mod engine;
pub mod functions;
pub mod memstore;
pub mod source;
pub mod tiered;
pub mod value;

pub use engine::{EvalOptions, instant_query, range_query};
pub use memstore::MemStore;
pub use value::{
    Annotation, InstantSample, QueryError, QueryValue, Queryable, SeriesData, WindowSeries,
};
