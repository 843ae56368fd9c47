//! Importing a root filesystem from a directory or a tarball (`.tar`, `.tar.gz`, `.tgz`).
//!
//! Directories are copied with `cp -a`. Tarballs are extracted with the `tar` crate keeping
//! permissions, ownership, symlinks, hard links, extended attributes and (here, since the crate
//! does not) device nodes and FIFOs. Gzip is recognised by its magic bytes. Entries whose path
//! contains `..` are rejected; everything else, including what lies behind symlinks, must
//! resolve inside the root. An archive that ends without its end-of-archive marker is
//! truncated and rejected.

use std::cell::Cell;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use tar::{Archive, Entry, EntryType};

use crate::copy::{copy_tree, CopyError};

/// Errors from importing a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The path does not exist.
    #[error("cannot import {0}: no such file or directory")]
    Missing(PathBuf),
    /// The path is neither a directory nor a regular file.
    #[error("cannot import {0}: not a directory or a tar archive")]
    Unsupported(PathBuf),
    /// Nothing was imported.
    #[error("cannot import {0}: it contains no files")]
    Empty(PathBuf),
    /// The archive ends early.
    #[error("cannot import {0}: the archive is truncated")]
    Truncated(PathBuf),
    /// An archive entry would land outside the root filesystem.
    #[error("cannot import {path}: entry '{entry}' points outside the root filesystem")]
    Escapes {
        /// The archive.
        path: PathBuf,
        /// The offending entry's path.
        entry: String,
    },
    /// The archive is corrupt or could not be extracted.
    #[error("cannot import {path}: {reason}")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Copying a directory failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
}

/// Fills the empty directory `dst` from `src` (a directory or a tarball).
pub(crate) fn import(src: &Path, dst: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), ImportError> {
    let meta = match fs::metadata(src) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ImportError::Missing(src.to_path_buf())),
        Err(e) => return Err(archive_err(src, &e)),
    };
    if meta.is_dir() {
        progress(&format!("copying {}", src.display()));
        copy_tree(src, dst, false)?;
    } else if meta.is_file() {
        let file = File::open(src).map_err(|e| archive_err(src, &e))?;
        let mut reader = BufReader::new(file);
        let gzip = reader.fill_buf().map_err(|e| archive_err(src, &e))?.starts_with(&[0x1f, 0x8b]);
        if gzip {
            progress(&format!("extracting {} (gzip)", src.display()));
            extract(src, MultiGzDecoder::new(reader), dst, Entries::Plain)?;
        } else {
            progress(&format!("extracting {}", src.display()));
            extract(src, reader, dst, Entries::Plain)?;
        }
    } else {
        return Err(ImportError::Unsupported(src.to_path_buf()));
    }
    let empty = fs::read_dir(dst).map_err(|e| archive_err(src, &e))?.next().is_none();
    if empty {
        return Err(ImportError::Empty(src.to_path_buf()));
    }
    Ok(())
}

/// An error and its causes on one line.
fn archive_err(path: &Path, err: &(dyn std::error::Error + 'static)) -> ImportError {
    let mut reason = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !reason.contains(&text) {
            reason = format!("{reason}: {text}");
        }
        cause = c.source();
    }
    ImportError::Archive { path: path.to_path_buf(), reason }
}

/// Counts the bytes read and remembers whether the reader ran dry. The `tar` crate stops at
/// the first all-zero block of the end-of-archive marker without reading further, so reaching
/// end-of-file means the marker is missing and the archive was cut short.
struct EofWatch<'a, R> {
    inner: R,
    bytes: &'a Cell<u64>,
    ended: &'a Cell<bool>,
}

impl<R: Read> Read for EofWatch<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.ended.set(true);
                Ok(0)
            }
            Ok(n) => {
                self.bytes.set(self.bytes.get() + n as u64);
                Ok(n)
            }
            Err(e) => {
                // A decompressor reports a cut-off stream this way.
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    self.ended.set(true);
                }
                Err(e)
            }
        }
    }
}

/// How an archive's entries become files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entries {
    /// Every entry is a file of the root filesystem.
    Plain,
    /// An image layer: `.wh.NAME` deletes `NAME` of the layers below (it becomes an overlayfs
    /// whiteout, a 0/0 character device) and `.wh..wh..opq` hides everything below its
    /// directory (which becomes opaque).
    Layer,
}

/// Prefix of a whiteout entry's name.
const WHITEOUT: &str = ".wh.";
/// Name of the entry that makes its directory opaque.
const OPAQUE: &str = ".wh..wh..opq";

