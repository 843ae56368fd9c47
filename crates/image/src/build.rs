//! Building an image from another with extra packages, files and commands: the base's layers
//! plus one new layer holding the changes.
//!
//! The steps run in the base's tree, mounted as an overlay whose upper directory is the new
//! layer's staging directory, through `chroot` in new mount and pid namespaces that keep the
//! host's network: `apt-get` and `pip` reach the package registries as the host does, and the
//! build leaves nothing running (the pid namespace dies with its first process). They run as
//! the host's root; what they write is shifted into the sandboxes' id range afterwards, like
//! any imported layer. The new layer is cached by a hash of the
//! base's layers and the steps (the files `--copy` brings included): building the same again
//! takes no time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids;

/// One step of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `apt-get install` these Debian packages.
    Apt(Vec<String>),
    /// `pip install` these Python packages (pip itself from Debian first, if the image has none).
    Pip(Vec<String>),
    /// Copy a host file or directory to a path of the image.
    Copy {
        /// On the host.
        src: PathBuf,
        /// In the image (absolute).
        dst: String,
    },
    /// Run a shell command.
    Run(String),
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A step failed.
    #[error("build step {step} ({what}) failed: {reason}")]
    Step {
        /// Its number, from 1.
        step: usize,
        /// What it was.
        what: String,
        /// The last lines it printed.
        reason: String,
    },
    /// A bad step.
    #[error("{0}")]
    Invalid(String),
    /// Mounting or cleaning up the build tree failed.
    #[error("{what}: {reason}")]
    Setup {
        /// What was being done.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

impl Step {
    /// The step as a shell command run in the image (`None` for a copy, done from the host).
    fn script(&self) -> Option<String> {
        const APT: &str =
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends";
        const CLEAN: &str = "apt-get clean && rm -rf /var/lib/apt/lists/*";
        match self {
            Step::Apt(packages) => Some(format!("{APT} {} && {CLEAN}", quoted(packages))),
            Step::Pip(packages) => Some(format!(
                "(command -v pip3 >/dev/null || ({APT} python3-pip && {CLEAN})) && \
                 pip3 install -q --no-cache-dir --break-system-packages --root-user-action=ignore {}",
                quoted(packages)
            )),
            Step::Copy { .. } => None,
            Step::Run(command) => Some(command.clone()),
        }
    }

    /// The step as the user wrote it.
    fn describe(&self) -> String {
        match self {
            Step::Apt(p) => format!("--apt {}", p.join(" ")),
            Step::Pip(p) => format!("--pip {}", p.join(" ")),
            Step::Copy { src, dst } => format!("--copy {}:{dst}", src.display()),
            Step::Run(c) => format!("--run {c}"),
        }
    }
}

/// A build file: its base (a `from IMAGE` line, if any) and its steps, in order, one per line
/// (`apt PKG...`, `pip PKG...`, `copy SRC DST`, `run COMMAND`; `#` starts a comment). A
/// relative `copy` source is taken from `dir`, the file's directory.
pub fn parse_build_file(text: &str, dir: &Path) -> Result<(Option<String>, Vec<Step>), BuildError> {
    let mut from = None;
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| BuildError::Invalid(format!("build file line {}: {why}: {line}", n + 1));
        let (word, rest) = line.split_once(char::is_whitespace).map_or((line, ""), |(w, r)| (w, r.trim()));
        let words = || rest.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        match word {
            "from" if from.is_none() && steps.is_empty() && !rest.is_empty() => from = Some(rest.to_string()),
            "from" => return Err(bad("one `from IMAGE` line, before the steps")),
            "apt" | "pip" if rest.is_empty() => return Err(bad("name at least one package")),
            "apt" => steps.push(Step::Apt(words())),
            "pip" => steps.push(Step::Pip(words())),
            "copy" => match words().as_slice() {
                [src, dst] => steps.push(Step::Copy { src: dir.join(src), dst: dst.clone() }),
                _ => return Err(bad("copy takes SRC DST")),
            },
            "run" if !rest.is_empty() => steps.push(Step::Run(rest.to_string())),
            _ => return Err(bad("expected from, apt, pip, copy or run")),
        }
    }
    Ok((from, steps))
}

