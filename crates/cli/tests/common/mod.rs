//! Shared harness for end-to-end tests: each test gets its own HIBER_HOME
//! and drives the real `hiber` binary; everything it created is removed on
//! drop (sandboxes, mounts, cgroups, files).

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Returns false (after printing why) when the test cannot run here (it
/// needs root, cgroups, overlayfs, hiber-init). Under CI a missing
/// prerequisite is a failure instead.
pub fn can_run(test: &str) -> bool {
    hiber_sandbox::preflight::require(test, hiber_sandbox::preflight::SANDBOXES)
}

/// Like [`can_run`], and CRIU (>= 4.2) must be installed.
pub fn can_snapshot(test: &str) -> bool {
    hiber_sandbox::preflight::require(test, hiber_sandbox::preflight::SNAPSHOTS)
}

/// A root filesystem scripts/setup-test.sh makes under /var/cache/hiber/`dir`/rootfs (or in the
/// directory environment variable `var` names), whole when it has `marker`.
pub struct TestRoot {
    var: &'static str,
    dir: &'static str,
    marker: &'static str,
}

/// Debian with PostgreSQL 15.
pub const POSTGRES: TestRoot =
    TestRoot { var: "HIBER_TEST_PG_ROOTFS", dir: "test-postgres", marker: "usr/lib/postgresql/15/bin/postgres" };
/// Debian with Chromium.
pub const CHROMIUM: TestRoot =
    TestRoot { var: "HIBER_TEST_CHROMIUM_ROOTFS", dir: "test-chromium", marker: "usr/bin/chromium" };
/// The Chromium root, which has ffmpeg too.
pub const FFMPEG: TestRoot = TestRoot { marker: "usr/bin/ffmpeg", ..CHROMIUM };
/// Debian with an IPython kernel.
pub const JUPYTER: TestRoot = TestRoot {
    var: "HIBER_TEST_JUPYTER_ROOTFS",
    dir: "test-jupyter",
    marker: "usr/lib/python3/dist-packages/ipykernel",
};
/// Debian with Node and a vite project in /srv/app.
pub const NODE: TestRoot =
    TestRoot { var: "HIBER_TEST_NODE_ROOTFS", dir: "test-node", marker: "srv/app/node_modules/vite/package.json" };

/// Makes an OCI image layout in argv[2] from the root filesystem tarball argv[1]: that tar
/// (gzipped) as the base layer, then a layer that adds a user `app` (1000) and /srv/app and
/// deletes /etc/hosts (a whiteout), and run defaults: GREETING=hi, `sh -c` as the entrypoint,
/// argv[3] as the command, /srv/app as the working directory, user app. The layout holds an
/// image index for linux/arm64 (listed first, its command saying so) and linux/amd64.
const MAKE_LAYOUT: &str = r#"
import gzip, hashlib, io, json, os, sys, tarfile
base_tar, out = open(sys.argv[1], "rb").read(), sys.argv[2]
os.makedirs(f"{out}/blobs/sha256")
def blob(data, media):
    digest = hashlib.sha256(data).hexdigest()
    open(f"{out}/blobs/sha256/{digest}", "wb").write(data)
    return {"mediaType": media, "digest": "sha256:" + digest, "size": len(data)}
def layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()
passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv/app:/bin/sh\n"
top_tar = layer([("etc/passwd", passwd), ("etc/.wh.hosts", b""), ("srv", None), ("srv/app", None)])
tgz = "application/vnd.oci.image.layer.v1.tar+gzip"
layers = [blob(gzip.compress(base_tar), tgz), blob(gzip.compress(top_tar), tgz)]
def manifest(architecture, command):
    config = {"architecture": architecture, "os": "linux",
              "config": {"Env": ["GREETING=hi"], "Entrypoint": ["sh", "-c"],
                         "Cmd": [command], "WorkingDir": "/srv/app", "User": "app"},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in (base_tar, top_tar)]}}
    config = blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": layers}
    m = blob(json.dumps(m).encode(), "application/vnd.oci.image.manifest.v1+json")
    m["platform"] = {"os": "linux", "architecture": architecture}
    return m
