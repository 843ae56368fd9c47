//! What a sandbox is made of: its image layers, limits and main process.

use hiber_proto::ProcessSpec;
use serde::{Deserialize, Serialize};

/// Errors in user-supplied sandbox parameters.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A memory size that is not a number with an optional k/m/g suffix.
    #[error("invalid memory size '{0}': use bytes or a number with k, m or g (e.g. 512M)")]
    Memory(String),
    /// A cpu count that is not a positive number.
    #[error("invalid cpu count '{0}': use a positive number (e.g. 1 or 0.5)")]
    Cpus(String),
    /// A pid limit that is not a positive integer.
    #[error("invalid pids limit '{0}': use a positive integer")]
    Pids(String),
    /// A sandbox name with characters that are not allowed.
    #[error("invalid sandbox name '{0}': use 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit, and not 12 hex digits like an id")]
    Name(String),
    /// A capability name hiber does not know.
    #[error("unknown capability '{0}' (e.g. NET_ADMIN, SYS_PTRACE, or ALL)")]
    Capability(String),
    /// A `--security-opt` hiber does not know.
    #[error("unknown security option '{0}': hiber knows seccomp=default and seccomp=unconfined")]
    SecurityOpt(String),
}

/// Resource limits, enforced through cgroups. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes; exceeding it gets the sandbox's processes OOM-killed.
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in cores (0.5 = half of one core).
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
}

impl Limits {
    /// Parses `512M`, `1g`, `65536`, `100k` into bytes.
    pub fn parse_memory(text: &str) -> Result<u64, SpecError> {
        let t = text.trim();
        let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => t.split_at(i),
            None => (t, ""),
        };
        let shift = match unit.to_ascii_lowercase().trim_end_matches(['b', 'i']) {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            _ => return Err(SpecError::Memory(text.into())),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .filter(|n| *n >= 1 << 20)
            .ok_or_else(|| SpecError::Memory(text.into()))
    }

    /// Parses a positive, finite number of cores.
    pub fn parse_cpus(text: &str) -> Result<f64, SpecError> {
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|c| c.is_finite() && *c >= 0.01 && *c <= 1024.0)
            .ok_or_else(|| SpecError::Cpus(text.into()))
    }

    /// Parses a positive process count.
    pub fn parse_pids(text: &str) -> Result<u64, SpecError> {
        text.trim().parse::<u64>().ok().filter(|p| *p > 0).ok_or_else(|| SpecError::Pids(text.into()))
    }
}

/// Checks a user-chosen sandbox name (it also becomes the hostname).
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let looks_like_an_id = name.len() == 12 && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !looks_like_an_id;
    if ok {
        Ok(())
    } else {
        Err(SpecError::Name(name.into()))
    }
}

/// Everything needed to create a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Unique name (also the hostname); the id is used when absent.
    pub name: Option<String>,
    /// The image to start from, by name (`hiber images`).
    pub image: String,
    /// Resource limits.
    pub limits: Limits,
    /// The main process, started at boot with its output in the log;
    /// without one the sandbox idles until it is stopped.
    pub main: Option<ProcessSpec>,
    /// How far its processes are confined (a restored sandbox keeps what it was snapshotted with).
    #[serde(default)]
    pub confinement: Confinement,
}

/// How a sandbox is confined beyond its namespaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// The seccomp filter.
    #[serde(default)]
    pub seccomp: Seccomp,
    /// The capabilities its processes may hold (their bounding set).
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// A set of Linux capabilities: bit `n` is capability `n` (`CAP_CHOWN` = 0, ...). Saved as the
/// list of their names.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Vec<String>", try_from = "Vec<String>")]
pub struct Capabilities(pub u64);

/// Every capability's name, by number.
const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

impl Capabilities {
    /// Docker's default set: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
    /// NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
    pub const DOCKER_DEFAULT: Capabilities = Capabilities(0xa804_25fb);

    /// Every capability this hiber knows.
    pub const ALL: Capabilities = Capabilities((1 << CAPABILITY_NAMES.len()) - 1);

