//! The caller's side: checks the kernel, creates cgroups and the egress proxy, asks the zygote
//! (started once per `Sandbox`) for a helper, enforces the timeout and the output cap, and
//! cleans everything up.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::cgroup::{Cgroup, CgroupLayout};
use crate::egress::{EgressPolicy, EgressProxy, EgressSink, Resolve, SystemResolver};
use crate::helper::{CONTROL_FD, HelperConfig, StartRequest, ZYGOTE_ARG};
use crate::profile::{Profile, check_env_name};
use crate::sys;

/// The port the egress relay listens on, on `127.0.0.1` inside the sandbox's network namespace.
pub const PROXY_PORT_INSIDE: u16 = 3128;
/// How long output may stay open after the sandbox's helper exited (every process of the
/// sandbox is dead by then, so this only guards against a descriptor leaked outside it).
const EXIT_DRAIN: Duration = Duration::from_millis(500);
/// Configurations up to this size are written before the helper starts (a pipe holds 64 KiB).
const PIPE_SAFE_BYTES: usize = 32 * 1024;
/// Default uid and gid a root caller drops the sandbox to.
pub const DEFAULT_SANDBOX_ID: u32 = 64_023;

/// Which binary to re-execute as the helper.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HelperBinary {
    /// The running executable (`/proc/self/exe`); its `main` must call
    /// [`run_helper_if_requested`](crate::run_helper_if_requested) first.
    #[default]
    CurrentExe,
    /// Another binary that does the same (tests and benchmarks use the crate's own).
    Path(PathBuf),
}

/// Protections an operator may explicitly give up on a kernel that lacks them. Off by default:
/// without them the sandbox refuses to start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weakening {
    /// Run even if Landlock (ABI 6: filesystem, TCP and scoping) is not fully available.
    pub allow_without_landlock: bool,
    /// Run without memory and pids cgroups (an address-space rlimit stands in for memory).
    pub allow_without_cgroups: bool,
}

/// How sandboxes are started; shared by every run.
#[derive(Clone)]
pub struct Options {
    /// The helper binary.
    pub helper: HelperBinary,
    /// Uid and gid the sandbox runs as when the caller is root. The id must not own any file the
    /// sandbox should not write; granted paths are id-mapped onto it.
    pub sandbox_id: (u32, u32),
    /// Name resolution for the egress proxy.
    pub resolver: Arc<dyn Resolve>,
    /// Receives every egress decision.
    pub on_egress: EgressSink,
    /// Protections given up explicitly.
    pub weakening: Weakening,
    /// Lets allowlisted names resolve to loopback: for tests that point the allowlist at a
    /// local listener only.
    pub danger_allow_loopback_for_tests: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            helper: HelperBinary::CurrentExe,
            sandbox_id: (DEFAULT_SANDBOX_ID, DEFAULT_SANDBOX_ID),
            resolver: Arc::new(SystemResolver),
            on_egress: Arc::new(|_| {}),
            weakening: Weakening::default(),
            danger_allow_loopback_for_tests: false,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("helper", &self.helper)
            .field("sandbox_id", &self.sandbox_id)
            .field("weakening", &self.weakening)
            .field(
                "danger_allow_loopback_for_tests",
                &self.danger_allow_loopback_for_tests,
            )
            .finish_non_exhaustive()
    }
}

/// How a sandboxed command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The command exited; `code` follows the shell convention (128 + signal if killed).
    Exited {
        /// The status.
        code: i32,
    },
    /// The wall-clock limit expired and the sandbox was killed.
    TimedOut,
    /// The memory limit was hit and the kernel killed a process of the sandbox.
    OutOfMemory,
}

/// The result of [`Sandbox::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub ending: Ending,
    /// Whether stdout went past the output limit (the excess was read and dropped).
    pub stdout_truncated: bool,
    /// Whether stderr went past the output limit.
    pub stderr_truncated: bool,
    /// Whether a fork failed on the process limit.
    pub pids_limit_hit: bool,
    /// Protections that were given up for this run (see [`Weakening`]).
    pub weakened: Vec<String>,
}

