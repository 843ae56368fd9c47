//! `hiber bench start`: sandbox starts per second.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hiber_image::ImageStore;
use hiber_proto::ProcessSpec;
use hiber_sandbox::{Backend, Limits, SandboxSpec};
use serde::Serialize;

use super::ensure_image;
use crate::commands::backend;
use crate::peers::{median, percentile};

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

/// Create a sandbox, run `true` in it, remove it; returns how long it took.
fn one_start(backend: &dyn Backend, spec: &SandboxSpec) -> Result<Duration> {
    let started = Instant::now();
    let id = backend.create(spec.clone())?.id;
    let process = ProcessSpec::command(["true"]);
    let ran = backend.connect(&id).map_err(anyhow::Error::from).and_then(|c| Ok(c.run("bench", process)?));
    backend.remove(&id, true)?;
    let out = ran?;
    ensure!(out.code == 0, "`true` exited with {} in the benchmark sandbox", out.code);
    Ok(started.elapsed())
}

pub fn start(home: &Path, runs: usize, rounds: usize, json: bool) -> Result<i32> {
    let store = ImageStore::open(home)?;
    let backend = backend(home)?;
    let mut results = Vec::new();
    for name in ["busybox", "debian"] {
        let image = ensure_image(&store, name, None)?;
        let spec = SandboxSpec {
            name: None,
            image: image.name.clone(),
            limits: Limits::default(),
            main: None,
            confinement: Default::default(),
        };
        one_start(&*backend, &spec).context("warm-up start")?;
        for workers in [1, 2] {
            let mut rates = Vec::new();
            let mut latencies = Vec::new();
            for _ in 0..rounds {
                let began = Instant::now();
                let per_worker: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..workers)
                        .map(|w| {
                            let (backend, spec) = (&*backend, &spec);
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
            let result = StartResult {
                image: name.into(),
                workers,
                starts_per_sec: median(&rates),
                latency_ms_p50: median(&latencies),
                latency_ms_p95: percentile(&latencies, 0.95),
            };
            if !json {
                outln!(
                    "{:<8} workers={}  {:>7.1} starts/s   start p50 {:>6.1} ms  p95 {:>6.1} ms",
                    result.image,
                    result.workers,
                    result.starts_per_sec,
                    result.latency_ms_p50,
                    result.latency_ms_p95
                )?;
            }
            results.push(result);
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&results)?)?;
    } else {
        outln!("({runs} starts per measurement, median of {rounds}; a start = create, run `true`, remove)")?;
    }
    Ok(0)
}
