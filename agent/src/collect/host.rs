//! Host metrics from /proc and /sys, named as node_exporter names them.
//!
//! Names, label names, types and HELP texts follow node_exporter 1.x so that existing
//! dashboards and alert rules work unchanged. The files are read directly (not through
//! sysinfo) because sysinfo lacks per-mode CPU seconds, Buffers/Cached and diskstats.
//!
//! Layout: pure parsers (`parse_*`, text in, typed struct out, malformed lines skipped
//! and reported as [`BadLine`]s), pure emitters (`emit_*`, struct in, metrics out), and
//! [`HostCollector`], the thin layer that reads the files with reused buffers.
//!
//! Choices that differ from, or pin down, node_exporter's behaviour:
//!
//! - **Mount table and network counters** are read from `<proc_root>/1/mounts` and
//!   `<proc_root>/1/net/dev` (the namespaces of the host's init, as node_exporter does
//!   for mounts), falling back to `<proc_root>/mounts` and `<proc_root>/net/dev` when
//!   those cannot be read. A containerised agent given the host's /proc thus reports
//!   the host's mounts and interfaces rather than its own.
//! - **Hung mounts**: `statvfs` on a dead NFS server blocks in the kernel. It runs on
//!   a helper thread; a call that does not answer within the timeout (1 s by default)
//!   marks that mount point stuck: it gets `node_filesystem_device_error` 1, one
//!   [`CollectError`] is reported, and it is not stat'ed again until the blocked call
//!   returns (then it is retried on the next collection). Each stuck mount costs one
//!   parked thread and delays only the collection that discovers it, by the timeout.
//!   Callers in async code should therefore run [`HostCollector::collect`] on a
//!   blocking thread.
//! - **Per-mount statvfs failures** (permission denied on someone's FUSE mount, say)
//!   only set `node_filesystem_device_error` 1, as in node_exporter: they are
//!   permanent conditions that would otherwise count an error every tick.
//! - **Duplicate mount points**: the later entry wins, since it is the one the kernel
//!   resolves the path to.
//! - **Exclusion patterns** are deliberately simple (no regex engine in the agent):
//!   `name` matches exactly, `prefix*` matches by prefix, and in
//!   `disk_devices_exclude` the reserved entry [`PARTITIONS_PATTERN`] stands for
//!   node_exporter's partition rule (`(h|s|v|xv)d[a-z]+[0-9]+`, `nvme\d+n\d+p\d+`).
//! - **uname**: sysname, release, version, nodename and domainname come from
//!   `<proc_root>/sys/kernel/{ostype,osrelease,version,hostname,domainname}`; machine
//!   from `<proc_root>/sys/kernel/arch` when the kernel has it (Linux ≥ 6.1), else from
//!   `uname(2)`, which is the same kernel's answer. Hostname and domainname follow
//!   the reader's UTS namespace, so a containerised agent must share the host's.
//! - **Network devices** exclude nothing by default (upstream node_exporter; Debian's
//!   package excludes `lo`). `node_network_up` is read from
//!   `<sys_root>/class/net/<device>/operstate` for the devices found in net/dev.
//! - **Not emitted**: `node_disk_info` (needs udev's database) and the netlink-only
//!   network counters (`receive_nohandler`).

use super::{CollectError, Families};
use argus_common::model::{Labels, MetricType, is_valid_metric_name};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

// ---------------------------------------------------------------------------------
// Configuration and exclusion patterns
// ---------------------------------------------------------------------------------

/// Entry of `disk_devices_exclude` standing for node_exporter's partition rule, which
/// a prefix pattern cannot express: `(h|s|v|xv)d[a-z]+[0-9]+` and `nvme\d+n\d+p\d+`.
/// Partitions are skipped because the whole disk already counts their I/O.
pub const PARTITIONS_PATTERN: &str = "@partitions";

/// How long a `statvfs` may block before its mount point is treated as stuck.
pub const DEFAULT_STATFS_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the host's files are and what to leave out.
///
/// Every exclusion list holds simple patterns: an exact name, or `prefix*` to match by
/// prefix. Mount point patterns therefore list both `/dev` and `/dev/*` to exclude a
/// tree including its root, and only `/var/lib/docker/*` to keep `/var/lib/docker`
/// itself, exactly as node_exporter's default regex does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// procfs of the host: `/proc`, or `/host/proc` in a container.
    pub proc_root: PathBuf,
    /// sysfs of the host: `/sys`, or `/host/sys` in a container.
    pub sys_root: PathBuf,
    /// Where the host's `/` is mounted: `/`, or `/host/root` in a container. Mount points
    /// are stat'ed under it and, if listed with it as prefix, reported without it.
    pub root_fs: PathBuf,
    pub fs_types_exclude: Vec<String>,
    pub mount_points_exclude: Vec<String>,
    pub net_devices_exclude: Vec<String>,
    pub disk_devices_exclude: Vec<String>,
}

impl Default for HostConfig {
    /// node_exporter 1.x's defaults, translated into simple patterns.
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        HostConfig {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            root_fs: PathBuf::from("/"),
            fs_types_exclude: strings(&[
                "autofs",
                "binfmt_misc",
                "bpf",
                "cgroup",
                "cgroup2",
                "configfs",
                "debugfs",
                "devpts",
                "devtmpfs",
                "fusectl",
                "hugetlbfs",
                "iso9660",
                "mqueue",
                "nsfs",
                "overlay",
                "proc",
                "procfs",
                "pstore",
                "rpc_pipefs",
                "securityfs",
                "selinuxfs",
                "squashfs",
                "sysfs",
                "tracefs",
            ]),
            mount_points_exclude: strings(&[
                "/dev",
                "/dev/*",
                "/proc",
                "/proc/*",
                "/run/credentials/*",
                "/sys",
                "/sys/*",
                "/var/lib/docker/*",
                "/var/lib/containers/storage/*",
            ]),
            net_devices_exclude: Vec::new(),
            disk_devices_exclude: strings(&["ram*", "loop*", "fd*", PARTITIONS_PATTERN]),
        }
    }
}

/// Whether `name` matches one simple pattern: exact, or `prefix*`.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches_pattern(p, name))
}

/// Whether a block device should be left out, honouring [`PARTITIONS_PATTERN`].
pub fn disk_excluded(patterns: &[String], device: &str) -> bool {
    patterns.iter().any(|p| {
        if p == PARTITIONS_PATTERN {
            is_partition_name(device)
        } else {
            matches_pattern(p, device)
        }
    })
}

/// node_exporter's partition names: `(h|s|v|xv)d[a-z]+[0-9]+` and `nvme\d+n\d+p\d+`.
pub fn is_partition_name(device: &str) -> bool {
    let b = device.as_bytes();
    let letters_then_digits = |rest: &[u8]| {
        let letters = rest.iter().take_while(|c| c.is_ascii_lowercase()).count();
        let tail = &rest[letters..];
        letters > 0 && !tail.is_empty() && tail.iter().all(u8::is_ascii_digit)
    };
    for prefix in [&b"xvd"[..], b"hd", b"sd", b"vd"] {
        if let Some(rest) = b.strip_prefix(prefix) {
            return letters_then_digits(rest);
        }
    }
    if let Some(rest) = b.strip_prefix(b"nvme") {
        return digits_then(rest, b'n')
            .and_then(|rest| digits_then(rest, b'p'))
            .is_some_and(|rest| !rest.is_empty() && rest.iter().all(u8::is_ascii_digit));
    }
    false
}

/// Consumes one or more digits followed by `sep`, returning what follows.
fn digits_then(s: &[u8], sep: u8) -> Option<&[u8]> {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    (n > 0 && s.get(n) == Some(&sep)).then(|| &s[n + 1..])
}

// ---------------------------------------------------------------------------------
// Parsers: pure functions over file contents
// ---------------------------------------------------------------------------------

/// A line a parser skipped, kept so the collector can report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number in the file.
    pub line: usize,
    pub reason: String,
}

/// A parser's result: what it understood plus the lines it had to skip.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub value: T,
    pub bad_lines: Vec<BadLine>,
}

fn bad(line: usize, reason: impl Into<String>) -> BadLine {
    BadLine {
        line,
        reason: reason.into(),
    }
}

fn parse_u64(field: &str) -> Result<u64, String> {
    field
        .parse::<u64>()
        .map_err(|_| format!("{field:?} is not a non-negative integer"))
}

/// CPU time of one CPU in USER_HZ ticks, as the `cpuN` lines of /proc/stat give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    pub cpu: u32,
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    /// Absent on kernels older than 2.6.24.
    pub guest: Option<u64>,
    /// Absent on kernels older than 2.6.33.
    pub guest_nice: Option<u64>,
}

/// The parts of /proc/stat node_exporter's cpu and stat collectors report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcStat {
    pub cpus: Vec<CpuTicks>,
    pub boot_time: Option<u64>,
    pub context_switches: Option<u64>,
    pub forks: Option<u64>,
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
    pub interrupts: Option<u64>,
}

/// Parses /proc/stat. Unknown keys are ignored (kernels add them); known keys with
/// unparseable values are reported.
pub fn parse_stat(text: &str) -> Parsed<ProcStat> {
    let mut value = ProcStat::default();
    let mut bad_lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        let result = match key {
            "cpu" => Ok(()),
            k if k.starts_with("cpu") => {
                parse_cpu_line(&k[3..], fields).map(|c| value.cpus.push(c))
            }
            "btime" => first_u64(fields).map(|v| value.boot_time = Some(v)),
            "ctxt" => first_u64(fields).map(|v| value.context_switches = Some(v)),
            "processes" => first_u64(fields).map(|v| value.forks = Some(v)),
            "procs_running" => first_u64(fields).map(|v| value.procs_running = Some(v)),
            "procs_blocked" => first_u64(fields).map(|v| value.procs_blocked = Some(v)),
            // Only the total: the per-IRQ columns can number in the thousands.
            "intr" => first_u64(fields).map(|v| value.interrupts = Some(v)),
            _ => Ok(()),
        };
        if let Err(reason) = result {
            bad_lines.push(bad(i + 1, format!("{key}: {reason}")));
        }
    }
    Parsed { value, bad_lines }
}

fn first_u64<'a>(mut fields: impl Iterator<Item = &'a str>) -> Result<u64, String> {
    fields
        .next()
        .ok_or_else(|| "missing value".to_string())
        .and_then(parse_u64)
}

fn parse_cpu_line<'a>(
    number: &str,
    fields: impl Iterator<Item = &'a str>,
) -> Result<CpuTicks, String> {
    let cpu = number
        .parse::<u32>()
        .map_err(|_| format!("bad CPU number {number:?}"))?;
    let mut ticks = [0u64; 10];
    let mut n = 0;
    for field in fields.take(ticks.len()) {
        ticks[n] = parse_u64(field)?;
        n += 1;
    }
    // user, nice, system and idle have been there since the beginning; later columns
    // count as zero when a kernel predates them, as node_exporter does.
    if n < 4 {
        return Err(format!("only {n} time columns"));
    }
    Ok(CpuTicks {
        cpu,
        user: ticks[0],
        nice: ticks[1],
        system: ticks[2],
        idle: ticks[3],
        iowait: ticks[4],
        irq: ticks[5],
        softirq: ticks[6],
        steal: ticks[7],
        guest: (n > 8).then_some(ticks[8]),
        guest_nice: (n > 9).then_some(ticks[9]),
    })
}

/// The three load averages of /proc/loadavg.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// Parses /proc/loadavg (`0.52 0.41 0.30 2/345 6789`).
pub fn parse_loadavg(text: &str) -> Result<LoadAvg, String> {
    let mut fields = text.split_ascii_whitespace();
    let mut next = |what: &str| -> Result<f64, String> {
        let field = fields.next().ok_or_else(|| format!("missing {what}"))?;
        match field.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(format!("{what} {field:?} is not a load average")),
        }
    };
    Ok(LoadAvg {
        one: next("1m load")?,
        five: next("5m load")?,
        fifteen: next("15m load")?,
    })
}

