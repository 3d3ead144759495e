//! `warden serve`: the gateway's Streamable HTTP face (plain, or mTLS with `[gateway.tls]`), and
//! with `--workload-socket` the SPIFFE Workload API from the same process.
#![allow(
    clippy::print_stderr,
    reason = "a command reports its status and errors"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use warden_gateway::{HttpFace, MtlsFace};
use warden_identity::workload::{EntryStore, WorkloadApi};

use super::identity::load_identity;
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
    // ---- identity ----
    /// Also serve the SPIFFE Workload API on this unix socket (CA and registration entries
    /// from `--identity-dir` and the manifest's `[identity]`).
    #[arg(long)]
    pub(crate) workload_socket: Option<PathBuf>,
    /// Serve no HTTP face: the Workload API alone.
    #[arg(long, requires = "workload_socket")]
    pub(crate) no_http: bool,
    /// The identity directory (CA, entries), as for `warden identity`.
    #[arg(long, env = "WARDEN_IDENTITY_DIR", default_value = ".warden/identity")]
    pub(crate) identity_dir: PathBuf,
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
        let identity = if args.workload_socket.is_some() || tls_configured(&args.config)? {
            Some(load_identity(&args.identity_dir, Some(&args.config))?)
        } else {
            None
        };
        let workload = match (&args.workload_socket, &identity) {
            (Some(socket), Some((ca, entries))) => {
                let api = WorkloadApi::new(ca.clone(), EntryStore::new(entries.clone()));
                let socket = socket.clone();
                eprintln!("warden: Workload API on unix:{}", socket.display());
                Some(tokio::spawn(async move {
                    api.serve(&socket, async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await
                }))
            }
            _ => None,
        };
        if args.no_http {
            if let Some(task) = workload {
                task.await??;
            }
            return Ok(());
        }
        let running = start(&args.config)?;
        // ---- identity ----
        super::identity::follow_delegation_bundle(
            running.gateway.config(),
            &args.identity_dir,
            &args.config,
            identity.as_ref().map(|(ca, _)| ca),
        )?;
        let settings = &running.gateway.config().gateway;
        if settings.jwks.is_none() && settings.tls.is_none() && !args.listen.ip().is_loopback() {
            bail!("without `[gateway] jwks` or `[gateway.tls]` every caller is `http_agent`: listen on a loopback address only");
        }
        spawn_admin(&running.gateway);
        let face = HttpFace::new(running.gateway.clone())?;
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        let http = async {
            match &identity {
                Some((ca, _)) if settings.tls.is_some() => {
                    let mtls = MtlsFace::new(running.gateway.config(), ca.clone())?;
                    eprintln!("warden: MCP gateway on https://{addr}/mcp (mTLS)");
                    mtls.serve(&face, listener).await
                }
                _ => {
                    eprintln!("warden: MCP gateway on http://{addr}/mcp");
                    face.serve(listener).await
                }
            }
        };
        let workload = async {
            match workload {
                Some(task) => task.await?.map_err(anyhow::Error::from),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = http => r?,
            r = workload => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

/// Whether the manifest has a `[gateway.tls]` table.
fn tls_configured(config: &Path) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("reading `{}`", config.display()))?;
    let table: toml::Table = text.parse()?;
    Ok(table
        .get("gateway")
        .and_then(toml::Value::as_table)
        .is_some_and(|g| g.contains_key("tls")))
}
