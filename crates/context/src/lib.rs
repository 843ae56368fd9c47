//! The append-only context log of hiber sessions: everything that went in and
//! out of an agent's LLM, as ordered entries per session.
//!
//! Callers hold an `Arc<dyn LogStore>`; [`SqliteLog`] is the embedded
//! backend (one SQLite file in WAL mode, fsync'd group commits). A PostgreSQL
//! backend can implement the same trait later; [`conformance`] is what every
//! backend must pass ([`log_store_conformance!`] runs it in a backend's tests).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use hiber_context::{Kind, LogStore, NewEntry, SqliteLog};
//!
//! let log: Arc<dyn LogStore> = Arc::new(SqliteLog::open("/var/lib/hiber/context.db")?);
//! let appended = log
//!     .append("s1", NewEntry::new(Kind::User, serde_json::json!({"text": "hi"})).with_key("m1"))
//!     .await?;
//! assert_eq!(appended.entry.seq, 1);
//! let mut follow = log.follow("s1", 0).await?;
//! while let Some(entry) = follow.next().await {
//!     println!("{:?}", entry?);
//! }
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub mod conformance;
mod db;
mod entry;
mod error;
mod follow;
mod sqlite;
mod store;
mod writer;

pub use db::SqliteError;
pub use entry::{
    check_append, check_session, Appended, Entry, EntryError, Kind, NewEntry, SessionInfo, MAX_KEY_BYTES,
    MAX_PAYLOAD_BYTES, MAX_SESSION_ID_BYTES,
};
pub use error::StoreError;
pub use follow::Follow;
pub use sqlite::SqliteLog;
pub use store::{BoxFuture, LogStore};
pub use writer::WriterError;
