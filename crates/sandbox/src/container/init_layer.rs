//! hiber's own read-only layer, the top of every sandbox's layer stack:
//! hiber-init at [`hiber_proto::INIT_PATH`], the in-sandbox Python SDK at
//! [`SDK_PATH`], the device nodes of a minimal `/dev`, and the mount points
//! the sandbox needs, all owned by the sandboxes' root ([`hiber_image::ids`]).
//! Named after a hash of the hiber-init binary, the SDK and the id mapping,
//! made once and never changed, so snapshots can rely on it.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use hiber_image::ids;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// Errors preparing the layer.
#[derive(Debug, thiserror::Error)]
pub enum InitLayerError {
    /// The hiber-init binary was not found.
    #[error("hiber-init not found at {0} (build it with `cargo build`, or set HIBER_INIT)")]
    MissingBinary(PathBuf),
    /// Writing the layer failed.
    #[error("preparing hiber's layer at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// Character devices of the sandbox's `/dev`: name, major, minor.
const DEVICES: [(&str, u64, u64); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// Symbolic links of the sandbox's `/dev`: name, target.
const DEV_LINKS: [(&str, &str); 5] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Where the in-sandbox SDK (`import hiber`) goes: a directory on Debian's
/// python3 `sys.path`.
pub const SDK_PATH: &str = "/usr/lib/python3/dist-packages/hiber.py";

/// The in-sandbox SDK's source.
const SDK_MODULE: &str = include_str!("../../../../sdk/agent/hiber.py");

/// Directories and their modes.
const DIRS: [(&str, u32); 14] = [
    (".hiber", 0o755),
    (super::proc_masks::EMPTY_DIR, 0o555),
    ("dev", 0o755),
    ("dev/pts", 0o755),
    ("dev/shm", 0o1777),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("run/hiber", 0o755),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/lib", 0o755),
    ("usr/lib/python3", 0o755),
    ("usr/lib/python3/dist-packages", 0o755),
];

/// Finds the hiber-init binary: `$HIBER_INIT`, else next to the running
/// executable (or one level up, for test binaries in `deps/`).
pub fn locate_binary() -> Result<PathBuf, InitLayerError> {
    if let Some(path) = std::env::var_os("HIBER_INIT") {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(InitLayerError::MissingBinary(path)) };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join("hiber-init"), dir.join("../hiber-init")];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| InitLayerError::MissingBinary(candidates[0].clone()))
}

/// Who `binary` is on disk (device, inode, size, modification time) and
/// which SDK and layout go with it: while that stays the same, its layer's name (a
/// content hash) is read from a cache instead of hashing megabytes again.
fn identity(binary: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(binary).ok()?;
    let rest = blake3::hash(format!("{SDK_MODULE}{}", layout()).as_bytes()).to_hex();
    Some(format!("{} {} {} {}.{} {}", m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec(), &rest[..16]))
}

/// How the names of hiber's own layers begin.
const PREFIX: &str = "hiber-init-";

/// Whether a layer named `name` is one of hiber's own (every sandbox's lowest layer above its
/// image: the layers above it in a stack are snapshot layers).
pub fn is_init_layer(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// The layer name cached for `identity`, if the cache holds it.
fn cached(cache: &Path, identity: Option<&str>) -> Option<String> {
    let text = fs::read_to_string(cache).ok()?;
    let (cached_identity, name) = text.split_once('\t')?;
    let valid = Some(cached_identity) == identity && is_init_layer(name) && !name.contains('/');
    valid.then(|| name.to_string())
}

/// Returns the layer for `binary` (and this build's SDK) under `layers_dir`,
/// making it if needed.
pub fn ensure(layers_dir: &Path, binary: &Path) -> Result<PathBuf, InitLayerError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| InitLayerError::Io { path, source }
    };
    let cache = layers_dir.join(".hiber-init.cache");
    let identity = identity(binary);
    if let Some(layer) = cached(&cache, identity.as_deref()).map(|name| layers_dir.join(name)) {
        if layer.is_dir() {
            return Ok(layer);
        }
    }
    let bytes = fs::read(binary).map_err(|_| InitLayerError::MissingBinary(binary.to_owned()))?;
    let hash = layer_hash(&bytes, SDK_MODULE.as_bytes());
    let name = format!("{PREFIX}{}", &hash[..16]);
    let layer = layers_dir.join(&name);
    if let Some(identity) = &identity {
        // Best effort: without the cache the next start hashes again.
        let _ = fs::create_dir_all(layers_dir)
            .and_then(|()| hiber_common::fs::write_atomic(&cache, format!("{identity}\t{name}").as_bytes()));
    }
    if layer.is_dir() {
        return Ok(layer);
    }
    fs::create_dir_all(layers_dir).map_err(io_err(layers_dir))?;
    let staging = layers_dir.join(format!(".init-staging-{}", hiber_common::random_id(16)));
    let result = build(&staging, &bytes, SDK_MODULE.as_bytes()).map_err(io_err(&staging));
    let result = result.and_then(|()| match fs::rename(&staging, &layer) {
        // Another process made the same layer first: theirs is identical.
        Err(_) if layer.is_dir() => Ok(()),
        other => other.map_err(io_err(&layer)),
    });
    let _ = fs::remove_dir_all(&staging);
    result.map(|()| layer)
}

