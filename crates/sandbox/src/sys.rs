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
/// child has moved itself into each cgroup whose `cgroup.procs` path is in `cgroup_procs`
/// (writing `0` moves the writer), so it runs nothing outside them.
pub(crate) fn spawn_with_fds(
    cmd: &mut Command,
    fds: Vec<(OwnedFd, RawFd)>,
    cgroup_procs: &[PathBuf],
) -> io::Result<std::process::Child> {
    let raw: Vec<(RawFd, RawFd)> = fds.iter().map(|(fd, to)| (fd.as_raw_fd(), *to)).collect();
    let procs: Vec<CString> = cgroup_procs
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
pub(crate) fn drop_all_capabilities() -> io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<c_ulong>().ok())
        .unwrap_or(63);
    for cap in 0..=last {
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