/// Fills `dst` from the tar stream `reader` (`src` names it in errors).
pub(crate) fn extract(src: &Path, reader: impl Read, dst: &Path, entries: Entries) -> Result<(), ImportError> {
    let bytes = Cell::new(0);
    let ended = Cell::new(false);
    let watch = EofWatch { inner: reader, bytes: &bytes, ended: &ended };
    let result = extract_entries(src, watch, dst, entries);
    match (ended.get(), bytes.get()) {
        (true, 0) => Err(ImportError::Empty(src.to_path_buf())),
        (true, _) => Err(ImportError::Truncated(src.to_path_buf())),
        (false, _) => result,
    }
}

fn extract_entries(src: &Path, reader: impl Read, dst: &Path, kind: Entries) -> Result<(), ImportError> {
    let mut archive = Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let not_tar = |e: &io::Error, seen: usize| {
        let mut err = archive_err(src, e);
        if let ImportError::Archive { reason, .. } = &mut err {
            if seen == 0 {
                *reason = format!("not a tar archive ({reason})");
            }
        }
        err
    };

    // Directories are applied last, deepest first, so their modes and times stick (as
    // `Archive::unpack` does).
    let mut dirs = Vec::new();
    let mut opaque = Vec::new();
    for (seen, entry) in archive.entries().map_err(|e| not_tar(&e, 0))?.enumerate() {
        let mut entry = entry.map_err(|e| not_tar(&e, seen))?;
        let path = entry.path().map_err(|e| archive_err(src, &e))?.into_owned();
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(ImportError::Escapes { path: src.to_path_buf(), entry: path.display().to_string() });
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if kind == Entries::Layer && name.starts_with(WHITEOUT) {
            let parent = path.parent().unwrap_or(Path::new(""));
            if name == OPAQUE {
                opaque.push(parent.to_path_buf());
            } else {
                whiteout(src, &parent.join(&name[WHITEOUT.len()..]), dst)?;
            }
            continue;
        }
        match entry.header().entry_type() {
            EntryType::Directory => dirs.push(entry),
            EntryType::Char | EntryType::Block | EntryType::Fifo => make_node(src, &entry, &path, dst)?,
            _ => unpack(src, &mut entry, dst)?,
        }
    }
    dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in dirs {
        unpack(src, &mut dir, dst)?;
    }
    for dir in opaque {
        let dir = inside(src, dst, &dir.join("."))?;
        crate::xattr::set(&dir, c"trusted.overlay.opaque", b"y").map_err(|e| archive_err(src, &e))?;
    }
    Ok(())
}

/// Records that the layers below have no `rel`: an overlayfs whiteout there, unless this layer
/// has the name itself (a whiteout hides only what is below it).
fn whiteout(src: &Path, rel: &Path, dst: &Path) -> Result<(), ImportError> {
    let target = inside(src, dst, rel)?;
    if fs::symlink_metadata(&target).is_ok() {
        return Ok(());
    }
    let path = CString::new(target.as_os_str().as_bytes()).map_err(|e| archive_err(src, &io::Error::from(e)))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(archive_err(src, &io::Error::last_os_error()));
    }
    Ok(())
}

fn unpack<R: Read>(src: &Path, entry: &mut Entry<'_, R>, dst: &Path) -> Result<(), ImportError> {
    match entry.unpack_in(dst) {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("outside of destination") => Err(ImportError::Escapes {
            path: src.to_path_buf(),
            entry: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
        }),
        Err(e) => Err(archive_err(src, &e)),
    }
}

/// Where entry `rel` goes below `dst`: its parent directories are walked down (missing ones
/// made), and any step that resolves, through a symlink, outside the root is refused.
fn inside(src: &Path, dst: &Path, rel: &Path) -> Result<PathBuf, ImportError> {
    let err = |e: io::Error| archive_err(src, &e);
    let escapes = || ImportError::Escapes { path: src.to_path_buf(), entry: rel.display().to_string() };
    let parts: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let Some((name, parents)) = parts.split_last() else {
        return Ok(dst.to_path_buf());
    };
    // Walk down to the parent, creating missing directories and refusing any step that
    // resolves (through a symlink) outside the root.
    let root = dst.canonicalize().map_err(err)?;
    let mut dir = root.clone();
    for part in parents {
        let next = dir.join(part);
        match fs::symlink_metadata(&next) {
            Ok(_) => {
                let real = next.canonicalize().map_err(err)?;
                if !real.starts_with(&root) {
                    return Err(escapes());
                }
                if !real.is_dir() {
                    return Err(archive_err(src, &io::Error::other(format!("{} is not a directory", rel.display()))));
                }
                dir = real;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&next).map_err(err)?;
                dir = next;
            }
            Err(e) => return Err(err(e)),
        }
    }
    Ok(dir.join(name))
}

