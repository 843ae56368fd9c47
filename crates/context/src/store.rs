//! The storage interface every backend implements, so callers hold an
//! `Arc<dyn LogStore>` and never name the backend.

use std::future::Future;
use std::pin::Pin;

use crate::entry::{Appended, Entry, NewEntry, SessionInfo};
use crate::error::StoreError;
use crate::follow::Follow;

/// A boxed, sendable future: what the methods of [`LogStore`] return, which
/// keeps the trait object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An append-only log of entries per session.
///
/// Every method is async and does not block the runtime. Backends are used
/// through `Arc<dyn LogStore>`; they must be called from within a tokio
/// runtime.
pub trait LogStore: Send + Sync {
    /// Appends an entry to `session` (created on its first append) and
    /// returns it once it is durable. With a key already used in this session,
    /// adds nothing and returns the original entry with `duplicate: true`
    /// (whatever the kind and payload of the retry).
    fn append<'a>(&'a self, session: &'a str, entry: NewEntry) -> BoxFuture<'a, Result<Appended, StoreError>>;

    /// Up to `limit` entries of `session` with `seq > after`, in seq order.
    /// An unknown session has no entries.
    fn read<'a>(&'a self, session: &'a str, after: u64, limit: usize) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>>;

    /// The last seq of `session` (its number of entries); 0 if it has none.
    fn last_seq<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Every entry of `session` with `seq > after`: the stored ones, then new
    /// ones as they are appended, each exactly once and in order. The stream
    /// ends when the session is deleted or the store closes, and stops its
    /// work when the [`Follow`] is dropped.
    fn follow<'a>(&'a self, session: &'a str, after: u64) -> BoxFuture<'a, Result<Follow, StoreError>>;

    /// Deletes `session` and all its entries; returns how many entries it
    /// had. A later append starts it again at seq 1.
    fn delete_session<'a>(&'a self, session: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Every session with at least one entry, ordered by id.
    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionInfo>, StoreError>>;
}
