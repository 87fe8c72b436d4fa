//! The series index: which series exist, how to find them by label matchers, and the
//! metadata of each metric.
//!
//! **Ids are deterministic.** The state machine applies the same entries in the same
//! order on every Raft node, and all of them must give a series the same id, so ids are
//! assigned sequentially in apply order and never reused, never derived from a hash. The
//! hash map that finds a series by its labels uses a per-process random seed (so crafted
//! labels cannot force collisions), which only affects memory layout, never ids or any
//! output: everything returned is sorted.
//!
//! **Matchers** follow Prometheus: `=`, `!=`, `=~`, `!~`; regular expressions are fully
//! anchored and `.` matches a newline (Prometheus compiles `^(?s:re)$`); a label that is
//! absent matches as the empty string; and a selector needs at least one matcher that
//! does not match the empty string, or it would select every series.
//!
//! **Memory** is roughly the series' strings (name, label names and values, each a
//! `String`) plus about 100 bytes of map entries, plus 8 bytes per label pair in the
//! postings. Label values are stored once per distinct value in the postings.

use super::TsdbError;
use super::bits::{get_varint, put_varint};
use argus_common::model::{Labels, MetricType, is_valid_label_name, is_valid_metric_name};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

/// A series' id, unique within one store (not global: DESIGN §8).
pub type SeriesId = u64;

/// The label under which the metric name is indexed, as in Prometheus.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// Longest regular expression accepted in a matcher, in bytes.
pub const MAX_REGEX_LEN: usize = 4096;

/// Limit on a compiled regex and on its lazy DFA cache, so a hostile pattern such as
/// `(a{1000}){1000}` is refused with an error instead of eating memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Written before every serialized [`IndexSnapshot`] (DESIGN §3.7). Version 2 names
/// every string once (see [`IndexSnapshot::to_bytes`]); version 1, plain postcard that
/// repeats `instance`, `job` and their values in every series, is still read.
pub const INDEX_SNAPSHOT_VERSION: u8 = 2;

/// The first snapshot format: the version byte, then postcard of [`IndexSnapshot`].
const INDEX_SNAPSHOT_V1: u8 = 1;

/// Decoded strings of a version-2 snapshot may add up to this many times its length plus
/// [`EXPANSION_SLACK`]: a string named once and used by many series is copied into
/// each, so without a bound a small hostile snapshot could ask for gigabytes. Real
/// indexes expand 2–10 times; reaching 256 would take label pairs averaging 512 bytes, all
/// shared.
const MAX_EXPANSION: usize = 256;
const EXPANSION_SLACK: usize = 16 << 20;

/// What is known about a metric (per metric name, not per series).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub kind: MetricType,
    pub unit: String,
    pub help: String,
}

/// A series' identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    /// Sorted, without `__name__`, without empty values.
    pub labels: Labels,
}

/// How a matcher compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatchOp {
    Equal,
    NotEqual,
    RegexMatch,
    RegexNoMatch,
}

/// One label matcher, with its regex compiled once.
#[derive(Debug, Clone)]
pub struct Matcher {
    name: String,
    op: MatchOp,
    value: String,
    regex: Option<Regex>,
}

