//! `hiber bench session`: message → first streamed entry for a running and for a suspended
//! session (a real `hiber serve` in this process, a python agent in Debian, over HTTP and SSE),
//! then the context log's fsync'd appends, throughput and tail reads at 10 and 1,000,000 entries.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use hiber_context::bench::{BenchConfig, BenchReport, Latency};
use hiber_image::ImageStore;
use hiber_server::Server;
use serde::Serialize;
use serde_json::{json, Value};

use super::ensure_image;
use crate::commands::session::{events, Client};
use crate::format;
use crate::peers::{median, percentile};

/// The agent: echoes every message as one `assistant` entry.
const AGENT: &str =
    "import hiber\nwhile True:\n    m = hiber.next_message()\n    hiber.append(\"assistant\", {\"echo\": m})\n";

/// The server's home, below `HIBER_HOME`. Kept between runs (the Debian image is linked into it
/// once, from the per-machine cache); the sessions are deleted after each run.
const SERVER_HOME: &str = "bench-session";

/// Keeps the running session running for the whole measurement.
const RUNNING_IDLE_TIMEOUT_S: u64 = 3600;
/// Suspends the other one a second after each turn.
const SUSPENDING_IDLE_TIMEOUT_S: u64 = 1;
/// Longest wait for a state, a turn or a request.
const LIMIT: Duration = Duration::from_secs(60);

/// Target (not a test): message → first entry of a suspended session, median.
const TARGET_SUSPENDED_MS: f64 = 150.0;
/// Target (not a test): fsync'd append p99, one appender.
const TARGET_APPEND_P99_US: f64 = 2000.0;
/// What "flat" allows for run-to-run noise: 1M-entry p50 / 10-entry p50.
const FLAT_RATIO: f64 = 1.5;

/// Everything `bench session` measured.
#[derive(Debug, Serialize)]
struct Report {
    /// Messages timed per session.
    rounds: usize,
    /// A session whose agent waits in `next_message` with its sandbox running.
    running: Turns,
    /// A session suspended (snapshotted, stopped) before each message: restore included.
    suspended: Turns,
    /// The context log (`hiber_context::bench::run` with the default configuration).
    context: BenchReport,
    /// 1,000,000-entry time / 10-entry time.
    ratios: Ratios,
    targets: Targets,
}

/// Timings of one session's messages, milliseconds.
#[derive(Debug, Serialize)]
struct Turns {
    /// From sending the message until its own `user` entry (the stream's first event) arrives.
    user_entry_ms_p50: f64,
    /// From sending the message until the first entry the agent appended arrives on the stream.
    first_entry_ms_p50: f64,
    first_entry_ms_p95: f64,
    /// From sending the message until the turn's `done` event.
    turn_ms_p50: f64,
    /// Every first-entry time, in order.
    first_entry_ms: Vec<f64>,
    /// Restores the server made during these turns, and their mean (server-side) duration.
    restores: u64,
    restore_ms_mean: Option<f64>,
}

/// 1,000,000 entries / 10 entries.
#[derive(Debug, Serialize)]
struct Ratios {
    append_p50: f64,
    append_p99: f64,
    tail_read_p50: f64,
    tail_read_p99: f64,
}

/// The targets (not tests) and whether this run met them.
#[derive(Debug, Serialize)]
struct Targets {
    suspended_first_entry_ms: f64,
    /// Judged on the median.
    suspended_first_entry_met: bool,
    append_p99_us: f64,
    append_p99_met: bool,
    /// Largest 1M / 10 ratio of the p50s that still counts as flat (noise).
    flat_ratio: f64,
    /// Append and tail read p50 ratios both within `flat_ratio`.
    flat_met: bool,
}

