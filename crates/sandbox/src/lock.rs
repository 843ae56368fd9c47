//! Advisory whole-file locks (`flock(2)`) on lock files: held while the
//! returned file is open, released when it is dropped (or its process dies).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// How to take a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Wait for sole ownership.
    Exclusive,
    /// Wait until no one holds it exclusively.
    Shared,
    /// Sole ownership now, or `None`.
    TryExclusive,
}

/// Locks `path` (created if missing); `Ok(None)` only for
/// [`Mode::TryExclusive`] when someone else holds it.
pub fn lock(path: &Path, mode: Mode) -> io::Result<Option<File>> {
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    let operation = match mode {
        Mode::Exclusive => libc::LOCK_EX,
        Mode::Shared => libc::LOCK_SH,
        Mode::TryExclusive => libc::LOCK_EX | libc::LOCK_NB,
    };
    // SAFETY: flock on a descriptor `file` owns, which outlives the call.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
        return Ok(Some(file));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock if mode == Mode::TryExclusive => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_dropping_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let held = lock(&path, Mode::Exclusive).unwrap().unwrap();
        assert!(lock(&path, Mode::TryExclusive).unwrap().is_none());
        drop(held);
        assert!(lock(&path, Mode::TryExclusive).unwrap().is_some());
        let shared = lock(&path, Mode::Shared).unwrap();
        assert!(shared.is_some() && lock(&path, Mode::Shared).unwrap().is_some());
    }
}
