//! Simulated agents over real QUIC and mutual TLS, as light as the protocol allows.
//!
//! Each simulated agent enrolls like `argus-agent join` (its own key, a CSR, the
//! coordinator's chain checked against the CA the join string pins), then holds one
//! `argus-data/1` connection with its own certificate: `Hello`, its series definitions,
//! then batches of one point group (every series at one timestamp) as the real agent
//! sends a collection. Unlike the real agent there is no collection, spool or disk: a
//! batch is built from a table of values made before the run and written straight to
//! the stream, so the generator's own CPU goes to QUIC, TLS and framing.
//!
//! - Connections share a few client endpoints (UDP sockets), not one each.
//! - Enrollment is rate-limited per source address by the coordinator (10 a minute by
//!   default), so the agents enroll from distinct loopback addresses (`127.1.x.y`; all
//!   of 127/8 is loopback on Linux), `per_source` from each.
//! - One reader task per agent lives as long as its connection and settles answers:
//!   an `Ack` frees a slot of the agent's in-flight window and records the latency from
//!   writing the batch to reading its `Ack`; a `Retry` resends the batch after a pause.
//! - A phase ([`run_phase`]) writes batches on a schedule (every agent at its own phase
//!   within the interval) or as fast as the in-flight window allows, then waits until
//!   every batch it wrote is answered.

use anyhow::{Context, Result, anyhow, bail};
use argus_common::model::{Labels, MetricType, PointGroup, SeriesDef, SeriesRef};
use argus_common::pki::{JoinString, NodeKey};
use argus_common::quic::{close, data_client_config, enroll_client_config};
use argus_common::wire::{
    Batch, EnrollRequest, FrameLimits, Hello, HelloOk, MAX_SERIES_DEFS, Message, PROTOCOL_VERSION,
    SeriesDefs, encode_frame, read_frame, write_frame,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// Name the coordinator's certificate carries for a loopback listen address.
const SERVER_NAME: &str = "127.0.0.1";
/// How long a batch answered with `Retry` waits before it is sent again (as the agent).
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Time for a handshake and its first answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One agent's values: a row per batch (cycled), `(ref, value)` for each of its series.
pub type ValueTable = Vec<Vec<(SeriesRef, f64)>>;

/// Every agent's [`ValueTable`], shared by the writers.
pub type Values = Arc<Vec<ValueTable>>;

/// Says why a simulated agent connects again (on stdout: this is a bench's report).
fn tracing_free_note(host: &str, e: &anyhow::Error) {
    println!("{host}: connecting again after: {e:#}");
}

/// Wall clock in ms since the epoch.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What enrollment gave one simulated agent.
pub struct Enrolled {
    pub agent_id: String,
    pub host: String,
    key: NodeKey,
    cert_der: Vec<u8>,
    ca_der: Vec<u8>,
}

/// The loopback address agents `[n * per_source, (n + 1) * per_source)` enroll from.
fn source_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8))
}

/// Enrolls one agent per host name through `to` with `join`, at most `per_source` from
/// each source address and `parallel` at a time. Fails on the first refusal, naming it.
pub async fn enroll_all(
    to: SocketAddr,
    join: &JoinString,
    hosts: &[String],
    per_source: usize,
    parallel: usize,
) -> Result<Vec<Enrolled>> {
    let cfg = enroll_client_config(join.ca_pin).map_err(|e| anyhow!("enroll config: {e}"))?;
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut endpoints = Vec::new();
    for (n, group) in hosts.chunks(per_source.max(1)).enumerate() {
        let bind = SocketAddr::new(source_ip(n), 0);
        let ep = quinn::Endpoint::client(bind)
            .with_context(|| format!("binding a client endpoint on {bind}"))?;
        for host in group {
            let (ep, cfg, gate, host) = (ep.clone(), cfg.clone(), gate.clone(), host.clone());
            let (id, secret) = (join.token_id.to_string(), join.secret.expose());
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                enroll_one(&ep, cfg, to, id, secret, host).await
            });
        }
        endpoints.push(ep);
    }
    let mut out = Vec::with_capacity(hosts.len());
    while let Some(r) = tasks.join_next().await {
        out.push(r??);
    }
    for ep in endpoints {
        ep.close(close::DONE, b"");
    }
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}

