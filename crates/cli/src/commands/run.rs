//! `hiber run`: create a sandbox and run a command in it.

use std::path::Path;

use anyhow::{bail, Result};
use hiber_image::ImageStore;
use hiber_sandbox::{with_image_defaults, Confinement, Limits, SandboxSpec};

use super::{backend, exec_id, process_spec};
use crate::attach;
use crate::cli::RunArgs;

pub fn run(home: &Path, args: RunArgs) -> Result<i32> {
    let limits = Limits {
        memory_bytes: args.memory.as_deref().map(Limits::parse_memory).transpose()?,
        cpus: args.cpus.as_deref().map(Limits::parse_cpus).transpose()?,
        pids: args.pids.as_deref().map(Limits::parse_pids).transpose()?,
    };
    let process = process_spec(&args.process, args.command)?;
    if args.detach && (args.process.interactive || args.process.tty) {
        bail!("-d cannot be combined with -i or -t: use `hiber exec -it` to get a shell in a detached sandbox");
    }
    let backend = backend(home)?;
    let confinement = Confinement::from_options(&args.security_opt, &args.cap_add, &args.cap_drop)?;
    // A detached command is the sandbox's main process, which the backend gives the image's
    // defaults; an attached one is exec'd into it, with them given here.
    let main = args.detach.then(|| process.clone());
    let image = args.image.clone();
    let spec = SandboxSpec { name: args.name, image: args.image, limits, main, confinement };
    let id = backend.create(spec)?.id;
    if args.detach {
        outln!("{id}")?;
        return Ok(0);
    }
    // Attached: like `docker run --rm`.
    let process = match ImageStore::open(home)?.get(&image) {
        Ok(image) => with_image_defaults(process, &image.config),
        Err(e) => {
            let _ = backend.remove(&id, true);
            return Err(e.into());
        }
    };
    let result = attach::exec(backend.clone(), &id, &exec_id(), process, args.process.interactive);
    let removed = backend.remove(&id, true);
    let code = result?;
    removed?;
    Ok(code)
}
