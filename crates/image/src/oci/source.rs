//! Where an image's files are read from: an OCI layout directory, or a tar archive (an OCI
//! layout packed with `tar`, or `docker save`'s output) read in place through an index of its
//! entries.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use super::OciError;

/// Documents (index, manifests, configs) larger than this are refused.
const DOCUMENT_LIMIT: u64 = 4 << 20;

/// A file of an image being read, and its size.
pub(crate) type OpenFile = (Box<dyn Read + Send>, u64);

/// An image's files.
pub(crate) enum Source {
    /// An OCI layout directory.
    Dir(PathBuf),
    /// A tar archive and, per regular file, where its bytes are and how many.
    Tar { path: PathBuf, files: HashMap<String, (u64, u64)> },
}

impl Source {
    /// The directory or archive at `path`.
    pub(crate) fn open(path: &Path) -> Result<Source, OciError> {
        let bad = |reason: String| OciError::Bad { path: path.to_path_buf(), reason };
        if path.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut files = HashMap::new();
        let mut links = Vec::new();
        let mut archive = tar::Archive::new(file);
        // Seeking over file data: only the headers are read.
        for entry in archive.entries_with_seek().map_err(|e| bad(format!("not a tar archive ({e})")))? {
            let entry = entry.map_err(|e| bad(format!("not a tar archive ({e})")))?;
            let name = normal(&entry.path().map_err(|e| bad(e.to_string()))?);
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    files.insert(name, (entry.raw_file_position(), entry.size()));
                }
                // `docker save` links a layer it has already written.
                tar::EntryType::Symlink => {
                    if let Ok(Some(target)) = entry.link_name() {
                        let dir = Path::new(&name).parent().unwrap_or(Path::new("")).to_path_buf();
                        links.push((name, normal(&dir.join(target))));
                    }
                }
                _ => {}
            }
        }
        for (name, target) in links {
            if let Some(&place) = files.get(&target) {
                files.insert(name, place);
            }
        }
        Ok(Source::Tar { path: path.to_path_buf(), files })
    }

    /// Where the image is.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Source::Dir(path) | Source::Tar { path, .. } => path,
        }
    }

    /// Whether file `name` (relative, `/`-separated) is there.
    pub(crate) fn has(&self, name: &str) -> bool {
        match self {
            Source::Dir(dir) => safe(name).is_some_and(|rel| dir.join(rel).is_file()),
            Source::Tar { files, .. } => files.contains_key(&normal(Path::new(name))),
        }
    }

    /// File `name` and its size; `None` when it is not there.
    pub(crate) fn open_file(&self, name: &str) -> Result<Option<OpenFile>, OciError> {
        let io = |e: io::Error| OciError::Bad { path: self.path().to_path_buf(), reason: format!("{name}: {e}") };
        match self {
            Source::Dir(dir) => {
                let Some(rel) = safe(name) else { return Ok(None) };
                match File::open(dir.join(rel)) {
                    Ok(file) => {
                        let size = file.metadata().map_err(io)?.len();
                        Ok(Some((Box::new(file), size)))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io(e)),
                }
            }
            Source::Tar { path, files } => {
                let Some(&(offset, size)) = files.get(&normal(Path::new(name))) else { return Ok(None) };
                let mut file = File::open(path).map_err(io)?;
                file.seek(SeekFrom::Start(offset)).map_err(io)?;
                Ok(Some((Box::new(file.take(size)), size)))
            }
        }
    }

    /// The whole of a small file `name` (a JSON document).
    pub(crate) fn read(&self, name: &str) -> Result<Vec<u8>, OciError> {
        let missing = || OciError::Missing { path: self.path().to_path_buf(), what: name.to_string() };
        let (mut reader, size) = self.open_file(name)?.ok_or_else(missing)?;
        if size > DOCUMENT_LIMIT {
            return Err(OciError::Bad {
                path: self.path().to_path_buf(),
                reason: format!("{name} is {size} bytes, more than a document may be"),
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| OciError::Bad { path: self.path().to_path_buf(), reason: format!("{name}: {e}") })?;
        Ok(bytes)
    }
}

/// `name` as a relative path with no `..`, or `None`.
fn safe(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)).then(|| path.to_path_buf())
}

/// A path as the archive index keys it: its normal components joined by `/` (`./a//b` → `a/b`;
/// `..` steps back).
fn normal(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_never_leave_the_layout() {
        assert_eq!(normal(Path::new("./blobs//sha256/x")), "blobs/sha256/x");
        assert_eq!(normal(Path::new("a/../b")), "b");
        assert!(safe("blobs/sha256/x").is_some());
        assert!(safe("../etc/passwd").is_none() && safe("/etc/passwd").is_none());
    }

    #[test]
    fn archives_are_read_in_place_with_their_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        let mut builder = tar::Builder::new(File::create(&path).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        builder.append_data(&mut header, "./abc/layer.tar", &b"hello"[..]).unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder.append_link(&mut link, "def/layer.tar", "../abc/layer.tar").unwrap();
        builder.finish().unwrap();
        drop(builder);
        let source = Source::open(&path).unwrap();
        assert!(source.has("abc/layer.tar") && source.has("def/layer.tar") && !source.has("ghi"));
        assert_eq!(source.read("def/layer.tar").unwrap(), b"hello");
        assert!(matches!(source.read("missing"), Err(OciError::Missing { .. })));
        let not_tar = dir.path().join("x");
        std::fs::write(&not_tar, vec![7u8; 1024]).unwrap();
        assert!(Source::open(&not_tar).is_err());
    }
}
