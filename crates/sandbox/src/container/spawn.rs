//! Starting a sandbox's process tree.
//!
//! The caller forks a *shim*: it leaves the caller's session, becomes a child
//! subreaper, and clones hiber-init into new user, pid, mount, uts, ipc and net
//! namespaces. The user namespace maps the sandbox's ids `0..65536` to the
//! host's unprivileged range ([`hiber_image::ids`]), written by the shim before
//! the child goes on; the child then becomes root of it. The shim then stays as the parent of the sandbox: it reaps
//! hiber-init (and anything orphaned to it), records the exit code, and ends.
//! So nothing is left for the machine's own PID 1 to adopt, and no daemon is
//! needed: `hiber run -d` returns while the shim carries on.
//!
//! The init child is CRIU-friendly: it starts its own session, no host file
//! descriptor survives its exec, and no parent-death signal is set.
//!
//! Before its exec it confines itself, and so every process of the sandbox: the
//! `/proc` masks ([`super::proc_masks`]) on the new root, the capability bounding
//! set ([`super::capabilities`]), then the seccomp filter ([`super::seccomp`]).
//! A restored tree gets all three back from CRIU.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use hiber_proto::{InitConfig, INIT_PATH};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root, sethostname, setsid, Gid, Uid};

use hiber_common::fs::write_json_atomic;

use super::cgroup::Cgroup;
use super::criu::{Criu, RestoreNetns};
use super::proc_masks::ProcMasks;
use super::record::ExitRecord;
use super::runtime::{SandboxDir, ROOTFS};
use super::{capabilities, seccomp};
use crate::spec::{Capabilities, Confinement, Seccomp};

/// Errors starting a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A system call in the caller or shim failed.
    #[error("{0}: {1}")]
    Sys(&'static str, io::Error),
    /// Setting up the sandbox's namespaces or root failed in the child.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The shim ended without reporting.
    #[error("the sandbox's shim died while starting it (see {0})")]
    ShimDied(String),
}

/// How the sandbox's process tree comes to be.
pub enum Start<'a> {
    /// A fresh hiber-init, cloned into new namespaces, confined as `confinement` says (and so
    /// is every process of the sandbox).
    Fresh {
        /// The seccomp filter and the capabilities.
        confinement: Confinement,
    },
    /// A dumped tree brought back by CRIU, into a fresh network namespace
    /// (CRIU re-creates the others).
    Restore {
        /// The CRIU to run.
        criu: &'a Criu,
        /// The process image.
        images: &'a Path,
        /// Whether the tree was dumped in a user namespace of its own (false
        /// for snapshots from before sandboxes had one).
        user_namespace: bool,
    },
}

/// What the shim needs to start and watch a sandbox.
pub struct Launch<'a> {
    /// The sandbox's runtime directory: its mounted root, where the shim records hiber-init's
    /// exit and its own diagnostics, CRIU's pidfile and log.
    pub dir: &'a SandboxDir,
    /// The sandbox's hostname.
    pub hostname: &'a str,
    /// hiber-init's configuration (a fresh start's).
    pub config: &'a InitConfig,
    /// How to start it.
    pub start: Start<'a>,
    /// The cgroup hiber-init is put into before it runs.
    pub cgroup: &'a Cgroup,
}

/// Host pids of a started sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Launched {
    /// The shim watching the sandbox.
    pub shim_pid: i32,
    /// hiber-init.
    pub init_pid: i32,
}

fn sys<T>(what: &'static str, r: nix::Result<T>) -> Result<T, SpawnError> {
    r.map_err(|e| SpawnError::Sys(what, e.into()))
}

fn pipe() -> Result<(File, File), SpawnError> {
    let (r, w) = sys("pipe", nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))?;
    Ok((File::from(r), File::from(w)))
}

/// Forks the shim, which starts hiber-init; returns once hiber-init has
/// exec'd (or failed to).
pub fn launch(mut launch: Launch) -> Result<Launched, SpawnError> {
    let (mut report_r, report_w) = pipe()?;
    let child_args = match &launch.start {
        Start::Fresh { confinement } => Some(ChildArgs::new(launch.dir, launch.config, *confinement)?),
        Start::Restore { .. } => None,
    };
    // SAFETY: the child only runs the shim (below) and exits with _exit; with
    // glibc, allocation after fork is safe even if other threads existed.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(SpawnError::Sys("fork", e.into())),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(report_r);
            let code = run_shim(&mut launch, child_args.as_ref(), report_w);
            // SAFETY: _exit ends this forked process without running the
            // parent's atexit handlers or flushing its copied buffers.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(report_w);
            let mut report = String::new();
            let _ = report_r.read_to_string(&mut report);
            let shim_pid = child.as_raw();
            match report.split_once(' ') {
                Some(("ok", pid)) => Ok(Launched {
                    shim_pid,
                    init_pid: pid.trim().parse().map_err(|_| SpawnError::ShimDied(report.clone()))?,
                }),
                Some(("err", message)) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(SpawnError::Setup(message.to_string()))
                }
                _ => {
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(SpawnError::ShimDied(launch.dir.shim_log().display().to_string()))
                }
            }
        }
    }
}

