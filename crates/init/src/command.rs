//! Turning a [`ProcessSpec`] into what `execve` needs: the environment, the
//! working directory, and the program found through `PATH`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hiber_proto::{ProcessSpec, DEFAULT_PATH};

use crate::user::{self, Identity};
use nix::unistd::{access, AccessFlags};

/// Why a [`ProcessSpec`] cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// There is no program to run.
    #[error("argv is empty")]
    EmptyArgv,
    /// An environment entry has no `=` or an empty name.
    #[error("environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    /// A string holds a NUL byte, which `execve` cannot carry.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// The user or group to run as is not in the sandbox.
    #[error(transparent)]
    UnknownUser(#[from] user::UnknownUser),
}

/// A process ready to be started: every string already in C form, so the
/// forked child does not allocate.
#[derive(Debug)]
pub struct Command {
    /// `argv[0]` as the host gave it, for messages.
    pub name: String,
    /// The file to execute; `None` when `PATH` has no such program.
    pub program: Option<CString>,
    /// Arguments, `argv[0]` included.
    pub argv: Vec<CString>,
    /// Environment as `KEY=VALUE`.
    pub env: Vec<CString>,
    /// Working directory.
    pub cwd: CString,
    /// The ids to take before the exec; `None` to stay root.
    pub identity: Option<Identity>,
}

impl Command {
    /// Prepares `spec` to run in a sandbox called `hostname`.
    pub fn new(spec: &ProcessSpec, hostname: &str) -> Result<Command, CommandError> {
        let name = spec.argv.first().ok_or(CommandError::EmptyArgv)?.clone();
        let identity = user::lookup(&spec.user)?;
        let home = identity.as_ref().and_then(|i| i.home.as_deref()).unwrap_or("/root");
        let env = build_env(hostname, spec.tty, home, &spec.env)?;
        let cwd = if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() };
        let path = env.iter().find_map(|(k, v)| (k == "PATH").then_some(v.as_str()));
        let program = find_program(&name, path.unwrap_or(""), Path::new(cwd));
        Ok(Command {
            program: program
                .map(|p| CString::new(p.as_os_str().as_bytes()))
                .transpose()
                .map_err(|_| CommandError::Nul("argv"))?,
            argv: c_strings(spec.argv.iter().map(String::as_str), "argv")?,
            env: c_strings(env.iter().map(|(k, v)| format!("{k}={v}")), "env")?,
            cwd: CString::new(cwd).map_err(|_| CommandError::Nul("cwd"))?,
            identity,
            name,
        })
    }
}

fn c_strings<S: Into<Vec<u8>>>(
    items: impl Iterator<Item = S>,
    what: &'static str,
) -> Result<Vec<CString>, CommandError> {
    items.map(|s| CString::new(s).map_err(|_| CommandError::Nul(what))).collect()
}

/// The environment of a new process: `PATH`, `HOME` (`home`), `HOSTNAME` and (for a
/// terminal) `TERM`, then each `KEY=VALUE` of `extra`, which replaces a
/// variable of the same name or is appended. Order is kept.
pub fn build_env(
    hostname: &str,
    tty: bool,
    home: &str,
    extra: &[String],
) -> Result<Vec<(String, String)>, CommandError> {
    let mut env = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOME".to_string(), home.to_string()),
        ("HOSTNAME".to_string(), hostname.to_string()),
    ];
    if tty {
        env.push(("TERM".to_string(), "xterm".to_string()));
    }
    for entry in extra {
        let Some((key, value)) = entry.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(CommandError::BadEnv(entry.clone()));
        };
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => env.push((key.to_string(), value.to_string())),
        }
    }
    Ok(env)
}

