use super::*;
use crate::api::protowire::{WIRE_I64, WIRE_VARINT, WireErrorKind};
use argus_common::model::{STALE_NAN_BITS, stale_nan};
use proptest::prelude::*;

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn decode(req: &WriteRequest) -> Result<WriteBatch, WriteError> {
    decode_body(&encode_body(req).unwrap(), &limits())
}

fn bits(samples: &[(i64, f64)]) -> Vec<(i64, u64)> {
    samples.iter().map(|&(t, v)| (t, v.to_bits())).collect()
}

fn refusal(batch: &WriteBatch, reason: RefuseReason) -> &Refusal {
    batch
        .refused
        .iter()
        .find(|r| r.reason == reason)
        .unwrap_or_else(|| panic!("no {reason:?} refusal in {:?}", batch.refused))
}

/// The shape Prometheus 2.x puts on the wire, written out byte by byte (not with our
/// encoder): two series with sorted labels, `__name__` first, one with two samples,
/// and the metadata of one family. Proto3 defaults (the empty unit) are present here.
const CAPTURED: [u8; 236] = [
    0x0a, 0x44, // timeseries, 68 bytes
    0x0a, 0x0e, 0x0a, 0x08, 0x5f, 0x5f, 0x6e, 0x61, 0x6d, 0x65, 0x5f, 0x5f, 0x12, 0x02, 0x75,
    0x70, // label __name__="up"
    0x0a, 0x13, 0x0a, 0x08, 0x69, 0x6e, 0x73, 0x74, 0x61, 0x6e, 0x63, 0x65, 0x12, 0x07, 0x68, 0x31,
    0x3a, 0x39, 0x31, 0x30, 0x30, // label instance="h1:9100"
    0x0a, 0x0b, 0x0a, 0x03, 0x6a, 0x6f, 0x62, 0x12, 0x04, 0x6e, 0x6f, 0x64,
    0x65, // label job="node"
    0x12, 0x10, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0, 0x3f, 0x10, 0x80, 0xd0, 0x95, 0xff,
    0xbc, 0x31, // sample 1.0 @ 1700000000000
    0x0a, 0x60, // timeseries, 96 bytes
    0x0a, 0x22, 0x0a, 0x08, 0x5f, 0x5f, 0x6e, 0x61, 0x6d, 0x65, 0x5f, 0x5f, 0x12, 0x16, 0x6e, 0x6f,
    0x64, 0x65, 0x5f, 0x63, 0x70, 0x75, 0x5f, 0x73, 0x65, 0x63, 0x6f, 0x6e, 0x64, 0x73, 0x5f, 0x74,
    0x6f, 0x74, 0x61, 0x6c, // label __name__="node_cpu_seconds_total"
    0x0a, 0x08, 0x0a, 0x03, 0x63, 0x70, 0x75, 0x12, 0x01, 0x30, // label cpu="0"
    0x0a, 0x0c, 0x0a, 0x04, 0x6d, 0x6f, 0x64, 0x65, 0x12, 0x04, 0x69, 0x64, 0x6c,
    0x65, // label mode="idle"
    0x12, 0x10, 0x09, 0x29, 0x5c, 0x8f, 0xc2, 0xd5, 0x1c, 0xc8, 0x40, 0x10, 0x80, 0xd0, 0x95, 0xff,
    0xbc, 0x31, // sample 12345.67 @ 1700000000000
    0x12, 0x10, 0x09, 0x29, 0x5c, 0x8f, 0xc2, 0x15, 0x1d, 0xc8, 0x40, 0x10, 0x98, 0xc5, 0x96, 0xff,
    0xbc, 0x31, // sample 12346.17 @ 1700000015000
    0x1a, 0x42, // metadata, 66 bytes
    0x08, 0x01, // type COUNTER
    0x12, 0x16, 0x6e, 0x6f, 0x64, 0x65, 0x5f, 0x63, 0x70, 0x75, 0x5f, 0x73, 0x65, 0x63, 0x6f, 0x6e,
    0x64, 0x73, 0x5f, 0x74, 0x6f, 0x74, 0x61, 0x6c, // family
    0x22, 0x24, 0x53, 0x65, 0x63, 0x6f, 0x6e, 0x64, 0x73, 0x20, 0x74, 0x68, 0x65, 0x20, 0x43, 0x50,
    0x55, 0x73, 0x20, 0x73, 0x70, 0x65, 0x6e, 0x74, 0x20, 0x69, 0x6e, 0x20, 0x65, 0x61, 0x63, 0x68,
    0x20, 0x6d, 0x6f, 0x64, 0x65, 0x2e, // help
    0x2a, 0x00, // unit ""
];

