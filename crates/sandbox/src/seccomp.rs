//! The seccomp filter of the sandboxed command, as a classic-BPF program built here (no
//! dependency): a deny list of kernel attack surface and escape tools on top of namespaces,
//! Landlock and the capability drop.
//!
//! Denied with `EPERM`: io_uring, bpf, userfaultfd, perf_event_open, the key syscalls, ptrace and
//! process_vm_*, mount and the whole new mount API, unshare/setns, chroot/pivot_root,
//! open_by_handle_at, module and kexec loading, and `clone` with any namespace flag. `clone3`
//! returns `ENOSYS` (its flags live in memory, where BPF cannot look; libcs then fall back to
//! `clone`), as does `openat2`. Modes with setuid/setgid bits are refused in chmod, open, mknod
//! and mkdir (see [`mode_syscalls`]). `ioctl` with `TIOCSTI`/`TIOCLINUX` (low 32 bits, as the kernel reads them) is
//! denied; `socket` only creates unix, inet and inet6 sockets. On x86-64, a foreign architecture
//! (i386 via `int 0x80`) kills the process and x32 syscall numbers are denied.

use libc::sock_filter;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// Low 32 bits of argument `i` (little-endian).
const fn offset_arg_low(i: u32) -> u32 {
    16 + 8 * i
}

/// `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;

/// Namespace flags `clone` must not carry (`CLONE_NEWTIME` shares a bit with the exit signal in
/// `clone`, so only `unshare`, which is denied outright, could use it).
const CLONE_NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// `open_tree_attr(2)` (Linux 6.15), not yet in `libc`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// `fchmodat2(2)` (Linux 6.6), not in `libc` for every architecture.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_FCHMODAT2: i64 = 452;

/// Set-user-ID and set-group-ID mode bits.
const SETID_BITS: u32 = 0o6000;

/// Syscalls that take a file mode, with the index of that argument. A mode with setuid or
/// setgid bits is refused: a file the sandbox creates in an id-mapped read-write grant belongs,
/// on the host, to the grant's owner (often root), and must never become a set-id program there.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn mode_syscalls() -> Vec<(i64, u32)> {
    let mut list = vec![
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (SYS_FCHMODAT2, 2),
        (libc::SYS_openat, 3),
        (libc::SYS_mknodat, 2),
        (libc::SYS_mkdirat, 2),
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([
        (libc::SYS_chmod, 1),
        (libc::SYS_open, 2),
        (libc::SYS_creat, 1),
        (libc::SYS_mknod, 1),
        (libc::SYS_mkdir, 1),
    ]);
    list
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn denied_syscalls() -> Vec<i64> {
    let mut list = vec![
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_bpf,
        libc::SYS_userfaultfd,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        SYS_OPEN_TREE_ATTR,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_acct,
        libc::SYS_syslog,
        libc::SYS_vhangup,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib]);
    list
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn errno(e: i32) -> u32 {
    RET_ERRNO | (u32::try_from(e).unwrap_or(1) & 0xffff)
}

/// The start of every filter: kill a process calling through another architecture, load the
/// syscall number, and on x86_64 refuse the x32 ABI (`EPERM`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn prologue() -> Vec<sock_filter> {
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.extend([
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, errno(libc::EPERM)),
    ]);
    p
}

/// Builds the filter program, or `None` on an architecture this crate has no syscall table for.
///
/// After the architecture and x32 checks, the syscall number is looked up in a binary search
/// tree of `JGE` comparisons over the numbers with a rule, ending in short `JEQ` chains; every
/// other number is allowed. A lookup takes about ten instructions instead of a walk along the
/// whole list, which matters most at install time: the kernel runs the filter once per syscall
/// number to fill its action cache, while holding the caller's signal lock.
pub(crate) fn program() -> Option<Vec<sock_filter>> {
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        return None;
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let mut p = prologue();
        let mut rules = rules()?;
        rules.sort_by_key(|(nr, _)| *nr);
        // INVARIANT: one rule per number (a second one would silently never apply).
        if rules.windows(2).any(|w| matches!(w, [a, b] if a.0 == b.0)) {
            return None;
        }
        p.extend(lookup_tree(&rules)?);
        Some(p)
    }
}

