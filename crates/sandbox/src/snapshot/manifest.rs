//! A snapshot's manifest: everything needed to restore it, and the checksum
//! of every file it holds. Written last; a snapshot without one does not exist.

use hiber_proto::ProcessSpec;
use serde::{Deserialize, Serialize};

use crate::spec::Limits;

/// The manifest format this hiber writes; it reads this one and older.
pub const FORMAT_VERSION: u32 = 1;

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
    /// Layer directory names under `HOME/layers`, top-most first: the
    /// sandbox's files at snapshot time, then everything below them.
    pub layers: Vec<String>,
    /// The sandbox's hostname.
    pub hostname: String,
    /// Its resource limits.
    pub limits: Limits,
    /// Its main process, if any.
    pub main: Option<ProcessSpec>,
    /// The position in the session's context log the sandbox had seen, for
    /// snapshots taken by the session server.
    #[serde(default)]
    pub context_seq: Option<u64>,
    /// CRIU's version when dumping.
    pub criu_version: String,
    /// hiber's version when dumping.
    pub hiber_version: String,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Every file of the snapshot directory but the manifest.
    pub files: Vec<FileSum>,
}

/// The size and hash of one file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Path relative to the snapshot directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 hash, hex.
    pub blake3: String,
}

impl Manifest {
    /// Bytes held by the snapshot's own files (not counting shared layers).
    pub fn size_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The name if set, else the id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}