fn captured_request() -> WriteRequest {
    WriteRequest {
        timeseries: vec![
            TimeSeries::new(
                "up",
                &[("instance", "h1:9100"), ("job", "node")],
                vec![(1_700_000_000_000, 1.0)],
            ),
            TimeSeries::new(
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "idle")],
                vec![(1_700_000_000_000, 12345.67), (1_700_000_015_000, 12346.17)],
            ),
        ],
        metadata: vec![MetricMetadata {
            kind: ProtoMetricType::Counter,
            family: "node_cpu_seconds_total".into(),
            help: "Seconds the CPUs spent in each mode.".into(),
            unit: String::new(),
        }],
    }
}

#[test]
fn decodes_the_captured_shape() {
    let body = compress(&CAPTURED).unwrap();
    let batch = decode_body(&body, &limits()).unwrap();
    assert!(batch.refused.is_empty(), "{:?}", batch.refused);
    assert_eq!(batch.series.len(), 2);
    let up = &batch.series[0];
    assert_eq!(up.name, "up");
    assert_eq!(
        up.labels,
        Labels::from_pairs([("instance", "h1:9100"), ("job", "node")]),
        "instance and job are kept as sent"
    );
    assert_eq!(up.samples, vec![(1_700_000_000_000, 1.0)]);
    let cpu = &batch.series[1];
    assert_eq!(cpu.name, "node_cpu_seconds_total");
    assert_eq!(
        cpu.samples,
        vec![(1_700_000_000_000, 12345.67), (1_700_000_015_000, 12346.17)]
    );
    assert_eq!(
        batch.metadata,
        vec![WriteMetadata {
            family: "node_cpu_seconds_total".into(),
            kind: MetricType::Counter,
            help: "Seconds the CPUs spent in each mode.".into(),
            unit: String::new(),
        }]
    );
    assert_eq!(batch.sample_count(), 3);
}

#[test]
fn the_encoder_writes_what_prometheus_writes() {
    assert_eq!(encode_write_request(&captured_request()), CAPTURED.to_vec());
}

#[test]
fn stale_markers_and_odd_values_survive_bit_for_bit() {
    let odd = [
        stale_nan(),
        f64::NAN,
        f64::from_bits(0x7ff8_0000_0000_0001),
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
    ];
    let samples: Vec<(i64, f64)> = odd
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as i64 * 15_000 - 30_000, v))
        .collect();
    let req = WriteRequest {
        timeseries: vec![TimeSeries::new("node_load1", &[], samples.clone())],
        ..Default::default()
    };
    let batch = decode(&req).unwrap();
    assert_eq!(bits(&batch.series[0].samples), bits(&samples));
    assert_eq!(batch.series[0].samples[0].1.to_bits(), STALE_NAN_BITS);
    assert!(batch.series[0].samples[0].0 < 0, "negative timestamps too");
}

#[test]
fn an_empty_request_is_an_empty_batch() {
    let batch = decode(&WriteRequest::default()).unwrap();
    assert_eq!(batch, WriteBatch::default());
    // A series with no samples is nothing to write, and nothing refused.
    let req = WriteRequest {
        timeseries: vec![TimeSeries::new("up", &[], vec![])],
        ..Default::default()
    };
    assert_eq!(decode(&req).unwrap(), WriteBatch::default());
}

