//! The fake sandbox's init: what runs inside ([`Inside`]: files, finished execs, the agent), and
//! one thread per host connection speaking hiber-init's real protocol over its end of a socket
//! pair. `Ping` is answered `Pong {version: "fake"}`; `Exec` runs the [`shell`] vocabulary at
//! once (`Started`, output, `Exited`; the same exec id again re-attaches to its result);
//! `Signal` is answered `Done`; `Detach` closes every other connection, then answers `Done`;
//! `Serve` becomes the agent's SDK relay.
//!
//! The relay of a sandbox is written to only under the backend's lock, so the agent's calls go
//! out in order from whichever thread made the agent call. A relay that is detached (before a
//! snapshot, or replaced by a newer `Serve`) is shut for reading only: its thread still takes in
//! the answers the host sent before, then closes — an answer written before a snapshot is never
//! lost, as with the real init.

use std::collections::VecDeque;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use hiber_proto::{read_frame, write_frame, Answer, Frame, ProcessSpec, Reply, Request, MAIN_ID};
use serde::{Deserialize, Serialize};

use super::agent::{Agent, Outcome, AGENT};
use super::shell::{self, Files, Ran};
use super::{Sandbox, Shared};
use crate::backend::Status;

/// The version a fake init gives in its `Pong`.
pub const VERSION: &str = "fake";

/// How many finished execs are remembered for re-attaching (as many as hiber-init keeps).
const KEEP_FINISHED: usize = 1024;

/// Everything inside a fake sandbox, and so everything a snapshot of it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Inside {
    /// Its files.
    pub(super) files: Files,
    /// The agent, when the main process is [`AGENT`].
    agent: Option<Agent>,
    /// Finished execs, oldest first.
    finished: VecDeque<Finished>,
    /// The pid of the next exec.
    next_pid: i32,
    /// The main process's output: the agent's calls, one line each.
    pub(super) main_log: Vec<u8>,
}

/// An exec that ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Finished {
    id: String,
    pid: i32,
    ran: Ran,
}

impl Inside {
    /// A fresh sandbox running `main`.
    pub(super) fn boot(main: Option<&ProcessSpec>) -> Inside {
        let mut inside =
            Inside { files: Files::new(), agent: None, finished: VecDeque::new(), next_pid: 2, main_log: Vec::new() };
        if main.is_some_and(|m| m.argv == [AGENT]) {
            let agent = Agent::start();
            let (call, request) = agent.pending();
            inside.log(format_args!("call {call}: {request}"));
            inside.agent = Some(agent);
        }
        inside
    }

    fn log(&mut self, line: std::fmt::Arguments) {
        self.main_log.extend_from_slice(format!("{line}\n").as_bytes());
    }

    /// The frames answering `Exec {id, process}`.
    fn exec(&mut self, id: &str, process: &ProcessSpec) -> Vec<Frame> {
        if id.is_empty() || id == MAIN_ID {
            let message = format!("exec id '{id}' is empty or reserved for the main process");
            return vec![Frame::control(&Reply::Error { message })];
        }
        let (pid, attached, ran) = match self.finished.iter().find(|f| f.id == id) {
            Some(done) => (done.pid, true, done.ran.clone()),
            None => {
                let pid = self.next_pid;
                self.next_pid += 1;
                let ran = shell::run(&process.argv, &mut self.files);
                if self.finished.len() == KEEP_FINISHED {
                    self.finished.pop_front();
                }
                self.finished.push_back(Finished { id: id.into(), pid, ran: ran.clone() });
                (pid, false, ran)
            }
        };
        let mut frames = vec![Frame::control(&Reply::Started { pid, attached })];
        frames.extend((!ran.stdout.is_empty()).then_some(Frame::Stdout(ran.stdout)));
        frames.extend((!ran.stderr.is_empty()).then_some(Frame::Stderr(ran.stderr)));
        frames.push(Frame::control(&Reply::Exited { code: ran.code }));
        frames
    }

    /// The call the agent waits on, as the relay sends it.
    fn pending_call(&self) -> Option<Frame> {
        let (call, request) = self.agent.as_ref()?.pending();
        Some(Frame::control(&Reply::Call { call, request: request.clone() }))
    }
}

