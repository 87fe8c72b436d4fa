//! cgroup v1 and v2 readers for container resource accounting.
//!
//! The parsers take file contents and return numbers, so both hierarchies are tested
//! against literal files; [`CgroupReader`] is the thin layer that reads them from disk
//! and decides whether a failed read is an error or a container that just went away.
//!
//! Values are derived as cAdvisor derives them, so dashboards built on cAdvisor read
//! the same numbers: the working set is usage minus inactive file pages (floored at 0),
//! RSS and cache are the hierarchical `total_rss`/`total_cache` on v1 and `anon`/`file`
//! on v2, and an unlimited memory limit is reported as 0.

use super::CollectError;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy the host mounts at the cgroup root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller: `<root>/cpuacct`, `<root>/memory`, `<root>/blkio`.
    V1,
    /// The unified hierarchy: every controller's files in one directory per cgroup.
    V2,
}

/// Where Docker puts a container's cgroup. It follows the engine's `cgroupdriver`
/// setting, which the agent learns by looking rather than asking, so it also works
/// while the engine is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CgroupDriver {
    /// `docker/<id>` under the hierarchy root.
    Cgroupfs,
    /// `system.slice/docker-<id>.scope` under the hierarchy root.
    Systemd,
}

impl CgroupDriver {
    /// The directory (relative to a hierarchy root) whose entries are this driver's containers.
    fn parent(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "docker",
            CgroupDriver::Systemd => "system.slice",
        }
    }

    /// The container id named by a directory entry of [`Self::parent`], if it is one.
    pub fn container_id(self, entry: &str) -> Option<&str> {
        let id = match self {
            CgroupDriver::Cgroupfs => entry,
            CgroupDriver::Systemd => entry.strip_prefix("docker-")?.strip_suffix(".scope")?,
        };
        is_container_id(id).then_some(id)
    }

    /// The container's cgroup path relative to a hierarchy root.
    pub fn relative_path(self, id: &str) -> String {
        match self {
            CgroupDriver::Cgroupfs => format!("docker/{id}"),
            CgroupDriver::Systemd => format!("system.slice/docker-{id}.scope"),
        }
    }
}

/// Docker ids are 64 lowercase hex digits; anything else in the parent directory
/// (control files, other services' scopes) is not a container.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A v1 controller whose hierarchy holds some of a container's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Cpuacct,
    Memory,
    Blkio,
}

impl Controller {
    fn dir(self) -> &'static str {
        match self {
            Controller::Cpuacct => "cpuacct",
            Controller::Memory => "memory",
            Controller::Blkio => "blkio",
        }
    }
}

/// The cgroup mount seen by the agent: its root and which hierarchy it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    root: PathBuf,
    version: CgroupVersion,
}

impl CgroupLayout {
    pub fn new(root: PathBuf, version: CgroupVersion) -> Self {
        Self { root, version }
    }

    /// v2 if the root is a cgroup2 mount (it has `cgroup.controllers`), else v1.
    ///
    /// Hybrid hosts (v1 controllers plus a v2 mount at `unified/`) count as v1, since
    /// that is where their cpuacct, memory and blkio accounting lives.
    pub fn detect(root: &Path) -> Self {
        let version = if root.join("cgroup.controllers").exists() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        Self::new(root.to_path_buf(), version)
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The directory listed every tick to see which containers have a cgroup.
    /// On v1 the cpuacct hierarchy stands for all controllers: Docker creates the
    /// container's cgroup in every hierarchy at once.
    pub fn listing_dir(&self, driver: CgroupDriver) -> PathBuf {
        match self.version {
            CgroupVersion::V1 => self
                .root
                .join(Controller::Cpuacct.dir())
                .join(driver.parent()),
            CgroupVersion::V2 => self.root.join(driver.parent()),
        }
    }

    fn container_dir(&self, controller: Controller, driver: CgroupDriver, id: &str) -> PathBuf {
        let rel = driver.relative_path(id);
        match self.version {
            CgroupVersion::V1 => self.root.join(controller.dir()).join(rel),
            CgroupVersion::V2 => self.root.join(rel),
        }
    }
}

/// Cumulative CPU time of a container, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUsage {
    pub total_seconds: f64,
    pub user_seconds: f64,
    pub system_seconds: f64,
}

