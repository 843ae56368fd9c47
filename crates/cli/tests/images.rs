//! End-to-end tests of images: build, import, list, and a Debian sandbox.

mod common;

use common::{can_run, Home};

#[test]
fn imported_directory_and_tarball_run() {
    if !can_run("imported_directory_and_tarball_run") {
        return;
    }
    let home = Home::new();
    home.busybox();
    // Export the busybox image's root by running tar inside a sandbox.
    let tarball = home.path().join("rootfs.tar");
    let out = std::fs::File::create(&tarball).unwrap();
    let status = home
        .cmd(&["run", "busybox", "tar", "-c", "-f", "-", "-C", "/", "bin", "etc", "root"])
        .stdout(out)
        .status()
        .unwrap();
    assert!(status.success());
    home.ok(&["image", "import", tarball.to_str().unwrap(), "--name", "fromtar"]);
    let r = home.run(&["run", "fromtar", "sh", "-c", "echo imported"]);
    assert_eq!(r.stdout, "imported\n", "{}", r.stderr);
    let dir = home.path().join("rootdir");
    std::fs::create_dir(&dir).unwrap();
    assert!(std::process::Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(&dir).status().unwrap().success());
    std::fs::write(dir.join("etc/motd"), "from a directory\n").unwrap();
    home.ok(&["image", "import", dir.to_str().unwrap(), "--name", "fromdir"]);
    assert_eq!(home.ok(&["run", "fromdir", "cat", "/etc/motd"]), "from a directory\n");
    let list: Vec<serde_json::Value> = serde_json::from_str(&home.ok(&["images", "--json"])).unwrap();
    let names: Vec<&str> = list.iter().filter_map(|i| i["name"].as_str()).collect();
    for n in ["busybox", "fromtar", "fromdir"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let table = home.ok(&["images"]);
    assert!(table.starts_with("NAME") && table.contains("fromdir"), "{table}");
    // Bad imports: a clear line and no image.
    let junk = home.path().join("junk.tar.gz");
    std::fs::write(&junk, b"\x1f\x8b\x08\x00 this is not gzip").unwrap();
    for path in [junk.to_str().unwrap(), "/nonexistent/rootfs.tar"] {
        let r = home.run(&["image", "import", path, "--name", "broken"]);
        assert_eq!(r.code, 125, "{}", r.stderr);
        let errors: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("hiber:")).collect();
        assert_eq!(errors.len(), 1, "one error line after any progress: {}", r.stderr);
        assert!(r.stderr.trim_end().ends_with(errors[0]), "the error comes last: {}", r.stderr);
    }
    assert!(!home.ok(&["images"]).contains("broken"));
}

#[test]
fn debian_sandbox_runs_python() {
    if !can_run("debian_sandbox_runs_python") {
        return;
    }
    let home = Home::new();
    home.debian();
    let r = home.run(&[
        "run",
        "debian",
        "python3",
        "-c",
        "import sys, socket; print(sys.version_info[0], socket.gethostname() != '')",
    ]);
    assert_eq!(r.stdout, "3 True\n", "{}", r.stderr);
    let r = home.run(&[
        "run",
        "debian",
        "sh",
        "-c",
        "git --version >/dev/null && curl --version >/dev/null && ps -p 1 -o comm= && ip -o link | wc -l",
    ]);
    assert_eq!(r.stdout, "init\n1\n", "{}", r.stderr);
}
