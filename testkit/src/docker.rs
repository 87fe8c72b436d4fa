//! Real containers for tests, from an image we build ourselves.
//!
//! No registry is reachable, so the image is Debian's statically linked busybox
//! imported as a one-binary rootfs: it has `sh`, `sleep`, `httpd` and friends, which is
//! all a test container needs.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The tag of the test image.
pub const BUSYBOX_IMAGE: &str = "argus-test-busybox:latest";

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "sleep", "httpd", "yes", "cat", "echo", "ls", "true", "false", "dd", "head", "wc", "kill",
];

#[derive(Debug)]
pub struct DockerError(pub String);

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DockerError {}

fn docker(args: &[&str]) -> Result<String, DockerError> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DockerError(format!("docker {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(DockerError(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether a Docker engine answers.
pub fn engine_reachable() -> bool {
    docker(&["version", "--format", "{{.Server.Version}}"]).is_ok()
}

/// For tests that need the engine: true to go on; false (after a loud message) to
/// skip. With `CI` set a missing engine is a failure, never a skip.
pub fn require_engine(test: &str) -> bool {
    if engine_reachable() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: no Docker engine is reachable, and CI is set"
    );
    eprintln!("\n*** SKIPPED {test}: no Docker engine is reachable ***\n");
    false
}

/// Builds (once) and returns the busybox test image.
pub fn ensure_busybox_image() -> Result<&'static str, DockerError> {
    if docker(&["image", "inspect", BUSYBOX_IMAGE]).is_ok() {
        return Ok(BUSYBOX_IMAGE);
    }
    if !Path::new(BUSYBOX).exists() {
        return Err(DockerError(format!(
            "{BUSYBOX} not found: apt-get install busybox-static"
        )));
    }
    let dir = std::env::temp_dir().join(format!("argus-busybox-rootfs-{}", std::process::id()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| DockerError(format!("{}: {e}", bin.display())))?;
    for d in ["tmp", "proc", "sys", "dev", "etc", "www"] {
        let _ = std::fs::create_dir_all(dir.join(d));
    }
    std::fs::copy(BUSYBOX, bin.join("busybox"))
        .map_err(|e| DockerError(format!("copy busybox: {e}")))?;
    for a in APPLETS {
        let link = bin.join(a);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .map_err(|e| DockerError(format!("{}: {e}", link.display())))?;
        }
    }
    let _ = std::fs::write(dir.join("www/index.html"), "ok\n");
    let tar = dir.with_extension("tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| DockerError(format!("tar: {e}")))?;
    if !status.success() {
        return Err(DockerError("tar of the rootfs failed".into()));
    }
    let imported = docker(&[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        tar.to_str().unwrap_or_default(),
        BUSYBOX_IMAGE,
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&tar);
    // Another test may have imported it concurrently; that is as good as ours.
    match imported {
        Ok(_) => Ok(BUSYBOX_IMAGE),
        Err(e) if docker(&["image", "inspect", BUSYBOX_IMAGE]).is_ok() => {
            let _ = e;
            Ok(BUSYBOX_IMAGE)
        }
        Err(e) => Err(e),
    }
}

/// A container removed when dropped, so a failing test leaves nothing behind.
pub struct Container {
    pub id: String,
    pub name: String,
}

impl Container {
    /// `docker run -d --name NAME IMAGE ARGS...`
    pub fn run(name: &str, image: &str, args: &[&str]) -> Result<Container, DockerError> {
        let _ = docker(&["rm", "-f", name]);
        let mut full = vec!["run", "-d", "--name", name, image];
        full.extend_from_slice(args);
        let id = docker(&full)?;
        Ok(Container {
            id,
            name: name.to_string(),
        })
    }

    /// Removes it now (what `drop` would do), reporting failure.
    pub fn remove(&self) -> Result<(), DockerError> {
        docker(&["rm", "-f", &self.id]).map(|_| ())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

/// Several sleeping containers, named `<prefix>-<i>`.
pub struct Containers(pub Vec<Container>);

impl Containers {
    pub fn start(image: &str, n: usize, prefix: &str) -> Result<Containers, DockerError> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            v.push(Container::run(
                &format!("{prefix}-{i}"),
                image,
                &["sleep", "3600"],
            )?);
        }
        Ok(Containers(v))
    }
}
