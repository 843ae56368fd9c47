//! Can this machine run sandboxes (and snapshot them)? The checks behind
//! `hiber check`, and the prerequisites of the end-to-end tests.

use std::os::fd::AsRawFd;

use hiber_image::ids;
use serde::Serialize;

use super::cgroup::Hierarchy;
use super::criu::Criu;
use super::init_layer;

/// One prerequisite and whether it is met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What is checked: `root`, `overlayfs`, `cgroups`, `seccomp`, `user namespaces`, `hiber-init` or
    /// `criu`.
    pub what: &'static str,
    /// Whether it is there.
    pub ok: bool,
    /// What was found, or what is missing and how to get it.
    pub detail: String,
}

fn check<T, E: std::fmt::Display>(what: &'static str, found: Result<T, E>, detail: impl Fn(T) -> String) -> Check {
    match found {
        Ok(v) => Check { what, ok: true, detail: detail(v) },
        Err(e) => Check { what, ok: false, detail: e.to_string() },
    }
}

/// Everything sandboxes need, in order; `criu` only matters for snapshots.
pub fn checks() -> Vec<Check> {
    let root = nix::unistd::Uid::effective().is_root();
    let overlay = std::fs::read_to_string("/proc/filesystems").unwrap_or_default().contains("overlay");
    vec![
        Check {
            what: "root",
            ok: root,
            detail: if root { "running as root".into() } else { "hiber needs root".into() },
        },
        Check {
            what: "overlayfs",
            ok: overlay,
            detail: if overlay { "available".into() } else { "not in /proc/filesystems".into() },
        },
        check("cgroups", Hierarchy::detect(), |h| match h {
            Hierarchy::V1(_) => "cgroup v1 (memory, cpu, pids, freezer)".into(),
            Hierarchy::V2(root) => format!("cgroup v2 at {}", root.display()),
        }),
        check("seccomp", seccomp_errno(), |()| "filters that answer EPERM (the sandboxes' default filter)".into()),
        check("user namespaces", user_namespaces(), |()| {
            format!("root inside is host uid {} (map: {})", ids::HOST_BASE, ids::id_map())
        }),
        check("hiber-init", init_layer::locate_binary(), |p| p.display().to_string()),
        check("criu", Criu::locate(), |c| format!("{} at {}", c.version, c.path.display())),
    ]
}

/// Whether the kernel runs seccomp filters whose action is an errno.
fn seccomp_errno() -> Result<(), String> {
    let path = "/proc/sys/kernel/seccomp/actions_avail";
    let actions =
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}: the kernel has no seccomp filters"))?;
    match actions.split_whitespace().any(|a| a == "errno") {
        true => Ok(()),
        false => Err(format!("{path} lacks 'errno': the kernel cannot refuse calls with EPERM")),
    }
}

/// Whether a user namespace with the sandboxes' id map can be made: a child unshares one and
/// this process writes its map, as a sandbox's shim does.
fn user_namespaces() -> Result<(), String> {
    let limit = "/proc/sys/user/max_user_namespaces";
    if std::fs::read_to_string(limit).is_ok_and(|v| v.trim() == "0") {
        return Err(format!("{limit} is 0: the kernel makes no user namespaces"));
    }
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (done_r, done_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the child makes only system calls (unshare, write, read) and leaves with _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop((ready_r, done_w));
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = nix::unistd::write(&ready_w, &[u8::from(ok)]);
            let _ = nix::unistd::read(done_r.as_raw_fd(), &mut [0u8; 1]);
            // SAFETY: ends the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((ready_w, done_r));
            let mut made = [0u8; 1];
            let read = nix::unistd::read(ready_r.as_raw_fd(), &mut made);
            let result = match (read, made[0]) {
                (Ok(1), 1) => super::spawn::map_ids(child.as_raw())
                    .map_err(|e| format!("cannot map the sandboxes' ids ({}): {e}", ids::id_map())),
                _ => Err("unshare(CLONE_NEWUSER) failed".to_string()),
            };
            drop(done_w);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// For test harnesses: true when every check of `needs` passes. Otherwise
/// prints why `test` is skipped and returns false, or, when the environment
/// variable `CI` is set, panics: there a missing prerequisite is a failure.
pub fn require(test: &str, needs: &[&str]) -> bool {
    let missing: Vec<String> = checks()
        .into_iter()
        .filter(|c| needs.contains(&c.what) && !c.ok)
        .map(|c| format!("{}: {}", c.what, c.detail))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join("; ");
    if std::env::var_os("CI").is_some() {
        panic!("{test}: missing prerequisite ({reason}), and CI is set: a missing prerequisite is a failure");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// What running sandboxes needs.
pub const SANDBOXES: &[&str] = &["root", "overlayfs", "cgroups", "seccomp", "user namespaces", "hiber-init"];

/// What snapshots need on top.
pub const SNAPSHOTS: &[&str] = &["root", "overlayfs", "cgroups", "seccomp", "user namespaces", "hiber-init", "criu"];
