//! [`LocalSnapshots`]: snapshots in a directory, `HOME/snapshots/<id>/` holding `manifest.json`
//! and the snapshot's files under their manifest paths.
//!
//! A snapshot is built in `.staging-<id>/` (locked by its builder) and renamed into place after
//! its manifest is durable, so it exists completely or not at all. Staging directories whose
//! builder died are [`Leftover`]s.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use hiber_common::fs::{read_json, sync_dir, write_json_atomic};
use hiber_common::lock::{self, Mode};
use serde_json::Value;

use super::{check_sum, FileSum, Leftover, Manifest, Pending, SnapshotStore, StoreError};
use crate::resolve::resolve;

const MANIFEST: &str = "manifest.json";
const JOURNAL: &str = "journal.json";
const LOCK: &str = ".lock";
const STAGING: &str = ".staging-";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// Snapshots in one directory.
#[derive(Debug, Clone)]
pub struct LocalSnapshots {
    root: PathBuf,
}

/// A snapshot being built in a staging directory.
struct LocalPending {
    id: String,
    dir: PathBuf,
    final_dir: PathBuf,
    lock: File,
    files: Vec<String>,
    committed: bool,
}

/// A staging directory whose builder is gone.
struct LocalLeftover {
    dir: PathBuf,
    root: PathBuf,
    journal: Option<Value>,
    manifest: Option<Manifest>,
    /// Held while the leftover is handled.
    _lock: File,
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

/// Reads the manifest at `path` of snapshot `id`.
fn read_manifest(id: &str, path: &Path) -> Result<Manifest, StoreError> {
    let bad = |source| StoreError::BadManifest { id: id.into(), source };
    let bytes = fs::read(path).map_err(|e| bad(super::ManifestError::Unreadable(e.to_string())))?;
    Manifest::from_json(&bytes).map_err(bad)
}

impl Pending for LocalPending {
    fn id(&self) -> &str {
        &self.id
    }

    fn share_with_children(&self) {
        // SAFETY: clears FD_CLOEXEC on a descriptor `lock` owns.
        unsafe { libc::fcntl(self.lock.as_raw_fd(), libc::F_SETFD, 0) };
    }

    fn add_file(&mut self, path: &str, local: &Path) -> Result<(), StoreError> {
        let target = self.dir.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::rename(local, &target).map_err(io_err(&target))?;
        self.files.push(path.to_string());
        Ok(())
    }

    fn seal(&mut self, mut manifest: Manifest) -> Result<Manifest, StoreError> {
        self.files.sort();
        manifest.files.clear();
        for rel in &self.files {
            let path = self.dir.join(rel);
            let (size, blake3) =
                hash_file(&path).and_then(|sum| File::open(&path)?.sync_all().map(|()| sum)).map_err(io_err(&path))?;
            manifest.files.push(FileSum { path: rel.clone(), size, blake3 });
            if let Some(parent) = path.parent() {
                sync_dir(parent).map_err(io_err(parent))?;
            }
        }
        let path = self.dir.join(MANIFEST);
        write_json_atomic(&path, &manifest).map_err(io_err(&path))?;
        Ok(manifest)
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        publish(&self.dir, &self.final_dir)?;
        self.committed = true;
        Ok(())
    }

    fn leave_for_recovery(mut self: Box<Self>) {
        self.committed = true;
    }
}

/// Renames a sealed staging directory to its final place, durably.
fn publish(staging: &Path, final_dir: &Path) -> Result<(), StoreError> {
    let _ = fs::remove_file(staging.join(JOURNAL));
    let _ = fs::remove_file(staging.join(LOCK));
    fs::rename(staging, final_dir).map_err(io_err(final_dir))?;
    if let Some(parent) = final_dir.parent() {
        sync_dir(parent).map_err(io_err(parent))?;
    }
    Ok(())
}

impl Drop for LocalPending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Leftover for LocalLeftover {
    fn journal(&self) -> Option<&Value> {
        self.journal.as_ref()
    }

    fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    fn publish(self: Box<Self>) -> Result<(), StoreError> {
        let Some(manifest) = &self.manifest else {
            return Err(StoreError::Incomplete {
                id: self.dir.display().to_string(),
                what: "a sealed manifest".into(),
            });
        };
        publish(&self.dir, &self.root.join(&manifest.id))
    }

    fn discard(self: Box<Self>) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl LocalSnapshots {
    /// Opens (creating) `root`.
    pub fn open(root: &Path) -> Result<LocalSnapshots, StoreError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(LocalSnapshots { root: root.to_owned() })
    }

    /// Names in the root: snapshot ids, and dot-names (staging, being removed).
    fn entries(&self) -> impl Iterator<Item = (String, PathBuf)> {
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
    }

    fn ids(&self) -> Vec<String> {
        self.entries().map(|(name, _)| name).filter(|n| !n.starts_with('.')).collect()
    }

    fn staging(&self) -> impl Iterator<Item = PathBuf> {
        self.entries().filter(|(name, _)| name.starts_with(STAGING)).map(|(_, path)| path)
    }
}

impl SnapshotStore for LocalSnapshots {
    fn begin(&self, name: Option<&str>, journal: &Value) -> Result<Box<dyn Pending>, StoreError> {
        if let Some(name) = name {
            if self.list().iter().any(|m| m.name.as_deref() == Some(name)) {
                return Err(StoreError::NameTaken(name.into()));
            }
        }
        let id = hiber_common::random_id(12);
        let dir = self.root.join(format!("{STAGING}{id}"));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock = lock::lock(&dir.join(LOCK), Mode::Exclusive).map_err(io_err(&dir))?.expect("a blocking lock");
        let pending =
            LocalPending { final_dir: self.root.join(&id), id, dir, lock, files: Vec::new(), committed: false };
        let path = pending.dir.join(JOURNAL);
        write_json_atomic(&path, journal).map_err(io_err(&path))?;
        Ok(Box::new(pending))
    }

    fn list(&self) -> Vec<Manifest> {
        let mut all: Vec<Manifest> =
            self.ids().iter().filter_map(|id| read_manifest(id, &self.root.join(id).join(MANIFEST)).ok()).collect();
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        all
    }

    fn unreadable(&self) -> Vec<String> {
        let readable: Vec<String> = self.list().into_iter().map(|m| m.id).collect();
        self.ids().into_iter().filter(|id| !readable.contains(id)).collect()
    }

    fn resolve(&self, key: &str) -> Result<String, StoreError> {
        let manifests = self.list();
        let ids = self.ids();
        let named = |id: &str| manifests.iter().find(|m| m.id == id).and_then(|m| m.name.as_deref());
        Ok(resolve(key, ids.iter().map(|id| (id.as_str(), named(id))))?)
    }

    fn manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        let manifest = read_manifest(id, &self.root.join(id).join(MANIFEST))?;
        if manifest.id != id {
            let reason = format!("it names snapshot {}", manifest.id);
            return Err(StoreError::BadManifest { id: id.into(), source: super::ManifestError::Unreadable(reason) });
        }
        Ok(manifest)
    }

    fn verify(&self, id: &str) -> Result<Manifest, StoreError> {
        let manifest = self.manifest(id)?;
        let dir = self.root.join(id);
        for file in &manifest.files {
            check_sum(id, file, hash_file(&dir.join(&file.path)))?;
        }
        Ok(manifest)
    }

    fn open(&self, id: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join(id);
        if !dir.is_dir() {
            return Err(StoreError::NotFound(id.into()));
        }
        Ok(dir)
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.root.join(id);
        // Rename first so a half-removed snapshot is never listed.
        let doomed = self.root.join(format!(".removing-{id}"));
        fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
        fs::remove_dir_all(&doomed).map_err(io_err(&doomed))
    }