/// Where a sandboxed command's standard stream comes from or goes to.
///
/// `Inherit`, `Null`, `Piped` and `Fd` are set up by the caller and handed to the zygote
/// directly. A [`std::process::Stdio`] (`Std`) is opaque, so a start with one costs a short-lived
/// fork of the caller that lets std set it up (see `sandbox.md`, "How a start works").
#[derive(Debug)]
pub enum SandboxStdio {
    /// The caller's own stream of the same number.
    Inherit,
    /// `/dev/null`.
    Null,
    /// A new pipe; the caller's end is in [`SandboxedChild`]'s `stdin`, `stdout` or `stderr`.
    Piped,
    /// This descriptor.
    Fd(OwnedFd),
    /// A `std::process::Stdio`, set up by std in a short-lived fork of the caller.
    Std(Stdio),
}

impl From<Stdio> for SandboxStdio {
    fn from(stdio: Stdio) -> Self {
        Self::Std(stdio)
    }
}

impl From<OwnedFd> for SandboxStdio {
    fn from(fd: OwnedFd) -> Self {
        Self::Fd(fd)
    }
}

impl From<SandboxStdio> for Stdio {
    fn from(stdio: SandboxStdio) -> Self {
        match stdio {
            SandboxStdio::Inherit => Stdio::inherit(),
            SandboxStdio::Null => Stdio::null(),
            SandboxStdio::Piped => Stdio::piped(),
            SandboxStdio::Fd(fd) => Stdio::from(fd),
            SandboxStdio::Std(stdio) => stdio,
        }
    }
}

/// The command's three streams as descriptors to send to the zygote, and the caller's ends of
/// the pipes among them.
struct DirectStdio {
    theirs: [OwnedFd; 3],
    ours: [Option<OwnedFd>; 3],
}

impl DirectStdio {
    /// Opens each stream, or `None` if one of them is an opaque `Stdio`.
    fn open(stdio: &mut [SandboxStdio; 3]) -> Option<Result<Self, Error>> {
        if stdio.iter().any(|s| matches!(s, SandboxStdio::Std(_))) {
            return None;
        }
        let open =
            |n: usize, s: &mut SandboxStdio| -> std::io::Result<(OwnedFd, Option<OwnedFd>)> {
                use std::os::fd::AsFd;
                Ok(match std::mem::replace(s, SandboxStdio::Null) {
                    SandboxStdio::Inherit => {
                        let fd = match n {
                            0 => std::io::stdin().as_fd().try_clone_to_owned(),
                            1 => std::io::stdout().as_fd().try_clone_to_owned(),
                            _ => std::io::stderr().as_fd().try_clone_to_owned(),
                        }?;
                        (fd, None)
                    }
                    SandboxStdio::Null => {
                        let null = std::fs::File::options()
                            .read(true)
                            .write(true)
                            .open("/dev/null")?;
                        (OwnedFd::from(null), None)
                    }
                    SandboxStdio::Piped => {
                        let (r, w) = sys::pipe()?;
                        if n == 0 { (r, Some(w)) } else { (w, Some(r)) }
                    }
                    SandboxStdio::Fd(fd) => (fd, None),
                    // INVARIANT: excluded above.
                    SandboxStdio::Std(_) => return Err(std::io::Error::other("opaque stdio")),
                })
            };
        let [a, b, c] = stdio;
        let result = (|| {
            let (t0, o0) = open(0, a)?;
            let (t1, o1) = open(1, b)?;
            let (t2, o2) = open(2, c)?;
            Ok(Self {
                theirs: [t0, t1, t2],
                ours: [o0, o1, o2],
            })
        })();
        Some(result.map_err(|e: std::io::Error| Error::Setup(format!("stdio: {e}"))))
    }
}

/// A sandbox configuration, ready to start commands.
#[derive(Debug)]
pub struct Sandbox {
    profile: Profile,
    options: Options,
    counter: AtomicU64,
    zygote: Mutex<Option<Arc<Zygote>>>,
    /// What the kernel offers, probed at the first start.
    kernel: OnceLock<KernelFeatures>,
    /// Where cgroups go, found at the first start.
    cgroup_layout: OnceLock<CgroupLayout>,
    /// The next start's cgroups, made (empty, with this profile's limits) while the previous
    /// start's helper was setting up; taken by exactly one start.
    spare_cgroup: Mutex<Option<Cgroup>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(cg) = self.spare_cgroup.get_mut().ok().and_then(Option::take) {
            cg.remove();
        }
    }
}

