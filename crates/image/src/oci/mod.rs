//! Images from OCI image layouts (directories or tar archives) and `docker save` archives.
//!
//! [`resolve`] finds the image: `index.json` (an OCI layout; an index choosing `linux/amd64`
//! among several platforms, nested indexes followed) or `manifest.json` (`docker save`), then its
//! configuration and its layers in order. [`extract_layer`] unpacks one layer (plain, gzip or
//! zstd tar) with its whiteouts as overlayfs ones, checking the blob's digest and the
//! uncompressed tar's `diff_id` as it streams: a layer whose bytes do not match is refused
//! before it is stored.

mod source;
pub mod spec;

use std::cell::RefCell;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::image::ImageConfig;
use crate::import::{self, Entries, ImportError};
pub(crate) use source::Source;
use spec::{sha256_hex, Configuration, Descriptor, DockerSaved, Index, Manifest};

/// Errors reading an OCI or Docker image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The archive or layout is unreadable or malformed.
    #[error("cannot import {path}: {reason}")]
    Bad {
        /// The image's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file the image names is not there.
    #[error("cannot import {path}: {what} is missing")]
    Missing {
        /// The image's path.
        path: PathBuf,
        /// The file.
        what: String,
    },
    /// A blob's bytes do not have the digest the image gives.
    #[error("cannot import {path}: {what} has digest sha256:{actual}, not {expected}")]
    Digest {
        /// The image's path.
        path: PathBuf,
        /// Which blob.
        what: String,
        /// The digest the image gives.
        expected: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// A media type hiber does not read.
    #[error("cannot import {path}: unknown media type {media_type} ({what})")]
    MediaType {
        /// The image's path.
        path: PathBuf,
        /// Which blob.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// The image is for another platform.
    #[error("cannot import {path}: the image is for {found}, not linux/amd64")]
    Platform {
        /// The image's path.
        path: PathBuf,
        /// `os/architecture` of the image, or of every manifest of its index.
        found: String,
    },
    /// A layer's tar could not be unpacked.
    #[error(transparent)]
    Layer(#[from] ImportError),
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// A layer of a resolved image.
#[derive(Debug, Clone)]
pub(crate) struct LayerBlob {
    /// Its file in the source.
    pub name: String,
    /// Its size in bytes, when the image gives it.
    pub size: Option<u64>,
    /// The blob's digest (the hex of `sha256:`), checked when it is read.
    pub digest: String,
    /// How it is compressed.
    pub compression: Compression,
    /// The hex of its uncompressed tar's sha256 (the configuration's `diff_id`), which names
    /// the layer in hiber's store, so images sharing a base share its layers.
    pub diff_id: String,
}

/// An image found in a source: its run defaults and its layers, bottom-most first.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The configuration's run defaults.
    pub config: ImageConfig,
    /// Its layers.
    pub layers: Vec<LayerBlob>,
}

/// Whether `source` holds an OCI layout or a `docker save` archive (rather than a root
/// filesystem to import as it is).
pub(crate) fn is_image(source: &Source) -> bool {
    let layout = source.has("oci-layout") && source.has("index.json");
    layout || parse::<Vec<DockerSaved>>(source, "manifest.json").is_ok_and(|saved| !saved.is_empty())
}

/// Finds the image in `source`.
pub(crate) fn resolve(source: &Source) -> Result<Resolved, OciError> {
    let bad = |reason: String| OciError::Bad { path: source.path().to_path_buf(), reason };
    if source.has("index.json") {
        let index: Index = parse(source, "index.json")?;
        let manifest = choose(source, index, 0)?;
        let config: Configuration = parse_blob(source, &manifest.config, "the configuration")?;
        check_config(source, &config, manifest.layers.len(), "the manifest")?;
        let layers = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(layer, diff_id)| {
                Ok(LayerBlob {
                    name: blob_name(source, layer)?,
                    size: Some(layer.size),
                    digest: hex(source, &layer.digest)?.to_string(),
                    compression: compression(source, layer)?,
                    diff_id: hex(source, diff_id)?.to_string(),
                })
            })
            .collect::<Result<_, OciError>>()?;
        return Ok(Resolved { config: run_config(config), layers });
    }
    let saved: Vec<DockerSaved> = parse(source, "manifest.json")?;
    let [saved] = <[DockerSaved; 1]>::try_from(saved)
        .map_err(|all| bad(format!("manifest.json lists {} images; import an archive of one", all.len())))?;
    let config: Configuration = parse(source, &saved.config)?;
    check_config(source, &config, saved.layers.len(), "manifest.json")?;
    let layers = saved
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(name, diff_id)| {
            let diff_id = hex(source, diff_id)?.to_string();
            // `docker save` writes layers as plain tars: the blob is the diff.
            Ok(LayerBlob {
                name: name.clone(),
                size: None,
                digest: diff_id.clone(),
                compression: Compression::None,
                diff_id,
            })
        })
        .collect::<Result<_, OciError>>()?;
    Ok(Resolved { config: run_config(config), layers })
}

/// The image manifest an index names for linux/amd64, following nested indexes.
fn choose(source: &Source, index: Index, depth: usize) -> Result<Manifest, OciError> {
    let bad = |reason: String| OciError::Bad { path: source.path().to_path_buf(), reason };
    if depth > 4 {
        return Err(bad("indexes nest more than four deep".into()));
    }
    let chosen =
        index.for_this_platform().map_err(|found| OciError::Platform { path: source.path().to_path_buf(), found })?;
    match chosen.media_type.as_str() {
        spec::INDEX | spec::DOCKER_LIST => choose(source, parse_blob(source, chosen, "an index")?, depth + 1),
        spec::MANIFEST | spec::DOCKER_MANIFEST | "" => {
            let manifest: Manifest = parse_blob(source, chosen, "the manifest")?;
            match manifest.media_type.as_str() {
                spec::MANIFEST | spec::DOCKER_MANIFEST | "" => Ok(manifest),
                other => Err(media_type(source, "the manifest", other)),
            }
        }
        other => Err(media_type(source, "the index's entry", other)),
    }
}

/// Checks that `config` is for this platform and has a `diff_id` for each of the `layers`
/// that `manifest` lists.
fn check_config(source: &Source, config: &Configuration, layers: usize, manifest: &str) -> Result<(), OciError> {
    if let Some(found) = config.foreign_platform() {
        return Err(OciError::Platform { path: source.path().to_path_buf(), found });
    }
    if layers != config.rootfs.diff_ids.len() {
        let reason =
            format!("{manifest} has {layers} layers and the configuration {} diff_ids", config.rootfs.diff_ids.len());
        return Err(OciError::Bad { path: source.path().to_path_buf(), reason });
    }
    Ok(())
}

fn media_type(source: &Source, what: &str, media_type: &str) -> OciError {
    OciError::MediaType {
        path: source.path().to_path_buf(),
        what: what.to_string(),
        media_type: media_type.to_string(),
    }
}

fn compression(source: &Source, layer: &Descriptor) -> Result<Compression, OciError> {
    match layer.media_type.as_str() {
        "application/vnd.oci.image.layer.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Ok(Compression::Gzip)
        }
        "application/vnd.oci.image.layer.v1.tar+zstd" => Ok(Compression::Zstd),
        other => Err(media_type(source, &format!("layer {}", layer.digest), other)),
    }
}

