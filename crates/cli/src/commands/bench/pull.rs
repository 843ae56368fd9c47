//! `hiber bench pull`: `hiber pull` of a multi-layer image from a registry on loopback, next to
//! `skopeo copy` and `podman pull` of the same image, in the same run; and a second pull of an
//! image that shares its layers but one.
//!
//! The image is the Debian image's root split into four gzip layers (`usr/lib`, `usr/share`, the
//! rest of `usr`, everything else); the second adds one small layer. Both are pushed by skopeo to
//! a CNCF distribution server (`scripts/setup-test.sh` unpacks it) started on a free loopback
//! port. What each side does differs, and the report says so: `hiber pull` downloads, checks and
//! unpacks the layers into ready-to-run layers; `skopeo copy` into an OCI directory downloads and
//! checks only; `podman pull` downloads and unpacks into its storage.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use hiber_image::oci_spec::digest_of;
use hiber_image::ImageStore;
use hiber_registry::server::LocalRegistry;
use serde::Serialize;

use super::ensure_image;
use crate::peers::median;

/// Podman with hiber's benchmark configuration (`scripts/setup-bench.sh`).
const PODMAN: &str = "/opt/hiber/podman/podman";

/// What `bench pull` measured, medians over the rounds.
#[derive(Debug, Serialize)]
struct Report {
    rounds: usize,
    /// The image's layers and their compressed bytes.
    layers: usize,
    compressed_bytes: u64,
    /// `hiber pull` of the image into an empty home, seconds.
    hiber_s: f64,
    /// `hiber pull` of the image sharing all its layers but a small one, seconds.
    hiber_shared_s: f64,
    /// `skopeo copy docker://... oci:DIR`, seconds.
    skopeo_s: Option<f64>,
    /// `podman pull`, seconds (`None` when Podman is not set up).
    podman_s: Option<f64>,
}

pub fn pull(home: &Path, rounds: usize, json: bool) -> Result<i32> {
    let server = hiber_registry::server::binary();
    ensure!(server.exists(), "{} is missing: run scripts/setup-test.sh", server.display());
    let store = ImageStore::open(home)?;
    let debian = ensure_image(&store, "debian", None)?;
    let work = tempfile::Builder::new().prefix("hiber-bench-pull-").tempdir_in(home)?;
    let root = store.layers().path(&debian.layers[0]);
    eprintln!("bench: making a four-layer image from {}", root.display());
    let (v1, v2) = (work.path().join("v1"), work.path().join("v2"));
    let compressed_bytes = write_layout(&root, &v1, false)?;
    write_layout(&root, &v2, true)?;
    let registry = LocalRegistry::start(work.path(), "")?;
    for (layout, tag) in [(&v1, "v1"), (&v2, "v2")] {
        let dest = format!("docker://{}/bench/debian:{tag}", registry.address);
        run(Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}", layout.display()))
            .arg(dest))?;
    }
    let image = |tag: &str| format!("{}/bench/debian:{tag}", registry.address);
    let podman = Path::new(PODMAN).exists();
    let (mut hiber, mut shared, mut skopeo, mut podman_s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("bench: round {round} of {rounds}");
        let pull_home = tempfile::Builder::new().prefix("hiber-bench-pull-home-").tempdir_in(work.path())?;
        let hiber_pull = |tag: &str| {
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.args(["pull", "--name", tag, &image(tag)]).env("HIBER_HOME", pull_home.path());
            timed(&mut cmd)
        };
        hiber.push(hiber_pull("v1")?);
        shared.push(hiber_pull("v2")?);
        let dir = work.path().join(format!("skopeo-{round}"));
        skopeo.push(timed(
            Command::new("skopeo")
                .args(["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{}", image("v1")))
                .arg(format!("oci:{}", dir.display())),
        )?);
        let _ = fs::remove_dir_all(&dir);
        if podman {
            podman_s.push(timed(Command::new(PODMAN).args(["pull", "--quiet", "--tls-verify=false", &image("v1")]))?);
            run(Command::new(PODMAN).args(["rmi", "--force", &image("v1")]))?;
        }
    }
    let report = Report {
        rounds,
        layers: 4,
        compressed_bytes,
        hiber_s: median(&hiber),
        hiber_shared_s: median(&shared),
        skopeo_s: Some(median(&skopeo)),
        podman_s: podman.then(|| median(&podman_s)),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(0);
    }
    let mb = compressed_bytes as f64 / 1e6;
    let line = |who: &str, s: Option<f64>| match s {
        Some(s) => outln!("{who:<34} {s:>7.2} s   {:>7.1} MB/s", mb / s),
        None => outln!("{who:<34}       -     (not set up: scripts/setup-bench.sh)"),
    };
    outln!("image: 4 gzip layers, {mb:.1} MB compressed; medians of {rounds} rounds")?;
    line("hiber pull (download+unpack)", Some(report.hiber_s))?;
    outln!("{:<34} {:>7.2} s   (one small layer moves)", "hiber pull, all but 1 layer stored", report.hiber_shared_s)?;
    line("skopeo copy to oci: (download)", report.skopeo_s)?;
    line("podman pull (download+unpack)", report.podman_s)?;
    outln!(
        "hiber / skopeo {:.2}x; hiber / podman {}",
        report.hiber_s / median(&skopeo),
        match report.podman_s {
            Some(p) => format!("{:.2}x", report.hiber_s / p),
            None => "-".into(),
        }
    )?;
    Ok(0)
}

