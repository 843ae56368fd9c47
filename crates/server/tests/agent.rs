//! End-to-end sessions with a real Python agent (`import hiber`) in a Debian
//! sandbox: turns, suspend between turns, sleep, crash recovery, restarts.

mod common;

use std::time::Duration;

use common::TestServer;
use hiber_sandbox::Backend;
use serde_json::{json, Value};

/// Counts messages in memory; `nap` sleeps 2 s. Appends are keyed, so an
/// append re-run after a recovery adds nothing.
const AGENT: &str = r#"
import hiber
count = 0
while True:
    message = hiber.next_message()
    count += 1
    if message == "nap":
        hiber.append("event", {"napping": count}, key="nap%d" % count)
        hiber.sleep(2)
        hiber.append("event", {"woke": count}, key="woke%d" % count)
    else:
        hiber.append("assistant", {"count": count, "echo": message}, key="reply%d" % count)
"#;

fn create_agent(server: &TestServer, idle_timeout_s: u64) -> String {
    let body = json!({"image": "debian", "command": ["python3", "-c", AGENT], "idle_timeout_s": idle_timeout_s});
    let a = server.call("POST", "/v1/sessions", Some(&body.to_string()));
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_str().unwrap().to_string()
}

/// The payloads of the entries of `kind`.
fn payloads(entries: &[Value], kind: &str) -> Vec<Value> {
    entries.iter().filter(|e| e["kind"] == kind).map(|e| e["payload"].clone()).collect()
}

/// True when no sandbox of this home runs.
fn nothing_runs(server: &TestServer) -> bool {
    server.backend().list().unwrap().iter().all(|s| !s.status.is_running())
}

#[test]
fn counter_agent_keeps_counting_across_suspended_turns() {
    if !common::can_snapshot("counter_agent_keeps_counting_across_suspended_turns") {
        return;
    }
    let server = TestServer::start(true);
    let id = create_agent(&server, 1);
    let mut snapshots = Vec::new();
    for turn in 1..=3u64 {
        let streamed = server.turn(&id, json!(format!("m{turn}")));
        assert_eq!(payloads(&streamed, "user"), [json!(format!("m{turn}"))]);
        assert_eq!(payloads(&streamed, "assistant"), [json!({"count": turn, "echo": format!("m{turn}")})]);
        // Between turns: suspended, a snapshot exists, no process runs.
        let shown = server.wait_state(&id, "suspended", Duration::from_secs(30));
        let snapshot = shown["snapshot"].as_str().unwrap().to_string();
        assert!(server.backend().find_snapshot(&snapshot).is_ok(), "snapshot {snapshot} exists");
        assert!(nothing_runs(&server), "a sandbox still runs between turns");
        assert_eq!(shown["cursor"], json!(2 * turn - 1));
        assert_eq!(shown["snapshot_cursor"], shown["cursor"]);
        snapshots.push(snapshot);
    }
    snapshots.dedup();
    assert_eq!(snapshots.len(), 3, "one snapshot per suspend");
    let log = server.context(&id);
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    let kinds: Vec<&str> = log.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user", "assistant", "user", "assistant", "user", "assistant"]);
    assert_eq!(payloads(&log, "assistant")[2], json!({"count": 3, "echo": "m3"}));
    let metrics = server.call("GET", "/metrics", None).body;
    let text = metrics.as_str().unwrap();
    assert!(text.contains("hiber_snapshot_seconds_count 3"), "{text}");
    assert!(text.contains("hiber_restore_seconds_count 2"), "{text}");
    assert!(text.contains("hiber_appends_total 6"), "{text}");
    // Deleting removes the snapshot too.
    assert_eq!(server.call("DELETE", &format!("/v1/sessions/{id}"), None).status, 204);
    assert!(server.backend().snapshots().unwrap().is_empty());
}

