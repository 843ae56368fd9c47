//! Snapshot and restore of container sandboxes.
//!
//! Snapshot: freeze the cgroup, dump the tree with CRIU (it stays frozen),
//! seal the manifest, then turn the upper directory into a layer — renamed
//! when the sandbox stops (suspend), copied while frozen when it keeps
//! running — and publish. Each step is journaled, so a killed `snapshot`
//! leaves the running sandbox or a complete snapshot: the next run rolls a
//! leftover back (sandbox still alive: thaw it) or forward (sandbox gone
//! after a sealed dump: finish the layer and publish).
//!
//! Restore: verify the manifest and every checksum first, then mount the
//! snapshot's layers under a fresh upper directory and let the shim run
//! `criu restore` into a new cgroup.

use std::collections::HashSet;
use std::path::Path;

use hiber_image::{ImageStore, LayerId};

use crate::container::{ContainerBackend, How, SandboxError};
use crate::criu::Criu;
use crate::overlay;
use crate::snapshot::{Journal, Leftover, Manifest, FORMAT_VERSION};
use hiber_common::fs::{read_json, write_json_atomic};

use crate::state::{is_alive, SandboxRecord, SuspendRecord};
use crate::SandboxInfo;

/// How a snapshot treats its sandbox.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// The snapshot's name.
    pub name: Option<String>,
    /// Keep the sandbox running (a live checkpoint) instead of stopping it.
    pub leave_running: bool,
    /// The position in the session's context log the sandbox has seen
    /// (recorded in the manifest; sessions set it).
    pub context_seq: Option<u64>,
}

