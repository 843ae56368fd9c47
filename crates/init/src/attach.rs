//! Streaming one exec over one connection: `Started`, output and `Exited`
//! out; stdin, stdin's end and terminal sizes in.
//!
//! Both directions run at once (a host blocked writing stdin must not stop
//! its output). A host that shuts down only its sending side still gets the
//! output. When the connection goes, the process goes on and its output is
//! buffered for the next attachment.

use std::os::fd::AsRawFd;
use std::rc::Rc;

use hiber_proto::{encode, Frame, FrameError, Reply};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::exec::{Attachment, Exec, Outgoing};
use crate::wire::FrameReader;

/// How the host's side of the connection ended.
#[derive(Debug)]
enum InputEnd {
    /// The host closed (or lost) the connection: detach.
    Closed,
    /// The host shut down its sending side only: keep streaming output.
    HalfClosed,
    /// The host sent something it must not: tell it, then close.
    Invalid(String),
}

/// What woke the streaming loop.
enum Event {
    Wrote(std::io::Result<usize>),
    Changed,
    Input(InputEnd),
}

/// Streams `attachment`'s exec over a connection until it exited, the host
/// left, or another connection attached to the exec.
pub async fn stream(mut attachment: Attachment, reader: FrameReader<OwnedReadHalf>, mut write: OwnedWriteHalf) {
    let input = input(reader, attachment.exec().clone());
    tokio::pin!(input);
    let mut input_open = true;
    let mut invalid: Option<String> = None;
    // The frame being written: the writes below may stop anywhere and go on
    // later, so a frame is never cut short on a live connection.
    let mut current: Option<Outgoing> = None;
    let mut wire = Vec::new();
    let mut written = 0;
    loop {
        if attachment.is_superseded() {
            return;
        }
        if current.is_none() {
            current = match invalid.take() {
                Some(message) => Some(Outgoing::control(&Reply::Error { message }, true)),
                None => attachment.next(),
            };
            if let Some(out) = &current {
                wire.clear();
                written = 0;
                encode(&out.frame, &mut wire);
            }
        }
        let event = tokio::select! {
            r = write.write(&wire[written..]), if current.is_some() => Event::Wrote(r),
            () = attachment.changed() => Event::Changed,
            end = &mut input, if input_open => Event::Input(end),
        };
        match event {
            Event::Wrote(Ok(n)) if n > 0 => {
                written += n;
                if written == wire.len() {
                    if let Some(out) = current.take() {
                        attachment.sent(&out);
                        if out.last {
                            return;
                        }
                    }
                }
            }
            Event::Wrote(_) | Event::Input(InputEnd::Closed) => return,
            Event::Changed => {}
            Event::Input(InputEnd::HalfClosed) => input_open = false,
            Event::Input(InputEnd::Invalid(message)) => {
                input_open = false;
                invalid = Some(message);
            }
        }
    }
}

/// Carries the host's frames to the exec until the connection ends.
async fn input(mut reader: FrameReader<OwnedReadHalf>, exec: Rc<Exec>) -> InputEnd {
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) if !peer_closed(reader.get_ref()) => return InputEnd::HalfClosed,
            Ok(None) | Err(FrameError::Io(_)) => return InputEnd::Closed,
            Err(e) => return InputEnd::Invalid(e.to_string()),
        };
        match frame {
            Frame::Stdin(data) => exec.write_stdin(&data).await,
            Frame::StdinEof => exec.close_stdin(),
            Frame::Resize(size) => exec.resize(size),
            Frame::Control(_) => {
                return InputEnd::Invalid("unexpected control frame: one request per connection".into())
            }
            Frame::Stdout(_) | Frame::Stderr(_) => {
                return InputEnd::Invalid("unexpected output frame from the host".into())
            }
        }
    }
}

/// Whether the host closed the connection completely (not just its sending
/// side): the socket then reports a hang-up.
fn peer_closed(read: &OwnedReadHalf) -> bool {
    let stream: &UnixStream = read.as_ref();
    let mut fd = libc::pollfd { fd: stream.as_raw_fd(), events: 0, revents: 0 };
    // SAFETY: poll reads and writes one pollfd, a live local; a zero timeout
    // never blocks.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready != 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}