/// Runs `cmd`, failing with its stderr if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `cmd`; its wall time, seconds.
fn timed(cmd: &mut Command) -> Result<f64> {
    let started = Instant::now();
    run(cmd)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Which of the four layers a path (relative to the root) goes in.
fn layer_of(rel: &Path) -> usize {
    if rel.starts_with("usr/lib") {
        0
    } else if rel.starts_with("usr/share") {
        1
    } else if rel.starts_with("usr") {
        2
    } else {
        3
    }
}

/// Writes an OCI layout of `root` (a hiber layer, owners shifted) in four gzip layers, plus a
/// small fifth one when `extra`; the compressed bytes of the four.
fn write_layout(root: &Path, layout: &Path, extra: bool) -> Result<u64> {
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let mut builders: Vec<tar::Builder<flate2::write::GzEncoder<Vec<u8>>>> = (0..4)
        .map(|_| tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())))
        .collect();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)?;
            let mut header = tar::Header::new_gnu();
            header.set_metadata(&meta);
            let unshift = |id: u32| id.checked_sub(hiber_image::ids::HOST_BASE).unwrap_or(id);
            header.set_uid(u64::from(unshift(meta.uid())));
            header.set_gid(u64::from(unshift(meta.gid())));
            let builder = &mut builders[layer_of(&rel)];
            if meta.is_dir() {
                header.set_size(0);
                builder.append_data(&mut header, &rel, io::empty())?;
                stack.push(rel);
            } else if meta.file_type().is_symlink() {
                header.set_size(0);
                builder.append_link(&mut header, &rel, fs::read_link(&path)?)?;
            } else if meta.is_file() {
                builder.append_data(&mut header, &rel, File::open(&path)?)?;
            }
        }
    }
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut add = |tar: Vec<u8>, gz: Vec<u8>| -> Result<u64> {
        diff_ids.push(digest_of(&tar));
        layers.push(blob(&blobs, "application/vnd.oci.image.layer.v1.tar+gzip", &gz)?);
        Ok(gz.len() as u64)
    };
    let mut four = 0;
    for builder in builders {
        let gz = builder.into_inner()?.finish()?;
        four += add(gunzip(&gz)?, gz)?;
    }
    if extra {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(6);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, "etc/v2", &b"second"[..])?;
        let tar = builder.into_inner()?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar)?;
        add(tar, gz.finish()?)?;
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = blob(&blobs, "application/vnd.oci.image.config.v1+json", config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": hiber_image::oci_spec::MANIFEST, "config": config, "layers": layers,
    });
    let manifest = blob(&blobs, hiber_image::oci_spec::MANIFEST, manifest.to_string().as_bytes())?;
    fs::write(layout.join("index.json"), serde_json::json!({"schemaVersion": 2, "manifests": [manifest]}).to_string())?;
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#)?;
    Ok(four)
}

fn gunzip(gz: &[u8]) -> Result<Vec<u8>> {
    let mut tar = Vec::new();
    io::copy(&mut flate2::read::GzDecoder::new(gz), &mut tar)?;
    Ok(tar)
}

/// Writes `bytes` as a blob; its descriptor.
fn blob(blobs: &Path, media_type: &str, bytes: &[u8]) -> Result<serde_json::Value> {
    let digest = digest_of(bytes);
    fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes)?;
    Ok(serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}))
}
