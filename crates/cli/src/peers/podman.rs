//! Podman 4.3 + runc + hiber's CRIU as the snapshot benchmark's peer: `podman container
//! checkpoint` / `podman container restore` of the same workloads hiber snapshots.
//!
//! Podman runs through the wrapper that `scripts/setup-bench.sh` writes: a private configuration
//! (runc, cgroupfs, file events, ulimits root may set here, no network but loopback) and private
//! storage, with `criu` on Podman's and conmon's PATH pointing at hiber's CRIU. Containers are
//! removed after every round; the imported root filesystems stay, as cached images.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{dial_in, fsync_tree, PeerTimes, Workload, SETTLE};

/// Podman (`/usr/bin/podman`) with hiber's benchmark configuration, by `scripts/setup-bench.sh`.
const PODMAN: &str = "/opt/hiber/podman/podman";
/// Repository of the images imported from root filesystem directories.
const IMAGE_REPO: &str = "localhost/hiber-bench-rootfs";

/// Checkpoint and restore `workload` in Podman `rounds` times, with `rootfs` (a root filesystem
/// directory: busybox for [`Workload::IdleBusybox`], Debian with python3 otherwise) as the image.
///
/// Per round: `podman run -d` the workload, let it settle (or wait for its counter), then time
/// `podman container checkpoint` plus an fsync of what it wrote, measure the checkpoint's size,
/// time `podman container restore` and, for a serving workload, the time until it answers with
/// the next counter value; then remove the container. Returns the medians.
pub fn podman(workload: Workload, rootfs: &Path, rounds: usize) -> Result<PeerTimes> {
    ensure!(installed(), "{PODMAN} or /usr/bin/podman is missing: run scripts/setup-bench.sh as root");
    let image = import(rootfs)?;
    super::measure_rounds("Podman", workload, rounds, || one_round(workload, &image))
}

/// Whether Podman and hiber's configuration of it (`scripts/setup-bench.sh`) are installed.
pub fn installed() -> bool {
    [PODMAN, "/usr/bin/podman"].iter().all(|p| Path::new(p).exists())
}

/// One run → checkpoint → restore cycle, timed.
fn one_round(workload: Workload, image: &str) -> Result<PeerTimes> {
    let mut run = vec!["run", "-d", "--network", "none", image];
    let argv = workload.argv();
    run.extend(argv.iter().map(String::as_str));
    let container = Container { id: podman_out(&run)? };
    let [userdata, pidfile]: [PathBuf; 2] =
        podman_out(&["inspect", "--format", "{{.StaticDir}}\n{{.PidFile}}", &container.id])?
            .lines()
            .map(PathBuf::from)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|lines| anyhow!("unexpected `podman inspect` output: {lines:?}"))?;

    let before = match workload.probe() {
        Some(probe) => Some(probe.ask(dial_in(read_pid(&pidfile)?, probe.port()))?),
        None => None,
    };
    thread::sleep(SETTLE);

    let started = Instant::now();
    podman_out(&["container", "checkpoint", "--file-locks", &container.id])
        .map_err(|e| with_criu_error(e, &userdata))?;
    let checkpoint_command_s = started.elapsed().as_secs_f64();
    // What `podman container checkpoint` writes: CRIU's images and a tar of the container's /dev/shm.
    let mut size_bytes = fsync_tree(&userdata.join("checkpoint"))?;
    let shm = userdata.join("devshm-checkpoint.tar");
    if shm.exists() {
        size_bytes += fsync_tree(&shm)?;
    }
    File::open(&userdata)?.sync_all()?;
    let snapshot_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    podman_out(&["container", "restore", "--file-locks", &container.id])?;
    let restore_s = started.elapsed().as_secs_f64();
    let restore_until_answer_s = match (before, workload.probe()) {
        (Some(before), Some(probe)) => {
            probe.ask_again(before, dial_in(read_pid(&pidfile)?, probe.port()))?;
            Some(started.elapsed().as_secs_f64())
        }
        _ => {
            let pid = read_pid(&pidfile)?;
            ensure!(Path::new(&format!("/proc/{pid}")).exists(), "the restored workload (pid {pid}) is gone");
            None
        }
    };
    Ok(PeerTimes { snapshot_s, checkpoint_command_s, restore_s, restore_until_answer_s, size_bytes })
}

