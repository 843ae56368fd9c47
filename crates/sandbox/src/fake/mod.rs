//! [`FakeBackend`]: sandboxes in memory, for fast tests of code that holds an `Arc<dyn Backend>`
//! (no root, no processes, no files). It implements [`Backend`] faithfully and passes
//! [`crate::conformance`]:
//!
//! - it knows the images it was given ([`FakeBackend::new`] knows `busybox`); names, ids and
//!   prefixes resolve as in the container backend, with the same errors;
//! - [`Backend::connect`] gives an [`InitConnection`] to a fake init that speaks hiber-init's real
//!   protocol (`Ping`, `Exec`, `Signal`, `Detach`, `Serve`); `Exec` runs a tiny shell against the
//!   sandbox's in-memory files: `true`, `false`, `echo ARGS`, `cat PATH...` and
//!   `sh -c "STEP; STEP..."` with steps `echo TEXT [> PATH]`, `cat PATH [> PATH]`, `exit N`;
//!   any other program exits 127 saying so on stderr;
//! - a sandbox whose main process is `["fake-agent"]` runs an agent that talks the SDK call
//!   protocol the server's session lifecycle answers (`next_message`, `append`, `sleep`; a
//!   message `{"crash": true}` kills the sandbox): see the `agent` module for the exact calls.
//!   Any other main process just "runs";
//! - a snapshot holds the sandbox's files, execs and agent (its pending call included), so a
//!   restore carries on where it was taken and the next `Serve` gets the same pending call.
//!
//! Test controls: [`FakeBackend::kill`], [`FakeBackend::corrupt_snapshot`],
//! [`FakeBackend::fail_next_create`] and [`FakeBackend::counters`].
//!
//! Every connection has a thread that ends with the connection (and with its sandbox); nothing
//! polls: waits are on a condition variable.

mod agent;
mod init;
mod shell;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use self::agent::AGENT;
use self::init::Inside;
pub use self::init::VERSION;
use crate::backend::{Backend, SandboxError, SandboxInfo, SnapshotOptions, Status};
use crate::client::InitConnection;
use crate::resolve::resolve;
use crate::snapshot::{check_sum, BackendState, FileSum, Manifest, StoreError, FORMAT_VERSION};
use crate::spec::{validate_name, SandboxSpec};

/// The one file of a fake snapshot: the sandbox's inside, as JSON.
const STATE_FILE: &str = "inside.json";

/// The exit status of a sandbox stopped by [`Backend::stop`] (128 + SIGTERM, as hiber-init).
const STOPPED: i32 = 143;

/// The exit status of a sandbox ended by [`FakeBackend::kill`] (128 + SIGKILL).
const KILLED: i32 = 137;

/// What only the fake backend fails with (inside [`SandboxError::Backend`]).
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// A connection's socket pair or thread could not be made.
    #[error("fake backend: cannot open a connection to sandbox {sandbox}: {source}")]
    Connect {
        /// The sandbox.
        sandbox: String,
        /// Why.
        source: io::Error,
    },
}

/// How many operations succeeded, for tests' assertions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sandboxes created ([`Backend::create`]).
    pub creates: u64,
    /// Sandboxes restored ([`Backend::restore`]).
    pub restores: u64,
    /// Snapshots taken ([`Backend::snapshot`]).
    pub snapshots: u64,
}

/// Sandboxes and snapshots in memory. See the [module](self) documentation.
pub struct FakeBackend {
    shared: Arc<Shared>,
}

/// What the backend and the connections' threads share.
struct Shared {
    state: Mutex<State>,
    /// Announces that a connection closed or a snapshot finished.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    images: BTreeSet<String>,
    /// Oldest first.
    sandboxes: Vec<Sandbox>,
    /// Oldest first.
    snapshots: Vec<Stored>,
    fail_next_create: bool,
    counters: Counters,
    next_connection: u64,
}

/// One sandbox.
struct Sandbox {
    info: SandboxInfo,
    inside: Inside,
    /// Open host connections: the fake init's end of each (a clone of what its thread reads).
    connections: HashMap<u64, UnixStream>,
    /// The connection that relays the agent's calls.
    relay: Option<u64>,
    /// A snapshot is under way: connections wait.
    snapshotting: bool,
}

