//! The in-sandbox SDK relay: the agent's code sends calls (one JSON object
//! per line) on [`hiber_proto::SDK_SOCKET`]; each becomes a numbered pending
//! call, forwarded to the host's `Serve` connection (the relay) as a
//! [`Reply::Call`]; the host's [`Answer`] goes back, as one line, to the
//! connection that made the call.
//!
//! Pending calls live in memory only, so a snapshot carries them: a relay
//! that goes away (before a snapshot the host detaches it) leaves them
//! pending, and the next relay gets them again under the same numbers. The
//! SDK's connections are inside the sandbox and are never detached.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use hiber_proto::{encode, Answer, Frame, FrameError, Reply, MAX_PAYLOAD};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::connections::Connection;
use crate::diag::diag;
use crate::wire::FrameReader;

/// Longest call line accepted (its `Call` frame must fit in a frame anyway).
pub const MAX_LINE: usize = MAX_PAYLOAD;

/// How much to read from an SDK connection at once.
const READ_SIZE: usize = 16 * 1024;

/// One call waiting for the host's answer.
#[derive(Debug)]
struct Pending {
    /// The SDK connection that made it.
    client: u64,
    /// Where its answer line goes.
    answer: mpsc::UnboundedSender<Vec<u8>>,
    /// The encoded `Call` frame, ready to send to each relay.
    wire: Vec<u8>,
}

#[derive(Debug)]
struct State {
    /// The next call's number; never reused in the sandbox's life.
    next_call: u64,
    pending: BTreeMap<u64, Pending>,
    next_client: u64,
    /// Generation of the current relay; a relay whose generation is not
    /// this one has been replaced and closes.
    relay: u64,
}

/// The relay's shared state: pending calls and which relay is current.
#[derive(Debug)]
pub struct Sdk {
    state: RefCell<State>,
    /// Bumped when a call arrives or a relay attaches.
    changed: watch::Sender<u64>,
}

impl Sdk {
    /// No calls yet, no relay.
    pub fn new() -> Rc<Sdk> {
        Rc::new(Sdk {
            state: RefCell::new(State { next_call: 1, pending: BTreeMap::new(), next_client: 0, relay: 0 }),
            changed: watch::channel(0).0,
        })
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn new_client(&self) -> u64 {
        let mut state = self.state.borrow_mut();
        state.next_client += 1;
        state.next_client
    }

    /// Forgets the calls of a connection that went away.
    fn drop_client(&self, client: u64) {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            state.pending.retain(|_, p| p.client != client);
        }
    }

    /// Takes one line from an SDK connection: queues it as a call (its
    /// answer will go to `answer`), or says why it is not one.
    fn call(&self, client: u64, line: &[u8], answer: &mpsc::UnboundedSender<Vec<u8>>) -> Result<u64, String> {
        let request: Value = serde_json::from_slice(line).map_err(|e| format!("bad call: {e}"))?;
        if !request.is_object() {
            return Err("bad call: expected a JSON object".into());
        }
        let mut state = self.state.borrow_mut();
        let call = state.next_call;
        let frame = Frame::control(&Reply::Call { call, request });
        if matches!(&frame, Frame::Control(json) if json.len() > MAX_PAYLOAD) {
            return Err(format!("bad call: larger than {MAX_PAYLOAD} bytes"));
        }
        let mut wire = Vec::new();
        encode(&frame, &mut wire);
        state.next_call += 1;
        state.pending.insert(call, Pending { client, answer: answer.clone(), wire });
        drop(state);
        self.bump();
        Ok(call)
    }

    /// Delivers the host's answer; one for a call no longer pending (never
    /// made, answered already, or its caller left) is ignored.
    fn answer(&self, answer: Answer) {
        let pending = self.state.borrow_mut().pending.remove(&answer.call);
        if let Some(pending) = pending {
            let mut line = serde_json::to_vec(&answer.response).expect("JSON values serialize");
            line.push(b'\n');
            // A caller that left does not need it.
            let _ = pending.answer.send(line);
        }
    }

    /// The encoded `Call` frames of the pending calls numbered above
    /// `after`, in call order, and the highest number among them.
    fn unsent(&self, after: u64) -> (Vec<u8>, u64) {
        let state = self.state.borrow();
        let mut wire = Vec::new();
        let mut last = after;
        for (&call, pending) in state.pending.range(after + 1..) {
            wire.extend_from_slice(&pending.wire);
            last = call;
        }
        (wire, last)
    }

