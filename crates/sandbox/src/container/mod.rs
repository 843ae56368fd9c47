//! The `container` backend: a sandbox is a process tree in its own namespaces and cgroup, on an
//! overlay root, with hiber-init as PID 1; snapshots are CRIU dumps plus the upper directory
//! turned into a layer ([`checkpoint`]).

mod capabilities;
mod cgroup;
mod checkpoint;
mod criu;
mod criu_rpc;
mod init_layer;
mod obstacles;
mod overlay;
pub mod preflight;
mod proc_masks;
mod record;
mod runtime;
mod seccomp;
mod spawn;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hiber_common::fs::{read_json, write_json_atomic};
use hiber_common::lock::{self, Mode};
use hiber_image::{ImageStore, LayerStore};
use hiber_proto::{InitConfig, Reply, Request};

use self::cgroup::{wait_until, Cgroup, CgroupError, Hierarchy};
pub use self::criu::{Criu, CriuError};
use self::init_layer::InitLayerError;
use self::overlay::{Overlay, OverlayError};
use self::record::{process_start, SandboxRecord};
use self::runtime::{Runtime, RuntimeError, SandboxDir};
use self::spawn::{Launch, SpawnError, Start};
use crate::backend::{Backend, SandboxError, SandboxInfo, SnapshotOptions, Status};
use crate::client::{ClientError, InitConnection};
use crate::snapshot::{LocalSnapshots, Manifest, SnapshotStore};
use crate::spec::{validate_name, SandboxSpec};

/// How long a new sandbox's init has to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What only the container backend fails with (inside [`SandboxError::Backend`]).
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Namespaces, mounts and cgroups need root.
    #[error("hiber needs root: it creates namespaces, mounts and cgroups (try sudo)")]
    NotRoot,
    /// Layers could not be collected.
    #[error("collecting unused layers: {0}")]
    Layers(String),
    /// A runtime file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The container's own errors all become [`SandboxError::Backend`].
macro_rules! backend_errors {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for SandboxError {
            fn from(e: $error) -> SandboxError {
                SandboxError::Backend(Box::new(e))
            }
        }
    )*};
}
backend_errors!(ContainerError, RuntimeError, CgroupError, OverlayError, SpawnError, InitLayerError, CriuError);
backend_errors!(hiber_image::LayerError);

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| ContainerError::Io { path: path.to_owned(), source }.into()
}

/// Sandboxes as Linux containers, with state under one home directory.
pub struct ContainerBackend {
    home: PathBuf,
    runtime: Runtime,
    layers: LayerStore,
    layers_dir: PathBuf,
    snapshots: Box<dyn SnapshotStore>,
    init_binary: PathBuf,
    hierarchy: Hierarchy,
}

/// A container sandbox as the host sees it, for tools that work on it directly (the plain-CRIU
/// benchmark peer, tests that kill its processes).
#[derive(Debug, Clone)]
pub struct HostView {
    /// Host pid of hiber-init.
    pub init_pid: i32,
    /// Host pid of the shim watching it.
    pub shim_pid: i32,
    /// Where the sandbox's root filesystem is mounted.
    pub rootfs: PathBuf,
}

