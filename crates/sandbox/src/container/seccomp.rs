//! The sandbox's default seccomp filter: the system calls that reach past the sandbox into the
//! host's kernel (loading modules or a new kernel, bpf, the kernel's keyrings, perf events,
//! opening files by handle, swap, the clock, reboot, accounting, raw I/O ports, quotas, personas
//! other than Docker's few) fail with `EPERM`, as under Docker's default profile; everything else
//! is allowed. A denied call returns
//! an error, it never kills the process.
//!
//! The filter is installed in hiber-init's process just before it is exec'd, so every process of
//! the sandbox inherits it; CRIU dumps and restores it with the tree. It is installed without
//! `no_new_privs` (the sandbox's creator holds `CAP_SYS_ADMIN`), so setuid programs inside keep
//! working.
//!
//! The program is written out here rather than generated: check the architecture (any other ABI
//! is refused with `EPERM`), refuse x32 numbers (they would bypass a list of x86_64 numbers),
//! then one comparison per denied number, and `personality`'s argument against the allowed personas.

use std::io;

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Set in the numbers of the x32 ABI's system calls.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_SET_MODE_FILTER: libc::c_long = 1;

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// The low half of the first argument (little-endian).
const DATA_ARG0: u32 = 16;

/// The system calls the default filter refuses.
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("bpf", libc::SYS_bpf),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("delete_module", libc::SYS_delete_module),
    ("finit_module", libc::SYS_finit_module),
    ("init_module", libc::SYS_init_module),
    ("ioperm", libc::SYS_ioperm),
    ("iopl", libc::SYS_iopl),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("_sysctl", libc::SYS__sysctl),
    ("sysfs", libc::SYS_sysfs),
    ("uselib", libc::SYS_uselib),
    ("ustat", libc::SYS_ustat),
];

fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The personas `personality(2)` may set (as Docker allows): Linux, `UNAME26`, `PER_LINUX32`,
/// both, and the query `0xffffffff`. Others (e.g. `ADDR_NO_RANDOMIZE`) fail with `EPERM`.
const PERSONAS: [u32; 5] = [0x0, 0x0002_0000, 0x0008, 0x0002_0008, 0xffff_ffff];

/// The default filter as a classic BPF program:
///
/// ```text
/// 0          load arch;   not x86_64          -> deny
/// 2          load nr;     nr >= x32 bit       -> deny
/// 4 ..       nr == each denied call           -> deny
/// 4+n        nr != personality                -> allow
/// 5+n        load the first argument
/// 6+n ..     argument == each allowed persona -> allow
/// deny:      return EPERM
/// allow:     return allow
/// ```
pub fn default_program() -> Vec<libc::sock_filter> {
    let n = DENIED.len();
    let deny = 6 + n + PERSONAS.len();
    let allow = deny + 1;
    // A jump's offset counts from the instruction after it.
    let to = |from: usize, target: usize| (target - from - 1) as u8;
    let mut program = vec![
        statement(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 0, to(1, deny)),
        statement(BPF_LD_W_ABS, DATA_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, to(3, deny), 0),
    ];
    for (_, nr) in DENIED {
        program.push(jump(BPF_JEQ_K, *nr as u32, to(program.len(), deny), 0));
    }
    program.push(jump(BPF_JEQ_K, libc::SYS_personality as u32, 0, to(program.len(), allow)));
    program.push(statement(BPF_LD_W_ABS, DATA_ARG0));
    for persona in PERSONAS {
        program.push(jump(BPF_JEQ_K, persona, to(program.len(), allow), 0));
    }
    debug_assert_eq!(program.len(), deny);
    program.push(statement(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32));
    program.push(statement(BPF_RET_K, SECCOMP_RET_ALLOW));
    program
}

/// Installs `program` as the calling thread's filter (inherited by its children and kept across
/// exec). Needs `CAP_SYS_ADMIN`, or `no_new_privs` set; async-signal-safe, so it may run between
/// fork and exec.
pub fn install(program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: seccomp(2) reads `fprog` and the `len` instructions it points to, which outlive
    // the call; it changes nothing but this thread's filter.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `check` in a forked child under the default filter; its exit code.
    fn under_filter(check: fn() -> i32) -> i32 {
        let program = default_program();
        // SAFETY: the child only sets no_new_privs, installs the filter, makes raw system calls
        // and leaves with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let code = if install(&program).is_ok() { check() } else { 100 };
                libc::_exit(code);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status), "the filtered child was killed: {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }

    fn errno_of(r: libc::c_long) -> i32 {
        if r < 0 {
            io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    fn denied_calls_fail_with_eperm_and_others_work() {
        assert_eq!(
            under_filter(|| {
                // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, ...) with no pointers; refused by the filter.
                errno_of(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) })
            }),
            libc::EPERM
        );
        assert_eq!(
            under_filter(|| {
                // SAFETY: bpf() with a null attribute pointer; refused before the kernel reads it.
                errno_of(unsafe { libc::syscall(libc::SYS_bpf, 0, 0, 0) })
            }),
            libc::EPERM
        );
        assert_eq!(
            under_filter(|| {
                // SAFETY: an x32-numbered getpid: must be refused, not slip past the list.
                errno_of(unsafe { libc::syscall(X32_SYSCALL_BIT as libc::c_long | libc::SYS_getpid) })
            }),
            libc::EPERM
        );
        // SAFETY: getpid has no arguments; allowed.
        assert_eq!(under_filter(|| errno_of(unsafe { libc::syscall(libc::SYS_getpid) })), 0);
        // SAFETY: personality(0xffffffff) only asks for the current persona; allowed.
        assert_eq!(under_filter(|| errno_of(unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu32) })), 0);
        assert_eq!(
            under_filter(|| {
                // SAFETY: personality(ADDR_NO_RANDOMIZE) would turn off address randomization; refused.
                errno_of(unsafe { libc::syscall(libc::SYS_personality, 0x0004_0000) })
            }),
            libc::EPERM
        );
    }

    #[test]
    fn without_the_filter_keyctl_is_not_refused_with_eperm() {
        // SAFETY: as above, in this process, unfiltered.
        let errno = errno_of(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) });
        assert_ne!(errno, libc::EPERM, "the EPERM under the filter comes from the filter");
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let program = default_program();
        for (i, insn) in program.iter().enumerate() {
            if insn.code & 0x07 == 0x05 {
                assert!(i + 1 + (insn.jt.max(insn.jf) as usize) < program.len(), "instruction {i}");
            }
        }
        assert_eq!(program[program.len() - 2].k, SECCOMP_RET_ERRNO | libc::EPERM as u32);
        assert_eq!(program[program.len() - 1].k, SECCOMP_RET_ALLOW);
    }
}
