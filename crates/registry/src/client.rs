//! HTTP to one repository of a registry (the OCI distribution API), with its authentication:
//! a `401` with `WWW-Authenticate: Bearer realm=...,service=...,scope=...` is answered by a
//! token fetched from the realm (with the user's credentials, if any, as Basic), one with
//! `Basic` by the credentials themselves; the request is then made again.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use crate::reference::Reference;
use crate::RegistryError;

/// A user name and password for the registry.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// The password or token.
    pub password: String,
}

/// One repository of one registry.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    authorization: Mutex<Option<String>>,
}

/// An answer to a GET.
pub struct Answer {
    /// 200, or 206 for a range.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its `Docker-Content-Digest`, if given.
    pub digest: Option<String>,
    /// The body.
    pub body: Box<dyn Read + Send + Sync>,
}

impl Client {
    /// A client for `reference`'s repository: plain HTTP to a registry on this machine, HTTPS
    /// to any other.
    pub fn new(reference: &Reference, credentials: Option<Credentials>) -> Client {
        let scheme = if reference.is_local() { "http" } else { "https" };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .build();
        Client {
            agent,
            base: format!("{scheme}://{}/v2/{}", reference.registry, reference.repository),
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            credentials,
            authorization: Mutex::new(None),
        }
    }

    /// `GET /v2/REPOSITORY/PATH` with `accept` media types, from byte `from` on.
    pub fn get(&self, path: &str, accept: &[&str], from: u64) -> Result<Answer, RegistryError> {
        let url = format!("{}/{path}", self.base);
        for attempt in 0..2 {
            let mut request = self.agent.get(&url);
            if !accept.is_empty() {
                request = request.set("Accept", &accept.join(", "));
            }
            if from > 0 {
                request = request.set("Range", &format!("bytes={from}-"));
            }
            if let Some(authorization) = self.authorization.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                request = request.set("Authorization", &authorization);
            }
            match request.call() {
                Ok(response) => return Ok(answer(response)),
                Err(ureq::Error::Status(401, response)) if attempt == 0 => {
                    let challenge = response.header("WWW-Authenticate").unwrap_or_default().to_string();
                    let authorization = self.authorize(&challenge)?;
                    *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(authorization);
                }
                Err(ureq::Error::Status(code, response)) => return Err(self.refused(path, code, response)),
                Err(ureq::Error::Transport(e)) => {
                    return Err(RegistryError::Unreachable { registry: self.registry.clone(), reason: e.to_string() })
                }
            }
        }
        Err(RegistryError::Denied { registry: self.registry.clone(), reason: "the credentials were refused".into() })
    }

    /// The `Authorization` header that answers `challenge`.
    fn authorize(&self, challenge: &str) -> Result<String, RegistryError> {
        let denied = |reason: String| RegistryError::Denied { registry: self.registry.clone(), reason };
        let basic =
            self.credentials.as_ref().map(|c| format!("Basic {}", base64(&format!("{}:{}", c.user, c.password))));
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| {
                denied("it asks for a user and password (HIBER_REGISTRY_USER, HIBER_REGISTRY_PASSWORD)".into())
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(denied(format!("unknown authentication scheme '{scheme}'")));
        }
        let params = challenge_params(params);
        let param = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let realm = param("realm").ok_or_else(|| denied("its Bearer challenge names no realm".into()))?;
        let scope =
            param("scope").map(str::to_string).unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut request = self.agent.get(realm).query("scope", &scope);
        if let Some(service) = param("service") {
            request = request.query("service", service);
        }
        if let Some(basic) = &basic {
            request = request.set("Authorization", basic);
        }
        let response = request.call().map_err(|e| denied(format!("its token service {realm} refused: {e}")))?;
        let body: serde_json::Value =
            response.into_json().map_err(|e| denied(format!("its token service answered no JSON: {e}")))?;
        let token = body["token"].as_str().or(body["access_token"].as_str());
        let token = token.ok_or_else(|| denied("its token service answered no token".into()))?;
        Ok(format!("Bearer {token}"))
    }

    fn refused(&self, path: &str, code: u16, response: ureq::Response) -> RegistryError {
        let body = response.into_string().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.lines().next().unwrap_or_default().to_string());
        match code {
            404 => {
                RegistryError::NotFound { registry: self.registry.clone(), what: format!("{}/{path}", self.repository) }
            }
            401 | 403 => RegistryError::Denied { registry: self.registry.clone(), reason: message },
            _ => RegistryError::Status { registry: self.registry.clone(), code, message },
        }
    }
}

fn answer(response: ureq::Response) -> Answer {
    Answer {
        status: response.status(),
        content_type: response.content_type().to_string(),
        digest: response.header("Docker-Content-Digest").map(str::to_string),
        body: Box::new(response.into_reader()),
    }
}

/// `realm="https://auth",service="registry",scope="repository:x:pull"` as pairs.
fn challenge_params(params: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.push((key, value.to_string()));
        rest = tail.trim_start_matches(',').trim();
    }
    out
}

/// Standard base64 with padding.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_base64_are_read_and_written() {
        let params =
            challenge_params(r#"realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push""#);
        assert_eq!(params[0], ("realm".into(), "http://127.0.0.1:1/token".into()));
        assert_eq!(params[1], ("service".into(), "reg".into()));
        assert_eq!(params[2], ("scope".into(), "repository:a/b:pull,push".into()));
        assert_eq!(base64("user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64("ab"), "YWI=");
        assert_eq!(base64("a"), "YQ==");
    }
}