fn layer_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl ContainerBackend {
    /// Snapshots a running sandbox.
    pub(crate) fn snapshot_sandbox(&self, key: &str, options: &SnapshotOptions) -> Result<Manifest, SandboxError> {
        let criu = Criu::locate()?;
        self.recover_snapshots();
        let info = self.find_sandbox(key)?;
        let record = info.record;
        if !info.status.is_running() {
            return Err(SandboxError::NotRunning(record.id));
        }
        let dir = self.runtime().dir(&record.id);
        let pending = self.snapshots().begin(options.name.as_deref())?;
        let layer = LayerId::random();
        let journal =
            Journal { sandbox: record.id.clone(), leave_running: options.leave_running, layer: layer.to_string() };
        pending.write_journal(&journal)?;
        pending.share_lock_with_children();

        // Host connections wait while this is held (see `connect`): none can
        // slip in between the detach and the dump.
        let lock = dir.snapshot_lock();
        let _snapshotting = hiber_common::lock::lock(&lock, hiber_common::lock::Mode::Exclusive)
            .map_err(|source| SandboxError::Io { path: lock, source })?;
        self.detach_clients(&record)?;
        let cgroup = self.cgroup(&record);
        cgroup.set_frozen(true)?;
        let log = dir.path().join("dump.log");
        if let Err(e) = criu.dump(record.init_pid, &pending.criu_dir(), &cgroup.freezer_dir(), &log) {
            let _ = cgroup.set_frozen(false);
            return Err(e.into());
        }
        let mut layers = vec![layer.to_string()];
        layers.extend(record.lowers.iter().map(|l| layer_name(l)));
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: pending.id().to_string(),
            name: options.name.clone(),
            parent: record.from_snapshot.clone(),
            source_sandbox: record.id.clone(),
            image: record.image.clone(),
            layers,
            hostname: record.hostname.clone(),
            limits: record.limits,
            main: record.main.clone(),
            context_seq: options.context_seq,
            criu_version: criu.version.clone(),
            hiber_version: env!("CARGO_PKG_VERSION").to_string(),
            created: hiber_common::unix_secs(),
            files: Vec::new(),
        };
        let manifest = match pending.seal(manifest) {
            Ok(m) => m,
            Err(e) => {
                let _ = cgroup.set_frozen(false);
                return Err(e.into());
            }
        };
        if options.leave_running {
            // Copy while frozen: the layer matches the dumped open files.
            let copied = self.layers().copy_as(&dir.upper(), &layer);
            cgroup.set_frozen(false)?;
            copied?;
        } else {
            // From here on the sandbox is gone: on failure, leave the
            // journaled staging for recovery to finish.
            self.kill(&record);
            if let Err(e) = self.finish_suspend(&record, &journal, &manifest.id) {
                std::mem::forget(pending);
                return Err(e);
            }
        }
        pending.commit()?;
        Ok(manifest)
    }

    /// After the tree of a suspending snapshot is gone: its upper directory
    /// becomes the journaled layer, and the sandbox is marked suspended.
    fn finish_suspend(&self, record: &SandboxRecord, journal: &Journal, snapshot: &str) -> Result<(), SandboxError> {
        let dir = self.runtime().dir(&record.id);
        overlay::unmount(&dir.rootfs())?;
        let layer = LayerId::parse(&journal.layer)?;
        if dir.upper().is_dir() {
            self.layers().adopt_as(&dir.upper(), &layer)?;
        }
        let suspended = SuspendRecord { snapshot: snapshot.to_string() };
        write_json_atomic(&dir.suspended(), &suspended)
            .map_err(|source| SandboxError::Io { path: dir.suspended(), source })
    }

    /// Rolls leftovers of killed snapshots back or forward.
    pub(crate) fn recover_snapshots(&self) {
        for leftover in self.snapshots().leftovers() {
            let _ = self.recover(leftover);
        }
    }

    fn recover(&self, leftover: Leftover) -> Result<(), SandboxError> {
        let Some(journal) = leftover.journal.clone() else {
            leftover.discard();
            return Ok(());
        };
        let record: Option<SandboxRecord> = read_json(&self.runtime().dir(&journal.sandbox).state()).ok();
        if let Some(record) = record.as_ref().filter(|r| is_alive(r)) {
            // Killed before the sandbox was stopped: undo.
            let _ = self.cgroup(record).set_frozen(false);
            leftover.discard();
            return Ok(());
        }
        let layer_done = self.layers_dir().join(&journal.layer).is_dir();
        match (&leftover.manifest, record) {
            (Some(manifest), Some(record)) if !journal.leave_running && !layer_done => {
                let id = manifest.id.clone();
                self.finish_suspend(&record, &journal, &id)?;
                leftover.publish(self.snapshots())?;
            }
            (Some(manifest), Some(record)) if layer_done => {
                if !journal.leave_running {
                    let dir = self.runtime().dir(&record.id);
                    let suspended = SuspendRecord { snapshot: manifest.id.clone() };
                    write_json_atomic(&dir.suspended(), &suspended)
                        .map_err(|source| SandboxError::Io { path: dir.suspended(), source })?;
                }
                leftover.publish(self.snapshots())?;
            }
            (Some(_), None) if layer_done => leftover.publish(self.snapshots())?,
            _ => leftover.discard(),
        }
        Ok(())
    }

    /// Starts a new sandbox carrying on from a snapshot.
    pub(crate) fn restore_snapshot(&self, snapshot: &str, name: Option<&str>) -> Result<SandboxInfo, SandboxError> {
        let criu = Criu::locate()?;
        self.recover_snapshots();
        let manifest = self.snapshots().verified(snapshot, self.layers_dir())?;
        let id = crate::container::new_id();
        let record = SandboxRecord {
            hostname: name.map(str::to_string).unwrap_or_else(|| id.clone()),
            id,
            name: name.map(str::to_string),
            image: manifest.image.clone(),
            lowers: manifest.layers.iter().map(|l| self.layers_dir().join(l)).collect(),
            from_snapshot: Some(manifest.id.clone()),
            limits: manifest.limits,
            main: manifest.main.clone(),
            created: hiber_common::unix_secs(),
            shim_pid: 0,
            init_pid: 0,
            init_start: 0,
        };
        let images = self.snapshots().dir(&manifest.id).join("criu");
        self.launch_sandbox(record, How::Restore { criu: &criu, images: &images })
    }
}

impl ContainerBackend {
    /// Removes a snapshot, then the layers nothing uses any more. Sandboxes
    /// restored from it and snapshots taken after it keep working: they name
    /// every layer they stand on, and those are kept.
    pub fn remove_snapshot(&self, key: &str) -> Result<(), SandboxError> {
        let id = self.snapshots().resolve(key)?;
        self.snapshots().remove(&id)?;
        self.collect_layers()?;
        Ok(())
    }

    /// Removes every layer no image, snapshot or sandbox uses; returns how
    /// many. Removes nothing while any user's manifest cannot be read.
    pub fn collect_layers(&self) -> Result<usize, SandboxError> {
        let images =
            ImageStore::open(self.home()).and_then(|s| s.list()).map_err(|e| SandboxError::Layers(e.to_string()))?;
        if let Some(id) = self.snapshots().unreadable().first() {
            return Err(SandboxError::Layers(format!("snapshot {id} is unreadable, so its layers are unknown")));
        }
        let mut used: HashSet<String> = images.iter().flat_map(|i| i.layers.iter().map(|l| l.to_string())).collect();
        used.extend(self.snapshots().list().into_iter().flat_map(|m| m.layers));
        used.extend(self.snapshots().layers_in_flight());
        used.extend(self.runtime().list().iter().flat_map(|r| r.lowers.iter().map(|l| layer_name(l))));
        let mut removed = 0;
        for layer in self.layers().list()? {
            if !used.contains(layer.as_str()) {
                self.layers().remove(&layer)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
