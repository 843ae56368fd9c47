//! Collects every child that ends, ours or orphaned, and hands each exit
//! status to the exec that owns the pid.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::diag::diag;
use crate::table::ExecTable;

/// What is left after reaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// Children still run.
    ChildrenLeft,
    /// No child is left (in a sandbox: no process but hiber-init).
    NoChildren,
}

/// Reaps every child that has ended, without blocking.
pub fn reap(table: &RefCell<ExecTable>) -> Reaped {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => table.borrow_mut().reaped(pid, code),
            Ok(WaitStatus::Signaled(pid, signal, _)) => table.borrow_mut().reaped(pid, 128 + signal as i32),
            Ok(WaitStatus::StillAlive) => return Reaped::ChildrenLeft,
            // Stops and continues are not asked for (no WUNTRACED).
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return Reaped::NoChildren,
            Err(e) => {
                diag!("waitpid: {e}");
                return Reaped::ChildrenLeft;
            }
        }
    }
}

/// Reaps on every `SIGCHLD`.
#[derive(Debug)]
pub struct Reaper {
    sigchld: Signal,
    table: Rc<RefCell<ExecTable>>,
}

impl Reaper {
    /// Starts catching `SIGCHLD`; do this before the first child is forked,
    /// so that no exit goes unnoticed.
    pub fn new(table: Rc<RefCell<ExecTable>>) -> io::Result<Reaper> {
        Ok(Reaper { sigchld: signal(SignalKind::child())?, table })
    }

    /// Reaps now and after every `SIGCHLD`, forever.
    pub async fn run(mut self) {
        loop {
            reap(&self.table);
            if self.sigchld.recv().await.is_none() {
                diag!("SIGCHLD is no longer delivered; children are reaped only at shutdown");
                return;
            }
        }
    }
}
