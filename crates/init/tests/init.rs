//! Runs the real hiber-init binary as an ordinary process (its run directory
//! moved into a temp dir) and talks to it over its socket like the host.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use hiber_proto::{read_frame, write_frame, Frame, ProcessSpec, Reply, Request, TtySize};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A hiber-init process of our own, killed (by pid) when dropped.
struct Init {
    child: Child,
    dir: tempfile::TempDir,
}

impl Init {
    fn start(config: Option<&str>) -> Init {
        Init::start_in(tempfile::tempdir().unwrap(), config)
    }

    /// Starts hiber-init with its run directory in `dir`, and waits until it
    /// answers a ping.
    fn start_in(dir: tempfile::TempDir, config: Option<&str>) -> Init {
        let init = Init::spawn_in(dir, config);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(mut conn) = UnixStream::connect(init.socket()) {
                conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                write_frame(&mut conn, &Frame::control(&Request::Ping)).unwrap();
                if let Ok(Some(_)) = read_frame(&mut conn) {
                    return init;
                }
            }
            assert!(Instant::now() < deadline, "hiber-init never answered a ping");
            sleep(Duration::from_millis(10));
        }
    }

    fn spawn(config: Option<&str>) -> Init {
        Init::spawn_in(tempfile::tempdir().unwrap(), config)
    }

    fn spawn_in(dir: tempfile::TempDir, config: Option<&str>) -> Init {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hiber-init"));
        cmd.env("HIBER_INIT_RUNDIR", dir.path()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(config) = config {
            cmd.arg(config);
        }
        Init { child: cmd.spawn().unwrap(), dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("init.sock")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Connects and sends `request` as the first frame.
    fn send(&self, request: &Request) -> UnixStream {
        let mut conn = UnixStream::connect(self.socket()).unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        write_frame(&mut conn, &Frame::control(request)).unwrap();
        conn
    }

    /// Sends `request` and returns the single reply.
    fn ask(&self, request: &Request) -> Reply {
        let mut conn = self.send(request);
        let reply = control(read_frame(&mut conn).unwrap().expect("a reply"));
        assert_eq!(read_frame(&mut conn).unwrap(), None, "connection closes after the reply");
        reply
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "hiber-init did not exit within {within:?}");
            sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn control(frame: Frame) -> Reply {
    frame.parse_control().unwrap_or_else(|| panic!("not a reply: {frame:?}"))
}

fn spec(argv: &[&str]) -> ProcessSpec {
    ProcessSpec::command(argv.iter().copied())
}

fn exec(id: &str, process: ProcessSpec) -> Request {
    Request::Exec { id: id.into(), process, stdin: false, size: None }
}

/// Everything one exec connection received.
#[derive(Debug, Default)]
struct Outcome {
    started: Option<(i32, bool)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exited: Option<i32>,
    error: Option<String>,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Reads frames until `Exited`, `Error` or the end of the connection.
fn collect(conn: &mut UnixStream) -> Outcome {
    let mut out = Outcome::default();
    while let Some(frame) = read_frame(conn).unwrap() {
        match frame {
            Frame::Stdout(b) => out.stdout.extend(b),
            Frame::Stderr(b) => out.stderr.extend(b),
            Frame::Control(_) => match control(frame) {
                Reply::Started { pid, attached } => {
                    assert!(out.started.is_none(), "Started twice");
                    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "output before Started");
                    out.started = Some((pid, attached));
                }
                Reply::Exited { code } => {
                    out.exited = Some(code);
                    assert_eq!(read_frame(conn).unwrap(), None, "connection closes after Exited");
                    return out;
                }
                Reply::Error { message } => {
                    out.error = Some(message);
                    return out;
                }
                other => panic!("unexpected reply {other:?}"),
            },
            other => panic!("unexpected frame {other:?}"),
        }
    }
    out
}

/// Reads frames until `Started` and returns the pid.
fn started(conn: &mut UnixStream) -> i32 {
    match read_frame(conn).unwrap().map(control) {
        Some(Reply::Started { pid, .. }) => pid,
        other => panic!("expected Started, got {other:?}"),
    }
}

#[test]
fn ping_answers_pong() {
    let init = Init::start(None);
    assert_eq!(init.ask(&Request::Ping), Reply::Pong { version: env!("CARGO_PKG_VERSION").into() });
    let mode = fs::metadata(init.socket()).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
}

#[test]
fn output_streams_and_exit_code() {
    let init = Init::start(None);
    let mut conn = init.send(&exec("e1", spec(&["sh", "-c", "echo out; echo err >&2; exit 3"])));
    let out = collect(&mut conn);
    assert!(matches!(out.started, Some((pid, false)) if pid > 0), "{out:?}");
    assert_eq!(out.stdout(), "out\n");
    assert_eq!(out.stderr(), "err\n");
    assert_eq!(out.exited, Some(3));
}

#[test]
fn killed_process_reports_128_plus_signal() {
    let init = Init::start(None);
    let mut conn = init.send(&exec("k", spec(&["sh", "-c", "kill -KILL $$"])));
    assert_eq!(collect(&mut conn).exited, Some(137));
}

#[test]
fn stdin_is_piped_until_eof() {
    let init = Init::start(None);
    let request = Request::Exec { id: "cat".into(), process: spec(&["cat"]), stdin: true, size: None };
    let mut conn = init.send(&request);
    write_frame(&mut conn, &Frame::Stdin(b"hello ".to_vec())).unwrap();
    write_frame(&mut conn, &Frame::Stdin(b"world".to_vec())).unwrap();
    write_frame(&mut conn, &Frame::StdinEof).unwrap();
    let out = collect(&mut conn);
    assert_eq!(out.stdout(), "hello world");
    assert_eq!(out.exited, Some(0));

    // Without `stdin`, stdin is /dev/null: cat ends at once.
    let mut conn = init.send(&exec("cat2", spec(&["cat"])));
    let out = collect(&mut conn);
    assert_eq!((out.stdout(), out.exited), (String::new(), Some(0)));
}

#[test]
fn environment_and_working_directory() {
    let init = Init::start(Some(r#"{"hostname":"testbox"}"#));
    let cwd = init.dir.path().to_str().unwrap().to_string();
    let mut process = spec(&["sh", "-c", r#"echo "$FOO|$HOME|$HOSTNAME|$PATH|${TERM-unset}|$HIBER_INIT_RUNDIR"; pwd"#]);
    process.env = vec!["FOO=bar".into(), "HOME=/home/x".into()];
    process.cwd = cwd.clone();
    let mut conn = init.send(&exec("env", process));
    let out = collect(&mut conn);
    assert_eq!(out.stdout(), format!("bar|/home/x|testbox|{}|unset|\n{cwd}\n", hiber_proto::DEFAULT_PATH));
    assert_eq!(out.exited, Some(0));

    // Default cwd is /, and a program is found through the process's PATH.
    let bin = init.path("bin");
    fs::create_dir(&bin).unwrap();
    fs::write(bin.join("hello-tool"), "#!/bin/sh\necho tool in $(pwd)\n").unwrap();
    fs::set_permissions(bin.join("hello-tool"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut process = spec(&["hello-tool"]);
    process.env = vec![format!("PATH={}:/usr/bin:/bin", bin.display())];
    let mut conn = init.send(&exec("tool", process));
    let out = collect(&mut conn);
    assert_eq!((out.stdout(), out.exited), ("tool in /\n".to_string(), Some(0)));
}

#[test]
fn programs_that_cannot_run_exit_127_or_126() {
    let init = Init::start(None);
    let mut conn = init.send(&exec("nf", spec(&["no-such-program-hiber"])));
    let out = collect(&mut conn);
    assert_eq!(out.started, None, "a program that never ran is not Started");
    assert_eq!(out.stderr(), "hiber-init: cannot run 'no-such-program-hiber': No such file or directory\n");
    assert_eq!(out.exited, Some(127));

    let plain = init.path("plain");
    fs::write(&plain, "not a program").unwrap();
    let mut conn = init.send(&exec("denied", spec(&[plain.to_str().unwrap()])));
    let out = collect(&mut conn);
    assert!(out.stderr().contains("Permission denied"), "{out:?}");
    assert_eq!(out.exited, Some(126));

    let mut process = spec(&["true"]);
    process.cwd = "/no/such/dir".into();
    let mut conn = init.send(&exec("cwd", process));
    let out = collect(&mut conn);
    assert!(out.stderr().contains("cannot change to directory '/no/such/dir'"), "{out:?}");
    assert_eq!(out.exited, Some(126));

    // Re-attaching to a failed exec gives its status again (its message
    // was delivered already), and never runs anything a second time.
    let mut conn = init.send(&exec("nf", spec(&["true"])));
    let out = collect(&mut conn);
    assert_eq!((out.started, out.stderr(), out.exited), (None, String::new(), Some(127)));
}

fn tty_spec(argv: &[&str]) -> ProcessSpec {
    ProcessSpec { tty: true, ..spec(argv) }
}

#[test]
fn tty_exec_gets_a_terminal_of_the_requested_size() {
    let init = Init::start(None);
    let mut conn = init.send(&exec("tty", tty_spec(&["sh", "-c", "tty; echo $TERM"])));
    let out = collect(&mut conn);
    assert!(out.stdout().starts_with("/dev/pts/"), "{out:?}");
    assert!(out.stdout().ends_with("\r\nxterm\r\n"), "{out:?}");
    assert_eq!(out.exited, Some(0));

    let request = Request::Exec {
        id: "size".into(),
        process: tty_spec(&["stty", "size"]),
        stdin: false,
        size: Some(TtySize { rows: 24, cols: 80 }),
    };
    let out = collect(&mut init.send(&request));
    assert_eq!((out.stdout(), out.exited), ("24 80\r\n".to_string(), Some(0)));
}

#[test]
fn tty_resize_and_input() {
    let init = Init::start(None);
    let request = Request::Exec {
        id: "resize".into(),
        process: tty_spec(&["sh", "-c", "read line; echo \"got $line\"; stty size"]),
        stdin: true,
        size: Some(TtySize { rows: 10, cols: 20 }),
    };
    let mut conn = init.send(&request);
    started(&mut conn);
    write_frame(&mut conn, &Frame::Resize(TtySize { rows: 50, cols: 132 })).unwrap();
    write_frame(&mut conn, &Frame::StdinEof).unwrap(); // ignored on a terminal
    write_frame(&mut conn, &Frame::Stdin(b"go\n".to_vec())).unwrap();
    let out = collect(&mut conn);
    assert!(out.stdout().contains("got go\r\n50 132\r\n"), "{out:?}");
    assert_eq!(out.exited, Some(0));
}

#[test]
fn detach_and_reattach_by_id() {
    let init = Init::start(None);
    let marker = init.path("ran");
    let script = format!("sleep 0.3; echo late; echo once >> {}", marker.display());
    let request = exec("r1", spec(&["sh", "-c", &script]));
    let mut conn = init.send(&request);
    let pid = started(&mut conn);
    drop(conn);

    let mut again = init.send(&request);
    let out = collect(&mut again);
    assert_eq!(out.started, Some((pid, true)));
    assert_eq!(out.stdout(), "late\n");
    assert_eq!(out.exited, Some(0));

    // Later re-attaches still get the status (the output was delivered).
    let out = collect(&mut init.send(&request));
    assert_eq!((out.started, out.stdout(), out.exited), (Some((pid, true)), String::new(), Some(0)));
    assert_eq!(fs::read_to_string(&marker).unwrap(), "once\n", "the command ran only once");
}

#[test]
fn output_made_while_detached_is_kept_up_to_the_bound() {
    let init = Init::start(None);
    let marker = init.path("done");
    // About 2 MB of output, then a marker file once it is all written.
    let script = format!("seq 1 300000; touch {}", marker.display());
    let request = exec("big", spec(&["sh", "-c", &script]));
    let mut conn = init.send(&request);
    started(&mut conn);
    drop(conn);
    let deadline = Instant::now() + TIMEOUT;
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the writer never finished");
        sleep(Duration::from_millis(20));
    }
    sleep(Duration::from_millis(100));
    let out = collect(&mut init.send(&request));
    assert_eq!(out.exited, Some(0));
    assert!(out.stdout.len() <= 1 << 20, "kept {} bytes", out.stdout.len());
    assert!(out.stdout.len() > (1 << 20) - 16, "kept only {} bytes", out.stdout.len());
    assert!(out.stdout().ends_with("\n299999\n300000\n"), "the newest output is kept");
}

#[test]
fn attached_output_is_never_dropped_even_when_the_host_reads_slowly() {
    let init = Init::start(None);
    // About 3.4 MB: far more than the buffer, the pipe and the socket hold.
    let mut conn = init.send(&exec("seq", spec(&["seq", "1", "500000"])));
    started(&mut conn);
    sleep(Duration::from_millis(1500));
    let out = collect(&mut conn);
    let expected: String = (1..=500000).map(|n| format!("{n}\n")).collect();
    assert!(out.stdout() == expected, "got {} bytes, not the expected {}", out.stdout.len(), expected.len());
    assert_eq!(out.exited, Some(0));
}

#[test]
fn exited_waits_for_everything_holding_the_output() {
    let init = Init::start(None);
    // The shell exits at once; its background child writes later.
    let script = "(sleep 0.3; echo late; echo err >&2) & echo early";
    let out = collect(&mut init.send(&exec("bg", spec(&["sh", "-c", script]))));
    assert_eq!((out.stdout(), out.stderr(), out.exited), ("early\nlate\n".into(), "err\n".into(), Some(0)));
}

#[test]
fn a_host_that_only_stops_sending_still_gets_the_output() {
    let init = Init::start(None);
    let mut conn = init.send(&exec("half", spec(&["sh", "-c", "sleep 0.2; echo after"])));
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let out = collect(&mut conn);
    assert_eq!((out.stdout(), out.exited), ("after\n".to_string(), Some(0)));
}

#[test]
fn a_new_attachment_replaces_the_old_one() {
    let init = Init::start(None);
    let request = Request::Exec {
        id: "rd".into(),
        process: spec(&["sh", "-c", "read x; echo \"got $x\""]),
        stdin: true,
        size: None,
    };
    let mut first = init.send(&request);
    let pid = started(&mut first);
    let mut second = init.send(&request);
    assert_eq!(read_frame(&mut second).unwrap().map(control), Some(Reply::Started { pid, attached: true }));
    assert_eq!(read_frame(&mut first).unwrap(), None, "the old connection is closed");
    write_frame(&mut second, &Frame::Stdin(b"hi\n".to_vec())).unwrap();
    let out = collect(&mut second);
    assert_eq!((out.stdout(), out.exited), ("got hi\n".to_string(), Some(0)));
}

#[test]
fn detach_closes_every_other_connection_and_processes_go_on() {
    let init = Init::start(None);
    let request = exec("d", spec(&["sh", "-c", "sleep 0.5; echo late"]));
    let mut attached = init.send(&request);
    let pid = started(&mut attached);
    // A connection that has not sent its request yet is closed as well.
    let mut idle = UnixStream::connect(init.socket()).unwrap();
    idle.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut detach = init.send(&Request::Detach);
    assert_eq!(read_frame(&mut detach).unwrap().map(control), Some(Reply::Done));
    // By the time Done arrives, the others are closed already.
    for conn in [&mut attached, &mut idle] {
        conn.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        assert_eq!(read_frame(conn).unwrap(), None);
    }
    // New connections work, and the process's output waited for them.
    let out = collect(&mut init.send(&request));
    assert_eq!(out.started, Some((pid, true)));
    assert_eq!((out.stdout(), out.exited), ("late\n".to_string(), Some(0)));
}

#[test]
fn signal_request() {
    let init = Init::start(None);
    let mut conn = init.send(&exec("s", spec(&["sleep", "30"])));
    started(&mut conn);
    assert_eq!(init.ask(&Request::Signal { id: "s".into(), signal: 9 }), Reply::Done);
    assert_eq!(collect(&mut conn).exited, Some(137));
    assert!(matches!(
        init.ask(&Request::Signal { id: "s".into(), signal: 9 }),
        Reply::Error { message } if message.contains("not running")
    ));
    assert!(matches!(init.ask(&Request::Signal { id: "nope".into(), signal: 15 }), Reply::Error { .. }));
}

#[test]
fn garbage_gets_an_error_and_init_lives_on() {
    let init = Init::start(None);
    let expect_error = |mut conn: UnixStream| match read_frame(&mut conn).unwrap().map(control) {
        Some(Reply::Error { message }) => assert!(!message.contains('\n')),
        other => panic!("expected an error, got {other:?}"),
    };
    // Raw bytes that are no frame at all.
    let mut conn = UnixStream::connect(init.socket()).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    std::io::Write::write_all(&mut conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    expect_error(conn);
    // A frame with a tag nobody knows.
    let mut conn = UnixStream::connect(init.socket()).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    std::io::Write::write_all(&mut conn, &[1, 0, 0, 0, 42, 0]).unwrap();
    expect_error(conn);
    // Well-framed, but not a request.
    for frame in [Frame::Control(b"{\"op\":".to_vec()), Frame::Stdout(b"x".to_vec())] {
        let mut conn = UnixStream::connect(init.socket()).unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        write_frame(&mut conn, &frame).unwrap();
        expect_error(conn);
    }
    // A connection that closes without a word.
    drop(UnixStream::connect(init.socket()).unwrap());
    // Garbage in the middle of an exec: an error, and the process goes on.
    let request =
        Request::Exec { id: "g".into(), process: spec(&["sh", "-c", "read x; echo $x"]), stdin: true, size: None };
    let mut conn = init.send(&request);
    started(&mut conn);
    write_frame(&mut conn, &Frame::control(&Request::Ping)).unwrap();
    assert!(collect(&mut conn).error.is_some());
    let mut conn = init.send(&request);
    started(&mut conn);
    write_frame(&mut conn, &Frame::Stdin(b"still here\n".to_vec())).unwrap();
    assert_eq!(collect(&mut conn).stdout(), "still here\n");

    assert!(matches!(init.ask(&Request::Ping), Reply::Pong { .. }));
}

#[test]
fn main_process_exit_code_becomes_inits() {
    let config = r#"{"main":{"argv":["sh","-c","echo hello; echo oops >&2; exit 7"]}}"#;
    let mut init = Init::spawn(Some(config));
    let status = init.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(7));
    assert_eq!(fs::read_to_string(init.path("main.log")).unwrap(), "hello\noops\n");
}

#[test]
fn main_process_that_cannot_run() {
    let mut init = Init::spawn(Some(r#"{"main":{"argv":["no-such-main-hiber"]}}"#));
    assert_eq!(init.wait_exit(TIMEOUT).code(), Some(127));
    let log = fs::read_to_string(init.path("main.log")).unwrap();
    assert_eq!(log, "hiber-init: cannot run 'no-such-main-hiber': No such file or directory\n");
}

#[test]
fn main_process_can_be_attached_and_signalled() {
    let mut init = Init::start(Some(r#"{"main":{"argv":["sleep","30"]}}"#));
    let mut conn = init.send(&exec("main", spec(&["ignored"])));
    assert!(matches!(read_frame(&mut conn).unwrap().map(control), Some(Reply::Started { attached: true, .. })));
    assert_eq!(init.ask(&Request::Signal { id: "main".into(), signal: 15 }), Reply::Done);
    assert_eq!(init.wait_exit(TIMEOUT).code(), Some(143));
}

#[test]
fn bad_config_exits_2_with_a_log_line() {
    let mut init = Init::spawn(Some("{not json"));
    assert_eq!(init.wait_exit(TIMEOUT).code(), Some(2));
    let log = fs::read_to_string(init.path("init.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("bad configuration"), "{log}");
}

fn is_gone(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
}

#[test]
fn sigterm_stops_everything_and_exits_143() {
    let mut init = Init::start(None);
    let mut conn = init.send(&exec("sl", spec(&["sleep", "30"])));
    let sleeper = started(&mut conn);
    // An orphan too: its parent shell exits at once. (It must not keep the
    // exec's stdout open, or the exec would wait for it.)
    let script = "sleep 30 >/dev/null 2>&1 & echo $!";
    let mut conn2 = init.send(&exec("orphan", spec(&["sh", "-c", script])));
    let out = collect(&mut conn2);
    let orphan: i32 = out.stdout().trim().parse().unwrap_or_else(|_| panic!("{out:?}"));
    assert!(!is_gone(sleeper) && !is_gone(orphan));

    kill(init.pid(), Signal::SIGTERM).unwrap();
    assert_eq!(init.wait_exit(TIMEOUT).code(), Some(143));
    assert!(is_gone(sleeper), "the exec was stopped and reaped");
    assert!(is_gone(orphan), "the orphan was stopped and reaped");
    assert!(fs::read_to_string(init.path("init.log")).unwrap().contains("SIGTERM"));
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("init.sock")).unwrap());
    let init = Init::start_in(dir, None);
    assert!(matches!(init.ask(&Request::Ping), Reply::Pong { .. }));
}

// ---- The in-sandbox SDK relay ----

/// A connection to the SDK socket, like the agent's SDK makes.
struct Caller {
    conn: UnixStream,
    reader: std::io::BufReader<UnixStream>,
}

impl Caller {
    fn connect(init: &Init) -> Caller {
        let conn = UnixStream::connect(init.path("sdk.sock")).unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reader = std::io::BufReader::new(conn.try_clone().unwrap());
        Caller { conn, reader }
    }

    /// Connects and sends `line` (a newline is added).
    fn call(init: &Init, line: &str) -> Caller {
        let mut caller = Caller::connect(init);
        caller.send(line);
        caller
    }

    fn send(&mut self, line: &str) {
        std::io::Write::write_all(&mut self.conn, format!("{line}\n").as_bytes()).unwrap();
    }

    /// The next answer line, parsed.
    fn answer(&mut self) -> serde_json::Value {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.reader, &mut line).unwrap();
        assert!(line.ends_with('\n'), "an answer is one line: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    /// Asserts nothing arrives for a little while.
    fn nothing_yet(&mut self) {
        self.conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut byte = [0u8];
        let r = std::io::Read::read(&mut self.conn, &mut byte);
        assert!(r.is_err(), "expected no answer yet, got {r:?}");
        self.conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    }
}

/// The next `Call` a relay receives.
fn next_call(serve: &mut UnixStream) -> (u64, serde_json::Value) {
    match read_frame(serve).unwrap().map(control) {
        Some(Reply::Call { call, request }) => (call, request),
        other => panic!("expected a call, got {other:?}"),
    }
}

fn answer(serve: &mut UnixStream, call: u64, response: serde_json::Value) {
    write_frame(serve, &Frame::control(&hiber_proto::Answer { call, response })).unwrap();
}

fn no_frame_yet(serve: &mut UnixStream) {
    serve.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let r = read_frame(serve);
    assert!(matches!(r, Err(hiber_proto::FrameError::Io(_))), "expected nothing, got {r:?}");
    serve.set_read_timeout(Some(TIMEOUT)).unwrap();
}

#[test]
fn sdk_call_waits_for_a_relay_and_gets_its_answer() {
    let init = Init::start(None);
    let mode = fs::metadata(init.path("sdk.sock")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o666);
    let mut caller = Caller::call(&init, r#"{"op":"next_message"}"#);
    caller.nothing_yet();
    let mut serve = init.send(&Request::Serve);
    let (call, request) = next_call(&mut serve);
    assert_eq!(request, serde_json::json!({"op": "next_message"}));
    let response = serde_json::json!({"ok": true, "result": {"seq": 1, "content": "hi\nthere"}});
    answer(&mut serve, call, response.clone());
    assert_eq!(caller.answer(), response);
    // A later call on the same relay gets the next number.
    let mut caller = Caller::call(&init, r#"{"op":"session_id"}"#);
    let (next, _) = next_call(&mut serve);
    assert_eq!(next, call + 1);
    answer(&mut serve, next, serde_json::json!({"ok": true, "result": "s1"}));
    assert_eq!(caller.answer()["result"], "s1");
}

#[test]
fn unanswered_calls_go_again_to_the_next_relay_and_each_caller_gets_its_own() {
    let init = Init::start(None);
    let mut serve = init.send(&Request::Serve);
    let mut a = Caller::call(&init, r#"{"op":"a"}"#);
    let (call_a, _) = next_call(&mut serve);
    let mut b = Caller::call(&init, r#"{"op":"b"}"#);
    let (call_b, _) = next_call(&mut serve);
    drop(serve);
    // Pending calls stay while no relay is attached...
    let c = Caller::call(&init, r#"{"op":"c"}"#);
    sleep(Duration::from_millis(100));
    // ...and go to the next one, in call order, with the same numbers.
    let mut serve = init.send(&Request::Serve);
    assert_eq!(next_call(&mut serve), (call_a, serde_json::json!({"op": "a"})));
    assert_eq!(next_call(&mut serve), (call_b, serde_json::json!({"op": "b"})));
    let (call_c, _) = next_call(&mut serve);
    assert_eq!(call_c, call_b + 1);
    // A newer relay replaces this one (which is closed).
    let mut newer = init.send(&Request::Serve);
    assert_eq!(read_frame(&mut serve).unwrap(), None, "the replaced relay is closed");
    assert_eq!(next_call(&mut newer).0, call_a);
    assert_eq!(next_call(&mut newer).0, call_b);
    assert_eq!(next_call(&mut newer).0, call_c);
    // A caller that left gives up its call: it is not sent again, and
    // answering it changes nothing.
    drop(c);
    sleep(Duration::from_millis(100));
    drop(newer);
    let mut newer = init.send(&Request::Serve);
    assert_eq!(next_call(&mut newer).0, call_a);
    assert_eq!(next_call(&mut newer).0, call_b);
    no_frame_yet(&mut newer);
    answer(&mut newer, call_c, serde_json::json!({"ok": true, "result": "c"}));
    // Answers in any order reach their own callers; unknown calls are ignored.
    answer(&mut newer, 12345, serde_json::json!({"ok": true}));
    answer(&mut newer, call_b, serde_json::json!({"ok": true, "result": "b"}));
    answer(&mut newer, call_a, serde_json::json!({"ok": true, "result": "a"}));
    assert_eq!(b.answer()["result"], "b");
    assert_eq!(a.answer()["result"], "a");
    // Nothing is left to send to a later relay.
    drop(newer);
    let mut last = init.send(&Request::Serve);
    no_frame_yet(&mut last);
}

#[test]
fn detach_closes_the_relay_and_calls_stay_pending() {
    let init = Init::start(None);
    let mut serve = init.send(&Request::Serve);
    let mut caller = Caller::call(&init, r#"{"op":"sleep","seconds":5}"#);
    let (call, _) = next_call(&mut serve);
    let mut detach = init.send(&Request::Detach);
    assert_eq!(read_frame(&mut detach).unwrap().map(control), Some(Reply::Done));
    serve.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    assert_eq!(read_frame(&mut serve).unwrap(), None, "closed by the time Done arrives");
    // The SDK's connection is inside the sandbox: it is not detached.
    caller.nothing_yet();
    let mut serve = init.send(&Request::Serve);
    assert_eq!(next_call(&mut serve).0, call);
    answer(&mut serve, call, serde_json::json!({"ok": true, "result": null}));
    assert_eq!(caller.answer(), serde_json::json!({"ok": true, "result": null}));
}

#[test]
fn malformed_sdk_lines_get_an_error_without_a_relay() {
    let init = Init::start(None);
    let mut caller = Caller::connect(&init);
    for line in ["{not json", "[1,2]", "\"op\"", "{\"op\":\"a\"} trailing"] {
        caller.send(line);
        let error = caller.answer();
        assert_eq!(error["ok"], false, "{line}: {error}");
        assert!(error["error"].as_str().unwrap().starts_with("bad call"), "{error}");
    }
    // The connection still works, and nothing reached the relay but the
    // good call.
    caller.send(r#"{"op":"ok"}"#);
    let mut serve = init.send(&Request::Serve);
    let (call, request) = next_call(&mut serve);
    assert_eq!((call, request), (1, serde_json::json!({"op": "ok"})));
    no_frame_yet(&mut serve);
    answer(&mut serve, call, serde_json::json!({"ok": true, "result": 1}));
    assert_eq!(caller.answer()["result"], 1);
}

#[test]
fn a_relay_that_sends_garbage_gets_an_error() {
    let init = Init::start(None);
    let mut serve = init.send(&Request::Serve);
    write_frame(&mut serve, &Frame::Control(br#"{"call":"x"}"#.to_vec())).unwrap();
    assert!(matches!(
        read_frame(&mut serve).unwrap().map(control),
        Some(Reply::Error { message }) if message.contains("bad answer")
    ));
    assert_eq!(read_frame(&mut serve).unwrap(), None);
    let mut serve = init.send(&Request::Serve);
    write_frame(&mut serve, &Frame::Stdin(b"x".to_vec())).unwrap();
    assert!(matches!(read_frame(&mut serve).unwrap().map(control), Some(Reply::Error { .. })));
    assert!(matches!(init.ask(&Request::Ping), Reply::Pong { .. }));
}

#[test]
fn answers_sent_before_a_detach_are_delivered() {
    let init = Init::start(None);
    for round in 0..50 {
        let mut serve = init.send(&Request::Serve);
        let mut caller = Caller::call(&init, &format!(r#"{{"op":"next_message","round":{round}}}"#));
        let (call, _) = next_call(&mut serve);
        // The Detach's connection is open already, so that the answer and
        // the Detach arrive together.
        let mut detach = UnixStream::connect(init.socket()).unwrap();
        detach.set_read_timeout(Some(TIMEOUT)).unwrap();
        sleep(Duration::from_millis(5));
        answer(&mut serve, call, serde_json::json!({"ok": true, "result": round}));
        write_frame(&mut detach, &Frame::control(&Request::Detach)).unwrap();
        assert_eq!(read_frame(&mut detach).unwrap().map(control), Some(Reply::Done));
        assert_eq!(caller.answer()["result"], round, "round {round}");
        assert_eq!(read_frame(&mut serve).unwrap(), None);
    }
    // Nothing was left pending.
    let mut serve = init.send(&Request::Serve);
    no_frame_yet(&mut serve);
}
