//! The protocol agents and coordinators speak: postcard-encoded [`Message`]s in
//! length-prefixed frames, with version negotiation and post-decode validation.
//!
//! # Framing
//! A frame is a 4-byte big-endian body length followed by the postcard body. The length
//! is compared with [`FrameLimits::max_frame`] as soon as its four bytes are in, before a
//! buffer for the body exists, so a peer cannot make us reserve memory by announcing a
//! large frame. [`FrameDecoder`] does this without I/O (bytes in, messages out) and
//! [`read_frame`] / [`write_frame`] do it over tokio streams.
//!
//! # Decoding untrusted bytes (DESIGN §3.4)
//! [`decode_message`] never panics and bounds what it allocates. Everything a decoded
//! value reserves on the heap (each `Vec`'s capacity as serde grows it, each string's
//! bytes) is charged against [`decode_budget`] of the body length, 8 bytes per input byte
//! plus 256 KiB, before it is reserved, and a body whose value would need more is refused
//! with [`WireError::DecodeBudget`]. Without this a frame of empty strings would cost 24
//! bytes per byte in a `Vec<String>`, and twice that in capacity as the `Vec` doubles.
//!
//! The heap held at any moment while decoding a body of `len` bytes therefore stays
//! below `1.5 × decode_budget(len) + 1 MiB` (at most `12 × len + 1.375 MiB`): the
//! budget, plus the old buffer of a `Vec` while it moves to a doubled one, plus serde's
//! first reservation for a sequence (at most 1 MiB), made just before it is charged.
//! `tests/wire_alloc.rs` measures this against adversarial and random inputs.
//!
//! Honest traffic stays well inside the budget: a batch costs at most 3.6 bytes per wire
//! byte, series definitions with names, labels and help text about 3 to 5. Only messages
//! made mostly of empty or one-character strings come near it; small ones always fit in
//! the constant part, and large ones are not something an agent sends.
//!
//! A decoded message is then checked by [`Message::validate`] for what the encoding
//! cannot express (canonical label order, valid names, bounded lengths); `decode_message`
//! and both frame readers always run it, so no caller ever sees an unchecked message.
//!
//! # Evolution (DESIGN §3.7)
//! postcard is not self-describing: a value is identified by its enum variant index and
//! field order alone. Every enum here is therefore append-only, and a message struct's
//! fields never change; a change is a new variant, used only with peers that negotiated a
//! protocol version that has it ([`negotiate`]).

mod budget;

use crate::model::{
    Labels, PointGroup, SeriesDef, SeriesRef, TimestampMs, is_valid_label_name,
    is_valid_metric_name,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks best.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Bytes in a frame's length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// Default largest frame body: a few seconds of a busy host's samples fit with room to
/// spare, while one hostile frame costs little memory.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// Heap bytes a decoded value may hold per byte of its encoding.
pub const DECODE_BUDGET_FACTOR: usize = 8;

/// Heap bytes every decode may hold regardless of its length, so a well-formed message
/// under 16 KiB is never refused for its budget, however many tiny strings it holds.
pub const DECODE_BUDGET_SLACK: usize = 256 * 1024;

/// Longest identifier-like string: ids, names, addresses, versions, units, capabilities.
pub const MAX_NAME_LEN: usize = 1024;

/// Longest free text: help, label values, reasons and messages.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Longest certificate or CSR; real ones are 1–2 KiB.
pub const MAX_DER_LEN: usize = 64 * 1024;

/// Most entries in a list of names (capabilities, leader addresses).
pub const MAX_LIST_LEN: usize = 256;

/// Most series definitions in one `SeriesDefs` message; an agent with more sends several.
/// Keeps one message's decoded size predictable whatever its definitions look like.
pub const MAX_SERIES_DEFS: usize = 4096;

/// Most labels one series may carry on the wire; the coordinator's configurable limit is
/// lower and is counted there, this only refuses what no honest agent sends.
pub const MAX_LABELS_PER_SERIES: usize = 128;

/// How large a frame this end accepts and sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame body in bytes, not counting the 4-byte length prefix.
    pub max_frame: usize,
}

impl FrameLimits {
    pub fn new(max_frame: usize) -> Self {
        FrameLimits { max_frame }
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits::new(DEFAULT_MAX_FRAME)
    }
}

