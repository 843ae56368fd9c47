//! Peers that `hiber bench snapshot` measures hiber against, on the same workloads, in the same
//! run, and the pieces every measurement shares: the workloads, the counter probe, fsync and
//! size of what a checkpoint wrote, and the median.

pub mod criu_cli;
pub mod podman;

use std::fs::{self, File};
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hiber_proto::ProcessSpec;
use serde::Serialize;

/// TCP port (inside the sandbox's own network namespace) on which [`Workload::Python100M`]
/// serves its counter.
pub const COUNTER_PORT: u16 = 8765;

/// How long a workload may take to start, or to answer after a restore.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an idle workload gets to finish starting before its checkpoint.
pub const SETTLE: Duration = Duration::from_millis(500);

/// The `Python100M` workload: 100 MiB of random (incompressible, non-zero) memory, then a counter
/// served on 127.0.0.1:PORT: every connection gets the next value ("0\n", "1\n", ...).
const PYTHON_100M: &str = "\
import os, socket
memory = bytearray(os.urandom(100 << 20))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(('127.0.0.1', PORT))
server.listen(16)
count = 0
while True:
    client, _ = server.accept()
    client.sendall(b'%d\\n' % count)
    client.close()
    count += 1
";

/// The workloads the snapshot benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// An idle busybox `sleep` (needs a busybox root filesystem).
    IdleBusybox,
    /// An idle python3 process (needs a Debian root filesystem with python3).
    IdleDebian,
    /// A python3 process holding 100 MiB of random memory and serving a counter over TCP on
    /// 127.0.0.1:[`COUNTER_PORT`] (needs a Debian root filesystem with python3).
    Python100M,
}

impl Workload {
    /// Every workload, in the order the benchmark reports them.
    pub const ALL: [Workload; 3] = [Workload::IdleBusybox, Workload::IdleDebian, Workload::Python100M];

    /// The workload's command line, run as the sandbox's main process.
    pub fn argv(self) -> Vec<String> {
        let argv = match self {
            Workload::IdleBusybox => ["/bin/busybox", "sleep", "1000000000"],
            Workload::IdleDebian => ["python3", "-c", "import time; time.sleep(10**9)"],
            Workload::Python100M => ["python3", "-c", PYTHON_100M],
        };
        argv.map(|arg| arg.replace("PORT", &COUNTER_PORT.to_string())).into()
    }

    /// The workload as a sandbox's main process.
    pub fn process(self) -> ProcessSpec {
        ProcessSpec::command(self.argv())
    }

    /// The port the workload answers on, if it serves the counter.
    pub fn counter_port(self) -> Option<u16> {
        (self == Workload::Python100M).then_some(COUNTER_PORT)
    }

    /// The hiber image it runs on: `busybox` or `debian`.
    pub fn image(self) -> &'static str {
        match self {
            Workload::IdleBusybox => "busybox",
            Workload::IdleDebian | Workload::Python100M => "debian",
        }
    }

    /// A short name for tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Workload::IdleBusybox => "idle-busybox",
            Workload::IdleDebian => "idle-debian",
            Workload::Python100M => "python-100m",
        }
    }
}

/// What one peer measured for one workload (one round, or medians over the rounds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerTimes {
    /// Freeze to durable: the checkpoint command, then an fsync of every file it wrote, seconds.
    pub snapshot_s: f64,
    /// The checkpoint command alone, seconds. Podman does not fsync its checkpoint; this is the
    /// number to compare with a snapshot that is not made durable either.
    pub checkpoint_command_s: f64,
    /// The restore command, from its start until it returns, seconds.
    pub restore_s: f64,
    /// From the start of the restore command until the workload answers with its next counter
    /// value, seconds; only for workloads that serve the counter.
    pub restore_until_answer_s: Option<f64>,
    /// The checkpoint's size on disk (allocated blocks), bytes.
    pub size_bytes: u64,
}

impl PeerTimes {
    /// Restore until the workload answers again: until its next counter value for a serving
    /// workload, the restore command for an idle one.
    pub fn restore_answered_s(&self) -> f64 {
        self.restore_until_answer_s.unwrap_or(self.restore_s)
    }

    /// The median of every field over `rounds` (at least one).
    pub fn medians(rounds: &[PeerTimes]) -> PeerTimes {
        let of = |field: fn(&PeerTimes) -> f64| median(&rounds.iter().map(field).collect::<Vec<_>>());
        let answers: Vec<f64> = rounds.iter().filter_map(|r| r.restore_until_answer_s).collect();
        PeerTimes {
            snapshot_s: of(|r| r.snapshot_s),
            checkpoint_command_s: of(|r| r.checkpoint_command_s),
            restore_s: of(|r| r.restore_s),
            restore_until_answer_s: (!answers.is_empty()).then(|| median(&answers)),
            size_bytes: of(|r| r.size_bytes as f64) as u64,
        }
    }
}

