//! What every [`Backend`] does alike, as checks that each backend's tests run
//! ([`backend_conformance!`](crate::backend_conformance) makes one `#[test]` of each).
//!
//! Each check takes a backend and the name of an image it has, whose programs include `sh -c`,
//! `echo` and `cat` (busybox, or the fake backend's own vocabulary). It panics at the first
//! difference, and removes every sandbox and snapshot it created, also when it panics. Names it
//! gives carry a random part, so checks may share a backend and run in parallel.
//!
//! The module is always compiled (it needs nothing but the trait), so a backend in any crate can
//! run it in its own tests.

use std::cell::RefCell;
use std::time::Duration;

use hiber_proto::ProcessSpec;

use crate::backend::{Backend, SandboxError, SandboxInfo, SnapshotOptions, Status};
use crate::client::{ClientError, Output};
use crate::snapshot::{Manifest, StoreError};
use crate::spec::SandboxSpec;

/// How long a check's `stop` waits before killing.
const GRACE: Duration = Duration::from_secs(10);

/// The sandboxes and snapshots one check made, removed when it ends (however it ends).
struct Scratch<'a> {
    backend: &'a dyn Backend,
    image: &'a str,
    /// The random part of this check's names.
    tag: String,
    sandboxes: RefCell<Vec<String>>,
    snapshots: RefCell<Vec<String>>,
}

impl<'a> Scratch<'a> {
    fn new(backend: &'a dyn Backend, image: &'a str) -> Scratch<'a> {
        Scratch {
            backend,
            image,
            tag: hiber_common::random_id(6),
            sandboxes: RefCell::default(),
            snapshots: RefCell::default(),
        }
    }

    /// A name of this check's own.
    fn name(&self, what: &str) -> String {
        format!("conformance-{}-{what}", self.tag)
    }

    fn spec(&self, name: Option<String>) -> SandboxSpec {
        SandboxSpec {
            name,
            image: self.image.into(),
            limits: Default::default(),
            main: None,
            confinement: Default::default(),
        }
    }

    /// Creates a sandbox from `spec`, to be removed at the end.
    fn try_create(&self, spec: SandboxSpec) -> Result<SandboxInfo, SandboxError> {
        let info = self.backend.create(spec)?;
        self.sandboxes.borrow_mut().push(info.id.clone());
        Ok(info)
    }

    /// Creates a sandbox (named `name`, if given) that idles.
    fn create(&self, name: Option<&str>) -> SandboxInfo {
        let spec = self.spec(name.map(|n| self.name(n)));
        self.try_create(spec).unwrap_or_else(|e| panic!("create: {e}"))
    }

    /// Snapshots sandbox `key`.
    fn snapshot(&self, key: &str, options: SnapshotOptions) -> Manifest {
        let manifest = self.backend.snapshot(key, &options).unwrap_or_else(|e| panic!("snapshot of {key}: {e}"));
        self.snapshots.borrow_mut().push(manifest.id.clone());
        manifest
    }

    /// Restores snapshot `key` (named `name`, if given).
    fn restore(&self, key: &str, name: Option<&str>) -> SandboxInfo {
        let name = name.map(|n| self.name(n));
        let info = self.backend.restore(key, name.as_deref()).unwrap_or_else(|e| panic!("restore of {key}: {e}"));
        self.sandboxes.borrow_mut().push(info.id.clone());
        info
    }

    /// Runs `sh -c script` in sandbox `key`.
    fn sh(&self, key: &str, script: &str) -> Output {
        self.run(key, &["sh", "-c", script])
    }

    /// Runs `argv` in sandbox `key`, under an exec id never used before (a restored sandbox
    /// remembers the execs of the one it was snapshotted from).
    fn run(&self, key: &str, argv: &[&str]) -> Output {
        let conn = self.backend.connect(key).unwrap_or_else(|e| panic!("connect to {key}: {e}"));
        let id = format!("conformance-{}", hiber_common::random_id(8));
        conn.run(&id, ProcessSpec::command(argv.iter().copied())).unwrap_or_else(|e| panic!("{argv:?} in {key}: {e}"))
    }

    /// The contents of `path` in sandbox `key`, or `None` when `cat` fails.
    fn cat(&self, key: &str, path: &str) -> Option<String> {
        let out = self.run(key, &["cat", path]);
        (out.code == 0).then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn status(&self, key: &str) -> Status {
        self.backend.find(key).unwrap_or_else(|e| panic!("find {key}: {e}")).status
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for id in self.sandboxes.borrow().iter() {
            let _ = self.backend.remove(id, true);
        }
        for id in self.snapshots.borrow().iter() {
            let _ = self.backend.remove_snapshot(id);
        }
    }
}