/// Everything that can go wrong reading, writing or checking a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("stream ended after {received} of the {expected} bytes of a frame")]
    Truncated { received: usize, expected: usize },
    #[error("malformed message: {0}")]
    Decode(String),
    #[error(
        "decoding a {len}-byte message would need more than its budget of {budget} bytes of memory"
    )]
    DecodeBudget { len: usize, budget: usize },
    #[error("protocol version {version} is not supported (this build speaks {min} to {max})")]
    UnsupportedVersion { version: u16, min: u16, max: u16 },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> WireError {
    WireError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

// ============================================================================================
// !!! APPEND-ONLY !!!  postcard encodes a variant by its index. Never reorder, remove or
// change a variant (or a field of the struct it carries); add new ones at the END only, and
// send them only to peers whose negotiated protocol version knows them (DESIGN §3.7).
// ============================================================================================
/// Every message either side sends. Each variant carries a struct of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    HelloOk(HelloOk),
    Redirect(Redirect),
    Refused(Refused),
    SeriesDefs(SeriesDefs),
    Batch(Batch),
    Ack(Ack),
    Retry(Retry),
    NotLeader(NotLeader),
    Heartbeat(Heartbeat),
    Command(Command),
    CommandResult(CommandResult),
    EnrollRequest(EnrollRequest),
    EnrollOk(EnrollOk),
    RenewRequest(RenewRequest),
    RenewOk(RenewOk),
    // Append new variants here.
}

/// The agent's first message on a data connection: who it is and which protocol versions
/// it speaks, so the coordinator can pick one both understand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    /// Must equal the URI SAN of the agent's certificate (DESIGN §3.6).
    pub agent_id: String,
    /// Random per spool; together with `seq` it names a batch for deduplication.
    pub incarnation: u64,
    pub host_name: String,
    pub agent_version: String,
    /// Optional features the agent supports, so a coordinator sends only what it handles.
    pub capabilities: Vec<String>,
}

/// The coordinator accepts a `Hello` and says where the agent's incarnation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    /// The negotiated protocol version for the rest of the connection.
    pub version: u16,
    /// Highest batch seq applied for this agent incarnation, if any.
    ///
    /// The agent continues from max(its own next seq, this + 1) (DESIGN §3.1): a spool
    /// rewound by a crash or a restored disk must never reuse a seq that was applied,
    /// or its new batch would be dropped as a duplicate.
    pub highest_applied_seq: Option<u64>,
    /// Highest series ref defined for this incarnation, if any; refs continue past it
    /// for the same reason seqs do.
    pub highest_series_ref: Option<SeriesRef>,
}

impl HelloOk {
    /// The seq the agent's next batch must carry, given the one its spool would use.
    pub fn next_seq(&self, own_next: u64) -> u64 {
        continue_after(own_next, self.highest_applied_seq)
    }

    /// The ref the agent's next new series must get, given the one it would use.
    pub fn next_ref(&self, own_next_ref: SeriesRef) -> SeriesRef {
        continue_after(own_next_ref, self.highest_series_ref)
    }
}

fn continue_after(own_next: u64, highest_used: Option<u64>) -> u64 {
    match highest_used {
        Some(used) => own_next.max(used.saturating_add(1)),
        None => own_next,
    }
}

/// This node cannot serve the agent (for example it is not a voter); try these instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// Addresses (`host:port`), most likely leader first.
    pub leaders: Vec<String>,
}

/// The connection is refused for good, for the reason given (for example no common
/// protocol version). The agent logs it and backs off instead of retrying at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Refused {}

/// Definitions of the series that later batches refer to by ref.
///
/// Refs are scoped to agent and incarnation: they survive reconnects (the coordinator
/// keeps the dictionary), are never reused within an incarnation, and are retired once
/// their StaleNaN sample is applied. A definition is sent before the first batch that
/// uses its ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesDefs {
    pub defs: Vec<SeriesDef>,
}

/// One spooled batch of samples. `(agent, incarnation, seq)` identifies it, so a batch
/// delivered twice is applied once (DESIGN §3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub incarnation: u64,
    pub seq: u64,
    /// Lowest seq still in the agent's spool: every seq below it is gone for good, so the
    /// coordinator's dedup watermark may move past batches the spool dropped when full.
    pub lowest_seq: u64,
    /// Samples grouped by their (scheduled) timestamp.
    pub groups: Vec<PointGroup>,
}