#[test]
fn sleep_suspends_and_the_session_wakes_by_itself() {
    if !common::can_snapshot("sleep_suspends_and_the_session_wakes_by_itself") {
        return;
    }
    let server = TestServer::start(true);
    let id = create_agent(&server, 60);
    let streamed = server.turn(&id, json!("nap"));
    assert_eq!(payloads(&streamed, "event"), [json!({"napping": 1})]);
    let shown = server.session(&id);
    assert_eq!(shown["state"], "sleeping", "{shown}");
    assert!(shown["wake_at"].as_u64().is_some());
    // Snapshotted and stopped while it sleeps...
    let asleep = common_wait(|| {
        let s = server.session(&id);
        s["snapshot"].is_string() && nothing_runs(&server)
    });
    assert!(asleep, "not suspended while sleeping: {}", server.session(&id));
    // ...and restored when the time comes, without any message.
    assert!(common_wait(|| payloads(&server.context(&id), "event").contains(&json!({"woke": 1}))), "did not wake");
    let awake = server.wait_state(&id, "idle", Duration::from_secs(10));
    assert_eq!(awake["wake_at"], Value::Null);
    let streamed = server.turn(&id, json!("after"));
    assert_eq!(payloads(&streamed, "assistant"), [json!({"count": 2, "echo": "after"})]);
}

#[test]
fn killed_sandbox_recovers_from_its_last_snapshot() {
    if !common::can_snapshot("killed_sandbox_recovers_from_its_last_snapshot") {
        return;
    }
    let server = TestServer::start(true);
    let id = create_agent(&server, 1);
    server.turn(&id, json!("m1"));
    server.wait_state(&id, "suspended", Duration::from_secs(30));
    server.turn(&id, json!("m2"));
    // Kill -9 every process of the sandbox while it runs (the agent is between turns).
    let sandbox = server.session(&id)["sandbox"].as_str().unwrap().to_string();
    let init_pid = server.backend().host_view(&sandbox).unwrap().init_pid;
    assert!(init_pid > 0);
    // SAFETY: kill(2) on a pid we just read; no memory is involved.
    assert_eq!(unsafe { libc::kill(init_pid, libc::SIGKILL) }, 0);
    // The last snapshot was taken after m1: m2 is delivered again and its
    // keyed append is not duplicated; the counter carries on from there.
    let recovered = common_wait(|| {
        let s = server.session(&id);
        s["sandbox"].is_string() && s["sandbox"] != json!(sandbox) && s["state"] == "idle"
    });
    assert!(recovered, "not recovered: {}", server.session(&id));
    let streamed = server.turn(&id, json!("m3"));
    assert_eq!(payloads(&streamed, "assistant"), [json!({"count": 3, "echo": "m3"})]);
    let log = server.context(&id);
    assert_eq!(
        payloads(&log, "assistant"),
        [json!({"count": 1, "echo": "m1"}), json!({"count": 2, "echo": "m2"}), json!({"count": 3, "echo": "m3"})]
    );
    assert_eq!(log.len(), 6, "no duplicate entry: {log:?}");
}

#[test]
fn a_restarted_server_carries_the_session_on() {
    if !common::can_snapshot("a_restarted_server_carries_the_session_on") {
        return;
    }
    let mut server = TestServer::start(true);
    let running = create_agent(&server, 600);
    let suspended = create_agent(&server, 1);
    server.turn(&running, json!("a"));
    server.turn(&suspended, json!("a"));
    server.wait_state(&suspended, "suspended", Duration::from_secs(30));
    server.restart();
    for id in [&running, &suspended] {
        let streamed = server.turn(id, json!("b"));
        assert_eq!(payloads(&streamed, "assistant"), [json!({"count": 2, "echo": "b"})], "session {id}");
        assert_eq!(server.context(id).len(), 4);
    }
}

