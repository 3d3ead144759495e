//! `warden approvals list|approve ID|deny ID`: talks to a running gateway over its admin socket
//! (mode 0600). The approver recorded is this process's uid, with `--as NAME` in front.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command prints its result"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};
use warden_gateway::{GatewayConfig, admin_request};

/// `warden approvals` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// List the calls waiting for approval.
    List {
        /// The manifest.
        #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held call.
    Approve {
        /// The approval id (from `list`).
        id: String,
        /// The manifest.
        #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// Your name, recorded with your uid.
        #[arg(long = "as")]
        name: Option<String>,
    },
    /// Refuse a held call.
    Deny {
        /// The approval id (from `list`).
        id: String,
        /// The manifest.
        #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// Your name, recorded with your uid.
        #[arg(long = "as")]
        name: Option<String>,
    },
}

pub(crate) fn run(command: &ApprovalsCommand) -> ExitCode {
    match go(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn go(command: &ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let (ApprovalsCommand::List { config, .. }
    | ApprovalsCommand::Approve { config, .. }
    | ApprovalsCommand::Deny { config, .. }) = command;
    let cfg = GatewayConfig::load(config)?;
    let socket = cfg.resolve(&cfg.gateway.admin_socket);
    let request = match command {
        ApprovalsCommand::List { .. } => json!({"op": "list"}),
        ApprovalsCommand::Approve { id, name, .. } => {
            json!({"op": "answer", "id": id, "granted": true, "name": name})
        }
        ApprovalsCommand::Deny { id, name, .. } => {
            json!({"op": "answer", "id": id, "granted": false, "name": name})
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer: Value = rt.block_on(admin_request(&socket, &request))?;
    if let Some(err) = answer.get("error") {
        anyhow::bail!("the gateway refused: {err}");
    }
    match command {
        ApprovalsCommand::List { json, .. } => {
            let pending = answer
                .get("pending")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if *json {
                outln!("{}", serde_json::to_string_pretty(&pending)?);
            } else if pending.is_empty() {
                outln!("no calls waiting");
            } else {
                for p in pending {
                    outln!(
                        "{}  {}  {}  {}\n    args: {}\n    why: {}",
                        text(&p, "id"),
                        text(&p, "held_at"),
                        text(&p, "agent"),
                        text(&p, "tool"),
                        p.get("arguments").unwrap_or(&Value::Null),
                        text(&p, "reason")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        _ if answer.get("ok") == Some(&Value::Bool(true)) => {
            outln!("answered as {}", text(&answer, "approver"));
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("no such call is waiting (answered already, or timed out)");
            Ok(ExitCode::from(1))
        }
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}