/// `id` is 12 lowercase hex digits.
fn assert_id(id: &str) {
    assert!(id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "id {id:?}");
}

/// The shortest prefix of `id` that no other id of `all` (ids and names) starts with and that
/// nothing is named.
fn unique_prefix(id: &str, all: &[(&str, Option<&str>)]) -> String {
    (1..=id.len())
        .map(|n| &id[..n])
        .find(|p| all.iter().all(|(other, name)| (*other == id || !other.starts_with(p)) && *name != Some(p)))
        .unwrap_or(id)
        .to_string()
}

/// Create, find and list: names, ids and prefixes find sandboxes; taken or invalid names,
/// unknown images and keys are refused; a prefix of several ids is ambiguous.
pub fn create_find_list(backend: &dyn Backend, image: &str) {
    let s = Scratch::new(backend, image);
    let named = s.create(Some("a"));
    let name = s.name("a");
    assert_id(&named.id);
    assert_eq!((named.name.as_deref(), named.hostname.as_str()), (Some(name.as_str()), name.as_str()));
    assert_eq!((named.image.as_str(), &named.from_snapshot, &named.status), (image, &None, &Status::Running));
    let anonymous = s.create(None);
    assert_id(&anonymous.id);
    assert_ne!(anonymous.id, named.id);
    assert_eq!((anonymous.name.as_deref(), anonymous.hostname.as_str()), (None, anonymous.id.as_str()));
    assert_eq!(anonymous.display_name(), anonymous.id);

    let all = backend.list().expect("list");
    for made in [&named, &anonymous] {
        let listed = all.iter().find(|s| s.id == made.id).unwrap_or_else(|| panic!("{} not listed", made.id));
        assert_eq!(listed, made);
    }
    assert!(all.windows(2).all(|w| w[0].created <= w[1].created), "listed oldest first: {all:?}");

    let keys: Vec<(&str, Option<&str>)> = all.iter().map(|s| (s.id.as_str(), s.name.as_deref())).collect();
    let prefix = unique_prefix(&named.id, &keys);
    for key in [name.as_str(), named.id.as_str(), prefix.as_str()] {
        assert_eq!(backend.find(key).unwrap_or_else(|e| panic!("find {key}: {e}")), named, "found by {key}");
    }
    assert_eq!(backend.find(&anonymous.id).expect("find by id").id, anonymous.id);

    match s.try_create(s.spec(Some(name.clone()))) {
        Err(SandboxError::NameTaken(taken)) => assert_eq!(taken, name),
        other => panic!("a second sandbox named {name}: {other:?}"),
    }
    for bad in ["Bad Name", "-x", "0123456789ab"] {
        let refused = s.try_create(s.spec(Some(bad.into())));
        assert!(matches!(refused, Err(SandboxError::Spec(_))), "name {bad:?}: {refused:?}");
    }
    let unknown = SandboxSpec { image: s.name("no-such-image"), ..s.spec(None) };
    assert!(matches!(s.try_create(unknown), Err(SandboxError::Image(_))), "an unknown image is refused");
    let missing = s.name("missing");
    assert!(matches!(backend.find(&missing), Err(SandboxError::NotFound(key)) if key == missing));

    // Two ids sharing a first digit make an ambiguous prefix (when two here do).
    let all = backend.list().expect("list");
    let shared = all.iter().enumerate().find_map(|(i, a)| {
        let prefix = &a.id[..1];
        let again = all[i + 1..].iter().any(|b| b.id.starts_with(prefix));
        (again && all.iter().all(|s| s.name.as_deref() != Some(prefix))).then(|| prefix.to_string())
    });
    if let Some(prefix) = shared {
        assert!(matches!(backend.find(&prefix), Err(SandboxError::Ambiguous(key, _)) if key == prefix));
    }
}

