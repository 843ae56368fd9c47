//! Where sandboxes' runtime files live: `HOME/sandboxes/<id>/`, and how a
//! user's id prefix or name is resolved to one of them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hiber_common::fs::read_json;

use super::record::{is_alive, ExitRecord, SandboxRecord, SuspendRecord};
use crate::backend::{SandboxError, Status};
use crate::resolve::resolve;

/// The runtime directory cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct RuntimeError {
    /// The path.
    pub path: PathBuf,
    /// The error.
    pub source: io::Error,
}

/// The sandbox's root, relative to its runtime directory: the shim clones the child in that
/// directory (a clone's working directory moves into its new mount namespace with it), and the
/// child names everything from there, since in its user namespace it may not search the host's
/// directories above (a home under `/root`, mode 0700).
pub const ROOTFS: &str = "rootfs";

/// The directory of one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxDir(PathBuf);

impl SandboxDir {
    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// The saved [`SandboxRecord`].
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    /// The exit record the shim writes.
    pub fn exit(&self) -> PathBuf {
        self.0.join("exit.json")
    }
    /// The record a suspending snapshot leaves.
    pub fn suspended(&self) -> PathBuf {
        self.0.join("suspended.json")
    }
    /// The overlay's upper directory.
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }
    /// The overlay's work directory.
    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
    /// Where the root filesystem is mounted.
    pub fn rootfs(&self) -> PathBuf {
        self.0.join(ROOTFS)
    }
    /// Held exclusively while a snapshot is taken; host connections wait
    /// for it (a connection open in the sandbox would spoil the dump).
    pub fn snapshot_lock(&self) -> PathBuf {
        self.0.join("snapshot.lock")
    }
    /// The shim's own diagnostics.
    pub fn shim_log(&self) -> PathBuf {
        self.0.join("shim.log")
    }
    /// CRIU's restore log, quoted when it fails.
    pub fn restore_log(&self) -> PathBuf {
        self.0.join("restore.log")
    }
    /// CRIU's dump log.
    pub fn dump_log(&self) -> PathBuf {
        self.0.join("dump.log")
    }
    /// Where CRIU dumps the process tree before the files go to the snapshot store.
    pub fn dump(&self) -> PathBuf {
        self.0.join("dump")
    }

    /// The status of `record`, which lives in this directory.
    pub fn status(&self, record: &SandboxRecord) -> Status {
        if is_alive(record) {
            return Status::Running;
        }
        if let Ok(suspended) = read_json::<SuspendRecord>(&self.suspended()) {
            return Status::Suspended { snapshot: suspended.snapshot };
        }
        let code = read_json::<ExitRecord>(&self.exit()).ok().map(|e| e.code);
        Status::Exited { code }
    }
}

/// All sandboxes under one home.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

/// An exclusive lock, released on drop.
pub struct Lock(#[allow(dead_code)] fs::File);

impl Runtime {
    /// Opens (creating) `root`.
    pub fn open(root: &Path) -> Result<Runtime, RuntimeError> {
        fs::create_dir_all(root).map_err(|source| RuntimeError { path: root.to_owned(), source })?;
        Ok(Runtime { root: root.to_owned() })
    }

    /// The directory of sandbox `id`.
    pub fn dir(&self, id: &str) -> SandboxDir {
        SandboxDir(self.root.join(id))
    }

    /// Takes the lock that serialises creating and removing sandboxes.
    pub fn lock(&self) -> Result<Lock, RuntimeError> {
        let path = self.root.join(".lock");
        match hiber_common::lock::lock(&path, hiber_common::lock::Mode::Exclusive) {
            Ok(file) => Ok(Lock(file.expect("a blocking lock"))),
            Err(source) => Err(RuntimeError { path, source }),
        }
    }

    /// Every sandbox with a readable record, oldest first.
    pub fn list(&self) -> Vec<SandboxRecord> {
        let mut records: Vec<SandboxRecord> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| read_json(&e.path().join("state.json")).ok())
            .collect();
        records.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        records
    }

    /// Finds a sandbox by exact name, exact id, or unique id prefix.
    pub fn resolve(&self, key: &str) -> Result<SandboxRecord, SandboxError> {
        // An exact id (what hiber itself passes around) needs no scan: names
        // never look like ids (see `validate_name`).
        if let Ok(record) = read_json::<SandboxRecord>(&self.dir(key).state()) {
            if record.id == key {
                return Ok(record);
            }
        }
        let records = self.list();
        let id = resolve(key, records.iter().map(|r| (r.id.as_str(), r.name.as_deref())))?;
        Ok(records.into_iter().find(|r| r.id == id).expect("resolved among these"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hiber_common::fs::write_json_atomic;

    #[test]
    fn status_reads_liveness_then_suspension_then_the_exit_record() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = Runtime::open(tmp.path()).unwrap();
        let dir = runtime.dir("0123456789ab");
        std::fs::create_dir_all(dir.path()).unwrap();
        let me = std::process::id() as i32;
        let mut rec = SandboxRecord::for_tests("0123456789ab", None);
        rec.init_pid = me;
        rec.init_start = super::super::record::process_start(me).unwrap();
        assert_eq!(dir.status(&rec), Status::Running);
        rec.init_start += 1; // same pid, another process
        assert_eq!(dir.status(&rec), Status::Exited { code: None });
        write_json_atomic(&dir.exit(), &ExitRecord { code: 3, at: 1 }).unwrap();
        assert_eq!(dir.status(&rec), Status::Exited { code: Some(3) });
        write_json_atomic(&dir.suspended(), &SuspendRecord { snapshot: "s1".into() }).unwrap();
        assert_eq!(dir.status(&rec), Status::Suspended { snapshot: "s1".into() });
    }

    #[test]
    fn records_resolve_by_name_id_and_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = Runtime::open(tmp.path()).unwrap();
        for (id, name) in [("abc123000000", Some("web")), ("abd456000000", None)] {
            let dir = runtime.dir(id);
            std::fs::create_dir_all(dir.path()).unwrap();
            write_json_atomic(&dir.state(), &SandboxRecord::for_tests(id, name)).unwrap();
        }
        assert_eq!(runtime.resolve("web").unwrap().id, "abc123000000");
        assert_eq!(runtime.resolve("abd").unwrap().id, "abd456000000");
        assert_eq!(runtime.resolve("abc123000000").unwrap().id, "abc123000000");
        assert!(matches!(runtime.resolve("ab"), Err(SandboxError::Ambiguous(..))));
        assert!(matches!(runtime.resolve("zz"), Err(SandboxError::NotFound(_))));
    }
}
