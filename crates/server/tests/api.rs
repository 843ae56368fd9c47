//! The HTTP API on a real server: auth, errors, limits, and a session's
//! create / list / show / context / delete with a real busybox sandbox.

mod common;

use std::time::Duration;

use common::{sse, TestServer};
use hiber_sandbox::Backend;
use serde_json::{json, Value};

fn create_sleeper(server: &TestServer) -> Value {
    let body = json!({"image": "busybox", "command": ["sleep", "1000"], "env": {"A": "1"}, "idle_timeout_s": 60});
    let a = server.call("POST", "/v1/sessions", Some(&body.to_string()));
    assert_eq!(a.status, 201, "{}", a.body);
    a.body
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an API error: {body}"))
}

#[test]
fn health_openapi_and_metrics() {
    if !common::can_run("health_openapi_and_metrics") {
        return;
    }
    let server = TestServer::start(false);
    let health = server.call_with("GET", "/healthz", None, None);
    assert_eq!((health.status, health.body["ok"].clone()), (200, json!(true)));
    let doc = server.call_with("GET", "/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with('3'));
    assert!(doc.body["paths"]["/v1/sessions/{id}/messages"]["post"].is_object());
    let metrics = server.call("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap();
    for family in [
        "hiber_sessions{state=\"running\"} 0",
        "hiber_snapshot_seconds_count",
        "hiber_restore_seconds_sum",
        "hiber_appends_total 0",
    ] {
        assert!(text.contains(family), "{family} missing in {text}");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.path().join("api-token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn bad_requests_get_the_right_4xx_and_change_nothing() {
    if !common::can_run("bad_requests_get_the_right_4xx_and_change_nothing") {
        return;
    }
    let server = TestServer::start(false);
    let good = json!({"image": "busybox", "command": ["sleep", "1000"]}).to_string();
    // No token, wrong token.
    for token in [None, Some("wrong"), Some("")] {
        let a = server.call_with("POST", "/v1/sessions", token, Some(&good));
        assert_eq!(a.status, 401, "{token:?}: {}", a.body);
        assert_eq!(error_code(&a.body), "unauthorized");
        assert_eq!(server.call_with("GET", "/v1/sessions", token, None).status, 401);
        assert_eq!(server.call_with("GET", "/metrics", token, None).status, 401);
    }
    // Bad JSON, bad fields.
    for body in [
        "{bad",
        "[]",
        r#"{"image":"busybox","command":["x"],"bogus":1}"#,
        r#"{"command":["x"]}"#,
        r#"{"image":"busybox","snapshot":"s","command":["x"]}"#,
        r#"{"image":"busybox"}"#,
        r#"{"image":"no-such-image","command":["x"]}"#,
        r#"{"image":"busybox","command":["x"],"idle_timeout_s":0}"#,
        r#"{"image":"busybox","command":["x"],"cap_add":["SYS_WIZARD"]}"#,
        r#"{"image":"busybox","command":["x"],"security_opt":["seccomp=maybe"]}"#,
    ] {
        let a = server.call("POST", "/v1/sessions", Some(body));
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(error_code(&a.body), "bad_request");
    }
    let no_command = server.call("POST", "/v1/sessions", Some(r#"{"image":"busybox"}"#));
    assert!(no_command.body.to_string().contains("names no command"), "{}", no_command.body);
    // Oversized body: announced by its length, refused before it is sent
    // (a client still writing when the server answers and closes would see
    // a broken pipe instead of the answer).
    let answer = announce_body(&server, "/v1/sessions", 2 << 20);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // Unknown session and route.
    for (method, path, body) in [
        ("GET", "/v1/sessions/nope", None),
        ("DELETE", "/v1/sessions/nope", None),
        ("GET", "/v1/sessions/nope/context", None),
        ("GET", "/v1/sessions/nope/context/stream", None),
        ("POST", "/v1/sessions/nope/messages", Some(r#"{"content":"hi"}"#)),
        ("GET", "/v1/nothing", None),
    ] {
        let a = server.call(method, path, body);
        assert_eq!(a.status, 404, "{method} {path}: {}", a.body);
        assert_eq!(error_code(&a.body), "not_found");
    }
    let a = server.call("PUT", "/v1/sessions", Some("{}"));
    assert_eq!((a.status, error_code(&a.body)), (405, "method_not_allowed"));
    let a = server.call_with("POST", "/v1/sessions", Some(&server.token), None);
    assert_eq!(a.status, 415, "{}", a.body);
    // Nothing was created.
    assert_eq!(server.call("GET", "/v1/sessions", None).body, json!({"sessions": []}));
    assert!(server.backend().list().unwrap().is_empty());
}

#[test]
fn session_create_list_show_context_delete() {
    if !common::can_run("session_create_list_show_context_delete") {
        return;
    }
    let server = TestServer::start(false);
    let created = create_sleeper(&server);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["state"], "running");
    assert_eq!(created["last_seq"], 0);
    assert_eq!(created["env"], json!({"A": "1"}));
    let sandbox = created["sandbox"].as_str().unwrap().to_string();
    assert!(server.backend().find(&sandbox).unwrap().status.is_running());

    let list = server.call("GET", "/v1/sessions", None);
    let ids: Vec<&str> = list.body["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str()]);
    let shown = server.session(&id);
    assert_eq!((shown["state"].clone(), shown["snapshot"].clone()), (json!("running"), Value::Null));
    assert_eq!(server.context(&id), Vec::<Value>::new());

    // A message is appended (and streamed first) even though this agent never reads it.
    let body = json!({"content": {"text": "hello"}}).to_string();
    let a = server.call("POST", &format!("/v1/sessions/{id}/messages"), Some("{bad"));
    assert_eq!(a.status, 400);
    let response = ureq::post(&server.url(&format!("/v1/sessions/{id}/messages")))
        .set("Authorization", &format!("Bearer {}", server.token))
        .set("Content-Type", "application/json")
        .send_string(&body)
        .unwrap();
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let (event, data) = sse(response.into_reader()).next().unwrap();
    assert_eq!(event, "entry");
    let first: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        (first["seq"].clone(), first["kind"].clone(), first["payload"].clone()),
        (json!(1), json!("user"), json!({"text": "hello"}))
    );

    let big = json!({"content": "x".repeat(900 << 10)}).to_string();
    let a = server.call("POST", &format!("/v1/sessions/{id}/messages"), Some(&big));
    assert_eq!((a.status, error_code(&a.body)), (413, "payload_too_large"));
    let entries = server.context(&id);
    assert_eq!(entries.len(), 1);
    assert_eq!(server.session(&id)["last_seq"], 1);
    let after = server.call("GET", &format!("/v1/sessions/{id}/context?after=1"), None);
    assert_eq!(after.body, json!({"entries": []}));
    assert_eq!(server.call("GET", &format!("/v1/sessions/{id}/context?after=x"), None).status, 400);
    // The streaming variants give stored entries first.
    for path in [format!("/v1/sessions/{id}/context/stream?after=0"), format!("/v1/sessions/{id}/context?follow=true")]
    {
        let response =
            ureq::get(&server.url(&path)).set("Authorization", &format!("Bearer {}", server.token)).call().unwrap();
        let (event, data) = sse(response.into_reader()).next().unwrap();
        assert_eq!(event, "entry");
        assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["seq"], 1);
    }
    let metrics = server.call("GET", "/metrics", None);
    assert!(metrics.body.as_str().unwrap().contains("hiber_sessions{state=\"running\"} 1"));

    let deleted = server.call("DELETE", &format!("/v1/sessions/{id}"), None);
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert_eq!(server.call("GET", &format!("/v1/sessions/{id}"), None).status, 404);
    assert_eq!(server.call("GET", &format!("/v1/sessions/{id}/context"), None).status, 404);
    assert!(server.backend().list().unwrap().is_empty(), "the sandbox is removed");
    assert_eq!(server.call("GET", "/v1/sessions", None).body, json!({"sessions": []}));
}

#[test]
fn sessions_survive_a_server_restart() {
    if !common::can_run("sessions_survive_a_server_restart") {
        return;
    }
    let mut server = TestServer::start(false);
    let id = create_sleeper(&server)["id"].as_str().unwrap().to_string();
    let sandbox = server.session(&id)["sandbox"].clone();
    server.restart();
    let shown = server.session(&id);
    assert_eq!(shown["sandbox"], sandbox);
    assert_eq!(shown["state"], "running");
    // A dead sandbox with no snapshot and an image: a fresh one is started.
    let backend = server.backend();
    backend.stop(sandbox.as_str().unwrap(), Duration::from_secs(1)).unwrap();
    server.restart();
    let started = std::time::Instant::now();
    let shown = loop {
        let shown = server.session(&id);
        if shown["sandbox"].is_string() && shown["sandbox"] != sandbox {
            break shown;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no fresh sandbox: {shown}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(shown["state"], "running", "{shown}");
    assert!(backend.find(shown["sandbox"].as_str().unwrap()).unwrap().status.is_running());
}

/// Sends only the headers of a POST announcing `length` bytes of JSON and
/// returns the server's whole answer.
fn announce_body(server: &TestServer, path: &str, length: usize) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
        server.addr, server.token
    );
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer
}

#[test]
fn a_sessions_sandbox_is_confined_as_asked() {
    if !common::can_run("a_sessions_sandbox_is_confined_as_asked") {
        return;
    }
    let server = TestServer::start(false);
    let status_of = |body: Value| {
        let a = server.call("POST", "/v1/sessions", Some(&body.to_string()));
        assert_eq!(a.status, 201, "{}", a.body);
        let sandbox = a.body["sandbox"].as_str().unwrap().to_string();
        let process = hiber_proto::ProcessSpec::command(["cat", "/proc/self/status"]);
        let out = server.backend().connect(&sandbox).unwrap().run("status", process).unwrap();
        (a.body, String::from_utf8(out.stdout).unwrap())
    };
    let (default, status) = status_of(json!({"image": "busybox", "command": ["sleep", "1000"]}));
    assert!(status.contains("CapBnd:\t00000000a80425fb") && status.contains("Seccomp:\t2"), "{status}");
    assert_eq!(default["confinement"]["seccomp"], "default");
    assert_eq!(default["confinement"]["capabilities"].as_array().unwrap().len(), 14);

    let asked = json!({"image": "busybox", "command": ["sleep", "1000"], "cap_add": ["SYS_ADMIN"], "cap_drop": ["NET_RAW"], "security_opt": ["seccomp=unconfined"]});
    let (shown, status) = status_of(asked);
    assert!(status.contains("CapBnd:\t00000000a82405fb") && status.contains("Seccomp:\t0"), "{status}");
    let caps = shown["confinement"]["capabilities"].as_array().unwrap();
    assert!(caps.contains(&json!("SYS_ADMIN")) && !caps.contains(&json!("NET_RAW")), "{shown}");
}
