//! `hiber stop` and `hiber rm`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::backend;
use crate::cli::{RmArgs, StopArgs};

pub fn stop(home: &Path, args: StopArgs) -> Result<i32> {
    let backend = backend(home)?;
    for key in &args.sandboxes {
        backend.stop(key, Duration::from_secs(args.time)).with_context(|| format!("stopping {key}"))?;
        outln!("{key}")?;
    }
    Ok(0)
}

pub fn rm(home: &Path, args: RmArgs) -> Result<i32> {
    let backend = backend(home)?;
    for key in &args.sandboxes {
        backend.remove(key, args.force).with_context(|| format!("removing {key}"))?;
        outln!("{key}")?;
    }
    Ok(0)
}
