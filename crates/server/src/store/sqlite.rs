//! [`SqliteSessions`]: the embedded [`SessionStore`], each record a JSON row
//! of one SQLite file in WAL mode with `synchronous=FULL`, and one thread that
//! owns the connection, so that no SQLite call runs on the async runtime.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use hiber_context::BoxFuture;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{SessionRecord, SessionStore, StoreError};

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The one table; `state` and `created` are copies of the record's fields.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created INTEGER NOT NULL,
    record TEXT NOT NULL
)";

/// What the SQLite registry can fail with; it reaches callers as the source
/// of a [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// A statement failed, or the file could not be opened or set up.
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    /// A row could not be (de)serialized.
    #[error("corrupt row: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The thread that owns the connection could not be started.
    #[error("cannot start the session registry thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// A query for the connection's thread; it sends its own answer.
type Job = Box<dyn FnOnce(&Connection) + Send>;

/// The session registry in one SQLite file, e.g. `HIBER_HOME/sessions.db`.
///
/// One thread owns the connection and runs the queries one at a time, in the
/// order they come; callers await their answers. Dropping the store lets the
/// thread finish the queued queries, closes the file and waits for the
/// thread.
pub struct SqliteSessions {
    /// `None` only while dropping, to end the thread's loop.
    jobs: Option<mpsc::Sender<Job>>,
    /// `None` only once joined.
    thread: Option<JoinHandle<()>>,
}

impl SqliteSessions {
    /// Opens (creating it and its table if need be) the registry at `path`,
    /// on a new thread that then owns the connection. Blocks until the file
    /// is open.
    pub fn open(path: &Path) -> Result<SqliteSessions, StoreError> {
        let path = path.to_owned();
        let (jobs, queue) = mpsc::channel::<Job>();
        let (opened_tx, opened) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hiber-sessions-db".into())
            .spawn(move || serve(&path, &opened_tx, queue))
            .map_err(SqliteError::Spawn)?;
        let opened = opened.recv();
        // From here on, dropping the store joins the thread.
        let store = SqliteSessions { jobs: Some(jobs), thread: Some(thread) };
        match opened {
            Ok(Ok(())) => Ok(store),
            Ok(Err(e)) => Err(e.into()),
            // The thread panicked while opening.
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Runs `query` on the connection's thread and returns its answer.
    async fn call<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, SqliteError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(query(conn));
        });
        let jobs = self.jobs.as_ref().ok_or(StoreError::Closed)?;
        jobs.send(job).map_err(|_| StoreError::Closed)?;
        // A query that panics ends the thread and drops `reply` unanswered.
        Ok(answer.await.map_err(|_| StoreError::Closed)??)
    }
}

impl Drop for SqliteSessions {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // The thread panics only if a query did; that query's caller was
            // told, and there is nothing left to clean up.
            let _ = thread.join();
        }
    }
}

/// The thread's life: opens the connection, says whether that worked, then
/// runs the queued queries until the store is dropped.
fn serve(path: &Path, opened: &mpsc::Sender<Result<(), SqliteError>>, queue: mpsc::Receiver<Job>) {
    let conn = match connect(path) {
        Ok(conn) => conn,
        Err(e) => {
            let _ = opened.send(Err(e));
            return;
        }
    };
    let _ = opened.send(Ok(()));
    for job in queue {
        job(&conn);
    }
}

/// Opens the file in WAL mode with `synchronous=FULL` (each commit is
/// fsync'd before it returns) and creates the table if need be.
fn connect(path: &Path) -> Result<Connection, SqliteError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl SessionStore for SqliteSessions {
    fn put(&self, mut record: SessionRecord) -> BoxFuture<'_, Result<SessionRecord, StoreError>> {
        Box::pin(self.call(move |conn| {
            record.updated = hiber_common::unix_ms();
            let json = serde_json::to_string(&record)?;
            conn.execute(
                "INSERT INTO sessions (id, state, created, record) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state, record = excluded.record",
                params![record.id, record.state.as_str(), record.created as i64, json],
            )?;
            Ok(record)
        }))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.call(move |conn| {
            let json: Option<String> =
                conn.query_row("SELECT record FROM sessions WHERE id = ?1", [id], |row| row.get(0)).optional()?;
            Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
        }))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SessionRecord>, StoreError>> {
        Box::pin(self.call(|conn| {
            let mut stmt = conn.prepare("SELECT record FROM sessions ORDER BY created, id")?;
            let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
            let mut out = Vec::new();
            for json in rows {
                out.push(serde_json::from_str(&json?)?);
            }
            Ok(out)
        }))
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.call(move |conn| Ok(conn.execute("DELETE FROM sessions WHERE id = ?1", [id])? > 0)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;

    use super::*;
    use crate::store::conformance::Opener;

    /// Each place is a temporary directory holding `sessions.db`.
    struct Sqlite;

    impl Opener for Sqlite {
        type Store = dyn SessionStore;
        type Place = TempDir;

        fn place(&self) -> TempDir {
            tempfile::tempdir().unwrap()
        }

        fn open(&self, dir: &TempDir) -> Arc<dyn SessionStore> {
            Arc::new(SqliteSessions::open(&dir.path().join("sessions.db")).unwrap())
        }
    }

    crate::session_store_conformance!(Sqlite);

    fn open() -> (TempDir, SqliteSessions) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteSessions::open(&dir.path().join("sessions.db")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn queries_run_on_the_registry_thread_in_wal_mode_with_full_sync() {
        let (_dir, store) = open();
        let (off_runtime, mode, synchronous) = store
            .call(|conn| {
                let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                Ok((tokio::runtime::Handle::try_current().is_err(), mode, synchronous))
            })
            .await
            .unwrap();
        assert!(off_runtime, "a query ran on the async runtime");
        assert_eq!(mode, "wal");
        assert_eq!(synchronous, 2, "synchronous=FULL");
    }

    #[tokio::test]
    async fn a_stopped_thread_makes_the_store_closed() {
        let (_dir, store) = open();
        let crashed = store.call(|_| -> Result<(), SqliteError> { panic!("a query panicked (on purpose)") }).await;
        assert!(matches!(crashed, Err(StoreError::Closed)), "{crashed:?}");
        assert!(matches!(store.list().await, Err(StoreError::Closed)));
    }

    #[test]
    fn an_unusable_file_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteSessions::open(dir.path()).err().expect("a directory opened as a registry");
        assert!(err.to_string().starts_with("session registry: "), "{err}");
    }
}
