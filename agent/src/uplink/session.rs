//! One `argus-data/1` connection streaming the spool (DESIGN §3.1).
//!
//! `Hello` with the spool's incarnation; `HelloOk` says where the coordinator stands and
//! the spool moves past it (`resume_after`); then every kept definition, then the kept
//! batches in seq order, at most `in_flight` unanswered, each preceded by the
//! definitions it may use that were not sent yet. `Ack` deletes a batch from the spool,
//! `Retry` sends it again after a pause, `NotLeader` ends the session towards the
//! leader. A heartbeat goes out when nothing else did for a while, and the certificate
//! is renewed over the session at two thirds of its lifetime.

use super::enroll::{client_endpoint, closed_reason, resolve};
use super::identity::{Identity, renew_at_ms};
use super::{SessionEnd, Uplink, UplinkError};
use crate::collect::agent::UplinkState;
use argus_common::model::SeriesRef;
use argus_common::pki::JoinAddr;
use argus_common::quic::{close, data_client_config};
use argus_common::wire::{
    Batch, FrameLimits, Heartbeat, Hello, MAX_SERIES_DEFS, MIN_PROTOCOL_VERSION, Message,
    PROTOCOL_VERSION, RenewRequest, SeriesDefs, WireError, check_version, encode_frame_checked,
    read_frame, write_frame,
};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a batch answered with `Retry` waits before it is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long a refused renewal waits before it is asked again.
const RENEW_RETRY: Duration = Duration::from_secs(30);
/// Time for the handshake and `HelloOk`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Definitions one `SeriesDefs` message carries at most, in (estimated) bytes: a
/// quarter of the default frame limit, so many long label sets never make a message
/// the coordinator refuses (which would end every session at the same point).
const DEFS_MESSAGE_BYTES: usize = 1 << 20;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn instant_at(wall_ms: i64) -> Instant {
    let left = wall_ms.saturating_sub(now_ms()).max(0) as u64;
    Instant::now() + Duration::from_millis(left)
}

struct Link {
    send: quinn::SendStream,
    limits: FrameLimits,
    last_sent: Instant,
}

impl Link {
    /// Sends a frame made by [`encode_frame_checked`].
    async fn send_frame(&mut self, frame: &[u8], kind: &str) -> Result<(), SessionEnd> {
        use tokio::io::AsyncWriteExt;
        self.last_sent = Instant::now();
        let r = async {
            self.send.write_all(frame).await?;
            self.send.flush().await
        };
        r.await
            .map_err(|e| SessionEnd::Lost(format!("sending {kind}: {e}")))
    }

    async fn send(&mut self, msg: &Message) -> Result<(), SessionEnd> {
        self.last_sent = Instant::now();
        write_frame(&mut self.send, msg, &self.limits)
            .await
            .map_err(|e| SessionEnd::Lost(format!("sending {}: {e}", msg.kind_name())))
    }
}