/// Memory figures of a container, in bytes, as cAdvisor reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    pub cache_bytes: u64,
}

/// Bytes read from and written to one block device by a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceIo {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// Everything read from one container's cgroup in one tick. A field is `None` when
/// its files could not be read or parsed (the reason went to the error list).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    /// v1 takes the total from `cpuacct.usage` and the split from `cpuacct.stat`, so
    /// either part may be missing alone.
    pub cpu_total_seconds: Option<f64>,
    pub cpu_user_system_seconds: Option<(f64, f64)>,
    pub memory: Option<MemoryUsage>,
    /// 0 when the container has no limit, as cAdvisor reports it.
    pub memory_limit_bytes: Option<u64>,
    pub io: Option<Vec<DeviceIo>>,
}

impl CgroupStats {
    fn clear(&mut self) {
        self.cpu_total_seconds = None;
        self.cpu_user_system_seconds = None;
        self.memory = None;
        self.memory_limit_bytes = None;
        if let Some(io) = self.io.as_mut() {
            io.clear();
        }
    }
}

/// v1 reports an unlimited limit as the largest page-aligned i64 (which depends on the
/// page size), so anything this large means "no limit": no machine has 4 EiB of memory.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// Parses a file holding one unsigned integer (`cpuacct.usage`, `memory.current`, ...).
pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    t.parse::<u64>()
        .map_err(|e| format!("expected one unsigned integer, found {t:?}: {e}"))
}

/// Looks up `keys` in a flat-keyed file (`key value` per line: `memory.stat`,
/// v2 `cpu.stat`, v1 `cpuacct.stat`). Every key must be present exactly as asked; a
/// missing key is an error because a silently zero value would be a wrong number.
pub fn parse_keyed<const N: usize>(text: &str, keys: [&str; N]) -> Result<[u64; N], String> {
    let mut found: [Option<u64>; N] = [None; N];
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some(i) = keys.iter().position(|key| *key == k) {
            let n = v
                .parse::<u64>()
                .map_err(|e| format!("value of {k}: {v:?}: {e}"))?;
            found[i] = Some(n);
        }
    }
    let mut out = [0u64; N];
    for (i, v) in found.iter().enumerate() {
        out[i] = v.ok_or_else(|| format!("missing key {}", keys[i]))?;
    }
    Ok(out)
}

/// v1 `cpuacct.stat`: user and system time in USER_HZ ticks, converted to seconds.
pub fn cpu_split_from_v1_stat(text: &str, user_hz: f64) -> Result<(f64, f64), String> {
    let [user, system] = parse_keyed(text, ["user", "system"])?;
    Ok((user as f64 / user_hz, system as f64 / user_hz))
}

/// v2 `cpu.stat`: total, user and system time in microseconds, converted to seconds.
pub fn cpu_from_v2_stat(text: &str) -> Result<CpuUsage, String> {
    let [total, user, system] = parse_keyed(text, ["usage_usec", "user_usec", "system_usec"])?;
    Ok(CpuUsage {
        total_seconds: total as f64 / 1e6,
        user_seconds: user as f64 / 1e6,
        system_seconds: system as f64 / 1e6,
    })
}

/// v1 memory from `memory.usage_in_bytes` and `memory.stat`, using the hierarchical
/// `total_*` keys so memory of nested cgroups is counted, as cAdvisor does.
pub fn memory_from_v1(usage_bytes: u64, stat: &str) -> Result<MemoryUsage, String> {
    let [inactive_file, rss, cache] =
        parse_keyed(stat, ["total_inactive_file", "total_rss", "total_cache"])?;
    Ok(MemoryUsage {
        usage_bytes,
        working_set_bytes: usage_bytes.saturating_sub(inactive_file),
        rss_bytes: rss,
        cache_bytes: cache,
    })
}

/// v2 memory from `memory.current` and `memory.stat` (already hierarchical on v2).
pub fn memory_from_v2(usage_bytes: u64, stat: &str) -> Result<MemoryUsage, String> {
    let [inactive_file, anon, file] = parse_keyed(stat, ["inactive_file", "anon", "file"])?;
    Ok(MemoryUsage {
        usage_bytes,
        working_set_bytes: usage_bytes.saturating_sub(inactive_file),
        rss_bytes: anon,
        cache_bytes: file,
    })
}

