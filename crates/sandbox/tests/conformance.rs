//! Every backend passes [`hiber_sandbox::conformance`]: the fake one (with the `fake` feature)
//! anywhere, the container one where it can run — root, cgroups, overlayfs, a built hiber-init
//! and CRIU; otherwise its tests say why and pass, except under CI (`CI` set), where a missing
//! prerequisite fails them.

use std::ops::Deref;
use std::process::Command;

use hiber_sandbox::{backend_conformance, preflight, Backend, ContainerBackend};

#[cfg(feature = "fake")]
backend_conformance!(fake, Some(Box::new(hiber_sandbox::fake::FakeBackend::new())), "busybox");

backend_conformance!(container, ContainerHome::new(), "busybox");

/// A container backend on a home of its own under /var/tmp, with the busybox image. Dropped, it
/// leaves nothing: its sandboxes (with their mounts and cgroups) and the home go.
struct ContainerHome {
    backend: ContainerBackend,
    home: tempfile::TempDir,
}

impl ContainerHome {
    /// A new home, or `None` (saying why) when this machine cannot snapshot containers.
    fn new() -> Option<ContainerHome> {
        if !preflight::require("container conformance", preflight::SNAPSHOTS) {
            return None;
        }
        let home = tempfile::Builder::new().prefix("hiber-conformance-").tempdir_in("/var/tmp").expect("temp home");
        let images = hiber_image::ImageStore::open(home.path()).expect("image store");
        images.build_busybox(&mut |_| {}).expect("busybox image");
        let backend = ContainerBackend::open(home.path()).expect("container backend");
        Some(ContainerHome { backend, home })
    }
}

impl Deref for ContainerHome {
    type Target = ContainerBackend;

    fn deref(&self) -> &ContainerBackend {
        &self.backend
    }
}

impl Drop for ContainerHome {
    fn drop(&mut self) {
        for sandbox in self.backend.list().unwrap_or_default() {
            let _ = self.backend.remove(&sandbox.id, true);
        }
        // Anything still mounted below the home (a failed check) must not stay.
        for target in hiber_common::fs::mounts_under(self.home.path()).unwrap_or_default() {
            let _ = Command::new("umount").arg("-l").arg(&target).status();
        }
    }
}
