//! `hiber pull`: an image from a registry, into `HOME/pulls/<registry>/<repository>` (an OCI
//! layout, so an interrupted pull resumes), then imported like any OCI layout.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use hiber_image::{ImageStore, LayerId};
use hiber_registry::{Credentials, Progress, Reference};

use super::images::{collect_layers, Progress as Lines};
use crate::cli::PullArgs;
use crate::format;

pub fn pull(home: &Path, args: PullArgs) -> Result<i32> {
    let reference = Reference::parse(&args.reference)?;
    let name = match args.name {
        Some(name) => name,
        None => reference.repository.rsplit('/').next().unwrap_or_default().to_string(),
    };
    hiber_image::validate_name(&name)?;
    let store = ImageStore::open(home)?;
    let layout = hiber_registry::layout_dir(&home.join("pulls"), &reference);
    let credentials = match (std::env::var("HIBER_REGISTRY_USER"), std::env::var("HIBER_REGISTRY_PASSWORD")) {
        (Ok(user), Ok(password)) => Some(Credentials { user, password }),
        _ => None,
    };
    let have = |diff_id: &str| LayerId::for_diff(diff_id).is_ok_and(|id| store.layers().path(&id).is_dir());
    let bars = Bars::new();
    let started = Instant::now();
    let pulled = hiber_registry::pull(&reference, credentials, &layout, &have, &|p| bars.show(p))?;
    bars.finish();
    let seconds = started.elapsed().as_secs_f64();
    let mut lines = Lines::new();
    let image = store.import(&layout, &name, &mut |l| lines.line(l))?;
    lines.finish();
    collect_layers(home)?;
    // The layers are stored now: their compressed blobs are not needed again.
    for blob in bars.blobs() {
        let _ = std::fs::remove_file(layout.join("blobs/sha256").join(blob.trim_start_matches("sha256:")));
    }
    eprintln!(
        "pulled {reference}: {} layers ({} already stored), {} in {seconds:.1}s ({}/s); image {} is {}",
        pulled.downloaded + pulled.skipped,
        pulled.skipped,
        format::size(pulled.bytes),
        format::size((pulled.bytes as f64 / seconds.max(0.001)) as u64),
        image.name,
        format::size(image.size_bytes),
    );
    outln!("{}", image.name).context("writing the image name")?;
    Ok(0)
}

/// One progress bar per layer on a terminal (like `docker pull`); a line per finished layer
/// otherwise.
struct Bars {
    multi: Option<indicatif::MultiProgress>,
    layers: Mutex<HashMap<String, Option<indicatif::ProgressBar>>>,
}

impl Bars {
    fn new() -> Bars {
        Bars { multi: std::io::stderr().is_terminal().then(indicatif::MultiProgress::new), layers: Mutex::default() }
    }

    fn show(&self, progress: Progress) {
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        match progress {
            Progress::Have { digest } => eprintln!("{}: already stored", short(&digest)),
            Progress::Layer { digest, done, total } => {
                let bar = layers.entry(digest.clone()).or_insert_with(|| {
                    self.multi.as_ref().map(|multi| {
                        let bar = multi.add(indicatif::ProgressBar::new(total));
                        let style = indicatif::ProgressStyle::with_template(
                            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .expect("a valid template");
                        bar.set_style(style.progress_chars("=> "));
                        bar.set_prefix(short(&digest).to_string());
                        bar
                    })
                });
                if let Some(bar) = bar {
                    bar.set_position(done);
                }
            }
            Progress::Done { digest } => match layers.entry(digest.clone()).or_insert(None) {
                Some(bar) => bar.finish(),
                None => eprintln!("{}: downloaded", short(&digest)),
            },
        }
    }

    fn finish(&self) {
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }

    /// The layer blobs this pull downloaded.
    fn blobs(&self) -> Vec<String> {
        self.layers.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }
}

/// The first 12 hex digits of a digest, as `docker pull` shows them.
fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}
