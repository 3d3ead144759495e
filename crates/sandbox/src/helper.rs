//! The launcher's side inside the new process: the single-threaded helper, the sandbox's PID 1
//! and the command's last steps before `exec`.
//!
//! Process tree: caller → zygote (started once per `Sandbox`, single-threaded, cleared
//! environment, never enters anything; forks a short-lived maker that makes the next start's
//! user and network namespaces, and the next start's helper, which waits for its one job) →
//! helper (one per start; joins the sandbox's cgroups before anything else, so it forks nothing
//! outside them; sets rlimits, prepares the bind mounts, drops to the sandbox uid, enters the
//! pre-made namespaces, unshares the others) → PID 1 of the new pid namespace (builds the root,
//! pivots, runs the egress relay, reaps, and exits with the command's status, which kills the
//! namespace) → the command (no-new-privs, Landlock, capability drop, descriptors closed,
//! seccomp, exec).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, symlink};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use serde::{Deserialize, Serialize};

use crate::sys::{self, Fork};

/// The first argument that turns a binary into the zygote.
pub(crate) const ZYGOTE_ARG: &str = "__warden-sandbox-zygote";
/// The zygote's end of its control socket.
pub(crate) const CONTROL_FD: i32 = 3;
/// Descriptors in a start request, in order: the command's stdin, stdout and stderr, the
/// configuration pipe, the report pipe and the helper's reply socket.
pub(crate) const REQUEST_FDS: usize = 6;
/// Where the new root is assembled (inside the helper's own mount namespace).
const NEW_ROOT: &str = "/tmp";
/// Scheduler slice requested by the helper and PID 1 (inherited, reset for the command): short
/// set-up steps then wait less behind long-running tasks on a loaded machine.
const SETUP_SLICE_NS: u64 = 100_000;
/// Where the egress socket appears inside the sandbox.
const PROXY_SOCKET_INSIDE: &str = "/run/warden/egress.sock";
/// How long a start waits for the spare namespaces still being made before making its own.
const SPARE_WAIT_MS: u64 = 1_000;
/// The namespaces a helper creates itself when it has a spare (user and network come with it).
const NAMESPACES_BESIDE_SPARE: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP;

/// What the caller tells the helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HelperConfig {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub read_only: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
    /// Uid and gid to drop to when started as root.
    pub drop_to: Option<(u32, u32)>,
    pub open_files: u64,
    pub file_size_bytes: u64,
    pub cpu_seconds: u64,
    /// `RLIMIT_AS`, set only when cgroups are unavailable and the operator allowed that.
    pub address_space_bytes: Option<u64>,
    pub tmp_bytes: u64,
    pub proxy_socket: Option<PathBuf>,
    pub proxy_port: u16,
    pub allow_without_landlock: bool,
}

/// A start request's data (its descriptors travel beside it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StartRequest {
    /// The cgroup files (`tasks` on v1, `cgroup.procs` on v2) the helper joins first.
    pub cgroups: Vec<PathBuf>,
}

/// A detached mount tree waiting to be attached in the new root.
struct Bind {
    tree: OwnedFd,
    target: PathBuf,
    is_dir: bool,
}

/// The new root's plan: bind mounts and symlinks.
struct RootPlan {
    binds: Vec<Bind>,
    links: Vec<(PathBuf, PathBuf)>,
}

/// A user namespace and a network namespace owned by it, made ahead of time by a maker process
/// the zygote forked, for exactly one start: the zygote holds at most one, hands it to the next
/// start's helper and closes its own copies, so no other start can ever receive it.
struct Spare {
    user: OwnedFd,
    net: OwnedFd,
}

/// If this process was started as the sandbox's zygote, runs it and exits; otherwise returns at
/// once. Call it first thing in `main`, while the process is still single-threaded.
pub fn run_helper_if_requested() {
    if std::env::args_os().nth(1).as_deref() != Some(OsStr::new(ZYGOTE_ARG)) {
        return;
    }
    let code = zygote_main();
    std::process::exit(code);
}