/// Words quoted for `sh`.
fn quoted(words: &[String]) -> String {
    words.iter().map(|w| format!("'{}'", w.replace('\'', "'\\''"))).collect::<Vec<_>>().join(" ")
}

/// The cache key of `steps` over layers `base`: a hash of both and of every file a copy brings.
pub(crate) fn key(base: &[String], steps: &[Step]) -> Result<String, BuildError> {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&(base, steps)).expect("steps serialize"));
    for step in steps {
        if let Step::Copy { src, .. } = step {
            hash_tree(src, &mut hasher)?;
        }
    }
    Ok(format!("{:x}", hasher.finalize())[..32].to_string())
}

fn hash_tree(path: &Path, hasher: &mut Sha256) -> Result<(), BuildError> {
    let bad = |e: std::io::Error| BuildError::Invalid(format!("--copy {}: {e}", path.display()));
    let meta = fs::symlink_metadata(path).map_err(bad)?;
    hasher.update(path.as_os_str().as_encoded_bytes());
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path).map_err(bad)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            hash_tree(&entry, hasher)?;
        }
    } else if meta.is_file() {
        hasher.update(fs::read(path).map_err(bad)?);
    }
    Ok(())
}

/// Runs `steps` on the tree of layers `lowers` (top-most first), writing the changes into the
/// empty directory `upper`; `scratch` is an empty directory on the same filesystem.
pub(crate) fn run_steps(
    lowers: &[PathBuf],
    upper: &Path,
    scratch: &Path,
    steps: &[Step],
    progress: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let (work, root) = (scratch.join("work"), scratch.join("root"));
    let setup = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| BuildError::Setup { what, reason: e.to_string() }
    };
    fs::create_dir_all(&work).map_err(setup("making the build's work directory"))?;
    fs::create_dir_all(&root).map_err(setup("making the build's root"))?;
    let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let options = format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), upper.display(), work.display());
    let mounted = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(&root).output();
    match mounted {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(BuildError::Setup { what: "mounting the build tree".into(), reason: last_lines(&out.stderr) })
        }
        Err(e) => return Err(BuildError::Setup { what: "running mount".into(), reason: e.to_string() }),
    }
    let result = steps.iter().enumerate().try_for_each(|(n, step)| {
        progress(&format!("step {}/{}: {}", n + 1, steps.len(), step.describe()));
        run_step(&root, n + 1, step)
    });
    let unmounted = Command::new("umount").arg(&root).output();
    result?;
    match unmounted {
        Ok(out) if out.status.success() => {}
        _ => {
            return Err(BuildError::Setup { what: "unmounting the build tree".into(), reason: "umount failed".into() })
        }
    }
    // What the steps wrote is owned by host ids: shift them.
    ids::shift_tree(upper)
        .map_err(|e| BuildError::Setup { what: "shifting the new layer's owners".into(), reason: e.to_string() })
}