/// v1 `memory.limit_in_bytes`, with "unlimited" mapped to 0.
pub fn memory_limit_from_v1(text: &str) -> Result<u64, String> {
    let v = parse_u64(text)?;
    Ok(if v >= V1_UNLIMITED_THRESHOLD { 0 } else { v })
}

/// v2 `memory.max`, where `max` (no limit) is reported as 0.
pub fn memory_limit_from_v2(text: &str) -> Result<u64, String> {
    match text.trim() {
        "max" => Ok(0),
        other => parse_u64(other),
    }
}

fn parse_device(s: &str) -> Result<(u32, u32), String> {
    let (major, minor) = s
        .split_once(':')
        .ok_or_else(|| format!("expected major:minor, found {s:?}"))?;
    let major = major
        .parse::<u32>()
        .map_err(|e| format!("device {s:?}: {e}"))?;
    let minor = minor
        .parse::<u32>()
        .map_err(|e| format!("device {s:?}: {e}"))?;
    Ok((major, minor))
}

/// Returns the entry for a device, adding it in first-seen order. Containers touch a
/// handful of devices, so a linear search beats a map.
fn device_entry(out: &mut Vec<DeviceIo>, major: u32, minor: u32) -> &mut DeviceIo {
    let i = match out
        .iter()
        .position(|d| d.major == major && d.minor == minor)
    {
        Some(i) => i,
        None => {
            out.push(DeviceIo {
                major,
                minor,
                ..DeviceIo::default()
            });
            out.len() - 1
        }
    };
    &mut out[i]
}

/// v1 `blkio.throttle.io_service_bytes[_recursive]`: `M:m Read N`, `M:m Write N`, ...
/// lines per device and a closing `Total N`. Only Read and Write are kept (Sync, Async,
/// Discard and Total re-count the same bytes).
pub fn parse_v1_blkio(text: &str, out: &mut Vec<DeviceIo>) -> Result<(), String> {
    out.clear();
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let (Some(dev), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            continue; // `Total N` and blank lines
        };
        let is_read = match op {
            "Read" => true,
            "Write" => false,
            _ => continue,
        };
        let (major, minor) = parse_device(dev)?;
        let n = value
            .parse::<u64>()
            .map_err(|e| format!("{dev} {op}: {value:?}: {e}"))?;
        let entry = device_entry(out, major, minor);
        if is_read {
            entry.read_bytes = n;
        } else {
            entry.write_bytes = n;
        }
    }
    Ok(())
}

/// v2 `io.stat`: one line per device, `M:m rbytes=N wbytes=N rios=N ...`.
pub fn parse_v2_io_stat(text: &str, out: &mut Vec<DeviceIo>) -> Result<(), String> {
    out.clear();
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let Some(dev) = parts.next() else {
            continue;
        };
        let (major, minor) = parse_device(dev)?;
        let entry = device_entry(out, major, minor);
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let slot = match k {
                "rbytes" => &mut entry.read_bytes,
                "wbytes" => &mut entry.write_bytes,
                _ => continue,
            };
            *slot = v
                .parse::<u64>()
                .map_err(|e| format!("{dev} {k}: {v:?}: {e}"))?;
        }
    }
    Ok(())
}

/// The kernel's USER_HZ, the unit of v1 `cpuacct.stat`.
pub fn user_hz() -> f64 {
    // SAFETY: sysconf only reads a constant of the C library; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Reads container cgroups from disk, reusing one buffer for every file.
#[derive(Debug)]
pub struct CgroupReader {
    layout: CgroupLayout,
    user_hz: f64,
    buf: String,
    /// Falls back to the non-recursive blkio file on kernels older than 4.x that lack
    /// the recursive one, once, instead of failing every tick.
    blkio_recursive: bool,
}

/// The result of reading one container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The stats were filled (possibly partly; failures went to the error list).
    Read,
    /// The cgroup disappeared while it was read: the container stopped. Not an error.
    Gone,
}

