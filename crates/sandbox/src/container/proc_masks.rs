//! The parts of a sandbox's `/proc` that reach the host's kernel, hidden or frozen as Docker
//! does: `/proc/sys`, `/proc/sysrq-trigger`, `/proc/irq`, `/proc/bus` and `/proc/fs` are
//! read-only; `/proc/kcore`, `/proc/keys`, `/proc/timer_list` and the like read as empty (the
//! sandbox's `/dev/null` bound over them), `/proc/acpi`, `/proc/asound` and `/proc/scsi` as empty
//! read-only directories (hiber's layer's [`EMPTY_DIR`] bound over them: a bind mount CRIU
//! restores with one `mount(2)`, where a tmpfs would cost it a `tar` run per dump and restore). Without `CAP_SYS_ADMIN` the sandbox cannot undo any of it; CRIU dumps
//! and restores the mounts with the sandbox's mount namespace.
//!
//! Applied in the cloned child, on the new root's `/proc` before `pivot_root`; the paths are made
//! beforehand, so [`ProcMasks::apply`] only makes `mount(2)` calls.

use std::ffi::CString;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// Made read-only.
const READ_ONLY: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// Files hidden under `/dev/null`.
const MASKED_FILES: &[&str] = &["kcore", "keys", "latency_stats", "sched_debug", "timer_list", "timer_stats"];
/// Directories hidden under an empty read-only directory.
const MASKED_DIRS: &[&str] = &["acpi", "asound", "scsi"];

/// The empty directory of hiber's layer bound over [`MASKED_DIRS`].
pub const EMPTY_DIR: &str = ".hiber/empty";

/// The mount calls' paths, under one sandbox root.
pub struct ProcMasks {
    null: CString,
    empty: CString,
    read_only: Vec<CString>,
    masked_files: Vec<CString>,
    masked_dirs: Vec<CString>,
}

impl ProcMasks {
    /// The paths under `rootfs` (whose `/proc` will be mounted), as the mount calls name them.
    pub fn new(rootfs: &Path) -> Result<ProcMasks, String> {
        let empty = rootfs.join(EMPTY_DIR);
        let c = |p: &Path| CString::new(p.display().to_string()).map_err(|_| format!("NUL byte in {}", p.display()));
        let under_proc =
            |names: &[&str]| names.iter().map(|n| c(&rootfs.join("proc").join(n))).collect::<Result<Vec<_>, _>>();
        Ok(ProcMasks {
            null: c(&rootfs.join("dev/null"))?,
            empty: c(&empty)?,
            read_only: under_proc(READ_ONLY)?,
            masked_files: under_proc(MASKED_FILES)?,
            masked_dirs: under_proc(MASKED_DIRS)?,
        })
    }

    /// Makes the mounts (after `/proc` is mounted). A path this kernel does not have is skipped.
    pub fn apply(&self) -> Result<(), String> {
        let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        fn fail<'a>(what: &'static str, path: &'a CString) -> impl Fn(Errno) -> String + 'a {
            move |e| format!("{what} {}: {e}", path.to_string_lossy())
        }
        let unless_missing = |r: nix::Result<()>| if r == Err(Errno::ENOENT) { Ok(()) } else { r };
        for path in &self.read_only {
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            match mount(Some(path.as_c_str()), path.as_c_str(), None::<&str>, bind, None::<&str>) {
                Err(Errno::ENOENT) => continue,
                r => r.map_err(fail("bind", path))?,
            }
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked;
            mount(None::<&str>, path.as_c_str(), None::<&str>, flags, None::<&str>)
                .map_err(fail("make read-only", path))?;
        }
        for path in &self.masked_files {
            let r = mount(Some(self.null.as_c_str()), path.as_c_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>);
            unless_missing(r).map_err(fail("mask", path))?;
        }
        for path in &self.masked_dirs {
            let r = mount(Some(self.empty.as_c_str()), path.as_c_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>);
            match r {
                Err(Errno::ENOENT) => continue,
                r => r.map_err(fail("mask", path))?,
            }
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked;
            mount(None::<&str>, path.as_c_str(), None::<&str>, flags, None::<&str>)
                .map_err(fail("make read-only", path))?;
        }
        Ok(())
    }
}
