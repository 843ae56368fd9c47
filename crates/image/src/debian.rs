//! The per-machine cache of Debian root filesystems made by debootstrap.
//!
//! `CACHE/rootfs/debian-bookworm-<hash>/` (hash of the build parameters, mirror included) is
//! built in a temporary directory next to it and renamed into place when debootstrap succeeded,
//! so the directory exists only complete. A lock file serialises builders; temporary
//! directories of dead builders are removed by the next one. debootstrap runs in a private
//! mount namespace, so the `/proc` and `/sys` it mounts inside the tree vanish with it even when
//! it is killed. The tree's owners are shifted for sandboxes ([`crate::ids`]) before the rename.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;

use crate::mirror::{self, MirrorError};
use hiber_common::fs::sync_dir;
use hiber_common::lock::{lock_file, Mode};

/// The suite debootstrap installs.
const SUITE: &str = "bookworm";
/// The debootstrap variant.
const VARIANT: &str = "minbase";
/// Packages added to the variant.
const INCLUDE: &str = "python3,git,curl,ca-certificates,procps,iproute2";
/// Where the machine's apt configuration lives.
const APT_DIR: &str = "/etc/apt";

/// The image source description of a Debian image.
pub(crate) fn source() -> String {
    format!("debootstrap {SUITE} {VARIANT}")
}

/// Errors from building the cached Debian root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    /// debootstrap (or unshare) is not installed.
    #[error("{0} is not installed: run scripts/setup.sh")]
    NotInstalled(&'static str),
    /// No mirror could be derived from the apt configuration.
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    /// debootstrap failed.
    #[error("debootstrap failed ({status}): {detail}")]
    Debootstrap {
        /// Its exit status.
        status: ExitStatus,
        /// Its last error line.
        detail: String,
    },
    /// A stale build directory still has something mounted inside; it is not removed.
    #[error("refusing to remove {dir}: {mount} is mounted inside it")]
    Mounted {
        /// The directory.
        dir: PathBuf,
        /// A mount point inside it.
        mount: PathBuf,
    },
    /// Giving the tree the sandboxes' owners failed.
    #[error(transparent)]
    Shift(#[from] crate::ids::ShiftError),
    /// A filesystem or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The underlying failure.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DebianError {
    let what = what.into();
    move |source| DebianError::Io { what, source }
}

/// The per-machine cache directory: `$HIBER_CACHE`, else `/var/cache/hiber`.
pub(crate) fn cache_dir() -> PathBuf {
    std::env::var_os("HIBER_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hiber"))
}

/// Returns the cached Debian root filesystem under `cache`, running debootstrap first when it
/// is not there yet. Progress lines (debootstrap's own among them) go to `progress`.
pub(crate) fn cached_rootfs(cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, DebianError> {
    let mirror = mirror::find(Path::new(APT_DIR), SUITE)?;
    let params = format!(
        "suite={SUITE}\nvariant={VARIANT}\ninclude={INCLUDE}\nmirror={mirror}\narch={}\nids={}\n",
        std::env::consts::ARCH,
        crate::ids::id_map()
    );
    let hash = blake3::hash(params.as_bytes()).to_hex();
    let key = format!("debian-{SUITE}-{}", &hash[..12]);

    let root = cache.join("rootfs");
    fs::create_dir_all(&root).map_err(io_err(format!("cannot create {}", root.display())))?;
    let root = root.canonicalize().map_err(io_err(format!("cannot resolve {}", root.display())))?;
    let done = root.join(&key);
    if done.is_dir() {
        return Ok(done);
    }

    let lock_path = root.join(format!("{key}.lock"));
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_err(format!("cannot open {}", lock_path.display())))?;
    let locked = |e| io_err(format!("cannot lock {}", lock_path.display()))(e);
    if !lock_file(&lock, Mode::TryExclusive).map_err(locked)? {
        progress(&format!("waiting for another build of {key} to finish"));
        lock_file(&lock, Mode::Exclusive).map_err(locked)?;
    }
    if done.is_dir() {
        return Ok(done);
    }

    let tmp_prefix = format!(".tmp-{key}-");
    remove_stale(&root, &tmp_prefix)?;
    let tmp = root.join(format!("{tmp_prefix}{}", hiber_common::random_id(16)));
    progress(&format!("running debootstrap {SUITE} ({VARIANT} + {INCLUDE}) for the machine cache {}", root.display()));
    let built = debootstrap(&mirror, &tmp, &lock, progress).and_then(|()| {
        clean_apt_caches(&tmp)?;
        if let Some(mount) = mounts_under(&tmp)?.into_iter().next() {
            return Err(DebianError::Mounted { dir: tmp.clone(), mount });
        }
        // Layers hard-link this tree: its owners are the sandboxes' from the start.
        crate::ids::shift_tree(&tmp)?;
        let what = || format!("cannot move {} to {}", tmp.display(), done.display());
        let dir = File::open(&tmp).map_err(io_err(what()))?;
        // SAFETY: syncfs only takes a descriptor number; `dir` keeps it open for the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io_err(what())(io::Error::last_os_error()));
        }
        fs::rename(&tmp, &done).map_err(io_err(what()))?;
        sync_dir(&root).map_err(io_err(what()))
    });
    if let Err(e) = built {
        // Best effort; the next build removes whatever is left.
        let _ = remove_tmp(&tmp);
        return Err(e);
    }
    Ok(done)
}