    /// Whether capability number `cap` is in the set.
    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// The set's names, without the `CAP_` prefix, by number.
    pub fn names(self) -> Vec<&'static str> {
        (0..CAPABILITY_NAMES.len() as u32).filter(|c| self.contains(*c)).map(|c| CAPABILITY_NAMES[c as usize]).collect()
    }

    /// The set with `add` added, then `drop` removed (`--cap-add`, `--cap-drop`): names as in
    /// `SYS_ADMIN` or `cap_sys_admin`, or `ALL`.
    pub fn adjusted(self, add: &[String], drop: &[String]) -> Result<Capabilities, SpecError> {
        let mask = |names: &[String]| -> Result<u64, SpecError> {
            names.iter().try_fold(0u64, |mask, name| {
                let bare = name.to_ascii_uppercase();
                let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
                match CAPABILITY_NAMES.iter().position(|n| *n == bare) {
                    _ if bare == "ALL" => Ok(mask | Capabilities::ALL.0),
                    Some(i) => Ok(mask | 1 << i),
                    None => Err(SpecError::Capability(name.clone())),
                }
            })
        };
        Ok(Capabilities((self.0 | mask(add)?) & !mask(drop)?))
    }
}

impl From<Capabilities> for Vec<String> {
    fn from(caps: Capabilities) -> Vec<String> {
        caps.names().into_iter().map(str::to_owned).collect()
    }
}

impl TryFrom<Vec<String>> for Capabilities {
    type Error = SpecError;
    fn try_from(names: Vec<String>) -> Result<Capabilities, SpecError> {
        Capabilities(0).adjusted(&names, &[])
    }
}

impl Confinement {
    /// The confinement that `--security-opt`, `--cap-add` and `--cap-drop` (or the session API's
    /// fields of the same names) ask for.
    pub fn from_options(
        security_opt: &[String],
        cap_add: &[String],
        cap_drop: &[String],
    ) -> Result<Confinement, SpecError> {
        Ok(Confinement {
            seccomp: Seccomp::from_security_opts(security_opt)?,
            capabilities: Capabilities::default().adjusted(cap_add, cap_drop)?,
        })
    }
}

impl Default for Capabilities {
    fn default() -> Capabilities {
        Capabilities::DOCKER_DEFAULT
    }
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// Whether a sandbox's processes run under the default seccomp filter (system calls that reach
/// past the sandbox into the host's kernel fail with `EPERM`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// The default filter.
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
}

impl Seccomp {
    /// The choice made by `--security-opt` options (`seccomp=default`, `seccomp=unconfined`;
    /// the last one wins).
    pub fn from_security_opts(options: &[String]) -> Result<Seccomp, SpecError> {
        options.iter().try_fold(Seccomp::Default, |_, option| match option.as_str() {
            "seccomp=default" => Ok(Seccomp::Default),
            "seccomp=unconfined" => Ok(Seccomp::Unconfined),
            other => Err(SpecError::SecurityOpt(other.into())),
        })
    }
}

/// `process` as a sandbox of an image with run defaults `config` runs it (Docker's rules): the
/// image's entrypoint before its words, or, when it has none, the image's command (`/bin/sh`
/// when that is empty too); and the rest as [`with_image_environment`].
pub fn with_image_defaults(process: ProcessSpec, config: &hiber_image::ImageConfig) -> ProcessSpec {
    let words = if process.argv.is_empty() { config.cmd.clone() } else { process.argv.clone() };
    let mut argv: Vec<String> = config.entrypoint.iter().cloned().chain(words).collect();
    if argv.is_empty() {
        argv.push("/bin/sh".into());
    }
    ProcessSpec { argv, ..with_image_environment(process, config) }
}

