//! Sending prepared remote-write 1.0 bodies the way Prometheus does: one request in
//! flight per shard, 5xx and 429 retried, anything else counted as a failure.

use crate::http::Conn;
use argus_coordinator::api::remote_write::{
    CONTENT_ENCODING, CONTENT_TYPE, VERSION_1, VERSION_HEADER,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The headers of a remote-write 1.0 request.
pub const REMOTE_WRITE_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", CONTENT_TYPE),
    ("Content-Encoding", CONTENT_ENCODING),
    (VERSION_HEADER, VERSION_1),
];

/// Attempts of one request before the whole run gives up.
const MAX_ATTEMPTS: usize = 50;
/// Pause before a retried request, as Prometheus's minimum backoff.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What one sender did.
#[derive(Debug, Default, Clone)]
pub struct ShardOutcome {
    /// Samples in requests answered 2xx.
    pub ok: usize,
    /// Requests answered with a 4xx other than 429, or given up on.
    pub failures: usize,
    pub first_failure: Option<String>,
    pub retries: usize,
    /// When the last 2xx arrived.
    pub last_ok: Option<Instant>,
}

/// Sends `requests` (`(body, samples)`) in order over one keep-alive connection to
/// `127.0.0.1:port`. A request failing [`MAX_ATTEMPTS`] times sets `give_up`, which
/// stops every sender sharing it; `before` runs before each request (pacing).
pub fn send_shard<'a>(
    port: u16,
    requests: impl IntoIterator<Item = (&'a [u8], usize)>,
    give_up: &AtomicBool,
    mut before: impl FnMut(usize),
) -> ShardOutcome {
    let mut conn = Conn::new(port);
    let mut out = ShardOutcome::default();
    for (i, (body, samples)) in requests.into_iter().enumerate() {
        before(i);
        let mut attempts = 0;
        loop {
            if give_up.load(Ordering::Relaxed) {
                return out;
            }
            match conn.request("POST", "/api/v1/write", &REMOTE_WRITE_HEADERS, body) {
                Ok((status, _)) if (200..300).contains(&status) => {
                    out.ok += samples;
                    out.last_ok = Some(Instant::now());
                    break;
                }
                Ok((status, body)) if status != 429 && status < 500 => {
                    out.failures += 1;
                    out.first_failure.get_or_insert_with(|| {
                        format!("{status}: {}", String::from_utf8_lossy(&body))
                    });
                    break;
                }
                other => {
                    attempts += 1;
                    out.retries += 1;
                    if attempts > MAX_ATTEMPTS {
                        give_up.store(true, Ordering::Relaxed);
                        out.first_failure
                            .get_or_insert_with(|| format!("giving up: {other:?}"));
                        out.failures += 1;
                        break;
                    }
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }
    out
}