impl CgroupReader {
    pub fn new(layout: CgroupLayout) -> Self {
        Self {
            layout,
            user_hz: user_hz(),
            buf: String::with_capacity(4096),
            blkio_recursive: true,
        }
    }

    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// Fills `stats` from the container's cgroup. Errors of files that could not be
    /// read while the cgroup still exists go to `errors`; if the cgroup vanished the
    /// errors gathered for it are dropped and [`ReadOutcome::Gone`] is returned.
    pub fn read(
        &mut self,
        driver: CgroupDriver,
        id: &str,
        stats: &mut CgroupStats,
        errors: &mut Vec<CollectError>,
    ) -> ReadOutcome {
        stats.clear();
        let first_error = errors.len();
        let result = match self.layout.version {
            CgroupVersion::V1 => self.read_v1(driver, id, stats, errors),
            CgroupVersion::V2 => self.read_v2(driver, id, stats, errors),
        };
        match result {
            Ok(()) => ReadOutcome::Read,
            Err(Gone) => {
                errors.truncate(first_error);
                stats.clear();
                ReadOutcome::Gone
            }
        }
    }

    fn read_v1(
        &mut self,
        driver: CgroupDriver,
        id: &str,
        stats: &mut CgroupStats,
        errors: &mut Vec<CollectError>,
    ) -> Result<(), Gone> {
        let cpu = self.layout.container_dir(Controller::Cpuacct, driver, id);
        stats.cpu_total_seconds = self
            .read_parsed(&cpu.join("cpuacct.usage"), errors, parse_u64)?
            .map(|ns| ns as f64 / 1e9);
        let hz = self.user_hz;
        stats.cpu_user_system_seconds =
            self.read_parsed(&cpu.join("cpuacct.stat"), errors, |t| {
                cpu_split_from_v1_stat(t, hz)
            })?;

        let mem = self.layout.container_dir(Controller::Memory, driver, id);
        let usage = self.read_parsed(&mem.join("memory.usage_in_bytes"), errors, parse_u64)?;
        if let Some(usage) = usage {
            stats.memory = self.read_parsed(&mem.join("memory.stat"), errors, |t| {
                memory_from_v1(usage, t)
            })?;
        }
        stats.memory_limit_bytes = self.read_parsed(
            &mem.join("memory.limit_in_bytes"),
            errors,
            memory_limit_from_v1,
        )?;

        let blkio = self.layout.container_dir(Controller::Blkio, driver, id);
        let mut io = stats.io.take().unwrap_or_default();
        let name = if self.blkio_recursive {
            "blkio.throttle.io_service_bytes_recursive"
        } else {
            "blkio.throttle.io_service_bytes"
        };
        let path = blkio.join(name);
        let parsed = match self.read_file(&path) {
            Ok(()) => Some(parse_v1_blkio(&self.buf, &mut io)),
            Err(e)
                if self.blkio_recursive
                    && e.kind() == io::ErrorKind::NotFound
                    && blkio.exists() =>
            {
                self.blkio_recursive = false;
                let path = blkio.join("blkio.throttle.io_service_bytes");
                self.read_or_classify(&path, &blkio, errors)?
                    .then(|| parse_v1_blkio(&self.buf, &mut io))
            }
            Err(e) => {
                classify(&path, &blkio, e, errors)?;
                None
            }
        };
        stats.io = finish_io(parsed, io, &path, errors);
        Ok(())
    }

    fn read_v2(
        &mut self,
        driver: CgroupDriver,
        id: &str,
        stats: &mut CgroupStats,
        errors: &mut Vec<CollectError>,
    ) -> Result<(), Gone> {
        let dir = self.layout.container_dir(Controller::Cpuacct, driver, id);
        if let Some(cpu) = self.read_parsed(&dir.join("cpu.stat"), errors, cpu_from_v2_stat)? {
            stats.cpu_total_seconds = Some(cpu.total_seconds);
            stats.cpu_user_system_seconds = Some((cpu.user_seconds, cpu.system_seconds));
        }
        let usage = self.read_parsed(&dir.join("memory.current"), errors, parse_u64)?;
        if let Some(usage) = usage {
            stats.memory = self.read_parsed(&dir.join("memory.stat"), errors, |t| {
                memory_from_v2(usage, t)
            })?;
        }
        stats.memory_limit_bytes =
            self.read_parsed(&dir.join("memory.max"), errors, memory_limit_from_v2)?;

        let mut io = stats.io.take().unwrap_or_default();
        let path = dir.join("io.stat");
        let parsed = self
            .read_or_classify(&path, &dir, errors)?
            .then(|| parse_v2_io_stat(&self.buf, &mut io));
        stats.io = finish_io(parsed, io, &path, errors);
        Ok(())
    }