/// The zygote: a single-threaded process with a cleared environment, started once per
/// [`Sandbox`](crate::Sandbox), that forks one sandbox helper per start request.
///
/// It holds nothing secret (configurations go straight to each helper through its own pipe)
/// and never itself joins a cgroup, sets a limit, drops privileges or enters a namespace: every
/// such step happens in the forked helper, so each sandbox starts from the same clean state and
/// nothing of one sandbox can reach the next. It exits at end of stream on its control socket,
/// that is when the caller closed it or died (a parent-death signal would follow the caller's
/// *thread*, which may end long before the `Sandbox`); its helpers follow it through their own
/// parent-death signal.
fn zygote_main() -> i32 {
    // Nothing this process holds may reach a command except through the fds set up per start.
    let _ = sys::cloexec_from(3);
    let _ = sys::set_fair_slice(SETUP_SLICE_NS);
    // `UID:GID`: the sandbox user a root zygote's spare user namespaces belong to.
    let drop_to = std::env::args().nth(2).and_then(|arg| {
        let (uid, gid) = arg.split_once(':')?;
        Some((uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?))
    });
    let Some(control) = sys::take_fd(CONTROL_FD) else {
        return 125;
    };
    // Helpers and makers are reaped by the kernel: the zygote never waits, and no zombie keeps
    // a pid.
    if sys::ignore_children(true).is_err() {
        return 125;
    }
    // The same for every sandbox: built once here, inherited by every helper.
    let seccomp = crate::seccomp::program();
    // Hello: the caller learns the zygote is up and which uid its helpers run as (a wrapper may
    // have dropped privileges), so it can hand them their cgroups.
    let uid = sys::euid_egid().0;
    if sys::send_with_fds(control.as_raw_fd(), &uid.to_le_bytes(), &[]).is_err() {
        return 125;
    }
    let zygote = sys::own_pid();
    let mut buf = vec![0u8; 64 * 1024];
    let mut spare: Option<Spare> = None;
    let mut maker = start_spare(drop_to);
    let mut idle: Option<OwnedFd> = None;
    loop {
        // The next start's helper, forked ahead of time: it only waits for its job (below).
        if idle.is_none()
            && let Ok((ours, theirs)) = sys::seqpacket_pair()
        {
            match sys::fork() {
                Ok(Fork::Child) => {
                    // Nothing of the zygote's but its clean memory: not the control socket,
                    // not a spare made for another start.
                    drop((control, ours, maker, spare));
                    sys::exit_now(idle_helper(zygote, &theirs, seccomp.as_deref()));
                }
                Ok(Fork::Parent(_)) => idle = Some(ours),
                Err(_) => {}
            }
        }
        let mut watched = vec![control.as_raw_fd()];
        watched.extend(maker.as_ref().map(AsRawFd::as_raw_fd));
        let Ok(ready) = sys::poll_readable(&watched, None) else {
            return 125;
        };
        if ready.get(1).copied().unwrap_or(false) {
            spare = maker.take().and_then(|m| collect_spare(&m, 0));
        }
        if !ready.first().copied().unwrap_or(false) {
            continue;
        }
        let (n, fds) = match sys::recv_with_fds(control.as_raw_fd(), &mut buf) {
            Ok((0, fds)) if fds.is_empty() => return 0,
            Ok(message) => message,
            Err(e) if e.kind() == std::io::ErrorKind::Other => continue,
            Err(_) => return 125,
        };
        // A malformed request is dropped; its descriptors close, so its caller sees an error.
        let Ok(fds) = <[OwnedFd; REQUEST_FDS]>::try_from(fds) else {
            continue;
        };
        let Some(Ok(request)) = buf.get(..n).map(serde_json::from_slice::<StartRequest>) else {
            continue;
        };
        // This start's spare: the one ready, or the one being made (briefly awaited). Without
        // one the helper creates its user and network namespaces itself, as a spare's maker does.
        let ready_spare = spare
            .take()
            .or_else(|| maker.take().and_then(|m| collect_spare(&m, SPARE_WAIT_MS)));
        // Hand the job to the idle helper; fork one now only if it cannot take it.
        let handed = idle.take().is_some_and(|helper| {
            let mut all: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            if let Some(s) = &ready_spare {
                all.extend([s.user.as_raw_fd(), s.net.as_raw_fd()]);
            }
            let job = buf.get(..n).unwrap_or_default();
            sys::send_with_fds(helper.as_raw_fd(), job, &all).is_ok()
        });
        if handed {
            drop((fds, ready_spare));
            maker = start_spare(drop_to);
            continue;
        }
        if let Ok(Fork::Child) = sys::fork() {
            drop(control);
            sys::exit_now(warm_helper(
                zygote,
                &request,
                fds,
                ready_spare,
                seccomp.as_deref(),
            ));
        }
        // In the zygote (or the fork failed): the request's descriptors and the spare handed to
        // the helper close here; the next start gets a new one.
        drop(ready_spare);
        maker = start_spare(drop_to);
    }
}

