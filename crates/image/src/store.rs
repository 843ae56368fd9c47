//! The image store: manifests under `HOME/images/<name>.json` over the layers of
//! `HOME/layers/`, and the builders that make images.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::build::{self, BuildError, Step};
use crate::busybox::{self, BusyboxError};
use crate::copy::{copy_tree, CopyError};
use crate::debian::{self, DebianError};
use crate::ids::{self, ShiftError};
use crate::image::{validate_name, Image, ImageConfig, NameError};
use crate::import::{self, ImportError};
use crate::layer::{LayerError, LayerId, LayerStore, Staging};
use crate::oci::{self, OciError};

/// Errors from the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No image has this name.
    #[error("no image named '{0}' (see `hiber images`)")]
    NotFound(String),
    /// A manifest that cannot be read or parsed.
    #[error("image manifest {path} is damaged: {reason}")]
    Corrupt {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest names a layer that is not in the store.
    #[error("image '{name}' is damaged: its layer {layer} is missing (rebuild or remove it)")]
    MissingLayer {
        /// The image.
        name: String,
        /// The missing layer.
        layer: LayerId,
    },
    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The underlying failure.
        source: io::Error,
    },
    /// An invalid image name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A layer store failure.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// Building the busybox image failed.
    #[error(transparent)]
    Busybox(#[from] BusyboxError),
    /// Building the Debian image failed.
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// Importing failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Importing an OCI or Docker image failed.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// Building an image from another failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Copying a tree into a layer failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Giving a new layer the sandboxes' owners failed.
    #[error(transparent)]
    Shift(#[from] ShiftError),
}

/// The images of one home directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    images: PathBuf,
    layers: LayerStore,
    cache: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) `HOME/images` and `HOME/layers`, removing staging
    /// directories left by killed processes. The per-machine cache is `$HIBER_CACHE`, else
    /// `/var/cache/hiber`.
    pub fn open(home: &Path) -> Result<ImageStore, StoreError> {
        let images = home.join("images");
        fs::create_dir_all(&images)
            .map_err(|source| StoreError::Io { what: format!("cannot create {}", images.display()), source })?;
        Ok(ImageStore { images, layers: LayerStore::open(home.join("layers"))?, cache: debian::cache_dir() })
    }

    /// The layer store the images' layers live in.
    pub fn layers(&self) -> &LayerStore {
        &self.layers
    }

    /// All images, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let what = || format!("cannot read {}", self.images.display());
        let mut images = Vec::new();
        let entries = fs::read_dir(&self.images).map_err(|source| StoreError::Io { what: what(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Io { what: what(), source })?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if validate_name(name).is_ok() {
                images.push(self.read(name)?);
            }
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// The image called `name`; an error if there is none or a layer of it is missing.
    pub fn get(&self, name: &str) -> Result<Image, StoreError> {
        validate_name(name)?;
        let image = self.read(name)?;
        if let Some(layer) = image.layers.iter().find(|l| !self.layers.path(l).is_dir()) {
            return Err(StoreError::MissingLayer { name: name.to_string(), layer: layer.clone() });
        }
        Ok(image)
    }

    /// The image's layer directories, top-most first, as overlayfs `lowerdir=` wants them.
    pub fn lower_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image.layers.iter().rev().map(|l| self.layers.path(l)).collect()
    }

    /// Removes an image's manifest. Its layers stay: sandboxes and snapshots
    /// may use them too, so only a collector that knows every user (the
    /// sandbox backend's) removes layers.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        self.read(name)?;
        let path = self.manifest(name);
        hiber_common::fs::remove_durably(&path)
            .map_err(|source| StoreError::Io { what: format!("cannot remove {}", path.display()), source })
    }

    /// Builds the `busybox` image from the host's busybox-static (`/bin/busybox`).
    pub fn build_busybox(&self, progress: &mut dyn FnMut(&str)) -> Result<Image, StoreError> {
        let staging = self.layers.staging()?;
        let source = busybox::populate(staging.path(), Path::new(busybox::HOST_BUSYBOX))?;
        progress(&source);
        let layer = finish(staging)?;
        self.install_one("busybox", layer, source)
    }

    /// Builds the `debian` image (bookworm, minbase, with python3, git, curl, ca-certificates,
    /// procps, iproute2) from the per-machine cache, running debootstrap first if the cache
    /// does not have it yet. The layer hard-links the cached tree when it is on the same
    /// filesystem, else copies it.
    pub fn build_debian(&self, progress: &mut dyn FnMut(&str)) -> Result<Image, StoreError> {
        let rootfs = debian::cached_rootfs(&self.cache, progress)?;
        let staging = self.layers.staging()?;
        let dev = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.dev())
                .map_err(|source| StoreError::Io { what: format!("cannot stat {}", p.display()), source })
        };
        let hardlink = dev(&rootfs)? == dev(staging.path())?;
        progress(&format!("{} {} into a new layer", if hardlink { "linking" } else { "copying" }, rootfs.display()));
        copy_tree(&rootfs, staging.path(), hardlink)?;
        let layer = finish(staging)?;
        self.install_one("debian", layer, debian::source())
    }

    /// Builds image `name` from image `from` with `steps` (see [`Step`]): the base's layers
    /// plus one with the changes, taken from the cache when the same steps ran on the same base
    /// before. On failure nothing is left behind.
    pub fn build_from(
        &self,
        name: &str,
        from: &str,
        steps: &[Step],
        progress: &mut dyn FnMut(&str),
    ) -> Result<Image, StoreError> {
        validate_name(name)?;
        let base = self.get(from)?;
        let base_layers: Vec<String> = base.layers.iter().map(|l| l.to_string()).collect();
        let key = build::key(&base_layers, steps)?;
        let source = format!("build {key} from {from}");
        let cache = self.images.with_file_name("builds").join(&key);
        let cached = fs::read_to_string(&cache).ok().and_then(|id| LayerId::parse(id.trim()).ok());
        let layers_with = |layer: LayerId| base.layers.iter().cloned().chain(std::iter::once(layer)).collect();
        if let Some(layer) = cached.filter(|l| self.layers.path(l).is_dir()) {
            progress(&format!("steps cached (layer {layer})"));
            return self.install(name, layers_with(layer), base.config.clone(), source);
        }
        let staging = self.layers.staging()?;
        let scratch = self.layers.staging()?;
        build::run_steps(&self.lower_dirs(&base), staging.path(), scratch.path(), steps, progress)?;
        drop(scratch);
        let layer = staging.commit()?;
        let installed = self.install(name, layers_with(layer.clone()), base.config.clone(), source);
        let image = self.forget_on_error(installed, std::slice::from_ref(&layer))?;
        let remembered = cache
            .parent()
            .map(fs::create_dir_all)
            .transpose()
            .and_then(|_| hiber_common::fs::write_atomic(&cache, layer.as_str().as_bytes()));
        if let Err(e) = remembered {
            progress(&format!("warning: the build cache was not written: {e}"));
        }
        Ok(image)
    }

    /// Imports an OCI image layout (a directory or a tar archive), a `docker save` archive, or
    /// a root filesystem as a directory or a tarball (`.tar`, `.tar.gz`, `.tgz`) as the image
    /// `name`. On failure nothing is left behind.
    pub fn import(&self, path: &Path, name: &str, progress: &mut dyn FnMut(&str)) -> Result<Image, StoreError> {
        validate_name(name)?;
        if let Some(source) = oci::Source::open(path).ok().filter(oci::is_image) {
            return self.import_image(&source, name, progress);
        }
        let staging = self.layers.staging()?;
        import::import(path, staging.path(), progress)?;
        let layer = finish(staging)?;
        let shown = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        self.install_one(name, layer, format!("import {}", shown.display()))
    }

    /// Imports the image of an OCI layout or `docker save` archive: each layer is stored once,
    /// named by its uncompressed digest, and shared with every image that has it.
    fn import_image(
        &self,
        source: &oci::Source,
        name: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Image, StoreError> {
        let image = oci::resolve(source)?;
        let layers = image.layers.iter().map(|blob| LayerId::for_diff(&blob.diff_id)).collect::<Result<Vec<_>, _>>()?;
        let count = layers.len();
        let mut todo = Vec::new();
        for (n, (blob, id)) in image.layers.iter().zip(&layers).enumerate() {
            let step = format!("layer {}/{count} sha256:{}", n + 1, &blob.diff_id[..12]);
            if self.layers.path(id).is_dir() {
                progress(&format!("{step}: already stored"));
            } else {
                todo.push((step, blob, id));
            }
        }
        for (step, _, _) in &todo {
            progress(&format!("{step}: extracting"));
        }
        // Layers unpack side by side, one per core: each into its own staging directory.
        let made = Mutex::new(Vec::new());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stored = hiber_common::parallel::try_for_each(todo, cores, |(_, blob, id)| {
            let staging = self.layers.staging()?;
            oci::extract_layer(source, blob, staging.path())?;
            ids::shift_tree(staging.path())?;
            match staging.commit_as(id) {
                Ok(()) => made.lock().unwrap_or_else(|e| e.into_inner()).push(id.clone()),
                Err(LayerError::Exists(_)) => {} // another import stored it meanwhile
                Err(e) => return Err(StoreError::from(e)),
            }
            Ok(())
        });
        let made = made.into_inner().unwrap_or_else(|e| e.into_inner());
        let shown = source.path().canonicalize().unwrap_or_else(|_| source.path().to_path_buf());
        let installed =
            stored.and_then(|()| self.install(name, layers, image.config, format!("import {}", shown.display())));
        self.forget_on_error(installed, &made)
    }

    fn manifest(&self, name: &str) -> PathBuf {
        self.images.join(format!("{name}.json"))
    }

    /// Reads and checks the manifest of `name` (already validated).
    fn read(&self, name: &str) -> Result<Image, StoreError> {
        let path = self.manifest(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound(name.to_string())),
            Err(source) => return Err(StoreError::Io { what: format!("cannot read {}", path.display()), source }),
        };
        let corrupt = |reason: String| StoreError::Corrupt { path: path.clone(), reason };
        let image: Image = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if image.name != name {
            return Err(corrupt(format!("it names the image '{}'", image.name)));
        }
        Ok(image)
    }

    /// Writes the manifest for a freshly made single-layer image, replacing any image of that
    /// name (its old layers are left to the layer collector). If the manifest cannot be
    /// written, the new layer is removed and any old image stays as it was.
    fn install_one(&self, name: &str, layer: LayerId, source: String) -> Result<Image, StoreError> {
        let installed = self.install(name, vec![layer.clone()], ImageConfig::default(), source);
        self.forget_on_error(installed, &[layer])
    }

    /// `result`, with the layers `new` (made for it) removed when it is an error: nothing is
    /// left half-stored.
    fn forget_on_error(&self, result: Result<Image, StoreError>, new: &[LayerId]) -> Result<Image, StoreError> {
        if result.is_err() {
            for layer in new {
                let _ = self.layers.remove(layer);
            }
        }
        result
    }

    /// Writes the manifest of image `name` over `layers` (bottom-most first), replacing any
    /// image of that name; any old image stays as it was if it cannot be written.
    fn install(
        &self,
        name: &str,
        layers: Vec<LayerId>,
        config: ImageConfig,
        source: String,
    ) -> Result<Image, StoreError> {
        (|| {
            let mut size_bytes = 0;
            for layer in &layers {
                size_bytes += self.layers.size_on_disk(layer)?;
            }
            let image = Image {
                name: name.to_string(),
                size_bytes,
                layers,
                created: hiber_common::unix_secs(),
                source,
                shifted_ids: true,
                config,
            };
            let mut json = serde_json::to_vec_pretty(&image).expect("an image serializes");
            json.push(b'\n');
            let path = self.manifest(name);
            hiber_common::fs::write_atomic(&path, &json)
                .map_err(|source| StoreError::Io { what: format!("cannot write {}", path.display()), source })?;
            Ok(image)
        })()
    }
}

