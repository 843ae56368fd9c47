//! The fake backend's own behaviour: its init's protocol, the agent over a real relay, and the
//! test controls. (What it shares with every backend is checked by `tests/conformance.rs`.)

use std::time::Duration;

use hiber_proto::{Answer, Frame, ProcessSpec, Reply, Request};
use serde_json::{json, Value};

use super::*;
use crate::client::{ClientError, Output};

fn spec(main: Option<&[&str]>) -> SandboxSpec {
    SandboxSpec {
        name: None,
        image: "busybox".into(),
        limits: Default::default(),
        main: main.map(|argv| ProcessSpec::command(argv.iter().copied())),
        confinement: Default::default(),
    }
}

fn agent(backend: &FakeBackend) -> SandboxInfo {
    backend.create(spec(Some(&[AGENT]))).unwrap()
}

/// A connection that fails a test instead of hanging it.
fn connect(backend: &FakeBackend, key: &str) -> InitConnection {
    let conn = backend.connect(key).unwrap();
    conn.set_timeout(Some(Duration::from_secs(10))).unwrap();
    conn
}

/// A relay to `key`'s agent.
fn serve(backend: &FakeBackend, key: &str) -> InitConnection {
    let mut conn = connect(backend, key);
    conn.request(&Request::Serve).unwrap();
    conn
}

fn next_call(conn: &mut InitConnection) -> (u64, Value) {
    match conn.next_reply(|_| {}).unwrap() {
        Reply::Call { call, request } => (call, request),
        other => panic!("not a call: {other:?}"),
    }
}

fn answer(conn: &mut InitConnection, call: u64, result: Value) {
    conn.send(&Frame::control(&Answer { call, response: json!({"ok": true, "result": result}) })).unwrap();
}

fn message(seq: u64, content: Value) -> Value {
    json!({"seq": seq, "content": content})
}

/// Whether the fake init closes `conn` (after whatever it still sends).
fn closed(conn: &mut InitConnection) -> bool {
    loop {
        match conn.recv() {
            Ok(None) => return true,
            Ok(Some(_)) => {}
            Err(_) => return false,
        }
    }
}

fn run(backend: &FakeBackend, key: &str, id: &str, argv: &[&str]) -> Output {
    connect(backend, key).run(id, ProcessSpec::command(argv.iter().copied())).unwrap()
}

#[test]
fn init_answers_pings_execs_signals_and_refuses_garbage() {
    let backend = FakeBackend::new();
    let sandbox = backend.create(spec(None)).unwrap();
    assert_eq!(connect(&backend, &sandbox.id).ping().unwrap(), VERSION);
    let out = run(&backend, &sandbox.id, "x1", &["sh", "-c", "echo a > /f; cat /f /g"]);
    assert_eq!((out.stdout.as_slice(), out.code), (&b"a\n"[..], 1));
    assert!(!out.stderr.is_empty());
    assert_eq!(run(&backend, &sandbox.id, "x2", &["python3"]).code, 127);

    // The same exec id re-attaches to what ran under it.
    let mut conn = connect(&backend, &sandbox.id);
    let exec = Request::Exec { id: "x1".into(), process: ProcessSpec::command(["true"]), stdin: false, size: None };
    conn.request(&exec).unwrap();
    assert!(matches!(conn.next_reply(|_| {}).unwrap(), Reply::Started { attached: true, .. }));
    let mut stdout = Vec::new();
    let exited = conn.next_reply(|f| stdout.extend(matches!(f, Frame::Stdout(_)).then(|| f.clone())));
    assert_eq!((exited.unwrap(), stdout), (Reply::Exited { code: 1 }, vec![Frame::Stdout(b"a\n".to_vec())]));

    let mut conn = connect(&backend, &sandbox.id);
    conn.request(&Request::Signal { id: "x1".into(), signal: 15 }).unwrap();
    assert_eq!(conn.next_reply(|_| {}).unwrap(), Reply::Done);
    let mut conn = connect(&backend, &sandbox.id);
    conn.request(&Request::Exec {
        id: "main".into(),
        process: ProcessSpec::command(["true"]),
        stdin: false,
        size: None,
    })
    .unwrap();
    assert!(matches!(conn.next_reply(|_| {}), Err(ClientError::Refused(_))));
    let mut conn = connect(&backend, &sandbox.id);
    conn.send(&Frame::Stdin(b"hello".to_vec())).unwrap();
    assert!(matches!(conn.next_reply(|_| {}), Err(ClientError::Refused(m)) if m.contains("first frame")));
}

#[test]
fn detach_closes_every_other_connection() {
    let backend = FakeBackend::new();
    let sandbox = backend.create(spec(None)).unwrap();
    let mut idle = connect(&backend, &sandbox.id);
    let mut relay = serve(&backend, &sandbox.id);
    let mut detach = connect(&backend, &sandbox.id);
    detach.request(&Request::Detach).unwrap();
    assert_eq!(detach.next_reply(|_| {}).unwrap(), Reply::Done);
    assert!(closed(&mut idle) && closed(&mut relay) && closed(&mut detach));
    assert_eq!(backend.find(&sandbox.id).unwrap().status, Status::Running);
}