/// A command run through [`Backend::connect`] writes and reads the sandbox's files, and its
/// output and exit status come back.
pub fn exec(backend: &dyn Backend, image: &str) {
    let s = Scratch::new(backend, image);
    let sandbox = s.create(None);
    let version = backend.connect(&sandbox.id).and_then(|c| Ok(c.ping()?)).expect("ping");
    assert!(!version.is_empty());
    let out = s.sh(&sandbox.id, "echo hi > /tmp/f; cat /tmp/f; exit 3");
    assert_eq!((String::from_utf8_lossy(&out.stdout).as_ref(), out.code), ("hi\n", 3), "{out:?}");
    assert_eq!(s.cat(&sandbox.id, "/tmp/f").as_deref(), Some("hi\n"));
    let failed = s.run(&sandbox.id, &["cat", "/tmp/no-such-file"]);
    assert!(failed.code != 0 && !failed.stderr.is_empty(), "{failed:?}");
}

/// A snapshot stops its sandbox (suspended, no connections); a restore is a new sandbox that
/// carries on with its files.
pub fn snapshot_and_restore(backend: &dyn Backend, image: &str) {
    let s = Scratch::new(backend, image);
    let sandbox = s.create(Some("src"));
    assert_eq!(s.sh(&sandbox.id, "echo carried > /tmp/f").code, 0);
    let obstacles = backend.snapshot_obstacles(&sandbox.id).expect("snapshot_obstacles");
    assert!(obstacles.is_empty(), "a plain sandbox can be snapshotted: {obstacles:?}");
    let manifest = s.snapshot(&sandbox.id, SnapshotOptions::default());
    assert_id(&manifest.id);
    assert_eq!((manifest.source_sandbox.as_str(), manifest.image.as_str()), (sandbox.id.as_str(), image));
    assert_eq!((&manifest.name, &manifest.parent, &manifest.hostname), (&None, &None, &sandbox.hostname));
    assert_eq!(s.status(&sandbox.id), Status::Suspended { snapshot: manifest.id.clone() });
    assert!(not_running(backend.connect(&sandbox.id).map(drop)), "a suspended sandbox takes no connections");
    assert!(backend.snapshots().expect("snapshots").iter().any(|m| m.id == manifest.id));
    assert_eq!(backend.find_snapshot(&manifest.id).expect("find_snapshot"), manifest);

    let restored = s.restore(&manifest.id, Some("restored"));
    assert_id(&restored.id);
    assert_ne!(restored.id, sandbox.id);
    assert_eq!((restored.from_snapshot.as_deref(), &restored.status), (Some(manifest.id.as_str()), &Status::Running));
    assert_eq!((restored.name, restored.image.as_str()), (Some(s.name("restored")), image));
    assert_eq!(s.cat(&restored.id, "/tmp/f").as_deref(), Some("carried\n"));
    // A snapshot of a restored sandbox names its parent.
    let child = s.snapshot(&restored.id, SnapshotOptions { leave_running: true, ..Default::default() });
    assert_eq!(child.parent.as_deref(), Some(manifest.id.as_str()));
}

/// Two restores of one snapshot are independent sandboxes.
pub fn fork(backend: &dyn Backend, image: &str) {
    let s = Scratch::new(backend, image);
    let sandbox = s.create(None);
    assert_eq!(s.sh(&sandbox.id, "echo base > /tmp/base").code, 0);
    let manifest = s.snapshot(&sandbox.id, SnapshotOptions::default());
    let one = s.restore(&manifest.id, None);
    let two = s.restore(&manifest.id, None);
    assert_ne!(one.id, two.id);
    assert_eq!(s.sh(&one.id, "echo one > /tmp/one").code, 0);
    assert_eq!(s.sh(&two.id, "echo two > /tmp/two").code, 0);
    for (me, mine, theirs) in [(&one, "one", "two"), (&two, "two", "one")] {
        assert_eq!(s.cat(&me.id, "/tmp/base").as_deref(), Some("base\n"));
        assert_eq!(s.cat(&me.id, &format!("/tmp/{mine}")), Some(format!("{mine}\n")));
        assert_eq!(s.cat(&me.id, &format!("/tmp/{theirs}")), None, "{mine} sees the other fork's file");
    }
}

