//! `warden init DIR`: a working starter configuration.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command prints its result"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use warden_kernel::CertSigningKey;

use super::kernel_config::{Config, system_rng, write_secret};

pub(crate) const STARTER_MANIFEST: &str = include_str!("starter/warden.toml");
pub(crate) const STARTER_CEDAR: &str = include_str!("starter/policies/extra.cedar");

/// Arguments of `warden init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Directory to create the starter in (created if missing; must not hold a warden.toml).
    dir: PathBuf,
}

pub(crate) fn run(args: &InitArgs) -> ExitCode {
    match write_starter(&args.dir) {
        Ok(()) => {
            let dir = args.dir.display();
            outln!("wrote a starter into {dir}:");
            outln!("  {dir}/warden.toml               agents, servers, tools, allowlist");
            outln!("  {dir}/policies/extra.cedar      raw Cedar beside the allowlist");
            outln!(
                "  {dir}/keys/cert-signing.key     certificate signing key (mode 0600, keep secret)"
            );
            outln!("  {dir}/keys/cert-signing.pub     its public half, for tool servers");
            outln!("next: warden policy validate --config {dir}/warden.toml");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes the starter into `dir` and checks that it loads.
pub(crate) fn write_starter(dir: &Path) -> anyhow::Result<()> {
    let manifest = dir.join("warden.toml");
    if manifest.exists() {
        bail!(
            "`{}` already exists; refusing to overwrite it",
            manifest.display()
        );
    }
    fs::create_dir_all(dir.join("policies"))
        .and_then(|()| fs::create_dir_all(dir.join("keys")))
        .with_context(|| format!("cannot create `{}`", dir.display()))?;
    let key = CertSigningKey::generate(&mut system_rng());
    write_secret(
        &dir.join("keys/cert-signing.key"),
        &format!("{}\n", key.to_secret_hex()),
    )?;
    fs::write(
        dir.join("keys/cert-signing.pub"),
        format!("{}\n", key.verifying_key().to_hex()),
    )?;
    fs::write(dir.join("policies/extra.cedar"), STARTER_CEDAR)?;
    fs::write(&manifest, STARTER_MANIFEST)?;
    Config::read(&manifest)?
        .kernel(false)
        .context("the starter does not load")?;
    Ok(())
}
