//! Bad input against a real `argus serve` (issue 3, acceptance "Bad input"): corrupt,
//! oversized and remote-write 2.0 bodies are refused with the right status, series
//! over the label limits are refused alone and counted, nothing half-written is kept,
//! and the node keeps serving. Also the listen-address rule: beyond loopback only with
//! a write token, and then writes need it.

mod common;

use argus_coordinator::api::remote_write::{
    CONTENT_ENCODING, PROTO_V2, TimeSeries, VERSION_HEADER, WriteRequest, compress, encode_body,
    encode_write_request,
};
use argus_testkit::http;
use argus_testkit::prometheus::LabelSet;
use common::{Argus, WRITE_HEADERS, now_ms};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;

const EVERY_SERIES: &str = "{__name__=~\".+\"}";

fn names(series: &[LabelSet]) -> BTreeSet<String> {
    series
        .iter()
        .map(|s| s.get("__name__").cloned().unwrap_or_default())
        .collect()
}

fn assert_alive(a: &Argus) {
    let r = a.get("/health");
    assert_eq!(r.status, 200, "/health after bad input: {}", r.text());
    let r = a.get("/ready");
    assert_eq!(r.status, 200, "/ready after bad input: {}", r.text());
}

fn refused(a: &Argus, reason: &str) -> f64 {
    a.metric("argus_http_write_refused_total", &[("reason", reason)])
        .unwrap_or(0.0)
}

fn good_series(name: &str, t: i64) -> TimeSeries {
    TimeSeries::new(
        name,
        &[("instance", "h1:9100"), ("job", "node")],
        vec![(t, 1.5), (t + 1000, 2.5)],
    )
}

