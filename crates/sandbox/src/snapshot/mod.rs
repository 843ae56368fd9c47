//! Snapshots of sandboxes: the manifest format and the on-disk store.

pub mod manifest;
pub mod store;

pub use manifest::{FileSum, Manifest, FORMAT_VERSION};
pub use store::{Journal, Leftover, Pending, SnapshotStore, StoreError};
