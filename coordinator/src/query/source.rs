//! The node's live data as the engine reads it: the series index and the in-memory
//! head of the replicated state machine, the raw tier of the store for chunks the head
//! has sealed and handed over, and the store's aggregate tiers for old ranges.
//!
//! One [`LiveSource`] serves one query. Each `select` takes the state's read lock only
//! to resolve the matchers and copy the head's samples, then releases it before the
//! store is read, so a long query never holds up apply (the writer of that lock).
//!
//! **Tiers.** Raw samples (head and raw tier) answer every selector whose range raw
//! retention still covers. Range functions that aggregate windows can answer
//! (`rate`, `increase`, `avg`/`sum`/`count`/`min`/`max`/`last_over_time` applied to a
//! matrix selector) are answered over older ranges from an aggregate tier; the engine
//! chooses it ([`super::tiered`]) from what [`LiveSource::tier_views`] says each tier
//! holds, and the answer names it in its `infos`. Any other selector reaching before raw
//! retention gets a warning saying so, so a partial answer is never silent.
//!
//! A tier's windows are read from the store and from the state machine, which holds the
//! sealed windows the replica has not written yet (it writes them at checkpoints), so a
//! window is readable as soon as it is sealed. How far a tier is complete follows from
//! the replicated time: a quiet series' windows are sealed against the leader's time
//! less the out-of-order window, checked every [`WATERMARK_EVERY_MS`], and a live
//! series' by its own newest sample (see `tsdb::aggregate`). Where a series has newer
//! samples than its sealed windows reach, the engine leaves the unsealed part out with a
//! warning rather than answer from half a range.
//!
//! **Consistency.** The head only accepts a sample newer than what it has sealed, so
//! every stored chunk is older than every head sample of the same series; the store is
//! read only below the first head sample in range, and the two are merged by timestamp
//! with one sample per timestamp (the head's, should both ever hold one). The head is
//! read before the store: a chunk the replica takes from the head after our head read
//! is in our copy already, and the replica takes a chunk (or aggregate block) from the
//! state only after the store holds it, so none is missed in between.
//!
//! **Applied index.** The answer records the applied index of the first read of the
//! state: every entry up to it is reflected in every selector of the query. A query with
//! several selectors reads the state once per selector, so later entries may be partly
//! reflected; the index is a lower bound, which is what a client waiting for its own
//! write needs.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use argus_common::model::Labels;

use super::tiered::TierView;
use super::value::{Annotation, METRIC_NAME, QueryError, Queryable, SeriesData, WindowSeries};
use crate::state::machine::WATERMARK_EVERY_MS;
use crate::state::replica::SharedState;
use crate::tsdb::aggregate::Aggregate;
use crate::tsdb::store::{Store, StoreError};
use crate::tsdb::tier::align_down;
use crate::tsdb::{Matcher, SeriesId};

/// How often (in series) a long selection checks the query deadline.
const DEADLINE_CHECK_EVERY: usize = 256;

/// Limits of query serving. Defaults follow Prometheus's flags where it has one
/// (named in each field's doc); each refusal names the limit it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Most samples one query may load from the head and the store together
    /// (Prometheus `--query.max-samples`, 50,000,000).
    pub max_samples: usize,
    /// Most series one query may select, over all its selectors. Prometheus has no such
    /// limit; 500,000 series keep the copied labels of one query within a few hundred MB.
    pub max_series: usize,
    /// Longest evaluation, including the wait for a free slot
    /// (Prometheus `--query.timeout`, 2 minutes). A request's `timeout` can only shorten it.
    pub timeout: Duration,
    /// Queries evaluated at once; the rest wait for a slot
    /// (Prometheus `--query.max-concurrency`, 20).
    pub max_concurrent: usize,
    /// How far back an instant selector looks (Prometheus `--query.lookback-delta`, 5 m).
    pub lookback: Duration,
    /// Points per series of a range query (Prometheus's fixed 11,000).
    pub max_points_per_series: i64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_samples: 50_000_000,
            max_series: 500_000,
            timeout: Duration::from_secs(120),
            max_concurrent: 20,
            lookback: Duration::from_secs(300),
            max_points_per_series: 11_000,
        }
    }
}