# A multi-platform image: its arm64 entry comes first.
platforms = [manifest("arm64", "echo the arm64 image was chosen"), manifest("amd64", sys.argv[3])]
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": platforms}
index = blob(json.dumps(index).encode(), "application/vnd.oci.image.index.v1+json")
json.dump({"schemaVersion": 2, "manifests": [index]}, open(f"{out}/index.json", "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion": "1.0.0"}')
"#;

/// A private hiber home for one test.
pub struct Home {
    pub dir: tempfile::TempDir,
}

/// What a hiber command did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Home {
    pub fn new() -> Home {
        Home { dir: tempfile::Builder::new().prefix("hiber-test-").tempdir_in("/var/tmp").expect("temp home") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `hiber` command on this home.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hiber"));
        c.args(args).env("HIBER_HOME", self.path()).stdin(Stdio::null());
        c
    }

    /// Runs `hiber args...` and collects its output.
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("spawn hiber").into()
    }

    /// Runs `hiber args...` with `input` on stdin.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child =
            self.cmd(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap().into()
    }

    /// Runs `hiber args...` with a standard output whose reader is gone (`hiber ... | head -0`).
    pub fn run_into_closed_pipe(&self, args: &[&str]) -> Run {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        self.cmd(args).stdout(writer).stderr(Stdio::piped()).output().expect("spawn hiber").into()
    }

    /// Runs `hiber args...`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "hiber {args:?} failed ({}): {}{}", r.code, r.stdout, r.stderr);
        r.stdout
    }

    /// Builds the busybox image in this home.
    pub fn busybox(&self) -> &Self {
        self.ok(&["image", "build", "busybox"]);
        self
    }

    /// Builds the debian image in this home (from the machine's cache after the first time).
    pub fn debian(&self) -> &Self {
        self.ok(&["image", "build", "debian"]);
        self
    }

    /// Starts a detached sandbox; returns its id.
    pub fn detached(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        self.ok(&all).trim().to_string()
    }

    /// `hiber ps --json` parsed.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "--json"])).expect("ps --json")
    }

    /// `hiber snapshots --json` parsed.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["snapshots", "--json"])).expect("snapshots --json")
    }

    /// How the host sees sandbox `id` (its pids), from the container backend itself.
    pub fn host(&self, id: &str) -> hiber_sandbox::HostView {
        hiber_sandbox::ContainerBackend::open(self.path())
            .and_then(|b| b.host_view(id))
            .expect("the sandbox's host view")
    }

    /// Imports `root` as image `name`; false (after saying why) when scripts/setup-test.sh has not
    /// made it, a failure when `CI` is set.
    pub fn test_image(&self, name: &str, root: TestRoot) -> bool {
        let path = std::env::var_os(root.var)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new("/var/cache/hiber").join(root.dir).join("rootfs"));
        if !path.join(root.marker).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} is missing and CI is set: run scripts/setup-test.sh",
                path.display()
            );
            eprintln!("SKIP: {} is missing (run scripts/setup-test.sh)", path.display());
            return false;
        }
        self.ok(&["image", "import", "--name", name, path.to_str().unwrap()]);
        true
    }

    /// How many layers sandbox `id`'s root filesystem stacks (its overlay's `lowerdir`).
    pub fn stack_depth(&self, id: &str) -> usize {
        let rootfs = self.host(id).rootfs;
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts.lines().find(|l| l.split(' ').nth(1) == rootfs.to_str()).expect("the sandbox's overlay");
        let lowers = line.split([' ', ',']).find_map(|o| o.strip_prefix("lowerdir=")).expect("lowerdir=");
        lowers.split(':').count()
    }

    /// The busybox image's root (/bin, /etc, /root) as a tarball in this home, exported by `tar`
    /// in a sandbox (the image is built first); made once.
    pub fn busybox_tarball(&self) -> PathBuf {
        let tarball = self.path().join("busybox.tar");
        if !tarball.exists() {
            self.busybox();
            let out = std::fs::File::create(&tarball).unwrap();
            let mut export = self.cmd(&["run", "busybox", "tar", "-c", "-f", "-", "-C", "/", "bin", "etc", "root"]);
            assert!(export.stdout(out).status().unwrap().success());
        }
        tarball
    }

    /// Makes the OCI image layout `layout` (see [`MAKE_LAYOUT`]) over this home's busybox root,
    /// with `command` as the image's command; builds the busybox image first.
    pub fn oci_layout(&self, layout: &Path, command: &str) {
        let tarball = self.busybox_tarball();
        let made = Command::new("python3").args(["-c", MAKE_LAYOUT]).arg(&tarball).arg(layout).arg(command).status();
        assert!(made.unwrap().success());
    }

    /// The `ps --json` entry of sandbox `id`.
    pub fn sandbox(&self, id: &str) -> serde_json::Value {
        self.ps().into_iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("sandbox {id} not listed"))
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Ok(out) = self.cmd(&["ps", "--json"]).output() {
            let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for s in list {
                let _ = self.cmd(&["rm", "-f", s["id"].as_str().unwrap_or_default()]).output();
            }
        }
        // Anything still mounted below the home (a failed test) must not stay.
        for target in mounts_below(self.path()) {
            let _ = Command::new("umount").arg("-l").arg(&target).status();
        }
    }
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    hiber_common::fs::mounts_under(dir).unwrap_or_default()
}

