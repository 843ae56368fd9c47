//! Standard output of commands. A reader that went away (`hiber ps | head -1`) ends a command
//! quietly with the status a tool killed by SIGPIPE has: SIGPIPE itself stays ignored, because
//! hiber also writes to sockets of sandboxes that a snapshot may close under it.

use std::io::{self, Write};

/// The status of a command whose standard output was closed (128 + SIGPIPE).
pub const CLOSED_STATUS: i32 = 128 + libc::SIGPIPE;

/// The reader of standard output went away.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct Closed;

/// Standard output, whose broken-pipe errors carry [`Closed`].
pub struct Stdout(io::Stdout);

/// Standard output for a command's results.
pub fn stdout() -> Stdout {
    Stdout(io::stdout())
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

fn mark(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, Closed)
    } else {
        error
    }
}

/// Whether `error` is (or was caused by) a closed standard output.
pub fn is_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<Closed>()
            || cause.downcast_ref::<io::Error>().and_then(|e| e.get_ref()).is_some_and(|inner| inner.is::<Closed>())
    })
}

/// `println!` that returns an `io::Result` instead of panicking on a closed standard output.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!($crate::output::stdout(), $($arg)*)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_recognised_through_context() {
        let error = anyhow::Error::from(mark(io::Error::from(io::ErrorKind::BrokenPipe))).context("printing");
        assert!(is_closed(&error));
        let other = anyhow::Error::from(mark(io::Error::from(io::ErrorKind::StorageFull)));
        assert!(!is_closed(&other));
        // A broken pipe elsewhere (a socket to a sandbox) is a real failure.
        assert!(!is_closed(&anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe))));
    }
}
