//! The parts of the OCI image specification (and of `docker save`'s `manifest.json`) that an
//! import reads, as plain serde structs. Unknown fields are ignored.

use serde::Deserialize;

/// `application/vnd.oci.image.index.v1+json` (also `index.json` of a layout).
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker's manifest list, the index's older twin.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// `application/vnd.oci.image.manifest.v1+json`.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A reference to a blob.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The platform an index entry is for.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An operating system and architecture.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
}

/// An image index: manifests for several platforms (or nested indexes).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Its entries.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest: its config and its layers, bottom-most first.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// What the document is (absent in some older manifests).
    #[serde(default)]
    pub media_type: String,
    /// The image configuration blob.
    pub config: Descriptor,
    /// The layer blobs.
    pub layers: Vec<Descriptor>,
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerSaved {
    /// The config's path in the archive.
    pub config: String,
    /// The layers' paths in the archive (uncompressed tars), bottom-most first.
    pub layers: Vec<String>,
}

/// An image configuration.
#[derive(Debug, Deserialize)]
pub struct Configuration {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// How a container of the image runs.
    #[serde(default)]
    pub config: RunConfig,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

impl Configuration {
    /// `os/architecture` when the image is not for [`PLATFORM`].
    pub fn foreign_platform(&self) -> Option<String> {
        ((self.os.as_str(), self.architecture.as_str()) != PLATFORM)
            .then(|| format!("{}/{}", self.os, self.architecture))
    }
}

/// The run defaults of an image configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `NAME=value` entries.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// The command's first words.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The command (or the entrypoint's arguments).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// The working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
}

/// The configuration's `rootfs`.
#[derive(Debug, Deserialize)]
pub struct RootFs {
    /// `sha256:<hex>` of each layer's uncompressed tar, bottom-most first.
    pub diff_ids: Vec<String>,
}

/// The platform hiber runs images for.
pub const PLATFORM: (&str, &str) = ("linux", "amd64");

impl Index {
    /// The entry for [`PLATFORM`] (or one that names no platform); otherwise the platforms the
    /// index has, as `os/architecture, ...`.
    pub fn for_this_platform(&self) -> Result<&Descriptor, String> {
        let fits =
            |d: &&Descriptor| d.platform.as_ref().is_none_or(|p| (p.os.as_str(), p.architecture.as_str()) == PLATFORM);
        self.manifests.iter().find(fits).ok_or_else(|| {
            let found: Vec<String> = self
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            found.join(", ")
        })
    }
}

/// The `sha256:<hex>` digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// The hex part of a `sha256:` digest, if it is one.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_must_be_lowercase_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        for bad in [format!("sha512:{hex}"), format!("sha256:{}", "A".repeat(64)), "sha256:abc".into(), hex.clone()] {
            assert_eq!(sha256_hex(&bad), None, "{bad}");
        }
    }

    #[test]
    fn configurations_parse_with_missing_defaults() {
        let config: Configuration = serde_json::from_str(
            r#"{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Unknown": 1}}"#,
        )
        .unwrap();
        assert_eq!(config.config.env.unwrap(), ["PATH=/bin"]);
        assert_eq!(config.config.cmd.unwrap(), ["sh"]);
        assert!(config.config.entrypoint.is_none() && config.config.user.is_none());
    }
}
