//! The log's signing key files: `DIR/log-signing.key` (signer key string, mode 0600) and
//! `DIR/log.pub` (verifier key string, for anyone checking checkpoints and receipts).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use ed25519_dalek::SigningKey;

use crate::LogError;
use crate::note::{NoteSigner, NoteVerifier};

/// File name of the secret signing key inside a log directory.
pub const SIGNING_KEY_FILE: &str = "log-signing.key";
/// File name of the public verifier key inside a log directory.
pub const PUBLIC_KEY_FILE: &str = "log.pub";

/// Fills `buf` from the operating system's CSPRNG (the default entropy source).
pub fn os_entropy(buf: &mut [u8]) -> Result<(), LogError> {
    getrandom::fill(buf).map_err(|e| {
        LogError::io(
            "reading OS randomness",
            std::io::Error::other(e.to_string()),
        )
    })
}

/// Loads `DIR/log-signing.key`, or creates it (mode 0600, 32 bytes from `entropy`) with
/// `DIR/log.pub` beside it. The key's name must be `origin`; a key file readable by group or
/// others is refused.
pub fn load_or_create_signing_key(
    dir: &Path,
    origin: &str,
    entropy: &mut dyn FnMut(&mut [u8]) -> Result<(), LogError>,
) -> Result<NoteSigner, LogError> {
    fs::create_dir_all(dir)
        .map_err(|e| LogError::io(format!("creating `{}`", dir.display()), e))?;
    let key_path = dir.join(SIGNING_KEY_FILE);
    let pub_path = dir.join(PUBLIC_KEY_FILE);
    let signer = if key_path.exists() {
        let meta = fs::metadata(&key_path)
            .map_err(|e| LogError::io(format!("reading `{}`", key_path.display()), e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(LogError::Mismatch(format!(
                "signing key `{}` has mode {mode:04o}; it must not be readable by group or others (chmod 600)",
                key_path.display()
            )));
        }
        let text = fs::read_to_string(&key_path)
            .map_err(|e| LogError::io(format!("reading `{}`", key_path.display()), e))?;
        let signer = NoteSigner::from_key_string(&text)?;
        if signer.name() != origin {
            return Err(LogError::Mismatch(format!(
                "signing key `{}` is named `{}`, not the origin `{origin}`",
                key_path.display(),
                signer.name()
            )));
        }
        signer
    } else {
        let mut seed = [0u8; 32];
        entropy(&mut seed)?;
        let signer = NoteSigner::new(origin, SigningKey::from_bytes(&seed))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|e| LogError::io(format!("creating `{}`", key_path.display()), e))?;
        f.write_all(format!("{}\n", signer.to_key_string()).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| LogError::io(format!("writing `{}`", key_path.display()), e))?;
        signer
    };
    let vkey = format!("{}\n", signer.verifier());
    if fs::read_to_string(&pub_path).ok().as_deref() != Some(vkey.as_str()) {
        fs::write(&pub_path, vkey)
            .map_err(|e| LogError::io(format!("writing `{}`", pub_path.display()), e))?;
    }
    Ok(signer)
}

/// Reads a verifier key string from a file (such as `DIR/log.pub`).
pub fn load_verifier(path: &Path) -> Result<NoteVerifier, LogError> {
    let text = fs::read_to_string(path)
        .map_err(|e| LogError::io(format!("reading `{}`", path.display()), e))?;
    NoteVerifier::parse(&text)
}