#[test]
fn unreadable_oversized_and_v2_bodies_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let a = Argus::start(&dir.path().join("data"), &[]);
    let t = now_ms() - 60_000;

    // A baseline write, so "nothing new appeared" below means something.
    let r = a.write(&WriteRequest {
        timeseries: vec![good_series("baseline_total", t)],
        ..Default::default()
    });
    assert_eq!(r.status, 204, "baseline write: {}", r.text());
    let before = a.series(EVERY_SERIES);
    assert_eq!(
        names(&before),
        BTreeSet::from(["baseline_total".to_string()])
    );

    // Not snappy at all.
    let r = a
        .write_raw(b"this is certainly not a snappy block")
        .unwrap();
    assert_eq!(r.status, 400, "non-snappy body: {}", r.text());
    assert!(
        r.text().contains("snappy"),
        "names the problem: {}",
        r.text()
    );

    // Valid snappy around garbage protobuf.
    let garbage = compress(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x0a, 0x03, 0x01]).unwrap();
    let r = a.write_raw(&garbage).unwrap();
    assert_eq!(r.status, 400, "garbage protobuf: {}", r.text());
    assert!(
        r.text().contains("protobuf"),
        "names the problem: {}",
        r.text()
    );

    // A valid series followed by a truncated one: the whole request is unreadable, and
    // the valid prefix must not be kept either.
    let mut proto = encode_write_request(&WriteRequest {
        timeseries: vec![good_series("prefix_of_corrupt_total", t)],
        ..Default::default()
    });
    proto.extend_from_slice(&[0x0a, 0xff, 0xff, 0x03, 0x0a]);
    let r = a.write_raw(&compress(&proto).unwrap()).unwrap();
    assert_eq!(r.status, 400, "truncated protobuf: {}", r.text());
    assert!(
        r.text().contains("protobuf"),
        "names the problem: {}",
        r.text()
    );

    // Remote-write 2.0, by content type and by version header alone.
    let v2_type = format!("application/x-protobuf;proto={PROTO_V2}");
    let body = encode_body(&WriteRequest {
        timeseries: vec![good_series("sent_as_v2_total", t)],
        ..Default::default()
    })
    .unwrap();
    let r = http::post(
        a.addr,
        "/api/v1/write",
        &[
            ("Content-Type", &v2_type),
            ("Content-Encoding", CONTENT_ENCODING),
            (VERSION_HEADER, "2.0.0"),
        ],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 415, "remote-write 2.0: {}", r.text());
    assert!(r.text().contains("2.0"), "says why: {}", r.text());
    let r = http::post(
        a.addr,
        "/api/v1/write",
        &[
            ("Content-Encoding", CONTENT_ENCODING),
            (VERSION_HEADER, "2.0.0"),
        ],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 415, "remote-write 2.0 by header: {}", r.text());

    // More samples than one request may carry: 413 from the decoder, nothing kept.
    let many = WriteRequest {
        timeseries: vec![TimeSeries::new(
            "too_many_samples_total",
            &[("job", "x")],
            (0..1_000_001i64)
                .map(|i| (t - 2_000_000 + i, 1.0))
                .collect(),
        )],
        ..Default::default()
    };
    let body = encode_body(&many).unwrap();
    assert!(body.len() < 16 << 20, "stays under the body limit");
    let r = a.write_raw(&body).unwrap();
    assert_eq!(r.status, 413, "1M+1 samples: {}", r.text());

    // A body over the 16 MiB limit, compressed: random label values do not compress.
    let mut rng = StdRng::seed_from_u64(3);
    let mut big = WriteRequest::default();
    let mut size = 0usize;
    while size <= (16 << 20) + 4096 {
        let value: String = (0..2000)
            .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
            .collect();
        size += value.len();
        big.timeseries.push(TimeSeries::new(
            "oversized_total",
            &[("blob", &value), ("n", &big.timeseries.len().to_string())],
            vec![(t, 1.0)],
        ));
    }
    let body = encode_body(&big).unwrap();
    assert!(
        body.len() > 16 << 20,
        "compressed body is {} bytes",
        body.len()
    );
    let r = a.write_raw(&body).unwrap();
    assert_eq!(r.status, 413, "oversized body: {}", r.text());

    assert_alive(&a);
    assert_eq!(
        a.series(EVERY_SERIES),
        before,
        "a refused request left series behind"
    );
    // The oversized body is cut off while it is read, and counted all the same.
    for (reason, n) in [
        ("snappy", 1.0),
        ("protobuf", 2.0),
        ("remote_write_2", 2.0),
        ("too_many_samples", 1.0),
        ("body_too_large", 1.0),
    ] {
        assert_eq!(refused(&a, reason), n, "refusals counted as {reason}");
    }

    // And the node still takes writes.
    let r = a.write(&WriteRequest {
        timeseries: vec![good_series("after_bad_input_total", t)],
        ..Default::default()
    });
    assert_eq!(r.status, 204, "write after bad input: {}", r.text());
}

#[test]
fn series_over_the_limits_are_refused_alone_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let a = Argus::start(&dir.path().join("data"), &[]);
    let t = now_ms() - 60_000;

    let many_labels: Vec<(String, String)> = (0..64)
        .map(|i| (format!("l{i:02}"), "v".to_string()))
        .collect();
    let many_labels: Vec<(&str, &str)> = many_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let long_value = "x".repeat(2049);
    let long_name = "n".repeat(1025);
    let two = |t: i64| vec![(t, 1.0), (t + 1000, 2.0)];
    let req = WriteRequest {
        timeseries: vec![
            good_series("kept_before_total", t),
            // 64 labels + __name__ = 65, one over the limit.
            TimeSeries::new("too_many_labels_total", &many_labels, two(t)),
            TimeSeries::new("long_value_total", &[("path", &long_value)], two(t)),
            TimeSeries::new("long_name_total", &[(&long_name, "v")], two(t)),
            TimeSeries::new("reserved_label_total", &[("__tenant", "a")], two(t)),
            TimeSeries::new("reserved_meta_total", &[("__address__", "h:1")], two(t)),
            good_series("kept_after_total", t),
        ],
        ..Default::default()
    };
    let r = a.write(&req);
    assert_eq!(r.status, 400, "a partly refused request: {}", r.text());
    let msg = r.text();
    for reason in [
        "too_many_labels",
        "label_value_too_long",
        "label_name_too_long",
        "reserved_label",
    ] {
        assert!(msg.contains(reason), "response names {reason}: {msg}");
    }

    // The valid series of the same request were stored, the refused ones do not exist.
    let got = names(&a.series(EVERY_SERIES));
    assert_eq!(
        got,
        BTreeSet::from([
            "kept_after_total".to_string(),
            "kept_before_total".to_string()
        ]),
        "only the valid series exist"
    );
    for (reason, samples) in [
        ("too_many_labels", 2.0),
        ("label_value_too_long", 2.0),
        ("label_name_too_long", 2.0),
        ("reserved_label", 4.0),
    ] {
        assert_eq!(refused(&a, reason), samples, "samples refused as {reason}");
    }
    // Both samples of each valid series were appended: nothing of them was lost to
    // their neighbours' refusal.
    assert_eq!(
        a.metric("argus_tsdb_samples_appended_total", &[]),
        Some(4.0),
        "samples of the valid series"
    );

    // Sending the same request again (a sender retrying) duplicates nothing.
    let r = a.write(&req);
    assert_eq!(
        r.status,
        400,
        "the retry is refused the same way: {}",
        r.text()
    );
    assert_eq!(
        a.metric("argus_tsdb_samples_appended_total", &[]),
        Some(4.0)
    );
    assert_eq!(a.series(EVERY_SERIES).len(), 2);
    assert_alive(&a);
}

