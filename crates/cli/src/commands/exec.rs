//! `hiber exec`: run a command in a running sandbox.

use std::path::Path;

use anyhow::Result;

use super::{backend, exec_id, process_spec};
use crate::attach;
use crate::cli::ExecArgs;

pub fn exec(home: &Path, args: ExecArgs) -> Result<i32> {
    let process = process_spec(&args.process, args.command)?;
    let backend = backend(home)?;
    let id = backend.find(&args.sandbox)?.id;
    attach::exec(backend, &id, &exec_id(), process, args.process.interactive)
}