/// `process` (an exec into a sandbox of the image, as `docker exec` runs it) with the image's
/// environment under its own, and the image's working directory and user unless it names its
/// own; its words as they are.
pub fn with_image_environment(process: ProcessSpec, config: &hiber_image::ImageConfig) -> ProcessSpec {
    let or = |given: String, image: &str| if given.is_empty() { image.to_string() } else { given };
    ProcessSpec {
        env: config.env.iter().cloned().chain(process.env).collect(),
        cwd: or(process.cwd, &config.working_dir),
        user: or(process.user, &config.user),
        ..process
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_with_units() {
        assert_eq!(Limits::parse_memory("512M").unwrap(), 512 << 20);
        assert_eq!(Limits::parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(Limits::parse_memory("2GiB").unwrap(), 2 << 30);
        assert_eq!(Limits::parse_memory("2048k").unwrap(), 2 << 20);
        assert_eq!(Limits::parse_memory("4194304").unwrap(), 4 << 20);
        for bad in ["", "M", "12x", "-1M", "1.5G", "100", "99999999999999G"] {
            assert!(Limits::parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_and_pids_reject_nonsense() {
        assert_eq!(Limits::parse_cpus("0.5").unwrap(), 0.5);
        assert!(Limits::parse_cpus("0").is_err());
        assert!(Limits::parse_cpus("nan").is_err());
        assert_eq!(Limits::parse_pids("64").unwrap(), 64);
        assert!(Limits::parse_pids("0").is_err());
        assert!(Limits::parse_pids("-3").is_err());
    }

    #[test]
    fn security_options_choose_the_filter() {
        let opts = |o: &[&str]| Seccomp::from_security_opts(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(opts(&[]).unwrap(), Seccomp::Default);
        assert_eq!(opts(&["seccomp=unconfined"]).unwrap(), Seccomp::Unconfined);
        assert_eq!(opts(&["seccomp=unconfined", "seccomp=default"]).unwrap(), Seccomp::Default);
        let err = opts(&["apparmor=x"]).unwrap_err().to_string();
        assert!(err.contains("unknown security option 'apparmor=x'"), "{err}");
    }

    #[test]
    fn capabilities_start_from_dockers_set_and_adjust_by_name() {
        let names = Capabilities::DOCKER_DEFAULT.names();
        assert_eq!(names.len(), 14);
        assert!(names.contains(&"NET_BIND_SERVICE") && !names.contains(&"SYS_ADMIN"), "{names:?}");
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let caps = Capabilities::default().adjusted(&owned(&["cap_sys_ptrace"]), &owned(&["NET_RAW"])).unwrap();
        assert!(caps.contains(19) && !caps.contains(13));
        let none = Capabilities::default().adjusted(&[], &owned(&["all"])).unwrap();
        assert!(none.names().is_empty());
        let all = none.adjusted(&owned(&["ALL"]), &[]).unwrap();
        assert_eq!(all, Capabilities::ALL);
        let err = Capabilities::default().adjusted(&owned(&["SYS_WIZARD"]), &[]).unwrap_err().to_string();
        assert!(err.contains("unknown capability 'SYS_WIZARD'"), "{err}");
        let json = serde_json::to_string(&caps).unwrap();
        assert!(json.starts_with(r#"["CHOWN","DAC_OVERRIDE","FOWNER""#), "{json}");
        assert_eq!(serde_json::from_str::<Capabilities>(&json).unwrap(), caps);
        assert!(serde_json::from_str::<Capabilities>(r#"["NOPE"]"#).is_err());
    }

    #[test]
    fn names_are_hostname_safe() {
        assert!(validate_name("web-1").is_ok());
        assert!(validate_name("a").is_ok());
        for bad in ["", "-a", "A", "a b", "a/b", &"x".repeat(64), "0123456789ab"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_defaults_fill_what_the_process_leaves_out() {
        let config = hiber_image::ImageConfig {
            env: vec!["A=image".into(), "B=image".into()],
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo default".into()],
            working_dir: "/srv".into(),
            user: "app".into(),
        };
        let bare = with_image_defaults(ProcessSpec::command(Vec::<String>::new()), &config);
        assert_eq!(bare.argv, ["/bin/sh", "-c", "echo default"]);
        assert_eq!((bare.cwd.as_str(), bare.user.as_str()), ("/srv", "app"));
        let given = ProcessSpec {
            env: vec!["B=mine".into()],
            cwd: "/tmp".into(),
            user: "root".into(),
            ..ProcessSpec::command(["echo mine"])
        };
        let mine = with_image_defaults(given, &config);
        assert_eq!(mine.argv, ["/bin/sh", "-c", "echo mine"], "the entrypoint stays, the command is replaced");
        assert_eq!(mine.env, ["A=image", "B=image", "B=mine"], "the process's own entries come last and win");
        assert_eq!((mine.cwd.as_str(), mine.user.as_str()), ("/tmp", "root"));
        let plain = with_image_defaults(ProcessSpec::command(Vec::<String>::new()), &Default::default());
        assert_eq!(plain.argv, ["/bin/sh"]);
    }
}