/// Finds the file to execute for `name`, like `execvp`: a name with a `/` is
/// used as it is; otherwise the first executable regular file `dir/name` for
/// the directories of `path` (relative ones, and the empty one, taken from
/// `cwd`). When only non-executable candidates exist, the first one is
/// returned, so that executing it reports "permission denied". `None` means
/// there is no such program.
pub fn find_program(name: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let mut denied = None;
    for dir in path.split(':') {
        let candidate = cwd.join(dir).join(name);
        let Ok(meta) = candidate.metadata() else { continue };
        if meta.is_file() && access(&candidate, AccessFlags::X_OK).is_ok() {
            return Some(candidate);
        }
        denied.get_or_insert(candidate);
    }
    denied
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn spec(argv: &[&str]) -> ProcessSpec {
        ProcessSpec::command(argv.iter().copied())
    }

    #[test]
    fn defaults_then_overrides_in_order() {
        let env = build_env("box", false, "/root", &["HOME=/home/a".into(), "X=1=2".into()]).unwrap();
        assert_eq!(
            env,
            vec![
                ("PATH".into(), DEFAULT_PATH.into()),
                ("HOME".into(), "/home/a".into()),
                ("HOSTNAME".into(), "box".into()),
                ("X".into(), "1=2".into()),
            ]
        );
        let tty = build_env("box", true, "/root", &["TERM=vt100".into(), "E=".into()]).unwrap();
        assert!(tty.contains(&("TERM".into(), "vt100".into())));
        assert!(tty.contains(&("E".into(), String::new())));
    }

    #[test]
    fn bad_env_entries_are_rejected() {
        assert!(matches!(build_env("h", false, "/root", &["NOEQUALS".into()]), Err(CommandError::BadEnv(_))));
        assert!(matches!(build_env("h", false, "/root", &["=v".into()]), Err(CommandError::BadEnv(_))));
    }

    #[test]
    fn path_lookup_prefers_executables_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let write = |path: &Path, mode| {
            fs::write(path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&a.join("tool"), 0o644);
        write(&b.join("tool"), 0o755);
        write(&a.join("plain"), 0o644);
        fs::create_dir(b.join("dir")).unwrap();
        let path = format!("{}:{}", a.display(), b.display());
        let root = Path::new("/");
        assert_eq!(find_program("tool", &path, root), Some(b.join("tool")));
        assert_eq!(find_program("plain", &path, root), Some(a.join("plain")));
        assert_eq!(find_program("dir", &path, root), Some(b.join("dir")));
        assert_eq!(find_program("missing", &path, root), None);
        assert_eq!(find_program("", &path, root), None);
        assert_eq!(find_program("./x", &path, root), Some(PathBuf::from("./x")));
        // Relative and empty PATH entries count from the working directory.
        assert_eq!(find_program("tool", "b", dir.path()), Some(b.join("tool")));
        assert_eq!(find_program("tool", "", &b), Some(b.join("tool")));
    }

    #[test]
    fn command_uses_the_environment_path_and_defaults_cwd() {
        let cmd = Command::new(&spec(&["sh", "-c", "true"]), "box").unwrap();
        assert!(cmd.program.unwrap().to_bytes().ends_with(b"/sh"));
        assert_eq!(cmd.cwd.to_bytes(), b"/");
        assert_eq!(cmd.argv.len(), 3);
        assert!(cmd.env.iter().any(|e| e.to_bytes() == b"HOSTNAME=box"));

        let mut no_path = spec(&["sh"]);
        no_path.env = vec!["PATH=/nonexistent".into()];
        no_path.cwd = "/tmp".into();
        let cmd = Command::new(&no_path, "box").unwrap();
        assert!(cmd.program.is_none());
        assert_eq!(cmd.cwd.to_bytes(), b"/tmp");
    }

    #[test]
    fn unusable_specs_are_errors() {
        assert!(matches!(Command::new(&spec(&[]), "h"), Err(CommandError::EmptyArgv)));
        assert!(matches!(Command::new(&spec(&["a\0b"]), "h"), Err(CommandError::Nul("argv"))));
        let mut nul_env = spec(&["sh"]);
        nul_env.env = vec!["A=\0".into()];
        assert!(matches!(Command::new(&nul_env, "h"), Err(CommandError::Nul("env"))));
    }
}
