//! The product documents' REST endpoints against the real binary (issue 5 item 6):
//! `GET /api/services` and `GET /api/metrics`, fed by remote write with the series the
//! agents send, their shapes and values, and bad parameters named in JSON errors.

mod common;

use argus_coordinator::api::remote_write::{TimeSeries, WriteRequest};
use common::{Argus, now_ms};
use serde_json::{Value, json};

const S: i64 = 1_000;

fn series(name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries::new(name, labels, samples.to_vec())
}

fn get(a: &Argus, path: &str) -> (u16, Value) {
    let r = a.get(path);
    let v = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.text()));
    (r.status, v)
}

/// The RFC 3339 form the API writes (UTC, milliseconds).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

#[test]
fn services_and_host_metrics_come_from_the_stored_series() {
    let dir = tempfile::tempdir().unwrap();
    let a = Argus::start(&dir.path().join("data"), &[]);
    let t0 = now_ms() - 5 * S;
    let (w1, w2) = (
        [("instance", "web-1"), ("job", "argus-agent")],
        [("instance", "web-2"), ("job", "argus-agent")],
    );
    let with = |base: &[(&'static str, &'static str)], more: &[(&'static str, &'static str)]| {
        let mut l = base.to_vec();
        l.extend_from_slice(more);
        l
    };
    let auth1 = with(&w1, &[("service", "auth"), ("critical", "true")]);
    let auth2 = with(&w2, &[("service", "auth")]);
    let db1 = with(&w1, &[("service", "db")]);
    let req = WriteRequest {
        timeseries: vec![
            series(
                "probe_success",
                &auth1,
                &[
                    (t0 - 90 * S, 1.0),
                    (t0 - 60 * S, 0.0),
                    (t0 - 30 * S, 1.0),
                    (t0, 1.0),
                ],
            ),
            series("probe_duration_seconds", &auth1, &[(t0, 0.045)]),
            series("probe_http_status_code", &auth1, &[(t0, 200.0)]),
            series("probe_success", &auth2, &[(t0 - 30 * S, 1.0), (t0, 0.0)]),
            series("probe_duration_seconds", &auth2, &[(t0, 0.015)]),
            series("probe_success", &db1, &[(t0, 1.0)]),
            series("probe_duration_seconds", &db1, &[(t0, 0.002)]),
            // web-1: 2 cores, 25% busy; web-2: 1 core, 50% busy.
            series(
                "node_cpu_seconds_total",
                &with(&w1, &[("cpu", "0"), ("mode", "idle")]),
                &[(t0 - 60 * S, 100.0), (t0, 130.0)],
            ),
            series(
                "node_cpu_seconds_total",
                &with(&w1, &[("cpu", "0"), ("mode", "user")]),
                &[(t0 - 60 * S, 50.0), (t0, 80.0)],
            ),
            series(
                "node_cpu_seconds_total",
                &with(&w1, &[("cpu", "1"), ("mode", "idle")]),
                &[(t0 - 60 * S, 200.0), (t0, 260.0)],
            ),
            series(
                "node_cpu_seconds_total",
                &with(&w1, &[("cpu", "1"), ("mode", "user")]),
                &[(t0 - 60 * S, 10.0), (t0, 10.0)],
            ),
            series(
                "node_cpu_seconds_total",
                &with(&w2, &[("cpu", "0"), ("mode", "idle")]),
                &[(t0 - 60 * S, 0.0), (t0, 30.0)],
            ),
            series(
                "node_cpu_seconds_total",
                &with(&w2, &[("cpu", "0"), ("mode", "system")]),
                &[(t0 - 60 * S, 0.0), (t0, 30.0)],
            ),
            series("node_memory_MemTotal_bytes", &w1, &[(t0, 8e9)]),
            series("node_memory_MemAvailable_bytes", &w1, &[(t0, 6e9)]),
            series("node_memory_MemTotal_bytes", &w2, &[(t0, 4e9)]),
            series("node_memory_MemAvailable_bytes", &w2, &[(t0, 1e9)]),
            series(
                "node_filesystem_size_bytes",
                &with(
                    &w1,
                    &[
                        ("mountpoint", "/"),
                        ("device", "/dev/sda1"),
                        ("fstype", "ext4"),
                    ],
                ),
                &[(t0, 100e9)],
            ),
            series(
                "node_filesystem_avail_bytes",
                &with(
                    &w1,
                    &[
                        ("mountpoint", "/"),
                        ("device", "/dev/sda1"),
                        ("fstype", "ext4"),
                    ],
                ),
                &[(t0, 40e9)],
            ),
            series(
                "node_network_receive_bytes_total",
                &with(&w1, &[("device", "eth0")]),
                &[(t0 - 60 * S, 0.0), (t0, 60_000.0)],
            ),
            series(
                "node_network_transmit_bytes_total",
                &with(&w1, &[("device", "eth0")]),
                &[(t0 - 60 * S, 1_000.0), (t0, 13_000.0)],
            ),
            series(
                "container_state",
                &with(
                    &w1,
                    &[("name", "api"), ("image", "api:1"), ("state", "running")],
                ),
                &[(t0, 1.0)],
            ),
            series(
                "container_state",
                &with(
                    &w1,
                    &[("name", "api"), ("image", "api:1"), ("state", "exited")],
                ),
                &[(t0, 0.0)],
            ),
            series(
                "container_cpu_usage_seconds_total",
                &with(&w1, &[("name", "api"), ("image", "api:1")]),
                &[(t0 - 60 * S, 10.0), (t0, 40.0)],
            ),
            series(
                "container_memory_usage_bytes",
                &with(&w1, &[("name", "api"), ("image", "api:1")]),
                &[(t0, 1e8)],
            ),
            series(
                "container_spec_memory_limit_bytes",
                &with(&w1, &[("name", "api"), ("image", "api:1")]),
                &[(t0, 5e8)],
            ),
            series(
                "container_restarts",
                &with(&w1, &[("name", "api"), ("image", "api:1")]),
                &[(t0, 2.0)],
            ),
        ],
        ..Default::default()
    };
    let r = a.write(&req);
    assert_eq!(r.status, 204, "{}", r.text());

    // /api/services: keyed by service, rolled up over agents, each agent listed.
    let (status, services) = get(&a, "/api/services");
    assert_eq!(status, 200, "{services}");
    let auth = &services["auth"];
    assert_eq!(auth["status"], "degraded", "{auth}");
    assert_eq!(auth["critical"], true);
    assert_eq!(auth["uptime"], 30);
    assert_eq!(auth["lastCheck"], rfc3339(t0).as_str());
    assert_eq!(auth["responseTime"], 30.0);
    assert_eq!(auth["metrics"]["checks"], 6);
    assert_eq!(auth["metrics"]["healthyAgents"], 1);
    let agents = auth["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    assert_eq!(
        (
            &agents[0]["instance"],
            &agents[0]["status"],
            &agents[0]["httpStatus"]
        ),
        (&json!("web-1"), &json!("healthy"), &json!(200))
    );
    assert_eq!(agents[0]["availability"], 0.75);
    assert_eq!(agents[0]["responseTime"], 45.0);
    assert_eq!(
        (
            &agents[1]["instance"],
            &agents[1]["status"],
            &agents[1]["uptime"]
        ),
        (&json!("web-2"), &json!("unhealthy"), &json!(0))
    );
    let db = &services["db"];
    assert_eq!(
        (&db["status"], &db["critical"]),
        (&json!("healthy"), &json!(false))
    );
    assert_eq!(services.as_object().unwrap().len(), 2);
    let (_, only) = get(&a, "/api/services?service=db");
    assert_eq!(
        only.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["db"]
    );

    // /api/metrics: the documents' services/system/docker, and every host.
    let (status, m) = get(&a, "/api/metrics");
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["services"], services);
    assert_eq!(m["system"]["cpu"], json!({"usage": 33.33, "cores": 3}));
    assert_eq!(m["system"]["memory"], json!({"used": 5e9, "total": 12e9}));
    let h1 = &m["hosts"]["web-1"];
    assert_eq!(h1["cpu"], json!({"usage": 25.0, "cores": 2}));
    assert_eq!(h1["memory"], json!({"used": 2e9, "total": 8e9}));
    assert_eq!(
        h1["disk"],
        json!([{"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4",
                "total": 100e9, "used": 60e9, "available": 40e9}])
    );
    assert_eq!(
        h1["network"],
        json!([{"device": "eth0", "rxBytes": 60000.0, "txBytes": 13000.0,
                "rxBytesPerSecond": 1000.0, "txBytesPerSecond": 200.0}])
    );
    let api = json!({"host": "web-1", "name": "api", "image": "api:1", "state": "running",
                     "cpu": 50.0, "memory": 1e8, "memoryLimit": 5e8, "restarts": 2.0});
    assert_eq!(h1["docker"], json!([api.clone()]));
    assert_eq!(m["docker"], json!([api]));
    assert_eq!(
        m["hosts"]["web-2"]["cpu"],
        json!({"usage": 50.0, "cores": 1})
    );
    let (_, one) = get(&a, "/api/metrics?instance=web-2");
    assert_eq!(one["hosts"].as_object().unwrap().len(), 1);
    assert_eq!(one["system"]["memory"], json!({"used": 3e9, "total": 4e9}));
    assert_eq!(
        one["services"]["auth"]["agents"].as_array().unwrap().len(),
        1
    );

    // Bad parameters: a 400 in the API's JSON envelope naming the parameter.
    for (path, param) in [
        ("/api/services?window=0s", "window"),
        ("/api/services?svc=auth", "svc"),
        ("/api/metrics?window=1y", "window"),
        ("/api/metrics?host=web-1", "host"),
    ] {
        let (status, e) = get(&a, path);
        assert_eq!(status, 400, "{path}: {e}");
        assert_eq!(e["status"], "error");
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains(&format!("\"{param}\"")),
            "{path}: {e}"
        );
    }
}
