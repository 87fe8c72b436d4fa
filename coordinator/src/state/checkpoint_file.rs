//! The replica's checkpoint as a file of its own beside the store, replaced atomically.
//!
//! A checkpoint is rewritten whole every few seconds under load (head, index, dedup and
//! aggregation state: about a kilobyte per series). Kept in the store, every version
//! went through fjall's journal, which fjall deletes only after 64 MB were written to it:
//! the journal then held a dozen stale checkpoints at any time. As a file, only the
//! latest one takes disk.
//!
//! Crash safety: the new version is written to a temporary file, synced, renamed over the
//! old one, and the directory synced, so a crash leaves the old checkpoint or the new one,
//! never a torn one. The caller syncs the store first, so the chunks a checkpoint relies on
//! are durable before it is.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "checkpoint";
const TEMP_NAME: &str = "checkpoint.tmp";

/// Largest checkpoint read back; a larger file is refused rather than read into memory.
pub const MAX_CHECKPOINT_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
#[error("checkpoint file {path}: {source}")]
pub struct CheckpointFileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Where the checkpoint lives: one directory, holding the file and its temporary.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    dir: PathBuf,
}

impl CheckpointFile {
    pub fn new(dir: impl AsRef<Path>) -> CheckpointFile {
        CheckpointFile {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn err(&self, path: PathBuf) -> impl FnOnce(std::io::Error) -> CheckpointFileError {
        move |source| CheckpointFileError { path, source }
    }

    /// The last checkpoint written, if any. A temporary left by a crash is ignored.
    pub fn read(&self) -> Result<Option<Vec<u8>>, CheckpointFileError> {
        let path = self.path();
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(path)(e)),
        };
        if len > MAX_CHECKPOINT_BYTES {
            return Err(self.err(path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{len} bytes, over the {MAX_CHECKPOINT_BYTES}-byte limit"),
            )));
        }
        fs::read(&path).map(Some).map_err(self.err(path))
    }

    /// Replaces the checkpoint with `bytes`, durably (see the module documentation).
    pub fn write(&self, bytes: &[u8]) -> Result<(), CheckpointFileError> {
        fs::create_dir_all(&self.dir).map_err(self.err(self.dir.clone()))?;
        let temp = self.dir.join(TEMP_NAME);
        let mut f = File::create(&temp).map_err(self.err(temp.clone()))?;
        f.write_all(bytes).map_err(self.err(temp.clone()))?;
        f.sync_all().map_err(self.err(temp.clone()))?;
        drop(f);
        fs::rename(&temp, self.path()).map_err(self.err(self.path()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.err(self.dir.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_checkpoint_and_a_stale_temporary_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cp = CheckpointFile::new(dir.path());
        assert_eq!(cp.read().unwrap(), None);
        cp.write(b"first").unwrap();
        cp.write(b"second").unwrap();
        assert_eq!(cp.read().unwrap().as_deref(), Some(&b"second"[..]));
        // A crash between writing the temporary and the rename leaves the old version.
        fs::write(dir.path().join(TEMP_NAME), b"torn").unwrap();
        assert_eq!(cp.read().unwrap().as_deref(), Some(&b"second"[..]));
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2, "the checkpoint and the stale temporary");
    }

    #[test]
    fn an_unreadable_checkpoint_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(FILE_NAME)).unwrap();
        let e = CheckpointFile::new(dir.path()).read().unwrap_err();
        assert!(e.to_string().contains("checkpoint"), "{e}");
    }
}
