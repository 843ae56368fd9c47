//! `hiber snapshot`, `snapshots`, `restore`, `fork` and `snapshot rm`.

use std::path::Path;

use anyhow::{Context, Result};
use hiber_sandbox::{Manifest, SnapshotOptions};

use super::backend;
use crate::cli::{ForkArgs, RestoreArgs, SnapshotArgs, SnapshotCommand};
use crate::format;

pub fn snapshot(home: &Path, args: SnapshotArgs) -> Result<i32> {
    let backend = backend(home)?;
    if let Some(SnapshotCommand::Rm { snapshots }) = args.command {
        for key in &snapshots {
            backend.remove_snapshot(key).with_context(|| format!("removing snapshot {key}"))?;
            outln!("{key}")?;
        }
        return Ok(0);
    }
    let sandbox = args.sandbox.expect("clap requires the sandbox");
    if args.check {
        let obstacles = backend.snapshot_obstacles(&sandbox)?;
        if obstacles.is_empty() {
            outln!("{sandbox} can be snapshotted")?;
            return Ok(0);
        }
        for line in &obstacles {
            outln!("{line}")?;
        }
        return Ok(1);
    }
    let options = SnapshotOptions { name: args.name, leave_running: args.leave_running };
    let manifest = backend.snapshot(&sandbox, &options)?;
    outln!("{}", manifest.id)?;
    Ok(0)
}

pub fn list(home: &Path, json: bool) -> Result<i32> {
    let snapshots = backend(home)?.snapshots()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&snapshots)?)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = snapshots.iter().map(row).collect();
    format::table(&["ID", "NAME", "PARENT", "SANDBOX", "IMAGE", "SIZE", "CREATED"], &rows)?;
    Ok(0)
}

fn row(m: &Manifest) -> Vec<String> {
    vec![
        m.id.clone(),
        m.name.clone().unwrap_or_default(),
        m.parent.clone().unwrap_or_else(|| "-".into()),
        m.source_sandbox.clone(),
        m.image.clone(),
        format::size(m.size_bytes()),
        format::age(m.created),
    ]
}

pub fn restore(home: &Path, args: RestoreArgs) -> Result<i32> {
    let info = backend(home)?.restore(&args.snapshot, args.name.as_deref())?;
    outln!("{}", info.id)?;
    Ok(0)
}

pub fn fork(home: &Path, args: ForkArgs) -> Result<i32> {
    let backend = backend(home)?;
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.count).map(|_| s.spawn(|| backend.restore(&args.snapshot, None))).collect();
        handles.into_iter().map(|h| h.join().expect("restore thread panicked")).collect()
    });
    let mut first_error = None;
    for result in results {
        match result {
            Ok(info) => outln!("{}", info.id)?,
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    match first_error {
        Some(e) => Err(anyhow::Error::from(e).context("some forks failed (the ids printed are running)")),
        None => Ok(0),
    }
}