/// The hex of a `sha256:` digest, or a clear error.
fn hex<'a>(source: &Source, digest: &'a str) -> Result<&'a str, OciError> {
    sha256_hex(digest).ok_or_else(|| OciError::Bad {
        path: source.path().to_path_buf(),
        reason: format!("'{digest}' is not a sha256 digest"),
    })
}

/// The file of an OCI layout that holds blob `d`.
fn blob_name(source: &Source, d: &Descriptor) -> Result<String, OciError> {
    Ok(format!("blobs/sha256/{}", hex(source, &d.digest)?))
}

/// Reads blob `d` (a manifest, an index, a configuration), checks its size and digest, and
/// parses it.
fn parse_blob<T: serde::de::DeserializeOwned>(source: &Source, d: &Descriptor, what: &str) -> Result<T, OciError> {
    let name = blob_name(source, d)?;
    let bytes = source.read(&name)?;
    let actual = spec::digest_of(&bytes);
    if actual != d.digest || bytes.len() as u64 != d.size {
        return Err(OciError::Digest {
            path: source.path().to_path_buf(),
            what: format!("{what} ({} bytes, {} expected)", bytes.len(), d.size),
            expected: d.digest.clone(),
            actual: actual.trim_start_matches("sha256:").to_string(),
        });
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| OciError::Bad { path: source.path().to_path_buf(), reason: format!("{what}: {e}") })
}

/// Reads and parses JSON document `name`.
fn parse<T: serde::de::DeserializeOwned>(source: &Source, name: &str) -> Result<T, OciError> {
    let bytes = source.read(name)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| OciError::Bad { path: source.path().to_path_buf(), reason: format!("{name}: {e}") })
}

fn run_config(config: Configuration) -> ImageConfig {
    let c = config.config;
    ImageConfig {
        env: c.env.unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
    }
}

