//! Service health probes (HTTP and TCP), named as blackbox_exporter names them.
//!
//! Each probe keeps its own interval on the agent's tick grid. A probe that is not due
//! this tick emits nothing and holds its series, so a 30 s probe on a 1 s agent is
//! neither re-sampled every second nor marked stale in between.

use super::{CollectError, Families};
use crate::config::{ProbeConfig, ProbeTarget, parse_status_range};
use futures_util::future::join_all;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The latest outcome of one probe, kept for the services API (which also needs
/// `critical`, deliberately not a label).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRecord {
    pub name: String,
    pub critical: bool,
    pub success: bool,
    pub duration: Duration,
    pub status_code: Option<u16>,
    /// The tick (ms) of the last check.
    pub checked_at_ms: i64,
    /// The tick (ms) since which the probe has been up, if it is.
    pub up_since_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug)]
struct Probe {
    cfg: ProbeConfig,
    target: ProbeTarget,
    status: (u16, u16),
    last_tick: Option<i64>,
    record: Option<ProbeRecord>,
}

struct Outcome {
    success: bool,
    duration: Duration,
    status_code: Option<u16>,
    error: Option<String>,
}

pub struct ProbeCollector {
    probes: Vec<Probe>,
    http: Option<reqwest::Client>,
}

impl ProbeCollector {
    /// Builds the probes that validated; config validation already dropped the rest.
    pub fn new(configs: &[ProbeConfig]) -> Result<Self, CollectError> {
        let probes: Vec<Probe> = configs
            .iter()
            .filter_map(|cfg| {
                let target = cfg.target().ok()?;
                let status = parse_status_range(&cfg.expect_status).ok()?;
                Some(Probe {
                    cfg: cfg.clone(),
                    target,
                    status,
                    last_tick: None,
                    record: None,
                })
            })
            .collect();
        // The HTTP client (and its TLS roots) costs memory; build it only when needed.
        let http = if probes
            .iter()
            .any(|p| matches!(p.target, ProbeTarget::Http(_)))
        {
            crate::tls::install_crypto_provider();
            let client = reqwest::Client::builder()
                .user_agent(concat!("argus-agent/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|e| CollectError::Probe {
                    probe: "*".into(),
                    reason: format!("cannot build HTTP client: {e}"),
                })?;
            Some(client)
        } else {
            None
        };
        Ok(ProbeCollector { probes, http })
    }

    pub fn records(&self) -> impl Iterator<Item = &ProbeRecord> {
        self.probes.iter().filter_map(|p| p.record.as_ref())
    }

    /// Runs the probes due at `tick_ms` concurrently and emits their results.
    pub async fn collect(
        &mut self,
        tick_ms: i64,
        out: &mut Families,
        errors: &mut Vec<CollectError>,
    ) {
        let http = self.http.clone();
        let due: Vec<usize> = (0..self.probes.len())
            .filter(|&i| {
                let p = &self.probes[i];
                p.last_tick
                    .is_none_or(|last| tick_ms - last >= p.cfg.interval.0.as_millis() as i64)
            })
            .collect();
        let runs = due.iter().map(|&i| {
            let p = &self.probes[i];
            run_with_retries(http.as_ref(), &p.target, p.status, &p.cfg)
        });
        let outcomes = join_all(runs).await;
        for (i, outcome) in due.iter().copied().zip(outcomes) {
            let p = &mut self.probes[i];
            p.last_tick = Some(tick_ms);
            if let Some(e) = &outcome.error {
                errors.push(CollectError::Probe {
                    probe: p.cfg.name.clone(),
                    reason: e.clone(),
                });
            }
            let up_since_ms = match (&p.record, outcome.success) {
                (_, false) => None,
                (Some(r), true) if r.success => r.up_since_ms,
                _ => Some(tick_ms),
            };
            p.record = Some(ProbeRecord {
                name: p.cfg.name.clone(),
                critical: p.cfg.critical,
                success: outcome.success,
                duration: outcome.duration,
                status_code: outcome.status_code,
                checked_at_ms: tick_ms,
                up_since_ms,
                error: outcome.error,
            });
        }
        for (i, p) in self.probes.iter().enumerate() {
            let Some(r) = &p.record else { continue };
            if !due.contains(&i) {
                out.hold("service", &p.cfg.name);
                continue;
            }
            let l = [("service", p.cfg.name.as_str())];
            out.gauge(
                "probe_success",
                "Whether the probe succeeded (1) or failed (0).",
                &l,
                if r.success { 1.0 } else { 0.0 },
            );
            out.gauge(
                "probe_duration_seconds",
                "How long the probe took to complete, in seconds.",
                &l,
                r.duration.as_secs_f64(),
            );
            if matches!(p.target, ProbeTarget::Http(_)) {
                out.gauge(
                    "probe_http_status_code",
                    "HTTP status code of the response, 0 when none was received.",
                    &l,
                    f64::from(r.status_code.unwrap_or(0)),
                );
            }
        }
    }
}

