//! The Prometheus query API of a real `argus serve` (issue 4, deliverable 2): samples
//! pushed by remote write, old enough that the head has sealed part of them into the
//! store, answer instant and range queries (rate, sum by, offset) with the values
//! Prometheus's algorithms give, computed here from the pushed data. Also the
//! applied-index header, `stats`, POST forms, the 400s for bad PromQL and too many
//! points, the 422 for the samples limit, and empty exemplars.

mod common;

use argus_coordinator::api::remote_write::{TimeSeries, WriteRequest, encode_body};
use argus_coordinator::query::source::QueryLimits;
use argus_coordinator::server::{ServeConfig, start};
use argus_testkit::http::{self, Response, encode_component};
use common::{Argus, WRITE_HEADERS, now_ms};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const STEP_MS: i64 = 15_000;
/// Samples per series: 100 minutes at 15 s. The head cuts chunks at 120 samples and
/// seals those more than 10 minutes behind the newest sample, so the older part of
/// every series is read back from the store.
const N: i64 = 400;
/// Evaluation times sit this far off the sample grid, so left-open and left-closed
/// windows select the same samples.
const OFF_GRID_MS: i64 = 7_000;

/// The pushed data: two counters at different rates.
struct Data {
    base: i64,
}

impl Data {
    fn new() -> Data {
        // The newest sample is about 10 minutes old: in the past, as the node requires.
        let base = (now_ms() - 110 * 60_000).div_euclid(STEP_MS) * STEP_MS;
        Data { base }
    }

    fn t(&self, i: i64) -> i64 {
        self.base + i * STEP_MS
    }

    /// Counter value of instance `h1` (slope 1) or `h2` (slope 3) at sample `i`.
    fn value(instance: &str, i: i64) -> f64 {
        let slope = if instance == "h1" { 1.0 } else { 3.0 };
        slope * i as f64
    }

    fn samples(&self, instance: &str) -> Vec<(i64, f64)> {
        (0..N)
            .map(|i| (self.t(i), Data::value(instance, i)))
            .collect()
    }

    fn request(&self) -> WriteRequest {
        let series = ["h1", "h2"]
            .into_iter()
            .map(|inst| {
                TimeSeries::new(
                    "http_requests_total",
                    &[("instance", inst), ("job", "api")],
                    self.samples(inst),
                )
            })
            .collect();
        WriteRequest {
            timeseries: series,
            ..Default::default()
        }
    }
}

/// Prometheus 3's `rate` over the left-open window `(t - range, t]`: the increase
/// between the first and last sample (counter resets adjusted), extrapolated towards
/// the window's edges, per second.
fn reference_rate(samples: &[(i64, f64)], t: i64, range: i64) -> Option<f64> {
    let w: Vec<(i64, f64)> = samples
        .iter()
        .copied()
        .filter(|s| s.0 > t - range && s.0 <= t)
        .collect();
    if w.len() < 2 {
        return None;
    }
    let (first, last) = (w[0], w[w.len() - 1]);
    let mut increase = last.1 - first.1;
    for p in w.windows(2) {
        if p[1].1 < p[0].1 {
            increase += p[0].1;
        }
    }
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg = sampled / (w.len() - 1) as f64;
    let mut to_start = (first.0 - (t - range)) as f64 / 1000.0;
    let mut to_end = (t - last.0) as f64 / 1000.0;
    if to_start >= avg * 1.1 {
        to_start = avg / 2.0;
    }
    if increase > 0.0 && first.1 >= 0.0 {
        to_start = to_start.min(sampled * (first.1 / increase));
    }
    if to_end >= avg * 1.1 {
        to_end = avg / 2.0;
    }
    let factor = (sampled + to_start + to_end) / sampled / (range as f64 / 1000.0);
    Some(increase * factor)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * 1f64.max(a.abs()).max(b.abs())
}

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): status {} {}", r.status, r.text()))
}

fn secs(t: i64) -> String {
    format!("{}.{:03}", t.div_euclid(1000), t.rem_euclid(1000))
}

