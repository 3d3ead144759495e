//! `warden policy validate|show`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command prints its result"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::kernel_config::Config;

/// `warden policy` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Compile the manifest and the Cedar files and validate them strictly against the schema
    /// generated from the tool specs (exit 0 valid, 1 invalid, 2 unreadable).
    Validate {
        /// The manifest.
        #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
    },
    /// Print the Cedar the manifest's allowlist became.
    Show {
        /// The manifest.
        #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
    },
}

pub(crate) fn run(command: &PolicyCommand) -> ExitCode {
    let (PolicyCommand::Validate { config } | PolicyCommand::Show { config }) = command;
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "error: cannot read the manifest `{}`: {e}",
                config.display()
            );
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::from_text(config, &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let kernel = match cfg.policy_files().map(|_| cfg.kernel(true)) {
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
        Ok(Ok(k)) => k,
    };
    match command {
        PolicyCommand::Validate { .. } => {
            let tools = kernel.tools().count();
            outln!(
                "valid: {} agents, {tools} tools, policy {}",
                cfg.manifest.agents().len(),
                kernel.policy_hash()
            );
            for w in kernel.warnings() {
                outln!("warning: {w}");
            }
        }
        PolicyCommand::Show { .. } => {
            outln!("// Cedar compiled from {}", config.display());
            out!("{}", kernel.manifest_cedar());
        }
    }
    ExitCode::SUCCESS
}
