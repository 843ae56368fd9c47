//! Copying directory trees with `cp -a` (optionally as hard links with `cp -al`).
//!
//! `cp` already preserves everything a root filesystem has: modes, ownership, timestamps,
//! symlinks, hard links, device nodes, FIFOs and extended attributes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A failed tree copy.
#[derive(Debug, thiserror::Error)]
#[error("cannot copy {src} to {dst}: {reason}")]
pub struct CopyError {
    /// The source directory.
    pub src: PathBuf,
    /// The destination directory.
    pub dst: PathBuf,
    /// What `cp` said (its first line) or why it could not run.
    pub reason: String,
}

/// Copies the contents (and the attributes) of directory `src` into the existing directory
/// `dst`. With `hardlink`, files are hard-linked instead of copied (same filesystem only).
pub(crate) fn copy_tree(src: &Path, dst: &Path, hardlink: bool) -> Result<(), CopyError> {
    let err = |reason: String| CopyError { src: src.to_path_buf(), dst: dst.to_path_buf(), reason };
    let mut cmd = Command::new("cp");
    cmd.arg(if hardlink { "-al" } else { "-a" }).arg("--").arg(src.join(".")).arg(dst).env("LC_ALL", "C");
    let out = cmd.output().map_err(|e| err(format!("cannot run cp: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    Err(err(format!("cp failed ({}): {first}", out.status)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn copies_and_links_trees() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/f"), b"content").unwrap();
        fs::set_permissions(src.join("etc/f"), fs::Permissions::from_mode(0o640)).unwrap();
        symlink("etc/f", src.join("link")).unwrap();

        let copy = dir.path().join("copy");
        fs::create_dir(&copy).unwrap();
        copy_tree(&src, &copy, false).unwrap();
        assert_eq!(fs::read(copy.join("etc/f")).unwrap(), b"content");
        assert_eq!(fs::read_link(copy.join("link")).unwrap(), Path::new("etc/f"));
        let meta = fs::metadata(copy.join("etc/f")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(meta.nlink(), 1);

        let linked = dir.path().join("linked");
        fs::create_dir(&linked).unwrap();
        copy_tree(&src, &linked, true).unwrap();
        let a = fs::metadata(src.join("etc/f")).unwrap();
        let b = fs::metadata(linked.join("etc/f")).unwrap();
        assert_eq!(a.ino(), b.ino());
    }

    #[test]
    fn missing_source_is_one_line_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = copy_tree(&dir.path().join("nope"), dir.path(), false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cp failed") && !msg.contains('\n'), "{msg}");
    }
}