/// The running zygote (see `helper.rs`): forks one helper per start. Kept alive by its
/// `Sandbox` and by every child it started; killed when the last of them goes.
#[derive(Debug)]
struct Zygote {
    control: OwnedFd,
    /// The uid the zygote and its helpers run as.
    uid: u32,
    process: Mutex<Child>,
}

impl Zygote {
    /// Starts the zygote; `drop_to` is the sandbox user when the caller is root (the zygote
    /// makes each start's user namespace ahead of time, owned by that user).
    fn start(program: &std::path::Path, drop_to: Option<(u32, u32)>) -> Result<Self, Error> {
        let (ours, theirs) =
            sys::seqpacket_pair().map_err(|e| Error::Setup(format!("socketpair: {e}")))?;
        let mut cmd = Command::new(program);
        cmd.arg(ZYGOTE_ARG);
        if let Some((uid, gid)) = drop_to {
            cmd.arg(format!("{uid}:{gid}"));
        }
        cmd.env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process =
            sys::spawn_with_fds(&mut cmd, vec![(theirs, CONTROL_FD)], &[]).map_err(|e| {
                Error::Setup(format!("cannot start helper `{}`: {e}", program.display()))
            })?;
        let mut zygote = Self {
            control: ours,
            uid: 0,
            process: Mutex::new(process),
        };
        let mut buf = [0u8; 16];
        match sys::recv_with_fds(zygote.control.as_raw_fd(), &mut buf) {
            Ok((4, _)) => {
                zygote.uid = buf
                    .first_chunk::<4>()
                    .copied()
                    .map_or(0, u32::from_le_bytes);
                Ok(zygote)
            }
            _ => Err(Error::Setup(format!(
                "helper `{}` did not start as the sandbox zygote",
                program.display()
            ))),
        }
    }

