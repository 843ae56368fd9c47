//! The conformance suite of [`LogStore`]: what every backend must do, as
//! `pub async fn` checks over an [`Opener`] of that backend's stores. A
//! backend's tests run them all with [`crate::log_store_conformance!`]; the
//! SQLite backend does.
//!
//! The checks panic on the first property that does not hold, and open their
//! stores from within a tokio runtime (the concurrent ones need a
//! multi-threaded one).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::entry::{Entry, EntryError, Kind, NewEntry, MAX_PAYLOAD_BYTES};
use crate::error::StoreError;
use crate::follow::Follow;
use crate::store::LogStore;

/// Opens the stores of one backend for a conformance suite: this one, or
/// another crate's built the same way (the server's session registry). Each
/// check asks for a new [`place`] (empty storage) and opens a store there; the
/// reopening checks drop that store and open the same place again.
///
/// [`place`]: Opener::place
pub trait Opener {
    /// What is opened, e.g. `dyn LogStore`.
    type Store: ?Sized;
    /// Where a store keeps its data, e.g. a temporary directory; dropping it
    /// may remove the data. A check drops it after every store opened there.
    type Place;

    /// New, empty storage.
    fn place(&self) -> Self::Place;

    /// A store at `place`, holding what the stores opened there before wrote.
    /// Panics if it cannot be opened: the checks are tests.
    fn open(&self, place: &Self::Place) -> Arc<Self::Store>;

    /// A store at a new place, and the place: keep it until the store is
    /// dropped.
    fn fresh(&self) -> (Self::Place, Arc<Self::Store>) {
        let place = self.place();
        let store = self.open(&place);
        (place, store)
    }
}

fn user(text: &str) -> NewEntry {
    NewEntry::new(Kind::User, json!({ "text": text }))
}

async fn seqs(log: &dyn LogStore, session: &str) -> Vec<u64> {
    let entries = log.read(session, 0, usize::MAX).await.unwrap();
    entries.iter().map(|e| e.seq).collect()
}

/// The next entry of a follow stream, failing the check after 10 s.
async fn next(follow: &mut Follow) -> Option<Entry> {
    tokio::time::timeout(Duration::from_secs(10), follow.next())
        .await
        .expect("follow stream stalled")
        .map(Result::unwrap)
}

/// A session's seqs are 1, 2, 3… in append order, and `last_seq` follows them.
pub async fn seq_is_dense_from_one<O: Opener<Store = dyn LogStore>>(opener: &O) {
    let (_place, log) = opener.fresh();
    assert_eq!(log.last_seq("s").await.unwrap(), 0);
    for i in 1..=5u64 {
        let a = log.append("s", user(&i.to_string())).await.unwrap();
        assert_eq!(a.entry.seq, i);
        assert!(!a.duplicate);
        assert_eq!(a.entry.payload, json!({ "text": i.to_string() }));
    }
    assert_eq!(seqs(&*log, "s").await, vec![1, 2, 3, 4, 5]);
    assert_eq!(log.last_seq("s").await.unwrap(), 5);
}

/// An append with a key already used in the session adds nothing and returns
/// the original entry, whatever the retry carries; keys are per session.
pub async fn a_retried_key_returns_the_original<O: Opener<Store = dyn LogStore>>(opener: &O) {
    let (_place, log) = opener.fresh();
    let first = log.append("s", user("hello").with_key("m1")).await.unwrap();
    log.append("s", user("other")).await.unwrap();
    let retry = log.append("s", NewEntry::new(Kind::Event, json!("changed")).with_key("m1")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.entry, first.entry);
    assert_eq!(retry.entry.key.as_deref(), Some("m1"));
    assert_eq!(seqs(&*log, "s").await, vec![1, 2]);
    assert_eq!(log.last_seq("s").await.unwrap(), 2);
    // The same key in another session is another entry.
    let other = log.append("t", user("hello").with_key("m1")).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.entry.seq, 1);
}

/// Sixteen tasks appending with one key at once add exactly one entry, and
/// all get it back. Needs a multi-threaded runtime.
pub async fn concurrent_retries_of_one_key_add_one_entry<O: Opener<Store = dyn LogStore>>(opener: &O) {
    let (_place, log) = opener.fresh();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append("s", user(&i.to_string()).with_key("once")).await.unwrap() })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|a| !a.duplicate).count(), 1);
    assert!(results.iter().all(|a| a.entry == results[0].entry));
    assert_eq!(seqs(&*log, "s").await, vec![1]);
}

