//! Advisory whole-file locks (`flock(2)`).
//!
//! A lock belongs to an open file description: it is held while the file is open and released
//! when every descriptor sharing it is closed, including when the process holding it is killed.

use std::fs::{File, OpenOptions};
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
    /// Sole ownership now, or not at all.
    TryExclusive,
}

/// Locks the open `file`; false only for [`Mode::TryExclusive`] when another open file
/// description holds the lock. Interrupted waits are retried.
pub fn lock_file(file: &File, mode: Mode) -> io::Result<bool> {
    let operation = match mode {
        Mode::Exclusive => libc::LOCK_EX,
        Mode::Shared => libc::LOCK_SH,
        Mode::TryExclusive => libc::LOCK_EX | libc::LOCK_NB,
    };
    loop {
        // SAFETY: flock only takes a descriptor number; `file` keeps that descriptor open for
        // the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if mode == Mode::TryExclusive => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Opens (creating) the lock file `path` and locks it; `Ok(None)` only for
/// [`Mode::TryExclusive`] when someone else holds it. The lock lasts as long as the file.
pub fn lock(path: &Path, mode: Mode) -> io::Result<Option<File>> {
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    Ok(lock_file(&file, mode)?.then_some(file))
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

    #[test]
    fn a_second_description_of_the_same_file_is_excluded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = File::create(&path).unwrap();
        let b = File::open(&path).unwrap();
        assert!(lock_file(&a, Mode::TryExclusive).unwrap());
        assert!(!lock_file(&b, Mode::TryExclusive).unwrap());
        drop(a);
        assert!(lock_file(&b, Mode::TryExclusive).unwrap());
    }
}