/// A helper forked before its job: waits for exactly one job from the zygote (the request, its
/// six descriptors and possibly the spare namespaces), then runs it as [`warm_helper`]. Exits
/// without doing anything if the zygote goes away first.
fn idle_helper(
    zygote: libc::pid_t,
    socket: &OwnedFd,
    seccomp: Option<&[libc::sock_filter]>,
) -> i32 {
    let mut buf = vec![0u8; 64 * 1024];
    let (n, mut fds) = match sys::recv_with_fds(socket.as_raw_fd(), &mut buf) {
        Ok((n, fds)) if n > 0 => (n, fds),
        _ => return 0,
    };
    let spare = match fds.len() {
        REQUEST_FDS => None,
        n if n == REQUEST_FDS + 2 => {
            let net = fds.pop();
            let user = fds.pop();
            user.zip(net).map(|(user, net)| Spare { user, net })
        }
        _ => return 125,
    };
    let Ok(fds) = <[OwnedFd; REQUEST_FDS]>::try_from(fds) else {
        return 125;
    };
    let Some(Ok(request)) = buf.get(..n).map(serde_json::from_slice::<StartRequest>) else {
        return 125;
    };
    warm_helper(zygote, &request, fds, spare, seccomp)
}

/// Forks a maker for the next start's spare namespaces; returns the socket it answers on.
/// (The maker also inherits the control socket; it never reads it and exits at once. It holds
/// no spare and no waiting helper's socket: both are always taken before a maker is forked.)
fn start_spare(drop_to: Option<(u32, u32)>) -> Option<OwnedFd> {
    let (ours, theirs) = sys::seqpacket_pair().ok()?;
    match sys::fork().ok()? {
        Fork::Child => {
            drop(ours);
            sys::exit_now(make_spare(&theirs, drop_to));
        }
        Fork::Parent(_) => Some(ours),
    }
}

/// The maker: becomes the sandbox user when root (as the helper will), creates a user namespace
/// with the identity mapping of that one uid and gid and a network namespace owned by it, and
/// sends both to the zygote. The exact steps a helper without a spare takes.
fn make_spare(socket: &OwnedFd, drop_to: Option<(u32, u32)>) -> i32 {
    let made = (|| -> std::io::Result<[OwnedFd; 2]> {
        if let Some((uid, gid)) = drop_to.filter(|_| sys::euid_egid().0 == 0) {
            sys::drop_to(uid, gid)?;
            // The drop cleared it; the maps below are written through this process's /proc.
            sys::set_dumpable(true)?;
        }
        let (uid, gid) = sys::euid_egid();
        sys::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET)?;
        write_identity_maps(uid, gid)?;
        sys::set_dumpable(false)?;
        let user = OwnedFd::from(File::open("/proc/self/ns/user")?);
        let net = OwnedFd::from(File::open("/proc/self/ns/net")?);
        Ok([user, net])
    })();
    match made {
        Ok([user, net]) => {
            let fds = [user.as_raw_fd(), net.as_raw_fd()];
            match sys::send_with_fds(socket.as_raw_fd(), b"ns", &fds) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
        Err(_) => 1,
    }
}