/// Each syscall number with a rule, and the rule: a block that ends in a return on every path
/// (it may load an argument, so it never falls through to code that expects the number).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn rules() -> Option<Vec<(u32, Vec<sock_filter>)>> {
    let nr = |n: i64| u32::try_from(n).ok();
    let mut rules = Vec::new();
    for sys in denied_syscalls() {
        rules.push((nr(sys)?, vec![stmt(BPF_RET_K, errno(libc::EPERM))]));
    }
    for (sys, arg) in mode_syscalls() {
        rules.push((
            nr(sys)?,
            vec![
                stmt(BPF_LD_W_ABS, offset_arg_low(arg)),
                jump(BPF_JSET_K, SETID_BITS, 0, 1),
                stmt(BPF_RET_K, errno(libc::EPERM)),
                stmt(BPF_RET_K, RET_ALLOW),
            ],
        ));
    }
    // openat2 keeps its mode in memory, out of BPF's reach; libcs fall back to openat.
    rules.push((
        nr(libc::SYS_openat2)?,
        vec![stmt(BPF_RET_K, errno(libc::ENOSYS))],
    ));
    rules.push((
        nr(libc::SYS_clone3)?,
        vec![stmt(BPF_RET_K, errno(libc::ENOSYS))],
    ));
    // clone: refuse namespace flags in the first argument.
    rules.push((
        nr(libc::SYS_clone)?,
        vec![
            stmt(BPF_LD_W_ABS, offset_arg_low(0)),
            jump(BPF_JSET_K, CLONE_NAMESPACE_FLAGS, 0, 1),
            stmt(BPF_RET_K, errno(libc::EPERM)),
            stmt(BPF_RET_K, RET_ALLOW),
        ],
    ));
    // ioctl: refuse terminal input injection.
    rules.push((
        nr(libc::SYS_ioctl)?,
        vec![
            stmt(BPF_LD_W_ABS, offset_arg_low(1)),
            jump(BPF_JEQ_K, TIOCSTI, 2, 0),
            jump(BPF_JEQ_K, TIOCLINUX, 1, 0),
            stmt(BPF_RET_K, RET_ALLOW),
            stmt(BPF_RET_K, errno(libc::EPERM)),
        ],
    ));
    // socket: unix, inet and inet6 only.
    rules.push((
        nr(libc::SYS_socket)?,
        vec![
            stmt(BPF_LD_W_ABS, offset_arg_low(0)),
            jump(BPF_JEQ_K, libc::AF_UNIX as u32, 3, 0),
            jump(BPF_JEQ_K, libc::AF_INET as u32, 2, 0),
            jump(BPF_JEQ_K, libc::AF_INET6 as u32, 1, 0),
            stmt(BPF_RET_K, errno(libc::EAFNOSUPPORT)),
            stmt(BPF_RET_K, RET_ALLOW),
        ],
    ));
    Some(rules)
}

/// Rules at most this many to a leaf are matched by a `JEQ` chain.
const LEAF_RULES: usize = 3;

/// Code that, with the syscall number in the accumulator, runs the rule for that number among
/// `rules` (sorted, distinct) or allows it; every path ends in a return. `None` if a jump would
/// not fit classic BPF's 8-bit offsets.
fn lookup_tree(rules: &[(u32, Vec<sock_filter>)]) -> Option<Vec<sock_filter>> {
    if rules.len() <= LEAF_RULES {
        let mut code = Vec::new();
        for (nr, block) in rules {
            code.push(jump(BPF_JEQ_K, *nr, 0, u8::try_from(block.len()).ok()?));
            code.extend_from_slice(block);
        }
        code.push(stmt(BPF_RET_K, RET_ALLOW));
        return Some(code);
    }
    let (below, from) = rules.split_at(rules.len() / 2);
    let pivot = from.first()?.0;
    let below = lookup_tree(below)?;
    let from = lookup_tree(from)?;
    let mut code = vec![jump(BPF_JGE_K, pivot, u8::try_from(below.len()).ok()?, 0)];
    code.extend(below);
    code.extend(from);
    Some(code)
}

