//! `hiber bench snapshot`: hiber's snapshot, restore, size and fork of 10 for chosen workloads,
//! next to plain CRIU CLI calls and Podman on the same workloads, in the same run.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use hiber_image::ImageStore;
use hiber_sandbox::{Criu, Limits, SandboxSpec};
use serde::Serialize;

use super::ensure_image;
use super::hiber::{hiber, HiberTimes, FORKS};
use crate::commands::backend;
use crate::format;
use crate::peers::{criu_cli::criu_cli, podman, PeerTimes, Workload};

/// Everything `bench snapshot` measured.
#[derive(Debug, Serialize)]
struct Report {
    /// Every number is the median over this many rounds.
    rounds: usize,
    /// The CRIU every side used.
    criu_version: String,
    workloads: Vec<WorkloadReport>,
    /// Peers skipped or failed, and why.
    notes: Vec<String>,
}

/// One workload, measured by hiber and its peers.
#[derive(Debug, Serialize)]
struct WorkloadReport {
    workload: &'static str,
    hiber: HiberTimes,
    /// `None` when this peer failed (see the notes).
    criu_cli: Option<PeerTimes>,
    /// `None` when Podman was skipped or failed (see the notes).
    podman: Option<PeerTimes>,
    /// hiber's time divided by the peer's (below 1: hiber is faster).
    ratios: Ratios,
}

/// hiber / peer, for snapshot (freeze to durable) and restore (until the workload answers).
#[derive(Debug, Serialize, PartialEq)]
struct Ratios {
    snapshot_vs_criu_cli: Option<f64>,
    restore_vs_criu_cli: Option<f64>,
    snapshot_vs_podman: Option<f64>,
    restore_vs_podman: Option<f64>,
}

impl Ratios {
    fn new(hiber: &HiberTimes, criu_cli: Option<&PeerTimes>, podman: Option<&PeerTimes>) -> Ratios {
        let snapshot = |peer: Option<&PeerTimes>| peer.map(|p| hiber.snapshot_s / p.snapshot_s);
        let restore = |peer: Option<&PeerTimes>| peer.map(|p| hiber.restore_s / p.restore_answered_s());
        Ratios {
            snapshot_vs_criu_cli: snapshot(criu_cli),
            restore_vs_criu_cli: restore(criu_cli),
            snapshot_vs_podman: snapshot(podman),
            restore_vs_podman: restore(podman),
        }
    }
}

pub fn snapshot(home: &Path, rounds: usize, workloads: &[Workload], json: bool, skip_podman: bool) -> Result<i32> {
    let chosen = if workloads.is_empty() { &Workload::DEFAULT[..] } else { workloads };
    let store = ImageStore::open(home)?;
    let backend = backend(home)?;
    let criu = Criu::locate()?;
    let work = home.join("bench");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut notes = Vec::new();
    let with_podman = if skip_podman {
        notes.push("Podman: skipped (--skip-podman)".to_string());
        false
    } else if !podman::installed() {
        notes.push("Podman: skipped, it is not installed (run scripts/setup-bench.sh as root)".to_string());
        false
    } else {
        true
    };

    let mut reports = Vec::new();
    for &workload in chosen {
        let image = ensure_image(&store, workload.image(), workload.root_source())?;
        let lowers = store.lower_dirs(&image);
        let spec = SandboxSpec {
            name: None,
            image: image.name.clone(),
            limits: Limits::default(),
            main: Some(workload.process()),
            confinement: Default::default(),
        };
        let label = workload.label();
        eprintln!("bench: {label}: hiber, {rounds} rounds");
        let hiber = hiber(&*backend, home, &spec, workload, rounds)?;
        eprintln!("bench: {label}: CRIU CLI, {rounds} rounds");
        let criu_cli = peer(criu_cli(home, &spec, workload, rounds, &work), &mut notes);
        let podman = if with_podman {
            eprintln!("bench: {label}: Podman, {rounds} rounds");
            peer(podman::podman(workload, &lowers[0], rounds), &mut notes)
        } else {
            None
        };
        let ratios = Ratios::new(&hiber, criu_cli.as_ref(), podman.as_ref());
        reports.push(WorkloadReport { workload: label, hiber, criu_cli, podman, ratios });
    }
    let _ = fs::remove_dir(&work);

    let report = Report { rounds, criu_version: criu.version, workloads: reports, notes };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_report(&report)?;
    }
    Ok(0)
}

