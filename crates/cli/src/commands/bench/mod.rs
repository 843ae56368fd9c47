//! `hiber bench`: measurements that print numbers.

mod hiber;
mod session;
mod snapshot;
mod start;

use std::path::Path;

use anyhow::Result;
use hiber_image::{Image, ImageStore};

use super::images::Progress;
use crate::cli::BenchCommand;

pub fn bench(home: &Path, command: BenchCommand) -> Result<i32> {
    match command {
        BenchCommand::Start { runs, rounds, json } => start::start(home, runs.max(1), rounds.max(1), json),
        BenchCommand::Snapshot { rounds, json, skip_podman } => {
            snapshot::snapshot(home, rounds.max(1), json, skip_podman)
        }
        BenchCommand::Session { rounds, json } => session::session(home, rounds.max(1), json),
    }
}

/// The stock image `name` (`busybox` or `debian`), built first if it is missing.
fn ensure_image(store: &ImageStore, name: &str) -> Result<Image> {
    if let Ok(image) = store.get(name) {
        return Ok(image);
    }
    let mut progress = Progress::new();
    eprintln!("bench: building the {name} image first");
    let image = match name {
        "busybox" => store.build_busybox(&mut |l| progress.line(l))?,
        _ => store.build_debian(&mut |l| progress.line(l))?,
    };
    progress.finish();
    Ok(image)
}
