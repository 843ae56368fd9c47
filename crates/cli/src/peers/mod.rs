//! Peers that `hiber bench snapshot` measures hiber against, on the same workloads, in the same
//! run, and the pieces every measurement shares: the workloads, the counter probe, fsync and
//! size of what a checkpoint wrote, and the median.

pub mod criu_cli;
pub mod podman;

use std::fs::{self, File};
use std::io::{self, Read, Write};
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

/// Headless Chromium showing a page whose title counts tenths of a second since it loaded,
/// with DevTools on 127.0.0.1:9222.
const CHROMIUM: &str = "chromium --headless=new --no-sandbox --disable-gpu --no-first-run \
    --remote-debugging-address=127.0.0.1 --remote-debugging-port=9222 --user-data-dir=/tmp/chromium \
    'data:text/html,<script>let t = 0; setInterval(() => document.title = String(++t), 100)</script>'";

/// A vite dev server in watch mode serving /main.js on 127.0.0.1:5173 from the project in
/// /srv/app (as scripts/setup-test.sh makes it).
const DEV_SERVER: &str = "cd /srv/app && echo '<script type=\"module\" src=\"/main.js\"></script>' > index.html \
    && echo 'export const word = \"bench\";' > main.js \
    && exec node node_modules/vite/bin/vite.js --host 127.0.0.1 --port 5173 --strictPort";

/// The workloads the snapshot benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// An idle busybox `sleep` (needs a busybox root filesystem).
    IdleBusybox,
    /// An idle python3 process (needs a Debian root filesystem with python3).
    IdleDebian,
    /// A python3 process holding 100 MiB of random memory and serving a counter over TCP on
    /// 127.0.0.1:[`COUNTER_PORT`] (needs a Debian root filesystem with python3).
    #[value(name = "python-100m")]
    Python100M,
    /// Headless Chromium with a page whose JavaScript timer runs, asked through DevTools
    /// (needs a Debian root filesystem with Chromium).
    Chromium,
    /// A vite dev server in watch mode (needs a Debian root filesystem with Node and a vite
    /// project in /srv/app).
    DevServer,
}

impl Workload {
    /// The workloads `bench snapshot` measures unless told others, in the order it reports them.
    pub const DEFAULT: [Workload; 3] = [Workload::IdleBusybox, Workload::IdleDebian, Workload::Python100M];

    /// The workload's command line, run as the sandbox's main process.
    pub fn argv(self) -> Vec<String> {
        let argv = match self {
            Workload::IdleBusybox => ["/bin/busybox", "sleep", "1000000000"],
            Workload::IdleDebian => ["python3", "-c", "import time; time.sleep(10**9)"],
            Workload::Python100M => ["python3", "-c", PYTHON_100M],
            Workload::Chromium => ["sh", "-c", CHROMIUM],
            Workload::DevServer => ["sh", "-c", DEV_SERVER],
        };
        argv.map(|arg| arg.replace("PORT", &COUNTER_PORT.to_string())).into()
    }

    /// The workload as a sandbox's main process.
    pub fn process(self) -> ProcessSpec {
        ProcessSpec::command(self.argv())
    }

    /// How to ask the workload whether it carries on, if it serves anything.
    pub fn probe(self) -> Option<Probe> {
        match self {
            Workload::IdleBusybox | Workload::IdleDebian => None,
            Workload::Python100M => Some(Probe::Counter(COUNTER_PORT)),
            Workload::Chromium => Some(Probe::Http { port: 9222, path: "/json/list", value: page_timer }),
            Workload::DevServer => Some(Probe::Http { port: 5173, path: "/main.js", value: vite_module }),
        }
    }

    /// The hiber image it runs on.
    pub fn image(self) -> &'static str {
        match self {
            Workload::IdleBusybox => "busybox",
            Workload::IdleDebian | Workload::Python100M => "debian",
            Workload::Chromium => "chromium",
            Workload::DevServer => "node",
        }
    }

    /// Where a root filesystem for its image is when hiber does not build that image itself
    /// (the roots scripts/setup-test.sh makes).
    pub fn root_source(self) -> Option<&'static str> {
        match self {
            Workload::Chromium => Some("/var/cache/hiber/test-chromium/rootfs"),
            Workload::DevServer => Some("/var/cache/hiber/test-node/rootfs"),
            _ => None,
        }
    }

    /// A short name for tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Workload::IdleBusybox => "idle-busybox",
            Workload::IdleDebian => "idle-debian",
            Workload::Python100M => "python-100m",
            Workload::Chromium => "chromium",
            Workload::DevServer => "dev-server",
        }
    }
}

/// The page's timer in DevTools' list of pages (its title), if the body has one.
fn page_timer(body: &str) -> Option<u64> {
    let list: serde_json::Value = serde_json::from_str(body).ok()?;
    list.as_array()?.iter().find(|t| t["type"] == "page")?["title"].as_str()?.parse().ok()
}

/// 0 when the body is the module vite serves for /main.js.
fn vite_module(body: &str) -> Option<u64> {
    body.contains("export const word").then_some(0)
}