/// Feeds what is read through it to a shared sha256.
struct Hashing<R> {
    inner: R,
    hasher: Rc<RefCell<Sha256>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks `layer` of `source` into the empty directory `dst`, whiteouts as overlayfs ones;
/// fails if the blob or its uncompressed tar does not have its digest.
pub(crate) fn extract_layer(source: &Source, layer: &LayerBlob, dst: &Path) -> Result<(), OciError> {
    let what = format!("layer sha256:{}", layer.digest);
    let open = || {
        source
            .open_file(&layer.name)?
            .ok_or_else(|| OciError::Missing { path: source.path().to_path_buf(), what: what.clone() })
    };
    let (file, size) = open()?;
    if layer.size.is_some_and(|expected| expected != size) {
        let reason = format!("{what} is {size} bytes, not the {} the manifest gives", layer.size.unwrap_or_default());
        return Err(OciError::Bad { path: source.path().to_path_buf(), reason });
    }
    let (blob_hash, diff_hash) = (Rc::new(RefCell::new(Sha256::new())), Rc::new(RefCell::new(Sha256::new())));
    let blob = BufReader::new(Hashing { inner: file, hasher: blob_hash.clone() });
    let bad = |e: io::Error| OciError::Bad { path: source.path().to_path_buf(), reason: format!("{what}: {e}") };
    let decoded: Box<dyn Read> = match layer.compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(blob).map_err(bad)?),
    };
    let mut diff = Hashing { inner: decoded, hasher: diff_hash.clone() };
    let shown = source.path().join(&layer.name);
    let unpacked = import::extract(&shown, &mut diff, dst, Entries::Layer);
    // What the tar reader left (the end-of-archive blocks, padding), for the digests.
    let drained = io::copy(&mut diff, &mut io::sink()).map_err(bad);
    let check = |hasher: &Rc<RefCell<Sha256>>, expected: &str, which: &str| {
        let actual = format!("{:x}", hasher.borrow().clone().finalize());
        if actual == expected {
            return Ok(());
        }
        Err(OciError::Digest {
            path: source.path().to_path_buf(),
            what: format!("{which} of {what}"),
            expected: format!("sha256:{expected}"),
            actual,
        })
    };
    let blob_done = unpacked.is_ok() && drained.is_ok();
    if !blob_done {
        // A wrong digest says more than the damage it did to the tar: read the whole blob again.
        let (mut file, _) = open()?;
        *blob_hash.borrow_mut() = Sha256::new();
        io::copy(&mut Hashing { inner: &mut file, hasher: blob_hash.clone() }, &mut io::sink()).map_err(bad)?;
    }
    check(&blob_hash, &layer.digest, "the blob")?;
    unpacked?;
    drained?;
    check(&diff_hash, &layer.diff_id, "the uncompressed tar")?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::process::Command;

    use serde_json::json;

    /// A tar of `files` (path, contents; a path ending in `/` is a directory).
    pub(crate) fn layer_tar(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in files {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            if path.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, io::empty()).unwrap();
            } else {
                header.set_mode(0o644);
                header.set_size(contents.len() as u64);
                builder.append_data(&mut header, path, contents.as_bytes()).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    /// Writes blob `bytes` into layout `dir`; its descriptor.
    fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        fs::write(dir.join("blobs/sha256").join(sha(bytes)), bytes).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{}", sha(bytes)), "size": bytes.len()})
    }

    /// An OCI layout in `dir`: a gzip base layer, a layer with whiteouts and an opaque
    /// directory over it (zstd or, for Docker's formats, which have no zstd, gzip), run
    /// defaults, for `architecture`.
    pub(crate) fn write_layout(dir: &Path, architecture: &str, zstd: bool) {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
        let base = layer_tar(&[("etc/", ""), ("etc/a", "a"), ("etc/b", "b"), ("dir/", ""), ("dir/x", "x")]);
        let top = layer_tar(&[("etc/.wh.b", ""), ("dir/", ""), ("dir/.wh..wh..opq", ""), ("dir/y", "y"), ("c", "c")]);
        let gzip = |tar: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        };
        let top_blob = if zstd {
            blob(dir, "application/vnd.oci.image.layer.v1.tar+zstd", &zstd::encode_all(&top[..], 3).unwrap())
        } else {
            blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gzip(&top))
        };
        let layers = [blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gzip(&base)), top_blob];
        let config = json!({
            "architecture": architecture, "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin", "GREETING=hi"], "Entrypoint": ["/bin/sh", "-c"],
                       "Cmd": ["echo $GREETING"], "WorkingDir": "/etc", "User": "1000:1000"},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&base)), format!("sha256:{}", sha(&top))]}
        });
        let config = blob(dir, "application/vnd.oci.image.config.v1+json", config.to_string().as_bytes());
        let manifest = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config, "layers": layers});
        let mut manifest = blob(dir, MANIFEST_TYPE, manifest.to_string().as_bytes());
        manifest["platform"] = json!({"os": "linux", "architecture": architecture});
        let index = json!({"schemaVersion": 2, "mediaType": spec::INDEX, "manifests": [manifest]});
        fs::write(dir.join("index.json"), index.to_string()).unwrap();
    }

    const MANIFEST_TYPE: &str = spec::MANIFEST;

    fn root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn layouts_resolve_to_their_layers_and_run_defaults() {
        let dir = tempfile::tempdir().unwrap();
        write_layout(dir.path(), "amd64", true);
        let image = resolve(&Source::open(dir.path()).unwrap()).unwrap();
        assert_eq!(image.layers.len(), 2);
        assert_eq!(image.layers[0].compression, Compression::Gzip);
        assert_eq!(image.layers[1].compression, Compression::Zstd);
        assert_eq!(image.config.cmd, ["echo $GREETING"]);
        assert_eq!(image.config.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!((image.config.working_dir.as_str(), image.config.user.as_str()), ("/etc", "1000:1000"));
        assert!(image.config.env.contains(&"GREETING=hi".to_string()));
    }

    #[test]
    fn layers_unpack_with_overlay_whiteouts_and_opaque_directories() {
        if !root() {
            eprintln!("SKIP: whiteouts and trusted attributes need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        write_layout(&dir.path().join("layout"), "amd64", true);
        let source = Source::open(&dir.path().join("layout")).unwrap();
        let image = resolve(&source).unwrap();
        let top = dir.path().join("top");
        fs::create_dir(&top).unwrap();
        extract_layer(&source, &image.layers[1], &top).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let b = fs::symlink_metadata(top.join("etc/b")).unwrap();
        assert!(b.file_type().is_char_device() && b.rdev() == 0, "etc/b is a whiteout");
        assert!(!top.join("etc/.wh.b").exists() && !top.join("dir/.wh..wh..opq").exists());
        assert_eq!(crate::xattr::get(&top.join("dir"), c"trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(fs::read_to_string(top.join("dir/y")).unwrap(), "y");
        assert_eq!(fs::read_to_string(top.join("c")).unwrap(), "c");
    }

    #[test]
    fn damaged_blobs_and_foreign_platforms_are_refused_in_one_line() {
        if !root() {
            eprintln!("SKIP: unpacking layers needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        write_layout(&layout, "amd64", true);
        let image = resolve(&Source::open(&layout).unwrap()).unwrap();
        // One byte of the zstd layer changed (its size stays).
        let path = layout.join("blobs/sha256").join(&image.layers[1].digest);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let dst = dir.path().join("dst");
        fs::create_dir(&dst).unwrap();
        let err = extract_layer(&Source::open(&layout).unwrap(), &image.layers[1], &dst).unwrap_err().to_string();
        assert!(err.contains(&format!("sha256:{}", image.layers[1].digest)) && !err.contains('\n'), "{err}");

        let arm = dir.path().join("arm");
        write_layout(&arm, "arm64", true);
        let err = resolve(&Source::open(&arm).unwrap()).unwrap_err().to_string();
        assert!(err.ends_with("the image is for linux/arm64, not linux/amd64"), "{err}");

        let index = fs::read_to_string(layout.join("index.json")).unwrap();
        fs::write(layout.join("index.json"), index.replace(spec::MANIFEST, "application/x-unknown")).unwrap();
        let err = resolve(&Source::open(&layout).unwrap()).unwrap_err().to_string();
        assert!(err.contains("unknown media type application/x-unknown"), "{err}");
    }

    /// skopeo, from Debian's package (scripts/setup-test.sh installs it).
    pub(crate) fn skopeo() -> bool {
        if Command::new("skopeo").arg("--version").output().is_ok_and(|o| o.status.success()) {
            return true;
        }
        assert!(std::env::var_os("CI").is_none(), "skopeo is missing and CI is set: run scripts/setup-test.sh");
        eprintln!("SKIP: skopeo is missing (run scripts/setup-test.sh)");
        false
    }

    #[test]
    fn archives_written_by_skopeo_resolve_to_the_same_layers() {
        if !skopeo() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        write_layout(&layout, "amd64", false);
        let ours = resolve(&Source::open(&layout).unwrap()).unwrap();
        for (format, file) in [("docker-archive", "docker.tar"), ("oci-archive", "oci.tar")] {
            let archive = dir.path().join(file);
            let out = Command::new("skopeo")
                .args(["--insecure-policy", "copy", "--quiet"])
                .arg(format!("oci:{}", layout.display()))
                .arg(format!("{format}:{}", archive.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
            let source = Source::open(&archive).unwrap();
            assert!(is_image(&source), "{format}");
            let theirs = resolve(&source).unwrap();
            let ids = |r: &Resolved| r.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&theirs), ids(&ours), "{format}: the same layers");
            assert_eq!(theirs.config, ours.config, "{format}");
        }
    }
}
