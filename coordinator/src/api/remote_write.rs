//! The Prometheus remote-write 1.0 receiver's decoding, and an encoder for tests and
//! benchmarks that act as a Prometheus client.
//!
//! A body is snappy *block* format (not framed) around a protobuf
//! `prometheus.WriteRequest` (prompb/remote.proto, types.proto):
//!
//! ```text
//! WriteRequest   { repeated TimeSeries timeseries = 1; reserved 2; repeated MetricMetadata metadata = 3; }
//! TimeSeries     { repeated Label labels = 1; repeated Sample samples = 2;
//!                  repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
//! Label          { string name = 1; string value = 2; }
//! Sample         { double value = 1; int64 timestamp = 2; }
//! MetricMetadata { MetricType type = 1; string metric_family_name = 2; string help = 4; string unit = 5; }
//! ```
//!
//! Everything here is pure: the HTTP layer passes headers and bytes in and gets a
//! [`WriteBatch`] or a [`WriteError`] that knows its status code. Whole-request errors
//! are reserved for bodies that cannot be read at all; a series Prometheus itself would
//! refuse (bad labels) is refused alone and counted by [`RefuseReason`], so one bad
//! series never costs a sender the rest of its batch. Native histograms and exemplars
//! are out of scope (DESIGN §5): they are counted and dropped while the same series'
//! float samples are kept.
//!
//! Bounds (DESIGN §3.4): the snappy length header is checked against the limit, and
//! against what the compressed body could possibly expand to, before anything is
//! allocated; decoded strings borrow from the decompressed buffer until a series is
//! accepted, so the output is at most a small multiple of the input.

use super::protowire::{
    Reader, WIRE_LEN, WireError, len_field_len, put_bytes, put_fixed64_field, put_tag, put_varint,
    put_varint_field, tag_len, varint_len,
};
use argus_common::model::{
    Labels, MetricType, TimestampMs, is_valid_label_name, is_valid_metric_name,
};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The media type of remote-write 1.0 (and, with a `proto` parameter, of 2.0).
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// The only content coding remote-write 1.0 defines.
pub const CONTENT_ENCODING: &str = "snappy";
/// The header a sender uses to say which protocol version it speaks.
pub const VERSION_HEADER: &str = "X-Prometheus-Remote-Write-Version";
/// The version header value of remote-write 1.0.
pub const VERSION_1: &str = "0.1.0";
/// The `proto` parameter naming the 1.0 message.
pub const PROTO_V1: &str = "prometheus.WriteRequest";
/// The `proto` parameter naming the 2.0 message, which we answer with 415.
pub const PROTO_V2: &str = "io.prometheus.write.v2.Request";

const NAME_LABEL: &str = "__name__";

/// Snappy's densest op is a 3-byte copy of 64 bytes, so no valid body decompresses
/// to more than 64/3 (< 22) times its size. A larger claim is a lie, refused before
/// the buffer it asks for is allocated.
const MAX_SNAPPY_EXPANSION: usize = 22;

/// Longest name or value quoted back in an error or refusal message, so a hostile
/// request cannot make our answers (or logs) large.
const MAX_QUOTED: usize = 120;

/// Limits applied while decoding. The compressed body size is the HTTP layer's limit
/// (it must not read an unbounded body to find out), everything after is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest decompressed protobuf accepted (413 above it).
    pub max_decompressed_bytes: usize,
    /// Most float samples in one request (413 above it), so one request stays one
    /// reasonably sized log entry.
    pub max_samples: usize,
    /// Most labels per series, `__name__` included (Mimir counts the same way).
    pub max_labels: usize,
    /// Longest label name in bytes.
    pub max_label_name_bytes: usize,
    /// Longest label value in bytes; the metric name is a label value too.
    pub max_label_value_bytes: usize,
    /// Longest HELP text in bytes for a metadata entry.
    pub max_help_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_decompressed_bytes: 32 << 20,
            max_samples: 1_000_000,
            max_labels: 64,
            max_label_name_bytes: 1024,
            max_label_value_bytes: 2048,
            max_help_bytes: 8192,
        }
    }
}

/// Why a whole request was refused. Each maps to the status the remote-write spec
/// asks for: 415 for what we do not speak, 413 for too big, 400 for unreadable.
/// Senders retry only 5xx and 429, so none of these is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error(
        "remote-write 2.0 ({0}) is not supported: send remote-write 1.0 (Content-Type: application/x-protobuf;proto=prometheus.WriteRequest)"
    )]
    RemoteWrite2(String),
    #[error("unsupported Content-Type {0:?}: expected application/x-protobuf (remote-write 1.0)")]
    UnsupportedContentType(String),
    #[error("unsupported Content-Encoding {0:?}: only snappy is accepted")]
    UnsupportedEncoding(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("body decompresses to {claimed} bytes, more than the limit of {limit}")]
    DecompressedTooLarge { claimed: u64, limit: usize },
    #[error("request holds more than the limit of {limit} samples")]
    TooManySamples { limit: usize },
    #[error("snappy: {0}")]
    Snappy(String),
    #[error("protobuf: {path}{source}")]
    Protobuf { path: String, source: WireError },
}