    fn alive(&self) -> bool {
        self.process
            .lock()
            .is_ok_and(|mut p| matches!(p.try_wait(), Ok(None)))
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        if let Ok(p) = self.process.get_mut() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// A running sandboxed command.
pub struct SandboxedChild {
    /// The command's stdin, if piped.
    pub stdin: Option<ChildStdin>,
    /// The command's stdout, if piped.
    pub stdout: Option<ChildStdout>,
    /// The command's stderr, if piped.
    pub stderr: Option<ChildStderr>,
    helper: Option<OwnedFd>,
    status: Option<OwnedFd>,
    _zygote: Option<Arc<Zygote>>,
    pid: i32,
    exit_code: Option<i32>,
    cgroup: Option<Cgroup>,
    proxy: Option<EgressProxy>,
    socket_dir: Option<PathBuf>,
    weakened: Vec<String>,
}

impl std::fmt::Debug for SandboxedChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxedChild")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// A sandbox for `profile`.
    pub fn new(profile: Profile, options: Options) -> Self {
        Self {
            profile,
            options,
            counter: AtomicU64::new(0),
            zygote: Mutex::new(None),
            kernel: OnceLock::new(),
            cgroup_layout: OnceLock::new(),
            spare_cgroup: Mutex::new(None),
        }
    }

    /// Starts the zygote now (otherwise the first start does). Later starts fork from it
    /// instead of executing a new helper; a zygote that died is started again by the next start.
    pub fn prewarm(&self) -> Result<(), Error> {
        self.zygote().map(drop)
    }

    /// The running zygote, started (again) if there is none or it died.
    fn zygote(&self) -> Result<Arc<Zygote>, Error> {
        let mut slot = self
            .zygote
            .lock()
            .map_err(|_| Error::Setup("zygote lock poisoned".to_owned()))?;
        if let Some(z) = slot.as_ref().filter(|z| z.alive()) {
            return Ok(Arc::clone(z));
        }
        let program = match &self.options.helper {
            HelperBinary::CurrentExe => PathBuf::from("/proc/self/exe"),
            HelperBinary::Path(p) => std::path::absolute(p)
                .map_err(|e| Error::Setup(format!("helper path `{}`: {e}", p.display())))?,
        };
        let drop_to = (sys::euid_egid().0 == 0).then_some(self.options.sandbox_id);
        let z = Arc::new(Zygote::start(&program, drop_to)?);
        *slot = Some(Arc::clone(&z));
        Ok(z)
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Starts `argv` in a new sandbox with the given stdio; returns once the command has been
    /// executed (or with the setup error). Limits other than the output cap apply; the caller
    /// enforces the timeout with [`SandboxedChild::wait_timeout`].
    pub fn spawn<S: Into<SandboxStdio>>(
        &self,
        argv: &[String],
        stdio: [S; 3],
    ) -> Result<SandboxedChild, Error> {
        self.spawn_with_env(argv, &[], stdio)
    }

    /// [`spawn`](Self::spawn), with variables set to the given values in the command's
    /// environment (after the profile's pass-through, before the proxy variables, which they
    /// cannot override). The gateway passes a server's `env` table this way.
    pub fn spawn_with_env<S: Into<SandboxStdio>>(
        &self,
        argv: &[String],
        extra_env: &[(String, String)],
        stdio: [S; 3],
    ) -> Result<SandboxedChild, Error> {
        let stdio = stdio.map(Into::into);
        if argv.is_empty() {
            return Err(Error::Setup("empty command".to_owned()));
        }
        let mut weakened = Vec::new();
        self.check_kernel(&mut weakened)?;
        let limits = &self.profile.limits;
        let (euid, _) = sys::euid_egid();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("warden-{}-{n}-{nanos}", std::process::id());

        let spare = self.spare_cgroup.lock().ok().and_then(|mut s| s.take());
        let cgroup = match spare.map_or_else(|| self.new_cgroup(), Ok) {
            Ok(cg) => Some(cg),
            Err(e) if self.options.weakening.allow_without_cgroups => {
                weakened.push(format!("no cgroups ({e})"));
                None
            }
            Err(e) => return Err(e),
        };
        let mut child = SandboxedChild {
            stdin: None,
            stdout: None,
            stderr: None,
            helper: None,
            status: None,
            _zygote: None,
            pid: 0,
            exit_code: None,
            cgroup,
            proxy: None,
            socket_dir: None,
            weakened,
        };

        let mut env: Vec<(String, String)> = vec![
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("HOME".to_owned(), "/tmp".to_owned()),
            ("TMPDIR".to_owned(), "/tmp".to_owned()),
        ];
        for name in &self.profile.env {
            if let Ok(value) = std::env::var(name) {
                env.retain(|(k, _)| k != name);
                env.push((name.clone(), value));
            }
        }
        for (name, value) in extra_env {
            check_env_name(name)?;
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), value.clone()));
        }
        let mut proxy_socket = None;
        if !self.profile.allow_hosts.is_empty() {
            let dir = std::env::temp_dir().join(&name);
            // Private from the start; an existing entry (planted by someone else) is an error.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::Setup(format!("egress directory: {e}")))?;
            child.socket_dir = Some(dir.clone());
            let socket = dir.join("egress.sock");
            let policy = EgressPolicy {
                rules: self.profile.allow_hosts.clone(),
                resolver: Arc::clone(&self.options.resolver),
                danger_allow_loopback_for_tests: self.options.danger_allow_loopback_for_tests,
            };
            child.proxy = Some(EgressProxy::start(
                &socket,
                policy,
                Arc::clone(&self.options.on_egress),
            )?);
            // Only root and the sandbox (through its bind mount) reach the socket: the directory
            // is private, and the socket itself must be writable by the dropped uid.
            let mode = |m| std::fs::Permissions::from_mode(m);
            std::fs::set_permissions(&socket, mode(0o666))
                .map_err(|e| Error::Setup(format!("egress socket permissions: {e}")))?;
            proxy_socket = Some(socket);
            let url = format!("http://127.0.0.1:{PROXY_PORT_INSIDE}");
            for key in [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "http_proxy",
                "https_proxy",
                "ALL_PROXY",
                "all_proxy",
            ] {
                env.retain(|(k, _)| k != key);
                env.push((key.to_owned(), url.clone()));
            }
        }
        let canonical = |paths: &[PathBuf]| -> Result<Vec<PathBuf>, Error> {
            paths
                .iter()
                .map(|p| {
                    p.canonicalize()
                        .map_err(|e| Error::Setup(format!("granted path `{}`: {e}", p.display())))
                })
                .collect()
        };
        let config = HelperConfig {
            argv: argv.to_vec(),
            env,
            cwd: self
                .profile
                .cwd
                .clone()
                .unwrap_or_else(|| PathBuf::from("/tmp")),
            read_only: canonical(&self.profile.read_only)?,
            read_write: canonical(&self.profile.read_write)?,
            drop_to: (euid == 0).then_some(self.options.sandbox_id),
            open_files: limits.open_files,
            file_size_bytes: limits.file_size_bytes,
            cpu_seconds: limits.timeout.as_secs().saturating_add(1),
            address_space_bytes: child.cgroup.is_none().then_some(limits.memory_bytes),
            tmp_bytes: limits.tmp_bytes,
            proxy_socket,
            proxy_port: PROXY_PORT_INSIDE,
            allow_without_landlock: self.options.weakening.allow_without_landlock,
        };
        let json = serde_json::to_vec(&config).map_err(|e| Error::Setup(format!("config: {e}")))?;