/// Polls `f` for up to 30 s.
fn common_wait(mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[test]
fn an_unusable_snapshot_gives_a_fresh_sandbox_that_reads_the_log() {
    if !common::can_snapshot("an_unusable_snapshot_gives_a_fresh_sandbox_that_reads_the_log") {
        return;
    }
    /// Starts by reading the whole log: the count carries on from it.
    const READER: &str = r#"
import hiber
count = sum(1 for e in hiber.history() if e["kind"] == "assistant")
hiber.append("event", {"started_with": count})
while True:
    message = hiber.next_message()
    count += 1
    hiber.append("assistant", {"count": count, "echo": message})
"#;
    let server = TestServer::start(true);
    let body = json!({"image": "debian", "command": ["python3", "-c", READER], "idle_timeout_s": 1});
    let id = server.call("POST", "/v1/sessions", Some(&body.to_string())).body["id"].as_str().unwrap().to_string();
    server.turn(&id, json!("m1"));
    let snapshot =
        server.wait_state(&id, "suspended", Duration::from_secs(30))["snapshot"].as_str().unwrap().to_string();
    // Damage the snapshot's process image: its checksums no longer match.
    let criu = server.path().join("snapshots").join(&snapshot).join("criu");
    let image = std::fs::read_dir(&criu)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "img"))
        .unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&image)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
        .unwrap();
    let streamed = server.turn(&id, json!("m2"));
    assert_eq!(payloads(&streamed, "assistant"), [json!({"count": 2, "echo": "m2"})], "{streamed:?}");
    let log = server.context(&id);
    assert_eq!(payloads(&log, "event"), [json!({"started_with": 0}), json!({"started_with": 1})]);
    assert_eq!(server.session(&id)["state"], "idle");
}

#[test]
fn twenty_sessions_at_once() {
    if !common::can_snapshot("twenty_sessions_at_once") {
        return;
    }
    let server = TestServer::start(true);
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20).map(|_| scope.spawn(|| create_agent(&server, 1))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::thread::scope(|scope| {
        for (i, id) in ids.iter().enumerate() {
            let server = &server;
            scope.spawn(move || {
                for turn in 1..=2u64 {
                    let streamed = server.turn(id, json!(format!("s{i}t{turn}")));
                    assert_eq!(
                        payloads(&streamed, "assistant"),
                        [json!({"count": turn, "echo": format!("s{i}t{turn}")})]
                    );
                }
            });
        }
    });
    for id in &ids {
        server.wait_state(id, "suspended", Duration::from_secs(60));
        assert_eq!(server.context(id).len(), 4);
    }
    assert!(nothing_runs(&server));
}

