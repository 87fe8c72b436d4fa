//! The data model both sides share: a series is a metric name plus sorted labels,
//! carrying its metadata (type, unit, help) so downsampling and `/api/v1/metadata`
//! never have to guess.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Prometheus's staleness marker. It must survive every codec bit for bit, so it is
/// compared by bits, never with `is_nan` (an ordinary NaN sample is a value, not an end).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The sample value that ends a series.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// True only for the exact staleness bit pattern.
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// A series reference, scoped to one agent incarnation and never reused within it.
pub type SeriesRef = u64;

/// Milliseconds since the Unix epoch, as Prometheus counts them.
pub type TimestampMs = i64;

/// Metric type as the Prometheus exposition format names it.
///
/// Append-only (DESIGN §3.7): postcard encodes the variant index, so a variant is
/// never reordered or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Info,
    Unknown,
}

impl MetricType {
    /// The word used on a `# TYPE` line. Info metrics are exposed as gauges, as
    /// node_exporter does with `node_uname_info`, because text format 0.0.4 has no info type.
    pub fn exposition_name(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge | MetricType::Info => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Unknown => "untyped",
        }
    }
}

/// Labels sorted by name, without `__name__` (the metric name is kept apart).
///
/// Sorted order makes equality and hashing canonical, so the same series is
/// recognised however its collector happened to list the labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn new() -> Self {
        Labels(Vec::new())
    }

    /// Builds labels from pairs in any order; a later duplicate name replaces an earlier one.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut l = Labels::new();
        for (k, v) in pairs {
            l.set(k, v);
        }
        l
    }

    /// Sets a label, keeping the order sorted.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True if the pairs are strictly sorted by name; a decoded value from the
    /// network must be checked, since the invariant is not enforced by the encoding.
    pub fn is_canonical(&self) -> bool {
        self.0.windows(2).all(|w| w[0].0 < w[1].0)
    }
}

impl fmt::Display for Labels {
    /// Renders `{a="1",b="2"}` with exposition-format escaping, or nothing when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}=\"")?;
            write_escaped_label_value(f, v)?;
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

/// Escapes a label value as the text exposition format requires: backslash,
/// double quote and line feed.
pub fn write_escaped_label_value(out: &mut impl fmt::Write, v: &str) -> fmt::Result {
    for c in v.chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' => out.write_str("\\\"")?,
            '\n' => out.write_str("\\n")?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// Escapes HELP text: backslash and line feed only, as the exposition format says.
pub fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Everything the coordinator needs to know about a series besides its samples.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeriesDef {
    pub series_ref: SeriesRef,
    pub name: String,
    pub labels: Labels,
    pub kind: MetricType,
    pub unit: String,
    pub help: String,
}

/// Points that share one timestamp. Agents stamp a whole collection with its scheduled
/// tick, so grouping by timestamp stores each timestamp once per batch, not once per point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointGroup {
    pub timestamp_ms: TimestampMs,
    pub points: Vec<(SeriesRef, f64)>,
}

impl PointGroup {
    /// Compares values by bits, so StaleNaN and NaN payloads count as equal only to themselves.
    pub fn bit_eq(&self, other: &PointGroup) -> bool {
        self.timestamp_ms == other.timestamp_ms
            && self.points.len() == other.points.len()
            && self
                .points
                .iter()
                .zip(&other.points)
                .all(|(a, b)| a.0 == b.0 && a.1.to_bits() == b.1.to_bits())
    }
}

/// Whether `name` is a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The unit a metric name declares by its suffix, following the Prometheus naming
/// conventions (`_bytes`, `_seconds`, ...), ignoring a trailing `_total` or `_info`.
pub fn unit_from_name(name: &str) -> &'static str {
    let base = name
        .strip_suffix("_total")
        .or_else(|| name.strip_suffix("_info"))
        .unwrap_or(name);
    const UNITS: [&str; 6] = ["bytes", "seconds", "ratio", "celsius", "joules", "volts"];
    UNITS
        .iter()
        .find(|u| base.ends_with(&format!("_{u}")[..]))
        .copied()
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_nan_is_recognised_by_bits_only() {
        assert!(is_stale_nan(stale_nan()));
        assert!(!is_stale_nan(f64::NAN));
        assert_eq!(stale_nan().to_bits(), STALE_NAN_BITS);
    }

    #[test]
    fn labels_stay_sorted_and_unique() {
        let l = Labels::from_pairs([("mode", "idle"), ("cpu", "0"), ("mode", "user")]);
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            vec![("cpu", "0"), ("mode", "user")]
        );
        assert!(l.is_canonical());
        assert_eq!(l.to_string(), r#"{cpu="0",mode="user"}"#);
    }

    #[test]
    fn label_values_are_escaped() {
        let l = Labels::from_pairs([("path", "a\"b\\c\nd")]);
        assert_eq!(l.to_string(), r#"{path="a\"b\\c\nd"}"#);
    }

    #[test]
    fn names_are_validated() {
        assert!(is_valid_metric_name("node_load1"));
        assert!(is_valid_metric_name("job:rate5m"));
        assert!(!is_valid_metric_name("1abc"));
        assert!(!is_valid_metric_name(""));
        assert!(is_valid_label_name("_x1"));
        assert!(!is_valid_label_name("a:b"));
    }

    #[test]
    fn units_follow_suffixes() {
        assert_eq!(unit_from_name("node_cpu_seconds_total"), "seconds");
        assert_eq!(unit_from_name("node_memory_MemTotal_bytes"), "bytes");
        assert_eq!(unit_from_name("node_load1"), "");
    }
}
