//! End-to-end tests of the sandboxes' user namespace: root inside is an unprivileged uid on the
//! host, files keep the owners they were given inside (on disk they are shifted), and processes
//! of any uid snapshot, restore and fork.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{can_snapshot, eventually, Home};
use hiber_image::ids::HOST_BASE;

macro_rules! require {
    () => {
        if !can_snapshot(module_path!()) {
            return;
        }
    };
}

/// The real, effective, saved and filesystem uids of host process `pid`.
fn host_uids(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `ls -ln`'s owner columns of each path, inside sandbox `id`.
fn owners_inside(home: &Home, id: &str, paths: &[&str]) -> Vec<String> {
    let mut args = vec!["exec", id, "ls", "-lnd"];
    args.extend_from_slice(paths);
    let listing = home.ok(&args);
    listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}", f[2], f[3])
        })
        .collect()
}

#[test]
fn root_inside_is_an_unprivileged_host_uid_and_files_keep_their_owners_across_a_restore() {
    require!();
    let home = Home::new();
    home.busybox();
    let id = home.detached(&[
        "busybox",
        "sh",
        "-c",
        "touch /by-root; touch /by-app; chown 1234:1235 /by-app; touch /ready; sleep 1000",
    ]);
    let upper = home.path().join("sandboxes").join(&id).join("upper");
    assert!(eventually(Duration::from_secs(5), || upper.join("ready").exists()), "the sandbox wrote nothing");
    let id_map = home.ok(&["exec", &id, "cat", "/proc/self/uid_map"]);
    assert_eq!(id_map.split_whitespace().collect::<Vec<_>>(), ["0", "1000000000", "65536"]);
    assert_eq!(home.ok(&["exec", &id, "id", "-u"]).trim(), "0");

    // On the host: the sandbox's root is uid 1000000000, and so are the files it made.
    let init = home.host(&id).init_pid;
    let base = HOST_BASE.to_string();
    assert_eq!(host_uids(init), [base.as_str(); 4].join(" "), "hiber-init on the host");
    let owner = |p: &std::path::Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(&upper.join("by-root")), (HOST_BASE, HOST_BASE));
    assert_eq!(owner(&upper.join("by-app")), (HOST_BASE + 1234, HOST_BASE + 1235));
    // Inside, the owners are the ones given there; the image's files are root's.
    let expected = ["0 0", "1234 1235", "0 0"];
    assert_eq!(owners_inside(&home, &id, &["/by-root", "/by-app", "/bin/busybox"]), expected);

    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();
    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    assert_eq!(owners_inside(&home, &restored, &["/by-root", "/by-app", "/bin/busybox"]), expected);
    assert_eq!(host_uids(home.host(&restored).init_pid), [base.as_str(); 4].join(" "), "the restored init");
    let id_map = home.ok(&["exec", &restored, "cat", "/proc/1/uid_map"]);
    assert_eq!(id_map.split_whitespace().collect::<Vec<_>>(), ["0", "1000000000", "65536"]);
    // The snapshot's layer holds the shifted owners: no copy, no mapping at mount time.
    let layers = home.path().join("layers");
    let layer = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("by-app").exists())
        .expect("the snapshot's layer");
    assert_eq!(owner(&layer.join("by-app")), (HOST_BASE + 1234, HOST_BASE + 1235));
}

/// A Python process that drops to uid and gid 1000, keeps a random token and a counter in
/// memory, and answers `uid token count` on 127.0.0.1:7000.
const SERVER: &str = r#"
import os, socket, threading, time
os.setgroups([]); os.setgid(1000); os.setuid(1000)
token = os.urandom(8).hex()
count = 0
def tick():
    global count
    while True:
        count += 1
        time.sleep(0.02)
threading.Thread(target=tick, daemon=True).start()
open("/tmp/by-1000", "w").write(token)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7000))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(f"{os.getuid()} {token} {count}\n".encode())
    c.close()
"#;

