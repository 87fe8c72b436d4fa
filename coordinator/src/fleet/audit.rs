//! The audit log (issue 5 item 7): who did what, when, from where, and how it ended.
//!
//! Records reach the log as [`crate::state::entry::Entry::Audit`] batches, so every
//! replica holds the same table and `GET /api/audit` answers the same on every node.
//! Two producers:
//!
//! - administrative and operator actions (API tokens, join tokens, agent revocation):
//!   one record each, proposed right after the action, so the answer to the request
//!   comes once its audit record is applied;
//! - refusals that an attacker can repeat at will (failed enrollments, failed logins):
//!   these go through an [`AuditSink`], which merges records that differ only in time
//!   within one minute into one record with a `count`, so a flood becomes at most one
//!   entry per flush, and at most [`MAX_PENDING`] distinct records per flush (the rest
//!   are counted as dropped, never queued without bound).
//!
//! The table is bounded twice, deterministically (apply reads no clock): records older
//! than the retention carried by the entry, measured against the entry's leader time,
//! are dropped, and beyond [`MAX_RECORDS`] the oldest go. Both drops are counted.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Most records the table keeps, whatever the retention; the oldest go first.
pub const MAX_RECORDS: usize = 100_000;
/// Most records one entry may carry; a proposer cuts larger batches.
pub const MAX_RECORDS_PER_ENTRY: usize = 1_000;
/// Longest text field kept; longer ones are cut at a character boundary with `…`.
pub const MAX_FIELD_LEN: usize = 256;
/// Distinct records an [`AuditSink`] holds between two flushes.
pub const MAX_PENDING: usize = 4_096;
/// Window within which an [`AuditSink`] merges repeats of one record.
pub const AGGREGATE_WINDOW_MS: i64 = 60_000;
/// Default retention of the audit table: 90 days.
pub const DEFAULT_RETENTION_MS: i64 = 90 * 24 * 3_600_000;

/// Outcome strings the coordinator writes (free text is allowed; these keep the
/// common ones spelled one way for filtering).
pub mod outcome {
    pub const OK: &str = "ok";
    pub const DENIED: &str = "denied";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const REFUSED: &str = "refused";
    pub const FAILED: &str = "failed";
}

/// One audited event, or `count` identical ones within [`AGGREGATE_WINDOW_MS`] of
/// `time_ms` (the first of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Wall time of the (first) event, milliseconds since the epoch.
    pub time_ms: i64,
    /// Who: `admin` (the cluster's admin token), `api-token:<id> (<name>)`,
    /// `anonymous`, `agent:<id>`, or `-` when unknown (a failed enrollment).
    pub actor: String,
    /// What, as `noun.verb`: `api_token.create`, `token.revoke`, `enroll`, ….
    pub action: String,
    /// What it acted on (a token id, an agent id, a host name), or empty.
    pub target: String,
    /// Where from: the peer address (`ip:port` or `ip`), or empty.
    pub source: String,
    /// How it ended: see [`outcome`], or a refusal reason.
    pub outcome: String,
    /// How many identical events this record stands for; at least 1.
    pub count: u32,
}

impl AuditRecord {
    /// A single event.
    pub fn new(
        time_ms: i64,
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        source: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        AuditRecord {
            time_ms,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            source: source.into(),
            outcome: outcome.into(),
            count: 1,
        }
    }

    /// The record with every text field cut to [`MAX_FIELD_LEN`] and a count of at
    /// least 1: what apply stores, whatever a proposer sent.
    fn bounded(&self) -> AuditRecord {
        AuditRecord {
            time_ms: self.time_ms,
            actor: cut(&self.actor),
            action: cut(&self.action),
            target: cut(&self.target),
            source: cut(&self.source),
            outcome: cut(&self.outcome),
            count: self.count.max(1),
        }
    }

    /// What makes two records repeats of each other (all but time and count).
    fn key(&self) -> RecordKey {
        (
            self.actor.clone(),
            self.action.clone(),
            self.target.clone(),
            self.source.clone(),
            self.outcome.clone(),
        )
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_FIELD_LEN {
        return s.to_string();
    }
    let mut end = MAX_FIELD_LEN - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A record as the table holds it: numbered in apply order, stamped with the leader
/// time of the entry that brought it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Position in the log of audit records, from 1, never reused: a stable cursor.
    pub seq: u64,
    /// Leader time of the entry that applied it; retention counts from here.
    pub logged_ms: i64,
    pub record: AuditRecord,
}

/// What the bounds dropped, replicated so every node reports the same figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDrops {
    /// Records older than the retention.
    pub expired: u64,
    /// Records pushed out by [`MAX_RECORDS`].
    pub over_capacity: u64,
    /// Records beyond [`MAX_RECORDS_PER_ENTRY`] in one entry.
    pub over_entry_limit: u64,
}

/// The replicated audit table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    records: VecDeque<StoredRecord>,
    next_seq: u64,
    drops: AuditDrops,
}

/// Which records a query wants; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `.` (`api_token.` matches every API-token
    /// action).
    pub action: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<String>,
    pub source: Option<String>,
    /// Records whose event time is at or after this.
    pub since_ms: Option<i64>,
    /// Records whose event time is at or before this.
    pub until_ms: Option<i64>,
}