async fn enroll_one(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    to: SocketAddr,
    token_id: String,
    token_secret: String,
    host: String,
) -> Result<Enrolled> {
    let key = NodeKey::generate().map_err(|e| anyhow!("key: {e}"))?;
    let csr_der = key.csr_der().map_err(|e| anyhow!("CSR: {e}"))?.to_vec();
    let conn = tokio::time::timeout(ANSWER_TIMEOUT, ep.connect_with(cfg, to, SERVER_NAME)?)
        .await
        .context("enrollment handshake timed out")?
        .with_context(|| format!("enrollment handshake of {host}"))?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let req = EnrollRequest {
        token_id,
        token_secret,
        csr_der,
        host_name: host.clone(),
    };
    let limits = FrameLimits::default();
    write_frame(&mut send, &Message::EnrollRequest(req), &limits).await?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut recv, &limits)).await;
    conn.close(close::DONE, b"");
    match answer {
        Ok(Ok(Some(Message::EnrollOk(ok)))) => Ok(Enrolled {
            agent_id: ok.agent_id,
            host,
            key,
            cert_der: ok.certificate_der,
            ca_der: ok.ca_der,
        }),
        Ok(Ok(Some(Message::Refused(r)))) => bail!("enrollment of {host} refused: {}", r.reason),
        other => bail!(
            "enrollment of {host}: no answer ({other:?}; connection: {:?})",
            conn.close_reason()
        ),
    }
}

/// The series one simulated agent defines: `(ref, definition)` with refs from 1.
pub fn series_defs(labels: &[(String, Labels, MetricType)]) -> Vec<SeriesDef> {
    labels
        .iter()
        .enumerate()
        .map(|(i, (name, labels, kind))| SeriesDef {
            series_ref: i as SeriesRef + 1,
            name: name.clone(),
            labels: labels.clone(),
            kind: *kind,
            unit: String::new(),
            help: String::new(),
        })
        .collect()
}

/// A batch written and not yet acknowledged.
struct Pending {
    sent: Instant,
    frame: Arc<Vec<u8>>,
    points: u64,
}

/// What an agent's reader and writers share.
#[derive(Default)]
struct Shared {
    pending: BTreeMap<u64, Pending>,
    /// Per acknowledged batch: (when it was written, latency in seconds).
    acked: Vec<(Instant, f64)>,
    acked_points: u64,
    retries: u64,
    refused_points: u64,
    /// Why the connection ended, once it has.
    ended: Option<String>,
    reconnects: u64,
    /// Batches found applied after a reconnect, whose `Ack` was lost with the connection.
    acked_unmeasured: u64,
}

/// One simulated agent's live data session.
pub struct Agent {
    pub agent_id: String,
    pub host: String,
    pub conn: quinn::Connection,
    send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    window: Arc<Semaphore>,
    shared: Arc<Mutex<Shared>>,
    incarnation: u64,
    next_seq: u64,
    last_ts: i64,
    /// Batches written, across phases: picks the row of the value table.
    written: u64,
    link: Link,
    /// A write failed: reconnect before the next one.
    broken: bool,
}

/// What reconnecting needs.
struct Link {
    ep: quinn::Endpoint,
    to: SocketAddr,
    cfg: quinn::ClientConfig,
    hello: Hello,
    defs: Arc<Vec<SeriesDef>>,
    in_flight: usize,
}

