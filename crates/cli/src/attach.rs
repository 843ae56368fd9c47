//! Attaching the terminal to a process in a sandbox: stdin, stdout and
//! stderr relayed over hiber-init's connection, the terminal in raw mode for
//! a tty, window-size changes and Ctrl-C/SIGTERM forwarded.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use hiber_proto::{Frame, FrameError, ProcessSpec, Reply, Request, TtySize};
use hiber_sandbox::{Backend, ClientError, InitConnection, SandboxError};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg, Termios};

/// How long a client waits to re-attach after a snapshot detached it.
const REATTACH: std::time::Duration = std::time::Duration::from_secs(30);

/// How long hiber-init may take to answer an exec request.
const FIRST_REPLY: std::time::Duration = std::time::Duration::from_secs(30);

/// Restores the terminal's settings when dropped.
struct RawMode(Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// The size of the terminal on stdout (or stdin), if there is one.
fn terminal_size() -> Option<TtySize> {
    for fd in [1, 0] {
        // SAFETY: winsize is plain integers, for which all-zero is valid.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize into `ws`, which outlives the call.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some(TtySize { rows: ws.ws_row, cols: ws.ws_col });
        }
    }
    None
}

/// Runs `process` under exec id `id` in `sandbox` with the caller's stdio attached; returns the
/// process's exit code. Every connection, signals' too, goes through `backend`.
pub fn exec(backend: Arc<dyn Backend>, sandbox: &str, id: &str, process: ProcessSpec, stdin: bool) -> Result<i32> {
    let tty = process.tty;
    let size = if tty { terminal_size() } else { None };
    let request = Request::Exec { id: id.into(), process, stdin, size };
    let reconnect = || backend.connect(sandbox);
    let mut conn = reconnect()?;
    conn.request(&request)?;
    let writer = Arc::new(Mutex::new(conn.try_clone().context("cloning the connection")?));
    let target = Arc::new(Target { backend: backend.clone(), sandbox: sandbox.into(), id: id.into() });

    // Signals go to one thread, which forwards them; block them everywhere else.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGWINCH] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    {
        let (writer, target) = (writer.clone(), target.clone());
        std::thread::spawn(move || forward_signals(signals, writer, &target, tty));
    }
    let _raw = if tty { RawMode::enter() } else { None };
    if stdin {
        let writer = writer.clone();
        std::thread::spawn(move || pump_stdin(writer));
    }

    let (mut out, mut err) = (io::stdout(), io::stderr());
    // Once our reader went away (`hiber exec ID yes | head -1`), the process gets the SIGPIPE
    // it would get writing to a closed pipe, and its further output is dropped.
    let mut out_closed = false;
    // A frozen sandbox (a snapshot under way) accepts but does not answer.
    conn.set_timeout(Some(FIRST_REPLY))?;
    loop {
        let frame = conn.recv().map_err(|e| match e {
            ClientError::Frame(FrameError::Io(io)) if io.kind() == io::ErrorKind::WouldBlock => {
                anyhow::anyhow!(
                    "the sandbox did not answer within {}s (is a snapshot of it under way?)",
                    FIRST_REPLY.as_secs()
                )
            }
            e => anyhow::Error::from(e).context("connection to the sandbox"),
        })?;
        match frame {
            None => {
                // A snapshot detached us (CRIU cannot dump a connection to
                // the host): once the sandbox answers again, re-attach by the
                // same id; the output kept meanwhile comes first, and the
                // command does not run twice.
                conn = reattach(&reconnect, &request)?;
                *writer.lock().map_err(|_| anyhow::anyhow!("a relay thread panicked"))? = conn.try_clone()?;
                conn.set_timeout(Some(FIRST_REPLY))?;
            }
            Some(Frame::Stdout(bytes)) if !out_closed => {
                if let Err(e) = out.write_all(&bytes).and_then(|()| out.flush()) {
                    if e.kind() != io::ErrorKind::BrokenPipe {
                        return Err(e.into());
                    }
                    out_closed = true;
                    let _ = target.signal(Signal::SIGPIPE);
                }
            }
            Some(Frame::Stderr(bytes)) => {
                err.write_all(&bytes)?;
                err.flush()?;
            }
            Some(frame @ Frame::Control(_)) => match frame.parse_control::<Reply>() {
                Some(Reply::Exited { code }) => return Ok(code),
                Some(Reply::Error { message }) => bail!("{message}"),
                Some(_) => conn.set_timeout(None)?,
                None => bail!("malformed answer from the sandbox's init"),
            },
            Some(_) => {}
        }
    }
}

/// Connects again (waiting out a snapshot under way) and repeats `request`
/// (an exec by id: a re-attach); fails once the sandbox is not running.
fn reattach(reconnect: &dyn Fn() -> Result<InitConnection, SandboxError>, request: &Request) -> Result<InitConnection> {
    let deadline = std::time::Instant::now() + REATTACH;
    loop {
        match reconnect() {
            Ok(mut conn) => {
                if conn.request(request).is_ok() {
                    return Ok(conn);
                }
            }
            Err(SandboxError::NotRunning(_)) => {
                bail!("the sandbox stopped while the command ran (suspended by a snapshot?)")
            }
            Err(_) => {}
        }
        if std::time::Instant::now() > deadline {
            bail!("lost the connection to the sandbox and could not re-attach within {}s", REATTACH.as_secs());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn pump_stdin(writer: Arc<Mutex<InitConnection>>) {
    let mut stdin = io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let frame = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => Frame::StdinEof,
            Ok(n) => Frame::Stdin(buf[..n].to_vec()),
        };
        let end = frame == Frame::StdinEof;
        // While a snapshot has us detached, wait for the re-attached connection.
        let deadline = std::time::Instant::now() + REATTACH;
        while !writer.lock().map(|mut w| w.send(&frame).is_ok()).unwrap_or(false) {
            if std::time::Instant::now() > deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if end {
            return;
        }
    }
}

fn forward_signals(signals: SigSet, writer: Arc<Mutex<InitConnection>>, target: &Target, tty: bool) {
    while let Ok(signal) = signals.wait() {
        if signal == Signal::SIGWINCH {
            if let (true, Some(size)) = (tty, terminal_size()) {
                let _ = writer.lock().map(|mut w| w.send(&Frame::Resize(size)));
            }
            continue;
        }
        if target.signal(signal).is_err() {
            // The sandbox is gone; nothing is left to wait for.
            std::process::exit(128 + signal as i32);
        }
    }
}

/// The process of exec `id` in `sandbox`, for signals.
struct Target {
    backend: Arc<dyn Backend>,
    sandbox: String,
    id: String,
}

impl Target {
    /// Sends `signal` to the process over a connection of its own.
    fn signal(&self, signal: Signal) -> Result<(), SandboxError> {
        let mut conn = self.backend.connect(&self.sandbox)?;
        conn.request(&Request::Signal { id: self.id.clone(), signal: signal as i32 })?;
        Ok(conn.next_reply(|_| {}).map(drop)?)
    }
}
