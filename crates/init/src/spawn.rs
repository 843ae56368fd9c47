//! Starting a child: fork, give it its own session and stdio, exec, and
//! report a failure to exec through a close-on-exec pipe. Also the pipes and
//! pseudo-terminals the child's stdio is made of.
//!
//! Nothing here waits for children: the reaper collects every exit.

use std::ffi::{c_char, CString};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::ptr;

use hiber_proto::TtySize;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use nix::unistd::{fork, pipe2, ForkResult, Pid};

use crate::command::Command;

/// Why a child could not be started (before it existed).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A pipe, terminal or `/dev/null` could not be opened.
    #[error("cannot set up stdio: {0}")]
    Stdio(std::io::Error),
    /// `fork` failed (too many processes, out of memory).
    #[error("cannot fork: {0}")]
    Fork(Errno),
}

fn stdio_err(e: impl Into<std::io::Error>) -> SpawnError {
    SpawnError::Stdio(e.into())
}

/// What the child's fds 0, 1 and 2 become.
#[derive(Debug, Clone, Copy)]
pub struct Stdio<'a> {
    /// Becomes fd 0.
    pub stdin: BorrowedFd<'a>,
    /// Becomes fd 1.
    pub stdout: BorrowedFd<'a>,
    /// Becomes fd 2.
    pub stderr: BorrowedFd<'a>,
    /// The three are a terminal's slave side, to become the child's
    /// controlling terminal.
    pub tty: bool,
}

/// The step at which a child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its session, stdio or controlling terminal.
    Setup,
    /// Taking its user's ids.
    User,
    /// Changing to its working directory.
    Chdir,
    /// Executing the program.
    Exec,
}

/// What a child that could not exec reports through its report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Where it failed.
    pub stage: Stage,
    /// Why.
    pub errno: Errno,
}

impl Failure {
    /// Size of an encoded report.
    pub const LEN: usize = 5;

    fn encode(self) -> [u8; Failure::LEN] {
        let stage = match self.stage {
            Stage::Setup => 1,
            Stage::Chdir => 2,
            Stage::Exec => 3,
            Stage::User => 4,
        };
        let e = (self.errno as i32).to_le_bytes();
        [stage, e[0], e[1], e[2], e[3]]
    }

    /// Decodes a report; a malformed one counts as a setup failure.
    pub fn decode(bytes: &[u8]) -> Failure {
        let malformed = Failure { stage: Stage::Setup, errno: Errno::UnknownErrno };
        let [stage, e0, e1, e2, e3] = *bytes else { return malformed };
        let stage = match stage {
            1 => Stage::Setup,
            2 => Stage::Chdir,
            3 => Stage::Exec,
            4 => Stage::User,
            _ => return malformed,
        };
        Failure { stage, errno: Errno::from_raw(i32::from_le_bytes([e0, e1, e2, e3])) }
    }

    /// The exit status the child ends with: 127 when the program does not
    /// exist, 126 for any other failure (like a shell).
    pub fn exit_code(self) -> i32 {
        match (self.stage, self.errno) {
            (Stage::Exec, Errno::ENOENT | Errno::ENOTDIR) => 127,
            _ => 126,
        }
    }

    /// The one line shown to the user, newline included.
    pub fn message(self, name: &str, cwd: &str) -> String {
        let why = self.errno.desc();
        let reason = match self.stage {
            Stage::Setup => format!("cannot set up its session or stdio: {why}"),
            Stage::User => format!("cannot take its user's ids: {why}"),
            Stage::Chdir => format!("cannot change to directory '{cwd}': {why}"),
            Stage::Exec => why.to_string(),
        };
        format!("hiber-init: cannot run '{name}': {reason}\n")
    }
}

/// A pipe whose ends are both close-on-exec: `(read, write)`.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    pipe2(OFlag::O_CLOEXEC).map_err(stdio_err)
}

/// `/dev/null`, for a child's stdin.
pub fn dev_null() -> Result<OwnedFd, SpawnError> {
    // std opens files close-on-exec.
    Ok(OpenOptions::new().read(true).open("/dev/null").map_err(stdio_err)?.into())
}

