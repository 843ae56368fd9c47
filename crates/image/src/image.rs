//! The image manifest and image names.

use serde::{Deserialize, Serialize};

use crate::layer::LayerId;

/// An image: a named, ordered stack of layers. Stored as `HOME/images/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image's name (see [`validate_name`]).
    pub name: String,
    /// Layers, bottom-most first.
    pub layers: Vec<LayerId>,
    /// When the image was made, in seconds since the Unix epoch.
    pub created: u64,
    /// Bytes the layers occupy on disk.
    pub size_bytes: u64,
    /// Where the image came from, e.g. `busybox 1:1.35.0-4`, `debootstrap bookworm minbase`,
    /// `import /path`.
    pub source: String,
    /// Whether the layers' owners are stored shifted into the sandboxes' id range
    /// ([`crate::ids`]). Images made before sandboxes had user namespaces are not, and must be
    /// made again.
    #[serde(default)]
    pub shifted_ids: bool,
    /// How a sandbox of the image runs unless told otherwise (from an OCI image's
    /// configuration; empty for hiber's own images).
    #[serde(default, skip_serializing_if = "ImageConfig::is_empty")]
    pub config: ImageConfig,
}

/// The run defaults an image carries (an OCI configuration's `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `NAME=value` entries added to the environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The command's first words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// The command when none is given (or the entrypoint's arguments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// The working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
}

impl ImageConfig {
    /// True when it sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == ImageConfig::default()
    }
}

/// An image name that does not match `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid image name '{0}': use 1 to 64 characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit"
)]
pub struct NameError(pub String);

/// Checks that `name` matches `[a-z0-9][a-z0-9._-]{0,63}`, so it is a safe file name.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let first_ok = bytes.first().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && bytes.len() <= 64 {
        Ok(())
    } else {
        Err(NameError(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        let long = "a".repeat(64);
        for name in ["busybox", "debian", "0", "my-app_1.2", "9.x", long.as_str()] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        let long = "a".repeat(65);
        for name in ["", ".", "..", ".hidden", "-x", "_x", "Busybox", "a/b", "../x", "a b", "é", "a\0", long.as_str()]
        {
            assert!(validate_name(name).is_err(), "{name:?}");
        }
        let msg = validate_name("A").unwrap_err().to_string();
        assert!(msg.starts_with("invalid image name 'A'") && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let image = Image {
            name: "busybox".into(),
            layers: vec![LayerId::parse("0123456789abcdef").unwrap()],
            created: 1_700_000_000,
            size_bytes: 2_000_000,
            source: "busybox 1:1.35.0-4".into(),
            shifted_ids: true,
            config: ImageConfig::default(),
        };
        let json = serde_json::to_string(&image).unwrap();
        assert_eq!(serde_json::from_str::<Image>(&json).unwrap(), image);
        let bad = json.replace("0123456789abcdef", "../../../etc");
        assert!(serde_json::from_str::<Image>(&bad).is_err());
        let old = json.replace(",\"shifted_ids\":true", "");
        assert!(!serde_json::from_str::<Image>(&old).unwrap().shifted_ids, "an old manifest: {old}");
    }
}
