//! Finding CRIU and checking its version (hiber needs 4.2 or newer: older
//! releases fail on current kernels).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::criu_rpc::{self, RestoreRequest, RpcError};

/// The oldest CRIU that works: 3.17 cannot read the vdso of kernels >= 6.x
/// here, and 4.1 cannot dump TCP sockets on kernels >= 6.16.
pub const MIN_VERSION: (u32, u32) = (4, 2);

/// Where the project's set-up installs CRIU.
pub const INSTALLED: &str = "/opt/hiber/bin/criu";

/// Errors finding CRIU.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    /// No CRIU binary was found.
    #[error("CRIU not found (looked at $HIBER_CRIU, {INSTALLED} and PATH): run scripts/setup.sh")]
    Missing,
    /// CRIU is too old.
    #[error("CRIU {found} at {path} is too old: hiber needs {}.{} or newer (run scripts/setup.sh)", MIN_VERSION.0, MIN_VERSION.1)]
    TooOld {
        /// The binary.
        path: PathBuf,
        /// Its version.
        found: String,
    },
    /// CRIU did not report a version.
    #[error("cannot read the version of {0}")]
    NoVersion(PathBuf),
    /// CRIU could not be started.
    #[error("cannot run {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Talking to CRIU's RPC failed.
    #[error("criu restore: {0}")]
    Rpc(RpcError),
    /// A dump or restore failed; `detail` holds the errors from CRIU's log.
    #[error("criu {action} failed: {detail} (log: {log})")]
    Failed {
        /// `dump` or `restore`.
        action: &'static str,
        /// CRIU's own error lines.
        detail: String,
        /// The full log.
        log: PathBuf,
    },
}

/// Options every dump uses (restores set the same in [`criu_rpc`]):
/// established TCP connections, file locks and unlinked-but-open files are
/// carried; cgroups are hiber's job.
/// No network lock: nothing outside a sandbox can reach it, so no packet
/// can arrive while it is frozen (the lock costs two iptables runs).
const DUMP_FLAGS: [&str; 5] =
    ["--tcp-established", "--file-locks", "--link-remap", "--manage-cgroups=ignore", "--network-lock=skip"];

/// The key naming the network namespace of a sandbox in the host's user
/// namespace as external: hiber makes a fresh one (loopback only, like every
/// sandbox's) for each restore instead of CRIU saving and replaying it with
/// `ip` and `iptables-save`.
const NETNS_KEY: &str = "hiber-netns";

/// The network namespace a restored tree gets: a new one with loopback only,
/// like every sandbox's, made one of two ways.
pub enum RestoreNetns {
    /// Made by hiber and open at this descriptor, which CRIU inherits: for trees in the host's
    /// user namespace (snapshots from before sandboxes had their own).
    Inherited(i32),
    /// Made by CRIU inside the tree's user namespace (a namespace made beforehand would belong
    /// to the host's, and the tree could not join it), its loopback still down.
    Empty,
}

/// A usable CRIU binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criu {
    /// Path of the executable.
    pub path: PathBuf,
    /// Its version, e.g. `4.2.1`.
    pub version: String,
}

impl Criu {
    /// Finds CRIU: `$HIBER_CRIU`, then `/opt/hiber/bin/criu`, then `criu` on PATH.
    pub fn locate() -> Result<Criu, CriuError> {
        let path = match std::env::var_os("HIBER_CRIU") {
            // Chosen explicitly: that one or none.
            Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
            None => {
                let search_path = std::env::var_os("PATH").unwrap_or_default();
                std::iter::once(PathBuf::from(INSTALLED))
                    .chain(std::env::split_paths(&search_path).map(|d| d.join("criu")))
                    .find(|p| p.is_file())
            }
        };
        let path = path.ok_or(CriuError::Missing)?;
        ensure_kdat_cache();
        Self::check(&path)
    }

    fn check(path: &Path) -> Result<Criu, CriuError> {
        let out = Command::new(path).arg("--version").output().map_err(|_| CriuError::NoVersion(path.into()))?;
        let version = parse_version(&String::from_utf8_lossy(&out.stdout)).ok_or(CriuError::NoVersion(path.into()))?;
        if version_at_least(&version, MIN_VERSION) {
            Ok(Criu { path: path.into(), version })
        } else {
            Err(CriuError::TooOld { path: path.into(), found: version })
        }
    }
}

