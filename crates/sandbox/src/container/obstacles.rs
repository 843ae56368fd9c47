//! What a sandbox's processes hold that CRIU cannot save, found by looking at their open files
//! and namespaces before a dump: the snapshot is refused in one line naming the process and the resource, and
//! nothing of the sandbox has changed (CRIU itself fails late and cryptically: an io_uring
//! instance gives "Message reply from daemon is trimmed").

use std::fs;

/// The kinds of open file CRIU 4.2 cannot dump, by the name `/proc/PID/fd/N` links to.
const UNSUPPORTED: [(&str, &str); 6] = [
    ("anon_inode:[io_uring]", "an io_uring instance"),
    ("anon_inode:[perf_event]", "a perf event"),
    ("anon_inode:bpf-map", "a BPF map"),
    ("anon_inode:bpf-prog", "a BPF program"),
    ("anon_inode:bpf_link", "a BPF link"),
    ("anon_inode:[userfaultfd]", "a userfaultfd"),
];

/// What host process `host_pid` holds that CRIU cannot save, one line each, e.g. `process 7
/// (python3 serve.py) holds an io_uring instance (fd 3)` (7: its pid inside the sandbox).
/// `pid_namespace` is the sandbox's (`/proc/INIT/ns/pid`'s link).
pub fn describe(host_pid: i32, pid_namespace: &str) -> Vec<String> {
    let who = || format!("process {} ({})", inner_pid(host_pid), command(host_pid));
    let mut found = Vec::new();
    let own = self::pid_namespace(host_pid);
    if !own.is_empty() && own != pid_namespace {
        // Chromium's own sandbox makes these, for instance.
        found.push(format!("{} is in a nested pid namespace, which CRIU cannot dump", who()));
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{host_pid}/fd")) else { return found };
    let mut held: Vec<(u32, &str)> = fds
        .flatten()
        .filter_map(|fd| {
            let target = fs::read_link(fd.path()).ok()?;
            let what = resource(&target.to_string_lossy())?;
            Some((fd.file_name().to_string_lossy().parse().ok()?, what))
        })
        .collect();
    held.sort();
    found.extend(held.into_iter().map(|(fd, what)| format!("{} holds {what} (fd {fd})", who())));
    found
}

/// The link naming the pid namespace of host process `pid` (empty when it is gone).
pub fn pid_namespace(pid: i32) -> String {
    fs::read_link(format!("/proc/{pid}/ns/pid")).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default()
}

/// What CRIU cannot save of an open file linked as `target`, if anything.
fn resource(target: &str) -> Option<&'static str> {
    UNSUPPORTED.iter().find(|(link, _)| *link == target).map(|(_, what)| *what)
}

/// The pid of host process `pid` as the sandbox sees it: the second `NSpid` (the first is the
/// host's; later ones are those of namespaces nested inside the sandbox).
fn inner_pid(pid: i32) -> i32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ids: Vec<i32> = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| ids.split_whitespace().filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default();
    ids.get(1).or(ids.first()).copied().unwrap_or(pid)
}

/// The command line of host process `pid`, on one line and shortened for a message.
fn command(pid: i32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // Arguments may hold newlines (`python3 -c SCRIPT`): one line, single spaces.
    let text = String::from_utf8_lossy(&raw);
    let line =
        text.split(|c: char| c == '\0' || c.is_whitespace()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_files_are_named_and_others_pass() {
        assert_eq!(resource("anon_inode:[io_uring]"), Some("an io_uring instance"));
        assert_eq!(resource("anon_inode:bpf-map"), Some("a BPF map"));
        for fine in ["anon_inode:inotify", "anon_inode:[eventfd]", "socket:[1234]", "/dev/null", "pipe:[5]"] {
            assert_eq!(resource(fine), None, "{fine}");
        }
    }

    #[test]
    fn a_process_without_such_files_has_none() {
        let me = std::process::id() as i32;
        assert!(describe(me, &pid_namespace(me)).is_empty());
        assert!(describe(i32::MAX, &pid_namespace(me)).is_empty(), "a process that is gone");
        let other = describe(me, "pid:[1]");
        assert_eq!(other.len(), 1);
        assert!(other[0].ends_with("is in a nested pid namespace, which CRIU cannot dump"), "{other:?}");
        assert_eq!(inner_pid(std::process::id() as i32), std::process::id() as i32);
        assert!(!command(std::process::id() as i32).is_empty());
    }
}
