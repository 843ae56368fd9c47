//! Following a session live: stored entries first, then new ones, with no gap
//! and no duplicate.
//!
//! The writer publishes each session's last committed seq on a
//! [`tokio::sync::watch`] channel (through a [`Notifier`]); a follower
//! subscribes *before* it reads, then reads the store from its last delivered
//! seq whenever a newer seq is published. Because entries always come
//! from the store, a follower that falls behind simply reads a larger page
//! and nothing is ever lost to a full buffer. Backend-neutral: a backend only
//! supplies the read function and publishes its commits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{mpsc, watch};

use crate::entry::Entry;
use crate::error::StoreError;

/// How many entries a follower reads at a time, and buffers for its reader.
pub(crate) const PAGE: usize = 256;

/// A live stream of a session's entries, from [`crate::LogStore::follow`].
#[derive(Debug)]
pub struct Follow {
    rx: mpsc::Receiver<Result<Entry, StoreError>>,
}

impl Follow {
    /// The next entry; `None` once the session was deleted or the store
    /// closed. After an `Err` the stream ends.
    pub async fn next(&mut self) -> Option<Result<Entry, StoreError>> {
        self.rx.recv().await
    }

    /// The underlying channel, e.g. to wrap it in a `Stream`.
    pub fn into_receiver(self) -> mpsc::Receiver<Result<Entry, StoreError>> {
        self.rx
    }
}

/// The last committed seq of each followed session, published by the writer.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    senders: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Notifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes of `session`'s last seq from now on. Subscribe before reading
    /// the store: a commit is either visible to the read or published after.
    pub(crate) fn subscribe(&self, session: &str) -> watch::Receiver<u64> {
        let mut senders = self.lock();
        senders.retain(|_, tx| tx.receiver_count() > 0);
        senders.entry(session.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Tells `session`'s followers that entries up to `last_seq` are
    /// committed. Call only after the commit.
    pub(crate) fn publish(&self, session: &str, last_seq: u64) {
        let mut senders = self.lock();
        if let Some(tx) = senders.get(session) {
            if tx.receiver_count() == 0 {
                senders.remove(session);
            } else {
                tx.send_if_modified(|seq| {
                    let newer = last_seq > *seq;
                    *seq = (*seq).max(last_seq);
                    newer
                });
            }
        }
    }

    /// Ends the streams of `session`'s followers (it was deleted).
    pub(crate) fn close(&self, session: &str) {
        self.lock().remove(session);
    }
}

/// Starts a follower task and returns its stream. `changes` must come from
/// [`Notifier::subscribe`] before this call; `read(after)` returns up to
/// [`PAGE`] entries with `seq > after`, in order.
pub(crate) fn spawn<R, F>(after: u64, mut changes: watch::Receiver<u64>, read: R) -> Follow
where
    R: Fn(u64) -> F + Send + 'static,
    F: Future<Output = Result<Vec<Entry>, StoreError>> + Send,
{
    let (tx, rx) = mpsc::channel(PAGE);
    tokio::spawn(async move {
        let mut last = after;
        loop {
            // Mark what is published now as seen *before* reading: a commit
            // the read misses is published later and wakes us below.
            changes.borrow_and_update();
            loop {
                let page = match read(last).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let full = page.len() >= PAGE;
                for entry in page {
                    // A store read never goes backwards; skip rather than repeat.
                    if entry.seq <= last {
                        continue;
                    }
                    last = entry.seq;
                    if tx.send(Ok(entry)).await.is_err() {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
            // Wait for the next commit, the session's deletion (sender gone)
            // or the reader going away.
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    Follow { rx }
}
