//! Behaviour of the wire protocol that agents and coordinators rely on: every message
//! survives encoding bit for bit, framing works however the bytes are split, hostile
//! bytes give errors (never panics), and versions are negotiated as DESIGN §3.7 says.

use argus_common::model::{
    Labels, MetricType, PointGroup, STALE_NAN_BITS, SeriesDef, is_stale_nan, stale_nan,
};
use argus_common::wire::*;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::Serialize;

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.:-]{0,24}"
}

fn text() -> impl Strategy<Value = String> {
    // Any characters, newlines and multi-byte ones included.
    "(?s).{0,40}"
}

fn names() -> impl Strategy<Value = Vec<String>> {
    vec(name(), 0..5)
}

fn der() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..200)
}

/// Every bit pattern, with the ones that matter most drawn often.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        2 => any::<u64>().prop_map(f64::from_bits),
        1 => Just(stale_nan()),
        1 => Just(f64::NAN),
        1 => Just(-f64::NAN),
        1 => Just(f64::from_bits(0x7ff8_dead_beef_0001)),
        1 => Just(-0.0),
        1 => Just(f64::INFINITY),
        2 => any::<f64>(),
    ]
}

fn labels() -> impl Strategy<Value = Labels> {
    btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,12}", text(), 0..6).prop_map(Labels::from_pairs)
}

fn metric_type() -> impl Strategy<Value = MetricType> {
    prop_oneof![
        Just(MetricType::Counter),
        Just(MetricType::Gauge),
        Just(MetricType::Histogram),
        Just(MetricType::Summary),
        Just(MetricType::Info),
        Just(MetricType::Unknown),
    ]
}

fn series_def() -> impl Strategy<Value = SeriesDef> {
    (
        any::<u64>(),
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,30}",
        labels(),
        metric_type(),
        "[a-z]{0,8}",
        text(),
    )
        .prop_map(|(series_ref, name, labels, kind, unit, help)| SeriesDef {
            series_ref,
            name,
            labels,
            kind,
            unit,
            help,
        })
}

fn point_group() -> impl Strategy<Value = PointGroup> {
    (any::<i64>(), vec((any::<u64>(), value()), 0..8)).prop_map(|(timestamp_ms, points)| {
        PointGroup {
            timestamp_ms,
            points,
        }
    })
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        Just(RefuseReason::OutOfOrder),
        Just(RefuseReason::Duplicate),
        Just(RefuseReason::TooOld),
        Just(RefuseReason::TooFarAhead),
        Just(RefuseReason::UnknownSeries),
        Just(RefuseReason::LabelLimit),
        Just(RefuseReason::SeriesLimit),
        Just(RefuseReason::InvalidValue),
        Just(RefuseReason::Other),
    ]
}

fn hello() -> impl Strategy<Value = Message> {
    (
        any::<u16>(),
        any::<u16>(),
        name(),
        any::<u64>(),
        name(),
        name(),
        names(),
    )
        .prop_map(
            |(
                min_version,
                max_version,
                agent_id,
                incarnation,
                host_name,
                agent_version,
                capabilities,
            )| {
                Hello {
                    min_version,
                    max_version,
                    agent_id,
                    incarnation,
                    host_name,
                    agent_version,
                    capabilities,
                }
                .into()
            },
        )
}

fn batch() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        vec(point_group(), 0..5),
    )
        .prop_map(|(incarnation, seq, below, groups)| {
            Batch {
                incarnation,
                seq,
                lowest_seq: seq - below % seq.saturating_add(1).max(1),
                groups,
            }
            .into()
        })
}

