//! Plain CRIU CLI calls as the snapshot benchmark's peer: the same workloads in a hiber sandbox,
//! checkpointed with a bare `criu dump` and restored with a bare `criu restore` onto the
//! sandbox's root filesystem, which stays mounted and unchanged in between. This is what hiber's
//! own snapshot and restore cost without hiber's layers, manifests, checksums and speed-ups.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hiber_sandbox::{Backend, ContainerBackend, Criu, HostView, SandboxSpec};

use super::{dial_in, fsync_tree, PeerTimes, Workload, SETTLE};

/// The flags of both calls, as PLATFORM.md's working cycle has them.
const FLAGS: [&str; 3] = ["--tcp-established", "--file-locks", "--link-remap"];

/// Checkpoints and restores `workload` with plain CRIU `rounds` times, on sandboxes of the
/// container backend on `home` (the peer works on the container itself); `spec` creates a sandbox
/// whose main process is the workload. Work files go under `work` (removed after each round
/// that succeeds; a failed round leaves its CRIU logs there).
///
/// Per round: create the sandbox, let it settle (or read its counter), time `criu dump -t INIT
/// -D DIR` (which kills the tree) plus an fsync of DIR, measure DIR's size, time `criu restore
/// -D DIR -d --root ROOTFS --pidfile PIDFILE` and, for a serving workload, the time until it
/// answers with the next counter value; then kill the restored tree and remove the sandbox.
pub fn criu_cli(home: &Path, spec: &SandboxSpec, workload: Workload, rounds: usize, work: &Path) -> Result<PeerTimes> {
    let criu = Criu::locate()?;
    let backend = ContainerBackend::open(home)?;
    // The restored tree is CRIU's child; when `criu restore -d` exits, it becomes ours, so it is
    // neither adopted by the machine's slow PID 1 nor left a zombie.
    let _subreaper = Subreaper::become_one()?;
    super::measure_rounds("CRIU CLI", workload, rounds, || {
        let mut round = Round::start(&backend, spec, work)?;
        let times = round.measure(&criu, workload)?;
        round.finish()?;
        Ok(times)
    })
}

/// One sandbox checkpointed and restored; whatever is left of it is killed and removed on drop.
struct Round<'a> {
    backend: &'a ContainerBackend,
    sandbox: String,
    /// Whether the sandbox still has to be removed.
    created: bool,
    /// The sandbox's init and mounted root.
    host: HostView,
    /// This round's CRIU images, logs and pidfile.
    dir: PathBuf,
    /// The restored tree's root, once there is one.
    restored: Option<i32>,
    succeeded: bool,
}

impl<'a> Round<'a> {
    fn start(backend: &'a ContainerBackend, spec: &SandboxSpec, work: &Path) -> Result<Round<'a>> {
        let info = backend.create(spec.clone()).context("creating the sandbox")?;
        let id = info.id;
        let round = Round {
            backend,
            dir: work.join(format!("criu-{id}")),
            host: backend.host_view(&id)?,
            sandbox: id,
            created: true,
            restored: None,
            succeeded: false,
        };
        fs::create_dir_all(round.dir.join("images")).with_context(|| format!("creating {}", round.dir.display()))?;
        Ok(round)
    }

    fn measure(&mut self, criu: &Criu, workload: Workload) -> Result<PeerTimes> {
        let (images, pidfile) = (self.dir.join("images"), self.dir.join("restore.pid"));
        let before = workload.probe().map(|p| p.ask(dial_in(self.host.init_pid, p.port()))).transpose()?;
        thread::sleep(SETTLE);

        let started = Instant::now();
        let mut dump = Command::new(&criu.path);
        dump.args(["dump", "-t", &self.host.init_pid.to_string(), "-D"]).arg(&images).args(FLAGS);
        run(dump, "dump", &self.dir.join("dump.log"))?;
        let checkpoint_command_s = started.elapsed().as_secs_f64();
        let size_bytes = fsync_tree(&images)?;
        File::open(&self.dir)?.sync_all()?;
        let snapshot_s = started.elapsed().as_secs_f64();

        let rootfs = &self.host.rootfs;
        let started = Instant::now();
        let mut restore = Command::new(&criu.path);
        restore.args(["restore", "-D"]).arg(&images).arg("-d").arg("--root").arg(rootfs).args(FLAGS);
        restore.arg("--pidfile").arg(&pidfile);
        run(restore, "restore", &self.dir.join("restore.log"))?;
        let restore_s = started.elapsed().as_secs_f64();
        let pid = read_pid(&pidfile)?;
        self.restored = Some(pid);
        let restore_until_answer_s = match (before, workload.probe()) {
            (Some(before), Some(probe)) => {
                probe.ask_again(before, dial_in(pid, probe.port()))?;
                Some(started.elapsed().as_secs_f64())
            }
            _ => {
                ensure!(Path::new(&format!("/proc/{pid}")).exists(), "the restored workload (pid {pid}) is gone");
                None
            }
        };
        Ok(PeerTimes { snapshot_s, checkpoint_command_s, restore_s, restore_until_answer_s, size_bytes })
    }

    /// Cleans up, reporting failures (drop only warns).
    fn finish(mut self) -> Result<()> {
        self.succeeded = true;
        self.clean_up()
    }

    fn clean_up(&mut self) -> Result<()> {
        if let Some(pid) = self.restored.take() {
            kill_tree(pid);
        }
        if self.created {
            self.backend.remove(&self.sandbox, true).with_context(|| format!("removing sandbox {}", self.sandbox))?;
            self.created = false;
        }
        if self.succeeded && self.dir.exists() {
            fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.clean_up() {
            eprintln!("hiber: warning: {e:#}");
        }
        if !self.succeeded && self.dir.exists() {
            eprintln!("hiber: CRIU CLI logs of the failed round are in {}", self.dir.display());
        }
    }
}

/// Runs CRIU with its log in `log` (outside the images directory, so it is not counted).
fn run(mut command: Command, action: &'static str, log: &Path) -> Result<()> {
    command.arg("--log-file").arg(log).stdin(Stdio::null());
    let out = command.output().with_context(|| format!("running {}", command.get_program().to_string_lossy()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(hiber_sandbox::CriuError::from_log(action, log, &String::from_utf8_lossy(&out.stderr)).into())
    }
}

fn read_pid(pidfile: &Path) -> Result<i32> {
    let text = fs::read_to_string(pidfile).with_context(|| format!("reading {}", pidfile.display()))?;
    text.trim().parse().with_context(|| format!("{}: not a pid: {text:?}", pidfile.display()))
}

/// SIGKILLs the root of a restored tree (the init of its pid namespace, so the whole tree goes)
/// and waits until it is gone: reaped when it is this process's child, else watched.
fn kill_tree(pid: i32) {
    // SAFETY: kill(2) of a pid CRIU just gave us; it is our child (we are its subreaper) or was.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // SAFETY: waitpid writes nothing (null status); it fails with ECHILD if `pid` is not ours.
    if unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) } == pid {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}

/// This process as the child subreaper of its descendants, until dropped.
struct Subreaper;

impl Subreaper {
    fn become_one() -> Result<Subreaper> {
        set_subreaper(true)?;
        Ok(Subreaper)
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        let _ = set_subreaper(false);
    }
}

fn set_subreaper(on: bool) -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, libc::c_ulong::from(on)) };
    ensure!(rc == 0, "prctl(PR_SET_CHILD_SUBREAPER): {}", std::io::Error::last_os_error());
    Ok(())
}
