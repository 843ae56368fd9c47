//! What every [`SnapshotStore`] must do, as checks any implementation runs with
//! [`snapshot_store_conformance!`](crate::snapshot_store_conformance): each check gets a store
//! that starts empty and a scratch directory for the files it adds.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use super::{BackendState, Manifest, SnapshotStore, StoreError, FORMAT_VERSION};
use crate::spec::Limits;

/// A manifest for snapshot `id` named `name`, as a backend would seal it.
pub(crate) fn manifest(id: &str, name: Option<&str>, created: u64) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        id: id.into(),
        name: name.map(str::to_owned),
        parent: None,
        source_sandbox: "0123456789ab".into(),
        image: "busybox".into(),
        hostname: "h".into(),
        limits: Limits::default(),
        main: None,
        hiber_version: env!("CARGO_PKG_VERSION").into(),
        created,
        files: vec![],
        backend: BackendState::Memory,
    }
}

/// Commits a snapshot holding `files` (path, bytes); returns its id.
fn commit(store: &dyn SnapshotStore, scratch: &Path, name: Option<&str>, files: &[(&str, &[u8])]) -> String {
    let mut pending = store.begin(name, &json!({"for": "conformance"})).expect("begin");
    for (i, (path, bytes)) in files.iter().enumerate() {
        let local = scratch.join(format!("file-{}-{i}", pending.id()));
        fs::write(&local, bytes).expect("scratch file");
        pending.add_file(path, &local).expect("add_file");
    }
    let id = pending.id().to_string();
    let sealed = pending.seal(manifest(&id, name, 1)).expect("seal");
    let paths: Vec<&str> = sealed.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, files.iter().map(|(p, _)| *p).collect::<Vec<_>>(), "seal records every file");
    assert!(!store.list().iter().any(|m| m.id == id), "sealed is not yet committed");
    pending.commit().expect("commit");
    id
}

/// A committed snapshot is listed, resolves by name, id and prefix, verifies, and opens with its
/// files' bytes under their manifest paths.
pub fn committed_snapshots_resolve_verify_and_open(store: &dyn SnapshotStore, scratch: &Path) {
    let id =
        commit(store, scratch, Some("snap"), &[("criu/pages-1.img", &[7u8; 10_000]), ("criu/sub/core.img", b"core")]);
    assert_eq!(id.len(), 12, "ids are 12 hex digits: {id}");
    assert_eq!(store.list().iter().map(|m| m.id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&id));
    for key in ["snap", &id, &id[..4]] {
        assert_eq!(store.resolve(key).expect(key), id);
    }
    let verified = store.verify(&id).expect("verify");
    assert_eq!(verified.size_bytes(), 10_004);
    assert_eq!(verified, store.manifest(&id).expect("manifest"));
    let dir = store.open(&id).expect("open");
    assert_eq!(fs::read(dir.join("criu/sub/core.img")).expect("core.img"), b"core");
    assert_eq!(fs::read(dir.join("criu/pages-1.img")).expect("pages").len(), 10_000);
}

/// Names are unique; unknown keys and ambiguous prefixes are clear errors.
pub fn names_are_unique_and_bad_keys_are_refused(store: &dyn SnapshotStore, scratch: &Path) {
    let id = commit(store, scratch, Some("snap"), &[]);
    assert!(matches!(store.begin(Some("snap"), &json!({})), Err(StoreError::NameTaken(n)) if n == "snap"));
    let err = store.resolve("nosuch").unwrap_err();
    assert!(matches!(err, StoreError::NotFound(ref k) if k == "nosuch"), "{err}");
    assert!(err.to_string().contains("nosuch"), "{err}");
    assert!(store.manifest("ffffffffffff").is_err() && store.open("ffffffffffff").is_err());
    // Two more snapshots until two ids share a first digit; that digit is then ambiguous.
    let mut ids = vec![id];
    let prefix = loop {
        ids.push(commit(store, scratch, None, &[]));
        let last = &ids[ids.len() - 1][..1];
        if ids[..ids.len() - 1].iter().any(|i| i.starts_with(last)) {
            break last.to_string();
        }
    };
    assert!(matches!(store.resolve(&prefix), Err(StoreError::Ambiguous(..))), "prefix {prefix} of {ids:?}");
}

