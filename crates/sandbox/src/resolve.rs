//! How a user's key finds one sandbox or snapshot: an exact name, an exact id, or a unique id
//! prefix, in that order. Sandboxes and snapshots both resolve here.

/// Why a key found nothing, or more than one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Nothing matches.
    #[error("nothing matches '{0}'")]
    NotFound(String),
    /// An id prefix matches several ids (listed, comma-separated).
    #[error("'{0}' matches several: {1}")]
    Ambiguous(String, String),
}

/// The id that `key` names among `candidates` (each an id and its name, if any).
pub fn resolve<'a>(
    key: &str,
    candidates: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<String, ResolveError> {
    if key.is_empty() {
        return Err(ResolveError::NotFound(key.into()));
    }
    let candidates: Vec<(&str, Option<&str>)> = candidates.into_iter().collect();
    if let Some((id, _)) = candidates.iter().find(|(_, name)| *name == Some(key)) {
        return Ok(id.to_string());
    }
    if let Some((id, _)) = candidates.iter().find(|(id, _)| *id == key) {
        return Ok(id.to_string());
    }
    let matches: Vec<&str> = candidates.iter().map(|(id, _)| *id).filter(|id| id.starts_with(key)).collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(ResolveError::NotFound(key.into())),
        many => Err(ResolveError::Ambiguous(key.into(), many.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_then_ids_then_unique_prefixes() {
        let all = [("abc123000000", Some("web")), ("abd456000000", None), ("bbb000000000", Some("abd"))];
        let find = |key: &str| resolve(key, all.iter().copied());
        assert_eq!(find("web").unwrap(), "abc123000000");
        // A name wins over an id prefix it looks like.
        assert_eq!(find("abd").unwrap(), "bbb000000000");
        assert_eq!(find("abd4").unwrap(), "abd456000000");
        assert_eq!(find("abc123000000").unwrap(), "abc123000000");
        assert_eq!(find("ab"), Err(ResolveError::Ambiguous("ab".into(), "abc123000000, abd456000000".into())));
        assert_eq!(find("zz"), Err(ResolveError::NotFound("zz".into())));
        assert_eq!(find(""), Err(ResolveError::NotFound("".into())));
    }
}