/// Everything the init child needs, allocated before any fork or clone.
struct ChildArgs {
    proc_dir: CString,
    pts_dir: CString,
    rootfs: CString,
    init: CString,
    argv: [CString; 2],
    env: [CString; 1],
    /// The seccomp program to install just before the exec, if any.
    filter: Option<Vec<libc::sock_filter>>,
    /// The bounding set hiber-init is exec'd with.
    capabilities: Capabilities,
    /// What of `/proc` is hidden or read-only.
    proc_masks: ProcMasks,
}

impl ChildArgs {
    fn new(dir: &SandboxDir, config: &InitConfig, confinement: Confinement) -> Result<ChildArgs, SpawnError> {
        let c = |s: &str| CString::new(s).map_err(|_| SpawnError::Setup(format!("NUL byte in {s:?}")));
        let json = serde_json::to_string(config).expect("config serializes");
        let empty = dir.rootfs().join(super::proc_masks::EMPTY_DIR);
        if !empty.is_dir() {
            return Err(SpawnError::Setup(format!("{} is missing: hiber's layer is damaged", empty.display())));
        }
        let rootfs = Path::new(ROOTFS);
        Ok(ChildArgs {
            proc_dir: c(&format!("{ROOTFS}/proc"))?,
            pts_dir: c(&format!("{ROOTFS}/dev/pts"))?,
            rootfs: c(ROOTFS)?,
            init: c(INIT_PATH)?,
            argv: [c(INIT_PATH)?, c(&json)?],
            env: [c(&format!("PATH={}", hiber_proto::DEFAULT_PATH))?],
            filter: (confinement.seccomp == Seccomp::Default).then(seccomp::default_program),
            capabilities: confinement.capabilities,
            proc_masks: ProcMasks::new(rootfs).map_err(SpawnError::Setup)?,
        })
    }
}

/// The shim: detach, start hiber-init, report, then reap until it is gone.
fn run_shim(launch: &mut Launch, args: Option<&ChildArgs>, report: File) -> i32 {
    let _ = setsid();
    // SAFETY: prctl with integer arguments and a static NUL-terminated name.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"hiber-shim".as_ptr());
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
    let report = match isolate_fds(&launch.dir.shim_log(), report) {
        Ok(fd) => fd,
        Err(_) => return 1,
    };
    let mut report = File::from(report);
    let started = match (&launch.start, args) {
        (Start::Restore { criu, images, user_namespace }, _) => restore(launch, criu, images, *user_namespace),
        (Start::Fresh { .. }, Some(args)) => start_init(launch, args),
        (Start::Fresh { .. }, None) => unreachable!("fresh starts prepare their arguments"),
    };
    match started {
        Err(e) => {
            let _ = write!(report, "err {e}");
            1
        }
        Ok(init_pid) => {
            let _ = write!(report, "ok {init_pid}");
            drop(report);
            reap_until_empty(init_pid, &launch.dir.exit());
            0
        }
    }
}

/// Restores the tree with CRIU, from inside the sandbox's cgroup (so the
/// restored tree, forked by CRIU, lands there), and gives it its hostname and
/// a loopback that is up before any of its processes runs. The tree is the
/// shim's child.
fn restore(launch: &Launch, criu: &Criu, images: &Path, user_namespace: bool) -> Result<i32, SpawnError> {
    // Trees from before sandboxes had user namespaces join a namespace made here.
    let made = if user_namespace { None } else { Some(fresh_netns()?) };
    let netns = made.as_ref().map_or(RestoreNetns::Empty, |fd| RestoreNetns::Inherited(fd.as_raw_fd()));
    let cgroup = launch.cgroup.clone();
    let prepare = move || cgroup.add_process(std::process::id() as i32).map_err(io::Error::other);
    let hostname = launch.hostname;
    let (root, log) = (launch.dir.rootfs(), launch.dir.restore_log());
    criu.restore(images, &root, &log, netns, prepare, |pid| set_up_namespaces(pid, hostname))
        .map_err(|e| SpawnError::Setup(e.to_string()))
}

