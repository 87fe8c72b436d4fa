//! An admitted agent's data session on `argus-data/1` (DESIGN §2, §3.1).
//!
//! Order on the agent's one bidirectional stream: `Hello` first (anything else closes
//! the connection), then `SeriesDefs`, `Batch`, `Heartbeat` and `RenewRequest` in any
//! order. Each batch is proposed as an `AgentBatch` entry and answered once applied:
//! `Ack` (final, with refusals by reason), `Retry` (the node could not take it now) or
//! `NotLeader`. Series definitions are applied before any later batch is proposed, so a
//! batch never reaches the log ahead of the refs it uses.
//!
//! Bounds: one reader task hands over one decoded frame at a time (frames are checked
//! against the size limit before allocation), and no frame is taken while the
//! connection has `in_flight` batches unanswered, so QUIC flow control holds the agent
//! back. The connection closes at the certificate's not-after unless the agent renewed
//! over it (a `RenewOk` moves the deadline to the new certificate's not-after), within a
//! second of the agent's revocation, and on the first protocol error, with the reason
//! logged and counted (`argus_ingest_refused_total{reason="cert_expired"|"revoked"}`).

use super::listener::{Ctx, close_reason, wall_ms};
use crate::cluster::ProposeError;
use crate::fleet::gate::{Admission, FleetGate};
use crate::state::entry::Entry;
use crate::state::machine::Outcome;
use argus_common::model::SeriesDef;
use argus_common::pki::CertInfo;
use argus_common::quic::{close, peer_leaf};
use argus_common::wire::{
    Ack, FrameLimits, Hello, HelloOk, Message, NotLeader, Refused, Retry, WireError, negotiate,
    read_frame, write_frame,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::task::JoinSet;

/// Sets `instance` from the agent record on every definition, whatever the agent sent
/// (DESIGN §5); `job` stays as the agent sends it per collector family.
pub fn stamp_instance(defs: &mut [SeriesDef], instance: &str) {
    for d in defs {
        d.labels.set("instance", instance);
    }
}

/// The answer for a batch whose proposal ended with `result`.
pub fn answer(seq: u64, result: Result<Outcome, ProposeError>) -> Message {
    match result {
        Ok(o) if o.retry => Message::Retry(Retry {
            seq,
            reason: "the batch is ahead of the deduplication window; send earlier batches first"
                .into(),
        }),
        Ok(o) => Message::Ack(Ack {
            seq,
            accepted: o.accepted,
            refused: o.refused.into_iter().collect(),
        }),
        Err(ProposeError::NotLeader { .. }) => Message::NotLeader(NotLeader {
            leaders: Vec::new(),
        }),
        Err(e) => Message::Retry(Retry {
            seq,
            reason: e.to_string(),
        }),
    }
}

/// The instant of wall-clock `not_after_ms` (now if it passed; at most a year ahead,
/// which no certificate outlives and which keeps the addition from overflowing).
fn deadline(not_after_ms: i64) -> tokio::time::Instant {
    const YEAR_MS: u64 = 366 * 86_400_000;
    let left_ms = not_after_ms.saturating_sub(wall_ms()).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_millis(left_ms.min(YEAR_MS))
}

/// Why a session ended, for the log.
enum End {
    /// The agent closed, or the connection died.
    Gone,
    /// We closed it for this reason (already sent to the agent).
    Closed(String),
}

struct Session<G> {
    ctx: Arc<Ctx<G>>,
    conn: quinn::Connection,
    from: SocketAddr,
    adm: Admission,
    hello: Hello,
    send: quinn::SendStream,
    limits: FrameLimits,
}

pub(crate) async fn serve<G: FleetGate>(
    ctx: Arc<Ctx<G>>,
    conn: quinn::Connection,
    from: SocketAddr,
) {
    let Some(leaf) = peer_leaf(&conn) else {
        ctx.counters.refuse("no_certificate");
        tracing::warn!(%from, "data connection without a client certificate closed");
        conn.close(
            close::REFUSED,
            b"argus-data/1 requires a client certificate; enroll first",
        );
        return;
    };
    let adm = match ctx.gate.admit(&leaf, from) {
        Ok(a) => a,
        Err(refusal) => {
            ctx.counters.refuse("not_admitted");
            tracing::warn!(%from, reason = %refusal.reason, "data connection refused");
            conn.close(close::REFUSED, close_reason(&refusal.reason));
            return;
        }
    };
    let first = ctx.cfg.first_message_timeout;
    let (send, recv) = match tokio::time::timeout(first, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return,
        Err(_) => {
            ctx.counters.refuse("no_hello");
            conn.close(close::PROTOCOL, b"no Hello in time");
            return;
        }
    };
    let limits = FrameLimits::new(ctx.cfg.max_frame);
    // One decoded frame at a time: the channel holds one, the reader waits with the
    // next, QUIC flow control holds back the rest.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Message, WireError>>(1);
    let reader = tokio::spawn(async move {
        let mut recv = recv;
        loop {
            let r = read_frame(&mut recv, &limits).await;
            let stop = !matches!(r, Ok(Some(_)));
            let item = match r {
                Ok(Some(m)) => Ok(m),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let hello = match tokio::time::timeout(first, rx.recv()).await {
        Ok(Some(Ok(Message::Hello(h)))) => Some(h),
        Ok(Some(Ok(other))) => {
            protocol_close(
                &ctx,
                &conn,
                from,
                &format!("{} before Hello", other.kind_name()),
            );
            None
        }
        Ok(Some(Err(e))) => {
            protocol_close(&ctx, &conn, from, &e.to_string());
            None
        }
        Ok(None) => None,
        Err(_) => {
            ctx.counters.refuse("no_hello");
            conn.close(close::PROTOCOL, b"no Hello in time");
            None
        }
    };
    let Some(hello) = hello else {
        reader.abort();
        return;
    };
    let mut s = Session {
        ctx,
        conn,
        from,
        adm,
        hello,
        send,
        limits,
    };
    let agent_id = s.adm.agent_id.clone();
    let end = match s.handshake().await {
        Err(end) => end,
        Ok(()) => {
            s.ctx.gate.hello(&agent_id, &s.hello.agent_version);
            let (generation, replaced) = s.ctx.sessions.register(&agent_id, s.conn.clone());
            if replaced {
                s.ctx.counters.sessions_replaced.fetch_add(1, Relaxed);
            }
            if let Ok(mut l) = s.ctx.liveness.lock() {
                l.connected(&agent_id, &s.adm.instance, wall_ms());
            }
            tracing::info!(
                from = %s.from,
                agent_id = %agent_id,
                instance = %s.adm.instance,
                incarnation = format_args!("{:016x}", s.hello.incarnation),
                "agent session started"
            );
            let end = s.run(&mut rx).await;
            s.ctx.sessions.unregister(&agent_id, generation);
            if let Ok(mut l) = s.ctx.liveness.lock() {
                l.disconnected(&agent_id, wall_ms());
            }
            end
        }
    };
    reader.abort();
    match end {
        End::Gone => tracing::info!(from = %s.from, agent_id = %agent_id, "agent session ended"),
        End::Closed(reason) => {
            tracing::info!(from = %s.from, agent_id = %agent_id, reason = %reason, "agent session closed")
        }
    }
}

fn protocol_close<G>(ctx: &Ctx<G>, conn: &quinn::Connection, from: SocketAddr, reason: &str) {
    ctx.counters.refuse("protocol_error");
    tracing::warn!(%from, reason, "agent connection closed: protocol error");
    conn.close(close::PROTOCOL, close_reason(reason));
}

impl<G: FleetGate> Session<G> {
    async fn write(&mut self, msg: &Message) -> Result<(), End> {
        write_frame(&mut self.send, msg, &self.limits)
            .await
            .map_err(|_| End::Gone)
    }

    async fn refuse(&mut self, counter: &'static str, reason: String) -> End {
        self.ctx.counters.refuse(counter);
        tracing::warn!(from = %self.from, agent_id = %self.adm.agent_id, reason = %reason, "agent session refused");
        let _ = self
            .write(&Message::Refused(Refused {
                reason: reason.clone(),
            }))
            .await;
        let _ = self.send.finish();
        // Let the Refused reach the agent before the close overtakes it.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.conn.closed()).await;
        self.conn.close(close::REFUSED, close_reason(&reason));
        End::Closed(reason)
    }

    fn protocol(&self, reason: String) -> End {
        protocol_close(&self.ctx, &self.conn, self.from, &reason);
        End::Closed(reason)
    }

    /// Version, identity, and `HelloOk` with where the incarnation stands.
    async fn handshake(&mut self) -> Result<(), End> {
        let version = match negotiate(self.hello.min_version, self.hello.max_version) {
            Ok(v) => v,
            Err(refused) => return Err(self.refuse("version", refused.reason).await),
        };
        if self.hello.agent_id != self.adm.agent_id {
            let reason = format!(
                "Hello.agent_id {:?} does not match the certificate's agent id {:?}",
                self.hello.agent_id, self.adm.agent_id
            );
            return Err(self.refuse("id_mismatch", reason).await);
        }
        // The read guard must be gone before `refuse` borrows `self` mutably.
        let progress = self
            .ctx
            .node
            .state
            .read()
            .ok()
            .map(|st| st.agent_progress(&self.adm.agent_id, self.hello.incarnation));
        let Some((highest_applied_seq, highest_series_ref)) = progress else {
            return Err(self.refuse("internal", "state unavailable".into()).await);
        };
        self.write(&Message::HelloOk(HelloOk {
            version,
            highest_applied_seq,
            highest_series_ref,
        }))
        .await
    }

    async fn run(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Message, WireError>>,
    ) -> End {
        let limit = self.ctx.cfg.in_flight.max(1);
        let mut inflight: JoinSet<Message> = JoinSet::new();
        let mut not_after = self.adm.cert_not_after_ms;
        let expiry = tokio::time::sleep_until(deadline(not_after));
        tokio::pin!(expiry);
        let mut revoked = self.adm.revoked.clone();
        let mut watching = true;
        if *revoked.borrow_and_update() {
            return self.expire("revoked", "the agent is revoked");
        }
        let conn = self.conn.clone();
        loop {
            if self.adm.cert_not_after_ms != not_after {
                not_after = self.adm.cert_not_after_ms;
                expiry.as_mut().reset(deadline(not_after));
            }
            tokio::select! {
                _ = &mut expiry => {
                    return self.expire(
                        "cert_expired",
                        "the client certificate expired without renewal; the agent reconnects \
                         with a renewed one or enrolls again",
                    );
                }
                changed = revoked.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                    } else if *revoked.borrow_and_update() {
                        return self.expire("revoked", "the agent is revoked");
                    }
                }
                done = inflight.join_next(), if !inflight.is_empty() => {
                    if let Some(Ok(msg)) = done {
                        self.count(&msg);
                        if let Err(end) = self.write(&msg).await {
                            return end;
                        }
                    }
                }
                item = rx.recv(), if inflight.len() < limit => {
                    let msg = match item {
                        None => return End::Gone,
                        Some(Err(e)) => return self.protocol(e.to_string()),
                        Some(Ok(m)) => m,
                    };
                    if let Ok(mut l) = self.ctx.liveness.lock() {
                        l.seen(&self.adm.agent_id, wall_ms());
                    }
                    if let Err(end) = self.handle(msg, &mut inflight).await {
                        return end;
                    }
                }
                _ = conn.closed() => return End::Gone,
            }
        }
    }

    fn expire(&self, counter: &'static str, reason: &str) -> End {
        self.ctx.counters.refuse(counter);
        tracing::info!(from = %self.from, agent_id = %self.adm.agent_id, reason, "closing agent session");
        self.conn.close(close::EXPIRED, close_reason(reason));
        End::Closed(reason.to_string())
    }

    fn count(&self, msg: &Message) {
        let c = &self.ctx.counters;
        match msg {
            Message::Ack(a) => {
                c.batches_acked.fetch_add(1, Relaxed);
                c.samples_accepted.fetch_add(a.accepted, Relaxed);
                for (r, n) in &a.refused {
                    c.refused_samples(r.as_str(), *n);
                }
            }
            Message::Retry(_) => {
                c.batches_retried.fetch_add(1, Relaxed);
            }
            Message::NotLeader(_) => {
                c.batches_not_leader.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }

    async fn handle(&mut self, msg: Message, inflight: &mut JoinSet<Message>) -> Result<(), End> {
        match msg {
            Message::Batch(b) => {
                if b.incarnation != self.hello.incarnation {
                    return Err(self.protocol(format!(
                        "Batch of incarnation {:016x} on a session that said Hello with {:016x}",
                        b.incarnation, self.hello.incarnation
                    )));
                }
                let seq = b.seq;
                let entry = Entry::AgentBatch {
                    agent_id: self.adm.agent_id.clone(),
                    incarnation: b.incarnation,
                    seq,
                    lowest_seq: b.lowest_seq,
                    groups: b.groups,
                };
                match self.ctx.node.proposer.propose(wall_ms(), &entry.encode()) {
                    Ok(receipt) => {
                        inflight.spawn(async move {
                            answer(seq, receipt.outcome().await.map(|a| a.outcome))
                        });
                    }
                    Err(e) => {
                        let msg = answer(seq, Err(e));
                        self.count(&msg);
                        self.write(&msg).await?;
                    }
                }
                Ok(())
            }
            Message::SeriesDefs(mut d) => {
                stamp_instance(&mut d.defs, &self.adm.instance);
                if let Ok(mut l) = self.ctx.liveness.lock() {
                    for def in &d.defs {
                        if let Some(job) = def.labels.get("job") {
                            l.job(&self.adm.agent_id, job);
                        }
                    }
                }
                let entry = Entry::SeriesDefs {
                    agent_id: self.adm.agent_id.clone(),
                    incarnation: self.hello.incarnation,
                    defs: d.defs,
                };
                let result = match self.ctx.node.proposer.propose(wall_ms(), &entry.encode()) {
                    Ok(receipt) => receipt.outcome().await.map(|a| a.outcome),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(_) => Ok(()),
                    Err(ProposeError::NotLeader { .. }) => {
                        let _ = self
                            .write(&Message::NotLeader(NotLeader {
                                leaders: Vec::new(),
                            }))
                            .await;
                        Err(self.expire_with(close::DONE, "not the leader"))
                    }
                    // Later batches would refer to refs the log does not have: the agent
                    // reconnects and sends its definitions again.
                    Err(e) => Err(self.expire_with(
                        close::DONE,
                        &format!("series definitions were not applied ({e}); reconnect"),
                    )),
                }
            }
            Message::Heartbeat(_) => Ok(()),
            Message::RenewRequest(req) => {
                self.ctx.counters.renewals.fetch_add(1, Relaxed);
                let reply = match self
                    .ctx
                    .gate
                    .renew(&self.adm.agent_id, req, self.from)
                    .await
                {
                    Ok(ok) => {
                        // The agent on this connection proved its identity at the
                        // handshake and the fleet has just re-issued it: the connection
                        // lives as long as the new certificate, like a new one would.
                        match CertInfo::from_der(&ok.certificate_der) {
                            Ok(info) => {
                                self.adm.cert_not_after_ms =
                                    self.adm.cert_not_after_ms.max(info.not_after_ms);
                            }
                            Err(e) => tracing::warn!(
                                agent_id = %self.adm.agent_id,
                                "renewed certificate does not parse; the connection keeps \
                                 its deadline: {e}"
                            ),
                        }
                        tracing::info!(
                            agent_id = %self.adm.agent_id,
                            not_after_ms = self.adm.cert_not_after_ms,
                            "certificate renewed"
                        );
                        Message::RenewOk(ok)
                    }
                    Err(refusal) => {
                        self.ctx.counters.refuse("renew_refused");
                        tracing::info!(agent_id = %self.adm.agent_id, reason = %refusal.reason, "renewal refused");
                        Message::Refused(Refused {
                            reason: refusal.reason,
                        })
                    }
                };
                self.write(&reply).await
            }
            Message::CommandResult(r) => {
                tracing::debug!(agent_id = %self.adm.agent_id, id = r.id, ok = r.ok, "command result");
                Ok(())
            }
            other => Err(self.protocol(format!("unexpected {} from an agent", other.kind_name()))),
        }
    }

    fn expire_with(&self, code: quinn::VarInt, reason: &str) -> End {
        tracing::info!(from = %self.from, agent_id = %self.adm.agent_id, reason, "closing agent session");
        self.conn.close(code, close_reason(reason));
        End::Closed(reason.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argus_common::model::{Labels, MetricType};
    use argus_common::wire::RefuseReason;
    use std::collections::BTreeMap;

    #[test]
    fn instance_is_overwritten_and_job_kept() {
        let mut defs = vec![SeriesDef {
            series_ref: 1,
            name: "node_load1".into(),
            labels: Labels::from_pairs([("instance", "spoofed"), ("job", "node")]),
            kind: MetricType::Gauge,
            unit: String::new(),
            help: String::new(),
        }];
        stamp_instance(&mut defs, "web-1");
        assert_eq!(defs[0].labels.get("instance"), Some("web-1"));
        assert_eq!(defs[0].labels.get("job"), Some("node"));
        assert!(defs[0].labels.is_canonical());
    }

    #[test]
    fn outcomes_map_to_answers() {
        let mut refused = BTreeMap::new();
        refused.insert(RefuseReason::OutOfOrder, 2);
        let ok = Outcome {
            applied: true,
            accepted: 5,
            refused,
            ..Outcome::default()
        };
        assert_eq!(
            answer(7, Ok(ok)),
            Message::Ack(Ack {
                seq: 7,
                accepted: 5,
                refused: vec![(RefuseReason::OutOfOrder, 2)]
            })
        );
        let ahead = Outcome {
            retry: true,
            ..Outcome::default()
        };
        assert!(matches!(
            answer(7, Ok(ahead)),
            Message::Retry(Retry { seq: 7, .. })
        ));
        assert!(matches!(
            answer(7, Err(ProposeError::QueueFull { capacity: 1 })),
            Message::Retry(Retry { seq: 7, .. })
        ));
        assert!(matches!(
            answer(7, Err(ProposeError::NotLeader { leader: None })),
            Message::NotLeader(_)
        ));
    }
}
