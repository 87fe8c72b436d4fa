//! `argus-enroll/1`: a connection without a client certificate may send exactly one
//! `EnrollRequest` and read the answer. Attempts are rate-limited per source address
//! before anything is read, so a flood cannot become a flood of token checks.

use super::listener::{Ctx, wall_ms};
use crate::fleet::gate::FleetGate;
use argus_common::quic::close;
use argus_common::wire::{FrameLimits, Message, Refused, read_frame, write_frame};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Largest enrollment frame: a token, a host name and a CSR fit in a few KiB.
pub const ENROLL_MAX_FRAME: usize = 64 * 1024;

/// How long the answer is given to reach the agent before the connection is closed.
const LINGER: Duration = Duration::from_secs(2);

pub(crate) async fn serve<G: FleetGate>(
    ctx: Arc<Ctx<G>>,
    conn: quinn::Connection,
    from: SocketAddr,
) {
    let allowed = match ctx.limiter.lock() {
        Ok(mut l) => {
            let ok = l.allow(from.ip(), wall_ms());
            ctx.counters
                .enroll_sources_evicted
                .store(l.evicted, Relaxed);
            ok
        }
        Err(_) => false,
    };
    if !allowed {
        ctx.counters.enrolls_rate_limited.fetch_add(1, Relaxed);
        tracing::debug!(%from, "enrollment rate-limited");
        conn.close(
            close::RATE_LIMITED,
            b"too many enrollment attempts from this address; try again in a minute",
        );
        return;
    }
    let first = ctx.cfg.first_message_timeout;
    let (mut send, mut recv) = match tokio::time::timeout(first, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(%from, "enrollment connection ended before a stream: {e}");
            return;
        }
        Err(_) => {
            ctx.counters.refuse("enroll_timeout");
            conn.close(close::PROTOCOL, b"no enrollment request in time");
            return;
        }
    };
    let limits = FrameLimits::new(ENROLL_MAX_FRAME);
    let req = match tokio::time::timeout(first, read_frame(&mut recv, &limits)).await {
        Ok(Ok(Some(Message::EnrollRequest(req)))) => req,
        Ok(Ok(Some(other))) => {
            let reason = format!(
                "only EnrollRequest is allowed without a client certificate, got {}",
                other.kind_name()
            );
            return protocol_error(&ctx, &conn, from, "enroll_protocol", &reason);
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            return protocol_error(&ctx, &conn, from, "enroll_protocol", &e.to_string());
        }
        Err(_) => {
            ctx.counters.refuse("enroll_timeout");
            conn.close(close::PROTOCOL, b"no enrollment request in time");
            return;
        }
    };
    let host = req.host_name.clone();
    ctx.counters.enrolls.fetch_add(1, Relaxed);
    let reply = match ctx.gate.enroll(req, from).await {
        Ok(ok) => {
            tracing::info!(%from, host = %host, agent_id = %ok.agent_id, "agent enrolled");
            Message::EnrollOk(ok)
        }
        Err(refusal) => {
            ctx.counters.refuse("enroll_refused");
            tracing::info!(%from, host = %host, reason = %refusal.reason, "enrollment refused");
            Message::Refused(Refused {
                reason: refusal.reason,
            })
        }
    };
    if let Err(e) = write_frame(&mut send, &reply, &FrameLimits::default()).await {
        tracing::debug!(%from, "enrollment answer not sent: {e}");
        return;
    }
    let _ = send.finish();
    // The agent closes once it has read the answer; give it a moment, then close.
    let _ = tokio::time::timeout(LINGER, conn.closed()).await;
    conn.close(close::DONE, b"");
}

fn protocol_error<G: FleetGate>(
    ctx: &Ctx<G>,
    conn: &quinn::Connection,
    from: SocketAddr,
    counter: &'static str,
    reason: &str,
) {
    ctx.counters.refuse(counter);
    tracing::warn!(%from, reason, "enrollment connection closed: protocol error");
    conn.close(close::PROTOCOL, super::listener::close_reason(reason));
}