fn get_query(addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> Response {
    let qs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_component(v)))
        .collect();
    let url = format!("{path}?{}", qs.join("&"));
    http::get(addr, &url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn post_form(addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> Response {
    let body: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_component(v)))
        .collect();
    http::post(
        addr,
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.join("&").as_bytes(),
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn success(r: &Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(r);
    assert_eq!(v["status"], "success", "{v}");
    v
}

fn applied_index(r: &Response) -> u64 {
    r.header("x-argus-applied-index")
        .unwrap_or_else(|| panic!("no applied-index header: {:?}", r.headers))
        .parse()
        .expect("a number")
}

/// `[t, "v"]` as (ms, value).
fn point(p: &Value) -> (i64, f64) {
    let t = (p[0].as_f64().expect("time") * 1000.0).round() as i64;
    let v = match p[1].as_str().expect("value string") {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().expect("a float"),
    };
    (t, v)
}

fn matrix_points(v: &Value, i: usize) -> Vec<(i64, f64)> {
    v["data"]["result"][i]["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(point)
        .collect()
}

#[test]
fn queries_answer_like_prometheus_over_head_and_store() {
    let dir = tempfile::tempdir().unwrap();
    let argus = Argus::start(&dir.path().join("data"), &[]);
    let addr = argus.addr;
    let data = Data::new();
    let r = argus.write(&data.request());
    assert_eq!(r.status, 204, "write: {}", r.text());

    // Every pushed sample comes back exactly once, across the store and the head.
    // Polled: the replica hands sealed chunks to the store just after apply, and a read
    // in between could miss one (see query::source); once there they stay.
    let (start, end) = (data.t(0) + OFF_GRID_MS, data.t(N - 1) + OFF_GRID_MS);
    let want: Vec<(i64, f64)> = (0..N)
        .map(|i| (data.t(i) + OFF_GRID_MS, 4.0 * i as f64))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let full = loop {
        let r = get_query(
            addr,
            "/api/v1/query_range",
            &[
                ("query", "sum(http_requests_total)"),
                ("start", &secs(start)),
                ("end", &secs(end)),
                ("step", "15s"),
            ],
        );
        let v = success(&r);
        if matrix_points(&v, 0) == want || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(full["data"]["resultType"], "matrix");
    assert_eq!(full["data"]["result"][0]["metric"], serde_json::json!({}));
    assert_eq!(matrix_points(&full, 0), want, "every sample once, in order");

    // sum by (job) (rate(...[5m])) at an instant in the stored part and one in the head.
    for i in [150, 390] {
        let t = data.t(i) + OFF_GRID_MS;
        let r = get_query(
            addr,
            "/api/v1/query",
            &[
                ("query", "sum by (job) (rate(http_requests_total[5m]))"),
                ("time", &secs(t)),
            ],
        );
        let v = success(&r);
        assert!(applied_index(&r) >= 1);
        assert_eq!(v["data"]["resultType"], "vector");
        let result = v["data"]["result"].as_array().unwrap();
        assert_eq!(result.len(), 1, "{v}");
        assert_eq!(result[0]["metric"], serde_json::json!({"job": "api"}));
        let (at, got) = point(&result[0]["value"]);
        assert_eq!(at, t);
        let want: f64 = ["h1", "h2"]
            .iter()
            .map(|inst| reference_rate(&data.samples(inst), t, 300_000).unwrap())
            .sum();
        assert!(close(got, want), "rate at sample {i}: {got} vs {want}");
    }

    // A range query of rate() over both halves, by POST form.
    let (rs, re) = (data.t(40) + OFF_GRID_MS, data.t(390) + OFF_GRID_MS);
    let r = post_form(
        addr,
        "/api/v1/query_range",
        &[
            ("query", "rate(http_requests_total{instance=\"h2\"}[2m])"),
            ("start", &secs(rs)),
            ("end", &secs(re)),
            ("step", "60"),
        ],
    );
    let v = success(&r);
    assert_eq!(
        v["data"]["result"][0]["metric"],
        serde_json::json!({"instance": "h2", "job": "api"}),
        "rate drops the metric name"
    );
    let got = matrix_points(&v, 0);
    let h2 = data.samples("h2");
    let expected: Vec<(i64, f64)> = (0..)
        .map(|k| rs + k * 60_000)
        .take_while(|t| *t <= re)
        .filter_map(|t| reference_rate(&h2, t, 120_000).map(|r| (t, r)))
        .collect();
    assert_eq!(got.len(), expected.len(), "{v}");
    for (g, w) in got.iter().zip(&expected) {
        assert_eq!(g.0, w.0);
        assert!(close(g.1, w.1), "at {}: {} vs {}", g.0, g.1, w.1);
    }

    // offset reaches an hour back, into the stored chunks.
    let t = data.t(N - 1) + OFF_GRID_MS;
    let r = get_query(
        addr,
        "/api/v1/query",
        &[
            ("query", "http_requests_total{instance=\"h2\"} offset 1h"),
            ("time", &secs(t)),
        ],
    );
    let v = success(&r);
    let result = &v["data"]["result"][0];
    assert_eq!(
        result["metric"],
        serde_json::json!({"__name__": "http_requests_total", "instance": "h2", "job": "api"})
    );
    assert_eq!(
        point(&result["value"]),
        (t, Data::value("h2", N - 1 - 240)),
        "the sample an hour before"
    );

    // A scalar, with stats.
    let r = get_query(
        addr,
        "/api/v1/query",
        &[("query", "1 + 1"), ("time", "1000.5"), ("stats", "all")],
    );
    let v = success(&r);
    assert_eq!(v["data"]["resultType"], "scalar");
    assert_eq!(v["data"]["result"], serde_json::json!([1000.5, "2"]));
    assert!(
        v["data"]["stats"]["timings"]["evalTotalTime"].is_number(),
        "{v}"
    );
    assert!(applied_index(&r) >= 1, "a literal still names the index");
    let r = get_query(
        addr,
        "/api/v1/query",
        &[
            ("query", "count(http_requests_total)"),
            ("time", &secs(t)),
            ("stats", "all"),
        ],
    );
    let v = success(&r);
    assert_eq!(point(&v["data"]["result"][0]["value"]).1, 2.0);
    assert!(
        v["data"]["stats"]["samples"]["totalQueryableSamples"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "{v}"
    );

    // The applied index moves with writes.
    let before = applied_index(&get_query(addr, "/api/v1/query", &[("query", "up")]));
    let r = argus.write(&WriteRequest {
        timeseries: vec![TimeSeries::new(
            "later_metric",
            &[("job", "api")],
            vec![(now_ms() - 1000, 1.0)],
        )],
        ..Default::default()
    });
    assert_eq!(r.status, 204, "{}", r.text());
    let r = get_query(addr, "/api/v1/query", &[("query", "later_metric")]);
    let v = success(&r);
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 1, "{v}");
    assert!(applied_index(&r) > before, "the write is reflected");

    // Malformed PromQL: 400 bad_data naming the position.
    let r = get_query(addr, "/api/v1/query", &[("query", "sum(rate(x[5m])) +* 3")]);
    assert_eq!(r.status, 400, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["errorType"], "bad_data");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.starts_with("invalid parameter \"query\": 1:19: parse error"),
        "{msg}"
    );
    let r = get_query(addr, "/api/v1/query", &[("query", "up{job=~\"a\"")]);
    assert_eq!(r.status, 400, "{}", r.text());

    // Too many points per series.
    let r = get_query(
        addr,
        "/api/v1/query_range",
        &[
            ("query", "up"),
            ("start", "0"),
            ("end", "11001"),
            ("step", "1"),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        json(&r)["error"],
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
    );
    // A range query over a range vector.
    let r = get_query(
        addr,
        "/api/v1/query_range",
        &[
            ("query", "up[5m]"),
            ("start", "0"),
            ("end", "60"),
            ("step", "15"),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(json(&r)["errorType"], "bad_data");

    // Exemplars: none, after the parameters are checked.
    let r = get_query(
        addr,
        "/api/v1/query_exemplars",
        &[
            ("query", "http_requests_total"),
            ("start", "0"),
            ("end", "100"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"{"status":"success","data":[]}"#);
    let r = get_query(
        addr,
        "/api/v1/query_exemplars",
        &[("query", "up"), ("start", "100"), ("end", "1")],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = get_query(addr, "/api/v1/query_exemplars", &[("query", "up +")]);
    assert_eq!(r.status, 400, "{}", r.text());
}

/// The samples limit, on a node started in-process with a small one (the limit is a
/// serve setting; the binary's default is Prometheus's 50 million).
#[test]
fn a_query_over_the_samples_limit_gets_422() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = ServeConfig::new(
        dir.path().join("data"),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    cfg.query = QueryLimits {
        max_samples: 500,
        ..QueryLimits::default()
    };
    let running = rt.block_on(start(cfg)).expect("start in-process node");
    let addr = running.addr;
    // Wait until the one-voter group has its leader and takes writes.
    let deadline = Instant::now() + common::READY_TIMEOUT;
    while http::get(addr, "/ready").ok().map(|r| r.status) != Some(200) {
        assert!(Instant::now() < deadline, "node never became ready");
        std::thread::sleep(Duration::from_millis(25));
    }
    let data = Data::new();
    let body = encode_body(&data.request()).unwrap();
    let r = http::post(addr, "/api/v1/write", &WRITE_HEADERS, &body).unwrap();
    assert_eq!(r.status, 204, "write: {}", r.text());

    let (t_old, t_new) = (data.t(0), data.t(N - 1));
    // 2 series × 41 samples: within the limit.
    let r = get_query(
        addr,
        "/api/v1/query",
        &[
            ("query", "sum(count_over_time(http_requests_total[10m]))"),
            ("time", &secs(t_new)),
        ],
    );
    let v = success(&r);
    assert_eq!(point(&v["data"]["result"][0]["value"]).1, 80.0);
    // 2 series × 400 samples: over it.
    let r = post_form(
        addr,
        "/api/v1/query_range",
        &[
            ("query", "sum(http_requests_total)"),
            ("start", &secs(t_old)),
            ("end", &secs(t_new)),
            ("step", "1m"),
        ],
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["status"], "error");
    assert_eq!(v["errorType"], "execution");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("500") && msg.contains("samples"), "{msg}");

    rt.block_on(running.shutdown()).expect("shutdown");
}
