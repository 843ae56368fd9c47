//! End-to-end tests of what code inside a sandbox cannot do to the host: each is an attempt that
//! must fail inside a real sandbox, also after a snapshot and restore, while the same call goes
//! through when the protection is turned off (`--security-opt seccomp=unconfined`, `--cap-add`).

mod common;

use common::{can_snapshot, Home};

macro_rules! require {
    () => {
        if !can_snapshot(module_path!()) {
            return;
        }
    };
}

/// A busybox sandbox restored from a snapshot of a running one; its id.
fn restored_sleeper(home: &Home) -> String {
    let id = home.detached(&["busybox", "sleep", "1000"]);
    let snapshot = home.ok(&["snapshot", &id]);
    home.ok(&["restore", snapshot.trim()]).trim().to_string()
}

/// Attempts on the host's kernel from busybox, each printing `NAME: RESULT`.
const ATTEMPTS: &str = r#"
insmod /bin/true 2>&1 | sed 's/^/insmod: /'
date -s "$(date +'%Y-%m-%d %H:%M:%S')" 2>&1 >/dev/null | sed 's/^/date: /'
reboot -f 2>&1 | sed 's/^/reboot: /'
swapon /dev/null 2>&1 | sed 's/^/swapon: /'
grep '^Seccomp:' /proc/self/status
echo still-running
"#;

/// The attempts' lines, each checked to have been refused by the filter.
fn assert_refused(output: &str) {
    for attempt in ["insmod", "date", "reboot", "swapon"] {
        let line = output.lines().find(|l| l.starts_with(&format!("{attempt}: "))).unwrap_or_default();
        assert!(line.contains("Operation not permitted"), "{attempt} was not refused: {line:?}\n{output}");
    }
    assert!(output.contains("Seccomp:\t2"), "not under a filter:\n{output}");
    assert!(output.contains("still-running"), "the sandbox did not survive the attempts:\n{output}");
}

