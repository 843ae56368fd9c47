//! One process started for the host (or the sandbox's main process): its
//! buffered output, the connection attached to it, its stdin and terminal,
//! and the tasks that read its output and its exec report.
//!
//! All of it lives on hiber-init's single thread: state sits in a `RefCell`
//! that is never borrowed across an `.await`, and every change is announced
//! on a `watch` channel that attachments and output readers wait on.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use hiber_proto::{Frame, Reply, TtySize};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use crate::buffer::{OutputBuffer, Stream, CAPACITY, CHUNK};
use crate::command::Command;
use crate::diag::diag;
use crate::spawn::{self, Failure, SpawnError, Stdio};

/// Where an exec's stdio goes.
#[derive(Debug)]
pub enum Io {
    /// stdin: a pipe the host writes to when `stdin`, else `/dev/null`;
    /// stdout and stderr: pipes whose output goes to the host.
    Pipes {
        /// Whether the host sends stdin.
        stdin: bool,
    },
    /// A new pseudo-terminal, optionally sized, as stdin, stdout and stderr.
    Terminal {
        /// Initial size.
        size: Option<TtySize>,
    },
    /// stdin `/dev/null`; stdout and stderr appended straight to this file
    /// (the main process's log), with nothing going to the host.
    Log(File),
}

/// Whether the program is known to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launch {
    Pending,
    Running,
    Failed,
}

/// Counts finished execs, so the oldest can be found.
static FINISHED: AtomicU64 = AtomicU64::new(0);

type SharedFd = Rc<AsyncFd<OwnedFd>>;

/// A process started under an exec id.
#[derive(Debug)]
pub struct Exec {
    id: String,
    pid: Pid,
    state: RefCell<State>,
    changed: watch::Sender<()>,
}

#[derive(Debug)]
struct State {
    output: OutputBuffer,
    launch: Launch,
    exit: Option<i32>,
    /// Output pipes (or terminal) and the exec report not yet at their end.
    open_sources: usize,
    /// The attachment whose connection gets the output.
    attached: Option<u64>,
    attachments: u64,
    stdin: Option<SharedFd>,
    terminal: Option<SharedFd>,
    /// The main process's log, where an exec failure is written.
    log: Option<File>,
    /// Set once the process was reaped and all its output read.
    finished: Option<u64>,
}

fn shared(fd: OwnedFd, interest: Interest) -> Result<SharedFd, SpawnError> {
    spawn::set_nonblocking(fd.as_fd())?;
    // SAFETY: an OwnedFd is open until dropped and always returns the same
    // fd, and the AsyncFd owns it from here on.
    let registered = unsafe { AsyncFd::register_with_interest(fd, interest) };
    registered.map(Rc::new).map_err(|e| SpawnError::Stdio(e.into()))
}

impl Exec {
    /// Starts `cmd` under `id` with `io`, and the tasks that read its output
    /// and exec report. Must run inside hiber-init's `LocalSet`.
    pub fn spawn(id: &str, cmd: &Command, io: Io) -> Result<Rc<Exec>, SpawnError> {
        let mut sources = Vec::new();
        let (mut stdin, mut terminal, mut log) = (None, None, None);
        // Every fd of ours is registered before the fork: nothing may fail
        // once the child exists.
        let (report_r, report_w) = spawn::pipe()?;
        let report = shared(report_r, Interest::READABLE)?;
        let pid = match io {
            Io::Pipes { stdin: wanted } => {
                let child_in = match wanted {
                    true => {
                        let (r, w) = spawn::pipe()?;
                        stdin = Some(shared(w, Interest::WRITABLE)?);
                        r
                    }
                    false => spawn::dev_null()?,
                };
                let (out_r, out_w) = spawn::pipe()?;
                let (err_r, err_w) = spawn::pipe()?;
                sources.push((shared(out_r, Interest::READABLE)?, Stream::Stdout));
                sources.push((shared(err_r, Interest::READABLE)?, Stream::Stderr));
                let stdio = Stdio { stdin: child_in.as_fd(), stdout: out_w.as_fd(), stderr: err_w.as_fd(), tty: false };
                spawn::spawn(cmd, stdio, report_w)?
            }
            Io::Terminal { size } => {
                let pty = spawn::open_pty(size)?;
                let master = shared(pty.master, Interest::READABLE | Interest::WRITABLE)?;
                let slave = pty.slave.as_fd();
                let stdio = Stdio { stdin: slave, stdout: slave, stderr: slave, tty: true };
                let pid = spawn::spawn(cmd, stdio, report_w)?;
                sources.push((master.clone(), Stream::Stdout));
                stdin = Some(master.clone());
                terminal = Some(master);
                pid
            }
            Io::Log(file) => {
                let null = spawn::dev_null()?;
                let stdio = Stdio { stdin: null.as_fd(), stdout: file.as_fd(), stderr: file.as_fd(), tty: false };
                let pid = spawn::spawn(cmd, stdio, report_w)?;
                log = Some(file);
                pid
            }
        };
        let exec = Rc::new(Exec {
            id: id.to_string(),
            pid,
            state: RefCell::new(State {
                output: OutputBuffer::new(CAPACITY),
                launch: Launch::Pending,
                exit: None,
                open_sources: sources.len() + 1,
                attached: None,
                attachments: 0,
                stdin,
                terminal,
                log,
                finished: None,
            }),
            changed: watch::channel(()).0,
        });
        for (fd, stream) in sources {
            tokio::task::spawn_local(read_output(exec.clone(), fd, stream));
        }
        let cwd = cmd.cwd.to_string_lossy().into_owned();
        tokio::task::spawn_local(read_report(exec.clone(), report, cmd.name.clone(), cwd));
        Ok(exec)
    }

