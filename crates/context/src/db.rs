//! The SQLite schema, connections and queries shared by the writer thread and
//! the readers. Every query is an indexed lookup or range: its cost does not
//! grow with the length of a session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use crate::entry::{Entry, Kind, SessionInfo};

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    session TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    payload TEXT NOT NULL,
    key     TEXT,
    PRIMARY KEY (session, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_by_key
    ON entries (session, key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS sessions (
    id         TEXT PRIMARY KEY NOT NULL,
    last_seq   INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// What the SQLite backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// The database file could not be opened or set up.
    #[error("cannot open the context database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("context database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The file was written by a newer hiber.
    #[error("the context database has schema version {found}; this hiber knows up to {supported}")]
    SchemaTooNew {
        /// The file's version.
        found: i64,
        /// The newest version this code knows.
        supported: i64,
    },
    /// The file is not in WAL mode and cannot be switched to it.
    #[error("the context database is in journal mode {0:?} and cannot switch to WAL")]
    NotWal(String),
    /// A stored row does not decode.
    #[error("corrupt entry {seq} of session {session:?}: {reason}")]
    Corrupt {
        /// Its session.
        session: String,
        /// Its seq.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the context log writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A blocking read task panicked or was cancelled.
    #[error("a context database read task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Opens the writer's connection: creates the file and schema if needed,
/// WAL mode, and `synchronous=FULL` so that each commit is fsync'd before it
/// returns.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, SqliteError> {
    let open = |path: &Path| -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    };
    let conn = open(path).map_err(|source| SqliteError::Open { path: path.to_owned(), source })?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteError::NotWal(mode));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(SqliteError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(conn)
}

/// Opens a read-only connection to a database the writer has set up.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, SqliteError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|source| SqliteError::Open { path: path.to_owned(), source })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Converts a seq or count to SQLite's integer, saturating.
fn to_sql_int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Decodes a row of `seq, time_ms, kind, payload, key`.
fn entry_from_row(session: &str, row: &Row<'_>) -> Result<Entry, SqliteError> {
    let seq: i64 = row.get(0)?;
    let corrupt = |reason: String| SqliteError::Corrupt { session: session.to_owned(), seq, reason };
    let kind: String = row.get(2)?;
    let payload: String = row.get(3)?;
    Ok(Entry {
        seq: u64::try_from(seq).map_err(|_| corrupt("negative seq".into()))?,
        time_ms: row.get(1)?,
        kind: kind.parse::<Kind>().map_err(|e| corrupt(e.to_string()))?,
        payload: serde_json::from_str(&payload).map_err(|e| corrupt(format!("payload is not JSON: {e}")))?,
        key: row.get(4)?,
    })
}

/// Up to `limit` entries of `session` with `seq > after`, in order.
pub(crate) fn read_range(
    conn: &Connection,
    session: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<Entry>, SqliteError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, time_ms, kind, payload, key FROM entries
         WHERE session = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![session, to_sql_int(after), to_sql_int(limit)])?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next()? {
        entries.push(entry_from_row(session, row)?);
    }
    Ok(entries)
}

/// The entry of `session` appended with `key`, if any.
pub(crate) fn entry_by_key(conn: &Connection, session: &str, key: &str) -> Result<Option<Entry>, SqliteError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, time_ms, kind, payload, key FROM entries
         WHERE session = ?1 AND key = ?2",
    )?;
    let mut rows = stmt.query(params![session, key])?;
    match rows.next()? {
        Some(row) => entry_from_row(session, row).map(Some),
        None => Ok(None),
    }
}

/// The last seq of `session`, 0 if it has no entries.
pub(crate) fn last_seq(conn: &Connection, session: &str) -> Result<u64, SqliteError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT last_seq FROM sessions WHERE id = ?1")?
        .query_row([session], |r| r.get(0))
        .optional()?;
    Ok(seq.map_or(0, |s| u64::try_from(s).unwrap_or(0)))
}

/// Every session, ordered by id.
pub(crate) fn sessions(conn: &Connection) -> Result<Vec<SessionInfo>, SqliteError> {
    let mut stmt = conn.prepare_cached("SELECT id, last_seq, created_ms, updated_ms FROM sessions ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(SessionInfo {
            id: r.get(0)?,
            last_seq: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            created_ms: r.get(2)?,
            updated_ms: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Inserts one entry (the caller picked a free seq).
pub(crate) fn insert_entry(
    conn: &Connection,
    session: &str,
    seq: u64,
    time_ms: i64,
    kind: Kind,
    payload: &str,
    key: Option<&str>,
) -> Result<(), SqliteError> {
    conn.prepare_cached(
        "INSERT INTO entries (session, seq, time_ms, kind, payload, key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![session, to_sql_int(seq), time_ms, kind.as_str(), payload, key])?;
    Ok(())
}

/// Records `session`'s new last seq.
pub(crate) fn save_last_seq(conn: &Connection, session: &str, last_seq: u64, time_ms: i64) -> Result<(), SqliteError> {
    conn.prepare_cached(
        "INSERT INTO sessions (id, last_seq, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq, updated_ms = excluded.updated_ms",
    )?
    .execute(params![session, to_sql_int(last_seq), time_ms])?;
    Ok(())
}

/// Deletes `session` and its entries; returns how many it had.
pub(crate) fn delete_session(conn: &Connection, session: &str) -> Result<u64, SqliteError> {
    let count = last_seq(conn, session)?;
    conn.prepare_cached("DELETE FROM entries WHERE session = ?1")?.execute([session])?;
    conn.prepare_cached("DELETE FROM sessions WHERE id = ?1")?.execute([session])?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queries on the hot paths use the indexes, never a scan.
    #[test]
    fn hot_queries_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("c.db")).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let range = plan("SELECT * FROM entries WHERE session = 's' AND seq > 5 ORDER BY seq LIMIT 20");
        assert!(range.contains("USING INDEX sqlite_autoindex_entries_1"), "{range}");
        assert!(!range.contains("TEMP B-TREE"), "{range}");
        let key = plan("SELECT * FROM entries WHERE session = 's' AND key = 'k'");
        assert!(key.contains("USING INDEX entries_by_key"), "{key}");
        let last = plan("SELECT last_seq FROM sessions WHERE id = 's'");
        assert!(last.contains("USING PRIMARY KEY"), "{last}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        open_writer(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        assert!(matches!(open_writer(&path), Err(SqliteError::SchemaTooNew { found: 2, supported: 1 })));
    }
}
