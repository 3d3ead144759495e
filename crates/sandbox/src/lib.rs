//! Warden's sandbox: tool processes run with a minimal filesystem, no network but an egress
//! proxy, and hard limits.
//!
//! [`Sandbox::spawn`] starts a command (for example a stdio MCP server) and [`Sandbox::run`] runs
//! one to completion. The caller re-executes its own binary once per [`Sandbox`] as a
//! single-threaded zygote (on the first start or at [`Sandbox::prewarm`]; its `main` must call
//! [`run_helper_if_requested`] first), which forks one helper per start. The helper joins memory and pids
//! cgroups before anything else, then reads its configuration, sets rlimits, drops to a dedicated uid when
//! root, enters a user namespace and a network namespace made for it alone ahead of time (see
//! `docs/sandbox.md`), unshares mount, pid, ipc, uts and cgroup namespaces, and pivots into a fresh read-only tmpfs root holding `/usr`, a few `/etc`
//! files, the granted paths, a new `/proc`, a private `/tmp` and four devices. The command then
//! gets no-new-privs, Landlock (filesystem, TCP, signal and abstract-socket scoping), no
//! capabilities, no inherited descriptors and a seccomp filter before `exec`.
//!
//! Guarantees: without a grant the command cannot read or write host files outside `/usr` and
//! the listed `/etc` files, cannot reach any network except allowlisted hosts through Warden's
//! [`egress`] proxy, and cannot outlive the sandbox. A missing kernel feature is an error unless
//! the operator sets a [`Weakening`]. Not guaranteed: protection against kernel bugs reachable
//! through the allowed syscalls, or covert channels (timing, CPU, shared caches).
#![deny(unsafe_code)]

mod cgroup;
pub mod egress;
mod helper;
mod launch;
mod profile;
mod seccomp;
mod sys;

pub use helper::run_helper_if_requested;
pub use launch::{
    DEFAULT_SANDBOX_ID, Ending, HelperBinary, Options, Outcome, PROXY_PORT_INSIDE, Sandbox,
    SandboxStdio, SandboxedChild, Weakening,
};
pub use profile::{Limits, Profile};

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A profile or flag is invalid.
    #[error("invalid sandbox profile: {0}")]
    Profile(String),
    /// The kernel lacks a feature the sandbox needs and no weakening allows going without.
    #[error("refusing to run: the kernel lacks {0}")]
    Unsupported(String),
    /// cgroups could not be set up.
    #[error("cgroup setup failed: {0}")]
    Cgroup(String),
    /// The egress proxy failed or a request was invalid.
    #[error("egress: {0}")]
    Egress(String),
    /// The sandbox could not be built or the command could not be executed.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
}
