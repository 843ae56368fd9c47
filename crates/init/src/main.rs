//! hiber-init: PID 1 of every hiber sandbox.
//!
//! It reaps every process, starts the sandbox's main process (and exits
//! with its status), and serves the host on a Unix socket: pings, signals,
//! and execs whose stdio it streams and which survive the host going away.
//! It also relays the in-sandbox SDK's calls (its own socket) to the host.
//! Everything runs on one thread with plain fds, so CRIU can checkpoint it
//! between requests.

mod attach;
mod buffer;
mod command;
mod config;
mod connections;
mod diag;
mod exec;
mod reaper;
mod sdk;
mod server;
mod shutdown;
mod spawn;
mod table;
mod user;
mod wire;

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::rc::Rc;

use hiber_proto::{InitConfig, ProcessSpec};
use tokio::task::{spawn_local, LocalSet};

use crate::config::Paths;
use crate::diag::diag;
use crate::exec::Exec;
use crate::reaper::Reaper;
use crate::shutdown::StopSignals;
use crate::table::{ExecError, ExecTable};

fn main() {
    std::process::exit(run());
}

/// Sets up the run directory, log and configuration, then supervises;
/// returns the exit status.
fn run() -> i32 {
    let paths = Paths::from_env();
    if let Err(e) = DirBuilder::new().recursive(true).mode(0o755).create(&paths.run_dir) {
        diag!("cannot create {}: {e}", paths.run_dir.display());
        return 1;
    }
    if let Err(e) = diag::open(&paths.init_log) {
        diag!("cannot open {}: {e}", paths.init_log.display());
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let config = match config::parse_args(&args) {
        Ok(config) => config,
        Err(e) => {
            diag!("{e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            diag!("cannot start the event loop: {e}");
            return 1;
        }
    };
    LocalSet::new().block_on(&runtime, supervise(paths, config))
}

/// Listens, starts the main process, and waits for it to end or for a stop
/// signal.
async fn supervise(paths: Paths, config: InitConfig) -> i32 {
    // The host already made us a session leader; CRIU needs the tree's root
    // to be one, so make sure (this fails harmlessly when we already are).
    let _ = nix::unistd::setsid();
    let pid1 = nix::unistd::getpid().as_raw() == 1;
    if !pid1 {
        // Not a sandbox's PID 1 (tests): still be the one orphans go to.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            diag!("cannot become a child subreaper: {e}");
        }
    }
    let hostname = match config.hostname.is_empty() {
        false => config.hostname,
        true => nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let table = Rc::new(RefCell::new(ExecTable::new(hostname)));
    let (reaper, mut stop) = match (Reaper::new(table.clone()), StopSignals::new()) {
        (Ok(reaper), Ok(stop)) => (reaper, stop),
        (Err(e), _) | (_, Err(e)) => {
            diag!("cannot catch signals: {e}");
            return 1;
        }
    };
    let (listener, sdk_listener) = match (server::bind(&paths.socket, 0o600), server::bind(&paths.sdk_socket, 0o666)) {
        (Ok(listener), Ok(sdk_listener)) => (listener, sdk_listener),
        (Err(e), _) | (_, Err(e)) => {
            diag!("{e}");
            return 1;
        }
    };
    let main = match &config.main {
        Some(spec) => match start_main(&table, spec, &paths.main_log) {
            Ok(main) => Some(main),
            Err(code) => return code,
        },
        None => None,
    };
    spawn_local(reaper.run());
    let sdk = sdk::Sdk::new();
    spawn_local(sdk::listen(sdk_listener, sdk.clone()));
    spawn_local(server::serve(listener, table.clone(), sdk));
    diag!("listening on {}", paths.socket.display());
    let signal = match main {
        Some(main) => tokio::select! {
            code = main.wait() => {
                diag!("main process exited with status {code}");
                return code;
            }
            signal = stop.recv() => signal,
        },
        None => stop.recv().await,
    };
    shutdown::stop(signal, &table, pid1).await
}

/// Starts the main process, its output appended to `log`; on failure, the
/// status hiber-init exits with (2 for a spec that cannot run at all).
fn start_main(table: &RefCell<ExecTable>, spec: &ProcessSpec, log: &Path) -> Result<Rc<Exec>, i32> {
    let file = OpenOptions::new().append(true).create(true).mode(0o644).open(log).map_err(|e| {
        diag!("cannot open {}: {e}", log.display());
        1
    })?;
    table.borrow_mut().start_main(spec, file).map_err(|e| {
        diag!("main process: {e}");
        match e {
            ExecError::Command(_) => 2,
            _ => 1,
        }
    })
}
