//! The layer store: immutable root-filesystem trees under `HOME/layers/<id>/`.
//!
//! A layer is built in a [`Staging`] directory (`HOME/layers/.staging-<random>/`) and finished
//! with a rename, so a layer directory is always complete. Every staging directory is
//! `flock`ed by the process filling it; [`LayerStore::open`] removes the unlocked ones, which
//! were left by a killed process. Layers are never modified after they are made.

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use hiber_common::fs::sync_dir;
use hiber_common::lock::{lock_file, Mode};

const STAGING_PREFIX: &str = ".staging-";

/// Errors from the layer store.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A string that is not a layer id (16 lowercase hex characters).
    #[error("invalid layer id '{0}': expected 16 lowercase hex characters")]
    InvalidId(String),
    /// The layer does not exist.
    #[error("no layer {0}")]
    NotFound(LayerId),
    /// Copying a tree into a new layer failed.
    #[error(transparent)]
    Copy(#[from] crate::copy::CopyError),
    /// A layer with the id already exists.
    #[error("layer {0} already exists")]
    Exists(LayerId),
    /// [`LayerStore::adopt`] was given something that is not a directory.
    #[error("cannot adopt {0} as a layer: not a directory")]
    NotADirectory(PathBuf),
    /// [`LayerStore::adopt`] was given a directory on another filesystem.
    #[error("cannot adopt {dir} as a layer: it is not on the same filesystem as {layers}")]
    CrossDevice {
        /// The directory to adopt.
        dir: PathBuf,
        /// The layer store's directory.
        layers: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The underlying failure.
        source: io::Error,
    },
}

impl LayerError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> LayerError {
        let what = what.into();
        move |source| LayerError::Io { what, source }
    }
}

/// The id of a layer: 16 lowercase hex characters from a random source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LayerId(String);

