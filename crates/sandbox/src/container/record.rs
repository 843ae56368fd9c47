//! What the container backend saves about a sandbox (`state.json`), its exit and suspension
//! records, and how its processes are told apart from reused pids.

use std::fs;
use std::path::PathBuf;

use hiber_proto::ProcessSpec;
use serde::{Deserialize, Serialize};

use crate::backend::{SandboxInfo, Status};
use crate::spec::Limits;

/// The saved description of one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// 12 lowercase hex digits.
    pub id: String,
    /// The user's name for it, if any.
    pub name: Option<String>,
    /// Its hostname (the name, or the id).
    pub hostname: String,
    /// The image it was created from, for display.
    pub image: String,
    /// The read-only layers under the upper directory, top-most first:
    /// snapshot layers, hiber's own layer (hiber-init and fixed files), then
    /// the image's layers.
    pub lowers: Vec<PathBuf>,
    /// The snapshot this sandbox was restored from, if any.
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// Resource limits.
    pub limits: Limits,
    /// The main process, if any.
    pub main: Option<ProcessSpec>,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Host pid of the shim watching the sandbox (0 before it started).
    pub shim_pid: i32,
    /// Host pid of hiber-init (0 before it started).
    pub init_pid: i32,
    /// hiber-init's start time in clock ticks after boot; tells a reused pid apart.
    pub init_start: u64,
    /// Whether it runs in a user namespace of its own, root inside being an unprivileged host
    /// uid ([`hiber_image::ids`]). Sandboxes started from snapshots taken before hiber gave
    /// them one run in the host's.
    #[serde(default)]
    pub user_namespace: bool,
}

impl SandboxRecord {
    /// A sandbox not started yet, with a new id; its hostname is its name, or else the id.
    pub fn new(
        name: Option<String>,
        image: String,
        lowers: Vec<PathBuf>,
        from_snapshot: Option<String>,
        limits: Limits,
        main: Option<ProcessSpec>,
    ) -> SandboxRecord {
        let id = hiber_common::random_id(12);
        SandboxRecord {
            hostname: name.clone().unwrap_or_else(|| id.clone()),
            id,
            name,
            image,
            lowers,
            from_snapshot,
            limits,
            main,
            created: hiber_common::unix_secs(),
            shim_pid: 0,
            init_pid: 0,
            init_start: 0,
            user_namespace: true,
        }
    }

    /// A record of a sandbox that never started, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(id: &str, name: Option<&str>) -> SandboxRecord {
        let record = SandboxRecord::new(name.map(Into::into), "busybox".into(), vec![], None, Limits::default(), None);
        SandboxRecord { id: id.into(), hostname: id.into(), ..record }
    }

    /// What every backend tells about a sandbox, with its `status`.
    pub fn info(&self, status: Status) -> SandboxInfo {
        SandboxInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            image: self.image.clone(),
            from_snapshot: self.from_snapshot.clone(),
            limits: self.limits,
            main: self.main.clone(),
            created: self.created,
            status,
        }
    }

    /// The name if set, else the id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// How a sandbox ended, written by its shim (`exit.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// hiber-init's exit status, or 128 + signal.
    pub code: i32,
    /// When, unix seconds.
    pub at: u64,
}

/// Left by a snapshot that stopped its sandbox (`suspended.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendRecord {
    /// The snapshot to restore to carry on.
    pub snapshot: String,
}

/// Whether the sandbox's init (the very process, not a reuse of its pid) lives.
pub fn is_alive(record: &SandboxRecord) -> bool {
    record.init_pid > 0 && process_start(record.init_pid) == Some(record.init_start)
}

/// A live (not zombie) process's start time in clock ticks after boot.
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is a live hiber shim (its name guards against pid reuse).
pub fn is_shim(pid: i32) -> bool {
    pid > 0
        && process_start(pid).is_some()
        && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "hiber-shim")
}

/// Parent pid of `pid`, if it exists.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_start_time_is_stable() {
        let me = std::process::id() as i32;
        let start = process_start(me).expect("own stat");
        assert_eq!(process_start(me), Some(start));
        assert!(parent_pid(me).unwrap() > 0);
        assert_eq!(process_start(i32::MAX), None);
    }
}
