//! Bearer-token authentication: the token is made on the server's first
//! start in `HIBER_HOME/api-token` (mode 0600) and read by the CLI.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The token file's name under the home directory.
pub const TOKEN_FILE: &str = "api-token";

/// Errors reading or creating the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The token file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file holds no usable token.
    #[error("{0}: empty API token file")]
    Empty(PathBuf),
}

/// Reads the token under `home`, creating it (random, mode 0600) if absent.
pub fn load_or_create(home: &Path) -> Result<String, AuthError> {
    let path = home.join(TOKEN_FILE);
    let io_err = |source| AuthError::Io { path: path.clone(), source };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(AuthError::Empty(path));
            }
            return Ok(token);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    fs::create_dir_all(home).map_err(io_err)?;
    let token = format!("{}{}", hiber_common::random_id(32), hiber_common::random_id(32));
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(io_err)?;
    file.write_all(format!("{token}\n").as_bytes()).and_then(|_| file.sync_all()).map_err(io_err)?;
    Ok(token)
}

/// Compares without leaking where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: lets a request through only with `Authorization: Bearer <token>`.
pub async fn require_token(State(token): State<std::sync::Arc<str>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let home = tempfile::tempdir().unwrap();
        let first = load_or_create(home.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create(home.path()).unwrap(), first);
        let mode = fs::metadata(home.path().join(TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn comparison_needs_equal_bytes() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
