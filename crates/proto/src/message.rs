//! Control messages, carried as JSON inside [`crate::Frame::Control`].

use serde::{Deserialize, Serialize};

/// A process to start inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Extra environment as `KEY=VALUE`; added to (and overriding) the defaults
    /// (`PATH`, `HOME=/root`, `HOSTNAME`, and `TERM` for a terminal).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory; `/` when empty.
    #[serde(default)]
    pub cwd: String,
    /// Give the process a pseudo-terminal (stdin, stdout and stderr on it).
    #[serde(default)]
    pub tty: bool,
    /// Who it runs as: `user`, `uid`, `user:group` or `uid:gid`, names looked up in the
    /// sandbox's `/etc/passwd` and `/etc/group`; root when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
}

impl ProcessSpec {
    /// A plain command: the default environment, `/` as working directory, no terminal.
    pub fn command<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> ProcessSpec {
        ProcessSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: String::new(),
            tty: false,
            user: String::new(),
        }
    }
}

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What hiber-init is told when it starts (its single argument, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitConfig {
    /// Started at boot under the id [`crate::MAIN_ID`], its output appended to
    /// [`crate::MAIN_LOG`]; hiber-init exits with its exit code when it ends.
    /// Without one, hiber-init idles until it is stopped.
    #[serde(default)]
    pub main: Option<ProcessSpec>,
    /// The sandbox's hostname, exported as `HOSTNAME`.
    #[serde(default)]
    pub hostname: String,
}

/// The first frame of every connection, from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start `process` under `id`, or re-attach to the process already started
    /// under `id` (then `process` is ignored). Output produced while no
    /// connection was attached is kept (up to a bound) and sent first.
    Exec {
        /// Caller-chosen id, unique per sandbox; a retry reuses it.
        id: String,
        /// What to run.
        process: ProcessSpec,
        /// Whether the host will send stdin; without it the process's stdin
        /// is `/dev/null` (or the terminal, for a tty).
        #[serde(default)]
        stdin: bool,
        /// Initial terminal size, for a tty.
        #[serde(default)]
        size: Option<TtySize>,
    },
    /// Send `signal` to the process started under `id`.
    Signal {
        /// Exec id.
        id: String,
        /// Signal number.
        signal: i32,
    },
    /// Liveness check; answered with [`Reply::Pong`].
    Ping,
    /// Become the relay of the in-sandbox SDK: hiber-init forwards every
    /// call the agent's code makes on [`crate::SDK_SOCKET`] as a
    /// [`Frame::Control`](crate::Frame::Control) holding a [`Reply::Call`],
    /// and the host answers each with an [`Answer`] in a control frame. Calls
    /// not answered when the connection ends (e.g. a snapshot detaches it)
    /// stay pending inside the sandbox and are sent again, same `call`
    /// numbers, to the next `Serve` connection. One relay at a time: a new
    /// `Serve` replaces the old one.
    Serve,
    /// Close every other connection (before a snapshot: CRIU cannot dump a
    /// connection to the host). Processes keep running and buffer their
    /// output; clients re-attach by exec id. Answered with [`Reply::Done`].
    Detach,
}

/// Control answers from hiber-init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The process runs (or ran) with this pid inside the sandbox.
    Started {
        /// Pid inside the sandbox's pid namespace.
        pid: i32,
        /// True when the request re-attached to an existing process.
        attached: bool,
    },
    /// The process ended; sent after all of its output.
    Exited {
        /// Exit status, or 128 + signal number when killed by a signal.
        code: i32,
    },
    /// Answer to [`Request::Ping`].
    Pong {
        /// hiber-init's version.
        version: String,
    },
    /// Answer to [`Request::Signal`].
    Done,
    /// A call of the in-sandbox SDK, relayed to the host (on a `Serve`
    /// connection).
    Call {
        /// Numbers the call within the sandbox's life (across snapshots).
        call: u64,
        /// The call as the agent's SDK sent it (one JSON object, e.g.
        /// `{"op": "next_message"}`); hiber-init does not interpret it.
        request: serde_json::Value,
    },
    /// The request failed; the connection is closed after it.
    Error {
        /// One line saying what went wrong.
        message: String,
    },
}

/// The host's answer to a [`Reply::Call`], on a `Serve` connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The call answered.
    pub call: u64,
    /// What the agent's SDK receives, as one JSON object (e.g.
    /// `{"ok": true, "result": ...}`); hiber-init does not interpret it.
    pub response: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_roundtrips_through_json() {
        let req = Request::Exec {
            id: "x1".into(),
            process: ProcessSpec {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["A=B".into()],
                cwd: "/tmp".into(),
                tty: true,
                user: "1000:1000".into(),
            },
            stdin: true,
            size: Some(TtySize { rows: 24, cols: 80 }),
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains(r#""op":"exec""#), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), req);
    }

    #[test]
    fn missing_optional_fields_take_defaults() {
        let req: Request = serde_json::from_str(r#"{"op":"exec","id":"a","process":{"argv":["true"]}}"#).unwrap();
        let Request::Exec { process, stdin, size, .. } = req else { panic!("not exec") };
        assert!(process.env.is_empty() && process.cwd.is_empty() && !process.tty);
        assert!(!stdin && size.is_none());
    }
}
