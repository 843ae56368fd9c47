//! A minimal root filesystem from the host's static busybox.
//!
//! The tree holds `/bin/busybox`, a symlink for every applet, a root user, `/etc/hosts`, and
//! empty mount points. Building it copies one file and makes a few hundred symlinks.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the busybox-static package installs busybox.
pub(crate) const HOST_BUSYBOX: &str = "/bin/busybox";

const PT_INTERP: u32 = 3;

/// Errors from building the busybox tree.
#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    /// No busybox at all, or a dynamically linked one (which cannot run without host libraries).
    #[error("busybox-static is not installed: run scripts/setup.sh")]
    NotInstalled,
    /// busybox ran but did not list its applets.
    #[error("{busybox} --list-full failed: {reason}")]
    List {
        /// The busybox binary.
        busybox: PathBuf,
        /// Why.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The underlying failure.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BusyboxError {
    let what = what.into();
    move |source| BusyboxError::Io { what, source }
}

/// Fills the empty directory `root` with a busybox root filesystem using the static binary
/// `busybox`. Returns the image source description, e.g. `busybox 1:1.35.0-4+deb12u1`.
pub(crate) fn populate(root: &Path, busybox: &Path) -> Result<String, BusyboxError> {
    if !is_static_elf(busybox)? {
        return Err(BusyboxError::NotInstalled);
    }
    let list_err = |reason: String| BusyboxError::List { busybox: busybox.to_path_buf(), reason };
    let out = Command::new(busybox).arg("--list-full").output().map_err(|e| list_err(e.to_string()))?;
    if !out.status.success() {
        return Err(list_err(out.status.to_string()));
    }
    let list = String::from_utf8_lossy(&out.stdout);

    let dirs = [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("proc", 0o755),
        ("dev", 0o755),
        ("sys", 0o755),
        ("run", 0o755),
    ];
    for (dir, mode) in dirs {
        make_dir(&root.join(dir), mode)?;
    }
    let target = root.join("bin/busybox");
    fs::copy(busybox, &target).map_err(io_err(format!("cannot copy {}", busybox.display())))?;

    let files = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
    ];
    for (file, content) in files {
        let path = root.join(file);
        fs::write(&path, content).map_err(io_err(format!("cannot write {}", path.display())))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .map_err(io_err(format!("cannot chmod {}", path.display())))?;
    }

    for applet in list.lines().map(str::trim) {
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = root.join(applet);
        if let Some(parent) = link.parent() {
            if !parent.is_dir() {
                make_dir(parent, 0o755)?;
            }
        }
        match symlink("/bin/busybox", &link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("cannot create {}", link.display()))(e)),
        }
    }
    Ok(format!("busybox {}", version(busybox)))
}

fn make_dir(path: &Path, mode: u32) -> Result<(), BusyboxError> {
    fs::create_dir_all(path).map_err(io_err(format!("cannot create {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("cannot chmod {}", path.display())))
}

/// The Debian package version from busybox's banner (`BusyBox v1.35.0 (Debian 1:1.35.0-4)`),
/// else its own version, else "unknown".
fn version(busybox: &Path) -> String {
    let banner = Command::new(busybox)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    if let Some(rest) = banner.split("(Debian ").nth(1) {
        if let Some(v) = rest.split(')').next() {
            return v.to_string();
        }
    }
    banner.split_whitespace().find(|w| w.starts_with('v')).unwrap_or("unknown").to_string()
}

/// Whether `path` is a 64-bit little-endian ELF file without a program interpreter, i.e. a
/// static executable. A missing file or a non-ELF file is reported as `NotInstalled` too.
fn is_static_elf(path: &Path) -> Result<bool, BusyboxError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BusyboxError::NotInstalled),
        Err(e) => return Err(io_err(format!("cannot open {}", path.display()))(e)),
    };
    let read_err = io_err(format!("cannot read {}", path.display()));
    let mut header = [0u8; 64];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(read_err(e)),
    }
    // e_ident: magic, class 2 (64-bit), data 1 (little-endian).
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(false);
    }
    let phoff = u64::from_le_bytes(header[0x20..0x28].try_into().expect("8 bytes"));
    let phentsize = u64::from(u16::from_le_bytes([header[0x36], header[0x37]]));
    let phnum = u64::from(u16::from_le_bytes([header[0x38], header[0x39]]));
    if phentsize < 4 {
        return Ok(false);
    }
    let mut p_type = [0u8; 4];
    for i in 0..phnum {
        match file.read_exact_at(&mut p_type, phoff + i * phentsize) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(read_err(e)),
        }
        if u32::from_le_bytes(p_type) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_and_non_elf_files_are_not_static() {
        // The test binary itself is static (crt-static); a host tool like `cp` is dynamic.
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("text");
        fs::write(&text, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(!is_static_elf(&text).unwrap());
        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        assert!(!is_static_elf(&empty).unwrap());
        assert!(matches!(is_static_elf(&dir.path().join("missing")), Err(BusyboxError::NotInstalled)));
        let cp = Path::new("/bin/cp");
        if cp.exists() {
            assert!(!is_static_elf(cp).unwrap());
        }
        let me = std::env::current_exe().unwrap();
        assert!(is_static_elf(&me).unwrap());
    }

    #[test]
    fn dynamic_busybox_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let cp = Path::new("/bin/cp");
        if !cp.exists() {
            eprintln!("skipped: no /bin/cp to act as a dynamic binary");
            return;
        }
        let err = populate(&root, cp).unwrap_err();
        assert_eq!(err.to_string(), "busybox-static is not installed: run scripts/setup.sh");
    }
}