impl ContainerBackend {
    /// Opens the backend for `home` (`home/sandboxes`, `home/layers`, `home/snapshots`).
    pub fn open(home: &Path) -> Result<ContainerBackend, SandboxError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(ContainerError::NotRoot.into());
        }
        let layers_dir = home.join("layers");
        Ok(ContainerBackend {
            home: home.to_owned(),
            runtime: Runtime::open(&home.join("sandboxes"))?,
            layers: LayerStore::open(&layers_dir)?,
            layers_dir,
            snapshots: Box::new(LocalSnapshots::open(&home.join("snapshots"))?),
            init_binary: init_layer::locate_binary()?,
            hierarchy: Hierarchy::detect()?,
        })
    }

    /// A sandbox's init pid and mounted root.
    pub fn host_view(&self, key: &str) -> Result<HostView, SandboxError> {
        let record = self.runtime.resolve(key)?;
        Ok(HostView {
            init_pid: record.init_pid,
            shim_pid: record.shim_pid,
            rootfs: self.runtime.dir(&record.id).rootfs(),
        })
    }

    fn cgroup(&self, record: &SandboxRecord) -> Cgroup {
        Cgroup::new(self.hierarchy.clone(), &record.id, record.limits)
    }

    fn status(&self, record: &SandboxRecord) -> Status {
        self.runtime.dir(&record.id).status(record)
    }

    fn info(&self, record: &SandboxRecord) -> SandboxInfo {
        record.info(self.status(record))
    }

    /// The record of a running sandbox.
    fn running(&self, key: &str) -> Result<SandboxRecord, SandboxError> {
        let record = self.runtime.resolve(key)?;
        match self.status(&record) {
            Status::Running => Ok(record),
            _ => Err(SandboxError::NotRunning(record.id)),
        }
    }

    /// Asks hiber-init to drop every host connection (CRIU cannot dump a
    /// connection to the outside), this one included: returns once init has
    /// closed its end. Exec'd processes carry on; clients re-attach by id.
    fn detach_clients(&self, record: &SandboxRecord) -> Result<(), SandboxError> {
        let mut conn = InitConnection::open_by_pid(record.init_pid)?;
        conn.request(&Request::Detach)?;
        match conn.next_reply(|_| {})? {
            Reply::Done => {
                conn.wait_closed(READY_TIMEOUT);
                Ok(())
            }
            other => Err(ClientError::Unexpected(format!("{other:?}")).into()),
        }
    }

    /// Registers `record` (checking its name) and starts it; on failure nothing of it is left.
    fn launch_sandbox(&self, record: SandboxRecord, start: Start) -> Result<SandboxInfo, SandboxError> {
        let dir = self.runtime.dir(&record.id);
        {
            let _lock = self.runtime.lock()?;
            if let Some(name) = &record.name {
                if self.runtime.list().iter().any(|r| r.name.as_ref() == Some(name)) {
                    return Err(SandboxError::NameTaken(name.clone()));
                }
            }
            fs::create_dir_all(dir.path()).map_err(io_error(dir.path()))?;
            write_json_atomic(&dir.state(), &record).map_err(io_error(&dir.state()))?;
        }
        match self.start(&record, &dir, start) {
            Ok(record) => Ok(self.info(&record)),
            Err(e) => {
                let record = read_json(&dir.state()).unwrap_or(record);
                let _ = self.teardown(&record);
                Err(e)
            }
        }
    }

    fn start(&self, record: &SandboxRecord, dir: &SandboxDir, start: Start) -> Result<SandboxRecord, SandboxError> {
        if record.user_namespace {
            // The root directory of the sandbox is its upper directory's: owned by its root.
            let upper = dir.upper();
            fs::create_dir_all(&upper).map_err(io_error(&upper))?;
            let root = hiber_image::ids::to_host(0);
            std::os::unix::fs::chown(&upper, root, root).map_err(io_error(&upper))?;
        }
        Overlay { lowers: record.lowers.clone(), upper: dir.upper(), work: dir.work(), target: dir.rootfs() }
            .mount()?;
        let cgroup = self.cgroup(record);
        cgroup.create()?;
        let config = InitConfig { main: record.main.clone(), hostname: record.hostname.clone() };
        let launched =
            spawn::launch(Launch { dir, hostname: &record.hostname, config: &config, start, cgroup: &cgroup })?;
        let mut record = record.clone();
        record.shim_pid = launched.shim_pid;
        record.init_pid = launched.init_pid;
        record.init_start = process_start(launched.init_pid).unwrap_or(0);
        write_json_atomic(&dir.state(), &record).map_err(io_error(&dir.state()))?;
        self.wait_ready(&record, dir)?;
        Ok(record)
    }

    fn wait_ready(&self, record: &SandboxRecord, dir: &SandboxDir) -> Result<(), SandboxError> {
        let mut last = String::new();
        let ready =
            wait_until(READY_TIMEOUT, || match InitConnection::open_by_pid(record.init_pid).and_then(|c| c.ping()) {
                Ok(_) => true,
                Err(e) => {
                    last = e.to_string();
                    // Give up at once when init is gone.
                    !dir.status(record).is_running()
                }
            });
        let alive = dir.status(record).is_running();
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

    /// What the sandbox's processes hold that CRIU cannot save ([`obstacles`]).
    fn obstacles(&self, record: &SandboxRecord) -> Vec<String> {
        let namespace = obstacles::pid_namespace(record.init_pid);
        self.cgroup(record).processes().into_iter().flat_map(|pid| obstacles::describe(pid, &namespace)).collect()
    }

    /// Kills the process tree and waits until it is gone.
    fn kill(&self, record: &SandboxRecord) {
        let dir = self.runtime.dir(&record.id);
        if dir.status(record).is_running() {
            // SAFETY: kill(2) of the sandbox's init, whose identity was just
            // checked by its start time.
            unsafe { libc::kill(record.init_pid, libc::SIGKILL) };
        }
        let _ = self.cgroup(record).destroy();
        wait_until(Duration::from_secs(10), || !dir.status(record).is_running());
        reap_if_child(record.shim_pid);
        // The shim records the exit after init is gone: let it finish before
        // anything removes the directory it writes into.
        wait_until(Duration::from_secs(10), || !record::is_shim(record.shim_pid));
    }

    fn teardown(&self, record: &SandboxRecord) -> Result<(), SandboxError> {
        self.kill(record);
        let dir = self.runtime.dir(&record.id);
        self.cgroup(record).destroy()?;
        overlay::unmount(&dir.rootfs())?;
        fs::remove_dir_all(dir.path()).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Ok(()),
            _ => Err(io_error(dir.path())(e)),
        })
    }
}

