//! The seam every caller goes through: [`Backend`], what it takes ([`SandboxSpec`],
//! [`SnapshotOptions`]) and gives ([`SandboxInfo`], [`Manifest`], [`InitConnection`]), and the one
//! error type of every implementation ([`SandboxError`]).

use std::net::TcpStream;
use std::time::Duration;

use hiber_proto::ProcessSpec;
use serde::{Deserialize, Serialize};

use crate::client::{ClientError, InitConnection};
use crate::resolve::ResolveError;
use crate::snapshot::{Manifest, StoreError};
use crate::spec::{Limits, SandboxSpec, SpecError};

/// What any backend's operations can fail with. Failures of a backend's own machinery (mounts,
/// cgroups, CRIU, a VMM) are [`SandboxError::Backend`], with the backend's error as the source.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Bad parameters.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No sandbox matches.
    #[error("no sandbox '{0}' (see `hiber ps`)")]
    NotFound(String),
    /// An id prefix matches several sandboxes.
    #[error("'{0}' matches several sandboxes: {1}")]
    Ambiguous(String, String),
    /// The name is taken.
    #[error("a sandbox named '{0}' already exists")]
    NameTaken(String),
    /// The image is not there.
    #[error("{0}")]
    Image(String),
    /// The operation needs a stopped sandbox.
    #[error("sandbox {0} is running: stop it first, or use --force")]
    Running(String),
    /// The operation needs a running sandbox.
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    /// The sandbox's init did not come up.
    #[error("sandbox {id} did not start: {reason}")]
    NotReady {
        /// The sandbox.
        id: String,
        /// What was seen.
        reason: String,
    },
    /// Talking to the sandbox's init failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Snapshot store trouble (unknown, corrupt or foreign snapshot).
    #[error(transparent)]
    Snapshot(#[from] StoreError),
    /// A process of the sandbox holds something a snapshot cannot carry; nothing was changed.
    #[error("cannot snapshot sandbox {id}: {}; the sandbox keeps running untouched", summary(obstacles))]
    Uncarriable {
        /// The sandbox.
        id: String,
        /// What holds what, one line each (see [`Backend::snapshot_obstacles`]).
        obstacles: Vec<String>,
    },
    /// The backend cannot do this.
    #[error("the {backend} backend cannot {what}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What was asked.
        what: &'static str,
    },
    /// The backend's own machinery failed.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// The first few obstacles, and how many more there are.
fn summary(obstacles: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = obstacles.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if obstacles.len() > SHOWN {
        text.push_str(&format!(" (and {} more: see `hiber snapshot --check`)", obstacles.len() - SHOWN));
    }
    text
}

impl From<ResolveError> for SandboxError {
    fn from(e: ResolveError) -> SandboxError {
        match e {
            ResolveError::NotFound(key) => SandboxError::NotFound(key),
            ResolveError::Ambiguous(key, ids) => SandboxError::Ambiguous(key, ids),
        }
    }
}

/// A sandbox as every backend describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// 12 lowercase hex digits.
    pub id: String,
    /// The user's name for it, if any.
    pub name: Option<String>,
    /// Its hostname (the name, or the id).
    pub hostname: String,
    /// The image it was created from.
    pub image: String,
    /// The snapshot it was restored from, if any.
    pub from_snapshot: Option<String>,
    /// Resource limits.
    pub limits: Limits,
    /// The main process, if any.
    pub main: Option<ProcessSpec>,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Whether it runs.
    pub status: Status,
}

impl SandboxInfo {
    /// The name if set, else the id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// A sandbox's current status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// Its init is alive.
    Running,
    /// A snapshot stopped it; restoring that snapshot carries on.
    Suspended {
        /// The snapshot.
        snapshot: String,
    },
    /// Its init ended; `code` is unknown when nobody saw it end (e.g. the machine restarted).
    Exited {
        /// Exit code, if known.
        code: Option<i32>,
    },
}

impl Status {
    /// True for [`Status::Running`].
    pub fn is_running(&self) -> bool {
        *self == Status::Running
    }
}

/// How a snapshot treats its sandbox.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    /// The snapshot's name.
    pub name: Option<String>,
    /// Keep the sandbox running (a live checkpoint) instead of stopping it.
    pub leave_running: bool,
}

/// What an execution backend can do with sandboxes and their snapshots.
///
/// Callers hold an `Arc<dyn Backend>` and never name the implementation. Every method blocks;
/// async callers run them on a blocking thread. Keys are a name, an id or a unique id prefix.
/// Every implementation passes the suite in [`crate::conformance`].
pub trait Backend: Send + Sync {
    /// The backend's name (`container`, ...), for messages.
    fn kind(&self) -> &'static str;

    /// Creates and starts a sandbox; returns once its init answers.
    fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo, SandboxError>;

    /// Finds a sandbox.
    fn find(&self, key: &str) -> Result<SandboxInfo, SandboxError>;

    /// Every sandbox, oldest first.
    fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError>;

    /// Opens a connection to a running sandbox's init (to exec, attach, signal or relay). While a
    /// snapshot of the sandbox is under way it waits, then connects to what is left running.
    fn connect(&self, key: &str) -> Result<InitConnection, SandboxError>;

    /// Opens a TCP connection to `port` on the running sandbox's own loopback.
    fn dial(&self, key: &str, port: u16) -> Result<TcpStream, SandboxError>;

    /// The bytes of the sandbox's main log from byte `offset` on (empty when there are none).
    fn main_log(&self, key: &str, offset: u64) -> Result<Vec<u8>, SandboxError>;

    /// Stops a sandbox: SIGTERM to its init, SIGKILL after `grace`.
    fn stop(&self, key: &str, grace: Duration) -> Result<(), SandboxError>;

    /// Removes a stopped sandbox (a running one only with `force`), leaving nothing behind.
    fn remove(&self, key: &str, force: bool) -> Result<(), SandboxError>;

    /// Snapshots a running sandbox: every process, its memory, open files and sockets, and its
    /// files. It stops afterwards unless asked to keep running.
    fn snapshot(&self, key: &str, options: &SnapshotOptions) -> Result<Manifest, SandboxError>;

    /// What in a running sandbox a snapshot could not carry, one line each naming the process
    /// and the resource; empty when it can be snapshotted. [`Backend::snapshot`] refuses such a
    /// sandbox with [`SandboxError::Uncarriable`], before it changes anything.
    fn snapshot_obstacles(&self, key: &str) -> Result<Vec<String>, SandboxError>;

    /// Starts a new sandbox that carries on exactly where a snapshot was taken.
    fn restore(&self, snapshot: &str, name: Option<&str>) -> Result<SandboxInfo, SandboxError>;

    /// Every snapshot, oldest first.
    fn snapshots(&self) -> Result<Vec<Manifest>, SandboxError>;

    /// Finds a snapshot by name, id or unique id prefix.
    fn find_snapshot(&self, key: &str) -> Result<Manifest, SandboxError>;

    /// Removes a snapshot (and whatever only it used). Sandboxes restored from it keep working.
    fn remove_snapshot(&self, key: &str) -> Result<(), SandboxError>;

    /// Removes stored data nothing uses any more (e.g. layers of removed images); returns how
    /// many items went.
    fn collect_garbage(&self) -> Result<usize, SandboxError>;
}