/// Sixteen tasks appending at once get every seq exactly once, each task's
/// seqs rising, and its entries stored in its order. Needs a multi-threaded
/// runtime.
pub async fn sixteen_concurrent_appenders_get_every_seq_once_in_order<O: Opener<Store = dyn LogStore>>(opener: &O) {
    const APPENDERS: u64 = 16;
    const EACH: u64 = 50;
    let (_place, log) = opener.fresh();
    let tasks: Vec<_> = (0..APPENDERS)
        .map(|a| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..EACH {
                    let e = NewEntry::new(Kind::ToolCall, json!({ "a": a, "i": i }));
                    got.push(log.append("s", e).await.unwrap().entry.seq);
                }
                got
            })
        })
        .collect();
    let mut acknowledged = HashSet::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "one appender's order: {got:?}");
        acknowledged.extend(got);
    }
    let total = APPENDERS * EACH;
    assert_eq!(acknowledged, (1..=total).collect::<HashSet<_>>());
    let entries = log.read("s", 0, usize::MAX).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    // Each appender's entries are stored in the order it appended them.
    for a in 0..APPENDERS {
        let is: Vec<u64> =
            entries.iter().filter(|e| e.payload["a"] == a).map(|e| e.payload["i"].as_u64().unwrap()).collect();
        assert_eq!(is, (0..EACH).collect::<Vec<_>>());
    }
}

/// `read` returns up to `limit` entries with `seq > after`, in order; an
/// unknown session has none.
pub async fn range_reads_honour_after_and_limit<O: Opener<Store = dyn LogStore>>(opener: &O) {
    let (_place, log) = opener.fresh();
    for i in 0..10 {
        log.append("s", user(&i.to_string())).await.unwrap();
    }
    let range = |after, limit| {
        let log = log.clone();
        async move {
            let entries = log.read("s", after, limit).await.unwrap();
            entries.iter().map(|e| e.seq).collect::<Vec<_>>()
        }
    };
    assert_eq!(range(0, 3).await, vec![1, 2, 3]);
    assert_eq!(range(3, 3).await, vec![4, 5, 6]);
    assert_eq!(range(8, 10).await, vec![9, 10]);
    assert_eq!(range(10, 5).await, Vec::<u64>::new());
    assert_eq!(range(u64::MAX, 5).await, Vec::<u64>::new());
    assert_eq!(range(0, 0).await, Vec::<u64>::new());
    let tail = log.read("s", 10 - 4, 4).await.unwrap();
    assert_eq!(tail[0].payload, json!({ "text": "6" }));
    assert!(log.read("unknown", 0, 10).await.unwrap().is_empty());
}

