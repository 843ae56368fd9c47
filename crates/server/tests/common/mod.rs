//! Shared harness: a real `hiber serve` (in-process, on 127.0.0.1 with an
//! ephemeral port) on its own HIBER_HOME, an HTTP client, and clean-up of
//! every sandbox, mount and file on drop.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hiber_sandbox::{Backend, ContainerBackend};
use hiber_server::Server;
use serde_json::Value;

/// Returns false (after printing why) when the test cannot run here. Under
/// CI a missing prerequisite is a failure instead.
pub fn can_run(test: &str) -> bool {
    hiber_sandbox::preflight::require(test, hiber_sandbox::preflight::SANDBOXES)
}

/// Like [`can_run`], and CRIU (>= 4.2) must be installed.
pub fn can_snapshot(test: &str) -> bool {
    hiber_sandbox::preflight::require(test, hiber_sandbox::preflight::SNAPSHOTS)
}

/// A running server on a private home.
pub struct TestServer {
    pub home: tempfile::TempDir,
    pub addr: SocketAddr,
    pub token: String,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    agent: ureq::Agent,
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl TestServer {
    /// A server on a new home with the busybox image (and debian if asked).
    pub fn start(debian: bool) -> TestServer {
        let home = tempfile::Builder::new().prefix("hiber-server-test-").tempdir_in("/var/tmp").expect("temp home");
        let images = hiber_image::ImageStore::open(home.path()).unwrap();
        images.build_busybox(&mut |_| {}).expect("busybox image");
        if debian {
            images.build_debian(&mut |_| {}).expect("debian image");
        }
        let mut server = TestServer {
            home,
            addr: "127.0.0.1:0".parse().unwrap(),
            token: String::new(),
            runtime: None,
            stop: None,
            // A fresh connection per request: the server closes a connection
            // after an error whose body it did not read, and a pooled one
            // would then fail the next request with an EOF.
            agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).max_idle_connections(0).build(),
        };
        server.boot();
        server
    }

    fn boot(&mut self) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = runtime
            .block_on(Server::bind(self.home.path(), "127.0.0.1:0".parse().unwrap(), Arc::new(self.backend())))
            .expect("server starts");
        self.addr = server.local_addr().unwrap();
        self.token = std::fs::read_to_string(self.home.path().join("api-token")).unwrap().trim().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(server.serve(async {
            let _ = stopped.await;
        }));
        self.runtime = Some(runtime);
        self.stop = Some(stop);
    }

    /// Stops the server (its tasks abandoned, as in a crash) and starts a
    /// new one on the same home.
    pub fn restart(&mut self) {
        self.shutdown();
        self.boot();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with the right token.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.call_with(method, path, Some(&self.token.clone()), body)
    }

    /// A request with `token` (none: no Authorization header).
    pub fn call_with(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
        let mut req = self.agent.request(method, &self.url(path));
        if let Some(token) = token {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => req.set("Content-Type", "application/json").send_string(body),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body }
    }

    /// POSTs a message and reads the turn's SSE stream to its `done`
    /// event; returns the entries streamed.
    pub fn turn(&self, session: &str, content: Value) -> Vec<Value> {
        let response = self
            .agent
            .post(&self.url(&format!("/v1/sessions/{session}/messages")))
            .set("Authorization", &format!("Bearer {}", self.token))
            .send_json(serde_json::json!({"content": content}))
            .expect("send message");
        let mut entries = Vec::new();
        for (event, data) in sse(response.into_reader()) {
            match event.as_str() {
                "entry" => entries.push(serde_json::from_str(&data).unwrap()),
                "done" => return entries,
                other => panic!("unexpected event {other}: {data}"),
            }
        }
        panic!("the turn's stream ended without `done`: {entries:?}")
    }

    /// The session as GET shows it.
    pub fn session(&self, id: &str) -> Value {
        let a = self.call("GET", &format!("/v1/sessions/{id}"), None);
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }

    /// Polls until the session is in `state`.
    pub fn wait_state(&self, id: &str, state: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let s = self.session(id);
            if s["state"] == state {
                return s;
            }
            assert!(start.elapsed() < limit, "session {id} not {state} after {limit:?}: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The context log's entries.
    pub fn context(&self, id: &str) -> Vec<Value> {
        let a = self.call("GET", &format!("/v1/sessions/{id}/context?after=0"), None);
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["entries"].as_array().unwrap().clone()
    }

    /// The sandbox backend on this home.
    pub fn backend(&self) -> ContainerBackend {
        self.open_backend().unwrap()
    }

    /// The one place the tests make the backend the server runs on.
    fn open_backend(&self) -> Result<ContainerBackend, hiber_sandbox::SandboxError> {
        ContainerBackend::open(self.path())
    }
}

/// Server-sent events of `body` as (event, data), until it ends.
pub fn sse(body: impl Read) -> impl Iterator<Item = (String, String)> {
    let mut lines = BufReader::new(body).lines();
    std::iter::from_fn(move || {
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let line = lines.next()?.ok()?;
            if line.is_empty() {
                if !data.is_empty() {
                    return Some((event, data));
                }
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    })
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
        if let Ok(backend) = self.open_backend() {
            for s in backend.list().unwrap_or_default() {
                let _ = backend.remove(&s.id, true);
            }
        }
        for target in mounts_below(self.path()) {
            let _ = Command::new("umount").arg("-l").arg(&target).status();
        }
    }
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    hiber_common::fs::mounts_under(dir).unwrap_or_default()
}
