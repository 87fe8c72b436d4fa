//! The kinds of log entries the state machine applies, and their encoding.
//!
//! Log entries outlive the binary that wrote them (DESIGN §3.7): every entry starts
//! with a format version byte, the enum is append-only and a variant never changes.
//! A new variant is only proposed once every voter understands it; an entry with an
//! unknown variant or a newer version is an error at apply, never silently skipped,
//! because skipping would make replicas diverge.

use super::compression;
use crate::fleet::api_tokens::ApiRole;
use crate::fleet::audit::AuditRecord;
use crate::fleet::tokens::TokenRole;
use crate::tsdb::chunk;
use argus_common::model::{Labels, MetricType, PointGroup, SeriesDef};
use serde::{Deserialize, Serialize};

/// The format version of an entry whose postcard body follows as it is.
pub const ENTRY_VERSION: u8 = 1;

/// The format version of an entry whose postcard body follows as one zstd frame
/// ([`super::compression`]); written for bodies of at least [`COMPRESS_FROM`] bytes.
pub const ENTRY_VERSION_ZSTD: u8 = 2;

/// Bodies below this stay uncompressed: a frame's header would eat the gain, and small
/// entries (tokens, agent records) are rare.
pub const COMPRESS_FROM: usize = 256;

/// Largest entry the state machine accepts to decode, as a guard on corrupt input.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

/// One series of a remote-write push, labels as sent (`instance` and `job` included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushedSeries {
    pub name: String,
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// Which series the samples of a [`PushedItem`] belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PushedKey {
    /// A series the proposer found in its applied index. Series ids are never reused and
    /// the entry is applied after the one that created the series, so every replica knows
    /// it; one that does not (it was removed since) refuses the samples, the same way on
    /// every replica.
    Known(u64),
    /// A series to find or create by name and labels (as sent, `instance` and `job`
    /// included).
    New { name: String, labels: Labels },
}

/// The samples of one series in a remote-write push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushedItem {
    pub key: PushedKey,
    /// The samples in the order sent, encoded with the chunk codec
    /// ([`crate::tsdb::chunk`]): a few bytes each instead of sixteen, StaleNaN bits
    /// kept. At most [`chunk::MAX_SAMPLES`] per item.
    pub samples: Vec<u8>,
}

