//! `hiber check`: can this machine run sandboxes?

use std::path::Path;

use anyhow::Result;
use hiber_sandbox::cgroup::Hierarchy;
use hiber_sandbox::criu::Criu;
use hiber_sandbox::init_layer;
use serde::Serialize;

#[derive(Serialize)]
struct Check {
    what: &'static str,
    ok: bool,
    detail: String,
}

fn check_of<T, E: std::fmt::Display>(what: &'static str, r: Result<T, E>, detail: impl Fn(T) -> String) -> Check {
    match r {
        Ok(v) => Check { what, ok: true, detail: detail(v) },
        Err(e) => Check { what, ok: false, detail: e.to_string() },
    }
}

pub fn check(_home: &Path, json: bool) -> Result<i32> {
    let root = nix::unistd::Uid::effective().is_root();
    let overlay = std::fs::read_to_string("/proc/filesystems").unwrap_or_default().contains("overlay");
    let checks = vec![
        Check { what: "root", ok: root, detail: if root { "running as root".into() } else { "hiber needs root".into() } },
        Check {
            what: "overlayfs",
            ok: overlay,
            detail: if overlay { "available".into() } else { "not in /proc/filesystems".into() },
        },
        check_of("cgroups", Hierarchy::detect(), |h| match h {
            Hierarchy::V1(_) => "cgroup v1 (memory, cpu, pids, freezer)".into(),
            Hierarchy::V2(root) => format!("cgroup v2 at {}", root.display()),
        }),
        check_of("hiber-init", init_layer::locate_binary(), |p| p.display().to_string()),
        check_of("criu", Criu::locate(), |c| format!("{} at {}", c.version, c.path.display())),
    ];
    let ok = checks.iter().all(|c| c.ok);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!("{:<4} {:<11} {}", if c.ok { "ok" } else { "FAIL" }, c.what, c.detail);
        }
    }
    Ok(if ok { 0 } else { 1 })
}
