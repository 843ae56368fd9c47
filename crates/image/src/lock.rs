//! Advisory whole-file locks (`flock(2)`).
//!
//! A lock belongs to an open file description: it is released when every descriptor sharing it
//! is closed, including when the process holding it is killed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Takes an exclusive lock on `file`. With `wait` it blocks until the lock is free; without, it
/// returns `Ok(false)` at once when another open file description holds the lock.
pub(crate) fn lock_exclusive(file: &File, wait: bool) -> io::Result<bool> {
    let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    loop {
        // SAFETY: flock only takes a descriptor number; `file` keeps that descriptor open for
        // the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_description_cannot_take_a_held_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = File::create(&path).unwrap();
        let b = File::open(&path).unwrap();
        assert!(lock_exclusive(&a, false).unwrap());
        assert!(!lock_exclusive(&b, false).unwrap());
        drop(a);
        assert!(lock_exclusive(&b, false).unwrap());
    }
}