#[test]
fn bad_series_are_refused_alone_and_counted() {
    let long = "x".repeat(3000);
    let too_many: Vec<(String, String)> =
        (0..70).map(|i| (format!("l{i:02}"), "v".into())).collect();
    let too_many: Vec<(&str, &str)> = too_many
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let s = |name: &str, labels: &[(&str, &str)]| {
        TimeSeries::new(name, labels, vec![(1, 1.0), (2, 2.0)])
    };
    let mut no_name = s("x", &[("job", "a")]);
    no_name.labels.retain(|(k, _)| k != "__name__");
    let mut dup = s("up", &[("job", "a")]);
    dup.labels.push(("job".into(), "b".into()));
    let mut empty_name = s("x", &[]);
    empty_name.labels[0].1 = String::new();
    let req = WriteRequest {
        timeseries: vec![
            s("good_one", &[("job", "a")]),
            no_name,
            empty_name,
            s("1bad", &[]),
            s("up", &[("bad-name", "v")]),
            s("up", &[("__meta_x", "v")]),
            dup,
            s("up", &too_many),
            s("up", &[(&long[..1100], "v")]),
            s("up", &[("job", &long)]),
            s("good_two", &[("__name__x", "")]),
        ],
        ..Default::default()
    };
    let batch = decode(&req).unwrap();
    let names: Vec<&str> = batch.series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["good_one"], "{:?}", batch.refused);

    let expect = [
        (
            RefuseReason::MissingMetricName,
            2,
            "timeseries[1]: no __name__ label",
        ),
        (
            RefuseReason::InvalidMetricName,
            1,
            "timeseries[3] (1bad): invalid metric name \"1bad\"",
        ),
        (
            RefuseReason::InvalidLabelName,
            1,
            "timeseries[4] (up): invalid label name \"bad-name\"",
        ),
        (
            RefuseReason::ReservedLabel,
            2,
            "timeseries[5] (up): label \"__meta_x\" is reserved",
        ),
        (
            RefuseReason::DuplicateLabel,
            1,
            "timeseries[6] (up): label \"job\" appears more than once",
        ),
        (
            RefuseReason::TooManyLabels,
            1,
            "timeseries[7] (up): 71 labels, more than the limit of 64",
        ),
        (
            RefuseReason::LabelNameTooLong,
            1,
            "timeseries[8] (up): label name \"xxx",
        ),
        (
            RefuseReason::LabelValueTooLong,
            1,
            "timeseries[9] (up): value of label \"job\" is 3000 bytes",
        ),
    ];
    for (reason, series, first) in expect {
        let r = refusal(&batch, reason);
        assert_eq!(r.series, series, "{reason:?}");
        assert_eq!(
            r.samples,
            2 * series,
            "{reason:?}: samples of refused series are counted"
        );
        assert!(r.first.starts_with(first), "{reason:?}: {}", r.first);
        assert!(r.first.len() < 400, "quoted input is clipped: {}", r.first);
    }
    // A `__`-prefixed label with an empty value is absent, yet still refused: it was sent.
    assert_eq!(batch.refused.len(), expect.len());
    let summary = batch.refusal_summary().unwrap();
    assert!(
        summary.contains("reserved_label: 2 series, 4 dropped"),
        "{summary}"
    );
}

#[test]
fn repeated_label_sets_are_one_series_in_order() {
    // Prometheus sends one TimeSeries per sample.
    let one =
        |name: &str, job: &str, t: i64| TimeSeries::new(name, &[("job", job)], vec![(t, t as f64)]);
    let req = WriteRequest {
        timeseries: vec![
            one("up", "a", 1),
            one("up", "b", 1),
            one("up", "a", 2),
            one("x", "a", 1),
            one("1bad", "a", 1),
            one("up", "a", 3),
            one("1bad", "a", 2),
        ],
        ..Default::default()
    };
    let batch = decode(&req).unwrap();
    let shape: Vec<(&str, Option<&str>, Vec<i64>)> = batch
        .series
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.labels.get("job"),
                s.samples.iter().map(|p| p.0).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("up", Some("a"), vec![1, 2, 3]),
            ("up", Some("b"), vec![1]),
            ("x", Some("a"), vec![1]),
        ]
    );
    // A refused label set is one series however often it is sent; its samples all count.
    let r = refusal(&batch, RefuseReason::InvalidMetricName);
    assert_eq!((r.series, r.samples), (1, 2));
    assert!(r.first.starts_with("timeseries[4] (1bad)"), "{}", r.first);
}

#[test]
fn empty_label_values_are_dropped() {
    let req = WriteRequest {
        timeseries: vec![TimeSeries::new(
            "up",
            &[("job", "a"), ("zone", "")],
            vec![(1, 1.0)],
        )],
        ..Default::default()
    };
    let batch = decode(&req).unwrap();
    assert_eq!(batch.series[0].labels, Labels::from_pairs([("job", "a")]));
}

