//! Every transition of a session's life, on the fake backend: no root, no processes, a second or
//! two in all. The fake agent answers `{"text": T}` with `echo: T`, sleeps on `{"sleep": S}` and
//! dies on `{"crash": true}` (see `hiber_sandbox::fake`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hiber_sandbox::fake::{FakeBackend, AGENT};
use hiber_sandbox::Backend;
use serde_json::{json, Value};

use crate::sessions::{CreateSession, Sessions};
use crate::shared::SessionError;
use crate::store::{SessionRecord, State};

/// How long a test waits for a transition before it fails.
const PATIENCE: Duration = Duration::from_secs(4);

/// A session manager on a fake backend, in a temporary home.
struct Harness {
    _home: tempfile::TempDir,
    backend: Arc<FakeBackend>,
    sessions: Sessions,
}

impl Harness {
    async fn new() -> Harness {
        let home = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::new());
        let sessions = Sessions::open(home.path(), backend.clone()).await.unwrap();
        Harness { _home: home, backend, sessions }
    }

    /// A session of the fake agent that is suspended after one idle second.
    async fn agent(&self) -> String {
        let request = CreateSession {
            image: Some("busybox".into()),
            command: vec![AGENT.into()],
            idle_timeout_s: Some(1),
            ..Default::default()
        };
        self.sessions.create(request).await.unwrap().record.id
    }

    async fn record(&self, id: &str) -> SessionRecord {
        self.sessions.get(id).await.unwrap().record
    }

    /// Sends `content` and waits until the agent waits again.
    async fn turn(&self, id: &str, content: Value) {
        let turn = self.sessions.send(id, content).await.unwrap();
        tokio::time::timeout(PATIENCE, turn.done).await.expect("the turn ends").expect("the task answers");
    }

    /// The payloads of the agent's entries so far.
    async fn said(&self, id: &str) -> Vec<Value> {
        let entries = self.sessions.context(id, 0, 1000).await.unwrap();
        entries.into_iter().filter(|e| e.kind == hiber_context::Kind::Assistant).map(|e| e.payload).collect()
    }

    /// Waits until `check` holds for the session's record.
    async fn until(&self, id: &str, what: &str, check: impl Fn(&SessionRecord) -> bool) -> SessionRecord {
        let start = Instant::now();
        loop {
            let record = self.record(id).await;
            if check(&record) {
                return record;
            }
            assert!(start.elapsed() < PATIENCE, "session never became {what}: {record:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the agent has said `text`; returns how often it did.
    async fn until_said(&self, id: &str, text: &str) -> usize {
        let start = Instant::now();
        loop {
            let times = self.said(id).await.iter().filter(|p| p["text"] == text).count();
            if times > 0 {
                return times;
            }
            assert!(start.elapsed() < PATIENCE, "the agent never said {text:?}: {:?}", self.said(id).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sandboxes that run now.
    fn running(&self) -> usize {
        self.backend.list().unwrap().iter().filter(|s| s.status.is_running()).count()
    }
}

#[tokio::test]
async fn an_idle_agent_is_suspended_and_a_message_wakes_it() {
    let h = Harness::new().await;
    let id = h.agent().await;
    h.turn(&id, json!({"text": "hi"})).await;
    assert_eq!(h.said(&id).await, [json!({"text": "echo: hi"})]);
    assert_eq!(h.record(&id).await.state, State::Idle);

    let suspended = h.until(&id, "suspended", |r| r.state == State::Suspended).await;
    assert!(suspended.sandbox.is_none() && suspended.snapshot.is_some(), "{suspended:?}");
    assert_eq!(h.running(), 0, "a suspended session runs nothing");
    assert_eq!(h.backend.counters().snapshots, 1);

    h.turn(&id, json!({"text": "again"})).await;
    assert_eq!(h.backend.counters().restores, 1, "woken from its snapshot");
    assert_eq!(h.said(&id).await, [json!({"text": "echo: hi"}), json!({"text": "echo: again"})]);
    assert_eq!(h.backend.counters().creates, 1, "never started afresh");
}

#[tokio::test]
async fn a_sleeping_agent_is_suspended_until_its_time() {
    let h = Harness::new().await;
    let id = h.agent().await;
    // The turn ends when the agent goes to sleep.
    h.turn(&id, json!({"sleep": 0.3, "text": "nap"})).await;
    let sleeping = h.until(&id, "asleep and stopped", |r| r.state == State::Sleeping && r.sandbox.is_none()).await;
    assert!(sleeping.wake_at.is_some() && sleeping.snapshot.is_some(), "{sleeping:?}");
    assert_eq!(h.running(), 0);
    assert!(h.said(&id).await.is_empty(), "it said nothing before waking");

    assert_eq!(h.until_said(&id, "woke: nap").await, 1);
    assert_eq!(h.backend.counters().restores, 1, "woken by restoring its snapshot");
    let awake = h.until(&id, "idle", |r| r.state == State::Idle).await;
    assert!(awake.wake_at.is_none(), "{awake:?}");
}

#[tokio::test]
async fn a_dead_sandbox_is_recovered_from_its_last_snapshot() {
    let h = Harness::new().await;
    let id = h.agent().await;
    h.turn(&id, json!({"text": "one"})).await;
    h.until(&id, "suspended", |r| r.state == State::Suspended).await;
    h.turn(&id, json!({"text": "two"})).await;
    let sandbox = h.record(&id).await.sandbox.expect("a restored sandbox");

    h.backend.kill(&sandbox).unwrap();
    // The last snapshot had seen "one" only: "two" is delivered again to the recovered agent.
    let recovered = h.until(&id, "recovered", |r| r.sandbox.as_ref().is_some_and(|s| *s != sandbox)).await;
    assert_ne!(recovered.state, State::Failed);
    assert_eq!(h.backend.counters().restores, 2, "the wake, then the recovery");
    h.turn(&id, json!({"text": "three"})).await;
    let texts: Vec<Value> = h.said(&id).await.into_iter().map(|p| p["text"].clone()).collect();
    assert_eq!(texts.first(), Some(&json!("echo: one")));
    assert_eq!(texts.iter().filter(|t| **t == "echo: two").count(), 2, "{texts:?}");
    assert_eq!(texts.last(), Some(&json!("echo: three")));
    assert_eq!(h.backend.counters().creates, 1, "recovered, not started afresh");
}

#[tokio::test]
async fn an_unusable_snapshot_gives_a_fresh_sandbox() {
    let h = Harness::new().await;
    let id = h.agent().await;
    h.turn(&id, json!({"text": "before"})).await;
    let suspended = h.until(&id, "suspended", |r| r.state == State::Suspended).await;
    h.backend.corrupt_snapshot(suspended.snapshot.as_deref().unwrap()).unwrap();

    h.turn(&id, json!({"text": "after"})).await;
    assert_eq!(h.backend.counters().creates, 2, "a fresh sandbox from the image");
    assert_eq!(h.backend.counters().restores, 0, "the corrupt snapshot restored nothing");
    assert_eq!(h.said(&id).await.last(), Some(&json!({"text": "echo: after"})));
    assert_ne!(h.record(&id).await.state, State::Failed);
}

#[tokio::test]
async fn a_crash_loop_fails_the_session() {
    let h = Harness::new().await;
    let id = h.agent().await;
    // No snapshot yet: every recovery starts afresh and is handed the crash again.
    h.turn(&id, json!({"crash": true})).await;
    let failed = h.until(&id, "failed", |r| r.state == State::Failed).await;
    let why = failed.error.unwrap_or_default();
    assert!(why.contains("died 3 times in a row"), "{why}");
    assert_eq!(h.backend.counters().creates, 4, "the first sandbox and three recoveries");
    assert_eq!(h.running(), 0);
    match h.sessions.send(&id, json!({"text": "still there?"})).await {
        Err(SessionError::Conflict(message)) => assert!(message.contains("the session failed"), "{message}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a failed session took a message"),
    }
}

#[tokio::test]
async fn a_failed_start_is_an_error_and_leaves_no_session() {
    let h = Harness::new().await;
    h.backend.fail_next_create();
    let request = CreateSession { image: Some("busybox".into()), command: vec![AGENT.into()], ..Default::default() };
    assert!(matches!(h.sessions.create(request).await, Err(SessionError::Sandbox(_))));
    assert!(h.sessions.list().await.unwrap().is_empty());
    let unknown = CreateSession { image: Some("nosuch".into()), command: vec![AGENT.into()], ..Default::default() };
    assert!(matches!(h.sessions.create(unknown).await, Err(SessionError::Invalid(_))));
}

#[tokio::test]
async fn deleting_a_session_leaves_nothing() {
    let h = Harness::new().await;
    let id = h.agent().await;
    h.turn(&id, json!({"text": "hi"})).await;
    h.sessions.delete(&id).await.unwrap();
    assert!(h.backend.list().unwrap().is_empty(), "no sandbox left");
    assert!(h.backend.snapshots().unwrap().is_empty(), "no snapshot left");
    assert!(matches!(h.sessions.get(&id).await, Err(SessionError::NotFound(_))));
    assert!(h.sessions.context(&id, 0, 10).await.is_err());
}
