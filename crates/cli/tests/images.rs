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

/// Makes an OCI image layout in argv[2] from the root filesystem tarball argv[1]: that tar
/// (gzipped) as the base layer, then a layer that adds a user `app` (1000) and /srv/app and
/// deletes /etc/hosts (a whiteout), and run defaults: GREETING=hi, `sh -c` as the entrypoint,
/// a command printing who and where it runs, /srv/app as the working directory, user app.
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
config = {"architecture": "amd64", "os": "linux",
          "config": {"Env": ["GREETING=hi"], "Entrypoint": ["sh", "-c"],
                     "Cmd": ["echo $(id -u) $(pwd) $GREETING; ls /etc"], "WorkingDir": "/srv/app", "User": "app"},
          "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in (base_tar, top_tar)]}}
config = blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": layers}
manifest = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
json.dump({"schemaVersion": 2, "manifests": [manifest]}, open(f"{out}/index.json", "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion": "1.0.0"}')
"#;

#[test]
fn oci_images_run_with_their_defaults_and_share_layers_with_their_docker_archive() {
    if !can_run("oci_images_run_with_their_defaults_and_share_layers_with_their_docker_archive") {
        return;
    }
    let home = Home::new();
    home.busybox();
    let tarball = home.path().join("busybox.tar");
    let out = std::fs::File::create(&tarball).unwrap();
    let mut export = home.cmd(&["run", "busybox", "tar", "-c", "-f", "-", "-C", "/", "bin", "etc", "root"]);
    assert!(export.stdout(out).status().unwrap().success());
    let layout = home.path().join("layout");
    let made = std::process::Command::new("python3").args(["-c", MAKE_LAYOUT]).arg(&tarball).arg(&layout).status();
    assert!(made.unwrap().success());

    home.ok(&["image", "import", layout.to_str().unwrap(), "--name", "app"]);
    // The image's user, working directory, environment, entrypoint and command; its whiteout.
    assert_eq!(home.ok(&["run", "app"]), "1000 /srv/app hi\ngroup\npasswd\n");
    assert_eq!(
        home.ok(&["run", "app", "echo $(id -u):$(id -g) $HOME"]),
        "1000:1000 /srv/app\n",
        "the entrypoint stays"
    );
    assert_eq!(home.ok(&["run", "--user", "root", "-w", "/", "app", "echo $(id -u) $(pwd)"]), "0 /\n");
    let id = home.detached(&["app", "echo $(id -u) > /tmp/who; sleep 1000"]);
    assert!(common::eventually(std::time::Duration::from_secs(5), || {
        home.run(&["exec", &id, "cat", "/tmp/who"]).stdout == "1000\n"
    }));
    let unknown = home.run(&["run", "--user", "nobody", "app", "true"]);
    assert_ne!(unknown.code, 0);
    assert!(unknown.stderr.contains("unknown user nobody"), "{}", unknown.stderr);

    // The same image through `docker save`'s format, as skopeo writes it: no layer stored twice.
    let Ok(copied) = std::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("docker-archive:{}", home.path().join("app.tar").display()))
        .status()
    else {
        assert!(std::env::var_os("CI").is_none(), "skopeo is missing and CI is set: run scripts/setup-test.sh");
        eprintln!("SKIP: skopeo is missing (run scripts/setup-test.sh)");
        return;
    };
    assert!(copied.success());
    let layers = || std::fs::read_dir(home.path().join("layers")).unwrap().count();
    let before = layers();
    home.ok(&["image", "import", home.path().join("app.tar").to_str().unwrap(), "--name", "app-docker"]);
    assert_eq!(layers(), before, "the docker archive's layers are the layout's");
    assert_eq!(home.ok(&["run", "app-docker"]), "1000 /srv/app hi\ngroup\npasswd\n");
}