/// One /proc/meminfo line, with the key as the kernel spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfoEntry<'a> {
    pub key: &'a str,
    /// In bytes when `in_kb` (already multiplied by 1024), else a plain count.
    pub value: u64,
    /// Whether the line carried the `kB` unit, which gives the metric its `_bytes` suffix.
    pub in_kb: bool,
}

/// Parses /proc/meminfo (`MemTotal:  24731708 kB`, `HugePages_Total:  0`).
pub fn parse_meminfo(text: &str) -> Parsed<Vec<MemInfoEntry<'_>>> {
    let mut value = Vec::with_capacity(64);
    let mut bad_lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_meminfo_line(line) {
            Ok(e) => value.push(e),
            Err(reason) => bad_lines.push(bad(i + 1, reason)),
        }
    }
    Parsed { value, bad_lines }
}

fn parse_meminfo_line(line: &str) -> Result<MemInfoEntry<'_>, String> {
    let (key, rest) = line
        .split_once(':')
        .ok_or_else(|| format!("no ':' in {line:?}"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err("empty key".to_string());
    }
    let mut fields = rest.split_ascii_whitespace();
    let number = parse_u64(fields.next().ok_or_else(|| format!("{key}: no value"))?)?;
    match (fields.next(), fields.next()) {
        (None, None) => Ok(MemInfoEntry {
            key,
            value: number,
            in_kb: false,
        }),
        (Some("kB"), None) => Ok(MemInfoEntry {
            key,
            value: number
                .checked_mul(1024)
                .ok_or_else(|| format!("{key}: {number} kB overflows"))?,
            in_kb: true,
        }),
        _ => Err(format!("{key}: unexpected unit in {line:?}")),
    }
}

/// node_exporter's name for a meminfo key: `Active(anon)` with kB becomes
/// `node_memory_Active_anon_bytes`; `HugePages_Total` stays without `_bytes`.
pub fn meminfo_metric_name(key: &str, in_kb: bool) -> String {
    let mut name = String::with_capacity(key.len() + 20);
    name.push_str("node_memory_");
    match (key.find('('), key.rfind(')')) {
        (Some(open), Some(close)) if open < close => {
            name.push_str(&key[..open]);
            name.push('_');
            name.push_str(&key[open + 1..close]);
            name.push_str(&key[close + 1..]);
        }
        _ => name.push_str(key),
    }
    if in_kb {
        name.push_str("_bytes");
    }
    name
}

/// One entry of a mount table (/proc/mounts format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry<'a> {
    pub device: Cow<'a, str>,
    pub mount_point: Cow<'a, str>,
    pub fs_type: &'a str,
    pub read_only: bool,
}

/// Parses a mount table, undoing the kernel's octal escapes (`\040` for a space).
pub fn parse_mounts(text: &str) -> Parsed<Vec<MountEntry<'_>>> {
    let mut value = Vec::new();
    let mut bad_lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(device), Some(mount_point), Some(fs_type), Some(options)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            if !line.trim().is_empty() {
                bad_lines.push(bad(i + 1, format!("fewer than 4 fields in {line:?}")));
            }
            continue;
        };
        value.push(MountEntry {
            device: unescape_octal(device),
            mount_point: unescape_octal(mount_point),
            fs_type,
            read_only: options.split(',').any(|o| o == "ro"),
        });
    }
    Parsed { value, bad_lines }
}

/// Undoes the `\ooo` escapes the kernel writes for space, tab, newline and backslash.
pub fn unescape_octal(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Keeps one entry per mount point, the last one listed: a later mount hides an
/// earlier one on the same path, so that is what statvfs will see. Order follows
/// first appearance.
pub fn dedup_mounts(mounts: Vec<MountEntry<'_>>) -> Vec<MountEntry<'_>> {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(mounts.len());
    let mut out: Vec<MountEntry<'_>> = Vec::with_capacity(mounts.len());
    for m in mounts {
        match index.get(m.mount_point.as_ref()) {
            Some(&i) => out[i] = m,
            None => {
                index.insert(m.mount_point.to_string(), out.len());
                out.push(m);
            }
        }
    }
    out
}

/// One /proc/diskstats line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskStats<'a> {
    pub device: &'a str,
    pub major: u32,
    pub minor: u32,
    pub reads_completed: u64,
    pub reads_merged: u64,
    pub sectors_read: u64,
    pub read_time_ms: u64,
    pub writes_completed: u64,
    pub writes_merged: u64,
    pub sectors_written: u64,
    pub write_time_ms: u64,
    pub io_in_progress: u64,
    pub io_time_ms: u64,
    pub weighted_io_time_ms: u64,
    /// Linux ≥ 4.18.
    pub discards: Option<DiscardStats>,
    /// Linux ≥ 5.5.
    pub flushes: Option<FlushStats>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscardStats {
    pub completed: u64,
    pub merged: u64,
    pub sectors: u64,
    pub time_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlushStats {
    pub completed: u64,
    pub time_ms: u64,
}

/// Parses /proc/diskstats (11, 15 or 17 counters after `major minor name`).
pub fn parse_diskstats(text: &str) -> Parsed<Vec<DiskStats<'_>>> {
    let mut value = Vec::new();
    let mut bad_lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_diskstats_line(line) {
            Ok(d) => value.push(d),
            Err(reason) => bad_lines.push(bad(i + 1, reason)),
        }
    }
    Parsed { value, bad_lines }
}

fn parse_diskstats_line(line: &str) -> Result<DiskStats<'_>, String> {
    let mut fields = line.split_ascii_whitespace();
    let (Some(major), Some(minor), Some(device)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("fewer than 3 fields in {line:?}"));
    };
    let major = major
        .parse::<u32>()
        .map_err(|_| format!("{device}: bad major {major:?}"))?;
    let minor = minor
        .parse::<u32>()
        .map_err(|_| format!("{device}: bad minor {minor:?}"))?;
    let mut c = [0u64; 17];
    let mut n = 0;
    for field in fields.take(c.len()) {
        c[n] = parse_u64(field).map_err(|e| format!("{device}: {e}"))?;
        n += 1;
    }
    if n < 11 {
        return Err(format!("{device}: only {n} counters, expected at least 11"));
    }
    Ok(DiskStats {
        device,
        major,
        minor,
        reads_completed: c[0],
        reads_merged: c[1],
        sectors_read: c[2],
        read_time_ms: c[3],
        writes_completed: c[4],
        writes_merged: c[5],
        sectors_written: c[6],
        write_time_ms: c[7],
        io_in_progress: c[8],
        io_time_ms: c[9],
        weighted_io_time_ms: c[10],
        discards: (n >= 15).then_some(DiscardStats {
            completed: c[11],
            merged: c[12],
            sectors: c[13],
            time_ms: c[14],
        }),
        flushes: (n >= 17).then_some(FlushStats {
            completed: c[15],
            time_ms: c[16],
        }),
    })
}

/// The receive columns of /proc/net/dev, in file order; these are also the metric
/// name parts (`node_network_receive_<name>_total`).
pub const NET_RECEIVE_COLUMNS: [&str; 8] = [
    "bytes",
    "packets",
    "errs",
    "drop",
    "fifo",
    "frame",
    "compressed",
    "multicast",
];
/// The transmit columns of /proc/net/dev, in file order.
pub const NET_TRANSMIT_COLUMNS: [&str; 8] = [
    "bytes",
    "packets",
    "errs",
    "drop",
    "fifo",
    "colls",
    "carrier",
    "compressed",
];

/// One interface's counters from /proc/net/dev, indexed as the `*_COLUMNS` constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetDevStats<'a> {
    pub device: &'a str,
    pub receive: [u64; 8],
    pub transmit: [u64; 8],
}

/// Parses /proc/net/dev (two header lines, then `name: 16 counters`; a large byte
/// count may touch the colon).
pub fn parse_net_dev(text: &str) -> Parsed<Vec<NetDevStats<'_>>> {
    let mut value = Vec::new();
    let mut bad_lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.contains('|') || line.trim().is_empty() {
            continue;
        }
        match parse_net_dev_line(line) {
            Ok(s) => value.push(s),
            Err(reason) => bad_lines.push(bad(i + 1, reason)),
        }
    }
    Parsed { value, bad_lines }
}

fn parse_net_dev_line(line: &str) -> Result<NetDevStats<'_>, String> {
    // Interface names cannot contain ':', so the first one ends the name.
    let (device, rest) = line
        .split_once(':')
        .ok_or_else(|| format!("no ':' in {line:?}"))?;
    let device = device.trim();
    if device.is_empty() {
        return Err("empty interface name".to_string());
    }
    let mut c = [0u64; 16];
    let mut n = 0;
    for field in rest.split_ascii_whitespace() {
        if n == c.len() {
            return Err(format!("{device}: more than 16 counters"));
        }
        c[n] = parse_u64(field).map_err(|e| format!("{device}: {e}"))?;
        n += 1;
    }
    if n < 16 {
        return Err(format!("{device}: {n} counters, expected 16"));
    }
    let mut receive = [0; 8];
    let mut transmit = [0; 8];
    receive.copy_from_slice(&c[..8]);
    transmit.copy_from_slice(&c[8..]);
    Ok(NetDevStats {
        device,
        receive,
        transmit,
    })
}

/// /proc/sys/fs/file-nr: allocated handles, unused (always 0 since 2.6), maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileNr {
    pub allocated: u64,
    pub maximum: u64,
}

pub fn parse_file_nr(text: &str) -> Result<FileNr, String> {
    let mut fields = text.split_ascii_whitespace();
    let (Some(allocated), Some(_unused), Some(maximum)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("expected 3 fields in {:?}", text.trim()));
    };
    Ok(FileNr {
        allocated: parse_u64(allocated)?,
        maximum: parse_u64(maximum)?,
    })
}

/// A file holding one integer, such as /proc/sys/kernel/random/entropy_avail.
pub fn parse_single_u64(text: &str) -> Result<u64, String> {
    parse_u64(text.trim())
}

/// The /proc/vmstat fields node_exporter reports by default:
/// `^(oom_kill|pgpg|pswp|pg.*fault).*`.
pub fn is_default_vmstat_field(name: &str) -> bool {
    name.starts_with("oom_kill")
        || name.starts_with("pgpg")
        || name.starts_with("pswp")
        || name.strip_prefix("pg").is_some_and(|r| r.contains("fault"))
}

/// Parses the /proc/vmstat lines whose name passes `keep` (the others are not even
/// converted, since the file has some 180 lines and few are wanted).
pub fn parse_vmstat(text: &str, keep: impl Fn(&str) -> bool) -> Parsed<Vec<(&str, i64)>> {
    let mut value = Vec::new();
    let mut bad_lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let Some(name) = fields.next() else { continue };
        if !keep(name) {
            continue;
        }
        match (fields.next().map(str::parse::<i64>), fields.next()) {
            (Some(Ok(v)), None) => value.push((name, v)),
            _ => bad_lines.push(bad(i + 1, format!("malformed line {line:?}"))),
        }
    }
    Parsed { value, bad_lines }
}

// ---------------------------------------------------------------------------------
// Emitters: typed values to node_exporter-named metrics
// ---------------------------------------------------------------------------------

const CPU_HELP: &str = "Seconds the CPUs spent in each mode.";
const CPU_GUEST_HELP: &str = "Seconds the CPUs spent in guests (VMs) for each mode.";

/// Label values for CPU numbers, kept across ticks so each tick does not format them.
#[derive(Debug, Default)]
struct CpuLabels(Vec<String>);

/// The kernel's largest NR_CPUS; a CPU number above it (a corrupt file) is formatted
/// on the fly instead of growing the cache to its size.
const MAX_CACHED_CPU: u32 = 8192;

