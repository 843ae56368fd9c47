//! Durable, all-or-nothing file replacement and removal, and what is mounted where.
//!
//! A file is written to a temporary name in the same directory, synced, renamed over the target
//! and the directory synced: after a crash the target holds either the old or the new content.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Replaces `path` with `bytes` atomically and durably (mode 0644).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), crate::random_id(16)));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Writes `value` as pretty JSON to `path`, atomically and durably.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value).map_err(io::Error::other)?)
}

/// Reads a JSON file (unparsable content is `InvalidData`).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Removes `path` and syncs its directory, so the removal survives a crash.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    fs::remove_file(path)?;
    sync_dir(parent(path))
}

/// Syncs a directory, making renames, creations and removals of its entries durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Mount points at or below `dir` (an absolute, canonical path) in this mount namespace.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info).into_iter().filter(|m| m.starts_with(dir)).collect())
}

/// The mount points (5th field, octal escapes decoded) of a mountinfo text.
fn parse_mountinfo(info: &str) -> Vec<PathBuf> {
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| {
            let bytes = field.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                let octal = bytes.get(i + 1..i + 4).and_then(|d| {
                    let s = std::str::from_utf8(d).ok()?;
                    u8::from_str_radix(s, 8).ok()
                });
                match (bytes[i], octal) {
                    (b'\\', Some(b)) => {
                        out.push(b);
                        i += 4;
                    }
                    (b, _) => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            PathBuf::from(OsStr::from_bytes(&out))
        })
        .collect()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_mount_points_are_decoded() {
        let info = "22 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n\
                    30 22 0:5 / /var/cache/hiber/rootfs/.tmp-x/proc rw - proc proc rw\n\
                    31 22 0:6 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        let mounts = parse_mountinfo(info);
        assert_eq!(mounts[1], Path::new("/var/cache/hiber/rootfs/.tmp-x/proc"));
        assert_eq!(mounts[2], Path::new("/mnt/with space"));
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces_without_leaving_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_json_atomic(&path, &1).unwrap();
        write_json_atomic(&path, &[2, 3]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&path).unwrap(), [2, 3]);
        assert_eq!(entries(dir.path()), ["a.json"]);
        assert_eq!(read_json::<String>(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn failed_write_leaves_old_content_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the way makes the final rename fail.
        let path = dir.path().join("busy");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert_eq!(entries(dir.path()), ["busy"]);
        assert_eq!(entries(&path), ["inside"]);
        assert!(write_atomic(&dir.path().join("missing/a"), b"x").is_err());
    }

    #[test]
    fn remove_deletes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        write_atomic(&path, b"one").unwrap();
        remove_durably(&path).unwrap();
        assert!(entries(dir.path()).is_empty());
        assert!(remove_durably(&path).is_err());
    }
}
