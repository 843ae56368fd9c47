//! hiber's own side of `hiber bench snapshot`: snapshot, restore, size and fork of 10 through
//! the [`Backend`], on the same workloads as the peers.

use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, ensure, Context, Result};
use hiber_sandbox::{Backend, BackendState, SandboxSpec, SnapshotOptions};
use serde::Serialize;

use crate::peers::{disk_usage, median, Workload, SETTLE};

/// How many sandboxes the fork measurement restores at once.
pub const FORKS: usize = 10;

/// hiber's numbers for one workload (one round, or medians over the rounds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HiberTimes {
    /// Freeze to durable: the `Backend::snapshot` call (suspend mode), seconds.
    pub snapshot_s: f64,
    /// The `Backend::restore` call alone (it returns once hiber-init answers a ping), seconds.
    pub restore_call_s: f64,
    /// From the restore call's start until the workload answers again: the call itself for an
    /// idle workload, until the next counter value is read for a serving one, seconds.
    pub restore_s: f64,
    /// The snapshot directory plus the snapshot's new layer, allocated blocks, bytes.
    pub size_bytes: u64,
    /// Wall time to restore [`FORKS`] sandboxes from the snapshot concurrently (one thread
    /// each, like `hiber fork -n 10`) until every one answers, seconds.
    pub fork_s: f64,
}

impl HiberTimes {
    fn medians(rounds: &[HiberTimes]) -> HiberTimes {
        let of = |field: fn(&HiberTimes) -> f64| median(&rounds.iter().map(field).collect::<Vec<_>>());
        HiberTimes {
            snapshot_s: of(|r| r.snapshot_s),
            restore_call_s: of(|r| r.restore_call_s),
            restore_s: of(|r| r.restore_s),
            size_bytes: of(|r| r.size_bytes as f64) as u64,
            fork_s: of(|r| r.fork_s),
        }
    }
}

/// Measures `workload` (the main process of `spec`) `rounds` times; returns the medians.
pub fn hiber(
    backend: &dyn Backend,
    home: &Path,
    spec: &SandboxSpec,
    workload: Workload,
    rounds: usize,
) -> Result<HiberTimes> {
    ensure!(rounds > 0, "at least one round is needed");
    let times = (1..=rounds)
        .map(|n| {
            let cleanup = Cleanup { backend, sandboxes: Mutex::default(), snapshot: None };
            one_round(home, spec, workload, cleanup).with_context(|| format!("hiber, {}, round {n}", workload.label()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(HiberTimes::medians(&times))
}

/// Create → snapshot → restore → fork of [`FORKS`], timed; everything is removed afterwards.
fn one_round(home: &Path, spec: &SandboxSpec, workload: Workload, mut cleanup: Cleanup) -> Result<HiberTimes> {
    let backend = cleanup.backend;
    let id = backend.create(spec.clone()).context("creating the sandbox")?.id;
    cleanup.add(id.clone());
    let before = workload.probe().map(|p| p.ask(|| dial(backend, &id, p.port()))).transpose()?;
    thread::sleep(SETTLE);

    let started = Instant::now();
    let manifest = backend.snapshot(&id, &SnapshotOptions::default()).context("snapshot")?;
    let snapshot_s = started.elapsed().as_secs_f64();
    cleanup.snapshot = Some(manifest.id.clone());
    let BackendState::Container { layers, .. } = &manifest.backend else {
        return Err(anyhow!("snapshot {} is not a container's", manifest.id));
    };
    let layer = layers.first().ok_or_else(|| anyhow!("snapshot {} has no layer", manifest.id))?;
    let size_bytes =
        disk_usage(&home.join("snapshots").join(&manifest.id))? + disk_usage(&home.join("layers").join(layer))?;

    let (restore_call_s, restore_s) = restore(&cleanup, &manifest.id, workload, before).context("restore")?;

    let started = Instant::now();
    let forks: Vec<Result<(f64, f64)>> = thread::scope(|s| {
        let handles: Vec<_> =
            (0..FORKS).map(|_| s.spawn(|| restore(&cleanup, &manifest.id, workload, before))).collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow!("a fork thread panicked"))?).collect()
    });
    let fork_s = started.elapsed().as_secs_f64();
    for fork in forks {
        fork.context("fork")?;
    }

    cleanup.finish()?;
    Ok(HiberTimes { snapshot_s, restore_call_s, restore_s, size_bytes, fork_s })
}

/// Restores `snapshot` and waits until the workload answers (for a serving workload, with the
/// counter value after `before`); returns the restore call's time and the time until the
/// answer, seconds. The new sandbox is left to `cleanup`.
fn restore(cleanup: &Cleanup, snapshot: &str, workload: Workload, before: Option<u64>) -> Result<(f64, f64)> {
    let started = Instant::now();
    let id = cleanup.backend.restore(snapshot, None)?.id;
    let call_s = started.elapsed().as_secs_f64();
    cleanup.add(id.clone());
    if let (Some(before), Some(probe)) = (before, workload.probe()) {
        probe.ask_again(before, || dial(cleanup.backend, &id, probe.port()))?;
    }
    Ok((call_s, started.elapsed().as_secs_f64()))
}

/// A connection to `port` in `sandbox`.
fn dial(backend: &dyn Backend, sandbox: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
    backend.dial(sandbox, port).map_err(std::io::Error::other)
}

/// Everything a round made — sandboxes, then the snapshot — removed when done or dropped.
struct Cleanup<'a> {
    backend: &'a dyn Backend,
    sandboxes: Mutex<Vec<String>>,
    snapshot: Option<String>,
}

impl Cleanup<'_> {
    fn add(&self, sandbox: String) {
        self.sandboxes.lock().unwrap_or_else(|e| e.into_inner()).push(sandbox);
    }

    /// Removes everything, reporting the first failure (a drop only warns).
    fn finish(mut self) -> Result<()> {
        self.clean_up()
    }

    fn clean_up(&mut self) -> Result<()> {
        let sandboxes = std::mem::take(self.sandboxes.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut first_error = None;
        for id in sandboxes {
            if let Err(e) = self.backend.remove(&id, true) {
                first_error.get_or_insert(anyhow::Error::from(e).context(format!("removing sandbox {id}")));
            }
        }
        if let Some(id) = self.snapshot.take() {
            if let Err(e) = self.backend.remove_snapshot(&id) {
                first_error.get_or_insert(anyhow::Error::from(e).context(format!("removing snapshot {id}")));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.clean_up() {
            eprintln!("hiber: warning: {e:#}");
        }
    }
}