impl CpuLabels {
    fn get(&mut self, cpu: u32) -> Cow<'_, str> {
        if cpu >= MAX_CACHED_CPU {
            return Cow::Owned(cpu.to_string());
        }
        let i = cpu as usize;
        while self.0.len() <= i {
            self.0.push(self.0.len().to_string());
        }
        Cow::Borrowed(&self.0[i])
    }
}

fn emit_stat(stat: &ProcStat, user_hz: f64, cpu_labels: &mut CpuLabels, out: &mut Families) {
    for c in &stat.cpus {
        let cpu = cpu_labels.get(c.cpu);
        let cpu = cpu.as_ref();
        let modes = [
            ("user", c.user),
            ("nice", c.nice),
            ("system", c.system),
            ("idle", c.idle),
            ("iowait", c.iowait),
            ("irq", c.irq),
            ("softirq", c.softirq),
            ("steal", c.steal),
        ];
        for (mode, ticks) in modes {
            let labels = [("cpu", cpu), ("mode", mode)];
            out.counter(
                "node_cpu_seconds_total",
                CPU_HELP,
                &labels,
                ticks as f64 / user_hz,
            );
        }
        for (mode, ticks) in [("user", c.guest), ("nice", c.guest_nice)] {
            if let Some(ticks) = ticks {
                let labels = [("cpu", cpu), ("mode", mode)];
                out.counter(
                    "node_cpu_guest_seconds_total",
                    CPU_GUEST_HELP,
                    &labels,
                    ticks as f64 / user_hz,
                );
            }
        }
    }
    let scalars: [(&str, &str, MetricType, Option<u64>); 6] = [
        (
            "node_boot_time_seconds",
            "Node boot time, in unixtime.",
            MetricType::Gauge,
            stat.boot_time,
        ),
        (
            "node_context_switches_total",
            "Total number of context switches.",
            MetricType::Counter,
            stat.context_switches,
        ),
        (
            "node_forks_total",
            "Total number of forks.",
            MetricType::Counter,
            stat.forks,
        ),
        (
            "node_intr_total",
            "Total number of interrupts serviced.",
            MetricType::Counter,
            stat.interrupts,
        ),
        (
            "node_procs_running",
            "Number of processes in runnable state.",
            MetricType::Gauge,
            stat.procs_running,
        ),
        (
            "node_procs_blocked",
            "Number of processes blocked waiting for I/O to complete.",
            MetricType::Gauge,
            stat.procs_blocked,
        ),
    ];
    for (name, help, kind, v) in scalars {
        if let Some(v) = v {
            out.add(name, kind, help, Labels::new(), v as f64);
        }
    }
}

fn emit_loadavg(l: &LoadAvg, out: &mut Families) {
    out.gauge("node_load1", "1m load average.", &[], l.one);
    out.gauge("node_load5", "5m load average.", &[], l.five);
    out.gauge("node_load15", "15m load average.", &[], l.fifteen);
}

/// A metric name with its HELP text and type, derived from a kernel key once and
/// kept, so a steady-state tick does not format them again.
#[derive(Debug)]
struct Named {
    name: String,
    help: String,
    kind: MetricType,
}

/// Names derived from kernel keys; `None` remembers a key that makes no valid name.
/// The `bool` is the input besides the key (meminfo's kB unit) the entry was built for.
type NameCache = HashMap<String, (bool, Option<Named>)>;

fn cached<'c>(
    cache: &'c mut NameCache,
    key: &str,
    flag: bool,
    make: impl FnOnce() -> Option<Named>,
) -> Option<&'c Named> {
    if cache.get(key).is_none_or(|(f, _)| *f != flag) {
        cache.insert(key.to_string(), (flag, make()));
    }
    cache.get(key).and_then(|(_, n)| n.as_ref())
}

fn meminfo_named(key: &str, in_kb: bool) -> Option<Named> {
    let name = meminfo_metric_name(key, in_kb);
    if !is_valid_metric_name(&name) {
        return None;
    }
    let field = &name["node_memory_".len()..];
    Some(Named {
        help: format!("Memory information field {field}."),
        // node_exporter types a `_total` field as a counter and the rest as gauges.
        kind: if field.ends_with("_total") {
            MetricType::Counter
        } else {
            MetricType::Gauge
        },
        name,
    })
}

/// Returns the keys that could not be turned into metric names.
fn emit_meminfo<'a>(
    entries: &[MemInfoEntry<'a>],
    cache: &mut NameCache,
    out: &mut Families,
) -> Vec<&'a str> {
    let mut invalid = Vec::new();
    for e in entries {
        match cached(cache, e.key, e.in_kb, || meminfo_named(e.key, e.in_kb)) {
            Some(m) => out.add(&m.name, m.kind, &m.help, Labels::new(), e.value as f64),
            None => invalid.push(e.key),
        }
    }
    invalid
}

fn vmstat_named(field: &str) -> Option<Named> {
    let name = format!("node_vmstat_{field}");
    is_valid_metric_name(&name).then(|| Named {
        name,
        help: format!("/proc/vmstat information field {field}."),
        // Untyped, as node_exporter exposes them: some fields count, some are levels.
        kind: MetricType::Unknown,
    })
}

fn emit_vmstat(fields: &[(&str, i64)], cache: &mut NameCache, out: &mut Families) {
    for &(field, v) in fields {
        if let Some(m) = cached(cache, field, false, || vmstat_named(field)) {
            out.add(&m.name, m.kind, &m.help, Labels::new(), v as f64);
        }
    }
}

/// What statvfs reported for one mount point, in filesystem blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStats {
    /// The unit of the block counts (`f_frsize`).
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
}

/// One filesystem to report: labels plus statvfs's answer (None if it failed).
#[derive(Debug, Clone, PartialEq)]
struct FsReport<'a> {
    device: &'a str,
    fs_type: &'a str,
    mount_point: &'a str,
    read_only: bool,
    stats: Option<FsStats>,
}

fn emit_filesystem(r: &FsReport<'_>, out: &mut Families) {
    let labels = [
        ("device", r.device),
        ("fstype", r.fs_type),
        ("mountpoint", r.mount_point),
    ];
    out.gauge(
        "node_filesystem_device_error",
        "Whether an error occurred while getting statistics for the given device.",
        &labels,
        if r.stats.is_some() { 0.0 } else { 1.0 },
    );
    out.gauge(
        "node_filesystem_readonly",
        "Filesystem read-only status.",
        &labels,
        if r.read_only { 1.0 } else { 0.0 },
    );
    // Like node_exporter: no size series at all rather than a misleading zero.
    let Some(s) = r.stats else { return };
    let bytes = |blocks: u64| blocks as f64 * s.block_size as f64;
    let values = [
        (
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            bytes(s.blocks),
        ),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            bytes(s.blocks_free),
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            bytes(s.blocks_avail),
        ),
        (
            "node_filesystem_files",
            "Filesystem total file nodes.",
            s.files as f64,
        ),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            s.files_free as f64,
        ),
    ];
    for (name, help, v) in values {
        out.gauge(name, help, &labels, v);
    }
}

const SECTOR_BYTES: f64 = 512.0;

fn emit_disk(d: &DiskStats<'_>, out: &mut Families) {
    let labels = [("device", d.device)];
    let secs = |ms: u64| ms as f64 / 1000.0;
    let counters = [
        (
            "node_disk_reads_completed_total",
            "The total number of reads completed successfully.",
            d.reads_completed as f64,
        ),
        (
            "node_disk_reads_merged_total",
            "The total number of reads merged.",
            d.reads_merged as f64,
        ),
        (
            "node_disk_read_bytes_total",
            "The total number of bytes read successfully.",
            d.sectors_read as f64 * SECTOR_BYTES,
        ),
        (
            "node_disk_read_time_seconds_total",
            "The total number of seconds spent by all reads.",
            secs(d.read_time_ms),
        ),
        (
            "node_disk_writes_completed_total",
            "The total number of writes completed successfully.",
            d.writes_completed as f64,
        ),
        (
            "node_disk_writes_merged_total",
            "The number of writes merged.",
            d.writes_merged as f64,
        ),
        (
            "node_disk_written_bytes_total",
            "The total number of bytes written successfully.",
            d.sectors_written as f64 * SECTOR_BYTES,
        ),
        (
            "node_disk_write_time_seconds_total",
            "This is the total number of seconds spent by all writes.",
            secs(d.write_time_ms),
        ),
        (
            "node_disk_io_time_seconds_total",
            "Total seconds spent doing I/Os.",
            secs(d.io_time_ms),
        ),
        (
            "node_disk_io_time_weighted_seconds_total",
            "The weighted # of seconds spent doing I/Os.",
            secs(d.weighted_io_time_ms),
        ),
    ];
    for (name, help, v) in counters {
        out.counter(name, help, &labels, v);
    }
    out.gauge(
        "node_disk_io_now",
        "The number of I/Os currently in progress.",
        &labels,
        d.io_in_progress as f64,
    );
    if let Some(x) = d.discards {
        let counters = [
            (
                "node_disk_discards_completed_total",
                "The total number of discards completed successfully.",
                x.completed as f64,
            ),
            (
                "node_disk_discards_merged_total",
                "The total number of discards merged.",
                x.merged as f64,
            ),
            // Sectors, not bytes: node_exporter reports this one raw.
            (
                "node_disk_discarded_sectors_total",
                "The total number of sectors discarded successfully.",
                x.sectors as f64,
            ),
            (
                "node_disk_discard_time_seconds_total",
                "This is the total number of seconds spent by all discards.",
                secs(x.time_ms),
            ),
        ];
        for (name, help, v) in counters {
            out.counter(name, help, &labels, v);
        }
    }
    if let Some(f) = d.flushes {
        out.counter(
            "node_disk_flush_requests_total",
            "The total number of flush requests completed successfully",
            &labels,
            f.completed as f64,
        );
        out.counter(
            "node_disk_flush_requests_time_seconds_total",
            "This is the total number of seconds spent by all flush requests.",
            &labels,
            secs(f.time_ms),
        );
    }
}

/// Names and HELP texts of the 16 network counters, built once.
#[derive(Debug)]
struct NetNames {
    receive: Vec<(String, String)>,
    transmit: Vec<(String, String)>,
}

impl NetNames {
    fn new() -> Self {
        let build = |dir: &str, cols: &[&str]| {
            cols.iter()
                .map(|c| {
                    (
                        format!("node_network_{dir}_{c}_total"),
                        format!("Network device statistic {dir}_{c}."),
                    )
                })
                .collect()
        };
        NetNames {
            receive: build("receive", &NET_RECEIVE_COLUMNS),
            transmit: build("transmit", &NET_TRANSMIT_COLUMNS),
        }
    }
}

fn emit_net_dev(s: &NetDevStats<'_>, names: &NetNames, out: &mut Families) {
    let labels = [("device", s.device)];
    for ((name, help), v) in names.receive.iter().zip(s.receive) {
        out.counter(name, help, &labels, v as f64);
    }
    for ((name, help), v) in names.transmit.iter().zip(s.transmit) {
        out.counter(name, help, &labels, v as f64);
    }
}

/// The fields of `node_uname_info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uname {
    pub sysname: String,
    pub release: String,
    pub version: String,
    pub machine: String,
    pub nodename: String,
    pub domainname: String,
}

fn emit_uname(u: &Uname, out: &mut Families) {
    out.add(
        "node_uname_info",
        MetricType::Info,
        "Labeled system information as provided by the uname system call.",
        Labels::from_pairs([
            ("sysname", u.sysname.as_str()),
            ("release", u.release.as_str()),
            ("version", u.version.as_str()),
            ("machine", u.machine.as_str()),
            ("nodename", u.nodename.as_str()),
            ("domainname", u.domainname.as_str()),
        ]),
        1.0,
    );
}

// ---------------------------------------------------------------------------------
// statvfs with a timeout
// ---------------------------------------------------------------------------------

