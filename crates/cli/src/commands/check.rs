//! `hiber check`: can this machine run sandboxes?

use std::path::Path;

use anyhow::Result;
use hiber_sandbox::preflight;

pub fn check(_home: &Path, json: bool) -> Result<i32> {
    let checks = preflight::checks();
    if json {
        outln!("{}", serde_json::to_string_pretty(&checks)?)?;
    } else {
        for c in &checks {
            outln!("{:<4} {:<11} {}", if c.ok { "ok" } else { "FAIL" }, c.what, c.detail)?;
        }
    }
    Ok(if checks.iter().all(|c| c.ok) { 0 } else { 1 })
}
