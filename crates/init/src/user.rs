//! Who a process runs as: `user`, `uid`, `user:group` or `uid:gid`, names looked up in the
//! sandbox's `/etc/passwd` and `/etc/group` (as Docker and runc do for an image's `User`).

/// A user or group the sandbox does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown user {0}")]
pub struct UnknownUser(String);

/// The ids a process takes before it execs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
    /// Its supplementary groups: the groups of `/etc/group` that list the user.
    pub groups: Vec<u32>,
    /// The user's home directory, when `/etc/passwd` has the user.
    pub home: Option<String>,
}

/// The identity `user` names in this sandbox; `None` for the empty string (root, as is).
pub fn lookup(user: &str) -> Result<Option<Identity>, UnknownUser> {
    if user.is_empty() {
        return Ok(None);
    }
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    resolve(user, &read("/etc/passwd"), &read("/etc/group")).map(Some)
}

/// [`lookup`] over the contents of `/etc/passwd` and `/etc/group`.
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<Identity, UnknownUser> {
    let unknown = |what: &str| UnknownUser(format!("{user}: no {what} in the sandbox"));
    let (name_or_uid, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // name:password:uid:gid:gecos:home:shell
    let users: Vec<Vec<&str>> =
        passwd.lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 7).collect();
    let entry = users.iter().find(|f| f[0] == name_or_uid || f[2] == name_or_uid);
    let (uid, mut gid, name, home) = match (entry, name_or_uid.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse().map_err(|_| unknown("valid passwd entry"))?,
            f[3].parse().map_err(|_| unknown("valid passwd entry"))?,
            Some(f[0]),
            Some(f[5].to_string()),
        ),
        (None, Ok(uid)) => (uid, 0, None, None),
        (None, Err(_)) => return Err(unknown(&format!("user '{name_or_uid}'"))),
    };
    // name:password:gid:members
    let groups: Vec<Vec<&str>> =
        group.lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 4).collect();
    if let Some(g) = group_part {
        gid = match (groups.iter().find(|f| f[0] == g), g.parse::<u32>()) {
            (Some(f), _) => f[2].parse().map_err(|_| unknown("valid group entry"))?,
            (None, Ok(gid)) => gid,
            (None, Err(_)) => return Err(unknown(&format!("group '{g}'"))),
        };
    }
    let mut supplementary: Vec<u32> = match name {
        Some(name) => groups
            .iter()
            .filter(|f| f[3].split(',').any(|member| member == name))
            .filter_map(|f| f[2].parse().ok())
            .collect(),
        None => Vec::new(),
    };
    if !supplementary.contains(&gid) {
        supplementary.insert(0, gid);
    }
    Ok(Identity { uid, gid, groups: supplementary, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\npostgres:x:105:110:PostgreSQL:/var/lib/postgresql:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nssl-cert:x:109:postgres\npostgres:x:110:\nstaff:x:50:\n";

    #[test]
    fn names_and_numbers_resolve_like_docker() {
        let pg = resolve("postgres", PASSWD, GROUP).unwrap();
        assert_eq!((pg.uid, pg.gid, pg.home.as_deref()), (105, 110, Some("/var/lib/postgresql")));
        assert_eq!(pg.groups, [110, 109], "its primary group, then those that list it");
        assert_eq!(resolve("105", PASSWD, GROUP).unwrap(), pg, "a uid with an entry is that user");
        let bare = resolve("1000", PASSWD, GROUP).unwrap();
        assert_eq!((bare.uid, bare.gid, bare.groups.clone(), bare.home), (1000, 0, vec![0], None));
        assert_eq!(resolve("postgres:staff", PASSWD, GROUP).unwrap().gid, 50);
        assert_eq!(resolve("1000:1000", PASSWD, GROUP).unwrap().gid, 1000);
    }

    #[test]
    fn unknown_names_are_one_line_errors() {
        let err = resolve("nobody", PASSWD, GROUP).unwrap_err().to_string();
        assert_eq!(err, "unknown user nobody: no user 'nobody' in the sandbox");
        let err = resolve("postgres:wheel", PASSWD, GROUP).unwrap_err().to_string();
        assert!(err.contains("no group 'wheel'"), "{err}");
    }
}