/// What a query read: for the `stats` answer, the applied-index header and warnings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadStats {
    /// Applied index at the first read of the state (see the module doc).
    pub applied: Option<u64>,
    /// Series selected, over all selectors.
    pub series: usize,
    /// Samples loaded, head and store together.
    pub samples: usize,
    /// Of those, samples read from the store's raw tier.
    pub store_samples: usize,
    /// Aggregate windows read from the store's aggregate tiers (also in `samples`).
    pub tier_windows: usize,
    /// Set when a read was refused because the deadline had passed.
    pub timed_out: bool,
    /// Distinct warnings for the response.
    pub warnings: Vec<String>,
    /// Distinct info annotations for the response (which tier answered).
    pub infos: Vec<String>,
}

impl ReadStats {
    fn warn(&mut self, w: String) {
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }

    fn info(&mut self, i: String) {
        if !self.infos.contains(&i) {
            self.infos.push(i);
        }
    }
}

/// A [`Queryable`] over the node's live data, for one query; see the module doc.
pub struct LiveSource {
    state: SharedState,
    store: Arc<Store>,
    max_samples: usize,
    max_series: usize,
    deadline: Option<Instant>,
    /// Set by the caller when nobody waits for the answer any more (the client went
    /// away); checked where the deadline is.
    canceled: Option<Arc<AtomicBool>>,
    /// Wall-clock "now" of the query, for the raw tier's retention horizon.
    now_ms: i64,
    read: RefCell<ReadStats>,
}

impl LiveSource {
    pub fn new(
        state: SharedState,
        store: Arc<Store>,
        limits: &QueryLimits,
        deadline: Option<Instant>,
        now_ms: i64,
    ) -> LiveSource {
        LiveSource {
            state,
            store,
            max_samples: limits.max_samples,
            max_series: limits.max_series,
            deadline,
            canceled: None,
            now_ms,
            read: RefCell::new(ReadStats::default()),
        }
    }

    /// What was read so far.
    pub fn stats(&self) -> ReadStats {
        self.read.borrow().clone()
    }

    /// Consumes the source, returning what it read.
    pub fn into_stats(self) -> ReadStats {
        self.read.into_inner()
    }

    /// The applied index now, for answers that never read the state (a literal).
    pub fn applied_now(&self) -> Result<u64, QueryError> {
        let sm = self
            .state
            .read()
            .map_err(|_| QueryError::Store("state lock poisoned".into()))?;
        Ok(sm.applied())
    }

    /// Stops the query at its next deadline check once `flag` is set, so a query whose
    /// client disconnected gives its slot back instead of running to its timeout.
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> LiveSource {
        self.canceled = Some(flag);
        self
    }

    fn check_deadline(&self) -> Result<(), QueryError> {
        if self
            .canceled
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(QueryError::Execution(
                "query canceled: the client closed the connection".into(),
            ));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.read.borrow_mut().timed_out = true;
            return Err(QueryError::Execution(
                "query timed out in expression evaluation".into(),
            ));
        }
        Ok(())
    }

    /// Adds `n` loaded samples, refusing the query once over the limit.
    fn charge(&self, n: usize) -> Result<(), QueryError> {
        let mut r = self.read.borrow_mut();
        r.samples = r.samples.saturating_add(n);
        if r.samples > self.max_samples {
            return Err(samples_limit(self.max_samples));
        }
        Ok(())
    }

    fn raw_horizon(&self) -> Option<i64> {
        self.store.tiers().get(0).map(|t| t.oldest_ms(self.now_ms))
    }

    /// Resolves `matchers` under the state's read lock: ids, labels (with `__name__`) and
    /// the head's newest timestamp, counted against the series limit.
    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        matchers: &[Matcher],
    ) -> Result<Vec<(SeriesId, Labels, Option<i64>)>, QueryError> {
        let sm = self
            .state
            .read()
            .map_err(|_| QueryError::Store("state lock poisoned".into()))?;
        self.read.borrow_mut().applied.get_or_insert(sm.applied());
        let ids = sm
            .index()
            .select(matchers)
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        self.count_series(ids.len())?;
        let mut out = Vec::with_capacity(ids.len());
        for (i, id) in ids.into_iter().enumerate() {
            if i % DEADLINE_CHECK_EVERY == DEADLINE_CHECK_EVERY - 1 {
                self.check_deadline()?;
            }
            if let Some(series) = sm.index().series(id) {
                let mut labels = series.labels.clone();
                labels.set(METRIC_NAME, series.name.clone());
                out.push((id, labels, sm.head().newest(id)));
            }
        }
        Ok(out)
    }

    fn count_series(&self, n: usize) -> Result<(), QueryError> {
        let mut r = self.read.borrow_mut();
        r.series = r.series.saturating_add(n);
        if r.series > self.max_series {
            return Err(QueryError::Limit(format!(
                "query selects more than {} series (limit query.max_series); \
                 narrow the selectors",
                self.max_series
            )));
        }
        Ok(())
    }
}