#[test]
fn the_agent_echoes_sleeps_and_logs_its_calls() {
    let backend = FakeBackend::new();
    let sandbox = agent(&backend);
    let mut relay = serve(&backend, &sandbox.id);
    assert_eq!(next_call(&mut relay), (1, json!({"op": "next_message"})));
    answer(&mut relay, 1, message(1, json!({"text": "hi"})));
    let (call, append) = next_call(&mut relay);
    assert_eq!((call, append), (2, json!({"op": "append", "kind": "assistant", "payload": {"text": "echo: hi"}})));
    answer(&mut relay, 2, json!({"seq": 2}));
    assert_eq!(next_call(&mut relay), (3, json!({"op": "next_message"})));
    answer(&mut relay, 3, message(3, json!({"sleep": 60, "text": "later"})));
    assert_eq!(next_call(&mut relay), (4, json!({"op": "sleep", "seconds": 60})));
    answer(&mut relay, 4, Value::Null);
    assert_eq!(next_call(&mut relay).1["payload"]["text"], "woke: later");
    // Answers to calls not pending change nothing.
    answer(&mut relay, 4, Value::Null);
    answer(&mut relay, 99, Value::Null);
    let log = String::from_utf8(backend.main_log(&sandbox.id, 0).unwrap()).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");
    assert!(log.starts_with("call 1: {\"op\":\"next_message\"}\n"), "{log}");
    assert_eq!(backend.main_log(&sandbox.id, log.len() as u64 - 3).unwrap(), b"}}\n");
    assert!(backend.main_log(&sandbox.id, 1 << 40).unwrap().is_empty());
    // Any other main process just runs.
    let other = backend.create(spec(Some(&["sleep", "1000"]))).unwrap();
    assert!(backend.main_log(&other.id, 0).unwrap().is_empty());
    let mut relay = serve(&backend, &other.id);
    relay.set_timeout(Some(Duration::from_millis(50))).unwrap();
    assert!(relay.recv().is_err(), "no agent, no calls");
}

#[test]
fn a_newer_relay_replaces_the_older_and_gets_the_pending_call() {
    let backend = FakeBackend::new();
    let sandbox = agent(&backend);
    let mut old = serve(&backend, &sandbox.id);
    assert_eq!(next_call(&mut old).0, 1);
    let mut new = serve(&backend, &sandbox.id);
    assert_eq!(next_call(&mut new).0, 1);
    assert!(closed(&mut old));
    answer(&mut new, 1, message(1, json!({"text": "x"})));
    assert_eq!(next_call(&mut new).0, 2);
    // Only answers may follow a Serve request.
    new.send(&Frame::Stdin(b"x".to_vec())).unwrap();
    assert!(matches!(new.next_reply(|_| {}), Err(ClientError::Refused(m)) if m.contains("only answers")));
}

#[test]
fn snapshots_carry_the_pending_call_and_forks_go_their_own_way() {
    let backend = FakeBackend::new();
    let sandbox = agent(&backend);
    let mut relay = serve(&backend, &sandbox.id);
    next_call(&mut relay);
    answer(&mut relay, 1, message(1, json!({"sleep": 5, "text": "nap"})));
    let sleep = next_call(&mut relay);
    let manifest = backend.snapshot(&sandbox.id, &SnapshotOptions::default()).unwrap();
    assert!(closed(&mut relay), "a snapshot closes the relay");
    assert_eq!(manifest.backend, BackendState::Memory);
    assert_eq!((manifest.files.len(), manifest.files[0].path.as_str()), (1, STATE_FILE));
    assert_eq!(backend.find(&sandbox.id).unwrap().status, Status::Suspended { snapshot: manifest.id.clone() });
    assert!(matches!(backend.connect(&sandbox.id).map(drop), Err(SandboxError::NotRunning(_))));

    let (one, two) = (backend.restore(&manifest.id, None).unwrap(), backend.restore(&manifest.id, None).unwrap());
    let mut first = serve(&backend, &one.id);
    assert_eq!(next_call(&mut first), sleep, "the same call, under the same number");
    answer(&mut first, sleep.0, Value::Null);
    assert_eq!(next_call(&mut first).1["payload"]["text"], "woke: nap");
    let mut second = serve(&backend, &two.id);
    assert_eq!(next_call(&mut second), sleep, "the other fork still sleeps");
    assert_eq!(backend.counters(), Counters { creates: 1, restores: 2, snapshots: 1 });
}

#[test]
fn an_answer_sent_before_a_snapshot_is_taken_in() {
    let backend = FakeBackend::new();
    let sandbox = agent(&backend);
    let mut relay = serve(&backend, &sandbox.id);
    next_call(&mut relay);
    answer(&mut relay, 1, message(1, json!({"text": "quick"})));
    let manifest = backend.snapshot(&sandbox.id, &SnapshotOptions { leave_running: true, name: None }).unwrap();
    assert!(closed(&mut relay), "even a snapshot that leaves it running closes the relay");
    let restored = backend.restore(&manifest.id, None).unwrap();
    assert_eq!(next_call(&mut serve(&backend, &restored.id)).0, 2, "the restore carries on after the answer");
    assert_eq!(next_call(&mut serve(&backend, &sandbox.id)).0, 2, "and so does the original");
}

