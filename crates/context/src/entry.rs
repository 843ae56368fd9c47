//! The entries of a context log and the checks every append goes through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest payload accepted, in bytes of its compact JSON text (1 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Longest session id accepted, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 256;
/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Bad input to an append or a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// A kind string that is not one of [`Kind::ALL`].
    #[error("unknown entry kind {0:?}: expected one of system, user, assistant, tool_call, tool_result, event")]
    UnknownKind(String),
    /// The session id is the empty string.
    #[error("the session id is empty")]
    EmptySession,
    /// The session id is longer than [`MAX_SESSION_ID_BYTES`].
    #[error("the session id is {len} bytes long, more than the limit of {max}")]
    SessionTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The idempotency key is the empty string.
    #[error("the idempotency key is empty")]
    EmptyKey,
    /// The idempotency key is longer than [`MAX_KEY_BYTES`].
    #[error("the idempotency key is {len} bytes long, more than the limit of {max}")]
    KeyTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload's JSON text is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("the payload is {size} bytes of JSON, more than the limit of {max}")]
    PayloadTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A system prompt or instruction.
    System,
    /// A message from the user.
    User,
    /// A reply of the model.
    Assistant,
    /// A tool call the model asked for.
    ToolCall,
    /// The result of a tool call.
    ToolResult,
    /// Anything else worth recording (a state change, a wake-up, ...).
    Event,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 6] =
        [Kind::System, Kind::User, Kind::Assistant, Kind::ToolCall, Kind::ToolResult, Kind::Event];

    /// The snake_case name, as in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::System => "system",
            Kind::User => "user",
            Kind::Assistant => "assistant",
            Kind::ToolCall => "tool_call",
            Kind::ToolResult => "tool_result",
            Kind::Event => "event",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = EntryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| EntryError::UnknownKind(s.to_owned()))
    }
}

/// An entry to append; the store gives it its `seq` and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEntry {
    /// What it records.
    pub kind: Kind,
    /// Any JSON value, at most [`MAX_PAYLOAD_BYTES`] as compact text.
    pub payload: Value,
    /// Idempotency key: a later append with the same key in the same session
    /// returns this entry instead of adding another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl NewEntry {
    /// An entry without an idempotency key.
    pub fn new(kind: Kind, payload: Value) -> Self {
        NewEntry { kind, payload, key: None }
    }

    /// The same entry with an idempotency key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in its session: 1 for the first entry, then dense.
    pub seq: u64,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// What it records.
    pub kind: Kind,
    /// Its JSON payload.
    pub payload: Value,
    /// Its idempotency key, if it was appended with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The answer to an append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appended {
    /// The entry now in the log: the new one, or for a duplicate the original.
    pub entry: Entry,
    /// True when the key had already been used in this session, so nothing
    /// was added and `entry` is the original.
    pub duplicate: bool,
}

/// A session of a store and how far its log goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session id.
    pub id: String,
    /// Its last seq, which is also its number of entries (seqs are dense).
    pub last_seq: u64,
    /// Time of its first append, in Unix milliseconds.
    pub created_ms: i64,
    /// Time of its last append, in Unix milliseconds.
    pub updated_ms: i64,
}

/// Checks a session id: not empty, at most [`MAX_SESSION_ID_BYTES`].
pub fn check_session(session: &str) -> Result<(), EntryError> {
    if session.is_empty() {
        return Err(EntryError::EmptySession);
    }
    if session.len() > MAX_SESSION_ID_BYTES {
        return Err(EntryError::SessionTooLong { len: session.len(), max: MAX_SESSION_ID_BYTES });
    }
    Ok(())
}

/// Checks an append and returns the payload as compact JSON text, the form
/// backends store.
pub fn check_append(session: &str, entry: &NewEntry) -> Result<String, EntryError> {
    check_session(session)?;
    if let Some(key) = &entry.key {
        if key.is_empty() {
            return Err(EntryError::EmptyKey);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(EntryError::KeyTooLong { len: key.len(), max: MAX_KEY_BYTES });
        }
    }
    // Serializing a `Value` cannot fail: its map keys are strings.
    let text = entry.payload.to_string();
    if text.len() > MAX_PAYLOAD_BYTES {
        return Err(EntryError::PayloadTooLarge { size: text.len(), max: MAX_PAYLOAD_BYTES });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_round_trip_through_strings_and_serde() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<Kind>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn unknown_kind_is_an_error() {
        assert_eq!("tool-call".parse::<Kind>(), Err(EntryError::UnknownKind("tool-call".into())));
        assert!(serde_json::from_str::<NewEntry>(r#"{"kind":"robot","payload":1}"#).is_err());
    }

    #[test]
    fn bad_appends_are_rejected() {
        let ok = NewEntry::new(Kind::User, json!({"text": "hi"}));
        assert_eq!(check_append("s", &ok).unwrap(), r#"{"text":"hi"}"#);
        assert_eq!(check_append("", &ok), Err(EntryError::EmptySession));
        assert!(matches!(
            check_append(&"s".repeat(MAX_SESSION_ID_BYTES + 1), &ok),
            Err(EntryError::SessionTooLong { .. })
        ));
        assert_eq!(check_append("s", &ok.clone().with_key("")), Err(EntryError::EmptyKey));
        assert!(matches!(
            check_append("s", &ok.clone().with_key("k".repeat(MAX_KEY_BYTES + 1))),
            Err(EntryError::KeyTooLong { .. })
        ));
        let big = NewEntry::new(Kind::User, json!("x".repeat(MAX_PAYLOAD_BYTES)));
        assert_eq!(
            check_append("s", &big),
            Err(EntryError::PayloadTooLarge { size: MAX_PAYLOAD_BYTES + 2, max: MAX_PAYLOAD_BYTES })
        );
    }
}
