//! Resource limits and freezing through cgroups, v1 (per-controller
//! hierarchies) or v2 (the unified hierarchy), whichever the host has.
//!
//! Every sandbox gets `hiber/<id>` below each hierarchy it uses.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::spec::Limits;

/// The v1 controllers a sandbox joins.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "freezer"];
/// The v2 controllers a sandbox needs.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const CPU_PERIOD_US: u64 = 100_000;

/// Errors managing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable cgroup hierarchy was found.
    #[error("no usable cgroup hierarchy: need cgroup v2 with memory, cpu and pids, or cgroup v1 with {0}")]
    NoHierarchy(String),
    /// Reading or writing a cgroup file failed.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Processes did not leave the cgroup in time.
    #[error("cgroup {0} still has processes")]
    Busy(PathBuf),
    /// The freezer did not reach the asked state in time.
    #[error("cgroup {0} did not freeze in time")]
    FreezeTimeout(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_owned(), source }
}

/// Which cgroup hierarchy the host uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: one mount per controller (`(controller, mount point)`).
    V1(Vec<(String, PathBuf)>),
    /// cgroup v2: the unified hierarchy's mount point.
    V2(PathBuf),
}

impl Hierarchy {
    /// Detects the hierarchy from `/proc/self/mountinfo`: v2 when a cgroup2
    /// mount offers memory, cpu and pids, else v1 with its controller mounts.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        Self::from_mountinfo(&text, |p| fs::read_to_string(p.join("cgroup.controllers")).ok())
    }

    /// Parses mountinfo text; `controllers` reads a cgroup2 mount's
    /// `cgroup.controllers`.
    fn from_mountinfo(text: &str, controllers: impl Fn(&Path) -> Option<String>) -> Result<Hierarchy, CgroupError> {
        let mut v1 = Vec::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let mount_point = match left.split(' ').nth(4) {
                Some(m) => PathBuf::from(m.replace("\\040", " ")),
                None => continue,
            };
            let mut right = right.split(' ');
            let (fstype, _source, options) = (right.next(), right.next(), right.next().unwrap_or(""));
            match fstype {
                Some("cgroup2") => {
                    let offered = controllers(&mount_point).unwrap_or_default();
                    let offered: Vec<&str> = offered.split_whitespace().collect();
                    if V2_CONTROLLERS.iter().all(|c| offered.contains(c)) {
                        return Ok(Hierarchy::V2(mount_point));
                    }
                }
                Some("cgroup") => {
                    for opt in options.split(',') {
                        if V1_CONTROLLERS.contains(&opt) && !v1.iter().any(|(c, _)| c == opt) {
                            v1.push((opt.to_string(), mount_point.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        if V1_CONTROLLERS.iter().all(|c| v1.iter().any(|(have, _)| have == c)) {
            Ok(Hierarchy::V1(v1))
        } else {
            Err(CgroupError::NoHierarchy(V1_CONTROLLERS.join(", ")))
        }
    }
}

/// A sandbox's cgroup(s).
///
/// On v1 a sandbox joins the freezer (snapshots need it) and only the
/// controllers it has limits for: every join is a separate migration, and
/// each costs an RCU grace period (a few milliseconds) in the kernel.
#[derive(Debug, Clone)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    id: String,
    limits: Limits,
}

impl Cgroup {
    /// Names the cgroup of sandbox `id` with `limits` (it may or may not
    /// exist yet).
    pub fn new(hierarchy: Hierarchy, id: &str, limits: Limits) -> Cgroup {
        Cgroup { hierarchy, id: id.to_string(), limits }
    }

    fn dir_under(&self, mount: &Path) -> PathBuf {
        mount.join("hiber").join(&self.id)
    }

    /// Every directory this cgroup may have (one per v1 controller, or the v2 one).
    fn dirs(&self) -> Vec<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V1(mounts) => mounts.iter().map(|(_, m)| self.dir_under(m)).collect(),
            Hierarchy::V2(root) => vec![self.dir_under(root)],
        }
    }

    /// The directories the sandbox's processes join.
    fn joined(&self) -> Vec<PathBuf> {
        let l = &self.limits;
        match &self.hierarchy {
            Hierarchy::V1(mounts) => mounts
                .iter()
                .filter(|(c, _)| match c.as_str() {
                    "memory" => l.memory_bytes.is_some(),
                    "cpu" => l.cpus.is_some(),
                    "pids" => l.pids.is_some(),
                    _ => true,
                })
                .map(|(_, m)| self.dir_under(m))
                .collect(),
            Hierarchy::V2(root) => vec![self.dir_under(root)],
        }
    }

    fn controller_dir(&self, controller: &str) -> PathBuf {
        match &self.hierarchy {
            Hierarchy::V1(mounts) => {
                let mount = &mounts.iter().find(|(c, _)| c == controller).expect("detected controller").1;
                self.dir_under(mount)
            }
            Hierarchy::V2(root) => self.dir_under(root),
        }
    }

    /// Creates the cgroup and applies its limits.
    pub fn create(&self) -> Result<(), CgroupError> {
        if let Hierarchy::V2(root) = &self.hierarchy {
            let enable = V2_CONTROLLERS.map(|c| format!("+{c}")).join(" ");
            write(&root.join("cgroup.subtree_control"), &enable)?;
            let parent = root.join("hiber");
            fs::create_dir_all(&parent).map_err(io_err(&parent))?;
            write(&parent.join("cgroup.subtree_control"), &enable)?;
        }
        for dir in self.joined() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        self.apply(&self.limits)
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let v2 = matches!(self.hierarchy, Hierarchy::V2(_));
        if let Some(bytes) = limits.memory_bytes {
            let dir = self.controller_dir("memory");
            if v2 {
                write(&dir.join("memory.max"), &bytes.to_string())?;
                write_if_present(&dir.join("memory.swap.max"), "0")?;
            } else {
                write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                write_if_present(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string())?;
            }
        }
        if let Some(cpus) = limits.cpus {
            let dir = self.controller_dir("cpu");
            let quota = ((cpus * CPU_PERIOD_US as f64) as u64).max(1000);
            if v2 {
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            } else {
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        if let Some(pids) = limits.pids {
            write(&self.controller_dir("pids").join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    /// The directory CRIU's `--freeze-cgroup` takes.
    pub fn freezer_dir(&self) -> PathBuf {
        self.controller_dir("freezer")
    }

    /// Moves process `pid` (a host pid) into the cgroup.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.joined() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Host pids of the processes in the cgroup.
    pub fn processes(&self) -> Vec<i32> {
        let dir = self.controller_dir("freezer");
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Freezes (`true`) or thaws (`false`) every process, waiting until done.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value, done): (PathBuf, &str, Box<dyn Fn() -> bool>) = match &self.hierarchy {
            Hierarchy::V1(_) => {
                let f = self.controller_dir("freezer").join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                let probe = f.clone();
                (f, want, Box::new(move || read(&probe).trim() == want))
            }
            Hierarchy::V2(_) => {
                let dir = self.controller_dir("pids");
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                let events = dir.join("cgroup.events");
                (
                    dir.join("cgroup.freeze"),
                    if frozen { "1" } else { "0" },
                    Box::new(move || read(&events).contains(want)),
                )
            }
        };
        write(&file, value)?;
        wait_until(Duration::from_secs(5), done).then_some(()).ok_or(CgroupError::FreezeTimeout(file))
    }

    /// Kills every process in the cgroup and removes it; waits for the
    /// processes to be gone. Missing directories are fine.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        for pid in self.processes() {
            // SAFETY: kill(2) has no memory effects; a stale pid gives ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if matches!(self.hierarchy, Hierarchy::V1(_)) {
            // Killed tasks in a frozen v1 cgroup stay until thawed.
            let _ = write_if_present(&self.controller_dir("freezer").join("freezer.state"), "THAWED");
        }
        for dir in self.dirs() {
            let gone = wait_until(Duration::from_secs(10), || match fs::remove_dir(&dir) {
                Ok(()) => true,
                Err(e) => e.kind() == io::ErrorKind::NotFound,
            });
            if !gone {
                return Err(CgroupError::Busy(dir));
            }
        }
        Ok(())
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

fn write_if_present(path: &Path, value: &str) -> Result<(), CgroupError> {
    if path.exists() {
        write(path, value)?;
    }
    Ok(())
}

/// Polls `done` with a short back-off until it holds or `limit` passes.
pub(crate) fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
36 24 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
37 24 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct
38 24 0:33 / /sys/fs/cgroup/pids rw,nosuid shared:12 - cgroup cgroup rw,pids
39 24 0:34 / /sys/fs/cgroup/freezer rw,nosuid shared:13 - cgroup cgroup rw,freezer
40 24 0:35 / /proc rw - proc proc rw";

    #[test]
    fn hybrid_host_uses_v1_when_cgroup2_has_no_controllers() {
        let h = Hierarchy::from_mountinfo(HYBRID, |_| Some("hugetlb\n".into())).unwrap();
        let Hierarchy::V1(mounts) = h else { panic!("expected v1") };
        let cpu = mounts.iter().find(|(c, _)| c == "cpu").unwrap();
        assert_eq!(cpu.1, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(mounts.len(), 4);
    }

    #[test]
    fn sandboxes_join_the_freezer_and_only_the_controllers_they_limit() {
        let h = Hierarchy::from_mountinfo(HYBRID, |_| None).unwrap();
        let names = |limits: Limits| -> Vec<String> {
            let cg = Cgroup::new(h.clone(), "abc", limits);
            cg.joined().iter().map(|d| d.parent().unwrap().parent().unwrap().display().to_string()).collect()
        };
        assert_eq!(names(Limits::default()), ["/sys/fs/cgroup/freezer"]);
        let limited = Limits { memory_bytes: Some(1 << 30), cpus: None, pids: Some(10) };
        assert_eq!(names(limited), ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer"]);
        assert_eq!(Cgroup::new(h, "abc", Limits::default()).dirs().len(), 4, "removal looks everywhere");
    }

    #[test]
    fn unified_host_with_controllers_uses_v2() {
        let text = "30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let h = Hierarchy::from_mountinfo(text, |_| Some("cpuset cpu io memory pids".into())).unwrap();
        assert_eq!(h, Hierarchy::V2("/sys/fs/cgroup".into()));
    }

    #[test]
    fn missing_controllers_are_an_error() {
        let text = "36 24 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        assert!(matches!(Hierarchy::from_mountinfo(text, |_| None), Err(CgroupError::NoHierarchy(_))));
    }
}