/// One snapshot.
struct Stored {
    manifest: Manifest,
    /// The sandbox's inside as JSON ([`STATE_FILE`]).
    bytes: Vec<u8>,
}

impl Sandbox {
    fn new(info: SandboxInfo, inside: Inside) -> Sandbox {
        Sandbox { info, inside, connections: HashMap::new(), relay: None, snapshotting: false }
    }

    /// The sandbox ends with `status`; every connection closes.
    fn end(&mut self, status: Status) {
        self.info.status = status;
        self.relay = None;
        for stream in self.connections.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Stops connection `conn` being the relay: it takes in what the host sent, then closes.
    fn detach_relay(&mut self, conn: u64) {
        if let Some(stream) = self.connections.get(&conn) {
            let _ = stream.shutdown(Shutdown::Read);
        }
        if self.relay == Some(conn) {
            self.relay = None;
        }
    }

    /// Closes every connection but `keep`; returns the ones closing.
    fn detach(&mut self, keep: Option<u64>) -> Vec<u64> {
        let closing: Vec<u64> = self.connections.keys().copied().filter(|c| Some(*c) != keep).collect();
        for &conn in &closing {
            if self.relay == Some(conn) {
                self.detach_relay(conn);
            } else {
                let _ = self.connections[&conn].shutdown(Shutdown::Both);
            }
        }
        closing
    }
}

impl State {
    fn sandbox_mut(&mut self, id: &str) -> Option<&mut Sandbox> {
        self.sandboxes.iter_mut().find(|s| s.info.id == id)
    }

    /// The running sandbox `id`, if connection `conn` is still open to it.
    fn live_mut(&mut self, id: &str, conn: u64) -> Option<&mut Sandbox> {
        self.sandbox_mut(id).filter(|s| s.info.status.is_running() && s.connections.contains_key(&conn))
    }

    /// The id of the sandbox `key` names.
    fn resolve(&self, key: &str) -> Result<String, SandboxError> {
        Ok(resolve(key, self.sandboxes.iter().map(|s| (s.info.id.as_str(), s.info.name.as_deref())))?)
    }

    /// The sandbox `key` names.
    fn find_mut(&mut self, key: &str) -> Result<&mut Sandbox, SandboxError> {
        let id = self.resolve(key)?;
        Ok(self.sandbox_mut(&id).expect("resolved among these"))
    }

    /// The position of the snapshot `key` names.
    fn snapshot_at(&self, key: &str) -> Result<usize, SandboxError> {
        let id = resolve(key, self.snapshots.iter().map(|s| (s.manifest.id.as_str(), s.manifest.name.as_deref())))
            .map_err(StoreError::from)?;
        Ok(self.snapshots.iter().position(|s| s.manifest.id == id).expect("resolved among these"))
    }

    /// Refuses a new sandbox's name when a sandbox has it.
    fn check_name(&self, name: Option<&str>) -> Result<(), SandboxError> {
        match name {
            Some(name) if self.sandboxes.iter().any(|s| s.info.name.as_deref() == Some(name)) => {
                Err(SandboxError::NameTaken(name.into()))
            }
            _ => Ok(()),
        }
    }

    /// Refuses a new snapshot's name when a snapshot has it.
    fn check_snapshot_name(&self, name: Option<&str>) -> Result<(), SandboxError> {
        match name {
            Some(name) if self.snapshots.iter().any(|s| s.manifest.name.as_deref() == Some(name)) => {
                Err(StoreError::NameTaken(name.into()).into())
            }
            _ => Ok(()),
        }
    }

    /// A new id, unused by any sandbox or snapshot.
    fn new_id(&self) -> String {
        loop {
            let id = hiber_common::random_id(12);
            let used =
                self.sandboxes.iter().any(|s| s.info.id == id) || self.snapshots.iter().any(|s| s.manifest.id == id);
            if !used {
                return id;
            }
        }
    }

