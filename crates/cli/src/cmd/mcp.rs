//! `warden mcp`: the gateway's stdio face, launched by an MCP client as its server. Also the
//! gateway start-up shared by `serve`: manifest → kernel → log (limits rebuilt from it) →
//! gateway, plus the admin socket for `warden approvals`.
#![allow(clippy::print_stderr, reason = "a command reports its errors")]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use warden_gateway::{
    Gateway, GatewayConfig, KernelAuthority, SystemClock, rebuild_from_log, serve_admin,
    serve_stdio,
};

use super::kernel_config::{Config, ReadAheadOsRng};

/// `warden mcp` arguments.
#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    /// The manifest.
    #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
    pub(crate) config: PathBuf,
    /// The agent this face serves: its name in the manifest or its SPIFFE ID.
    #[arg(long)]
    pub(crate) agent: String,
}

/// A running gateway: keep the log alive as long as the gateway.
pub(crate) struct Running {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) _log: warden_log::Log,
}

/// Builds the gateway of `config`: real kernel, real log, limits rebuilt from the log.
pub(crate) fn start(config: &Path) -> anyhow::Result<Running> {
    let cfg = Config::read(config)?;
    let kernel = cfg.kernel(false)?;
    let gw_cfg = GatewayConfig::from_manifest(&cfg.manifest, &cfg.dir)?;
    let log_dir = gw_cfg.resolve(&gw_cfg.gateway.log);
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("creating `{}`", log_dir.display()))?;
    let log = super::log::open_or_create(&log_dir, None)?;
    let replayed = rebuild_from_log(&kernel, &log)
        .map_err(anyhow::Error::msg)
        .context("rebuilding limits from the log")?;
    let _ = replayed;
    let authority = KernelAuthority::new(
        kernel,
        Arc::new(log.writer()),
        Arc::new(SystemClock),
        ReadAheadOsRng::new(),
    );
    let gateway = Gateway::new(gw_cfg, Arc::new(authority))?;
    Ok(Running { gateway, _log: log })
}

/// The SPIFFE ID of `agent` (a manifest name or an ID).
pub(crate) fn agent_id(config: &Path, agent: &str) -> anyhow::Result<String> {
    let cfg = Config::read(config)?;
    if agent.starts_with("spiffe://") {
        return Ok(agent.to_owned());
    }
    match cfg.manifest.agents().iter().find(|a| a.name == agent) {
        Some(a) => Ok(a.id.clone()),
        None => bail!("no agent `{agent}` in the manifest"),
    }
}

/// Serves the admin socket in the background; an error there is reported, not fatal.
pub(crate) fn spawn_admin(gateway: &Arc<Gateway>) {
    let path = gateway
        .config()
        .resolve(&gateway.config().gateway.admin_socket);
    let gw = gateway.clone();
    tokio::spawn(async move {
        if let Err(e) = serve_admin(gw, &path).await {
            eprintln!("warning: admin socket `{}`: {e}", path.display());
        }
    });
}

pub(crate) fn run(args: &McpArgs) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: &McpArgs) -> anyhow::Result<()> {
    let agent = agent_id(&args.config, &args.agent)?;
    // One agent per process: a current-thread runtime keeps every wake-up of a call (agent
    // pipe, log acknowledgement, upstream pipe) on one thread instead of handing it between
    // workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let running = start(&args.config)?;
        // ---- identity ----
        super::identity::follow_delegation_bundle(
            running.gateway.config(),
            &super::identity::default_dir(),
            &args.config,
            None,
        )?;
        spawn_admin(&running.gateway);
        serve_stdio(
            running.gateway.clone(),
            &agent,
            agent_input(),
            agent_output(),
        )
        .await?;
        Ok(())
    })
}

type Input = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type Output = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// Standard input as a non-blocking pipe read by the runtime's reactor when it is a pipe (as
/// MCP clients launch us), else tokio's stdin (which reads on a blocking thread per read).
fn agent_input() -> Input {
    use std::os::fd::AsFd as _;
    let pipe = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok());
    match pipe {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdin()),
    }
}

/// Standard output as a non-blocking pipe when it is a pipe of its own; tokio's stdout when it
/// is not, or when standard error shares it (non-blocking mode would then reach our stderr).
fn agent_output() -> Output {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let id = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .ok()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()))
    };
    let out = std::io::stdout();
    let err = std::io::stderr();
    let shared = id(out.as_fd()).is_none() || id(out.as_fd()) == id(err.as_fd());
    let pipe = (!shared)
        .then(|| out.as_fd().try_clone_to_owned().ok())
        .flatten()
        .and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok());
    match pipe {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdout()),
    }
}
