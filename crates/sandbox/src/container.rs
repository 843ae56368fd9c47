//! The `container` backend: a sandbox is a process tree in its own
//! namespaces and cgroup, on an overlay root, with hiber-init as PID 1.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hiber_proto::InitConfig;

use hiber_image::LayerStore;
use hiber_proto::{Reply, Request};

use crate::cgroup::{wait_until, Cgroup, CgroupError, Hierarchy};
use crate::checkpoint::SnapshotOptions;
use crate::client::{ClientError, InitConnection};
use crate::criu::{Criu, CriuError};
use crate::init_layer::{self, InitLayerError};
use crate::overlay::{self, Overlay, OverlayError};
use crate::runtime::{Runtime, RuntimeError, SandboxDir};
use crate::snapshot::{Manifest, SnapshotStore, StoreError};
use crate::spawn::{self, Launch, SpawnError, Start};
use crate::spec::{validate_name, SandboxSpec, SpecError};
use hiber_common::fs::{read_json, write_json_atomic};

use crate::state::{self, process_start, SandboxRecord, Status};
use crate::{Backend, SandboxInfo};

/// How long a new sandbox's init has to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the container backend.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Namespaces, mounts and cgroups need root.
    #[error("hiber needs root: it creates namespaces, mounts and cgroups (try sudo)")]
    NotRoot,
    /// Bad parameters.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Unknown or ambiguous sandbox.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// cgroup trouble.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Mount trouble.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// Starting the process tree failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// hiber's own layer could not be prepared.
    #[error(transparent)]
    InitLayer(#[from] InitLayerError),
    /// Talking to hiber-init failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The name is taken.
    #[error("a sandbox named '{0}' already exists")]
    NameTaken(String),
    /// CRIU is missing, too old, or failed.
    #[error(transparent)]
    Criu(#[from] CriuError),
    /// Snapshot store trouble (unknown, corrupt or foreign snapshot).
    #[error(transparent)]
    Snapshot(#[from] StoreError),
    /// Layers could not be collected.
    #[error("collecting unused layers: {0}")]
    Layers(String),
    /// A layer could not be made or found.
    #[error(transparent)]
    Layer(#[from] hiber_image::LayerError),
    /// The operation needs a stopped sandbox.
    #[error("sandbox {0} is running: stop it first, or use --force")]
    Running(String),
    /// The operation needs a running sandbox.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// hiber-init did not come up.
    #[error("sandbox {id} did not start: {reason}")]
    NotReady {
        /// The sandbox.
        id: String,
        /// What was seen.
        reason: String,
    },
    /// A runtime file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Sandboxes as Linux containers, with state under one home directory.
pub struct ContainerBackend {
    home: PathBuf,
    runtime: Runtime,
    layers: LayerStore,
    layers_dir: PathBuf,
    snapshots: SnapshotStore,
    init_binary: PathBuf,
    hierarchy: Hierarchy,
}

/// How a sandbox's process tree is started.
pub(crate) enum How<'a> {
    /// A fresh hiber-init.
    Fresh,
    /// CRIU restores the process image in `images`.
    Restore {
        /// The CRIU to run.
        criu: &'a Criu,
        /// The snapshot's process image.
        images: &'a Path,
    },
}

/// A new 12-hex-digit id.
pub(crate) fn new_id() -> String {
    hiber_common::random_id(12)
}

impl ContainerBackend {
    /// Opens the backend for `home` (`home/sandboxes`, `home/layers`).
    pub fn open(home: &Path) -> Result<ContainerBackend, SandboxError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(SandboxError::NotRoot);
        }
        let layers_dir = home.join("layers");
        Ok(ContainerBackend {
            home: home.to_owned(),
            runtime: Runtime::open(&home.join("sandboxes"))?,
            layers: LayerStore::open(&layers_dir)?,
            layers_dir,
            snapshots: SnapshotStore::open(&home.join("snapshots"))?,
            init_binary: init_layer::locate_binary()?,
            hierarchy: Hierarchy::detect()?,
        })
    }

    pub(crate) fn cgroup(&self, record: &SandboxRecord) -> Cgroup {
        Cgroup::new(self.hierarchy.clone(), &record.id, record.limits)
    }

    pub(crate) fn home(&self) -> &Path {
        &self.home
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub(crate) fn layers(&self) -> &LayerStore {
        &self.layers
    }

    pub(crate) fn layers_dir(&self) -> &Path {
        &self.layers_dir
    }

    pub(crate) fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    pub(crate) fn find_sandbox(&self, key: &str) -> Result<SandboxInfo, SandboxError> {
        Ok(self.info(self.runtime.resolve(key)?))
    }

    /// Every snapshot, oldest first (after finishing or undoing leftovers).
    pub fn snapshot_list(&self) -> Vec<Manifest> {
        self.recover_snapshots();
        self.snapshots.list()
    }

    /// Asks hiber-init to drop every host connection (CRIU cannot dump a
    /// connection to the outside), this one included: returns once init has
    /// closed its end. Exec'd processes carry on; clients re-attach by id.
    pub(crate) fn detach_clients(&self, record: &SandboxRecord) -> Result<(), SandboxError> {
        let mut conn = InitConnection::open(record.init_pid)?;
        conn.request(&Request::Detach)?;
        match conn.next_reply(|_| {})? {
            Reply::Done => {
                conn.wait_closed(READY_TIMEOUT);
                Ok(())
            }
            other => Err(ClientError::Unexpected(format!("{other:?}")).into()),
        }
    }

    fn info(&self, record: SandboxRecord) -> SandboxInfo {
        let status = Status::of(&record, &self.runtime.dir(&record.id));
        SandboxInfo { record, status }
    }

    /// Where the sandbox's main log is on the host: the first of the upper
    /// directory and the layers (top first) that holds it.
    pub fn main_log(&self, key: &str) -> Result<Option<PathBuf>, SandboxError> {
        let record = self.runtime.resolve(key)?;
        let dir = self.runtime.dir(&record.id);
        let relative = hiber_proto::MAIN_LOG.trim_start_matches('/');
        Ok(std::iter::once(dir.upper())
            .chain(record.lowers.iter().cloned())
            .map(|layer| layer.join(relative))
            .find(|path| path.is_file()))
    }

    /// Registers `record` (checking its name) and starts it; on failure
    /// nothing of it is left.
    pub(crate) fn launch_sandbox(&self, record: SandboxRecord, how: How) -> Result<SandboxInfo, SandboxError> {
        let dir = self.runtime.dir(&record.id);
        {
            let _lock = self.runtime.lock()?;
            if let Some(name) = &record.name {
                if self.runtime.list().iter().any(|r| r.name.as_ref() == Some(name)) {
                    return Err(SandboxError::NameTaken(name.clone()));
                }
            }
            fs::create_dir_all(dir.path()).map_err(|source| SandboxError::Io { path: dir.path().into(), source })?;
            write_json_atomic(&dir.state(), &record)
                .map_err(|source| SandboxError::Io { path: dir.state(), source })?;
        }
        match self.start(&record, &dir, how) {
            Ok(record) => Ok(self.info(record)),
            Err(e) => {
                let record = read_json(&dir.state()).unwrap_or(record);
                let _ = self.teardown(&record);
                Err(e)
            }
        }
    }

    fn start(&self, record: &SandboxRecord, dir: &SandboxDir, how: How) -> Result<SandboxRecord, SandboxError> {
        Overlay { lowers: record.lowers.clone(), upper: dir.upper(), work: dir.work(), target: dir.rootfs() }
            .mount()?;
        let cgroup = self.cgroup(record);
        cgroup.create()?;
        let config = InitConfig { main: record.main.clone(), hostname: record.hostname.clone() };
        let (pidfile, log) = (dir.path().join("init.pid"), dir.path().join("restore.log"));
        let start = match how {
            How::Fresh => Start::Fresh(&config),
            How::Restore { criu, images } => Start::Restore { criu, images, pidfile: &pidfile, log: &log },
        };
        let launched = spawn::launch(Launch {
            rootfs: &dir.rootfs(),
            hostname: &record.hostname,
            start,
            cgroup: &cgroup,
            exit_file: &dir.exit(),
            shim_log: &dir.shim_log(),
        })?;
        let mut record = record.clone();
        record.shim_pid = launched.shim_pid;
        record.init_pid = launched.init_pid;
        record.init_start = process_start(launched.init_pid).unwrap_or(0);
        write_json_atomic(&dir.state(), &record).map_err(|source| SandboxError::Io { path: dir.state(), source })?;
        self.wait_ready(&record, dir)?;
        Ok(record)
    }

    fn wait_ready(&self, record: &SandboxRecord, dir: &SandboxDir) -> Result<(), SandboxError> {
        let mut last = String::new();
        let ready = wait_until(READY_TIMEOUT, || match InitConnection::ping(record.init_pid) {
            Ok(_) => true,
            Err(e) => {
                last = e.to_string();
                // Give up at once when init is gone.
                !Status::of(record, dir).is_running()
            }
        });
        let alive = Status::of(record, dir).is_running();
        if ready && alive {
            return Ok(());
        }
        let init_log = fs::read_to_string(dir.upper().join("run/hiber/init.log")).unwrap_or_default();
        let reason = match init_log.lines().last() {
            Some(line) => line.to_string(),
            None if !alive => "its init exited at once".into(),
            None => last,
        };
        Err(SandboxError::NotReady { id: record.id.clone(), reason })
    }

    /// Kills the process tree and waits until it is gone.
    pub(crate) fn kill(&self, record: &SandboxRecord) {
        let dir = self.runtime.dir(&record.id);
        if Status::of(record, &dir).is_running() {
            // SAFETY: kill(2) of the sandbox's init, whose identity was just
            // checked by its start time.
            unsafe { libc::kill(record.init_pid, libc::SIGKILL) };
        }
        let _ = self.cgroup(record).destroy();
        wait_until(Duration::from_secs(10), || !Status::of(record, &dir).is_running());
        reap_if_child(record.shim_pid);
        // The shim records the exit after init is gone: let it finish before
        // anything removes the directory it writes into.
        wait_until(Duration::from_secs(10), || !state::is_shim(record.shim_pid));
    }

    fn teardown(&self, record: &SandboxRecord) -> Result<(), SandboxError> {
        self.kill(record);
        let dir = self.runtime.dir(&record.id);
        self.cgroup(record).destroy()?;
        overlay::unmount(&dir.rootfs())?;
        fs::remove_dir_all(dir.path()).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Ok(()),
            _ => Err(SandboxError::Io { path: dir.path().to_owned(), source: e }),
        })
    }
}

