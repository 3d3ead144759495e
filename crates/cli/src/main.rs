//! `warden`: the command line of the Warden security kernel and gateway for AI agents' tool calls.
//!
//! Exit codes are part of the interface: 0 success (or allow), 1 deny or invalid, 2 usage error,
//! 3 needs approval; subcommands document any others.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