    /// The process's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether the process was reaped.
    pub fn has_exited(&self) -> bool {
        self.state.borrow().exit.is_some()
    }

    /// When the exec finished (reaped, all output read), as a sequence
    /// number: higher is more recent.
    pub fn finished(&self) -> Option<u64> {
        self.state.borrow().finished
    }

    /// Forgets the output not yet sent (for finished execs kept long).
    pub fn drop_output(&self) {
        self.state.borrow_mut().output.clear();
    }

    /// Records the exit status the reaper collected.
    pub fn exited(&self, code: i32) {
        self.update(|st| st.exit = Some(code));
    }

    /// Waits until the exec finished and returns its exit status.
    pub async fn wait(&self) -> i32 {
        let mut changes = self.changed.subscribe();
        loop {
            if let (Some(_), Some(code)) = {
                let st = self.state.borrow();
                (st.finished, st.exit)
            } {
                return code;
            }
            // The sender lives in `self`, so this only returns on a change.
            let _ = changes.changed().await;
        }
    }

    /// Makes a new connection the one that gets the output; the previous
    /// one, if any, is superseded. `reattach` says whether the exec was
    /// started by an earlier request.
    pub fn attach(self: &Rc<Self>, reattach: bool) -> Attachment {
        let changes = self.changed.subscribe();
        let mut id = 0;
        self.update(|st| {
            st.attachments += 1;
            id = st.attachments;
            st.attached = Some(id);
        });
        Attachment { exec: self.clone(), id, reattach, started: false, changes }
    }

    /// Writes host input to the process's stdin pipe or terminal; input is
    /// dropped when there is neither (or the reader went away).
    pub async fn write_stdin(&self, mut data: &[u8]) {
        let Some(fd) = self.state.borrow().stdin.clone() else { return };
        while !data.is_empty() {
            let mut guard = match fd.writable().await {
                Ok(guard) => guard,
                Err(e) => return diag!("exec {}: stdin: {e}", self.id),
            };
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // Nobody reads any more (EPIPE) or the terminal hung up.
                Ok(Err(_)) => return self.close_stdin(),
                Err(_would_block) => {}
            }
        }
    }

    /// Closes the stdin pipe, so the process reads end of file. A terminal
    /// stays open.
    pub fn close_stdin(&self) {
        let mut st = self.state.borrow_mut();
        if st.terminal.is_none() {
            st.stdin = None;
        }
    }

    /// Sets the terminal's size; nothing without a terminal.
    pub fn resize(&self, size: TtySize) {
        let Some(terminal) = self.state.borrow().terminal.clone() else { return };
        if let Err(e) = spawn::set_window_size(terminal.as_raw_fd(), size) {
            diag!("exec {}: resize: {e}", self.id);
        }
    }

    /// How much output to read next: anything while detached (the buffer
    /// then drops its oldest bytes), but no more than fits while a
    /// connection takes the output, so an attached host loses nothing.
    fn room(&self) -> usize {
        let st = self.state.borrow();
        match st.attached {
            Some(_) => st.output.room().min(CHUNK),
            None => CHUNK,
        }
    }

    /// Applies `change` to the state, marks the exec finished when that
    /// completes it, and wakes everyone waiting on it.
    fn update(&self, change: impl FnOnce(&mut State)) {
        {
            let mut st = self.state.borrow_mut();
            change(&mut st);
            if st.finished.is_none() && st.exit.is_some() && st.open_sources == 0 {
                st.finished = Some(FINISHED.fetch_add(1, Ordering::Relaxed));
                st.stdin = None;
                st.terminal = None;
                st.log = None;
            }
        }
        self.changed.send_modify(|_| ());
    }
}

