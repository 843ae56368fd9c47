//! Restores through CRIU's RPC (`criu swrk FD`): the request goes over a socket pair as a
//! protobuf `criu_req`, and CRIU's notifications come back on it, so hiber acts on them in
//! process — where an action script would cost a fork and exec of a program for each of the
//! seven notifications of every restore (~1 ms each here).
//!
//! Only the few protobuf fields hiber uses are written and read (field numbers from CRIU's
//! `images/rpc.proto`), by the minimal wire codec below.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

/// `criu_req_type` values.
const REQ_RESTORE: u64 = 2;
const REQ_NOTIFY: u64 = 6;
/// `criu_cg_mode`: leave cgroups to hiber.
const CG_MODE_IGNORE: u64 = 0;
/// The notification at which the tree's namespaces exist (the old hostname restored) and none
/// of its processes runs. CRIU tells the restored root's pid only in the one before it
/// (`setup-namespaces`).
const NAMESPACES_READY: &str = "post-setup-namespaces";

/// What to restore, and how.
pub struct RestoreRequest<'a> {
    /// The images directory.
    pub images: &'a Path,
    /// The mounted root the tree is restored onto.
    pub root: &'a Path,
    /// Where CRIU writes `log_file`.
    pub work_dir: &'a Path,
    /// The log's file name in `work_dir`.
    pub log_file: &'a str,
    /// A network namespace for the tree, open at this descriptor (inherited by CRIU, named by
    /// `key`); `None`: CRIU makes an empty one.
    pub netns: Option<(i32, &'a str)>,
}

/// An error talking to CRIU, or CRIU's own failure.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The socket or the process failed.
    #[error("{0}: {1}")]
    Io(&'static str, io::Error),
    /// CRIU sent something this codec cannot read.
    #[error("unreadable answer from criu: {0}")]
    Garbled(&'static str),
    /// CRIU answered that the restore failed (its message, if any).
    #[error("{0}")]
    Failed(String),
    /// hiber's handler of a notification failed; CRIU was told and gave up.
    #[error("{0}")]
    Handler(String),
}

/// Runs `criu swrk` at `criu` with `prepare` run in its child before the exec (e.g. joining a
/// cgroup), sends the restore, answers notifications — calling `at_namespaces(pid)` once the
/// restored root (host pid `pid`) has its namespaces — and returns the restored root's pid.
pub fn restore(
    criu: &Path,
    request: &RestoreRequest,
    prepare: impl Fn() -> io::Result<()> + Send + Sync + 'static,
    mut at_namespaces: impl FnMut(i32) -> Result<(), String>,
) -> Result<i32, RpcError> {
    let io = |what| move |e: nix::errno::Errno| RpcError::Io(what, e.into());
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).map_err(io("socketpair"))?;
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| RpcError::Io("opening a directory for criu", e));
    let (images, work_dir) = (open(request.images)?, open(request.work_dir)?);
    let mut command = Command::new(criu);
    command.arg("swrk").arg(theirs.as_raw_fd().to_string()).stdin(Stdio::null());
    let inherited = [Some(theirs.as_raw_fd()), request.netns.map(|(fd, _)| fd)];
    // SAFETY: the hook runs in the forked child before exec: it clears close-on-exec on two
    // descriptors the child holds and runs `prepare`, which only writes files.
    unsafe {
        command.pre_exec(move || {
            for fd in inherited.into_iter().flatten() {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            prepare()
        });
    }
    let mut child = command.spawn().map_err(|e| RpcError::Io("starting criu swrk", e))?;
    drop(theirs);
    let result =
        converse(&ours, &encode_restore(request, images.as_raw_fd(), work_dir.as_raw_fd()), &mut at_namespaces);
    drop(ours);
    let _ = child.wait();
    result
}