/// What each tier holds at wall-clock `now_ms`, given the replicated time and the
/// head's out-of-order window (see the module doc). Pure, for tests.
pub(crate) fn tier_views(
    tiers: &crate::tsdb::tier::Tiers,
    now_ms: i64,
    leader_ms: i64,
    ooo_ms: i64,
) -> Vec<TierView> {
    // Windows ending at or before this are sealed (and readable) for every series.
    let frontier = leader_ms
        .saturating_sub(WATERMARK_EVERY_MS)
        .saturating_sub(ooo_ms)
        .saturating_sub(1);
    tiers
        .iter()
        .map(|(id, t)| TierView {
            tier: id,
            name: t.name().to_owned(),
            step_ms: t.step_ms(),
            oldest_ms: t.oldest_ms(now_ms),
            complete_until_ms: t
                .step_ms()
                .map_or(i64::MAX, |step| align_down(frontier, step)),
        })
        .collect()
}

fn samples_limit(max: usize) -> QueryError {
    QueryError::Limit(format!(
        "query processing would load more than {max} samples into memory \
         (limit query.max_samples); narrow the selectors or the time range"
    ))
}

fn store_error(e: StoreError) -> QueryError {
    match e {
        StoreError::ReadTooLarge { found, limit } => QueryError::Limit(format!(
            "a single series read of over {found} samples exceeds the store's limit of {limit}"
        )),
        other => QueryError::Store(other.to_string()),
    }
}

/// One selected series between the locked and the unlocked phase.
struct Picked {
    id: SeriesId,
    labels: Labels,
    head: Vec<(i64, f64)>,
}

impl Queryable for LiveSource {
    fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SeriesData>, QueryError> {
        self.check_deadline()?;
        if mint > maxt {
            return Ok(Vec::new());
        }
        if let Some(h) = self.raw_horizon()
            && mint < h
        {
            self.read.borrow_mut().warn(format!(
                "the query reads from {mint} ms, before the raw tier's retention horizon \
                 ({h} ms); older data is kept only in aggregate tiers, which answer only \
                 rate, increase and avg, sum, count, min, max and last_over_time applied \
                 directly to a range selector, so other results for that part of the range \
                 may be incomplete"
            ));
        }
        // Locked phase: resolve the matchers, copy labels and head samples.
        let picked = {
            let sm = self
                .state
                .read()
                .map_err(|_| QueryError::Store("state lock poisoned".into()))?;
            {
                let mut r = self.read.borrow_mut();
                r.applied.get_or_insert(sm.applied());
            }
            let ids = sm
                .index()
                .select(matchers)
                .map_err(|e| QueryError::Execution(e.to_string()))?;
            self.count_series(ids.len())?;
            let mut picked = Vec::with_capacity(ids.len());
            for (i, id) in ids.into_iter().enumerate() {
                if i % DEADLINE_CHECK_EVERY == DEADLINE_CHECK_EVERY - 1 {
                    self.check_deadline()?;
                }
                let Some(series) = sm.index().series(id) else {
                    continue;
                };
                let head: Vec<(i64, f64)> = sm
                    .head()
                    .select(id, mint, maxt)
                    .map_err(|e| QueryError::Store(e.to_string()))?
                    .collect();
                self.charge(head.len())?;
                let mut labels = series.labels.clone();
                labels.set(METRIC_NAME, series.name.clone());
                picked.push(Picked { id, labels, head });
            }
            picked
        };
        // Unlocked phase: the store below the head, merged.
        let mut out = Vec::with_capacity(picked.len());
        for (i, p) in picked.into_iter().enumerate() {
            if i % DEADLINE_CHECK_EVERY == DEADLINE_CHECK_EVERY - 1 {
                self.check_deadline()?;
            }
            // Stored chunks are all older than the head's samples (see the module doc).
            let below = p.head.first().map_or(maxt, |f| f.0.saturating_sub(1));
            let stored = if mint <= below {
                self.store
                    .read_raw(p.id, mint, below)
                    .map_err(store_error)?
            } else {
                Vec::new()
            };
            self.charge(stored.len())?;
            {
                let mut r = self.read.borrow_mut();
                r.store_samples = r.store_samples.saturating_add(stored.len());
            }
            let samples = merge(stored, p.head);
            if !samples.is_empty() {
                out.push(SeriesData {
                    labels: p.labels,
                    samples,
                });
            }
        }
        Ok(out)
    }

