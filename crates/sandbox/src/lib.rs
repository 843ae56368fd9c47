//! Sandboxes: isolated process trees that hiber can run, enter, stop and
//! remove (and, in the snapshot issue, snapshot and restore).
//!
//! [`Backend`] is the capability every execution backend offers;
//! [`ContainerBackend`] implements it with Linux namespaces, cgroups and an
//! overlayfs root, with `hiber-init` as PID 1.

pub mod cgroup;
pub mod checkpoint;
pub mod client;
pub mod container;
pub mod criu;
pub mod init_layer;
pub mod overlay;
pub mod preflight;
pub mod runtime;
pub mod snapshot;
pub mod spawn;
pub mod spec;
pub mod state;

use std::time::Duration;

use serde::Serialize;

pub use checkpoint::SnapshotOptions;
pub use client::{InitConnection, Output};
pub use container::{ContainerBackend, SandboxError};
pub use snapshot::Manifest;
pub use spec::{Limits, SandboxSpec};
pub use state::{SandboxRecord, Status};

/// A sandbox and its current status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxInfo {
    /// What was saved about it.
    #[serde(flatten)]
    pub record: SandboxRecord,
    /// Whether it runs.
    pub status: Status,
}

/// What an execution backend can do with sandboxes.
pub trait Backend {
    /// The backend's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Creates and starts a sandbox; returns once its init answers.
    fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo, Self::Error>;

    /// Finds a sandbox by name, id or unique id prefix.
    fn find(&self, key: &str) -> Result<SandboxInfo, Self::Error>;

    /// Every sandbox, oldest first.
    fn list(&self) -> Result<Vec<SandboxInfo>, Self::Error>;

    /// Opens a connection to a running sandbox's init, to run commands.
    fn connect(&self, key: &str) -> Result<InitConnection, Self::Error>;

    /// Stops a sandbox: SIGTERM to its init, SIGKILL after `grace`.
    fn stop(&self, key: &str, grace: Duration) -> Result<(), Self::Error>;

    /// Snapshots a running sandbox: every process, its memory, open files
    /// and sockets, and its files. It stops afterwards unless asked to keep
    /// running.
    fn snapshot(&self, key: &str, options: &SnapshotOptions) -> Result<Manifest, Self::Error>;

    /// Starts a new sandbox that carries on exactly where a snapshot was taken.
    fn restore(&self, snapshot: &str, name: Option<&str>) -> Result<SandboxInfo, Self::Error>;

    /// Removes a stopped sandbox (a running one only with `force`), leaving
    /// no process, mount, cgroup or file behind.
    fn remove(&self, key: &str, force: bool) -> Result<(), Self::Error>;
}
