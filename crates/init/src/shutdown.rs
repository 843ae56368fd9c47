//! Stopping on `SIGTERM`, `SIGINT` or `SIGHUP`: pass the signal on to every
//! process, give them a grace period to end, then exit with 128 + signal.

use std::cell::RefCell;
use std::fs;
use std::io;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpid, Pid};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep, Instant};

use crate::diag::diag;
use crate::reaper::{reap, Reaped};
use crate::table::ExecTable;

/// How long processes get to end after the signal is passed on.
pub const GRACE: Duration = Duration::from_secs(5);

/// The signals that stop hiber-init.
#[derive(Debug)]
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts catching the stop signals.
    pub fn new() -> io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next stop signal.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }
}

/// Passes `signal` on, waits up to [`GRACE`] for every child to end (reaping
/// them), and returns the exit status hiber-init should end with. As PID 1
/// the signal goes to every process of the namespace; otherwise (tests) only
/// to our children and their process groups.
pub async fn stop(signal: Signal, table: &RefCell<ExecTable>, pid1: bool) -> i32 {
    diag!("got {signal}, passing it on and stopping");
    if pid1 {
        // ESRCH only says that nothing else runs.
        let _ = kill(Pid::from_raw(-1), signal);
    } else {
        for child in children() {
            let _ = killpg(child, signal);
            let _ = kill(child, signal);
        }
    }
    let deadline = Instant::now() + GRACE;
    while reap(table) == Reaped::ChildrenLeft {
        if Instant::now() >= deadline {
            diag!("processes still run {GRACE:?} after {signal}; exiting anyway");
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    128 + signal as i32
}

/// Our direct children, from `/proc` (hiber-init has one thread).
fn children() -> Vec<Pid> {
    let pid = getpid();
    let path = format!("/proc/self/task/{pid}/children");
    match fs::read_to_string(&path) {
        Ok(list) => list.split_whitespace().filter_map(|p| p.parse().ok()).map(Pid::from_raw).collect(),
        Err(e) => {
            diag!("cannot list children in {path}: {e}");
            Vec::new()
        }
    }
}
