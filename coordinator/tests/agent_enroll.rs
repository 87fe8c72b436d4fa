//! Enrollment as an operator meets it (issue 5, acceptance "Enrollment and mTLS" and
//! "Renewal"), with real processes: `argus serve` on a free port with its own data
//! directory, join tokens minted by `argus token create`, and the real `argus-agent
//! join` and `argus-agent run` binaries.
//!
//! - Every way a join can fail ends the agent with a non-zero status and a message that
//!   names the problem, and leaves an audit record (merged per source and minute).
//! - A joined agent streams, renews its 30 s certificate over its live connection at
//!   least twice in a minute, and no sample of that minute is missing.
//! - A client that does not renew has its connection closed at its certificate's
//!   not-after, and cannot come back with it.
//!
//! Each test has its own server, so the file's tests run side by side.

mod common;

use argus_agent::uplink::enroll::enroll;
use argus_agent::uplink::identity::Identity;
use argus_common::pki::{CaPin, CertInfo, ClusterCa, JoinString, TokenSecret};
use argus_common::quic::{close, data_client_config};
use argus_common::wire::{FrameLimits, Hello, Message, read_frame, write_frame};
use argus_coordinator::fleet::cli_config::CliConfig;
use argus_testkit::child::ChildGuard;
use argus_testkit::http::{self, encode_component};
use common::{Argus, BIN, now_ms, wait_for};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a join may take before the test gives up on it (the agent's own limit per
/// coordinator is 15 s; a debug build on a loaded machine is slow to start).
const JOIN_WITHIN: Duration = Duration::from_secs(60);

/// The `argus-agent` binary (another package's, see [`argus_testkit::build::workspace_binary`]).
fn agent_bin() -> PathBuf {
    argus_testkit::build::workspace_binary("argus-agent").expect("build argus-agent")
}

/// This host's name, as the agent reports it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// A finished process: its status and what it wrote.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to its end with stdout and stderr kept apart, killing it at `within`.
fn run(mut cmd: Command, out_dir: &Path, name: &str, within: Duration) -> Ran {
    let (out, err) = (
        out_dir.join(format!("{name}.stdout")),
        out_dir.join(format!("{name}.stderr")),
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} still running after {within:?}:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ran {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// One `argus serve` with a config file, its admin token, and where its agents live.
struct Cluster {
    argus: Argus,
    dir: tempfile::TempDir,
    url: String,
    admin: String,
}

impl Cluster {
    /// `argus serve --config` with `config` (argus.toml text) on a fresh data directory.
    fn start(config: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("argus.toml");
        std::fs::write(&cfg, config).unwrap();
        let data = dir.path().join("data");
        let argus = Argus::start(&data, &["--config", cfg.to_str().unwrap()]);
        let admin = CliConfig::read(&data.join("cluster/cli.toml"))
            .expect("the first start wrote cli.toml with the admin token")
            .token;
        Cluster {
            url: format!("http://{}", argus.addr),
            argus,
            dir,
            admin,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `argus token create ARGS`: the join string it printed.
    fn token(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "token",
            "create",
            "--url",
            &self.url,
            "--token",
            &self.admin,
        ])
        .args(args)
        .env_remove("ARGUS_URL")
        .env_remove("ARGUS_TOKEN")
        .env("HOME", "/nonexistent");
        let ran = run(
            cmd,
            self.dir.path(),
            "token-create",
            Duration::from_secs(60),
        );
        assert!(ran.status.success(), "argus token create: {ran}");
        let join = ran.stdout.trim().to_string();
        JoinString::parse(&join).unwrap_or_else(|e| panic!("{join:?} is no join string: {e}"));
        join
    }

    /// An agent config: `state` as state directory, a 1 s interval, the host collector
    /// only (containers need a Docker engine, which these tests do not).
    fn agent_config(&self, state: &Path) -> PathBuf {
        std::fs::create_dir_all(state).unwrap();
        let p = state.with_extension("toml");
        std::fs::write(
            &p,
            format!(
                "[agent]\ninterval = \"1s\"\nstate_dir = {:?}\n[containers]\nenabled = false\n\
                 [spool]\nfsync = \"5s\"\n[log]\nlevel = \"info\"\n",
                state.display().to_string()
            ),
        )
        .unwrap();
        p
    }

    /// `argus-agent join JOIN --state-dir STATE` to its end.
    fn join(&self, join: &str, state_name: &str) -> Ran {
        let state = self.path(state_name);
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--config")
            .arg(self.agent_config(&state))
            .args(["join", join, "--state-dir"])
            .arg(&state)
            .env_remove("RUST_LOG");
        run(
            cmd,
            self.dir.path(),
            &format!("join-{state_name}"),
            JOIN_WITHIN,
        )
    }

    fn admin_get(&self, path: &str) -> Result<serde_json::Value, String> {
        let auth = format!("Bearer {}", self.admin);
        let r = http::request(
            self.argus.addr,
            "GET",
            path,
            &[("Authorization", auth.as_str())],
            b"",
            Duration::from_secs(30),
        )
        .map_err(|e| format!("GET {path}: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET {path}: {} {}", r.status, r.text()));
        }
        serde_json::from_slice(&r.body).map_err(|e| format!("GET {path}: {e}"))
    }

    /// The audit records of agent actions, newest first.
    fn agent_audit(&self) -> Result<Vec<serde_json::Value>, String> {
        let v = self.admin_get("/api/audit?action=agent.&limit=1000")?;
        Ok(v["data"]["records"].as_array().cloned().unwrap_or_default())
    }

    /// `/api/v1/query` at `time` (Unix seconds): the result vector.
    fn query(&self, q: &str, time: f64) -> Result<Vec<serde_json::Value>, String> {
        let v = self.admin_get(&format!(
            "/api/v1/query?query={}&time={time:.3}",
            encode_component(q)
        ))?;
        if v["status"] != "success" {
            return Err(format!("{q}: {v}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The one agent `/api/agents` lists.
    fn agent(&self) -> Result<serde_json::Value, String> {
        let v = self.admin_get("/api/agents")?;
        match v["data"].as_array().map(Vec::as_slice) {
            Some([a]) => Ok(a.clone()),
            other => Err(format!("expected one agent, got {other:?}")),
        }
    }

    /// A counter of `/metrics`, 0 when not exported (yet).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.argus.metric(name, labels).unwrap_or(0.0)
    }
}

/// The single value of an instant-vector result with one element.
fn single_value(result: &[serde_json::Value]) -> Option<f64> {
    match result {
        [s] => s["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// Asserts a join failed with a non-zero status, wrote no identity, and said each of
/// `says` on stderr.
fn assert_refused(c: &Cluster, ran: &Ran, state: &str, says: &[&str]) {
    assert!(!ran.status.success(), "the join must fail: {ran}");
    for s in says {
        assert!(
            ran.stderr.contains(s),
            "the agent's stderr should say {s:?}: {ran}"
        );
    }
    assert!(
        !c.path(state).join("identity.json").exists(),
        "a failed join keeps no identity"
    );
}

#[test]
fn failed_joins_say_why_on_the_agent_and_are_audited_per_source() {
    // More attempts than the default 10 per source and minute are made here.
    let c = Cluster::start("[ingest]\nenroll_per_minute = 100\n");
    let host = host_name();

    // A wrong secret, eight agents at once: each is told, and the audit log gets the
    // attempts merged rather than one record each.
    let good = JoinString::parse(&c.token(&["--uses", "1"])).unwrap();
    let mut wrong = good.clone();
    wrong.secret = TokenSecret::generate().unwrap();
    let wrong = wrong.encode();
    const FLOOD: usize = 8;
    let runs: Vec<Ran> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..FLOOD)
            .map(|i| {
                let (c, wrong) = (&c, &wrong);
                s.spawn(move || c.join(wrong, &format!("wrong-{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, ran) in runs.iter().enumerate() {
        assert_refused(
            &c,
            ran,
            &format!("wrong-{i}"),
            &["wrong secret", "whole join string"],
        );
    }

    // Expired: a one-second token, tried after it ran out.
    let expired = c.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2_500));
    let ran = c.join(&expired, "expired");
    assert_refused(
        &c,
        &ran,
        "expired",
        &["join token expired", "argus token create"],
    );

    // Spent: the single use goes to the first host; a second state directory is refused.
    let ran = c.join(&good.encode(), "first");
    assert!(ran.status.success(), "a valid join enrolls: {ran}");
    assert!(ran.stdout.contains("enrolled as agent"), "{ran}");
    assert!(c.path("first").join("identity.json").exists());
    let ran = c.join(&good.encode(), "second");
    assert_refused(&c, &ran, "second", &["no uses left", "--uses"]);

    // Bound to another host.
    let bound = c.token(&["--host", "other-host.example"]);
    let ran = c.join(&bound, "bound");
    assert_refused(
        &c,
        &ran,
        "bound",
        &["bound to another host", &format!("this host is {host:?}")],
    );

    // A join string pinning another cluster's CA: the agent refuses the coordinator
    // before it sends anything, the secret included.
    let mut foreign = JoinString::parse(&c.token(&[])).unwrap();
    let other_ca = ClusterCa::generate(now_ms()).unwrap();
    foreign.ca_pin = CaPin::of_cert_der(other_ca.cert_der()).unwrap();
    let ran = c.join(&foreign.encode(), "foreign");
    assert_refused(
        &c,
        &ran,
        "foreign",
        &[
            "does not chain to the CA pinned in the join string",
            &foreign.ca_pin.to_string(),
        ],
    );

    // The audit log: one kind of record per failure, from this host, merged.
    let wanted = [
        ("agent.enroll", "wrong_secret"),
        ("agent.enroll", "token_expired"),
        ("agent.enroll", "token_spent"),
        ("agent.enroll", "host_mismatch"),
        ("agent.handshake", "client_refused_coordinator_certificate"),
    ];
    let mut records = Vec::new();
    wait_for(
        "every failed join in the audit log",
        Instant::now() + Duration::from_secs(60),
        || {
            records = c.agent_audit()?;
            let missing: Vec<_> = wanted
                .iter()
                .filter(|(action, outcome)| {
                    !records
                        .iter()
                        .any(|r| r["action"] == *action && r["outcome"] == *outcome)
                })
                .collect();
            if missing.is_empty() {
                Ok(true)
            } else {
                Err(format!("missing {missing:?} in {records:?}"))
            }
        },
    );
    for r in &records {
        assert_eq!(r["source"], "127.0.0.1", "the source is the host: {r}");
        assert_eq!(r["actor"], "-", "nobody is authenticated: {r}");
    }
    let of = |outcome: &str| -> Vec<&serde_json::Value> {
        records.iter().filter(|r| r["outcome"] == outcome).collect()
    };
    // Every wrong-secret attempt is counted, in fewer records than attempts (they are
    // merged per source and minute until the next flush, every 2 s).
    let wrong_secret = of("wrong_secret");
    let counted: u64 = wrong_secret
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, FLOOD as u64, "{wrong_secret:?}");
    assert!(
        wrong_secret.len() < FLOOD,
        "{FLOOD} attempts at once are merged: {wrong_secret:?}"
    );
    assert!(
        wrong_secret
            .iter()
            .all(|r| r["target"] == good.token_id.to_string().as_str()),
        "the record names the token: {wrong_secret:?}"
    );
    for outcome in ["token_expired", "token_spent", "host_mismatch"] {
        let n: u64 = of(outcome)
            .iter()
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(n, 1, "{outcome}: {records:?}");
    }
    // Nothing from these failures enrolled anyone.
    let agents = c.admin_get("/api/agents").unwrap();
    assert_eq!(
        agents["data"].as_array().map(Vec::len),
        Some(1),
        "only the valid join enrolled: {agents}"
    );
}

#[test]
fn a_joined_agent_renews_over_its_connection_and_no_sample_goes_missing() {
    const LIFETIME_S: i64 = 30;
    const WINDOW_S: i64 = 60;
    let c = Cluster::start(&format!("[enroll]\ncert_lifetime = \"{LIFETIME_S}s\"\n"));
    let host = host_name();
    let ran = c.join(&c.token(&[]), "agent");
    assert!(ran.status.success(), "a valid join enrolls: {ran}");
    let state = c.path("agent");
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--config")
        .arg(c.agent_config(&state))
        .arg("run")
        .env_remove("RUST_LOG");
    let started_s = now_ms() / 1000;
    let mut agent = ChildGuard::spawn("argus-agent run", cmd, &c.path("agent-run.log")).unwrap();

    // The window: `WINDOW_S` seconds of 1 s ticks, all after the agent started, ending
    // between two ticks so that either end's convention counts the same samples.
    let end = (started_s + 3 + WINDOW_S) as f64 + 0.5;
    let start = end - WINDOW_S as f64;
    // Watch the agent's certificate while the window passes: each renewal issues a new
    // one, whose expiry `/api/agents` shows.
    let mut expiries = BTreeSet::new();
    while (now_ms() as f64) / 1000.0 < end + 2.0 {
        if let Some(status) = agent.exited() {
            panic!(
                "argus-agent run exited ({status})\n{}",
                agent.log_tail(4000)
            );
        }
        if let Ok(a) = c.agent()
            && let Some(e) = a["cert_expires"].as_i64()
        {
            expiries.insert(e);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let issued_in_window: Vec<i64> = expiries
        .iter()
        .map(|e| e / 1000 - LIFETIME_S)
        .filter(|t| (*t as f64) > start && (*t as f64) <= end)
        .collect();
    assert!(
        issued_in_window.len() >= 2,
        "at least two renewals in the {WINDOW_S} s window ({start}..{end}); certificate \
         expiries seen: {expiries:?}\n{}",
        agent.log_tail(4000)
    );
    assert!(
        c.counter("argus_ingest_renewals_total", &[]) >= 2.0,
        "the coordinator counted the renewals"
    );
    // Over the live connection: the coordinator never closed it for an expired
    // certificate, and the agent stored each renewed certificate.
    assert_eq!(
        c.counter("argus_ingest_refused_total", &[("reason", "cert_expired")]),
        0.0,
        "a renewed connection outlives its first certificate; data connections: {}",
        c.counter(
            "argus_ingest_connections_total",
            &[("alpn", "argus-data/1")]
        )
    );
    // The coordinator lists a certificate as soon as its serial is logged, a moment
    // before the agent has its RenewOk: poll for the agent's copy.
    let newest_seen = expiries.last().copied();
    wait_for(
        "the agent's identity.json holding the newest certificate",
        Instant::now() + Duration::from_secs(30),
        || {
            let stored = Identity::load(&state)
                .map_err(|e| e.to_string())?
                .and_then(|id| id.not_after_ms());
            if stored >= newest_seen {
                Ok(true)
            } else {
                Err(format!(
                    "stored expires {stored:?}, newest seen {newest_seen:?}"
                ))
            }
        },
    );

    // No gap: every tick the agent collected in the window is stored. The agent's own
    // collection counter says how many ticks that was (60 unless it skipped one under
    // load), independently of which batches arrived.
    let node = format!("{{instance=\"{host}\",job=\"node\"}}");
    let own = format!("argus_agent_collections_total{{instance=\"{host}\"}}");
    let mut seen = (0i64, None, Vec::new());
    wait_for(
        "every sample of the window stored",
        Instant::now() + Duration::from_secs(60),
        || {
            let at_end = single_value(&c.query(&own, end)?);
            let at_start = single_value(&c.query(&own, start)?);
            let (Some(at_end), Some(at_start)) = (at_end, at_start) else {
                return Err(format!("{own} not stored at {start} and {end}"));
            };
            let ticks = (at_end - at_start).round() as i64;
            let load = c.query(
                &format!("count_over_time(node_load1{node}[{WINDOW_S}s])"),
                end,
            )?;
            let load = single_value(&load).map(|v| v as i64);
            let cpu = c.query(
                &format!("count_over_time(node_cpu_seconds_total{node}[{WINDOW_S}s])"),
                end,
            )?;
            let cpu: Vec<i64> = cpu
                .iter()
                .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .map(|v| v as i64)
                .collect();
            let complete = ticks > 0
                && load == Some(ticks)
                && !cpu.is_empty()
                && cpu.iter().all(|n| *n == ticks);
            seen = (ticks, load, cpu);
            if complete {
                Ok(true)
            } else {
                Err(format!(
                    "ticks {ticks}, node_load1 {:?}, node_cpu_seconds_total {:?}",
                    seen.1, seen.2
                ))
            }
        },
    );
    let (ticks, _, cpu) = &seen;
    eprintln!(
        "renewal window {start}..{end}: {ticks} ticks, each of {} series complete; \
         certificates issued at {issued_in_window:?}",
        cpu.len() + 1
    );
    // The agent collects every second; a tick or two may be skipped on a loaded machine
    // (and is then missing from the count it reports too), never most of them.
    assert!(
        *ticks >= WINDOW_S - 10,
        "the agent collected {ticks} of the window's {WINDOW_S} ticks"
    );
    let status = agent.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "argus-agent run stops cleanly: {status}");
}

#[test]
fn a_certificate_that_expires_unrenewed_closes_its_connection() {
    const LIFETIME_S: i64 = 10;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = Cluster::start(&format!("[enroll]\ncert_lifetime = \"{LIFETIME_S}s\"\n"));
    let join = JoinString::parse(&c.token(&[])).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let to: SocketAddr = c.argus.addr;
    rt.block_on(async {
        // Enrolled as the agent enrolls, then a data connection that never renews.
        let id = enroll(&join, "no-renew").await.expect("enrollment");
        let not_after = CertInfo::from_der(&id.cert_der).unwrap().not_after_ms;
        let connect = || async {
            let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            let cfg = data_client_config(id.cert(), id.key().unwrap(), &id.ca(), 32).unwrap();
            let conn = ep.connect_with(cfg, to, "127.0.0.1").unwrap().await;
            (ep, conn)
        };
        let (_ep, conn) = connect().await;
        let conn = conn.expect("the fresh certificate is admitted");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let hello = Message::Hello(Hello {
            min_version: argus_common::wire::MIN_PROTOCOL_VERSION,
            max_version: argus_common::wire::PROTOCOL_VERSION,
            agent_id: id.agent_id.clone(),
            incarnation: 7,
            host_name: "no-renew".into(),
            agent_version: "test".into(),
            capabilities: vec![],
        });
        write_frame(&mut send, &hello, &FrameLimits::default())
            .await
            .unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            read_frame(&mut recv, &FrameLimits::default()),
        )
        .await
        .expect("HelloOk in time");
        assert!(
            matches!(answer, Ok(Some(Message::HelloOk(_)))),
            "{answer:?}"
        );
        // Open until not-after, closed at it: the bound on the late side is loose (a
        // loaded machine), the early side has only clock rounding.
        let closed = tokio::time::timeout(
            Duration::from_secs(LIFETIME_S as u64 * 3 + 30),
            conn.closed(),
        )
        .await
        .expect("the coordinator closes the connection");
        let closed_at = now_ms();
        match &closed {
            quinn::ConnectionError::ApplicationClosed(a) => {
                assert_eq!(a.error_code, close::EXPIRED, "{closed:?}");
                let reason = String::from_utf8_lossy(&a.reason);
                assert!(
                    reason.contains("certificate expired without renewal"),
                    "{reason}"
                );
            }
            other => panic!("closed by the coordinator with a reason, not {other:?}"),
        }
        assert!(
            closed_at >= not_after - 1_000,
            "closed {} ms before not-after",
            not_after - closed_at
        );
        // The same certificate cannot open another connection.
        let (_ep, again) = connect().await;
        let err = match again {
            Ok(conn) => {
                // Some handshakes only fail once the server checked the certificate.
                conn.closed().await
            }
            Err(e) => e,
        };
        // Refused by TLS (webpki checks not-after in whole seconds) or, in the second
        // after it, by the coordinator's admission check; either way with a reason.
        // QUIC carries TLS alerts as CRYPTO_ERROR codes 0x100..=0x1ff (RFC 9001 §4.8).
        let tls_alert = |code: u64| (0x100..=0x1ff).contains(&code);
        let refused = match &err {
            quinn::ConnectionError::ConnectionClosed(c) => tls_alert(c.error_code.into()),
            quinn::ConnectionError::TransportError(t) => tls_alert(t.code.into()),
            quinn::ConnectionError::ApplicationClosed(a) => {
                a.error_code == close::REFUSED
                    && String::from_utf8_lossy(&a.reason).contains("expired")
            }
            _ => false,
        };
        assert!(refused, "an expired certificate is refused: {err:?}");
    });
    assert_eq!(
        c.counter("argus_ingest_refused_total", &[("reason", "cert_expired")]),
        1.0,
        "the close is counted"
    );
}
