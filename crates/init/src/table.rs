//! The execs of this sandbox: by id (so a retried request never runs twice)
//! and, while they run, by pid (so the reaper can hand them their status).

use std::collections::HashMap;
use std::fs::File;
use std::rc::Rc;

use hiber_proto::{ProcessSpec, TtySize, MAIN_ID};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command::{Command, CommandError};
use crate::exec::{Exec, Io};
use crate::spawn::SpawnError;

/// How many finished execs are remembered (for their exit status).
pub const KEEP_FINISHED: usize = 1024;

/// How many of the most recently finished execs keep their unsent output.
pub const KEEP_FINISHED_OUTPUT: usize = 64;

/// Why a request about an exec failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Exec ids must not be empty.
    #[error("exec id must not be empty")]
    EmptyId,
    /// The host may not start an exec under [`MAIN_ID`].
    #[error("exec id '{MAIN_ID}' is reserved for the main process")]
    Reserved,
    /// The process spec cannot be run.
    #[error("cannot run the process: {0}")]
    Command(#[from] CommandError),
    /// The process could not be started.
    #[error("cannot start the process: {0}")]
    Spawn(#[from] SpawnError),
    /// No exec has this id (or it finished too long ago).
    #[error("no exec with id '{0}'")]
    Unknown(String),
    /// The exec's process has ended.
    #[error("exec '{0}' is not running")]
    NotRunning(String),
    /// Not a signal number.
    #[error("bad signal number {0}")]
    BadSignal(i32),
    /// `kill` failed.
    #[error("cannot signal exec '{0}': {1}")]
    Kill(String, Errno),
}

/// Every exec of the sandbox.
#[derive(Debug)]
pub struct ExecTable {
    hostname: String,
    execs: HashMap<String, Rc<Exec>>,
    running: HashMap<Pid, Rc<Exec>>,
}

impl ExecTable {
    /// An empty table for a sandbox called `hostname`.
    pub fn new(hostname: String) -> ExecTable {
        ExecTable { hostname, execs: HashMap::new(), running: HashMap::new() }
    }

    /// The exec started under `id`, if it is still remembered.
    pub fn get(&self, id: &str) -> Option<Rc<Exec>> {
        self.execs.get(id).cloned()
    }

    /// Starts `spec` for the host under a new `id`, on a terminal when
    /// `spec.tty` (of `size`), otherwise on pipes (stdin one when `stdin`).
    pub fn start(
        &mut self,
        id: &str,
        spec: &ProcessSpec,
        stdin: bool,
        size: Option<TtySize>,
    ) -> Result<Rc<Exec>, ExecError> {
        if id.is_empty() {
            return Err(ExecError::EmptyId);
        }
        if id == MAIN_ID {
            return Err(ExecError::Reserved);
        }
        let io = match spec.tty {
            true => Io::Terminal { size },
            false => Io::Pipes { stdin },
        };
        self.launch(id, spec, io)
    }

    /// Starts the sandbox's main process under [`MAIN_ID`], its output
    /// appended to `log` (it never gets a terminal).
    pub fn start_main(&mut self, spec: &ProcessSpec, log: File) -> Result<Rc<Exec>, ExecError> {
        self.launch(MAIN_ID, spec, Io::Log(log))
    }

    fn launch(&mut self, id: &str, spec: &ProcessSpec, io: Io) -> Result<Rc<Exec>, ExecError> {
        let cmd = Command::new(spec, &self.hostname)?;
        let exec = Exec::spawn(id, &cmd, io)?;
        self.running.insert(exec.pid(), exec.clone());
        self.execs.insert(id.to_string(), exec.clone());
        self.prune();
        Ok(exec)
    }

    /// Hands the exit status of a reaped `pid` to its exec; orphans that
    /// are no exec's are just gone.
    pub fn reaped(&mut self, pid: Pid, code: i32) {
        if let Some(exec) = self.running.remove(&pid) {
            exec.exited(code);
        }
    }

    /// Sends signal number `signal` (0 only checks) to the process of exec
    /// `id`.
    pub fn signal(&self, id: &str, signal: i32) -> Result<(), ExecError> {
        let exec = self.get(id).ok_or_else(|| ExecError::Unknown(id.to_string()))?;
        if exec.has_exited() {
            return Err(ExecError::NotRunning(id.to_string()));
        }
        let signal = match signal {
            0 => None,
            n => Some(Signal::try_from(n).map_err(|_| ExecError::BadSignal(n))?),
        };
        kill(exec.pid(), signal).map_err(|e| ExecError::Kill(id.to_string(), e))
    }

    /// Forgets all but the [`KEEP_FINISHED`] most recently finished execs,
    /// and drops the unsent output of all but the [`KEEP_FINISHED_OUTPUT`]
    /// most recent.
    fn prune(&mut self) {
        let mut finished: Vec<(u64, String)> =
            self.execs.iter().filter_map(|(id, exec)| exec.finished().map(|seq| (seq, id.clone()))).collect();
        if finished.len() <= KEEP_FINISHED_OUTPUT {
            return;
        }
        finished.sort_unstable_by_key(|&(seq, _)| std::cmp::Reverse(seq));
        for (rank, (_, id)) in finished.iter().enumerate().skip(KEEP_FINISHED_OUTPUT) {
            if rank >= KEEP_FINISHED {
                self.execs.remove(id);
            } else if let Some(exec) = self.execs.get(id) {
                exec.drop_output();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProcessSpec {
        ProcessSpec::command(["true"])
    }

    #[test]
    fn requests_that_need_no_process_fail_cleanly() {
        let mut table = ExecTable::new("box".into());
        assert!(matches!(table.start("", &spec(), false, None), Err(ExecError::EmptyId)));
        assert!(matches!(table.start(MAIN_ID, &spec(), false, None), Err(ExecError::Reserved)));
        let empty = ProcessSpec { argv: Vec::new(), ..spec() };
        assert!(matches!(table.start("x", &empty, false, None), Err(ExecError::Command(CommandError::EmptyArgv))));
        // A rejected request does not take its id.
        assert!(table.get("x").is_none());
        assert!(matches!(table.signal("x", 15), Err(ExecError::Unknown(_))));
        // Reaping a pid nobody owns is fine.
        table.reaped(Pid::from_raw(12345), 0);
    }
}