        let zygote = self.zygote()?;
        let (config_r, config_w) = sys::pipe().map_err(|e| Error::Setup(format!("pipe: {e}")))?;
        let (report_r, report_w) = sys::pipe().map_err(|e| Error::Setup(format!("pipe: {e}")))?;
        let (reply, reply_w) =
            sys::seqpacket_pair().map_err(|e| Error::Setup(format!("socketpair: {e}")))?;
        let mut config_w = Some(std::fs::File::from(config_w));
        let send = |w: &mut std::fs::File| {
            w.write_all(&json)
                .map_err(|e| Error::Setup(format!("cannot send the configuration: {e}")))
        };
        // A configuration that fits in the pipe goes in before the helper starts, so the helper
        // never waits for the caller to be scheduled again.
        let sent_early = json.len() <= PIPE_SAFE_BYTES;
        if sent_early && let Some(mut w) = config_w.take() {
            send(&mut w)?;
        }
        // The helper moves itself into its cgroups first thing after the zygote forked it: it
        // never runs, and nothing it starts runs, outside them.
        let request = StartRequest {
            cgroups: child
                .cgroup
                .as_ref()
                .map(Cgroup::join_files)
                .unwrap_or_default(),
        };
        // A helper running as another uid (started through a wrapper that dropped privileges)
        // may write only the files that move it into this sandbox's cgroups.
        if zygote.uid != euid {
            for file in &request.cgroups {
                std::os::unix::fs::chown(file, Some(zygote.uid), None).map_err(|e| {
                    Error::Setup(format!("cgroup `{}` for the helper: {e}", file.display()))
                })?;
            }
        }
        let request =
            serde_json::to_vec(&request).map_err(|e| Error::Setup(format!("request: {e}")))?;
        let extra = [
            config_r.as_raw_fd(),
            report_w.as_raw_fd(),
            reply_w.as_raw_fd(),
        ];
        let mut stdio = stdio;
        let mut passer = None;
        match DirectStdio::open(&mut stdio) {
            Some(direct) => {
                let direct = direct?;
                let [i, o, e] = &direct.theirs;
                let fds = [i, o, e].map(AsRawFd::as_raw_fd);
                let all: Vec<RawFd> = fds.iter().chain(&extra).copied().collect();
                sys::send_with_fds(zygote.control.as_raw_fd(), &request, &all)
                    .map_err(|e| Error::Setup(format!("cannot reach the sandbox zygote: {e}")))?;
                let [i, o, e] = direct.ours;
                child.stdin = i.map(ChildStdin::from);
                child.stdout = o.map(ChildStdout::from);
                child.stderr = e.map(ChildStderr::from);
            }
            None => {
                // A `Stdio` is opaque: a short-lived fork of the caller lets std set the stdio
                // up on 0, 1 and 2 and passes them, with the pipes, to the zygote, without
                // executing anything.
                let [stdin, stdout, stderr] = stdio.map(Stdio::from);
                let mut cmd = Command::new("/");
                cmd.stdin(stdin).stdout(stdout).stderr(stderr);
                let mut p = sys::pass_stdio(&mut cmd, zygote.control.as_raw_fd(), request, &extra)
                    .map_err(|e| Error::Setup(format!("cannot reach the sandbox zygote: {e}")))?;
                child.stdin = p.stdin.take();
                child.stdout = p.stdout.take();
                child.stderr = p.stderr.take();
                passer = Some(p);
            }
        }
        drop((config_r, report_w, reply_w));
        child._zygote = Some(zygote);
        if let Some(mut w) = config_w.take() {
            send(&mut w)?;
        }
        if child.cgroup.is_some() {
            self.refill_spare_cgroup();
        }
        // The report pipe reaches end of file once the command is executed or set-up failed
        // (or the zygote or helper is gone). Waiting on it first means one wake-up: the helper's
        // pidfd message is already queued on the reply socket by then.
        let mut report = String::new();
        let _ = std::fs::File::from(report_r).read_to_string(&mut report);
        let mut buf = [0u8; 16];
        let started = sys::recv_with_fds(reply.as_raw_fd(), &mut buf);
        if let Some(mut p) = passer {
            let _ = p.wait();
        }
        match started {
            Ok((4, fds)) if fds.len() == 1 => {
                child.pid = buf
                    .first_chunk::<4>()
                    .copied()
                    .map_or(0, i32::from_le_bytes);
                child.helper = fds.into_iter().next();
                child.status = Some(reply);
            }
            other => {
                // No helper: the zygote refused or died, or the helper failed before it could
                // answer. Fail closed with whatever it reported.
                if !report.is_empty() {
                    return Err(Error::Setup(report));
                }
                return Err(Error::Setup(match other {
                    Ok(_) => "the sandbox zygote did not start a helper".to_owned(),
                    Err(e) => format!("the sandbox zygote: {e}"),
                }));
            }
        }
        if !report.is_empty() {
            child.kill();
            return Err(Error::Setup(report));
        }
        Ok(child)
    }

    /// Runs `argv` to completion under every limit, copying at most `output_bytes` of its stdout
    /// and stderr to the given writers and draining the rest.
    pub fn run(
        &self,
        argv: &[String],
        stdin: impl Into<SandboxStdio>,
        stdout: Box<dyn Write + Send>,
        stderr: Box<dyn Write + Send>,
    ) -> Result<Outcome, Error> {
        let stdio = [stdin.into(), SandboxStdio::Piped, SandboxStdio::Piped];
        let mut child = self.spawn(argv, stdio)?;
        let cap = self.profile.limits.output_bytes;
        let mut out = CappedStream::new(child.stdout.take(), stdout, cap);
        let mut err = CappedStream::new(child.stderr.take(), stderr, cap);
        let pidfd = child.pidfd()?;
        let deadline = Instant::now().checked_add(self.profile.limits.timeout);
        let mut exited_at: Option<Instant> = None;
        let mut timed_out = false;
        let mut buf = vec![0u8; 64 * 1024];
        // One thread multiplexes output, exit and the deadline: no helper threads to schedule.
        loop {
            let mut fds = Vec::with_capacity(3);
            fds.extend(out.raw_fd());
            fds.extend(err.raw_fd());
            let streams = fds.len();
            if exited_at.is_none() {
                fds.push(pidfd.as_raw_fd());
            }
            if fds.is_empty() {
                break;
            }
            let now = Instant::now();
            let wait_until = match exited_at {
                // Output still open after the sandbox ended: give writers a moment, then stop.
                Some(at) => Some(at + EXIT_DRAIN),
                None if timed_out => None,
                None => deadline,
            };
            let ms = wait_until.map(|t| {
                let left = t.saturating_duration_since(now).as_millis();
                u64::try_from(left).unwrap_or(u64::MAX)
            });
            let ready =
                sys::poll_readable(&fds, ms).map_err(|e| Error::Setup(format!("poll: {e}")))?;
            if !ready.iter().any(|r| *r) {
                if exited_at.is_some() {
                    break;
                }
                timed_out = true;
                child.kill();
                continue;
            }
            let mut i = 0;
            for stream in [&mut out, &mut err] {
                if stream.raw_fd().is_some() {
                    if ready.get(i).copied().unwrap_or(false) {
                        stream.read_once(&mut buf);
                    }
                    i += 1;
                }
            }
            if exited_at.is_none() && ready.get(streams).copied().unwrap_or(false) {
                exited_at = Some(Instant::now());
            }
        }
        child.reap()?;
        let mut outcome = child.finish(timed_out);
        outcome.stdout_truncated = out.truncated;
        outcome.stderr_truncated = err.truncated;
        Ok(outcome)
    }

    fn check_kernel(&self, weakened: &mut Vec<String>) -> Result<(), Error> {
        let features = *self.kernel.get_or_init(KernelFeatures::probe);
        weakened.extend(features.verdict(self.options.weakening)?);
        Ok(())
    }

    /// New, empty cgroups with this profile's limits.
    fn new_cgroup(&self) -> Result<Cgroup, Error> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("warden-{}-{n}-{nanos}-cg", std::process::id());
        let limits = &self.profile.limits;
        let layout = self.cgroup_layout()?;
        Cgroup::create(layout, &name, limits.memory_bytes, limits.pids)
    }

    /// Makes the next start's cgroups if there are none yet (while this start's helper runs on
    /// another CPU). A failure is left for the next start to meet and report.
    fn refill_spare_cgroup(&self) {
        let Ok(mut slot) = self.spare_cgroup.lock() else {
            return;
        };
        if slot.is_none() {
            *slot = self.new_cgroup().ok();
        }
    }

    /// The cgroup layout, found at the first start and kept (a failure is not kept: the next
    /// start looks again).
    fn cgroup_layout(&self) -> Result<&CgroupLayout, Error> {
        if let Some(layout) = self.cgroup_layout.get() {
            return Ok(layout);
        }
        let layout = CgroupLayout::find()?;
        Ok(self.cgroup_layout.get_or_init(|| layout))
    }
}

