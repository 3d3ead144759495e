//! `warden check`: decide one call against a configuration.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command prints its result"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use warden_kernel::{CallRequest, Decision, Enforcement, Label, Source, ToolId};

use super::kernel_config::{Config, now, system_rng};

/// Arguments of `warden check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The manifest.
    #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
    config: PathBuf,
    /// The calling agent: a SPIFFE ID or an agent name from the manifest.
    #[arg(long)]
    agent: String,
    /// The tool, as `<server>/<tool>`.
    #[arg(long)]
    tool: String,
    /// The arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Provenance of an argument, as `ARG=SOURCE` (e.g. `command=web:evil.example`); repeatable.
    /// The source's integrity comes from the manifest (`user` trusted, `web:…` untrusted, …).
    #[arg(long = "label", value_name = "ARG=SOURCE")]
    labels: Vec<String>,
    /// Delegation chain, origin first; repeatable.
    #[arg(long = "delegated-by", value_name = "SPIFFE_ID")]
    delegation: Vec<String>,
    /// Session id.
    #[arg(long)]
    session: Option<String>,
    /// Print the decision record (JCS JSON) instead of text.
    #[arg(long)]
    json: bool,
    /// On allow, write the certificate (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    cert_out: Option<PathBuf>,
    // ---- log ----
    /// Append the decision record to the transparency log in DIR (created if missing) before
    /// reporting it, and print its `tlog-proof` receipt (to stdout, or to stderr with `--json`).
    #[arg(long, value_name = "DIR")]
    log: Option<PathBuf>,
}

pub(crate) fn run(args: &CheckArgs) -> ExitCode {
    let enforcement = match decide(args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // ---- log ----
    // The decision is durable in the log before it is reported (acknowledged = durable).
    let receipt = match &args.log {
        Some(dir) => match super::log::append_record(dir, enforcement.record.to_jcs_bytes()) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if args.json {
        outln!(
            "{}",
            String::from_utf8_lossy(&enforcement.record.to_jcs_bytes())
        );
    } else {
        print_decision(&enforcement);
    }
    // ---- log ----
    if let Some((index, receipt)) = &receipt {
        let text = String::from_utf8_lossy(receipt);
        if args.json {
            eprint!("{text}");
        } else {
            outln!("logged: record {index}; receipt:");
            out!("{text}");
        }
    }
    match &enforcement.decision {
        Decision::Allow(cert) => {
            if let Some(path) = &args.cert_out
                && let Err(e) = std::fs::write(path, cert.to_bytes())
            {
                eprintln!("error: cannot write `{}`: {e}", path.display());
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Decision::Deny(_) => ExitCode::from(1),
        Decision::NeedsApproval(_) => ExitCode::from(3),
    }
}

fn decide(args: &CheckArgs) -> anyhow::Result<Enforcement> {
    let cfg = Config::read(&args.config)?;
    let has_key = cfg.manifest.signing_key_path().is_some();
    if args.cert_out.is_some() && !has_key {
        bail!("--cert-out needs `[certificates] signing_key` in the manifest");
    }
    let kernel = cfg.kernel(!has_key)?;
    let agent = cfg
        .manifest
        .agents()
        .iter()
        .find(|a| a.name == args.agent)
        .map_or_else(|| args.agent.clone(), |a| a.id.clone());
    let tool = ToolId::parse(&args.tool).context("--tool")?;
    let mut request = CallRequest::new(agent, tool, args.args.as_bytes().to_vec());
    for spec in &args.labels {
        let Some((arg, source)) = spec.split_once('=') else {
            bail!("--label `{spec}`: expected ARG=SOURCE");
        };
        let source = Source::new(source).with_context(|| format!("--label `{spec}`"))?;
        let label = Label::new(source.clone(), cfg.manifest.source_integrity(&source));
        let joined = request
            .labels
            .get(arg)
            .map_or_else(|| label.clone(), |l| l.join(&label));
        request.labels.insert(arg.to_owned(), joined);
    }
    request.delegation.clone_from(&args.delegation);
    request.session.clone_from(&args.session);
    Ok(kernel.enforce(&request, now(), &mut system_rng()))
}

fn print_decision(e: &Enforcement) {
    let r = &e.record;
    match &e.decision {
        Decision::Allow(cert) => {
            outln!("allow: {} may call {}", r.agent, r.tool);
            outln!("  rules:       {}", r.rules.join(", "));
            outln!(
                "  certificate: {} (expires {})",
                cert.claims().id,
                cert.claims().expires
            );
            outln!("  args hash:   {}", r.args_hash);
        }
        Decision::NeedsApproval(p) => {
            outln!("needs approval: {} calling {}", r.agent, r.tool);
            outln!("  {}", p.reason());
        }
        Decision::Deny(d) => {
            outln!("deny: {} calling {}", r.agent, r.tool);
            outln!("  {d}");
        }
    }
    outln!("  taint:       {}", r.taint);
}