/// Creates a device node or FIFO entry (the `tar` crate would write an empty regular file).
fn make_node<R: Read>(src: &Path, entry: &Entry<'_, R>, rel: &Path, dst: &Path) -> Result<(), ImportError> {
    let err = |e: io::Error| archive_err(src, &e);
    let target = inside(src, dst, rel)?;
    if target == dst {
        return Ok(());
    }
    if fs::symlink_metadata(&target).is_ok() {
        fs::remove_file(&target).map_err(err)?;
    }

    let header = entry.header();
    let kind = match header.entry_type() {
        EntryType::Char => libc::S_IFCHR,
        EntryType::Block => libc::S_IFBLK,
        _ => libc::S_IFIFO,
    };
    let mode = header.mode().map_err(err)? & 0o7777;
    // A FIFO has no device numbers (some writers leave the fields blank).
    let (major, minor) = if kind == libc::S_IFIFO {
        (0, 0)
    } else {
        let major = header.device_major().map_err(err)?.unwrap_or(0);
        (major, header.device_minor().map_err(err)?.unwrap_or(0))
    };
    let path = CString::new(target.as_os_str().as_bytes()).map_err(|e| err(e.into()))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mknod(path.as_ptr(), kind | mode, libc::makedev(major, minor)) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(archive_err(src, &io::Error::new(e.kind(), format!("cannot create {}: {e}", rel.display()))));
    }
    let uid = u32::try_from(header.uid().map_err(err)?).ok();
    let gid = u32::try_from(header.gid().map_err(err)?).ok();
    lchown(&target, uid, gid).map_err(err)?;
    // mknod applies the umask; set the exact mode.
    fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(err)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use flate2::write::GzEncoder;
    use flate2::Compression;
    use tar::{Builder, Header};

    /// A small root filesystem as a tarball: a file (mode 0750), a directory (0700), a symlink,
    /// a hard link, a FIFO and a character device.
    pub(crate) fn sample_tar() -> Vec<u8> {
        fn header(kind: EntryType, mode: u32) -> Header {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_000_000_000);
            h.set_size(0);
            h
        }
        let mut b = Builder::new(Vec::new());
        let mut dir = header(EntryType::Directory, 0o700);
        b.append_data(&mut dir, "root/", io::empty()).unwrap();
        let mut file = header(EntryType::Regular, 0o750);
        file.set_size(5);
        b.append_data(&mut file, "usr/bin/hello", &b"hello"[..]).unwrap();
        let mut link = header(EntryType::Symlink, 0o777);
        b.append_link(&mut link, "bin", "usr/bin").unwrap();
        let mut hard = header(EntryType::Link, 0o750);
        b.append_link(&mut hard, "usr/bin/hello2", "usr/bin/hello").unwrap();
        let mut fifo = header(EntryType::Fifo, 0o600);
        b.append_data(&mut fifo, "run/fifo", io::empty()).unwrap();
        let mut null = header(EntryType::Char, 0o666);
        null.set_device_major(1).unwrap();
        null.set_device_minor(3).unwrap();
        b.append_data(&mut null, "dev/null", io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn is_root() -> bool {
        fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
    }

    fn check_sample(root: &Path) {
        assert_eq!(fs::read(root.join("usr/bin/hello")).unwrap(), b"hello");
        let meta = fs::metadata(root.join("usr/bin/hello")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        assert_eq!(meta.mtime(), 1_000_000_000);
        assert_eq!(meta.nlink(), 2);
        assert_eq!(fs::read_link(root.join("bin")).unwrap(), Path::new("usr/bin"));
        let dir = fs::metadata(root.join("root")).unwrap();
        assert_eq!(dir.permissions().mode() & 0o7777, 0o700);
        let fifo = fs::symlink_metadata(root.join("run/fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.permissions().mode() & 0o7777, 0o600);
        if is_root() {
            let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(null.rdev(), libc::makedev(1, 3));
        }
    }

    fn run(bytes: &[u8]) -> (tempfile::TempDir, Result<(), ImportError>) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in.tar");
        fs::write(&src, bytes).unwrap();
        let dst = dir.path().join("root");
        fs::create_dir(&dst).unwrap();
        let result = import(&src, &dst, &mut |_| {});
        (dir, result)
    }

    #[test]
    fn extracts_plain_and_gzipped_tarballs() {
        if !is_root() {
            eprintln!("device nodes need root: checking everything else");
        }
        let tar = sample_tar();
        let (dir, result) = run(&tar);
        result.unwrap();
        check_sample(&dir.path().join("root"));

        // Gzip is detected by content, whatever the name.
        let (dir, result) = run(&gzip(&tar));
        result.unwrap();
        check_sample(&dir.path().join("root"));
    }

    #[test]
    fn copies_directories() {
        let (dir, result) = run(&sample_tar());
        result.unwrap();
        let copy = dir.path().join("copy");
        fs::create_dir(&copy).unwrap();
        let mut lines = Vec::new();
        import(&dir.path().join("root"), &copy, &mut |l| lines.push(l.to_string())).unwrap();
        check_sample(&copy);
        assert!(lines[0].starts_with("copying "), "{lines:?}");
    }

    #[test]
    fn rejects_bad_input() {
        let tar = sample_tar();
        // Cut inside a file's data, and exactly at a block boundary before the end marker.
        let (_d, r) = run(&tar[..512 * 3 + 100]);
        assert!(matches!(r, Err(ImportError::Truncated(_))), "{r:?}");
        let (_d, r) = run(&tar[..512 * 3]);
        assert!(matches!(r, Err(ImportError::Truncated(_))), "{r:?}");
        let gz = gzip(&tar);
        let (_d, r) = run(&gz[..gz.len() / 2]);
        assert!(matches!(r, Err(ImportError::Truncated(_))), "{r:?}");
        let mut corrupt = gz.clone();
        for b in &mut corrupt[20..60] {
            *b ^= 0x55;
        }
        let (_d, r) = run(&corrupt);
        let msg = r.unwrap_err().to_string();
        assert!(msg.starts_with("cannot import ") && !msg.contains('\n'), "{msg}");

        let (_d, r) = run(b"this is not a tarball at all, just text\n".repeat(20).as_slice());
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("not a tar archive"), "{msg}");

        let empty = Builder::new(Vec::new()).into_inner().unwrap();
        let (_d, r) = run(&empty);
        assert!(matches!(r, Err(ImportError::Empty(_))), "{r:?}");
        let (_d, r) = run(b"");
        assert!(matches!(r, Err(ImportError::Empty(_))), "{r:?}");

        let dir = tempfile::tempdir().unwrap();
        let r = import(&dir.path().join("missing.tar"), dir.path(), &mut |_| {});
        assert_eq!(
            r.unwrap_err().to_string(),
            format!("cannot import {}: no such file or directory", dir.path().join("missing.tar").display())
        );
    }

    /// A tarball with one regular file entry whose raw name is `name` (bypassing the builder's
    /// own path checks) after `before`'s entries.
    fn tar_with_raw_name(before: &[u8], name: &[u8]) -> Vec<u8> {
        let mut bytes = before[..before.len() - 1024].to_vec();
        let mut h = Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_size(4);
        h.set_cksum();
        bytes.extend_from_slice(h.as_bytes());
        let mut data = [0u8; 512];
        data[..4].copy_from_slice(b"evil");
        bytes.extend_from_slice(&data);
        bytes.extend_from_slice(&[0u8; 1024]);
        bytes
    }

    #[test]
    fn entries_escaping_the_root_are_rejected() {
        let base = Builder::new(Vec::new()).into_inner().unwrap();
        let (dir, r) = run(&tar_with_raw_name(&base, b"../escaped"));
        assert!(matches!(r, Err(ImportError::Escapes { .. })), "{r:?}");
        assert!(!dir.path().join("escaped").exists());

        // A symlink to the outside, then a file through it.
        let mut b = Builder::new(Vec::new());
        let mut link = Header::new_gnu();
        link.set_entry_type(EntryType::Symlink);
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(1);
        link.set_size(0);
        b.append_link(&mut link, "out", "/tmp").unwrap();
        let with_link = b.into_inner().unwrap();
        let name = format!("out/hiber-escape-{}", hiber_common::random_id(16));
        let (_d, r) = run(&tar_with_raw_name(&with_link, name.as_bytes()));
        assert!(matches!(r, Err(ImportError::Escapes { .. })), "{r:?}");
        assert!(!Path::new("/").join(name.replace("out/", "tmp/")).exists());

        // Absolute paths are contained, not rejected.
        let (dir, r) = run(&tar_with_raw_name(&base, b"/etc/contained"));
        r.unwrap();
        assert_eq!(fs::read(dir.path().join("root/etc/contained")).unwrap(), b"evil");
    }
}
