//! A container image for tests, built from the host's static busybox because no
//! registry can be reached: `/bin/busybox` plus one symlink per applet (`sh`, `sleep`,
//! `httpd`, `yes`, ...), imported with `docker import`. Reused when already present.
//!
//! Also the rules every Docker test follows: skip loudly when no engine answers and
//! `CI` is unset, fail when `CI` is set; remove every container even when a test fails.
//! Benchmarks use the same image and containers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The image the helpers build and run.
pub const IMAGE: &str = "argus-test-busybox:latest";

/// Where Debian's busybox-static installs the binary (`.ci/run` installs it).
const BUSYBOX_CANDIDATES: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// Serialises image builds within one test binary; separate binaries may race, which
/// only leaves an untagged duplicate behind.
static BUILD: Mutex<()> = Mutex::new(());

/// Runs the docker CLI and returns its output (whatever the exit status).
pub fn docker(args: &[&str]) -> std::io::Result<Output> {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// Runs the docker CLI and returns trimmed stdout, or an error with its stderr.
pub fn docker_ok(args: &[&str]) -> Result<String, String> {
    let out = docker(args).map_err(|e| format!("running docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// True if a Docker engine answers the CLI.
pub fn engine_available() -> bool {
    docker_ok(&["version", "--format", "{{.Server.Version}}"]).is_ok()
}

/// Decides whether a Docker test runs. Without an engine it prints a loud SKIP and
/// returns false, unless `CI` is set: then the missing engine fails the test.
pub fn require_engine(test: &str) -> bool {
    if engine_available() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: no Docker engine is reachable and CI is set: Docker tests must run in CI");
    }
    eprintln!();
    eprintln!("==================================================================");
    eprintln!("SKIP {test}: no Docker engine is reachable (set CI=1 to fail instead)");
    eprintln!("==================================================================");
    false
}

/// Builds [`IMAGE`] unless it exists, and returns its name.
pub fn ensure_image() -> Result<&'static str, String> {
    let _guard = BUILD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if docker_ok(&["image", "inspect", "--format", "{{.Id}}", IMAGE]).is_ok() {
        return Ok(IMAGE);
    }
    let busybox = BUSYBOX_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("no busybox binary: install the busybox-static package")?;
    let rootfs = tempfile::tempdir().map_err(|e| format!("temporary rootfs: {e}"))?;
    fill_rootfs(&busybox, rootfs.path())?;
    import(rootfs.path())?;
    // A dynamically linked busybox would import fine and then fail to start.
    if let Err(e) = docker_ok(&["run", "--rm", "--network", "none", IMAGE, "true"]) {
        let _ = docker(&["image", "rm", "-f", IMAGE]);
        return Err(format!(
            "the imported busybox does not run (it must be statically linked, package busybox-static): {e}"
        ));
    }
    Ok(IMAGE)
}

fn fill_rootfs(busybox: &Path, root: &Path) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(dir)).map_err(|e| io(dir, e))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(|e| io("copying busybox", e))?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")
        .map_err(|e| io("etc/passwd", e))?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n").map_err(|e| io("etc/group", e))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| io("busybox --list", e))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(|e| io(applet, e))?;
    }
    Ok(())
}

/// `tar -C root -c . | docker import - IMAGE`.
fn import(root: &Path) -> Result<(), String> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running tar: {e}"))?;
    let stdout = tar.stdout.take().ok_or("tar has no stdout")?;
    let import = Command::new("docker")
        .args(["import", "--change", "CMD [\"/bin/sh\"]", "-", IMAGE])
        .stdin(stdout)
        .output()
        .map_err(|e| format!("running docker import: {e}"))?;
    let tar_status = tar.wait().map_err(|e| format!("waiting for tar: {e}"))?;
    if !tar_status.success() {
        return Err(format!("tar failed: {tar_status}"));
    }
    if !import.status.success() {
        return Err(format!(
            "docker import failed: {}",
            String::from_utf8_lossy(&import.stderr).trim()
        ));
    }
    Ok(())
}

/// A container name no other test run on this engine uses: prefix, pid, counter.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A running test container, removed with `docker rm -f` when dropped (so also when
/// the test panics).
pub struct Container {
    pub name: String,
    pub id: String,
    removed: bool,
}

impl Container {
    /// `docker run -d --name <name> <options> IMAGE <command>`.
    pub fn run(name: &str, options: &[&str], command: &[&str]) -> Result<Container, String> {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(command);
        match docker_ok(&args) {
            Ok(id) => Ok(Container {
                name: name.to_string(),
                id,
                removed: false,
            }),
            Err(e) => {
                // `docker run` can fail after creating the container.
                let _ = docker(&["rm", "-f", name]);
                Err(e)
            }
        }
    }

    /// The main process's pid in the host's namespace (0 when not running).
    pub fn pid(&self) -> Result<u32, String> {
        let pid = docker_ok(&["inspect", "--format", "{{.State.Pid}}", &self.id])?;
        pid.parse().map_err(|e| format!("pid {pid:?}: {e}"))
    }

    /// Removes the container now, and checks that it worked.
    pub fn remove(mut self) -> Result<(), String> {
        self.removed = true;
        docker_ok(&["rm", "-f", &self.id]).map(|_| ())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.removed {
            let _ = docker(&["rm", "-f", &self.id]);
        }
    }
}

/// `n` idle containers named `<prefix>-<pid>-<k>`, for benchmarks that need a fleet.
pub fn start_sleepers(prefix: &str, n: usize) -> Result<Vec<Container>, String> {
    ensure_image()?;
    (0..n)
        .map(|_| Container::run(&unique_name(prefix), &[], &["sleep", "3600"]))
        .collect()
}
