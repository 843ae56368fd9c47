//! A snapshot's manifest: everything needed to restore it, and the checksum of every file it
//! holds. Written last; a snapshot without one does not exist.
//!
//! The format's version is checked here and only here ([`Manifest::from_json`]): a newer format
//! is refused, an older one is upgraded in memory.

use hiber_proto::ProcessSpec;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::spec::Limits;

/// The manifest format this hiber writes; it reads this one and older.
///
/// 1: CRIU's version and the layers at the top level. 2: those in [`BackendState`].
pub const FORMAT_VERSION: u32 = 2;

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not a manifest (not JSON, missing or mistyped fields).
    #[error("{0}")]
    Unreadable(String),
    /// Written by a newer hiber.
    #[error("format version {0}, newer than this hiber reads ({FORMAT_VERSION}): upgrade hiber")]
    FromTheFuture(u64),
}

/// The saved description of one snapshot (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// 12 lowercase hex digits.
    pub id: String,
    /// The user's name for it, if any.
    pub name: Option<String>,
    /// The snapshot the source sandbox was restored from, if any.
    pub parent: Option<String>,
    /// The sandbox it was taken of.
    pub source_sandbox: String,
    /// The image the sandbox started from, for display.
    pub image: String,
    /// The sandbox's hostname.
    pub hostname: String,
    /// Its resource limits.
    pub limits: Limits,
    /// Its main process, if any.
    pub main: Option<ProcessSpec>,
    /// hiber's version when snapshotting.
    pub hiber_version: String,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Every file of the snapshot but the manifest, with its checksum (filled when sealing).
    pub files: Vec<FileSum>,
    /// What only the backend that took it knows.
    pub backend: BackendState,
}

/// The backend-specific part of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendState {
    /// A container checkpointed by CRIU on overlay layers.
    Container {
        /// CRIU's version when dumping.
        criu_version: String,
        /// Layer ids under `HOME/layers`, top-most first: the sandbox's files at snapshot time,
        /// then everything below them.
        layers: Vec<String>,
        /// Whether the tree ran in a user namespace of its own (false in snapshots from before
        /// hiber gave sandboxes one: they restore into the host's).
        #[serde(default)]
        user_namespace: bool,
    },
    /// Kept in memory by the fake backend that tests use (`hiber_sandbox::fake`).
    Memory,
}

/// The size and hash of one file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Path relative to the snapshot (e.g. `criu/pages-1.img`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 hash, hex.
    pub blake3: String,
}

impl Manifest {
    /// Parses a manifest of this format or an older one.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let unreadable = |e: serde_json::Error| ManifestError::Unreadable(e.to_string());
        let mut value: Value = serde_json::from_slice(bytes).map_err(unreadable)?;
        let version = value
            .get("format_version")
            .and_then(Value::as_u64)
            .ok_or_else(|| ManifestError::Unreadable("no format_version".into()))?;
        match version {
            1 => upgrade_from_1(&mut value),
            2 => {}
            v if v > FORMAT_VERSION as u64 => return Err(ManifestError::FromTheFuture(v)),
            v => return Err(ManifestError::Unreadable(format!("unknown format version {v}"))),
        }
        serde_json::from_value(value).map_err(unreadable)
    }

    /// Bytes held by the snapshot's own files (not counting shared layers).
    pub fn size_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The name if set, else the id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// Version 1 (only the container backend existed): CRIU's version and the layers move into the
/// backend part; `context_seq`, which nothing read, goes.
fn upgrade_from_1(value: &mut Value) {
    if let Some(fields) = value.as_object_mut() {
        let criu_version = fields.remove("criu_version").unwrap_or(Value::Null);
        let layers = fields.remove("layers").unwrap_or(Value::Null);
        fields.remove("context_seq");
        fields.insert("backend".into(), json!({"kind": "container", "criu_version": criu_version, "layers": layers}));
        fields.insert("format_version".into(), json!(FORMAT_VERSION));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest written by hiber before format 2 (a real snapshot of a busybox sandbox).
    const V1: &[u8] = include_bytes!("fixtures/manifest-v1.json");

    #[test]
    fn version_1_manifests_are_read_with_their_container_part() {
        let m = Manifest::from_json(V1).unwrap();
        assert_eq!((m.format_version, m.id.as_str(), m.name.as_deref()), (2, "9d2686a3ff0e", Some("v1snap")));
        let BackendState::Container { criu_version, layers, user_namespace } = &m.backend else {
            panic!("{:?}", m.backend)
        };
        assert_eq!(criu_version, "4.2.1");
        assert!(!user_namespace, "snapshots from before user namespaces restore into the host's");
        assert_eq!(layers, &["1f26876a85ca1447", "hiber-init-28937adb02591c8d", "da589b2494991787"]);
        assert_eq!(m.files.first().map(|f| f.path.as_str()), Some("criu/cgroup.img"));
        assert_eq!(m.main.as_ref().map(|p| p.argv[0].as_str()), Some("sh"));
        // Written back, it is a version 2 manifest that reads the same.
        let again = Manifest::from_json(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(again, m);
        assert_eq!(serde_json::to_value(&m).unwrap()["backend"]["kind"], "container");
    }

    #[test]
    fn future_unknown_and_garbled_manifests_are_refused() {
        let mut value: Value = serde_json::from_slice(V1).unwrap();
        value["format_version"] = 3.into();
        let err = Manifest::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::FromTheFuture(3)), "{err}");
        value["format_version"] = 0.into();
        assert!(Manifest::from_json(value.to_string().as_bytes()).unwrap_err().to_string().contains("unknown format"));
        assert!(matches!(Manifest::from_json(b"{ not json"), Err(ManifestError::Unreadable(_))));
        assert!(Manifest::from_json(b"{}").unwrap_err().to_string().contains("no format_version"));
        value["format_version"] = 2.into(); // a version 1 body under a version 2 label
        assert!(matches!(Manifest::from_json(value.to_string().as_bytes()), Err(ManifestError::Unreadable(_))));
    }
}
