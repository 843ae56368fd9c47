//! The `container` backend: a sandbox is a process tree in its own
//! namespaces and cgroup, on an overlay root, with hiber-init as PID 1.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hiber_proto::InitConfig;

use crate::cgroup::{wait_until, Cgroup, CgroupError, Hierarchy};
use crate::client::{ClientError, InitConnection};
use crate::init_layer::{self, InitLayerError};
use crate::overlay::{self, Overlay, OverlayError};
use crate::runtime::{Runtime, RuntimeError, SandboxDir};
use crate::spawn::{self, Launch, SpawnError, Start};
use crate::spec::{validate_name, SandboxSpec, SpecError};
use crate::state::{self, process_start, write_json_atomic, SandboxRecord, Status};
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
    runtime: Runtime,
    layers_dir: PathBuf,
    init_binary: PathBuf,
    hierarchy: Hierarchy,
}

impl ContainerBackend {
    /// Opens the backend for `home` (`home/sandboxes`, `home/layers`).
    pub fn open(home: &Path) -> Result<ContainerBackend, SandboxError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(SandboxError::NotRoot);
        }
        Ok(ContainerBackend {
            runtime: Runtime::open(&home.join("sandboxes"))?,
            layers_dir: home.join("layers"),
            init_binary: init_layer::locate_binary()?,
            hierarchy: Hierarchy::detect()?,
        })
    }

    fn cgroup(&self, id: &str) -> Cgroup {
        Cgroup::new(self.hierarchy.clone(), id)
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

    fn start(&self, record: &SandboxRecord, dir: &SandboxDir) -> Result<SandboxRecord, SandboxError> {
        Overlay { lowers: record.lowers.clone(), upper: dir.upper(), work: dir.work(), target: dir.rootfs() }.mount()?;
        let cgroup = self.cgroup(&record.id);
        cgroup.create(&record.limits)?;
        let config = InitConfig { main: record.main.clone(), hostname: record.hostname.clone() };
        let launched = spawn::launch(Launch {
            rootfs: &dir.rootfs(),
            hostname: &record.hostname,
            start: Start::Fresh(&config),
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
                !Status::of(record, &dir).is_running()
            }
        });
        let alive = Status::of(record, &dir).is_running();
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
    fn kill(&self, record: &SandboxRecord) {
        let dir = self.runtime.dir(&record.id);
        if Status::of(record, &dir).is_running() {
            // SAFETY: kill(2) of the sandbox's init, whose identity was just
            // checked by its start time.
            unsafe { libc::kill(record.init_pid, libc::SIGKILL) };
        }
        let _ = self.cgroup(&record.id).destroy();
        wait_until(Duration::from_secs(10), || !Status::of(record, &dir).is_running());
        reap_if_child(record.shim_pid);
    }

    fn teardown(&self, record: &SandboxRecord) -> Result<(), SandboxError> {
        self.kill(record);
        let dir = self.runtime.dir(&record.id);
        self.cgroup(&record.id).destroy()?;
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

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Backend for ContainerBackend {
    type Error = SandboxError;

    fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo, SandboxError> {
        if let Some(name) = &spec.name {
            validate_name(name)?;
        }
        let mut lowers = vec![init_layer::ensure(&self.layers_dir, &self.init_binary)?];
        lowers.extend(spec.lowers);
        let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let record = SandboxRecord {
            hostname: spec.name.clone().unwrap_or_else(|| id.clone()),
            id,
            name: spec.name,
            image: spec.image,
            lowers,
            from_snapshot: None,
            limits: spec.limits,
            main: spec.main,
            created: now(),
            shim_pid: 0,
            init_pid: 0,
            init_start: 0,
        };
        let dir = self.runtime.dir(&record.id);
        {
            let _lock = self.runtime.lock()?;
            if let Some(name) = &record.name {
                if self.runtime.list().iter().any(|r| r.name.as_ref() == Some(name)) {
                    return Err(SandboxError::NameTaken(name.clone()));
                }
            }
            fs::create_dir_all(dir.path()).map_err(|source| SandboxError::Io { path: dir.path().into(), source })?;
            write_json_atomic(&dir.state(), &record).map_err(|source| SandboxError::Io { path: dir.state(), source })?;
        }
        match self.start(&record, &dir) {
            Ok(record) => Ok(self.info(record)),
            Err(e) => {
                let record = state::read_json(&dir.state()).unwrap_or(record);
                let _ = self.teardown(&record);
                Err(e)
            }
        }
    }

    fn find(&self, key: &str) -> Result<SandboxInfo, SandboxError> {
        Ok(self.info(self.runtime.resolve(key)?))
    }

    fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        Ok(self.runtime.list().into_iter().map(|r| self.info(r)).collect())
    }

    fn connect(&self, key: &str) -> Result<InitConnection, SandboxError> {
        let info = self.find(key)?;
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

    fn remove(&self, key: &str, force: bool) -> Result<(), SandboxError> {
        let info = self.find(key)?;
        if info.status.is_running() && !force {
            return Err(SandboxError::Running(info.record.display_name().to_string()));
        }
        self.teardown(&info.record)
    }
}