/// One strategy per `Message` variant; `kind_index` below fails to compile when a
/// variant is added, which is the reminder to add its strategy here.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello(),
        (any::<u16>(), any::<Option<u64>>(), any::<Option<u64>>()).prop_map(
            |(version, highest_applied_seq, highest_series_ref)| HelloOk {
                version,
                highest_applied_seq,
                highest_series_ref,
            }
            .into()
        ),
        names().prop_map(|leaders| Redirect { leaders }.into()),
        text().prop_map(|reason| Refused { reason }.into()),
        vec(series_def(), 0..4).prop_map(|defs| SeriesDefs { defs }.into()),
        batch(),
        (
            any::<u64>(),
            any::<u64>(),
            vec((refuse_reason(), any::<u64>()), 0..4)
        )
            .prop_map(|(seq, accepted, refused)| Ack {
                seq,
                accepted,
                refused,
            }
            .into()),
        (any::<u64>(), text()).prop_map(|(seq, reason)| Retry { seq, reason }.into()),
        names().prop_map(|leaders| NotLeader { leaders }.into()),
        any::<i64>().prop_map(|time_ms| Heartbeat { time_ms }.into()),
        (any::<u64>(), "[a-z0-9_-]{1,20}").prop_map(|(id, container)| Command {
            id,
            kind: CommandKind::RestartContainer { container },
        }
        .into()),
        (any::<u64>(), any::<bool>(), text()).prop_map(|(id, ok, message)| CommandResult {
            id,
            ok,
            message
        }
        .into()),
        (name(), name(), der(), name()).prop_map(|(token_id, token_secret, csr_der, host_name)| {
            EnrollRequest {
                token_id,
                token_secret,
                csr_der,
                host_name,
            }
            .into()
        }),
        (der(), der(), any::<i64>(), name()).prop_map(
            |(certificate_der, ca_der, issued_at_ms, agent_id)| EnrollOk {
                certificate_der,
                ca_der,
                issued_at_ms,
                agent_id,
            }
            .into()
        ),
        der().prop_map(|csr_der| RenewRequest { csr_der }.into()),
        (der(), any::<i64>()).prop_map(|(certificate_der, issued_at_ms)| RenewOk {
            certificate_der,
            issued_at_ms,
        }
        .into()),
    ]
}

const VARIANTS: usize = 16;

fn kind_index(m: &Message) -> usize {
    match m {
        Message::Hello(_) => 0,
        Message::HelloOk(_) => 1,
        Message::Redirect(_) => 2,
        Message::Refused(_) => 3,
        Message::SeriesDefs(_) => 4,
        Message::Batch(_) => 5,
        Message::Ack(_) => 6,
        Message::Retry(_) => 7,
        Message::NotLeader(_) => 8,
        Message::Heartbeat(_) => 9,
        Message::Command(_) => 10,
        Message::CommandResult(_) => 11,
        Message::EnrollRequest(_) => 12,
        Message::EnrollOk(_) => 13,
        Message::RenewRequest(_) => 14,
        Message::RenewOk(_) => 15,
    }
}

/// Equality that compares sample values by bits, so NaN payloads and StaleNaN count.
fn same(a: &Message, b: &Message) -> bool {
    match (a, b) {
        (Message::Batch(x), Message::Batch(y)) => {
            x.incarnation == y.incarnation
                && x.seq == y.seq
                && x.lowest_seq == y.lowest_seq
                && x.groups.len() == y.groups.len()
                && x.groups.iter().zip(&y.groups).all(|(g, h)| g.bit_eq(h))
        }
        _ => a == b,
    }
}

fn frames(msgs: &[Message]) -> Vec<u8> {
    msgs.iter().flat_map(encode_frame).collect()
}