/// Runs debootstrap into `target`, streaming its output lines to `progress`.
fn debootstrap(mirror: &str, target: &Path, lock: &File, progress: &mut dyn FnMut(&str)) -> Result<(), DebianError> {
    let program = find_program("debootstrap").ok_or(DebianError::NotInstalled("debootstrap"))?;
    let unshare = find_program("unshare").ok_or(DebianError::NotInstalled("unshare"))?;
    // The lock file is debootstrap's stdin (it reads nothing; an empty file reads like
    // /dev/null): debootstrap and its children then hold the lock too, so if this process is
    // killed, no other builder starts while they still write into the tree.
    let stdin = lock.try_clone().map_err(io_err("cannot pass the lock to debootstrap"))?;
    let mut child = Command::new(unshare)
        .args(["--mount", "--propagation", "private", "--"])
        .arg(program)
        .arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={INCLUDE}"))
        .arg(SUITE)
        .arg(target)
        .arg(mirror)
        .env("LC_ALL", "C")
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err("cannot run debootstrap"))?;

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().map(|s| forward_lines(s, tx.clone()));
    let stderr = child.stderr.take().map(|s| forward_lines(s, tx));
    let mut last = VecDeque::new();
    for line in rx {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        progress(line);
        if last.len() == 20 {
            last.pop_front();
        }
        last.push_back(line.to_string());
    }
    for reader in [stdout, stderr].into_iter().flatten() {
        let _ = reader.join();
    }
    let status = child.wait().map_err(io_err("cannot wait for debootstrap"))?;
    if status.success() {
        return Ok(());
    }
    let detail = last
        .iter()
        .rev()
        .find(|l| l.starts_with("E:"))
        .or(last.back())
        .cloned()
        .unwrap_or_else(|| "no output".to_string());
    Err(DebianError::Debootstrap { status, detail })
}

/// Sends every line read from `source` down `tx`, on a thread of its own.
fn forward_lines(source: impl Read + Send + 'static, tx: mpsc::Sender<String>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                return;
            }
            buf.clear();
        }
    })
}

/// The path of an executable in `$PATH` or the sbin directories (root's tools live there).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Removes downloaded packages and package lists: they are large and stale by the next use.
fn clean_apt_caches(tree: &Path) -> Result<(), DebianError> {
    let archives = tree.join("var/cache/apt/archives");
    let lists = tree.join("var/lib/apt/lists");
    let apt_cache = tree.join("var/cache/apt");
    let remove = |dir: &Path, keep: &dyn Fn(&Path, &fs::Metadata) -> bool| {
        let what = || format!("cannot clean {}", dir.display());
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(what())(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err(what()))?.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err(what()))?;
            if keep(&path, &meta) {
                continue;
            }
            let removed = if meta.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(io_err(what()))?;
        }
        Ok(())
    };
    let has_ext = |p: &Path, ext: &str| p.extension().is_some_and(|e| e == ext);
    remove(&archives, &|p, m| m.is_dir() || !has_ext(p, "deb"))?;
    remove(&apt_cache, &|p, m| m.is_dir() || !has_ext(p, "bin"))?;
    remove(&lists, &|_, _| false)
}

/// Removes the temporary build directories (names starting with `prefix`) of dead builders.
/// The caller holds the lock, so none of them is in use.
fn remove_stale(root: &Path, prefix: &str) -> Result<(), DebianError> {
    let what = || format!("cannot read {}", root.display());
    for entry in fs::read_dir(root).map_err(io_err(what()))? {
        let entry = entry.map_err(io_err(what()))?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            remove_tmp(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes a build directory, unless something is mounted inside it (a debootstrap that did
/// not run in its own mount namespace): deleting through a mount would delete host files.
fn remove_tmp(dir: &Path) -> Result<(), DebianError> {
    if let Some(mount) = mounts_under(dir)?.into_iter().next() {
        return Err(DebianError::Mounted { dir: dir.to_path_buf(), mount });
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(format!("cannot remove {}", dir.display()))(e)),
        _ => Ok(()),
    }
}

/// Mount points at or below `dir` (an absolute, canonical path) in this mount namespace.
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, DebianError> {
    hiber_common::fs::mounts_under(dir).map_err(io_err("cannot read /proc/self/mountinfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_build_directories_are_removed_but_not_through_mounts() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().canonicalize().unwrap();
        fs::create_dir_all(root.join(".tmp-debian-x-1/var/lib")).unwrap();
        fs::create_dir_all(root.join("debian-x")).unwrap();
        remove_stale(&root, ".tmp-debian-x-").unwrap();
        assert!(!root.join(".tmp-debian-x-1").exists());
        assert!(root.join("debian-x").exists());
        // `/` is always a mount point, so it is never removed.
        assert!(matches!(remove_tmp(Path::new("/")), Err(DebianError::Mounted { .. })));
    }

    #[test]
    fn apt_caches_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        fs::create_dir_all(t.join("var/cache/apt/archives/partial")).unwrap();
        fs::create_dir_all(t.join("var/lib/apt/lists/partial")).unwrap();
        fs::write(t.join("var/cache/apt/archives/a.deb"), b"x").unwrap();
        fs::write(t.join("var/cache/apt/archives/lock"), b"").unwrap();
        fs::write(t.join("var/cache/apt/pkgcache.bin"), b"x").unwrap();
        fs::write(t.join("var/lib/apt/lists/x_Packages"), b"x").unwrap();
        clean_apt_caches(t).unwrap();
        assert!(!t.join("var/cache/apt/archives/a.deb").exists());
        assert!(t.join("var/cache/apt/archives/lock").exists());
        assert!(t.join("var/cache/apt/archives/partial").is_dir());
        assert!(!t.join("var/cache/apt/pkgcache.bin").exists());
        assert_eq!(fs::read_dir(t.join("var/lib/apt/lists")).unwrap().count(), 0);
    }
}