#[test]
fn an_agent_that_keeps_dying_fails_the_session() {
    if !common::can_snapshot("an_agent_that_keeps_dying_fails_the_session") {
        return;
    }
    const DIES: &str = "import os, hiber\nwhile True:\n    if hiber.next_message() == 'die':\n        os._exit(3)\n";
    let server = TestServer::start(true);
    let body = json!({"image": "debian", "command": ["python3", "-c", DIES]});
    let id = server.call("POST", "/v1/sessions", Some(&body.to_string())).body["id"].as_str().unwrap().to_string();
    let streamed = server.turn(&id, json!("die"));
    assert_eq!(payloads(&streamed, "user"), [json!("die")]);
    let failed = server.wait_state(&id, "failed", Duration::from_secs(60));
    assert!(failed["error"].as_str().unwrap().contains("died"), "{failed}");
    let again = server.call("POST", &format!("/v1/sessions/{id}/messages"), Some(r#"{"content":"hi"}"#));
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(server.context(&id).len(), 1, "a refused message is not appended");
    assert_eq!(server.call("DELETE", &format!("/v1/sessions/{id}"), None).status, 204);
    assert!(server.backend().list().unwrap().is_empty());
}

#[test]
fn sdk_calls_session_id_history_and_keyed_appends() {
    if !common::can_snapshot("sdk_calls_session_id_history_and_keyed_appends") {
        return;
    }
    const CALLS: &str = r#"
import hiber
while True:
    message = hiber.next_message()
    first = hiber.append("tool_call", {"n": 1}, key="once")
    again = hiber.append("tool_call", {"n": 2}, key="once")
    seen = [e["kind"] for e in hiber.history()]
    try:
        hiber.append("nonsense", {})
        bad = "accepted"
    except hiber.Error as e:
        bad = str(e)
    hiber.append("assistant", {"id": hiber.session_id(), "same": first["seq"] == again["seq"],
                               "duplicate": again["duplicate"], "history": seen, "bad_kind": bad})
"#;
    let server = TestServer::start(true);
    let body = json!({"image": "debian", "command": ["python3", "-c", CALLS]});
    let id = server.call("POST", "/v1/sessions", Some(&body.to_string())).body["id"].as_str().unwrap().to_string();
    let streamed = server.turn(&id, json!("go"));
    let reply = payloads(&streamed, "assistant").pop().unwrap();
    assert_eq!(reply["id"], json!(id));
    assert_eq!((reply["same"].clone(), reply["duplicate"].clone()), (json!(true), json!(true)));
    assert_eq!(reply["history"], json!(["user", "tool_call"]));
    assert!(reply["bad_kind"].as_str().unwrap().contains("unknown entry kind"), "{reply}");
    let log = server.context(&id);
    assert_eq!(payloads(&log, "tool_call"), [json!({"n": 1})], "one entry per key");
}

#[test]
fn a_session_started_from_a_snapshot_carries_its_memory_on() {
    if !common::can_snapshot("a_session_started_from_a_snapshot_carries_its_memory_on") {
        return;
    }
    let server = TestServer::start(true);
    let parent = create_agent(&server, 1);
    server.turn(&parent, json!("p1"));
    let snapshot =
        server.wait_state(&parent, "suspended", Duration::from_secs(30))["snapshot"].as_str().unwrap().to_string();
    let a = server.call("POST", "/v1/sessions", Some(&json!({"snapshot": snapshot}).to_string()));
    assert_eq!(a.status, 201, "{}", a.body);
    let child = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.body["from_snapshot"], json!(snapshot));
    assert_eq!(a.body["image"], "debian");
    // The child's agent remembers one message; its log starts empty.
    let streamed = server.turn(&child, json!("c1"));
    assert_eq!(payloads(&streamed, "assistant"), [json!({"count": 2, "echo": "c1"})]);
    assert_eq!(server.context(&child).len(), 2);
    let streamed = server.turn(&parent, json!("p2"));
    assert_eq!(payloads(&streamed, "assistant"), [json!({"count": 2, "echo": "p2"})]);
    let missing = server.call("POST", "/v1/sessions", Some(r#"{"snapshot":"no-such"}"#));
    assert_eq!(missing.status, 400, "{}", missing.body);
}

/// The counter agent, holding an io_uring instance (which a snapshot cannot carry).
const URING_AGENT: &str = r#"
import ctypes, hiber
libc = ctypes.CDLL(None, use_errno=True)
assert libc.syscall(425, 8, ctypes.create_string_buffer(120)) >= 0, ctypes.get_errno()  # io_uring_setup
count = 0
while True:
    message = hiber.next_message()
    count += 1
    hiber.append("assistant", {"count": count}, key="reply%d" % count)
"#;

#[test]
fn a_sandbox_that_cannot_be_snapshotted_keeps_running_and_says_why() {
    if !common::can_snapshot("a_sandbox_that_cannot_be_snapshotted_keeps_running_and_says_why") {
        return;
    }
    let server = TestServer::start(true);
    let body = json!({"image": "debian", "command": ["python3", "-c", URING_AGENT], "idle_timeout_s": 1});
    let created = server.call("POST", "/v1/sessions", Some(&body.to_string()));
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(payloads(&server.turn(&id, json!("m1")), "assistant"), [json!({"count": 1})]);
    let mut shown = Value::Null;
    let blocked = common_wait(|| {
        shown = server.session(&id);
        shown["suspend_blocked"].is_string()
    });
    assert!(blocked, "the session never said why it cannot be suspended: {shown}");
    let why = shown["suspend_blocked"].as_str().unwrap();
    assert!(why.contains("holds an io_uring instance") && why.contains("keeps running"), "{why}");
    assert_ne!(shown["state"], "suspended");
    assert!(shown["snapshot"].is_null(), "no snapshot was stored");
    assert!(!nothing_runs(&server), "the sandbox was stopped");
    // Past another idle timeout, the agent answers from the memory it never lost.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(payloads(&server.turn(&id, json!("m2")), "assistant"), [json!({"count": 2})]);
}