impl Sandbox {
    /// Hands the host's `answer` to the agent: its next call goes to the current relay, or, if
    /// the agent ended, the sandbox ends with it.
    fn answer(&mut self, answer: &Answer) {
        let Some(agent) = &mut self.inside.agent else { return };
        match agent.answer(answer.call, &answer.response) {
            Outcome::Ignored => {}
            Outcome::Called(call, request) => {
                self.inside.log(format_args!("call {call}: {request}"));
                self.send_to_relay(&Frame::control(&Reply::Call { call, request }));
            }
            Outcome::Exited(code, why) => {
                self.inside.log(format_args!("exit {code}: {why}"));
                self.inside.agent = None;
                self.end(Status::Exited { code: Some(code) });
            }
        }
    }

    /// Writes `frame` to the current relay, if any (one that fails is going away; what it missed
    /// is sent again to the next).
    fn send_to_relay(&self, frame: &Frame) {
        if let Some(mut stream) = self.relay.and_then(|c| self.connections.get(&c)) {
            let _ = write_frame(&mut stream, frame);
        }
    }
}

/// Unregisters a connection when its thread ends, closing it.
struct Registered<'a> {
    shared: &'a Shared,
    sandbox: &'a str,
    conn: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(sandbox) = state.sandbox_mut(self.sandbox) {
            if let Some(stream) = sandbox.connections.remove(&self.conn) {
                let _ = stream.shutdown(Shutdown::Both);
            }
            if sandbox.relay == Some(self.conn) {
                sandbox.relay = None;
            }
        }
        self.shared.changed.notify_all();
    }
}

fn error(message: impl Into<String>) -> Frame {
    Frame::control(&Reply::Error { message: message.into() })
}

/// Serves connection `conn` of sandbox `sandbox` (registered with a clone of `stream`) until it
/// is done or closed.
pub(super) fn connection(shared: Arc<Shared>, sandbox: String, conn: u64, mut stream: UnixStream) {
    let _registered = Registered { shared: &shared, sandbox: &sandbox, conn };
    let request = match read_frame(&mut stream) {
        Ok(Some(Frame::Control(json))) => {
            serde_json::from_slice::<Request>(&json).map_err(|e| format!("bad request: {e}"))
        }
        Ok(Some(_)) => Err("the first frame must be a control frame holding a request".to_string()),
        Ok(None) | Err(_) => return,
    };
    let mut state = shared.lock();
    let Some(live) = state.live_mut(&sandbox, conn) else { return };
    let frames = match request {
        Err(message) => vec![error(message)],
        Ok(Request::Ping) => vec![Frame::control(&Reply::Pong { version: VERSION.into() })],
        Ok(Request::Signal { .. }) => vec![Frame::control(&Reply::Done)],
        Ok(Request::Exec { id, process, .. }) => live.inside.exec(&id, &process),
        Ok(Request::Detach) => {
            drop(shared.detach(state, &sandbox, Some(conn)));
            return send(&mut stream, &[Frame::control(&Reply::Done)]);
        }
        Ok(Request::Serve) => {
            // The new relay gets the pending call; an older one closes.
            if let Some(old) = live.relay.replace(conn) {
                live.detach_relay(old);
            }
            if let Some(call) = live.inside.pending_call() {
                live.send_to_relay(&call);
            }
            drop(state);
            return relay(&shared, &sandbox, conn, stream);
        }
    };
    drop(state);
    send(&mut stream, &frames);
}

fn send(stream: &mut UnixStream, frames: &[Frame]) {
    for frame in frames {
        if write_frame(stream, frame).is_err() {
            return;
        }
    }
}

/// Takes the answers of relay connection `conn` until it closes (or sends something else).
fn relay(shared: &Shared, sandbox: &str, conn: u64, mut stream: UnixStream) {
    loop {
        let answer = match read_frame(&mut stream) {
            Ok(Some(Frame::Control(json))) => {
                serde_json::from_slice::<Answer>(&json).map_err(|e| format!("bad answer: {e}"))
            }
            Ok(Some(_)) => Err("only answers may follow a Serve request".to_string()),
            Ok(None) | Err(_) => return,
        };
        let mut state = shared.lock();
        let Some(live) = state.live_mut(sandbox, conn) else { return };
        match answer {
            Ok(answer) => live.answer(&answer),
            Err(message) => {
                if live.relay == Some(conn) {
                    live.send_to_relay(&error(message));
                }
                return;
            }
        }
    }
}
