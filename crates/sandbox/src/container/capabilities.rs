//! The capabilities a sandbox's processes may hold: hiber-init is exec'd with a bounding set
//! (Docker's default set unless the sandbox asked otherwise) and no inheritable or ambient
//! capabilities, so no process of the sandbox, root or not, can ever gain one outside the set.
//! CRIU dumps and restores the sets with the tree.
//!
//! For a root process the exec gives permitted = effective = the bounding set; the calls here
//! are async-signal-safe, so they run between fork and exec.

use std::io;

use crate::spec::Capabilities;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two (capabilities 0-31, then 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Limits the calling process and everything it execs to `keep`: drops every other capability
/// the kernel knows from the bounding set and clears the inheritable and ambient sets. The
/// caller keeps its own effective capabilities until it execs.
pub fn bound(keep: Capabilities) -> io::Result<()> {
    let mut header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two data structs, which `data` holds; the header is valid.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) })?;
    data.iter_mut().for_each(|d| d.inheritable = 0);
    // SAFETY: capset reads the header and the two data structs; lowering the inheritable set
    // needs no privilege.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) })?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) }.into())?;
    for cap in (0..64).filter(|c| !keep.contains(*c)) {
        // SAFETY: as above; dropping from the bounding set needs CAP_SETPCAP, which the caller has.
        match check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }.into()) {
            // Past the kernel's last capability.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            r => r?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `CapBnd:` mask of /proc/self/status.
    fn bounding_set() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    }

    #[test]
    fn a_bounded_child_keeps_exactly_the_set() {
        if !nix::unistd::Uid::effective().is_root() {
            return eprintln!("SKIP a_bounded_child_keeps_exactly_the_set: dropping from the bounding set needs root");
        }
        // SAFETY: the child only makes system calls, reads one /proc file and leaves with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let ok = bound(Capabilities::DOCKER_DEFAULT).is_ok()
                    && bounding_set() == Capabilities::DOCKER_DEFAULT.0
                    && libc::prctl(libc::PR_CAPBSET_READ, 21, 0, 0, 0) == 0;
                libc::_exit(if ok { 0 } else { 1 });
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert_eq!(libc::WEXITSTATUS(status), 0, "the child's bounding set is not Docker's default");
        }
        assert_ne!(bounding_set(), Capabilities::DOCKER_DEFAULT.0, "the parent is untouched");
    }
}
