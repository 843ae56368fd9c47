//! The session registry: one [`SessionRecord`] per session, behind the
//! object-safe [`SessionStore`] trait, so callers hold an
//! `Arc<dyn SessionStore>` and never name the backend. Every state change is
//! written here before it is acted on, so a restarted server picks every
//! session up.
//!
//! [`SqliteSessions`] is the embedded backend (`HIBER_HOME/sessions.db`);
//! [`conformance`] is what every backend must pass
//! ([`session_store_conformance!`](crate::session_store_conformance) runs it
//! in a backend's tests).

pub mod conformance;
mod sqlite;

use std::collections::BTreeMap;

use hiber_context::BoxFuture;
use hiber_sandbox::Confinement;
use serde::{Deserialize, Serialize};

pub use sqlite::{SqliteError, SqliteSessions};

/// What a registry's methods can fail with, whatever the backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The registry was dropped, or the thread or connection serving it is
    /// gone.
    #[error("the session registry is closed")]
    Closed,
    /// The backend failed (SQL, I/O, a corrupt row); the source says how.
    #[error("session registry: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The sandbox runs and the agent is working.
    Running,
    /// The sandbox runs and the agent waits for a message.
    Idle,
    /// Snapshotted and stopped; the next message restores it.
    Suspended,
    /// Snapshotted and stopped until `wake_at`.
    Sleeping,
    /// Nothing can carry the session on (see `error`).
    Failed,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 5] = [State::Running, State::Idle, State::Suspended, State::Sleeping, State::Failed];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Idle => "idle",
            State::Suspended => "suspended",
            State::Sleeping => "sleeping",
            State::Failed => "failed",
        }
    }
}

/// Everything saved about one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id (also its context log's id).
    pub id: String,
    /// The image a fresh sandbox starts from.
    pub image: Option<String>,
    /// The snapshot the session was started from, if any.
    pub from_snapshot: Option<String>,
    /// The agent's command.
    pub command: Vec<String>,
    /// The agent's environment.
    pub env: BTreeMap<String, String>,
    /// Seconds the agent may wait for a message before it is suspended.
    pub idle_timeout_s: u64,
    /// Where it is in its life.
    pub state: State,
    /// The sandbox running it (or last running it).
    pub sandbox: Option<String>,
    /// The latest snapshot of its sandbox.
    pub snapshot: Option<String>,
    /// The delivered cursor when `snapshot` was taken.
    pub snapshot_cursor: u64,
    /// The seq of the last user entry handed to the agent.
    pub cursor: u64,
    /// When a sleeping session wakes, unix milliseconds.
    pub wake_at: Option<u64>,
    /// Why the session failed, if it did.
    pub error: Option<String>,
    /// Why its last suspend could not snapshot the sandbox (a process holds what a snapshot
    /// cannot carry), while it keeps running; cleared by the next suspend that succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_blocked: Option<String>,
    /// Creation time, unix milliseconds.
    pub created: u64,
    /// Last change, unix milliseconds.
    pub updated: u64,
    /// How its fresh sandboxes are confined (restored ones keep what their snapshot had).
    #[serde(default)]
    pub confinement: Confinement,
}

impl SessionRecord {
    /// A new session, running, that has seen nothing of its log yet.
    pub fn new(
        id: String,
        image: Option<String>,
        from_snapshot: Option<String>,
        command: Vec<String>,
        env: BTreeMap<String, String>,
        idle_timeout_s: u64,
    ) -> SessionRecord {
        SessionRecord {
            id,
            image,
            from_snapshot,
            command,
            env,
            idle_timeout_s,
            state: State::Running,
            sandbox: None,
            snapshot: None,
            snapshot_cursor: 0,
            cursor: 0,
            wake_at: None,
            error: None,
            suspend_blocked: None,
            created: hiber_common::unix_ms(),
            updated: 0,
            confinement: Confinement::default(),
        }
    }
}

/// The session registry, one record per session id.
///
/// Every method is async and does not block the runtime; a backend is used
/// through `Arc<dyn SessionStore>`, from within a tokio runtime.
pub trait SessionStore: Send + Sync {
    /// Writes `record`, replacing the one with its id if there is one, with
    /// `updated` stamped now ([`hiber_common::unix_ms`]); returns the record as
    /// written, once it is durable.
    fn put(&self, record: SessionRecord) -> BoxFuture<'_, Result<SessionRecord, StoreError>>;

    /// The session `id`, if there is one.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>>;

    /// Every session, oldest first: by `created`, then by id.
    fn list(&self) -> BoxFuture<'_, Result<Vec<SessionRecord>, StoreError>>;

    /// Removes the session `id`; true if there was one.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
}
