//! hiber-init as CRIU's action script during a restore, on the host, not in a sandbox.
//!
//! A sandbox with its own user namespace has its network namespace made by CRIU (`--empty-ns
//! net`), inside that user namespace: a namespace hiber made beforehand would belong to the
//! host's and the restored tree could not join it. CRIU's new namespace has its loopback down.
//! At CRIU's `post-setup-namespaces` action, when the namespaces exist (the old hostname
//! restored) and no restored process runs yet, this hook joins them, brings the loopback up (so restored sockets on 127.0.0.1 work
//! from the first instruction) and gives the sandbox its new hostname. Every other action is a
//! no-op.

use std::fs::File;

use hiber_proto::{CRIU_ACTION_ENV, CRIU_INIT_PID_ENV, RESTORE_HOSTNAME_ENV};
use nix::sched::{setns, CloneFlags};

/// If this process was started as CRIU's action script, runs it and returns its exit code.
pub fn run_if_called() -> Option<i32> {
    let action = std::env::var(CRIU_ACTION_ENV).ok()?;
    if action != "post-setup-namespaces" {
        return Some(0);
    }
    Some(match set_up_namespaces() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hiber restore hook: {e}");
            1
        }
    })
}

fn set_up_namespaces() -> Result<(), String> {
    let pid = std::env::var(CRIU_INIT_PID_ENV).map_err(|_| format!("{CRIU_INIT_PID_ENV} is not set"))?;
    let join = |kind: &str, flag: CloneFlags| {
        let path = format!("/proc/{pid}/ns/{kind}");
        let ns = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        setns(&ns, flag).map_err(|e| format!("joining {path}: {e}"))
    };
    join("net", CloneFlags::CLONE_NEWNET)?;
    hiber_common::net::loopback_up().map_err(|e| format!("loopback up: {e}"))?;
    if let Ok(hostname) = std::env::var(RESTORE_HOSTNAME_ENV) {
        join("uts", CloneFlags::CLONE_NEWUTS)?;
        nix::unistd::sethostname(&hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
    }
    Ok(())
}