type StatFsFn = Arc<dyn Fn(&Path) -> io::Result<FsStats> + Send + Sync>;

/// statvfs(3) on `path`.
pub fn statvfs(path: &Path) -> io::Result<FsStats> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let mut buf = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `buf` points to writable
    // memory the size of `struct statvfs`, which the call fills on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct (and it was
    // zeroed before anyway, and every field is a plain integer).
    let s = unsafe { buf.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field widths differ between libc targets
    let block_size = if s.f_frsize > 0 {
        s.f_frsize as u64
    } else {
        s.f_bsize as u64
    };
    #[allow(clippy::unnecessary_cast)]
    Ok(FsStats {
        block_size,
        blocks: s.f_blocks as u64,
        blocks_free: s.f_bfree as u64,
        blocks_avail: s.f_bavail as u64,
        files: s.f_files as u64,
        files_free: s.f_ffree as u64,
    })
}

/// The answer for one path from [`StatFsRunner::stat_all`].
#[derive(Debug)]
enum StatOutcome {
    Done(io::Result<FsStats>),
    /// Did not answer in time this collection; now marked stuck.
    TimedOut,
    /// An earlier call on this path has still not returned.
    StillStuck,
}

struct StatFsWorker {
    requests: mpsc::Sender<PathBuf>,
    replies: mpsc::Receiver<io::Result<FsStats>>,
}

/// Runs statvfs calls on a helper thread so a hung mount cannot hang the collector.
///
/// The worker answers requests in order. When one does not answer in time, its path
/// goes into `stuck` and the worker is abandoned (a fresh one serves the remaining
/// paths). The abandoned thread, once its call finally returns, removes the path from
/// `stuck` under the same lock the collector uses to decide "stuck", then finds its
/// reply channel closed and exits. So a stuck path is never stat'ed twice at once and
/// is retried as soon as the kernel lets go.
struct StatFsRunner {
    stat: StatFsFn,
    timeout: Duration,
    worker: Option<StatFsWorker>,
    stuck: Arc<Mutex<HashSet<PathBuf>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data (a set of paths) stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StatFsRunner {
    fn new(stat: StatFsFn, timeout: Duration) -> Self {
        StatFsRunner {
            stat,
            timeout,
            worker: None,
            stuck: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    fn spawn_worker(&self) -> io::Result<StatFsWorker> {
        let (req_tx, req_rx) = mpsc::channel::<PathBuf>();
        let (rep_tx, rep_rx) = mpsc::channel();
        let stat = Arc::clone(&self.stat);
        let stuck = Arc::clone(&self.stuck);
        std::thread::Builder::new()
            .name("argus-statfs".to_string())
            .stack_size(128 * 1024)
            .spawn(move || {
                for path in req_rx {
                    let result = stat(&path);
                    let mut stuck = lock(&stuck);
                    stuck.remove(&path);
                    let sent = rep_tx.send(result);
                    drop(stuck);
                    if sent.is_err() {
                        break; // abandoned after a timeout
                    }
                }
            })?;
        Ok(StatFsWorker {
            requests: req_tx,
            replies: rep_rx,
        })
    }

    /// Stats every path, in order; the answer vector is parallel to `paths`.
    fn stat_all(&mut self, paths: &[PathBuf]) -> Vec<StatOutcome> {
        let mut outcomes: Vec<Option<StatOutcome>> = {
            let stuck = lock(&self.stuck);
            paths
                .iter()
                .map(|p| stuck.contains(p).then_some(StatOutcome::StillStuck))
                .collect()
        };
        let mut next = 0;
        while let Some(start) = (next..paths.len()).find(|&i| outcomes[i].is_none()) {
            next = self.run_batch(paths, &mut outcomes, start);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(StatOutcome::StillStuck))
            .collect()
    }

    /// Sends every pending path from `start` to one worker and collects the replies,
    /// stopping at the first timeout. Returns the index to continue from.
    fn run_batch(
        &mut self,
        paths: &[PathBuf],
        outcomes: &mut [Option<StatOutcome>],
        start: usize,
    ) -> usize {
        let worker = match self.worker.take() {
            Some(w) => w,
            None => match self.spawn_worker() {
                Ok(w) => w,
                Err(e) => {
                    let reason = format!("cannot start the statfs thread: {e}");
                    for o in outcomes[start..].iter_mut().filter(|o| o.is_none()) {
                        *o = Some(StatOutcome::Done(Err(io::Error::other(reason.clone()))));
                    }
                    return paths.len();
                }
            },
        };
        let pending: Vec<usize> = (start..paths.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        for &i in &pending {
            if worker.requests.send(paths[i].clone()).is_err() {
                break; // the worker is gone; the receive below reports it
            }
        }
        for &i in &pending {
            match worker.replies.recv_timeout(self.timeout) {
                Ok(r) => outcomes[i] = Some(StatOutcome::Done(r)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let mut stuck = lock(&self.stuck);
                    // The reply may have landed between the timeout and the lock.
                    if let Ok(r) = worker.replies.try_recv() {
                        outcomes[i] = Some(StatOutcome::Done(r));
                        continue;
                    }
                    stuck.insert(paths[i].clone());
                    outcomes[i] = Some(StatOutcome::TimedOut);
                    return i + 1; // `worker` is dropped: abandoned
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    outcomes[i] = Some(StatOutcome::Done(Err(io::Error::other(
                        "statfs thread exited",
                    ))));
                    return i + 1;
                }
            }
        }
        self.worker = Some(worker);
        paths.len()
    }

    #[cfg(test)]
    fn is_stuck(&self, path: &Path) -> bool {
        lock(&self.stuck).contains(path)
    }
}

// ---------------------------------------------------------------------------------
// The collector: file reads with reused buffers
// ---------------------------------------------------------------------------------

/// Paths under proc_root, joined once rather than every tick.
#[derive(Debug)]
struct ProcPaths {
    stat: PathBuf,
    loadavg: PathBuf,
    meminfo: PathBuf,
    vmstat: PathBuf,
    diskstats: PathBuf,
    mounts: [PathBuf; 2],
    net_dev: [PathBuf; 2],
    ostype: PathBuf,
    osrelease: PathBuf,
    version: PathBuf,
    arch: PathBuf,
    hostname: PathBuf,
    domainname: PathBuf,
    entropy_avail: PathBuf,
    entropy_pool: PathBuf,
    file_nr: PathBuf,
}

impl ProcPaths {
    fn new(proc_root: &Path) -> Self {
        let p = |rel: &str| proc_root.join(rel);
        ProcPaths {
            stat: p("stat"),
            loadavg: p("loadavg"),
            meminfo: p("meminfo"),
            vmstat: p("vmstat"),
            diskstats: p("diskstats"),
            mounts: [p("1/mounts"), p("mounts")],
            net_dev: [p("1/net/dev"), p("net/dev")],
            ostype: p("sys/kernel/ostype"),
            osrelease: p("sys/kernel/osrelease"),
            version: p("sys/kernel/version"),
            arch: p("sys/kernel/arch"),
            hostname: p("sys/kernel/hostname"),
            domainname: p("sys/kernel/domainname"),
            entropy_avail: p("sys/kernel/random/entropy_avail"),
            entropy_pool: p("sys/kernel/random/poolsize"),
            file_nr: p("sys/fs/file-nr"),
        }
    }
}

/// Kernel-wide uname fields: fixed until reboot, so read once.
#[derive(Debug, Clone)]
struct KernelIdentity {
    sysname: String,
    release: String,
    version: String,
    machine: String,
}

/// Reads host metrics from /proc and /sys. Keep one per agent: it holds buffers,
/// caches and the statvfs helper thread across collections.
pub struct HostCollector {
    cfg: HostConfig,
    paths: ProcPaths,
    user_hz: f64,
    buf: Vec<u8>,
    /// Second buffer, for the per-device sysfs reads done while `buf` holds net/dev.
    small_buf: Vec<u8>,
    cpu_labels: CpuLabels,
    mem_names: NameCache,
    vmstat_names: NameCache,
    net_names: NetNames,
    kernel: Option<KernelIdentity>,
    statfs: StatFsRunner,
}

impl std::fmt::Debug for HostCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCollector")
            .field("cfg", &self.cfg)
            .field("user_hz", &self.user_hz)
            .finish_non_exhaustive()
    }
}

/// Ticks per second of /proc/stat's CPU times.
fn user_hz() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Reads `path` into `buf`. procfs files claim size 0, so this reads to EOF.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> Result<(), CollectError> {
    buf.clear();
    File::open(path)
        .and_then(|mut f| f.read_to_end(buf))
        .map(|_| ())
        .map_err(|source| CollectError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads `path` as text, reporting a failure; invalid UTF-8 is replaced, not fatal.
fn read_text<'b>(
    path: &Path,
    buf: &'b mut Vec<u8>,
    errors: &mut Vec<CollectError>,
) -> Option<Cow<'b, str>> {
    match read_into(path, buf) {
        Ok(()) => Some(String::from_utf8_lossy(buf)),
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

/// Reads the first of `candidates` that can be read; reports only the last failure.
fn read_first<'b>(
    candidates: &[PathBuf],
    buf: &'b mut Vec<u8>,
    errors: &mut Vec<CollectError>,
) -> Option<(&'b str, usize)> {
    let mut last_err = None;
    for (i, path) in candidates.iter().enumerate() {
        match read_into(path, buf) {
            Ok(()) => {
                if std::str::from_utf8(buf).is_err() {
                    let fixed = String::from_utf8_lossy(buf).into_owned();
                    *buf = fixed.into_bytes();
                }
                return std::str::from_utf8(buf).ok().map(|t| (t, i));
            }
            Err(e) => last_err = Some(e),
        }
    }
    errors.extend(last_err);
    None
}

fn report_bad_lines(path: &Path, bad_lines: Vec<BadLine>, errors: &mut Vec<CollectError>) {
    errors.extend(bad_lines.into_iter().map(|b| CollectError::Parse {
        path: path.to_path_buf(),
        reason: format!("line {}: {}", b.line, b.reason),
    }));
}

fn parse_error(path: &Path, reason: String) -> CollectError {
    CollectError::Parse {
        path: path.to_path_buf(),
        reason,
    }
}

/// A mount point as the host sees it: strips `root_fs` when the table lists host
/// paths under it (the fallback table of a containerised agent).
fn host_mount_point<'m>(mount_point: &'m str, root_fs: &Path) -> &'m str {
    let Some(root) = root_fs.to_str().map(|r| r.trim_end_matches('/')) else {
        return mount_point;
    };
    if root.is_empty() {
        return mount_point;
    }
    match mount_point.strip_prefix(root) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => mount_point,
    }
}

/// Where to statvfs a host mount point from inside this process's view.
fn stat_path(host_mount_point: &str, root_fs: &Path) -> PathBuf {
    root_fs.join(host_mount_point.trim_start_matches('/'))
}

impl HostCollector {
    pub fn new(cfg: HostConfig) -> Self {
        Self::with_statfs(cfg, Arc::new(statvfs), DEFAULT_STATFS_TIMEOUT)
    }

    /// Sets how long a statvfs may block before its mount is treated as stuck.
    pub fn with_statfs_timeout(mut self, timeout: Duration) -> Self {
        self.statfs.timeout = timeout;
        self
    }

    fn with_statfs(cfg: HostConfig, stat: StatFsFn, timeout: Duration) -> Self {
        HostCollector {
            paths: ProcPaths::new(&cfg.proc_root),
            cfg,
            user_hz: user_hz(),
            buf: Vec::with_capacity(16 * 1024),
            small_buf: Vec::with_capacity(64),
            cpu_labels: CpuLabels::default(),
            mem_names: NameCache::new(),
            vmstat_names: NameCache::new(),
            net_names: NetNames::new(),
            kernel: None,
            statfs: StatFsRunner::new(stat, timeout),
        }
    }

