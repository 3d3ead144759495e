//! `warden tools list|accept SERVER/TOOL`: the pinned tool definitions. A running gateway
//! re-reads the pin file when it changes, so `accept` takes effect at the next listing.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command prints its result"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use warden_gateway::{GatewayConfig, PinStore};

/// `warden tools` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ToolsCommand {
    /// List pinned tools; a changed definition shows its new hash and text.
    List {
        /// The manifest.
        #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
    },
    /// Accept the changed definition of a tool (`SERVER/TOOL`).
    Accept {
        /// `SERVER/TOOL`.
        tool: String,
        /// The manifest.
        #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
    },
}

pub(crate) fn run(command: &ToolsCommand) -> ExitCode {
    match go(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn go(command: &ToolsCommand) -> anyhow::Result<()> {
    let (ToolsCommand::List { config } | ToolsCommand::Accept { config, .. }) = command;
    let cfg = GatewayConfig::load(config)?;
    let mut pins = PinStore::open(&cfg.resolve(&cfg.gateway.pins))?;
    match command {
        ToolsCommand::List { .. } => {
            for (tool, pin) in pins.pins() {
                match &pin.pending {
                    None => outln!("{tool}  {}", pin.hash),
                    Some(p) => outln!(
                        "{tool}  {}  CHANGED to {} (refused until accepted):\n{}",
                        pin.hash,
                        p.hash,
                        serde_json::to_string_pretty(&p.definition)?
                    ),
                }
            }
        }
        ToolsCommand::Accept { tool, .. } => {
            let hash = pins.accept(tool)?;
            outln!("{tool} now pinned at {hash}");
        }
    }
    Ok(())
}
