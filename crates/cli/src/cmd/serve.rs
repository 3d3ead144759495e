//! `warden serve`: the gateway's Streamable HTTP face.
#![allow(
    clippy::print_stderr,
    reason = "a command reports its status and errors"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use warden_gateway::HttpFace;

use super::mcp::{spawn_admin, start};

/// `warden serve` arguments.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The manifest.
    #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
    pub(crate) config: PathBuf,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub(crate) listen: SocketAddr,
}

pub(crate) fn run(args: &ServeArgs) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let running = start(&args.config)?;
        let settings = &running.gateway.config().gateway;
        if settings.jwks.is_none() && !args.listen.ip().is_loopback() {
            bail!("without `[gateway] jwks` every caller is `http_agent`: listen on a loopback address only");
        }
        spawn_admin(&running.gateway);
        let face = HttpFace::new(running.gateway.clone())?;
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!("warden: MCP gateway on http://{}/mcp", listener.local_addr()?);
        tokio::select! {
            r = face.serve(listener) => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
