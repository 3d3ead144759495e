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

/// Bytes of the operating system's RNG read ahead, 4 KiB at a time: the gateway draws 16 bytes
/// for every decision's id, and one `getrandom` for ~250 decisions instead of one each keeps a
/// system call off the call path. Each byte is handed out once and zeroed as it leaves the
/// buffer. Requests of a quarter of the buffer or more go to the OS directly. For ids, not keys:
/// keys come from [`system_rng`].
pub(crate) struct ReadAheadOsRng {
    buf: Box<[u8; READ_AHEAD]>,
    used: usize,
}

const READ_AHEAD: usize = 4096;

impl ReadAheadOsRng {
    pub(crate) fn new() -> UnwrapErr<Self> {
        UnwrapErr(Self {
            buf: Box::new([0; READ_AHEAD]),
            used: READ_AHEAD,
        })
    }
}

impl getrandom::rand_core::TryRng for ReadAheadOsRng {
    type Error = getrandom::Error;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        if dst.len() >= READ_AHEAD / 4 {
            return getrandom::fill(dst);
        }
        let mut filled = 0;
        while filled < dst.len() {
            if self.used == READ_AHEAD {
                getrandom::fill(&mut self.buf[..])?;
                self.used = 0;
            }
            let n = (dst.len() - filled).min(READ_AHEAD - self.used);
            let (Some(out), Some(src)) = (
                dst.get_mut(filled..filled + n),
                self.buf.get_mut(self.used..self.used + n),
            ) else {
                return getrandom::fill(dst);
            };
            out.copy_from_slice(src);
            src.fill(0);
            self.used += n;
            filled += n;
        }
        Ok(())
    }
}

impl getrandom::rand_core::TryCryptoRng for ReadAheadOsRng {}

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

#[cfg(test)]
mod tests {
    use super::*;
    use getrandom::rand_core::{Rng as _, TryRng as _};

    #[test]
    fn read_ahead_bytes_are_handed_out_once_and_wiped() {
        let mut rng = ReadAheadOsRng::new();
        // Enough draws to refill the buffer several times, one straddling a refill.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut id = [0u8; 16];
            rng.fill_bytes(&mut id);
            assert!(seen.insert(id), "a 16-byte draw repeated");
        }
        let inner = &mut rng.0;
        assert!(inner.used <= READ_AHEAD);
        assert!(inner.buf[..inner.used].iter().all(|&b| b == 0));
        // Straddling the end of the buffer: the rest of it, then a fresh read.
        inner.used = READ_AHEAD - 5;
        let mut straddle = [0u8; 16];
        inner.try_fill_bytes(&mut straddle).unwrap();
        assert_eq!(inner.used, 11);
        assert!(inner.buf[..11].iter().all(|&b| b == 0));
        // Large requests bypass the buffer.
        let before = inner.used;
        let mut big = vec![0u8; READ_AHEAD];
        inner.try_fill_bytes(&mut big).unwrap();
        assert_eq!(inner.used, before);
        assert!(big.iter().any(|&b| b != 0));
    }
}