/// What the running kernel offers the sandbox.
#[derive(Debug, Clone, Copy)]
struct KernelFeatures {
    user_namespaces: bool,
    landlock_abi: u32,
    seccomp_filter: bool,
}

impl KernelFeatures {
    fn probe() -> Self {
        let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Self {
            user_namespaces: userns > 0,
            landlock_abi: sys::landlock_abi(),
            seccomp_filter: crate::seccomp::program().is_some(),
        }
    }

    /// Refuses when a protection is missing and not explicitly given up; returns the list of
    /// protections given up otherwise. User namespaces and seccomp cannot be given up: without
    /// them there is no sandbox at all.
    fn verdict(self, weakening: Weakening) -> Result<Vec<String>, Error> {
        if !self.user_namespaces {
            return Err(Error::Unsupported(
                "user namespaces (user.max_user_namespaces = 0)".to_owned(),
            ));
        }
        if !self.seccomp_filter {
            return Err(Error::Unsupported(
                "a seccomp filter for this architecture".to_owned(),
            ));
        }
        let mut weakened = Vec::new();
        if self.landlock_abi < 6 {
            let abi = self.landlock_abi;
            let what = format!("landlock abi 6 (filesystem, tcp and scoping rules; found {abi})");
            if !weakening.allow_without_landlock {
                return Err(Error::Unsupported(what));
            }
            weakened.push(format!("without {what}"));
        }
        Ok(weakened)
    }
}