/// Points stdio at the shim log and /dev/null and closes every other
/// inherited descriptor (locks, terminals, sockets) except the report pipe,
/// which moves to fd 3.
fn isolate_fds(shim_log: &Path, report: File) -> io::Result<OwnedFd> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(shim_log)?;
    let null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
    // SAFETY: dup2/close_range on descriptors this process owns; afterwards
    // fd 3 is owned solely by the returned OwnedFd.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
        if libc::dup2(report.as_raw_fd(), 3) != 3 {
            return Err(io::Error::last_os_error());
        }
        libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC);
        std::mem::forget((log, null, report));
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        Ok(OwnedFd::from_raw_fd(3))
    }
}

/// clone3's argument block (the version-0 layout).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Clones hiber-init into new namespaces, puts it in the cgroup, lets it run.
fn start_init(launch: &Launch, args: &ChildArgs) -> Result<i32, SpawnError> {
    chdir(launch.dir.path()).map_err(|e| SpawnError::Sys("chdir to the sandbox's directory", e.into()))?;
    let (mut sync_r, mut sync_w) = pipe()?;
    let (mut err_r, mut err_w) = pipe()?;
    let clone = CloneArgs {
        flags: (libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWNET) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork; the argument block
    // outlives the call. The child runs only `enter_sandbox` and exits.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &clone as *const CloneArgs, size_of::<CloneArgs>()) };
    if pid < 0 {
        return Err(SpawnError::Sys("clone3", io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(sync_w);
        drop(err_r);
        let mut go = [0u8; 1];
        let _ = sync_r.read(&mut go);
        let error = enter_sandbox(launch, args);
        let _ = write!(err_w, "{error}");
        // SAFETY: leaves the cloned child without unwinding into the shim's code.
        unsafe { libc::_exit(1) }
    }
    let pid = pid as i32;
    drop(sync_r);
    drop(err_w);
    let kill = || {
        // SAFETY: kill/waitpid on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    };
    if let Err(e) = launch.cgroup.add_process(pid) {
        kill();
        return Err(SpawnError::Setup(e.to_string()));
    }
    if let Err(e) = map_ids(pid) {
        kill();
        return Err(e);
    }
    let _ = sync_w.write_all(&[1]);
    drop(sync_w);
    let mut error = String::new();
    let _ = err_r.read_to_string(&mut error);
    if !error.is_empty() {
        kill();
        return Err(SpawnError::Setup(error));
    }
    Ok(pid)
}

/// Maps the ids of `pid`'s new user namespace to the sandboxes' host range.
pub(super) fn map_ids(pid: i32) -> Result<(), SpawnError> {
    let map = hiber_image::ids::id_map();
    for file in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{file}"), &map).map_err(|e| SpawnError::Sys("writing the id map", e))?;
    }
    Ok(())
}

/// In the cloned child: set up the root and exec hiber-init. Returns only on
/// failure, with what failed.
fn enter_sandbox(launch: &Launch, args: &ChildArgs) -> String {
    let step = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    let result = (|| -> Result<(), String> {
        // Root of the new user namespace, with none of the host's groups.
        step("setgroups", nix::unistd::setgroups(&[]))?;
        let root = (Gid::from_raw(0), Uid::from_raw(0));
        step("setresgid", nix::unistd::setresgid(root.0, root.0, root.0))?;
        step("setresuid", nix::unistd::setresuid(root.1, root.1, root.1))?;
        step("setsid", setsid().map(drop))?;
        step(
            "make / private",
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>),
        )?;
        // Mounts inherited from the host are locked in a user namespace, and a locked mount
        // cannot become the root: bind the root onto itself, a mount of this namespace's own.
        step(
            "bind the root",
            mount(
                Some(args.rootfs.as_c_str()),
                args.rootfs.as_c_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
        let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        step(
            "mount /proc",
            mount(Some("proc"), args.proc_dir.as_c_str(), Some("proc"), nosuid | MsFlags::MS_NODEV, None::<&str>),
        )?;
        args.proc_masks.apply()?;
        step(
            "mount /dev/pts",
            mount(
                Some("devpts"),
                args.pts_dir.as_c_str(),
                Some("devpts"),
                nosuid,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            ),
        )?;
        step("chdir to root", chdir(args.rootfs.as_c_str()))?;
        step("pivot_root", pivot_root(".", "."))?;
        step("detach the host's root", umount2(".", MntFlags::MNT_DETACH))?;
        step("chdir /", chdir("/"))?;
        step("sethostname", sethostname(launch.hostname))?;
        hiber_common::net::loopback_up().map_err(|e| format!("loopback up: {e}"))?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?;
        // SAFETY: dup2 onto stdio and marking every other descriptor
        // close-on-exec touch only this process's descriptor table.
        unsafe {
            for fd in 0..3 {
                libc::dup2(null.as_raw_fd(), fd);
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        }
        capabilities::bound(args.capabilities).map_err(|e| format!("capabilities: {e}"))?;
        if let Some(filter) = &args.filter {
            seccomp::install(filter).map_err(|e| format!("seccomp filter: {e}"))?;
        }
        let err = nix::unistd::execve(args.init.as_c_str(), &args.argv, &args.env).unwrap_err();
        Err(format!("exec {INIT_PATH}: {err}"))
    })();
    result.err().unwrap_or_default()
}

/// A new network namespace with loopback up, like every sandbox's, for a
/// restored tree to join; inheritable, so CRIU gets it.
fn fresh_netns() -> Result<OwnedFd, SpawnError> {
    use nix::sched::{setns, unshare, CloneFlags};
    let io = |what: &'static str| move |e: nix::Error| SpawnError::Sys(what, e.into());
    let host = File::open("/proc/self/ns/net").map_err(|e| SpawnError::Sys("opening the host's netns", e))?;
    unshare(CloneFlags::CLONE_NEWNET).map_err(io("creating a network namespace"))?;
    let made = hiber_common::net::loopback_up()
        .and_then(|()| File::open("/proc/self/ns/net"))
        .map_err(|e| SpawnError::Sys("preparing the network namespace", e));
    // The shim itself stays in the host's namespace.
    setns(&host, CloneFlags::CLONE_NEWNET).map_err(io("returning to the host's netns"))?;
    let netns = OwnedFd::from(made?);
    // SAFETY: clears FD_CLOEXEC on a descriptor `netns` owns.
    unsafe { libc::fcntl(netns.as_raw_fd(), libc::F_SETFD, 0) };
    Ok(netns)
}

/// Brings the loopback of `pid`'s network namespace up and gives its uts
/// namespace `hostname` (CRIU brings back the old one).
fn set_up_namespaces(pid: i32, hostname: &str) -> Result<(), String> {
    let hostname = hostname.to_string();
    in_namespaces(pid, &[Namespace::Net, Namespace::Uts], move || {
        hiber_common::net::loopback_up()
            .map_err(|e| io::Error::new(e.kind(), format!("bringing the loopback up: {e}")))?;
        sethostname(&hostname).map_err(|e| io::Error::other(format!("setting the hostname: {e}")))
    })
    .map_err(|e| e.to_string())
}

/// A namespace [`in_namespaces`] can join.
#[derive(Debug, Clone, Copy)]
pub(super) enum Namespace {
    /// The network namespace.
    Net,
    /// The hostname's.
    Uts,
}

/// Runs `f` on a thread of its own that has joined `namespaces` of host process `pid`
/// (`setns` moves only the calling thread; what `f` makes, a socket say, stays in them).
pub(super) fn in_namespaces<T: Send + 'static>(
    pid: i32,
    namespaces: &[Namespace],
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    use nix::sched::{setns, CloneFlags};
    let files = namespaces
        .iter()
        .map(|ns| {
            let (kind, flag) = match ns {
                Namespace::Net => ("net", CloneFlags::CLONE_NEWNET),
                Namespace::Uts => ("uts", CloneFlags::CLONE_NEWUTS),
            };
            let path = format!("/proc/{pid}/ns/{kind}");
            File::open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
                .map(|file| (file, flag, path))
        })
        .collect::<io::Result<Vec<_>>>()?;
    std::thread::spawn(move || {
        for (file, flag, path) in files {
            setns(&file, flag).map_err(|e| io::Error::other(format!("joining {path}: {e}")))?;
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Exit code of a wait status: the exit status, or 128 + the signal.
fn exit_code(status: i32) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// Reaps children (hiber-init and orphans re-parented to the shim) until none
/// is left, recording hiber-init's exit.
fn reap_until_empty(init_pid: i32, exit_file: &Path) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if pid == init_pid {
            let at = hiber_common::unix_secs();
            if let Err(e) = write_json_atomic(exit_file, &ExitRecord { code: exit_code(status), at }) {
                eprintln!("hiber-shim: recording the exit of {init_pid}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(7 << 8), 7);
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(exit_code(0), 0);
    }
}