    /// Fills `out` with every host metric it can read; pushes what it could not read onto `errors` and carries on.
    pub fn collect(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        self.collect_stat(out, errors);
        self.collect_loadavg(out, errors);
        self.collect_meminfo(out, errors);
        self.collect_vmstat(out, errors);
        self.collect_filesystems(out, errors);
        self.collect_diskstats(out, errors);
        self.collect_net_dev(out, errors);
        self.collect_uname(out, errors);
        self.collect_entropy(out, errors);
        self.collect_file_nr(out, errors);
    }

    fn collect_stat(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        let path = &self.paths.stat;
        let Some(text) = read_text(path, &mut self.buf, errors) else {
            return;
        };
        let parsed = parse_stat(&text);
        report_bad_lines(path, parsed.bad_lines, errors);
        emit_stat(&parsed.value, self.user_hz, &mut self.cpu_labels, out);
    }

    fn collect_loadavg(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        let path = &self.paths.loadavg;
        let Some(text) = read_text(path, &mut self.buf, errors) else {
            return;
        };
        match parse_loadavg(&text) {
            Ok(l) => emit_loadavg(&l, out),
            Err(reason) => errors.push(parse_error(path, reason)),
        }
    }

    fn collect_meminfo(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        let path = &self.paths.meminfo;
        let Some(text) = read_text(path, &mut self.buf, errors) else {
            return;
        };
        let parsed = parse_meminfo(&text);
        report_bad_lines(path, parsed.bad_lines, errors);
        for key in emit_meminfo(&parsed.value, &mut self.mem_names, out) {
            errors.push(parse_error(
                path,
                format!("{key:?} does not make a valid metric name"),
            ));
        }
    }

    fn collect_vmstat(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        let path = &self.paths.vmstat;
        let Some(text) = read_text(path, &mut self.buf, errors) else {
            return;
        };
        let parsed = parse_vmstat(&text, is_default_vmstat_field);
        report_bad_lines(path, parsed.bad_lines, errors);
        emit_vmstat(&parsed.value, &mut self.vmstat_names, out);
    }

    fn collect_filesystems(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        let Some((text, which)) = read_first(&self.paths.mounts, &mut self.buf, errors) else {
            return;
        };
        let parsed = parse_mounts(text);
        report_bad_lines(&self.paths.mounts[which], parsed.bad_lines, errors);
        let root_fs = &self.cfg.root_fs;
        let mounts: Vec<MountEntry<'_>> = dedup_mounts(parsed.value)
            .into_iter()
            .filter(|m| {
                !matches_any(&self.cfg.fs_types_exclude, m.fs_type)
                    && !matches_any(
                        &self.cfg.mount_points_exclude,
                        host_mount_point(&m.mount_point, root_fs),
                    )
            })
            .collect();
        let stat_paths: Vec<PathBuf> = mounts
            .iter()
            .map(|m| stat_path(host_mount_point(&m.mount_point, root_fs), root_fs))
            .collect();
        let outcomes = self.statfs.stat_all(&stat_paths);
        for ((m, outcome), stat_path) in mounts.iter().zip(outcomes).zip(&stat_paths) {
            let stats = match outcome {
                StatOutcome::Done(Ok(s)) => Some(s),
                StatOutcome::Done(Err(e)) => {
                    tracing::debug!(path = %stat_path.display(), error = %e, "statvfs failed");
                    None
                }
                StatOutcome::TimedOut => {
                    tracing::warn!(path = %stat_path.display(), "statvfs did not return; mount marked stuck");
                    errors.push(CollectError::Read {
                        path: stat_path.clone(),
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            "statvfs did not return in time; skipping this mount until it does",
                        ),
                    });
                    None
                }
                StatOutcome::StillStuck => None,
            };
            emit_filesystem(
                &FsReport {
                    device: &m.device,
                    fs_type: m.fs_type,
                    mount_point: host_mount_point(&m.mount_point, root_fs),
                    read_only: m.read_only,
                    stats,
                },
                out,
            );
        }
    }

    fn collect_diskstats(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        let path = &self.paths.diskstats;
        let Some(text) = read_text(path, &mut self.buf, errors) else {
            return;
        };
        let parsed = parse_diskstats(&text);
        report_bad_lines(path, parsed.bad_lines, errors);
        for d in &parsed.value {
            if !disk_excluded(&self.cfg.disk_devices_exclude, d.device) {
                emit_disk(d, out);
            }
        }
    }

    fn collect_net_dev(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        let Some((text, which)) = read_first(&self.paths.net_dev, &mut self.buf, errors) else {
            return;
        };
        let parsed = parse_net_dev(text);
        report_bad_lines(&self.paths.net_dev[which], parsed.bad_lines, errors);
        for s in &parsed.value {
            if matches_any(&self.cfg.net_devices_exclude, s.device) {
                continue;
            }
            emit_net_dev(s, &self.net_names, out);
            emit_network_up(
                &self.cfg.sys_root,
                s.device,
                &mut self.small_buf,
                out,
                errors,
            );
        }
    }

    fn collect_uname(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        if self.kernel.is_none() {
            self.kernel = read_kernel_identity(&self.paths, &mut self.buf, errors);
        }
        let Some(kernel) = &self.kernel else { return };
        let nodename = read_trimmed(&self.paths.hostname, &mut self.buf, errors);
        let domainname = read_trimmed(&self.paths.domainname, &mut self.buf, errors);
        let (Some(nodename), Some(domainname)) = (nodename, domainname) else {
            return;
        };
        emit_uname(
            &Uname {
                sysname: kernel.sysname.clone(),
                release: kernel.release.clone(),
                version: kernel.version.clone(),
                machine: kernel.machine.clone(),
                nodename,
                domainname,
            },
            out,
        );
    }

    fn collect_entropy(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        let metrics = [
            (
                &self.paths.entropy_avail,
                "node_entropy_available_bits",
                "Bits of available entropy.",
            ),
            (
                &self.paths.entropy_pool,
                "node_entropy_pool_size_bits",
                "Bits of entropy pool.",
            ),
        ];
        for (path, name, help) in metrics {
            let Some(text) = read_text(path, &mut self.buf, errors) else {
                continue;
            };
            match parse_single_u64(&text) {
                Ok(v) => out.gauge(name, help, &[], v as f64),
                Err(reason) => errors.push(parse_error(path, reason)),
            }
        }
    }

    fn collect_file_nr(&mut self, out: &mut Families, errors: &mut Vec<CollectError>) {
        let path = &self.paths.file_nr;
        let Some(text) = read_text(path, &mut self.buf, errors) else {
            return;
        };
        match parse_file_nr(&text) {
            Ok(f) => {
                out.gauge(
                    "node_filefd_allocated",
                    "File descriptor statistics: allocated.",
                    &[],
                    f.allocated as f64,
                );
                out.gauge(
                    "node_filefd_maximum",
                    "File descriptor statistics: maximum.",
                    &[],
                    f.maximum as f64,
                );
            }
            Err(reason) => errors.push(parse_error(path, reason)),
        }
    }
}

