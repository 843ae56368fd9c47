//! Finding CRIU and checking its version (hiber needs 4.2 or newer: older
//! releases fail on current kernels).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest CRIU that works: 3.17 cannot read the vdso of kernels >= 6.x
/// here, and 4.1 cannot dump TCP sockets on kernels >= 6.16.
pub const MIN_VERSION: (u32, u32) = (4, 2);

/// Where the project's set-up installs CRIU.
pub const INSTALLED: &str = "/opt/hiber/bin/criu";

/// Errors finding CRIU.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    /// No CRIU binary was found.
    #[error("CRIU not found (looked at $HIBER_CRIU, {INSTALLED} and PATH): run scripts/setup.sh")]
    Missing,
    /// CRIU is too old.
    #[error("CRIU {found} at {path} is too old: hiber needs {}.{} or newer (run scripts/setup.sh)", MIN_VERSION.0, MIN_VERSION.1)]
    TooOld {
        /// The binary.
        path: PathBuf,
        /// Its version.
        found: String,
    },
    /// CRIU did not report a version.
    #[error("cannot read the version of {0}")]
    NoVersion(PathBuf),
}

/// A usable CRIU binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criu {
    /// Path of the executable.
    pub path: PathBuf,
    /// Its version, e.g. `4.2.1`.
    pub version: String,
}

impl Criu {
    /// Finds CRIU: `$HIBER_CRIU`, then [`INSTALLED`], then `criu` on PATH.
    pub fn locate() -> Result<Criu, CriuError> {
        let search_path = std::env::var_os("PATH").unwrap_or_default();
        let mut candidates = std::env::var_os("HIBER_CRIU")
            .map(PathBuf::from)
            .into_iter()
            .chain([PathBuf::from(INSTALLED)])
            .chain(std::env::split_paths(&search_path).map(|d| d.join("criu")));
        let path = candidates.find(|p| p.is_file()).ok_or(CriuError::Missing)?;
        Self::check(&path)
    }

    fn check(path: &Path) -> Result<Criu, CriuError> {
        let out = Command::new(path).arg("--version").output().map_err(|_| CriuError::NoVersion(path.into()))?;
        let version = parse_version(&String::from_utf8_lossy(&out.stdout)).ok_or(CriuError::NoVersion(path.into()))?;
        if version_at_least(&version, MIN_VERSION) {
            Ok(Criu { path: path.into(), version })
        } else {
            Err(CriuError::TooOld { path: path.into(), found: version })
        }
    }
}

/// Extracts `4.2.1` from `criu --version` output (`Version: 4.2.1`).
fn parse_version(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("Version:")).map(|v| v.trim().to_string())
}

fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared() {
        assert_eq!(parse_version("Version: 4.2.1\nGitID: v4.2.1\n").as_deref(), Some("4.2.1"));
        assert_eq!(parse_version("nothing"), None);
        assert!(version_at_least("4.2.1", MIN_VERSION));
        assert!(version_at_least("5.0", MIN_VERSION));
        assert!(!version_at_least("4.1", MIN_VERSION));
        assert!(!version_at_least("3.17", MIN_VERSION));
    }
}