/// Receives a maker's spare, waiting at most `wait_ms`.
fn collect_spare(maker: &OwnedFd, wait_ms: u64) -> Option<Spare> {
    let ready = sys::poll_readable(&[maker.as_raw_fd()], Some(wait_ms)).ok()?;
    if !ready.first().copied().unwrap_or(false) {
        return None;
    }
    let mut buf = [0u8; 8];
    match sys::recv_with_fds(maker.as_raw_fd(), &mut buf) {
        Ok((2, fds)) => {
            let [user, net] = <[OwnedFd; 2]>::try_from(fds).ok()?;
            Some(Spare { user, net })
        }
        _ => None,
    }
}

/// Maps only `uid` and `gid` (as themselves) in the calling process's new user namespace.
fn write_identity_maps(uid: u32, gid: u32) -> std::io::Result<()> {
    fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
    fs::write("/proc/self/setgroups", "deny\n")?;
    fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))
}

/// A freshly forked helper: joins the sandbox's cgroups before anything else, takes its stdio,
/// tells the caller its pidfd, runs the helper and reports the status.
fn warm_helper(
    zygote: libc::pid_t,
    request: &StartRequest,
    fds: [OwnedFd; REQUEST_FDS],
    spare: Option<Spare>,
    seccomp: Option<&[libc::sock_filter]>,
) -> i32 {
    let [stdin, stdout, stderr, config, report, reply] = fds;
    let report = Some(File::from(report));
    let fail = |message: String| {
        send_report(&report, &message);
        125
    };
    for cgroup in &request.cgroups {
        if let Err(e) = sys::join_cgroup(cgroup) {
            return fail(format!("join cgroup `{}`: {e}", cgroup.display()));
        }
    }
    if let Err(e) = sys::ignore_children(false) {
        return fail(format!("default SIGCHLD: {e}"));
    }
    // Dies with the zygote; if the zygote is already gone, stop here.
    if let Err(e) = sys::set_parent_death_signal(libc::SIGKILL) {
        return fail(format!("parent death signal: {e}"));
    }
    if sys::parent_pid() != zygote {
        return fail("the zygote exited".to_owned());
    }
    for (fd, to) in [(&stdin, 0), (&stdout, 1), (&stderr, 2)] {
        if let Err(e) = sys::dup_onto(fd, to) {
            return fail(format!("stdio: {e}"));
        }
    }
    drop((stdin, stdout, stderr));
    let me = sys::own_pid();
    let sent = sys::pidfd_open(me).and_then(|pidfd| {
        sys::send_with_fds(reply.as_raw_fd(), &me.to_le_bytes(), &[pidfd.as_raw_fd()])
    });
    if let Err(e) = sent {
        return fail(format!("send pidfd: {e}"));
    }
    let mut reply = Some(reply);
    let code = run_helper(config, report, &mut reply, spare, seccomp);
    if let Some(reply) = reply {
        let _ = sys::send_with_fds(reply.as_raw_fd(), &code.to_le_bytes(), &[]);
    }
    code
}

/// Reads the configuration and runs the helper; returns its exit status.
fn run_helper(
    config: OwnedFd,
    mut report: Option<File>,
    reply: &mut Option<OwnedFd>,
    spare: Option<Spare>,
    seccomp: Option<&[libc::sock_filter]>,
) -> i32 {
    let mut text = String::new();
    let config = File::from(config)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<HelperConfig>(&text).map_err(|e| e.to_string()));
    match config.and_then(|c| helper(&c, &mut report, reply, spare, seccomp)) {
        Ok(code) => code,
        Err(message) => {
            send_report(&report, &message);
            125
        }
    }
}

