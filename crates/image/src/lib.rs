//! Images and layers.
//!
//! A *layer* is an immutable root-filesystem tree under `HOME/layers/<id>/`; an *image* is a
//! manifest under `HOME/images/<name>.json` naming an ordered stack of layers (bottom to top).
//!
//! - [`LayerStore`] creates layers through a [`Staging`] directory (finished with a rename),
//!   adopts directories already on the same filesystem (a sandbox's upper dir), and removes them.
//! - [`ImageStore`] lists, reads and removes images and builds them: from the host's
//!   busybox-static, from a per-machine cached Debian debootstrap, or by importing a directory or
//!   a tarball.
//!
//! Layers are stored with their owners shifted into the range sandboxes see as `0..65536`
//! ([`ids`]), so every sandbox can share them.
//!
//! Manifests are written atomically: an image exists completely or not at all.

#![warn(missing_docs)]

mod build;
mod busybox;
mod copy;
mod debian;
pub mod ids;
mod image;
mod import;
mod layer;
mod mirror;
mod oci;
mod squash;
mod store;
mod xattr;

pub use build::{parse_build_file, BuildError, Step};
pub use busybox::BusyboxError;
pub use copy::CopyError;
pub use debian::DebianError;
pub use image::{validate_name, Image, ImageConfig, NameError};
pub use import::ImportError;
pub use layer::{LayerError, LayerId, LayerStore, Staging};
pub use mirror::MirrorError;
pub use oci::{spec as oci_spec, OciError};
pub use store::{ImageStore, StoreError};
