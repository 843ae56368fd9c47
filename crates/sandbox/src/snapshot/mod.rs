//! Snapshots: the manifest format ([`Manifest`]) and the [`SnapshotStore`] seam that keeps them.
//!
//! A backend builds a snapshot's files locally (CRIU's images, a microVM's memory file), then
//! hands them to the store: [`SnapshotStore::begin`], [`Pending::add_file`] for each,
//! [`Pending::seal`] (checksums and the manifest, durable), [`Pending::commit`] (from then on it
//! exists). A builder that dies leaves a [`Leftover`] that its successor finishes or undoes,
//! guided by the journal it wrote at `begin`. [`LocalSnapshots`] keeps snapshots in a directory.

pub mod conformance;
mod local;
mod manifest;

use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::resolve::ResolveError;
pub use local::LocalSnapshots;
pub use manifest::{BackendState, FileSum, Manifest, ManifestError, FORMAT_VERSION};

/// Errors of a snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No snapshot matches.
    #[error("no snapshot '{0}' (see `hiber snapshots`)")]
    NotFound(String),
    /// A prefix matches several snapshots.
    #[error("'{0}' matches several snapshots: {1}")]
    Ambiguous(String, String),
    /// The name is taken.
    #[error("a snapshot named '{0}' already exists")]
    NameTaken(String),
    /// The manifest cannot be read, or is from a newer hiber.
    #[error("snapshot {id} is corrupt: manifest.json: {source}")]
    BadManifest {
        /// The snapshot.
        id: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// A file does not match its checksum.
    #[error("snapshot {id} is corrupt: {path} {problem}")]
    Corrupt {
        /// The snapshot.
        id: String,
        /// The file.
        path: String,
        /// How it differs.
        problem: String,
    },
    /// Something the snapshot stands on is gone.
    #[error("snapshot {id} needs {what}, which is missing")]
    Incomplete {
        /// The snapshot.
        id: String,
        /// What is missing (e.g. `layer 1f26876a85ca1447`).
        what: String,
    },
    /// Storage trouble.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl From<ResolveError> for StoreError {
    fn from(e: ResolveError) -> StoreError {
        match e {
            ResolveError::NotFound(key) => StoreError::NotFound(key),
            ResolveError::Ambiguous(key, ids) => StoreError::Ambiguous(key, ids),
        }
    }
}

/// Checks one file of snapshot `id` against its `sum`, given what reading it `found` (its size
/// and blake3 hash): any difference is [`StoreError::Corrupt`].
pub(crate) fn check_sum(id: &str, sum: &FileSum, found: io::Result<(u64, String)>) -> Result<(), StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt { id: id.into(), path: sum.path.clone(), problem };
    let (size, hash) = found.map_err(|e| corrupt(format!("cannot be read: {e}")))?;
    if size != sum.size {
        return Err(corrupt(format!("has {size} bytes, expected {}", sum.size)));
    }
    if hash != sum.blake3 {
        return Err(corrupt("does not match its checksum".into()));
    }
    Ok(())
}

/// Where snapshots are kept. Every method blocks.
pub trait SnapshotStore: Send + Sync {
    /// Starts a snapshot, checking that `name` is free. `journal` says what the snapshot is for,
    /// so that a successor can finish or undo it if this builder dies ([`Leftover`]).
    fn begin(&self, name: Option<&str>, journal: &Value) -> Result<Box<dyn Pending>, StoreError>;

    /// Every readable snapshot, oldest first.
    fn list(&self) -> Vec<Manifest>;

    /// Ids of stored snapshots whose manifest cannot be read.
    fn unreadable(&self) -> Vec<String>;

    /// Resolves a name, id or unique id prefix to a snapshot id (readable or not).
    fn resolve(&self, key: &str) -> Result<String, StoreError>;

    /// Reads a snapshot's manifest (checking its format version).
    fn manifest(&self, id: &str) -> Result<Manifest, StoreError>;

    /// Reads a manifest and checks every file against its size and checksum.
    fn verify(&self, id: &str) -> Result<Manifest, StoreError>;

    /// A local directory holding snapshot `id`'s files under their manifest paths, for a restore
    /// (call [`SnapshotStore::verify`] first).
    fn open(&self, id: &str) -> Result<PathBuf, StoreError>;

    /// Removes a snapshot; it is never listed half-removed.
    fn remove(&self, id: &str) -> Result<(), StoreError>;

    /// Snapshots whose builder died before committing them, each locked while held.
    fn leftovers(&self) -> Vec<Box<dyn Leftover>>;

    /// The journals of every snapshot being built or left over.
    fn journals(&self) -> Vec<Value>;
}

/// A snapshot being built; dropped uncommitted, it is thrown away.
pub trait Pending: Send {
    /// The snapshot's id.
    fn id(&self) -> &str;

    /// Makes child processes started from now on (CRIU) hold the builder's claim too, so that no
    /// successor takes this snapshot for a leftover while they still work on it.
    fn share_with_children(&self);

    /// Moves the local file `local` into the snapshot as `path` (relative, e.g. `criu/core-1.img`).
    fn add_file(&mut self, path: &str, local: &Path) -> Result<(), StoreError>;

    /// Makes every file durable, records its checksum in `manifest.files`, then writes the
    /// manifest durably (still not committed). Returns the manifest as written.
    fn seal(&mut self, manifest: Manifest) -> Result<Manifest, StoreError>;

    /// Publishes the sealed snapshot: from now on it exists.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Leaves the snapshot, as it is, to a successor's recovery (the builder could not finish
    /// what its journal promised).
    fn leave_for_recovery(self: Box<Self>);
}

/// A snapshot whose builder is gone.
pub trait Leftover: Send {
    /// Its journal, if it got that far.
    fn journal(&self) -> Option<&Value>;

    /// Its manifest, if it was sealed (then its files are complete).
    fn manifest(&self) -> Option<&Manifest>;

    /// Publishes a sealed leftover.
    fn publish(self: Box<Self>) -> Result<(), StoreError>;

    /// Throws the leftover away.
    fn discard(self: Box<Self>);
}