/// Sends the request and answers CRIU until its final response.
fn converse(
    socket: &OwnedFd,
    request: &[u8],
    at_namespaces: &mut dyn FnMut(i32) -> Result<(), String>,
) -> Result<i32, RpcError> {
    send(socket.as_raw_fd(), request, MsgFlags::empty()).map_err(|e| RpcError::Io("sending to criu", e.into()))?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut handler_error = None;
    let mut root_pid = None;
    loop {
        let n = recv(socket.as_raw_fd(), &mut buffer, MsgFlags::empty())
            .map_err(|e| RpcError::Io("reading from criu", e.into()))?;
        if n == 0 {
            return Err(handler_error.map_or(RpcError::Garbled("criu closed the connection"), RpcError::Handler));
        }
        let response = Response::decode(&buffer[..n])?;
        if response.kind == REQ_NOTIFY {
            root_pid = root_pid.or(response.pid);
            let mut ok = true;
            if response.script.as_deref() == Some(NAMESPACES_READY) {
                let handled = match root_pid {
                    Some(pid) => at_namespaces(pid),
                    None => Err("criu did not tell the restored root's pid".to_string()),
                };
                if let Err(e) = handled {
                    handler_error = Some(e);
                    ok = false;
                }
            }
            let mut reply = Encoder::default();
            reply.varint(1, REQ_NOTIFY).varint(3, u64::from(ok));
            send(socket.as_raw_fd(), &reply.0, MsgFlags::empty())
                .map_err(|e| RpcError::Io("answering criu", e.into()))?;
            continue;
        }
        if let Some(e) = handler_error {
            return Err(RpcError::Handler(e));
        }
        return match (response.success, response.restored_pid) {
            (true, Some(pid)) => Ok(pid),
            (true, None) => Err(RpcError::Garbled("a restore response without a pid")),
            (false, _) => Err(RpcError::Failed(response.error.unwrap_or_default())),
        };
    }
}

/// The `criu_req` of a restore.
fn encode_restore(request: &RestoreRequest, images_fd: i32, work_dir_fd: i32) -> Vec<u8> {
    let mut opts = Encoder::default();
    opts.varint(1, images_fd as u64) // images_dir_fd
        .bytes(10, request.log_file.as_bytes()) // log_file
        .bytes(13, request.root.as_os_str().as_encoded_bytes()) // root
        .varint(17, work_dir_fd as u64) // work_dir_fd
        .varint(26, 1) // rst_sibling: the tree becomes a child of the caller
        .varint(34, CG_MODE_IGNORE) // manage_cgroups_mode
        .varint(12, 1) // notify_scripts
        .varint(5, 1) // tcp_established
        .varint(8, 1) // file_locks
        .varint(18, 1); // link_remap
    match request.netns {
        Some((fd, key)) => {
            let mut inherit = Encoder::default();
            inherit.bytes(1, key.as_bytes()).varint(2, fd as u64);
            opts.bytes(27, &inherit.0); // inherit_fd
        }
        None => {
            opts.varint(38, libc::CLONE_NEWNET as u64); // empty_ns
        }
    }
    let mut req = Encoder::default();
    req.varint(1, REQ_RESTORE).bytes(2, &opts.0);
    req.0
}

/// The fields of a `criu_resp` hiber reads.
#[derive(Debug, Default, PartialEq)]
struct Response {
    kind: u64,
    success: bool,
    restored_pid: Option<i32>,
    script: Option<String>,
    pid: Option<i32>,
    error: Option<String>,
}

impl Response {
    fn decode(bytes: &[u8]) -> Result<Response, RpcError> {
        let mut response = Response::default();
        for field in Fields(bytes) {
            match field? {
                (1, Value::Varint(v)) => response.kind = v,
                (2, Value::Varint(v)) => response.success = v != 0,
                (4, Value::Bytes(restore)) => {
                    for field in Fields(restore) {
                        if let (1, Value::Varint(pid)) = field? {
                            response.restored_pid = Some(pid as i32);
                        }
                    }
                }
                (5, Value::Bytes(notify)) => {
                    for field in Fields(notify) {
                        match field? {
                            (1, Value::Bytes(s)) => response.script = Some(String::from_utf8_lossy(s).into_owned()),
                            (2, Value::Varint(pid)) => response.pid = Some(pid as i32),
                            _ => {}
                        }
                    }
                }
                (9, Value::Bytes(s)) => response.error = Some(String::from_utf8_lossy(s).into_owned()),
                _ => {}
            }
        }
        Ok(response)
    }
}