impl LayerId {
    /// Parses a layer id, rejecting anything but 16 lowercase hex characters (so an id can never
    /// name a path outside the store).
    pub fn parse(s: &str) -> Result<LayerId, LayerError> {
        let ok = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(LayerId(s.to_string()))
        } else {
            Err(LayerError::InvalidId(s.to_string()))
        }
    }

    /// The id of the layer an OCI image's layer becomes: named by its uncompressed digest (the
    /// hex of its `diff_id`), so every image that has the layer shares it.
    pub fn for_diff(diff_id: &str) -> Result<LayerId, LayerError> {
        LayerId::parse(diff_id.get(..16).unwrap_or(diff_id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fresh random id, e.g. to name a layer in a journal before it exists.
    pub fn random() -> LayerId {
        LayerId(hiber_common::random_id(16))
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for LayerId {
    type Error = LayerError;
    fn try_from(s: String) -> Result<LayerId, LayerError> {
        LayerId::parse(&s)
    }
}

impl From<LayerId> for String {
    fn from(id: LayerId) -> String {
        id.0
    }
}

/// The layers of one home directory (`HOME/layers`).
#[derive(Debug, Clone)]
pub struct LayerStore {
    dir: PathBuf,
}

impl LayerStore {
    /// Opens (creating if needed) the layer directory and removes staging directories left by
    /// killed processes. Staging directories of live processes are left alone.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LayerStore, LayerError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(LayerError::io(format!("cannot create {}", dir.display())))?;
        let store = LayerStore { dir };
        store.clean_leftovers()?;
        Ok(store)
    }

    /// The directory of a layer (whether or not it exists).
    pub fn path(&self, id: &LayerId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    /// All finished layers, sorted by id. Staging directories are never listed.
    pub fn list(&self) -> Result<Vec<LayerId>, LayerError> {
        let mut ids = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(LayerError::io(format!("cannot read {}", self.dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(LayerError::io(format!("cannot read {}", self.dir.display())))?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| LayerId::parse(n).ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Starts a new layer: an empty directory (mode 0755) inside the store, removed when the
    /// returned [`Staging`] is dropped without [`Staging::commit`].
    pub fn staging(&self) -> Result<Staging, LayerError> {
        loop {
            let path = self.dir.join(format!("{STAGING_PREFIX}{}", hiber_common::random_id(16)));
            let what = || format!("cannot create staging directory {}", path.display());
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(LayerError::io(what())(e)),
            }
            let lock = File::open(&path).map_err(LayerError::io(what()))?;
            lock_file(&lock, Mode::Exclusive).map_err(LayerError::io(what()))?;
            // Between mkdir and flock another process's `open` may have found the directory
            // unlocked and removed it; then start again.
            if lock.metadata().map_err(LayerError::io(what()))?.nlink() == 0 {
                continue;
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(LayerError::io(what()))?;
            return Ok(Staging { path, layers: self.dir.clone(), lock, committed: false });
        }
    }

    /// Turns a directory already on the store's filesystem (e.g. a sandbox's overlay upper dir)
    /// into a layer by renaming it into the store. The directory must not be written afterwards.
    pub fn adopt(&self, dir: &Path) -> Result<LayerId, LayerError> {
        install(&self.dir, dir, &open_dir(dir)?)
    }

    /// Like [`LayerStore::adopt`], under an id chosen beforehand (recorded in
    /// a journal, so an interrupted adoption can be finished).
    pub fn adopt_as(&self, dir: &Path, id: &LayerId) -> Result<(), LayerError> {
        install_as(&self.dir, dir, &open_dir(dir)?, id)
    }

    /// Makes layer `id` from a copy of `src` (which may go on changing
    /// afterwards, unlike an adopted directory).
    pub fn copy_as(&self, src: &Path, id: &LayerId) -> Result<(), LayerError> {
        let staging = self.staging()?;
        crate::copy::copy_tree(src, staging.path(), false)?;
        staging.commit_as(id)
    }

    /// Makes layer `id` from the squash of layer directories `sources`, top-most first (see
    /// `squash`): mounted over the layers below them, it shows the same tree they did. Its
    /// files are hard links to theirs, so each source must be immutable from now on.
    pub fn squash_as(&self, sources: &[&Path], id: &LayerId) -> Result<(), LayerError> {
        let staging = self.staging()?;
        crate::squash::squash(sources, staging.path())
            .map_err(LayerError::io(format!("cannot squash {} layers into layer {id}", sources.len())))?;
        staging.commit_as(id)
    }

    /// Removes a layer. The directory is first renamed into a staging directory, so a removal
    /// interrupted half-way never leaves a partial layer behind.
    pub fn remove(&self, id: &LayerId) -> Result<(), LayerError> {
        let path = self.path(id);
        let trash = self.staging()?;
        let moved = fs::rename(&path, trash.path.join(id.as_str()));
        // Dropping `trash` deletes the tree.
        drop(trash);
        match moved {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LayerError::NotFound(id.clone())),
            Err(e) => Err(LayerError::io(format!("cannot remove layer {}", path.display()))(e)),
        }
    }

    /// Bytes the layer occupies on disk (allocated blocks; a file hard-linked several times
    /// inside the layer counts once).
    pub fn size_on_disk(&self, id: &LayerId) -> Result<u64, LayerError> {
        let root = self.path(id);
        if !root.is_dir() {
            return Err(LayerError::NotFound(id.clone()));
        }
        let mut seen = HashSet::new();
        let mut total = 0u64;
        let mut stack = vec![root];
        while let Some(path) = stack.pop() {
            let what = || format!("cannot measure {}", path.display());
            let meta = fs::symlink_metadata(&path).map_err(LayerError::io(what()))?;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                for entry in fs::read_dir(&path).map_err(LayerError::io(what()))? {
                    stack.push(entry.map_err(LayerError::io(what()))?.path());
                }
            }
        }
        Ok(total)
    }

    /// Removes the staging directories of dead processes (those nobody holds a lock on).
    fn clean_leftovers(&self) -> Result<(), LayerError> {
        let what = || format!("cannot clean up {}", self.dir.display());
        for entry in fs::read_dir(&self.dir).map_err(LayerError::io(what()))? {
            let path = entry.map_err(LayerError::io(what()))?.path();
            let is_staging = path.file_name().is_some_and(|n| n.as_bytes().starts_with(STAGING_PREFIX.as_bytes()));
            if !is_staging {
                continue;
            }
            let lock = match File::open(&path) {
                Ok(f) => f,
                // Committed or removed by its owner meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(LayerError::io(what())(e)),
            };
            if lock_file(&lock, Mode::TryExclusive).map_err(LayerError::io(what()))? {
                remove_tree(&path).map_err(LayerError::io(format!("cannot remove leftover {}", path.display())))?;
            }
        }
        Ok(())
    }
}

/// A layer being built: a directory inside the store, locked by this process. Fill
/// [`Staging::path`], then [`Staging::commit`]. Dropped uncommitted, it is deleted.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    layers: PathBuf,
    lock: File,
    committed: bool,
}

impl Staging {
    /// The directory to fill: it becomes the layer's root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finishes the layer: syncs the filesystem and renames the directory into place.
    pub fn commit(mut self) -> Result<LayerId, LayerError> {
        let id = install(&self.layers, &self.path, &self.lock)?;
        self.committed = true;
        Ok(id)
    }

    /// Finishes the layer under an id chosen beforehand.
    pub fn commit_as(mut self, id: &LayerId) -> Result<(), LayerError> {
        install_as(&self.layers, &self.path, &self.lock, id)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a directory that cannot be removed now is removed by the next `open`.
            let _ = remove_tree(&self.path);
        }
    }
}

/// Makes the tree at `src` durable and renames it to a fresh layer id.
fn install(layers: &Path, src: &Path, fd: &File) -> Result<LayerId, LayerError> {
    loop {
        let id = LayerId::random();
        match install_as(layers, src, fd, &id) {
            Err(LayerError::Exists(_)) => continue,
            other => return other.map(|()| id),
        }
    }
}

/// Makes the tree at `src` durable and renames it to layer `id`.
fn install_as(layers: &Path, src: &Path, fd: &File, id: &LayerId) -> Result<(), LayerError> {
    let what = || format!("cannot make {} a layer", src.display());
    // SAFETY: syncfs only takes a descriptor number; `fd` keeps it open for the call.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } != 0 {
        return Err(LayerError::io(what())(io::Error::last_os_error()));
    }
    match rename_noreplace(src, &layers.join(id.as_str())) {
        Ok(()) => sync_dir(layers).map_err(LayerError::io(what())),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(LayerError::Exists(id.clone())),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            Err(LayerError::CrossDevice { dir: src.to_path_buf(), layers: layers.to_path_buf() })
        }
        Err(e) => Err(LayerError::io(what())(e)),
    }
}

/// Opens a directory to be adopted, refusing anything else.
fn open_dir(dir: &Path) -> Result<File, LayerError> {
    let meta = fs::symlink_metadata(dir).map_err(LayerError::io(format!("cannot adopt {}", dir.display())))?;
    if !meta.is_dir() {
        return Err(LayerError::NotADirectory(dir.to_path_buf()));
    }
    File::open(dir).map_err(LayerError::io(format!("cannot open {}", dir.display())))
}

/// Removes a directory tree, or a single file.
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `rename(2)` that fails with `EEXIST` instead of replacing an (empty) directory.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both pointers are NUL-terminated strings that outlive the call; AT_FDCWD makes
    // relative paths resolve like rename(2) does.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn layer_ids_are_16_lowercase_hex() {
        assert!(LayerId::parse("0123456789abcdef").is_ok());
        for bad in ["", "0123456789ABCDEF", "0123456789abcde", "../../etc/passwd", "0123456789abcdeg"] {
            assert!(LayerId::parse(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&LayerId::parse("00000000000000ff").unwrap()).unwrap();
        assert_eq!(json, "\"00000000000000ff\"");
        assert!(serde_json::from_str::<LayerId>("\"../x\"").is_err());
        assert_eq!(LayerId::random().as_str().len(), 16);
    }

    #[test]
    fn committed_staging_becomes_a_layer_and_dropped_staging_vanishes() {
        let home = tempfile::tempdir().unwrap();
        let store = LayerStore::open(home.path().join("layers")).unwrap();
        let staging = store.staging().unwrap();
        fs::write(staging.path().join("hello"), b"hi").unwrap();
        let id = staging.commit().unwrap();
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&id));
        assert_eq!(fs::read(store.path(&id).join("hello")).unwrap(), b"hi");
        let mode = fs::metadata(store.path(&id)).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);

        let abandoned = store.staging().unwrap();
        fs::create_dir(abandoned.path().join("sub")).unwrap();
        drop(abandoned);
        assert_eq!(names(&home.path().join("layers")), [id.to_string()]);
    }

    #[test]
    fn open_removes_dead_staging_but_keeps_live_staging() {
        let home = tempfile::tempdir().unwrap();
        let layers = home.path().join("layers");
        let store = LayerStore::open(&layers).unwrap();
        // Left behind by a killed process: nobody holds its lock.
        let dead = layers.join(".staging-00000000deadbeef");
        fs::create_dir_all(dead.join("usr/bin")).unwrap();
        fs::write(dead.join("usr/bin/x"), b"x").unwrap();
        // In use by a live builder.
        let live = store.staging().unwrap();
        assert_eq!(store.list().unwrap(), []);

        let reopened = LayerStore::open(&layers).unwrap();
        assert!(!dead.exists());
        assert!(live.path().exists());
        assert_eq!(reopened.list().unwrap(), []);
        live.commit().unwrap();
        assert_eq!(reopened.list().unwrap().len(), 1);
    }

    #[test]
    fn adopt_renames_a_directory_into_the_store() {
        let home = tempfile::tempdir().unwrap();
        let store = LayerStore::open(home.path().join("layers")).unwrap();
        let upper = home.path().join("upper");
        fs::create_dir(&upper).unwrap();
        fs::write(upper.join("f"), b"data").unwrap();
        let id = store.adopt(&upper).unwrap();
        assert!(!upper.exists());
        assert_eq!(fs::read(store.path(&id).join("f")).unwrap(), b"data");

        let file = home.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(matches!(store.adopt(&file), Err(LayerError::NotADirectory(_))));
        assert!(store.adopt(&home.path().join("missing")).is_err());
    }

    #[test]
    fn remove_deletes_the_layer() {
        let home = tempfile::tempdir().unwrap();
        let layers = home.path().join("layers");
        let store = LayerStore::open(&layers).unwrap();
        let staging = store.staging().unwrap();
        fs::create_dir(staging.path().join("d")).unwrap();
        let id = staging.commit().unwrap();
        store.remove(&id).unwrap();
        assert!(names(&layers).is_empty());
        assert!(matches!(store.remove(&id), Err(LayerError::NotFound(_))));
    }

    #[test]
    fn size_counts_hardlinked_files_once() {
        let home = tempfile::tempdir().unwrap();
        let store = LayerStore::open(home.path().join("layers")).unwrap();
        let staging = store.staging().unwrap();
        fs::write(staging.path().join("big"), vec![7u8; 256 * 1024]).unwrap();
        let id = staging.commit().unwrap();
        let one = store.size_on_disk(&id).unwrap();
        assert!(one >= 256 * 1024, "{one}");

        let staging = store.staging().unwrap();
        fs::write(staging.path().join("big"), vec![7u8; 256 * 1024]).unwrap();
        fs::hard_link(staging.path().join("big"), staging.path().join("again")).unwrap();
        symlink("big", staging.path().join("link")).unwrap();
        let linked = staging.commit().unwrap();
        let two = store.size_on_disk(&linked).unwrap();
        assert!(two < one + 64 * 1024, "{one} {two}");
    }
}
