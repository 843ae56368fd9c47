//! Extended attributes of a path itself (never of a symlink's target): the `l*xattr` calls.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Whether an error means "no such attribute here" (none set, or the filesystem has none).
fn absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP))
}

/// Calls `f(buffer, len)` with ever larger buffers until the answer fits; `f` returns what the
/// `*xattr` call returned.
fn read_sized(mut f: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = f(buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || buf.len() >= 1 << 20 {
            return Err(e);
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// The names of `path`'s attributes (none where the filesystem has none).
pub fn list(path: &Path) -> io::Result<Vec<CString>> {
    let c = c_path(path)?;
    // SAFETY: `c` is NUL-terminated and `read_sized` passes a buffer valid for `len` bytes.
    let names = match read_sized(|buf, len| unsafe { libc::llistxattr(c.as_ptr(), buf.cast(), len) }) {
        Err(e) if absent(&e) => return Ok(Vec::new()),
        r => r?,
    };
    Ok(names.split(|b| *b == 0).filter(|n| !n.is_empty()).map(|n| CString::new(n).expect("no NUL inside")).collect())
}

/// The value of attribute `name` of `path`, if it has it.
pub fn get(path: &Path, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let c = c_path(path)?;
    // SAFETY: both strings are NUL-terminated and `read_sized` passes a buffer valid for `len`.
    match read_sized(|buf, len| unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), buf, len) }) {
        Ok(value) => Ok(Some(value)),
        Err(e) if absent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets attribute `name` of `path` to `value`.
pub fn set(path: &Path, name: &CStr, value: &[u8]) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: both strings are NUL-terminated and `value` is valid for its length.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes attribute `name` of `path`.
pub fn remove(path: &Path, name: &CStr) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: both strings are NUL-terminated.
    if unsafe { libc::lremovexattr(c.as_ptr(), name.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_listed_read_set_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let name = c"user.hiber.test";
        let long = vec![7u8; 1000];
        if let Err(e) = set(&file, name, &long) {
            eprintln!("SKIP: the temporary directory's filesystem has no user attributes ({e})");
            return;
        }
        assert_eq!(get(&file, name).unwrap().as_deref(), Some(&long[..]), "a value longer than the first buffer");
        assert!(list(&file).unwrap().iter().any(|n| n.as_c_str() == name));
        remove(&file, name).unwrap();
        assert_eq!(get(&file, name).unwrap(), None);
        assert!(get(&dir.path().join("missing"), name).is_err());
    }
}