/// keyctl(KEYCTL_GET_KEYRING_ID), bpf(BPF_PROG_LOAD, NULL) and perf_event_open(NULL) from python,
/// printing each one's errno name.
const PY_ATTEMPTS: &str = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
for name, nr, args in [("keyctl", 250, (0, -3, 0)), ("bpf", 321, (5, 0, 0)), ("perf_event_open", 298, (0, 0, -1, -1, 0))]:
    r = libc.syscall(nr, *args)
    print(name, "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()])
"#;

#[test]
fn calls_into_the_host_kernel_fail_with_eperm_before_and_after_a_restore() {
    require!();
    let home = Home::new();
    home.busybox();
    let fresh = home.run(&["run", "busybox", "sh", "-c", ATTEMPTS]);
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    assert_refused(&fresh.stdout);

    let restored = restored_sleeper(&home);
    let after = home.run(&["exec", &restored, "sh", "-c", ATTEMPTS]);
    assert_eq!(after.code, 0, "{}", after.stderr);
    assert_refused(&after.stdout);
    let init = home.ok(&["exec", &restored, "grep", "^Seccomp:", "/proc/1/status"]);
    assert!(init.contains("Seccomp:\t2"), "the restored init lost its filter: {init}");
}

#[test]
fn keyctl_bpf_and_perf_events_are_refused_by_the_filter_only() {
    require!();
    let home = Home::new();
    home.debian();
    let sleeper = home.detached(&["debian", "sleep", "1000"]);
    let snapshot = home.ok(&["snapshot", &sleeper]);
    let restored = home.ok(&["restore", snapshot.trim()]).trim().to_string();
    let fresh = home.ok(&["run", "debian", "python3", "-c", PY_ATTEMPTS]);
    let after = home.ok(&["exec", &restored, "python3", "-c", PY_ATTEMPTS]);
    for confined in [fresh, after] {
        for name in ["keyctl", "bpf", "perf_event_open"] {
            assert!(confined.contains(&format!("{name} EPERM")), "{name} not refused:\n{confined}");
        }
    }
    // Without the filter (and with every capability, which perf events also need) keyctl and
    // perf_event_open reach the kernel, which answers otherwise (root may read its keyring id;
    // perf rejects the null attribute with EFAULT). bpf stays refused: the kernel keeps it for
    // the host's root (kernel.unprivileged_bpf_disabled), and root inside is not that.
    let unconfined = home.ok(&[
        "run",
        "--security-opt",
        "seccomp=unconfined",
        "--cap-add",
        "ALL",
        "debian",
        "python3",
        "-c",
        PY_ATTEMPTS,
    ]);
    for name in ["keyctl", "perf_event_open"] {
        assert!(!unconfined.contains(&format!("{name} EPERM")), "{name} still refused:\n{unconfined}");
    }
    assert!(unconfined.contains("bpf EPERM"), "bpf reached by a sandbox's root:\n{unconfined}");
}

#[test]
fn unconfined_sandboxes_run_without_a_filter_and_bad_options_are_refused() {
    require!();
    let home = Home::new();
    home.busybox();
    let status =
        home.ok(&["run", "--security-opt", "seccomp=unconfined", "busybox", "grep", "^Seccomp:", "/proc/self/status"]);
    assert_eq!(status.trim(), "Seccomp:\t0");
    let bad = home.run(&["run", "--security-opt", "seccomp=maybe", "busybox", "true"]);
    assert_eq!(bad.code, 125);
    assert_eq!(
        bad.stderr.trim(),
        "hiber: unknown security option 'seccomp=maybe': hiber knows seccomp=default and seccomp=unconfined"
    );
    assert!(home.ps().is_empty(), "a refused run leaves no sandbox");
}

/// Mount attempts (a tmpfs; the host's cgroup v1 memory hierarchy, the start of the
/// `release_agent` escape; unmounting /proc), each printing `NAME: RESULT`, then the bounding set.
const MOUNTS: &str = r#"
mkdir -p /tmp/m
mount -t tmpfs x /tmp/m 2>&1 && echo "tmpfs: mounted" || echo "tmpfs: refused"
mount -t cgroup -o memory cgroup /tmp/m 2>&1 && echo "cgroup: mounted" || echo "cgroup: refused"
umount /proc 2>&1 && echo "umount: done" || echo "umount: refused"
grep '^CapBnd:' /proc/self/status
"#;

fn assert_confined(output: &str) {
    for attempt in ["tmpfs", "cgroup", "umount"] {
        assert!(output.contains(&format!("{attempt}: refused")), "{attempt} was not refused:\n{output}");
    }
    assert!(output.contains("CapBnd:\t00000000a80425fb"), "not Docker's capability set:\n{output}");
}

#[test]
fn capabilities_are_dockers_set_before_and_after_a_restore() {
    require!();
    let home = Home::new();
    home.busybox();
    assert_confined(&home.ok(&["run", "busybox", "sh", "-c", MOUNTS]));

    let restored = restored_sleeper(&home);
    assert_confined(&home.ok(&["exec", &restored, "sh", "-c", MOUNTS]));
    let init = home.ok(&["exec", &restored, "grep", "^CapBnd:", "/proc/1/status"]);
    assert_eq!(init.trim(), "CapBnd:\t00000000a80425fb", "the restored init");

    // The refusals come from the missing capability: with it, the tmpfs mounts.
    let admin = home.ok(&[
        "run",
        "--cap-add",
        "SYS_ADMIN",
        "busybox",
        "sh",
        "-c",
        "mkdir /tmp/m && mount -t tmpfs x /tmp/m && echo mounted",
    ]);
    assert_eq!(admin.trim(), "mounted");
    let none = home.run(&["run", "--cap-drop", "ALL", "busybox", "chown", "1000", "/etc/passwd"]);
    assert_ne!(none.code, 0, "chown without CAP_CHOWN worked");
    assert!(none.stderr.contains("Operation not permitted"), "{}", none.stderr);
    let bad = home.run(&["run", "--cap-add", "SYS_WIZARD", "busybox", "true"]);
    assert_eq!(bad.code, 125);
    assert_eq!(bad.stderr.trim(), "hiber: unknown capability 'SYS_WIZARD' (e.g. NET_ADMIN, SYS_PTRACE, or ALL)");
}

/// Attempts through `/proc`, each printing `NAME: refused` when it failed.
const SURFACES: &str = r#"
cat /proc/sys/vm/swappiness > /proc/sys/vm/swappiness 2>/dev/null && echo "sysctl: written" || echo "sysctl: refused"
echo h 2>/dev/null > /proc/sysrq-trigger && echo "sysrq: written" || echo "sysrq: refused"
mount -o remount,rw /proc/sys 2>/dev/null && echo "remount: done" || echo "remount: refused"
echo "keys: $(wc -c < /proc/keys) bytes"
echo "timer_list: $(wc -c < /proc/timer_list) bytes"
echo "acpi: $(ls -A /proc/acpi | wc -l) entries"
touch /proc/acpi/x 2>/dev/null && echo "acpi-write: done" || echo "acpi-write: refused"
"#;

fn assert_hidden(output: &str) {
    for attempt in ["sysctl", "sysrq", "remount", "acpi-write"] {
        assert!(output.contains(&format!("{attempt}: refused")), "{attempt} was not refused:\n{output}");
    }
    if std::path::Path::new("/proc/acpi").is_dir() {
        assert!(output.contains("acpi: 0 entries"), "/proc/acpi is not masked:\n{output}");
    }
    for masked in ["keys", "timer_list"] {
        assert!(output.contains(&format!("{masked}: 0 bytes")), "{masked} is not masked:\n{output}");
    }
}

#[test]
fn proc_paths_into_the_host_kernel_are_read_only_or_hidden_before_and_after_a_restore() {
    require!();
    // On the host the same write goes through (the value written is the one already there).
    let swappiness = std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    std::fs::write("/proc/sys/vm/swappiness", &swappiness).expect("the host may write its sysctl");
    assert!(!std::fs::read("/proc/timer_list").unwrap().is_empty(), "the host's timer_list has content");

    let home = Home::new();
    home.busybox();
    assert_hidden(&home.ok(&["run", "busybox", "sh", "-c", SURFACES]));
    let restored = restored_sleeper(&home);
    assert_hidden(&home.ok(&["exec", &restored, "sh", "-c", SURFACES]));
}

/// Attempts from a user and mount namespace made inside the sandbox (where its root holds every
/// capability of the new namespace), each printing `NAME: RESULT`.
const NESTED: &str = r#"
unshare -Urm sh -c 'grep ^CapEff: /proc/self/status'
unshare -Urm sh -c 'mount -o remount,rw /proc/sys' 2>/dev/null && echo "remount: done" || echo "remount: refused"
unshare -Urm sh -c 'umount /proc/sys' 2>/dev/null && echo "umount: done" || echo "umount: refused"
unshare -Urm sh -c 'cat /proc/sys/vm/swappiness > /proc/sys/vm/swappiness' 2>/dev/null && echo "sysctl: written" || echo "sysctl: refused"
unshare -Urmpf sh -c 'mount -t proc proc /tmp' 2>/dev/null && echo "proc: mounted" || echo "proc: refused"
unshare -Urm sh -c 'mkdir -p /tmp/m && mount -t cgroup -o memory x /tmp/m' 2>/dev/null && echo "cgroup: mounted" || echo "cgroup: refused"
"#;

#[test]
fn namespaces_made_inside_regain_nothing_on_the_host() {
    require!();
    let home = Home::new();
    home.busybox();
    let restored = restored_sleeper(&home);
    for output in [home.ok(&["run", "busybox", "sh", "-c", NESTED]), home.ok(&["exec", &restored, "sh", "-c", NESTED])]
    {
        assert!(
            output.contains("CapEff:\t000001ffffffffff"),
            "the nested root has its namespace's capabilities:\n{output}"
        );
        for attempt in ["remount", "umount", "sysctl", "proc", "cgroup"] {
            assert!(output.contains(&format!("{attempt}: refused")), "{attempt} was not refused:\n{output}");
        }
    }
}

#[test]
fn a_sandbox_can_neither_see_nor_signal_another() {
    require!();
    let home = Home::new();
    home.busybox();
    let other = home.detached(&["busybox", "sh", "-c", "echo secret > /tmp/secret; sleep 1000"]);
    let pid = home.host(&other).init_pid;
    let probe = format!(
        "kill -0 {pid} 2>/dev/null && echo 'signal: sent' || echo 'signal: refused'; \
         cat /proc/{pid}/root/tmp/secret 2>/dev/null || echo 'files: unreachable'; \
         ls /proc | grep -c '^[0-9]' | sed 's/^/pids: /'"
    );
    let output = home.ok(&["run", "busybox", "sh", "-c", &probe]);
    assert!(output.contains("signal: refused") && output.contains("files: unreachable"), "{output}");
    assert!(!output.contains("secret"), "{output}");
    // Its own shell, the pipeline's processes and init: nothing of the other sandbox or the host.
    let pids: usize = output.lines().find_map(|l| l.strip_prefix("pids: ")).unwrap().trim().parse().unwrap();
    assert!(pids <= 6, "{pids} processes visible:\n{output}");
    assert!(common::alive(pid as i64), "the other sandbox's init is unharmed");
}

/// The host's first disk in `/proc/partitions`: (major, minor).
fn host_disk() -> (u32, u32) {
    let partitions = std::fs::read_to_string("/proc/partitions").unwrap();
    let line = partitions.lines().skip(2).find(|l| !l.trim().is_empty()).expect("a disk");
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[0].parse().unwrap(), f[1].parse().unwrap())
}