impl WriteError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            WriteError::RemoteWrite2(_)
            | WriteError::UnsupportedContentType(_)
            | WriteError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WriteError::BodyTooLarge { .. }
            | WriteError::DecompressedTooLarge { .. }
            | WriteError::TooManySamples { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WriteError::Snappy(_) | WriteError::Protobuf { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// A stable label value for the counter of refused requests.
    pub fn as_str(&self) -> &'static str {
        match self {
            WriteError::RemoteWrite2(_) => "remote_write_2",
            WriteError::UnsupportedContentType(_) => "unsupported_content_type",
            WriteError::UnsupportedEncoding(_) => "unsupported_encoding",
            WriteError::BodyTooLarge { .. } => "body_too_large",
            WriteError::DecompressedTooLarge { .. } => "decompressed_too_large",
            WriteError::TooManySamples { .. } => "too_many_samples",
            WriteError::Snappy(_) => "snappy",
            WriteError::Protobuf { .. } => "protobuf",
        }
    }
}

/// Why one series (or exemplar, histogram or metadata entry) was left out of an
/// otherwise accepted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefuseReason {
    MissingMetricName,
    InvalidMetricName,
    InvalidLabelName,
    /// A label starting with `__` other than `__name__`: those are Prometheus's
    /// internal labels, which must never be stored.
    ReservedLabel,
    DuplicateLabel,
    TooManyLabels,
    LabelNameTooLong,
    LabelValueTooLong,
    InvalidUtf8,
    NativeHistogram,
    Exemplar,
    InvalidMetadata,
}

impl RefuseReason {
    pub const ALL: [RefuseReason; 12] = [
        RefuseReason::MissingMetricName,
        RefuseReason::InvalidMetricName,
        RefuseReason::InvalidLabelName,
        RefuseReason::ReservedLabel,
        RefuseReason::DuplicateLabel,
        RefuseReason::TooManyLabels,
        RefuseReason::LabelNameTooLong,
        RefuseReason::LabelValueTooLong,
        RefuseReason::InvalidUtf8,
        RefuseReason::NativeHistogram,
        RefuseReason::Exemplar,
        RefuseReason::InvalidMetadata,
    ];

    /// A stable label value for the refusal counter.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::MissingMetricName => "missing_metric_name",
            RefuseReason::InvalidMetricName => "invalid_metric_name",
            RefuseReason::InvalidLabelName => "invalid_label_name",
            RefuseReason::ReservedLabel => "reserved_label",
            RefuseReason::DuplicateLabel => "duplicate_label",
            RefuseReason::TooManyLabels => "too_many_labels",
            RefuseReason::LabelNameTooLong => "label_name_too_long",
            RefuseReason::LabelValueTooLong => "label_value_too_long",
            RefuseReason::InvalidUtf8 => "invalid_utf8",
            RefuseReason::NativeHistogram => "native_histogram",
            RefuseReason::Exemplar => "exemplar",
            RefuseReason::InvalidMetadata => "invalid_metadata",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one request lost for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefuseReason,
    /// Series affected (0 for metadata entries).
    pub series: u64,
    /// What was dropped, in the reason's own unit: float samples for label reasons,
    /// histogram samples for `NativeHistogram`, exemplars for `Exemplar`, metadata
    /// entries for `InvalidMetadata`.
    pub samples: u64,
    /// The first occurrence, e.g. `timeseries[3] (up): label "__x" is reserved ...`,
    /// so the sender's operator can find the culprit.
    pub first: String,
}

/// One accepted series, owned and validated: a valid metric name, valid label names
/// with none starting `__`, sorted and unique, no empty values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteSeries {
    pub name: String,
    /// Without `__name__`; labels with an empty value are dropped, as Prometheus
    /// treats them as absent.
    pub labels: Labels,
    /// (timestamp ms, value) in the order sent; values are kept bit for bit, so a
    /// StaleNaN marker survives.
    pub samples: Vec<(TimestampMs, f64)>,
}

/// One accepted metadata entry (per metric family, as Prometheus sends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteMetadata {
    pub family: String,
    pub kind: MetricType,
    pub help: String,
    pub unit: String,
}

/// A decoded remote-write request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    /// Accepted series that carry at least one float sample, in request order.
    pub series: Vec<WriteSeries>,
    pub metadata: Vec<WriteMetadata>,
    /// One entry per reason that occurred, in [`RefuseReason::ALL`] order.
    pub refused: Vec<Refusal>,
}

