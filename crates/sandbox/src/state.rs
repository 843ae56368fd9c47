//! What is saved about a sandbox (`state.json`) and how its status is read.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hiber_proto::ProcessSpec;
use serde::{Deserialize, Serialize};

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
    /// The image's layers, top-most first (without hiber's own layer).
    pub lowers: Vec<PathBuf>,
    /// hiber's own layer (hiber-init and the fixed files), on top of `lowers`.
    pub init_layer: PathBuf,
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
}

impl SandboxRecord {
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

/// A sandbox's current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// hiber-init is alive.
    Running,
    /// hiber-init ended; `code` is unknown when the shim did not see it end
    /// (the shim was killed, or the machine restarted).
    Exited {
        /// Exit code, if known.
        code: Option<i32>,
    },
}

impl Status {
    /// Reads the status of `record`, whose shim writes `exit_file`.
    pub fn of(record: &SandboxRecord, exit_file: &Path) -> Status {
        if let Ok(exit) = read_json::<ExitRecord>(exit_file) {
            return Status::Exited { code: Some(exit.code) };
        }
        if record.init_pid > 0 && process_start(record.init_pid) == Some(record.init_start) {
            Status::Running
        } else {
            Status::Exited { code: None }
        }
    }

    /// True for [`Status::Running`].
    pub fn is_running(self) -> bool {
        self == Status::Running
    }
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

/// Parent pid of `pid`, if it exists.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

/// Reads a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes a JSON file atomically: a temporary file beside it, fsync, rename.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(value).map_err(io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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

    #[test]
    fn status_prefers_the_exit_record_and_detects_a_stale_pid() {
        let dir = tempfile::tempdir().unwrap();
        let exit = dir.path().join("exit.json");
        let me = std::process::id() as i32;
        let mut rec = SandboxRecord {
            id: "0123456789ab".into(),
            name: None,
            hostname: "h".into(),
            image: "busybox".into(),
            lowers: vec![],
            init_layer: PathBuf::new(),
            limits: Limits::default(),
            main: None,
            created: 0,
            shim_pid: 0,
            init_pid: me,
            init_start: process_start(me).unwrap(),
        };
        assert_eq!(Status::of(&rec, &exit), Status::Running);
        rec.init_start += 1; // same pid, another process
        assert_eq!(Status::of(&rec, &exit), Status::Exited { code: None });
        write_json_atomic(&exit, &ExitRecord { code: 3, at: 1 }).unwrap();
        assert_eq!(Status::of(&rec, &exit), Status::Exited { code: Some(3) });
    }
}
