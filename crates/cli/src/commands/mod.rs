//! One module per command; `dispatch` routes the parsed command line.

mod bench;
mod check;
mod exec;
mod images;
mod lifecycle;
mod logs;
mod ps;
mod pull;
mod run;
mod serve;
mod session;
mod snapshot;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use hiber_proto::ProcessSpec;
use hiber_sandbox::{Backend, ContainerBackend};

use crate::cli::{Cli, Command, ProcessArgs};

/// Runs the command; returns the process exit code.
pub fn dispatch(cli: Cli) -> Result<i32> {
    let home = cli.home.as_path();
    match cli.command {
        Command::Run(args) => run::run(home, args),
        Command::Exec(args) => exec::exec(home, args),
        Command::Ps(args) => ps::ps(home, args.json),
        Command::Logs(args) => logs::logs(home, args),
        Command::Stop(args) => lifecycle::stop(home, args),
        Command::Rm(args) => lifecycle::rm(home, args),
        Command::Snapshot(args) => snapshot::snapshot(home, args),
        Command::Snapshots(args) => snapshot::list(home, args.json),
        Command::Restore(args) => snapshot::restore(home, args),
        Command::Fork(args) => snapshot::fork(home, args),
        Command::Images(args) => images::list(home, args.json),
        Command::Image(command) => images::image(home, command),
        Command::Pull(args) => pull::pull(home, args),
        Command::Check(args) => check::check(home, args.json),
        Command::Bench(command) => bench::bench(home, command),
        Command::Serve(args) => serve::serve(home, args),
        Command::Session(args) => session::session(home, args),
    }
}

/// Opens the sandbox backend on `home`: the one place that names it.
fn backend(home: &Path) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(ContainerBackend::open(home)?))
}

/// Builds the process to start from the shared flags.
fn process_spec(args: &ProcessArgs, argv: Vec<String>) -> Result<ProcessSpec> {
    for pair in &args.env {
        match pair.split_once('=') {
            Some((key, _)) if !key.is_empty() && !key.contains('\0') => {}
            _ => bail!("invalid environment variable '{pair}': use KEY=VALUE"),
        }
    }
    let cwd = args.workdir.clone().unwrap_or_default();
    if !cwd.is_empty() && !cwd.starts_with('/') {
        bail!("invalid working directory '{cwd}': it must be an absolute path");
    }
    Ok(ProcessSpec { argv, env: args.env.clone(), cwd, tty: args.tty, user: args.user.clone().unwrap_or_default() })
}

/// A fresh exec id.
fn exec_id() -> String {
    format!("exec-{}", hiber_common::random_id(16))
}