/// Waits for the shim if this process is its parent (attached runs, the
/// benchmark), so it does not linger as a zombie.
fn reap_if_child(shim_pid: i32) {
    if shim_pid > 0 && record::parent_pid(shim_pid) == Some(std::process::id() as i32) {
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(shim_pid, std::ptr::null_mut(), 0) };
    }
}

/// Opens a TCP connection to 127.0.0.1:`port` in the network namespace of host process `pid`
/// (bringing its loopback up, as a fresh restore's may still be down).
pub fn dial_in_netns(pid: i32, port: u16) -> io::Result<TcpStream> {
    spawn::in_namespaces(pid, &[spawn::Namespace::Net], move || {
        hiber_common::net::loopback_up()?;
        TcpStream::connect((Ipv4Addr::LOCALHOST, port))
    })
}

impl Backend for ContainerBackend {
    fn kind(&self) -> &'static str {
        "container"
    }

    fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo, SandboxError> {
        if let Some(name) = &spec.name {
            validate_name(name)?;
        }
        let images = ImageStore::open(&self.home).map_err(|e| SandboxError::Image(e.to_string()))?;
        let image = images.get(&spec.image).map_err(|e| SandboxError::Image(e.to_string()))?;
        if !image.shifted_ids {
            return Err(SandboxError::Image(format!(
                "image '{}' was made for sandboxes without user namespaces: make it again (see `hiber image --help`)",
                image.name
            )));
        }
        let mut lowers = vec![init_layer::ensure(&self.layers_dir, &self.init_binary)?];
        lowers.extend(images.lower_dirs(&image));
        let no_command = image.config.entrypoint.is_empty() && image.config.cmd.is_empty();
        if spec.main.as_ref().is_some_and(|main| main.argv.is_empty()) && no_command {
            // As Docker: "no command specified".
            return Err(SandboxError::Image(format!(
                "image '{}' names no command (Entrypoint or Cmd): give one",
                image.name
            )));
        }
        let main = spec.main.map(|process| crate::spec::with_image_defaults(process, &image.config));
        let record = SandboxRecord::new(spec.name, image.name.clone(), lowers, None, spec.limits, main);
        self.launch_sandbox(record, Start::Fresh { confinement: spec.confinement })
    }

    fn find(&self, key: &str) -> Result<SandboxInfo, SandboxError> {
        Ok(self.info(&self.runtime.resolve(key)?))
    }

    fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        Ok(self.runtime.list().iter().map(|r| self.info(r)).collect())
    }

    fn connect(&self, key: &str) -> Result<InitConnection, SandboxError> {
        let id = self.runtime.resolve(key)?.id;
        // A snapshot under way holds this lock from before it detaches the
        // host's connections until the sandbox is thawed or gone: wait for
        // it, then look again.
        let path = self.runtime.dir(&id).snapshot_lock();
        drop(lock::lock(&path, Mode::Shared).map_err(io_error(&path))?);
        Ok(InitConnection::open_by_pid(self.running(&id)?.init_pid)?)
    }

    fn dial(&self, key: &str, port: u16) -> Result<TcpStream, SandboxError> {
        let record = self.running(key)?;
        dial_in_netns(record.init_pid, port).map_err(io_error(Path::new(&format!("sandbox {} port {port}", record.id))))
    }

    fn main_log(&self, key: &str, offset: u64) -> Result<Vec<u8>, SandboxError> {
        let record = self.runtime.resolve(key)?;
        let relative = hiber_proto::MAIN_LOG.trim_start_matches('/');
        // The log may move from a layer to the upper directory: look each time, top first.
        let found = std::iter::once(self.runtime.dir(&record.id).upper())
            .chain(record.lowers.iter().cloned())
            .map(|layer| layer.join(relative))
            .find(|path| path.is_file());
        let Some(path) = found else { return Ok(Vec::new()) };
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_to_end(&mut bytes)))
            .map_err(io_error(&path))?;
        Ok(bytes)
    }

    fn stop(&self, key: &str, grace: Duration) -> Result<(), SandboxError> {
        let record = self.runtime.resolve(key)?;
        let dir = self.runtime.dir(&record.id);
        if !dir.status(&record).is_running() {
            return Ok(());
        }
        // SAFETY: kill(2) of the sandbox's init, identified by its start time.
        unsafe { libc::kill(record.init_pid, libc::SIGTERM) };
        if !wait_until(grace, || !dir.status(&record).is_running()) {
            self.kill(&record);
        }
        reap_if_child(record.shim_pid);
        Ok(())
    }

    fn remove(&self, key: &str, force: bool) -> Result<(), SandboxError> {
        let record = self.runtime.resolve(key)?;
        if self.status(&record).is_running() && !force {
            return Err(SandboxError::Running(record.display_name().to_string()));
        }
        self.teardown(&record)
    }

    fn snapshot(&self, key: &str, options: &SnapshotOptions) -> Result<Manifest, SandboxError> {
        self.snapshot_sandbox(key, options)
    }

    fn snapshot_obstacles(&self, key: &str) -> Result<Vec<String>, SandboxError> {
        Ok(self.obstacles(&self.running(key)?))
    }

    fn restore(&self, snapshot: &str, name: Option<&str>) -> Result<SandboxInfo, SandboxError> {
        self.restore_snapshot(snapshot, name)
    }

    fn snapshots(&self) -> Result<Vec<Manifest>, SandboxError> {
        self.recover_snapshots();
        Ok(self.snapshots.list())
    }

    fn find_snapshot(&self, key: &str) -> Result<Manifest, SandboxError> {
        self.recover_snapshots();
        Ok(self.snapshots.manifest(&self.snapshots.resolve(key)?)?)
    }

    fn remove_snapshot(&self, key: &str) -> Result<(), SandboxError> {
        let id = self.snapshots.resolve(key)?;
        self.snapshots.remove(&id)?;
        self.collect_layers()?;
        Ok(())
    }

    fn collect_garbage(&self) -> Result<usize, SandboxError> {
        self.collect_layers()
    }
}
