//! `hiber logs`: print a sandbox's main output.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use hiber_sandbox::Backend;

use super::backend;
use crate::cli::LogsArgs;

pub fn logs(home: &Path, args: LogsArgs) -> Result<i32> {
    let backend = backend(home)?;
    let id = backend.find(&args.sandbox)?.record.id;
    let mut printed = 0u64;
    let mut out = crate::output::stdout();
    loop {
        // The log may move from a layer to the upper directory: look each time.
        if let Some(path) = backend.main_log(&id)? {
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(printed))?;
            printed += io::copy(&mut file, &mut out)?;
            out.flush()?;
        }
        if !args.follow || !backend.find(&id)?.status.is_running() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