/// Followers that subscribe while another task appends get every entry after
/// their position exactly once and in order, stored then live, and nothing
/// more. Needs a multi-threaded runtime.
pub async fn follow_sees_stored_then_live_entries_while_appends_race<O: Opener<Store = dyn LogStore>>(opener: &O) {
    const TOTAL: u64 = 600;
    let (_place, log) = opener.fresh();
    for i in 0..5 {
        log.append("s", user(&i.to_string())).await.unwrap();
    }
    let appender = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 5..TOTAL {
                log.append("s", user(&i.to_string())).await.unwrap();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Followers subscribe at different moments of the race, from various
    // positions.
    let mut followers = Vec::new();
    for after in [0u64, 2, 5, 40, 300] {
        followers.push((after, log.follow("s", after).await.unwrap()));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (after, mut follow) in followers {
        let mut got = Vec::new();
        while got.last() != Some(&TOTAL) {
            got.push(next(&mut follow).await.unwrap().seq);
        }
        assert_eq!(got, (after + 1..=TOTAL).collect::<Vec<_>>(), "after {after}");
    }
    appender.await.unwrap();
    // A follower at the end gets the next live entry, and only it.
    let mut follow = log.follow("s", TOTAL).await.unwrap();
    log.append("s", user("last")).await.unwrap();
    assert_eq!(next(&mut follow).await.unwrap().seq, TOTAL + 1);
    assert!(tokio::time::timeout(Duration::from_millis(100), follow.next()).await.is_err(), "nothing more");
}

/// A follow stream ends when its session is deleted, and when the last handle
/// of the store is dropped.
pub async fn follow_ends_when_the_session_is_deleted_or_the_store_closes<O: Opener<Store = dyn LogStore>>(opener: &O) {
    let (_place, log) = opener.fresh();
    log.append("s", user("a")).await.unwrap();
    let mut deleted = log.follow("s", 0).await.unwrap();
    assert_eq!(next(&mut deleted).await.unwrap().seq, 1);
    log.delete_session("s").await.unwrap();
    assert!(next(&mut deleted).await.is_none());

    let mut closed = log.follow("t", 0).await.unwrap();
    assert_eq!(Arc::strong_count(&log), 1, "the check holds the only handle of the store");
    drop(log);
    assert!(next(&mut closed).await.is_none());
}

/// A store opened again at the same place has every entry and key, and
/// continues the seqs.
pub async fn reopening_keeps_entries_and_continues_seq<O: Opener<Store = dyn LogStore>>(opener: &O) {
    let place = opener.place();
    let first = {
        let log = opener.open(&place);
        log.append("s", user("a").with_key("k")).await.unwrap();
        log.append("s", user("b")).await.unwrap();
        log.append("s", user("c")).await.unwrap()
    };
    assert_eq!(first.entry.seq, 3);
    let log = opener.open(&place);
    assert_eq!(log.last_seq("s").await.unwrap(), 3);
    assert_eq!(log.read("s", 2, 10).await.unwrap(), vec![first.entry]);
    assert_eq!(log.append("s", user("d")).await.unwrap().entry.seq, 4);
    let retry = log.append("s", user("a").with_key("k")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.entry.seq, 1);
}

/// Empty session ids, oversized payloads and empty keys are
/// [`StoreError::Invalid`] with the [`EntryError`] saying why, and change
/// nothing.
pub async fn bad_input_is_a_clear_error_and_changes_nothing<O: Opener<Store = dyn LogStore>>(opener: &O) {
    let (_place, log) = opener.fresh();
    fn invalid<T>(r: Result<T, StoreError>) -> EntryError {
        match r {
            Err(StoreError::Invalid(e)) => e,
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }
    assert_eq!(invalid(log.append("", user("a")).await), EntryError::EmptySession);
    assert_eq!(invalid(log.read("", 0, 1).await), EntryError::EmptySession);
    assert_eq!(invalid(log.last_seq("").await), EntryError::EmptySession);
    assert_eq!(invalid(log.follow("", 0).await), EntryError::EmptySession);
    assert_eq!(invalid(log.delete_session("").await), EntryError::EmptySession);
    let huge = NewEntry::new(Kind::Assistant, Value::String("x".repeat(MAX_PAYLOAD_BYTES)));
    let err = invalid(log.append("s", huge).await);
    assert!(matches!(err, EntryError::PayloadTooLarge { .. }));
    assert!(err.to_string().contains("more than the limit of 1048576"), "{err}");
    assert_eq!(invalid(log.append("s", user("a").with_key("")).await), EntryError::EmptyKey);
    assert_eq!(log.last_seq("s").await.unwrap(), 0);
    assert!(log.sessions().await.unwrap().is_empty());
}

/// Sessions have their own seqs; `sessions` lists them by id; deleting one
/// returns its entry count, leaves the others alone and restarts it at seq 1.
pub async fn sessions_are_independent<O: Opener<Store = dyn LogStore>>(opener: &O) {
    let (_place, log) = opener.fresh();
    for i in 0..4 {
        assert_eq!(log.append("a", user("x")).await.unwrap().entry.seq, i + 1);
        if i < 2 {
            assert_eq!(log.append("b", user("y")).await.unwrap().entry.seq, i + 1);
        }
    }
    assert_eq!(seqs(&*log, "a").await, vec![1, 2, 3, 4]);
    assert_eq!(seqs(&*log, "b").await, vec![1, 2]);
    let listed: Vec<_> = log.sessions().await.unwrap().into_iter().map(|s| (s.id, s.last_seq)).collect();
    assert_eq!(listed, vec![("a".to_owned(), 4), ("b".to_owned(), 2)]);

    assert_eq!(log.delete_session("a").await.unwrap(), 4);
    assert_eq!(log.last_seq("a").await.unwrap(), 0);
    assert_eq!(seqs(&*log, "b").await, vec![1, 2]);
    // A deleted session starts again at 1.
    assert_eq!(log.append("a", user("z")).await.unwrap().entry.seq, 1);
    assert_eq!(log.delete_session("never").await.unwrap(), 0);
}

/// Expands to one `#[tokio::test]` per check of [`crate::conformance`],
/// against the stores that `$opener` opens: an expression whose type
/// implements [`crate::conformance::Opener`] with `Store = dyn LogStore`,
/// evaluated once per test. The calling crate needs `tokio` with the `macros`,
/// `rt-multi-thread` and `time` features.
///
/// ```ignore
/// hiber_context::log_store_conformance!(MyBackendOpener::new());
/// ```
#[macro_export]
macro_rules! log_store_conformance {
    ($opener:expr) => {
        $crate::conformance_tests! {
            $crate::conformance, $opener,
            current_thread: [
                seq_is_dense_from_one,
                a_retried_key_returns_the_original,
                range_reads_honour_after_and_limit,
                follow_ends_when_the_session_is_deleted_or_the_store_closes,
                reopening_keeps_entries_and_continues_seq,
                bad_input_is_a_clear_error_and_changes_nothing,
                sessions_are_independent,
            ],
            multi_thread: [
                concurrent_retries_of_one_key_add_one_entry,
                sixteen_concurrent_appenders_get_every_seq_once_in_order,
                follow_sees_stored_then_live_entries_while_appends_race,
            ],
        }
    };
}

/// Expands to one `#[tokio::test]` per named check of the conformance module
/// `$suite`, each calling `$suite::check(&$opener)`; the multi-threaded ones
/// on 4 worker threads. What [`log_store_conformance!`] and the suites of
/// other crates (the server's session registry) expand to.
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_tests {
    (@test [$($test:tt)*] $suite:path, $opener:expr, $check:ident) => {
        #[$($test)*]
        async fn $check() {
            use $suite as suite;
            suite::$check(&$opener).await;
        }
    };
    (
        $suite:path, $opener:expr,
        current_thread: [$($check:ident),* $(,)?],
        multi_thread: [$($concurrent:ident),* $(,)?] $(,)?
    ) => {
        $($crate::conformance_tests!(@test [tokio::test] $suite, $opener, $check);)*
        $($crate::conformance_tests!(
            @test [tokio::test(flavor = "multi_thread", worker_threads = 4)] $suite, $opener, $concurrent
        );)*
    };
}