#[test]
fn unsorted_labels_are_sorted() {
    let mut ts = TimeSeries::new("up", &[("b", "2"), ("a", "1")], vec![(1, 1.0)]);
    ts.labels.reverse();
    let batch = decode(&WriteRequest {
        timeseries: vec![ts],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        batch.series[0].labels,
        Labels::from_pairs([("a", "1"), ("b", "2")])
    );
}

/// A series as raw protobuf, so tests can put bytes no encoder would.
fn raw_series(labels: &[(&[u8], &[u8])], samples: &[(i64, f64)]) -> Vec<u8> {
    let mut s = Vec::new();
    for (n, v) in labels {
        let mut l = Vec::new();
        put_bytes(&mut l, 1, n);
        put_bytes(&mut l, 2, v);
        put_bytes(&mut s, 1, &l);
    }
    for &(t, v) in samples {
        let mut m = Vec::new();
        put_fixed64_field(&mut m, 1, v.to_bits());
        put_varint_field(&mut m, 2, t as u64);
        put_bytes(&mut s, 2, &m);
    }
    s
}

#[test]
fn invalid_utf8_refuses_the_series_and_says_where() {
    let mut req = Vec::new();
    put_bytes(
        &mut req,
        1,
        &raw_series(&[(b"__name__", b"up"), (b"job", b"ok")], &[(1, 1.0)]),
    );
    put_bytes(
        &mut req,
        1,
        &raw_series(
            &[(b"__name__", b"up"), (b"job", b"\xff\xfe")],
            &[(1, 1.0), (2, 2.0)],
        ),
    );
    put_bytes(
        &mut req,
        1,
        &raw_series(&[(b"__name__", b"up"), (b"j\xc3", b"x")], &[(1, 1.0)]),
    );
    let batch = decode_write_request(&req, &limits()).unwrap();
    assert_eq!(batch.series.len(), 1);
    let r = refusal(&batch, RefuseReason::InvalidUtf8);
    assert_eq!((r.series, r.samples), (2, 3));
    assert_eq!(
        r.first,
        "timeseries[1] (up): labels[1].value (label \"job\"): invalid UTF-8"
    );
}

#[test]
fn histograms_and_exemplars_are_dropped_but_float_samples_kept() {
    let mut ts = TimeSeries::new("http_requests_total", &[("job", "api")], vec![(1000, 5.0)]);
    ts.exemplars = vec![
        Exemplar {
            labels: vec![("trace_id".into(), "abc".into())],
            value: 0.5,
            timestamp: 990,
        },
        Exemplar::default(),
    ];
    let mut hist = TimeSeries::new("latency_seconds", &[], vec![]);
    hist.histograms = vec![
        Histogram {
            count: 3,
            sum: 1.5,
            schema: -2,
            timestamp: 1000,
        };
        3
    ];
    let batch = decode(&WriteRequest {
        timeseries: vec![ts, hist],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(batch.series.len(), 1);
    assert_eq!(batch.series[0].samples, vec![(1000, 5.0)]);
    let e = refusal(&batch, RefuseReason::Exemplar);
    assert_eq!((e.series, e.samples), (1, 2));
    assert!(
        e.first.contains("exemplars are not supported"),
        "{}",
        e.first
    );
    let h = refusal(&batch, RefuseReason::NativeHistogram);
    assert_eq!((h.series, h.samples), (1, 3));
    assert!(
        h.first.starts_with("timeseries[1] (latency_seconds):"),
        "{}",
        h.first
    );
}

#[test]
fn metadata_types_map_to_ours_and_bad_entries_are_refused() {
    let md = |kind, family: &str, help: &str| MetricMetadata {
        kind,
        family: family.into(),
        help: help.into(),
        unit: String::new(),
    };
    let req = WriteRequest {
        metadata: vec![
            md(ProtoMetricType::Gauge, "node_load1", "Load."),
            md(ProtoMetricType::Histogram, "http_latency_seconds", ""),
            md(ProtoMetricType::GaugeHistogram, "queue_size", ""),
            md(ProtoMetricType::StateSet, "feature_state", ""),
            md(ProtoMetricType::Info, "build_info", ""),
            md(ProtoMetricType::Summary, "rpc_seconds", ""),
            md(ProtoMetricType::Unknown, "mystery", ""),
            md(ProtoMetricType::Counter, "bad name", ""),
            md(ProtoMetricType::Counter, "long_help", &"h".repeat(10_000)),
        ],
        ..Default::default()
    };
    let batch = decode(&req).unwrap();
    let kinds: Vec<(&str, MetricType)> = batch
        .metadata
        .iter()
        .map(|m| (m.family.as_str(), m.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("node_load1", MetricType::Gauge),
            ("http_latency_seconds", MetricType::Histogram),
            ("queue_size", MetricType::Unknown),
            ("feature_state", MetricType::Gauge),
            ("build_info", MetricType::Info),
            ("rpc_seconds", MetricType::Summary),
            ("mystery", MetricType::Unknown),
        ]
    );
    let r = refusal(&batch, RefuseReason::InvalidMetadata);
    assert_eq!((r.series, r.samples), (0, 2));
    assert!(
        r.first
            .starts_with("metadata[7] (bad name): invalid metric_family_name"),
        "{}",
        r.first
    );

    // An enum number from a newer sender is Unknown, not an error.
    let mut raw = Vec::new();
    let mut m = Vec::new();
    put_varint_field(&mut m, 1, 42);
    put_bytes(&mut m, 2, b"future");
    put_bytes(&mut raw, 3, &m);
    let batch = decode_write_request(&raw, &limits()).unwrap();
    assert_eq!(batch.metadata[0].kind, MetricType::Unknown);
}

#[test]
fn unknown_fields_are_skipped_at_every_level() {
    let plain = encode_write_request(&captured_request());
    // The same request with unknown fields of every wire type sprinkled in.
    let mut req = Vec::new();
    put_varint_field(&mut req, 2, 7); // reserved field 2 (Cortex's source)
    put_fixed64_field(&mut req, 99, 1);
    let mut s = Vec::new();
    put_tag(&mut s, 15, crate::api::protowire::WIRE_I32);
    s.extend_from_slice(&[1, 2, 3, 4]);
    let mut label = Vec::new();
    put_bytes(&mut label, 1, b"__name__");
    put_varint_field(&mut label, 9, 300);
    put_bytes(&mut label, 2, b"up");
    put_bytes(&mut s, 1, &label);
    let mut sample = Vec::new();
    put_fixed64_field(&mut sample, 1, 1f64.to_bits());
    put_bytes(&mut sample, 3, &[1, 2, 3]); // identifyingLabels, packed
    put_varint_field(&mut sample, 2, 1_700_000_000_000);
    put_bytes(&mut s, 2, &sample);
    put_bytes(&mut s, 6, b"created timestamp or whatever comes next");
    put_bytes(&mut req, 1, &s);
    let mut md = Vec::new();
    put_varint_field(&mut md, 1, 2);
    put_bytes(&mut md, 2, b"up");
    put_bytes(&mut md, 3, b"field 3 is unused in MetricMetadata");
    put_bytes(&mut req, 3, &md);
    put_bytes(&mut req, 1000, &plain);

    let batch = decode_write_request(&req, &limits()).unwrap();
    assert!(batch.refused.is_empty(), "{:?}", batch.refused);
    assert_eq!(batch.series.len(), 1);
    assert_eq!(batch.series[0].name, "up");
    assert_eq!(batch.series[0].samples, vec![(1_700_000_000_000, 1.0)]);
    assert_eq!(batch.metadata[0].kind, MetricType::Gauge);
}

#[test]
fn protobuf_errors_name_the_path_and_the_byte() {
    // The metadata message (tag at byte 168) cut short by two bytes.
    let cut = &CAPTURED[..CAPTURED.len() - 2];
    let e = decode_write_request(cut, &limits()).unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        e.to_string(),
        "protobuf: length-delimited field at byte 169 declares 66 bytes but only 64 remain"
    );

    let mut req = Vec::new();
    let mut s = raw_series(&[(b"__name__", b"up")], &[]);
    // A sample whose timestamp varint never ends.
    let sample = [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x80, 0x80];
    put_bytes(&mut s, 2, &sample);
    put_bytes(
        &mut req,
        1,
        &raw_series(&[(b"__name__", b"up")], &[(1, 1.0)]),
    );
    let second_at = req.len();
    put_bytes(&mut req, 1, &s);
    let e = decode_write_request(&req, &limits()).unwrap_err();
    let varint_at = second_at + 2 + (s.len() - sample.len()) + 10;
    assert_eq!(
        e.to_string(),
        format!("protobuf: timeseries[1].samples[0]: truncated varint at byte {varint_at}")
    );

    // A known field with the wrong wire type.
    let mut s = Vec::new();
    put_varint_field(&mut s, 1, 5); // labels must be length-delimited
    let mut req = Vec::new();
    put_bytes(&mut req, 1, &s);
    let e = decode_write_request(&req, &limits()).unwrap_err();
    match &e {
        WriteError::Protobuf { path, source } => {
            assert_eq!(path, "timeseries[0].labels[0]: ");
            assert_eq!(
                source.kind,
                WireErrorKind::WrongWireType {
                    field: 1,
                    got: WIRE_VARINT,
                    expected: crate::api::protowire::WIRE_LEN
                }
            );
        }
        other => panic!("{other:?}"),
    }
    let mut sample = Vec::new();
    put_varint_field(&mut sample, 1, 5); // value must be fixed64
    let mut s = raw_series(&[(b"__name__", b"up")], &[]);
    put_bytes(&mut s, 2, &sample);
    let mut req = Vec::new();
    put_bytes(&mut req, 1, &s);
    let e = decode_write_request(&req, &limits()).unwrap_err();
    assert!(
        matches!(&e, WriteError::Protobuf { source, .. } if source.kind == WireErrorKind::WrongWireType { field: 1, got: WIRE_VARINT, expected: WIRE_I64 }),
        "{e}"
    );
}

#[test]
fn every_truncation_is_a_clean_error() {
    for n in 0..CAPTURED.len() {
        match decode_write_request(&CAPTURED[..n], &limits()) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{n}: {e}");
                assert!(e.to_string().starts_with("protobuf: "), "{n}: {e}");
            }
        }
    }
    let body = compress(&CAPTURED).unwrap();
    for n in 0..body.len() {
        let e = decode_body(&body[..n], &limits()).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{n}: {e}");
        assert!(e.to_string().starts_with("snappy: "), "{n}: {e}");
    }
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    // A header claiming 1 GiB, then a few bytes.
    let mut body = Vec::new();
    put_varint(&mut body, 1 << 30);
    body.extend_from_slice(&[0, 0, 0, 0]);
    let e = decode_body(&body, &limits()).unwrap_err();
    assert_eq!(
        e,
        WriteError::DecompressedTooLarge {
            claimed: 1 << 30,
            limit: 32 << 20
        }
    );
    assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Under the limit, but more than 6 bytes could ever hold.
    let mut body = Vec::new();
    put_varint(&mut body, 1 << 20);
    body.extend_from_slice(&[0, 0]);
    let e = decode_body(&body, &limits()).unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);

    // Over 2^32 - 1: snappy's own limit, still a 413.
    let mut body = Vec::new();
    put_varint(&mut body, 1 << 33);
    assert!(matches!(
        decode_body(&body, &limits()),
        Err(WriteError::DecompressedTooLarge { .. })
    ));

    // The densest real snappy output still decompresses.
    let zeros = vec![0u8; 4 << 20];
    let body = compress(&zeros).unwrap();
    assert!(body.len() * 21 < zeros.len(), "zeros compress hard");
    assert_eq!(decompress(&body, &limits()).unwrap(), zeros);

    // A body over a smaller configured limit.
    let small = DecodeLimits {
        max_decompressed_bytes: 1 << 20,
        ..limits()
    };
    assert!(matches!(
        decompress(&body, &small),
        Err(WriteError::DecompressedTooLarge { claimed, limit: 1_048_576 }) if claimed == 4 << 20
    ));
}