impl PushedItem {
    /// Items for one series' samples, cut at the chunk codec's limit.
    pub fn encode(key: PushedKey, samples: &[(i64, f64)]) -> Vec<PushedItem> {
        samples
            .chunks(chunk::MAX_SAMPLES)
            .filter_map(|part| {
                // Encoding fails only above MAX_SAMPLES, which the cut rules out.
                chunk::encode(part).ok().map(|bytes| PushedItem {
                    key: key.clone(),
                    samples: bytes,
                })
            })
            .collect()
    }
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
    /// A remote-write push, compact: series the proposer already knew by id, samples
    /// chunk-encoded. It replaces `RemoteWrite`, which entries written by older
    /// binaries still use and apply still reads. Deduplicated like it, on
    /// (series, timestamp).
    Push {
        items: Vec<PushedItem>,
        metadata: Vec<PushedMetadata>,
    },
    /// A join token minted by `argus token create`. Only the secret's hash is in the
    /// log; `expires_ms` is absolute leader time.
    TokenCreate {
        id: [u8; 8],
        secret_hash: [u8; 32],
        expires_ms: i64,
        uses: u32,
        host: Option<String>,
        role: TokenRole,
        created_by: String,
    },
    /// `argus token revoke`.
    TokenRevoke { id: [u8; 8] },
    /// Enrollment spends a use of a token whose secret the proposer checked, for the
    /// public key (SHA-256 of its SubjectPublicKeyInfo) of `host`'s CSR. A retry with the
    /// same key spends nothing more.
    TokenUse {
        id: [u8; 8],
        host: String,
        key_sha256: [u8; 32],
    },
    /// Audit records ([`crate::fleet::audit`]), appended to the replicated audit table.
    /// `retention_ms` is the proposer's configured retention: records logged longer
    /// than that before this entry's leader time are dropped at apply, so every
    /// replica cuts at the same point of the log.
    Audit {
        records: Vec<AuditRecord>,
        retention_ms: i64,
    },
    /// `argus api-token create`: only the secret's hash is in the log; `expires_ms` is
    /// absolute leader time, `None` for a token that does not expire.
    ApiTokenCreate {
        id: [u8; 8],
        secret_hash: [u8; 32],
        role: ApiRole,
        name: String,
        created_by: String,
        expires_ms: Option<i64>,
    },
    /// `argus api-token revoke`.
    ApiTokenRevoke { id: [u8; 8] },
    /// Enrollment (issue 5 item 3): spends a use of join token `token_id` (whose secret
    /// the proposer checked) for the CSR key `key_sha256` of `host`, and creates agent
    /// `agent_id` (chosen by the proposer, so apply needs no randomness) with an
    /// `instance` unique among live agents, in one entry. A retry with the same token
    /// and key finds the agent created before and spends nothing.
    AgentEnroll {
        agent_id: String,
        token_id: [u8; 8],
        host: String,
        key_sha256: [u8; 32],
    },
    /// A certificate just issued to `agent_id` (at enrollment or renewal): only logged
    /// serials are admitted.
    AgentCert {
        agent_id: String,
        serial: [u8; 16],
        issued_ms: i64,
        not_after_ms: i64,
    },
    /// `argus agents revoke`: the agent itself, so no certificate it holds or renews
    /// outlives it.
    AgentRevoke { agent_id: String },
    /// An agent connected (proposed at most once a minute per agent, not per batch):
    /// last seen and the version it reported.
    AgentSeen { agent_id: String, version: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("entry is empty")]
    Empty,
    #[error(
        "entry has format version {0}; this binary reads versions {ENTRY_VERSION} and {ENTRY_VERSION_ZSTD}"
    )]
    UnsupportedVersion(u8),
    #[error("entry of {0} bytes is over the {MAX_ENTRY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("entry does not decode: {0}")]
    Decode(String),
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        // Encoding into a Vec only fails for types serde cannot represent; ours can.
        let body = postcard::to_allocvec(self).unwrap_or_default();
        if body.len() >= COMPRESS_FROM
            && let Some(frame) = compression::compress(&body)
            && frame.len() < body.len()
        {
            let mut out = Vec::with_capacity(frame.len() + 1);
            out.push(ENTRY_VERSION_ZSTD);
            out.extend_from_slice(&frame);
            return out;
        }
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let (&version, body) = bytes.split_first().ok_or(EntryError::Empty)?;
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLarge(bytes.len()));
        }
        let inflated;
        let body = match version {
            ENTRY_VERSION => body,
            ENTRY_VERSION_ZSTD => {
                inflated = compression::decompress(body, MAX_ENTRY_BYTES)
                    .map_err(|e| EntryError::Decode(e.to_string()))?;
                &inflated[..]
            }
            _ => return Err(EntryError::UnsupportedVersion(version)),
        };
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
            Entry::Push {
                items: [
                    PushedItem::encode(PushedKey::Known(3), &[(1000, 1.5), (2000, stale_nan())]),
                    PushedItem::encode(
                        PushedKey::New {
                            name: "up".into(),
                            labels: Labels::from_pairs([("job", "y")]),
                        },
                        &[(1000, 1.0)],
                    ),
                ]
                .concat(),
                metadata: vec![],
            },
            Entry::TokenCreate {
                id: [1; 8],
                secret_hash: [2; 32],
                expires_ms: 3,
                uses: 4,
                host: Some("web-1".into()),
                role: TokenRole::Agent,
                created_by: "admin".into(),
            },
            Entry::TokenRevoke { id: [1; 8] },
            Entry::TokenUse {
                id: [1; 8],
                host: "web-1".into(),
                key_sha256: [5; 32],
            },
            Entry::Audit {
                records: vec![AuditRecord::new(
                    9,
                    "admin",
                    "token.revoke",
                    "0102",
                    "127.0.0.1",
                    "ok",
                )],
                retention_ms: 1_000,
            },
            Entry::ApiTokenCreate {
                id: [2; 8],
                secret_hash: [3; 32],
                role: ApiRole::Viewer,
                name: "grafana".into(),
                created_by: "admin".into(),
                expires_ms: Some(10),
            },
            Entry::ApiTokenRevoke { id: [2; 8] },
            Entry::AgentEnroll {
                agent_id: "a1".into(),
                token_id: [1; 8],
                host: "web-1".into(),
                key_sha256: [5; 32],
            },
            Entry::AgentCert {
                agent_id: "a1".into(),
                serial: [6; 16],
                issued_ms: 7,
                not_after_ms: 8,
            },
            Entry::AgentRevoke {
                agent_id: "a1".into(),
            },
            Entry::AgentSeen {
                agent_id: "a1".into(),
                version: "0.1.0".into(),
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
        let firsts: Vec<u8> = samples()
            .iter()
            .map(|e| postcard::to_allocvec(e).unwrap()[0])
            .collect();
        assert_eq!(firsts, (0..=14).collect::<Vec<u8>>());
        assert_eq!(samples()[0].encode()[0], ENTRY_VERSION);
    }

    /// A remote-write push of a few hundred series, the log's bulk: it is written as a
    /// zstd frame, smaller than its postcard body, and reads back bit for bit.
    #[test]
    fn large_entries_are_compressed_and_read_back_exactly() {
        let items: Vec<PushedItem> = (0..300u64)
            .flat_map(|s| {
                let samples: Vec<(i64, f64)> = (0..6)
                    .map(|i| {
                        (
                            1_700_000_000_000 + i * 15_000,
                            (s * 10 + i as u64) as f64 * 0.5,
                        )
                    })
                    .collect();
                PushedItem::encode(PushedKey::Known(s), &samples)
            })
            .collect();
        let push = Entry::Push {
            items,
            metadata: vec![],
        };
        let plain = postcard::to_allocvec(&push).unwrap().len() + 1;
        let bytes = push.encode();
        assert_eq!(bytes[0], ENTRY_VERSION_ZSTD);
        assert!(
            bytes.len() * 4 < plain * 3,
            "{} of {plain} bytes",
            bytes.len()
        );
        assert_eq!(Entry::decode(&bytes).unwrap(), push);
        // Small entries stay as they are.
        assert_eq!(
            Entry::ApiTokenRevoke { id: [1; 8] }.encode()[0],
            ENTRY_VERSION
        );
    }

    #[test]
    fn corrupt_compressed_entries_are_errors() {
        let mut bytes = vec![ENTRY_VERSION_ZSTD];
        bytes.extend_from_slice(b"definitely not a zstd frame");
        assert!(matches!(Entry::decode(&bytes), Err(EntryError::Decode(_))));
        // A frame that inflates past the entry limit is refused from its header.
        let mut bomb = vec![ENTRY_VERSION_ZSTD];
        bomb.extend(compression::compress(&vec![0u8; MAX_ENTRY_BYTES + 1]).unwrap());
        assert!(bomb.len() < 64 << 10);
        match Entry::decode(&bomb) {
            Err(EntryError::Decode(m)) => assert!(m.contains("over the"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pushed_items_are_cut_at_the_chunk_limit_and_keep_every_bit() {
        let samples: Vec<(i64, f64)> = (0..chunk::MAX_SAMPLES as i64 + 10)
            .map(|i| (i * 1000, if i == 5 { stale_nan() } else { i as f64 * 0.1 }))
            .collect();
        let items = PushedItem::encode(PushedKey::Known(1), &samples);
        assert_eq!(items.len(), 2);
        let back: Vec<(i64, u64)> = items
            .iter()
            .flat_map(|i| chunk::decode(&i.samples).unwrap())
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        let sent: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(back, sent);
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