/// A snapshot that leaves its sandbox running: the sandbox carries on, and a restore has the
/// files as they were at the snapshot.
pub fn leave_running(backend: &dyn Backend, image: &str) {
    let s = Scratch::new(backend, image);
    let sandbox = s.create(None);
    assert_eq!(s.sh(&sandbox.id, "echo before > /tmp/before").code, 0);
    let manifest = s.snapshot(&sandbox.id, SnapshotOptions { leave_running: true, ..Default::default() });
    assert_eq!(s.status(&sandbox.id), Status::Running);
    assert_eq!(s.sh(&sandbox.id, "echo after > /tmp/after").code, 0);
    assert_eq!(s.cat(&sandbox.id, "/tmp/before").as_deref(), Some("before\n"));
    let restored = s.restore(&manifest.id, None);
    assert_eq!(s.cat(&restored.id, "/tmp/before").as_deref(), Some("before\n"));
    assert_eq!(s.cat(&restored.id, "/tmp/after"), None, "the snapshot holds the files of its time");
}

/// Removing: a running sandbox only with `force`; a stopped one without; then it is gone.
pub fn remove(backend: &dyn Backend, image: &str) {
    let s = Scratch::new(backend, image);
    let running = s.create(Some("running"));
    match backend.remove(&running.id, false) {
        Err(SandboxError::Running(who)) => assert_eq!(who, running.display_name()),
        other => panic!("removing a running sandbox without force: {other:?}"),
    }
    assert_eq!(s.status(&running.id), Status::Running);
    backend.remove(&running.id, true).expect("remove with force");
    assert!(matches!(backend.find(&running.id), Err(SandboxError::NotFound(_))));
    assert!(matches!(backend.remove(&running.id, true), Err(SandboxError::NotFound(_))));
    assert!(backend.list().expect("list").iter().all(|s| s.id != running.id));

    let stopped = s.create(None);
    backend.stop(&stopped.id, GRACE).expect("stop");
    assert!(matches!(s.status(&stopped.id), Status::Exited { .. }), "stopped: {:?}", s.status(&stopped.id));
    backend.remove(&stopped.id, false).expect("remove a stopped sandbox");
    assert!(matches!(backend.find(&stopped.id), Err(SandboxError::NotFound(_))));
}

/// Snapshots are found by name, id and prefix, names are unique, and a removed snapshot is gone
/// while sandboxes restored from it keep working.
pub fn snapshot_removal(backend: &dyn Backend, image: &str) {
    let s = Scratch::new(backend, image);
    let sandbox = s.create(None);
    let name = s.name("snap");
    let options = SnapshotOptions { name: Some(name.clone()), leave_running: true };
    let manifest = s.snapshot(&sandbox.id, options.clone());
    assert_eq!(manifest.name.as_deref(), Some(name.as_str()));
    let all = backend.snapshots().expect("snapshots");
    assert!(all.windows(2).all(|w| w[0].created <= w[1].created), "listed oldest first");
    let keys: Vec<(&str, Option<&str>)> = all.iter().map(|m| (m.id.as_str(), m.name.as_deref())).collect();
    let prefix = unique_prefix(&manifest.id, &keys);
    for key in [name.as_str(), manifest.id.as_str(), prefix.as_str()] {
        assert_eq!(backend.find_snapshot(key).unwrap_or_else(|e| panic!("find_snapshot {key}: {e}")).id, manifest.id);
    }
    match backend.snapshot(&sandbox.id, &options) {
        Err(SandboxError::Snapshot(StoreError::NameTaken(taken))) => assert_eq!(taken, name),
        Ok(m) => {
            s.snapshots.borrow_mut().push(m.id);
            panic!("a second snapshot named {name} was taken");
        }
        Err(e) => panic!("a second snapshot named {name}: {e}"),
    }
    assert_eq!(s.status(&sandbox.id), Status::Running, "a refused snapshot leaves the sandbox alone");

    let restored = s.restore(&manifest.id, None);
    backend.remove_snapshot(&name).expect("remove_snapshot");
    assert!(matches!(backend.find_snapshot(&manifest.id), Err(SandboxError::Snapshot(StoreError::NotFound(_)))));
    assert!(backend.snapshots().expect("snapshots").iter().all(|m| m.id != manifest.id));
    assert!(backend.restore(&manifest.id, None).is_err(), "a removed snapshot restored");
    assert!(matches!(backend.remove_snapshot(&manifest.id), Err(SandboxError::Snapshot(StoreError::NotFound(_)))));
    let out = s.sh(&restored.id, "echo still here");
    assert_eq!((out.stdout.as_slice(), out.code), (&b"still here\n"[..], 0), "restored from a removed snapshot");
}

