//! The host's side of a connection to a sandbox's hiber-init, over any byte stream a backend
//! provides ([`Channel`]: a Unix socket for containers, a vsock for a microVM).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use hiber_proto::{read_frame, write_frame, Frame, FrameError, ProcessSpec, Reply, Request, INIT_SOCKET};

/// Errors talking to hiber-init.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach the sandbox's init at {path}: {source}")]
    Connect {
        /// The socket path used.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The connection failed or carried a bad frame.
    #[error("connection to the sandbox's init: {0}")]
    Frame(#[from] FrameError),
    /// hiber-init refused the request.
    #[error("{0}")]
    Refused(String),
    /// hiber-init answered something unexpected.
    #[error("unexpected answer from the sandbox's init: {0}")]
    Unexpected(String),
}

/// A byte stream to a sandbox's init.
pub trait Channel: Read + Write + Send {
    /// Another handle on the same stream (e.g. for a writer thread).
    fn try_clone_channel(&self) -> io::Result<Box<dyn Channel>>;
    /// Closes the sending half (the peer sees end of stream).
    fn shutdown_write(&self) -> io::Result<()>;
    /// Bounds how long a read waits (`None`: forever).
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()>;
}

impl Channel for UnixStream {
    fn try_clone_channel(&self) -> io::Result<Box<dyn Channel>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
    fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, limit)
    }
}

/// One connection to hiber-init, carrying one request.
pub struct InitConnection {
    stream: Box<dyn Channel>,
}

/// What a command run to completion produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Bytes written to stdout (or the terminal).
    pub stdout: Vec<u8>,
    /// Bytes written to stderr.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub code: i32,
}

impl InitConnection {
    /// A connection over `stream`, whose other end is a sandbox's init.
    pub fn new(stream: impl Channel + 'static) -> InitConnection {
        InitConnection { stream: Box::new(stream) }
    }

    /// Connects to the hiber-init whose host pid is `init_pid`, through its
    /// root as seen in `/proc` (short, and valid in any mount namespace).
    pub(crate) fn open_by_pid(init_pid: i32) -> Result<InitConnection, ClientError> {
        let path = PathBuf::from(format!("/proc/{init_pid}/root{INIT_SOCKET}"));
        UnixStream::connect(&path).map(InitConnection::new).map_err(|source| ClientError::Connect { path, source })
    }

    /// Another handle on the same connection (e.g. for a writer thread).
    pub fn try_clone(&self) -> io::Result<InitConnection> {
        Ok(InitConnection { stream: self.stream.try_clone_channel()? })
    }

    /// Sends the connection's request.
    pub fn request(&mut self, request: &Request) -> Result<(), ClientError> {
        self.send(&Frame::control(request))
    }

    /// Sends one frame.
    pub fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        write_frame(&mut self.stream, frame).map_err(|e| ClientError::Frame(e.into()))
    }

    /// Receives one frame; `None` when hiber-init closed the connection.
    pub fn recv(&mut self) -> Result<Option<Frame>, ClientError> {
        Ok(read_frame(&mut self.stream)?)
    }

    /// Closes the sending half (hiber-init sees end of stream).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown_write();
    }

    /// Bounds how long a receive waits (`None`: forever).
    pub fn set_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(limit)
    }

    /// Waits (up to `limit`) until hiber-init has closed its end, discarding
    /// anything still sent.
    pub fn wait_closed(&mut self, limit: Duration) {
        let _ = self.stream.set_read_timeout(Some(limit));
        while let Ok(Some(_)) = self.recv() {}
    }

    /// Receives the next control reply, handing output frames to `output`.
    pub fn next_reply(&mut self, mut output: impl FnMut(&Frame)) -> Result<Reply, ClientError> {
        loop {
            match self.recv()? {
                None => return Err(ClientError::Unexpected("connection closed".into())),
                Some(frame @ Frame::Control(_)) => {
                    let text = String::from_utf8_lossy(match &frame {
                        Frame::Control(b) => b,
                        _ => unreachable!(),
                    })
                    .into_owned();
                    return match frame.parse_control::<Reply>() {
                        Some(Reply::Error { message }) => Err(ClientError::Refused(message)),
                        Some(reply) => Ok(reply),
                        None => Err(ClientError::Unexpected(text)),
                    };
                }
                Some(frame) => output(&frame),
            }
        }
    }

    /// Asks hiber-init for its version.
    pub fn ping(mut self) -> Result<String, ClientError> {
        self.request(&Request::Ping)?;
        match self.next_reply(|_| {})? {
            Reply::Pong { version } => Ok(version),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Runs `process` to completion without stdin and collects its output.
    pub fn run(mut self, id: &str, process: ProcessSpec) -> Result<Output, ClientError> {
        let conn = &mut self;
        conn.request(&Request::Exec { id: id.into(), process, stdin: false, size: None })?;
        let mut out = Output::default();
        loop {
            let reply = conn.next_reply(|frame| match frame {
                Frame::Stdout(b) => out.stdout.extend_from_slice(b),
                Frame::Stderr(b) => out.stderr.extend_from_slice(b),
                _ => {}
            })?;
            match reply {
                Reply::Started { .. } => {}
                Reply::Exited { code } => {
                    out.code = code;
                    return Ok(out);
                }
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
    }
}