impl Matcher {
    /// Builds a matcher; for the regex operators the value is compiled fully anchored,
    /// and refused if it is invalid or too large.
    pub fn new(
        op: MatchOp,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Matcher, TsdbError> {
        let name = name.into();
        let value = value.into();
        let regex = match op {
            MatchOp::Equal | MatchOp::NotEqual => None,
            MatchOp::RegexMatch | MatchOp::RegexNoMatch => {
                let bad = |reason: String| TsdbError::BadRegex {
                    label: name.clone(),
                    regex: value.clone(),
                    reason,
                };
                if value.len() > MAX_REGEX_LEN {
                    return Err(bad(format!("longer than {MAX_REGEX_LEN} bytes")));
                }
                let re = RegexBuilder::new(&format!("^(?s:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                Some(re)
            }
        };
        Ok(Matcher {
            name,
            op,
            value,
            regex,
        })
    }

    /// `name="value"`, which cannot fail.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Matcher {
        Matcher {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
            regex: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn op(&self) -> MatchOp {
        self.op
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether a label value (empty for an absent label) satisfies the matcher.
    pub fn matches(&self, v: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::RegexMatch, Some(re)) => re.is_match(v),
            (MatchOp::RegexNoMatch, Some(re)) => !re.is_match(v),
            // Unreachable: `new` compiles a regex for both regex operators.
            (MatchOp::RegexMatch | MatchOp::RegexNoMatch, None) => false,
        }
    }
}

/// Finds series by labels; see the module doc.
#[derive(Debug, Default)]
pub struct SeriesIndex {
    next_id: SeriesId,
    series: BTreeMap<SeriesId, Series>,
    /// Hash of (name, labels) → ids with that hash (almost always one).
    by_hash: HashMap<u64, Vec<SeriesId>, foldhash::fast::RandomState>,
    /// Seeded per process, so label sets cannot be chosen to collide; foldhash because
    /// every pushed series is hashed on the write path, and SipHash showed in profiles.
    hasher: foldhash::quality::RandomState,
    /// Label name → value → sorted ids; the metric name under `__name__`.
    postings: BTreeMap<String, BTreeMap<String, Vec<SeriesId>>>,
    metadata: BTreeMap<String, Metadata>,
}

/// Everything needed to rebuild a [`SeriesIndex`] identically, for checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSnapshot {
    pub next_id: SeriesId,
    /// Sorted by id.
    pub series: Vec<(SeriesId, Series)>,
    /// Sorted by metric name.
    pub metadata: Vec<(String, Metadata)>,
}

impl IndexSnapshot {
    /// Format 2: the version byte; the next id; a table of every distinct string (metric
    /// names, label names and values, units, help texts), each written once in order of
    /// first use; the series in id order, each its id as the gap from the previous one,
    /// then the table positions of its name and of each label's name and value; then the
    /// metadata by table positions, the type as postcard writes it. All integers are LEB128
    /// varints. Deterministic: the same index gives the same bytes on every node.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TsdbError> {
        let mut table = StringTable::default();
        let mut body = Vec::new();
        put_varint(&mut body, self.series.len() as u64);
        let mut previous: Option<SeriesId> = None;
        for (id, s) in &self.series {
            put_varint(
                &mut body,
                previous.map_or(*id, |p| id.wrapping_sub(p).wrapping_sub(1)),
            );
            previous = Some(*id);
            table.put(&mut body, &s.name);
            put_varint(&mut body, s.labels.len() as u64);
            for (k, v) in s.labels.iter() {
                table.put(&mut body, k);
                table.put(&mut body, v);
            }
        }
        put_varint(&mut body, self.metadata.len() as u64);
        for (name, m) in &self.metadata {
            table.put(&mut body, name);
            body = postcard::to_extend(&m.kind, body).map_err(|e| TsdbError::Corrupt {
                what: "index snapshot",
                reason: e.to_string(),
            })?;
            table.put(&mut body, &m.unit);
            table.put(&mut body, &m.help);
        }
        let mut out = vec![INDEX_SNAPSHOT_VERSION];
        put_varint(&mut out, self.next_id);
        put_varint(&mut out, table.strings.len() as u64);
        for s in &table.strings {
            put_varint(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes what [`IndexSnapshot::to_bytes`] wrote, in format 2 or 1; validation of
    /// the contents happens in [`SeriesIndex::restore`]. Total: bad bytes give an error,
    /// and the strings it builds are bounded by [`MAX_EXPANSION`] times the input.
    pub fn from_bytes(bytes: &[u8]) -> Result<IndexSnapshot, TsdbError> {
        let (&version, body) = bytes.split_first().ok_or_else(|| corrupt("empty".into()))?;
        match version {
            INDEX_SNAPSHOT_VERSION => decode_v2(body),
            INDEX_SNAPSHOT_V1 => {
                let (snapshot, rest) =
                    postcard::take_from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
                if !rest.is_empty() {
                    return Err(corrupt(format!("{} bytes after the end", rest.len())));
                }
                Ok(snapshot)
            }
            _ => Err(TsdbError::UnsupportedVersion {
                what: "index snapshot",
                found: version,
                supported: INDEX_SNAPSHOT_VERSION,
            }),
        }
    }
}

fn corrupt(reason: String) -> TsdbError {
    TsdbError::Corrupt {
        what: "index snapshot",
        reason,
    }
}

/// Strings of a snapshot being written, each given a position on first use.
#[derive(Default)]
struct StringTable<'a> {
    strings: Vec<&'a str>,
    positions: HashMap<&'a str, u64>,
}

impl<'a> StringTable<'a> {
    /// Writes the string's position, adding it to the table if it is new.
    fn put(&mut self, out: &mut Vec<u8>, s: &'a str) {
        let next = self.strings.len() as u64;
        let position = *self.positions.entry(s).or_insert(next);
        if position == next {
            self.strings.push(s);
        }
        put_varint(out, position);
    }
}

/// Reads a format-2 snapshot.
fn decode_v2(body: &[u8]) -> Result<IndexSnapshot, TsdbError> {
    let mut r = Reader {
        bytes: body,
        pos: 0,
        budget: body
            .len()
            .saturating_mul(MAX_EXPANSION)
            .saturating_add(EXPANSION_SLACK),
    };
    let next_id = r.varint()?;
    // Counts are not trusted for preallocation: every item takes input bytes, so a false
    // count only runs into the end of the input.
    let strings = r.varint()?;
    let mut table: Vec<&str> = Vec::new();
    for _ in 0..strings {
        let len = r.varint()?;
        let bytes = r.take(len)?;
        table
            .push(std::str::from_utf8(bytes).map_err(|_| corrupt("a string is not UTF-8".into()))?);
    }
    let count = r.varint()?;
    let mut series = Vec::new();
    let mut previous: Option<SeriesId> = None;
    for _ in 0..count {
        let gap = r.varint()?;
        let id = match previous {
            None => gap,
            Some(p) => p
                .checked_add(gap)
                .and_then(|id| id.checked_add(1))
                .ok_or_else(|| corrupt("series id overflows".into()))?,
        };
        previous = Some(id);
        let name = r.string(&table)?;
        let pairs = r.varint()?;
        let mut labels = Labels::new();
        let mut last: Option<&str> = None;
        for _ in 0..pairs {
            let k = r.string_ref(&table)?;
            let v = r.string(&table)?;
            // Kept as written: restore refuses labels that are not canonical.
            if last.is_some_and(|last| last >= k) {
                return Err(corrupt(format!(
                    "series {id}: labels are not sorted by name"
                )));
            }
            last = Some(k);
            r.spend(k.len())?;
            labels.set(k, v);
        }
        series.push((id, Series { name, labels }));
    }
    let count = r.varint()?;
    let mut metadata = Vec::new();
    for _ in 0..count {
        let name = r.string(&table)?;
        let (kind, rest) = postcard::take_from_bytes::<MetricType>(&body[r.pos..])
            .map_err(|e| corrupt(format!("metadata of {name:?}: {e}")))?;
        r.pos = body.len() - rest.len();
        let unit = r.string(&table)?;
        let help = r.string(&table)?;
        metadata.push((name, Metadata { kind, unit, help }));
    }
    if r.pos != body.len() {
        return Err(corrupt(format!(
            "{} bytes after the end",
            body.len() - r.pos
        )));
    }
    Ok(IndexSnapshot {
        next_id,
        series,
        metadata,
    })
}

/// A cursor over snapshot bytes; every read is checked, and the strings it hands out
/// are counted against a budget.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    budget: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, TsdbError> {
        get_varint(self.bytes, &mut self.pos).ok_or_else(|| corrupt("cut short".into()))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], TsdbError> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| corrupt("cut short".into()))?;
        let bytes = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn spend(&mut self, len: usize) -> Result<(), TsdbError> {
        self.budget = self.budget.checked_sub(len).ok_or_else(|| {
            corrupt(format!(
                "strings expand past {MAX_EXPANSION} times the snapshot"
            ))
        })?;
        Ok(())
    }