/// Makes reads and writes on `fd` return `EAGAIN` instead of blocking.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), SpawnError> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(stdio_err)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(stdio_err)?;
    Ok(())
}

/// Both sides of a new pseudo-terminal.
#[derive(Debug)]
pub struct Pty {
    /// The side hiber-init reads output from and writes input to.
    pub master: OwnedFd,
    /// The side the child gets as its terminal.
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal from `/dev/ptmx` (inside a sandbox, its own
/// devpts instance), sized `size` when given. Both fds are close-on-exec and
/// the slave is opened without becoming anyone's controlling terminal.
pub fn open_pty(size: Option<TtySize>) -> Result<Pty, SpawnError> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master = nix::pty::posix_openpt(flags).map_err(stdio_err)?;
    nix::pty::grantpt(&master).map_err(stdio_err)?;
    nix::pty::unlockpt(&master).map_err(stdio_err)?;
    // SAFETY: into_raw_fd hands over ownership of an open fd, which
    // OwnedFd takes and will close.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    // TIOCGPTPEER opens the slave of exactly this master, whatever path
    // /dev/pts resolves to.
    // SAFETY: plain ioctl on an fd we own; the argument is the open flags.
    let slave = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags.bits()) };
    if slave < 0 {
        return Err(stdio_err(Errno::last()));
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some(size) = size {
        set_window_size(master.as_raw_fd(), size)?;
    }
    Ok(Pty { master, slave })
}

/// Sets a terminal's size; the kernel tells its foreground process group
/// with `SIGWINCH`.
pub fn set_window_size(fd: RawFd, size: TtySize) -> Result<(), SpawnError> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points to
    // a live local.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(stdio_err(Errno::last()));
    }
    Ok(())
}

/// Forks a child that runs `cmd` with `stdio`, in a new session, with every
/// signal at its default disposition and unblocked, and returns its pid.
///
/// `report` is the write end of a close-on-exec pipe: a child that cannot
/// exec writes a [`Failure`] to it and exits with [`Failure::exit_code`].
/// Our copy is closed on return, so the read end sees end of file once the
/// program runs.
pub fn spawn(cmd: &Command, stdio: Stdio<'_>, report: OwnedFd) -> Result<Pid, SpawnError> {
    // Everything the child needs is built now: after fork it must not
    // allocate.
    let argv = null_terminated(&cmd.argv);
    let envp = null_terminated(&cmd.env);
    let fds = [stdio.stdin.as_raw_fd(), stdio.stdout.as_raw_fd(), stdio.stderr.as_raw_fd()];
    let child = ChildSetup {
        program: cmd.program.as_ref().map(|p| p.as_ptr()),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cmd.cwd.as_ptr(),
        identity: cmd.identity.as_ref().map(|i| (i.uid, i.gid, i.groups.as_slice())),
        fds,
        tty: stdio.tty,
        report: report.as_raw_fd(),
    };

    // Signals stay blocked across fork so that no handler of ours runs in
    // the child before it resets them.
    let mut saved = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut saved)).map_err(SpawnError::Fork)?;
    // SAFETY: hiber-init runs one thread, and the child only makes
    // async-signal-safe calls on data prepared above before it execs or
    // exits.
    let result = match unsafe { fork() } {
        // SAFETY: we are the freshly forked child; see ChildSetup::run.
        Ok(ForkResult::Child) => unsafe { child.run() },
        Ok(ForkResult::Parent { child }) => Ok(child),
        Err(e) => Err(SpawnError::Fork(e)),
    };
    // Restoring the parent's mask cannot fail with a valid set.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    result
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(ptr::null())).collect()
}

/// The OOM score adjustment of every process hiber-init starts (best effort).
const OOM_SCORE_ADJ: &[u8] = b"100";

/// Raw pointers and fds the forked child works from.
struct ChildSetup<'a> {
    program: Option<*const c_char>,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    /// uid, gid and supplementary groups to take, if not root's.
    identity: Option<(u32, u32, &'a [u32])>,
    fds: [RawFd; 3],
    tty: bool,
    report: RawFd,
}

