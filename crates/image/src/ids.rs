//! The user and group ids files have on disk, and the ones sandboxes see.
//!
//! Every sandbox runs in a user namespace that maps ids `0..SANDBOX_IDS` inside to
//! `HOST_BASE..HOST_BASE + SANDBOX_IDS` on the host: root inside is the unprivileged host uid
//! `HOST_BASE`. All sandboxes share that one range (as Docker's `userns-remap` does), so that
//! layers can be shared between them without copies or idmapped mounts: a layer is stored with
//! its owners already shifted into the range ([`shift_tree`]), and what a sandbox writes lands
//! in its upper directory with shifted owners too. Sandboxes are kept apart from each other by
//! their own pid, mount, network and IPC namespaces, not by their ids.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The first host id of the sandboxes' range: far above the ranges `/etc/subuid` hands out
/// (100000 and up in steps of 65536), so no host user owns an id in it.
pub const HOST_BASE: u32 = 1_000_000_000;

/// How many ids a sandbox has: `0..SANDBOX_IDS` inside.
pub const SANDBOX_IDS: u32 = 65_536;

/// The line a sandbox's `uid_map` and `gid_map` get.
pub fn id_map() -> String {
    format!("0 {HOST_BASE} {SANDBOX_IDS}")
}

/// The host id of `id` inside a sandbox, if it is inside the range.
pub fn to_host(id: u32) -> Option<u32> {
    (id < SANDBOX_IDS).then(|| HOST_BASE + id)
}

/// A failure shifting a tree.
#[derive(Debug, thiserror::Error)]
#[error("cannot give {path} the sandboxes' owners: {source}")]
pub struct ShiftError {
    /// The file.
    pub path: PathBuf,
    /// What failed.
    pub source: io::Error,
}

/// The extended attribute holding a file's capabilities, which `chown` clears.
const CAPABILITY_XATTR: &std::ffi::CStr = c"security.capability";

/// Moves the owners of `root` and everything below it into the sandboxes' range: an owner
/// `id < SANDBOX_IDS` becomes `HOST_BASE + id`; owners already in the range, or beyond it, stay.
/// So it can run twice. The setuid and setgid bits and file capabilities, which `chown` clears,
/// are put back. Symbolic links are changed themselves, never followed.
pub fn shift_tree(root: &Path) -> Result<(), ShiftError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let error = |source| ShiftError { path: path.clone(), source };
        let meta = fs::symlink_metadata(&path).map_err(error)?;
        shift_one(&path, &meta).map_err(error)?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(error)? {
                stack.push(entry.map_err(error)?.path());
            }
        }
    }
    Ok(())
}

fn shift_one(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let (uid, gid) = (to_host(meta.uid()), to_host(meta.gid()));
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let capabilities = if meta.is_file() { capability_xattr(path)? } else { None };
    lchown(path, uid, gid)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.mode() & 0o6000 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    if let Some(value) = capabilities {
        set_capability_xattr(path, &value)?;
    }
    Ok(())
}

/// The file capabilities of `path`, if it has any.
fn capability_xattr(path: &Path) -> io::Result<Option<Vec<u8>>> {
    crate::xattr::get(path, CAPABILITY_XATTR)
}

fn set_capability_xattr(path: &Path, value: &[u8]) -> io::Result<()> {
    crate::xattr::set(path, CAPABILITY_XATTR, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn ids_inside_the_range_map_to_the_host() {
        assert_eq!(to_host(0), Some(HOST_BASE));
        assert_eq!(to_host(999), Some(HOST_BASE + 999));
        assert_eq!(to_host(SANDBOX_IDS - 1), Some(HOST_BASE + SANDBOX_IDS - 1));
        assert_eq!(to_host(SANDBOX_IDS), None);
        assert_eq!(id_map(), "0 1000000000 65536");
    }

    #[test]
    fn trees_are_shifted_once_keeping_special_bits() {
        if !nix_is_root() {
            eprintln!("SKIP: chown to other owners needs root");
            assert!(std::env::var_os("CI").is_none(), "CI must run as root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        let tool = root.join("usr/bin/tool");
        fs::write(&tool, b"x").unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o4755)).unwrap();
        let data = root.join("data");
        fs::write(&data, b"y").unwrap();
        lchown(&data, Some(999), Some(998)).unwrap();
        let high = root.join("high");
        fs::write(&high, b"z").unwrap();
        lchown(&high, Some(SANDBOX_IDS + 5), Some(0)).unwrap();
        symlink("/nowhere", root.join("link")).unwrap();
        // A capability set (cap_net_raw, permitted, version 2), as `setcap cap_net_raw+p` writes.
        let caps: [u8; 20] = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        set_capability_xattr(&data, &caps).unwrap();

        for _ in 0..2 {
            shift_tree(&root).unwrap();
            let owner = |p: &Path| {
                let m = fs::symlink_metadata(p).unwrap();
                (m.uid(), m.gid())
            };
            assert_eq!(owner(&root), (HOST_BASE, HOST_BASE));
            assert_eq!(owner(&tool), (HOST_BASE, HOST_BASE));
            assert_eq!(owner(&data), (HOST_BASE + 999, HOST_BASE + 998));
            assert_eq!(owner(&high), (SANDBOX_IDS + 5, HOST_BASE), "out of range stays");
            assert_eq!(owner(&root.join("link")), (HOST_BASE, HOST_BASE));
            assert_eq!(fs::metadata(&tool).unwrap().mode() & 0o7777, 0o4755);
            assert_eq!(capability_xattr(&data).unwrap().as_deref(), Some(&caps[..]));
        }
        assert_eq!(capability_xattr(&tool).unwrap(), None);
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
