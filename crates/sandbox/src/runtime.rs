//! Where sandboxes' runtime files live: `HOME/sandboxes/<id>/`, and how a
//! user's id prefix or name is resolved to one of them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hiber_common::fs::read_json;

use crate::state::SandboxRecord;

/// Errors finding sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No sandbox matches.
    #[error("no sandbox '{0}' (see `hiber ps`)")]
    NotFound(String),
    /// A prefix matches several sandboxes.
    #[error("'{0}' matches several sandboxes: {1}")]
    Ambiguous(String, String),
    /// The runtime directory cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

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
        self.0.join("rootfs")
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
        fs::create_dir_all(root).map_err(|source| RuntimeError::Io { path: root.to_owned(), source })?;
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
            Err(source) => Err(RuntimeError::Io { path, source }),
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
    pub fn resolve(&self, key: &str) -> Result<SandboxRecord, RuntimeError> {
        // An exact id (what hiber itself passes around) needs no scan: names
        // never look like ids (see `validate_name`).
        if let Ok(record) = read_json::<SandboxRecord>(&self.dir(key).state()) {
            if record.id == key {
                return Ok(record);
            }
        }
        resolve_in(self.list(), key)
    }
}

fn resolve_in(records: Vec<SandboxRecord>, key: &str) -> Result<SandboxRecord, RuntimeError> {
    if key.is_empty() {
        return Err(RuntimeError::NotFound(key.into()));
    }
    if let Some(r) = records.iter().find(|r| r.name.as_deref() == Some(key) || r.id == key) {
        return Ok(r.clone());
    }
    let mut matches: Vec<SandboxRecord> = records.into_iter().filter(|r| r.id.starts_with(key)).collect();
    match matches.len() {
        0 => Err(RuntimeError::NotFound(key.into())),
        1 => Ok(matches.remove(0)),
        _ => Err(RuntimeError::Ambiguous(
            key.into(),
            matches.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", "),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: Option<&str>) -> SandboxRecord {
        SandboxRecord::for_tests(id, name)
    }

    #[test]
    fn names_ids_and_unique_prefixes_resolve() {
        let all = || vec![record("abc123000000", Some("web")), record("abd456000000", None)];
        assert_eq!(resolve_in(all(), "web").unwrap().id, "abc123000000");
        assert_eq!(resolve_in(all(), "abd").unwrap().id, "abd456000000");
        assert_eq!(resolve_in(all(), "abc123000000").unwrap().id, "abc123000000");
        assert!(matches!(resolve_in(all(), "ab"), Err(RuntimeError::Ambiguous(..))));
        assert!(matches!(resolve_in(all(), "zz"), Err(RuntimeError::NotFound(_))));
        assert!(matches!(resolve_in(all(), ""), Err(RuntimeError::NotFound(_))));
    }
}
