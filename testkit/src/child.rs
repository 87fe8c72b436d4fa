//! Child processes that a test starts and must not leak, whatever way it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped on drop unless it already exited.
/// Its stderr and stdout go to a log file, shown by [`ChildGuard::log_tail`] when a
/// test fails.
pub struct ChildGuard {
    child: Child,
    name: String,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> std::io::Result<ChildGuard> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()?;
        Ok(ChildGuard {
            child,
            name: name.to_string(),
            log: log.to_path_buf(),
            exited: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (without blocking).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// `kill -9` and reap: the process gets no chance to flush or clean up.
    pub fn kill9(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(s) = self.exited() {
            return Ok(s);
        }
        self.child.kill()?;
        let s = self.child.wait()?;
        self.exited = Some(s);
        Ok(s)
    }

    /// SIGTERM, then waits up to `grace` for an orderly exit. Past it the process is
    /// killed and the result is an error naming the timeout.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, String> {
        if let Some(s) = self.exited() {
            return Ok(s);
        }
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| e.to_string())?;
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(format!(
                "SIGTERM to {}: {}",
                self.name,
                std::io::Error::last_os_error()
            ));
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.kill9();
        Err(format!(
            "{} did not exit within {grace:?} of SIGTERM",
            self.name
        ))
    }

    /// The last `max` bytes of the process's log.
    pub fn log_tail(&self, max: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        format!(
            "--- last {} bytes of {} ({}) ---\n{}",
            text.len() - start,
            self.name,
            self.log.display(),
            String::from_utf8_lossy(&text[start..])
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}
