//! End-to-end tests of `hiber pull` from a real registry (the CNCF distribution server that
//! scripts/setup-test.sh unpacks) on loopback, with images skopeo pushes from layouts the tests
//! make: nothing comes from the internet.

mod common;

use common::{can_run, Home, Registry};

/// Pushes layout `layout` to `registry` as `repository:tag`.
fn push(registry: &Registry, layout: &std::path::Path, reference: &str) -> bool {
    common::skopeo(&[
        "--dest-tls-verify=false",
        &format!("oci:{}", layout.display()),
        &format!("docker://{}/{reference}", registry.address),
    ])
}

#[test]
fn pulls_run_with_their_defaults_move_only_new_layers_and_refuse_damage() {
    if !can_run("pulls_run_with_their_defaults_move_only_new_layers_and_refuse_damage") {
        return;
    }
    let Some(registry) = Registry::start("") else { return };
    let home = Home::new();
    let (v1, v2) = (home.path().join("v1"), home.path().join("v2"));
    home.oci_layout(&v1, "echo v1 $(id -u) $GREETING");
    home.oci_layout(&v2, "echo v2 $(pwd)");
    if !push(&registry, &v1, "team/app:v1") || !push(&registry, &v2, "team/app:v2") {
        return;
    }

    let first = home.run(&["pull", &format!("{}/team/app:v1", registry.address)]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout, "app\n");
    assert!(first.stderr.contains("2 layers (0 already stored)"), "{}", first.stderr);
    assert_eq!(home.ok(&["run", "app"]), "v1 1000 hi\n");

    // v2 shares v1's layers (the same base, the same user layer): only its manifest and
    // configuration move.
    let second = home.run(&["pull", "--name", "app2", &format!("{}/team/app:v2", registry.address)]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stderr.contains("2 layers (2 already stored)"), "{}", second.stderr);
    assert_eq!(home.ok(&["run", "app2"]), "v2 /srv/app\n");

    // Bad input: one line each, and no image.
    let missing = home.run(&["pull", "--name", "nope", &format!("{}/team/app:v3", registry.address)]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.trim().ends_with("has no team/app/manifests/v3"), "{}", missing.stderr);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = home.run(&["pull", &format!("127.0.0.1:{closed}/team/app:v1")]);
    assert!(unreachable.stderr.contains(&format!("cannot reach registry 127.0.0.1:{closed}")), "{}", unreachable.stderr);
    assert_eq!(unreachable.stderr.trim().lines().count(), 1, "{}", unreachable.stderr);
    let bad = home.run(&["pull", "app"]);
    assert!(bad.stderr.contains("invalid image reference 'app'"), "{}", bad.stderr);

    // A layer damaged in the registry's storage is refused before anything is stored.
    let fresh = Home::new();
    let blobs = registry.storage.path().join("data/docker/registry/v2/blobs/sha256");
    let mut damaged = 0;
    for data in walk(&blobs).into_iter().filter(|p| p.ends_with("data")) {
        let bytes = std::fs::read(&data).unwrap();
        if bytes.starts_with(&[0x1f, 0x8b]) && bytes.len() > 4096 {
            let mut bytes = bytes;
            bytes[2000] ^= 0xff;
            std::fs::write(&data, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no gzip layer found in the registry's storage");
    let refused = fresh.run(&["pull", &format!("{}/team/app:v1", registry.address)]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("sent a bad layer sha256:"), "{}", refused.stderr);
    assert!(fresh.run(&["images", "--json"]).stdout.trim() == "[]", "nothing was stored");
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
