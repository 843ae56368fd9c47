//! `hiber bench`: measurements that print numbers.

mod hiber;
mod pull;
mod session;
mod snapshot;
mod start;

use std::path::Path;

use anyhow::{ensure, Result};
use hiber_image::{Image, ImageStore};

use super::images::Progress;
use crate::cli::BenchCommand;

pub fn bench(home: &Path, command: BenchCommand) -> Result<i32> {
    match command {
        BenchCommand::Start { runs, rounds, json } => start::start(home, runs.max(1), rounds.max(1), json),
        BenchCommand::Snapshot { rounds, workloads, json, skip_podman } => {
            snapshot::snapshot(home, rounds.max(1), &workloads, json, skip_podman)
        }
        BenchCommand::Session { rounds, json } => session::session(home, rounds.max(1), json),
        BenchCommand::Pull { rounds, json } => pull::pull(home, rounds.max(1), json),
    }
}

/// Image `name`, made first if it is missing: imported from the root filesystem `source`, or
/// else the stock `busybox` or `debian` built.
fn ensure_image(store: &ImageStore, name: &str, source: Option<&str>) -> Result<Image> {
    if let Ok(image) = store.get(name) {
        return Ok(image);
    }
    let mut progress = Progress::new();
    eprintln!("bench: making the {name} image first");
    let image = match (name, source) {
        (_, Some(root)) => {
            ensure!(Path::new(root).is_dir(), "{root} is missing: run scripts/setup-test.sh to make it");
            store.import(Path::new(root), name, &mut |l| progress.line(l))?
        }
        ("busybox", None) => store.build_busybox(&mut |l| progress.line(l))?,
        _ => store.build_debian(&mut |l| progress.line(l))?,
    };
    progress.finish();
    Ok(image)
}
