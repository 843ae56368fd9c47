//! Shared harness for end-to-end tests: each test gets its own HIBER_HOME
//! and drives the real `hiber` binary; everything it created is removed on
//! drop (sandboxes, mounts, cgroups, files).

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Returns false (after printing why) when the test cannot run here (it
/// needs root, cgroups, overlayfs, hiber-init). Under CI a missing
/// prerequisite is a failure instead.
pub fn can_run(test: &str) -> bool {
    hiber_sandbox::preflight::require(test, hiber_sandbox::preflight::SANDBOXES)
}

/// Like [`can_run`], and CRIU (>= 4.2) must be installed.
pub fn can_snapshot(test: &str) -> bool {
    hiber_sandbox::preflight::require(test, hiber_sandbox::preflight::SNAPSHOTS)
}

/// The root filesystem scripts/setup-test.sh makes under /var/cache/hiber/`name`/rootfs (or
/// the directory environment variable `var` names), if it has `marker`. Without it the test is
/// skipped with a visible reason, or fails when `CI` is set.
pub fn test_root(var: &str, name: &str, marker: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/var/cache/hiber").join(name).join("rootfs"));
    if path.join(marker).exists() {
        return Some(path);
    }
    assert!(std::env::var_os("CI").is_none(), "{} is missing and CI is set: run scripts/setup-test.sh", path.display());
    eprintln!("SKIP: {} is missing (run scripts/setup-test.sh)", path.display());
    None
}

/// A private hiber home for one test.
pub struct Home {
    pub dir: tempfile::TempDir,
}

/// What a hiber command did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Home {
    pub fn new() -> Home {
        Home { dir: tempfile::Builder::new().prefix("hiber-test-").tempdir_in("/var/tmp").expect("temp home") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `hiber` command on this home.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hiber"));
        c.args(args).env("HIBER_HOME", self.path()).stdin(Stdio::null());
        c
    }

    /// Runs `hiber args...` and collects its output.
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("spawn hiber").into()
    }

    /// Runs `hiber args...` with `input` on stdin.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child =
            self.cmd(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap().into()
    }

    /// Runs `hiber args...` with a standard output whose reader is gone (`hiber ... | head -0`).
    pub fn run_into_closed_pipe(&self, args: &[&str]) -> Run {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        self.cmd(args).stdout(writer).stderr(Stdio::piped()).output().expect("spawn hiber").into()
    }

    /// Runs `hiber args...`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "hiber {args:?} failed ({}): {}{}", r.code, r.stdout, r.stderr);
        r.stdout
    }

    /// Builds the busybox image in this home.
    pub fn busybox(&self) -> &Self {
        self.ok(&["image", "build", "busybox"]);
        self
    }

    /// Builds the debian image in this home (from the machine's cache after the first time).
    pub fn debian(&self) -> &Self {
        self.ok(&["image", "build", "debian"]);
        self
    }

    /// Starts a detached sandbox; returns its id.
    pub fn detached(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        self.ok(&all).trim().to_string()
    }

    /// `hiber ps --json` parsed.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "--json"])).expect("ps --json")
    }

    /// `hiber snapshots --json` parsed.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["snapshots", "--json"])).expect("snapshots --json")
    }

    /// How the host sees sandbox `id` (its pids), from the container backend itself.
    pub fn host(&self, id: &str) -> hiber_sandbox::HostView {
        hiber_sandbox::ContainerBackend::open(self.path())
            .and_then(|b| b.host_view(id))
            .expect("the sandbox's host view")
    }

    /// How many layers sandbox `id`'s root filesystem stacks (its overlay's `lowerdir`).
    pub fn stack_depth(&self, id: &str) -> usize {
        let rootfs = self.host(id).rootfs;
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts.lines().find(|l| l.split(' ').nth(1) == rootfs.to_str()).expect("the sandbox's overlay");
        let lowers = line.split([' ', ',']).find_map(|o| o.strip_prefix("lowerdir=")).expect("lowerdir=");
        lowers.split(':').count()
    }

    /// The `ps --json` entry of sandbox `id`.
    pub fn sandbox(&self, id: &str) -> serde_json::Value {
        self.ps().into_iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("sandbox {id} not listed"))
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Ok(out) = self.cmd(&["ps", "--json"]).output() {
            let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for s in list {
                let _ = self.cmd(&["rm", "-f", s["id"].as_str().unwrap_or_default()]).output();
            }
        }
        // Anything still mounted below the home (a failed test) must not stay.
        for target in mounts_below(self.path()) {
            let _ = Command::new("umount").arg("-l").arg(&target).status();
        }
    }
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    hiber_common::fs::mounts_under(dir).unwrap_or_default()
}

/// Polls `f` until it is true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rsplit(')').next().and_then(|r| r.split_whitespace().next()), Some("Z") | Some("X")))
        .unwrap_or(false)
}
