//! The crate's only `unsafe`: thin, checked wrappers over the Linux system calls the launcher
//! needs. Each wrapper converts a C return value into an `io::Result` and owns any descriptor it
//! creates; nothing here holds state or decides policy.
#![expect(
    unsafe_code,
    reason = "the one module that talks to the kernel directly: namespaces, mounts, seccomp, capabilities"
)]

use std::ffi::{CString, c_int, c_long, c_uint, c_ulong, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `open_tree(2)` flag: clone the mount tree instead of opening it in place.
const OPEN_TREE_CLONE: c_uint = 1;
/// `open_tree(2)` / `mount_setattr(2)` flag: apply to the whole subtree.
const AT_RECURSIVE: c_uint = 0x8000;
/// `move_mount(2)` flag: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: c_uint = 0x4;
/// `mount_setattr(2)` attributes.
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `landlock_create_ruleset(2)` flag asking for the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: c_uint = 1;
/// `close_range(2)` flag: mark close-on-exec instead of closing.
const CLOSE_RANGE_CLOEXEC: c_uint = 1 << 2;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn check(ret: c_int) -> io::Result<c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: c_long) -> io::Result<c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a nul byte"))
}

fn fd_from_ret(ret: c_long) -> io::Result<OwnedFd> {
    let fd = check_long(ret)?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Spawns `cmd` with `fds` duplicated onto the given descriptor numbers in the child (clearing
/// close-on-exec there only, so no other concurrently spawned child inherits them), after the
/// child has moved itself into each cgroup whose `tasks` (v1) or `cgroup.procs` (v2) file is in
/// `cgroup_join` (writing `0` moves the writer, the child's only thread), so it runs nothing
/// outside them.
pub(crate) fn spawn_with_fds(
    cmd: &mut Command,
    fds: Vec<(OwnedFd, RawFd)>,
    cgroup_join: &[PathBuf],
) -> io::Result<std::process::Child> {
    let raw: Vec<(RawFd, RawFd)> = fds.iter().map(|(fd, to)| (fd.as_raw_fd(), *to)).collect();
    let procs: Vec<CString> = cgroup_join
        .iter()
        .map(|p| cstr(p))
        .collect::<io::Result<_>>()?;
    // SAFETY: the closure only calls `open`, `write`, `close`, `dup2` and `fcntl`, which are
    // async-signal-safe, and touches no allocation or lock; `raw` and `procs` were built before
    // the fork and are only read.
    unsafe {
        cmd.pre_exec(move || {
            for path in &procs {
                let fd = check(libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC))?;
                let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for &(from, to) in &raw {
                if from == to {
                    let flags = check(libc::fcntl(from, libc::F_GETFD))?;
                    check(libc::fcntl(from, libc::F_SETFD, flags & !libc::FD_CLOEXEC))?;
                } else {
                    check(libc::dup2(from, to))?;
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(fds);
    child
}

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid` exits.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall on integers.
    fd_from_ret(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as c_uint) })
}

/// `poll(2)` for readability on `fds`, retrying on `EINTR` (with the same timeout). Returns, per
/// descriptor, whether it is readable or hung up. A `None` timeout waits indefinitely.
pub(crate) fn poll_readable(fds: &[RawFd], timeout_ms: Option<u64>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout = timeout_ms.map_or(-1, |ms| c_int::try_from(ms).unwrap_or(c_int::MAX));
    loop {
        let n = libc::nfds_t::try_from(pfds.len()).unwrap_or(0);
        // SAFETY: `pfds` is a valid array of `n` pollfd structures for the call's duration.
        match check(unsafe { libc::poll(pfds.as_mut_ptr(), n, timeout) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
            Ok(_) => return Ok(pfds.iter().map(|p| p.revents != 0).collect()),
        }
    }
}

/// The result of [`fork`].
pub(crate) enum Fork {
    /// In the child.
    Child,
    /// In the parent, with the child's pid.
    Parent(libc::pid_t),
}

/// `fork(2)`. Only called from the launcher's single-threaded helper processes.
pub(crate) fn fork() -> io::Result<Fork> {
    // SAFETY: callers are single-threaded (the helper re-executed with a fresh runtime, or its
    // PID 1 before it starts threads), so the child inherits no lock held by another thread.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// `_exit(2)`: leaves a forked child without running the parent's destructors or atexit hooks.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// `waitpid(2)`, retrying on `EINTR`. Returns the pid and raw status.
pub(crate) fn waitpid(pid: libc::pid_t, flags: c_int) -> io::Result<(libc::pid_t, c_int)> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        let ret = unsafe { libc::waitpid(pid, &raw mut status, flags) };
        match check(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
            Ok(p) => return Ok((p, status)),
        }
    }
}

/// Decodes a wait status into the shell convention: exit code, or 128 + signal.
pub(crate) fn status_code(status: c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        128
    }
}

/// `kill(2)`.
pub(crate) fn kill(pid: libc::pid_t, signal: c_int) -> io::Result<()> {
    // SAFETY: plain syscall on integers.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Effective uid and gid.
pub(crate) fn euid_egid() -> (u32, u32) {
    // SAFETY: plain syscalls without arguments.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// `setsid(2)`.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: plain syscall without arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Sets this process's fair-scheduler slice request (`sched_attr.sched_runtime`, honoured by
/// Linux 6.12 and later; older kernels ignore it), keeping its policy and nice value; `0`
/// restores the default. Leaves processes under any other policy alone, and does nothing where
/// `sched_getattr` is unavailable.
pub(crate) fn set_fair_slice(nanos: u64) -> io::Result<()> {
    let size = u32::try_from(std::mem::size_of::<libc::sched_attr>()).unwrap_or(0);
    let mut attr = libc::sched_attr {
        size,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a writable `sched_attr` of the size passed.
    let read =
        unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut attr, size, 0 as c_uint) };
    if read != 0 {
        // Without `sched_getattr` no slice was ever set here either: nothing to do or undo.
        return Ok(());
    }
    let fair = [libc::SCHED_OTHER, libc::SCHED_BATCH]
        .iter()
        .any(|&p| u32::try_from(p).ok() == Some(attr.sched_policy));
    if !fair {
        return Ok(());
    }
    attr.size = size;
    attr.sched_flags = 0;
    attr.sched_runtime = nanos;
    // SAFETY: `attr` is a valid `sched_attr` filled by the kernel above.
    check_long(unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0 as c_uint) })
        .map(drop)
}

/// `setrlimit(2)` with equal soft and hard limits.
pub(crate) fn set_rlimit(resource: c_int, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `lim` is a valid rlimit for the call; the resource is a libc constant.
    check(unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &raw const lim) })
        .map(drop)
}

/// Drops supplementary groups, then sets real, effective and saved gid and uid.
pub(crate) fn drop_to(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: a zero-length list with a null pointer is the documented way to clear the groups.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain syscalls on integers.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    Ok(())
}

/// `setns(2)`: moves the calling (single-threaded) process into the namespace `ns` refers to.
pub(crate) fn setns(ns: &OwnedFd, nstype: c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own and an integer.
    check(unsafe { libc::setns(ns.as_raw_fd(), nstype) }).map(drop)
}

/// `unshare(2)`.
pub(crate) fn unshare(flags: c_int) -> io::Result<()> {
    // SAFETY: plain syscall on an integer.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `prctl(2)` with integer arguments.
fn prctl(option: c_int, arg: c_ulong) -> io::Result<c_int> {
    // SAFETY: every option used here takes integer arguments only.
    check(unsafe { libc::prctl(option, arg, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) })
}

/// Sets the signal this process gets when its parent dies.
pub(crate) fn set_parent_death_signal(signal: c_int) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, signal as c_ulong).map(drop)
}

/// Sets the dumpable flag. Non-dumpable: no core dumps, `/proc/PID` owned by root, no ptrace by
/// peers. Changing uid clears it, which would also stop the process from writing its own
/// `/proc/self/uid_map`.
pub(crate) fn set_dumpable(dumpable: bool) -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, c_ulong::from(dumpable)).map(drop)
}

/// `PR_SET_NO_NEW_PRIVS`.
pub(crate) fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

/// Drops every capability: bounding set, ambient set, then effective, permitted, inheritable.
/// Every possible capability number is tried (capability sets are 64 bits wide; numbers this
/// kernel does not know fail with `EINVAL` and are skipped), so nothing is read from `/proc`.
pub(crate) fn drop_all_capabilities() -> io::Result<()> {
    for cap in 0..=63 {
        match prctl(libc::PR_CAPBSET_DROP, cap) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    // SAFETY: integer-only prctl option.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        )
    })?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and the two-element data array match `capset(2)`'s version-3 layout.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) })?;
    Ok(())
}

/// `mount(2)`.
pub(crate) fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(CString::new).transpose()?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    let target = cstr(target)?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is either null or a nul-terminated string alive for the call.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast::<c_void>(),
        )
    })
    .map(drop)
}

/// `umount2(2)`.
pub(crate) fn umount_detach(target: &Path) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: `target` is a nul-terminated string alive for the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// `pivot_root(".", ".")` in the current directory.
pub(crate) fn pivot_root_here() -> io::Result<()> {
    let dot = c".";
    // SAFETY: both arguments are static nul-terminated strings.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) }).map(drop)
}

/// `open_tree(2)` with `OPEN_TREE_CLONE | AT_RECURSIVE`: a detached copy of the mount at `path`.
pub(crate) fn clone_tree(path: &Path) -> io::Result<OwnedFd> {
    let path = cstr(path)?;
    let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as c_uint;
    // SAFETY: `path` is a nul-terminated string alive for the call.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    fd_from_ret(ret)
}

/// `mount_setattr(2)` on a detached tree: sets `attrs` and, if given, an id-mapping.
pub(crate) fn set_tree_attrs(
    tree: &OwnedFd,
    attrs: u64,
    userns: Option<&OwnedFd>,
) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    if let Some(ns) = userns {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = u64::try_from(ns.as_raw_fd()).unwrap_or(0);
    }
    let empty = c"";
    // SAFETY: `attr` is a valid `struct mount_attr` and its size is passed; `empty` is static.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as c_uint | AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check_long(ret).map(drop)
}

/// `move_mount(2)`: attaches a detached tree at `target`.
pub(crate) fn attach_tree(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let target = cstr(target)?;
    let empty = c"";
    // SAFETY: both strings are nul-terminated and alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check_long(ret).map(drop)
}

/// Creates a user namespace whose only mapping sends `from_uid`/`from_gid` to `to_uid`/`to_gid`,
/// for an id-mapped mount, and returns its descriptor. Needs privilege in the current namespace.
pub(crate) fn mapping_userns(
    from_uid: u32,
    from_gid: u32,
    to_uid: u32,
    to_gid: u32,
) -> io::Result<OwnedFd> {
    let (ready_r, ready_w) = pipe()?;
    let (hold_r, hold_w) = pipe()?;
    match fork()? {
        Fork::Child => {
            drop(ready_r);
            drop(hold_w);
            let ok = unshare(libc::CLONE_NEWUSER).is_ok();
            let byte = [u8::from(ok)];
            let _ = write_all_fd(&ready_w, &byte);
            let mut buf = [0u8; 1];
            let _ = read_fd(&hold_r, &mut buf);
            exit_now(0);
        }
        Fork::Parent(pid) => {
            drop(ready_w);
            drop(hold_r);
            let mut buf = [0u8; 1];
            let result = (|| {
                if read_fd(&ready_r, &mut buf)? != 1 || buf != [1] {
                    return Err(io::Error::other(
                        "could not create a mapping user namespace",
                    ));
                }
                let proc = format!("/proc/{pid}");
                std::fs::write(
                    format!("{proc}/uid_map"),
                    format!("{from_uid} {to_uid} 1\n"),
                )?;
                std::fs::write(format!("{proc}/setgroups"), "deny\n")?;
                std::fs::write(
                    format!("{proc}/gid_map"),
                    format!("{from_gid} {to_gid} 1\n"),
                )?;
                Ok(OwnedFd::from(std::fs::File::open(format!(
                    "{proc}/ns/user"
                ))?))
            })();
            drop(hold_w);
            let _ = waitpid(pid, 0);
            result
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` is a two-element out-array as `pipe2(2)` requires.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    let [r, w] = fds;
    // SAFETY: the kernel just returned both descriptors; we take sole ownership.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` writable bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn write_all_fd(fd: &OwnedFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: `buf` is valid for `buf.len()` readable bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if usize::try_from(n).ok() == Some(buf.len()) {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `sethostname(2)`.
pub(crate) fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Brings the loopback interface of the current network namespace up.
pub(crate) fn loopback_up() -> io::Result<()> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| {
        // Binding needs no interface; fall through to a raw socket only if that fails.
        std::net::UdpSocket::bind("[::]:0")
    });
    let sock = match sock {
        Ok(s) => OwnedFd::from(s),
        Err(_) => {
            // SAFETY: plain syscall on integers.
            let fd =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            fd_from_ret(c_long::from(fd))?
        }
    };
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for SIOCGIFFLAGS, which fills `ifru_flags`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) })?;
    // SAFETY: reading the union member SIOCGIFFLAGS just wrote.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: `req` is a valid ifreq for SIOCSIFFLAGS.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut req) }).map(drop)
}

/// Marks every descriptor from `first` up close-on-exec.
pub(crate) fn cloexec_from(first: c_uint) -> io::Result<()> {
    // SAFETY: plain syscall on integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    check_long(ret).map(drop)
}

/// The Landlock ABI version the running kernel supports (0 when Landlock is unavailable).
pub(crate) fn landlock_abi() -> u32 {
    // SAFETY: with the VERSION flag the kernel reads neither pointer nor size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(ret).unwrap_or(0)
}

/// Installs a classic-BPF seccomp filter on the calling thread. Requires no-new-privs.
pub(crate) fn install_seccomp(program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as c_ulong,
            &raw const prog,
        )
    })
    .map(drop)
}

