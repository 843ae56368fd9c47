//! Pulling images from OCI distribution registries (the CNCF distribution server, Docker Hub,
//! GHCR, ...) into an OCI image layout directory, which `hiber_image::ImageStore::import` then
//! stores.
//!
//! [`pull`] fetches the manifest (from an index, the linux/amd64 one), the configuration, then
//! the layers the caller does not have yet, several at once; every blob is checked against its
//! digest before it is renamed into `blobs/sha256/`, and a download cut short resumes from the
//! bytes already there (`Range`). The layout's `index.json` is written last, so a layout with one
//! names a whole image.

#![warn(missing_docs)]

mod client;
mod reference;
pub mod server;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hiber_image::oci_spec::{self as spec, sha256_hex, Configuration, Descriptor, Index, Manifest};
use sha2::{Digest, Sha256};

use client::Client;
pub use client::Credentials;
pub use reference::{Reference, Target};

/// How many layers download at once.
const PARALLEL: usize = 4;
/// Documents (manifests, indexes, configurations) larger than this are refused.
const DOCUMENT_LIMIT: u64 = 4 << 20;

/// Errors pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A malformed image reference.
    #[error("invalid image reference {0}")]
    Reference(String),
    /// The registry cannot be reached.
    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable {
        /// `host[:port]`.
        registry: String,
        /// Why.
        reason: String,
    },
    /// The registry refused the credentials (or asked for some).
    #[error("registry {registry} refused access: {reason}")]
    Denied {
        /// `host[:port]`.
        registry: String,
        /// What it said.
        reason: String,
    },
    /// The registry has no such manifest or blob.
    #[error("registry {registry} has no {what}")]
    NotFound {
        /// `host[:port]`.
        registry: String,
        /// `repository/manifests/tag` or `repository/blobs/digest`.
        what: String,
    },
    /// Another failure status.
    #[error("registry {registry} answered {code}: {message}")]
    Status {
        /// `host[:port]`.
        registry: String,
        /// The HTTP status.
        code: u16,
        /// Its message.
        message: String,
    },
    /// What the registry sent is not what it should be.
    #[error("registry {registry} sent a bad {what}: {reason}")]
    Bad {
        /// `host[:port]`.
        registry: String,
        /// Which document or blob.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The image is for another platform.
    #[error("{reference} has no linux/amd64 image (it has {found})")]
    Platform {
        /// The reference.
        reference: String,
        /// The platforms it has.
        found: String,
    },
    /// The layout could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The failure.
        source: io::Error,
    },
}

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A layer is already there: not downloaded.
    Have {
        /// Its blob digest, `sha256:...`.
        digest: String,
    },
    /// Bytes of a layer arrived (`done` of `total`).
    Layer {
        /// Its blob digest.
        digest: String,
        /// Bytes so far (resumed ones included).
        done: u64,
        /// Its size.
        total: u64,
    },
    /// A layer is whole and checked.
    Done {
        /// Its blob digest.
        digest: String,
    },
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Layers downloaded (or resumed).
    pub downloaded: usize,
    /// Layers the caller already had.
    pub skipped: usize,
    /// Bytes that came over the network.
    pub bytes: u64,
}

/// Pulls `reference` into the OCI layout directory `layout` (made if missing; blobs already
/// there are kept). `have(diff_id)` says whether a layer, by the hex of its uncompressed
/// digest, is already stored elsewhere: then its blob is not downloaded.
pub fn pull(
    reference: &Reference,
    credentials: Option<Credentials>,
    layout: &Path,
    have: &(dyn Fn(&str) -> bool + Sync),
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Pulled, RegistryError> {
    let client = Client::new(reference, credentials);
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_error(&blobs))?;
    let (manifest_descriptor, manifest) = fetch_manifest(&client, reference, &blobs)?;
    let config_bytes = fetch_document(&client, reference, &manifest.config, &blobs, "configuration")?;
    let config: Configuration =
        serde_json::from_slice(&config_bytes).map_err(|e| bad(reference, "configuration", e))?;
    if let Some(found) = config.foreign_platform() {
        return Err(RegistryError::Platform { reference: reference.to_string(), found });
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(bad(reference, "manifest", "its layers and the configuration's diff_ids differ in number"));
    }
    let wanted: Vec<&Descriptor> = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .filter(|(layer, diff_id)| {
            let stored = sha256_hex(diff_id).is_some_and(have);
            if stored {
                progress(Progress::Have { digest: layer.digest.clone() });
            }
            !stored
        })
        .map(|(layer, _)| layer)
        .collect();
    let bytes = Mutex::new(0u64);
    hiber_common::parallel::try_for_each(wanted.clone(), PARALLEL, |layer| {
        let n = fetch_blob(&client, reference, layer, &blobs, progress)?;
        *bytes.lock().unwrap_or_else(|e| e.into_inner()) += n;
        Ok(())
    })?;
    write_layout(layout, &manifest_descriptor)?;
    Ok(Pulled {
        downloaded: wanted.len(),
        skipped: manifest.layers.len() - wanted.len(),
        bytes: bytes.into_inner().unwrap_or_else(|e| e.into_inner()),
    })
}