    /// Reads `path` and parses it. `Ok(None)` means the value is unavailable and an
    /// error was recorded; `Err(Gone)` means the cgroup itself is gone.
    fn read_parsed<T>(
        &mut self,
        path: &Path,
        errors: &mut Vec<CollectError>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, Gone> {
        let dir = path.parent().unwrap_or(path);
        if !self.read_or_classify(path, dir, errors)? {
            return Ok(None);
        }
        match parse(&self.buf) {
            Ok(v) => Ok(Some(v)),
            Err(reason) => {
                errors.push(CollectError::Parse {
                    path: path.to_path_buf(),
                    reason,
                });
                Ok(None)
            }
        }
    }

    /// Reads `path` into the buffer; `Ok(false)` if it failed with the cgroup `dir`
    /// still present (an error was recorded).
    fn read_or_classify(
        &mut self,
        path: &Path,
        dir: &Path,
        errors: &mut Vec<CollectError>,
    ) -> Result<bool, Gone> {
        match self.read_file(path) {
            Ok(()) => Ok(true),
            Err(e) => classify(path, dir, e, errors).map(|()| false),
        }
    }

    fn read_file(&mut self, path: &Path) -> io::Result<()> {
        self.buf.clear();
        File::open(path)?.read_to_string(&mut self.buf)?;
        Ok(())
    }
}

/// Marker: the container's cgroup disappeared while being read.
struct Gone;

/// A failed read is the container going away if its cgroup directory is gone (the
/// kernel answers ENOENT or ENODEV then); otherwise it is an error worth reporting.
fn classify(
    path: &Path,
    dir: &Path,
    e: io::Error,
    errors: &mut Vec<CollectError>,
) -> Result<(), Gone> {
    if !dir.exists() {
        return Err(Gone);
    }
    errors.push(CollectError::Read {
        path: path.to_path_buf(),
        source: e,
    });
    Ok(())
}

/// Keeps the parsed device list, or records the parse error; the vector's allocation
/// survives either way so the next tick reuses it.
fn finish_io(
    parsed: Option<Result<(), String>>,
    mut io: Vec<DeviceIo>,
    path: &Path,
    errors: &mut Vec<CollectError>,
) -> Option<Vec<DeviceIo>> {
    match parsed {
        Some(Ok(())) => Some(io),
        Some(Err(reason)) => {
            errors.push(CollectError::Parse {
                path: path.to_path_buf(),
                reason,
            });
            io.clear();
            None
        }
        None => {
            io.clear();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "d287de47412f4bf7a7dbf8b3d1736df33cafd717605463cf5422a3d2b83afada";

    #[test]
    fn container_ids_are_recognised_per_driver() {
        assert_eq!(CgroupDriver::Cgroupfs.container_id(ID), Some(ID));
        assert_eq!(
            CgroupDriver::Systemd.container_id(&format!("docker-{ID}.scope")),
            Some(ID)
        );
        // Control files, other services and truncated or upper-case ids are not containers.
        assert_eq!(CgroupDriver::Cgroupfs.container_id("cgroup.procs"), None);
        assert_eq!(CgroupDriver::Cgroupfs.container_id(&ID[..12]), None);
        assert_eq!(
            CgroupDriver::Cgroupfs.container_id(&ID.to_uppercase()),
            None
        );
        assert_eq!(CgroupDriver::Systemd.container_id("sshd.service"), None);
        assert_eq!(CgroupDriver::Systemd.container_id(ID), None);
        assert_eq!(
            CgroupDriver::Systemd.container_id(&format!("containerd-{ID}.scope")),
            None
        );
    }

    #[test]
    fn paths_follow_version_and_driver() {
        let v1 = CgroupLayout::new("/sys/fs/cgroup".into(), CgroupVersion::V1);
        let v2 = CgroupLayout::new("/sys/fs/cgroup".into(), CgroupVersion::V2);
        assert_eq!(
            v1.container_dir(Controller::Memory, CgroupDriver::Cgroupfs, ID),
            PathBuf::from(format!("/sys/fs/cgroup/memory/docker/{ID}"))
        );
        assert_eq!(
            v1.container_dir(Controller::Blkio, CgroupDriver::Systemd, ID),
            PathBuf::from(format!(
                "/sys/fs/cgroup/blkio/system.slice/docker-{ID}.scope"
            ))
        );
        assert_eq!(
            v2.container_dir(Controller::Memory, CgroupDriver::Cgroupfs, ID),
            PathBuf::from(format!("/sys/fs/cgroup/docker/{ID}"))
        );
        assert_eq!(
            v2.container_dir(Controller::Cpuacct, CgroupDriver::Systemd, ID),
            PathBuf::from(format!("/sys/fs/cgroup/system.slice/docker-{ID}.scope"))
        );
        assert_eq!(
            v1.listing_dir(CgroupDriver::Cgroupfs),
            PathBuf::from("/sys/fs/cgroup/cpuacct/docker")
        );
        assert_eq!(
            v2.listing_dir(CgroupDriver::Systemd),
            PathBuf::from("/sys/fs/cgroup/system.slice")
        );
    }

    #[test]
    fn layout_detection_looks_for_cgroup_controllers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            CgroupLayout::detect(dir.path()).version(),
            CgroupVersion::V1
        );
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        assert_eq!(
            CgroupLayout::detect(dir.path()).version(),
            CgroupVersion::V2
        );
    }

    #[test]
    fn v1_cpu_files() {
        assert_eq!(parse_u64("955084122\n"), Ok(955_084_122));
        assert!(parse_u64("").is_err());
        assert!(parse_u64("-1\n").is_err());
        let (user, system) = cpu_split_from_v1_stat("user 95\nsystem 12\n", 100.0).unwrap();
        assert_eq!(user, 0.95);
        assert_eq!(system, 0.12);
        assert!(cpu_split_from_v1_stat("user 95\n", 100.0).is_err());
    }

    #[test]
    fn v2_cpu_stat() {
        let text = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n\
                    nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
        assert_eq!(
            cpu_from_v2_stat(text),
            Ok(CpuUsage {
                total_seconds: 2.5,
                user_seconds: 2.0,
                system_seconds: 0.5
            })
        );
        assert!(cpu_from_v2_stat("usage_usec 1\nuser_usec x\nsystem_usec 1\n").is_err());
    }

    /// An excerpt of a real v1 `memory.stat` of a running container: the local keys
    /// come first and must not be confused with the hierarchical `total_` ones.
    const V1_MEMORY_STAT: &str = "cache 1605632\nrss 61440\nrss_huge 0\nshmem 0\n\
        mapped_file 1347584\ninactive_anon 57344\nactive_anon 4096\ninactive_file 1605632\n\
        active_file 0\nhierarchical_memory_limit 9223372036854771712\n\
        total_cache 2605632\ntotal_rss 161440\ntotal_inactive_file 1705632\ntotal_active_file 0\n";

    #[test]
    fn v1_memory_uses_hierarchical_totals() {
        let m = memory_from_v1(2_170_880, V1_MEMORY_STAT).unwrap();
        assert_eq!(
            m,
            MemoryUsage {
                usage_bytes: 2_170_880,
                working_set_bytes: 2_170_880 - 1_705_632,
                rss_bytes: 161_440,
                cache_bytes: 2_605_632,
            }
        );
    }

    #[test]
    fn working_set_is_floored_at_zero() {
        // Usage and memory.stat are read at different instants, so inactive_file can
        // exceed the usage read just before it.
        let m = memory_from_v1(
            1000,
            "total_inactive_file 5000\ntotal_rss 1\ntotal_cache 2\n",
        )
        .unwrap();
        assert_eq!(m.working_set_bytes, 0);
        let m = memory_from_v2(1000, "anon 1\nfile 2\ninactive_file 5000\n").unwrap();
        assert_eq!(m.working_set_bytes, 0);
    }

    #[test]
    fn v2_memory_stat() {
        let stat = "anon 4096000\nfile 8192000\nkernel_stack 16384\nactive_anon 0\n\
                    inactive_anon 4096000\nactive_file 2048000\ninactive_file 6144000\n";
        assert_eq!(
            memory_from_v2(10_240_000, stat),
            Ok(MemoryUsage {
                usage_bytes: 10_240_000,
                working_set_bytes: 4_096_000,
                rss_bytes: 4_096_000,
                cache_bytes: 8_192_000,
            })
        );
        assert!(memory_from_v2(1, "anon 1\nfile 2\n").is_err());
    }

    #[test]
    fn memory_limits_report_unlimited_as_zero() {
        assert_eq!(memory_limit_from_v1("9223372036854771712\n"), Ok(0));
        // 64 KiB pages give a different "unlimited" value.
        assert_eq!(memory_limit_from_v1("9223372036854710272\n"), Ok(0));
        assert_eq!(memory_limit_from_v1("536870912\n"), Ok(536_870_912));
        assert_eq!(memory_limit_from_v2("max\n"), Ok(0));
        assert_eq!(memory_limit_from_v2("268435456\n"), Ok(268_435_456));
        assert!(memory_limit_from_v2("lots\n").is_err());
    }

    #[test]
    fn v1_blkio_keeps_read_and_write_per_device() {
        let text = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 8192\n8:0 Async 4096\n\
                    8:0 Discard 0\n8:0 Total 12288\n253:1 Read 100\n253:1 Write 0\n\
                    253:1 Total 100\nTotal 12388\n";
        let mut out = vec![DeviceIo::default(); 3]; // stale content must go
        parse_v1_blkio(text, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                DeviceIo {
                    major: 8,
                    minor: 0,
                    read_bytes: 4096,
                    write_bytes: 8192
                },
                DeviceIo {
                    major: 253,
                    minor: 1,
                    read_bytes: 100,
                    write_bytes: 0
                },
            ]
        );
        parse_v1_blkio("Total 0\n", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(parse_v1_blkio("8-0 Read 1\n", &mut out).is_err());
        assert!(parse_v1_blkio("8:0 Read lots\n", &mut out).is_err());
    }

    #[test]
    fn v2_io_stat() {
        let text = "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
                    253:0 rbytes=0 wbytes=4096 rios=0 wios=1 dbytes=0 dios=0\n";
        let mut out = Vec::new();
        parse_v2_io_stat(text, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                DeviceIo {
                    major: 8,
                    minor: 16,
                    read_bytes: 1_459_200,
                    write_bytes: 314_773_504
                },
                DeviceIo {
                    major: 253,
                    minor: 0,
                    read_bytes: 0,
                    write_bytes: 4096
                },
            ]
        );
        parse_v2_io_stat("", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(parse_v2_io_stat("8:16 rbytes=-3\n", &mut out).is_err());
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reader_reads_a_v2_systemd_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(format!("system.slice/docker-{ID}.scope"));
        write(
            &dir,
            "cpu.stat",
            "usage_usec 3000000\nuser_usec 1000000\nsystem_usec 2000000\n",
        );
        write(&dir, "memory.current", "1048576\n");
        write(
            &dir,
            "memory.stat",
            "anon 524288\nfile 262144\ninactive_file 131072\n",
        );
        write(&dir, "memory.max", "max\n");
        write(
            &dir,
            "io.stat",
            "8:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n",
        );
        let mut reader = CgroupReader::new(CgroupLayout::new(
            root.path().to_path_buf(),
            CgroupVersion::V2,
        ));
        let mut stats = CgroupStats::default();
        let mut errors = Vec::new();
        let outcome = reader.read(CgroupDriver::Systemd, ID, &mut stats, &mut errors);
        assert_eq!(outcome, ReadOutcome::Read);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(stats.cpu_total_seconds, Some(3.0));
        assert_eq!(stats.cpu_user_system_seconds, Some((1.0, 2.0)));
        assert_eq!(
            stats.memory,
            Some(MemoryUsage {
                usage_bytes: 1_048_576,
                working_set_bytes: 1_048_576 - 131_072,
                rss_bytes: 524_288,
                cache_bytes: 262_144
            })
        );
        assert_eq!(stats.memory_limit_bytes, Some(0));
        assert_eq!(
            stats.io,
            Some(vec![DeviceIo {
                major: 8,
                minor: 0,
                read_bytes: 10,
                write_bytes: 20
            }])
        );
    }

    #[test]
    fn reader_reads_v1_with_fallback_to_non_recursive_blkio() {
        let root = tempfile::tempdir().unwrap();
        let rel = format!("docker/{ID}");
        write(
            &root.path().join("cpuacct").join(&rel),
            "cpuacct.usage",
            "1500000000\n",
        );
        write(
            &root.path().join("cpuacct").join(&rel),
            "cpuacct.stat",
            "user 100\nsystem 50\n",
        );
        let mem = root.path().join("memory").join(&rel);
        write(&mem, "memory.usage_in_bytes", "4096\n");
        write(
            &mem,
            "memory.stat",
            "total_inactive_file 1024\ntotal_rss 2048\ntotal_cache 1024\n",
        );
        write(&mem, "memory.limit_in_bytes", "8192\n");
        let blkio = root.path().join("blkio").join(&rel);
        write(
            &blkio,
            "blkio.throttle.io_service_bytes",
            "8:0 Read 7\n8:0 Write 9\nTotal 16\n",
        );
        let mut reader = CgroupReader::new(CgroupLayout::new(
            root.path().to_path_buf(),
            CgroupVersion::V1,
        ));
        let hz = reader.user_hz;
        let mut stats = CgroupStats::default();
        let mut errors = Vec::new();
        for _ in 0..2 {
            let outcome = reader.read(CgroupDriver::Cgroupfs, ID, &mut stats, &mut errors);
            assert_eq!(outcome, ReadOutcome::Read);
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(stats.cpu_total_seconds, Some(1.5));
            assert_eq!(stats.cpu_user_system_seconds, Some((100.0 / hz, 50.0 / hz)));
            assert_eq!(stats.memory.map(|m| m.working_set_bytes), Some(3072));
            assert_eq!(stats.memory_limit_bytes, Some(8192));
            assert_eq!(
                stats.io.as_deref(),
                Some(
                    &[DeviceIo {
                        major: 8,
                        minor: 0,
                        read_bytes: 7,
                        write_bytes: 9
                    }][..]
                )
            );
        }
    }

    #[test]
    fn reader_reports_bad_files_and_keeps_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(format!("docker/{ID}"));
        write(
            &dir,
            "cpu.stat",
            "usage_usec 1\nuser_usec 1\nsystem_usec 0\n",
        );
        write(&dir, "memory.current", "garbage\n");
        write(&dir, "memory.max", "1024\n");
        // io.stat is missing while the cgroup exists: an error naming the file.
        let mut reader = CgroupReader::new(CgroupLayout::new(
            root.path().to_path_buf(),
            CgroupVersion::V2,
        ));
        let mut stats = CgroupStats::default();
        let mut errors = Vec::new();
        let outcome = reader.read(CgroupDriver::Cgroupfs, ID, &mut stats, &mut errors);
        assert_eq!(outcome, ReadOutcome::Read);
        assert_eq!(stats.cpu_total_seconds, Some(1e-6));
        assert_eq!(stats.memory, None);
        assert_eq!(stats.memory_limit_bytes, Some(1024));
        assert_eq!(stats.io, None);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            matches!(&errors[0], CollectError::Parse { path, .. } if path.ends_with("memory.current"))
        );
        assert!(matches!(&errors[1], CollectError::Read { path, .. } if path.ends_with("io.stat")));
    }

    #[test]
    fn a_vanished_cgroup_is_gone_not_an_error() {
        let root = tempfile::tempdir().unwrap();
        let mut reader = CgroupReader::new(CgroupLayout::new(
            root.path().to_path_buf(),
            CgroupVersion::V2,
        ));
        let mut stats = CgroupStats::default();
        let mut errors = Vec::new();
        let outcome = reader.read(CgroupDriver::Cgroupfs, ID, &mut stats, &mut errors);
        assert_eq!(outcome, ReadOutcome::Gone);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(stats, CgroupStats::default());
    }
}