    fn tier_views(&self) -> Result<Option<Vec<TierView>>, QueryError> {
        let (leader_ms, ooo_ms) = {
            let sm = self
                .state
                .read()
                .map_err(|_| QueryError::Store("state lock poisoned".into()))?;
            (sm.last_time_ms(), sm.head().config().ooo_window_ms)
        };
        let views = tier_views(self.store.tiers(), self.now_ms, leader_ms, ooo_ms);
        Ok((views.len() > 1).then_some(views))
    }

    fn select_windows(
        &self,
        matchers: &[Matcher],
        tier: u8,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<WindowSeries>, QueryError> {
        self.check_deadline()?;
        if mint > maxt {
            return Ok(Vec::new());
        }
        let picked = self.resolve(matchers)?;
        // The state's windows first, then the store's: a block the replica takes after
        // this read is in the copy, one taken before it is in the store already.
        let held: Vec<Vec<Aggregate>> = {
            let sm = self
                .state
                .read()
                .map_err(|_| QueryError::Store("state lock poisoned".into()))?;
            picked
                .iter()
                .map(|p| sm.sealed_windows(p.0, tier, mint, maxt))
                .collect()
        };
        let mut out = Vec::with_capacity(picked.len());
        for (i, ((id, labels, newest_ms), held)) in picked.into_iter().zip(held).enumerate() {
            if i % DEADLINE_CHECK_EVERY == DEADLINE_CHECK_EVERY - 1 {
                self.check_deadline()?;
            }
            let stored = self
                .store
                .read_aggregates(tier, id, mint, maxt)
                .map_err(store_error)?;
            let windows = merge_windows(stored, held);
            self.charge(windows.len())?;
            {
                let mut r = self.read.borrow_mut();
                r.tier_windows = r.tier_windows.saturating_add(windows.len());
            }
            if !windows.is_empty() {
                out.push(WindowSeries {
                    labels,
                    windows,
                    newest_ms,
                });
            }
        }
        Ok(out)
    }

    fn annotate(&self, note: Annotation) {
        let mut r = self.read.borrow_mut();
        match note {
            Annotation::Info(i) => r.info(i),
            Annotation::Warning(w) => r.warn(w),
        }
    }
}

/// Merges the store's windows with those the state still holds (both ascending), one
/// per start; the state's win a tie (both would be the same window).
fn merge_windows(stored: Vec<Aggregate>, held: Vec<Aggregate>) -> Vec<Aggregate> {
    if held.is_empty() {
        return stored;
    }
    let mut all = held;
    all.extend(stored);
    // Stable: of two windows with one start, the state's (first) is kept.
    all.sort_by_key(|w| w.start_ms);
    all.dedup_by_key(|w| w.start_ms);
    all
}

/// Merges two timestamp-sorted runs into one with one sample per timestamp, `newer`'s
/// winning a tie. The common case (all of `older` before `newer`) is a plain append.
pub(crate) fn merge(older: Vec<(i64, f64)>, newer: Vec<(i64, f64)>) -> Vec<(i64, f64)> {
    if older.is_empty() {
        return newer;
    }
    if newer.is_empty() {
        return older;
    }
    if older.last().map(|s| s.0) < newer.first().map(|s| s.0) {
        let mut out = older;
        out.extend(newer);
        return out;
    }
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let (mut a, mut b) = (older.into_iter().peekable(), newer.into_iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 < y.0 => out.extend(a.next()),
            (Some(x), Some(y)) if x.0 == y.0 => {
                a.next();
                out.extend(b.next());
            }
            (_, Some(_)) => out.extend(b.next()),
            (Some(_), None) => out.extend(a.next()),
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{EvalOptions, QueryValue, instant_query, range_query};
    use crate::state::entry::{Entry, PushedSeries};
    use crate::state::machine::{Limits, StateMachine};
    use crate::tsdb::store::{ChunkRef, StoreConfig};
    use crate::tsdb::tier::Tiers;
    use crate::tsdb::{HeadConfig, MatchOp};
    use std::sync::RwLock;

    /// 2025-01-01T00:00:00Z, a round time so expected values are easy to state.
    const T0: i64 = 1_735_689_600_000;
    const STEP: i64 = 15_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        state: SharedState,
        store: Arc<Store>,
    }

    impl Fixture {
        /// `n` samples (value = index) of `requests_total{job, instance}` for each
        /// instance, every 15 s from T0, applied as one entry per 50 samples; sealed
        /// chunks are written to the store as the replica does.
        fn new(instances: &[&str], n: usize) -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Arc::new(
                Store::open(dir.path(), StoreConfig::new(Tiers::argus_defaults())).expect("store"),
            );
            let mut sm = StateMachine::new(
                HeadConfig::default(),
                Limits::default(),
                &Tiers::argus_defaults(),
            )
            .expect("state machine");
            let mut index = 0;
            for start in (0..n).step_by(50) {
                let end = (start + 50).min(n);
                let series = instances
                    .iter()
                    .map(|inst| PushedSeries {
                        name: "requests_total".into(),
                        labels: Labels::from_pairs([("instance", *inst), ("job", "api")]),
                        samples: (start..end)
                            .map(|i| (T0 + i as i64 * STEP, i as f64))
                            .collect(),
                    })
                    .collect();
                index += 1;
                let entry = Entry::RemoteWrite {
                    series,
                    metadata: Vec::new(),
                };
                let out = sm.apply(index, T0 + n as i64 * STEP, &entry);
                assert_eq!(out.refused_total(), 0, "{out:?}");
                let sealed = sm.take_sealed();
                let refs: Vec<ChunkRef<'_>> = sealed
                    .iter()
                    .map(|c| ChunkRef {
                        series_id: c.series,
                        min_t: c.min_t,
                        max_t: c.max_t,
                        bytes: &c.bytes,
                    })
                    .collect();
                store.write_chunks(&refs).expect("write chunks");
            }
            Fixture {
                _dir: dir,
                state: Arc::new(RwLock::new(sm)),
                store,
            }
        }

        fn source(&self, limits: &QueryLimits) -> LiveSource {
            // "Now" just after the data, so everything is within raw retention.
            let now = T0 + 2 * 3_600_000;
            LiveSource::new(self.state.clone(), self.store.clone(), limits, None, now)
        }
    }

