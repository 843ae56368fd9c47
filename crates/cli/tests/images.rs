//! End-to-end tests of images: build, import, list, and a Debian sandbox.

mod common;

use common::{can_run, Home};

#[test]
fn imported_directory_and_tarball_run() {
    if !can_run("imported_directory_and_tarball_run") {
        return;
    }
    let home = Home::new();
    let tarball = home.busybox_tarball();
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

#[test]
fn oci_images_run_with_their_defaults_and_share_layers_with_their_docker_archive() {
    if !can_run("oci_images_run_with_their_defaults_and_share_layers_with_their_docker_archive") {
        return;
    }
    let home = Home::new();
    let layout = home.path().join("layout");
    home.oci_layout(&layout, "echo $(id -u) $(pwd) $GREETING; ls /etc");

    home.ok(&["image", "import", layout.to_str().unwrap(), "--name", "app"]);
    // The image's user, working directory, environment, entrypoint and command; its whiteout.
    assert_eq!(home.ok(&["run", "app"]), "1000 /srv/app hi\ngroup\npasswd\n");
    assert_eq!(
        home.ok(&["run", "app", "echo $(id -u):$(id -g) $HOME"]),
        "1000:1000 /srv/app\n",
        "the entrypoint stays"
    );
    assert_eq!(home.ok(&["run", "--user", "root", "-w", "/", "app", "echo $(id -u) $(pwd)"]), "0 /\n");
    // Detached with no command: the image's; an image without one is refused, as Docker does.
    let own = home.detached(&["app"]);
    assert!(common::eventually(std::time::Duration::from_secs(5), || home.ok(&["logs", &own])
        == "1000 /srv/app hi\ngroup\npasswd\n"));
    let none = home.run(&["run", "-d", "busybox"]);
    assert_ne!(none.code, 0);
    assert!(none.stderr.contains("image 'busybox' names no command (Entrypoint or Cmd)"), "{}", none.stderr);
    let id = home.detached(&["app", "echo $(id -u) > /tmp/who; sleep 1000"]);
    assert!(common::eventually(std::time::Duration::from_secs(5), || {
        home.run(&["exec", &id, "cat", "/tmp/who"]).stdout == "1000\n"
    }));
    // An exec runs as `docker exec` does: the image's user, environment and working directory.
    assert_eq!(home.ok(&["exec", &id, "sh", "-c", "echo $(id -u) $(pwd) $GREETING"]), "1000 /srv/app hi\n");
    assert_eq!(home.ok(&["exec", "--user", "0", &id, "sh", "-c", "id -u"]), "0\n");
    let unknown = home.run(&["run", "--user", "nobody", "app", "true"]);
    assert_ne!(unknown.code, 0);
    assert!(unknown.stderr.contains("unknown user nobody"), "{}", unknown.stderr);

    // The same image through `docker save`'s format, as skopeo writes it: no layer stored twice.
    if !common::skopeo(&[
        &format!("oci:{}", layout.display()),
        &format!("docker-archive:{}", home.path().join("app.tar").display()),
    ]) {
        return;
    }
    let layers = || std::fs::read_dir(home.path().join("layers")).unwrap().count();
    let before = layers();
    home.ok(&["image", "import", home.path().join("app.tar").to_str().unwrap(), "--name", "app-docker"]);
    assert_eq!(layers(), before, "the docker archive's layers are the layout's");
    assert_eq!(home.ok(&["run", "app-docker"]), "1000 /srv/app hi\ngroup\npasswd\n");
}

#[test]
fn images_built_from_another_with_packages_files_and_commands_are_cached() {
    if !can_run("images_built_from_another_with_packages_files_and_commands_are_cached") {
        return;
    }
    let home = Home::new();
    home.debian();
    let file = home.path().join("agent.py");
    std::fs::write(&file, "print('agent here')\n").unwrap();
    let copy = format!("{}:/srv/agent.py", file.display());
    let args = ["image", "build", "tools", "--from", "debian", "--apt", "jq", "--pip", "six", "--copy", &copy];
    let mut all = args.to_vec();
    all.extend(["--run", "echo built > /etc/built"]);
    let built = home.run(&all);
    assert_eq!(built.code, 0, "{}", built.stderr);
    let check = "jq --version; python3 -c 'import six; print(six.__name__)'; python3 /srv/agent.py; cat /etc/built; \
                 stat -c %u /srv/agent.py /usr/bin/jq; ls -A /tmp";
    assert_eq!(home.ok(&["run", "tools", "sh", "-c", check]), "jq-1.6\nsix\nagent here\nbuilt\n0\n0\n");
    let images: Vec<serde_json::Value> = serde_json::from_str(&home.ok(&["images", "--json"])).unwrap();
    let tools = images.iter().find(|i| i["name"] == "tools").unwrap();
    let debian = images.iter().find(|i| i["name"] == "debian").unwrap();
    assert_eq!(tools["layers"].as_array().unwrap().len(), 2, "the base's layer and one more");
    assert_eq!(tools["layers"][0], debian["layers"][0], "the base's layer is shared, not copied");

    // The same steps again: cached, nothing runs.
    all[2] = "tools-again";
    let again = home.run(&all);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stderr.contains("steps cached"), "{}", again.stderr);
    // A build file: its steps in the order written, a copy's source beside the file.
    let file = home.path().join("hiber.build");
    std::fs::write(&file, "# ordered\nfrom debian\nrun echo first > /etc/order\ncopy agent.py /srv/agent.py\nrun cat /srv/agent.py >> /etc/order\n").unwrap();
    home.ok(&["image", "build", "ordered", "-f", file.to_str().unwrap()]);
    assert_eq!(home.ok(&["run", "ordered", "cat", "/etc/order"]), "first\nprint('agent here')\n");
    let both = home.run(&["image", "build", "x", "-f", file.to_str().unwrap(), "--run", "true"]);
    assert_ne!(both.code, 0, "a build file and step flags together are refused");

    // A failing step: one line, no image, no layer left.
    let layers = || std::fs::read_dir(home.path().join("layers")).unwrap().count();
    let before = layers();
    let failed = home.run(&["image", "build", "broken", "--from", "debian", "--run", "echo no such luck >&2; exit 3"]);
    assert_ne!(failed.code, 0);
    assert!(
        failed.stderr.trim().ends_with("build step 1 (--run echo no such luck >&2; exit 3) failed: no such luck"),
        "{}",
        failed.stderr
    );
    assert_eq!(layers(), before);
    assert!(home.run(&["run", "broken", "true"]).code != 0);
}
