//! Durable, all-or-nothing file replacement and removal.
//!
//! A file is written to a temporary name in the same directory, synced, renamed over the target
//! and the directory synced: after a crash the target holds either the old or the new content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors from writing or removing a file durably.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// The file could not be written, synced or renamed into place.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file that was being written.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// The file could not be removed.
    #[error("cannot remove {path}: {source}")]
    Remove {
        /// The file that was being removed.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
}

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    let err = |source| AtomicError::Write { path: path.to_path_buf(), source };
    let dir = parent(path);
    let name = path.file_name().ok_or_else(|| err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let tmp = dir.join(format!(".{}.tmp-{:016x}", name.to_string_lossy(), rand::random::<u64>()));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    sync_dir(dir).map_err(err)
}

/// Removes `path` and syncs its directory, so the removal survives a crash.
pub(crate) fn remove_file(path: &Path) -> Result<(), AtomicError> {
    let err = |source| AtomicError::Remove { path: path.to_path_buf(), source };
    fs::remove_file(path).map_err(err)?;
    sync_dir(parent(path)).map_err(err)
}

/// Syncs a directory, making renames, creations and removals of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces_without_leaving_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_file(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(entries(dir.path()), ["a.json"]);
    }

    #[test]
    fn failed_write_leaves_old_content_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the way makes the final rename fail.
        let path = dir.path().join("busy");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        let err = write_file(&path, b"new").unwrap_err();
        assert!(err.to_string().starts_with("cannot write "), "{err}");
        assert_eq!(entries(dir.path()), ["busy"]);
        assert_eq!(entries(&path), ["inside"]);
    }

    #[test]
    fn write_into_missing_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/a.json");
        assert!(write_file(&path, b"x").is_err());
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn remove_deletes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_file(&path, b"one").unwrap();
        remove_file(&path).unwrap();
        assert!(entries(dir.path()).is_empty());
        assert!(remove_file(&path).is_err());
    }
}
