//! Snapshot and restore of container sandboxes.
//!
//! Snapshot: freeze the cgroup, dump the tree with CRIU into the sandbox's runtime directory (it
//! stays frozen), hand the files to the snapshot store and seal the manifest, then turn the upper
//! directory into a layer — renamed when the sandbox stops (suspend), copied while frozen when
//! it keeps running — and commit. Each step is journaled, so a killed `snapshot` leaves the
//! running sandbox or a complete snapshot: the next run rolls a leftover back (sandbox still
//! alive: thaw it) or forward (sandbox gone after a sealed dump: finish the layer and publish).
//!
//! Restore: verify the manifest and every checksum first, then mount the snapshot's layers
//! under a fresh upper directory and let the shim run `criu restore` into a new cgroup.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use hiber_common::fs::{read_json, write_json_atomic};
use hiber_common::lock::{self, Mode};
use hiber_image::{ImageStore, LayerId};
use serde::{Deserialize, Serialize};

use super::criu::Criu;
use super::overlay;
use super::record::{is_alive, SandboxRecord, SuspendRecord};
use super::spawn::Start;
use super::{io_error, ContainerBackend, ContainerError};
use crate::backend::{SandboxError, SandboxInfo, SnapshotOptions};
use crate::snapshot::{BackendState, Leftover, Manifest, Pending, StoreError, FORMAT_VERSION};

/// Where CRIU's files go in a snapshot.
const CRIU_DIR: &str = "criu";

/// What a container snapshot under construction is for (its store journal), so that a successor
/// can finish or undo it if its builder dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    /// The sandbox being snapshotted.
    sandbox: String,
    /// Whether the sandbox keeps running afterwards.
    leave_running: bool,
    /// The layer the sandbox's upper directory becomes.
    layer: String,
    /// The snapshot layers under the upper directory, top-most first, that `layer` absorbs
    /// (see [`MAX_SNAPSHOT_LAYERS`]); none for most snapshots.
    #[serde(default)]
    squash: Vec<std::path::PathBuf>,
}

/// The most snapshot layers a sandbox's stack holds above its image: a snapshot that would make
/// more squashes its upper directory and the snapshot layers under it into one layer. Each
/// snapshot adds a layer, and a stack cannot grow for ever: a page of mount options holds about
/// eighty layers, CRIU reads mount lines of bounded length (dumps failed at the 91st), and every
/// lookup of a missing name searches every layer.
const MAX_SNAPSHOT_LAYERS: usize = 8;

/// The snapshot layers at the top of stack `lowers` (those above hiber's own layer).
fn snapshot_layers(lowers: &[std::path::PathBuf]) -> &[std::path::PathBuf] {
    let own = lowers.iter().position(|l| super::init_layer::is_init_layer(&layer_name(l)));
    &lowers[..own.unwrap_or(0)]
}

fn layer_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// What a squash of `upper` and the snapshot layers `below` it (top-most first) reads.
fn squash_sources<'a>(upper: &'a Path, below: &'a [std::path::PathBuf]) -> Vec<&'a Path> {
    std::iter::once(upper).chain(below.iter().map(|l| l.as_path())).collect()
}

/// The layers a container manifest stands on (none for another backend's).
fn layers(manifest: &Manifest) -> Option<&[String]> {
    match &manifest.backend {
        BackendState::Container { layers, .. } => Some(layers),
        _ => None,
    }
}

/// Every regular file below `dir`, as paths relative to it, sorted.
fn files_below(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::new()];
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