    fn leftovers(&self) -> Vec<Box<dyn Leftover>> {
        self.staging()
            .filter_map(|dir| {
                let lock = lock::lock(&dir.join(LOCK), Mode::TryExclusive).ok()??;
                let manifest = fs::read(dir.join(MANIFEST)).ok().and_then(|b| Manifest::from_json(&b).ok());
                let leftover = LocalLeftover {
                    journal: read_json(&dir.join(JOURNAL)).ok(),
                    manifest,
                    root: self.root.clone(),
                    dir,
                    _lock: lock,
                };
                Some(Box::new(leftover) as Box<dyn Leftover>)
            })
            .collect()
    }

    fn journals(&self) -> Vec<Value> {
        self.staging().filter_map(|dir| read_json(&dir.join(JOURNAL)).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::conformance;
    use serde_json::json;

    crate::snapshot_store_conformance!({
        let home = tempfile::tempdir().unwrap();
        let store = Box::new(LocalSnapshots::open(&home.path().join("snapshots")).unwrap());
        let scratch = home.path().to_owned();
        (home, store, scratch)
    });

    /// A committed snapshot named `snap` with one 10,000-byte file; returns its id.
    fn sealed(store: &LocalSnapshots, scratch: &Path) -> String {
        let mut pending = store.begin(Some("snap"), &json!({"for": "test"})).unwrap();
        fs::write(scratch.join("pages-1.img"), vec![7u8; 10_000]).unwrap();
        pending.add_file("criu/pages-1.img", &scratch.join("pages-1.img")).unwrap();
        let id = pending.id().to_string();
        pending.seal(conformance::manifest(&id, Some("snap"), 1)).unwrap();
        pending.commit().unwrap();
        id
    }

    #[test]
    fn corruption_is_caught_and_removal_leaves_nothing() {
        let home = tempfile::tempdir().unwrap();
        let store = LocalSnapshots::open(&home.path().join("snapshots")).unwrap();
        let id = sealed(&store, home.path());
        let page = store.open(&id).unwrap().join("criu/pages-1.img");
        let mut bytes = fs::read(&page).unwrap();
        bytes[5000] ^= 1;
        fs::write(&page, &bytes).unwrap();
        let err = store.verify(&id).unwrap_err().to_string();
        assert!(err.contains("criu/pages-1.img does not match its checksum"), "{err}");
        fs::write(&page, &bytes[..100]).unwrap();
        let err = store.verify(&id).unwrap_err().to_string();
        assert!(err.contains("has 100 bytes, expected 10000"), "{err}");
        store.remove(&id).unwrap();
        assert_eq!(fs::read_dir(store.root.clone()).unwrap().count(), 0, "nothing left");
    }

    #[test]
    fn foreign_future_and_garbled_manifests_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let store = LocalSnapshots::open(&home.path().join("s")).unwrap();
        let id = sealed(&store, home.path());
        let path = store.open(&id).unwrap().join(MANIFEST);
        let mut value: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        value["format_version"] = 99.into();
        fs::write(&path, value.to_string()).unwrap();
        let err = store.manifest(&id).unwrap_err().to_string();
        assert!(err.contains("format version 99, newer than this hiber reads"), "{err}");
        assert_eq!(store.unreadable(), std::slice::from_ref(&id));
        fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(store.manifest(&id), Err(StoreError::BadManifest { .. })));
        value["format_version"] = 2.into();
        value["id"] = "ffffffffffff".into();
        fs::write(&path, value.to_string()).unwrap();
        assert!(store.manifest(&id).unwrap_err().to_string().contains("names snapshot ffffffffffff"));
    }

    #[test]
    fn a_discarded_leftover_leaves_no_directory() {
        let home = tempfile::tempdir().unwrap();
        let store = LocalSnapshots::open(&home.path().join("s")).unwrap();
        store.begin(None, &json!({})).unwrap().leave_for_recovery();
        store.leftovers().into_iter().for_each(|l| l.discard());
        assert_eq!(fs::read_dir(home.path().join("s")).unwrap().count(), 0, "nothing left");
    }
}
