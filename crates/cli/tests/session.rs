//! `hiber serve` and `hiber session ...` as a user runs them: a real server
//! process, real sandboxes; kill -9 of the server mid-turn loses nothing.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{eventually, Home};

/// Appends `start`, works a second, appends `end`; counts turns in memory.
const AGENT: &str = r#"
import time, hiber
count = 0
while True:
    message = hiber.next_message()
    count += 1
    hiber.append("assistant", {"start": count}, key="s%d" % count)
    if message == "slow":
        time.sleep(1.5)
    hiber.append("assistant", {"end": count, "echo": message}, key="e%d" % count)
"#;

/// A `hiber serve` process on a free port of 127.0.0.1.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(home: &Home, port: u16) -> Serve {
        let url = format!("http://127.0.0.1:{port}");
        let child = home
            .cmd(&["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hiber serve");
        let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "hiber serve did not listen on {port}");
        Serve { child, url }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn session(home: &Home, serve: &Serve, args: &[&str]) -> common::Run {
    let mut all = vec!["session", "--server", serve.url.as_str()];
    all.extend_from_slice(args);
    home.run(&all)
}

fn ok(home: &Home, serve: &Serve, args: &[&str]) -> String {
    let r = session(home, serve, args);
    assert_eq!(r.code, 0, "hiber session {args:?} failed ({}): {}{}", r.code, r.stdout, r.stderr);
    r.stdout
}

#[test]
fn session_commands_and_a_server_killed_mid_turn() {
    if !common::can_snapshot("session_commands_and_a_server_killed_mid_turn") {
        return;
    }
    let home = Home::new();
    home.debian();
    let port = free_port();
    let mut serve = Serve::start(&home, port);
    assert!(home.path().join("api-token").is_file());

    let id = ok(&home, &serve, &["new", "--image", "debian", "--idle-timeout", "60", "--", "python3", "-c", AGENT])
        .trim()
        .to_string();
    assert!(ok(&home, &serve, &["ls"]).contains(&id));
    let show: serde_json::Value = serde_json::from_str(&ok(&home, &serve, &["show", &id])).unwrap();
    assert_eq!(show["id"], id.as_str());

    let out = ok(&home, &serve, &["send", &id, "hello"]);
    assert!(out.contains(r#"{"start":1}"#) && out.contains(r#"{"echo":"hello","end":1}"#), "{out}");

    // Kill -9 the server while the agent is in the middle of a turn.
    let mut send = home
        .cmd(&["session", "--server", &serve.url, "send", &id, "slow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = eventually(Duration::from_secs(10), || ok(&home, &serve, &["log", &id]).contains(r#"{"start":2}"#));
    assert!(started, "the slow turn did not start");
    serve.kill9();
    let _ = send.kill();
    let _ = send.wait();
    let mut serve = Serve::start(&home, port);
    // The agent's pending append reaches the new server; nothing acknowledged is lost.
    let finished = eventually(Duration::from_secs(20), || ok(&home, &serve, &["log", &id]).contains(r#""end":2"#));
    assert!(finished, "the turn did not finish after the restart: {}", ok(&home, &serve, &["log", &id]));
    let out = ok(&home, &serve, &["send", &id, "again"]);
    assert!(out.contains(r#"{"echo":"again","end":3}"#), "{out}");
    let log = ok(&home, &serve, &["log", "--json", &id]);
    let kinds: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["user", "assistant", "assistant", "user", "assistant", "assistant", "user", "assistant", "assistant"]
    );

    // Errors are one line with exit code 125.
    let r = session(&home, &serve, &["show", "nope"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("no session 'nope' (HTTP 404)"), "{}", r.stderr);

    assert_eq!(ok(&home, &serve, &["rm", &id]).trim(), id);
    assert!(!ok(&home, &serve, &["ls"]).contains(&id));
    serve.kill9();
}
