//! The SDK relay: one `Serve` connection to a sandbox's hiber-init, which
//! forwards every call the agent's code makes through the in-sandbox SDK.
//!
//! [`InitConnection`] is blocking std I/O, so a relay is two threads: a
//! reader turning frames into [`RelayEvent`]s on a tokio channel, and a
//! writer sending [`Answer`]s. The connection ends when hiber-init closes it
//! (a snapshot detaches every host connection, or the sandbox died); the
//! reader then reports [`RelayEvent::Closed`].

use std::sync::mpsc;

use hiber_proto::{Answer, Frame, Reply, Request};
use hiber_sandbox::{ClientError, InitConnection};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

/// Errors opening a relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// hiber-init could not be reached.
    #[error("SDK relay: {0}")]
    Client(#[from] ClientError),
    /// A relay thread could not be started.
    #[error("SDK relay: cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What a relay reports.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEvent {
    /// The agent's SDK made a call.
    Call {
        /// Its number within the sandbox's life.
        call: u64,
        /// The call itself (`{"op": ...}`).
        request: Value,
    },
    /// The connection ended.
    Closed {
        /// Why.
        reason: String,
    },
}

/// The sending half of an open relay; dropping it ends the writer thread.
pub struct Relay {
    answers: mpsc::Sender<Answer>,
}

impl Relay {
    /// Asks the hiber-init at the other end of `conn` to serve, and reports events tagged with
    /// `generation` on `events`.
    pub fn open(
        mut conn: InitConnection,
        generation: u64,
        events: UnboundedSender<(u64, RelayEvent)>,
    ) -> Result<Relay, RelayError> {
        conn.request(&Request::Serve)?;
        let mut writer = conn.try_clone()?;
        let (answers, queue) = mpsc::channel::<Answer>();
        std::thread::Builder::new().name("hiber-relay-read".into()).spawn(move || {
            let reason = loop {
                match conn.recv() {
                    Ok(Some(frame @ Frame::Control(_))) => match frame.parse_control::<Reply>() {
                        Some(Reply::Call { call, request }) => {
                            if events.send((generation, RelayEvent::Call { call, request })).is_err() {
                                break "the session stopped listening".to_string();
                            }
                        }
                        Some(Reply::Error { message }) => break message,
                        _ => break "unexpected frame from hiber-init".to_string(),
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => break "hiber-init closed the connection".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            let _ = events.send((generation, RelayEvent::Closed { reason }));
        })?;
        std::thread::Builder::new().name("hiber-relay-write".into()).spawn(move || {
            while let Ok(answer) = queue.recv() {
                if writer.send(&Frame::control(&answer)).is_err() {
                    break;
                }
            }
            writer.shutdown_write();
        })?;
        Ok(Relay { answers })
    }

    /// Sends `response` as the answer to `call`; false if the relay is gone.
    pub fn answer(&self, call: u64, response: Value) -> bool {
        self.answers.send(Answer { call, response }).is_ok()
    }
}