/// The final answer for a batch: applied, with per-reason counts of refused points. The
/// agent deletes the batch from its spool on receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub seq: u64,
    /// Points stored.
    pub accepted: u64,
    /// Points refused, counted per reason; a reason appears at most once.
    pub refused: Vec<(RefuseReason, u64)>,
}

// !!! APPEND-ONLY: encoded by index; add reasons at the end only. !!!
/// Why points of a batch were not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RefuseReason {
    /// Older than the newest sample already stored for its series.
    OutOfOrder,
    /// Same series and timestamp as a stored sample.
    Duplicate,
    /// Older than retention keeps.
    TooOld,
    /// Further ahead of the leader's clock than the skew bound allows.
    TooFarAhead,
    /// Refers to a series ref with no definition.
    UnknownSeries,
    /// The series has more labels, or longer ones, than allowed.
    LabelLimit,
    /// The agent already has as many series as allowed.
    SeriesLimit,
    /// The value cannot be stored for its metric type.
    InvalidValue,
    Other,
    // Append new reasons here.
}

impl RefuseReason {
    /// The reason as a metric label value (`argus_..._refused_total{reason="too_old"}`).
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::OutOfOrder => "out_of_order",
            RefuseReason::Duplicate => "duplicate",
            RefuseReason::TooOld => "too_old",
            RefuseReason::TooFarAhead => "too_far_ahead",
            RefuseReason::UnknownSeries => "unknown_series",
            RefuseReason::LabelLimit => "label_limit",
            RefuseReason::SeriesLimit => "series_limit",
            RefuseReason::InvalidValue => "invalid_value",
            RefuseReason::Other => "other",
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The batch was not applied (for example the log is full); the agent keeps it and sends
/// it again later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub seq: u64,
    pub reason: String,
}

/// The node lost leadership while the batch was in flight; the agent resends to one of
/// these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotLeader {
    pub leaders: Vec<String>,
}

/// Keeps an idle connection alive and carries the sender's clock, so skew shows up early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub time_ms: TimestampMs,
}

/// An action the coordinator asks the agent to perform (auto-remediation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Echoed in the [`CommandResult`], so the incident timeline can record the outcome.
    pub id: u64,
    pub kind: CommandKind,
}

// !!! APPEND-ONLY: encoded by index; add kinds at the end only, and send a new kind only
// to agents that advertise it. !!!
/// What a [`Command`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandKind {
    /// Restart a container, named by its name or id.
    RestartContainer { container: String },
    // Append new kinds here.
}

/// The agent's answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: u64,
    pub ok: bool,
    /// What happened, for the incident timeline.
    pub message: String,
}

/// Sent on the enrollment ALPN (no client certificate): a join token and a CSR for the
/// agent's first certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token_id: String,
    pub token_secret: String,
    /// PKCS#10 request for the agent's key, which never leaves the host.
    pub csr_der: Vec<u8>,
    pub host_name: String,
}

/// The agent's certificate, the CA to trust, and the id the coordinator assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollOk {
    pub certificate_der: Vec<u8>,
    pub ca_der: Vec<u8>,
    pub issued_at_ms: TimestampMs,
    pub agent_id: String,
}

/// Sent on an authenticated data connection before the certificate expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_der: Vec<u8>,
}

/// The renewed certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewOk {
    pub certificate_der: Vec<u8>,
    pub issued_at_ms: TimestampMs,
}

macro_rules! message_from {
    ($($variant:ident),* $(,)?) => {
        $(
            impl From<$variant> for Message {
                fn from(m: $variant) -> Message {
                    Message::$variant(m)
                }
            }
        )*

        impl Message {
            /// The variant's name, for logs and error messages.
            pub fn kind_name(&self) -> &'static str {
                match self {
                    $(Message::$variant(_) => stringify!($variant),)*
                }
            }
        }
    };
}

message_from!(
    Hello,
    HelloOk,
    Redirect,
    Refused,
    SeriesDefs,
    Batch,
    Ack,
    Retry,
    NotLeader,
    Heartbeat,
    Command,
    CommandResult,
    EnrollRequest,
    EnrollOk,
    RenewRequest,
    RenewOk,
);

// ---------------------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------------------

/// Server side of version negotiation: the highest version both this build and the
/// client speak, or a `Refused` naming both ranges so either operator can see which side
/// must be upgraded.
pub fn negotiate(client_min: u16, client_max: u16) -> Result<u16, Refused> {
    negotiate_between(
        MIN_PROTOCOL_VERSION,
        PROTOCOL_VERSION,
        client_min,
        client_max,
    )
}