/// Handshake with the agent's certificate, `Hello`, `HelloOk`, then `defs`.
async fn open_session(
    ep: &quinn::Endpoint,
    to: SocketAddr,
    cfg: quinn::ClientConfig,
    hello: Hello,
    defs: &[SeriesDef],
) -> Result<(
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    HelloOk,
)> {
    let host = hello.host_name.clone();
    let conn = tokio::time::timeout(ANSWER_TIMEOUT, ep.connect_with(cfg, to, SERVER_NAME)?)
        .await
        .context("data handshake timed out")?
        .with_context(|| format!("data handshake of {host}"))?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let limits = FrameLimits::default();
    write_frame(&mut send, &Message::Hello(hello), &limits).await?;
    let ok = match tokio::time::timeout(ANSWER_TIMEOUT, read_frame(&mut recv, &limits)).await {
        Ok(Ok(Some(Message::HelloOk(ok)))) => ok,
        other => bail!(
            "{host}: expected HelloOk, got {other:?} (connection: {:?})",
            conn.close_reason()
        ),
    };
    for part in defs.chunks(MAX_SERIES_DEFS) {
        let msg = Message::SeriesDefs(SeriesDefs {
            defs: part.to_vec(),
        });
        write_frame(&mut send, &msg, &limits).await?;
    }
    Ok((conn, send, recv, ok))
}

/// Opens a data session for `e` through `ep`: handshake with its certificate, `Hello`,
/// then `defs`; starts the agent's reader.
pub async fn connect(
    ep: &quinn::Endpoint,
    to: SocketAddr,
    e: &Enrolled,
    defs: &[SeriesDef],
    in_flight: usize,
    incarnation: u64,
) -> Result<Agent> {
    let cfg = data_client_config(
        e.cert_der.clone().into(),
        e.key.private_key_der(),
        &e.ca_der.clone().into(),
        in_flight,
    )
    .map_err(|err| anyhow!("data client config: {err}"))?;
    let hello = Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        agent_id: e.agent_id.clone(),
        incarnation,
        host_name: e.host.clone(),
        agent_version: "bench-loadgen".into(),
        capabilities: Vec::new(),
    };
    let (conn, send, recv, ok) = open_session(ep, to, cfg.clone(), hello.clone(), defs).await?;
    let send = Arc::new(tokio::sync::Mutex::new(send));
    let window = Arc::new(Semaphore::new(in_flight));
    let shared = Arc::new(Mutex::new(Shared::default()));
    tokio::spawn(read_answers(
        recv,
        send.clone(),
        window.clone(),
        shared.clone(),
    ));
    Ok(Agent {
        agent_id: e.agent_id.clone(),
        host: e.host.clone(),
        conn,
        send,
        window,
        shared,
        incarnation,
        next_seq: ok.next_seq(1),
        last_ts: i64::MIN,
        written: 0,
        link: Link {
            ep: ep.clone(),
            to,
            cfg,
            hello,
            defs: Arc::new(defs.to_vec()),
            in_flight,
        },
        broken: false,
    })
}

/// Settles every answer of one connection until it ends.
async fn read_answers(
    mut recv: quinn::RecvStream,
    send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    window: Arc<Semaphore>,
    shared: Arc<Mutex<Shared>>,
) {
    let limits = FrameLimits::default();
    let ended = loop {
        let msg = match read_frame(&mut recv, &limits).await {
            Ok(Some(m)) => m,
            Ok(None) => break "stream finished".to_string(),
            Err(e) => break e.to_string(),
        };
        let now = Instant::now();
        match msg {
            Message::Ack(a) => {
                let Ok(mut s) = shared.lock() else { return };
                if let Some(p) = s.pending.remove(&a.seq) {
                    s.acked
                        .push((p.sent, now.duration_since(p.sent).as_secs_f64()));
                    s.acked_points += a.accepted;
                    s.refused_points += a.refused.iter().map(|r| r.1).sum::<u64>();
                    debug_assert!(a.accepted <= p.points);
                    window.add_permits(1);
                }
            }
            Message::Retry(r) => {
                let frame = match shared.lock() {
                    Ok(mut s) => {
                        s.retries += 1;
                        s.pending.get(&r.seq).map(|p| p.frame.clone())
                    }
                    Err(_) => return,
                };
                if let Some(frame) = frame {
                    let send = send.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        let _ = send.lock().await.write_all(&frame).await;
                    });
                }
            }
            Message::Heartbeat(_) | Message::Command(_) => {}
            other => break format!("unexpected {}", other.kind_name()),
        }
    };
    if let Ok(mut s) = shared.lock() {
        s.ended = Some(ended);
    }
    // A writer waiting for a slot learns that this connection is gone.
    window.close();
}