/// The layer's content hash: hiber-init's bytes, then the SDK's, then the
/// layout (directories, devices, links) and the owners' id mapping, each
/// preceded by its length so no two sets hash alike.
fn layer_hash(init: &[u8], sdk: &[u8]) -> String {
    let layout = layout();
    let mut hasher = blake3::Hasher::new();
    for part in [init, sdk, layout.as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().to_hex().to_string()
}

/// What the layer holds besides the two files, and whose its files are.
fn layout() -> String {
    format!("{DIRS:?} {DEVICES:?} {DEV_LINKS:?} {}", ids::id_map())
}

fn build(root: &Path, init: &[u8], sdk: &[u8]) -> io::Result<()> {
    fs::create_dir(root)?;
    for (dir, mode) in DIRS {
        let path = root.join(dir);
        fs::create_dir(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    let init_path = root.join(hiber_proto::INIT_PATH.trim_start_matches('/'));
    fs::write(&init_path, init)?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
    let sdk_path = root.join(SDK_PATH.trim_start_matches('/'));
    fs::write(&sdk_path, sdk)?;
    fs::set_permissions(&sdk_path, fs::Permissions::from_mode(0o644))?;
    for (name, major, minor) in DEVICES {
        let path = root.join("dev").join(name);
        mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(major, minor))?;
        // mknod's mode is filtered by the umask.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
    }
    for (name, target) in DEV_LINKS {
        symlink(target, root.join("dev").join(name))?;
    }
    ids::shift_tree(root).map_err(|e| e.source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn the_sdk_is_part_of_the_layers_name() {
        let init = b"init";
        assert_ne!(layer_hash(init, b"sdk v1"), layer_hash(init, b"sdk v2"));
        assert_ne!(layer_hash(b"ab", b"c"), layer_hash(b"a", b"bc"));
        assert_eq!(layer_hash(init, b"sdk"), layer_hash(init, b"sdk"));
    }

    #[test]
    fn layer_is_named_by_content_and_made_once() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: mknod of device nodes needs root");
            assert!(std::env::var_os("CI").is_none(), "CI must run as root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("init");
        fs::write(&bin, b"#!fake init").unwrap();
        let layer = ensure(&dir.path().join("layers"), &bin).unwrap();
        assert!(layer.file_name().unwrap().to_str().unwrap().starts_with("hiber-init-"));
        assert_eq!(fs::read(layer.join(".hiber/init")).unwrap(), b"#!fake init");
        let sdk = layer.join(SDK_PATH.trim_start_matches('/'));
        assert_eq!(fs::read_to_string(&sdk).unwrap(), SDK_MODULE);
        assert!(SDK_MODULE.contains("def next_message("));
        assert_eq!(fs::metadata(&sdk).unwrap().permissions().mode() & 0o777, 0o644);
        let lib = fs::metadata(layer.join("usr/lib")).unwrap();
        assert_eq!(lib.permissions().mode() & 0o7777, 0o755);
        let null = fs::metadata(layer.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        use std::os::unix::fs::MetadataExt;
        assert_eq!((null.uid(), null.gid()), (ids::HOST_BASE, ids::HOST_BASE), "owned by the sandboxes' root");
        assert_eq!(null.permissions().mode() & 0o777, 0o666);
        assert_eq!(fs::read_link(layer.join("dev/ptmx")).unwrap(), PathBuf::from("pts/ptmx"));
        assert_eq!(fs::metadata(layer.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
        assert_eq!(ensure(&dir.path().join("layers"), &bin).unwrap(), layer);
        let cache = fs::read_to_string(dir.path().join("layers/.hiber-init.cache")).unwrap();
        assert!(cache.ends_with(layer.file_name().unwrap().to_str().unwrap()), "{cache}");
        fs::write(&bin, b"another").unwrap();
        assert_ne!(ensure(&dir.path().join("layers"), &bin).unwrap(), layer, "a changed binary is seen");
        let names: Vec<String> = fs::read_dir(dir.path().join("layers"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.iter().filter(|n| n.starts_with("hiber-init-")).count(), 2, "{names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("hiber-init-") || n == ".hiber-init.cache"),
            "no staging left: {names:?}"
        );
    }
}
