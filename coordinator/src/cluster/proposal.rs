//! The proposal envelope and the proposer's handle.
//!
//! Every normal Raft entry this node proposes carries the proposer's wall-clock time next to the
//! payload (DESIGN §3.2): apply never reads a clock, so expiry and clock-skew checks compare
//! against this stamp, and every replica sees the same one. The time is an argument, never read
//! here.
//!
//! Entry data layout (DESIGN §3.7, log entries outlive the binary that wrote them):
//!
//! ```text
//! [format version: u8 = 1][postcard(HeaderV1 { time_ms })][payload bytes ...]
//! ```
//!
//! The payload is the rest of the entry, as it is: decoding borrows it instead of copying
//! it, and there is no length field to trust. A later format adds fields to a new header
//! behind a new version byte; version 1 never changes.
//!
//! Empty entry data is not a proposal: it is the no-op a new leader appends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::doorbell::Doorbell;
use super::stats::NodeStats;

/// The only envelope format this binary writes and reads.
pub const PROPOSAL_FORMAT_V1: u8 = 1;

#[derive(Serialize, Deserialize)]
struct HeaderV1 {
    time_ms: i64,
}

/// One decoded proposal, borrowing its payload from the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal<'a> {
    /// The proposer's wall clock (Unix milliseconds) when it proposed.
    pub time_ms: i64,
    /// The state machine's own encoding of what to apply.
    pub payload: &'a [u8],
}

/// Why entry data is not a proposal this binary understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("entry data is empty (a leader's no-op, not a proposal)")]
    Empty,
    #[error("entry format version {0} is not understood by this binary (it knows 1)")]
    UnknownVersion(u8),
    #[error("entry header is malformed: {0}")]
    Header(String),
}

impl<'a> Proposal<'a> {
    /// Encodes the envelope; the result is the entry's data.
    ///
    /// The header is written by hand as exactly what postcard writes for `HeaderV1` (an i64
    /// is a zigzag LEB128 varint), so encoding has no failure path; a test pins the two
    /// together and decoding goes through postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 10 + self.payload.len());
        out.push(PROPOSAL_FORMAT_V1);
        let mut zigzag = ((self.time_ms << 1) ^ (self.time_ms >> 63)) as u64;
        loop {
            let byte = (zigzag & 0x7f) as u8;
            zigzag >>= 7;
            if zigzag == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(self.payload);
        out
    }

    /// Decodes entry data without copying the payload.
    pub fn decode(data: &'a [u8]) -> Result<Self, EnvelopeError> {
        let (&version, rest) = data.split_first().ok_or(EnvelopeError::Empty)?;
        if version != PROPOSAL_FORMAT_V1 {
            return Err(EnvelopeError::UnknownVersion(version));
        }
        let (header, payload): (HeaderV1, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| EnvelopeError::Header(e.to_string()))?;
        Ok(Proposal {
            time_ms: header.time_ms,
            payload,
        })
    }
}

/// What a proposer learns once its entry is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied<O> {
    /// The log index the entry was committed at.
    pub index: u64,
    /// The term it was proposed in.
    pub term: u64,
    /// What the state machine said about it (refusals, counts, ...).
    pub outcome: O,
}

/// Why a proposal has no applied outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader. Not in the log: send it to `leader` if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// The bounded proposal queue is full: the node is behind. Not in the log: retry later.
    #[error("proposal queue is full ({capacity} waiting)")]
    QueueFull { capacity: usize },
    /// The payload exceeds the configured maximum. Not in the log.
    #[error("proposal of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// Raft refused it (too much uncommitted data, or a leadership transfer). Not in the log.
    #[error("raft dropped the proposal (uncommitted limit or leadership change)")]
    Dropped,
    /// Another leader's entry took its place in the log: it was not applied and never will be.
    #[error("proposal lost to a leadership change; it was not applied")]
    Lost,
    /// The state machine stopped at or before this entry: it was not applied.
    #[error("apply failed, the node stopped applying: {reason}")]
    ApplyFailed { reason: String },
    /// The node stopped (or the entry was covered by a snapshot) before its outcome was
    /// known: it may or may not be applied, so a retry must rely on apply's idempotency.
    #[error("outcome unknown: the node stopped before the entry was applied")]
    OutcomeUnknown,
}

pub(crate) type Reply<O> = oneshot::Sender<Result<Applied<O>, ProposeError>>;

/// A proposal waiting in the queue for the Ready thread.
pub(crate) struct PendingProposal<O> {
    pub(crate) data: Vec<u8>,
    pub(crate) reply: Reply<O>,
}

/// The proposer's side of one proposal: resolves once the entry is applied (or cannot be).
#[derive(Debug)]
pub struct ProposalReceipt<O>(oneshot::Receiver<Result<Applied<O>, ProposeError>>);

