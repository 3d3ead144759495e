//! `warden cert verify`: check a certificate as a tool server would.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command prints its result"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use warden_kernel::{CallCertificate, CertificateVerifier};

use super::kernel_config::{Config, now};

/// `warden cert` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Verify a certificate: signature, key id, expiry, audience and arguments hash
    /// (exit 0 valid, 1 invalid, 2 usage error). Single use needs a long-lived verifier and is
    /// not checked here.
    Verify {
        /// The certificate file (JSON).
        cert: PathBuf,
        /// The arguments the tool received (JSON object).
        #[arg(long)]
        args: String,
        /// The manifest (for keys and audiences).
        #[arg(long, default_value = "warden.toml", env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// The audience to expect (default: the certificate's server as the manifest names it).
        #[arg(long)]
        audience: Option<String>,
    },
}

pub(crate) fn run(command: &CertCommand) -> ExitCode {
    let CertCommand::Verify {
        cert,
        args,
        config,
        audience,
    } = command;
    let setup = || -> anyhow::Result<(Config, Vec<u8>)> {
        let cfg = Config::read(config)?;
        let bytes =
            std::fs::read(cert).with_context(|| format!("cannot read `{}`", cert.display()))?;
        Ok((cfg, bytes))
    };
    let (cfg, bytes) = match setup() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let verified = (|| -> anyhow::Result<_> {
        let certificate = CallCertificate::decode(&bytes)?;
        let server = certificate.claims().tool.server.clone();
        let audience = audience.clone().unwrap_or_else(|| {
            cfg.manifest
                .servers()
                .get(&server)
                .map_or_else(|| format!("Server::\"{server}\""), |s| s.audience.clone())
        });
        let verifier = CertificateVerifier::new(cfg.verifying_keys()?, audience);
        Ok(verifier.verify(&certificate, args.as_bytes(), now())?)
    })();
    match verified {
        Ok(claims) => {
            outln!(
                "valid: certificate {} for {}/{}",
                claims.id,
                claims.tool.server,
                claims.tool.name
            );
            outln!("  agent:   {}", claims.agent);
            outln!("  rules:   {}", claims.rules.join(", "));
            outln!("  expires: {}", claims.expires);
            if let Some(a) = &claims.approval {
                outln!("  approved by {} at {}", a.approver, a.time);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            outln!("invalid: {e:#}");
            ExitCode::from(1)
        }
    }
}