/// `node_network_up` from sysfs. A device that vanished since net/dev was read is
/// skipped quietly; any other failure is reported.
fn emit_network_up(
    sys_root: &Path,
    device: &str,
    buf: &mut Vec<u8>,
    out: &mut Families,
    errors: &mut Vec<CollectError>,
) {
    let path = sys_root.join("class/net").join(device).join("operstate");
    match read_into(&path, buf) {
        Ok(()) => out.gauge(
            "node_network_up",
            "Value is 1 if operstate is 'up', 0 otherwise.",
            &[("device", device)],
            if buf.trim_ascii() == b"up" { 1.0 } else { 0.0 },
        ),
        Err(CollectError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(e),
    }
}

fn read_trimmed(path: &Path, buf: &mut Vec<u8>, errors: &mut Vec<CollectError>) -> Option<String> {
    read_text(path, buf, errors).map(|t| t.trim().to_string())
}

/// Reads the kernel-wide uname fields; `None` (after reporting) if any is missing.
fn read_kernel_identity(
    paths: &ProcPaths,
    buf: &mut Vec<u8>,
    errors: &mut Vec<CollectError>,
) -> Option<KernelIdentity> {
    let sysname = read_trimmed(&paths.ostype, buf, errors);
    let release = read_trimmed(&paths.osrelease, buf, errors);
    let version = read_trimmed(&paths.version, buf, errors);
    let machine = match read_into(&paths.arch, buf) {
        Ok(()) => Some(String::from_utf8_lossy(buf.trim_ascii()).into_owned()),
        Err(_) => uname_machine(),
    };
    if machine.is_none() {
        errors.push(parse_error(
            &paths.arch,
            "unreadable, and uname(2) failed".to_string(),
        ));
    }
    Some(KernelIdentity {
        sysname: sysname?,
        release: release?,
        version: version?,
        machine: machine?,
    })
}

/// The machine field of uname(2): the running kernel's architecture, the same inside
/// a container as on the host.
fn uname_machine() -> Option<String> {
    let mut u = std::mem::MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: `u` points to writable memory the size of `struct utsname`.
    if unsafe { libc::uname(u.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: uname returned 0, so the struct is filled (and was zeroed before).
    let u = unsafe { u.assume_init() };
    let bytes: Vec<u8> = u
        .machine
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn value(out: &Families, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want = Labels::from_pairs(labels.iter().copied());
        out.get(name)?
            .points
            .iter()
            .find(|(l, _)| *l == want)
            .map(|(_, v)| *v)
    }

    fn series_count(out: &Families, name: &str) -> usize {
        out.get(name).map_or(0, |f| f.points.len())
    }

    // ----- patterns -----

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        assert!(matches_pattern("lo", "lo"));
        assert!(!matches_pattern("lo", "lo0"));
        assert!(matches_pattern("veth*", "veth12ab"));
        assert!(!matches_pattern("veth*", "eth0"));
        assert!(matches_pattern("*", "anything"));
    }

    #[test]
    fn default_disk_exclusions_follow_node_exporter() {
        let ex = HostConfig::default().disk_devices_exclude;
        for skipped in [
            "ram0",
            "loop7",
            "fd0",
            "sda1",
            "sdab12",
            "vda1",
            "hdc3",
            "xvda1",
            "nvme0n1p1",
            "nvme10n2p15",
        ] {
            assert!(disk_excluded(&ex, skipped), "{skipped} should be skipped");
        }
        for kept in [
            "sda", "vda", "xvdb", "nvme0n1", "zram0", "dm-0", "md0", "mmcblk0", "sr0",
        ] {
            assert!(!disk_excluded(&ex, kept), "{kept} should be kept");
        }
    }

    #[test]
    fn partition_rule_applies_only_when_listed() {
        assert!(!disk_excluded(&["loop*".to_string()], "sda1"));
        assert!(disk_excluded(&[PARTITIONS_PATTERN.to_string()], "sda1"));
        assert!(!is_partition_name("sd1"));
        assert!(!is_partition_name("nvme0n1"));
        assert!(!is_partition_name("nvmen1p1"));
    }

    #[test]
    fn default_mount_point_exclusions_keep_var_lib_docker_itself() {
        let ex = HostConfig::default().mount_points_exclude;
        for skipped in [
            "/dev",
            "/dev/shm",
            "/proc",
            "/sys/fs/cgroup",
            "/run/credentials/getty.service",
            "/var/lib/docker/overlay2/abc/merged",
            "/var/lib/containers/storage/overlay",
        ] {
            assert!(matches_any(&ex, skipped), "{skipped} should be skipped");
        }
        for kept in [
            "/",
            "/home",
            "/var/lib/docker",
            "/run",
            "/devices",
            "/boot/efi",
        ] {
            assert!(!matches_any(&ex, kept), "{kept} should be kept");
        }
    }

    // ----- /proc/stat -----

    const STAT: &str = "\
cpu  32530 10 2701 25647 330 0 78 30 0 0
cpu0 16200 4 1350 12800 160 0 40 15 7 1
cpu1 16330 6 1351 12847 170 2 38 15 0 0
intr 181332 0 9 0 0 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 338767
btime 1795290195
processes 8954
procs_running 4
procs_blocked 1
softirq 129875 0 15119 4 8687 34969 0 122 33931 0 37043
";

    #[test]
    fn stat_is_parsed() {
        let p = parse_stat(STAT);
        assert!(p.bad_lines.is_empty(), "{:?}", p.bad_lines);
        let s = p.value;
        assert_eq!(s.cpus.len(), 2);
        assert_eq!(
            s.cpus[0],
            CpuTicks {
                cpu: 0,
                user: 16200,
                nice: 4,
                system: 1350,
                idle: 12800,
                iowait: 160,
                irq: 0,
                softirq: 40,
                steal: 15,
                guest: Some(7),
                guest_nice: Some(1),
            }
        );
        assert_eq!(s.boot_time, Some(1795290195));
        assert_eq!(s.context_switches, Some(338767));
        assert_eq!(s.forks, Some(8954));
        assert_eq!(s.procs_running, Some(4));
        assert_eq!(s.procs_blocked, Some(1));
        assert_eq!(s.interrupts, Some(181332));
    }

    #[test]
    fn stat_emits_every_mode_in_seconds() {
        let mut out = Families::new();
        emit_stat(
            &parse_stat(STAT).value,
            100.0,
            &mut CpuLabels::default(),
            &mut out,
        );
        assert_eq!(series_count(&out, "node_cpu_seconds_total"), 16);
        let cpu = |c, m| value(&out, "node_cpu_seconds_total", &[("cpu", c), ("mode", m)]);
        assert_eq!(cpu("0", "user"), Some(162.0));
        assert_eq!(cpu("1", "idle"), Some(128.47));
        assert_eq!(cpu("1", "irq"), Some(0.02));
        assert_eq!(cpu("0", "steal"), Some(0.15));
        let guest = |c, m| {
            value(
                &out,
                "node_cpu_guest_seconds_total",
                &[("cpu", c), ("mode", m)],
            )
        };
        assert_eq!(guest("0", "user"), Some(0.07));
        assert_eq!(guest("0", "nice"), Some(0.01));
        let f = out.get("node_cpu_seconds_total").map(|f| f.kind);
        assert_eq!(f, Some(MetricType::Counter));
        assert_eq!(
            value(&out, "node_boot_time_seconds", &[]),
            Some(1795290195.0)
        );
        assert_eq!(
            value(&out, "node_context_switches_total", &[]),
            Some(338767.0)
        );
        assert_eq!(value(&out, "node_forks_total", &[]), Some(8954.0));
        assert_eq!(value(&out, "node_intr_total", &[]), Some(181332.0));
        assert_eq!(value(&out, "node_procs_running", &[]), Some(4.0));
        assert_eq!(value(&out, "node_procs_blocked", &[]), Some(1.0));
        assert_eq!(
            out.get("node_procs_running").map(|f| f.kind),
            Some(MetricType::Gauge)
        );
    }

    #[test]
    fn an_absurd_cpu_number_is_labelled_without_growing_the_cache() {
        let p = parse_stat("cpu4000000000 1 2 3 4 5 6 7 8\n");
        let mut labels = CpuLabels::default();
        let mut out = Families::new();
        emit_stat(&p.value, 100.0, &mut labels, &mut out);
        let user = [("cpu", "4000000000"), ("mode", "user")];
        assert_eq!(value(&out, "node_cpu_seconds_total", &user), Some(0.01));
        assert!(labels.0.is_empty());
    }

    #[test]
    fn old_kernel_cpu_lines_without_steal_or_guest_count_as_zero() {
        let p = parse_stat("cpu0 10 0 5 100 1 0 0\n");
        assert!(p.bad_lines.is_empty());
        let c = p.value.cpus[0];
        assert_eq!(
            (c.user, c.steal, c.guest, c.guest_nice),
            (10, 0, None, None)
        );
        let mut out = Families::new();
        emit_stat(&p.value, 100.0, &mut CpuLabels::default(), &mut out);
        assert_eq!(series_count(&out, "node_cpu_seconds_total"), 8);
        assert!(out.get("node_cpu_guest_seconds_total").is_none());
    }

    #[test]
    fn malformed_stat_lines_are_skipped_and_reported() {
        let p = parse_stat(
            "cpu0 1 2 x 4\ncpuX 1 2 3 4\ncpu1 1 2\nctxt\nbtime -5\ncpu2 1 2 3 4\nprocesses 7\n",
        );
        assert_eq!(p.value.cpus.len(), 1);
        assert_eq!(p.value.cpus[0].cpu, 2);
        assert_eq!(p.value.forks, Some(7));
        assert_eq!(p.value.context_switches, None);
        let lines: Vec<usize> = p.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5]);
    }

    // ----- loadavg -----

    #[test]
    fn loadavg_is_parsed_and_emitted() {
        let l = parse_loadavg("1.36 0.48 0.18 3/250 12345\n").unwrap();
        let mut out = Families::new();
        emit_loadavg(&l, &mut out);
        assert_eq!(value(&out, "node_load1", &[]), Some(1.36));
        assert_eq!(value(&out, "node_load5", &[]), Some(0.48));
        assert_eq!(value(&out, "node_load15", &[]), Some(0.18));
    }

    #[test]
    fn malformed_loadavg_is_an_error() {
        assert!(parse_loadavg("").is_err());
        assert!(parse_loadavg("1.0 0.5").is_err());
        assert!(parse_loadavg("1.0 abc 0.2 1/2 3").is_err());
        assert!(parse_loadavg("NaN 0.5 0.2 1/2 3").is_err());
    }

    // ----- meminfo -----

    const MEMINFO: &str = "\
MemTotal:       24731708 kB
MemFree:        21465928 kB
MemAvailable:   23964884 kB
Buffers:           50280 kB
Cached:          2076504 kB
Active(anon):       1564 kB
Inactive(file):  1610120 kB
NFS_Unstable:          0 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
DirectMap4k:       20480 kB
";

    #[test]
    fn meminfo_is_named_like_node_exporter() {
        let p = parse_meminfo(MEMINFO);
        assert!(p.bad_lines.is_empty());
        let mut out = Families::new();
        let invalid = emit_meminfo(&p.value, &mut NameCache::new(), &mut out);
        assert!(invalid.is_empty());
        assert_eq!(
            value(&out, "node_memory_MemTotal_bytes", &[]),
            Some(24731708.0 * 1024.0)
        );
        assert_eq!(
            value(&out, "node_memory_Buffers_bytes", &[]),
            Some(50280.0 * 1024.0)
        );
        assert_eq!(
            value(&out, "node_memory_Cached_bytes", &[]),
            Some(2076504.0 * 1024.0)
        );
        assert_eq!(
            value(&out, "node_memory_Active_anon_bytes", &[]),
            Some(1564.0 * 1024.0)
        );
        assert!(value(&out, "node_memory_Inactive_file_bytes", &[]).is_some());
        assert_eq!(value(&out, "node_memory_HugePages_Total", &[]), Some(0.0));
        assert_eq!(
            value(&out, "node_memory_Hugepagesize_bytes", &[]),
            Some(2097152.0)
        );
        assert_eq!(
            value(&out, "node_memory_DirectMap4k_bytes", &[]),
            Some(20971520.0)
        );
        let f = out.get("node_memory_MemTotal_bytes").unwrap();
        assert_eq!(f.kind, MetricType::Gauge);
        assert_eq!(f.help, "Memory information field MemTotal_bytes.");
        assert_eq!(out.len(), 12);
    }

    #[test]
    fn meminfo_names_come_from_the_cache_on_later_ticks() {
        let p = parse_meminfo(MEMINFO);
        let mut cache = NameCache::new();
        let mut first = Families::new();
        emit_meminfo(&p.value, &mut cache, &mut first);
        let cached_keys = cache.len();
        let mut second = Families::new();
        emit_meminfo(&p.value, &mut cache, &mut second);
        assert_eq!(cache.len(), cached_keys);
        let names = |f: &Families| f.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&first), names(&second));
    }

    #[test]
    fn malformed_meminfo_lines_are_skipped_and_reported() {
        let p = parse_meminfo(
            "MemTotal: 10 kB\nGarbage line\nMemFree: ten kB\nCached: 5 MB\n: 4 kB\nBuffers: 1 kB\n",
        );
        let keys: Vec<&str> = p.value.iter().map(|e| e.key).collect();
        assert_eq!(keys, vec!["MemTotal", "Buffers"]);
        let lines: Vec<usize> = p.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
    }

    #[test]
    fn meminfo_keys_that_make_no_metric_name_are_reported() {
        let p = parse_meminfo("Weird-Key: 1 kB\nMemFree: 2 kB\n");
        let mut out = Families::new();
        let invalid = emit_meminfo(&p.value, &mut NameCache::new(), &mut out);
        assert_eq!(invalid, vec!["Weird-Key"]);
        assert_eq!(value(&out, "node_memory_MemFree_bytes", &[]), Some(2048.0));
    }

    #[test]
    fn meminfo_metric_names() {
        assert_eq!(
            meminfo_metric_name("Active(anon)", true),
            "node_memory_Active_anon_bytes"
        );
        assert_eq!(
            meminfo_metric_name("HugePages_Total", false),
            "node_memory_HugePages_Total"
        );
        assert_eq!(
            meminfo_metric_name("MemTotal", true),
            "node_memory_MemTotal_bytes"
        );
    }

    // ----- vmstat, file-nr, entropy -----

    #[test]
    fn vmstat_reports_node_exporters_default_fields_untyped() {
        let text = "nr_free_pages 5366482\npgpgin 991225\npgpgout 1189256\npswpin 0\npswpout 0\n\
                    pgalloc_normal 1\npgfault 3528050\npgmajfault 820\npgrefill 0\noom_kill 2\n\
                    thp_fault_alloc 4\npgfault bogus\n";
        let p = parse_vmstat(text, is_default_vmstat_field);
        assert_eq!(p.bad_lines.len(), 1);
        assert_eq!(p.bad_lines[0].line, 12);
        let mut out = Families::new();
        emit_vmstat(&p.value, &mut NameCache::new(), &mut out);
        let names: Vec<&str> = out.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "node_vmstat_pgpgin",
                "node_vmstat_pgpgout",
                "node_vmstat_pswpin",
                "node_vmstat_pswpout",
                "node_vmstat_pgfault",
                "node_vmstat_pgmajfault",
                "node_vmstat_oom_kill",
            ]
        );
        let f = out.get("node_vmstat_pgfault").unwrap();
        assert_eq!(f.kind, MetricType::Unknown);
        assert_eq!(f.help, "/proc/vmstat information field pgfault.");
        assert_eq!(value(&out, "node_vmstat_oom_kill", &[]), Some(2.0));
    }

    #[test]
    fn file_nr_and_single_values() {
        assert_eq!(
            parse_file_nr("367\t0\t2470938\n"),
            Ok(FileNr {
                allocated: 367,
                maximum: 2470938
            })
        );
        assert!(parse_file_nr("367 0").is_err());
        assert!(parse_file_nr("a 0 5").is_err());
        assert_eq!(parse_single_u64("256\n"), Ok(256));
        assert!(parse_single_u64("").is_err());
    }

    // ----- mounts and filesystems -----

    #[test]
    fn mounts_are_parsed_and_unescaped() {
        let text = "\
/dev/vda / ext4 rw,relatime 0 0
/dev/sdb1 /mnt/my\\040disk ext4 ro,noatime 0 0
server:/export /srv/nfs nfs4 rw,vers=4.2 0 0
short line
";
        let p = parse_mounts(text);
        assert_eq!(p.bad_lines.len(), 1);
        assert_eq!(p.bad_lines[0].line, 4);
        let m = &p.value;
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, "/mnt/my disk");
        assert!(m[1].read_only);
        assert!(!m[0].read_only);
        assert_eq!(m[2].device, "server:/export");
        assert_eq!(m[2].fs_type, "nfs4");
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape_octal("/a\\011b\\134c\\012"), "/a\tb\\c\n");
        assert_eq!(unescape_octal("plain"), "plain");
        // Not an escape: left as is rather than guessed at.
        assert_eq!(unescape_octal("a\\9b\\"), "a\\9b\\");
    }

    #[test]
    fn later_mount_on_the_same_point_wins() {
        let p = parse_mounts(
            "/dev/sda1 /data ext4 rw 0 0\n/dev/vda / ext4 rw 0 0\n/dev/sdb1 /data xfs ro 0 0\n",
        );
        let d = dedup_mounts(p.value);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].mount_point, "/data");
        assert_eq!(d[0].device, "/dev/sdb1");
        assert_eq!(d[0].fs_type, "xfs");
        assert!(d[0].read_only);
    }

    #[test]
    fn filesystem_metrics_are_in_bytes_and_a_failed_stat_only_sets_device_error() {
        let mut out = Families::new();
        let stats = FsStats {
            block_size: 4096,
            blocks: 1000,
            blocks_free: 600,
            blocks_avail: 500,
            files: 64,
            files_free: 60,
        };
        emit_filesystem(
            &FsReport {
                device: "/dev/vda",
                fs_type: "ext4",
                mount_point: "/",
                read_only: false,
                stats: Some(stats),
            },
            &mut out,
        );
        emit_filesystem(
            &FsReport {
                device: "srv:/x",
                fs_type: "nfs",
                mount_point: "/nfs",
                read_only: true,
                stats: None,
            },
            &mut out,
        );
        let root = [
            ("device", "/dev/vda"),
            ("fstype", "ext4"),
            ("mountpoint", "/"),
        ];
        let nfs = [
            ("device", "srv:/x"),
            ("fstype", "nfs"),
            ("mountpoint", "/nfs"),
        ];
        assert_eq!(
            value(&out, "node_filesystem_size_bytes", &root),
            Some(4096000.0)
        );
        assert_eq!(
            value(&out, "node_filesystem_free_bytes", &root),
            Some(2457600.0)
        );
        assert_eq!(
            value(&out, "node_filesystem_avail_bytes", &root),
            Some(2048000.0)
        );
        assert_eq!(value(&out, "node_filesystem_files", &root), Some(64.0));
        assert_eq!(value(&out, "node_filesystem_files_free", &root), Some(60.0));
        assert_eq!(
            value(&out, "node_filesystem_device_error", &root),
            Some(0.0)
        );
        assert_eq!(value(&out, "node_filesystem_readonly", &root), Some(0.0));
        assert_eq!(value(&out, "node_filesystem_device_error", &nfs), Some(1.0));
        assert_eq!(value(&out, "node_filesystem_readonly", &nfs), Some(1.0));
        assert_eq!(value(&out, "node_filesystem_size_bytes", &nfs), None);
    }

    #[test]
    fn mount_points_are_reported_as_the_host_sees_them() {
        let root = Path::new("/host/root");
        assert_eq!(host_mount_point("/host/root/boot", root), "/boot");
        assert_eq!(host_mount_point("/host/root", root), "/");
        assert_eq!(host_mount_point("/host/rootfs", root), "/host/rootfs");
        assert_eq!(host_mount_point("/boot", Path::new("/")), "/boot");
        assert_eq!(stat_path("/boot", root), PathBuf::from("/host/root/boot"));
        assert_eq!(stat_path("/", root), PathBuf::from("/host/root/"));
        assert_eq!(stat_path("/boot", Path::new("/")), PathBuf::from("/boot"));
    }

    // ----- diskstats -----

    const DISKSTATS: &str = "\
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 26561 4716 1982450 7177 10820 16791 2378568 8465 2 3956 15827 1123 0 318352 141 1638 43
 254       1 vda1 100 0 800 10 0 0 0 0 0 10 10 0 0 0 0 0 0
   8       0 sda 10 1 20 30 40 5 60 70 0 80 90
 259       0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
 259       1 nvme0n1p1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
   8      16 sdb 1 2 three 4 5 6 7 8 9 10 11
   8      32 sdc 1 2 3
