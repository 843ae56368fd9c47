//! Snapshots on disk: `HOME/snapshots/<id>/` holding `manifest.json` and the
//! process image under `criu/`.
//!
//! A snapshot is built in `.staging-<id>/` (locked by its builder) and
//! renamed into place after its manifest is durable, so it exists completely
//! or not at all. Staging directories whose builder died are handed to the
//! backend as [`Leftover`]s to roll back or finish.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{FileSum, Manifest, FORMAT_VERSION};
use hiber_common::fs::{read_json, write_json_atomic};
use hiber_common::lock::Mode;

const MANIFEST: &str = "manifest.json";
const JOURNAL: &str = "journal.json";
const LOCK: &str = ".lock";
const STAGING: &str = ".staging-";

/// Errors of the snapshot store.
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
    /// The manifest cannot be read.
    #[error("snapshot {id} is corrupt: manifest.json: {reason}")]
    BadManifest {
        /// The snapshot.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// The manifest was written by a newer hiber.
    #[error("snapshot {id} has format version {found}, newer than this hiber reads ({FORMAT_VERSION}): upgrade hiber")]
    FromTheFuture {
        /// The snapshot.
        id: String,
        /// Its format version.
        found: u32,
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
    /// A layer the snapshot needs is gone.
    #[error("snapshot {id} needs layer {layer}, which is missing")]
    MissingLayer {
        /// The snapshot.
        id: String,
        /// The layer.
        layer: String,
    },
    /// Disk trouble.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// What a snapshot under construction is for, so a successor can finish or
/// undo it if its builder dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The sandbox being snapshotted.
    pub sandbox: String,
    /// Whether the sandbox keeps running afterwards.
    pub leave_running: bool,
    /// The layer the sandbox's upper directory becomes.
    pub layer: String,
}

/// All snapshots under one home.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
}

/// A snapshot being built; removed on drop unless committed.
pub struct Pending {
    id: String,
    dir: PathBuf,
    final_dir: PathBuf,
    _lock: File,
    committed: bool,
}

/// A staging directory whose builder is gone.
#[derive(Debug)]
pub struct Leftover {
    /// The staging directory.
    pub dir: PathBuf,
    /// Its journal, if it got that far.
    pub journal: Option<Journal>,
    /// Its manifest, if it got that far (then the dump is complete).
    pub manifest: Option<Manifest>,
    /// Held while the leftover is handled.
    _lock: File,
}

fn try_lock(path: &Path, wait: bool) -> io::Result<Option<File>> {
    hiber_common::lock::lock(path, if wait { Mode::Exclusive } else { Mode::TryExclusive })
}

/// blake3 of a file, streaming.
fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hasher.finalize().to_hex().to_string()));
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
}

