//! Group commit: one thread owns the write connection; appends from any
//! number of tasks queue up while the previous transaction is being fsync'd
//! and are then written together in one transaction, each caller answered
//! only after that commit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::db::{self, SqliteError};
use crate::entry::{Entry, Kind};
use crate::follow::Notifier;

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 1024;

/// Rows per transaction when filling a session in bulk.
const FILL_CHUNK: u64 = 50_000;

/// What a write can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriterError {
    /// The transaction holding this write failed and was rolled back.
    #[error("the group commit failed and was rolled back: {0}")]
    Batch(#[source] Arc<SqliteError>),
    /// The original entry of a duplicate key could not be read back.
    #[error("cannot read the original entry of a duplicate key: {0}")]
    Original(#[source] Arc<SqliteError>),
    /// The writer thread has stopped.
    #[error("the context log writer has stopped")]
    Stopped,
}

/// The result of an append that reached the log.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Added with this seq and time.
    New { seq: u64, time_ms: i64 },
    /// The key was used before: the original entry.
    Duplicate(Entry),
}

/// One append, already checked; `payload` is its JSON text.
struct Append {
    session: String,
    kind: Kind,
    payload: String,
    key: Option<String>,
    reply: oneshot::Sender<Result<Outcome, WriterError>>,
}

enum Command {
    Append(Append),
    Delete { session: String, reply: oneshot::Sender<Result<u64, WriterError>> },
    Fill { session: String, count: u64, kind: Kind, payload: String, reply: oneshot::Sender<Result<u64, WriterError>> },
}

/// Handle of the writer thread; dropping it lets the thread finish the
/// queued writes and waits for it.
pub(crate) struct Writer {
    tx: Option<mpsc::UnboundedSender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Opens the write connection to `path` and starts the thread.
    pub(crate) fn start(path: &Path, notifier: Arc<Notifier>) -> Result<Writer, SqliteError> {
        let conn = db::open_writer(path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("hiber-context-writer".into())
            .spawn(move || run(conn, rx, &notifier))
            .map_err(SqliteError::Spawn)?;
        Ok(Writer { tx: Some(tx), thread: Some(thread) })
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, WriterError>>) -> Command,
    ) -> Result<T, WriterError> {
        let (reply, answer) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(WriterError::Stopped)?;
        tx.send(command(reply)).map_err(|_| WriterError::Stopped)?;
        answer.await.map_err(|_| WriterError::Stopped)?
    }

    /// Appends a checked entry; answers after its transaction is committed.
    pub(crate) async fn append(
        &self,
        session: String,
        kind: Kind,
        payload: String,
        key: Option<String>,
    ) -> Result<Outcome, WriterError> {
        self.call(|reply| Command::Append(Append { session, kind, payload, key, reply })).await
    }

    /// Deletes a session; returns how many entries it had.
    pub(crate) async fn delete(&self, session: String) -> Result<u64, WriterError> {
        self.call(|reply| Command::Delete { session, reply }).await
    }

    /// Appends `count` copies of one entry to `session` in a few large
    /// transactions (for benchmarks); returns the new last seq.
    pub(crate) async fn fill(
        &self,
        session: String,
        count: u64,
        kind: Kind,
        payload: String,
    ) -> Result<u64, WriterError> {
        self.call(|reply| Command::Fill { session, count, kind, payload, reply }).await
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            // The thread never panics on purpose; if it did, there is
            // nothing left to clean up.
            let _ = thread.join();
        }
    }
}

fn now_ms() -> i64 {
    i64::try_from(hiber_common::unix_ms()).unwrap_or(i64::MAX)
}

/// The thread's loop: batches consecutive appends, runs other commands alone,
/// in arrival order.
fn run(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Command>, notifier: &Notifier) {
    let mut carried = None;
    loop {
        let Some(command) = carried.take().or_else(|| rx.blocking_recv()) else {
            return;
        };
        match command {
            Command::Append(first) => {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Command::Append(next)) => batch.push(next),
                        Ok(other) => {
                            carried = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_appends(&mut conn, batch, notifier);
            }
            Command::Delete { session, reply } => {
                let result = in_transaction(&mut conn, |tx| db::delete_session(tx, &session));
                if result.is_ok() {
                    notifier.close(&session);
                }
                let _ = reply.send(result.map_err(|e| WriterError::Batch(Arc::new(e))));
            }
            Command::Fill { session, count, kind, payload, reply } => {
                let result = fill(&mut conn, &session, count, kind, &payload);
                if let Ok(last) = result {
                    notifier.publish(&session, last);
                }
                let _ = reply.send(result.map_err(|e| WriterError::Batch(Arc::new(e))));
            }
        }
    }
}

/// Runs `f` in an immediate transaction, committed if it succeeds.
fn in_transaction<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> Result<T, SqliteError>,
) -> Result<T, SqliteError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// Writes a batch in one transaction, publishes the new last seqs, then
/// answers every caller.
fn commit_appends(conn: &mut Connection, batch: Vec<Append>, notifier: &Notifier) {
    let mut last_seqs: HashMap<&str, u64> = HashMap::new();
    let written = in_transaction(conn, |tx| {
        let time_ms = now_ms();
        let mut outcomes = Vec::with_capacity(batch.len());
        for append in &batch {
            if let Some(key) = &append.key {
                match db::entry_by_key(tx, &append.session, key) {
                    Ok(Some(original)) => {
                        outcomes.push(Ok(Outcome::Duplicate(original)));
                        continue;
                    }
                    Ok(None) => {}
                    // A bad stored row fails this append only.
                    Err(e @ SqliteError::Corrupt { .. }) => {
                        outcomes.push(Err(WriterError::Original(Arc::new(e))));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let seq = match last_seqs.get(append.session.as_str()) {
                Some(last) => last + 1,
                None => db::last_seq(tx, &append.session)? + 1,
            };
            db::insert_entry(tx, &append.session, seq, time_ms, append.kind, &append.payload, append.key.as_deref())?;
            last_seqs.insert(&append.session, seq);
            outcomes.push(Ok(Outcome::New { seq, time_ms }));
        }
        for (session, last) in &last_seqs {
            db::save_last_seq(tx, session, *last, time_ms)?;
        }
        Ok(outcomes)
    });
    match written {
        Ok(outcomes) => {
            for (session, last) in &last_seqs {
                notifier.publish(session, *last);
            }
            for (append, outcome) in batch.into_iter().zip(outcomes) {
                let _ = append.reply.send(outcome);
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for append in batch {
                let _ = append.reply.send(Err(WriterError::Batch(e.clone())));
            }
        }
    }
}

/// Appends `count` copies of an entry in transactions of [`FILL_CHUNK`].
fn fill(conn: &mut Connection, session: &str, count: u64, kind: Kind, payload: &str) -> Result<u64, SqliteError> {
    let mut last = db::last_seq(conn, session)?;
    let end = last.saturating_add(count);
    while last < end {
        let chunk_end = end.min(last + FILL_CHUNK);
        last = in_transaction(conn, |tx| {
            let time_ms = now_ms();
            for seq in last + 1..=chunk_end {
                db::insert_entry(tx, session, seq, time_ms, kind, payload, None)?;
            }
            db::save_last_seq(tx, session, chunk_end, time_ms)?;
            Ok(chunk_end)
        })?;
    }
    Ok(last)
}