";

    #[test]
    fn diskstats_by_kernel_generation() {
        let p = parse_diskstats(DISKSTATS);
        let lines: Vec<usize> = p.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![7, 8]);
        let by_name = |n: &str| p.value.iter().find(|d| d.device == n).copied();
        let vda = by_name("vda").unwrap();
        assert_eq!((vda.major, vda.minor), (254, 0));
        assert_eq!(vda.discards.map(|d| d.sectors), Some(318352));
        assert_eq!(vda.flushes.map(|f| f.completed), Some(1638));
        let sda = by_name("sda").unwrap();
        assert_eq!((sda.discards, sda.flushes), (None, None));
        let nvme = by_name("nvme0n1").unwrap();
        assert!(nvme.discards.is_some() && nvme.flushes.is_none());
    }

    #[test]
    fn disk_metrics_convert_sectors_and_milliseconds() {
        let p = parse_diskstats(DISKSTATS);
        let mut out = Families::new();
        let ex = HostConfig::default().disk_devices_exclude;
        for d in p.value.iter().filter(|d| !disk_excluded(&ex, d.device)) {
            emit_disk(d, &mut out);
        }
        let devices: Vec<&str> = out
            .get("node_disk_reads_completed_total")
            .unwrap()
            .points
            .iter()
            .filter_map(|(l, _)| l.get("device"))
            .collect();
        assert_eq!(devices, vec!["vda", "sda", "nvme0n1"]);
        let vda = [("device", "vda")];
        let v = |n| value(&out, n, &vda);
        assert_eq!(v("node_disk_reads_completed_total"), Some(26561.0));
        assert_eq!(v("node_disk_reads_merged_total"), Some(4716.0));
        assert_eq!(v("node_disk_read_bytes_total"), Some(1982450.0 * 512.0));
        assert_eq!(v("node_disk_read_time_seconds_total"), Some(7.177));
        assert_eq!(v("node_disk_writes_completed_total"), Some(10820.0));
        assert_eq!(v("node_disk_writes_merged_total"), Some(16791.0));
        assert_eq!(v("node_disk_written_bytes_total"), Some(2378568.0 * 512.0));
        assert_eq!(v("node_disk_write_time_seconds_total"), Some(8.465));
        assert_eq!(v("node_disk_io_now"), Some(2.0));
        assert_eq!(v("node_disk_io_time_seconds_total"), Some(3.956));
        assert_eq!(v("node_disk_io_time_weighted_seconds_total"), Some(15.827));
        assert_eq!(v("node_disk_discards_completed_total"), Some(1123.0));
        assert_eq!(v("node_disk_discards_merged_total"), Some(0.0));
        assert_eq!(v("node_disk_discarded_sectors_total"), Some(318352.0));
        assert_eq!(v("node_disk_discard_time_seconds_total"), Some(0.141));
        assert_eq!(v("node_disk_flush_requests_total"), Some(1638.0));
        assert_eq!(
            v("node_disk_flush_requests_time_seconds_total"),
            Some(0.043)
        );
        assert_eq!(
            out.get("node_disk_io_now").map(|f| f.kind),
            Some(MetricType::Gauge)
        );
        // A pre-4.18 kernel's disk has no discard series rather than zeros.
        assert_eq!(
            value(
                &out,
                "node_disk_discards_completed_total",
                &[("device", "sda")]
            ),
            None
        );
    }

    // ----- net/dev -----

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:   68889      64    0    0    0     0          0         0    68889      64    0    0    0     0       0          0
  eth0:160854718    5987    1    2    3     4          5         6   374026    4327    7    8    9    10      11         12
docker0:       0       0    0    0    0     0          0         0        0       0    0    2    0     0       0          0
  bad0: 1 2 3
  bad1: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 x