/// The image holding `rootfs`, imported on first use (a tar stream into `podman import`) and
/// cached under a name derived from the directory's path.
fn import(rootfs: &Path) -> Result<String> {
    let rootfs = rootfs.canonicalize().with_context(|| format!("root filesystem {}", rootfs.display()))?;
    let image = image_name(&rootfs);
    let exists = command().args(["image", "exists", &image]).status().context("running podman")?;
    if exists.success() {
        return Ok(image);
    }
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&rootfs)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let stream = tar.stdout.take().expect("tar's stdout is piped");
    let imported =
        command().args(["import", "--quiet", "-", &image]).stdin(stream).output().context("running podman")?;
    let packed = tar.wait()?;
    ensure!(imported.status.success(), "podman import failed: {}", String::from_utf8_lossy(&imported.stderr).trim());
    ensure!(packed.success(), "tar of {} failed: {packed}", rootfs.display());
    Ok(image)
}

/// `localhost/hiber-bench-rootfs:<hash of the path>-<its last component>`: one image per directory.
fn image_name(rootfs: &Path) -> String {
    // FNV-1a: stable across runs and Rust versions, unlike std's hashers.
    let hash = rootfs
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    let base: String = rootfs
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .take(100)
        .collect();
    format!("{IMAGE_REPO}:{hash:016x}-{base}")
}

/// A container in the benchmark's Podman, removed (with its checkpoint) when dropped.
struct Container {
    id: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let removed = command().args(["rm", "--force", "--time", "0", &self.id]).output();
        if !removed.is_ok_and(|out| out.status.success()) {
            eprintln!("hiber: warning: could not remove Podman container {} ({PODMAN} rm -f)", self.id);
        }
    }
}

fn command() -> Command {
    Command::new(PODMAN)
}

/// Run podman with `args`; its trimmed stdout, or an error with its stderr.
fn podman_out(args: &[&str]) -> Result<String> {
    let out = command().args(args).output().context("running podman")?;
    if !out.status.success() {
        bail!("podman {} failed: {}", args[0], String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `error` with the error lines of the CRIU log Podman's checkpoint left in `userdata` (Podman's
/// own message only points at the log, which goes with the container).
fn with_criu_error(error: anyhow::Error, userdata: &Path) -> anyhow::Error {
    let log = fs::read_to_string(userdata.join("dump.log")).unwrap_or_default();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error (")).map(str::trim).collect();
    if errors.is_empty() {
        return error;
    }
    error.context(format!("CRIU: {}", errors.join("; ")))
}

fn read_pid(pidfile: &Path) -> Result<i32> {
    let text = fs::read_to_string(pidfile).with_context(|| format!("reading {}", pidfile.display()))?;
    text.trim().parse().with_context(|| format!("{}: not a pid: {text:?}", pidfile.display()))
}

#[cfg(test)]
fn remove_image(rootfs: &Path) -> Result<()> {
    podman_out(&["rmi", &image_name(&rootfs.canonicalize()?)]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn image_names_are_valid_and_distinct() {
        let a = image_name(Path::new("/var/cache/hiber/rootfs/Debian Bookworm+1"));
        let b = image_name(Path::new("/var/cache/hiber/rootfs2/Debian Bookworm+1"));
        assert_ne!(a, b);
        let tag = a.rsplit_once(':').unwrap().1;
        assert!(tag.ends_with("-debian_bookworm_1"), "{tag}");
        assert!(tag.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), "{tag}");
    }

    /// A busybox root filesystem: /bin/busybox and its applets as symlinks.
    fn busybox_rootfs(dir: &Path) {
        let bin = dir.join("bin");
        fs::create_dir(&bin).unwrap();
        fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed (scripts/setup.sh)");
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines().filter(|a| *a != "busybox") {
            symlink("busybox", bin.join(applet)).unwrap();
        }
    }

    /// Slow and needs `scripts/setup-bench.sh`: `cargo test -p hiber-cli -- --ignored podman`.
    #[test]
    #[ignore]
    fn podman_checkpoints_and_restores_idle_busybox() {
        let dir = tempfile::tempdir().unwrap();
        busybox_rootfs(dir.path());
        let times = podman(Workload::IdleBusybox, dir.path(), 1);
        remove_image(dir.path()).unwrap();
        let times = times.unwrap();
        eprintln!("podman, idle busybox: {times:?}");
        assert!(times.snapshot_s > 0.0 && times.snapshot_s < 30.0, "{times:?}");
        assert!(times.checkpoint_command_s > 0.0 && times.checkpoint_command_s <= times.snapshot_s, "{times:?}");
        assert!(times.restore_s > 0.0 && times.restore_s < 30.0, "{times:?}");
        assert!(times.size_bytes > 4096 && times.size_bytes < 100 << 20, "{times:?}");
        assert_eq!(times.restore_until_answer_s, None);
    }
}