/// How the benchmark asks a serving workload whether it carries on after a restore.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// Every connection to the port gets the next counter value: after a restore, the one
    /// after the last value read before it.
    Counter(u16),
    /// `GET path` on the port answers 200 with a body `value` reads a number from, which must
    /// not go back across a restore (a page's timer; 0 for a workload with nothing to count).
    Http {
        /// The port.
        port: u16,
        /// The path asked for.
        path: &'static str,
        /// The number in the body, if the body is the one expected.
        value: fn(&str) -> Option<u64>,
    },
}

impl Probe {
    /// The port it asks on.
    pub fn port(self) -> u16 {
        match self {
            Probe::Counter(port) | Probe::Http { port, .. } => port,
        }
    }

    /// Asks over connections that `dial` opens to the port (inside the sandbox's or
    /// container's network namespace), retrying until the workload answers or
    /// [`ANSWER_TIMEOUT`] passes; returns its number.
    pub fn ask(self, dial: impl Fn() -> io::Result<TcpStream>) -> Result<u64> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match dial().map_err(anyhow::Error::from).and_then(|stream| self.read(stream)) {
                Ok(value) => return Ok(value),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context(format!("the workload did not answer on port {}", self.port()))
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// [`Probe::ask`]s after a restore and checks that the answer carries on from `before`.
    pub fn ask_again(self, before: u64, dial: impl Fn() -> io::Result<TcpStream>) -> Result<()> {
        let after = self.ask(dial)?;
        match self {
            Probe::Counter(_) => {
                ensure!(after == before + 1, "the counter went from {before} to {after} across the restore")
            }
            Probe::Http { path, .. } => {
                ensure!(after >= before, "{path} went from {before} back to {after} across the restore")
            }
        }
        Ok(())
    }

    /// Reads one answer from a fresh connection.
    fn read(self, mut stream: TcpStream) -> Result<u64> {
        match self {
            Probe::Counter(_) => {
                let mut reply = String::new();
                stream.read_to_string(&mut reply)?;
                reply.trim().parse().with_context(|| format!("not a counter value: {reply:?}"))
            }
            Probe::Http { port, path, value } => {
                let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
                stream.set_read_timeout(Some(HTTP_READ_TIMEOUT))?;
                stream.write_all(request.as_bytes())?;
                let reply = read_http_reply(&mut stream)?;
                let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
                ensure!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "GET {path}: {head:?}");
                value(body).with_context(|| format!("GET {path}: not the expected body: {body:?}"))
            }
        }
    }
}

/// How long an HTTP probe waits for more of a reply.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP reply, head and body: up to its `Content-Length` if it has one (Chromium's DevTools
/// keeps the connection open despite `Connection: close`), else to the end of the stream.
fn read_http_reply(stream: &mut impl Read) -> Result<String> {
    let mut reply = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let n = stream.read(&mut chunk)?;
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        let complete = text.split_once("\r\n\r\n").and_then(|(head, body)| {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
            })?;
            Some(body.len() >= length)
        });
        if n == 0 || complete == Some(true) {
            return Ok(text.into_owned());
        }
    }
}

/// A connection to `port` in the network namespace of host process `pid`. Loopback is brought
/// up first if it is down (Podman's restore of a `--network none` container leaves it down);
/// that is one ioctl, so every peer pays the same.
pub fn dial_in(pid: i32, port: u16) -> impl Fn() -> io::Result<TcpStream> {
    move || hiber_sandbox::dial_in_netns(pid, port)
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
    fn serving_workloads_have_probes() {
        assert!(matches!(Workload::Python100M.probe(), Some(Probe::Counter(COUNTER_PORT))));
        assert!(Workload::IdleDebian.probe().is_none());
        assert!(Workload::Python100M.argv()[2].contains(&format!("('127.0.0.1', {COUNTER_PORT})")));
        assert_eq!(Workload::Chromium.probe().map(Probe::port), Some(9222));
        assert!(Workload::DEFAULT.iter().all(|w| w.root_source().is_none()), "hiber builds the default images");
    }

    #[test]
    fn http_probes_read_a_page_timer_and_a_module() {
        let list = r#"[{"type": "service_worker", "title": "x"}, {"type": "page", "title": "42"}]"#;
        assert_eq!(page_timer(list), Some(42));
        assert_eq!(page_timer("[]"), None);
        assert_eq!(vite_module("export const word = \"bench\";"), Some(0));
        assert_eq!(vite_module("<html>"), None);
    }

    #[test]
    fn probes_ask_real_servers_and_check_what_carries_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let mut kept = Vec::new();
            for (n, stream) in listener.incoming().take(3).enumerate() {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request);
                let body = format!(r#"[{{"type": "page", "title": "{}"}}]"#, [5, 7, 3][n]);
                // Kept open after the reply, as Chromium's DevTools does.
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Length:{}\r\n\r\n{body}", body.len()).unwrap();
                kept.push(stream);
            }
        });
        let probe = Probe::Http { port, path: "/json/list", value: page_timer };
        let dial = || TcpStream::connect(("127.0.0.1", port));
        assert_eq!(probe.ask(dial).unwrap(), 5);
        probe.ask_again(5, dial).unwrap();
        let err = probe.ask_again(7, dial).unwrap_err().to_string();
        assert!(err.contains("from 7 back to 3"), "{err}");
        server.join().unwrap();
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
