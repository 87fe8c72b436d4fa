//! `serve-metrics` as a Prometheus scrapes it: the text format's content type, no
//! `instance`, `job` or timestamps, and fresh values on every scrape.

use argus_agent::config::AgentConfig;
use argus_agent::serve::{TEXT_FORMAT, router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn scrape_looks_like_node_exporter() {
    let mut cfg = AgentConfig::default();
    cfg.containers.enabled = false;
    let app = router(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let first = get(addr, "/metrics").await;
    let (head, body) = first.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-type: {TEXT_FORMAT}")),
        "{head}"
    );
    assert!(body.contains("# TYPE node_cpu_seconds_total counter"));
    assert!(!body.contains("instance=") && !body.contains("job="));
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        // name{labels} value — no third field, so the scraper applies its own time.
        let after_labels = line.rsplit_once('}').map_or(line, |(_, v)| v);
        assert_eq!(
            after_labels.split_whitespace().count(),
            1 + usize::from(!line.contains('}')),
            "{line}"
        );
    }
    let collections = |b: &str| -> f64 {
        b.lines()
            .find_map(|l| l.strip_prefix("argus_agent_collections_total "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let second = get(addr, "/metrics").await;
    assert_eq!(
        collections(&second),
        collections(body) + 1.0,
        "each scrape collects afresh"
    );
    assert!(get(addr, "/").await.contains("/metrics"));
    server.abort();
}