impl<O> ProposalReceipt<O> {
    pub(crate) fn new(rx: oneshot::Receiver<Result<Applied<O>, ProposeError>>) -> Self {
        Self(rx)
    }

    /// Waits for the outcome (async; the API layer answers clients with it).
    pub async fn outcome(self) -> Result<Applied<O>, ProposeError> {
        self.0.await.unwrap_or(Err(ProposeError::OutcomeUnknown))
    }

    /// The outcome if it is already known; `None` while the entry is still on its way.
    pub fn try_outcome(&mut self) -> Option<Result<Applied<O>, ProposeError>> {
        match self.0.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(ProposeError::OutcomeUnknown)),
        }
    }

    /// Blocks the current thread for the outcome. Not for use inside an async runtime.
    pub fn blocking_outcome(self) -> Result<Applied<O>, ProposeError> {
        self.0
            .blocking_recv()
            .unwrap_or(Err(ProposeError::OutcomeUnknown))
    }
}

/// A cloneable handle that queues proposals for the Ready thread.
///
/// The queue is bounded: a full queue answers [`ProposeError::QueueFull`] at once instead of
/// letting memory grow (DESIGN §3.5). A node that is not the leader answers
/// [`ProposeError::NotLeader`] without queueing.
pub struct Proposer<O> {
    tx: SyncSender<PendingProposal<O>>,
    capacity: usize,
    max_bytes: usize,
    stats: Arc<NodeStats>,
    doorbell: Arc<Doorbell>,
}

impl<O> Clone for Proposer<O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            capacity: self.capacity,
            max_bytes: self.max_bytes,
            stats: Arc::clone(&self.stats),
            doorbell: Arc::clone(&self.doorbell),
        }
    }
}

impl<O> Proposer<O> {
    pub(crate) fn new(
        tx: SyncSender<PendingProposal<O>>,
        capacity: usize,
        max_bytes: usize,
        stats: Arc<NodeStats>,
        doorbell: Arc<Doorbell>,
    ) -> Self {
        Self {
            tx,
            capacity,
            max_bytes,
            stats,
            doorbell,
        }
    }

    /// Queues `payload`, stamped with the proposer's `time_ms`, for the log.
    pub fn propose(
        &self,
        time_ms: i64,
        payload: &[u8],
    ) -> Result<ProposalReceipt<O>, ProposeError> {
        if payload.len() > self.max_bytes {
            self.stats.refused_too_large.fetch_add(1, Ordering::Relaxed);
            return Err(ProposeError::TooLarge {
                size: payload.len(),
                max: self.max_bytes,
            });
        }
        if !self.stats.is_leader() {
            self.stats
                .refused_not_leader
                .fetch_add(1, Ordering::Relaxed);
            return Err(ProposeError::NotLeader {
                leader: self.stats.leader(),
            });
        }
        let data = Proposal { time_ms, payload }.encode();
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(PendingProposal { data, reply }) {
            Ok(()) => {
                self.doorbell.ring();
                Ok(ProposalReceipt::new(rx))
            }
            Err(TrySendError::Full(_)) => {
                self.stats
                    .refused_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                Err(ProposeError::QueueFull {
                    capacity: self.capacity,
                })
            }
            Err(TrySendError::Disconnected(_)) => Err(ProposeError::OutcomeUnknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_time_and_payload() {
        for (time_ms, payload) in [
            (0_i64, &b""[..]),
            (1_700_000_000_123, &b"batch"[..]),
            (-5, &[0u8, 255, 1][..]),
            (i64::MAX, &[7u8; 300][..]),
            (i64::MIN, &b"x"[..]),
        ] {
            let encoded = Proposal { time_ms, payload }.encode();
            assert_eq!(encoded[0], PROPOSAL_FORMAT_V1);
            let header = postcard::to_allocvec(&HeaderV1 { time_ms }).expect("postcard");
            assert_eq!(
                &encoded[1..1 + header.len()],
                &header[..],
                "hand-written header is postcard's"
            );
            let decoded = Proposal::decode(&encoded).expect("decodes");
            assert_eq!(decoded, Proposal { time_ms, payload });
        }
    }

    #[test]
    fn envelope_refuses_what_it_does_not_understand() {
        assert_eq!(Proposal::decode(&[]), Err(EnvelopeError::Empty));
        assert_eq!(
            Proposal::decode(&[2, 0, 1, 2]),
            Err(EnvelopeError::UnknownVersion(2))
        );
        // A varint that never ends is a malformed header, not a panic.
        assert!(matches!(
            Proposal::decode(&[1, 0xff, 0xff]),
            Err(EnvelopeError::Header(_))
        ));
        assert!(matches!(
            Proposal::decode(&[1]),
            Err(EnvelopeError::Header(_))
        ));
    }
}