#[test]
fn empty_and_garbage_bodies_are_400() {
    let e = decode_body(&[], &limits()).unwrap_err();
    assert_eq!(e, WriteError::Snappy("empty body".into()));
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    // Plain protobuf sent without compression.
    let e = decode_body(&CAPTURED, &limits()).unwrap_err();
    assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
    // Snappy framed format (stream identifier chunk) is not the block format.
    let framed = b"\xff\x06\x00\x00sNaPpY";
    assert_eq!(
        decode_body(framed, &limits()).unwrap_err().status(),
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn too_many_samples_is_413() {
    let req = WriteRequest {
        timeseries: vec![
            TimeSeries::new("a", &[], vec![(1, 1.0); 6]),
            TimeSeries::new("b", &[], vec![(1, 1.0); 6]),
        ],
        ..Default::default()
    };
    let small = DecodeLimits {
        max_samples: 10,
        ..limits()
    };
    let e = decode_body(&encode_body(&req).unwrap(), &small).unwrap_err();
    assert_eq!(e, WriteError::TooManySamples { limit: 10 });
    assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let ok = DecodeLimits {
        max_samples: 12,
        ..limits()
    };
    assert_eq!(
        decode_body(&encode_body(&req).unwrap(), &ok)
            .unwrap()
            .sample_count(),
        12
    );
}

#[test]
fn content_type_negotiation() {
    let ok =
        |ct: Option<&str>, enc: Option<&str>, ver: Option<&str>| check_content_type(ct, enc, ver);
    let status = |r: Result<(), WriteError>| r.unwrap_err().status().as_u16();
    // What Prometheus sends for 1.0, and what lenient 1.0 clients send.
    ok(
        Some("application/x-protobuf"),
        Some("snappy"),
        Some("0.1.0"),
    )
    .unwrap();
    ok(
        Some("application/x-protobuf;proto=prometheus.WriteRequest"),
        Some("snappy"),
        Some("0.1.0"),
    )
    .unwrap();
    ok(
        Some("Application/X-Protobuf; proto=\"prometheus.WriteRequest\"; charset=utf-8"),
        Some("SNAPPY"),
        None,
    )
    .unwrap();
    ok(None, None, None).unwrap();
    ok(Some(""), Some(""), Some("garbage")).unwrap();
    // Remote-write 2.0: 415, recognisable so it can be counted.
    let e = ok(
        Some("application/x-protobuf;proto=io.prometheus.write.v2.Request"),
        Some("snappy"),
        Some("2.0.0"),
    )
    .unwrap_err();
    assert!(matches!(e, WriteError::RemoteWrite2(_)), "{e}");
    assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(e.as_str(), "remote_write_2");
    assert!(e.to_string().contains("remote-write 2.0"), "{e}");
    assert!(matches!(
        ok(None, Some("snappy"), Some("2.0.0")),
        Err(WriteError::RemoteWrite2(_))
    ));
    // The version header does not override an explicit 1.0 content type.
    ok(
        Some("application/x-protobuf"),
        Some("snappy"),
        Some("2.0.0"),
    )
    .unwrap();
    // Other types and codings.
    assert_eq!(
        status(ok(Some("application/json"), Some("snappy"), None)),
        415
    );
    assert_eq!(
        status(ok(Some("application/x-protobuf;proto=foo.Bar"), None, None)),
        415
    );
    assert_eq!(
        status(ok(Some("application/x-protobuf;proto"), None, None)),
        415
    );
    assert_eq!(status(ok(Some("text/plain"), None, None)), 415);
    let e = ok(Some("application/x-protobuf"), Some("gzip"), None).unwrap_err();
    assert_eq!(e, WriteError::UnsupportedEncoding("gzip".into()));
    assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        status(ok(Some("application/x-protobuf"), Some("zstd"), None)),
        415
    );
    // Hostile header values are clipped in the message.
    let e = ok(Some(&"a".repeat(10_000)), None, None).unwrap_err();
    assert!(e.to_string().len() < 300, "{e}");
}

fn label_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,12}".prop_filter("reserved", |s| !s.starts_with("__"))
}