#[test]
fn a_crashing_agent_or_a_kill_ends_the_sandbox_and_its_connections() {
    let backend = FakeBackend::new();
    let sandbox = agent(&backend);
    let mut relay = serve(&backend, &sandbox.id);
    let mut idle = connect(&backend, &sandbox.id);
    next_call(&mut relay);
    answer(&mut relay, 1, message(1, json!({"crash": true})));
    assert!(closed(&mut relay) && closed(&mut idle));
    assert_eq!(backend.find(&sandbox.id).unwrap().status, Status::Exited { code: Some(1) });
    assert!(matches!(backend.connect(&sandbox.id).map(drop), Err(SandboxError::NotRunning(_))));
    assert!(matches!(backend.kill(&sandbox.id), Err(SandboxError::NotRunning(_))));

    let other = backend.create(spec(None)).unwrap();
    let mut conn = connect(&backend, &other.id);
    backend.kill(&other.id).unwrap();
    assert!(closed(&mut conn));
    assert_eq!(backend.find(&other.id).unwrap().status, Status::Exited { code: Some(KILLED) });
}

#[test]
fn a_corrupt_snapshot_is_listed_but_does_not_restore() {
    let backend = FakeBackend::new();
    let sandbox = backend.create(spec(None)).unwrap();
    let manifest = backend.snapshot(&sandbox.id, &SnapshotOptions::default()).unwrap();
    backend.corrupt_snapshot(&manifest.id).unwrap();
    assert_eq!(backend.find_snapshot(&manifest.id).unwrap(), manifest);
    match backend.restore(&manifest.id, None) {
        Err(SandboxError::Snapshot(StoreError::Corrupt { id, path, .. })) => {
            assert_eq!((id, path.as_str()), (manifest.id, STATE_FILE));
        }
        other => panic!("restore of a corrupt snapshot: {other:?}"),
    }
    assert_eq!(backend.counters().restores, 0);
    assert!(matches!(backend.corrupt_snapshot("nope"), Err(SandboxError::Snapshot(StoreError::NotFound(_)))));
}

#[test]
fn failed_creates_images_and_unsupported_operations() {
    let backend = FakeBackend::new();
    backend.fail_next_create();
    let bad_name = SandboxSpec { name: Some("Bad".into()), ..spec(None) };
    assert!(matches!(backend.create(bad_name), Err(SandboxError::Spec(_))), "an invalid spec fails first");
    assert!(matches!(backend.create(spec(None)), Err(SandboxError::NotReady { .. })));
    assert!(backend.list().unwrap().is_empty());
    backend.create(spec(None)).unwrap();
    assert_eq!(backend.counters().creates, 1);

    let debian = SandboxSpec { image: "debian".into(), ..spec(None) };
    assert!(matches!(backend.create(debian.clone()), Err(SandboxError::Image(m)) if m.contains("debian")));
    let backend = backend.with_image("debian");
    assert_eq!(backend.create(debian).unwrap().image, "debian");
    let id = backend.list().unwrap()[0].id.clone();
    assert!(matches!(backend.dial(&id, 80), Err(SandboxError::Unsupported { backend: "fake", .. })));
    assert_eq!(backend.collect_garbage().unwrap(), 0);
    assert_eq!(backend.kind(), "fake");
}

#[test]
fn id_prefixes_of_several_sandboxes_or_snapshots_are_ambiguous() {
    let backend = FakeBackend::new();
    // 17 ids: two of them share a first digit.
    let ids: Vec<String> = (0..17).map(|_| backend.create(spec(None)).unwrap().id).collect();
    let shared = ids.iter().find(|a| ids.iter().filter(|b| b.starts_with(&a[..1])).count() > 1).unwrap();
    assert!(matches!(backend.find(&shared[..1]), Err(SandboxError::Ambiguous(..))));
    let options = SnapshotOptions { leave_running: true, name: None };
    let snapshots: Vec<String> = (0..17).map(|_| backend.snapshot(&ids[0], &options).unwrap().id).collect();
    let shared = snapshots.iter().find(|a| snapshots.iter().filter(|b| b.starts_with(&a[..1])).count() > 1).unwrap();
    assert!(matches!(backend.find_snapshot(&shared[..1]), Err(SandboxError::Snapshot(StoreError::Ambiguous(..)))));
    let all: Vec<String> = backend.snapshots().unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(all, snapshots, "oldest first");
}

#[test]
fn dropping_the_backend_closes_its_connections() {
    let backend = FakeBackend::new();
    let sandbox = agent(&backend);
    let mut relay = serve(&backend, &sandbox.id);
    next_call(&mut relay);
    drop(backend);
    assert!(closed(&mut relay));
}
