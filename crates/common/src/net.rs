//! The one network set-up every sandbox gets: its loopback interface up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Brings up the loopback interface of the calling thread's network namespace (a no-op when
/// it is up already).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket for interface ioctls, owned by `fd`; ifreq is a C struct for which
    // all-zero is valid; both ioctls read/write only `req`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        let up = libc::IFF_UP as libc::c_short;
        if req.ifr_ifru.ifru_flags & up == 0 {
            req.ifr_ifru.ifru_flags |= up;
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}
