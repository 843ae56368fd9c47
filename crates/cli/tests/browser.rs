//! End-to-end tests of headless Chromium across snapshots: a page's JavaScript timer carries on
//! from where it was, DevTools answers on its port after a restore, and forks are independent
//! browsers. The image is the Debian root with Chromium that scripts/setup-test.sh makes
//! (about two minutes the first time on a machine).

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

/// A page whose title counts tenths of a second since it was loaded, and Chromium showing it
/// with DevTools on 127.0.0.1:9222.
const BROWSER: &str = r#"
echo '<script>let n = 0; setInterval(() => { n++; document.title = "n" + n; }, 100);</script>' > /tmp/page.html
export HOME=/tmp
exec chromium --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir=/tmp/profile \
    --remote-debugging-address=127.0.0.1 --remote-debugging-port=9222 file:///tmp/page.html
"#;

/// The page's count, read from DevTools' HTTP endpoint in sandbox `id` (None until it answers).
fn count(home: &Home, id: &str) -> Option<u64> {
    let ask = "import json, urllib.request; \
               pages = json.load(urllib.request.urlopen('http://127.0.0.1:9222/json/list', timeout=5)); \
               print([p['title'] for p in pages if p['type'] == 'page'][0])";
    let title = home.run(&["exec", id, "python3", "-c", ask]).stdout;
    title.trim().strip_prefix('n')?.parse().ok()
}

#[test]
fn a_pages_timer_carries_on_and_devtools_answers_after_restore_and_in_forks() {
    require!();
    let home = Home::new();
    if !home.test_image("chromium", common::CHROMIUM) {
        return;
    }
    let id = home.detached(&["chromium", "sh", "-c", BROWSER]);
    // Three seconds of counting, so that a restart from zero would show.
    assert!(
        eventually(Duration::from_secs(60), || count(&home, &id).is_some_and(|n| n >= 30)),
        "Chromium's page did not count: {}",
        home.run(&["logs", &id]).stdout
    );
    let before = count(&home, &id).expect("DevTools answered just now");
    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();
    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    let forks: Vec<String> = home.ok(&["fork", &snapshot, "-n", "2"]).split_whitespace().map(String::from).collect();
    for sandbox in std::iter::once(&restored).chain(&forks) {
        let first = count(&home, sandbox).unwrap_or_else(|| panic!("DevTools in {sandbox} did not answer"));
        assert!(first >= before, "the timer in {sandbox} went back from {before} to {first}");
        assert!(
            eventually(Duration::from_secs(10), || count(&home, sandbox).is_some_and(|n| n > first)),
            "the timer in {sandbox} stopped at {first}"
        );
    }
    // Independent browsers: one stopped, the other counts on.
    home.ok(&["stop", &forks[1]]);
    let a = count(&home, &forks[0]).unwrap();
    assert!(eventually(Duration::from_secs(10), || count(&home, &forks[0]).is_some_and(|n| n > a)));
}

/// Chromium with its own sandbox on (it will not run so as root): as the user `web`.
const SANDBOXED_BROWSER: &str = r#"
useradd -m web
echo '<script>let n = 0; setInterval(() => { n++; document.title = "n" + n; }, 100);</script>' > /tmp/page.html
chmod 644 /tmp/page.html
exec setpriv --reuid=web --regid=web --init-groups env HOME=/home/web chromium --headless=new --disable-gpu \
    --no-first-run --user-data-dir=/home/web/profile --remote-debugging-address=127.0.0.1 \
    --remote-debugging-port=9222 file:///tmp/page.html
"#;

#[test]
fn chromiums_own_sandbox_runs_but_its_nested_pid_namespaces_are_refused_in_one_line() {
    require!();
    let home = Home::new();
    if !home.test_image("chromium", common::CHROMIUM) {
        return;
    }
    let id = home.detached(&["chromium", "sh", "-c", SANDBOXED_BROWSER]);
    assert!(
        eventually(Duration::from_secs(60), || count(&home, &id).is_some_and(|n| n >= 10)),
        "sandboxed Chromium's page did not count: {}",
        home.run(&["logs", &id]).stdout
    );
    // Its sandbox nests user and pid namespaces in ours; CRIU cannot dump nested pid namespaces.
    let refused = home.run(&["snapshot", &id]);
    assert_eq!(refused.code, 125);
    assert_eq!(refused.stderr.trim().lines().count(), 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("(/usr/lib/chromium/chromium --type=zygote"), "{}", refused.stderr);
    assert!(refused.stderr.contains("is in a nested pid namespace, which CRIU cannot dump"), "{}", refused.stderr);
    let before = count(&home, &id).expect("DevTools still answers");
    assert!(eventually(Duration::from_secs(10), || count(&home, &id).is_some_and(|n| n > before)), "it stopped");
    assert!(home.snapshots().is_empty());
}
