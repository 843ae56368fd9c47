//! Squashing a stack of overlayfs layers into one layer that shows the same tree when mounted
//! over the same layers below.
//!
//! Each snapshot of a sandbox adds a layer (its upper directory) on top of the ones it was
//! restored from, and a stack cannot grow for ever: the kernel takes at most a page of mount
//! options and CRIU reads mount lines of bounded length (a dump fails after about ninety), and
//! every lookup of a missing name searches every layer. Squashing applies the layers bottom-up
//! onto one new tree, with overlayfs's own rules:
//!
//! - a non-directory (file, symlink, device, FIFO, socket — and a whiteout, a 0/0 character
//!   device) replaces whatever was below it;
//! - a directory merges with a directory below it, unless it is opaque
//!   (`trusted.overlay.opaque=y`) or stands over a non-directory, in which case it replaces it
//!   and stays (or becomes) opaque, so the layers under the squashed one stay hidden too.
//!
//! Whiteouts are kept: they hide files of the layers below the squashed stack (the image).
//! Non-directories are hard-linked, not copied (layers are immutable and on one filesystem);
//! directories are made anew with the top-most source's owner, mode, times and extended
//! attributes, without overlayfs's own bookkeeping attributes (`trusted.overlay.origin`,
//! `impure`, ...), which describe the old upper directory's relation to its lowers.

use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::xattr;

/// Marks a directory whose layers below do not show through.
const OPAQUE: &CStr = c"trusted.overlay.opaque";

/// Prefix of the attributes overlayfs keeps for itself.
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";

/// Fills the empty directory `dst` with the squash of `sources`, top-most first.
pub(crate) fn squash(sources: &[&Path], dst: &Path) -> io::Result<()> {
    for src in sources.iter().rev() {
        apply(src, dst)?;
    }
    if let Some(top) = sources.first() {
        copy_dir_attributes(top, dst, false)?;
    }
    Ok(())
}

/// Applies layer directory `src` onto the squashed tree `dst` (both directories).
fn apply(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let below = fs::symlink_metadata(&to).ok();
        if !entry.file_type()?.is_dir() {
            if let Some(below) = below {
                remove(&to, &below)?;
            }
            fs::hard_link(&from, &to)?;
            continue;
        }
        let opaque = is_opaque(&from)? || below.as_ref().is_some_and(|b| !b.is_dir());
        match below {
            Some(b) if b.is_dir() && !opaque => {}
            Some(b) => {
                remove(&to, &b)?;
                fs::create_dir(&to)?;
            }
            None => fs::create_dir(&to)?,
        }
        apply(&from, &to)?;
        copy_dir_attributes(&from, &to, opaque)?;
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> io::Result<bool> {
    Ok(xattr::get(dir, OPAQUE)?.as_deref() == Some(b"y"))
}

fn remove(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Gives directory `to` the owner, mode, extended attributes and times of directory `from`
/// (overlayfs's attributes left out), and makes it opaque if `opaque`. Times go last: the
/// other changes would touch them.
fn copy_dir_attributes(from: &Path, to: &Path, opaque: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let wanted: Vec<_> = xattr::list(from)?.into_iter().filter(|n| !n.as_bytes().starts_with(OVERLAY_PREFIX)).collect();
    for name in xattr::list(to)? {
        if !wanted.contains(&name) && name.as_c_str() != OPAQUE {
            xattr::remove(to, &name)?;
        }
    }
    for name in &wanted {
        if let Some(value) = xattr::get(from, name)? {
            xattr::set(to, name, &value)?;
        }
    }
    if opaque {
        xattr::set(to, OPAQUE, b"y")?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(None, to, &atime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// Makes a whiteout (a 0/0 character device) at `path`.
    fn whiteout(path: &Path) {
        nix::sys::stat::mknod(path, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0).unwrap();
    }

    fn is_whiteout(path: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
    }

    /// Names below `dir`, relative, sorted.
    fn tree(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    fn root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn upper_layers_win_and_whiteouts_and_opaque_directories_hide_what_is_below() {
        if !root() {
            eprintln!("SKIP: whiteouts and trusted attributes need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let [old, mid, top, out] = ["old", "mid", "top", "out"].map(|n| dir.path().join(n));
        for d in [&old, &mid, &top, &out] {
            fs::create_dir(d).unwrap();
        }
        // old: a/x, a/y, b/z, c (a file), keep
        fs::create_dir_all(old.join("a")).unwrap();
        fs::create_dir_all(old.join("b")).unwrap();
        fs::write(old.join("a/x"), "old x").unwrap();
        fs::write(old.join("a/y"), "old y").unwrap();
        fs::write(old.join("b/z"), "old z").unwrap();
        fs::write(old.join("c"), "c was a file").unwrap();
        fs::write(old.join("keep"), "kept").unwrap();
        // mid: a/x changed, a/y deleted, b made opaque anew with w, c a directory, gone whited out
        fs::create_dir_all(mid.join("a")).unwrap();
        fs::write(mid.join("a/x"), "mid x").unwrap();
        whiteout(&mid.join("a/y"));
        fs::create_dir_all(mid.join("b")).unwrap();
        xattr::set(&mid.join("b"), OPAQUE, b"y").unwrap();
        fs::write(mid.join("b/w"), "w").unwrap();
        fs::create_dir_all(mid.join("c")).unwrap();
        fs::write(mid.join("c/inside"), "inside").unwrap();
        whiteout(&mid.join("gone"));
        // top: a/y comes back, a link, a directory with an origin attribute and a mode of its own
        fs::create_dir_all(top.join("a")).unwrap();
        fs::write(top.join("a/y"), "new y").unwrap();
        symlink("a/x", top.join("link")).unwrap();
        xattr::set(&top.join("a"), c"trusted.overlay.origin", b"stale").unwrap();
        xattr::set(&top.join("a"), c"user.note", b"kept").unwrap();
        fs::set_permissions(top.join("a"), fs::Permissions::from_mode(0o750)).unwrap();

        squash(&[&top, &mid, &old], &out).unwrap();

        let names: Vec<PathBuf> = ["a", "a/x", "a/y", "b", "b/w", "c", "c/inside", "gone", "keep", "link"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(tree(&out), names);
        assert_eq!(fs::read_to_string(out.join("a/x")).unwrap(), "mid x");
        assert_eq!(fs::read_to_string(out.join("a/y")).unwrap(), "new y");
        assert_eq!(fs::read_to_string(out.join("keep")).unwrap(), "kept");
        assert!(is_whiteout(&out.join("gone")), "a whiteout stays, to hide the image's file");
        assert!(is_opaque(&out.join("b")).unwrap(), "an opaque directory stays opaque");
        assert!(is_opaque(&out.join("c")).unwrap(), "a directory over a file becomes opaque");
        assert!(!is_opaque(&out.join("a")).unwrap(), "a merged directory is not opaque");
        assert_eq!(fs::read_link(out.join("link")).unwrap(), Path::new("a/x"));
        let a = out.join("a");
        assert_eq!(fs::metadata(&a).unwrap().mode() & 0o7777, 0o750, "the top-most directory's mode");
        assert_eq!(xattr::get(&a, c"user.note").unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(xattr::get(&a, c"trusted.overlay.origin").unwrap(), None, "overlayfs's bookkeeping is left out");
        let (src, dst) = (fs::metadata(mid.join("a/x")).unwrap(), fs::metadata(out.join("a/x")).unwrap());
        assert_eq!(src.ino(), dst.ino(), "files are linked, not copied");
        assert_eq!(fs::metadata(top.join("a")).unwrap().mtime(), fs::metadata(&a).unwrap().mtime());
    }
}