/// A peer's result; a failure becomes a note, so the other numbers are still reported.
fn peer(result: Result<PeerTimes>, notes: &mut Vec<String>) -> Option<PeerTimes> {
    match result {
        Ok(times) => Some(times),
        Err(e) => {
            let note = format!("{e:#}").replace('\n', " ");
            eprintln!("bench: {note}");
            notes.push(note);
            None
        }
    }
}

fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
}

fn print_report(report: &Report) -> std::io::Result<()> {
    let mut rows = Vec::new();
    for w in &report.workloads {
        let h = &w.hiber;
        rows.push(vec![
            w.workload.to_string(),
            "hiber".into(),
            ms(h.snapshot_s),
            ms(h.restore_s),
            format::size(h.size_bytes),
            ms(h.fork_s),
        ]);
        for (name, peer) in [("CRIU CLI", &w.criu_cli), ("Podman", &w.podman)] {
            let row = match peer {
                Some(p) => vec![ms(p.snapshot_s), ms(p.restore_answered_s()), format::size(p.size_bytes), "-".into()],
                None => vec!["-".into(); 4],
            };
            rows.push([vec![String::new(), name.to_string()], row].concat());
        }
    }
    format::table(&["WORKLOAD", "WHO", "SNAPSHOT", "RESTORE", "SIZE", &format!("FORK x{FORKS}")], &rows)?;
    outln!()?;
    let rows: Vec<Vec<String>> = report
        .workloads
        .iter()
        .map(|w| {
            let r = &w.ratios;
            vec![
                w.workload.to_string(),
                ratio(r.snapshot_vs_criu_cli),
                ratio(r.restore_vs_criu_cli),
                ratio(r.snapshot_vs_podman),
                ratio(r.restore_vs_podman),
            ]
        })
        .collect();
    format::table(
        &["hiber / peer", "SNAPSHOT vs CRIU", "RESTORE vs CRIU", "SNAPSHOT vs Podman", "RESTORE vs Podman"],
        &rows,
    )?;
    outln!()?;
    outln!(
        "Medians of {} rounds, CRIU {}. snapshot = freeze to durable (fsync'd); restore = from the",
        report.rounds,
        report.criu_version
    )?;
    outln!("restore command until the workload answers again (idle: the command returns; python-100m: its")?;
    outln!("next counter value, previous + 1, is read in the sandbox; chromium: DevTools lists the page with")?;
    outln!("its timer not gone back; dev-server: vite serves /main.js); size = allocated on disk (hiber: the")?;
    outln!("snapshot directory + its new layer); fork x{FORKS} = wall time for {FORKS} concurrent restores of one")?;
    outln!("snapshot until all answer. Ratios below 1 mean hiber is faster.")?;
    for note in &report.notes {
        outln!("note: {note}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_divide_hiber_by_the_peer_and_use_the_answer_time() {
        let hiber = HiberTimes { snapshot_s: 0.1, restore_call_s: 0.05, restore_s: 0.08, size_bytes: 1, fork_s: 1.0 };
        let peer = PeerTimes {
            snapshot_s: 0.4,
            checkpoint_command_s: 0.3,
            restore_s: 0.2,
            restore_until_answer_s: Some(0.32),
            size_bytes: 1,
        };
        let ratios = Ratios::new(&hiber, Some(&peer), None);
        assert_eq!(ratios.snapshot_vs_criu_cli, Some(0.25));
        assert_eq!(ratios.restore_vs_criu_cli, Some(0.25));
        assert_eq!(ratios.snapshot_vs_podman, None);
        assert_eq!(ratio(ratios.restore_vs_podman), "-");
        assert_eq!(ratio(Some(0.254)), "0.25x");
    }
}