#[test]
fn listening_beyond_loopback_needs_a_write_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = http::free_port().unwrap();

    // Anonymous access beyond loopback without saying so explicitly: refuses to start,
    // and says why.
    let refused_config = dir.path().join("refused.toml");
    std::fs::write(&refused_config, "[api]\nanonymous_roles = [\"ingest\"]\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("open"))
        .arg("--config")
        .arg(&refused_config)
        .arg("--listen")
        .arg(format!("0.0.0.0:{port}"))
        .env_remove("ARGUS_SERVE_WRITE_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must exit non-zero: {stderr}");
    assert!(
        stderr.contains("anonymous_beyond_loopback") && stderr.contains("0.0.0.0"),
        "names the address and the way out: {stderr}"
    );

    // With a token (and anonymous reads allowed explicitly): serves, and writes need it.
    let config = dir.path().join("argus.toml");
    std::fs::write(
        &config,
        "[api]\nanonymous_roles = [\"viewer\"]\nanonymous_beyond_loopback = true\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let data = dir.path().join("token");
    let mut a = None;
    for _ in 0..5 {
        let port = http::free_port().unwrap();
        let mut candidate = Argus::spawn(
            &data,
            std::net::SocketAddr::from(([0, 0, 0, 0], port)),
            &["--write-token", "s3cret", "--config", config],
        )
        .unwrap();
        match candidate.wait_ready() {
            Ok(_) => {
                a = Some(candidate);
                break;
            }
            Err(e) if e.contains("cannot listen") => continue,
            Err(e) => panic!("{e}"),
        }
    }
    let a = a.expect("argus serve with a token started");
    let body = encode_body(&WriteRequest {
        timeseries: vec![good_series("token_total", now_ms() - 60_000)],
        ..Default::default()
    })
    .unwrap();
    let post = |auth: Option<&str>| {
        let mut headers = WRITE_HEADERS.to_vec();
        if let Some(v) = auth {
            headers.push(("Authorization", v));
        }
        http::post(a.addr, "/api/v1/write", &headers, &body).unwrap()
    };
    assert_eq!(post(None).status, 401, "no token");
    assert_eq!(post(Some("Bearer wrong")).status, 401, "wrong token");
    assert_eq!(
        post(Some("Basic czNjcmV0")).status,
        401,
        "not a bearer token"
    );
    let r = post(Some("Bearer s3cret"));
    assert_eq!(r.status, 204, "right token: {}", r.text());
    assert_eq!(
        names(&a.series(EVERY_SERIES)),
        BTreeSet::from(["token_total".to_string()])
    );
    assert_eq!(refused(&a, "unauthorized"), 3.0);
    // Reads stay open (this issue protects writes only).
    assert_eq!(a.get("/health").status, 200);
}
