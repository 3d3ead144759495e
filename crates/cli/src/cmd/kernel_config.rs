//! Loading a kernel from a `warden.toml` on disk: the manifest, its Cedar files and keys.
//! Shared by the kernel's subcommands (and usable by `serve`).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use getrandom::SysRng;
use getrandom::rand_core::UnwrapErr;
use warden_kernel::{CertSigningKey, CertVerifyingKey, Kernel, Manifest, PolicyFile, Timestamp};

/// The operating system's RNG. It aborts only if the kernel's RNG fails, which Linux does not.
pub(crate) fn system_rng() -> UnwrapErr<SysRng> {
    UnwrapErr(SysRng)
}

/// The wall clock, read here and passed into the kernel.
pub(crate) fn now() -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now())
}

/// A manifest with the directory its relative paths are resolved against.
pub(crate) struct Config {
    pub(crate) manifest: Manifest,
    pub(crate) dir: PathBuf,
}

impl Config {
    pub(crate) fn read(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read the manifest `{}`", path.display()))?;
        Self::from_text(path, &text)
    }

    /// Parses manifest `text` read from `path`.
    pub(crate) fn from_text(path: &Path, text: &str) -> anyhow::Result<Self> {
        let manifest =
            Manifest::from_toml_str(text).with_context(|| format!("in `{}`", path.display()))?;
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Ok(Self { manifest, dir })
    }

    pub(crate) fn policy_files(&self) -> anyhow::Result<Vec<PolicyFile>> {
        self.manifest
            .policy_paths()
            .iter()
            .map(|p| {
                let path = self.dir.join(p);
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the policy file `{}`", path.display()))?;
                Ok(PolicyFile {
                    name: p.clone(),
                    text,
                })
            })
            .collect()
    }

    /// The signing key named by `[certificates] signing_key`; refused if others can read it.
    pub(crate) fn signing_key(&self) -> anyhow::Result<CertSigningKey> {
        let Some(rel) = self.manifest.signing_key_path() else {
            bail!("the manifest names no `[certificates] signing_key`");
        };
        let path = self.dir.join(rel);
        let meta = fs::metadata(&path)
            .with_context(|| format!("cannot read the signing key `{}`", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "the signing key `{}` is readable by others: run `chmod 600` on it",
                path.display()
            );
        }
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read the signing key `{}`", path.display()))?;
        CertSigningKey::from_hex(&text).with_context(|| format!("in `{}`", path.display()))
    }

    /// Keys certificates may be verified with: the signing key's public half (if readable) and
    /// every `[certificates] verifying_keys` file.
    pub(crate) fn verifying_keys(&self) -> anyhow::Result<Vec<CertVerifyingKey>> {
        let mut keys = Vec::new();
        if let Ok(k) = self.signing_key() {
            keys.push(k.verifying_key());
        }
        for rel in self.manifest.verifying_key_paths() {
            let path = self.dir.join(rel);
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read the public key `{}`", path.display()))?;
            keys.push(
                CertVerifyingKey::from_hex(&text)
                    .with_context(|| format!("in `{}`", path.display()))?,
            );
        }
        if keys.is_empty() {
            bail!("no verifying key: set `[certificates] signing_key` or `verifying_keys`");
        }
        Ok(keys)
    }

    /// A kernel signing with the configured key, or with a throwaway key when `ephemeral_key`.
    pub(crate) fn kernel(&self, ephemeral_key: bool) -> anyhow::Result<Kernel> {
        let mut key = if ephemeral_key {
            CertSigningKey::generate(&mut system_rng())
        } else {
            self.signing_key()?
        };
        // Nonces are drawn ahead of time by a background thread: a certificate's signature
        // costs ~1 µs on the call path instead of ~14 µs.
        key.start_presigning(warden_presign::os_entropy())?;
        let kernel = Kernel::new(self.manifest.clone(), self.policy_files()?, Vec::new(), key)?;
        Ok(kernel)
    }
}

/// Writes `contents` to a new file with mode 0600 (never overwrites).
pub(crate) fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