impl AuditFilter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let action = self
            .action
            .as_deref()
            .is_none_or(|w| w == r.action || (w.ends_with('.') && r.action.starts_with(w)));
        eq(&self.actor, &r.actor)
            && action
            && eq(&self.target, &r.target)
            && eq(&self.outcome, &r.outcome)
            && eq(&self.source, &r.source)
            && self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.until_ms.is_none_or(|t| r.time_ms <= t)
    }
}

impl AuditLog {
    /// Applies one `Audit` entry at leader time `time_ms`: drops what the retention and
    /// the capacity rule out, then appends. Deterministic: the same entries at the same
    /// times give the same table on every replica.
    pub fn apply(&mut self, records: &[AuditRecord], retention_ms: i64, time_ms: i64) {
        self.expire(retention_ms, time_ms);
        let take = records.len().min(MAX_RECORDS_PER_ENTRY);
        self.drops.over_entry_limit += (records.len() - take) as u64;
        for r in &records[..take] {
            self.next_seq += 1;
            self.records.push_back(StoredRecord {
                seq: self.next_seq,
                logged_ms: time_ms,
                record: r.bounded(),
            });
        }
        while self.records.len() > MAX_RECORDS {
            self.records.pop_front();
            self.drops.over_capacity += 1;
        }
    }