    /// Adds a running sandbox.
    fn launch(&mut self, spec: SandboxSpec, from_snapshot: Option<String>, inside: Inside) -> SandboxInfo {
        let id = self.new_id();
        let info = SandboxInfo {
            hostname: spec.name.clone().unwrap_or_else(|| id.clone()),
            id,
            name: spec.name,
            image: spec.image,
            from_snapshot,
            limits: spec.limits,
            main: spec.main,
            created: hiber_common::unix_secs(),
            status: Status::Running,
        };
        self.sandboxes.push(Sandbox::new(info.clone(), inside));
        info
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `until` holds, releasing the lock meanwhile.
    fn wait_until<'a>(
        &self,
        state: MutexGuard<'a, State>,
        mut until: impl FnMut(&mut State) -> bool,
    ) -> MutexGuard<'a, State> {
        self.changed.wait_while(state, |s| !until(s)).unwrap_or_else(|e| e.into_inner())
    }

    /// Closes every connection of sandbox `id` but `keep`, and waits until they are closed.
    fn detach<'a>(&self, mut state: MutexGuard<'a, State>, id: &str, keep: Option<u64>) -> MutexGuard<'a, State> {
        let Some(sandbox) = state.sandbox_mut(id) else { return state };
        let closing = sandbox.detach(keep);
        self.wait_until(state, |s| {
            s.sandbox_mut(id).is_none_or(|sb| !closing.iter().any(|c| sb.connections.contains_key(c)))
        })
    }

    /// Waits until no snapshot of sandbox `id` is under way; then it is `key`'s sandbox again.
    fn after_snapshots<'a>(
        &self,
        state: MutexGuard<'a, State>,
        id: &str,
        key: &str,
    ) -> Result<MutexGuard<'a, State>, SandboxError> {
        let mut state = self.wait_until(state, |s| s.sandbox_mut(id).is_none_or(|sb| !sb.snapshotting));
        match state.sandbox_mut(id) {
            Some(_) => Ok(state),
            None => Err(SandboxError::NotFound(key.into())),
        }
    }
}

impl FakeBackend {
    /// A backend that knows the image `busybox`, with no sandboxes or snapshots.
    pub fn new() -> FakeBackend {
        FakeBackend { shared: Arc::new(Shared { state: Mutex::default(), changed: Condvar::new() }) }
            .with_image("busybox")
    }

    /// This backend, knowing image `name` too.
    pub fn with_image(self, name: &str) -> FakeBackend {
        self.shared.lock().images.insert(name.into());
        self
    }

    /// Makes sandbox `key` die as if its init crashed: it becomes `Exited` (status 137) and every
    /// connection to it closes. Fails if it is not running.
    pub fn kill(&self, key: &str) -> Result<(), SandboxError> {
        let mut state = self.shared.lock();
        let sandbox = state.find_mut(key)?;
        if !sandbox.info.status.is_running() {
            return Err(SandboxError::NotRunning(sandbox.info.id.clone()));
        }
        sandbox.end(Status::Exited { code: Some(KILLED) });
        Ok(())
    }

    /// Damages snapshot `key`: it is still listed, but restoring it fails with
    /// [`StoreError::Corrupt`] (its state no longer matches its checksum).
    pub fn corrupt_snapshot(&self, key: &str) -> Result<(), SandboxError> {
        let mut state = self.shared.lock();
        let at = state.snapshot_at(key)?;
        if let Some(byte) = state.snapshots[at].bytes.first_mut() {
            *byte ^= 0xff;
        }
        Ok(())
    }

    /// Makes the next [`Backend::create`] whose spec is valid fail with
    /// [`SandboxError::NotReady`], as when a sandbox's init does not come up.
    pub fn fail_next_create(&self) {
        self.shared.lock().fail_next_create = true;
    }

    /// How many creates, restores and snapshots succeeded so far.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters
    }
}

impl Default for FakeBackend {
    fn default() -> FakeBackend {
        FakeBackend::new()
    }
}

impl Drop for FakeBackend {
    /// Every sandbox ends with the backend: their connections close and their threads end.
    fn drop(&mut self) {
        for sandbox in &mut self.shared.lock().sandboxes {
            sandbox.end(Status::Exited { code: None });
        }
    }
}

impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo, SandboxError> {
        if let Some(name) = &spec.name {
            validate_name(name)?;
        }
        let mut state = self.shared.lock();
        if !state.images.contains(&spec.image) {
            let known: Vec<&str> = state.images.iter().map(String::as_str).collect();
            return Err(SandboxError::Image(format!(
                "no image '{}' (the fake backend has: {})",
                spec.image,
                known.join(", ")
            )));
        }
        state.check_name(spec.name.as_deref())?;
        if std::mem::take(&mut state.fail_next_create) {
            let reason = "FakeBackend::fail_next_create asked this create to fail".into();
            return Err(SandboxError::NotReady { id: state.new_id(), reason });
        }
        let inside = Inside::boot(spec.main.as_ref());
        state.counters.creates += 1;
        Ok(state.launch(spec, None, inside))
    }

    fn find(&self, key: &str) -> Result<SandboxInfo, SandboxError> {
        Ok(self.shared.lock().find_mut(key)?.info.clone())
    }

    fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        Ok(self.shared.lock().sandboxes.iter().map(|s| s.info.clone()).collect())
    }

    fn connect(&self, key: &str) -> Result<InitConnection, SandboxError> {
        let state = self.shared.lock();
        let id = state.resolve(key)?;
        let mut state = self.shared.after_snapshots(state, &id, key)?;
        let failed = |source| SandboxError::Backend(Box::new(FakeError::Connect { sandbox: id.clone(), source }));
        let (host, inside) = UnixStream::pair().map_err(failed)?;
        let registered = inside.try_clone().map_err(failed)?;
        let conn = state.next_connection;
        state.next_connection += 1;
        let sandbox = state.sandbox_mut(&id).expect("waited for it");
        if !sandbox.info.status.is_running() {
            return Err(SandboxError::NotRunning(id));
        }
        sandbox.connections.insert(conn, registered);
        let shared = self.shared.clone();
        let thread_id = id.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("fake-init-{id}"))
            .spawn(move || init::connection(shared, thread_id, conn, inside));
        if let Err(e) = spawned {
            sandbox.connections.remove(&conn);
            return Err(failed(e));
        }
        Ok(InitConnection::new(host))
    }

    fn dial(&self, _key: &str, _port: u16) -> Result<TcpStream, SandboxError> {
        Err(SandboxError::Unsupported { backend: "fake", what: "dial a sandbox's ports" })
    }

    fn main_log(&self, key: &str, offset: u64) -> Result<Vec<u8>, SandboxError> {
        let mut state = self.shared.lock();
        let log = &state.find_mut(key)?.inside.main_log;
        Ok(log.get(usize::try_from(offset).unwrap_or(usize::MAX)..).unwrap_or_default().to_vec())
    }

    fn stop(&self, key: &str, _grace: Duration) -> Result<(), SandboxError> {
        let mut state = self.shared.lock();
        let sandbox = state.find_mut(key)?;
        if sandbox.info.status.is_running() {
            sandbox.end(Status::Exited { code: Some(STOPPED) });
        }
        Ok(())
    }

    fn remove(&self, key: &str, force: bool) -> Result<(), SandboxError> {
        let mut state = self.shared.lock();
        let sandbox = state.find_mut(key)?;
        if sandbox.info.status.is_running() && !force {
            return Err(SandboxError::Running(sandbox.info.display_name().to_string()));
        }
        sandbox.end(Status::Exited { code: Some(KILLED) });
        let id = sandbox.info.id.clone();
        state.sandboxes.retain(|s| s.info.id != id);
        self.shared.changed.notify_all();
        Ok(())
    }

    fn snapshot_obstacles(&self, key: &str) -> Result<Vec<String>, SandboxError> {
        let info = self.find(key)?;
        match info.status.is_running() {
            // Its processes are simulated: they hold nothing a snapshot could not carry.
            true => Ok(Vec::new()),
            false => Err(SandboxError::NotRunning(info.id)),
        }
    }

    fn snapshot(&self, key: &str, options: &SnapshotOptions) -> Result<Manifest, SandboxError> {
        let state = self.shared.lock();
        let id = state.resolve(key)?;
        let mut state = self.shared.after_snapshots(state, &id, key)?;
        state.check_snapshot_name(options.name.as_deref())?;
        let sandbox = state.sandbox_mut(&id).expect("waited for it");
        if !sandbox.info.status.is_running() {
            return Err(SandboxError::NotRunning(id));
        }
        // As hiber-init's Detach: the host's connections close first (the relay after taking in
        // the answers already sent); new ones wait.
        sandbox.snapshotting = true;
        let mut state = self.shared.detach(state, &id, None);
        let Some(sandbox) = state.sandbox_mut(&id) else { return Err(SandboxError::NotFound(key.into())) };
        sandbox.snapshotting = false;
        self.shared.changed.notify_all();
        if !sandbox.info.status.is_running() {
            return Err(SandboxError::NotRunning(id));
        }
        let bytes = serde_json::to_vec(&sandbox.inside).expect("a fake sandbox's inside serializes");
        let info = sandbox.info.clone();
        let snapshot = state.new_id();
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: snapshot.clone(),
            name: options.name.clone(),
            parent: info.from_snapshot.clone(),
            source_sandbox: info.id.clone(),
            image: info.image.clone(),
            hostname: info.hostname.clone(),
            limits: info.limits,
            main: info.main.clone(),
            hiber_version: env!("CARGO_PKG_VERSION").to_string(),
            created: hiber_common::unix_secs(),
            files: vec![FileSum {
                path: STATE_FILE.into(),
                size: bytes.len() as u64,
                blake3: blake3::hash(&bytes).to_hex().to_string(),
            }],
            backend: BackendState::Memory,
        };
        // Checked again: the lock was let go while the connections closed.
        state.check_snapshot_name(options.name.as_deref())?;
        if !options.leave_running {
            let sandbox = state.sandbox_mut(&id).expect("still there");
            sandbox.end(Status::Suspended { snapshot });
        }
        state.snapshots.push(Stored { manifest: manifest.clone(), bytes });
        state.counters.snapshots += 1;
        Ok(manifest)
    }

    fn restore(&self, snapshot: &str, name: Option<&str>) -> Result<SandboxInfo, SandboxError> {
        if let Some(name) = name {
            validate_name(name)?;
        }
        let mut state = self.shared.lock();
        let stored = &state.snapshots[state.snapshot_at(snapshot)?];
        let manifest = &stored.manifest;
        for sum in &manifest.files {
            let found = (stored.bytes.len() as u64, blake3::hash(&stored.bytes).to_hex().to_string());
            check_sum(&manifest.id, sum, Ok(found))?;
        }
        let inside: Inside = serde_json::from_slice(&stored.bytes).map_err(|e| StoreError::Corrupt {
            id: manifest.id.clone(),
            path: STATE_FILE.into(),
            problem: format!("cannot be read: {e}"),
        })?;
        let spec = SandboxSpec {
            name: name.map(str::to_string),
            image: manifest.image.clone(),
            limits: manifest.limits,
            main: manifest.main.clone(),
            confinement: Default::default(),
        };
        let from = manifest.id.clone();
        state.check_name(name)?;
        state.counters.restores += 1;
        Ok(state.launch(spec, Some(from), inside))
    }

    fn snapshots(&self) -> Result<Vec<Manifest>, SandboxError> {
        Ok(self.shared.lock().snapshots.iter().map(|s| s.manifest.clone()).collect())
    }

    fn find_snapshot(&self, key: &str) -> Result<Manifest, SandboxError> {
        let state = self.shared.lock();
        Ok(state.snapshots[state.snapshot_at(key)?].manifest.clone())
    }

    fn remove_snapshot(&self, key: &str) -> Result<(), SandboxError> {
        let mut state = self.shared.lock();
        let at = state.snapshot_at(key)?;
        state.snapshots.remove(at);
        Ok(())
    }

    fn collect_garbage(&self) -> Result<usize, SandboxError> {
        Ok(0)
    }
}