    fn name_is(name: &str) -> Vec<Matcher> {
        vec![Matcher::equal(METRIC_NAME, name)]
    }

    #[test]
    fn head_and_store_merge_into_one_sample_per_timestamp() {
        let f = Fixture::new(&["a"], 300);
        let src = f.source(&QueryLimits::default());
        let got = src
            .select(&name_is("requests_total"), i64::MIN / 2, i64::MAX / 2)
            .unwrap();
        assert_eq!(got.len(), 1);
        let want: Vec<(i64, f64)> = (0..300).map(|i| (T0 + i * STEP, i as f64)).collect();
        assert_eq!(got[0].samples, want);
        assert_eq!(
            got[0].labels,
            Labels::from_pairs([
                ("__name__", "requests_total"),
                ("instance", "a"),
                ("job", "api")
            ])
        );
        let stats = src.into_stats();
        assert_eq!(stats.applied, Some(6), "the index of the last entry");
        assert_eq!(stats.samples, 300);
        assert_eq!(stats.series, 1);
        // 300 samples at 15 s with a 10 minute out-of-order window: the first chunks
        // are sealed into the store, the rest are in the head.
        assert!(
            stats.store_samples >= 120 && stats.store_samples < 300,
            "both halves are read: {stats:?}"
        );
    }

