//! `hiber exec`: run a command in a running sandbox.

use std::path::Path;

use anyhow::Result;
use hiber_sandbox::Backend;

use super::{backend, exec_id, process_spec};
use crate::attach;
use crate::cli::ExecArgs;

pub fn exec(home: &Path, args: ExecArgs) -> Result<i32> {
    let process = process_spec(&args.process, args.command)?;
    let backend = backend(home)?;
    let info = backend.find(&args.sandbox)?;
    let conn = backend.connect(&info.record.id)?;
    let reconnect = || backend.connect(&info.record.id);
    attach::exec(conn, &reconnect, info.record.init_pid, &exec_id(), process, args.process.interactive)
}
