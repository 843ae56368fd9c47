//! What hiber-init is told when it starts: where its files live and its
//! [`InitConfig`].

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hiber_proto::{InitConfig, INIT_SOCKET, MAIN_LOG, SDK_SOCKET};

/// Environment variable that moves the run directory. Only tests set it, to
/// run hiber-init as an ordinary process.
pub const RUNDIR_ENV: &str = "HIBER_INIT_RUNDIR";

/// The run directory inside a sandbox.
const RUN_DIR: &str = "/run/hiber";
const SOCKET_NAME: &str = "init.sock";
const SDK_SOCKET_NAME: &str = "sdk.sock";
const MAIN_LOG_NAME: &str = "main.log";
const INIT_LOG_NAME: &str = "init.log";

/// Where hiber-init keeps its socket and its logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The directory holding everything below.
    pub run_dir: PathBuf,
    /// The control socket the host connects to.
    pub socket: PathBuf,
    /// The in-sandbox SDK's socket.
    pub sdk_socket: PathBuf,
    /// Output of the main process.
    pub main_log: PathBuf,
    /// hiber-init's own diagnostics.
    pub init_log: PathBuf,
}

impl Paths {
    /// The paths inside a sandbox ([`INIT_SOCKET`], [`MAIN_LOG`], ...).
    pub fn standard() -> Paths {
        Paths {
            run_dir: PathBuf::from(RUN_DIR),
            socket: PathBuf::from(INIT_SOCKET),
            sdk_socket: PathBuf::from(SDK_SOCKET),
            main_log: PathBuf::from(MAIN_LOG),
            init_log: Path::new(RUN_DIR).join(INIT_LOG_NAME),
        }
    }

    /// The same file names under `dir`.
    pub fn under(dir: &Path) -> Paths {
        Paths {
            run_dir: dir.to_path_buf(),
            socket: dir.join(SOCKET_NAME),
            sdk_socket: dir.join(SDK_SOCKET_NAME),
            main_log: dir.join(MAIN_LOG_NAME),
            init_log: dir.join(INIT_LOG_NAME),
        }
    }

    /// [`Paths::under`] the directory named by [`RUNDIR_ENV`] when it is set,
    /// otherwise [`Paths::standard`].
    pub fn from_env() -> Paths {
        match std::env::var_os(RUNDIR_ENV) {
            Some(dir) if !dir.is_empty() => Paths::under(Path::new(&dir)),
            _ => Paths::standard(),
        }
    }
}

/// Why the command line could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// More than the one JSON argument.
    #[error("expected one argument (the configuration as JSON), got {0}")]
    TooManyArgs(usize),
    /// The argument is not a valid [`InitConfig`].
    #[error("bad configuration: {0}")]
    Json(#[from] serde_json::Error),
}

/// Parses the arguments after the program name: none gives the default
/// configuration, one is the configuration as JSON.
pub fn parse_args(args: &[OsString]) -> Result<InitConfig, ConfigError> {
    match args {
        [] => Ok(InitConfig::default()),
        [json] => Ok(serde_json::from_slice(json.as_bytes())?),
        _ => Err(ConfigError::TooManyArgs(args.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_paths_are_the_protocol_paths_under_the_run_dir() {
        assert_eq!(Paths::standard(), Paths::under(Path::new(RUN_DIR)));
    }

    #[test]
    fn arguments_parse_to_a_config_or_an_error() {
        assert_eq!(parse_args(&[]).unwrap(), InitConfig::default());
        let config = parse_args(&[r#"{"main":{"argv":["sh"]},"hostname":"box"}"#.into()]).unwrap();
        assert_eq!(config.hostname, "box");
        assert_eq!(config.main.unwrap().argv, vec!["sh"]);
        assert!(matches!(parse_args(&["{nope".into()]), Err(ConfigError::Json(_))));
        assert!(matches!(parse_args(&["{}".into(), "{}".into()]), Err(ConfigError::TooManyArgs(2))));
    }
}