    /// Drops records logged more than `retention_ms` before `time_ms`. Records are in
    /// apply order, whose leader times only rise, so the old ones are at the front.
    fn expire(&mut self, retention_ms: i64, time_ms: i64) {
        let cutoff = time_ms.saturating_sub(retention_ms.max(0));
        while self.records.front().is_some_and(|r| r.logged_ms < cutoff) {
            self.records.pop_front();
            self.drops.expired += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn drops(&self) -> &AuditDrops {
        &self.drops
    }

    /// Matching records, newest first, at most `limit`, only those with `seq` below
    /// `before_seq` when given (to page backwards).
    pub fn query(
        &self,
        filter: &AuditFilter,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Vec<&StoredRecord> {
        self.records
            .iter()
            .rev()
            .filter(|r| before_seq.is_none_or(|b| r.seq < b))
            .filter(|r| filter.matches(&r.record))
            .take(limit)
            .collect()
    }
}

/// What makes two records repeats of each other: actor, action, target, source, outcome.
type RecordKey = (String, String, String, String, String);

/// Repeats of one record merged within a minute, waiting to be proposed. Pure: time is
/// an argument.
#[derive(Debug, Default)]
pub struct Aggregator {
    pending: BTreeMap<(i64, RecordKey), AuditRecord>,
    dropped: u64,
}

impl Aggregator {
    /// Adds a record: merged into a pending one with the same fields in the same
    /// minute, else held as new, else (over [`MAX_PENDING`]) dropped and counted.
    pub fn add(&mut self, record: AuditRecord) {
        let minute = record.time_ms.div_euclid(AGGREGATE_WINDOW_MS);
        let key = (minute, record.key());
        if let Some(r) = self.pending.get_mut(&key) {
            r.count = r.count.saturating_add(record.count.max(1));
            r.time_ms = r.time_ms.min(record.time_ms);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.dropped += u64::from(record.count.max(1));
            return;
        }
        self.pending.insert(key, record.bounded());
    }

    /// Everything pending, oldest minute first, in batches of at most
    /// [`MAX_RECORDS_PER_ENTRY`].
    pub fn drain(&mut self) -> Vec<Vec<AuditRecord>> {
        let all: Vec<AuditRecord> = std::mem::take(&mut self.pending).into_values().collect();
        all.chunks(MAX_RECORDS_PER_ENTRY)
            .map(<[AuditRecord]>::to_vec)
            .collect()
    }

    /// Events dropped because too many distinct records were pending.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// A cheap, cloneable handle to the node's [`Aggregator`]: what the enrollment
/// listener and the HTTP layer call to audit repeatable refusals without proposing an
/// entry per event. The server flushes it to the log every few seconds
/// (`server::audit_duty`); records are lost if the node stops before a flush, which is
/// the price of not letting a flood write to the log.
#[derive(Debug, Clone, Default)]
pub struct AuditSink {
    inner: Arc<Mutex<Aggregator>>,
}

impl AuditSink {
    pub fn record(&self, record: AuditRecord) {
        if let Ok(mut a) = self.inner.lock() {
            a.add(record);
        }
    }

    /// The batches to propose now.
    pub fn drain(&self) -> Vec<Vec<AuditRecord>> {
        self.inner.lock().map(|mut a| a.drain()).unwrap_or_default()
    }

    /// Events dropped by the pending bound since start.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().map(|a| a.dropped()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;
    const DAY: i64 = 86_400_000;

    fn rec(t: i64, action: &str, source: &str) -> AuditRecord {
        AuditRecord::new(t, "admin", action, "t1", source, outcome::OK)
    }

    #[test]
    fn records_are_numbered_and_queried_newest_first_with_filters() {
        let mut log = AuditLog::default();
        log.apply(
            &[
                rec(T0, "api_token.create", "127.0.0.1"),
                rec(T0 + 1, "token.revoke", "127.0.0.1"),
                rec(T0 + 2, "api_token.revoke", "10.0.0.1"),
            ],
            DAY,
            T0 + 5,
        );
        let all = log.query(&AuditFilter::default(), None, 10);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 2, 1]);
        let api = AuditFilter {
            action: Some("api_token.".into()),
            ..Default::default()
        };
        assert_eq!(log.query(&api, None, 10).len(), 2);
        let exact = AuditFilter {
            action: Some("api_token".into()),
            ..Default::default()
        };
        assert!(
            log.query(&exact, None, 10).is_empty(),
            "no prefix without a dot"
        );
        let from = AuditFilter {
            source: Some("10.0.0.1".into()),
            since_ms: Some(T0 + 1),
            ..Default::default()
        };
        assert_eq!(log.query(&from, None, 10)[0].seq, 3);
        assert_eq!(log.query(&AuditFilter::default(), Some(3), 1)[0].seq, 2);
    }

    #[test]
    fn retention_counts_from_the_entry_time_and_drops_are_counted() {
        let mut log = AuditLog::default();
        log.apply(&[rec(T0, "a.b", "")], DAY, T0);
        log.apply(&[rec(T0 + DAY, "a.b", "")], DAY, T0 + DAY);
        assert_eq!(log.len(), 2, "exactly the retention old: kept");
        log.apply(&[rec(T0 + DAY + 1, "a.b", "")], DAY, T0 + DAY + 1);
        assert_eq!(log.len(), 2);
        assert_eq!(log.drops().expired, 1);
        // A shorter retention in a later entry applies from then on.
        log.apply(&[], 0, T0 + DAY + 1);
        assert_eq!(log.len(), 1);
        assert_eq!(log.drops().expired, 2);
    }

    #[test]
    fn the_table_and_entries_are_bounded() {
        let mut log = AuditLog::default();
        let many: Vec<AuditRecord> = (0..MAX_RECORDS_PER_ENTRY + 5)
            .map(|i| rec(T0 + i as i64, "a.b", ""))
            .collect();
        for k in 0..(MAX_RECORDS / MAX_RECORDS_PER_ENTRY + 1) {
            log.apply(&many, i64::MAX, T0 + k as i64);
        }
        assert_eq!(log.len(), MAX_RECORDS);
        assert_eq!(log.drops().over_capacity, MAX_RECORDS_PER_ENTRY as u64);
        assert_eq!(
            log.drops().over_entry_limit,
            5 * (MAX_RECORDS / MAX_RECORDS_PER_ENTRY + 1) as u64
        );
        let newest = log.query(&AuditFilter::default(), None, 1)[0].seq;
        assert_eq!(
            newest,
            ((MAX_RECORDS / MAX_RECORDS_PER_ENTRY + 1) * MAX_RECORDS_PER_ENTRY) as u64
        );
    }

    #[test]
    fn long_fields_are_cut_and_counts_are_at_least_one() {
        let mut log = AuditLog::default();
        let mut r = rec(T0, &"é".repeat(400), "");
        r.count = 0;
        log.apply(&[r], DAY, T0);
        let got = &log.query(&AuditFilter::default(), None, 1)[0].record;
        assert!(got.action.len() <= MAX_FIELD_LEN && got.action.ends_with('…'));
        assert_eq!(got.count, 1);
    }

    #[test]
    fn a_flood_of_one_failure_becomes_one_record_per_minute() {
        let mut a = Aggregator::default();
        let fail = |t: i64, src: &str| AuditRecord::new(t, "-", "enroll", "", src, "bad_secret");
        for i in 0..10_000 {
            a.add(fail(T0 - T0 % 60_000 + i % 60_000, "10.0.0.9"));
        }
        a.add(fail(T0 - T0 % 60_000 + 60_000, "10.0.0.9"));
        a.add(fail(T0 - T0 % 60_000 + 5, "10.0.0.8"));
        let batches = a.drain();
        assert_eq!(batches.len(), 1);
        let counts: Vec<(String, u32)> = batches[0]
            .iter()
            .map(|r| (r.source.clone(), r.count))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("10.0.0.8".to_string(), 1),
                ("10.0.0.9".to_string(), 10_000),
                ("10.0.0.9".to_string(), 1),
            ]
        );
        assert_eq!(
            batches[0][1].time_ms,
            T0 - T0 % 60_000,
            "first event's time"
        );
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn distinct_pending_records_are_bounded_and_drops_counted() {
        let mut a = Aggregator::default();
        for i in 0..(MAX_PENDING + 10) {
            a.add(AuditRecord::new(
                T0,
                "-",
                "enroll",
                "",
                format!("10.0.{i}"),
                "x",
            ));
        }
        assert_eq!(a.pending(), MAX_PENDING);
        assert_eq!(a.dropped(), 10);
        let batches = a.drain();
        assert!(batches.iter().all(|b| b.len() <= MAX_RECORDS_PER_ENTRY));
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), MAX_PENDING);
    }
}