impl ContainerBackend {
    /// Snapshots a running sandbox.
    pub(super) fn snapshot_sandbox(&self, key: &str, options: &SnapshotOptions) -> Result<Manifest, SandboxError> {
        let criu = Criu::locate()?;
        self.recover_snapshots();
        let record = self.running(key)?;
        let obstacles = self.obstacles(&record);
        if !obstacles.is_empty() {
            return Err(SandboxError::Uncarriable { id: record.id, obstacles });
        }
        let dir = self.runtime.dir(&record.id);
        let layer = LayerId::random();
        let below = snapshot_layers(&record.lowers);
        let squash = if below.len() >= MAX_SNAPSHOT_LAYERS { below.to_vec() } else { Vec::new() };
        let journal = Journal {
            sandbox: record.id.clone(),
            leave_running: options.leave_running,
            layer: layer.to_string(),
            squash,
        };
        let journal_json = serde_json::to_value(&journal).expect("a journal serializes");
        let mut pending = self.snapshots.begin(options.name.as_deref(), &journal_json)?;
        pending.share_with_children();

        // Host connections wait while this is held (see `connect`): none can
        // slip in between the detach and the dump.
        let path = dir.snapshot_lock();
        let _snapshotting = lock::lock(&path, Mode::Exclusive).map_err(io_error(&path))?;
        self.detach_clients(&record)?;
        let cgroup = self.cgroup(&record);
        cgroup.set_frozen(true)?;
        let manifest = self.dump(&criu, &record, options, &journal, &mut *pending);
        let manifest = match manifest {
            Ok(m) => m,
            Err(e) => {
                let _ = cgroup.set_frozen(false);
                return Err(e);
            }
        };
        if options.leave_running {
            // Copy while frozen: the layer matches the dumped open files.
            let copied = self.copy_upper(&dir.upper(), &journal);
            cgroup.set_frozen(false)?;
            copied?;
        } else {
            // From here on the sandbox is gone: on failure, leave the
            // journaled staging for recovery to finish.
            self.kill(&record);
            if let Err(e) = self.finish_suspend(&record, &journal, &manifest.id) {
                pending.leave_for_recovery();
                return Err(e);
            }
        }
        pending.commit()?;
        Ok(manifest)
    }

