//! Measurements of the SQLite context log, for `hiber bench session`.
//! [`run`] measures and returns numbers; it prints nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::db::SqliteError;
use crate::entry::{Kind, NewEntry};
use crate::error::StoreError;
use crate::sqlite::SqliteLog;
use crate::store::LogStore;

/// What to measure; [`Default`] is what `hiber bench session` uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Appends timed one after the other by a single appender.
    pub serial_appends: usize,
    /// Concurrent appenders for the throughput run.
    pub appenders: usize,
    /// Appends each of them makes.
    pub appends_per_appender: usize,
    /// Entries in the small session.
    pub small_entries: u64,
    /// Entries in the large session.
    pub large_entries: u64,
    /// Entries a tail read returns (the last N).
    pub tail: usize,
    /// Timed appends and tail reads on each of the small and large sessions.
    pub samples: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            serial_appends: 1000,
            appenders: 16,
            appends_per_appender: 500,
            small_entries: 10,
            large_entries: 1_000_000,
            tail: 20,
            samples: 500,
        }
    }
}

/// Percentiles of a set of timings, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// How many timings.
    pub samples: usize,
}

impl Latency {
    fn of(mut timings: Vec<Duration>) -> Latency {
        timings.sort_unstable();
        let at = |q: f64| {
            let i = ((timings.len() as f64 * q).ceil() as usize).clamp(1, timings.len().max(1)) - 1;
            timings.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        Latency { p50_us: at(0.50), p99_us: at(0.99), max_us: at(1.0), samples: timings.len() }
    }
}

/// Appends and tail reads on a session of a given length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtLength {
    /// Entries in the session when the timing started.
    pub entries: u64,
    /// Fsync'd appends, one at a time.
    pub append: Latency,
    /// Reads of the last `tail` entries (last seq, then the range).
    pub tail_read: Latency,
}

/// Everything [`run`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The configuration measured.
    pub config: BenchConfig,
    /// Fsync'd appends by a single appender to an empty session.
    pub serial_append: Latency,
    /// Appends per second with `config.appenders` concurrent appenders
    /// (group commit), each waiting for its own append to be durable.
    pub concurrent_appends_per_s: f64,
    /// Latency each concurrent append saw.
    pub concurrent_append: Latency,
    /// The small session.
    pub small: AtLength,
    /// The large session.
    pub large: AtLength,
    /// Seconds it took to fill the large session in bulk (not an append path).
    pub fill_s: f64,
}

/// What a benchmark run can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The database could not be opened.
    #[error("cannot open the benchmark database: {0}")]
    Open(#[from] SqliteError),
    /// An operation failed.
    #[error("context log operation failed during the benchmark: {0}")]
    Store(#[from] StoreError),
    /// A concurrent appender task failed.
    #[error("a benchmark appender task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn payload(i: usize) -> serde_json::Value {
    json!({"role": "assistant", "text": format!("entry {i}: the quick brown fox jumps over the lazy dog")})
}

/// Measures a fresh database in `dir` (which should be on the disk that
/// `HIBER_HOME` will use: fsync cost is the point). Call it from a
/// multi-threaded tokio runtime. It takes about a minute with the defaults.
pub async fn run(dir: &Path, config: &BenchConfig) -> Result<BenchReport, BenchError> {
    let log = Arc::new(SqliteLog::open(dir.join("bench-context.db"))?);

    let mut timings = Vec::with_capacity(config.serial_appends);
    for i in 0..config.serial_appends {
        let start = Instant::now();
        log.append("serial", NewEntry::new(Kind::Assistant, payload(i))).await?;
        timings.push(start.elapsed());
    }
    let serial_append = Latency::of(timings);

    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..config.appenders {
        let log = log.clone();
        let count = config.appends_per_appender;
        tasks.push(tokio::spawn(async move {
            let mut timings = Vec::with_capacity(count);
            for i in 0..count {
                let begun = Instant::now();
                log.append("concurrent", NewEntry::new(Kind::ToolResult, payload(a * count + i))).await?;
                timings.push(begun.elapsed());
            }
            Ok::<_, StoreError>(timings)
        }));
    }
    let mut timings = Vec::new();
    for task in tasks {
        timings.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let concurrent_appends_per_s = timings.len() as f64 / elapsed.max(f64::EPSILON);
    let concurrent_append = Latency::of(timings);

    for i in 0..config.small_entries {
        log.append("small", NewEntry::new(Kind::User, payload(i as usize))).await?;
    }
    let start = Instant::now();
    log.fill("large", config.large_entries, Kind::Assistant, &payload(0)).await?;
    let fill_s = start.elapsed().as_secs_f64();

    let small = at_length(&*log, "small", config).await?;
    let large = at_length(&*log, "large", config).await?;
    Ok(BenchReport {
        config: config.clone(),
        serial_append,
        concurrent_appends_per_s,
        concurrent_append,
        small,
        large,
        fill_s,
    })
}

/// Times tail reads, then appends, on `session`.
async fn at_length(log: &dyn LogStore, session: &str, config: &BenchConfig) -> Result<AtLength, StoreError> {
    let entries = log.last_seq(session).await?;
    let mut reads = Vec::with_capacity(config.samples);
    for _ in 0..config.samples {
        let start = Instant::now();
        let last = log.last_seq(session).await?;
        log.read(session, last.saturating_sub(config.tail as u64), config.tail).await?;
        reads.push(start.elapsed());
    }
    let mut appends = Vec::with_capacity(config.samples);
    for i in 0..config.samples {
        let start = Instant::now();
        log.append(session, NewEntry::new(Kind::Assistant, payload(i))).await?;
        appends.push(start.elapsed());
    }
    Ok(AtLength { entries, append: Latency::of(appends), tail_read: Latency::of(reads) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=100).map(Duration::from_micros).collect());
        assert_eq!((l.p50_us, l.p99_us, l.max_us, l.samples), (50.0, 99.0, 100.0, 100));
        assert_eq!(Latency::of(Vec::new()).samples, 0);
    }

    /// A small run finishes and its numbers are consistent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_run() {
        let dir = tempfile::tempdir().unwrap();
        let config = BenchConfig {
            serial_appends: 20,
            appenders: 4,
            appends_per_appender: 10,
            small_entries: 10,
            large_entries: 2_000,
            tail: 20,
            samples: 10,
        };
        let report = run(dir.path(), &config).await.unwrap();
        assert_eq!(report.serial_append.samples, 20);
        assert_eq!(report.concurrent_append.samples, 40);
        assert!(report.concurrent_appends_per_s > 0.0);
        assert_eq!(report.small.entries, 10);
        assert_eq!(report.large.entries, 2_000);
        assert_eq!(report.large.tail_read.samples, 10);
    }
}