impl WriteBatch {
    /// Float samples accepted.
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }

    /// One line for the response body or a log, naming each reason with its count
    /// and first occurrence; `None` when nothing was refused.
    pub fn refusal_summary(&self) -> Option<String> {
        if self.refused.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .refused
            .iter()
            .map(|r| {
                format!(
                    "{}: {} series, {} dropped (first: {})",
                    r.reason.as_str(),
                    r.series,
                    r.samples,
                    r.first
                )
            })
            .collect();
        Some(format!("refused: {}", parts.join("; ")))
    }
}

/// Checks the request headers: remote-write 1.0 only.
///
/// Accepted: `Content-Type: application/x-protobuf`, with no `proto` parameter or
/// `proto=prometheus.WriteRequest`; `Content-Encoding: snappy`. Like Prometheus's own
/// receiver, a missing Content-Type means 1.0 and a missing Content-Encoding means
/// snappy, so hand-rolled 1.0 clients keep working. The version header is advisory
/// (the 1.0 spec lets receivers ignore it); it only decides when there is no
/// Content-Type at all, where `2.x` means a 2.0 sender.
///
/// Refused with 415, as both specs ask for a content type or coding the receiver does
/// not support: 2.0 (`proto=io.prometheus.write.v2.Request`), any other type or proto,
/// and any coding but snappy.
pub fn check_content_type(
    content_type: Option<&str>,
    encoding: Option<&str>,
    version_header: Option<&str>,
) -> Result<(), WriteError> {
    match content_type.map(str::trim).filter(|s| !s.is_empty()) {
        None => {
            if let Some(v) = version_header
                && version_major(v).is_some_and(|m| m >= 2)
            {
                return Err(WriteError::RemoteWrite2(format!(
                    "{VERSION_HEADER}: {}",
                    quote_clipped(v.trim())
                )));
            }
        }
        Some(ct) => check_media_type(ct)?,
    }
    if let Some(enc) = encoding.map(str::trim).filter(|s| !s.is_empty())
        && !enc.eq_ignore_ascii_case(CONTENT_ENCODING)
    {
        return Err(WriteError::UnsupportedEncoding(clip(enc).to_string()));
    }
    Ok(())
}

fn version_major(v: &str) -> Option<u32> {
    v.trim().split('.').next()?.parse().ok()
}

