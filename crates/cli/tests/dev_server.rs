//! End-to-end tests of a vite dev server in watch mode across snapshots: after a restore (and in
//! each fork) an edit of a source file is seen by its file watcher and the rebuilt module is
//! served. The image is the Debian root with Node and a vite project that scripts/setup-test.sh
//! makes (about two minutes the first time on a machine).

mod common;

use std::time::Duration;

use common::{can_snapshot, eventually, Home};

macro_rules! require {
    () => {
        if !can_snapshot(module_path!()) {
            return;
        }
    };
}

/// A page importing /main.js, served by vite on 127.0.0.1:5173.
const DEV_SERVER: &str = r#"
cd /srv/app
echo '<script type="module" src="/main.js"></script>' > index.html
echo 'export const word = "before";' > main.js
exec node node_modules/vite/bin/vite.js --host 127.0.0.1 --port 5173 --strictPort
"#;

/// The module vite serves for /main.js in sandbox `id` (empty until it answers).
fn served(home: &Home, id: &str) -> String {
    let get = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:5173/main.js', timeout=5).read().decode())";
    home.run(&["exec", id, "python3", "-c", get]).stdout
}

/// Edits main.js in sandbox `id` to say `word`, and waits until vite serves the edit.
fn edit_and_see(home: &Home, id: &str, word: &str) {
    home.ok(&["exec", id, "sh", "-c", &format!("echo 'export const word = \"{word}\";' > /srv/app/main.js")]);
    let mut last = String::new();
    let seen = eventually(Duration::from_secs(15), || {
        last = served(home, id);
        last.contains(word)
    });
    assert!(seen, "vite in {id} did not serve the edit {word:?}; it serves:\n{last}");
}

#[test]
fn a_vite_dev_server_serves_edits_made_after_restore_and_in_each_fork() {
    require!();
    let home = Home::new();
    if !home.test_image("node", common::NODE) {
        return;
    }
    let id = home.detached(&["node", "sh", "-c", DEV_SERVER]);
    assert!(
        eventually(Duration::from_secs(60), || served(&home, &id).contains("before")),
        "vite did not start: {}",
        home.run(&["logs", &id]).stdout
    );
    edit_and_see(&home, &id, "watched");
    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();

    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    assert!(served(&home, &restored).contains("watched"), "the restored server lost its state");
    edit_and_see(&home, &restored, "restored");
    let forks: Vec<String> = home.ok(&["fork", &snapshot, "-n", "2"]).split_whitespace().map(String::from).collect();
    edit_and_see(&home, &forks[0], "fork0");
    assert!(served(&home, &forks[1]).contains("watched"), "a fork saw the other's edit");
    edit_and_see(&home, &forks[1], "fork1");
}