#[cfg(all(test, target_arch = "x86_64"))]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    /// A minimal interpreter for the instructions `program` uses, to test decisions offline.
    fn run(p: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let ins = p[pc];
            match ins.code {
                BPF_LD_W_ABS => {
                    let o = ins.k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                    pc += 1;
                }
                BPF_RET_K => return ins.k,
                code => {
                    let hit = match code {
                        BPF_JEQ_K => acc == ins.k,
                        BPF_JGE_K => acc >= ins.k,
                        BPF_JSET_K => acc & ins.k != 0,
                        _ => panic!("unexpected opcode"),
                    };
                    pc += 1 + usize::from(if hit { ins.jt } else { ins.jf });
                }
            }
        }
    }

    /// The filter as it was built before the lookup tree: one comparison after another.
    fn linear_reference() -> Option<Vec<sock_filter>> {
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            return None;
        }
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            let nr = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
            let mut p = prologue();
            for sys in denied_syscalls() {
                p.push(jump(BPF_JEQ_K, nr(sys), 0, 1));
                p.push(stmt(BPF_RET_K, errno(libc::EPERM)));
            }
            for (sys, arg) in mode_syscalls() {
                p.extend([
                    jump(BPF_JEQ_K, nr(sys), 0, 4),
                    stmt(BPF_LD_W_ABS, offset_arg_low(arg)),
                    jump(BPF_JSET_K, SETID_BITS, 0, 1),
                    stmt(BPF_RET_K, errno(libc::EPERM)),
                    stmt(BPF_RET_K, RET_ALLOW),
                ]);
            }
            p.extend([
                // openat2 keeps its mode in memory, out of BPF's reach; libcs fall back to openat.
                jump(BPF_JEQ_K, nr(libc::SYS_openat2), 0, 1),
                stmt(BPF_RET_K, errno(libc::ENOSYS)),
                jump(BPF_JEQ_K, nr(libc::SYS_clone3), 0, 1),
                stmt(BPF_RET_K, errno(libc::ENOSYS)),
                // clone: refuse namespace flags in the first argument.
                jump(BPF_JEQ_K, nr(libc::SYS_clone), 0, 4),
                stmt(BPF_LD_W_ABS, offset_arg_low(0)),
                jump(BPF_JSET_K, CLONE_NAMESPACE_FLAGS, 0, 1),
                stmt(BPF_RET_K, errno(libc::EPERM)),
                stmt(BPF_RET_K, RET_ALLOW),
                // ioctl: refuse terminal input injection.
                jump(BPF_JEQ_K, nr(libc::SYS_ioctl), 0, 5),
                stmt(BPF_LD_W_ABS, offset_arg_low(1)),
                jump(BPF_JEQ_K, TIOCSTI, 2, 0),
                jump(BPF_JEQ_K, TIOCLINUX, 1, 0),
                stmt(BPF_RET_K, RET_ALLOW),
                stmt(BPF_RET_K, errno(libc::EPERM)),
                // socket: unix, inet and inet6 only.
                jump(BPF_JEQ_K, nr(libc::SYS_socket), 0, 6),
                stmt(BPF_LD_W_ABS, offset_arg_low(0)),
                jump(BPF_JEQ_K, libc::AF_UNIX as u32, 3, 0),
                jump(BPF_JEQ_K, libc::AF_INET as u32, 2, 0),
                jump(BPF_JEQ_K, libc::AF_INET6 as u32, 1, 0),
                stmt(BPF_RET_K, errno(libc::EAFNOSUPPORT)),
                stmt(BPF_RET_K, RET_ALLOW),
                stmt(BPF_RET_K, RET_ALLOW),
            ]);
            Some(p)
        }
    }

    #[test]
    fn the_lookup_tree_decides_like_the_linear_filter() {
        let tree = program().unwrap();
        let linear = linear_reference().unwrap();
        let mut patterns: Vec<[u64; 6]> = vec![[0; 6], [u64::MAX; 6]];
        for i in 0..6 {
            for v in [
                0o4755,
                0o2000,
                0o755,
                0x5412,
                0x541c,
                (1 << 32) | 0x5412,
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64,
                libc::CLONE_NEWNET as u64,
                libc::SIGCHLD as u64,
                libc::AF_UNIX as u64,
                libc::AF_INET as u64,
                libc::AF_INET6 as u64,
                libc::AF_NETLINK as u64,
                libc::AF_PACKET as u64,
            ] {
                let mut a = [0; 6];
                a[i] = v;
                patterns.push(a);
            }
        }
        let mut numbers: Vec<u32> = (0..1024).collect();
        numbers.extend([X32_SYSCALL_BIT, X32_SYSCALL_BIT | 1, u32::MAX, 0x3fff_ffff]);
        let mut checked = 0;
        for nr in numbers {
            for args in &patterns {
                assert_eq!(
                    run(&tree, AUDIT_ARCH, nr, *args),
                    run(&linear, AUDIT_ARCH, nr, *args),
                    "syscall {nr} with {args:?}"
                );
                checked += 1;
            }
            assert_eq!(run(&tree, 0x4000_0003, nr, [0; 6]), RET_KILL_PROCESS);
        }
        assert!(checked > 50_000);
        // The point of the tree: a lookup is short.
        let longest = (0..1024).map(|nr| steps(&tree, nr)).max().unwrap();
        assert!(longest <= 20, "{longest} instructions");
        assert!(
            steps(&linear, 0) > 3 * longest,
            "{} against {longest}",
            steps(&linear, 0)
        );
    }

    /// Instructions run before a return for syscall `nr` without arguments.
    fn steps(p: &[sock_filter], nr: u32) -> usize {
        let mut acc = 0u32;
        let mut pc = 0usize;
        let mut n = 0;
        loop {
            let ins = p[pc];
            n += 1;
            match ins.code {
                BPF_LD_W_ABS => {
                    acc = match ins.k {
                        OFFSET_NR => nr,
                        OFFSET_ARCH => AUDIT_ARCH,
                        _ => 0,
                    };
                    pc += 1;
                }
                BPF_RET_K => return n,
                code => {
                    let hit = match code {
                        BPF_JEQ_K => acc == ins.k,
                        BPF_JGE_K => acc >= ins.k,
                        _ => acc & ins.k != 0,
                    };
                    pc += 1 + usize::from(if hit { ins.jt } else { ins.jf });
                }
            }
        }
    }

    fn decide(nr: i64, args: [u64; 6]) -> u32 {
        run(&program().unwrap(), AUDIT_ARCH, nr as u32, args)
    }

    #[test]
    fn allows_ordinary_syscalls() {
        assert_eq!(decide(libc::SYS_read, [0; 6]), RET_ALLOW);
        assert_eq!(
            decide(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            decide(libc::SYS_socket, [libc::AF_INET as u64, 1, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(decide(libc::SYS_ioctl, [0, 0x5401, 0, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn denies_escape_tools() {
        let eperm = errno(libc::EPERM);
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_bpf,
            libc::SYS_ptrace,
            libc::SYS_unshare,
        ] {
            assert_eq!(decide(nr, [0; 6]), eperm);
        }
        assert_eq!(decide(libc::SYS_clone3, [0; 6]), errno(libc::ENOSYS));
        let ns = (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64;
        assert_eq!(decide(libc::SYS_clone, [ns, 0, 0, 0, 0, 0]), eperm);
        // The kernel reads the ioctl command as 32 bits: high bits must not hide TIOCSTI.
        assert_eq!(
            decide(libc::SYS_ioctl, [0, (1 << 32) | 0x5412, 0, 0, 0, 0]),
            eperm
        );
        let setuid = [0, 0o4755, 0, 0, 0, 0];
        assert_eq!(decide(libc::SYS_fchmod, setuid), eperm);
        assert_eq!(decide(libc::SYS_fchmodat, [0, 0, 0o2755, 0, 0, 0]), eperm);
        assert_eq!(decide(libc::SYS_openat, [0, 0, 0o100, 0o4755, 0, 0]), eperm);
        assert_eq!(decide(libc::SYS_fchmod, [0, 0o755, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            decide(libc::SYS_openat, [0, 0, 0o100, 0o644, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(decide(libc::SYS_openat2, [0; 6]), errno(libc::ENOSYS));
        let netlink = libc::AF_NETLINK as u64;
        assert_eq!(
            decide(libc::SYS_socket, [netlink, 3, 0, 0, 0, 0]),
            errno(libc::EAFNOSUPPORT)
        );
        assert_eq!(decide(libc::SYS_read | 0x4000_0000, [0; 6]), eperm);
        let i386 = 0x4000_0003;
        assert_eq!(run(&program().unwrap(), i386, 3, [0; 6]), RET_KILL_PROCESS);
    }
}