async fn run_with_retries(
    http: Option<&reqwest::Client>,
    target: &ProbeTarget,
    status: (u16, u16),
    cfg: &ProbeConfig,
) -> Outcome {
    let mut attempt = 0;
    loop {
        let o = run_once(http, target, status, cfg).await;
        if o.success || attempt >= cfg.retries {
            return o;
        }
        attempt += 1;
    }
}

async fn run_once(
    http: Option<&reqwest::Client>,
    target: &ProbeTarget,
    status: (u16, u16),
    cfg: &ProbeConfig,
) -> Outcome {
    let start = Instant::now();
    let timeout = cfg.timeout.0;
    let fail = |error: String, status_code: Option<u16>| Outcome {
        success: false,
        duration: start.elapsed(),
        status_code,
        error: Some(error),
    };
    match target {
        ProbeTarget::Tcp { host, port } => {
            match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), *port))).await {
                Ok(Ok(_)) => Outcome {
                    success: true,
                    duration: start.elapsed(),
                    status_code: None,
                    error: None,
                },
                Ok(Err(e)) => fail(format!("connect {host}:{port}: {e}"), None),
                Err(_) => fail(
                    format!("connect {host}:{port}: timed out after {timeout:?}"),
                    None,
                ),
            }
        }
        ProbeTarget::Http(url) => {
            let Some(client) = http else {
                return fail("no HTTP client".into(), None);
            };
            let request = async {
                let resp = client.get(url.clone()).send().await?;
                let code = resp.status().as_u16();
                let body = match &cfg.body_contains {
                    Some(_) => Some(read_body_bounded(resp).await?),
                    None => None,
                };
                Ok::<_, reqwest::Error>((code, body))
            };
            match tokio::time::timeout(timeout, request).await {
                Err(_) => fail(format!("GET {url}: timed out after {timeout:?}"), None),
                Ok(Err(e)) => fail(format!("GET {url}: {}", error_chain(&e)), None),
                Ok(Ok((code, body))) => {
                    if code < status.0 || code > status.1 {
                        return fail(
                            format!("GET {url}: status {code} outside {}-{}", status.0, status.1),
                            Some(code),
                        );
                    }
                    if let (Some(needle), Some(body)) = (&cfg.body_contains, body)
                        && !body.contains(needle.as_str())
                    {
                        return fail(
                            format!("GET {url}: body does not contain {needle:?}"),
                            Some(code),
                        );
                    }
                    Outcome {
                        success: true,
                        duration: start.elapsed(),
                        status_code: Some(code),
                        error: None,
                    }
                }
            }
        }
    }
}

/// Reads at most 1 MiB of the body: a health endpoint that streams forever must not
/// grow the agent.
async fn read_body_bounded(mut resp: reqwest::Response) -> Result<String, reqwest::Error> {
    const MAX: usize = 1 << 20;
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