fn check_media_type(ct: &str) -> Result<(), WriteError> {
    let unsupported = || WriteError::UnsupportedContentType(clip(ct).to_string());
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case(CONTENT_TYPE) {
        return Err(unsupported());
    }
    for param in parts {
        let param = param.trim();
        if param.is_empty() {
            continue;
        }
        let (key, value) = param.split_once('=').ok_or_else(unsupported)?;
        if !key.trim().eq_ignore_ascii_case("proto") {
            // Other parameters (charset, ...) carry nothing for protobuf; ignore.
            continue;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if value == PROTO_V1 {
            continue;
        }
        if value.starts_with("io.prometheus.write.v2.") {
            return Err(WriteError::RemoteWrite2(format!("proto={}", clip(value))));
        }
        return Err(unsupported());
    }
    Ok(())
}

/// Decompresses a snappy block body, checking the length it claims against
/// `limits.max_decompressed_bytes` and against what the body could hold before
/// allocating anything.
pub fn decompress(body: &[u8], limits: &DecodeLimits) -> Result<Vec<u8>, WriteError> {
    if body.is_empty() {
        return Err(WriteError::Snappy("empty body".into()));
    }
    let claimed = match snap::raw::decompress_len(body) {
        Ok(n) => n,
        Err(snap::Error::TooBig { given, .. }) => {
            return Err(WriteError::DecompressedTooLarge {
                claimed: given,
                limit: limits.max_decompressed_bytes,
            });
        }
        Err(e) => return Err(WriteError::Snappy(e.to_string())),
    };
    if claimed > limits.max_decompressed_bytes {
        return Err(WriteError::DecompressedTooLarge {
            claimed: claimed as u64,
            limit: limits.max_decompressed_bytes,
        });
    }
    if claimed > body.len().saturating_mul(MAX_SNAPPY_EXPANSION) {
        return Err(WriteError::Snappy(format!(
            "header claims {claimed} bytes, more than {} compressed bytes can hold",
            body.len()
        )));
    }
    let mut out = vec![0u8; claimed];
    let n = snap::raw::Decoder::new()
        .decompress(body, &mut out)
        .map_err(|e| WriteError::Snappy(e.to_string()))?;
    out.truncate(n);
    Ok(out)
}

/// Decodes a whole request body: snappy, then protobuf, then validation.
pub fn decode_body(body: &[u8], limits: &DecodeLimits) -> Result<WriteBatch, WriteError> {
    let proto = decompress(body, limits)?;
    decode_write_request(&proto, limits)
}

/// Decodes an uncompressed `prometheus.WriteRequest`.
///
/// Unknown fields are skipped by wire type (including the reserved field 2 and the
/// `identifyingLabels` a newer sender may put in `Sample`), so newer senders still
/// talk to us; a field we know with the wrong wire type is an error, as it is for
/// protobuf's own parsers.
pub fn decode_write_request(proto: &[u8], limits: &DecodeLimits) -> Result<WriteBatch, WriteError> {
    let mut d = Decoder {
        limits,
        total_samples: 0,
        tally: Default::default(),
        raw_labels: Vec::new(),
        labels: Vec::new(),
        samples: Vec::new(),
        seen: HashMap::default(),
        batch: WriteBatch::default(),
    };
    let mut reader = Reader::new(proto, 0);
    let (mut series_index, mut metadata_index) = (0usize, 0usize);
    while let Some(field) = reader.next_field().map_err(at(String::new))? {
        match field.number {
            1 => {
                let (bytes, base) = field
                    .bytes()
                    .map_err(at(|| format!("timeseries[{series_index}]")))?;
                d.series(bytes, base, series_index)?;
                series_index += 1;
            }
            3 => {
                let (bytes, base) = field
                    .bytes()
                    .map_err(at(|| format!("metadata[{metadata_index}]")))?;
                d.metadata(bytes, base, metadata_index)?;
                metadata_index += 1;
            }
            _ => {}
        }
    }
    let mut batch = d.batch;
    // A series whose every message held only histograms or exemplars has nothing to store.
    batch.series.retain(|s| !s.samples.is_empty());
    batch.refused = RefuseReason::ALL
        .iter()
        .zip(d.tally)
        .filter_map(|(&reason, t)| {
            t.first.map(|first| Refusal {
                reason,
                series: t.series,
                samples: t.samples,
                first,
            })
        })
        .collect();
    Ok(batch)
}

/// The path of a repeated sub-message of `timeseries[index]`, formatted on error only.
fn path(index: usize, sub: &'static str, i: usize) -> impl FnOnce() -> String + Copy {
    move || format!("timeseries[{index}].{sub}[{i}]")
}

/// Wraps a wire error with the path of the message it happened in.
fn at<P: IntoPath>(path: P) -> impl FnOnce(WireError) -> WriteError {
    move |source| {
        let mut path = path.into_path();
        if !path.is_empty() {
            path.push_str(": ");
        }
        WriteError::Protobuf { path, source }
    }
}

/// Paths are only formatted when an error happens.
trait IntoPath {
    fn into_path(self) -> String;
}

impl IntoPath for String {
    fn into_path(self) -> String {
        self
    }
}

impl<F: FnOnce() -> String> IntoPath for F {
    fn into_path(self) -> String {
        self()
    }
}

#[derive(Default)]
struct Tally {
    series: u64,
    samples: u64,
    first: Option<String>,
}

struct Decoder<'a, 'l> {
    limits: &'l DecodeLimits,
    total_samples: usize,
    tally: [Tally; RefuseReason::ALL.len()],
    /// Reused across series: labels as sent, borrowed from the input.
    raw_labels: Vec<RawLabel<'a>>,
    /// Reused across series: the same labels once known to be UTF-8.
    labels: Vec<(&'a str, &'a str)>,
    /// Reused across series: the float samples of the `TimeSeries` being read.
    samples: Vec<(TimestampMs, f64)>,
    /// Label sets seen in this request, exactly as sent, and what became of them.
    seen: HashMap<Vec<RawLabel<'a>>, Seen, foldhash::fast::RandomState>,
    batch: WriteBatch,
}

/// A label's name and value as sent, borrowed from the decompressed body.
type RawLabel<'a> = (&'a [u8], &'a [u8]);

/// What became of a label set earlier in the same request.
#[derive(Clone, Copy)]
enum Seen {
    /// Accepted: its index in [`WriteBatch::series`].
    Series(usize),
    Refused(RefuseReason),
}

/// A refusal of one series: why, and the detail for [`Refusal::first`].
type Refused = (RefuseReason, String);

impl<'a> Decoder<'a, '_> {
    fn refuse(
        &mut self,
        reason: RefuseReason,
        series: u64,
        samples: u64,
        detail: impl FnOnce() -> String,
    ) {
        let t = &mut self.tally[reason.index()];
        t.series += series;
        t.samples += samples;
        if t.first.is_none() {
            t.first = Some(detail());
        }
    }

    /// Reads one `TimeSeries`. Prometheus sends every sample as its own `TimeSeries`, so
    /// a request of 2,000 samples repeats each label set several times: a label set seen
    /// before in the request (byte for byte) joins the series it made, without being
    /// validated or copied again. The batch thus holds each series once, its samples in
    /// the order sent, which also shrinks the log entry and every replica's apply.
    fn series(&mut self, buf: &'a [u8], base: usize, index: usize) -> Result<(), WriteError> {
        self.raw_labels.clear();
        self.samples.clear();
        let (mut exemplars, mut histograms) = (0u64, 0u64);
        let mut reader = Reader::new(buf, base);
        while let Some(field) = reader
            .next_field()
            .map_err(at(|| format!("timeseries[{index}]")))?
        {
            match field.number {
                1 => {
                    let i = self.raw_labels.len();
                    let (bytes, at_) = field.bytes().map_err(at(path(index, "labels", i)))?;
                    let label = read_label(bytes, at_).map_err(at(path(index, "labels", i)))?;
                    self.raw_labels.push(label);
                }
                2 => {
                    let i = self.samples.len();
                    let (bytes, at_) = field.bytes().map_err(at(path(index, "samples", i)))?;
                    let sample = read_sample(bytes, at_).map_err(at(path(index, "samples", i)))?;
                    self.total_samples += 1;
                    if self.total_samples > self.limits.max_samples {
                        return Err(WriteError::TooManySamples {
                            limit: self.limits.max_samples,
                        });
                    }
                    self.samples.push(sample);
                }
                // Counted only: their contents are dropped unread (DESIGN §5), but
                // the field must still be length-delimited.
                3 => {
                    field
                        .bytes()
                        .map_err(at(path(index, "exemplars", exemplars as usize)))?;
                    exemplars += 1;
                }
                4 => {
                    field
                        .bytes()
                        .map_err(at(path(index, "histograms", histograms as usize)))?;
                    histograms += 1;
                }
                _ => {}
            }
        }

        // The name is only formatted when a message needs it.
        let raw_name = self
            .raw_labels
            .iter()
            .find(|(n, _)| *n == NAME_LABEL.as_bytes())
            .map(|&(_, v)| v)
            .filter(|v| !v.is_empty());
        let described = |detail: String| {
            move || match raw_name {
                Some(n) => format!(
                    "timeseries[{index}] ({}): {detail}",
                    clip(&String::from_utf8_lossy(n))
                ),
                None => format!("timeseries[{index}]: {detail}"),
            }
        };
        if histograms > 0 {
            let d = described(format!(
                "{histograms} native histogram sample(s) dropped: native histograms are not supported"
            ));
            self.refuse(RefuseReason::NativeHistogram, 1, histograms, d);
        }
        if exemplars > 0 {
            let d = described(format!(
                "{exemplars} exemplar(s) dropped: exemplars are not supported"
            ));
            self.refuse(RefuseReason::Exemplar, 1, exemplars, d);
        }
        let seen = match self.seen.get(self.raw_labels.as_slice()) {
            Some(&seen) => seen,
            None => {
                let seen = match self.validate_labels() {
                    Ok((name, labels)) => {
                        self.batch.series.push(WriteSeries {
                            name,
                            labels,
                            samples: Vec::new(),
                        });
                        Seen::Series(self.batch.series.len() - 1)
                    }
                    Err((reason, detail)) => {
                        let d = described(detail);
                        self.refuse(reason, 1, 0, d);
                        Seen::Refused(reason)
                    }
                };
                // A label set over the label limit is validated again each time rather
                // than kept, so the memo stays within a small multiple of the input.
                if self.raw_labels.len() <= self.limits.max_labels {
                    self.seen.insert(self.raw_labels.clone(), seen);
                }
                seen
            }
        };
        match seen {
            Seen::Series(i) => self.batch.series[i]
                .samples
                .extend_from_slice(&self.samples),
            Seen::Refused(reason) => self.refuse(reason, 0, self.samples.len() as u64, String::new),
        }
        Ok(())
    }

    fn validate_labels(&mut self) -> Result<(String, Labels), Refused> {
        let limits = self.limits;
        self.labels.clear();
        for (i, &(name, value)) in self.raw_labels.iter().enumerate() {
            let name = std::str::from_utf8(name).map_err(|_| {
                (
                    RefuseReason::InvalidUtf8,
                    format!("labels[{i}].name: invalid UTF-8"),
                )
            })?;
            let value = std::str::from_utf8(value).map_err(|_| {
                (
                    RefuseReason::InvalidUtf8,
                    format!(
                        "labels[{i}].value (label {}): invalid UTF-8",
                        quote_clipped(name)
                    ),
                )
            })?;
            self.labels.push((name, value));
        }
        let present = self.labels.iter().filter(|(_, v)| !v.is_empty()).count();
        if present > limits.max_labels {
            return Err((
                RefuseReason::TooManyLabels,
                format!(
                    "{present} labels, more than the limit of {}",
                    limits.max_labels
                ),
            ));
        }
        for &(name, value) in &self.labels {
            if name.len() > limits.max_label_name_bytes {
                return Err((
                    RefuseReason::LabelNameTooLong,
                    format!(
                        "label name {} is {} bytes, more than the limit of {}",
                        quote_clipped(name),
                        name.len(),
                        limits.max_label_name_bytes
                    ),
                ));
            }
            if name != NAME_LABEL {
                if !is_valid_label_name(name) {
                    return Err((
                        RefuseReason::InvalidLabelName,
                        format!(
                            "invalid label name {}: must match [a-zA-Z_][a-zA-Z0-9_]*",
                            quote_clipped(name)
                        ),
                    ));
                }
                if name.starts_with("__") {
                    return Err((
                        RefuseReason::ReservedLabel,
                        format!(
                            "label {} is reserved: only __name__ may start with \"__\"",
                            quote_clipped(name)
                        ),
                    ));
                }
            }
            if value.len() > limits.max_label_value_bytes {
                return Err((
                    RefuseReason::LabelValueTooLong,
                    format!(
                        "value of label {} is {} bytes, more than the limit of {}",
                        quote_clipped(name),
                        value.len(),
                        limits.max_label_value_bytes
                    ),
                ));
            }
        }
        // Senders must sort; sorting anyway makes duplicates adjacent, and a sorted
        // slice costs one pass.
        self.labels.sort_by(|a, b| a.0.cmp(b.0));
        if let Some(w) = self.labels.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err((
                RefuseReason::DuplicateLabel,
                format!("label {} appears more than once", quote_clipped(w[0].0)),
            ));
        }
        let name = match self.labels.iter().find(|(n, _)| *n == NAME_LABEL) {
            Some((_, v)) if !v.is_empty() => *v,
            _ => {
                return Err((
                    RefuseReason::MissingMetricName,
                    "no __name__ label".to_string(),
                ));
            }
        };
        if !is_valid_metric_name(name) {
            return Err((
                RefuseReason::InvalidMetricName,
                format!(
                    "invalid metric name {}: must match [a-zA-Z_:][a-zA-Z0-9_:]*",
                    quote_clipped(name)
                ),
            ));
        }
        let mut labels = Labels::new();
        for &(n, v) in &self.labels {
            if n != NAME_LABEL && !v.is_empty() {
                labels.set(n, v);
            }
        }
        Ok((name.to_string(), labels))
    }

    fn metadata(&mut self, buf: &'a [u8], base: usize, index: usize) -> Result<(), WriteError> {
        let mut kind = 0u64;
        let (mut family, mut help, mut unit): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
        let mut reader = Reader::new(buf, base);
        let path = || format!("metadata[{index}]");
        while let Some(field) = reader.next_field().map_err(at(path))? {
            match field.number {
                1 => kind = field.varint().map_err(at(path))?,
                2 => family = field.bytes().map_err(at(path))?.0,
                4 => help = field.bytes().map_err(at(path))?.0,
                5 => unit = field.bytes().map_err(at(path))?.0,
                _ => {}
            }
        }
        match validate_metadata(family, help, unit, self.limits) {
            Ok((family, help, unit)) => self.batch.metadata.push(WriteMetadata {
                family: family.to_string(),
                kind: ProtoMetricType::from_wire(kind).to_model(),
                help: help.to_string(),
                unit: unit.to_string(),
            }),
            Err(detail) => {
                let family = clip(&String::from_utf8_lossy(family)).to_string();
                self.refuse(RefuseReason::InvalidMetadata, 0, 1, || {
                    format!("metadata[{index}] ({family}): {detail}")
                });
            }
        }
        Ok(())
    }
}

