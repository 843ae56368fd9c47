//! Tests of [`SqliteLog`] through the [`LogStore`] trait.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use super::SqliteLog;
use crate::entry::{EntryError, Kind, NewEntry, MAX_PAYLOAD_BYTES};
use crate::error::StoreError;
use crate::follow::Follow;
use crate::store::LogStore;

fn open() -> (TempDir, Arc<dyn LogStore>) {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path().join("context.db")).unwrap();
    (dir, Arc::new(log))
}

fn user(text: &str) -> NewEntry {
    NewEntry::new(Kind::User, json!({ "text": text }))
}

async fn seqs(log: &dyn LogStore, session: &str) -> Vec<u64> {
    let entries = log.read(session, 0, usize::MAX).await.unwrap();
    entries.iter().map(|e| e.seq).collect()
}

/// The next entry of a follow stream, failing the test after 10 s.
async fn next(follow: &mut Follow) -> Option<crate::Entry> {
    tokio::time::timeout(Duration::from_secs(10), follow.next())
        .await
        .expect("follow stream stalled")
        .map(Result::unwrap)
}

#[tokio::test]
async fn seq_is_dense_from_one() {
    let (_dir, log) = open();
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

#[tokio::test]
async fn a_retried_key_returns_the_original() {
    let (_dir, log) = open();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_of_one_key_add_one_entry() {
    let (_dir, log) = open();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_appenders_get_every_seq_once_in_order() {
    const APPENDERS: u64 = 16;
    const EACH: u64 = 50;
    let (_dir, log) = open();
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

#[tokio::test]
async fn range_reads_honour_after_and_limit() {
    let (_dir, log) = open();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_sees_stored_then_live_entries_while_appends_race() {
    const TOTAL: u64 = 600;
    let (_dir, log) = open();
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

#[tokio::test]
async fn follow_ends_when_the_session_is_deleted_or_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteLog::open(dir.path().join("context.db")).unwrap();
    log.append("s", user("a")).await.unwrap();
    let mut deleted = log.follow("s", 0).await.unwrap();
    assert_eq!(next(&mut deleted).await.unwrap().seq, 1);
    log.delete_session("s").await.unwrap();
    assert!(next(&mut deleted).await.is_none());

    let mut closed = log.follow("t", 0).await.unwrap();
    drop(log);
    assert!(next(&mut closed).await.is_none());
}

#[tokio::test]
async fn reopening_keeps_entries_and_continues_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("context.db");
    let first = {
        let log = SqliteLog::open(&path).unwrap();
        log.append("s", user("a").with_key("k")).await.unwrap();
        log.append("s", user("b")).await.unwrap();
        log.append("s", user("c")).await.unwrap()
    };
    assert_eq!(first.entry.seq, 3);
    let log = SqliteLog::open(&path).unwrap();
    assert_eq!(log.last_seq("s").await.unwrap(), 3);
    assert_eq!(log.read("s", 2, 10).await.unwrap(), vec![first.entry]);
    assert_eq!(log.append("s", user("d")).await.unwrap().entry.seq, 4);
    let retry = log.append("s", user("a").with_key("k")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.entry.seq, 1);
}

#[tokio::test]
async fn bad_input_is_a_clear_error_and_changes_nothing() {
    let (_dir, log) = open();
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
    assert_eq!("robot".parse::<Kind>(), Err(EntryError::UnknownKind("robot".into())));
    assert_eq!(log.last_seq("s").await.unwrap(), 0);
    assert!(log.sessions().await.unwrap().is_empty());
}

#[tokio::test]
async fn sessions_are_independent() {
    let (_dir, log) = open();
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
