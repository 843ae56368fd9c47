//! End-to-end tests of an IPython kernel (a Jupyter notebook's engine: ZeroMQ sockets, threads)
//! across snapshots: a variable defined before a snapshot is there after a restore and in each
//! fork, and forks are independent kernels. The image is the Debian root with ipykernel that
//! scripts/setup-test.sh makes (about a minute the first time on a machine).

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

/// A kernel on fixed loopback ports, as a notebook server would start it.
const KERNEL: &str = r#"
echo '{"shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003, "control_port": 50004,
 "hb_port": 50005, "ip": "127.0.0.1", "key": "hiber-test", "transport": "tcp",
 "signature_scheme": "hmac-sha256", "kernel_name": "python3"}' > /tmp/kernel.json
export HOME=/tmp
exec python3 -m ipykernel_launcher -f /tmp/kernel.json
"#;

/// A Jupyter client that runs argument 1 in the kernel and prints what it printed.
const CLIENT: &str = r#"
import sys
from jupyter_client import BlockingKernelClient
client = BlockingKernelClient(connection_file="/tmp/kernel.json")
client.load_connection_file()
client.start_channels()
client.wait_for_ready(timeout=30)
def show(message):
    if message["msg_type"] == "stream":
        print(message["content"]["text"], end="")
reply = client.execute_interactive(sys.argv[1], timeout=30, output_hook=show)
assert reply["content"]["status"] == "ok", reply["content"]
client.stop_channels()
"#;

fn run_cell(home: &Home, id: &str, code: &str) -> String {
    home.ok(&["exec", id, "python3", "-c", CLIENT, code]).trim().to_string()
}

#[test]
fn a_kernels_variables_survive_restore_and_forks_are_independent_kernels() {
    require!();
    let home = Home::new();
    if !home.test_image("jupyter", common::JUPYTER) {
        return;
    }
    let id = home.detached(&["jupyter", "sh", "-c", KERNEL]);
    let started = eventually(Duration::from_secs(60), || {
        home.run(&["exec", &id, "python3", "-c", CLIENT, "print('up')"]).stdout.trim() == "up"
    });
    assert!(started, "the kernel did not answer: {}", home.run(&["logs", &id]).stdout);
    assert_eq!(run_cell(&home, &id, "x = 41 + 1; print(x)"), "42");
    let snapshot = home.ok(&["snapshot", &id]).trim().to_string();

    let restored = home.ok(&["restore", &snapshot]).trim().to_string();
    assert_eq!(run_cell(&home, &restored, "print(x)"), "42");
    let forks: Vec<String> = home.ok(&["fork", &snapshot, "-n", "2"]).split_whitespace().map(String::from).collect();
    run_cell(&home, &forks[0], "x = 'changed'");
    assert_eq!(run_cell(&home, &forks[0], "print(x)"), "changed");
    assert_eq!(run_cell(&home, &forks[1], "print(x)"), "42", "a fork saw the other's variable");
}