impl Criu {
    /// Dumps the process tree rooted at `pid` into `images`, using the
    /// freezer cgroup `freezer` (already frozen by the caller, so the tree
    /// stays frozen afterwards and the caller decides what happens next).
    /// The tree's network namespace is not saved: a tree in a user namespace
    /// of its own gets a new one on restore ([`RestoreNetns::Empty`]), any
    /// other's is named as external ([`RestoreNetns::Inherited`]).
    pub(super) fn dump(
        &self,
        pid: i32,
        images: &Path,
        freezer: &Path,
        log: &Path,
        user_namespace: bool,
    ) -> Result<(), CriuError> {
        let mut cmd = Command::new(&self.path);
        cmd.arg("dump").arg("--tree").arg(pid.to_string()).arg("--images-dir").arg(images);
        cmd.arg("--freeze-cgroup").arg(freezer).arg("--leave-running").arg("--log-file").arg(log);
        cmd.args(DUMP_FLAGS);
        if user_namespace {
            cmd.args(["--empty-ns", "net"]);
        } else {
            let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map_err(|source| CriuError::Spawn { path: format!("/proc/{pid}/ns/net").into(), source })?;
            cmd.arg("--external").arg(format!("net[{}]:{NETNS_KEY}", std::os::unix::fs::MetadataExt::ino(&netns)));
        }
        self.run(cmd, "dump", log)
    }

    /// Restores `images` onto the mounted root `root` through CRIU's RPC
    /// ([`criu_rpc`]), into the network namespace `netns` says, logging to
    /// `log`. `prepare` runs in CRIU's process before it starts (e.g. joining
    /// a cgroup); `at_namespaces(pid)` once the restored root has its
    /// namespaces and none of its processes runs yet. Returns the restored
    /// root's host pid; the tree is a child of the caller.
    pub(super) fn restore(
        &self,
        images: &Path,
        root: &Path,
        log: &Path,
        netns: RestoreNetns,
        prepare: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
        at_namespaces: impl FnMut(i32) -> Result<(), String>,
    ) -> Result<i32, CriuError> {
        let request = RestoreRequest {
            images,
            root,
            work_dir: log.parent().unwrap_or(Path::new("/")),
            log_file: &log.file_name().unwrap_or_default().to_string_lossy(),
            netns: match netns {
                RestoreNetns::Inherited(fd) => Some((fd, NETNS_KEY)),
                RestoreNetns::Empty => None,
            },
        };
        criu_rpc::restore(&self.path, &request, prepare, at_namespaces).map_err(|e| match e {
            RpcError::Failed(message) => CriuError::from_log("restore", log, &message),
            other => CriuError::Rpc(other),
        })
    }

    fn run(&self, mut cmd: Command, action: &'static str, log: &Path) -> Result<(), CriuError> {
        let out = cmd.output().map_err(|source| CriuError::Spawn { path: self.path.clone(), source })?;
        if out.status.success() {
            return Ok(());
        }
        Err(CriuError::from_log(action, log, &String::from_utf8_lossy(&out.stderr)))
    }
}

/// Where the set-up's CRIU keeps its kernel-feature cache (`criu.kdat`).
const KDAT_DIR: &str = "/run/hiber/criu";

/// CRIU keeps its kernel-feature cache only on a tmpfs, and /run is not one
/// on every machine: without it each CRIU run probes the kernel again
/// (~35-45 ms). The set-up mounts one; after a reboot, hiber does.
fn ensure_kdat_cache() {
    let dir = Path::new(KDAT_DIR);
    let on_tmpfs = nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !on_tmpfs && std::fs::create_dir_all(dir).is_ok() {
        // Best effort: CRIU works without the cache, only slower.
        let _ = nix::mount::mount(
            Some("hiber-criu"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            Some("size=1m,mode=0700"),
        );
    }
}

impl CriuError {
    /// A [`CriuError::Failed`] with the error lines of CRIU's log (or `stderr`).
    pub fn from_log(action: &'static str, log: &Path, stderr: &str) -> CriuError {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).map(str::trim).collect();
        if errors.is_empty() {
            errors = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        }
        let detail = errors.iter().rev().take(3).rev().copied().collect::<Vec<_>>().join("; ");
        let detail = if detail.is_empty() { "no error in its log".to_string() } else { detail };
        CriuError::Failed { action, detail, log: log.to_owned() }
    }
}

/// Extracts `4.2.1` from `criu --version` output (`Version: 4.2.1`).
fn parse_version(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("Version:")).map(|v| v.trim().to_string())
}

fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_quote_the_last_error_lines_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        std::fs::write(&log, "(0.1) Warn: x\n(0.2) Error (a.c:1): first\n(0.3) Error (b.c:2): second\n").unwrap();
        let msg = CriuError::from_log("dump", &log, "").to_string();
        assert!(msg.starts_with("criu dump failed: (0.2) Error (a.c:1): first; (0.3) Error (b.c:2): second"), "{msg}");
        let msg = CriuError::from_log("restore", &dir.path().join("none"), "boom\n").to_string();
        assert!(msg.contains("restore failed: boom"), "{msg}");
    }

    #[test]
    fn versions_are_read_and_compared() {
        assert_eq!(parse_version("Version: 4.2.1\nGitID: v4.2.1\n").as_deref(), Some("4.2.1"));
        assert_eq!(parse_version("nothing"), None);
        assert!(version_at_least("4.2.1", MIN_VERSION));
        assert!(version_at_least("5.0", MIN_VERSION));
        assert!(!version_at_least("4.1", MIN_VERSION));
        assert!(!version_at_least("3.17", MIN_VERSION));
    }
}