/// Makes a filled staging directory an image layer, its owners shifted for sandboxes.
fn finish(staging: Staging) -> Result<LayerId, StoreError> {
    ids::shift_tree(staging.path())?;
    Ok(staging.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::tests::{gzip, sample_tar};
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::time::Instant;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// Nothing but the given number of layers and manifests: no staging, no temporaries.
    fn assert_clean(home: &Path, layers: usize, images: usize) {
        let l = entries(&home.join("layers"));
        assert_eq!(l.len(), layers, "layers: {l:?}");
        assert!(l.iter().all(|n| LayerId::parse(n).is_ok()), "{l:?}");
        let i = entries(&home.join("images"));
        assert_eq!(i.len(), images, "images: {i:?}");
        assert!(i.iter().all(|n| !n.starts_with('.')), "{i:?}");
    }

    fn busybox_available() -> bool {
        if Path::new(busybox::HOST_BUSYBOX).exists() {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!("{} is missing and CI is set: install busybox-static", busybox::HOST_BUSYBOX);
        }
        eprintln!("skipped: {} is missing (install busybox-static)", busybox::HOST_BUSYBOX);
        false
    }

    #[test]
    fn busybox_image_has_the_expected_tree() {
        if !busybox_available() {
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let store = ImageStore::open(home.path()).unwrap();
        let mut lines = Vec::new();
        let start = Instant::now();
        let image = store.build_busybox(&mut |l| lines.push(l.to_string())).unwrap();
        let took = start.elapsed();
        eprintln!("busybox image built in {took:?}");
        assert!(image.source.starts_with("busybox "), "{}", image.source);
        assert_eq!(image.name, "busybox");
        assert_eq!(image.layers.len(), 1);
        assert!(image.size_bytes > 1_000_000);
        assert_eq!(lines, std::slice::from_ref(&image.source));

        let root = store.layers().path(&image.layers[0]);
        assert!(image.shifted_ids);
        let bin = fs::metadata(root.join("bin/busybox")).unwrap();
        assert_eq!((bin.uid(), bin.gid()), (ids::HOST_BASE, ids::HOST_BASE), "owned by the sandboxes' root");
        assert_eq!(bin.permissions().mode() & 0o111, 0o111);
        assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("/bin/busybox"));
        assert_eq!(fs::read_link(root.join("usr/bin/env")).unwrap(), Path::new("/bin/busybox"));
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert_eq!(passwd, "root:x:0:0:root:/root:/bin/sh\n");
        assert!(fs::read_to_string(root.join("etc/group")).unwrap().starts_with("root:x:0:"));
        let hosts = fs::read_to_string(root.join("etc/hosts")).unwrap();
        assert!(hosts.contains("127.0.0.1\tlocalhost") && hosts.contains("::1\tlocalhost"));
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("root"), 0o700);
        for dir in ["proc", "dev", "sys", "run"] {
            assert_eq!(mode(dir), 0o755, "{dir}");
            assert_eq!(fs::read_dir(root.join(dir)).unwrap().count(), 0, "{dir}");
        }
        let applets = Command::new(root.join("bin/busybox")).arg("--list-full").output().unwrap();
        let count = String::from_utf8_lossy(&applets.stdout).lines().count();
        for applet in String::from_utf8_lossy(&applets.stdout).lines() {
            assert!(fs::symlink_metadata(root.join(applet)).is_ok(), "{applet}");
        }
        assert!(count > 100, "{count}");

        // Stored, listed, and the layer stack is valid for overlayfs.
        assert_eq!(store.get("busybox").unwrap(), image);
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&image));
        assert_eq!(store.lower_dirs(&image), [root]);
        assert_clean(home.path(), 1, 1);

        // Rebuilding replaces the image; the old layer waits for the collector.
        let again = store.build_busybox(&mut |_| {}).unwrap();
        assert_ne!(again.layers, image.layers);
        assert_eq!(store.get("busybox").unwrap(), again);
        assert_clean(home.path(), 2, 1);
    }

    #[test]
    fn oci_and_docker_images_share_their_layers_by_digest_and_keep_their_run_defaults() {
        if !crate::oci::tests::skopeo() || !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let store = ImageStore::open(home.path()).unwrap();
        let input = tempfile::tempdir().unwrap();
        let layout = input.path().join("layout");
        crate::oci::tests::write_layout(&layout, "amd64", false);
        let oci = store.import(&layout, "from-oci", &mut |_| {}).unwrap();
        assert_eq!(oci.layers.len(), 2);
        assert_eq!(oci.config.cmd, ["echo $GREETING"]);
        assert_eq!(store.get("from-oci").unwrap().config, oci.config, "the defaults are saved");
        let top = store.layers().path(&oci.layers[1]);
        assert!(top.join("etc/b").exists() && !top.join("etc/.wh.b").exists(), "a whiteout, not a file");
        assert_clean(home.path(), 2, 1);

        let docker = input.path().join("docker.tar");
        let copied = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker-archive:{}", docker.display()))
            .status()
            .unwrap();
        assert!(copied.success());
        let saved = store.import(&docker, "from-docker", &mut |_| {}).unwrap();
        assert_eq!(saved.layers, oci.layers, "the same layers, stored once");
        assert_eq!(saved.config, oci.config);
        assert_clean(home.path(), 2, 2);

        // A damaged layer (in a home of its own: here its diff is already stored, so it would
        // not be read): one clear error, and nothing stored, not even the sound base layer.
        let home = tempfile::tempdir().unwrap();
        let store = ImageStore::open(home.path()).unwrap();
        let damaged = input.path().join("damaged");
        crate::oci::tests::write_layout(&damaged, "amd64", true);
        let blobs = damaged.join("blobs/sha256");
        let index: serde_json::Value = serde_json::from_slice(&fs::read(damaged.join("index.json")).unwrap()).unwrap();
        let manifest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blobs.join(manifest)).unwrap()).unwrap();
        let zstd_layer = manifest["layers"][1]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let mut bytes = fs::read(blobs.join(&zstd_layer)).unwrap();
        bytes[10] ^= 0xff;
        fs::write(blobs.join(&zstd_layer), bytes).unwrap();
        let err = store.import(&damaged, "damaged", &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("has digest") && !err.contains('\n'), "{err}");
        assert!(store.get("damaged").is_err());
        assert_clean(home.path(), 0, 0);
    }

    #[test]
    fn imports_directories_and_tarballs() {
        let home = tempfile::tempdir().unwrap();
        let store = ImageStore::open(home.path()).unwrap();
        let input = tempfile::tempdir().unwrap();
        let tar = input.path().join("rootfs.tar");
        fs::write(&tar, sample_tar()).unwrap();
        let tgz = input.path().join("rootfs.tgz");
        fs::write(&tgz, gzip(&sample_tar())).unwrap();

        let a = store.import(&tar, "from-tar", &mut |_| {}).unwrap();
        let b = store.import(&tgz, "from-tgz", &mut |_| {}).unwrap();
        let dir = store.layers().path(&a.layers[0]);
        let c = store.import(&dir, "from-dir", &mut |_| {}).unwrap();
        assert_eq!(a.source, format!("import {}", tar.canonicalize().unwrap().display()));
        for image in [&a, &b, &c] {
            let root = store.layers().path(&image.layers[0]);
            assert_eq!(fs::read(root.join("usr/bin/hello")).unwrap(), b"hello");
            let mode = fs::metadata(root.join("usr/bin/hello")).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o750);
            assert_eq!(fs::metadata(root.join("usr/bin/hello")).unwrap().uid(), ids::HOST_BASE);
            assert_eq!(fs::read_link(root.join("bin")).unwrap(), Path::new("usr/bin"));
        }
        let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["from-dir", "from-tar", "from-tgz"]);
        assert_clean(home.path(), 3, 3);

        store.remove("from-tar").unwrap();
        assert!(matches!(store.get("from-tar"), Err(StoreError::NotFound(_))));
        assert_clean(home.path(), 3, 2);
    }

    #[test]
    fn failed_imports_leave_nothing_behind() {
        let home = tempfile::tempdir().unwrap();
        let store = ImageStore::open(home.path()).unwrap();
        let input = tempfile::tempdir().unwrap();
        let tar = sample_tar();
        let mut corrupt = gzip(&tar);
        for b in &mut corrupt[20..60] {
            *b ^= 0x55;
        }
        let empty = tar::Builder::new(Vec::new()).into_inner().unwrap();
        let cases: [(&str, &[u8]); 4] = [
            ("corrupt.tar.gz", &corrupt),
            ("truncated.tar", &tar[..tar.len() / 2]),
            ("empty.tar", &empty),
            ("zero.tar", b""),
        ];
        for (file, bytes) in cases {
            let path = input.path().join(file);
            fs::write(&path, bytes).unwrap();
            let err = store.import(&path, "broken", &mut |_| {}).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("cannot import ") && !msg.contains('\n'), "{file}: {msg}");
            assert_clean(home.path(), 0, 0);
        }
        let missing = input.path().join("missing");
        assert!(store.import(&missing, "broken", &mut |_| {}).is_err());
        let empty_dir = input.path().join("empty-dir");
        fs::create_dir(&empty_dir).unwrap();
        assert!(store.import(&empty_dir, "broken", &mut |_| {}).is_err());
        assert!(matches!(store.import(&missing, "Bad/Name", &mut |_| {}), Err(StoreError::Name(_))));
        assert_clean(home.path(), 0, 0);

        // A failed rebuild keeps the existing image.
        let good = input.path().join("good.tar");
        fs::write(&good, &tar).unwrap();
        let image = store.import(&good, "broken", &mut |_| {}).unwrap();
        let path = input.path().join("corrupt.tar.gz");
        assert!(store.import(&path, "broken", &mut |_| {}).is_err());
        assert_eq!(store.get("broken").unwrap(), image);
        assert_clean(home.path(), 1, 1);
    }

    #[test]
    fn missing_and_damaged_images_are_clear_errors() {
        let home = tempfile::tempdir().unwrap();
        let store = ImageStore::open(home.path()).unwrap();
        assert_eq!(store.get("foo").unwrap_err().to_string(), "no image named 'foo' (see `hiber images`)");
        assert!(matches!(store.remove("foo"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.get("../etc/passwd"), Err(StoreError::Name(_))));

        fs::write(home.path().join("images/bad.json"), b"{not json").unwrap();
        let msg = store.get("bad").unwrap_err().to_string();
        assert!(msg.contains("is damaged") && !msg.contains('\n'), "{msg}");
        assert!(store.list().is_err());

        let ghost = Image {
            name: "ghost".into(),
            layers: vec![LayerId::parse("00000000000000aa").unwrap()],
            created: 0,
            size_bytes: 0,
            source: "test".into(),
            shifted_ids: true,
            config: ImageConfig::default(),
        };
        let json = serde_json::to_vec(&ghost).unwrap();
        hiber_common::fs::write_atomic(&home.path().join("images/ghost.json"), &json).unwrap();
        assert!(matches!(store.get("ghost"), Err(StoreError::MissingLayer { .. })));
        // Another manifest being unreadable does not stop a removal.
        store.remove("ghost").unwrap();
        fs::remove_file(home.path().join("images/bad.json")).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert_clean(home.path(), 0, 0);
    }

    #[test]
    fn lower_dirs_are_top_most_first() {
        let home = tempfile::tempdir().unwrap();
        let store = ImageStore::open(home.path()).unwrap();
        let bottom = LayerId::parse("000000000000000b").unwrap();
        let top = LayerId::parse("000000000000000f").unwrap();
        let image = Image {
            name: "stack".into(),
            layers: vec![bottom.clone(), top.clone()],
            created: 0,
            size_bytes: 0,
            source: "test".into(),
            shifted_ids: true,
            config: ImageConfig::default(),
        };
        let layers = home.path().join("layers");
        assert_eq!(store.lower_dirs(&image), [layers.join(top.as_str()), layers.join(bottom.as_str())]);
    }

    /// Slow the first time on a machine (downloads Debian into the machine cache).
    #[test]
    #[ignore = "runs debootstrap (about a minute the first time); run with --ignored"]
    fn debian_image_builds_from_the_machine_cache() {
        for round in 0..2 {
            let home = tempfile::tempdir().unwrap();
            let store = ImageStore::open(home.path()).unwrap();
            let start = Instant::now();
            let mut lines = 0;
            let image = store
                .build_debian(&mut |l| {
                    lines += 1;
                    eprintln!("  {l}");
                })
                .unwrap();
            eprintln!("debian build {round}: {:?}, {lines} progress lines", start.elapsed());
            let root = store.layers().path(&image.layers[0]);
            for file in ["usr/bin/python3", "usr/bin/git", "usr/bin/curl", "bin/ps", "bin/ip"] {
                assert!(root.join(file).exists(), "{file}");
            }
            assert!(fs::read_dir(root.join("var/lib/apt/lists")).unwrap().next().is_none());
            assert_eq!(image.source, "debootstrap bookworm minbase");
            assert_eq!(store.get("debian").unwrap(), image);
        }
    }
}
