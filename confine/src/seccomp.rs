//! A decky's system calls, narrowed: no namespaces of its own inside its
//! own and no mounts. The unit's `RestrictNamespaces=` admits the kinds the
//! confinement itself needs for the whole service, and a decky's program
//! holds every capability of its own user namespace's root… were it root
//! there; it is not, but a nested user namespace would make it so, and with
//! it come mounts (an unbounded tmpfs where no memory cgroup applies) and
//! much of the kernel's attack surface. A seccomp filter installed just
//! before the program starts (after `no_new_privs`, so no privilege is
//! needed) refuses `unshare`, `setns`, `clone` with any `CLONE_NEW*` flag,
//! `clone3` (whose flags a filter cannot read: `ENOSYS`, so the C library
//! falls back to `clone`), and every mount call, with `EPERM`.
//!
//! [`filter`] builds the classic BPF program (pure, unit-tested);
//! [`crate::raw::install_seccomp`] loads it.

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset when true.
    pub jt: u8,
    /// Jump offset when false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// `offsetof(struct seccomp_data, nr)`.
const OFF_NR: u32 = 0;
/// `offsetof(struct seccomp_data, arch)`.
const OFF_ARCH: u32 = 4;
/// `offsetof(struct seccomp_data, args[0])`, its low 32 bits (little endian).
const OFF_ARG0_LO: u32 = 16;

/// Every `CLONE_NEW*` flag (`TIME`, `NS`, `CGROUP`, `UTS`, `IPC`, `USER`,
/// `PID`, `NET`).
pub const CLONE_NEW_ANY: u32 = 0x0000_0080
    | 0x0002_0000
    | 0x0200_0000
    | 0x0400_0000
    | 0x0800_0000
    | 0x1000_0000
    | 0x2000_0000
    | 0x4000_0000;

/// The audit architecture of this build (`AUDIT_ARCH_*`): a call made
/// through another ABI is killed, never judged by the wrong numbers.
#[cfg(target_arch = "x86_64")]
pub const ARCH: u32 = 0xc000_003e;
/// The audit architecture of this build (`AUDIT_ARCH_*`).
#[cfg(target_arch = "aarch64")]
pub const ARCH: u32 = 0xc000_00b7;

/// The system calls refused outright (`EPERM`).
fn refused() -> Vec<u32> {
    let mut v = vec![
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
    ];
    v.sort_unstable();
    v.into_iter().map(|n| n as u32).collect()
}

/// The filter: architecture checked, x32 calls refused, the calls above
/// refused with `EPERM`, `clone3` with `ENOSYS`, `clone` with a
/// `CLONE_NEW*` flag with `EPERM`, everything else allowed.
pub fn filter() -> Vec<Insn> {
    let i = |code, jt, jf, k| Insn { code, jt, jf, k };
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        i(LD_W_ABS, 0, 0, OFF_ARCH),
        i(JEQ_K, 1, 0, ARCH),
        i(RET_K, 0, 0, RET_KILL_PROCESS),
        i(LD_W_ABS, 0, 0, OFF_NR),
    ];
    // x32 system calls (bit 30 of the number) on x86_64: refused.
    #[cfg(target_arch = "x86_64")]
    {
        p.push(i(JGE_K, 0, 1, 0x4000_0000));
        p.push(i(RET_K, 0, 0, eperm));
    }
    for nr in refused() {
        p.push(i(JEQ_K, 0, 1, nr));
        p.push(i(RET_K, 0, 0, eperm));
    }
    p.push(i(JEQ_K, 0, 1, libc::SYS_clone3 as u32));
    p.push(i(RET_K, 0, 0, enosys));
    // clone: look at its flags (the first argument).
    p.push(i(JEQ_K, 0, 3, libc::SYS_clone as u32));
    p.push(i(LD_W_ABS, 0, 0, OFF_ARG0_LO));
    p.push(i(JSET_K, 0, 1, CLONE_NEW_ANY));
    p.push(i(RET_K, 0, 0, eperm));
    p.push(i(RET_K, 0, 0, RET_ALLOW));
    p
}

/// Run `prog` on a call (`nr`, `arch`, first argument) the way the kernel
/// would: what it returns. Pure; for the tests.
pub fn judge(prog: &[Insn], nr: u32, arch: u32, arg0: u64) -> u32 {
    let mut acc = 0u32;
    let mut pc = 0usize;
    while pc < prog.len() {
        let ins = prog[pc];
        pc += 1;
        match ins.code {
            LD_W_ABS => {
                acc = match ins.k {
                    OFF_NR => nr,
                    OFF_ARCH => arch,
                    OFF_ARG0_LO => arg0 as u32,
                    _ => 0,
                }
            }
            JEQ_K | JGE_K | JSET_K => {
                let hit = match ins.code {
                    JEQ_K => acc == ins.k,
                    JGE_K => acc >= ins.k,
                    _ => acc & ins.k != 0,
                };
                pc += usize::from(if hit { ins.jt } else { ins.jf });
            }
            RET_K => return ins.k,
            _ => return RET_KILL_PROCESS,
        }
    }
    RET_KILL_PROCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_refuses_namespaces_and_mounts_and_allows_the_rest() {
        let p = filter();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let nr = |n: libc::c_long| n as u32;
        for n in [
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_mount,
            libc::SYS_fsopen,
        ] {
            assert_eq!(judge(&p, nr(n), ARCH, 0), eperm, "{n}");
        }
        assert_eq!(
            judge(&p, nr(libc::SYS_clone3), ARCH, 0),
            RET_ERRNO | libc::ENOSYS as u32
        );
        // clone: a thread or a fork is fine, a new namespace is not.
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(judge(&p, nr(libc::SYS_clone), ARCH, thread), RET_ALLOW);
        assert_eq!(
            judge(&p, nr(libc::SYS_clone), ARCH, libc::SIGCHLD as u64),
            RET_ALLOW
        );
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWPID,
        ] {
            assert_eq!(
                judge(&p, nr(libc::SYS_clone), ARCH, (flag | libc::SIGCHLD) as u64),
                eperm
            );
        }
        for n in [
            libc::SYS_read,
            libc::SYS_execve,
            libc::SYS_socket,
            libc::SYS_openat,
        ] {
            assert_eq!(judge(&p, nr(n), ARCH, 0), RET_ALLOW, "{n}");
        }
        // Another ABI is killed, an x32 call refused.
        assert_eq!(
            judge(&p, nr(libc::SYS_read), 0x4000_0003, 0),
            RET_KILL_PROCESS
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            judge(&p, 0x4000_0000 | nr(libc::SYS_unshare), ARCH, 0),
            eperm
        );
        // Every jump lands inside the program.
        for (at, ins) in p.iter().enumerate() {
            assert!(at + 1 + usize::from(ins.jt.max(ins.jf)) < p.len() || ins.code == RET_K);
        }
    }
}
