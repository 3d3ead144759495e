//! `warden`: the command line of the Warden security kernel and gateway for AI agents' tool calls.
//!
//! Exit codes are part of the interface: 0 success (or allow), 1 deny or invalid, 2 usage error,
//! 3 needs approval; subcommands document any others. When standard output is closed early (for
//! example `warden log show DIR | head`), the command stops with status 141, what a shell reports
//! for a process ended by `SIGPIPE`, instead of panicking.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// mimalloc: the call path allocates and frees many small JSON values; glibc's allocator spent
/// ~8% of the gateway's CPU time per call on them (see docs/BENCHMARKS.md). Built without
/// transparent huge pages (`no_thp`): with them, memory mimalloc had returned to the OS came back
/// as 2 MiB pages the kernel zeroes on first touch, two thirds of the log publisher's CPU time,
/// competing with the call path on a small machine.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Writes one line to standard output like `println!`, but never panics: a closed pipe ends the
/// process with status 141 and any other write error with status 2 (and a message on stderr).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(::std::format_args!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// Like `print!`, with the behaviour of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(::std::format_args!($($arg)*))
    };
}

/// The writer behind [`outln!`] and [`out!`].
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        let _ = writeln!(std::io::stderr(), "error: writing to standard output: {e}");
        std::process::exit(2);
    }
}

mod cmd;
mod demo_server;

/// Warden: a zero-trust kernel and gateway for AI agents' tool calls.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // ---- kernel ----
    /// Write a working starter (manifest, Cedar policy, signing key) into a directory.
    Init(cmd::init::InitArgs),
    /// Validate the policy, or print the Cedar the manifest became.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Decide one tool call (exit 0 allow, 1 deny, 3 needs approval, 2 usage error).
    Check(cmd::check::CheckArgs),
    /// Work with call certificates.
    #[command(subcommand)]
    Cert(cmd::cert::CertCommand),
    /// Play a short multi-agent story through the gateway, against its own demo tool servers.
    Demo(cmd::demo::DemoArgs),
    /// The demo's MCP tool server (stdio), run by `warden demo` behind the gateway.
    #[command(hide = true)]
    DemoServer(demo_server::DemoServerArgs),
    // ---- log ----
    /// The transparency log: verify, prove, check proofs, show and export decisions.
    Log(cmd::log::LogArgs),
    // ---- sandbox ----
    /// Run a command in a sandbox (minimal root, no network but allowlisted hosts, limits).
    Run(cmd::run::RunArgs),
    // ---- identity ----
    /// SPIFFE identity: CA, registration entries, SVIDs, bundle, delegation, Workload API.
    Identity(cmd::identity::IdentityArgs),
    // ---- gateway ----
    /// Serve one agent over stdio: the MCP server an MCP client launches.
    Mcp(cmd::mcp::McpArgs),
    /// Serve agents over Streamable HTTP (JWT-SVID bearers), with the approval endpoint.
    Serve(cmd::serve::ServeArgs),
    /// Run a recorded MCP session through the policy and print every decision.
    Replay(cmd::replay::ReplayArgs),
    /// List and answer calls a running gateway holds for approval.
    #[command(subcommand)]
    Approvals(cmd::approvals::ApprovalsCommand),
    /// Tool definitions pinned by hash: list them, accept a changed one.
    #[command(subcommand)]
    Tools(cmd::tools::ToolsCommand),
}

fn main() -> ExitCode {
    // Must stay first: when re-executed as the sandbox helper, this never returns.
    warden_sandbox::run_helper_if_requested();
    let cli = Cli::parse();
    cmd::dispatch(cli.command)
}