    /// Makes a new relay the current one; returns its generation.
    fn attach_relay(&self) -> u64 {
        let generation = {
            let mut state = self.state.borrow_mut();
            state.relay += 1;
            state.relay
        };
        self.bump();
        generation
    }

    fn current_relay(&self) -> u64 {
        self.state.borrow().relay
    }

    #[cfg(test)]
    fn pending(&self) -> Vec<u64> {
        self.state.borrow().pending.keys().copied().collect()
    }
}

/// Accepts SDK connections forever, each handled by its own task.
pub async fn listen(listener: UnixListener, sdk: Rc<Sdk>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::task::spawn_local(client(stream, sdk.clone()));
            }
            Err(e) => {
                diag!("accept on the SDK socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The `{"ok":false,"error":...}` line answering a call hiber-init refuses.
fn error_line(message: &str) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(&serde_json::json!({ "ok": false, "error": message })).expect("JSON values serialize");
    line.push(b'\n');
    line
}

/// Forgets a connection's pending calls when it goes away.
struct ClientGuard<'a> {
    sdk: &'a Sdk,
    id: u64,
}

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        self.sdk.drop_client(self.id);
    }
}

/// Serves one SDK connection: reads call lines, writes answer lines (in the
/// order the answers come), until the caller closes the connection. A caller
/// that closes (even only its sending side) gives up its pending calls.
async fn client(stream: UnixStream, sdk: Rc<Sdk>) {
    let guard = ClientGuard { sdk: &sdk, id: sdk.new_client() };
    let (tx, mut answers) = mpsc::unbounded_channel::<Vec<u8>>();
    let (mut read, mut write) = stream.into_split();
    let mut input: Vec<u8> = Vec::new();
    let mut output: Vec<u8> = Vec::new();
    let mut written = 0;
    let mut reading = true;
    loop {
        while let Some(end) = input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = input.drain(..=end).collect();
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Err(message) = sdk.call(guard.id, line, &tx) {
                output.extend(error_line(&message));
            }
        }
        if reading && input.len() > MAX_LINE {
            // No way to find the next line: answer, then close.
            output.extend(error_line(&format!("bad call: line longer than {MAX_LINE} bytes")));
            input = Vec::new();
            reading = false;
        }
        if !reading && written == output.len() {
            return;
        }
        if input.capacity() - input.len() < READ_SIZE {
            input.reserve(READ_SIZE);
        }
        tokio::select! {
            r = write.write(&output[written..]), if written < output.len() => match r {
                Ok(n) if n > 0 => {
                    written += n;
                    if written == output.len() {
                        output.clear();
                        written = 0;
                    }
                }
                _ => return,
            },
            Some(line) = answers.recv() => output.extend(line),
            r = read.read_buf(&mut input), if reading => match r {
                Ok(n) if n > 0 => {}
                _ => return,
            },
        }
    }
}

/// Relays calls over a `Serve` connection until the host closes it, sends
/// something it must not, a newer `Serve` replaces it, or a `Detach` asks
/// it to close. Pending calls are sent first (in call order), then new ones
/// as they come; answers are delivered as they arrive. Before closing for a
/// `Detach` or a newer `Serve`, answers the host has already sent are
/// delivered: an answer written before the host asks to detach is never lost.
pub async fn relay(
    sdk: &Sdk,
    mut reader: FrameReader<OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    registered: &Connection,
) {
    let generation = sdk.attach_relay();
    let mut changes = sdk.changed.subscribe();
    // The highest call number put on the wire of this connection.
    let mut sent = 0;
    // Frames being written: the writes may stop anywhere and go on later,
    // so a frame is never cut short on a live connection.
    let mut wire = Vec::new();
    let mut written = 0;
    let mut invalid: Option<String> = None;
    let mut closing = false;
    loop {
        changes.borrow_and_update();
        let reading = !closing && invalid.is_none();
        if sdk.current_relay() != generation {
            if reading {
                deliver_sent_answers(sdk, &mut reader);
            }
            return;
        }
        if wire.is_empty() {
            if let Some(message) = invalid.take() {
                encode(&Frame::control(&Reply::Error { message }), &mut wire);
                closing = true;
            } else if closing {
                return;
            } else {
                (wire, sent) = sdk.unsent(sent);
            }
        }
        tokio::select! {
            r = write.write(&wire[written..]), if !wire.is_empty() => match r {
                Ok(n) if n > 0 => {
                    written += n;
                    if written == wire.len() {
                        wire.clear();
                        written = 0;
                    }
                }
                _ => return,
            },
            _ = changes.changed() => {}
            () = registered.detached() => {
                if reading {
                    deliver_sent_answers(sdk, &mut reader);
                }
                return;
            }
            frame = reader.next(), if reading => match frame {
                Ok(Some(Frame::Control(json))) => match serde_json::from_slice::<Answer>(&json) {
                    Ok(answer) => sdk.answer(answer),
                    Err(e) => invalid = Some(format!("bad answer: {e}")),
                },
                Ok(Some(_)) => invalid = Some("only answers may follow a Serve request".into()),
                Ok(None) | Err(FrameError::Io(_)) => return,
                Err(e) => invalid = Some(e.to_string()),
            },
        }
    }
}