fn send_report(report: &Option<File>, message: &str) {
    if let Some(mut file) = report.as_ref() {
        let _ = file.write_all(message.as_bytes());
    }
}

fn ctx<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn helper(
    config: &HelperConfig,
    report: &mut Option<File>,
    reply: &mut Option<OwnedFd>,
    spare: Option<Spare>,
    seccomp: Option<&[libc::sock_filter]>,
) -> Result<i32, String> {
    let zygote = sys::parent_pid();
    ctx("setsid", sys::setsid())?;
    ctx("rlimit core", sys::set_rlimit(libc::RLIMIT_CORE as i32, 0))?;
    ctx(
        "rlimit nofile",
        sys::set_rlimit(libc::RLIMIT_NOFILE as i32, config.open_files),
    )?;
    ctx(
        "rlimit fsize",
        sys::set_rlimit(libc::RLIMIT_FSIZE as i32, config.file_size_bytes),
    )?;
    ctx(
        "rlimit cpu",
        sys::set_rlimit(libc::RLIMIT_CPU as i32, config.cpu_seconds),
    )?;
    if let Some(bytes) = config.address_space_bytes {
        ctx("rlimit as", sys::set_rlimit(libc::RLIMIT_AS as i32, bytes))?;
    }
    // As root, prepare the mounts now (the only moment we may clone any host path and id-map
    // the granted ones), then drop to the sandbox user for good.
    // The drop applies only when the helper really runs as root (a caller may start it through
    // a wrapper that already dropped privileges).
    let root = sys::euid_egid().0 == 0;
    let plan = match config.drop_to.filter(|_| root) {
        Some((uid, gid)) => {
            let plan = plan_root(config, Some((uid, gid)))?;
            ctx("drop to the sandbox user", sys::drop_to(uid, gid))?;
            ctx("dumpable", sys::set_dumpable(true))?;
            Some(plan)
        }
        None => None,
    };
    match spare {
        // Made for this start only, by the same steps as below. Entering the user namespace
        // needs this process's uid to own it, so a spare made for another user fails here.
        Some(spare) => {
            ctx(
                "enter the new user namespace",
                sys::setns(&spare.user, libc::CLONE_NEWUSER),
            )?;
            ctx(
                "enter the new network namespace",
                sys::setns(&spare.net, libc::CLONE_NEWNET),
            )?;
            drop(spare);
            ctx("unshare namespaces", sys::unshare(NAMESPACES_BESIDE_SPARE))?;
        }
        None => {
            let (uid, gid) = sys::euid_egid();
            let flags = NAMESPACES_BESIDE_SPARE | libc::CLONE_NEWUSER | libc::CLONE_NEWNET;
            ctx("unshare namespaces", sys::unshare(flags))?;
            ctx("uid and gid maps", write_identity_maps(uid, gid))?;
        }
    }
    // Changing credentials (the uid drop, the new user namespace) cleared the parent-death
    // signal: set it again, and stop if the zygote died meanwhile.
    ctx(
        "parent death signal",
        sys::set_parent_death_signal(libc::SIGKILL),
    )?;
    if sys::parent_pid() != zygote {
        return Err("the zygote exited".to_owned());
    }
    ctx("not dumpable", sys::set_dumpable(false))?;
    ctx("hostname", sys::sethostname("warden-sandbox"))?;
    if config.proxy_socket.is_some() {
        ctx("loopback up", sys::loopback_up())?;
    }
    match ctx("fork pid 1", sys::fork())? {
        Fork::Child => {
            // PID 1 has no business with the caller's reply socket.
            drop(reply.take());
            let message = pid1(config, plan, report, seccomp);
            send_report(report, &message);
            sys::exit_now(125);
        }
        Fork::Parent(child) => {
            drop(report.take());
            let (_, status) = ctx("wait for pid 1", sys::waitpid(child, 0))?;
            Ok(sys::status_code(status))
        }
    }
}

