//! `warden`: the command line of the Warden security kernel and gateway for AI agents' tool calls.
//!
//! Exit codes are part of the interface: 0 success (or allow), 1 deny or invalid, 2 usage error,
//! 3 needs approval; subcommands document any others.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

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

    // ---- log ----

    // ---- sandbox ----

    // ---- identity ----
    /// SPIFFE identity: CA, registration entries, SVIDs, bundle, delegation, Workload API.
    Identity(cmd::identity::IdentityArgs),
    // ---- gateway ----
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::dispatch(cli.command)
}
