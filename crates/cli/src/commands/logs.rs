//! `hiber logs`: print a sandbox's main output.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::backend;
use crate::cli::LogsArgs;

pub fn logs(home: &Path, args: LogsArgs) -> Result<i32> {
    let backend = backend(home)?;
    let id = backend.find(&args.sandbox)?.id;
    let mut printed = 0u64;
    let mut out = crate::output::stdout();
    loop {
        let bytes = backend.main_log(&id, printed)?;
        if !bytes.is_empty() {
            out.write_all(&bytes)?;
            out.flush()?;
            printed += bytes.len() as u64;
        }
        if !args.follow || !backend.find(&id)?.status.is_running() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