/// Asks the server in sandbox `id`: (uid, token, count).
fn ask(home: &Home, id: &str) -> (String, String, u64) {
    let client = "import socket; s = socket.create_connection(('127.0.0.1', 7000)); print(s.recv(100).decode())";
    let answer = home.ok(&["exec", id, "python3", "-c", client]);
    let f: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(f.len(), 3, "{answer:?}");
    (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
}

#[test]
fn a_process_of_another_uid_keeps_its_memory_across_snapshot_restore_and_fork() {
    require!();
    let home = Home::new();
    home.debian();
    let id = home.detached(&["debian", "python3", "-c", SERVER]);
    assert!(
        eventually(Duration::from_secs(10), || home.run(&["exec", &id, "test", "-s", "/tmp/by-1000"]).code == 0),
        "the server did not start"
    );
    let (uid, token, before) = ask(&home, &id);
    assert_eq!(uid, "1000");
    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();

    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    let forks: Vec<String> = home.ok(&["fork", &snapshot, "-n", "2"]).split_whitespace().map(String::from).collect();
    assert_eq!(forks.len(), 2);
    for sandbox in std::iter::once(&restored).chain(&forks) {
        let (uid, same_token, after) = ask(&home, sandbox);
        assert_eq!((uid.as_str(), same_token.as_str()), ("1000", token.as_str()), "in {sandbox}");
        assert!(after >= before, "the count went back from {before} to {after} in {sandbox}");
        let ps = home.ok(&["exec", sandbox, "ps", "-o", "uid=,args=", "-C", "python3"]);
        assert!(ps.trim_start().starts_with("1000 python3"), "{ps}");
        assert_eq!(owners_inside(&home, sandbox, &["/tmp/by-1000"]), ["1000 1000"]);
    }
    // The forks are independent: a count moves on in each alone.
    let (_, _, a) = ask(&home, &forks[0]);
    home.ok(&["stop", &forks[1]]);
    std::thread::sleep(Duration::from_millis(200));
    let (_, _, b) = ask(&home, &forks[0]);
    assert!(b > a, "fork 0 stopped counting when fork 1 stopped ({a} -> {b})");
}

#[test]
fn setuid_programs_and_su_work_inside() {
    require!();
    let home = Home::new();
    home.debian();
    let script = r#"
stat -c 'su: %a %u' /usr/bin/su
cp /usr/bin/id /tmp/id-setuid && chmod 4755 /tmp/id-setuid
setpriv --reuid=1000 --regid=1000 --clear-groups sh -c 'echo "plain: $(id -u)"; echo "setuid: $(/tmp/id-setuid -u)"'
echo "su: $(su -s /bin/sh nobody -c 'id -u')"
"#;
    let output = home.ok(&["run", "debian", "sh", "-c", script]);
    for line in ["su: 4755 0", "plain: 1000", "setuid: 0", "su: 65534"] {
        assert!(output.lines().any(|l| l == line), "no {line:?} in:\n{output}");
    }
}

#[test]
fn images_made_before_user_namespaces_are_refused_with_one_line() {
    require!();
    let home = Home::new();
    home.busybox();
    let manifest = home.path().join("images/busybox.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut image: serde_json::Value = serde_json::from_str(&text).unwrap();
    image.as_object_mut().unwrap().remove("shifted_ids");
    std::fs::write(&manifest, serde_json::to_vec(&image).unwrap()).unwrap();
    let refused = home.run(&["run", "busybox", "true"]);
    assert_eq!(refused.code, 125, "{}", refused.stderr);
    let message = refused.stderr.trim();
    assert!(message.contains("image 'busybox' was made for sandboxes without user namespaces"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(home.ps().is_empty(), "nothing is left of the refused run");
}

#[test]
fn check_reports_the_user_namespace_with_its_map() {
    require!();
    let home = Home::new();
    let out = home.ok(&["check"]);
    let line = out.lines().find(|l| l.contains("user namespaces")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.starts_with("ok "), "{line}");
    assert!(line.contains("root inside is host uid 1000000000 (map: 0 1000000000 65536)"), "{line}");
}

/// PostgreSQL as `postgres`, its data in /var/lib/pg, listening on 127.0.0.1:5432; and a `psql`
/// session that reads statements from the FIFO /tmp/sql (held open by a sleeping writer) and
/// writes its answers to /tmp/answers, its session state a temporary table.
const POSTGRES: &str = r#"
set -e
bin=/usr/lib/postgresql/15/bin
mkdir -p /var/lib/pg && chown postgres:postgres /var/lib/pg
su postgres -s /bin/sh -c "$bin/initdb -D /var/lib/pg/data -A trust >/dev/null"
su postgres -s /bin/sh -c "$bin/pg_ctl -D /var/lib/pg/data -l /var/lib/pg/log -w -o '-c listen_addresses=127.0.0.1 -k /var/lib/pg' start >/dev/null"
psql -h 127.0.0.1 -U postgres -qc "create table t(n int); insert into t select generate_series(1, 1000)"
mkfifo /tmp/sql
sleep 100000 > /tmp/sql &
psql -h 127.0.0.1 -U postgres -qAt < /tmp/sql > /tmp/answers 2>&1 &
echo "create temp table mine(x int); insert into mine values (42);" > /tmp/sql
touch /tmp/ready
exec sleep 100000
"#;

/// Sends `sql` to the open psql session of sandbox `id` and returns its new answer lines.
fn in_session(home: &Home, id: &str, sql: &str) -> String {
    let before = home.ok(&["exec", id, "cat", "/tmp/answers"]).len();
    home.ok(&["exec", id, "sh", "-c", &format!("echo \"{sql}\" > /tmp/sql")]);
    let mut answer = String::new();
    eventually(Duration::from_secs(10), || {
        let all = home.ok(&["exec", id, "cat", "/tmp/answers"]);
        answer = all.get(before..).unwrap_or_default().to_string();
        answer.ends_with('\n')
    });
    answer.trim().to_string()
}

#[test]
fn postgres_as_its_own_user_keeps_its_rows_and_open_session_across_snapshot_restore_and_fork() {
    require!();
    let home = Home::new();
    if !home.test_image("postgres", common::POSTGRES) {
        return;
    }
    let id = home.detached(&["postgres", "sh", "-c", POSTGRES]);
    assert!(
        eventually(Duration::from_secs(60), || home.run(&["exec", &id, "test", "-e", "/tmp/ready"]).code == 0),
        "PostgreSQL did not start: {}",
        home.run(&["exec", &id, "cat", "/var/lib/pg/log"]).stdout
    );
    assert_eq!(in_session(&home, &id, "select x from mine;"), "42");
    let owners = owners_inside(&home, &id, &["/var/lib/pg/data"]);
    let postgres = home.ok(&["exec", &id, "id", "-u", "postgres"]).trim().to_string();
    assert_ne!(postgres, "0");
    assert_eq!(owners, [format!("{postgres} {}", home.ok(&["exec", &id, "id", "-g", "postgres"]).trim())]);
    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();

    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    let forks: Vec<String> = home.ok(&["fork", &snapshot, "-n", "2"]).split_whitespace().map(String::from).collect();
    for sandbox in std::iter::once(&restored).chain(&forks) {
        // The same session (its temporary table is there), the same rows, the same server.
        assert_eq!(in_session(&home, sandbox, "select x from mine;"), "42", "in {sandbox}");
        assert_eq!(in_session(&home, sandbox, "select count(*) from t;"), "1000", "in {sandbox}");
        let fresh = home.ok(&["exec", sandbox, "psql", "-h", "127.0.0.1", "-U", "postgres", "-qAtc", "select 1"]);
        assert_eq!(fresh.trim(), "1", "a new connection in {sandbox}");
        // The owners of the server's processes (no procps in this image: /proc says it).
        let owners = "for p in /proc/[0-9]*; do [ \"$(cat $p/comm)\" = postgres ] && stat -c %U $p; done; true";
        let ps = home.ok(&["exec", sandbox, "sh", "-c", owners]);
        assert!(ps.lines().count() >= 5 && ps.lines().all(|l| l == "postgres"), "{ps}");
    }
    // The forks are two databases: a row written in one is not in the other.
    in_session(&home, &forks[0], "insert into t values (0); select count(*) from t;");
    assert_eq!(in_session(&home, &forks[0], "select count(*) from t;"), "1001");
    assert_eq!(in_session(&home, &forks[1], "select count(*) from t;"), "1000");
}

#[test]
fn a_home_below_a_directory_only_the_hosts_root_may_enter_works() {
    require!();
    // Like /root: mode 0700, owned by the host's root, whom a sandbox's root is not.
    let private = tempfile::Builder::new().prefix("hiber-private-").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(private.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let home = Home { dir: tempfile::Builder::new().prefix("home-").tempdir_in(private.path()).unwrap() };
    home.busybox();
    assert_eq!(home.ok(&["run", "busybox", "echo", "started"]).trim(), "started");
    let id = home.detached(&["busybox", "sh", "-c", "echo kept > /tmp/f; sleep 1000"]);
    assert!(eventually(Duration::from_secs(5), || home.run(&["exec", &id, "test", "-s", "/tmp/f"]).code == 0));
    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();
    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    assert_eq!(home.ok(&["exec", &restored, "cat", "/tmp/f"]).trim(), "kept");
}
