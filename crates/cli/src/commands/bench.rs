//! `hiber bench`: measurements that print numbers.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hiber_image::{Image, ImageStore};
use hiber_proto::ProcessSpec;
use hiber_sandbox::{Backend, ContainerBackend, InitConnection, Limits, SandboxSpec};
use serde::Serialize;

use super::backend;
use super::images::Progress;
use crate::cli::BenchCommand;

pub fn bench(home: &Path, command: BenchCommand) -> Result<i32> {
    match command {
        BenchCommand::Start { runs, rounds, json } => start(home, runs.max(1), rounds.max(1), json),
    }
}

/// One line of `bench start`.
#[derive(Debug, Serialize)]
struct StartResult {
    image: String,
    workers: usize,
    /// Median over the rounds.
    starts_per_sec: f64,
    /// Median time of one start (create, run `true`, remove), milliseconds.
    latency_ms_p50: f64,
    /// 95th percentile of one start, milliseconds.
    latency_ms_p95: f64,
}

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

/// Create a sandbox, run `true` in it, remove it; returns how long it took.
fn one_start(backend: &ContainerBackend, spec: &SandboxSpec) -> Result<Duration> {
    let started = Instant::now();
    let info = backend.create(spec.clone())?;
    let process = ProcessSpec { argv: vec!["true".into()], env: vec![], cwd: String::new(), tty: false };
    let ran = InitConnection::run(info.record.init_pid, "bench", process);
    backend.remove(&info.record.id, true)?;
    let out = ran?;
    ensure!(out.code == 0, "`true` exited with {} in the benchmark sandbox", out.code);
    Ok(started.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn start(home: &Path, runs: usize, rounds: usize, json: bool) -> Result<i32> {
    let store = ImageStore::open(home)?;
    let backend = backend(home)?;
    let mut results = Vec::new();
    for name in ["busybox", "debian"] {
        let image = ensure_image(&store, name)?;
        let spec = SandboxSpec {
            name: None,
            image: image.name.clone(),
            lowers: store.lower_dirs(&image),
            limits: Limits::default(),
            main: None,
        };
        one_start(&backend, &spec).context("warm-up start")?;
        for workers in [1, 2] {
            let mut rates = Vec::new();
            let mut latencies = Vec::new();
            for _ in 0..rounds {
                let began = Instant::now();
                let per_worker: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..workers)
                        .map(|w| {
                            let (backend, spec) = (&backend, &spec);
                            let share = runs / workers + usize::from(w < runs % workers);
                            s.spawn(move || (0..share).map(|_| one_start(backend, spec)).collect())
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().expect("bench worker panicked")).collect()
                });
                let elapsed = began.elapsed().as_secs_f64();
                for times in per_worker {
                    latencies.extend(times?.iter().map(|d| d.as_secs_f64() * 1000.0));
                }
                rates.push(runs as f64 / elapsed);
            }
            rates.sort_by(f64::total_cmp);
            latencies.sort_by(f64::total_cmp);
            let result = StartResult {
                image: name.into(),
                workers,
                starts_per_sec: percentile(&rates, 0.5),
                latency_ms_p50: percentile(&latencies, 0.5),
                latency_ms_p95: percentile(&latencies, 0.95),
            };
            if !json {
                println!(
                    "{:<8} workers={}  {:>7.1} starts/s   start p50 {:>6.1} ms  p95 {:>6.1} ms",
                    result.image, result.workers, result.starts_per_sec, result.latency_ms_p50, result.latency_ms_p95
                );
            }
            results.push(result);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("({runs} starts per measurement, median of {rounds}; a start = create, run `true`, remove)");
    }
    Ok(0)
}
