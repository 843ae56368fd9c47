//! End-to-end tests of file watchers across snapshots: inotify and fanotify watches on any
//! path of a sandbox's root keep reporting after a restore, in every fork, and after a restore
//! of a restore.

mod common;

use std::time::Duration;

use common::{can_snapshot, eventually, Home};

macro_rules! require {
    () => {
        if !can_snapshot(module_path!()) {
            return;
        }
    };
}

/// An inotify watcher of the directory in argument 1 (made if missing), appending
/// `NAME TAG` to /tmp/events for every file created there, TAG being argument 2.
const INOTIFY: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
path, tag = sys.argv[1], sys.argv[2]
os.makedirs(path, exist_ok=True)
fd = libc.inotify_init1(0)
assert libc.inotify_add_watch(fd, path.encode(), 0x100) >= 0, ctypes.get_errno()  # IN_CREATE
open(f"/tmp/ready-{tag}", "w").close()
while True:
    data = os.read(fd, 4096)
    i = 0
    while i < len(data):
        _, _, _, n = struct.unpack_from("iIII", data, i)
        name = data[i + 16:i + 16 + n].rstrip(b"\0").decode()
        with open("/tmp/events", "a") as f:
            f.write(f"{name} {tag}\n")
        i += 16 + n
"#;

/// An fanotify watcher (unprivileged: FAN_REPORT_FID, an inode mark) of /srv/fan, appending
/// `fan` to /tmp/events for every creation there.
const FANOTIFY: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
os.makedirs("/srv/fan", exist_ok=True)
fd = libc.syscall(300, 0x200, 0)  # fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID, O_RDONLY)
assert fd >= 0, ctypes.get_errno()
assert libc.fanotify_mark(fd, 1, 0x100, -100, b"/srv/fan") == 0, ctypes.get_errno()  # FAN_CREATE
open("/tmp/ready-fan", "w").close()
while True:
    os.read(fd, 4096)
    with open("/tmp/events", "a") as f:
        f.write("fan\n")
"#;

/// Watchers of a directory the sandbox made (its upper directory), one of the image
/// (`/usr/lib`), one under /tmp, and the fanotify one.
const WATCHERS: &str = r#"
python3 -c "$0" /srv/app upper &
python3 -c "$0" /usr/lib image &
python3 -c "$0" /tmp/t tmp &
python3 -c "$1" &
exec sleep 100000
"#;

/// Creates one file in each watched directory, named after `round`, and waits until all four
/// watchers of sandbox `id` reported it.
fn assert_reported(home: &Home, id: &str, round: &str) {
    let touch = format!("touch /srv/app/{round} /usr/lib/{round} /tmp/t/{round} /srv/fan/{round}");
    home.ok(&["exec", id, "sh", "-c", &touch]);
    let expected = [format!("{round} upper"), format!("{round} image"), format!("{round} tmp")];
    let mut events = String::new();
    let all = eventually(Duration::from_secs(5), || {
        events = home.run(&["exec", id, "cat", "/tmp/events"]).stdout;
        expected.iter().all(|e| events.lines().any(|l| l == e))
    });
    assert!(all, "{round}: not every watcher of {id} reported:\n{events}");
    let fan = events.lines().filter(|l| *l == "fan").count();
    assert!(fan >= 1, "{round}: the fanotify watcher of {id} reported nothing:\n{events}");
}

#[test]
fn inotify_and_fanotify_watches_report_after_restore_fork_and_a_restore_of_a_restore() {
    require!();
    let home = Home::new();
    home.debian();
    let id = home.detached(&["debian", "sh", "-c", WATCHERS, INOTIFY, FANOTIFY]);
    let ready = "test -e /tmp/ready-upper -a -e /tmp/ready-image -a -e /tmp/ready-tmp -a -e /tmp/ready-fan";
    assert!(
        eventually(Duration::from_secs(10), || home.run(&["exec", &id, "sh", "-c", ready]).code == 0),
        "the watchers did not start"
    );
    assert_reported(&home, &id, "before");
    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();

    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    assert_reported(&home, &restored, "restored");
    let forks: Vec<String> = home.ok(&["fork", &snapshot, "-n", "2"]).split_whitespace().map(String::from).collect();
    assert_reported(&home, &forks[0], "fork0");
    let other = home.ok(&["exec", &forks[1], "cat", "/tmp/events"]);
    assert!(!other.contains("fork0"), "a fork saw the other's files:\n{other}");
    assert_reported(&home, &forks[1], "fork1");

    // The watched directories now live in snapshot layers below a new upper directory.
    let again = home.ok(&["snapshot", &restored]).trim().to_string();
    let second = home.ok(&["restore", &again]).trim().to_string();
    assert_reported(&home, &second, "second");
    let events = home.ok(&["exec", &second, "cat", "/tmp/events"]);
    assert!(events.contains("restored upper") && !events.contains("fork0"), "{events}");
}
