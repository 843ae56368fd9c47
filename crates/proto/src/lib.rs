//! The wire protocol between the host and `hiber-init`.
//!
//! A host opens a Unix stream connection to [`INIT_SOCKET`] inside the sandbox,
//! sends one [`Request`] in a [`Frame::Control`], and then the two sides
//! exchange frames: stdin and window sizes one way, output and [`Reply`]s the
//! other. One connection carries one request.
//!
//! Connections may be cut at any moment (before a snapshot the host closes all
//! of them). [`Request::Exec`] carries an id: sending the same id again
//! re-attaches to the process it started instead of starting a second one.

pub mod frame;
pub mod message;

pub use frame::{decode, encode, read_frame, write_frame, Frame, FrameError, MAX_PAYLOAD};
pub use message::{Answer, InitConfig, ProcessSpec, Reply, Request, TtySize};

/// Path of hiber-init's control socket, inside the sandbox.
pub const INIT_SOCKET: &str = "/run/hiber/init.sock";

/// The in-sandbox SDK's socket: the agent's code sends one JSON object per
/// line and reads one JSON answer per line; hiber-init relays each call to
/// the host (see [`Request::Serve`]).
pub const SDK_SOCKET: &str = "/run/hiber/sdk.sock";

/// Where hiber-init appends the output of the sandbox's main process.
pub const MAIN_LOG: &str = "/run/hiber/main.log";

/// Path of the hiber-init binary, inside the sandbox.
pub const INIT_PATH: &str = "/.hiber/init";

/// Exec id reserved for the sandbox's main process (the command given to `run`).
pub const MAIN_ID: &str = "main";

/// The PATH every process in a sandbox starts with unless overridden.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
