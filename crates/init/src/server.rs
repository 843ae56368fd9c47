//! The control socket: accepting connections and answering each one's
//! request (the first frame).

use std::cell::RefCell;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use hiber_proto::{Frame, FrameError, Reply, Request};
use nix::sys::stat::{umask, Mode};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use crate::attach;
use crate::connections::{Connection, Connections};
use crate::diag::diag;
use crate::exec::Attachment;
use crate::sdk::{self, Sdk};
use crate::table::ExecTable;
use crate::wire::FrameReader;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Removing a stale socket or binding failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Listens at `path` (a stale socket there is removed first), with `mode`
/// (0600 for the control socket, 0666 for the SDK's).
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Bind { path: path.to_path_buf(), source };
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    // The socket is created with its mode from the start; hiber-init has
    // one thread, so the umask change affects nothing else.
    let saved = umask(Mode::from_bits_truncate(0o777 & !mode));
    let listener = std::os::unix::net::UnixListener::bind(path);
    umask(saved);
    let listener = listener.map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(listener).map_err(err)
}

/// Accepts connections forever, each handled by its own task.
pub async fn serve(listener: UnixListener, table: Rc<RefCell<ExecTable>>, sdk: Rc<Sdk>) {
    let connections = Connections::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let registered = connections.register();
                tokio::task::spawn_local(connection(stream, table.clone(), sdk.clone(), registered));
            }
            Err(e) => {
                // Out of fds or memory: wait a little rather than spin.
                diag!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What to do with a connection after its first frame.
#[derive(Debug)]
pub enum Action {
    /// Send this reply and close.
    Reply(Reply),
    /// Stream this exec.
    Attach(Attachment),
    /// Close every other connection, then answer `Done`.
    Detach,
    /// Become the SDK's relay.
    Serve,
}

fn error(message: impl ToString) -> Action {
    let message = message.to_string().replace(['\n', '\r'], " ");
    Action::Reply(Reply::Error { message })
}

/// Answers a connection's first frame.
pub fn dispatch(frame: &Frame, table: &RefCell<ExecTable>) -> Action {
    let Frame::Control(json) = frame else {
        return error("the first frame must be a control frame holding a request");
    };
    let request = match serde_json::from_slice::<Request>(json) {
        Ok(request) => request,
        Err(e) => return error(format_args!("bad request: {e}")),
    };
    match request {
        Request::Ping => Action::Reply(Reply::Pong { version: env!("CARGO_PKG_VERSION").into() }),
        Request::Detach => Action::Detach,
        Request::Serve => Action::Serve,
        Request::Signal { id, signal } => match table.borrow().signal(&id, signal) {
            Ok(()) => Action::Reply(Reply::Done),
            Err(e) => error(e),
        },
        Request::Exec { id, process, stdin, size } => {
            let existing = table.borrow().get(&id);
            if let Some(exec) = existing {
                return Action::Attach(exec.attach(true));
            }
            let started = table.borrow_mut().start(&id, &process, stdin, size);
            match started {
                Ok(exec) => Action::Attach(exec.attach(false)),
                Err(e) => error(e),
            }
        }
    }
}

/// Serves one connection until it is done or a `Detach` elsewhere closes
/// it (dropping the socket).
async fn connection(stream: UnixStream, table: Rc<RefCell<ExecTable>>, sdk: Rc<Sdk>, registered: Connection) {
    // Biased: a relay watches for the Detach itself, to take in the answers
    // already sent before it closes.
    tokio::select! {
        biased;
        () = request(stream, &table, &sdk, &registered) => {}
        () = registered.detached() => {}
    }
}

/// Reads the connection's request and carries it out.
async fn request(stream: UnixStream, table: &RefCell<ExecTable>, sdk: &Sdk, registered: &Connection) {
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read);
    let action = match reader.next().await {
        Ok(Some(frame)) => dispatch(&frame, table),
        Ok(None) | Err(FrameError::Io(_)) => return,
        Err(e) => error(e),
    };
    let reply = match action {
        Action::Reply(reply) => reply,
        Action::Attach(attachment) => return attach::stream(attachment, reader, write).await,
        Action::Serve => return sdk::relay(sdk, reader, write, registered).await,
        Action::Detach => {
            registered.detach_others().await;
            Reply::Done
        }
    };
    let mut wire = Vec::new();
    hiber_proto::encode(&Frame::control(&reply), &mut wire);
    // A host that left does not need its answer.
    let _ = write.write_all(&wire).await;
    // Close without a shutdown first: the host takes end-of-stream as "init
    // holds no socket of mine any more" (a snapshot follows a Detach at
    // once, and the freezer may stop init between a shutdown and a close).
    drop(reader);
    write.forget();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RefCell<ExecTable> {
        RefCell::new(ExecTable::new("box".into()))
    }

    fn reply(action: Action) -> Reply {
        match action {
            Action::Reply(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn is_error(action: Action) -> bool {
        matches!(reply(action), Reply::Error { message } if !message.contains('\n'))
    }

    #[test]
    fn ping_gets_pong_with_the_version() {
        let pong = reply(dispatch(&Frame::control(&Request::Ping), &table()));
        assert_eq!(pong, Reply::Pong { version: env!("CARGO_PKG_VERSION").into() });
    }

    #[test]
    fn detach_and_serve_are_their_own_actions() {
        assert!(matches!(dispatch(&Frame::control(&Request::Detach), &table()), Action::Detach));
        assert!(matches!(dispatch(&Frame::control(&Request::Serve), &table()), Action::Serve));
    }

    #[test]
    fn garbage_gets_one_line_errors() {
        let t = table();
        assert!(is_error(dispatch(&Frame::Stdin(b"x".to_vec()), &t)));
        assert!(is_error(dispatch(&Frame::Control(b"{not json".to_vec()), &t)));
        assert!(is_error(dispatch(&Frame::Control(br#"{"op":"reboot"}"#.to_vec()), &t)));
        assert!(is_error(dispatch(&Frame::Control(b"{\"op\":\n\"exec\"}".to_vec()), &t)));
    }

    #[test]
    fn signal_and_exec_errors_are_replies() {
        let t = table();
        let signal = Request::Signal { id: "nope".into(), signal: 15 };
        assert_eq!(
            reply(dispatch(&Frame::control(&signal), &t)),
            Reply::Error { message: "no exec with id 'nope'".into() }
        );
        let exec = Request::Exec {
            id: "e".into(),
            process: hiber_proto::ProcessSpec {
                argv: vec!["true".into()],
                env: vec!["BROKEN".into()],
                cwd: String::new(),
                tty: false,
                user: String::new(),
            },
            stdin: false,
            size: None,
        };
        assert!(is_error(dispatch(&Frame::control(&exec), &t)));
        assert!(t.borrow().get("e").is_none());
    }
}
