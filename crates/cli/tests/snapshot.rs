//! End-to-end tests of snapshot, restore and fork: real sandboxes, real
//! CRIU; each checks that the processes carried on exactly.

mod common;

use std::time::Duration;

use common::{alive, can_snapshot, eventually, mounts_below, Home};

macro_rules! require {
    () => {
        if !can_snapshot(module_path!()) {
            return;
        }
    };
}

/// A busybox shell counting in memory and writing each value to /tmp/count.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done";

/// The counter's last value; the shell rewrites the file, so a read may
/// catch it empty: read again then.
fn count(home: &Home, id: &str) -> u64 {
    let mut last = String::new();
    for _ in 0..50 {
        last = home.ok(&["exec", id, "cat", "/tmp/count"]);
        if let Ok(n) = last.trim().parse() {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("count: {last:?}")
}

/// A python server in the sandbox: a counter and a random value kept in
/// memory, served over TCP on 127.0.0.1:7000.
const PY_SERVER: &str = r#"
import os, socket, random
secret = random.getrandbits(64)
ballast = bytearray(os.urandom(1 << 20)) * 8
n = 0
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7000)); s.listen()
while True:
    c, _ = s.accept(); n += 1
    c.sendall(f"{n} {secret} {len(ballast)}\n".encode()); c.close()
"#;

const PY_ASK: &str = r#"
import socket, time
for _ in range(100):
    try:
        s = socket.create_connection(("127.0.0.1", 7000)); break
    except OSError: time.sleep(0.05)
print(s.makefile().readline().strip())
"#;

