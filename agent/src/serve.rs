//! `serve-metrics`: the agent as a drop-in for node_exporter's `/metrics`.
//!
//! Collection happens on each scrape, as node_exporter does, so the values are as fresh
//! as the scrape and the agent does no work when nobody asks. Concurrent scrapes wait
//! for one collection at a time rather than multiplying the cost.

use crate::collect::agent::AgentStats;
use crate::collection::{Collectors, tick_at_or_before};
use crate::config::AgentConfig;
use crate::exposition::{Target, render_text};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Collect(#[from] crate::collect::CollectError),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// The content type of the text exposition format Prometheus negotiates.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds the router; separate from [`serve_metrics`] so tests can bind port 0.
pub fn router(cfg: &AgentConfig) -> Result<Router, ServeError> {
    let collectors = Arc::new(Mutex::new(Collectors::from_config(
        cfg,
        Arc::new(AgentStats::default()),
    )?));
    let interval_ms = cfg.agent.interval.0.as_millis() as i64;
    let metrics = move || {
        let collectors = collectors.clone();
        async move {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let mut c = collectors.lock().await;
            let (collection, errors) = c.collect(tick_at_or_before(now, interval_ms)).await;
            drop(c);
            for e in errors {
                tracing::debug!("{e}");
            }
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, TEXT_FORMAT)
                .body(render_text(&collection, Target::Scrape).into())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    };
    Ok(Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/",
            get(|| async {
                Html("<html><head><title>Argus agent</title></head><body><h1>Argus agent</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>")
            }),
        ))
}

pub async fn serve_metrics(cfg: AgentConfig, addr: &str) -> Result<(), ServeError> {
    let app = router(&cfg)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(%addr, "serving metrics at /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(ServeError::Serve)
}