fn valid_series() -> impl Strategy<Value = TimeSeries> {
    (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
        proptest::collection::btree_map(label_name(), "\\PC{1,16}", 0..6),
        proptest::collection::vec((any::<i64>(), any::<u64>().prop_map(f64::from_bits)), 1..8),
    )
        .prop_map(|(name, labels, samples)| {
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            TimeSeries::new(&name, &labels, samples)
        })
}

fn valid_metadata() -> impl Strategy<Value = MetricMetadata> {
    (
        prop_oneof![
            Just(ProtoMetricType::Counter),
            Just(ProtoMetricType::Gauge),
            Just(ProtoMetricType::Histogram),
            Just(ProtoMetricType::Summary),
            Just(ProtoMetricType::Info),
            Just(ProtoMetricType::Unknown),
        ],
        "[a-z_]{1,20}",
        "\\PC{0,40}",
        "[a-z]{0,8}",
    )
        .prop_map(|(kind, family, help, unit)| MetricMetadata {
            kind,
            family,
            help,
            unit,
        })
}

fn valid_request() -> impl Strategy<Value = WriteRequest> {
    (
        proptest::collection::vec(valid_series(), 0..6),
        proptest::collection::vec(valid_metadata(), 0..3),
    )
        .prop_map(|(timeseries, metadata)| WriteRequest {
            timeseries,
            metadata,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_requests_round_trip(req in valid_request()) {
        let batch = decode(&req).unwrap();
        prop_assert!(batch.refused.is_empty(), "{:?}", batch.refused);
        // Messages with the same labels are one series, its samples in the order sent.
        let mut sent_series: Vec<TimeSeries> = Vec::new();
        for ts in &req.timeseries {
            match sent_series.iter_mut().find(|s| s.labels == ts.labels) {
                Some(s) => s.samples.extend_from_slice(&ts.samples),
                None => sent_series.push(ts.clone()),
            }
        }
        prop_assert_eq!(batch.series.len(), sent_series.len());
        for (got, sent) in batch.series.iter().zip(&sent_series) {
            let mut want = Labels::new();
            let mut name = String::new();
            for (k, v) in &sent.labels {
                if k == "__name__" { name = v.clone() } else { want.set(k.clone(), v.clone()) }
            }
            prop_assert_eq!(&got.name, &name);
            prop_assert_eq!(&got.labels, &want);
            prop_assert_eq!(bits(&got.samples), bits(&sent.samples));
        }
        prop_assert_eq!(batch.metadata.len(), req.metadata.len());
        for (got, sent) in batch.metadata.iter().zip(&req.metadata) {
            prop_assert_eq!(&got.family, &sent.family);
            prop_assert_eq!(ProtoMetricType::from_model(got.kind), sent.kind);
            prop_assert_eq!(&got.help, &sent.help);
            prop_assert_eq!(&got.unit, &sent.unit);
        }
    }

    #[test]
    fn arbitrary_labels_never_panic_and_accepted_series_are_valid(
        series in proptest::collection::vec(
            (
                proptest::collection::vec(("(__name__|[a-z_]{0,3}|\\PC{0,3})", "\\PC{0,4}"), 0..5),
                proptest::collection::vec((any::<i64>(), any::<f64>()), 0..3),
            ),
            0..6,
        )
    ) {
        let req = WriteRequest {
            timeseries: series
                .into_iter()
                .map(|(labels, samples)| TimeSeries { labels, samples, ..Default::default() })
                .collect(),
            ..Default::default()
        };
        let batch = decode(&req).unwrap();
        let refused: u64 = batch.refused.iter().map(|r| r.series).sum();
        let mut with_samples: Vec<&Vec<(String, String)>> = req
            .timeseries
            .iter()
            .filter(|s| !s.samples.is_empty())
            .map(|s| &s.labels)
            .collect();
        with_samples.sort();
        with_samples.dedup();
        let with_samples = with_samples.len();
        prop_assert!(batch.series.len() + refused as usize >= with_samples);
        for s in &batch.series {
            prop_assert!(is_valid_metric_name(&s.name));
            prop_assert!(s.labels.is_canonical());
            for (k, v) in s.labels.iter() {
                prop_assert!(is_valid_label_name(k) && !k.starts_with("__") && !v.is_empty());
            }
        }
    }

    #[test]
    fn random_protobuf_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = decode_write_request(&buf, &limits()) {
            prop_assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn random_bodies_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_body(&buf, &limits());
    }

    #[test]
    fn mutated_requests_never_panic(
        req in valid_request(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        compressed in any::<bool>(),
    ) {
        let mut bytes = encode_write_request(&req);
        if compressed {
            bytes = compress(&bytes).unwrap();
        }
        if !bytes.is_empty() {
            for &(at, x) in &flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
        }
        let result = if compressed {
            decode_body(&bytes, &limits())
        } else {
            decode_write_request(&bytes, &limits())
        };
        if let Ok(batch) = result {
            for s in &batch.series {
                prop_assert!(is_valid_metric_name(&s.name));
                prop_assert!(s.labels.is_canonical());
            }
        }
    }
}
