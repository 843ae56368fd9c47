//! Image references: `HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST]`.

use std::fmt;

use crate::RegistryError;

/// What a reference names in its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tag (`latest` when none is given).
    Tag(String),
    /// A manifest digest, `sha256:<hex>`.
    Digest(String),
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port`.
    pub registry: String,
    /// e.g. `library/python`.
    pub repository: String,
    /// The tag or digest.
    pub target: Target,
}

impl Reference {
    /// Parses `reference`; the registry must be named (`localhost:5000/app`, `registry.example/x`).
    pub fn parse(reference: &str) -> Result<Reference, RegistryError> {
        let bad = |why: &str| RegistryError::Reference(format!("'{reference}': {why}"));
        let (registry, rest) =
            reference.split_once('/').ok_or_else(|| bad("name the registry: HOST[:PORT]/REPOSITORY[:TAG]"))?;
        let registry_like = registry.contains('.') || registry.contains(':') || registry == "localhost";
        if !registry_like {
            return Err(bad("the first part must be a registry host (with a dot or a port, or localhost)"));
        }
        let (path, target) = match rest.split_once('@') {
            Some((path, digest)) => {
                let ok = digest
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                if !ok {
                    return Err(bad("a digest is sha256: and 64 hex digits"));
                }
                (path, Target::Digest(digest.to_ascii_lowercase()))
            }
            None => match rest.rsplit_once(':') {
                Some((path, tag)) if !tag.contains('/') => (path, Target::Tag(tag.to_string())),
                _ => (rest, Target::Tag("latest".into())),
            },
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !path.split('/').all(component_ok) {
            return Err(bad("a repository is lowercase letters, digits, '.', '_', '-' and '/'"));
        }
        if let Target::Tag(tag) = &target {
            let tag_ok = !tag.is_empty()
                && tag.len() <= 128
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !tag_ok {
                return Err(bad("a tag is up to 128 letters, digits, '.', '_' and '-'"));
            }
        }
        Ok(Reference { registry: registry.to_string(), repository: path.to_string(), target })
    }

    /// The tag or digest as the registry's URLs take it.
    pub fn target(&self) -> &str {
        match &self.target {
            Target::Tag(t) | Target::Digest(t) => t,
        }
    }

    /// Whether the registry is on this machine, reached over plain HTTP (as Docker does).
    pub fn is_local(&self) -> bool {
        let host = self.registry.rsplit_once(':').map_or(self.registry.as_str(), |(h, _)| h);
        host == "localhost" || host.starts_with("127.") || host == "[::1]"
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(tag) => write!(f, "{}/{}:{tag}", self.registry, self.repository),
            Target::Digest(digest) => write!(f, "{}/{}@{digest}", self.registry, self.repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_registry_a_repository_and_a_tag_or_digest() {
        let r = Reference::parse("127.0.0.1:5000/team/app:v1.2").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("127.0.0.1:5000", "team/app"));
        assert_eq!(r.target, Target::Tag("v1.2".into()));
        assert!(r.is_local());
        let latest = Reference::parse("registry.example.org/app").unwrap();
        assert_eq!(latest.target, Target::Tag("latest".into()));
        assert!(!latest.is_local());
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = Reference::parse(&format!("localhost:5000/app@{digest}")).unwrap();
        assert_eq!(pinned.target, Target::Digest(digest.clone()));
        assert_eq!(pinned.to_string(), format!("localhost:5000/app@{digest}"));
    }

    #[test]
    fn bad_references_are_one_line_errors() {
        for bad in ["app", "python:3.11", "localhost:5000/App", "localhost:5000/app@sha256:12", "localhost:5000/a:b c"]
        {
            let err = Reference::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && !err.contains('\n'), "{err}");
        }
    }
}