/// Clones every path the new root needs into detached mount trees.
fn plan_root(config: &HelperConfig, idmap_to: Option<(u32, u32)>) -> Result<RootPlan, String> {
    let mut plan = RootPlan {
        binds: Vec::new(),
        links: Vec::new(),
    };
    let ro = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    let rw = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    let system = |plan: &mut RootPlan, path: &str, attrs: u64| -> Result<(), String> {
        let p = Path::new(path);
        match fs::symlink_metadata(p) {
            Err(_) => Ok(()),
            Ok(m) if m.file_type().is_symlink() => {
                let target = ctx(path, fs::read_link(p))?;
                plan.links.push((p.to_owned(), target));
                Ok(())
            }
            Ok(m) => {
                let tree = ctx(&format!("clone `{path}`"), sys::clone_tree(p))?;
                ctx(
                    &format!("attributes of `{path}`"),
                    sys::set_tree_attrs(&tree, attrs, None),
                )?;
                plan.binds.push(Bind {
                    tree,
                    target: p.to_owned(),
                    is_dir: m.is_dir(),
                });
                Ok(())
            }
        }
    };
    for path in [
        "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
    ] {
        system(&mut plan, path, ro)?;
    }
    for path in [
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/nsswitch.conf",
        "/etc/localtime",
        "/etc/alternatives",
        "/etc/ssl/certs",
        "/etc/ca-certificates",
        "/etc/protocols",
        "/etc/services",
        "/etc/mime.types",
    ] {
        system(&mut plan, path, ro)?;
    }
    for dev in ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"] {
        system(&mut plan, dev, sys::MOUNT_ATTR_NOSUID)?;
    }
    let mut maps: Vec<((u32, u32), OwnedFd)> = Vec::new();
    let grants = config
        .read_only
        .iter()
        .map(|p| (p, ro))
        .chain(config.read_write.iter().map(|p| (p, rw)));
    for (path, attrs) in grants {
        let meta = ctx(
            &format!("granted path `{}`", path.display()),
            fs::metadata(path),
        )?;
        let tree = ctx(
            &format!("clone `{}`", path.display()),
            sys::clone_tree(path),
        )?;
        let userns = match idmap_to {
            Some((uid, gid)) => {
                let owner = (meta.uid(), meta.gid());
                if !maps.iter().any(|(k, _)| *k == owner) {
                    let fd = ctx(
                        "id-mapping namespace",
                        sys::mapping_userns(owner.0, owner.1, uid, gid),
                    )?;
                    maps.push((owner, fd));
                }
                maps.iter().find(|(k, _)| *k == owner).map(|(_, fd)| fd)
            }
            None => None,
        };
        sys::set_tree_attrs(&tree, attrs, userns).map_err(|e| {
            format!(
                "cannot id-map granted path `{}` (filesystem without id-mapped mounts?): {e}",
                path.display()
            )
        })?;
        plan.binds.push(Bind {
            tree,
            target: path.clone(),
            is_dir: meta.is_dir(),
        });
    }
    if let Some(socket) = &config.proxy_socket {
        let tree = ctx("clone the egress socket", sys::clone_tree(socket))?;
        ctx(
            "egress socket attributes",
            sys::set_tree_attrs(&tree, rw, None),
        )?;
        plan.binds.push(Bind {
            tree,
            target: PathBuf::from(PROXY_SOCKET_INSIDE),
            is_dir: false,
        });
    }
    plan.binds.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(plan)
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// PID 1: builds the root, starts the command and the relay, reaps, exits with the command's
/// status. Returns only on a setup error, with its message.
fn pid1(
    config: &HelperConfig,
    plan: Option<RootPlan>,
    report: &mut Option<File>,
    seccomp: Option<&[libc::sock_filter]>,
) -> String {
    // `report` stays open here only until the command is forked: its end-of-file tells the
    // caller that setup finished and `exec` succeeded.
    if let Err(e) = sys::set_parent_death_signal(libc::SIGKILL) {
        return format!("parent death signal: {e}");
    }
    if let Err(e) = build_root(config, plan) {
        return e;
    }
    let relay = if config.proxy_socket.is_some() {
        match TcpListener::bind(("127.0.0.1", config.proxy_port)) {
            Ok(l) => Some(l),
            Err(e) => return format!("egress relay: {e}"),
        }
    } else {
        None
    };
    let command = match sys::fork() {
        Ok(Fork::Child) => {
            drop(relay);
            let message = exec_command(config, seccomp);
            send_report(report, &message);
            sys::exit_now(126);
        }
        Ok(Fork::Parent(pid)) => pid,
        Err(e) => return format!("fork command: {e}"),
    };
    drop(report.take());
    if let Some(listener) = relay {
        // Without the relay thread the command simply has no egress.
        let _ = std::thread::Builder::new().spawn(move || run_relay(&listener));
    }
    loop {
        match sys::waitpid(-1, 0) {
            Ok((pid, status)) if pid == command => std::process::exit(sys::status_code(status)),
            Ok(_) => {}
            Err(_) => std::process::exit(125),
        }
    }
}

