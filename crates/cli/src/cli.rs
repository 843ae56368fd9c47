//! The command line: every subcommand and flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// hiber: durable sandboxes for AI agents.
#[derive(Debug, Parser)]
#[command(name = "hiber", version, about, propagate_version = true)]
pub struct Cli {
    /// Directory holding all of hiber's state (images, layers, sandboxes).
    #[arg(long, global = true, env = "HIBER_HOME", default_value = "/var/lib/hiber")]
    pub home: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a sandbox from an image and run a command in it.
    Run(RunArgs),
    /// Run a command in a running sandbox.
    Exec(ExecArgs),
    /// List sandboxes.
    Ps(JsonFlag),
    /// Print a detached sandbox's main output.
    Logs(LogsArgs),
    /// Stop sandboxes (SIGTERM, then SIGKILL after the grace time).
    Stop(StopArgs),
    /// Remove sandboxes and everything they left: processes, mounts, cgroups, files.
    Rm(RmArgs),
    /// Snapshot a running sandbox (prints the snapshot id); `snapshot rm` removes one.
    Snapshot(SnapshotArgs),
    /// List snapshots.
    Snapshots(JsonFlag),
    /// Start a new sandbox carrying on from a snapshot (prints its id).
    Restore(RestoreArgs),
    /// Start N independent sandboxes from one snapshot (prints their ids).
    Fork(ForkArgs),
    /// List images.
    Images(JsonFlag),
    /// Build, import or remove images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Pull an image from an OCI distribution registry (credentials, if it asks for them, from
    /// HIBER_REGISTRY_USER and HIBER_REGISTRY_PASSWORD).
    Pull(PullArgs),
    /// Check that this machine can run sandboxes (root, cgroups, overlayfs, CRIU).
    Check(JsonFlag),
    /// Measure hiber's speed.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the session server: the HTTP API on --listen (token in HIBER_HOME/api-token).
    Serve(ServeArgs),
    /// Agent sessions on a running `hiber serve`.
    Session(SessionArgs),
}

/// `hiber pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Name of the image (default: the repository's last part).
    #[arg(long)]
    pub name: Option<String>,
    /// `HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST]`.
    pub reference: String,
}

/// `hiber serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
}

/// `hiber session ...`.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// The server's URL.
    #[arg(long, global = true, env = "HIBER_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
    #[command(subcommand)]
    pub command: SessionCommand,
}

/// The session subcommands.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start a session running an agent's command (prints its id).
    New {
        /// Image to run the agent in.
        #[arg(long, conflicts_with = "snapshot", required_unless_present = "snapshot")]
        image: Option<String>,
        /// Snapshot to start from instead of an image.
        #[arg(long)]
        snapshot: Option<String>,
        /// Set an environment variable of the agent (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Seconds the agent may wait for a message before it is suspended.
        #[arg(long, value_name = "SECONDS")]
        idle_timeout: Option<u64>,
        /// The agent's command.
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Send a message and print what the agent appends until it waits again.
    Send {
        /// Session id.
        id: String,
        /// The message (a JSON string, or any JSON with --json).
        message: String,
        /// The message is JSON.
        #[arg(long)]
        json: bool,
    },
    /// List sessions.
    Ls(JsonFlag),
    /// Show one session as JSON.
    Show {
        /// Session id.
        id: String,
    },
    /// Print a session's context log.
    Log {
        /// Session id.
        id: String,
        /// Only entries after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep printing new entries.
        #[arg(short, long)]
        follow: bool,
        /// One JSON entry per line.
        #[arg(long)]
        json: bool,
    },
    /// Remove sessions: sandbox, snapshots and context log.
    Rm {
        /// Session ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options shared by `run` and `exec` for the process they start.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Keep stdin open and send it to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this user: `user`, `uid`, `user:group` or `uid:gid` (default: the image's user,
    /// or root).
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
}

/// `hiber run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the sandbox id.
    #[arg(short, long)]
    pub detach: bool,
    /// Name of the sandbox (also its hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Memory limit, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit in cores, e.g. 1 or 0.5.
    #[arg(long, value_name = "CORES")]
    pub cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long, value_name = "N")]
    pub pids: Option<String>,
    /// A confinement option: `seccomp=unconfined` runs the sandbox without the default seccomp
    /// filter (which makes calls into the host's kernel, e.g. module loading, bpf, keyctl,
    /// setting the clock, fail with EPERM).
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Add a capability to Docker's default set (e.g. NET_ADMIN, SYS_PTRACE, or ALL).
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability from the set (e.g. NET_RAW, or ALL).
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Image to start from (see `hiber images`).
    pub image: String,
    /// Command and arguments (default: the image's command, or /bin/sh).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `hiber exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Sandbox name, id or unique id prefix.
    pub sandbox: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `hiber logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new output until the sandbox stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Sandbox name, id or unique id prefix.
    pub sandbox: String,
}

/// `hiber stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    pub time: u64,
    /// Sandbox names, ids or unique id prefixes.
    #[arg(required = true)]
    pub sandboxes: Vec<String>,
}

