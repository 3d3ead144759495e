//! `warden replay`: a recorded MCP session through the same code path, without transports; every
//! `tools/call` decision printed. The real log is not touched (decisions are not appended) and
//! pins are read, not written. Exit 0 when every call was allowed, 1 otherwise, 2 on errors.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command prints its result"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use warden_gateway::replay::{parse_recording, replay};
use warden_gateway::{GatewayConfig, KernelAuthority, RecordSink, SystemClock};

use super::kernel_config::{Config, system_rng};

/// `warden replay` arguments.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The manifest.
    #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
    pub(crate) config: PathBuf,
    /// The recording: JSON lines `{"from": "agent"|"server", "server": NAME, "message": {...}}`.
    pub(crate) session: PathBuf,
    /// The agent the recording was made for (manifest name or SPIFFE ID).
    #[arg(long)]
    pub(crate) agent: String,
    /// One JSON object a line instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Replay decides for real but records nowhere.
struct Discard;

impl RecordSink for Discard {
    fn append(&self, _entry: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

pub(crate) fn run(args: &ReplayArgs) -> ExitCode {
    match go(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn go(args: &ReplayArgs) -> anyhow::Result<bool> {
    let cfg = Config::read(&args.config)?;
    let agent = super::mcp::agent_id(&args.config, &args.agent)?;
    let kernel = cfg.kernel(true)?;
    let gw_cfg = GatewayConfig::from_manifest(&cfg.manifest, &cfg.dir)?;
    let text = std::fs::read_to_string(&args.session)
        .with_context(|| format!("cannot read `{}`", args.session.display()))?;
    let lines = parse_recording(&text)?;
    let authority = Arc::new(KernelAuthority::new(
        kernel,
        Arc::new(Discard),
        Arc::new(SystemClock),
        system_rng(),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let decisions = rt.block_on(replay(gw_cfg, authority, &agent, &lines))?;
    let mut all_allowed = true;
    for d in &decisions {
        all_allowed &= d.decision == "allow";
        if args.json {
            outln!("{}", serde_json::to_string(d)?);
        } else {
            let rules = if d.rules.is_empty() {
                String::new()
            } else {
                format!(" [{}]", d.rules.join(", "))
            };
            let reason = d
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            outln!(
                "{:<8} {:<14} {}{rules}{reason}",
                d.id.to_string(),
                d.decision,
                d.tool
            );
        }
    }
    Ok(all_allowed)
}