/// One output stream of [`Sandbox::run`]: the first `cap` bytes go to `sink`, the rest is read
/// and dropped so the command never blocks on a full pipe.
struct CappedStream {
    source: Option<std::fs::File>,
    sink: Box<dyn Write + Send>,
    cap: u64,
    kept: u64,
    truncated: bool,
}

impl CappedStream {
    fn new(source: Option<impl Into<OwnedFd>>, sink: Box<dyn Write + Send>, cap: u64) -> Self {
        let source = source.map(|s| std::fs::File::from(s.into()));
        Self {
            source,
            sink,
            cap,
            kept: 0,
            truncated: false,
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        self.source.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// One read (the descriptor is readable, so it does not block); closes at end of file.
    fn read_once(&mut self, buf: &mut [u8]) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        let n = match source.read(buf) {
            Ok(0) | Err(_) => {
                self.source = None;
                let _ = self.sink.flush();
                return;
            }
            Ok(n) => n,
        };
        let room = usize::try_from(self.cap.saturating_sub(self.kept)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if take < n {
            self.truncated = true;
        }
        if take > 0 {
            let _ = self.sink.write_all(buf.get(..take).unwrap_or_default());
            let _ = self.sink.flush();
            self.kept += take as u64;
        }
    }
}

impl SandboxedChild {
    /// The helper's pid (outside the sandbox's namespaces).
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits up to `timeout` for the command; on expiry kills the whole sandbox. Returns whether
    /// it timed out.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<bool, Error> {
        if self.helper.is_none() {
            return Ok(false);
        }
        let pidfd = self.pidfd()?;
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let ready = sys::poll_readable(&[pidfd.as_raw_fd()], Some(ms))
            .map_err(|e| Error::Setup(format!("poll: {e}")))?;
        let timed_out = !ready.first().copied().unwrap_or(false);
        if timed_out {
            self.kill();
        }
        self.reap()?;
        Ok(timed_out)
    }

    /// A descriptor that becomes readable when the helper exits.
    fn pidfd(&mut self) -> Result<OwnedFd, Error> {
        let pidfd = match &self.helper {
            Some(fd) => fd.try_clone(),
            None => Err(std::io::Error::from_raw_os_error(libc::ESRCH)),
        };
        pidfd.map_err(|e| {
            // Fail closed: without it there is no timeout, so end the sandbox now.
            self.kill();
            Error::Setup(format!("pidfd_open: {e}"))
        })
    }

    /// Waits for the helper and records its status.
    fn reap(&mut self) -> Result<(), Error> {
        let Some(helper) = self.helper.take() else {
            return Ok(());
        };
        sys::poll_readable(&[helper.as_raw_fd()], None)
            .map_err(|e| Error::Setup(format!("wait: {e}")))?;
        // Exited: its pid may be reused from now on.
        self.pid = 0;
        // The helper sends its status just before it exits; without one it was killed (by us:
        // the kill, the timeout, or its parent-death signal).
        let mut buf = [0u8; 16];
        let code = match self.status.take() {
            Some(status) => match sys::recv_with_fds(status.as_raw_fd(), &mut buf) {
                Ok((4, _)) => buf.first_chunk::<4>().copied().map(i32::from_le_bytes),
                _ => None,
            },
            None => None,
        };
        self.exit_code = Some(code.unwrap_or(128 + libc::SIGKILL));
        Ok(())
    }

    /// Kills every process of the sandbox.
    pub fn kill(&mut self) {
        if let Some(helper) = &self.helper {
            let _ = sys::pidfd_kill(helper, libc::SIGKILL);
        }
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }

    /// Waits without a time limit and cleans up.
    pub fn wait(mut self) -> Result<Outcome, Error> {
        self.wait_timeout(Duration::from_secs(u64::MAX / 4))?;
        Ok(self.finish(false))
    }

    fn finish(&mut self, timed_out: bool) -> Outcome {
        let oom = self.cgroup.as_ref().is_some_and(Cgroup::oom_killed);
        let pids_limit_hit = self.cgroup.as_ref().is_some_and(Cgroup::pids_limit_hit);
        self.cleanup();
        let ending = if timed_out {
            Ending::TimedOut
        } else if oom {
            Ending::OutOfMemory
        } else {
            Ending::Exited {
                code: self.exit_code.unwrap_or(128),
            }
        };
        Outcome {
            ending,
            stdout_truncated: false,
            stderr_truncated: false,
            pids_limit_hit,
            weakened: std::mem::take(&mut self.weakened),
        }
    }

    fn cleanup(&mut self) {
        if let Some(helper) = self.helper.take() {
            let _ = sys::pidfd_kill(&helper, libc::SIGKILL);
            let _ = sys::poll_readable(&[helper.as_raw_fd()], None);
        }
        if let Some(cg) = self.cgroup.take() {
            cg.remove();
        }
        self.proxy = None;
        if let Some(dir) = self.socket_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for SandboxedChild {
    fn drop(&mut self) {
        self.kill();
        self.cleanup();
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernel_features_refuse_unless_given_up() {
        let full = KernelFeatures {
            user_namespaces: true,
            landlock_abi: 7,
            seccomp_filter: true,
        };
        assert!(full.verdict(Weakening::default()).unwrap().is_empty());
        let old = KernelFeatures {
            landlock_abi: 3,
            ..full
        };
        assert!(matches!(
            old.verdict(Weakening::default()),
            Err(Error::Unsupported(_))
        ));
        let allow = Weakening {
            allow_without_landlock: true,
            ..Weakening::default()
        };
        assert_eq!(old.verdict(allow).unwrap().len(), 1);
        let no_userns = KernelFeatures {
            user_namespaces: false,
            ..full
        };
        let all = Weakening {
            allow_without_landlock: true,
            allow_without_cgroups: true,
        };
        assert!(no_userns.verdict(all).is_err());
    }
}