/// [`negotiate`] for an arbitrary server range, so the rule is testable before a second
/// version exists.
pub fn negotiate_between(
    server_min: u16,
    server_max: u16,
    client_min: u16,
    client_max: u16,
) -> Result<u16, Refused> {
    if client_min > client_max {
        return Err(Refused {
            reason: format!("client protocol version range {client_min}..={client_max} is empty"),
        });
    }
    let low = server_min.max(client_min);
    let high = server_max.min(client_max);
    if low > high {
        return Err(Refused {
            reason: format!(
                "no common protocol version: client speaks {client_min}..={client_max}, \
                 server speaks {server_min}..={server_max}"
            ),
        });
    }
    Ok(high)
}

/// Client side: checks that the version a `HelloOk` chose is one this build speaks.
pub fn check_version(version: u16) -> Result<u16, WireError> {
    if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        Ok(version)
    } else {
        Err(WireError::UnsupportedVersion {
            version,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

impl Message {
    /// Checks what the encoding cannot: names are valid, labels canonical, lengths
    /// bounded, sequence numbers consistent.
    ///
    /// Decoding runs it on every message, so received messages are already checked;
    /// a sender may call it to catch its own bug before the peer refuses the frame.
    /// Policy that a coordinator counts per series rather than per frame (labels
    /// starting `__`, configurable label and series limits) is not checked here.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::Hello(m) => {
                check_name("Hello.agent_id", &m.agent_id)?;
                check_name("Hello.host_name", &m.host_name)?;
                check_name("Hello.agent_version", &m.agent_version)?;
                check_names("Hello.capabilities", &m.capabilities)
            }
            Message::HelloOk(_) | Message::Heartbeat(_) | Message::Ack(_) => Ok(()),
            Message::Redirect(m) => check_names("Redirect.leaders", &m.leaders),
            Message::NotLeader(m) => check_names("NotLeader.leaders", &m.leaders),
            Message::Refused(m) => check_text("Refused.reason", &m.reason),
            Message::Retry(m) => check_text("Retry.reason", &m.reason),
            Message::SeriesDefs(m) => {
                check_count("SeriesDefs.defs", m.defs.len(), MAX_SERIES_DEFS)?;
                m.defs
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, def)| check_series_def(i, def))
            }
            Message::Batch(m) => check_batch(m),
            Message::Command(m) => match &m.kind {
                CommandKind::RestartContainer { container } => {
                    check_name("Command.kind.container", container)?;
                    check_non_empty("Command.kind.container", container.is_empty())
                }
            },
            Message::CommandResult(m) => check_text("CommandResult.message", &m.message),
            Message::EnrollRequest(m) => {
                check_name("EnrollRequest.token_id", &m.token_id)?;
                check_name("EnrollRequest.token_secret", &m.token_secret)?;
                check_name("EnrollRequest.host_name", &m.host_name)?;
                check_der("EnrollRequest.csr_der", &m.csr_der)
            }
            Message::EnrollOk(m) => {
                check_der("EnrollOk.certificate_der", &m.certificate_der)?;
                check_der("EnrollOk.ca_der", &m.ca_der)?;
                check_name("EnrollOk.agent_id", &m.agent_id)
            }
            Message::RenewRequest(m) => check_der("RenewRequest.csr_der", &m.csr_der),
            Message::RenewOk(m) => check_der("RenewOk.certificate_der", &m.certificate_der),
        }
    }
}

fn check_len(field: &str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(invalid(
            field,
            format!("{len} bytes exceeds the maximum of {max}"),
        ));
    }
    Ok(())
}

fn check_name(field: &str, value: &str) -> Result<(), WireError> {
    check_len(field, value.len(), MAX_NAME_LEN)
}

fn check_text(field: &str, value: &str) -> Result<(), WireError> {
    check_len(field, value.len(), MAX_TEXT_LEN)
}

fn check_non_empty(field: &str, empty: bool) -> Result<(), WireError> {
    if empty {
        return Err(invalid(field, "must not be empty"));
    }
    Ok(())
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), WireError> {
    if count > max {
        return Err(invalid(
            field,
            format!("{count} entries exceeds the maximum of {max}"),
        ));
    }
    Ok(())
}