fn run_relay(listener: &TcpListener) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        // Threads here count against the sandbox's pids limit; a refused spawn drops the
        // connection.
        let _ = std::thread::Builder::new().spawn(move || {
            let Ok(unix) = UnixStream::connect(PROXY_SOCKET_INSIDE) else {
                return;
            };
            let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
                return;
            };
            let up = std::thread::Builder::new().spawn(move || {
                let _ = std::io::copy(&mut tcp_r, &mut unix_w);
                let _ = unix_w.shutdown(std::net::Shutdown::Write);
            });
            let Ok(up) = up else { return };
            let (mut unix_r, mut tcp_w): (UnixStream, TcpStream) = (unix, tcp);
            let _ = std::io::copy(&mut unix_r, &mut tcp_w);
            let _ = tcp_w.shutdown(std::net::Shutdown::Write);
            let _ = up.join();
        });
    }
}

fn build_root(config: &HelperConfig, plan: Option<RootPlan>) -> Result<(), String> {
    let root = Path::new(NEW_ROOT);
    let rec_private = libc::MS_REC | libc::MS_PRIVATE;
    ctx(
        "make mounts private",
        sys::mount(None, Path::new("/"), None, rec_private, None),
    )?;
    let plan = match plan {
        Some(p) => p,
        None => plan_root(config, None)?,
    };
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    ctx(
        "root tmpfs",
        sys::mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            nosuid_nodev,
            Some("mode=0755,size=4m"),
        ),
    )?;
    for dir in ["etc", "proc", "dev", "tmp", "run/warden"] {
        ctx(dir, fs::create_dir_all(root.join(dir)))?;
    }
    let uid = sys::euid_egid().0;
    let etc = [
        (
            "etc/passwd",
            format!(
                "root:x:0:0::/root:/bin/sh\nsandbox:x:{uid}:{uid}::/tmp:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "etc/group",
            format!("root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n"),
        ),
        (
            "etc/hosts",
            "127.0.0.1 localhost\n::1 localhost\n".to_owned(),
        ),
        ("etc/hostname", "warden-sandbox\n".to_owned()),
    ];
    for (path, text) in etc {
        ctx(path, fs::write(root.join(path), text))?;
    }
    for (link, target) in &plan.links {
        ctx(
            &format!("symlink `{}`", link.display()),
            symlink(target, inside(root, link)),
        )?;
    }
    // The private /tmp first: grants below /tmp are mounted on top of it.
    let tmp_opts = format!("mode=1777,size={}", config.tmp_bytes);
    ctx(
        "private /tmp",
        sys::mount(
            Some("tmpfs"),
            &root.join("tmp"),
            Some("tmpfs"),
            nosuid_nodev,
            Some(&tmp_opts),
        ),
    )?;
    for bind in &plan.binds {
        let target = inside(root, &bind.target);
        if bind.is_dir {
            ctx(
                &format!("mount point `{}`", bind.target.display()),
                fs::create_dir_all(&target),
            )?;
        } else {
            if let Some(parent) = target.parent() {
                ctx("mount point parent", fs::create_dir_all(parent))?;
            }
            ctx(
                &format!("mount point `{}`", bind.target.display()),
                File::create(&target).map(drop),
            )?;
        }
        ctx(
            &format!("attach `{}`", bind.target.display()),
            sys::attach_tree(&bind.tree, &target),
        )?;
    }
    drop(plan);
    let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    ctx(
        "new /proc",
        sys::mount(
            Some("proc"),
            &root.join("proc"),
            Some("proc"),
            proc_flags,
            None,
        ),
    )?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(name, symlink(target, root.join("dev").join(name)))?;
    }
    ctx("chdir new root", std::env::set_current_dir(root))?;
    ctx("pivot_root", sys::pivot_root_here())?;
    ctx("detach old root", sys::umount_detach(Path::new(".")))?;
    ctx("chdir /", std::env::set_current_dir("/"))?;
    let ro_remount = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | nosuid_nodev;
    ctx(
        "read-only root",
        sys::mount(None, Path::new("/"), None, ro_remount, None),
    )?;
    Ok(())
}