/// The media types a manifest request accepts.
const MANIFEST_TYPES: [&str; 4] = [spec::MANIFEST, spec::INDEX, spec::DOCKER_MANIFEST, spec::DOCKER_LIST];

/// Fetches the image manifest of `reference` (through its index, if it has one) into `blobs`;
/// its descriptor (with its media type) and its contents.
fn fetch_manifest(
    client: &Client,
    reference: &Reference,
    blobs: &Path,
) -> Result<(Descriptor, Manifest), RegistryError> {
    let mut target = reference.target().to_string();
    for _ in 0..4 {
        let answer = client.get(&format!("manifests/{target}"), &MANIFEST_TYPES, 0)?;
        let media_type = answer.content_type.clone();
        let bytes = read_document(reference, answer.body, "manifest")?;
        let digest = spec::digest_of(&bytes);
        let expected = match &reference.target {
            Target::Digest(d) if target == *d => Some(d.clone()),
            _ => answer.digest.clone().filter(|d| d.starts_with("sha256:")),
        };
        if expected.as_ref().is_some_and(|e| *e != digest) || target.starts_with("sha256:") && target != digest {
            return Err(bad(
                reference,
                "manifest",
                format!("its digest is {digest}, not {}", expected.unwrap_or(target)),
            ));
        }
        let descriptor = Descriptor {
            media_type: media_type.clone(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            platform: None,
        };
        match media_type.as_str() {
            spec::INDEX | spec::DOCKER_LIST => {
                let index: Index = serde_json::from_slice(&bytes).map_err(|e| bad(reference, "index", e))?;
                let chosen = index
                    .for_this_platform()
                    .map_err(|found| RegistryError::Platform { reference: reference.to_string(), found })?;
                target = chosen.digest.clone();
            }
            spec::MANIFEST | spec::DOCKER_MANIFEST => {
                let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(reference, "manifest", e))?;
                write_blob(blobs, &digest, &bytes)?;
                return Ok((descriptor, manifest));
            }
            other => return Err(bad(reference, "manifest", format!("unknown media type {other}"))),
        }
    }
    Err(bad(reference, "index", "indexes nest more than four deep"))
}

/// Fetches a small blob (a configuration), checks it and keeps it in `blobs`.
fn fetch_document(
    client: &Client,
    reference: &Reference,
    d: &Descriptor,
    blobs: &Path,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let answer = client.get(&format!("blobs/{}", d.digest), &[], 0)?;
    let bytes = read_document(reference, answer.body, what)?;
    let digest = spec::digest_of(&bytes);
    if digest != d.digest {
        return Err(bad(reference, what, format!("its digest is {digest}, not {}", d.digest)));
    }
    write_blob(blobs, &digest, &bytes)?;
    Ok(bytes)
}

fn read_document(
    reference: &Reference,
    body: Box<dyn Read + Send + Sync>,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut bytes = Vec::new();
    body.take(DOCUMENT_LIMIT + 1).read_to_end(&mut bytes).map_err(|e| unreachable(reference, e))?;
    if bytes.len() as u64 > DOCUMENT_LIMIT {
        return Err(bad(reference, what, format!("it is larger than {DOCUMENT_LIMIT} bytes")));
    }
    Ok(bytes)
}