/// Snapshots are listed oldest first, and a removed one is gone whole while others stay.
pub fn removal_leaves_the_others(store: &dyn SnapshotStore, scratch: &Path) {
    let first = commit(store, scratch, Some("one"), &[("f", b"a")]);
    let second = commit(store, scratch, Some("two"), &[("f", b"b")]);
    let listed: Vec<String> = store.list().into_iter().map(|m| m.id).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&first) && listed.contains(&second));
    store.remove(&first).expect("remove");
    assert!(matches!(store.resolve("one"), Err(StoreError::NotFound(_))));
    assert!(store.remove(&first).is_err(), "removing twice is an error");
    assert_eq!(store.list().into_iter().map(|m| m.id).collect::<Vec<_>>(), std::slice::from_ref(&second));
    assert_eq!(fs::read(store.open(&second).expect("open").join("f")).expect("f"), b"b");
    assert!(store.unreadable().is_empty());
}

/// A snapshot whose builder is alive is neither listed nor a leftover; one whose builder gave up
/// is a leftover with its journal, never listed, and discarding it leaves nothing.
pub fn unfinished_snapshots_are_never_listed(store: &dyn SnapshotStore, _scratch: &Path) {
    let journal: Value = json!({"sandbox": "s", "layer": "l"});
    let pending = store.begin(Some("half"), &journal).expect("begin");
    assert!(store.leftovers().is_empty(), "a live builder's snapshot is not a leftover");
    assert!(store.list().is_empty() && store.resolve("half").is_err());
    assert_eq!(store.journals(), std::slice::from_ref(&journal));
    pending.leave_for_recovery();
    let leftovers = store.leftovers();
    assert_eq!(leftovers.len(), 1);
    assert_eq!(leftovers[0].journal(), Some(&journal));
    assert!(leftovers[0].manifest().is_none(), "not sealed");
    assert!(store.list().is_empty());
    leftovers.into_iter().for_each(|l| l.discard());
    assert!(store.leftovers().is_empty() && store.journals().is_empty());
}

/// A builder dropped before committing throws its snapshot away.
pub fn a_dropped_builder_leaves_nothing(store: &dyn SnapshotStore, scratch: &Path) {
    let mut pending = store.begin(Some("dropped"), &json!({})).expect("begin");
    fs::write(scratch.join("x"), b"x").expect("scratch");
    pending.add_file("x", &scratch.join("x")).expect("add_file");
    drop(pending);
    assert!(store.list().is_empty() && store.leftovers().is_empty() && store.journals().is_empty());
    commit(store, scratch, Some("dropped"), &[]);
}

/// A sealed leftover is published whole: it then verifies like any snapshot.
pub fn a_sealed_leftover_is_published_whole(store: &dyn SnapshotStore, scratch: &Path) {
    let mut pending = store.begin(None, &json!({})).expect("begin");
    fs::write(scratch.join("f"), b"x").expect("scratch");
    pending.add_file("criu/f", &scratch.join("f")).expect("add_file");
    let id = pending.id().to_string();
    pending.seal(manifest(&id, None, 1)).expect("seal");
    pending.leave_for_recovery();
    let mut leftovers = store.leftovers();
    assert_eq!(leftovers.len(), 1);
    assert_eq!(leftovers[0].manifest().map(|m| m.id.clone()), Some(id.clone()));
    leftovers.remove(0).publish().expect("publish");
    assert_eq!(store.verify(&id).expect("verify").files.len(), 1);
    assert!(store.leftovers().is_empty() && store.journals().is_empty());
}

/// Runs every check of [`crate::snapshot_conformance`] as its own `#[test]`. `$make` is an
/// expression that yields `(guard, store, scratch)`: something to keep alive during the check
/// (e.g. a temporary directory), a `Box<dyn SnapshotStore>` that starts empty, and a scratch
/// directory (`PathBuf`) for the files the check adds.
#[macro_export]
macro_rules! snapshot_store_conformance {
    ($make:expr) => {
        $crate::snapshot_store_conformance!(@each $make;
            committed_snapshots_resolve_verify_and_open,
            names_are_unique_and_bad_keys_are_refused,
            removal_leaves_the_others,
            unfinished_snapshots_are_never_listed,
            a_dropped_builder_leaves_nothing,
            a_sealed_leftover_is_published_whole,
        );
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let (_guard, store, scratch) = $make;
                $crate::snapshot_conformance::$check(&*store, &scratch);
            }
        )*
    };
}