/// Runs `round` `rounds` times (at least one) and returns the medians; errors name the peer,
/// the workload and the round.
pub fn measure_rounds(
    peer: &str,
    workload: Workload,
    rounds: usize,
    mut round: impl FnMut() -> Result<PeerTimes>,
) -> Result<PeerTimes> {
    ensure!(rounds > 0, "at least one round is needed");
    let times = (1..=rounds)
        .map(|n| round().with_context(|| format!("{peer}, {}, round {n}", workload.label())))
        .collect::<Result<Vec<_>>>()?;
    Ok(PeerTimes::medians(&times))
}

/// The `p`-quantile (0 ≤ `p` ≤ 1) of some measurements, interpolating linearly between the two
/// nearest ranks (so the 0.5-quantile of an even count is the mean of the middle two).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    assert!(!values.is_empty(), "percentile of no values");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// The median of some measurements (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// Fetches the workload's next counter value over connections that `dial` opens to its port
/// (inside the sandbox's or container's network namespace), retrying until it answers or
/// [`ANSWER_TIMEOUT`] passes.
pub fn ask_counter(port: u16, dial: impl Fn() -> io::Result<TcpStream>) -> Result<u64> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        match dial().map_err(anyhow::Error::from).and_then(read_counter) {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(format!("the workload did not answer on port {port}"))
            }
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// [`ask_counter`] for the workload whose root is host process `pid`. Loopback is brought up
/// first if it is down (Podman's restore of a `--network none` container leaves it down); that
/// is one ioctl, so every peer pays the same.
pub fn ask_counter_of(pid: i32, port: u16) -> Result<u64> {
    ask_counter(port, || hiber_sandbox::dial_in_netns(pid, port))
}

/// Reads one counter value from a fresh connection to the counter.
fn read_counter(mut stream: TcpStream) -> Result<u64> {
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    reply.trim().parse().with_context(|| format!("not a counter value: {reply:?}"))
}

/// fsyncs `path` and, for a directory, every regular file and directory below it (symbolic
/// links, sockets and FIFOs are neither followed nor opened); returns the bytes allocated to
/// them, as [`disk_usage`] counts them.
pub fn fsync_tree(path: &Path) -> Result<u64> {
    walk(path, true)
}

/// Bytes allocated on disk to `path` and everything below it (symbolic links are not followed;
/// a file hard-linked several times counts each time).
pub fn disk_usage(path: &Path) -> Result<u64> {
    walk(path, false)
}

fn walk(path: &Path, fsync: bool) -> Result<u64> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if fsync && (meta.is_file() || meta.is_dir()) {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        file.sync_all().with_context(|| format!("fsync of {}", path.display()))?;
    }
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
            bytes += walk(&entry?.path(), fsync)?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let values: Vec<f64> = (0..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 0.95), 95.0);
        assert_eq!(percentile(&values, 0.0), 0.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[1.0, 2.0], 0.75), 1.75);
    }

    #[test]
    fn medians_of_rounds_take_each_field_apart() {
        let round = |s: f64, answer: Option<f64>| PeerTimes {
            snapshot_s: s,
            checkpoint_command_s: s / 2.0,
            restore_s: 10.0 * s,
            restore_until_answer_s: answer,
            size_bytes: (s * 1000.0) as u64,
        };
        let idle = PeerTimes::medians(&[round(3.0, None), round(1.0, None), round(2.0, None)]);
        assert_eq!(idle, round(2.0, None));
        assert_eq!(idle.restore_answered_s(), 20.0);
        let serving = PeerTimes::medians(&[round(1.0, Some(5.0)), round(2.0, Some(7.0))]);
        assert_eq!(serving.restore_until_answer_s, Some(6.0));
        assert_eq!(serving.restore_answered_s(), 6.0);
    }

    #[test]
    fn only_the_python_server_serves_the_counter() {
        assert_eq!(Workload::Python100M.counter_port(), Some(COUNTER_PORT));
        assert_eq!(Workload::IdleDebian.counter_port(), None);
        assert!(Workload::Python100M.argv()[2].contains(&format!("('127.0.0.1', {COUNTER_PORT})")));
    }

    #[test]
    fn disk_usage_counts_files_and_skips_links_and_fifos() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("data"), vec![1u8; 64 << 10]).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("root")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let used = disk_usage(dir.path()).unwrap();
        assert!((64 << 10..1 << 20).contains(&used), "{used}");
        assert_eq!(fsync_tree(dir.path()).unwrap(), used);
    }
}