/// Runs one session against `addr` until it ends.
pub async fn run(
    up: &mut Uplink,
    addr: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<SessionEnd, UplinkError> {
    let join_addr = JoinAddr::parse(addr).map_err(|e| UplinkError::Connect {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    let (targets, server_name) = resolve(&join_addr).await?;
    let to = *targets.first().ok_or_else(|| UplinkError::Connect {
        addr: addr.to_string(),
        reason: "name resolves to no address".into(),
    })?;
    let connect_err = |reason: String| UplinkError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let cfg = data_client_config(
        up.identity.cert(),
        up.identity.key()?,
        &up.identity.ca(),
        up.settings.in_flight,
    )?;
    let endpoint = client_endpoint(&to)?;
    let connecting = endpoint
        .connect_with(cfg, to, &server_name)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = match tokio::time::timeout(HELLO_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(connect_err(super::enroll::handshake_reason(&e, None))),
        Err(_) => return Err(connect_err("no handshake in time".into())),
    };
    let result = stream(up, addr, &conn, stop).await;
    let reason: &[u8] = match &result {
        Ok(SessionEnd::Stopped) => b"agent stopping",
        _ => b"",
    };
    conn.close(close::DONE, reason);
    // Bounded: lets the close reach the coordinator.
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
    result
}

/// The end of a session whose connection the coordinator closed: a refusal carries
/// its reason and is reported as one.
fn closed(addr: &str, conn: &quinn::Connection) -> UplinkError {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code != close::DONE && c.error_code != close::REPLACED =>
        {
            UplinkError::Refused {
                addr: addr.to_string(),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            }
        }
        Some(e) => UplinkError::Connect {
            addr: addr.to_string(),
            reason: closed_reason(&e),
        },
        None => UplinkError::Connect {
            addr: addr.to_string(),
            reason: "the stream ended".into(),
        },
    }
}

async fn stream(
    up: &mut Uplink,
    addr: &str,
    conn: &quinn::Connection,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<SessionEnd, UplinkError> {
    let (send, recv) = conn.open_bi().await.map_err(|e| UplinkError::Connect {
        addr: addr.to_string(),
        reason: closed_reason(&e),
    })?;
    let limits = FrameLimits::default();
    let mut link = Link {
        send,
        limits,
        last_sent: Instant::now(),
    };
    let incarnation = lock(up)?.incarnation();
    let hello = Message::Hello(Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        agent_id: up.identity.agent_id.clone(),
        incarnation,
        host_name: up.settings.host_name.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: Vec::new(),
    });
    if let Err(end) = link.send(&hello).await {
        return Ok(end);
    }
    // The reader hands frames over a channel so a select! never drops half a frame.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Message, WireError>>(64);
    let reader = tokio::spawn(async move {
        let mut recv = recv;
        loop {
            let r = read_frame(&mut recv, &limits).await;
            let item = match r {
                Ok(Some(m)) => Ok(m),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let last = item.is_err();
            if tx.send(item).await.is_err() || last {
                break;
            }
        }
    });
    let result = async {
        let first = match tokio::time::timeout(HELLO_TIMEOUT, rx.recv()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(UplinkError::Protocol(e.to_string())),
            Ok(None) => {
                // Give the close frame a moment to arrive so its reason can be shown.
                let _ = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
                return Err(closed(addr, conn));
            }
            Err(_) => return Err(UplinkError::Protocol("no HelloOk in time".into())),
        };
        let ok = match first {
            Message::HelloOk(ok) => ok,
            Message::Refused(r) => {
                return Err(UplinkError::Refused {
                    addr: addr.to_string(),
                    reason: r.reason,
                });
            }
            Message::Redirect(r) => return Ok(SessionEnd::Redirect(r.leaders)),
            Message::NotLeader(n) => return Ok(SessionEnd::Redirect(n.leaders)),
            other => {
                return Err(UplinkError::Protocol(format!(
                    "expected HelloOk, got {}",
                    other.kind_name()
                )));
            }
        };
        check_version(ok.version).map_err(|e| UplinkError::Protocol(e.to_string()))?;
        let resumed = lock(up)?.resume_after(ok.highest_applied_seq, ok.highest_series_ref)?;
        if let Some(new) = resumed.new_incarnation {
            tracing::warn!(
                new = format_args!("{new:016x}"),
                "spool took a new incarnation; saying Hello again"
            );
            return Ok(SessionEnd::NewIncarnation);
        }
        up.stats.set_uplink(UplinkState::Connected);
        tracing::info!(
            coordinator = %addr,
            agent_id = %up.identity.agent_id,
            highest_applied_seq = ?ok.highest_applied_seq,
            "uplink connected"
        );
        pump(up, addr, conn, &mut link, &mut rx, stop, incarnation).await
    }
    .await;
    reader.abort();
    result
}

fn lock(up: &Uplink) -> Result<std::sync::MutexGuard<'_, crate::spool::Spool>, UplinkError> {
    up.spool
        .lock()
        .map_err(|_| UplinkError::Protocol("spool lock poisoned".into()))
}

/// An upper estimate of a definition's encoded size: its strings plus a length
/// prefix (at most 10 bytes as varints) for each, and the ref and kind.
fn def_size(def: &argus_common::model::SeriesDef) -> usize {
    let labels: usize = def.labels.iter().map(|(k, v)| k.len() + v.len() + 20).sum();
    def.name.len() + def.unit.len() + def.help.len() + labels + 64
}

/// Definitions with ref >= `from`, in messages of at most [`MAX_SERIES_DEFS`] and about
/// [`DEFS_MESSAGE_BYTES`].
fn defs_messages(
    up: &Uplink,
    from: SeriesRef,
) -> Result<(Vec<Message>, Option<SeriesRef>), UplinkError> {
    let spool = lock(up)?;
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut highest = None;
    let mut bytes = 0usize;
    for def in spool.defs_from(from) {
        highest = highest.max(Some(def.series_ref));
        bytes += def_size(def);
        chunk.push(def.clone());
        if chunk.len() == MAX_SERIES_DEFS || bytes >= DEFS_MESSAGE_BYTES {
            out.push(Message::SeriesDefs(SeriesDefs {
                defs: std::mem::take(&mut chunk),
            }));
            bytes = 0;
        }
    }
    if !chunk.is_empty() {
        out.push(Message::SeriesDefs(SeriesDefs { defs: chunk }));
    }
    Ok((out, highest))
}

/// The streaming loop of a session whose `HelloOk` was handled.
async fn pump(
    up: &mut Uplink,
    addr: &str,
    conn: &quinn::Connection,
    link: &mut Link,
    rx: &mut tokio::sync::mpsc::Receiver<Result<Message, WireError>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    incarnation: u64,
) -> Result<SessionEnd, UplinkError> {
    let limit = up.settings.in_flight.max(1);
    // Every kept definition first: the coordinator may have lost none, some or all.
    let (msgs, highest) = defs_messages(up, 0)?;
    for m in &msgs {
        if let Err(end) = link.send(m).await {
            return Ok(end);
        }
    }
    let mut defs_sent_to: Option<SeriesRef> = highest;
    let mut next_from = 0u64;
    let mut inflight: BTreeSet<u64> = BTreeSet::new();
    let mut retry: BTreeSet<u64> = BTreeSet::new();
    let mut retry_at = Instant::now();
    let mut renew_pending = false;
    let not_after = up.identity.not_after_ms().unwrap_or(i64::MAX);
    let mut renew_at = instant_at(renew_at_ms(
        up.identity.issued_at_ms,
        not_after,
        rand::random::<f64>() * 2.0 - 1.0,
    ));
    loop {
        // Fill the window: retried batches first (once their pause is over), then new.
        while inflight.len() < limit {
            let batches = if !retry.is_empty() && Instant::now() >= retry_at {
                let Some(seq) = retry.pop_first() else { break };
                lock(up)?
                    .pending(seq, 1)?
                    .into_iter()
                    .filter(|(s, _)| *s == seq)
                    .collect::<Vec<_>>()
            } else {
                let room = limit - inflight.len();
                lock(up)?.pending(next_from, room)?
            };
            if batches.is_empty() {
                if retry.is_empty() || Instant::now() < retry_at {
                    break;
                }
                continue;
            }
            for (seq, groups) in batches {
                let from = defs_sent_to.map_or(0, |h| h + 1);
                let (msgs, highest) = defs_messages(up, from)?;
                for m in &msgs {
                    if let Err(end) = link.send(m).await {
                        return Ok(end);
                    }
                }
                defs_sent_to = defs_sent_to.max(highest);
                let lowest_seq = lock(up)?.lowest_seq().min(seq);
                let samples: u64 = groups.iter().map(|g| g.points.len() as u64).sum();
                let batch = Message::Batch(Batch {
                    incarnation,
                    seq,
                    lowest_seq,
                    groups,
                });
                next_from = next_from.max(seq + 1);
                let frame = match encode_frame_checked(&batch, &link.limits) {
                    Ok(f) => f,
                    Err(e) => {
                        // The coordinator would refuse it on every connection: sending
                        // it again cannot help, so it leaves the spool, counted. The
                        // runner splits ticks so that this does not happen.
                        tracing::error!(seq, samples, "batch dropped: {e}");
                        up.stats.record_refused("too_large", samples);
                        lock(up)?.ack(seq)?;
                        continue;
                    }
                };
                drop(batch);
                if let Err(end) = link.send_frame(&frame, "Batch").await {
                    return Ok(end);
                }
                inflight.insert(seq);
            }
        }
        let heartbeat_due = link.last_sent + up.settings.heartbeat;
        let retry_wait = !retry.is_empty() && inflight.len() < limit;
        tokio::select! {
            item = rx.recv() => {
                let msg = match item {
                    None => {
                        let _ = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
                        return match closed(addr, conn) {
                            e @ UplinkError::Refused { .. } => Err(e),
                            e => Ok(SessionEnd::Lost(e.to_string())),
                        };
                    }
                    Some(Err(e)) => return Err(UplinkError::Protocol(e.to_string())),
                    Some(Ok(m)) => m,
                };
                match msg {
                    Message::Ack(a) => {
                        inflight.remove(&a.seq);
                        lock(up)?.ack(a.seq)?;
                        for (reason, n) in &a.refused {
                            up.stats.record_refused(reason.as_str(), *n);
                        }
                    }
                    Message::Retry(r) => {
                        tracing::debug!(seq = r.seq, reason = %r.reason, "coordinator asked to retry a batch");
                        if inflight.remove(&r.seq) {
                            retry.insert(r.seq);
                            retry_at = Instant::now() + RETRY_PAUSE;
                        }
                    }
                    Message::NotLeader(n) => return Ok(SessionEnd::Redirect(n.leaders)),
                    Message::Redirect(r) => return Ok(SessionEnd::Redirect(r.leaders)),
                    Message::RenewOk(ok) => {
                        renew_pending = false;
                        let renewed = Identity {
                            cert_der: ok.certificate_der,
                            issued_at_ms: ok.issued_at_ms,
                            ..up.identity.clone()
                        };
                        renewed.store(&up.state_dir)?;
                        let not_after = renewed.not_after_ms().unwrap_or(i64::MAX);
                        up.identity = renewed;
                        renew_at = instant_at(renew_at_ms(
                            up.identity.issued_at_ms,
                            not_after,
                            rand::random::<f64>() * 2.0 - 1.0,
                        ));
                        tracing::info!(not_after_ms = not_after, "certificate renewed and stored");
                    }
                    Message::Refused(r) if renew_pending => {
                        renew_pending = false;
                        renew_at = Instant::now() + RENEW_RETRY;
                        tracing::error!(coordinator = %addr, reason = %r.reason, "certificate renewal refused");
                    }
                    Message::Refused(r) => {
                        return Err(UplinkError::Refused { addr: addr.to_string(), reason: r.reason });
                    }
                    Message::Heartbeat(_) | Message::Command(_) => {}
                    other => {
                        return Err(UplinkError::Protocol(format!(
                            "unexpected {} from the coordinator",
                            other.kind_name()
                        )));
                    }
                }
            }
            _ = up.pushed.notified() => {}
            _ = tokio::time::sleep_until(retry_at.into()), if retry_wait => {}
            _ = tokio::time::sleep_until(heartbeat_due.into()) => {
                let hb = Message::Heartbeat(Heartbeat { time_ms: now_ms() });
                if let Err(end) = link.send(&hb).await {
                    return Ok(end);
                }
            }
            _ = tokio::time::sleep_until(renew_at.into()), if !renew_pending => {
                let csr_der = up.identity.csr_der()?;
                if let Err(end) = link.send(&Message::RenewRequest(RenewRequest { csr_der })).await {
                    return Ok(end);
                }
                renew_pending = true;
            }
            () = super::stopped(stop) => return Ok(SessionEnd::Stopped),
        }
    }
}
