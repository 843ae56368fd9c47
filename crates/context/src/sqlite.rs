//! [`SqliteLog`]: the embedded [`LogStore`], one SQLite file in WAL mode.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::db::{self, SqliteError};
use crate::entry::{self, Appended, Entry, Kind, NewEntry, SessionInfo};
use crate::error::StoreError;
use crate::follow::{self, Follow, Notifier};
use crate::store::{BoxFuture, LogStore};
use crate::writer::{Outcome, Writer, WriterError};

/// Idle read connections kept for reuse.
const MAX_IDLE_READERS: usize = 8;

/// The embedded context log: one SQLite database in WAL mode with
/// `synchronous=FULL`, a group-commit writer thread and a pool of read
/// connections.
///
/// Only one `SqliteLog` should have a database open at a time: live
/// [`LogStore::follow`] streams are fed by this process's writer. Appends and
/// tail reads cost the same at any session length; deleting a session costs
/// in proportion to its entries and holds up appends meanwhile. Dropping it
/// finishes the queued writes, closes the file and ends the follow streams.
pub struct SqliteLog {
    writer: Writer,
    readers: Arc<Readers>,
    notifier: Arc<Notifier>,
}

impl SqliteLog {
    /// Opens (creating it and its schema if need be) the database at `path`,
    /// e.g. `HIBER_HOME/context.db`, and starts its writer thread. Blocks
    /// briefly on file I/O.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteLog, SqliteError> {
        let path = path.as_ref();
        let notifier = Arc::new(Notifier::default());
        let writer = Writer::start(path, notifier.clone())?;
        let readers = Arc::new(Readers { path: path.to_owned(), idle: Mutex::new(Vec::new()) });
        // Fail now rather than on the first read if the file cannot be read.
        readers.put(readers.take()?);
        Ok(SqliteLog { writer, readers, notifier })
    }

    /// Appends `count` copies of one entry in a few large transactions, much
    /// faster than as many appends; for benchmarks only. Returns the new last
    /// seq.
    pub(crate) async fn fill(
        &self,
        session: &str,
        count: u64,
        kind: Kind,
        payload: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        let text = entry::check_append(session, &NewEntry::new(kind, payload.clone()))?;
        Ok(self.writer.fill(session.to_owned(), count, kind, text).await?)
    }
}

impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

impl From<WriterError> for StoreError {
    fn from(e: WriterError) -> Self {
        match e {
            WriterError::Stopped => StoreError::Closed,
            e => StoreError::Backend(Box::new(e)),
        }
    }
}

/// A pool of read-only connections, used from blocking tasks.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Result<Connection, SqliteError> {
        match self.idle().pop() {
            Some(conn) => Ok(conn),
            None => db::open_reader(&self.path),
        }
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }

    /// Runs `query` on a pooled connection in a blocking task.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        query: impl FnOnce(&Connection) -> Result<T, SqliteError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = query(&conn);
            readers.put(conn);
            result
        })
        .await
        .map_err(SqliteError::Task)?;
        Ok(result?)
    }

    async fn read(self: &Arc<Self>, session: String, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.run(move |conn| db::read_range(conn, &session, after, limit)).await
    }
}

impl LogStore for SqliteLog {
    fn append<'a>(&'a self, session: &'a str, entry: NewEntry) -> BoxFuture<'a, Result<Appended, StoreError>> {
        Box::pin(async move {
            let text = entry::check_append(session, &entry)?;
            let outcome = self.writer.append(session.to_owned(), entry.kind, text, entry.key.clone()).await?;
            Ok(match outcome {
                Outcome::New { seq, time_ms } => Appended {
                    entry: Entry { seq, time_ms, kind: entry.kind, payload: entry.payload, key: entry.key },
                    duplicate: false,
                },
                Outcome::Duplicate(original) => Appended { entry: original, duplicate: true },
            })
        })
    }

    fn read<'a>(&'a self, session: &'a str, after: u64, limit: usize) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move {
            entry::check_session(session)?;
            self.readers.read(session.to_owned(), after, limit).await
        })
    }

    fn last_seq<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            entry::check_session(session)?;
            let session = session.to_owned();
            self.readers.run(move |conn| db::last_seq(conn, &session)).await
        })
    }

    fn follow<'a>(&'a self, session: &'a str, after: u64) -> BoxFuture<'a, Result<Follow, StoreError>> {
        Box::pin(async move {
            entry::check_session(session)?;
            let changes = self.notifier.subscribe(session);
            let readers = self.readers.clone();
            let session = session.to_owned();
            Ok(follow::spawn(after, changes, move |after| {
                let readers = readers.clone();
                let session = session.clone();
                async move { readers.read(session, after, follow::PAGE).await }
            }))
        })
    }

    fn delete_session<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            entry::check_session(session)?;
            Ok(self.writer.delete(session.to_owned()).await?)
        })
    }

    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionInfo>, StoreError>> {
        Box::pin(async move { self.readers.run(db::sessions).await })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;

    use super::SqliteLog;
    use crate::conformance::Opener;
    use crate::store::LogStore;

    /// Each place is a temporary directory holding `context.db`.
    struct Sqlite;

    impl Opener for Sqlite {
        type Store = dyn LogStore;
        type Place = TempDir;

        fn place(&self) -> TempDir {
            tempfile::tempdir().unwrap()
        }

        fn open(&self, dir: &TempDir) -> Arc<dyn LogStore> {
            Arc::new(SqliteLog::open(dir.path().join("context.db")).unwrap())
        }
    }

    crate::log_store_conformance!(Sqlite);
}