/// Takes ownership of descriptor `fd` if it is open (the launcher protocol's fixed numbers).
pub(crate) fn take_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: the descriptor is open and, by the launcher protocol, owned by nobody else in this
    // process; this is called once per number at helper start.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Most descriptors one zygote message carries.
pub(crate) const MAX_PASSED_FDS: usize = 8;

/// A close-on-exec `SOCK_SEQPACKET` unix socket pair (message boundaries kept, one message per
/// `sendmsg`, so concurrent senders never interleave).
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` is a two-element out-array as `socketpair(2)` requires.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    let [a, b] = fds;
    // SAFETY: the kernel just returned both descriptors; we take sole ownership.
    Ok(unsafe { (OwnedFd::from_raw_fd(a), OwnedFd::from_raw_fd(b)) })
}

/// Space for the control message of [`MAX_PASSED_FDS`] descriptors (aligned for `cmsghdr`).
#[repr(C, align(8))]
struct CmsgSpace([u8; 64]);

/// `sendmsg(2)` of `data` with `fds` attached by `SCM_RIGHTS`, without `SIGPIPE`. Allocates
/// nothing and takes no lock, so it may run between `fork` and `exec` of a multi-threaded
/// process.
pub(crate) fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut space = CmsgSpace([0; 64]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: `msghdr` is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = space.0.as_mut_ptr().cast();
        // SAFETY: `CMSG_SPACE` is arithmetic on its argument.
        let needed = unsafe { libc::CMSG_SPACE(fd_bytes as c_uint) } as usize;
        if needed > space.0.len() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        msg.msg_controllen = needed;
        // SAFETY: `msg_control` points at `needed` zeroed, aligned bytes, so the first header
        // and its data (`CMSG_LEN(fd_bytes)` <= `needed`) lie inside `space`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            if cmsg.is_null() {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as c_uint) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` and `space`, both alive for the call.
        let n = unsafe { libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL) };
        match usize::try_from(n) {
            Ok(n) if n == data.len() => return Ok(()),
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::EMSGSIZE)),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// `recvmsg(2)` of one message into `buf`, with any descriptors passed by `SCM_RIGHTS` (received
/// close-on-exec). Returns the data length (0 at end of stream) and the descriptors; a message
/// whose data or descriptors were truncated is an error (its descriptors are closed).
pub(crate) fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = CmsgSpace([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.0.as_mut_ptr().cast();
    msg.msg_controllen = space.0.len();
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `space`, both alive for the call.
        let n = unsafe { libc::recvmsg(sock, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        match usize::try_from(n) {
            Ok(n) => break n,
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
    // control messages inside `space`; the CMSG macros walk only within them, and each
    // `SCM_RIGHTS` payload holds `(cmsg_len - CMSG_LEN(0)) / 4` descriptors now owned by us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / std::mem::size_of::<c_int>();
                let data = libc::CMSG_DATA(cmsg).cast::<c_int>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
        return Err(io::Error::other("truncated message"));
    }
    Ok((n, fds))
}

/// Spawns `cmd` only to pass its prepared stdio: between `fork` and `exec`, once std has put the
/// stdio on descriptors 0, 1 and 2, the child sends them and `extra` in one message with `data`
/// over `sock`, then exits with status 0 instead of executing anything. A failed send fails
/// the spawn.
pub(crate) fn pass_stdio(
    cmd: &mut Command,
    sock: RawFd,
    data: Vec<u8>,
    extra: &[RawFd],
) -> io::Result<std::process::Child> {
    let mut fds = [0 as RawFd; MAX_PASSED_FDS];
    let count = 3 + extra.len();
    let slots = fds
        .get_mut(3..count)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    slots.copy_from_slice(extra);
    if let Some(stdio) = fds.get_mut(..3) {
        stdio.copy_from_slice(&[0, 1, 2]);
    }
    // SAFETY: the closure calls only `sendmsg` (through `send_with_fds`, which allocates
    // nothing) and `_exit`, both async-signal-safe; `data` and `fds` were built before the fork
    // and are only read.
    unsafe {
        cmd.pre_exec(move || {
            let all = fds.get(..count).unwrap_or_default();
            send_with_fds(sock, &data, all)?;
            libc::_exit(0)
        });
    }
    cmd.spawn()
}

/// Sets `SIGCHLD` to be ignored (children are reaped by the kernel, no zombies) or back to the
/// default.
pub(crate) fn ignore_children(ignore: bool) -> io::Result<()> {
    let handler = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: installs a disposition, not a handler function; no Rust code runs on the signal.
    if unsafe { libc::signal(libc::SIGCHLD, handler) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `dup2(2)`: makes `to` a copy of `from` (without close-on-exec).
pub(crate) fn dup_onto(from: &OwnedFd, to: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on integers; `to` is a standard stream number the caller replaces.
    check(unsafe { libc::dup2(from.as_raw_fd(), to) }).map(drop)
}

/// `pidfd_send_signal(2)`.
pub(crate) fn pidfd_kill(pidfd: &OwnedFd, signal: c_int) -> io::Result<()> {
    // SAFETY: plain syscall; a null `siginfo` is allowed.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as c_uint,
        )
    })
    .map(drop)
}

/// This process's pid.
pub(crate) fn own_pid() -> libc::pid_t {
    // SAFETY: `getpid` has no preconditions.
    unsafe { libc::getpid() }
}

/// Writes `path`'s text `0` with `open`/`write` only (moves the calling thread into a cgroup).
pub(crate) fn join_cgroup(path: &Path) -> io::Result<()> {
    std::fs::write(path, "0")
}

/// The parent's pid.
pub(crate) fn parent_pid() -> libc::pid_t {
    // SAFETY: `getppid` has no preconditions.
    unsafe { libc::getppid() }
}