    /// A string of the table by position, not yet counted.
    fn string_ref<'t>(&mut self, table: &[&'t str]) -> Result<&'t str, TsdbError> {
        let position = self.varint()?;
        usize::try_from(position)
            .ok()
            .and_then(|i| table.get(i).copied())
            .ok_or_else(|| corrupt(format!("string {position} is not in the table")))
    }

    /// A string of the table by position, copied and counted.
    fn string(&mut self, table: &[&str]) -> Result<String, TsdbError> {
        let s = self.string_ref(table)?;
        self.spend(s.len())?;
        Ok(s.to_owned())
    }
}

/// Checks a metric name and labels, and drops empty label values (an empty value is the
/// same as an absent label, so both spellings must give the same series).
fn canonical<'a>(name: &str, labels: &'a Labels) -> Result<Cow<'a, Labels>, TsdbError> {
    if !is_valid_metric_name(name) {
        return Err(TsdbError::InvalidMetricName(name.to_owned()));
    }
    if !labels.is_canonical() {
        return Err(TsdbError::UnsortedLabels);
    }
    for (k, _) in labels.iter() {
        if k.starts_with("__") {
            return Err(TsdbError::ReservedLabelName(k.to_owned()));
        }
        if !is_valid_label_name(k) {
            return Err(TsdbError::InvalidLabelName(k.to_owned()));
        }
    }
    if labels.iter().any(|(_, v)| v.is_empty()) {
        Ok(Cow::Owned(Labels::from_pairs(
            labels.iter().filter(|(_, v)| !v.is_empty()),
        )))
    } else {
        Ok(Cow::Borrowed(labels))
    }
}

