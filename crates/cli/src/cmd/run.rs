//! `warden run`: runs one command in a sandbox.
//!
//! Exit status: the command's own (128 + signal if a signal killed it), or
//! - 124 when the wall-clock limit (`--timeout`) ended it,
//! - 123 when the memory limit ended it (the kernel killed a process for lack of memory),
//! - 125 when the sandbox could not be built, or the kernel lacks a feature and no
//!   `--danger-allow-*` flag allows going without it,
//! - 2 for usage errors.
//!
//! Every limit that ended or truncated the run is also explained on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use warden_sandbox::egress::{EgressDecision, HostRule};
use warden_sandbox::{Ending, Options, Profile, Sandbox, SandboxStdio, Weakening};

/// Exit status when the wall-clock limit ended the command.
const EXIT_TIMEOUT: u8 = 124;
/// Exit status when the memory limit ended the command.
const EXIT_MEMORY: u8 = 123;
/// Exit status when the sandbox could not start.
const EXIT_SANDBOX: u8 = 125;

/// Arguments of `warden run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Profile name: the `[sandbox.profiles.NAME]` table of the config file.
    #[arg(long, requires = "config")]
    profile: Option<String>,
    /// Config file holding the profile (warden.toml).
    #[arg(long, requires = "profile")]
    config: Option<PathBuf>,
    /// Grant a path read-only (repeatable).
    #[arg(long = "ro", value_name = "PATH")]
    read_only: Vec<PathBuf>,
    /// Grant a path read-write (repeatable).
    #[arg(long = "rw", value_name = "PATH")]
    read_write: Vec<PathBuf>,
    /// Allow egress to HOST:PORT through the proxy (HOST exact or `*.suffix`; repeatable).
    #[arg(long = "allow-host", value_name = "HOST:PORT")]
    allow_host: Vec<String>,
    /// Pass an environment variable through (repeatable).
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<String>,
    /// Wall-clock limit in seconds.
    #[arg(long, value_name = "S")]
    timeout: Option<u64>,
    /// Memory limit in MiB.
    #[arg(long, value_name = "MB")]
    memory: Option<u64>,
    /// Process and thread limit.
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// Bytes of stdout and of stderr kept (the rest is drained and dropped).
    #[arg(long = "output-limit", value_name = "BYTES")]
    output_limit: Option<u64>,
    /// Run even without Landlock (weaker: filesystem rules rest on the minimal root alone).
    #[arg(long)]
    danger_allow_without_landlock: bool,
    /// Run even without cgroups (weaker: no pids limit; memory through RLIMIT_AS only).
    #[arg(long)]
    danger_allow_without_cgroups: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub(crate) fn run(args: RunArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "warden run: {e:#}");
            ExitCode::from(EXIT_SANDBOX)
        }
    }
}

fn profile_from(args: &RunArgs) -> anyhow::Result<Profile> {
    let mut profile = match (&args.profile, &args.config) {
        (Some(name), Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            Profile::from_config(&text, name)?
        }
        _ => Profile::default(),
    };
    for p in &args.read_only {
        profile.read_only.push(absolute(p)?);
    }
    for p in &args.read_write {
        profile.read_write.push(absolute(p)?);
    }
    for h in &args.allow_host {
        profile.allow_hosts.push(HostRule::parse(h)?);
    }
    profile.env.extend(args.env.iter().cloned());
    let positive = |v: Option<u64>, what: &str| -> anyhow::Result<Option<u64>> {
        match v {
            Some(0) => bail!("`--{what}` must be positive"),
            other => Ok(other),
        }
    };
    if let Some(s) = positive(args.timeout, "timeout")? {
        profile.limits.timeout = Duration::from_secs(s);
    }
    if let Some(mb) = positive(args.memory, "memory")? {
        profile.limits.memory_bytes = mb.checked_mul(1 << 20).context("`--memory` too large")?;
    }
    if let Some(n) = positive(args.pids, "pids")? {
        profile.limits.pids = n;
    }
    if let Some(n) = positive(args.output_limit, "output-limit")? {
        profile.limits.output_bytes = n;
    }
    Ok(profile)
}

fn absolute(p: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("invalid path `{}`", p.display()))
}

fn run_inner(args: RunArgs) -> anyhow::Result<ExitCode> {
    let profile = profile_from(&args)?;
    let options = Options {
        on_egress: Arc::new(|event| {
            let line = match &event.decision {
                EgressDecision::Allow { address } => {
                    format!(
                        "egress allowed: {}:{} via {address}",
                        event.host, event.port
                    )
                }
                EgressDecision::Refuse { reason } => {
                    format!("egress refused: `{}:{}`: {reason}", event.host, event.port)
                }
            };
            let _ = writeln!(std::io::stderr(), "warden run: {line}");
        }),
        weakening: Weakening {
            allow_without_landlock: args.danger_allow_without_landlock,
            allow_without_cgroups: args.danger_allow_without_cgroups,
        },
        ..Options::default()
    };
    let limits = profile.limits.clone();
    let sandbox = Sandbox::new(profile, options);
    let outcome = sandbox.run(
        &args.command,
        SandboxStdio::Inherit,
        Box::new(std::io::stdout()),
        Box::new(std::io::stderr()),
    )?;
    let mut err = std::io::stderr();
    for w in &outcome.weakened {
        let _ = writeln!(err, "warden run: ran in a weaker mode: {w}");
    }
    if outcome.stdout_truncated || outcome.stderr_truncated {
        let _ = writeln!(
            err,
            "warden run: output truncated at {} bytes per stream (--output-limit)",
            limits.output_bytes
        );
    }
    if outcome.pids_limit_hit {
        let _ = writeln!(
            err,
            "warden run: the process limit ({}) refused a fork",
            limits.pids
        );
    }
    Ok(match outcome.ending {
        Ending::Exited { code } => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_SANDBOX)),
        Ending::TimedOut => {
            let secs = limits.timeout.as_secs();
            let _ = writeln!(
                err,
                "warden run: killed after the {secs} s time limit (--timeout)"
            );
            ExitCode::from(EXIT_TIMEOUT)
        }
        Ending::OutOfMemory => {
            let mb = limits.memory_bytes >> 20;
            let _ = writeln!(
                err,
                "warden run: killed at the {mb} MiB memory limit (--memory)"
            );
            ExitCode::from(EXIT_MEMORY)
        }
    })
}