/// Attempts on the host's disk, processes and cgroups, each printing `NAME: RESULT`: argument 1 is
/// a host process's pid, 2 and 3 the disk's major and minor.
const REACH: &str = r#"
import ctypes, errno, os, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def run(name, *argv):
    r = subprocess.run(argv, capture_output=True, text=True)
    print(name + ":", "ok" if r.returncode == 0 else "refused " + r.stderr.strip().replace("\n", " "))
run("mknod", "mknod", "/tmp/disk", "b", sys.argv[2], sys.argv[3])
run("dd", "dd", "if=/tmp/disk", "of=/dev/null", "bs=512", "count=1")
os.makedirs("/tmp/m", exist_ok=True)
run("mount-disk", "mount", "-o", "ro", "/tmp/disk", "/tmp/m")
run("mount-cgroup", "mount", "-t", "cgroup", "-o", "memory", "cgroup", "/tmp/m")
run("release_agent", "sh", "-c", "test -f /tmp/m/cgroup.procs && echo /tmp/x > /tmp/m/release_agent")
def attach(pid):
    if libc.ptrace(16, pid, 0, 0) != 0:
        return errno.errorcode[ctypes.get_errno()]
    libc.ptrace(17, pid, 0, 0)
    return "attached"
print("ptrace-host:", attach(int(sys.argv[1])))
child = os.fork()
if child == 0:
    time.sleep(100)
    os._exit(0)