#[test]
fn shell_counter_continues_without_reset_or_gap() {
    require!();
    let home = Home::new();
    home.busybox();
    let id = home.detached(&["busybox", "sh", "-c", COUNTER]);
    assert!(eventually(Duration::from_secs(5), || count(&home, &id) > 5));
    home.ok(&["exec", &id, "sh", "-c", "echo kept > /root/file"]);
    let init = i64::from(home.host(&id).init_pid);
    let snap = home.ok(&["snapshot", &id]).trim().to_string();
    assert_eq!(snap.len(), 12, "the snapshot id alone: {snap:?}");
    let before: u64 = std::fs::read_to_string(
        home.path()
            .join("layers")
            .join(home.snapshots()[0]["backend"]["layers"][0].as_str().unwrap())
            .join("tmp/count"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    // Suspended: no process of the sandbox runs.
    assert!(!alive(init), "the sandbox is stopped after a snapshot");
    assert_eq!(home.sandbox(&id)["status"]["state"], "suspended");
    std::thread::sleep(Duration::from_millis(500));
    let restored = home.ok(&["restore", &snap]).trim().to_string();
    let first = count(&home, &restored);
    assert!(first >= before && first <= before + 10, "carried on from {before}, not reset, no gap: {first}");
    assert!(eventually(Duration::from_secs(5), || count(&home, &restored) > first + 3), "still counting");
    assert_eq!(home.ok(&["exec", &restored, "cat", "/root/file"]), "kept\n", "files survive");
    assert_eq!(home.ok(&["exec", &restored, "hostname"]).trim(), restored, "own hostname");
    let lo = home.ok(&["exec", &restored, "ip", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "loopback is up: {lo}");
}

#[test]
fn python_memory_and_a_local_server_survive() {
    require!();
    let home = Home::new();
    home.debian();
    let id = home.detached(&["debian", "python3", "-c", PY_SERVER]);
    let ask = |sandbox: &str| home.ok(&["exec", sandbox, "python3", "-c", PY_ASK]);
    let first = ask(&id);
    let (n, secret) = first.trim().split_once(' ').unwrap();
    assert_eq!(n, "1");
    let snap = home.ok(&["snapshot", &id]).trim().to_string();
    let restored = home.ok(&["restore", &snap]).trim().to_string();
    let again = ask(&restored);
    let fields: Vec<&str> = again.split_whitespace().collect();
    assert_eq!(fields[0], "2", "the in-memory counter carried on");
    assert_eq!(fields[1], secret.split(' ').next().unwrap(), "the random value survived");
    assert_eq!(fields[2], (8 << 20).to_string(), "the 8 MB buffer survived");
}

#[test]
fn an_established_tcp_connection_carries_on() {
    require!();
    let home = Home::new();
    home.debian();
    // One connection, opened once; the server counts the lines it receives on it.
    let script = r#"
import os, socket, threading, time
srv = socket.socket(); srv.bind(("127.0.0.1", 7100)); srv.listen()
accepted = 0
def serve():
    global accepted
    c, _ = srv.accept(); accepted += 1
    n = 0
    for line in c.makefile():
        n += 1
        open("/tmp/tcp", "w").write(f"{n} {accepted}\n")
threading.Thread(target=serve, daemon=True).start()
cl = socket.create_connection(("127.0.0.1", 7100))
while True:
    cl.sendall(b"x\n"); time.sleep(0.05)
"#;
    let id = home.detached(&["debian", "python3", "-c", script]);
    // The server rewrites the file: a read may catch it empty, then read again.
    let read = |sandbox: &str| -> (u64, u64) {
        for _ in 0..50 {
            let out = home.ok(&["exec", sandbox, "cat", "/tmp/tcp"]);
            let f: Vec<u64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if let [n, accepted] = f[..] {
                return (n, accepted);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("/tmp/tcp never held two numbers")
    };
    assert!(eventually(Duration::from_secs(10), || home.run(&["exec", &id, "cat", "/tmp/tcp"]).code == 0));
    let snap = home.ok(&["snapshot", &id]).trim().to_string();
    let restored = home.ok(&["restore", &snap]).trim().to_string();
    let (n1, _) = read(&restored);
    assert!(eventually(Duration::from_secs(5), || read(&restored).0 > n1 + 5), "lines keep arriving");
    assert_eq!(read(&restored).1, 1, "on the same connection: accepted once");
}

#[test]
fn unlinked_open_files_and_a_piped_process_tree_come_back_whole() {
    require!();
    let home = Home::new();
    home.busybox();
    // Three levels (sh -> sh -> producer | consumer) with a pipe, and an
    // unlinked file held open by the top shell (`; true` keeps busybox from
    // exec'ing the last command in its place).
    let script = "echo secret-content > /tmp/gone; exec 3< /tmp/gone; rm /tmp/gone; \
        sh -c 'sh -c \"while true; do echo tick; sleep 0.05; done\" | while read l; do n=$((n+1)); echo $n > /tmp/ticks; done'; true";
    let id = home.detached(&["busybox", "sh", "-c", script]);
    assert!(eventually(Duration::from_secs(5), || home.run(&["exec", &id, "cat", "/tmp/ticks"]).code == 0));
    // Shells exactly three levels below init: the producer and the consumer
    // (a producer's fork before it execs `sleep` is a level deeper).
    let tree = "level() { d=0; q=$1; while [ \"$q\" != 1 ]; do q=$(sed -n 's/^PPid:\\t//p' /proc/$q/status 2>/dev/null); [ -n \"$q\" ] || return; d=$((d+1)); done; echo $d; }; \
        n=0; for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = sh ] && [ \"$(level ${p#/proc/})\" = 3 ] && n=$((n+1)); done; echo $n";
    let before = home.ok(&["exec", &id, "sh", "-c", tree]);
    assert_eq!(before, "2\n", "producer and consumer, three levels deep");
    let snap = home.ok(&["snapshot", &id]).trim().to_string();
    let restored = home.ok(&["restore", &snap]).trim().to_string();
    // The consumer rewrites the file: a read may catch it empty.
    let ticks = |s: &str| home.ok(&["exec", s, "cat", "/tmp/ticks"]).trim().parse::<u64>().unwrap_or(0);
    let mut t1 = 0;
    assert!(eventually(Duration::from_secs(5), || {
        t1 = ticks(&restored);
        t1 > 0
    }));
    assert!(eventually(Duration::from_secs(5), || ticks(&restored) > t1 + 3), "the pipe still flows");
    assert_eq!(home.ok(&["exec", &restored, "sh", "-c", tree]), before, "same process tree");
    // Every process of the tree inherited fd 3: read it once per process, then dedupe.
    let unlinked = "for p in /proc/[0-9]*; do case \"$(readlink $p/fd/3 2>/dev/null)\" in *deleted*) cat $p/fd/3;; esac; done | sort -u";
    assert_eq!(home.ok(&["exec", &restored, "sh", "-c", unlinked]), "secret-content\n");
}

#[test]
fn chains_of_ten_generations_keep_their_lineage() {
    require!();
    let home = Home::new();
    home.busybox();
    let mut sandbox = home.detached(&["busybox", "sh", "-c", COUNTER]);
    let mut parent: Option<String> = None;
    let mut last = 0;
    for generation in 0..10 {
        home.ok(&["exec", &sandbox, "sh", "-c", &format!("echo {generation} >> /root/generations")]);
        let snap = home.ok(&["snapshot", &sandbox]).trim().to_string();
        let manifest = home.snapshots().into_iter().find(|m| m["id"] == snap.as_str()).unwrap();
        assert_eq!(manifest["parent"].as_str(), parent.as_deref(), "generation {generation}");
        sandbox = home.ok(&["restore", &snap]).trim().to_string();
        let now = count(&home, &sandbox);
        assert!(now >= last, "generation {generation}: {now} < {last}");
        last = now;
        parent = Some(snap);
    }
    let lines = home.ok(&["exec", &sandbox, "cat", "/root/generations"]);
    assert_eq!(lines.lines().count(), 10, "every generation's write is there: {lines}");
}

/// What each generation of `squashed_stacks_keep_...` changes: files and directories of the
/// image and of earlier generations deleted, replaced and made again.
const GENERATION_CHANGES: [&str; 5] = [
    "rm /etc/hosts; mkdir -p /work/a; echo 0 > /work/a/f",
    "rm -r /work/a; mkdir /work/a; echo 1 > /work/a/g",
    "rm -r /usr/sbin; echo file > /usr/sbin",
    "rm /usr/sbin; mkdir /usr/sbin; echo mine > /usr/sbin/mine",
    "echo changed > /etc/group",
];

#[test]
fn squashed_stacks_keep_every_generation_s_deletions_replacements_and_files() {
    require!();
    let home = Home::new();
    home.busybox();
    let mut sandbox = home.detached(&["busybox", "sh", "-c", COUNTER]);
    for generation in 0..12 {
        let change = GENERATION_CHANGES.get(generation).copied().unwrap_or("true");
        home.ok(&["exec", &sandbox, "sh", "-ec", &format!("{change}; touch /work/n{generation}")]);
        let snap = home.ok(&["snapshot", &sandbox]).trim().to_string();
        sandbox = home.ok(&["restore", &snap]).trim().to_string();
        let depth = home.stack_depth(&sandbox);
        assert!(depth <= 10, "generation {generation}: the root stacks {depth} layers");
    }
    let ls = |dir: &str| home.ok(&["exec", &sandbox, "ls", dir]).split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(ls("/etc"), "group passwd", "a deleted image file stays deleted");
    assert_eq!(ls("/work/a"), "g", "a directory made again hides what it held before");
    assert_eq!(ls("/usr/sbin"), "mine", "a directory over a file over the image's hides the image's");
    assert_eq!(home.ok(&["exec", &sandbox, "cat", "/etc/group"]).trim(), "changed");
    let names: Vec<String> = (0..12).map(|g| format!("n{g}")).collect();
    let mut listed: Vec<String> = ls("/work").split(' ').filter(|n| *n != "a").map(String::from).collect();
    listed.sort_by_key(|n| n[1..].parse::<u32>().unwrap());
    assert_eq!(listed, names, "every generation's file is there");
    let before = count(&home, &sandbox);
    assert!(eventually(Duration::from_secs(5), || count(&home, &sandbox) > before), "the counter runs on");
}

#[test]
fn forks_are_independent_and_restores_survive_the_original() {
    require!();
    let home = Home::new();
    home.busybox();
    let id = home.detached(&["busybox", "sh", "-c", COUNTER]);
    let snap = home.ok(&["snapshot", "--leave-running", "--name", "base", &id]).trim().to_string();
    assert_eq!(home.sandbox(&id)["status"]["state"], "running", "--leave-running keeps it running");
    let c = count(&home, &id);
    assert!(eventually(Duration::from_secs(5), || count(&home, &id) > c), "and counting");
    home.ok(&["rm", "-f", &id]);
    let forks: Vec<String> = home.ok(&["fork", "-n", "10", "base"]).lines().map(str::to_string).collect();
    assert_eq!(forks.len(), 10);
    for f in &forks {
        home.ok(&["exec", f, "sh", "-c", "hostname > /root/me"]);
    }
    let mut hostnames = std::collections::HashSet::new();
    for f in &forks {
        let me = home.ok(&["exec", f, "cat", "/root/me"]);
        assert_eq!(me.trim(), f, "each sees only its own write");
        hostnames.insert(me);
        assert!(count(&home, f) > 0);
    }
    assert_eq!(hostnames.len(), 10);
    // Two restores of one snapshot at the same time, by separate processes.
    let a = home.cmd(&["restore", &snap]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let b = home.cmd(&["restore", &snap]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let restored = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(count(&home, &restored) > 0);
    }
}

#[test]
fn corrupt_foreign_and_incomplete_snapshots_start_nothing() {
    require!();
    let home = Home::new();
    home.busybox();
    let id = home.detached(&["busybox", "sleep", "1000"]);
    let snap = home.ok(&["snapshot", "--leave-running", &id]).trim().to_string();
    let dir = home.path().join("snapshots").join(&snap);
    let sandboxes_before = home.ps().len();
    let mounts_before = mounts_below(home.path()).len();
    let expect_refusal = |what: &str, message: &str| {
        let r = home.run(&["restore", &snap]);
        assert_eq!(r.code, 125, "{what}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{what}: one line: {}", r.stderr);
        assert!(r.stderr.contains(message), "{what}: {}", r.stderr);
        assert_eq!(home.ps().len(), sandboxes_before, "{what}: nothing started");
        assert_eq!(mounts_below(home.path()).len(), mounts_before, "{what}: nothing mounted");
    };
    // A flipped byte in the process image.
    let pages = std::fs::read_dir(dir.join("criu"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("pages-"))
        .unwrap();
    let original = std::fs::read(&pages).unwrap();
    let mut bad = original.clone();
    bad[original.len() / 2] ^= 0xff;
    std::fs::write(&pages, &bad).unwrap();
    expect_refusal("flipped byte", "does not match its checksum");
    std::fs::write(&pages, &original[..original.len() / 2]).unwrap();
    expect_refusal("truncated", "expected");
    std::fs::write(&pages, &original).unwrap();
    // A manifest from the future, and a garbled one.
    let manifest_path = dir.join("manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, manifest.replace("\"format_version\": 2", "\"format_version\": 7")).unwrap();
    expect_refusal("future format", "format version 7");
    std::fs::write(&manifest_path, &manifest[..manifest.len() / 3]).unwrap();
    expect_refusal("garbled manifest", "corrupt");
    std::fs::write(&manifest_path, &manifest).unwrap();
    // A missing layer.
    let value: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let layer = home.path().join("layers").join(value["backend"]["layers"][0].as_str().unwrap());
    let aside = home.path().join("aside");
    std::fs::rename(&layer, &aside).unwrap();
    expect_refusal("missing layer", "missing");
    std::fs::rename(&aside, &layer).unwrap();
    // Intact again: it restores.
    let restored = home.ok(&["restore", &snap]).trim().to_string();
    assert_eq!(home.sandbox(&restored)["status"]["state"], "running");
}

#[test]
fn a_killed_snapshot_leaves_the_sandbox_or_a_whole_snapshot() {
    require!();
    let home = Home::new();
    home.busybox();
    let mut delay_ms = 5;
    let mut completed = false;
    while !completed && delay_ms < 3000 {
        let id = home.detached(&["busybox", "sh", "-c", COUNTER]);
        let mut child = home.cmd(&["snapshot", &id]).stdout(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // kill(1) of our own child, by pid.
        let _ = std::process::Command::new("kill").arg("-9").arg(child.id().to_string()).status();
        let _ = child.wait();
        // Any next command recovers leftovers, once a CRIU the killed
        // command started has finished.
        let staging = || {
            home.path()
                .join("snapshots")
                .read_dir()
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        };
        assert!(
            eventually(Duration::from_secs(20), || {
                home.snapshots();
                !staging()
            }),
            "leftover recovered"
        );
        let snapshots = home.snapshots();
        let state = home.sandbox(&id)["status"]["state"].as_str().unwrap().to_string();
        match state.as_str() {
            "running" => {
                assert!(snapshots.iter().all(|m| m["source_sandbox"] != id.as_str()), "no half snapshot listed");
                let c = count(&home, &id);
                assert!(
                    eventually(Duration::from_secs(5), || count(&home, &id) > c),
                    "thawed and counting (delay {delay_ms} ms)"
                );
                home.ok(&["rm", "-f", &id]);
            }
            "suspended" => {
                let snap =
                    snapshots.iter().find(|m| m["source_sandbox"] == id.as_str()).expect("its snapshot is listed");
                let restored = home.ok(&["restore", snap["id"].as_str().unwrap()]).trim().to_string();
                assert!(count(&home, &restored) > 0, "the snapshot is whole (delay {delay_ms} ms)");
                home.ok(&["rm", "-f", &restored, &id]);
                completed = true;
            }
            other => panic!("delay {delay_ms} ms: sandbox left {other}"),
        }
        delay_ms = delay_ms * 2 + 5;
    }
    assert!(completed, "some snapshot completed");
}

#[test]
fn restore_needs_only_the_home_directory() {
    require!();
    let home = Home::new();
    home.busybox();
    let id = home.detached(&["busybox", "sh", "-c", COUNTER]);
    let snap = home.ok(&["snapshot", "--name", "keep", &id]).trim().to_string();
    home.ok(&["rm", "-f", &id]);
    // A reboot-like loss: only the home's images, layers and snapshots are
    // kept, moved to another path; no runtime state, no process of hiber's.
    let moved = Home::new();
    for part in ["images", "layers", "snapshots"] {
        let status =
            std::process::Command::new("cp").arg("-a").arg(home.path().join(part)).arg(moved.path()).status().unwrap();
        assert!(status.success());
    }
    drop(home);
    let restored = moved.ok(&["restore", "keep"]).trim().to_string();
    assert!(count(&moved, &restored) > 0);
    assert_eq!(moved.snapshots()[0]["id"], snap.as_str());
    // Removing the snapshot keeps what the restored sandbox stands on.
    moved.ok(&["snapshot", "rm", "keep"]);
    assert!(moved.snapshots().is_empty());
    let c = count(&moved, &restored);
    assert!(eventually(Duration::from_secs(5), || count(&moved, &restored) > c));
    moved.ok(&["rm", "-f", &restored]);
    moved.ok(&["image", "rm", "busybox"]);
    let layers: Vec<String> = std::fs::read_dir(moved.path().join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("hiber-init-") && !n.starts_with('.'))
        .collect();
    assert!(layers.is_empty(), "unused layers collected: {layers:?}");
}

#[test]
fn a_missing_or_old_criu_is_one_clear_line() {
    require!();
    let home = Home::new();
    home.busybox();
    let id = home.detached(&["busybox", "sleep", "1000"]);
    let old = home.path().join("old-criu");
    std::fs::write(&old, "#!/bin/sh\necho 'Version: 3.17'\n").unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&old).status().unwrap();
    for (criu, message) in [("/nonexistent/criu", "CRIU not found"), (old.to_str().unwrap(), "3.17 at")] {
        let r: common::Run = home.cmd(&["snapshot", &id]).env("HIBER_CRIU", criu).output().unwrap().into();
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(message), "{}", r.stderr);
        let check: common::Run = home.cmd(&["check"]).env("HIBER_CRIU", criu).output().unwrap().into();
        assert_eq!(check.code, 1, "check fails: {}", check.stdout);
    }
    assert_eq!(home.sandbox(&id)["status"]["state"], "running", "nothing happened to the sandbox");
    assert!(home.snapshots().is_empty());
}

#[test]
fn an_exec_in_flight_reattaches_after_a_live_snapshot() {
    require!();
    let home = Home::new();
    home.busybox();
    let id = home.detached(&["busybox", "sleep", "1000"]);
    // The command counts its own runs, so a re-run would show.
    let script = "echo run >> /root/runs; echo before; sleep 1; echo after";
    let exec = home.cmd(&["exec", &id, "sh", "-c", script]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    home.ok(&["snapshot", "--leave-running", &id]);
    let out = exec.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\nafter\n", "all output, once");
    assert_eq!(home.ok(&["exec", &id, "cat", "/root/runs"]), "run\n", "the command ran once");
}

/// A Python process that opens an io_uring instance (which CRIU cannot save) and counts in
/// /tmp/count.
const URING: &str = r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.syscall(425, 8, ctypes.create_string_buffer(120)) >= 0, ctypes.get_errno()  # io_uring_setup
n = 0
while True:
    n += 1
    open("/tmp/count", "w").write(str(n))
    time.sleep(0.02)
"#;

#[test]
fn what_cannot_be_carried_is_refused_in_one_line_naming_the_process_and_nothing_changes() {
    require!();
    let home = Home::new();
    home.debian();
    let plain = home.detached(&["debian", "sleep", "1000"]);
    assert_eq!(home.ok(&["snapshot", "--check", &plain]).trim(), format!("{plain} can be snapshotted"));

    let id = home.detached(&["debian", "python3", "-c", URING]);
    let count = || home.run(&["exec", &id, "cat", "/tmp/count"]).stdout.trim().parse::<u64>().unwrap_or(0);
    assert!(eventually(Duration::from_secs(10), || count() > 0), "the counter did not start");
    let check = home.run(&["snapshot", "--check", &id]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(check.stdout.starts_with("process 2 (python3 -c import ctypes"), "{}", check.stdout);
    assert!(check.stdout.trim_end().ends_with("holds an io_uring instance (fd 3)"), "{}", check.stdout);
    assert_eq!(check.stdout.lines().count(), 1);

    let refused = home.run(&["snapshot", &id]);
    assert_eq!(refused.code, 125);
    let message = refused.stderr.trim();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.starts_with(&format!("hiber: cannot snapshot sandbox {id}: process 2 (python3")), "{message}");
    assert!(message.contains("io_uring") && message.ends_with("the sandbox keeps running untouched"), "{message}");
    // Untouched: running, counting, connectable, and no snapshot was stored.
    assert_eq!(home.sandbox(&id)["status"]["state"], "running");
    let before = count();
    assert!(eventually(Duration::from_secs(5), || count() > before), "the sandbox stopped counting");
    assert!(home.snapshots().is_empty());
}