    /// Dumps the frozen tree of `record` into its runtime directory, hands the files to
    /// `pending` and seals it; `journal` says which layer its upper directory becomes.
    fn dump(
        &self,
        criu: &Criu,
        record: &SandboxRecord,
        options: &SnapshotOptions,
        journal: &Journal,
        pending: &mut dyn Pending,
    ) -> Result<Manifest, SandboxError> {
        let dir = self.runtime.dir(&record.id);
        let images = dir.dump();
        let _ = fs::remove_dir_all(&images);
        fs::create_dir_all(&images).map_err(io_error(&images))?;
        let freezer = self.cgroup(record).freezer_dir();
        criu.dump(record.init_pid, &images, &freezer, &dir.dump_log(), record.user_namespace)?;
        for rel in files_below(&images).map_err(io_error(&images))? {
            pending.add_file(&format!("{CRIU_DIR}/{rel}"), &images.join(&rel))?;
        }
        let _ = fs::remove_dir_all(&images);
        let mut layers = vec![journal.layer.clone()];
        layers.extend(record.lowers[journal.squash.len()..].iter().map(|l| layer_name(l)));
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: pending.id().to_string(),
            name: options.name.clone(),
            parent: record.from_snapshot.clone(),
            source_sandbox: record.id.clone(),
            image: record.image.clone(),
            hostname: record.hostname.clone(),
            limits: record.limits,
            main: record.main.clone(),
            hiber_version: env!("CARGO_PKG_VERSION").to_string(),
            created: hiber_common::unix_secs(),
            files: Vec::new(),
            backend: BackendState::Container {
                criu_version: criu.version.clone(),
                layers,
                user_namespace: record.user_namespace,
            },
        };
        Ok(pending.seal(manifest)?)
    }

    /// After the tree of a suspending snapshot is gone: its upper directory becomes the
    /// journaled layer, and the sandbox is marked suspended.
    fn finish_suspend(&self, record: &SandboxRecord, journal: &Journal, snapshot: &str) -> Result<(), SandboxError> {
        let dir = self.runtime.dir(&record.id);
        overlay::unmount(&dir.rootfs())?;
        let layer = LayerId::parse(&journal.layer)?;
        if dir.upper().is_dir() {
            if journal.squash.is_empty() {
                self.layers.adopt_as(&dir.upper(), &layer)?;
            } else {
                // The sandbox is gone: its upper directory is as immutable as its layers.
                self.layers.squash_as(&squash_sources(&dir.upper(), &journal.squash), &layer)?;
                let _ = fs::remove_dir_all(dir.upper());
            }
        }
        mark_suspended(&dir.suspended(), snapshot)
    }

    /// Makes the journaled layer from a copy of a running sandbox's (frozen) upper directory.
    fn copy_upper(&self, upper: &Path, journal: &Journal) -> Result<(), SandboxError> {
        let layer = LayerId::parse(&journal.layer)?;
        if journal.squash.is_empty() {
            return Ok(self.layers.copy_as(upper, &layer)?);
        }
        // The squash links files, and the sandbox goes on changing its own: squash a copy.
        let copy = LayerId::random();
        self.layers.copy_as(upper, &copy)?;
        let squashed = self.layers.squash_as(&squash_sources(&self.layers.path(&copy), &journal.squash), &layer);
        let removed = self.layers.remove(&copy);
        squashed?;
        Ok(removed?)
    }

    /// Rolls leftovers of killed snapshots back or forward.
    pub(super) fn recover_snapshots(&self) {
        for leftover in self.snapshots.leftovers() {
            let _ = self.recover(leftover);
        }
    }

    fn recover(&self, leftover: Box<dyn Leftover>) -> Result<(), SandboxError> {
        let Some(journal) = leftover.journal().and_then(|j| serde_json::from_value::<Journal>(j.clone()).ok()) else {
            leftover.discard();
            return Ok(());
        };
        let record: Option<SandboxRecord> = read_json(&self.runtime.dir(&journal.sandbox).state()).ok();
        if let Some(record) = record.as_ref().filter(|r| is_alive(r)) {
            // Killed before the sandbox was stopped: undo.
            let _ = self.cgroup(record).set_frozen(false);
            leftover.discard();
            return Ok(());
        }
        let layer_done = self.layers_dir.join(&journal.layer).is_dir();
        let snapshot = leftover.manifest().map(|m| m.id.clone());
        match (snapshot, record) {
            (Some(id), Some(record)) if !journal.leave_running && !layer_done => {
                self.finish_suspend(&record, &journal, &id)?;
                leftover.publish()?;
            }
            (Some(id), Some(record)) if layer_done => {
                if !journal.leave_running {
                    mark_suspended(&self.runtime.dir(&record.id).suspended(), &id)?;
                }
                leftover.publish()?;
            }
            (Some(_), None) if layer_done => leftover.publish()?,
            _ => leftover.discard(),
        }
        Ok(())
    }

    /// Starts a new sandbox carrying on from a snapshot.
    pub(super) fn restore_snapshot(&self, snapshot: &str, name: Option<&str>) -> Result<SandboxInfo, SandboxError> {
        let criu = Criu::locate()?;
        self.recover_snapshots();
        let id = self.snapshots.resolve(snapshot)?;
        let manifest = self.snapshots.verify(&id)?;
        let BackendState::Container { layers, user_namespace, .. } = &manifest.backend else {
            return Err(StoreError::Incomplete { id, what: "a container backend part".into() }.into());
        };
        if let Some(layer) = layers.iter().find(|l| !self.layers_dir.join(l).is_dir()) {
            return Err(StoreError::Incomplete { id, what: format!("layer {layer}") }.into());
        }
        let lowers = layers.iter().map(|l| self.layers_dir.join(l)).collect();
        let record = SandboxRecord {
            user_namespace: *user_namespace,
            ..SandboxRecord::new(
                name.map(str::to_string),
                manifest.image.clone(),
                lowers,
                Some(manifest.id.clone()),
                manifest.limits,
                manifest.main.clone(),
            )
        };
        let images = self.snapshots.open(&id)?.join(CRIU_DIR);
        let start = Start::Restore { criu: &criu, images: &images, user_namespace: *user_namespace };
        self.launch_sandbox(record, start)
    }

    /// Removes every layer no image, snapshot or sandbox uses; returns how many. Removes nothing
    /// while any user's manifest cannot be read.
    pub(super) fn collect_layers(&self) -> Result<usize, SandboxError> {
        let images =
            ImageStore::open(&self.home).and_then(|s| s.list()).map_err(|e| ContainerError::Layers(e.to_string()))?;
        if let Some(id) = self.snapshots.unreadable().first() {
            return Err(
                ContainerError::Layers(format!("snapshot {id} is unreadable, so its layers are unknown")).into()
            );
        }
        let mut used: HashSet<String> = images.iter().flat_map(|i| i.layers.iter().map(|l| l.to_string())).collect();
        used.extend(self.snapshots.list().iter().filter_map(layers).flatten().cloned());
        used.extend(
            self.snapshots
                .journals()
                .into_iter()
                .filter_map(|j| serde_json::from_value::<Journal>(j).ok())
                .map(|j| j.layer),
        );
        used.extend(self.runtime.list().iter().flat_map(|r| r.lowers.iter().map(|l| layer_name(l))));
        let mut removed = 0;
        for layer in self.layers.list()? {
            if !used.contains(layer.as_str()) {
                self.layers.remove(&layer)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Leaves the record that a snapshot stopped the sandbox.
fn mark_suspended(path: &Path, snapshot: &str) -> Result<(), SandboxError> {
    write_json_atomic(path, &SuspendRecord { snapshot: snapshot.to_string() }).map_err(io_error(path))
}