impl SeriesIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The id the next new series will get.
    pub fn next_id(&self) -> SeriesId {
        self.next_id
    }

    fn hash(&self, name: &str, labels: &Labels) -> u64 {
        self.hasher.hash_one((name, labels))
    }

    fn find(&self, hash: u64, name: &str, labels: &Labels) -> Option<SeriesId> {
        self.by_hash.get(&hash)?.iter().copied().find(|id| {
            self.series
                .get(id)
                .is_some_and(|s| s.name == name && &s.labels == labels)
        })
    }

    /// The id of an existing series.
    pub fn lookup(&self, name: &str, labels: &Labels) -> Option<SeriesId> {
        let labels = canonical(name, labels).ok()?;
        self.find(self.hash(name, &labels), name, &labels)
    }

    /// The id of the series, creating it (with the next sequential id) if it is new;
    /// the flag says whether it was created.
    pub fn get_or_create(
        &mut self,
        name: &str,
        labels: &Labels,
    ) -> Result<(SeriesId, bool), TsdbError> {
        let labels = canonical(name, labels)?;
        let hash = self.hash(name, &labels);
        if let Some(id) = self.find(hash, name, &labels) {
            return Ok((id, false));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.insert(id, hash, name.to_owned(), labels.into_owned());
        Ok((id, true))
    }

    fn insert(&mut self, id: SeriesId, hash: u64, name: String, labels: Labels) {
        let mut add = |label: &str, value: &str| {
            let ids = self
                .postings
                .entry(label.to_owned())
                .or_default()
                .entry(value.to_owned())
                .or_default();
            // Ids only grow, so this is a push, except when restoring out of order.
            match ids.last() {
                Some(&last) if last >= id => {
                    if let Err(at) = ids.binary_search(&id) {
                        ids.insert(at, id);
                    }
                }
                _ => ids.push(id),
            }
        };
        add(METRIC_NAME_LABEL, &name);
        for (k, v) in labels.iter() {
            add(k, v);
        }
        self.by_hash.entry(hash).or_default().push(id);
        self.series.insert(id, Series { name, labels });
    }

    /// The series with this id.
    pub fn series(&self, id: SeriesId) -> Option<&Series> {
        self.series.get(&id)
    }

    /// All series in id order.
    pub fn iter(&self) -> impl Iterator<Item = (SeriesId, &Series)> {
        self.series.iter().map(|(&id, s)| (id, s))
    }

    /// Removes series (retention); postings, and the metadata of a metric left with no
    /// series, go with them. Returns how many existed.
    pub fn remove(&mut self, ids: &[SeriesId]) -> usize {
        let mut gone: Vec<SeriesId> = Vec::with_capacity(ids.len());
        // (label, value) pairs whose postings lose ids.
        let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
        for &id in ids {
            let Some(s) = self.series.remove(&id) else {
                continue;
            };
            let hash = self.hash(&s.name, &s.labels);
            if let Some(list) = self.by_hash.get_mut(&hash) {
                list.retain(|&x| x != id);
                if list.is_empty() {
                    self.by_hash.remove(&hash);
                }
            }
            touched.insert((METRIC_NAME_LABEL.to_owned(), s.name));
            for (k, v) in s.labels.iter() {
                touched.insert((k.to_owned(), v.to_owned()));
            }
            gone.push(id);
        }
        gone.sort_unstable();
        for (label, value) in touched {
            let Some(values) = self.postings.get_mut(&label) else {
                continue;
            };
            if let Some(list) = values.get_mut(&value) {
                list.retain(|id| gone.binary_search(id).is_err());
                if list.is_empty() {
                    values.remove(&value);
                    if label == METRIC_NAME_LABEL {
                        self.metadata.remove(&value);
                    }
                }
            }
            if values.is_empty() {
                self.postings.remove(&label);
            }
        }
        gone.len()
    }

    /// Sets a metric's metadata (the latest definition wins).
    pub fn set_metadata(&mut self, name: &str, metadata: Metadata) -> Result<(), TsdbError> {
        if !is_valid_metric_name(name) {
            return Err(TsdbError::InvalidMetricName(name.to_owned()));
        }
        self.metadata.insert(name.to_owned(), metadata);
        Ok(())
    }

    pub fn metadata(&self, name: &str) -> Option<&Metadata> {
        self.metadata.get(name)
    }

    /// All metadata, sorted by metric name.
    pub fn all_metadata(&self) -> impl Iterator<Item = (&str, &Metadata)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Every label name in use, `__name__` included, sorted.
    pub fn label_names(&self) -> Vec<&str> {
        self.postings.keys().map(String::as_str).collect()
    }

    /// Every value of a label (metric names for `__name__`), sorted.
    pub fn label_values(&self, name: &str) -> Vec<&str> {
        self.postings
            .get(name)
            .map(|values| values.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Union of the postings of the values of `label` for which `keep` holds.
    fn union_where(&self, label: &str, keep: impl Fn(&str) -> bool) -> Vec<SeriesId> {
        let Some(values) = self.postings.get(label) else {
            return Vec::new();
        };
        let lists: Vec<&Vec<SeriesId>> = values
            .iter()
            .filter(|(v, _)| keep(v))
            .map(|(_, ids)| ids)
            .collect();
        match lists.as_slice() {
            [] => Vec::new(),
            [one] => (*one).clone(),
            _ => {
                let mut all: Vec<SeriesId> = lists.iter().flat_map(|l| l.iter().copied()).collect();
                all.sort_unstable();
                all.dedup();
                all
            }
        }
    }

    /// Series ids matching every matcher, sorted.
    pub fn select(&self, matchers: &[Matcher]) -> Result<Vec<SeriesId>, TsdbError> {
        let (positive, negative): (Vec<&Matcher>, Vec<&Matcher>) =
            matchers.iter().partition(|m| !m.matches(""));
        if positive.is_empty() {
            return Err(TsdbError::EmptySelector);
        }
        // A matcher that does not match "" selects the series whose label has a
        // matching value; intersect those, smallest first.
        let mut sets: Vec<Vec<SeriesId>> = positive
            .iter()
            .map(|m| {
                if m.op == MatchOp::Equal {
                    self.postings
                        .get(&m.name)
                        .and_then(|values| values.get(&m.value))
                        .cloned()
                        .unwrap_or_default()
                } else {
                    self.union_where(&m.name, |v| m.matches(v))
                }
            })
            .collect();
        sets.sort_by_key(Vec::len);
        let mut sets = sets.into_iter();
        let mut result = sets.next().unwrap_or_default();
        for set in sets {
            if result.is_empty() {
                break;
            }
            result = intersect(&result, &set);
        }
        // A matcher that matches "" also matches series without the label, so it can
        // only remove the series whose value it rejects.
        for m in negative {
            if result.is_empty() {
                break;
            }
            let rejected = self.union_where(&m.name, |v| !m.matches(v));
            result = subtract(&result, &rejected);
        }
        Ok(result)
    }

    /// An owned copy for a checkpoint.
    pub fn snapshot(&self) -> IndexSnapshot {
        IndexSnapshot {
            next_id: self.next_id,
            series: self.series.iter().map(|(&id, s)| (id, s.clone())).collect(),
            metadata: self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Rebuilds an index from a snapshot, checking everything a corrupt or hostile
    /// snapshot could get wrong.
    pub fn restore(snapshot: IndexSnapshot) -> Result<SeriesIndex, TsdbError> {
        let corrupt = |reason: String| TsdbError::Corrupt {
            what: "index snapshot",
            reason,
        };
        let mut index = SeriesIndex {
            next_id: snapshot.next_id,
            ..SeriesIndex::default()
        };
        for (id, s) in snapshot.series {
            if id >= snapshot.next_id {
                return Err(corrupt(format!(
                    "series id {id} is not below next id {}",
                    snapshot.next_id
                )));
            }
            if index.series.contains_key(&id) {
                return Err(corrupt(format!("series id {id} appears twice")));
            }
            if matches!(canonical(&s.name, &s.labels)?, Cow::Owned(_)) {
                return Err(corrupt(format!("series {id} has an empty label value")));
            }
            let hash = index.hash(&s.name, &s.labels);
            if index.find(hash, &s.name, &s.labels).is_some() {
                return Err(corrupt(format!(
                    "series {id} repeats another series' labels"
                )));
            }
            index.insert(id, hash, s.name, s.labels);
        }
        for (name, metadata) in snapshot.metadata {
            if index.metadata.contains_key(&name) {
                return Err(corrupt(format!("metadata for {name:?} appears twice")));
            }
            index.set_metadata(&name, metadata)?;
        }
        Ok(index)
    }
}

fn intersect(a: &[SeriesId], b: &[SeriesId]) -> Vec<SeriesId> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn subtract(a: &[SeriesId], b: &[SeriesId]) -> Vec<SeriesId> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j >= b.len() || b[j] != x {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests;