/// Reads one output pipe (or the terminal) into the exec's buffer until end
/// of file (or, for a terminal, EIO once every holder of the slave closed).
async fn read_output(exec: Rc<Exec>, fd: SharedFd, stream: Stream) {
    let mut changes = exec.changed.subscribe();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if exec.room() == 0 {
            let _ = changes.changed().await;
            continue;
        }
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                diag!("exec {}: output: {e}", exec.id);
                break;
            }
        };
        // Room may have shrunk while waiting; readiness is kept for later.
        let room = exec.room();
        if room == 0 {
            continue;
        }
        let read =
            guard.try_io(|fd| nix::unistd::read(fd.get_ref().as_raw_fd(), &mut buf[..room]).map_err(io::Error::from));
        match read {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => exec.update(|st| st.output.push(stream, &buf[..n])),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => break,
            Ok(Err(e)) => {
                diag!("exec {}: output: {e}", exec.id);
                break;
            }
            Err(_would_block) => {}
        }
    }
    exec.update(|st| st.open_sources -= 1);
}

/// Waits for the child's exec report: end of file means the program runs;
/// a [`Failure`] becomes a message on the exec's stderr (or in the main
/// log).
async fn read_report(exec: Rc<Exec>, fd: SharedFd, name: String, cwd: String) {
    let mut bytes = [0u8; Failure::LEN];
    let failure = loop {
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                diag!("exec {}: exec report: {e}", exec.id);
                break None;
            }
        };
        let read = guard.try_io(|fd| nix::unistd::read(fd.get_ref().as_raw_fd(), &mut bytes).map_err(io::Error::from));
        match read {
            Ok(Ok(0)) => break None,
            Ok(Ok(n)) => break Some(Failure::decode(&bytes[..n])),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                diag!("exec {}: exec report: {e}", exec.id);
                break None;
            }
            Err(_would_block) => {}
        }
    };
    let message = failure.map(|f| f.message(&name, &cwd));
    if let Some(message) = &message {
        diag!("exec {}: {}", exec.id, message.trim_end());
    }
    exec.update(|st| {
        st.open_sources -= 1;
        let Some(message) = message else {
            st.launch = Launch::Running;
            return;
        };
        st.launch = Launch::Failed;
        match st.log.as_mut() {
            Some(log) => drop(log.write_all(message.as_bytes())),
            None => st.output.push(Stream::Stderr, message.as_bytes()),
        }
    });
}

/// A frame for the attached connection.
#[derive(Debug)]
pub struct Outgoing {
    /// What to send.
    pub frame: Frame,
    /// Output bytes it takes from the buffer once sent.
    output: usize,
    /// The connection closes after it.
    pub last: bool,
}

impl Outgoing {
    /// A control frame carrying `reply`.
    pub fn control(reply: &Reply, last: bool) -> Outgoing {
        Outgoing { frame: Frame::control(reply), output: 0, last }
    }
}

/// One connection's hold on an exec's output; dropping it detaches.
#[derive(Debug)]
pub struct Attachment {
    exec: Rc<Exec>,
    id: u64,
    reattach: bool,
    started: bool,
    changes: watch::Receiver<()>,
}

impl Attachment {
    /// The exec attached to.
    pub fn exec(&self) -> &Rc<Exec> {
        &self.exec
    }

    /// Whether a newer connection attached to the exec.
    pub fn is_superseded(&self) -> bool {
        self.exec.state.borrow().attached != Some(self.id)
    }

    /// The next frame to send, if there is one now: `Started` once the
    /// program runs (never for a program that could not be executed), then
    /// output in order, then `Exited` once the process was reaped and all
    /// its output sent.
    pub fn next(&mut self) -> Option<Outgoing> {
        let st = self.exec.state.borrow();
        if !self.started {
            match st.launch {
                Launch::Pending => return None,
                Launch::Failed => self.started = true,
                Launch::Running => {
                    self.started = true;
                    let reply = Reply::Started { pid: self.exec.pid.as_raw(), attached: self.reattach };
                    return Some(Outgoing::control(&reply, false));
                }
            }
        }
        if let Some((stream, bytes)) = st.output.front() {
            let frame = match stream {
                Stream::Stdout => Frame::Stdout(bytes.to_vec()),
                Stream::Stderr => Frame::Stderr(bytes.to_vec()),
            };
            return Some(Outgoing { frame, output: bytes.len(), last: false });
        }
        match (st.finished, st.exit) {
            (Some(_), Some(code)) => Some(Outgoing::control(&Reply::Exited { code }, true)),
            _ => None,
        }
    }

    /// Records that `out` was written to the connection.
    pub fn sent(&self, out: &Outgoing) {
        if out.output > 0 {
            self.exec.update(|st| {
                if st.attached == Some(self.id) {
                    st.output.consume(out.output);
                }
            });
        }
    }

    /// Waits until something about the exec changed.
    pub async fn changed(&mut self) {
        // The sender lives in the exec we hold, so this only returns on a
        // change.
        let _ = self.changes.changed().await;
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let detached = match self.exec.state.try_borrow_mut() {
            Ok(mut st) if st.attached == Some(self.id) => {
                st.attached = None;
                true
            }
            _ => false,
        };
        if detached {
            // Output readers may go on now that nothing holds them back.
            self.exec.changed.send_modify(|_| ());
        }
    }
}