/// A protobuf message being written.
#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn varint(&mut self, field: u64, v: u64) -> &mut Self {
        self.raw_varint(field << 3);
        self.raw_varint(v);
        self
    }

    fn bytes(&mut self, field: u64, b: &[u8]) -> &mut Self {
        self.raw_varint((field << 3) | 2);
        self.raw_varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
}

/// A field's value: the two wire types hiber reads (others are skipped).
#[derive(Debug, PartialEq)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skipped,
}

/// The fields of a protobuf message, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, RpcError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or(RpcError::Garbled("a truncated varint"))?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RpcError::Garbled("a varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RpcError> {
        if self.0.len() < n {
            return Err(RpcError::Garbled("a truncated field"));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), RpcError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => self.take(8).map(|_| Value::Skipped)?,
                2 => {
                    let n = self.varint()? as usize;
                    Value::Bytes(self.take(n)?)
                }
                5 => self.take(4).map(|_| Value::Skipped)?,
                _ => return Err(RpcError::Garbled("an unknown wire type")),
            };
            Ok((key >> 3, value))
        })();
        if field.is_err() {
            self.0 = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_and_results_are_read() {
        let mut notify = Encoder::default();
        notify.bytes(1, b"post-setup-namespaces").varint(2, 4242);
        let mut msg = Encoder::default();
        msg.varint(1, REQ_NOTIFY).varint(2, 1).bytes(5, &notify.0);
        let r = Response::decode(&msg.0).unwrap();
        assert_eq!((r.kind, r.success, r.script.as_deref(), r.pid), (6, true, Some(NAMESPACES_READY), Some(4242)));

        let mut restore = Encoder::default();
        restore.varint(1, 300_000);
        let mut msg = Encoder::default();
        msg.varint(1, REQ_RESTORE).varint(2, 1).bytes(4, &restore.0);
        assert_eq!(Response::decode(&msg.0).unwrap().restored_pid, Some(300_000));

        let mut msg = Encoder::default();
        msg.varint(1, REQ_RESTORE).varint(2, 0).varint(7, 2).bytes(9, b"bad image");
        let r = Response::decode(&msg.0).unwrap();
        assert_eq!((r.success, r.error.as_deref()), (false, Some("bad image")));
    }

    #[test]
    fn garbled_answers_are_errors_not_panics() {
        for bytes in [&[0x08][..], &[0x12, 0x05, 0x01], &[0x0f], &[0xff; 11]] {
            assert!(matches!(Response::decode(bytes), Err(RpcError::Garbled(_))), "{bytes:?}");
        }
    }

    #[test]
    fn a_restore_request_carries_its_options() {
        let request = RestoreRequest {
            images: Path::new("/i"),
            root: Path::new("/r"),
            work_dir: Path::new("/w"),
            log_file: "restore.log",
            netns: None,
        };
        let bytes = encode_restore(&request, 7, 8);
        let fields: Vec<_> = Fields(&bytes).map(Result::unwrap).collect();
        assert_eq!(fields[0], (1, Value::Varint(REQ_RESTORE)));
        let (2, Value::Bytes(opts)) = fields[1] else { panic!("{fields:?}") };
        let opts: Vec<_> = Fields(opts).map(Result::unwrap).collect();
        for expected in [
            (1, Value::Varint(7)),
            (10, Value::Bytes(b"restore.log")),
            (13, Value::Bytes(b"/r")),
            (17, Value::Varint(8)),
            (38, Value::Varint(libc::CLONE_NEWNET as u64)),
            (12, Value::Varint(1)),
            (5, Value::Varint(1)),
        ] {
            assert!(opts.contains(&expected), "{expected:?} missing from {opts:?}");
        }
    }
}