";

    #[test]
    fn net_dev_columns_map_to_node_exporter_names() {
        let p = parse_net_dev(NET_DEV);
        let lines: Vec<usize> = p.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![6, 7]);
        assert_eq!(p.value.len(), 3);
        let mut out = Families::new();
        let names = NetNames::new();
        for s in &p.value {
            emit_net_dev(s, &names, &mut out);
        }
        let eth0 = [("device", "eth0")];
        let v = |n| value(&out, n, &eth0);
        assert_eq!(v("node_network_receive_bytes_total"), Some(160854718.0));
        assert_eq!(v("node_network_receive_packets_total"), Some(5987.0));
        assert_eq!(v("node_network_receive_errs_total"), Some(1.0));
        assert_eq!(v("node_network_receive_drop_total"), Some(2.0));
        assert_eq!(v("node_network_receive_fifo_total"), Some(3.0));
        assert_eq!(v("node_network_receive_frame_total"), Some(4.0));
        assert_eq!(v("node_network_receive_compressed_total"), Some(5.0));
        assert_eq!(v("node_network_receive_multicast_total"), Some(6.0));
        assert_eq!(v("node_network_transmit_bytes_total"), Some(374026.0));
        assert_eq!(v("node_network_transmit_packets_total"), Some(4327.0));
        assert_eq!(v("node_network_transmit_errs_total"), Some(7.0));
        assert_eq!(v("node_network_transmit_drop_total"), Some(8.0));
        assert_eq!(v("node_network_transmit_fifo_total"), Some(9.0));
        assert_eq!(v("node_network_transmit_colls_total"), Some(10.0));
        assert_eq!(v("node_network_transmit_carrier_total"), Some(11.0));
        assert_eq!(v("node_network_transmit_compressed_total"), Some(12.0));
        assert_eq!(
            value(
                &out,
                "node_network_transmit_drop_total",
                &[("device", "docker0")]
            ),
            Some(2.0)
        );
        let f = out.get("node_network_receive_bytes_total").unwrap();
        assert_eq!(f.help, "Network device statistic receive_bytes.");
        assert_eq!(f.kind, MetricType::Counter);
        assert_eq!(f.points.len(), 3);
    }

    // ----- the collector over a fake /proc -----

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn fake_host(dir: &Path, mounts: &str) -> HostConfig {
        let proc_root = dir.join("proc");
        let sys_root = dir.join("sys");
        write(&proc_root, "stat", STAT);
        write(&proc_root, "loadavg", "0.5 0.25 0.125 1/100 42\n");
        write(&proc_root, "meminfo", MEMINFO);
        write(&proc_root, "vmstat", "pgfault 10\npgmajfault 1\n");
        write(&proc_root, "diskstats", DISKSTATS);
        write(&proc_root, "mounts", mounts);
        write(&proc_root, "net/dev", NET_DEV);
        write(&proc_root, "sys/kernel/ostype", "Linux\n");
        write(&proc_root, "sys/kernel/osrelease", "6.1.0-test\n");
        write(&proc_root, "sys/kernel/version", "#1 SMP PREEMPT_DYNAMIC\n");
        write(&proc_root, "sys/kernel/arch", "riscv64\n");
        write(&proc_root, "sys/kernel/hostname", "web-1\n");
        write(&proc_root, "sys/kernel/domainname", "(none)\n");
        write(&proc_root, "sys/kernel/random/entropy_avail", "256\n");
        write(&proc_root, "sys/kernel/random/poolsize", "256\n");
        write(&proc_root, "sys/fs/file-nr", "367\t0\t2470938\n");
        write(&sys_root, "class/net/eth0/operstate", "up\n");
        write(&sys_root, "class/net/lo/operstate", "unknown\n");
        HostConfig {
            proc_root,
            sys_root,
            ..HostConfig::default()
        }
    }

    fn fake_statfs(path: &Path) -> io::Result<FsStats> {
        match path.to_str() {
            Some("/denied") => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
            _ => Ok(FsStats {
                block_size: 1024,
                blocks: 100,
                blocks_free: 50,
                blocks_avail: 40,
                files: 10,
                files_free: 5,
            }),
        }
    }

    const MOUNTS: &str = "\
proc /proc proc rw 0 0
sysfs /sys sysfs rw 0 0
tmpfs /dev/shm tmpfs rw 0 0
/dev/vda / ext4 rw,relatime 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
/dev/vda /var/lib/docker ext4 rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
tmpfs /run tmpfs rw,nosuid 0 0
fuse /denied fuse.sshfs rw 0 0
";

    #[test]
    fn collects_every_family_from_a_fake_proc() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fake_host(dir.path(), MOUNTS);
        let mut c = HostCollector::with_statfs(cfg, Arc::new(fake_statfs), Duration::from_secs(5));
        let mut out = Families::new();
        let mut errors = Vec::new();
        c.collect(&mut out, &mut errors);
        // The fake net/dev and diskstats carry deliberately malformed lines.
        assert!(
            errors
                .iter()
                .all(|e| matches!(e, CollectError::Parse { .. })),
            "{errors:?}"
        );
        assert_eq!(errors.len(), 4, "{errors:?}");

        assert_eq!(series_count(&out, "node_cpu_seconds_total"), 16);
        assert_eq!(value(&out, "node_load5", &[]), Some(0.25));
        assert_eq!(
            value(&out, "node_memory_Cached_bytes", &[]),
            Some(2076504.0 * 1024.0)
        );
        assert_eq!(value(&out, "node_vmstat_pgmajfault", &[]), Some(1.0));
        assert_eq!(value(&out, "node_entropy_available_bits", &[]), Some(256.0));
        assert_eq!(value(&out, "node_entropy_pool_size_bits", &[]), Some(256.0));
        assert_eq!(value(&out, "node_filefd_allocated", &[]), Some(367.0));
        assert_eq!(value(&out, "node_filefd_maximum", &[]), Some(2470938.0));
        assert_eq!(
            value(&out, "node_network_up", &[("device", "eth0")]),
            Some(1.0)
        );
        assert_eq!(
            value(&out, "node_network_up", &[("device", "lo")]),
            Some(0.0)
        );
        // docker0 has no sysfs entry in the fake: it vanished, which is not an error.
        assert_eq!(
            value(&out, "node_network_up", &[("device", "docker0")]),
            None
        );
        assert!(
            value(
                &out,
                "node_disk_reads_completed_total",
                &[("device", "vda")]
            )
            .is_some()
        );
        assert!(
            value(
                &out,
                "node_disk_reads_completed_total",
                &[("device", "loop0")]
            )
            .is_none()
        );
        assert!(
            value(
                &out,
                "node_disk_reads_completed_total",
                &[("device", "vda1")]
            )
            .is_none()
        );

        let uname = &out.get("node_uname_info").unwrap().points[0];
        assert_eq!(uname.1, 1.0);
        assert_eq!(uname.0.get("sysname"), Some("Linux"));
        assert_eq!(uname.0.get("release"), Some("6.1.0-test"));
        assert_eq!(uname.0.get("version"), Some("#1 SMP PREEMPT_DYNAMIC"));
        assert_eq!(uname.0.get("machine"), Some("riscv64"));
        assert_eq!(uname.0.get("nodename"), Some("web-1"));
        assert_eq!(uname.0.get("domainname"), Some("(none)"));
        assert_eq!(
            out.get("node_uname_info").map(|f| f.kind),
            Some(MetricType::Info)
        );

        let mountpoints: Vec<&str> = out
            .get("node_filesystem_device_error")
            .unwrap()
            .points
            .iter()
            .filter_map(|(l, _)| l.get("mountpoint"))
            .collect();
        assert_eq!(mountpoints, vec!["/", "/var/lib/docker", "/run", "/denied"]);
        let root = [
            ("device", "/dev/vda"),
            ("fstype", "ext4"),
            ("mountpoint", "/"),
        ];
        assert_eq!(
            value(&out, "node_filesystem_size_bytes", &root),
            Some(102400.0)
        );
        let denied = [
            ("device", "fuse"),
            ("fstype", "fuse.sshfs"),
            ("mountpoint", "/denied"),
        ];
        assert_eq!(
            value(&out, "node_filesystem_device_error", &denied),
            Some(1.0)
        );
        assert_eq!(value(&out, "node_filesystem_size_bytes", &denied), None);
    }

    #[test]
    fn missing_files_are_reported_by_path_and_the_rest_is_collected() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        write(&proc_root, "meminfo", MEMINFO);
        write(&proc_root, "stat", STAT);
        let cfg = HostConfig {
            proc_root: proc_root.clone(),
            sys_root: dir.path().join("sys"),
            ..HostConfig::default()
        };
        let mut c = HostCollector::with_statfs(cfg, Arc::new(fake_statfs), Duration::from_secs(5));
        let mut out = Families::new();
        let mut errors = Vec::new();
        c.collect(&mut out, &mut errors);
        assert!(value(&out, "node_memory_MemTotal_bytes", &[]).is_some());
        assert_eq!(series_count(&out, "node_cpu_seconds_total"), 16);
        assert!(out.get("node_load1").is_none());
        let unreadable: Vec<PathBuf> = errors
            .iter()
            .filter_map(|e| match e {
                CollectError::Read { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        for rel in [
            "loadavg",
            "diskstats",
            "vmstat",
            "mounts",
            "net/dev",
            "sys/fs/file-nr",
        ] {
            assert!(
                unreadable.contains(&proc_root.join(rel)),
                "no error naming {rel}: {errors:?}"
            );
        }
        let message = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(message.contains(&proc_root.join("loadavg").display().to_string()));
    }

    #[test]
    fn init_mount_table_is_preferred_to_the_readers_own() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fake_host(dir.path(), "/dev/vda /mine ext4 rw 0 0\n");
        write(&cfg.proc_root, "1/mounts", "/dev/vda /hosts ext4 rw 0 0\n");
        let mut c = HostCollector::with_statfs(cfg, Arc::new(fake_statfs), Duration::from_secs(5));
        let mut out = Families::new();
        c.collect(&mut out, &mut Vec::new());
        let f = out.get("node_filesystem_size_bytes").unwrap();
        assert_eq!(f.points.len(), 1);
        assert_eq!(f.points[0].0.get("mountpoint"), Some("/hosts"));
    }

    #[test]
    fn containerised_agent_stats_under_root_fs_and_reports_host_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = fake_host(
            dir.path(),
            "/dev/vda /host/root ext4 rw 0 0\n/dev/sdb /host/root/data xfs rw 0 0\n",
        );
        cfg.root_fs = PathBuf::from("/host/root");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let stat: StatFsFn = Arc::new(move |p: &Path| {
            lock(&record).push(p.to_path_buf());
            fake_statfs(p)
        });
        let mut c = HostCollector::with_statfs(cfg, stat, Duration::from_secs(5));
        let mut out = Families::new();
        c.collect(&mut out, &mut Vec::new());
        assert_eq!(
            *lock(&seen),
            vec![
                PathBuf::from("/host/root/"),
                PathBuf::from("/host/root/data")
            ]
        );
        let points: Vec<&str> = out
            .get("node_filesystem_size_bytes")
            .unwrap()
            .points
            .iter()
            .filter_map(|(l, _)| l.get("mountpoint"))
            .collect();
        assert_eq!(points, vec!["/", "/data"]);
    }

    /// A statfs whose calls on `/hung` block until the test opens the gate, the way a
    /// call on a dead NFS server blocks in the kernel.
    struct HungMount {
        gate: Mutex<Option<mpsc::Receiver<()>>>,
        hung_calls: AtomicUsize,
    }

    impl HungMount {
        fn stat(&self, path: &Path) -> io::Result<FsStats> {
            if path == Path::new("/hung") {
                self.hung_calls.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = lock(&self.gate).take() {
                    let _ = gate.recv();
                }
            }
            fake_statfs(path)
        }
    }

    #[test]
    fn a_hung_mount_times_out_is_marked_stuck_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fake_host(
            dir.path(),
            "/dev/vda / ext4 rw 0 0\nsrv:/x /hung nfs rw 0 0\n/dev/sdb /data xfs rw 0 0\n",
        );
        let (open_gate, gate) = mpsc::channel::<()>();
        let hung = Arc::new(HungMount {
            gate: Mutex::new(Some(gate)),
            hung_calls: AtomicUsize::new(0),
        });
        let h = Arc::clone(&hung);
        let stat: StatFsFn = Arc::new(move |p: &Path| h.stat(p));
        // Long enough that the healthy mounts never time out on a loaded CI machine.
        let mut c = HostCollector::with_statfs(cfg, stat, Duration::from_millis(500));
        let nfs = [
            ("device", "srv:/x"),
            ("fstype", "nfs"),
            ("mountpoint", "/hung"),
        ];
        let data = [
            ("device", "/dev/sdb"),
            ("fstype", "xfs"),
            ("mountpoint", "/data"),
        ];

        // First collection: the call on /hung times out; the mounts after it are still stat'ed.
        let mut out = Families::new();
        let mut errors = Vec::new();
        c.collect(&mut out, &mut errors);
        assert_eq!(value(&out, "node_filesystem_device_error", &nfs), Some(1.0));
        assert_eq!(value(&out, "node_filesystem_size_bytes", &nfs), None);
        assert_eq!(
            value(&out, "node_filesystem_size_bytes", &data),
            Some(102400.0)
        );
        let timeouts: Vec<_> = errors
            .iter()
            .filter(|e| matches!(e, CollectError::Read { path, source } if path == Path::new("/hung") && source.kind() == io::ErrorKind::TimedOut))
            .collect();
        assert_eq!(timeouts.len(), 1, "{errors:?}");
        assert!(c.statfs.is_stuck(Path::new("/hung")));

        // Second collection: /hung is not called again while its first call is blocked.
        let mut out = Families::new();
        let mut errors = Vec::new();
        c.collect(&mut out, &mut errors);
        assert_eq!(hung.hung_calls.load(Ordering::SeqCst), 1);
        assert_eq!(value(&out, "node_filesystem_device_error", &nfs), Some(1.0));
        assert_eq!(
            value(&out, "node_filesystem_size_bytes", &data),
            Some(102400.0)
        );
        assert!(
            errors.iter().all(
                |e| !matches!(e, CollectError::Read { path, .. } if path == Path::new("/hung"))
            )
        );

        // The kernel lets go: the blocked call returns and clears the mark.
        open_gate.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while c.statfs.is_stuck(Path::new("/hung")) {
            assert!(
                std::time::Instant::now() < deadline,
                "stuck mark never cleared"
            );
            std::thread::yield_now();
        }
        let mut out = Families::new();
        c.collect(&mut out, &mut Vec::new());
        assert_eq!(value(&out, "node_filesystem_device_error", &nfs), Some(0.0));
        assert_eq!(
            value(&out, "node_filesystem_size_bytes", &nfs),
            Some(102400.0)
        );
        assert_eq!(hung.hung_calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn kernel_identity_falls_back_to_uname_without_arch_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fake_host(dir.path(), "");
        std::fs::remove_file(cfg.proc_root.join("sys/kernel/arch")).unwrap();
        let mut c = HostCollector::with_statfs(cfg, Arc::new(fake_statfs), Duration::from_secs(5));
        let mut out = Families::new();
        let mut errors = Vec::new();
        c.collect(&mut out, &mut errors);
        let machine = out.get("node_uname_info").unwrap().points[0]
            .0
            .get("machine")
            .map(str::to_string);
        assert_eq!(machine, uname_machine());
        assert!(!machine.unwrap_or_default().is_empty());
    }

    #[test]
    fn statvfs_of_the_root_filesystem() {
        let s = statvfs(Path::new("/")).unwrap();
        assert!(s.block_size > 0 && s.blocks > 0 && s.blocks_free <= s.blocks);
        assert!(statvfs(Path::new("/definitely/not/here")).is_err());
    }
}