/// Downloads layer `d` into `blobs` (resuming a partial download), checks its digest and
/// size; the bytes that came over the network.
fn fetch_blob(
    client: &Client,
    reference: &Reference,
    d: &Descriptor,
    blobs: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<u64, RegistryError> {
    let hex = sha256_hex(&d.digest)
        .ok_or_else(|| bad(reference, "manifest", format!("'{}' is not a sha256 digest", d.digest)))?;
    let done = blobs.join(hex);
    if fs::metadata(&done).is_ok_and(|m| m.len() == d.size) {
        progress(Progress::Done { digest: d.digest.clone() });
        return Ok(0);
    }
    let partial = blobs.join(format!("{hex}.partial"));
    let mut received = 0;
    // A broken connection resumes where it stopped, a few times.
    for _ in 0..3 {
        let mut hasher = Sha256::new();
        let have = hash_file(&partial, &mut hasher).min(d.size);
        let answer = client.get(&format!("blobs/{}", d.digest), &[], have)?;
        let resumed = answer.status == 206;
        if !resumed {
            hasher = Sha256::new();
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&partial)
            .map_err(io_error(&partial))?;
        let mut total = if resumed { have } else { 0 };
        let mut body = answer.body;
        let mut buf = vec![0u8; 256 << 10];
        let copied: io::Result<()> = loop {
            match body.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = file.write_all(&buf[..n]) {
                        return Err(io_error(&partial)(e));
                    }
                    hasher.update(&buf[..n]);
                    total += n as u64;
                    received += n as u64;
                    progress(Progress::Layer { digest: d.digest.clone(), done: total, total: d.size });
                    if total > d.size {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if copied.is_err() {
            continue;
        }
        let actual = format!("sha256:{:x}", hasher.finalize());
        if total != d.size || actual != d.digest {
            let _ = fs::remove_file(&partial);
            return Err(bad(reference, &format!("layer {}", d.digest), format!("{total} bytes with digest {actual}")));
        }
        file.sync_all().map_err(io_error(&partial))?;
        fs::rename(&partial, &done).map_err(io_error(&done))?;
        progress(Progress::Done { digest: d.digest.clone() });
        return Ok(received);
    }
    Err(RegistryError::Unreachable {
        registry: reference.registry.clone(),
        reason: format!("the download of layer {} broke off three times", d.digest),
    })
}

/// Feeds file `path` (if it exists) to `hasher`; its length.
fn hash_file(path: &Path, hasher: &mut Sha256) -> u64 {
    let Ok(mut file) = File::open(path) else { return 0 };
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0;
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    total
}

fn write_blob(blobs: &Path, digest: &str, bytes: &[u8]) -> Result<(), RegistryError> {
    let path = blobs.join(digest.trim_start_matches("sha256:"));
    hiber_common::fs::write_atomic(&path, bytes).map_err(io_error(&path))
}

/// `oci-layout` and `index.json` naming the manifest: the layout is whole.
fn write_layout(layout: &Path, manifest: &Descriptor) -> Result<(), RegistryError> {
    let marker = layout.join("oci-layout");
    hiber_common::fs::write_atomic(&marker, br#"{"imageLayoutVersion": "1.0.0"}"#).map_err(io_error(&marker))?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": spec::INDEX,
        "manifests": [{"mediaType": manifest.media_type, "digest": manifest.digest, "size": manifest.size}],
    });
    let path = layout.join("index.json");
    hiber_common::fs::write_atomic(&path, index.to_string().as_bytes()).map_err(io_error(&path))
}

fn bad(reference: &Reference, what: &str, reason: impl ToString) -> RegistryError {
    RegistryError::Bad { registry: reference.registry.clone(), what: what.to_string(), reason: reason.to_string() }
}

fn unreachable(reference: &Reference, e: io::Error) -> RegistryError {
    RegistryError::Unreachable { registry: reference.registry.clone(), reason: e.to_string() }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { what: format!("cannot write {}", path.display()), source }
}

/// Where pulls of `reference` are kept under `dir`: one layout per repository.
pub fn layout_dir(dir: &Path, reference: &Reference) -> PathBuf {
    dir.join(format!("{}/{}", reference.registry.replace(':', "_"), reference.repository))
}
