//! Diagnostics: one-line messages appended to hiber-init's log file (never
//! to stdout, which belongs to nobody).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;

static LOG: OnceLock<File> = OnceLock::new();

/// Opens (appending, creating it 0644) the log that [`diag!`] writes to.
/// Until it is open, messages go to stderr.
pub fn open(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new().append(true).create(true).mode(0o644).open(path)?;
    // A second call keeps the first file; hiber-init opens its log once.
    let _ = LOG.set(file);
    Ok(())
}

/// Appends one line: seconds since the epoch, then `message` with its line
/// breaks turned into spaces. Failures to write are ignored: there is
/// nowhere else to report them.
pub fn line(message: fmt::Arguments<'_>) {
    let secs = hiber_common::unix_secs();
    let text = message.to_string().replace(['\n', '\r'], " ");
    let entry = format!("{secs} hiber-init: {text}\n");
    match LOG.get() {
        // One write(2) on an O_APPEND file: lines never interleave.
        Some(mut file) => drop(file.write_all(entry.as_bytes())),
        None => drop(io::stderr().write_all(entry.as_bytes())),
    }
}

/// Writes a diagnostic line, formatted like `format!`.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::diag::line(format_args!($($arg)*))
    };
}
pub(crate) use diag;