/// Every regular file below `dir`, as paths relative to it, sorted.
fn files_below(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push(path.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Pending {
    /// The snapshot's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Lets child processes started from now on (CRIU) hold the staging
    /// lock too, so a successor does not recover this snapshot while they
    /// still work on it, even if this process was killed.
    pub fn share_lock_with_children(&self) {
        // SAFETY: clears FD_CLOEXEC on a descriptor `_lock` owns.
        unsafe { libc::fcntl(self._lock.as_raw_fd(), libc::F_SETFD, 0) };
    }

    /// Where CRIU writes the process image.
    pub fn criu_dir(&self) -> PathBuf {
        self.dir.join("criu")
    }

    /// Records what is being done, for recovery.
    pub fn write_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        let path = self.dir.join(JOURNAL);
        write_json_atomic(&path, journal).map_err(io_err(&path))
    }

    /// Makes every file durable, checksums it, then writes the manifest
    /// durably (still staged).
    pub fn seal(&self, mut manifest: Manifest) -> Result<Manifest, StoreError> {
        manifest.files.clear();
        let criu = self.criu_dir();
        for rel in files_below(&criu).map_err(io_err(&criu))? {
            let path = criu.join(&rel);
            let (size, blake3) =
                hash_file(&path).and_then(|sum| File::open(&path)?.sync_all().map(|()| sum)).map_err(io_err(&path))?;
            manifest.files.push(FileSum { path: format!("criu/{rel}"), size, blake3 });
        }
        File::open(&criu).and_then(|d| d.sync_all()).map_err(io_err(&criu))?;
        let path = self.dir.join(MANIFEST);
        write_json_atomic(&path, &manifest).map_err(io_err(&path))?;
        Ok(manifest)
    }

    /// Moves the sealed snapshot into place: from now on it exists.
    pub fn commit(mut self) -> Result<(), StoreError> {
        publish(&self.dir, &self.final_dir)?;
        self.committed = true;
        Ok(())
    }
}

/// Renames a sealed staging directory to its final place, durably.
fn publish(staging: &Path, final_dir: &Path) -> Result<(), StoreError> {
    let _ = fs::remove_file(staging.join(JOURNAL));
    let _ = fs::remove_file(staging.join(LOCK));
    fs::rename(staging, final_dir).map_err(io_err(final_dir))?;
    if let Some(parent) = final_dir.parent() {
        File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))?;
    }
    Ok(())
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Leftover {
    /// Finishes a sealed leftover (its manifest is complete).
    pub fn publish(self, store: &SnapshotStore) -> Result<(), StoreError> {
        let manifest = self.manifest.as_ref().expect("publish needs a sealed leftover");
        publish(&self.dir, &store.root.join(&manifest.id))
    }

    /// Throws the leftover away.
    pub fn discard(self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl SnapshotStore {
    /// Opens (creating) `root`.
    pub fn open(root: &Path) -> Result<SnapshotStore, StoreError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(SnapshotStore { root: root.to_owned() })
    }

    /// Directory of snapshot `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Starts a new snapshot, checking that `name` is free.
    pub fn begin(&self, name: Option<&str>) -> Result<Pending, StoreError> {
        if let Some(name) = name {
            if self.list().iter().any(|m| m.name.as_deref() == Some(name)) {
                return Err(StoreError::NameTaken(name.into()));
            }
        }
        let id = hiber_common::random_id(12);
        let dir = self.root.join(format!("{STAGING}{id}"));
        fs::create_dir_all(dir.join("criu")).map_err(io_err(&dir))?;
        let lock = try_lock(&dir.join(LOCK), true).map_err(io_err(&dir))?.expect("blocking lock");
        Ok(Pending { final_dir: self.root.join(&id), id, dir, _lock: lock, committed: false })
    }

    /// Staging directories whose builder is gone (their lock is free).
    pub fn leftovers(&self) -> Vec<Leftover> {
        let entries = fs::read_dir(&self.root).into_iter().flatten().flatten();
        entries
            .filter(|e| e.file_name().to_string_lossy().starts_with(STAGING))
            .filter_map(|e| {
                let dir = e.path();
                let lock = try_lock(&dir.join(LOCK), false).ok()??;
                Some(Leftover {
                    journal: read_json(&dir.join(JOURNAL)).ok(),
                    manifest: read_json(&dir.join(MANIFEST)).ok(),
                    dir,
                    _lock: lock,
                })
            })
            .collect()
    }

    /// Layers named by the journals of snapshots being built (or left over):
    /// they may not exist yet, but must not be collected.
    pub fn layers_in_flight(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(STAGING))
            .filter_map(|e| read_json::<Journal>(&e.path().join(JOURNAL)).ok())
            .map(|j| j.layer)
            .collect()
    }

    /// Ids of snapshot directories whose manifest cannot be read.
    pub fn unreadable(&self) -> Vec<String> {
        let readable: Vec<String> = self.list().into_iter().map(|m| m.id).collect();
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && !readable.contains(n))
            .collect()
    }

    /// Every readable snapshot, oldest first.
    pub fn list(&self) -> Vec<Manifest> {
        let mut all: Vec<Manifest> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| read_json(&e.path().join(MANIFEST)).ok())
            .collect();
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        all
    }

    /// Resolves a name, id or unique id prefix to a snapshot id (whether or
    /// not its manifest is readable).
    pub fn resolve(&self, key: &str) -> Result<String, StoreError> {
        let ids: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        if let Some(m) = self.list().into_iter().find(|m| m.name.as_deref() == Some(key)) {
            return Ok(m.id);
        }
        if ids.iter().any(|id| id == key) {
            return Ok(key.to_string());
        }
        let matches: Vec<&String> = ids.iter().filter(|id| !key.is_empty() && id.starts_with(key)).collect();
        match matches.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err(StoreError::NotFound(key.into())),
            many => {
                Err(StoreError::Ambiguous(key.into(), many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")))
            }
        }
    }

    /// Reads a snapshot's manifest, checking its format version.
    pub fn manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        let path = self.root.join(id).join(MANIFEST);
        let bad = |reason: String| StoreError::BadManifest { id: id.into(), reason };
        let bytes = fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let version =
            value.get("format_version").and_then(|v| v.as_u64()).ok_or_else(|| bad("no format_version".into()))?;
        if version > FORMAT_VERSION as u64 {
            return Err(StoreError::FromTheFuture { id: id.into(), found: version as u32 });
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if manifest.id != id {
            return Err(bad(format!("it names snapshot {}", manifest.id)));
        }
        Ok(manifest)
    }

    /// Reads a manifest and checks every file against it and every layer's
    /// presence under `layers_dir`: what restore must do before starting anything.
    pub fn verified(&self, key: &str, layers_dir: &Path) -> Result<Manifest, StoreError> {
        let id = self.resolve(key)?;
        let manifest = self.manifest(&id)?;
        let dir = self.root.join(&id);
        for file in &manifest.files {
            let corrupt = |problem: String| StoreError::Corrupt { id: id.clone(), path: file.path.clone(), problem };
            let (size, hash) = hash_file(&dir.join(&file.path)).map_err(|e| corrupt(format!("cannot be read: {e}")))?;
            if size != file.size {
                return Err(corrupt(format!("has {size} bytes, expected {}", file.size)));
            }
            if hash != file.blake3 {
                return Err(corrupt("does not match its checksum".into()));
            }
        }
        if let Some(layer) = manifest.layers.iter().find(|l| !layers_dir.join(l).is_dir()) {
            return Err(StoreError::MissingLayer { id, layer: layer.clone() });
        }
        Ok(manifest)
    }

    /// Removes a snapshot's directory.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.root.join(id);
        // Rename first so a half-removed snapshot is never listed.
        let doomed = self.root.join(format!(".removing-{id}"));
        fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
        fs::remove_dir_all(&doomed).map_err(io_err(&doomed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Limits;

    fn manifest(id: &str) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            id: id.into(),
            name: Some("snap".into()),
            parent: None,
            source_sandbox: "0123456789ab".into(),
            image: "busybox".into(),
            layers: vec!["l1".into()],
            hostname: "h".into(),
            limits: Limits::default(),
            main: None,
            context_seq: Some(7),
            criu_version: "4.2.1".into(),
            hiber_version: "0.1.0".into(),
            created: 1,
            files: vec![],
        }
    }

    fn sealed(store: &SnapshotStore) -> String {
        let pending = store.begin(Some("snap")).unwrap();
        fs::write(pending.criu_dir().join("pages-1.img"), vec![7u8; 10_000]).unwrap();
        fs::create_dir(pending.criu_dir().join("sub")).unwrap();
        fs::write(pending.criu_dir().join("sub/core.img"), b"core").unwrap();
        let id = pending.id().to_string();
        let m = pending.seal(manifest(&id)).unwrap();
        assert_eq!(
            m.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["criu/pages-1.img", "criu/sub/core.img"]
        );
        pending.commit().unwrap();
        id
    }

    #[test]
    fn committed_snapshots_verify_and_corruption_is_caught() {
        let home = tempfile::tempdir().unwrap();
        let layers = home.path().join("layers");
        fs::create_dir_all(layers.join("l1")).unwrap();
        let store = SnapshotStore::open(&home.path().join("snapshots")).unwrap();
        let id = sealed(&store);
        let verified = store.verified("snap", &layers).unwrap();
        assert_eq!((verified.id.as_str(), verified.context_seq), (id.as_str(), Some(7)));
        assert_eq!(store.verified(&id[..4], &layers).unwrap().size_bytes(), 10_004);
        assert!(matches!(store.begin(Some("snap")), Err(StoreError::NameTaken(_))));

        let page = store.dir(&id).join("criu/pages-1.img");
        let mut bytes = fs::read(&page).unwrap();
        bytes[5000] ^= 1;
        fs::write(&page, &bytes).unwrap();
        let err = store.verified(&id, &layers).unwrap_err().to_string();
        assert!(err.contains("criu/pages-1.img does not match its checksum"), "{err}");
        fs::write(&page, &bytes[..100]).unwrap();
        let err = store.verified(&id, &layers).unwrap_err().to_string();
        assert!(err.contains("has 100 bytes, expected 10000"), "{err}");
        bytes[5000] ^= 1;
        fs::write(&page, &bytes).unwrap();
        fs::remove_dir(layers.join("l1")).unwrap();
        assert!(matches!(store.verified(&id, &layers), Err(StoreError::MissingLayer { .. })));
    }

    #[test]
    fn foreign_future_and_garbled_manifests_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(home.path()).unwrap();
        let id = sealed(&store);
        let path = store.dir(&id).join(MANIFEST);
        let mut value: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        value["format_version"] = 99.into();
        fs::write(&path, value.to_string()).unwrap();
        assert!(matches!(store.manifest(&id), Err(StoreError::FromTheFuture { found: 99, .. })));
        fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(store.manifest(&id), Err(StoreError::BadManifest { .. })));
        value["format_version"] = 1.into();
        value["id"] = "ffffffffffff".into();
        fs::write(&path, value.to_string()).unwrap();
        assert!(store.manifest(&id).unwrap_err().to_string().contains("names snapshot ffffffffffff"));
    }

    #[test]
    fn unfinished_snapshots_are_never_listed_and_become_leftovers() {
        let home = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(home.path()).unwrap();
        let pending = store.begin(None).unwrap();
        let journal = Journal { sandbox: "s".into(), leave_running: false, layer: "l".into() };
        pending.write_journal(&journal).unwrap();
        assert!(store.leftovers().is_empty(), "a live builder's staging is not a leftover");
        assert!(store.list().is_empty(), "nor is it listed");
        // What a builder killed mid-way leaves: the directory, its journal, a free lock.
        let dead = home.path().join(format!("{STAGING}deadbeef0000"));
        fs::create_dir_all(dead.join("criu")).unwrap();
        write_json_atomic(&dead.join(JOURNAL), &journal).unwrap();
        let leftovers = store.leftovers();
        assert_eq!(leftovers.len(), 1);
        assert_eq!(leftovers[0].dir, dead);
        assert_eq!(leftovers[0].journal.as_ref(), Some(&journal));
        assert!(leftovers[0].manifest.is_none(), "not sealed");
        assert!(store.list().is_empty());
        leftovers.into_iter().for_each(Leftover::discard);
        drop(pending);
        assert_eq!(fs::read_dir(home.path()).unwrap().count(), 0, "nothing left");
    }
}