/// Waits for the shim if this process is its parent (attached runs, the
/// benchmark), so it does not linger as a zombie.
fn reap_if_child(shim_pid: i32) {
    if shim_pid > 0 && state::parent_pid(shim_pid) == Some(std::process::id() as i32) {
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(shim_pid, std::ptr::null_mut(), 0) };
    }
}

impl Backend for ContainerBackend {
    type Error = SandboxError;

    fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo, SandboxError> {
        if let Some(name) = &spec.name {
            validate_name(name)?;
        }
        let mut lowers = vec![init_layer::ensure(&self.layers_dir, &self.init_binary)?];
        lowers.extend(spec.lowers);
        let id = new_id();
        let record = SandboxRecord {
            hostname: spec.name.clone().unwrap_or_else(|| id.clone()),
            id,
            name: spec.name,
            image: spec.image,
            lowers,
            from_snapshot: None,
            limits: spec.limits,
            main: spec.main,
            created: hiber_common::unix_secs(),
            shim_pid: 0,
            init_pid: 0,
            init_start: 0,
        };
        self.launch_sandbox(record, How::Fresh)
    }

    fn find(&self, key: &str) -> Result<SandboxInfo, SandboxError> {
        self.find_sandbox(key)
    }

    fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        Ok(self.runtime.list().into_iter().map(|r| self.info(r)).collect())
    }

    fn connect(&self, key: &str) -> Result<InitConnection, SandboxError> {
        let id = self.find(key)?.record.id;
        // A snapshot under way holds this lock from before it detaches the
        // host's connections until the sandbox is thawed or gone: wait for
        // it, then look again.
        let lock = self.runtime.dir(&id).snapshot_lock();
        drop(
            hiber_common::lock::lock(&lock, hiber_common::lock::Mode::Shared)
                .map_err(|source| SandboxError::Io { path: lock, source })?,
        );
        let info = self.find(&id)?;
        if !info.status.is_running() {
            return Err(SandboxError::NotRunning(info.record.id));
        }
        Ok(InitConnection::open(info.record.init_pid)?)
    }

    fn stop(&self, key: &str, grace: Duration) -> Result<(), SandboxError> {
        let info = self.find(key)?;
        let record = &info.record;
        let dir = self.runtime.dir(&record.id);
        if !info.status.is_running() {
            return Ok(());
        }
        // SAFETY: kill(2) of the sandbox's init, identified by its start time.
        unsafe { libc::kill(record.init_pid, libc::SIGTERM) };
        if !wait_until(grace, || !Status::of(record, &dir).is_running()) {
            self.kill(record);
        }
        reap_if_child(record.shim_pid);
        Ok(())
    }

    fn snapshot(&self, key: &str, options: &SnapshotOptions) -> Result<Manifest, SandboxError> {
        self.snapshot_sandbox(key, options)
    }

    fn restore(&self, snapshot: &str, name: Option<&str>) -> Result<SandboxInfo, SandboxError> {
        self.restore_snapshot(snapshot, name)
    }

    fn remove(&self, key: &str, force: bool) -> Result<(), SandboxError> {
        let info = self.find(key)?;
        if info.status.is_running() && !force {
            return Err(SandboxError::Running(info.record.display_name().to_string()));
        }
        self.teardown(&info.record)
    }
}
