//! `hiber exec`: run a command in a running sandbox.

use std::path::Path;

use anyhow::Result;
use hiber_image::ImageStore;
use hiber_sandbox::with_image_environment;

use super::{backend, exec_id, process_spec};
use crate::attach;
use crate::cli::ExecArgs;

pub fn exec(home: &Path, args: ExecArgs) -> Result<i32> {
    let process = process_spec(&args.process, args.command)?;
    let backend = backend(home)?;
    let sandbox = backend.find(&args.sandbox)?;
    // As `docker exec`: the image's user, environment and working directory (if the image is
    // still there; a sandbox restored after its image was removed runs it as given).
    let process = match ImageStore::open(home)?.get(&sandbox.image) {
        Ok(image) => with_image_environment(process, &image.config),
        Err(_) => process,
    };
    attach::exec(backend, &sandbox.id, &exec_id(), process, args.process.interactive)
}
