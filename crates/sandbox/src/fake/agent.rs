//! The fake agent: what runs in a fake sandbox whose main process is [`AGENT`]. It talks the SDK
//! call protocol that the server's session lifecycle answers, one call at a time:
//!
//! 1. `{"op":"next_message"}`, answered `{"ok":true,"result":{"seq":N,"content":C}}`;
//! 2. for `C = {"text":T}`: `{"op":"append","kind":"assistant","payload":{"text":"echo: T"}}`;
//!    for `C = {"sleep":S,"text":T}`: `{"op":"sleep","seconds":S}`, then, once that is answered,
//!    the append of `{"text":"woke: T"}`; for `C = {"crash":true}` it dies (exit status 1); any
//!    other `C` is echoed as its JSON text;
//! 3. once the append is answered, `next_message` again.
//!
//! An answer that is not `{"ok":true,...}` ends the agent with status 1, as an unhandled SDK
//! error would. Its whole state is the call it waits on and the next call's number, so a
//! snapshot carries it and a restore carries on with the same call.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The main process (`argv`) that makes a fake sandbox run the agent.
pub const AGENT: &str = "fake-agent";

/// What the agent waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Waiting {
    /// A message (its `next_message` call).
    Message,
    /// Its reply to be appended.
    Appended,
    /// Its sleep to end; then it appends `text`.
    Slept {
        /// The text of the message that asked for the sleep.
        text: String,
    },
}

/// The agent's state: the one call it waits on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Agent {
    call: u64,
    request: Value,
    waiting: Waiting,
}

/// What an answer made the agent do.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// The answer was not for the pending call: nothing happened.
    Ignored,
    /// It made this call (now the pending one).
    Called(u64, Value),
    /// It ended with this exit status, saying why.
    Exited(i32, String),
}

impl Agent {
    /// A starting agent: it has just asked for its first message (call 1).
    pub(super) fn start() -> Agent {
        Agent { call: 1, request: json!({"op": "next_message"}), waiting: Waiting::Message }
    }

    /// The call it waits on: its number and the request.
    pub(super) fn pending(&self) -> (u64, &Value) {
        (self.call, &self.request)
    }

    /// Takes the host's answer `response` to call `call`.
    pub(super) fn answer(&mut self, call: u64, response: &Value) -> Outcome {
        if call != self.call {
            return Outcome::Ignored;
        }
        if response.get("ok") != Some(&Value::Bool(true)) {
            return Outcome::Exited(1, format!("call {call} {} failed: {response}", self.request));
        }
        let result = response.get("result").unwrap_or(&Value::Null);
        let (waiting, request) = match &self.waiting {
            Waiting::Message => {
                let content = result.get("content").unwrap_or(&Value::Null);
                let text = match content.get("text") {
                    Some(Value::String(text)) => text.clone(),
                    _ => content.to_string(),
                };
                if content.get("crash") == Some(&Value::Bool(true)) {
                    return Outcome::Exited(1, format!("message {} asked it to crash", result["seq"]));
                }
                match content.get("sleep") {
                    Some(seconds) => (Waiting::Slept { text }, json!({"op": "sleep", "seconds": seconds})),
                    None => (Waiting::Appended, append(format!("echo: {text}"))),
                }
            }
            Waiting::Slept { text } => (Waiting::Appended, append(format!("woke: {text}"))),
            Waiting::Appended => (Waiting::Message, json!({"op": "next_message"})),
        };
        *self = Agent { call: call + 1, request: request.clone(), waiting };
        Outcome::Called(call + 1, request)
    }
}

fn append(text: String) -> Value {
    json!({"op": "append", "kind": "assistant", "payload": {"text": text}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(result: Value) -> Value {
        json!({"ok": true, "result": result})
    }

    fn message(seq: u64, content: Value) -> Value {
        ok(json!({"seq": seq, "content": content}))
    }

    #[test]
    fn echoes_each_message_then_asks_for_the_next() {
        let mut agent = Agent::start();
        assert_eq!(agent.pending(), (1, &json!({"op": "next_message"})));
        let outcome = agent.answer(1, &message(1, json!({"text": "hi"})));
        let append = json!({"op": "append", "kind": "assistant", "payload": {"text": "echo: hi"}});
        assert_eq!(outcome, Outcome::Called(2, append.clone()));
        assert_eq!(agent.pending(), (2, &append));
        assert_eq!(agent.answer(2, &ok(json!({"seq": 2}))), Outcome::Called(3, json!({"op": "next_message"})));
        let Outcome::Called(4, odd) = agent.answer(3, &message(3, json!([1, 2]))) else { panic!() };
        assert_eq!(odd["payload"]["text"], "echo: [1,2]");
    }

    #[test]
    fn sleeps_then_appends_that_it_woke() {
        let mut agent = Agent::start();
        let outcome = agent.answer(1, &message(5, json!({"sleep": 0.5, "text": "nap"})));
        assert_eq!(outcome, Outcome::Called(2, json!({"op": "sleep", "seconds": 0.5})));
        // A snapshot taken now carries the pending sleep.
        let restored: Agent = serde_json::from_slice(&serde_json::to_vec(&agent).unwrap()).unwrap();
        assert_eq!(restored, agent);
        let Outcome::Called(3, append) = agent.answer(2, &ok(Value::Null)) else { panic!() };
        assert_eq!(append["payload"]["text"], "woke: nap");
        assert_eq!(agent.answer(3, &ok(json!({}))), Outcome::Called(4, json!({"op": "next_message"})));
    }

    #[test]
    fn other_calls_answers_are_ignored_and_failures_or_crashes_end_it() {
        let mut agent = Agent::start();
        assert_eq!(agent.answer(7, &message(1, json!({"text": "x"}))), Outcome::Ignored);
        assert_eq!(agent.pending().0, 1);
        let crashed = agent.clone().answer(1, &message(1, json!({"crash": true})));
        assert!(matches!(crashed, Outcome::Exited(1, why) if why.contains("crash")));
        let failed = agent.answer(1, &json!({"ok": false, "error": "boom"}));
        assert!(matches!(failed, Outcome::Exited(1, why) if why.contains("boom")));
    }
}