    #[test]
    fn a_window_inside_the_store_or_the_head_is_exact() {
        let f = Fixture::new(&["a"], 300);
        let src = f.source(&QueryLimits::default());
        for (lo, hi) in [(10, 20), (110, 130), (250, 299), (0, 0), (299, 299)] {
            let got = src
                .select(&name_is("requests_total"), T0 + lo * STEP, T0 + hi * STEP)
                .unwrap();
            let want: Vec<(i64, f64)> = (lo..=hi).map(|i| (T0 + i * STEP, i as f64)).collect();
            assert_eq!(got[0].samples, want, "[{lo}, {hi}]");
        }
        // Between two samples: nothing, and the series is left out.
        let got = src
            .select(&name_is("requests_total"), T0 + 1, T0 + STEP - 1)
            .unwrap();
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn matchers_select_series_and_regexes_work() {
        let f = Fixture::new(&["a", "b", "c"], 10);
        let src = f.source(&QueryLimits::default());
        let mut ms = name_is("requests_total");
        ms.push(Matcher::new(MatchOp::RegexMatch, "instance", "a|c").unwrap());
        let got = src.select(&ms, T0, T0 + 100 * STEP).unwrap();
        let insts: Vec<&str> = got
            .iter()
            .map(|s| s.labels.get("instance").unwrap())
            .collect();
        assert_eq!(insts, ["a", "c"]);
        let none = src
            .select(&name_is("nothing_here"), T0, T0 + 100 * STEP)
            .unwrap();
        assert!(none.is_empty());
        // A selector that matches everything is refused by the index, as an execution error.
        let empty = [Matcher::new(MatchOp::RegexMatch, "job", ".*").unwrap()];
        assert!(matches!(
            src.select(&empty, T0, T0 + 1),
            Err(QueryError::Execution(_))
        ));
    }

    #[test]
    fn samples_limit_counts_head_and_store_over_all_selectors() {
        let f = Fixture::new(&["a"], 300);
        let limits = QueryLimits {
            max_samples: 450,
            ..QueryLimits::default()
        };
        let src = f.source(&limits);
        let all = (i64::MIN / 2, i64::MAX / 2);
        src.select(&name_is("requests_total"), all.0, all.1)
            .expect("300 fit");
        match src.select(&name_is("requests_total"), all.0, all.1) {
            Err(QueryError::Limit(m)) => {
                assert!(m.contains("450") && m.contains("max_samples"), "{m}")
            }
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn series_limit_counts_selected_series() {
        let f = Fixture::new(&["a", "b", "c"], 5);
        let limits = QueryLimits {
            max_series: 2,
            ..QueryLimits::default()
        };
        let src = f.source(&limits);
        match src.select(&name_is("requests_total"), T0, T0 + 10 * STEP) {
            Err(QueryError::Limit(m)) => assert!(m.contains("more than 2 series"), "{m}"),
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn a_passed_deadline_stops_the_read() {
        let f = Fixture::new(&["a"], 5);
        let past = Instant::now();
        let src = LiveSource::new(
            f.state.clone(),
            f.store.clone(),
            &QueryLimits::default(),
            Some(past),
            T0,
        );
        assert!(matches!(
            src.select(&name_is("requests_total"), T0, T0 + 10 * STEP),
            Err(QueryError::Execution(m)) if m.contains("timed out")
        ));
        assert!(src.stats().timed_out);
    }

    #[test]
    fn a_canceled_query_stops_at_its_next_read() {
        let f = Fixture::new(&["a"], 5);
        let flag = Arc::new(AtomicBool::new(false));
        let src = f.source(&QueryLimits::default()).with_cancel(flag.clone());
        let sel = name_is("requests_total");
        assert!(src.select(&sel, T0, T0 + 10 * STEP).is_ok());
        flag.store(true, Ordering::Relaxed);
        assert!(matches!(
            src.select(&sel, T0, T0 + 10 * STEP),
            Err(QueryError::Execution(m)) if m.contains("canceled")
        ));
        assert!(!src.stats().timed_out, "a cancel is not a timeout");
    }

    #[test]
    fn reading_before_raw_retention_warns_once() {
        let f = Fixture::new(&["a"], 5);
        let src = f.source(&QueryLimits::default());
        src.select(&name_is("requests_total"), T0, T0 + STEP)
            .unwrap();
        assert!(src.stats().warnings.is_empty(), "recent data: no warning");
        let long_ago = T0 - 40 * 86_400_000;
        src.select(&name_is("requests_total"), long_ago, T0)
            .unwrap();
        src.select(&name_is("requests_total"), long_ago, T0)
            .unwrap();
        let w = src.stats().warnings;
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("raw tier's retention"), "{w:?}");
    }

    #[test]
    fn the_engine_answers_over_live_data() {
        let f = Fixture::new(&["a", "b"], 300);
        let src = f.source(&QueryLimits::default());
        let opts = EvalOptions::default();
        // The counter rises by 1 every 15 s: a rate of 1/15 per second per instance,
        // over a window reaching into the stored chunks.
        let expr =
            promql_parser::parser::parse("sum by (job) (rate(requests_total[10m]))").unwrap();
        let t = T0 + 140 * STEP;
        match instant_query(&src, &expr, t, &opts).unwrap() {
            QueryValue::Vector(v) => {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].labels, Labels::from_pairs([("job", "api")]));
                assert!((v[0].v - 2.0 / 15.0).abs() < 1e-9, "{}", v[0].v);
            }
            other => panic!("{other:?}"),
        }
        let expr =
            promql_parser::parser::parse("requests_total{instance=\"b\"} offset 1h").unwrap();
        match range_query(
            &src,
            &expr,
            T0 + 3_600_000,
            T0 + 3_600_000 + 4 * STEP,
            STEP,
            &opts,
        )
        .unwrap()
        {
            QueryValue::Matrix(m) => {
                assert_eq!(m.len(), 1);
                let vals: Vec<f64> = m[0].samples.iter().map(|p| p.1).collect();
                assert_eq!(vals, [0.0, 1.0, 2.0, 3.0, 4.0]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tiers_are_complete_up_to_the_windows_sealed_by_the_replicated_time() {
        let day = 86_400_000;
        let now = T0 + 10 * day;
        // Leader time 07:30, 10 min out-of-order window, 1 min watermark: sealed for every
        // series up to 07:19 (less a millisecond).
        let leader = T0 + 7 * 3_600_000 + 30 * 60_000;
        let v = tier_views(&Tiers::argus_defaults(), now, leader, 600_000);
        let summary: Vec<_> = v
            .iter()
            .map(|t| (t.name.as_str(), t.oldest_ms, t.complete_until_ms))
            .collect();
        assert_eq!(
            summary,
            [
                ("raw", now - day, i64::MAX),
                ("5m", now - 30 * day, T0 + 7 * 3_600_000 + 15 * 60_000),
                ("1h", now - 365 * day, T0 + 7 * 3_600_000),
            ]
        );
        // The product tiers' daily windows: up to the start of the day.
        let v = tier_views(&Tiers::product_docs().unwrap(), now, leader, 600_000);
        assert_eq!(v[3].complete_until_ms, T0);
    }

    #[test]
    fn merge_keeps_one_sample_per_timestamp_newer_wins() {
        assert_eq!(merge(vec![(1, 1.0)], vec![(2, 2.0)]), [(1, 1.0), (2, 2.0)]);
        assert_eq!(merge(vec![], vec![(2, 2.0)]), [(2, 2.0)]);
        assert_eq!(merge(vec![(1, 1.0)], vec![]), [(1, 1.0)]);
        assert_eq!(
            merge(
                vec![(1, 1.0), (3, 3.0), (5, 5.0)],
                vec![(2, 20.0), (3, 30.0), (6, 60.0)]
            ),
            [(1, 1.0), (2, 20.0), (3, 30.0), (5, 5.0), (6, 60.0)]
        );
    }
}