impl ChildSetup<'_> {
    /// Runs in the forked child: sets it up and execs, or reports why not
    /// and exits.
    ///
    /// # Safety
    /// Call only in a freshly forked child, with every pointer valid (the
    /// parent's memory, copied by fork). Only async-signal-safe calls here.
    unsafe fn run(&self) -> ! {
        // SAFETY: every call below is an async-signal-safe libc function given valid
        // pointers or plain integers (the whole body).
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            // Every signal number below Linux's _NSIG (65); the ones that
            // cannot be changed just fail.
            for sig in 1..65 {
                libc::sigaction(sig, &dfl, ptr::null_mut());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());

            if libc::setsid() < 0 {
                self.fail(Stage::Setup);
            }
            // Every process of the sandbox ranks above hiber-init for the
            // OOM killer (raising needs no privilege; lowering init would):
            // when memory runs out, the sandbox's own processes die, not its
            // PID 1, which would take the whole sandbox along.
            let adj = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if adj >= 0 {
                libc::write(adj, OOM_SCORE_ADJ.as_ptr().cast(), OOM_SCORE_ADJ.len());
                libc::close(adj);
            }
            for (target, &fd) in self.fds.iter().enumerate() {
                let target = target as RawFd;
                let ok = if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(fd, target) == target
                };
                if !ok {
                    self.fail(Stage::Setup);
                }
            }
            if self.tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                self.fail(Stage::Setup);
            }
            // Groups first: after setuid the process may no longer change them.
            if let Some((uid, gid, groups)) = self.identity {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0 || libc::setgid(gid) < 0 || libc::setuid(uid) < 0
                {
                    self.fail(Stage::User);
                }
            }
            if libc::chdir(self.cwd) < 0 {
                self.fail(Stage::Chdir);
            }
            match self.program {
                Some(program) => {
                    libc::execve(program, self.argv, self.envp);
                    self.fail(Stage::Exec)
                }
                None => self.report(Failure { stage: Stage::Exec, errno: Errno::ENOENT }),
            }
        }
    }

    /// Reports the current errno at `stage` and exits.
    ///
    /// # Safety
    /// As for [`ChildSetup::run`]: only in the forked child.
    unsafe fn fail(&self, stage: Stage) -> ! {
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.report(Failure { stage, errno: Errno::last() }) }
    }

    /// Writes `failure` to the report pipe and exits with its code.
    ///
    /// # Safety
    /// As for [`ChildSetup::run`]: only in the forked child.
    unsafe fn report(&self, failure: Failure) -> ! {
        let bytes = failure.encode();
        // SAFETY: write from a live local buffer and _exit are
        // async-signal-safe. A report shorter than PIPE_BUF is atomic.
        unsafe {
            libc::write(self.report, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(failure.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reports_roundtrip_and_map_to_shell_codes() {
        let f = Failure { stage: Stage::Exec, errno: Errno::ENOENT };
        assert_eq!(Failure::decode(&f.encode()), f);
        assert_eq!(f.exit_code(), 127);
        assert_eq!(f.message("nope", "/"), "hiber-init: cannot run 'nope': No such file or directory\n");
        let denied = Failure { stage: Stage::Exec, errno: Errno::EACCES };
        assert_eq!(denied.exit_code(), 126);
        let chdir = Failure { stage: Stage::Chdir, errno: Errno::ENOENT };
        assert_eq!(Failure::decode(&chdir.encode()), chdir);
        assert_eq!(chdir.exit_code(), 126);
        assert!(chdir.message("ls", "/x").contains("cannot change to directory '/x'"));
        assert_eq!(Failure::decode(&[9, 0]).stage, Stage::Setup);
    }

    #[test]
    fn pty_opens_with_a_size() {
        let pty = open_pty(Some(TtySize { rows: 33, cols: 77 })).unwrap();
        // SAFETY: winsize is plain integers; all zeroes is a valid value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize into a live local.
        assert_eq!(unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 77));
    }
}