fn validate_metadata<'a>(
    family: &'a [u8],
    help: &'a [u8],
    unit: &'a [u8],
    limits: &DecodeLimits,
) -> Result<(&'a str, &'a str, &'a str), String> {
    let utf8 = |b: &'a [u8], what: &str| {
        std::str::from_utf8(b).map_err(|_| format!("{what}: invalid UTF-8"))
    };
    let (family, help, unit) = (
        utf8(family, "metric_family_name")?,
        utf8(help, "help")?,
        utf8(unit, "unit")?,
    );
    if !is_valid_metric_name(family) || family.len() > limits.max_label_value_bytes {
        return Err(format!(
            "invalid metric_family_name {}",
            quote_clipped(family)
        ));
    }
    if help.len() > limits.max_help_bytes {
        return Err(format!(
            "help is {} bytes, more than the limit of {}",
            help.len(),
            limits.max_help_bytes
        ));
    }
    if unit.len() > limits.max_label_value_bytes {
        return Err(format!("unit is {} bytes, too long", unit.len()));
    }
    Ok((family, help, unit))
}

fn read_label(buf: &[u8], base: usize) -> Result<(&[u8], &[u8]), WireError> {
    let (mut name, mut value): (&[u8], &[u8]) = (b"", b"");
    let mut reader = Reader::new(buf, base);
    while let Some(field) = reader.next_field()? {
        match field.number {
            1 => name = field.bytes()?.0,
            2 => value = field.bytes()?.0,
            _ => {}
        }
    }
    Ok((name, value))
}