print("ptrace-own:", attach(child))
os.kill(child, 9)
"#;

fn assert_out_of_reach(output: &str) {
    for attempt in ["mknod", "dd", "mount-disk", "mount-cgroup", "release_agent"] {
        let line = output.lines().find(|l| l.starts_with(&format!("{attempt}: "))).unwrap_or_default();
        assert!(line.contains("refused"), "{attempt} was not refused: {line:?}\n{output}");
    }
    assert!(output.contains("mknod: refused") && output.contains("Operation not permitted"), "{output}");
    assert!(output.contains("ptrace-host: ESRCH"), "a host process was reachable:\n{output}");
    assert!(output.contains("ptrace-own: attached"), "ptrace does not work inside:\n{output}");
}

#[test]
fn host_disks_processes_and_cgroups_are_out_of_reach_with_every_capability_before_and_after_a_restore() {
    require!();
    let dir = tempfile::tempdir().unwrap();
    let (major, minor) = host_disk();
    let node = dir.path().join("disk");
    // On the host, its root makes the node (this machine refuses even it the reading).
    let made = std::process::Command::new("mknod")
        .arg(&node)
        .args(["b", &major.to_string(), &minor.to_string()])
        .status()
        .unwrap();
    assert!(made.success(), "the host's root could not mknod");
    let host_process = common::Killed(std::process::Command::new("sleep").arg("100").spawn().unwrap());
    let pid = host_process.0.id().to_string();
    let args = [pid.as_str(), &major.to_string(), &minor.to_string()].map(String::from);

    let home = Home::new();
    home.debian();
    let mut run = vec!["run", "--cap-add", "ALL", "debian", "python3", "-c", REACH];
    run.extend(args.iter().map(String::as_str));
    assert_out_of_reach(&home.ok(&run));

    let id = home.detached(&["--cap-add", "ALL", "debian", "sleep", "1000"]);
    let snapshot = home.ok(&["snapshot", &id]);
    let restored = home.ok(&["restore", snapshot.trim()]).trim().to_string();
    let mut exec = vec!["exec", restored.as_str(), "python3", "-c", REACH];
    exec.extend(args.iter().map(String::as_str));
    assert_out_of_reach(&home.ok(&exec));
}

#[test]
fn reboot_without_the_filter_ends_only_the_sandbox() {
    require!();
    let home = Home::new();
    home.busybox();
    let other = home.detached(&["busybox", "sleep", "1000"]);
    let args = ["run", "--security-opt", "seccomp=unconfined", "--cap-add", "SYS_BOOT", "busybox", "sh", "-c"];
    let rebooted = home.run(&[&args[..], &["reboot -f; sleep 5; echo survived"]].concat());
    assert_ne!(rebooted.code, 0);
    assert!(!rebooted.stdout.contains("survived"), "reboot -f did not end the sandbox");
    assert!(rebooted.stderr.contains("the sandbox stopped"), "{}", rebooted.stderr);
    assert_eq!(home.sandbox(&other)["status"]["state"], "running", "another sandbox went down with it");
    assert_eq!(home.ok(&["exec", &other, "echo", "up"]).trim(), "up");
}