/// The command's last steps. Returns only on failure, with the message.
fn exec_command(config: &HelperConfig, seccomp: Option<&[libc::sock_filter]>) -> String {
    match restrict(config, seccomp) {
        Ok(()) => {}
        Err(e) => return e,
    }
    let Some((program, args)) = config.argv.split_first() else {
        return "empty command".to_owned();
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(config.env.iter().map(|(k, v)| (k, v)));
    let err = cmd.exec();
    format!("cannot execute `{program}`: {err}")
}

fn restrict(config: &HelperConfig, seccomp: Option<&[libc::sock_filter]>) -> Result<(), String> {
    ctx("setsid", sys::setsid())?;
    ctx(
        &format!("working directory `{}`", config.cwd.display()),
        std::env::set_current_dir(&config.cwd),
    )?;
    ctx("default scheduler slice", sys::set_fair_slice(0))?;
    ctx("no_new_privs", sys::set_no_new_privs())?;
    landlock(config)?;
    ctx("drop capabilities", sys::drop_all_capabilities())?;
    ctx("close descriptors", sys::cloexec_from(3))?;
    let program = seccomp.ok_or_else(|| "no seccomp filter for this architecture".to_owned())?;
    ctx("seccomp", sys::install_seccomp(program))?;
    Ok(())
}

fn landlock(config: &HelperConfig) -> Result<(), String> {
    let abi = ABI::V6;
    let level = if config.allow_without_landlock {
        CompatLevel::BestEffort
    } else {
        CompatLevel::HardRequirement
    };
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let read = AccessFs::from_read(abi);
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let system = [
        "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc", "/proc",
    ];
    let existing = |paths: &[PathBuf]| {
        paths
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect::<Vec<_>>()
    };
    let system: Vec<PathBuf> = existing(&system.iter().map(PathBuf::from).collect::<Vec<_>>());
    let devices = existing(
        &["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"]
            .iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>(),
    );
    let mut writable = config.read_write.clone();
    writable.push(PathBuf::from("/tmp"));
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
        .map_err(err)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(&system, read))
        .map_err(err)?
        .add_rules(path_beneath_rules(&devices, device))
        .map_err(err)?
        .add_rules(path_beneath_rules(&config.read_only, read))
        .map_err(err)?
        .add_rules(path_beneath_rules(&writable, AccessFs::from_all(abi)))
        .map_err(err)?;
    if config.proxy_socket.is_some() {
        ruleset = ruleset
            .add_rule(NetPort::new(config.proxy_port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    let status = ruleset.restrict_self().map_err(err)?;
    if status.ruleset != RulesetStatus::FullyEnforced && !config.allow_without_landlock {
        return Err("landlock is not fully enforced by this kernel".to_owned());
    }
    Ok(())
}
