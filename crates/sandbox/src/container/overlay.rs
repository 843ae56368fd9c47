//! The sandbox's root filesystem: an overlay of read-only layers and a
//! private upper directory, mounted in the host's mount namespace so the host
//! can read it and CRIU can restore onto it.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors mounting or unmounting an overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// An overlay needs at least one lower layer.
    #[error("an overlay needs at least one read-only layer")]
    NoLayers,
    /// A layer directory is missing.
    #[error("layer {0} is missing")]
    MissingLayer(PathBuf),
    /// The mount options do not fit in one page.
    #[error("too many layers for one overlay mount ({0} bytes of options)")]
    TooManyLayers(usize),
    /// mount(2) or umount(2) failed.
    #[error("{op} {path}: {source}")]
    Sys {
        /// What was attempted.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The directories of one overlay mount.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Read-only layers, top-most first.
    pub lowers: Vec<PathBuf>,
    /// The writable upper directory.
    pub upper: PathBuf,
    /// overlayfs's work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the merged tree is mounted.
    pub target: PathBuf,
}

/// Gives the overlay file handles that decode (`open_by_handle_at`): CRIU records an inotify or
/// fanotify watch by the watched inode's handle, finds its path through it, and a restore
/// watches that path again, on whatever overlay the restored sandbox has. Without them a
/// process with a watch cannot be dumped ("fsnotify: Can't dump that handle").
const FILE_HANDLES: &str = "index=on,nfs_export=on";

/// How long a mount waits for a layer still marked in use by an overlay going away (the
/// kernel frees a dead sandbox's mount namespace, and its overlay, asynchronously: 2 s was
/// once not enough on a loaded two-core machine).
const IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Overlay {
    fn options(&self) -> Result<String, OverlayError> {
        if self.lowers.is_empty() {
            return Err(OverlayError::NoLayers);
        }
        if let Some(missing) = self.lowers.iter().find(|l| !l.is_dir()) {
            return Err(OverlayError::MissingLayer(missing.clone()));
        }
        let lowers: Vec<String> = self.lowers.iter().map(|l| l.display().to_string()).collect();
        let (upper, work) = (self.upper.display(), self.work.display());
        let options = format!("lowerdir={},upperdir={upper},workdir={work},{FILE_HANDLES}", lowers.join(":"));
        // The kernel copies at most one page of mount data.
        if options.len() >= 4096 {
            return Err(OverlayError::TooManyLayers(options.len()));
        }
        Ok(options)
    }

    /// Creates the upper, work and target directories and mounts the overlay.
    pub fn mount(&self) -> Result<(), OverlayError> {
        let options = self.options()?;
        for dir in [&self.upper, &self.work, &self.target] {
            std::fs::create_dir_all(dir).map_err(|source| OverlayError::Sys {
                op: "mkdir",
                path: dir.clone(),
                source,
            })?;
        }
        // With `index=on` the kernel refuses a layer that an overlay still being torn down has
        // marked in use (the upper directory of a sandbox just suspended, now the snapshot's
        // layer, while its last references drop): that clears within milliseconds, or seconds
        // under load.
        let deadline = std::time::Instant::now() + IN_USE_WAIT;
        loop {
            match mount(Some("overlay"), &self.target, Some("overlay"), MsFlags::empty(), Some(options.as_str())) {
                Err(Errno::EBUSY) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                r => {
                    return r.map_err(|e| OverlayError::Sys {
                        op: "mount overlay on",
                        path: self.target.clone(),
                        source: e.into(),
                    })
                }
            }
        }
    }
}

/// Unmounts `target` if something is mounted there (lazily when busy).
pub fn unmount(target: &Path) -> Result<(), OverlayError> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH).map_err(|e| OverlayError::Sys {
            op: "unmount",
            path: target.to_owned(),
            source: e.into(),
        }),
        Err(e) => Err(OverlayError::Sys { op: "unmount", path: target.to_owned(), source: e.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_lowers_top_first_and_check_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let mut o = Overlay {
            lowers: vec![a.clone(), b.clone()],
            upper: dir.path().join("u"),
            work: dir.path().join("w"),
            target: dir.path().join("t"),
        };
        let opts = o.options().unwrap();
        assert!(opts.starts_with(&format!("lowerdir={}:{},upperdir=", a.display(), b.display())), "{opts}");
        assert!(opts.ends_with(",index=on,nfs_export=on"), "{opts}");
        o.lowers.push(dir.path().join("missing"));
        assert!(matches!(o.options(), Err(OverlayError::MissingLayer(_))));
        o.lowers.clear();
        assert!(matches!(o.options(), Err(OverlayError::NoLayers)));
    }
}