/// Unknown keys and stopped sandboxes get the errors that say so.
pub fn errors(backend: &dyn Backend, image: &str) {
    let s = Scratch::new(backend, image);
    let nothing = s.name("nothing");
    let restored = backend.restore(&nothing, None);
    assert!(matches!(&restored, Err(e) if e.to_string().contains(&nothing)), "restore of {nothing}: {restored:?}");
    assert!(matches!(backend.find_snapshot(&nothing), Err(SandboxError::Snapshot(StoreError::NotFound(_)))));
    assert!(matches!(backend.remove_snapshot(&nothing), Err(SandboxError::Snapshot(StoreError::NotFound(_)))));
    assert!(matches!(backend.connect(&nothing).map(drop), Err(SandboxError::NotFound(_))));
    assert!(matches!(backend.stop(&nothing, GRACE), Err(SandboxError::NotFound(_))));
    let snapshot = backend.snapshot(&nothing, &SnapshotOptions::default());
    assert!(matches!(snapshot, Err(SandboxError::NotFound(_))), "{snapshot:?}");
    assert!(matches!(backend.snapshot_obstacles(&nothing), Err(SandboxError::NotFound(_))));

    let sandbox = s.create(None);
    backend.stop(&sandbox.id, GRACE).expect("stop");
    assert!(matches!(s.status(&sandbox.id), Status::Exited { .. }));
    backend.stop(&sandbox.id, GRACE).expect("stopping a stopped sandbox does nothing");
    assert!(not_running(backend.connect(&sandbox.id).map(drop)), "connect to a stopped sandbox");
    let snapshot = backend.snapshot(&sandbox.id, &SnapshotOptions::default());
    assert!(matches!(snapshot, Err(SandboxError::NotRunning(_))), "snapshot of a stopped sandbox: {snapshot:?}");
    assert!(matches!(backend.snapshot_obstacles(&sandbox.id), Err(SandboxError::NotRunning(_))));
    backend.main_log(&sandbox.id, 0).expect("the main log of a stopped sandbox");
}

/// Whether `result` is the refusal of a sandbox that does not run.
fn not_running(result: Result<(), SandboxError>) -> bool {
    matches!(result, Err(SandboxError::NotRunning(_)) | Err(SandboxError::Client(ClientError::Connect { .. })))
}

/// Makes one `#[test]` of each check of [`conformance`](crate::conformance), in a module.
///
/// `backend_conformance!(module, subject, image)`: `subject` is an expression, evaluated anew in
/// each test, giving an `Option` of something that dereferences to a [`Backend`] (a `Box` or
/// `Arc` of one, or a guard that also cleans up after it); `None` skips the test (the
/// expression says why). `image` names an image the backend has. Items of the enclosing module
/// are in scope.
///
/// ```ignore
/// hiber_sandbox::backend_conformance!(fake, Some(Box::new(FakeBackend::new())), "busybox");
/// ```
#[macro_export]
macro_rules! backend_conformance {
    ($module:ident, $subject:expr, $image:expr) => {
        $crate::backend_conformance!(@checks $module, $subject, $image;
            create_find_list exec snapshot_and_restore fork leave_running remove snapshot_removal errors);
    };
    (@checks $module:ident, $subject:expr, $image:expr; $($check:ident)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $check() {
                    if let Some(subject) = $subject {
                        $crate::conformance::$check(&*subject, $image);
                    }
                }
            )*
        }
    };
}
