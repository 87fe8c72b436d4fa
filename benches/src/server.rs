//! Server processes a benchmark runs and measures: `argus serve` and Debian's
//! `victoria-metrics`, optionally under strace for their sync calls.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::http_get;

/// Debian's VictoriaMetrics (`apt-get install victoria-metrics`).
pub const VM_BIN: &str = "/usr/bin/victoria-metrics";
/// The calls a traced pass records.
pub const SYNC_CALLS: &str = "fsync,fdatasync,sync_file_range";

/// Sync calls in a time window: count by syscall name, and every duration (s).
pub type SyncCalls = (BTreeMap<String, u64>, Vec<f64>);

/// `argus serve` on `127.0.0.1:port` (HTTP on TCP, agent QUIC on UDP), data in `data`.
pub fn argus_command(bin: &Path, data: &Path, port: u16) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn");
    cmd
}

/// VictoriaMetrics on `127.0.0.1:port`, data in `data`.
pub fn vm_command(data: &Path, port: u16) -> Command {
    let mut cmd = Command::new(VM_BIN);
    cmd.arg(format!("-storageDataPath={}", data.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-retentionPeriod=1");
    cmd
}

/// A server process, under strace or not, killed if the bench ends early.
pub struct Server {
    child: Child,
    /// The server's own pid (strace's child when traced).
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
    pub trace: Option<PathBuf>,
    pub window_start: Option<SystemTime>,
    pub window_end: Option<SystemTime>,
}

impl Server {
    pub fn start(
        mut cmd: Command,
        dir: &Path,
        port: u16,
        ready: &str,
        strace: bool,
    ) -> Result<Server> {
        let log = dir.join("server.log");
        let program = cmd.get_program().to_os_string();
        let trace = strace.then(|| dir.join("strace.out"));
        let mut cmd = match &trace {
            Some(out) => {
                let mut s = Command::new("strace");
                s.args(["-f", "--seccomp-bpf", "-ttt", "-T", "-e"])
                    .arg(format!("trace={SYNC_CALLS}"))
                    .arg("-o")
                    .arg(out)
                    .arg("--")
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                for (k, v) in cmd.get_envs() {
                    if let Some(v) = v {
                        s.env(k, v);
                    }
                }
                s
            }
            None => std::mem::replace(&mut cmd, Command::new("true")),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let mut server = Server {
            pid: child.id(),
            child,
            port,
            log,
            trace,
            window_start: None,
            window_end: None,
        };
        let t = Instant::now();
        loop {
            if server.trace.is_some()
                && server.pid == server.child.id()
                && let Some(p) = child_of(server.child.id(), &program)
            {
                server.pid = p;
            }
            let up = server.pid != server.child.id() || server.trace.is_none();
            if up && matches!(http_get(port, ready), Ok((200, _))) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!(
                    "server exited ({status}) before it was ready: {}",
                    server.log_tail()
                );
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("server not ready after 60 s: {}", server.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits; returns how long the stop took.
    pub fn stop(&mut self, limit: Duration) -> Result<f64> {
        let t = Instant::now();
        // SAFETY: kill has no memory preconditions; the pid is our child (or strace's).
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        while t.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    println!("server exit status {status}: {}", self.log_tail());
                }
                return Ok(t.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("server did not stop within {limit:?}: {}", self.log_tail())
    }

    /// Sync calls strace saw in the load window: count by call, and durations.
    pub fn traced(&self) -> Result<Option<SyncCalls>> {
        let (Some(path), Some(from), Some(to)) = (&self.trace, self.window_start, self.window_end)
        else {
            return Ok(None);
        };
        let epoch = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let text = std::fs::read_to_string(path)?;
        Ok(Some(parse_strace(&text, epoch(from), epoch(to))))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `strace -f -ttt -T` lines: `PID SECS.USECS call(args) = 0 <DUR>`, or split into
/// `call(args <unfinished ...>` and `<... call resumed>) = 0 <DUR>` when threads interleave.
fn parse_strace(text: &str, from: f64, to: f64) -> SyncCalls {
    let mut calls = BTreeMap::new();
    let mut durations = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(_pid), Some(ts)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let rest: Vec<&str> = words.collect();
        let name = match rest.first() {
            Some(&"<...") => rest.get(1).copied().unwrap_or(""),
            Some(w) => w.split('(').next().unwrap_or(""),
            None => "",
        };
        if name.is_empty() || line.ends_with("<unfinished ...>") {
            continue;
        }
        let Some(dur) = line
            .rsplit_once('<')
            .and_then(|(_, d)| d.trim_end_matches('>').parse::<f64>().ok())
        else {
            continue;
        };
        let started = if line.contains(" resumed>") {
            ts - dur
        } else {
            ts
        };
        if started < from || started > to {
            continue;
        }
        *calls.entry(name.to_string()).or_insert(0) += 1;
        durations.push(dur);
    }
    (calls, durations)
}

/// The process `program` that `pid` (strace) started. Matching the program matters:
/// strace also forks short-lived children of its own (probing seccomp support).
fn child_of(pid: u32, program: &OsStr) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let p: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let ppid: u32 = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
        let argv0 = cmdline.split(|b| *b == 0).next()?;
        (ppid == pid && argv0 == program.as_bytes()).then_some(p)
    })
}

/// `name` found on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
