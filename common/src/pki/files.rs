//! Writing secrets to disk.

use super::PkiError;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `contents` to `path` with mode 0600, atomically.
///
/// The temporary file is created with mode 0600 from the start (never world-readable,
/// not even between create and chmod), fsynced, renamed over `path`, and the directory is
/// fsynced, so after a crash `path` holds either the old or the new key, never half of
/// one. A stale temporary from an earlier crash is removed first. Used for the CA key
/// (DESIGN §3.6), node keys and the agent's state. The temporary's name is fixed
/// (`.<name>.tmp` beside `path`), so one path must have one writer at a time.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| PkiError::Io { path: p, source }
    };
    let file_name = path.file_name().ok_or_else(|| PkiError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // The umask can only remove bits, but an explicit chmod keeps the promise even
        // if the file system ignored the create mode.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io(&tmp))?;
        f.write_all(contents).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_mode_0600_and_replaces_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("ca.key");
        write_private_file(&path, b"first").unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"first");

        // A stale temporary left by a crash does not block the next write.
        fs::write(dir.join(".ca.key.tmp"), b"stale").unwrap();
        write_private_file(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert!(!dir.join(".ca.key.tmp").exists());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let path = Path::new("/nonexistent-argus-dir/x/ca.key");
        let err = write_private_file(path, b"k").unwrap_err();
        assert!(matches!(err, PkiError::Io { .. }), "{err}");
        assert!(err.to_string().contains("nonexistent-argus-dir"), "{err}");
    }
}