fn read_sample(buf: &[u8], base: usize) -> Result<(TimestampMs, f64), WireError> {
    let (mut value, mut timestamp) = (0u64, 0u64);
    let mut reader = Reader::new(buf, base);
    while let Some(field) = reader.next_field()? {
        match field.number {
            1 => value = field.fixed64()?,
            // int64 is two's complement in a varint: negative times take 10 bytes.
            2 => timestamp = field.varint()?,
            _ => {}
        }
    }
    Ok((timestamp as i64, f64::from_bits(value)))
}

/// Clips untrusted text quoted back in messages (at a char boundary).
fn clip(s: &str) -> &str {
    if s.len() <= MAX_QUOTED {
        return s;
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn quote_clipped(s: &str) -> String {
    if s.len() > MAX_QUOTED {
        format!("{:?}...", clip(s))
    } else {
        format!("{s:?}")
    }
}

/// `MetricMetadata.MetricType` as prompb numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtoMetricType {
    Unknown = 0,
    Counter = 1,
    Gauge = 2,
    Histogram = 3,
    GaugeHistogram = 4,
    Summary = 5,
    Info = 6,
    StateSet = 7,
}

impl ProtoMetricType {
    /// Proto3 enums are open: a number from a newer sender is Unknown, not an error.
    pub fn from_wire(v: u64) -> Self {
        match v {
            1 => ProtoMetricType::Counter,
            2 => ProtoMetricType::Gauge,
            3 => ProtoMetricType::Histogram,
            4 => ProtoMetricType::GaugeHistogram,
            5 => ProtoMetricType::Summary,
            6 => ProtoMetricType::Info,
            7 => ProtoMetricType::StateSet,
            _ => ProtoMetricType::Unknown,
        }
    }

    /// Our model's type. A gauge histogram's series (`_gcount`, `_gsum`) are not a
    /// classic histogram's, so calling it one would mislead downsampling and
    /// `/federate`: it stays Unknown. A state set's series are 0/1 gauges.
    pub fn to_model(self) -> MetricType {
        match self {
            ProtoMetricType::Counter => MetricType::Counter,
            ProtoMetricType::Gauge | ProtoMetricType::StateSet => MetricType::Gauge,
            ProtoMetricType::Histogram => MetricType::Histogram,
            ProtoMetricType::Summary => MetricType::Summary,
            ProtoMetricType::Info => MetricType::Info,
            ProtoMetricType::Unknown | ProtoMetricType::GaugeHistogram => MetricType::Unknown,
        }
    }

    /// The prompb type for one of ours.
    pub fn from_model(kind: MetricType) -> Self {
        match kind {
            MetricType::Counter => ProtoMetricType::Counter,
            MetricType::Gauge => ProtoMetricType::Gauge,
            MetricType::Histogram => ProtoMetricType::Histogram,
            MetricType::Summary => ProtoMetricType::Summary,
            MetricType::Info => ProtoMetricType::Info,
            MetricType::Unknown => ProtoMetricType::Unknown,
        }
    }
}

// ---------------------------------------------------------------------------------
// Encoder: what a Prometheus sender puts on the wire, for tests and benchmarks.
// ---------------------------------------------------------------------------------

/// A `prometheus.WriteRequest` as a sender builds it: labels as sent, in any order,
/// `__name__` among them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteRequest {
    pub timeseries: Vec<TimeSeries>,
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimeSeries {
    pub labels: Vec<(String, String)>,
    pub samples: Vec<(TimestampMs, f64)>,
    pub exemplars: Vec<Exemplar>,
    pub histograms: Vec<Histogram>,
}

impl TimeSeries {
    /// A series with `__name__` first and then `labels`, sorted as senders must.
    pub fn new(name: &str, labels: &[(&str, &str)], samples: Vec<(TimestampMs, f64)>) -> Self {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.push((NAME_LABEL.to_string(), name.to_string()));
        l.sort();
        TimeSeries {
            labels: l,
            samples,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exemplar {
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp: TimestampMs,
}

/// The few fields of a native histogram sample needed to put a well-formed one on
/// the wire (count_int = 1, sum = 3, schema = 4, timestamp = 15).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub count: u64,
    pub sum: f64,
    pub schema: i32,
    pub timestamp: TimestampMs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricMetadata {
    pub kind: ProtoMetricType,
    pub family: String,
    pub help: String,
    pub unit: String,
}

fn labels_size(labels: &[(String, String)]) -> usize {
    labels
        .iter()
        .map(|(n, v)| len_field_len(1, label_size(n, v)))
        .sum()
}

fn label_size(name: &str, value: &str) -> usize {
    len_field_len(1, name.len()) + len_field_len(2, value.len())
}

fn sample_size(ts: TimestampMs) -> usize {
    tag_len(1) + 8 + tag_len(2) + varint_len(ts as u64)
}

fn exemplar_size(e: &Exemplar) -> usize {
    labels_size(&e.labels) + tag_len(2) + 8 + tag_len(3) + varint_len(e.timestamp as u64)
}

fn zigzag32(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}

fn histogram_size(h: &Histogram) -> usize {
    tag_len(1)
        + varint_len(h.count)
        + tag_len(3)
        + 8
        + tag_len(4)
        + varint_len(zigzag32(h.schema))
        + tag_len(15)
        + varint_len(h.timestamp as u64)
}

fn series_size(s: &TimeSeries) -> usize {
    labels_size(&s.labels)
        + s.samples
            .iter()
            .map(|&(ts, _)| len_field_len(2, sample_size(ts)))
            .sum::<usize>()
        + s.exemplars
            .iter()
            .map(|e| len_field_len(3, exemplar_size(e)))
            .sum::<usize>()
        + s.histograms
            .iter()
            .map(|h| len_field_len(4, histogram_size(h)))
            .sum::<usize>()
}

fn metadata_size(m: &MetricMetadata) -> usize {
    tag_len(1)
        + varint_len(m.kind as u64)
        + len_field_len(2, m.family.len())
        + len_field_len(4, m.help.len())
        + len_field_len(5, m.unit.len())
}

fn put_len_header(out: &mut Vec<u8>, number: u32, len: usize) {
    put_tag(out, number, WIRE_LEN);
    put_varint(out, len as u64);
}

fn put_labels(out: &mut Vec<u8>, labels: &[(String, String)]) {
    for (n, v) in labels {
        put_len_header(out, 1, label_size(n, v));
        put_bytes(out, 1, n.as_bytes());
        put_bytes(out, 2, v.as_bytes());
    }
}

/// Encodes a request as protobuf (uncompressed). Every field is written, even at
/// its default, so a value of -0.0 keeps its sign bit.
pub fn encode_write_request(req: &WriteRequest) -> Vec<u8> {
    let total: usize = req
        .timeseries
        .iter()
        .map(|s| len_field_len(1, series_size(s)))
        .sum::<usize>()
        + req
            .metadata
            .iter()
            .map(|m| len_field_len(3, metadata_size(m)))
            .sum::<usize>();
    let mut out = Vec::with_capacity(total);
    for s in &req.timeseries {
        put_len_header(&mut out, 1, series_size(s));
        put_labels(&mut out, &s.labels);
        for &(ts, v) in &s.samples {
            put_len_header(&mut out, 2, sample_size(ts));
            put_fixed64_field(&mut out, 1, v.to_bits());
            put_varint_field(&mut out, 2, ts as u64);
        }
        for e in &s.exemplars {
            put_len_header(&mut out, 3, exemplar_size(e));
            put_labels(&mut out, &e.labels);
            put_fixed64_field(&mut out, 2, e.value.to_bits());
            put_varint_field(&mut out, 3, e.timestamp as u64);
        }
        for h in &s.histograms {
            put_len_header(&mut out, 4, histogram_size(h));
            put_varint_field(&mut out, 1, h.count);
            put_fixed64_field(&mut out, 3, h.sum.to_bits());
            put_varint_field(&mut out, 4, zigzag32(h.schema));
            put_varint_field(&mut out, 15, h.timestamp as u64);
        }
    }
    for m in &req.metadata {
        put_len_header(&mut out, 3, metadata_size(m));
        put_varint_field(&mut out, 1, m.kind as u64);
        put_bytes(&mut out, 2, m.family.as_bytes());
        put_bytes(&mut out, 4, m.help.as_bytes());
        put_bytes(&mut out, 5, m.unit.as_bytes());
    }
    debug_assert_eq!(out.len(), total);
    out
}

/// Encodes a request as a remote-write body: protobuf in snappy block format.
pub fn encode_body(req: &WriteRequest) -> Result<Vec<u8>, WriteError> {
    compress(&encode_write_request(req))
}

/// Snappy block compression, as a sender applies it.
pub fn compress(proto: &[u8]) -> Result<Vec<u8>, WriteError> {
    snap::raw::Encoder::new()
        .compress_vec(proto)
        .map_err(|e| WriteError::Snappy(e.to_string()))
}

#[cfg(test)]
mod tests;
