//! The session registry: one row per session in `HIBER_HOME/sessions.db`
//! (SQLite, WAL, synchronous=FULL). Every state change is written here
//! before it is acted on, so a restarted server picks every session up.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("session registry: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A row could not be (de)serialized.
    #[error("session registry: corrupt row: {0}")]
    Corrupt(#[from] serde_json::Error),
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
    /// Creation time, unix milliseconds.
    pub created: u64,
    /// Last change, unix milliseconds.
    pub updated: u64,
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
            created: hiber_common::unix_ms(),
            updated: 0,
        }
    }
}

/// The registry.
pub struct SessionStore {
    conn: Mutex<Connection>,
}

impl SessionStore {
    /// Opens (creating if needed) the registry at `path`.
    pub fn open(path: &Path) -> Result<SessionStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS sessions (
                id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                created INTEGER NOT NULL,
                record TEXT NOT NULL
            )",
        )?;
        Ok(SessionStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `record` (insert or replace), stamping `updated`, durably.
    pub fn put(&self, record: &mut SessionRecord) -> Result<(), StoreError> {
        record.updated = hiber_common::unix_ms();
        let json = serde_json::to_string(record)?;
        self.conn().execute(
            "INSERT INTO sessions (id, state, created, record) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, record = excluded.record",
            params![record.id, record.state.as_str(), record.created as i64, json],
        )?;
        Ok(())
    }

    /// The session `id`, if it exists.
    pub fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let json: Option<String> =
            self.conn().query_row("SELECT record FROM sessions WHERE id = ?1", [id], |row| row.get(0)).optional()?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// Every session, oldest first.
    pub fn list(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT record FROM sessions ORDER BY created, id")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        let mut out = Vec::new();
        for json in rows {
            out.push(serde_json::from_str(&json?)?);
        }
        Ok(out)
    }

    /// Removes the session `id`; true if it existed.
    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute("DELETE FROM sessions WHERE id = ?1", [id])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SessionRecord {
        SessionRecord::new(
            id.into(),
            Some("busybox".into()),
            None,
            vec!["sleep".into(), "100".into()],
            BTreeMap::new(),
            3,
        )
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let store = SessionStore::open(&path).unwrap();
        let mut a = record("a");
        store.put(&mut a).unwrap();
        a.state = State::Sleeping;
        a.wake_at = Some(42);
        store.put(&mut a).unwrap();
        let mut b = record("b");
        store.put(&mut b).unwrap();
        drop(store);
        let store = SessionStore::open(&path).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap(), a);
        assert_eq!(store.list().unwrap().len(), 2);
        assert!(store.delete("a").unwrap());
        assert!(!store.delete("a").unwrap());
        assert!(store.get("a").unwrap().is_none());
    }
}