fn check_names(field: &str, values: &[String]) -> Result<(), WireError> {
    check_count(field, values.len(), MAX_LIST_LEN)?;
    values
        .iter()
        .enumerate()
        .try_for_each(|(i, v)| check_name(&format!("{field}[{i}]"), v))
}

fn check_der(field: &str, der: &[u8]) -> Result<(), WireError> {
    check_non_empty(field, der.is_empty())?;
    check_len(field, der.len(), MAX_DER_LEN)
}

fn check_series_def(i: usize, def: &SeriesDef) -> Result<(), WireError> {
    let field = |name: &str| format!("SeriesDefs.defs[{i}].{name}");
    check_name(&field("name"), &def.name)?;
    if !is_valid_metric_name(&def.name) {
        return Err(invalid(
            field("name"),
            format!("{:?} is not a valid metric name", def.name),
        ));
    }
    check_name(&field("unit"), &def.unit)?;
    check_text(&field("help"), &def.help)?;
    check_labels(&field("labels"), &def.labels)
}

fn check_labels(field: &str, labels: &Labels) -> Result<(), WireError> {
    check_count(field, labels.len(), MAX_LABELS_PER_SERIES)?;
    if !labels.is_canonical() {
        return Err(invalid(
            field,
            "labels must be sorted by name without duplicates",
        ));
    }
    for (name, value) in labels.iter() {
        check_name(field, name)?;
        if !is_valid_label_name(name) {
            return Err(invalid(
                field,
                format!("{name:?} is not a valid label name"),
            ));
        }
        check_text(&format!("{field}.{name}"), value)?;
    }
    Ok(())
}

fn check_batch(batch: &Batch) -> Result<(), WireError> {
    // The batch itself is still in the spool, so nothing below it can be the lowest.
    if batch.lowest_seq > batch.seq {
        return Err(invalid(
            "Batch.lowest_seq",
            format!(
                "{} is above the batch's own seq {}",
                batch.lowest_seq, batch.seq
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Encoding and decoding
// ---------------------------------------------------------------------------------------

/// Heap bytes a decode of a `len`-byte body may use (see the module docs).
pub fn decode_budget(len: usize) -> usize {
    len.saturating_mul(DECODE_BUDGET_FACTOR)
        .saturating_add(DECODE_BUDGET_SLACK)
}

/// The postcard body of `msg`, without a length prefix.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    // postcard fails only for sequences of unknown length or a full fixed-size buffer;
    // every message is made of sized Vecs and written into a growable Vec.
    postcard::to_allocvec(msg).expect("postcard encodes every Message into a Vec")
}

/// `msg` as a complete frame: length prefix and body.
///
/// A body longer than `u32::MAX` bytes gets the prefix `u32::MAX`, which no receiver
/// accepts, rather than a wrapped length that would desynchronise the stream. Senders
/// use [`encode_frame_checked`] or [`write_frame`] to catch an oversized frame locally.
pub fn encode_frame(msg: &Message) -> Vec<u8> {
    let body = encode_message(msg);
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// [`encode_frame`], refusing a body the peer would refuse as too large.
pub fn encode_frame_checked(msg: &Message, limits: &FrameLimits) -> Result<Vec<u8>, WireError> {
    let frame = encode_frame(msg);
    check_frame_len(frame.len() - FRAME_HEADER_LEN, limits)?;
    Ok(frame)
}

fn check_frame_len(len: usize, limits: &FrameLimits) -> Result<(), WireError> {
    if len > limits.max_frame || u32::try_from(len).is_err() {
        return Err(WireError::FrameTooLarge {
            len,
            max: limits.max_frame,
        });
    }
    Ok(())
}

/// Decodes and validates one frame body, within the memory bound in the module docs.
pub fn decode_message(body: &[u8]) -> Result<Message, WireError> {
    let budget = budget::Budget::new(decode_budget(body.len()));
    let mut de = postcard::Deserializer::from_bytes(body);
    let decoded = Message::deserialize(budget::Budgeted::new(&mut de, &budget));
    let msg = match decoded {
        Ok(msg) => msg,
        Err(_) if budget.exceeded() => {
            return Err(WireError::DecodeBudget {
                len: body.len(),
                budget: decode_budget(body.len()),
            });
        }
        Err(e) => return Err(WireError::Decode(e.to_string())),
    };
    let rest = de
        .finalize()
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Decode(format!(
            "{} trailing bytes after a {} message",
            rest.len(),
            msg.kind_name()
        )));
    }
    msg.validate()?;
    Ok(msg)
}

/// Turns a byte stream into messages without doing I/O: feed it whatever arrived, in
/// pieces of any size, and it yields each message once its frame is complete.
///
/// It buffers at most one frame, and only as many body bytes as have arrived, so memory
/// follows what the peer actually sent, never what it announced.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Body length, once the header is complete and accepted.
    body_len: Option<usize>,
    body: Vec<u8>,
}

/// Body buffers above this are released after use instead of kept for the next frame,
/// so an idle connection does not pin a large buffer.
const KEEP_BUFFER: usize = 64 * 1024;

impl FrameDecoder {
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder {
            limits,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            body_len: None,
            body: Vec::new(),
        }
    }

    /// Takes bytes from the front of `input` until a frame is complete and returns its
    /// message; `Ok(None)` once `input` is used up mid-frame. Call it again while
    /// `input` is not empty: bytes of the next frame are left in `input` until then.
    ///
    /// A body that fails to decode or validate is consumed, so the stream stays in step.
    /// An oversized length prefix is not: the stream cannot be trusted past it, and
    /// every later call returns the same `FrameTooLarge`.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Message>, WireError> {
        let len = match self.body_len {
            Some(len) => len,
            None => {
                let take = (FRAME_HEADER_LEN - self.header_len).min(input.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&input[..take]);
                self.header_len += take;
                *input = &input[take..];
                if self.header_len < FRAME_HEADER_LEN {
                    return Ok(None);
                }
                let len = u32::from_be_bytes(self.header) as usize;
                check_frame_len(len, &self.limits)?;
                self.body_len = Some(len);
                len
            }
        };
        let take = (len - self.body.len()).min(input.len());
        self.body.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if self.body.len() < len {
            return Ok(None);
        }
        let result = decode_message(&self.body);
        self.reset();
        result.map(Some)
    }

    fn reset(&mut self) {
        self.header_len = 0;
        self.body_len = None;
        if self.body.capacity() > KEEP_BUFFER {
            self.body = Vec::new();
        } else {
            self.body.clear();
        }
    }

    /// True between frames, where a stream may end cleanly.
    pub fn is_at_boundary(&self) -> bool {
        self.header_len == 0
    }

    /// Call at end of stream: `Truncated` if it ended inside a frame.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.is_at_boundary() {
            return Ok(());
        }
        Err(match self.body_len {
            Some(len) => WireError::Truncated {
                received: FRAME_HEADER_LEN + self.body.len(),
                expected: FRAME_HEADER_LEN + len,
            },
            None => WireError::Truncated {
                received: self.header_len,
                expected: FRAME_HEADER_LEN,
            },
        })
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(FrameLimits::default())
    }
}