pub fn session(home: &Path, rounds: usize, json: bool) -> Result<i32> {
    let server_home = home.join(SERVER_HOME);
    fs::create_dir_all(&server_home).with_context(|| format!("creating {}", server_home.display()))?;
    ensure_image(&ImageStore::open(&server_home)?, "debian", None)?;

    let (running, suspended) = {
        let server = BenchServer::start(&server_home)?;
        eprintln!("bench: hiber serve on http://{}, home {}", server.addr, server_home.display());
        eprintln!("bench: running session, {rounds} messages");
        let running = server.measure(rounds, false)?;
        eprintln!("bench: suspended session, {rounds} messages (each waits for the suspend first)");
        let suspended = server.measure(rounds, true)?;
        (running, suspended)
    };

    let dir = home.join(format!("bench-context-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("bench: context log in {} (several seconds)", dir.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let context = runtime.block_on(hiber_context::bench::run(&dir, &BenchConfig::default()));
    drop(runtime);
    let _ = fs::remove_dir_all(&dir);
    let context = context.context("the context log benchmark failed")?;

    let ratio = |large: f64, small: f64| large / small.max(f64::EPSILON);
    let ratios = Ratios {
        append_p50: ratio(context.large.append.p50_us, context.small.append.p50_us),
        append_p99: ratio(context.large.append.p99_us, context.small.append.p99_us),
        tail_read_p50: ratio(context.large.tail_read.p50_us, context.small.tail_read.p50_us),
        tail_read_p99: ratio(context.large.tail_read.p99_us, context.small.tail_read.p99_us),
    };
    let targets = Targets {
        suspended_first_entry_ms: TARGET_SUSPENDED_MS,
        suspended_first_entry_met: suspended.first_entry_ms_p50 <= TARGET_SUSPENDED_MS,
        append_p99_us: TARGET_APPEND_P99_US,
        append_p99_met: context.serial_append.p99_us <= TARGET_APPEND_P99_US,
        flat_ratio: FLAT_RATIO,
        flat_met: ratios.append_p50 <= FLAT_RATIO && ratios.tail_read_p50 <= FLAT_RATIO,
    };
    let report = Report { rounds, running, suspended, context, ratios, targets };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_report(&report)?;
    }
    Ok(0)
}

/// A `hiber serve` in this process on 127.0.0.1 (a free port), its token, and the sessions the
/// benchmark made (deleted, and the server stopped, on drop).
struct BenchServer {
    addr: SocketAddr,
    client: Client,
    sessions: std::cell::RefCell<Vec<String>>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BenchServer {
    fn start(home: &Path) -> Result<BenchServer> {
        let backend = crate::commands::backend(home)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let server = runtime
            .block_on(Server::bind(home, "127.0.0.1:0".parse().expect("an address"), backend))
            .context("cannot start the benchmark's hiber serve")?;
        let addr = server.local_addr()?;
        let token_file = home.join(hiber_server::auth::TOKEN_FILE);
        let token = fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(server.serve(async {
            let _ = stopped.await;
        }));
        let server = BenchServer {
            addr,
            client: Client::with_token(&format!("http://{addr}"), token, Some(LIMIT)),
            sessions: Default::default(),
            runtime: Some(runtime),
            stop: Some(stop),
        };
        // Sessions left by an interrupted run were resumed by the server: remove them.
        let left = server.client.json("GET", "/v1/sessions", None)?;
        for s in left["sessions"].as_array().into_iter().flatten() {
            if let Some(id) = s["id"].as_str() {
                eprintln!("bench: removing session {id} left by an earlier run");
                server.client.json("DELETE", &format!("/v1/sessions/{id}"), None)?;
            }
        }
        Ok(server)
    }

    /// Creates an agent session (removed when the server is dropped).
    fn create(&self, idle_timeout_s: u64) -> Result<String> {
        let body = json!({"image": "debian", "command": ["python3", "-c", AGENT], "idle_timeout_s": idle_timeout_s});
        let session = self.client.json("POST", "/v1/sessions", Some(body))?;
        let id = session["id"].as_str().ok_or_else(|| anyhow!("the new session has no id: {session}"))?.to_string();
        self.sessions.borrow_mut().push(id.clone());
        Ok(id)
    }

    /// Polls until the session is in `state`; returns its view.
    fn wait_state(&self, id: &str, state: &str) -> Result<Value> {
        let started = Instant::now();
        loop {
            let session = self.client.json("GET", &format!("/v1/sessions/{id}"), None)?;
            if session["state"] == state {
                return Ok(session);
            }
            ensure!(session["state"] != "failed", "session {id} failed: {session}");
            ensure!(started.elapsed() < LIMIT, "session {id} not {state} after {LIMIT:?}: {session}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `content` and reads the turn's stream to its `done`; returns the times until the
    /// user entry, until the first entry the agent appended (its echo of `content`) and until
    /// `done`.
    fn turn(&self, id: &str, content: &str) -> Result<TurnTimes> {
        let started = Instant::now();
        let response =
            self.client.send("POST", &format!("/v1/sessions/{id}/messages"), Some(json!({"content": content})))?;
        let (mut user, mut first, mut done) = (None, None, None);
        events(response.into_reader(), |event, data| match event {
            "entry" => {
                if first.is_none() {
                    let entry: Value = serde_json::from_str(data)?;
                    if entry["kind"] == "user" {
                        user.get_or_insert_with(|| started.elapsed());
                    } else {
                        first = Some(started.elapsed());
                        ensure!(
                            entry["payload"]["echo"] == content,
                            "the agent's first entry is not the echo of {content:?}: {entry}"
                        );
                    }
                }
                Ok(true)
            }
            "done" => {
                done = Some(started.elapsed());
                Ok(false)
            }
            "error" => bail!("the turn of session {id} failed: {data}"),
            _ => Ok(true),
        })?;
        let done = done.ok_or_else(|| anyhow!("the turn of session {id} ended without `done`"))?;
        let first = first.ok_or_else(|| anyhow!("the agent of session {id} appended nothing during the turn"))?;
        let user = user.ok_or_else(|| anyhow!("the turn of session {id} did not stream the user entry"))?;
        Ok(TurnTimes { user, first, done })
    }

    /// The server's restores so far: (count, total seconds).
    fn restores(&self) -> Result<(u64, f64)> {
        let text = self.client.send("GET", "/metrics", None)?.into_string()?;
        let value =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
        let count = value("hiber_restore_seconds_count").ok_or_else(|| anyhow!("/metrics has no restore count"))?;
        Ok((count as u64, value("hiber_restore_seconds_sum").unwrap_or(0.0)))
    }

    /// One session, a warm-up message, then `rounds` timed messages; with `suspend`, each is
    /// sent once the session is suspended.
    fn measure(&self, rounds: usize, suspend: bool) -> Result<Turns> {
        let id = self.create(if suspend { SUSPENDING_IDLE_TIMEOUT_S } else { RUNNING_IDLE_TIMEOUT_S })?;
        self.turn(&id, "warm-up").context("the warm-up message")?;
        let (count_before, sum_before) = self.restores()?;
        let (mut users, mut firsts, mut turns) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            if suspend {
                self.wait_state(&id, "suspended")?;
            } else {
                let state = self.client.json("GET", &format!("/v1/sessions/{id}"), None)?["state"].clone();
                ensure!(state == "idle" || state == "running", "the running session is {state}");
            }
            let times = self.turn(&id, &format!("message {round}")).with_context(|| format!("message {round}"))?;
            users.push(times.user.as_secs_f64() * 1000.0);
            firsts.push(times.first.as_secs_f64() * 1000.0);
            turns.push(times.done.as_secs_f64() * 1000.0);
        }
        let (count_after, sum_after) = self.restores()?;
        let restores = count_after.saturating_sub(count_before);
        self.delete(&id)?;
        Ok(Turns {
            user_entry_ms_p50: median(&users),
            first_entry_ms_p50: median(&firsts),
            first_entry_ms_p95: percentile(&firsts, 0.95),
            turn_ms_p50: median(&turns),
            first_entry_ms: firsts,
            restores,
            restore_ms_mean: (restores > 0).then(|| (sum_after - sum_before) * 1000.0 / restores as f64),
        })
    }

    fn delete(&self, id: &str) -> Result<()> {
        self.client.send("DELETE", &format!("/v1/sessions/{id}"), None)?;
        self.sessions.borrow_mut().retain(|s| s != id);
        Ok(())
    }
}

/// One message's times, from sending it.
struct TurnTimes {
    /// Its `user` entry arrived on the stream.
    user: Duration,
    /// The agent's first entry arrived.
    first: Duration,
    /// `done` arrived.
    done: Duration,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        for id in self.sessions.take() {
            if let Err(e) = self.delete(&id) {
                eprintln!("bench: cannot delete session {id}: {e:#}");
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn ms(v: f64) -> String {
    format!("{v:.1} ms")
}

/// Microseconds, as µs below a millisecond and ms above.
fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

/// `1000000` -> `1,000,000`.
fn thousands(n: u64) -> String {
    let reversed: Vec<char> = n.to_string().chars().rev().collect();
    let groups: Vec<String> = reversed.chunks(3).map(|g| g.iter().rev().collect()).rev().collect();
    groups.join(",")
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn print_report(r: &Report) -> std::io::Result<()> {
    let t = &r.targets;
    outln!("Message -> first streamed entry (python agent in Debian, real hiber serve over HTTP/SSE)")?;
    let restore = |turns: &Turns| {
        turns.restore_ms_mean.map_or_else(|| "-".to_string(), |m| format!("{} x {}", turns.restores, ms(m)))
    };
    let row = |label: &str, turns: &Turns, target: String| {
        vec![
            label.to_string(),
            ms(turns.user_entry_ms_p50),
            ms(turns.first_entry_ms_p50),
            ms(turns.first_entry_ms_p95),
            ms(turns.turn_ms_p50),
            restore(turns),
            target,
        ]
    };
    let target = format!("p50 <= {} ({})", ms(t.suspended_first_entry_ms), met(t.suspended_first_entry_met));
    let rows = vec![row("running", &r.running, "-".into()), row("suspended", &r.suspended, target)];
    format::table(
        &["SESSION", "USER ENTRY P50", "FIRST ENTRY P50", "FIRST ENTRY P95", "TURN P50", "RESTORES (MEAN)", "TARGET"],
        &rows,
    )?;
    outln!(
        "{} messages each, from sending the message until on the turn's SSE stream arrive: user entry = the\n\
         message's own entry; first entry = the agent's first entry; turn = `done`. restores = server-side\n\
         restores during the timed messages.",
        r.rounds
    )?;
    outln!()?;

    let c = &r.context;
    let cfg = &c.config;
    outln!("Context log (SQLite WAL, fsync before acknowledging, group commit)")?;
    let row = |what: String, l: &Latency, target: String| vec![what, us(l.p50_us), us(l.p99_us), target];
    let ratio_row = |what: &str, p50: f64, p99: f64| {
        vec![
            what.to_string(),
            format!("{p50:.2}x"),
            format!("{p99:.2}x"),
            format!("flat: p50 <= {FLAT_RATIO}x ({})", met(p50 <= FLAT_RATIO)),
        ]
    };
    let (small, large) = (thousands(c.small.entries), thousands(c.large.entries));
    let rows = vec![
        row(
            format!("fsync'd append, one appender ({} samples)", cfg.serial_appends),
            &c.serial_append,
            format!("p99 <= {} ({})", us(t.append_p99_us), met(t.append_p99_met)),
        ),
        row(format!("{} concurrent appenders, per append", cfg.appenders), &c.concurrent_append, "-".into()),
        row(format!("append at {small} entries"), &c.small.append, "-".into()),
        row(format!("append at {large} entries"), &c.large.append, "-".into()),
        ratio_row(&format!("append {large} / {small}"), r.ratios.append_p50, r.ratios.append_p99),
        row(format!("tail read (last {}) at {small} entries", cfg.tail), &c.small.tail_read, "-".into()),
        row(format!("tail read (last {}) at {large} entries", cfg.tail), &c.large.tail_read, "-".into()),
        ratio_row(&format!("tail read {large} / {small}"), r.ratios.tail_read_p50, r.ratios.tail_read_p99),
    ];
    format::table(&["MEASUREMENT", "P50", "P99", "TARGET"], &rows)?;
    outln!(
        "throughput: {} fsync'd appends/s with {} concurrent appenders ({} appends each); {} samples per\n\
         length; the {large}-entry session was filled in bulk in {:.1} s.",
        thousands(c.concurrent_appends_per_s.round() as u64),
        cfg.appenders,
        cfg.appends_per_appender,
        cfg.samples,
        c.fill_s
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_with_units() {
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(10), "10");
        assert_eq!(thousands(35_100), "35,100");
        assert_eq!(us(213.4), "213 µs");
        assert_eq!(us(2500.0), "2.50 ms");
        assert_eq!(ms(42.26), "42.3 ms");
    }
}
