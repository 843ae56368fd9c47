//! Finding the Debian mirror this machine already uses, from its apt configuration.
//!
//! apt reads `sources.list`, then `sources.list.d/*.list` (one-line format) and
//! `sources.list.d/*.sources` (deb822 format) in file-name order. The mirror is the first
//! `deb` entry with an http(s) URI that serves the wanted suite with component `main` and is not
//! a security archive.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors from looking up the mirror.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// No apt source serves the suite.
    #[error(
        "no apt source in {apt_dir}/sources.list or {apt_dir}/sources.list.d serves '{suite} main' over http(s): add one (e.g. 'deb http://<mirror>/debian {suite} main')"
    )]
    NotFound {
        /// The apt configuration directory searched.
        apt_dir: PathBuf,
        /// The suite looked for.
        suite: String,
    },
    /// An apt configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
}

/// One source entry, from either format.
#[derive(Debug, Default, PartialEq)]
struct Entry {
    types: Vec<String>,
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    enabled: bool,
}

/// The mirror URI serving `suite` in the apt configuration under `apt_dir` (`/etc/apt`).
pub(crate) fn find(apt_dir: &Path, suite: &str) -> Result<String, MirrorError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MirrorError::Read { path, source }
    };
    let mut entries = Vec::new();
    let main = apt_dir.join("sources.list");
    match fs::read_to_string(&main) {
        Ok(text) => entries.extend(parse_one_line(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(read_err(&main)(e)),
    }
    let parts = apt_dir.join("sources.list.d");
    let mut files = Vec::new();
    match fs::read_dir(&parts) {
        Ok(dir) => {
            for entry in dir {
                files.push(entry.map_err(read_err(&parts))?.path());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(read_err(&parts)(e)),
    }
    files.sort();
    for file in files {
        let parse = match file.extension().and_then(|e| e.to_str()) {
            Some("list") => parse_one_line,
            Some("sources") => parse_deb822,
            _ => continue,
        };
        let text = fs::read_to_string(&file).map_err(read_err(&file))?;
        entries.extend(parse(&text));
    }
    pick(&entries, suite)
        .ok_or_else(|| MirrorError::NotFound { apt_dir: apt_dir.to_path_buf(), suite: suite.to_string() })
}

/// The first URI of an enabled `deb` entry serving `suite`/main over http(s), not security.
fn pick(entries: &[Entry], suite: &str) -> Option<String> {
    entries
        .iter()
        .filter(|e| {
            e.enabled
                && e.types.iter().any(|t| t == "deb")
                && e.suites.iter().any(|s| s == suite)
                && e.components.iter().any(|c| c == "main")
        })
        .flat_map(|e| e.uris.iter())
        .find(|uri| {
            let lower = uri.to_ascii_lowercase();
            (lower.starts_with("http://") || lower.starts_with("https://")) && !lower.contains("security")
        })
        .cloned()
}

/// Parses the one-line format: `deb [options] uri suite component...`, `#` starts a comment.
fn parse_one_line(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(kind) = words.next() else { continue };
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let close = rest.iter().position(|w| w.ends_with(']'));
            match close {
                Some(i) => {
                    rest.drain(..=i);
                }
                None => continue,
            }
        }
        if rest.len() < 2 {
            continue;
        }
        entries.push(Entry {
            types: vec![kind.to_string()],
            uris: vec![rest[0].to_string()],
            suites: vec![rest[1].to_string()],
            components: rest[2..].iter().map(|s| s.to_string()).collect(),
            enabled: true,
        });
    }
    entries
}

/// Parses the deb822 format: paragraphs of `Field: value` lines separated by blank lines;
/// lines starting with `#` are comments, lines starting with white space continue a field.
fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut current: Option<Entry> = None;
    let mut field = String::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            entries.extend(current.take());
            continue;
        }
        let entry = current.get_or_insert_with(|| Entry { enabled: true, ..Entry::default() });
        let value = if line.starts_with([' ', '\t']) {
            line
        } else if let Some((key, value)) = line.split_once(':') {
            field = key.trim().to_ascii_lowercase();
            value
        } else {
            continue;
        };
        let words = value.split_whitespace().map(str::to_string);
        match field.as_str() {
            "types" => entry.types.extend(words),
            "uris" => entry.uris.extend(words),
            "suites" => entry.suites.extend(words),
            "components" => entry.components.extend(words),
            "enabled" => entry.enabled = !value.trim().eq_ignore_ascii_case("no"),
            _ => {}
        }
    }
    entries.extend(current);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    // Host names below are reserved example domains (RFC 2606), not real mirrors.
    const ONE_LINE: &str = "\
# deb http://commented.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian bookworm main contrib # trailing
deb http://later.example/debian bookworm main
";

    const DEB822: &str = "\
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

# Types: deb
# URIs: http://commented.example/debian

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: https://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----
";

    #[test]
    fn one_line_format_skips_comments_security_and_sources() {
        let entries = parse_one_line(ONE_LINE);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[2].uris, ["http://mirror.example/debian"]);
        assert_eq!(entries[2].components, ["main", "contrib"]);
        assert_eq!(pick(&entries, "bookworm").as_deref(), Some("http://mirror.example/debian"));
    }

    #[test]
    fn deb822_format_skips_disabled_comments_and_security() {
        let entries = parse_deb822(DEB822);
        assert_eq!(entries.len(), 3);
        assert!(!entries[0].enabled);
        assert_eq!(entries[2].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(pick(&entries, "bookworm").as_deref(), Some("https://mirror.example/debian"));
        assert_eq!(pick(&entries, "trixie"), None);
    }

    #[test]
    fn security_archive_serving_the_suite_is_skipped() {
        let entries = parse_one_line(
            "deb http://security.example/debian-security bookworm main\n\
             deb cdrom:[Debian]/ bookworm main\n\
             deb http://mirror.example/debian bookworm contrib\n",
        );
        assert_eq!(pick(&entries, "bookworm"), None);
    }

    #[test]
    fn reads_files_in_apt_order() {
        let apt = tempfile::tempdir().unwrap();
        let d = apt.path().join("sources.list.d");
        fs::create_dir(&d).unwrap();
        fs::write(apt.path().join("sources.list"), "# nothing here\n").unwrap();
        fs::write(d.join("b.sources"), DEB822).unwrap();
        fs::write(d.join("c.list"), "deb http://c.example/debian bookworm main\n").unwrap();
        fs::write(d.join("a.list.disabled"), "deb http://off.example/debian bookworm main\n").unwrap();
        assert_eq!(find(apt.path(), "bookworm").unwrap(), "https://mirror.example/debian");

        fs::write(d.join("a.list"), "deb http://a.example/debian bookworm main\n").unwrap();
        assert_eq!(find(apt.path(), "bookworm").unwrap(), "http://a.example/debian");

        let err = find(apt.path(), "trixie").unwrap_err().to_string();
        assert!(err.starts_with("no apt source") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn missing_apt_directory_means_no_mirror() {
        let apt = tempfile::tempdir().unwrap();
        let missing = apt.path().join("none");
        assert!(matches!(find(&missing, "bookworm"), Err(MirrorError::NotFound { .. })));
    }
}