/// Most body bytes reserved ahead of their arrival while reading a frame.
const READ_CHUNK: usize = 16 * 1024;

/// Reads one frame and returns its message, or `Ok(None)` if the stream ended cleanly
/// before a frame started. The body buffer grows with the bytes received (it reserves at
/// most 16 KiB ahead), so a peer that announces a large frame and stalls holds no more
/// memory than it sent.
pub async fn read_frame<R>(
    reader: &mut R,
    limits: &FrameLimits,
) -> Result<Option<Message>, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        let n = reader.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(WireError::Truncated {
                received: got,
                expected: FRAME_HEADER_LEN,
            });
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    check_frame_len(len, limits)?;
    let mut body = Vec::new();
    while body.len() < len {
        let missing = len - body.len();
        if body.len() == body.capacity() {
            // Doubles what arrived so far, but never past the frame's end.
            body.reserve_exact(missing.min(body.len().max(READ_CHUNK)));
        }
        let room = (body.capacity() - body.len()).min(missing);
        let n = (&mut *reader).take(room as u64).read_buf(&mut body).await?;
        if n == 0 {
            return Err(WireError::Truncated {
                received: FRAME_HEADER_LEN + body.len(),
                expected: FRAME_HEADER_LEN + len,
            });
        }
    }
    decode_message(&body).map(Some)
}

/// Writes `msg` as one frame and flushes, refusing (before writing anything) a frame
/// larger than `limits` allows, since the peer would refuse it and drop the connection.
pub async fn write_frame<W>(
    writer: &mut W,
    msg: &Message,
    limits: &FrameLimits,
) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let frame = encode_frame_checked(msg, limits)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}
