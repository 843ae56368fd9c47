//! A CNCF distribution server (`docker-registry` from Debian, which `scripts/setup-test.sh`
//! unpacks) run on a free loopback port, for tests and benchmarks: nothing leaves the machine.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/setup-test.sh` unpacks the server (`HIBER_TEST_REGISTRY_DIR` overrides it).
pub fn binary() -> PathBuf {
    std::env::var_os("HIBER_TEST_REGISTRY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/hiber/test-registry".into())
        .join("usr/bin/docker-registry")
}

/// A running server, stopped (by its pid) when dropped.
pub struct LocalRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// Where it stores what is pushed.
    pub storage: PathBuf,
}

impl LocalRegistry {
    /// Starts [`binary`] storing under `dir`, with `extra` YAML appended to its configuration
    /// (an `auth:` section, say); returns once it listens.
    pub fn start(dir: &Path, extra: &str) -> io::Result<LocalRegistry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let storage = dir.join("data");
        let config = dir.join("registry.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n{extra}",
            storage.display()
        );
        fs::write(&config, yaml)?;
        let child =
            Command::new(binary()).arg("serve").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let registry = LocalRegistry { child, address, storage };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&registry.address).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("the registry did not listen on {}", registry.address)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(registry)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