impl Agent {
    /// Why the connection ended, if it has.
    pub fn ended(&self) -> Option<String> {
        self.shared.lock().ok().and_then(|s| s.ended.clone())
    }

    /// Batches written and not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.shared.lock().map_or(0, |s| s.pending.len())
    }

    /// Whether the connection is gone and the agent must connect again.
    pub fn needs_reconnect(&self) -> bool {
        self.broken || self.ended().is_some()
    }

    /// Connects again as the agent does after losing its connection: `Hello`, drops the
    /// pending batches `HelloOk` says were applied (their `Ack` was lost: counted, no
    /// latency), definitions, then every other pending batch again. Tries up to 10
    /// times, a second apart.
    pub async fn reconnect(&mut self) -> Result<()> {
        self.conn.close(close::DONE, b"reconnecting");
        let mut attempt = 0;
        let (conn, send, recv, ok) = loop {
            let l = &self.link;
            match open_session(&l.ep, l.to, l.cfg.clone(), l.hello.clone(), &l.defs).await {
                Ok(x) => break x,
                Err(e) if attempt < 10 => {
                    attempt += 1;
                    tracing_free_note(&self.host, &e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let (resend, pending) = {
            let mut s = self.shared.lock().map_err(|_| anyhow!("poisoned"))?;
            s.reconnects += 1;
            s.ended = None;
            if let Some(h) = ok.highest_applied_seq {
                let done: Vec<u64> = s.pending.range(..=h).map(|(k, _)| *k).collect();
                for k in done {
                    if let Some(p) = s.pending.remove(&k) {
                        s.acked_points += p.points;
                        s.acked_unmeasured += 1;
                    }
                }
            }
            let resend: Vec<Arc<Vec<u8>>> = s.pending.values().map(|p| p.frame.clone()).collect();
            (resend, s.pending.len())
        };
        self.next_seq = ok.next_seq(self.next_seq);
        let send = Arc::new(tokio::sync::Mutex::new(send));
        for f in resend {
            send.lock().await.write_all(&f).await?;
        }
        let window = Arc::new(Semaphore::new(self.link.in_flight.saturating_sub(pending)));
        tokio::spawn(read_answers(
            recv,
            send.clone(),
            window.clone(),
            self.shared.clone(),
        ));
        self.conn = conn;
        self.send = send;
        self.window = window;
        self.broken = false;
        Ok(())
    }

    /// Writes batch `k` of the agent's value table stamped `ts` (moved past the agent's
    /// last stamp if needed), once a slot of the in-flight window is free. Returns the
    /// stamp used.
    async fn write_batch(&mut self, values: &[Vec<(SeriesRef, f64)>], ts: i64) -> Result<i64> {
        let permit = self.window.acquire().await?;
        permit.forget();
        let ts = ts.max(self.last_ts.saturating_add(1));
        let seq = self.next_seq;
        let row = &values[(self.written % values.len() as u64) as usize];
        let (lowest, frame) = {
            let s = self.shared.lock().map_err(|_| anyhow!("poisoned"))?;
            let lowest = s.pending.keys().next().copied().unwrap_or(seq);
            let frame = encode_frame(&Message::Batch(Batch {
                incarnation: self.incarnation,
                seq,
                lowest_seq: lowest,
                groups: vec![PointGroup {
                    timestamp_ms: ts,
                    points: row.clone(),
                }],
            }));
            (lowest, Arc::new(frame))
        };
        debug_assert!(lowest <= seq);
        if let Ok(mut s) = self.shared.lock() {
            s.pending.insert(
                seq,
                Pending {
                    sent: Instant::now(),
                    frame: frame.clone(),
                    points: row.len() as u64,
                },
            );
        }
        // A failed write leaves the batch pending: the reconnect sends it again.
        if self.send.lock().await.write_all(&frame).await.is_err() {
            self.broken = true;
        }
        self.next_seq += 1;
        self.last_ts = ts;
        self.written += 1;
        Ok(ts)
    }
}

/// How a phase writes batches.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Every agent writes one batch per `interval`, agent `i` of `n` at offset
    /// `i * interval / n` (or all at once when `aligned`), stamped with the tick of the
    /// `interval` grid its slot falls in.
    Every { interval: Duration, aligned: bool },
    /// As fast as each agent's in-flight window allows, stamped with the wall clock.
    Unpaced,
}

/// One batch as written, for replaying the same samples elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub agent: usize,
    /// When it was written, from the phase's start.
    pub at: Duration,
    pub ts: i64,
    /// Row of the agent's value table.
    pub row: usize,
}

/// What a phase measured.
#[derive(Debug, Default, Clone)]
pub struct PhaseStats {
    /// From the first write to the last write.
    pub write_secs: f64,
    /// From the first write to the last answer of the phase's batches.
    pub total_secs: f64,
    pub batches: u64,
    pub points_written: u64,
    pub points_acked: u64,
    pub points_refused: u64,
    pub retries: u64,
    /// Latency of every acknowledged batch of the phase, seconds.
    pub latencies: Vec<f64>,
    /// The same with when the batch was written (seconds from the phase's start).
    pub timed_latencies: Vec<(f64, f64)>,
    /// Writes that happened more than 100 ms after their slot (the window was full).
    pub late_writes: u64,
    /// Connections lost and opened again (as the agent does).
    pub reconnects: u64,
    /// Batches found applied on reconnecting, whose `Ack` was lost (no latency).
    pub acked_unmeasured: u64,
    /// Batches still unanswered when the drain gave up.
    pub unanswered: u64,
    pub log: Vec<Written>,
}

impl PhaseStats {
    /// Points written per second of the writing window.
    pub fn offered_rate(&self) -> f64 {
        self.points_written as f64 / self.write_secs.max(1e-9)
    }

    /// Latencies of the batches written `after` seconds or more into the phase.
    pub fn latencies_after(&self, after: f64) -> Vec<f64> {
        self.timed_latencies
            .iter()
            .filter(|(at, _)| *at >= after)
            .map(|(_, l)| *l)
            .collect()
    }

    /// Points acknowledged per second, first write to last answer.
    pub fn acked_rate(&self) -> f64 {
        self.points_acked as f64 / self.total_secs.max(1e-9)
    }
}

/// [`Agent::write_batch`], connecting again first whenever the connection is gone.
async fn write_or_reconnect(
    agent: &mut Agent,
    table: &[Vec<(SeriesRef, f64)>],
    ts: i64,
) -> Result<i64> {
    for _ in 0..10 {
        if agent.needs_reconnect() {
            agent.reconnect().await?;
        }
        match agent.write_batch(table, ts).await {
            Ok(ts) => return Ok(ts),
            Err(_) if agent.needs_reconnect() => continue,
            Err(e) => return Err(e),
        }
    }
    bail!("{}: the connection kept failing", agent.host)
}

/// Writes batches from every agent for `duration` as `pace` says, then waits up to
/// `drain` for every answer. `values[i]` is agent `i`'s value table, one row per batch
/// (cycled).
pub async fn run_phase(
    agents: Vec<Agent>,
    values: Values,
    pace: Pace,
    duration: Duration,
    drain: Duration,
) -> Result<(Vec<Agent>, PhaseStats)> {
    let n = agents.len().max(1);
    let start = Instant::now();
    let start_wall = wall_ms();
    let deadline = start + duration;
    let marks: Vec<usize> = agents
        .iter()
        .map(|a| a.shared.lock().map_or(0, |s| s.acked.len()))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut agent) in agents.into_iter().enumerate() {
        let values = values.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut log = Vec::new();
            let mut late = 0u64;
            let table = &values[i % values.len()];
            let result: Result<()> = async {
                match pace {
                    Pace::Every { interval, aligned } => {
                        let iv = interval.as_millis().max(1) as i64;
                        let offset = if aligned {
                            Duration::ZERO
                        } else {
                            interval.mul_f64(i as f64 / n as f64)
                        };
                        let mut slot = start + offset;
                        while slot < deadline && !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep_until(slot.into()).await;
                            let slot_wall =
                                start_wall + slot.duration_since(start).as_millis() as i64;
                            let row = (agent.written % table.len() as u64) as usize;
                            let ts =
                                write_or_reconnect(&mut agent, table, slot_wall / iv * iv).await?;
                            let now = Instant::now();
                            if now.duration_since(slot) > Duration::from_millis(100) {
                                late += 1;
                            }
                            log.push(Written {
                                agent: i,
                                at: now.duration_since(start),
                                ts,
                                row,
                            });
                            slot += interval;
                        }
                    }
                    Pace::Unpaced => {
                        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                            let row = (agent.written % table.len() as u64) as usize;
                            let ts = write_or_reconnect(&mut agent, table, wall_ms()).await?;
                            log.push(Written {
                                agent: i,
                                at: Instant::now().duration_since(start),
                                ts,
                                row,
                            });
                        }
                    }
                }
                Ok(())
            }
            .await;
            (i, agent, log, late, result)
        });
    }
    let mut agents: Vec<Option<Agent>> = (0..n).map(|_| None).collect();
    let mut stats = PhaseStats::default();
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        let (i, agent, log, late, result) = r?;
        if let Err(e) = result {
            stop.store(true, Ordering::Relaxed);
            first_error.get_or_insert_with(|| format!("{}: {e:#}", agent.host));
        }
        stats.late_writes += late;
        stats.log.extend(log);
        agents[i] = Some(agent);
    }
    let mut agents: Vec<Agent> = agents.into_iter().flatten().collect();
    if let Some(e) = first_error {
        bail!("a simulated agent failed: {e}");
    }
    let last_write = stats.log.iter().map(|w| w.at).max().unwrap_or_default();
    let first_write = stats.log.iter().map(|w| w.at).min().unwrap_or_default();
    stats.write_secs = (last_write - first_write).as_secs_f64();
    let drain_until = Instant::now() + drain;
    while Instant::now() < drain_until && agents.iter().any(|a| a.pending() > 0) {
        for a in agents.iter_mut() {
            if a.pending() > 0 && a.needs_reconnect() {
                a.reconnect().await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last_answer = start + first_write;
    for (a, mark) in agents.iter().zip(marks) {
        let s = a.shared.lock().map_err(|_| anyhow!("poisoned"))?;
        stats.unanswered += s.pending.len() as u64;
        for (sent, lat) in &s.acked[mark..] {
            stats.latencies.push(*lat);
            let at = sent.saturating_duration_since(start).as_secs_f64();
            stats.timed_latencies.push((at, *lat));
            last_answer = last_answer.max(*sent + Duration::from_secs_f64(*lat));
        }
        stats.retries += s.retries;
    }
    stats.batches = stats.log.len() as u64;
    let points_per_row = |w: &Written| values[w.agent % values.len()][w.row].len() as u64;
    stats.points_written = stats.log.iter().map(points_per_row).sum();
    for a in &agents {
        if let Ok(mut s) = a.shared.lock() {
            stats.points_acked += std::mem::take(&mut s.acked_points);
            stats.points_refused += std::mem::take(&mut s.refused_points);
            stats.reconnects += std::mem::take(&mut s.reconnects);
            stats.acked_unmeasured += std::mem::take(&mut s.acked_unmeasured);
            s.retries = 0;
        }
    }
    stats.total_secs = (last_answer - (start + first_write)).as_secs_f64();
    stats.log.sort_by_key(|w| w.at);
    Ok((agents, stats))
}

/// Client endpoints on 127.0.0.1 for data connections, `count` of them. Call it inside
/// the tokio runtime (quinn drives each endpoint from a task).
pub fn data_endpoints(count: usize) -> Result<Vec<quinn::Endpoint>> {
    (0..count.max(1))
        .map(|_| {
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
                .context("binding a client endpoint")
        })
        .collect()
}
