//! The conformance suite of [`SessionStore`]: what every backend of the
//! session registry must do, as `pub async fn` checks over an [`Opener`] of
//! that backend's stores. A backend's tests run them all with
//! [`crate::session_store_conformance!`]; [`SqliteSessions`](super::SqliteSessions)
//! does.
//!
//! The checks panic on the first property that does not hold, and open their
//! stores from within a tokio runtime (the concurrent one needs a
//! multi-threaded one).

use std::collections::BTreeMap;

/// Opens the stores of one backend for the checks (the context log's suite
/// uses the same trait).
pub use hiber_context::conformance::Opener;
#[doc(hidden)]
pub use hiber_context::conformance_tests;

use super::{SessionRecord, SessionStore, State};

/// A session from an image that has seen nothing yet, created at `created`.
fn record(id: &str, created: u64) -> SessionRecord {
    let command = vec!["sleep".into(), "100".into()];
    SessionRecord {
        created,
        ..SessionRecord::new(id.into(), Some("busybox".into()), None, command, BTreeMap::new(), 3)
    }
}

/// A record with every optional field set, to round-trip them all.
fn full_record(id: &str) -> SessionRecord {
    SessionRecord {
        from_snapshot: Some("snap-0".into()),
        env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two words".into())]),
        state: State::Sleeping,
        sandbox: Some("sb-1".into()),
        snapshot: Some("snap-1".into()),
        snapshot_cursor: 4,
        cursor: 7,
        wake_at: Some(1_234_567),
        error: Some("not really".into()),
        ..record(id, 1_000)
    }
}

/// The ids of `records`, in their order.
fn ids(records: &[SessionRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

/// A store opened again at the same place has every record as last written.
pub async fn records_survive_reopening<O: Opener<Store = dyn SessionStore>>(opener: &O) {
    let place = opener.place();
    let (a, b) = {
        let store = opener.open(&place);
        let a = store.put(record("a", 1)).await.unwrap();
        let a = store.put(SessionRecord { state: State::Sleeping, wake_at: Some(42), ..a }).await.unwrap();
        let b = store.put(full_record("b")).await.unwrap();
        (a, b)
    };
    let store = opener.open(&place);
    assert_eq!(store.get("a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.list().await.unwrap(), vec![a, b]);
}

/// `put` stamps `updated`, returns the record as written (every field kept)
/// and replaces the record of the same id.
pub async fn put_replaces_and_stamps_updated<O: Opener<Store = dyn SessionStore>>(opener: &O) {
    let (_place, store) = opener.fresh();
    let before = hiber_common::unix_ms();
    let first = store.put(full_record("a")).await.unwrap();
    assert!(first.updated >= before, "updated {} is before the put at {before}", first.updated);
    assert_eq!(first, SessionRecord { updated: first.updated, ..full_record("a") });
    assert_eq!(store.get("a").await.unwrap(), Some(first.clone()));

    let changed = SessionRecord { state: State::Running, wake_at: None, cursor: 8, ..first.clone() };
    let second = store.put(changed.clone()).await.unwrap();
    assert!(second.updated >= first.updated);
    assert_eq!(second, SessionRecord { updated: second.updated, ..changed });
    assert_eq!(store.get("a").await.unwrap(), Some(second.clone()));
    assert_eq!(store.list().await.unwrap(), vec![second]);
}

/// `list` is oldest first: by `created`, then by id.
pub async fn list_is_oldest_first<O: Opener<Store = dyn SessionStore>>(opener: &O) {
    let (_place, store) = opener.fresh();
    for (id, created) in [("w", 3), ("y", 2), ("z", 1), ("x", 2)] {
        store.put(record(id, created)).await.unwrap();
    }
    assert_eq!(ids(&store.list().await.unwrap()), ["z", "x", "y", "w"]);
}

/// `delete` removes one record and says whether there was one.
pub async fn delete_says_whether_there_was_one<O: Opener<Store = dyn SessionStore>>(opener: &O) {
    let (_place, store) = opener.fresh();
    store.put(record("a", 1)).await.unwrap();
    let b = store.put(record("b", 2)).await.unwrap();
    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap());
    assert!(!store.delete("never").await.unwrap());
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.list().await.unwrap(), vec![b]);
}

/// A new store is empty, and an unknown id has no record.
pub async fn unknown_ids_have_no_record<O: Opener<Store = dyn SessionStore>>(opener: &O) {
    let (_place, store) = opener.fresh();
    assert_eq!(store.get("nope").await.unwrap(), None);
    assert!(store.list().await.unwrap().is_empty());
    store.put(record("a", 1)).await.unwrap();
    assert_eq!(store.get("nope").await.unwrap(), None);
    assert_eq!(store.get("").await.unwrap(), None);
}

/// Puts from sixteen tasks at once all land. Needs a multi-threaded runtime.
pub async fn concurrent_puts_all_land<O: Opener<Store = dyn SessionStore>>(opener: &O) {
    const TASKS: u64 = 16;
    const EACH: u64 = 25;
    let (_place, store) = opener.fresh();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let put = store.put(record(&format!("t{t:02}-{i:02}"), t * EACH + i)).await.unwrap();
                    assert_eq!(store.get(&put.id).await.unwrap(), Some(put));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let listed = store.list().await.unwrap();
    let expected: Vec<String> = (0..TASKS).flat_map(|t| (0..EACH).map(move |i| format!("t{t:02}-{i:02}"))).collect();
    assert_eq!(ids(&listed), expected);
}

/// Expands to one `#[tokio::test]` per check of
/// [`crate::store::conformance`], against the stores that `$opener` opens: an
/// expression whose type implements [`crate::store::conformance::Opener`] with
/// `Store = dyn SessionStore`, evaluated once per test. The calling crate
/// needs `tokio` with the `macros` and `rt-multi-thread` features.
///
/// ```ignore
/// hiber_server::session_store_conformance!(MyBackendOpener::new());
/// ```
#[macro_export]
macro_rules! session_store_conformance {
    ($opener:expr) => {
        $crate::store::conformance::conformance_tests! {
            $crate::store::conformance, $opener,
            current_thread: [
                records_survive_reopening,
                put_replaces_and_stamps_updated,
                list_is_oldest_first,
                delete_says_whether_there_was_one,
                unknown_ids_have_no_record,
            ],
            multi_thread: [concurrent_puts_all_land],
        }
    };
}
