//! The kinds of log entries the state machine applies, and their encoding.
//!
//! Log entries outlive the binary that wrote them (DESIGN §3.7): every entry starts
//! with a format version byte, the enum is append-only and a variant never changes.
//! A new variant is only proposed once every voter understands it; an entry with an
//! unknown variant or a newer version is an error at apply, never silently skipped,
//! because skipping would make replicas diverge.

use argus_common::model::{Labels, MetricType, PointGroup, SeriesDef};
use serde::{Deserialize, Serialize};

/// The format version this binary writes and reads.
pub const ENTRY_VERSION: u8 = 1;

/// Largest entry the state machine accepts to decode, as a guard on corrupt input.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

/// One series of a remote-write push, labels as sent (`instance` and `job` included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushedSeries {
    pub name: String,
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// Metric metadata that arrived with a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedMetadata {
    pub name: String,
    pub kind: MetricType,
    pub unit: String,
    pub help: String,
}

/// APPEND-ONLY: postcard encodes the variant index. Never reorder, remove or change
/// a variant; add new ones at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// Series definitions of one agent incarnation, before the batches that use them.
    SeriesDefs {
        agent_id: String,
        incarnation: u64,
        defs: Vec<SeriesDef>,
    },
    /// One agent batch; deduplicated on (agent, incarnation, seq).
    AgentBatch {
        agent_id: String,
        incarnation: u64,
        seq: u64,
        lowest_seq: u64,
        groups: Vec<PointGroup>,
    },
    /// A remote-write push; it carries no seq, so it is deduplicated on
    /// (series, timestamp).
    RemoteWrite {
        series: Vec<PushedSeries>,
        metadata: Vec<PushedMetadata>,
    },
    /// Drop data older than `before_ms` from `tier`. Retention is an entry, not a
    /// timer in the store, so every replica cuts at the same point of the log.
    RetentionCut { tier: u8, before_ms: i64 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("entry is empty")]
    Empty,
    #[error("entry has format version {0}; this binary reads version {ENTRY_VERSION}")]
    UnsupportedVersion(u8),
    #[error("entry of {0} bytes is over the {MAX_ENTRY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("entry does not decode: {0}")]
    Decode(String),
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENTRY_VERSION];
        // Encoding into a Vec only fails for types serde cannot represent; ours can.
        if let Ok(body) = postcard::to_allocvec(self) {
            out.extend_from_slice(&body);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let (&version, body) = bytes.split_first().ok_or(EntryError::Empty)?;
        if version != ENTRY_VERSION {
            return Err(EntryError::UnsupportedVersion(version));
        }
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLarge(bytes.len()));
        }
        let (entry, rest) =
            postcard::take_from_bytes(body).map_err(|e| EntryError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(EntryError::Decode(format!("{} trailing bytes", rest.len())));
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argus_common::model::stale_nan;

    fn samples() -> Vec<Entry> {
        vec![
            Entry::SeriesDefs {
                agent_id: "a1".into(),
                incarnation: 7,
                defs: vec![SeriesDef {
                    series_ref: 1,
                    name: "node_load1".into(),
                    labels: Labels::from_pairs([("job", "node")]),
                    kind: MetricType::Gauge,
                    unit: String::new(),
                    help: "1m load".into(),
                }],
            },
            Entry::AgentBatch {
                agent_id: "a1".into(),
                incarnation: 7,
                seq: 3,
                lowest_seq: 2,
                groups: vec![PointGroup {
                    timestamp_ms: 1000,
                    points: vec![(1, 0.5), (2, stale_nan())],
                }],
            },
            Entry::RemoteWrite {
                series: vec![PushedSeries {
                    name: "up".into(),
                    labels: Labels::from_pairs([("instance", "x"), ("job", "y")]),
                    samples: vec![(1000, 1.0)],
                }],
                metadata: vec![],
            },
            Entry::RetentionCut {
                tier: 0,
                before_ms: 42,
            },
        ]
    }

    #[test]
    fn entries_round_trip_with_stale_nan_bits() {
        for e in samples() {
            let back = Entry::decode(&e.encode()).unwrap();
            match (&e, &back) {
                (Entry::AgentBatch { groups: a, .. }, Entry::AgentBatch { groups: b, .. }) => {
                    assert!(a[0].bit_eq(&b[0]));
                }
                _ => assert_eq!(e, back),
            }
        }
    }

    #[test]
    fn variant_indices_are_frozen() {
        // Reordering the enum would silently reinterpret old log entries.
        let firsts: Vec<u8> = samples().iter().map(|e| e.encode()[1]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 3]);
        assert_eq!(samples()[0].encode()[0], ENTRY_VERSION);
    }

    #[test]
    fn bad_entries_are_errors_not_panics() {
        assert_eq!(Entry::decode(&[]), Err(EntryError::Empty));
        assert_eq!(
            Entry::decode(&[9, 0]),
            Err(EntryError::UnsupportedVersion(9))
        );
        assert!(matches!(
            Entry::decode(&[ENTRY_VERSION, 200]),
            Err(EntryError::Decode(_))
        ));
        let mut ok = samples()[3].encode();
        ok.push(0);
        assert!(matches!(Entry::decode(&ok), Err(EntryError::Decode(_))));
    }
}
