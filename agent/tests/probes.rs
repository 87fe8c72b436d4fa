//! Probes against real servers on 127.0.0.1: success while the server answers,
//! failure once it stops, with blackbox_exporter's metric names.

use argus_agent::collect::Families;
use argus_agent::collect::probes::ProbeCollector;
use argus_agent::config::{HumanDuration, ProbeConfig};
use axum::Router;
use axum::routing::get;
use std::time::Duration;

fn value(f: &Families, name: &str, service: &str) -> Option<f64> {
    f.get(name)?
        .points
        .iter()
        .find(|(l, _)| l.get("service") == Some(service))
        .map(|p| p.1)
}

fn probe(name: &str) -> ProbeConfig {
    ProbeConfig {
        name: name.into(),
        interval: HumanDuration(Duration::from_secs(1)),
        timeout: HumanDuration(Duration::from_secs(2)),
        ..ProbeConfig::default()
    }
}

#[tokio::test]
async fn http_probe_succeeds_then_fails_when_the_server_stops() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/health", get(|| async { "status: ok" }))
        .route(
            "/teapot",
            get(|| async { (axum::http::StatusCode::IM_A_TEAPOT, "no") }),
        );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut cfgs = vec![
        ProbeConfig {
            url: Some(format!("http://{addr}/health")),
            body_contains: Some("ok".into()),
            critical: true,
            ..probe("web")
        },
        ProbeConfig {
            url: Some(format!("http://{addr}/teapot")),
            ..probe("teapot")
        },
        ProbeConfig {
            address: Some(addr.to_string()),
            ..probe("tcp")
        },
        ProbeConfig {
            url: Some(format!("http://{addr}/health")),
            body_contains: Some("definitely-not-there".into()),
            ..probe("body")
        },
    ];
    cfgs[1].expect_status = "200-299".into();
    let mut probes = ProbeCollector::new(&cfgs).unwrap();

    let (mut f, mut errors) = (Families::new(), Vec::new());
    probes.collect(1_000, &mut f, &mut errors).await;
    assert_eq!(value(&f, "probe_success", "web"), Some(1.0));
    assert_eq!(value(&f, "probe_http_status_code", "web"), Some(200.0));
    assert!(value(&f, "probe_duration_seconds", "web").unwrap() > 0.0);
    assert_eq!(value(&f, "probe_success", "teapot"), Some(0.0));
    assert_eq!(value(&f, "probe_http_status_code", "teapot"), Some(418.0));
    assert_eq!(value(&f, "probe_success", "tcp"), Some(1.0));
    assert_eq!(
        value(&f, "probe_http_status_code", "tcp"),
        None,
        "TCP probes have no status"
    );
    assert_eq!(value(&f, "probe_success", "body"), Some(0.0));
    assert_eq!(errors.len(), 2, "{errors:?}");
    let web = probes.records().find(|r| r.name == "web").unwrap();
    assert!(web.critical && web.success);
    assert_eq!(web.up_since_ms, Some(1_000));

    server.abort();
    let _ = server.await;

    let (mut f, mut errors) = (Families::new(), Vec::new());
    probes.collect(2_000, &mut f, &mut errors).await;
    assert_eq!(value(&f, "probe_success", "web"), Some(0.0));
    assert_eq!(value(&f, "probe_http_status_code", "web"), Some(0.0));
    assert_eq!(value(&f, "probe_success", "tcp"), Some(0.0));
    assert!(
        errors.iter().any(|e| e.to_string().contains("probe web")),
        "{errors:?}"
    );
    let web = probes.records().find(|r| r.name == "web").unwrap();
    assert!(!web.success && web.up_since_ms.is_none());
}

#[tokio::test]
async fn a_probe_not_due_holds_its_series_instead_of_resampling() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = ProbeConfig {
        address: Some(addr.to_string()),
        interval: HumanDuration(Duration::from_secs(30)),
        ..probe("db")
    };
    let mut probes = ProbeCollector::new(&[cfg]).unwrap();
    let (mut f, mut e) = (Families::new(), Vec::new());
    probes.collect(0, &mut f, &mut e).await;
    assert_eq!(value(&f, "probe_success", "db"), Some(1.0));
    let (mut f, mut e) = (Families::new(), Vec::new());
    probes.collect(10_000, &mut f, &mut e).await;
    assert!(f.get("probe_success").is_none());
    assert!(f.is_held(&argus_common::model::Labels::from_pairs([(
        "service", "db"
    )])));
    probes.collect(30_000, &mut f, &mut e).await;
    assert_eq!(value(&f, "probe_success", "db"), Some(1.0));
    drop(listener);
}

#[tokio::test]
async fn a_probe_that_hangs_times_out() {
    // A listener that accepts and never answers: the HTTP probe must give up at its timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let cfg = ProbeConfig {
        url: Some(format!("http://{addr}/")),
        timeout: HumanDuration(Duration::from_millis(300)),
        ..probe("slow")
    };
    let mut probes = ProbeCollector::new(&[cfg]).unwrap();
    let (mut f, mut e) = (Families::new(), Vec::new());
    probes.collect(0, &mut f, &mut e).await;
    assert_eq!(value(&f, "probe_success", "slow"), Some(0.0));
    assert!(e[0].to_string().contains("timed out"), "{e:?}");
    hold.abort();
}
