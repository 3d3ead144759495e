//! The caller's side: checks the kernel, creates cgroups and the egress proxy, re-executes the
//! helper, enforces the timeout and the output cap, and cleans everything up.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::cgroup::Cgroup;
use crate::egress::{EgressPolicy, EgressProxy, EgressSink, Resolve, SystemResolver};
use crate::helper::{CONFIG_FD, HELPER_ARG, HelperConfig, REPORT_FD};
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

/// A sandbox configuration, ready to start commands.
#[derive(Debug)]
pub struct Sandbox {
    profile: Profile,
    options: Options,
    counter: AtomicU64,
}

/// A running sandboxed command.
pub struct SandboxedChild {
    /// The command's stdin, if piped.
    pub stdin: Option<ChildStdin>,
    /// The command's stdout, if piped.
    pub stdout: Option<ChildStdout>,
    /// The command's stderr, if piped.
    pub stderr: Option<ChildStderr>,
    helper: Option<Child>,
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
        }
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Starts `argv` in a new sandbox with the given stdio; returns once the command has been
    /// executed (or with the setup error). Limits other than the output cap apply; the caller
    /// enforces the timeout with [`SandboxedChild::wait_timeout`].
    pub fn spawn(&self, argv: &[String], stdio: [Stdio; 3]) -> Result<SandboxedChild, Error> {
        self.spawn_with_env(argv, &[], stdio)
    }

    /// [`spawn`](Self::spawn), with variables set to the given values in the command's
    /// environment (after the profile's pass-through, before the proxy variables, which they
    /// cannot override). The gateway passes a server's `env` table this way.
    pub fn spawn_with_env(
        &self,
        argv: &[String],
        extra_env: &[(String, String)],
        stdio: [Stdio; 3],
    ) -> Result<SandboxedChild, Error> {
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

        let cgroup = match Cgroup::create(&name, limits.memory_bytes, limits.pids) {
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

        let program = match &self.options.helper {
            HelperBinary::CurrentExe => PathBuf::from("/proc/self/exe"),
            HelperBinary::Path(p) => std::path::absolute(p)
                .map_err(|e| Error::Setup(format!("helper path `{}`: {e}", p.display())))?,
        };
        let (config_r, config_w) = sys::pipe().map_err(|e| Error::Setup(format!("pipe: {e}")))?;
        let (report_r, report_w) = sys::pipe().map_err(|e| Error::Setup(format!("pipe: {e}")))?;
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
        let [stdin, stdout, stderr] = stdio;
        let mut cmd = Command::new(&program);
        cmd.arg(HELPER_ARG)
            .env_clear()
            .current_dir("/")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        // The helper moves itself into its cgroups between fork and exec: it never runs, and
        // nothing it starts runs, outside them.
        let procs = child
            .cgroup
            .as_ref()
            .map(Cgroup::join_files)
            .unwrap_or_default();
        let fds = vec![(config_r, CONFIG_FD), (report_w, REPORT_FD)];
        let mut helper = sys::spawn_with_fds(&mut cmd, fds, &procs).map_err(|e| {
            Error::Setup(format!("cannot start helper `{}`: {e}", program.display()))
        })?;
        child.pid = i32::try_from(helper.id()).unwrap_or(0);
        child.stdin = helper.stdin.take();
        child.stdout = helper.stdout.take();
        child.stderr = helper.stderr.take();
        child.helper = Some(helper);
        if let Some(mut w) = config_w.take() {
            send(&mut w)?;
        }
        let mut report = String::new();
        let _ = std::fs::File::from(report_r).read_to_string(&mut report);
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
        stdin: Stdio,
        stdout: Box<dyn Write + Send>,
        stderr: Box<dyn Write + Send>,
    ) -> Result<Outcome, Error> {
        let mut child = self.spawn(argv, [stdin, Stdio::piped(), Stdio::piped()])?;
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
        let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let features = KernelFeatures {
            user_namespaces: userns > 0,
            landlock_abi: sys::landlock_abi(),
            seccomp_filter: crate::seccomp::program().is_some(),
        };
        weakened.extend(features.verdict(self.options.weakening)?);
        Ok(())
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
        sys::pidfd_open(self.pid).map_err(|e| {
            // Fail closed: without it there is no timeout, so end the sandbox now.
            self.kill();
            Error::Setup(format!("pidfd_open: {e}"))
        })
    }

    /// Waits for the helper and records its status.
    fn reap(&mut self) -> Result<(), Error> {
        let Some(mut helper) = self.helper.take() else {
            return Ok(());
        };
        let status = helper
            .wait()
            .map_err(|e| Error::Setup(format!("wait: {e}")))?;
        // Reaped: the pid may be reused from now on.
        self.pid = 0;
        self.exit_code = status.code().or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            status.signal().map(|s| 128 + s)
        });
        Ok(())
    }

    /// Kills every process of the sandbox.
    pub fn kill(&mut self) {
        if self.pid > 0 {
            let _ = sys::kill(self.pid, libc::SIGKILL);
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
        if let Some(mut helper) = self.helper.take() {
            let _ = helper.kill();
            let _ = helper.wait();
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
