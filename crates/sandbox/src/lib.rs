//! Sandboxes: isolated process trees that hiber runs, enters, snapshots, restores and removes.
//!
//! [`Backend`] is the one way in: callers hold an `Arc<dyn Backend>`. [`ContainerBackend`]
//! implements it with Linux namespaces, cgroups, an overlayfs root and CRIU, with `hiber-init`
//! as PID 1; with the `fake` feature, `fake::FakeBackend` implements it in memory for tests
//! that need no root. Both pass [`conformance`], which is always compiled so that any backend's
//! tests can run it. Snapshots go through the [`SnapshotStore`] seam.

mod backend;
mod client;
pub mod conformance;
mod container;
#[cfg(feature = "fake")]
pub mod fake;
mod resolve;
mod snapshot;
mod spec;

pub use backend::{Backend, SandboxError, SandboxInfo, SnapshotOptions, Status};
pub use client::{Channel, ClientError, InitConnection, Output};
pub use container::{dial_in_netns, preflight, ContainerBackend, ContainerError, Criu, CriuError, HostView};
pub use snapshot::conformance as snapshot_conformance;
pub use snapshot::{
    BackendState, FileSum, Leftover, LocalSnapshots, Manifest, ManifestError, Pending, SnapshotStore, StoreError,
    FORMAT_VERSION,
};
pub use spec::{
    validate_name, with_image_defaults, with_image_environment, Capabilities, Confinement, Limits, SandboxSpec,
    Seccomp, SpecError,
};