/// `hiber rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove running sandboxes too (they are killed).
    #[arg(short, long)]
    pub force: bool,
    /// Sandbox names, ids or unique id prefixes.
    #[arg(required = true)]
    pub sandboxes: Vec<String>,
}

/// `hiber snapshot`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: Option<SnapshotCommand>,
    /// Name of the snapshot.
    #[arg(long)]
    pub name: Option<String>,
    /// Keep the sandbox running (a live checkpoint); by default it is stopped.
    #[arg(long)]
    pub leave_running: bool,
    /// Only report what in the sandbox a snapshot could not carry (exit 1 if anything); take
    /// no snapshot.
    #[arg(long, conflicts_with_all = ["name", "leave_running"])]
    pub check: bool,
    /// Sandbox name, id or unique id prefix.
    #[arg(required = true)]
    pub sandbox: Option<String>,
}

/// `hiber snapshot rm`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Remove snapshots. Layers still used by an image, another snapshot or
    /// a sandbox are kept, so nothing restored from it breaks.
    Rm {
        /// Snapshot names, ids or unique id prefixes.
        #[arg(required = true)]
        snapshots: Vec<String>,
    },
}

/// `hiber restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Name of the new sandbox.
    #[arg(long)]
    pub name: Option<String>,
    /// Snapshot name, id or unique id prefix.
    pub snapshot: String,
}

/// `hiber fork`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// How many sandboxes.
    #[arg(short = 'n', long = "count", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub count: u32,
    /// Snapshot name, id or unique id prefix.
    pub snapshot: String,
}

/// `hiber image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The image: `busybox` or `debian` for a stock one; any name with --from.
    pub name: String,
    /// Build on this image.
    #[arg(long, value_name = "IMAGE")]
    pub from: Option<String>,
    /// Take the base and the steps, in order, from this file: `from IMAGE`, then one step a
    /// line: `apt PKG...`, `pip PKG...`, `copy SRC DST`, `run COMMAND` (`#` comments).
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["apt", "pip", "copy", "run"])]
    pub file: Option<PathBuf>,
    /// Install a Debian package (repeatable).
    #[arg(long, value_name = "PKG")]
    pub apt: Vec<String>,
    /// Install a Python package with pip (repeatable).
    #[arg(long, value_name = "PKG")]
    pub pip: Vec<String>,
    /// Copy a host file or directory into the image (repeatable).
    #[arg(long, value_name = "SRC:DST")]
    pub copy: Vec<String>,
    /// Run a shell command in the image (repeatable).
    #[arg(long, value_name = "CMD")]
    pub run: Vec<String>,
}

/// `hiber image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a stock image, `busybox` (seconds) or `debian` (bookworm minbase with python3, git,
    /// curl), or, with --from, an image on another one: its layers plus one with the steps'
    /// changes (--apt first, then --pip, --copy and --run, each in the order given; cached by
    /// the steps' hash).
    Build(BuildArgs),
    /// Make an image from an OCI image layout (directory or archive), a `docker save` archive, or a
    /// root filesystem directory or .tar / .tar.gz archive.
    Import {
        /// Layout, archive, directory or tarball.
        path: PathBuf,
        /// Name of the new image.
        #[arg(long)]
        name: String,
    },
    /// Remove an image.
    Rm {
        /// Image name.
        name: String,
    },
}

/// `hiber bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Sandbox starts per second (create, run a command, remove), busybox and debian, 1 and 2 workers.
    Start {
        /// Starts per measurement.
        #[arg(long, default_value_t = 40)]
        runs: usize,
        /// Repeat each measurement this many times and report the median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Snapshot, restore and fork-of-10 times and snapshot sizes for an idle busybox, an idle
    /// Debian and a 100 MB python sandbox (or headless Chromium, a vite dev server), against
    /// plain CRIU CLI calls and Podman in the same run.
    Snapshot {
        /// Repeat each measurement this many times and report the median.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Measure this workload (repeatable; default: idle-busybox, idle-debian, python-100m).
        /// chromium and dev-server run on the root filesystems scripts/setup-test.sh makes.
        #[arg(long = "workload", value_enum)]
        workloads: Vec<crate::peers::Workload>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Do not measure Podman (it is skipped anyway when scripts/setup-bench.sh has not run).
        #[arg(long)]
        skip_podman: bool,
    },
    /// `hiber pull` of a four-layer Debian image from a registry on loopback (started here),
    /// a second pull sharing all its layers but one, and `skopeo copy` and `podman pull` of the
    /// same image, in the same run.
    Pull {
        /// Repeat each measurement this many times and report the median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Message -> first streamed entry for a running and a suspended session (an in-process
    /// `hiber serve`, a python agent in Debian), and the context log's fsync'd appends,
    /// throughput and append/tail-read times at 10 and 1,000,000 entries.
    Session {
        /// Messages timed per session (median and p95 over them).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
