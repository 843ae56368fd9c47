//! [`StoreError`]: what any [`crate::LogStore`] can fail with, shared by the
//! trait, the follower and the backends.

use crate::entry::EntryError;

/// What a store's methods can fail with, whatever the backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad input from the caller; nothing was changed.
    #[error("invalid request: {0}")]
    Invalid(#[from] EntryError),
    /// The store is shutting down or its writer stopped.
    #[error("the context log store is closed")]
    Closed,
    /// The backend failed (I/O, SQL, a corrupt row); the source says how.
    #[error("context log storage failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}