/// Delivers the answers already received on a relay that is about to close,
/// up to the first frame that is not one.
fn deliver_sent_answers(sdk: &Sdk, reader: &mut FrameReader<OwnedReadHalf>) {
    while let Ok(Some(Frame::Control(json))) = reader.next_ready() {
        match serde_json::from_slice::<Answer>(&json) {
            Ok(answer) => sdk.answer(answer),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hiber_proto::decode;

    fn calls(mut wire: &[u8]) -> Vec<(u64, Value)> {
        let mut out = Vec::new();
        while let Some((frame, used)) = decode(wire).unwrap() {
            match frame.parse_control::<Reply>() {
                Some(Reply::Call { call, request }) => out.push((call, request)),
                other => panic!("not a call: {other:?}"),
            }
            wire = &wire[used..];
        }
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn answers_already_sent_are_taken_in_without_waiting() {
        let sdk = Sdk::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (one, two) = (sdk.call(1, b"{}", &tx).unwrap(), sdk.call(1, b"{}", &tx).unwrap());
        let (mut host, init) = std::os::unix::net::UnixStream::pair().unwrap();
        init.set_nonblocking(true).unwrap();
        let init = UnixStream::from_std(init).unwrap();
        let mut reader = FrameReader::new(init.into_split().0);
        // Nothing there: returns at once.
        deliver_sent_answers(&sdk, &mut reader);
        let mut wire = Vec::new();
        for call in [one, two] {
            let answer = Answer { call, response: serde_json::json!(call) };
            encode(&Frame::control(&answer), &mut wire);
        }
        encode(&Frame::Stdin(b"stop here".to_vec()), &mut wire);
        let answer = Answer { call: 99, response: Value::Null };
        encode(&Frame::control(&answer), &mut wire);
        std::io::Write::write_all(&mut host, &wire).unwrap();
        deliver_sent_answers(&sdk, &mut reader);
        assert_eq!(rx.try_recv().unwrap(), b"1\n");
        assert_eq!(rx.try_recv().unwrap(), b"2\n");
        assert!(sdk.pending().is_empty());
    }

    #[test]
    fn calls_are_numbered_answered_once_and_dropped_with_their_client() {
        let sdk = Sdk::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert_eq!(sdk.call(1, br#"{"op":"a"}"#, &tx), Ok(1));
        assert_eq!(sdk.call(2, br#"{"op":"b"}"#, &tx), Ok(2));
        assert!(sdk.call(1, b"[1]", &tx).unwrap_err().contains("JSON object"));
        assert!(sdk.call(1, b"{nope", &tx).unwrap_err().starts_with("bad call"));
        let (wire, last) = sdk.unsent(0);
        assert_eq!(last, 2);
        let sent = calls(&wire);
        assert_eq!(sent[0], (1, serde_json::json!({"op": "a"})));
        assert_eq!(sent[1].0, 2);
        assert_eq!(sdk.unsent(2), (Vec::new(), 2));
        sdk.answer(Answer { call: 1, response: serde_json::json!({"ok": true}) });
        assert_eq!(rx.try_recv().unwrap(), b"{\"ok\":true}\n");
        sdk.answer(Answer { call: 1, response: serde_json::json!({"ok": false}) });
        sdk.answer(Answer { call: 99, response: Value::Null });
        assert!(rx.try_recv().is_err(), "answers to unknown calls are ignored");
        sdk.drop_client(2);
        assert!(sdk.pending().is_empty());
        assert_eq!(sdk.call(1, br#"{}"#, &tx), Ok(3), "numbers are never reused");
    }
}