fn run_step(root: &Path, n: usize, step: &Step) -> Result<(), BuildError> {
    let failed = |reason: String| BuildError::Step { step: n, what: step.describe(), reason };
    let Some(script) = step.script() else {
        let Step::Copy { src, dst } = step else { unreachable!("only copies have no script") };
        if !dst.starts_with('/') || dst.split('/').any(|c| c == "..") {
            return Err(failed(format!("'{dst}' is not an absolute path inside the image")));
        }
        let target = root.join(dst.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| failed(e.to_string()))?;
        }
        let out = Command::new("cp").args(["-a", "--no-preserve=ownership", "--"]).arg(src).arg(&target).output();
        return match out {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(failed(last_lines(&out.stderr))),
            Err(e) => Err(failed(e.to_string())),
        };
    };
    // Inside the namespaces: /proc of the new pid namespace, the host's /dev, name resolution
    // and certificate authorities (on a tmpfs over /run, so none of it lands in the layer; the
    // host may reach the registries through a proxy only its own authorities vouch for), and a
    // tmpfs /tmp; then the step, chrooted.
    let inner = "set -e; r=$1; shift; mount -t proc proc \"$r/proc\"; mount --rbind /dev \"$r/dev\"; \
                 mkdir -p \"$r/run\" \"$r/tmp\"; mount -t tmpfs tmpfs \"$r/run\"; mount -t tmpfs tmpfs \"$r/tmp\"; \
                 chmod 1777 \"$r/tmp\"; cp -L /etc/ssl/certs/ca-certificates.crt \"$r/run/host-ca.crt\" 2>/dev/null || true; \
                 if [ -e \"$r/etc/resolv.conf\" ]; then mount --bind /etc/resolv.conf \"$r/etc/resolv.conf\"; fi; \
                 exec chroot \"$r\" /bin/sh -c \"$1\"";
    let ca = "/run/host-ca.crt";
    let env = format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
         SSL_CERT_FILE={ca} PIP_CERT={ca} REQUESTS_CA_BUNDLE={ca} NODE_EXTRA_CA_CERTS={ca} npm_config_cafile={ca};"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--"])
        .args(["/bin/sh", "-c", inner, "sh"])
        .arg(root)
        .arg(format!("{env} {script}"))
        .output()
        .map_err(|e| failed(format!("cannot run unshare: {e}")))?;
    if !out.status.success() {
        let said = last_lines(&[out.stdout, out.stderr].concat());
        return Err(failed(if said.is_empty() { out.status.to_string() } else { said }));
    }
    Ok(())
}

/// The last three non-empty lines of some output, joined on one line.
fn last_lines(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_the_steps_the_base_and_the_copied_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.py");
        fs::write(&file, "print(1)").unwrap();
        let steps = vec![Step::Pip(vec!["six".into()]), Step::Copy { src: file.clone(), dst: "/srv/app.py".into() }];
        let base = vec!["0123456789abcdef".to_string()];
        let k = key(&base, &steps).unwrap();
        assert_eq!(k, key(&base, &steps).unwrap());
        assert_ne!(k, key(&["fedcba9876543210".to_string()], &steps).unwrap());
        assert_ne!(k, key(&base, &steps[..1]).unwrap());
        fs::write(&file, "print(2)").unwrap();
        assert_ne!(k, key(&base, &steps).unwrap(), "a copied file's content is part of the key");
        assert!(key(&base, &[Step::Copy { src: dir.path().join("missing"), dst: "/x".into() }]).is_err());
    }

    #[test]
    fn build_files_list_a_base_and_steps_in_order() {
        let text =
            "# tools\nfrom debian\napt jq curl\nrun echo one\ncopy src /srv/src\npip six\n\nrun make -C /srv/src\n";
        let (from, steps) = parse_build_file(text, Path::new("/work")).unwrap();
        assert_eq!(from.as_deref(), Some("debian"));
        assert_eq!(
            steps,
            [
                Step::Apt(vec!["jq".into(), "curl".into()]),
                Step::Run("echo one".into()),
                Step::Copy { src: "/work/src".into(), dst: "/srv/src".into() },
                Step::Pip(vec!["six".into()]),
                Step::Run("make -C /srv/src".into()),
            ]
        );
        for (bad, why) in [
            ("apt", "line 1: name at least one package"),
            ("run x\nfrom debian", "line 2: one `from"),
            ("copy a", "copy takes"),
            ("make", "expected from"),
        ] {
            let err = parse_build_file(bad, Path::new("/")).unwrap_err().to_string();
            assert!(err.contains(why) && !err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn steps_become_shell_commands_with_their_words_quoted() {
        let apt = Step::Apt(vec!["jq".into(), "it's".into()]).script().unwrap();
        assert!(apt.contains("install -y -q --no-install-recommends 'jq' 'it'\\''s'"), "{apt}");
        assert!(Step::Pip(vec!["six".into()]).script().unwrap().contains("pip3 install"));
        assert_eq!(Step::Run("echo hi".into()).script().unwrap(), "echo hi");
        assert!(Step::Copy { src: "/a".into(), dst: "/b".into() }.script().is_none());
    }
}
