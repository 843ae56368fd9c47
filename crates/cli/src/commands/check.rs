//! `hiber check`: can this machine run sandboxes?

use std::path::Path;

use anyhow::Result;
use hiber_sandbox::preflight;

pub fn check(_home: &Path, json: bool) -> Result<i32> {
    let checks = preflight::checks();
    if json {
        outln!("{}", serde_json::to_string_pretty(&checks)?)?;
    } else {
        let width = checks.iter().map(|c| c.what.len()).max().unwrap_or(0);
        for c in &checks {
            outln!("{:<4} {:<width$} {}", if c.ok { "ok" } else { "FAIL" }, c.what, c.detail)?;
        }
    }
    Ok(if checks.iter().all(|c| c.ok) { 0 } else { 1 })
}
