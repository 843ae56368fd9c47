//! End-to-end tests of ordinary programs nobody here wrote, across snapshots: ffmpeg stopped
//! mid-encode finishes a valid file, a Node HTTP server keeps its in-memory counter, and a
//! Python writer suspended and restored fifty times in a row (and ten more, snapshotted while it
//! runs) loses no file and no count, on a root filesystem whose stack of layers stays bounded.

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

/// Encodes six seconds of a test pattern at the input's own pace (`-re`), reporting progress
/// to /tmp/progress; when it is done, /tmp/probe holds ffprobe's count of the frames written
/// and /tmp/done ffmpeg's exit code (and the sandbox stays up to be asked).
const ENCODE: &str = "ffmpeg -nostdin -loglevel error -re -f lavfi -i testsrc=duration=6:size=320x240:rate=25 \
    -c:v mpeg4 -progress /tmp/progress -y /tmp/out.mp4; code=$?; \
    ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 \
    /tmp/out.mp4 > /tmp/probe; echo $code > /tmp/done; exec sleep infinity";

/// Microseconds of output ffmpeg in sandbox `id` reports done (0 before its first report).
fn encoded_us(home: &Home, id: &str) -> u64 {
    let progress = home.run(&["exec", id, "cat", "/tmp/progress"]).stdout;
    progress
        .lines()
        .filter_map(|l| l.strip_prefix("out_time_us="))
        .filter_map(|v| v.parse().ok())
        .next_back()
        .unwrap_or(0)
}

#[test]
fn ffmpeg_stopped_mid_encode_finishes_a_valid_file_after_restore() {
    require!();
    let home = Home::new();
    if !home.test_image("media", common::FFMPEG) {
        return;
    }
    let id = home.detached(&["media", "sh", "-c", ENCODE]);
    assert!(
        eventually(Duration::from_secs(30), || encoded_us(&home, &id) >= 1_500_000),
        "ffmpeg made no progress: {}",
        home.run(&["logs", &id]).stdout
    );
    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();
    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    let resumed_at = encoded_us(&home, &restored);
    assert!(resumed_at < 5_000_000, "the encode was over before the snapshot ({resumed_at} us)");
    assert_ne!(home.run(&["exec", &restored, "cat", "/tmp/done"]).code, 0, "ffmpeg was done before the snapshot");
    assert!(
        eventually(Duration::from_secs(30), || home.run(&["exec", &restored, "cat", "/tmp/done"]).code == 0),
        "ffmpeg did not finish after the restore"
    );
    assert_eq!(home.ok(&["exec", &restored, "cat", "/tmp/done"]).trim(), "0", "ffmpeg's exit code");
    assert_eq!(home.ok(&["exec", &restored, "cat", "/tmp/probe"]).trim(), "150", "frames in the finished file");
}

/// A Node HTTP server counting the requests it has answered, in memory only.
const NODE_COUNTER: &str =
    "let n = 0; require('http').createServer((q, r) => r.end(String(++n))).listen(3000, '127.0.0.1')";

/// The answer of the Node server in sandbox `id` to one request.
fn request(home: &Home, id: &str) -> String {
    let get =
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:3000/', timeout=5).read().decode())";
    home.run(&["exec", id, "python3", "-c", get]).stdout.trim().to_string()
}

#[test]
fn a_node_http_server_keeps_its_in_memory_counter() {
    require!();
    let home = Home::new();
    if !home.test_image("node", common::NODE) {
        return;
    }
    let id = home.detached(&["node", "node", "-e", NODE_COUNTER]);
    assert!(eventually(Duration::from_secs(20), || request(&home, &id) == "1"), "node did not answer");
    assert_eq!(request(&home, &id), "2");
    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();
    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    assert_eq!(request(&home, &restored), "3", "the restored server lost its count");
    let forks: Vec<String> = home.ok(&["fork", &snapshot, "-n", "2"]).split_whitespace().map(String::from).collect();
    assert_eq!(request(&home, &forks[0]), "3");
    assert_eq!(request(&home, &forks[0]), "4");
    assert_eq!(request(&home, &forks[1]), "3", "forks count apart");
}

/// Writes /data/1, /data/2, ... as fast as it can, each holding its number, and keeps the
/// count of files written in memory, reporting it in /tmp/count after each file.
const WRITER: &str = r#"
import os, time
os.makedirs("/data", exist_ok=True)
n = 0
while True:
    n += 1
    with open(f"/data/{n}", "w") as f:
        f.write(str(n))
    with open("/tmp/count.new", "w") as f:
        f.write(str(n))
    os.rename("/tmp/count.new", "/tmp/count")
    time.sleep(0.002)
"#;

/// The writer's count in sandbox `id`, then the numbers of the files in /data that hold their
/// own number, sorted. The writer goes on meanwhile, so the files may run past the count.
fn writer_state(home: &Home, id: &str) -> (u64, Vec<u64>) {
    let check = "import os\nprint(open('/tmp/count').read())\n\
                 for name in os.listdir('/data'):\n    if open('/data/' + name).read() == name: print(name)";
    let out = home.ok(&["exec", id, "python3", "-c", check]);
    let mut numbers = out.split_whitespace().map(|n| n.parse().expect("a number"));
    let count = numbers.next().expect("a count");
    let mut files: Vec<u64> = numbers.collect();
    files.sort();
    (count, files)
}

#[test]
fn sixty_snapshot_and_restore_cycles_of_a_writer_lose_no_file_and_no_count() {
    require!();
    let home = Home::new();
    home.debian();
    let mut id = home.detached(&["debian", "python3", "-c", WRITER]);
    assert!(eventually(Duration::from_secs(10), || home.run(&["exec", &id, "cat", "/tmp/count"]).code == 0));
    let (mut last_count, mut last_files) = (0, 0);
    // Suspends first, then snapshots that leave the sandbox running.
    for cycle in 0..60 {
        let leave_running = cycle >= 50;
        let snapshot =
            if leave_running { home.ok(&["snapshot", "--leave-running", &id]) } else { home.ok(&["snapshot", &id]) }
                .trim()
                .to_string();
        home.ok(&["rm", "-f", &id]);
        id = home.ok(&["restore", &snapshot]).trim().to_string();
        let (count, files) = writer_state(&home, &id);
        // The writer counts a file once it is written: what it wrote before the snapshot is
        // counted after it (all but the one it was writing, maybe).
        assert!(count > last_count && count + 1 >= last_files, "cycle {cycle}: count {count} after {last_files} files");
        // Every file from the first on is there and whole, but the one being written.
        let expected: Vec<u64> = (1..=files.len() as u64).collect();
        assert_eq!(files, expected, "cycle {cycle}: files lost or damaged");
        assert!(files.len() as u64 >= count, "cycle {cycle}: {} files for a count of {count}", files.len());
        (last_count, last_files) = (count, files.len() as u64);
        // Snapshot layers are squashed: at most 8 over hiber's layer and the image's one.
        let depth = home.stack_depth(&id);
        assert!(depth <= 10, "cycle {cycle}: the sandbox's root stacks {depth} layers");
        home.ok(&["snapshot", "rm", &snapshot]);
    }
}