/// Polls `f` until it is true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rsplit(')').next().and_then(|r| r.split_whitespace().next()), Some("Z") | Some("X")))
        .unwrap_or(false)
}

/// Runs `skopeo --insecure-policy copy --quiet ARGS...` and asserts it succeeded; false (after
/// saying why) when skopeo is missing, a failure when `CI` is set.
pub fn skopeo(args: &[&str]) -> bool {
    let Ok(out) = Command::new("skopeo").args(["--insecure-policy", "copy", "--quiet"]).args(args).output() else {
        assert!(std::env::var_os("CI").is_none(), "skopeo is missing and CI is set: run scripts/setup-test.sh");
        eprintln!("SKIP: skopeo is missing (run scripts/setup-test.sh)");
        return false;
    };
    assert!(out.status.success(), "skopeo copy {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    true
}

/// A CNCF distribution registry on a loopback port, its storage in a directory of its own
/// (removed with it); `None` (after saying why) when scripts/setup-test.sh has not unpacked it,
/// a failure when `CI` is set.
pub struct Registry {
    /// Stopped first, then its storage removed (fields drop in this order).
    server: hiber_registry::server::LocalRegistry,
    _storage: tempfile::TempDir,
}

impl Registry {
    /// Starts one with `extra` YAML appended to its configuration.
    pub fn start(extra: &str) -> Option<Registry> {
        let binary = hiber_registry::server::binary();
        if !binary.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} is missing and CI is set: run scripts/setup-test.sh",
                binary.display()
            );
            eprintln!("SKIP: {} is missing (run scripts/setup-test.sh)", binary.display());
            return None;
        }
        let storage = tempfile::Builder::new().prefix("hiber-registry-").tempdir_in("/var/tmp").unwrap();
        let server = hiber_registry::server::LocalRegistry::start(storage.path(), extra).expect("the test registry");
        Some(Registry { server, _storage: storage })
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        &self.server.address
    }

    /// Where it keeps blobs.
    pub fn blobs(&self) -> PathBuf {
        self.server.storage.join("docker/registry/v2/blobs/sha256")
    }
}

/// A child process of a test, killed and reaped (by its pid) when the test ends, passed or not.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