/// Feeds `bytes` in pieces of the given sizes (cycled), collecting every message.
fn decode_in_pieces(bytes: &[u8], sizes: &[usize]) -> Result<Vec<Message>, WireError> {
    let mut decoder = FrameDecoder::default();
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        let mut piece = &rest[..n];
        rest = &rest[n..];
        while !piece.is_empty() {
            if let Some(m) = decoder.decode(&mut piece)? {
                out.push(m);
            }
        }
    }
    decoder.finish()?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(msg in message()) {
        let frame = encode_frame(&msg);
        prop_assert_eq!(&frame[..4], &((frame.len() - 4) as u32).to_be_bytes()[..]);
        let decoded = decode_message(&frame[4..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(same(&msg, &decoded), "{msg:?}\n!=\n{decoded:?}");
        prop_assert_eq!(encode_frame(&decoded), frame);
    }

    #[test]
    fn frames_split_anywhere_decode_to_the_same_messages(
        msgs in vec(message(), 0..6),
        sizes in vec(1usize..64, 1..8),
    ) {
        let bytes = frames(&msgs);
        let one_by_one = decode_in_pieces(&bytes, &[1]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let chunked = decode_in_pieces(&bytes, &sizes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let whole = decode_in_pieces(&bytes, &[usize::MAX]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for got in [one_by_one, chunked, whole] {
            prop_assert_eq!(got.len(), msgs.len());
            for (a, b) in msgs.iter().zip(&got) {
                prop_assert!(same(a, b));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..4096)) {
        let _ = decode_message(&bytes);
        let mut decoder = FrameDecoder::new(FrameLimits::new(1024));
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let before = rest.len();
            match decoder.decode(&mut rest) {
                Ok(Some(m)) => prop_assert!(m.validate().is_ok()),
                Ok(None) => {}
                Err(WireError::FrameTooLarge { .. }) => break,
                Err(_) => {}
            }
            prop_assert!(rest.len() < before || rest.is_empty());
        }
        let _ = decoder.finish();
    }

    #[test]
    fn mutated_frames_never_panic(
        msgs in vec(message(), 1..4),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let mut bytes = frames(&msgs);
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes[i] ^= 1 << (byte % 8),
                2 => bytes.insert(i, byte),
                _ => bytes.truncate(i),
            }
        }
        // A mutation may still describe valid messages; whatever decodes must be valid.
        let mut decoder = FrameDecoder::default();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match decoder.decode(&mut rest) {
                Ok(Some(m)) => prop_assert!(m.validate().is_ok()),
                Ok(None) => {}
                Err(WireError::FrameTooLarge { .. }) => break,
                Err(_) => {}
            }
        }
        for (i, frame) in bytes.chunks(7).enumerate() {
            let _ = decode_message(&bytes[i..]);
            let _ = decode_message(frame);
        }
    }

    #[test]
    fn overlapping_ranges_pick_the_highest_common_version(
        s_min in 0u16..20, s_len in 0u16..10, c_min in 0u16..20, c_len in 0u16..10,
    ) {
        let (s_max, c_max) = (s_min + s_len, c_min + c_len);
        let got = negotiate_between(s_min, s_max, c_min, c_max);
        if s_min.max(c_min) <= s_max.min(c_max) {
            prop_assert_eq!(got, Ok(s_max.min(c_max)));
        } else {
            let refused = got.expect_err("disjoint ranges must be refused");
            prop_assert!(refused.reason.contains(&format!("{c_min}..={c_max}")), "{}", refused.reason);
            prop_assert!(refused.reason.contains(&format!("{s_min}..={s_max}")), "{}", refused.reason);
        }
    }
}

#[test]
fn every_variant_has_a_strategy() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mut seen = [false; VARIANTS];
    for _ in 0..5000 {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            continue;
        };
        seen[kind_index(&tree.current())] = true;
    }
    assert!(
        seen.iter().all(|s| *s),
        "variants never generated: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Sample values
// ---------------------------------------------------------------------------------------

#[test]
fn stale_nan_and_nan_payloads_survive_bit_for_bit() {
    let patterns = [
        STALE_NAN_BITS,
        f64::NAN.to_bits(),
        (-f64::NAN).to_bits(),
        0x7ff8_0000_0000_0001,
        0xfff0_0000_0000_0002,
        (-0.0f64).to_bits(),
        f64::INFINITY.to_bits(),
        f64::MIN_POSITIVE.to_bits() - 1, // a subnormal
    ];
    let msg: Message = Batch {
        incarnation: 7,
        seq: 3,
        lowest_seq: 1,
        groups: vec![PointGroup {
            timestamp_ms: 1_700_000_000_000,
            points: patterns
                .iter()
                .enumerate()
                .map(|(i, bits)| (i as u64, f64::from_bits(*bits)))
                .collect(),
        }],
    }
    .into();
    let frame = encode_frame(&msg);
    // postcard writes an f64 as its 8 little-endian bytes, never through a float parser.
    let stale = STALE_NAN_BITS.to_le_bytes();
    assert!(frame.windows(8).any(|w| w == stale));
    let Message::Batch(decoded) = decode_message(&frame[4..]).expect("decodes") else {
        panic!("not a batch");
    };
    let got: Vec<u64> = decoded.groups[0]
        .points
        .iter()
        .map(|(_, v)| v.to_bits())
        .collect();
    assert_eq!(got, patterns);
    assert!(is_stale_nan(decoded.groups[0].points[0].1));
    assert!(!is_stale_nan(decoded.groups[0].points[1].1));
}

// ---------------------------------------------------------------------------------------
// Append-only encoding
// ---------------------------------------------------------------------------------------

/// Pins the variant indices and field order: a reordered variant or field changes these
/// bytes and would silently misread every message from an older peer.
#[test]
fn encoding_is_pinned() {
    let cases: Vec<(Message, Vec<u8>)> = vec![
        (
            Hello {
                min_version: 1,
                max_version: 2,
                agent_id: "a".into(),
                incarnation: 3,
                host_name: "h".into(),
                agent_version: "v".into(),
                capabilities: vec!["c".into()],
            }
            .into(),
            vec![0, 1, 2, 1, b'a', 3, 1, b'h', 1, b'v', 1, 1, b'c'],
        ),
        (
            HelloOk {
                version: 1,
                highest_applied_seq: Some(5),
                highest_series_ref: None,
            }
            .into(),
            vec![1, 1, 1, 5, 0],
        ),
        (
            Redirect {
                leaders: vec!["x".into()],
            }
            .into(),
            vec![2, 1, 1, b'x'],
        ),
        (Refused { reason: "r".into() }.into(), vec![3, 1, b'r']),
        (
            SeriesDefs {
                defs: vec![SeriesDef {
                    series_ref: 4,
                    name: "m".into(),
                    labels: Labels::from_pairs([("k", "v")]),
                    kind: MetricType::Gauge,
                    unit: "".into(),
                    help: "".into(),
                }],
            }
            .into(),
            vec![4, 1, 4, 1, b'm', 1, 1, b'k', 1, b'v', 1, 0, 0],
        ),
        (
            Batch {
                incarnation: 1,
                seq: 2,
                lowest_seq: 2,
                groups: vec![PointGroup {
                    timestamp_ms: -1,
                    points: vec![(9, 1.0)],
                }],
            }
            .into(),
            [&[5u8, 1, 2, 2, 1, 1, 1, 9][..], &1.0f64.to_le_bytes()[..]].concat(),
        ),
        (
            Ack {
                seq: 2,
                accepted: 3,
                refused: vec![(RefuseReason::TooFarAhead, 1), (RefuseReason::Other, 2)],
            }
            .into(),
            vec![6, 2, 3, 2, 3, 1, 8, 2],
        ),
        (
            Retry {
                seq: 1,
                reason: "".into(),
            }
            .into(),
            vec![7, 1, 0],
        ),
        (NotLeader { leaders: vec![] }.into(), vec![8, 0]),
        (Heartbeat { time_ms: 1 }.into(), vec![9, 2]),
        (
            Command {
                id: 1,
                kind: CommandKind::RestartContainer {
                    container: "c".into(),
                },
            }
            .into(),
            vec![10, 1, 0, 1, b'c'],
        ),
        (
            CommandResult {
                id: 1,
                ok: true,
                message: "".into(),
            }
            .into(),
            vec![11, 1, 1, 0],
        ),
        (
            EnrollRequest {
                token_id: "t".into(),
                token_secret: "s".into(),
                csr_der: vec![0x30],
                host_name: "h".into(),
            }
            .into(),
            vec![12, 1, b't', 1, b's', 1, 0x30, 1, b'h'],
        ),
        (
            EnrollOk {
                certificate_der: vec![0x30],
                ca_der: vec![0x31],
                issued_at_ms: 2,
                agent_id: "a".into(),
            }
            .into(),
            vec![13, 1, 0x30, 1, 0x31, 4, 1, b'a'],
        ),
        (
            RenewRequest {
                csr_der: vec![0x30],
            }
            .into(),
            vec![14, 1, 0x30],
        ),
        (
            RenewOk {
                certificate_der: vec![0x30],
                issued_at_ms: -2,
            }
            .into(),
            vec![15, 1, 0x30, 3],
        ),
    ];
    assert_eq!(cases.len(), VARIANTS);
    for (msg, bytes) in cases {
        assert_eq!(encode_message(&msg), bytes, "{}", msg.kind_name());
        assert!(same(&decode_message(&bytes).expect("decodes"), &msg));
    }
}

// ---------------------------------------------------------------------------------------
// Framing errors
// ---------------------------------------------------------------------------------------

#[test]
fn oversized_length_prefix_is_refused_from_the_header_alone() {
    let mut decoder = FrameDecoder::new(FrameLimits::new(1024));
    let header = 1025u32.to_be_bytes();
    let mut input = &header[..];
    let err = decoder.decode(&mut input).expect_err("too large");
    assert!(matches!(
        err,
        WireError::FrameTooLarge {
            len: 1025,
            max: 1024
        }
    ));
    let text = err.to_string();
    assert!(text.contains("1025") && text.contains("1024"), "{text}");
    // The stream cannot be resynchronised: the decoder keeps refusing.
    let mut more = &[0u8; 16][..];
    assert!(matches!(
        decoder.decode(&mut more),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn default_limit_is_four_mebibytes() {
    assert_eq!(FrameLimits::default().max_frame, 4 * 1024 * 1024);
    let mut decoder = FrameDecoder::default();
    let mut header = &(4 * 1024 * 1024 + 1u32).to_be_bytes()[..];
    assert!(matches!(
        decoder.decode(&mut header),
        Err(WireError::FrameTooLarge {
            len: 4_194_305,
            max: 4_194_304
        })
    ));
}

#[test]
fn a_stream_ending_inside_a_frame_is_truncated() {
    let frame = encode_frame(&Heartbeat { time_ms: 5 }.into());
    let mut decoder = FrameDecoder::default();
    let mut input = &frame[..frame.len() - 1];
    assert!(decoder.decode(&mut input).expect("no error yet").is_none());
    assert!(!decoder.is_at_boundary());
    assert!(matches!(
        decoder.finish(),
        Err(WireError::Truncated {
            received: 5,
            expected: 6
        })
    ));
}

#[test]
fn a_bad_body_is_skipped_and_the_next_frame_still_decodes() {
    let good = encode_frame(&Heartbeat { time_ms: 5 }.into());
    let mut bytes = vec![0, 0, 0, 2, 200, 0]; // variant 200 does not exist
    bytes.extend_from_slice(&good);
    let mut decoder = FrameDecoder::default();
    let mut input = &bytes[..];
    assert!(matches!(
        decoder.decode(&mut input),
        Err(WireError::Decode(_))
    ));
    assert_eq!(
        decoder.decode(&mut input).expect("decodes"),
        Some(Heartbeat { time_ms: 5 }.into())
    );
    assert!(decoder.finish().is_ok());
}

#[test]
fn trailing_bytes_after_a_message_are_refused() {
    let mut body = encode_message(&Heartbeat { time_ms: 5 }.into());
    body.push(0);
    let err = decode_message(&body).expect_err("trailing byte");
    assert!(err.to_string().contains("trailing"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// Same layout as `SeriesDefs`, but with labels in whatever order the test wants, which
/// `Labels` itself never allows: exactly what a buggy or hostile peer could send.
#[derive(Serialize)]
enum RawMessage {
    _Hello,
    _HelloOk,
    _Redirect,
    _Refused,
    SeriesDefs(Vec<RawDef>),
}

#[derive(Serialize)]
struct RawDef {
    series_ref: u64,
    name: String,
    labels: Vec<(String, String)>,
    kind: MetricType,
    unit: String,
    help: String,
}

fn raw_defs(name: &str, labels: &[(&str, &str)]) -> Vec<u8> {
    let def = RawDef {
        series_ref: 1,
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        kind: MetricType::Counter,
        unit: String::new(),
        help: String::new(),
    };
    postcard::to_allocvec(&RawMessage::SeriesDefs(vec![def])).expect("encodes")
}

fn invalid_field(body: &[u8]) -> String {
    match decode_message(body) {
        Err(WireError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn series_defs_must_have_canonical_labels_and_valid_names() {
    assert!(decode_message(&raw_defs("up", &[("a", "1"), ("b", "2")])).is_ok());
    assert_eq!(
        invalid_field(&raw_defs("up", &[("b", "1"), ("a", "2")])),
        "SeriesDefs.defs[0].labels"
    );
    assert_eq!(
        invalid_field(&raw_defs("up", &[("a", "1"), ("a", "2")])),
        "SeriesDefs.defs[0].labels"
    );
    assert_eq!(
        invalid_field(&raw_defs("up", &[("a-b", "1")])),
        "SeriesDefs.defs[0].labels"
    );
    assert_eq!(
        invalid_field(&raw_defs("1up", &[])),
        "SeriesDefs.defs[0].name"
    );
    let many: Vec<(String, String)> = (0..=MAX_LABELS_PER_SERIES)
        .map(|i| (format!("l{i:04}"), String::new()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        invalid_field(&raw_defs("up", &many)),
        "SeriesDefs.defs[0].labels"
    );
}

#[test]
fn lengths_and_sequence_numbers_are_checked() {
    let long: Message = Refused {
        reason: "x".repeat(MAX_TEXT_LEN + 1),
    }
    .into();
    assert_eq!(invalid_field(&encode_message(&long)), "Refused.reason");

    let caps: Message = Hello {
        min_version: 1,
        max_version: 1,
        agent_id: "a".into(),
        incarnation: 1,
        host_name: "h".into(),
        agent_version: "0.1.0".into(),
        capabilities: vec!["c".repeat(MAX_NAME_LEN + 1)],
    }
    .into();
    assert_eq!(
        invalid_field(&encode_message(&caps)),
        "Hello.capabilities[0]"
    );

    let batch: Message = Batch {
        incarnation: 1,
        seq: 4,
        lowest_seq: 5,
        groups: vec![],
    }
    .into();
    assert_eq!(invalid_field(&encode_message(&batch)), "Batch.lowest_seq");
    assert!(batch.validate().is_err());

    let def = SeriesDef {
        series_ref: 1,
        name: "up".into(),
        labels: Labels::new(),
        kind: MetricType::Gauge,
        unit: String::new(),
        help: String::new(),
    };
    let too_many: Message = SeriesDefs {
        defs: vec![def; MAX_SERIES_DEFS + 1],
    }
    .into();
    assert_eq!(invalid_field(&encode_message(&too_many)), "SeriesDefs.defs");

    let empty_csr: Message = RenewRequest { csr_der: vec![] }.into();
    assert_eq!(
        invalid_field(&encode_message(&empty_csr)),
        "RenewRequest.csr_der"
    );
}

// ---------------------------------------------------------------------------------------
// Versions and resumption
// ---------------------------------------------------------------------------------------

#[test]
fn this_build_negotiates_its_own_range() {
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(MIN_PROTOCOL_VERSION, 1);
    assert_eq!(negotiate(1, 1), Ok(1));
    assert_eq!(negotiate(0, 9), Ok(PROTOCOL_VERSION));
    let refused = negotiate(2, 3).expect_err("future-only client");
    assert!(refused.reason.contains("2..=3") && refused.reason.contains("1..=1"));
    assert!(negotiate(3, 2).is_err());
    assert_eq!(check_version(1).expect("supported"), 1);
    let err = check_version(2).expect_err("unsupported");
    assert!(err.to_string().contains('2') && err.to_string().contains("1 to 1"));
}

#[test]
fn agent_never_reuses_an_applied_seq_or_ref() {
    let ok = HelloOk {
        version: 1,
        highest_applied_seq: Some(41),
        highest_series_ref: Some(9),
    };
    // Spool rewound behind what was applied: continue after it.
    assert_eq!(ok.next_seq(10), 42);
    assert_eq!(ok.next_ref(3), 10);
    // Spool ahead (batches not yet delivered): keep going.
    assert_eq!(ok.next_seq(50), 50);
    assert_eq!(ok.next_ref(20), 20);
    let fresh = HelloOk {
        version: 1,
        highest_applied_seq: None,
        highest_series_ref: None,
    };
    assert_eq!(fresh.next_seq(1), 1);
    assert_eq!(fresh.next_ref(0), 0);
    let full = HelloOk {
        version: 1,
        highest_applied_seq: Some(u64::MAX),
        highest_series_ref: None,
    };
    assert_eq!(full.next_seq(0), u64::MAX);
}

#[test]
fn refuse_reasons_read_as_metric_labels() {
    assert_eq!(RefuseReason::TooFarAhead.to_string(), "too_far_ahead");
    assert_eq!(RefuseReason::OutOfOrder.to_string(), "out_of_order");
    assert_eq!(RefuseReason::Other.to_string(), "other");
}

// ---------------------------------------------------------------------------------------
// Async helpers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn frames_round_trip_over_a_stream() {
    let (mut a, mut b) = tokio::io::duplex(64);
    let limits = FrameLimits::default();
    let msgs: Vec<Message> = vec![
        Heartbeat { time_ms: 1 }.into(),
        Batch {
            incarnation: 1,
            seq: 1,
            lowest_seq: 1,
            groups: vec![PointGroup {
                timestamp_ms: 0,
                points: (0..1000).map(|i| (i, stale_nan())).collect(),
            }],
        }
        .into(),
        Refused {
            reason: "bye".into(),
        }
        .into(),
    ];
    let sent = msgs.clone();
    let writer = tokio::spawn(async move {
        for m in &sent {
            write_frame(&mut a, m, &limits).await?;
        }
        Ok::<_, WireError>(())
    });
    let mut got = Vec::new();
    while let Some(m) = read_frame(&mut b, &limits).await.expect("reads") {
        got.push(m);
    }
    writer.await.expect("joins").expect("writes");
    assert_eq!(got.len(), msgs.len());
    assert!(msgs.iter().zip(&got).all(|(x, y)| same(x, y)));
}

#[tokio::test]
async fn read_frame_reports_truncation_and_oversize() {
    let frame = encode_frame(&Heartbeat { time_ms: 1 }.into());
    let mut cut = &frame[..frame.len() - 1];
    assert!(matches!(
        read_frame(&mut cut, &FrameLimits::default()).await,
        Err(WireError::Truncated { .. })
    ));
    let mut half_header = &frame[..2];
    assert!(matches!(
        read_frame(&mut half_header, &FrameLimits::default()).await,
        Err(WireError::Truncated {
            received: 2,
            expected: 4
        })
    ));
    let mut big = &u32::MAX.to_be_bytes()[..];
    assert!(matches!(
        read_frame(&mut big, &FrameLimits::default()).await,
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[tokio::test]
async fn write_frame_refuses_what_the_peer_would_refuse() {
    let mut out: Vec<u8> = Vec::new();
    let msg: Message = Refused {
        reason: "x".repeat(100),
    }
    .into();
    let err = write_frame(&mut out, &msg, &FrameLimits::new(50))
        .await
        .expect_err("too large");
    assert!(matches!(err, WireError::FrameTooLarge { max: 50, .. }));
    assert!(out.is_empty(), "nothing may be written");
}
