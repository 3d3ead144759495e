//! C2SP `signed-note` with Ed25519 signatures, and the key encodings of Go's `note` package:
//! verifier keys `name+hex8+base64(0x01 ‖ public key)` and signer keys
//! `PRIVATE+KEY+name+hex8+base64(0x01 ‖ seed)`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::LogError;

/// The signature type byte of Ed25519 in `signed-note`.
const ED25519: u8 = 0x01;
/// The most signature lines a note may carry before it is refused (the spec asks for at least 16).
const MAX_SIGNATURES: usize = 64;
/// The separator that starts a signature line: em dash, space.
const SIG_PREFIX: &str = "\u{2014} ";

/// The key id of an Ed25519 key: the first 4 bytes of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)`.
pub fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a, ED25519]);
    h.update(key.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    let [a, b, c, e, ..] = d;
    u32::from_be_bytes([a, b, c, e])
}

fn check_key_name(name: &str) -> Result<(), LogError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
    {
        return Err(LogError::Malformed(format!(
            "key name `{name}` must be non-empty without spaces, controls or `+`"
        )));
    }
    Ok(())
}

/// A named Ed25519 key that signs notes. Its `Debug` never shows the secret.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    id: u32,
    /// Signs: RFC 8032 deterministic until [`NoteSigner::start_presigning`].
    signer: warden_presign::Presigner,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer named `name` (which must be a valid key name) with `key`.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, LogError> {
        check_key_name(name)?;
        let id = key_id(name, &key.verifying_key());
        let signer = warden_presign::Presigner::new(&key);
        Ok(Self {
            name: name.to_owned(),
            key,
            id,
            signer,
        })
    }

    /// From now on, notes are signed with nonces drawn ahead of time from `entropy` by a
    /// background thread (see `warden-presign`): ~1 µs per signature instead of ~14 µs. The
    /// signatures verify as before; they are no longer RFC 8032's deterministic bytes.
    pub fn start_presigning(&mut self, entropy: warden_presign::Entropy) -> Result<(), LogError> {
        self.signer
            .start(entropy)
            .map_err(|e| LogError::io("starting the checkpoint presign thread", e.into_io()))
    }

    /// Parses a signer key string `PRIVATE+KEY+name+hex8+base64(0x01 ‖ seed)`.
    pub fn from_key_string(text: &str) -> Result<Self, LogError> {
        let bad = || LogError::Malformed("signer key is not `PRIVATE+KEY+name+id+key`".to_owned());
        let rest = text
            .trim_end_matches('\n')
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(bad)?;
        let (name, rest) = rest.split_once('+').ok_or_else(bad)?;
        let (id_hex, b64) = rest.split_once('+').ok_or_else(bad)?;
        let raw = B64.decode(b64).map_err(|_| bad())?;
        let Some((&ED25519, seed)) = raw.split_first() else {
            return Err(LogError::Malformed(
                "signer key is not an Ed25519 key".to_owned(),
            ));
        };
        let seed: [u8; 32] = seed.try_into().map_err(|_| bad())?;
        let signer = Self::new(name, SigningKey::from_bytes(&seed))?;
        if id_hex.len() != 8 || u32::from_str_radix(id_hex, 16).ok() != Some(signer.id) {
            return Err(LogError::Malformed(format!(
                "signer key id `{id_hex}` does not match the key"
            )));
        }
        Ok(signer)
    }

    /// The signer key string (a secret: write it only to a 0600 file).
    pub fn to_key_string(&self) -> String {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            B64.encode(raw)
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// The 68 bytes `key id ‖ Ed25519 signature` of the signature line over `text`.
    pub(crate) fn signature_blob(&self, text: &[u8]) -> [u8; 68] {
        let mut out = [0u8; 68];
        let (id, rest) = out.split_at_mut(4);
        id.copy_from_slice(&self.id.to_be_bytes());
        rest.copy_from_slice(&self.signer.sign(text));
        out
    }

    /// Signs `text` (which must be a valid note text ending in a newline) and returns the note.
    pub fn sign(&self, text: &str) -> Result<Vec<u8>, LogError> {
        check_text(text)?;
        Ok(assemble(
            text,
            &self.name,
            &self.signature_blob(text.as_bytes()),
        ))
    }
}

/// Builds the note bytes from its text and one signature line.
pub(crate) fn assemble(text: &str, name: &str, blob: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(text.len() + name.len() + 100);
    out.push_str(text);
    out.push('\n');
    out.push_str(SIG_PREFIX);
    out.push_str(name);
    out.push(' ');
    out.push_str(&B64.encode(blob));
    out.push('\n');
    out.into_bytes()
}

fn check_text(text: &str) -> Result<(), LogError> {
    if !text.ends_with('\n') {
        return Err(LogError::Malformed(
            "note text must end with a newline".to_owned(),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(LogError::Malformed(
            "note contains a control character".to_owned(),
        ));
    }
    Ok(())
}

/// A named Ed25519 public key that verifies notes, written `name+hex8+base64(0x01 ‖ key)`.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteVerifier({self})")
    }
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }
}

impl NoteVerifier {
    /// Parses a verifier key string; the id must match the name and key.
    pub fn parse(text: &str) -> Result<Self, LogError> {
        let text = text.trim();
        let bad = || LogError::Malformed(format!("verifier key `{text}` is not `name+id+key`"));
        let (name, rest) = text.split_once('+').ok_or_else(bad)?;
        let (id_hex, b64) = rest.split_once('+').ok_or_else(bad)?;
        check_key_name(name)?;
        let raw = B64.decode(b64).map_err(|_| bad())?;
        let Some((&ED25519, key)) = raw.split_first() else {
            return Err(LogError::Malformed(format!(
                "verifier key `{text}` is not an Ed25519 key"
            )));
        };
        let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad())?;
        let id = key_id(name, &key);
        if id_hex.len() != 8 || u32::from_str_radix(id_hex, 16).ok() != Some(id) {
            return Err(LogError::Malformed(format!(
                "verifier key id `{id_hex}` does not match the key"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// Verifies `note` and returns its text. Signatures by other keys are ignored, as the spec
    /// requires; a bad signature by this key, or none at all, is an error.
    pub fn verify<'a>(&self, note: &'a [u8]) -> Result<&'a str, LogError> {
        let parsed = SignedNote::parse(note)?;
        let mut verified = false;
        for sig in &parsed.signatures {
            if sig.name != self.name || sig.id != self.id {
                continue;
            }
            let bytes: [u8; 64] = sig.signature.as_slice().try_into().map_err(|_| {
                LogError::SignatureInvalid(format!("signature by `{}` is not 64 bytes", self.name))
            })?;
            self.key
                .verify_strict(parsed.text.as_bytes(), &Signature::from_bytes(&bytes))
                .map_err(|_| {
                    LogError::SignatureInvalid(format!(
                        "signature by `{}+{:08x}` does not verify",
                        self.name, self.id
                    ))
                })?;
            verified = true;
        }
        if !verified {
            return Err(LogError::SignatureInvalid(format!(
                "note carries no signature by `{}+{:08x}`",
                self.name, self.id
            )));
        }
        Ok(parsed.text)
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key id.
    pub id: u32,
    /// Signature bytes after the key id.
    pub signature: Vec<u8>,
}

/// A parsed (not yet verified) signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote<'a> {
    /// The signed text, ending with its final newline.
    pub text: &'a str,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl<'a> SignedNote<'a> {
    /// Splits and checks the syntax of a note; verifies nothing.
    pub fn parse(note: &'a [u8]) -> Result<Self, LogError> {
        let note = std::str::from_utf8(note)
            .map_err(|_| LogError::Malformed("note is not UTF-8".to_owned()))?;
        check_text(note)?;
        let split = note.rfind("\n\n").ok_or_else(|| {
            LogError::Malformed("note has no blank line before its signatures".to_owned())
        })?;
        let (text, sigs) = note.split_at(split + 1);
        let sigs = sigs.get(1..).unwrap_or_default();
        if sigs.is_empty() {
            return Err(LogError::Malformed("note has no signature".to_owned()));
        }
        let mut signatures = Vec::new();
        for line in sigs.split_terminator('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(LogError::Malformed(format!(
                    "note has more than {MAX_SIGNATURES} signatures"
                )));
            }
            let body = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
                LogError::Malformed("signature line does not start with `— `".to_owned())
            })?;
            let (name, b64) = body
                .split_once(' ')
                .ok_or_else(|| LogError::Malformed("signature line has no key name".to_owned()))?;
            check_key_name(name)?;
            let raw = B64
                .decode(b64)
                .map_err(|_| LogError::Malformed(format!("signature by `{name}` is not base64")))?;
            let Some((id, signature)) = raw.split_first_chunk::<4>() else {
                return Err(LogError::Malformed(format!(
                    "signature by `{name}` is too short"
                )));
            };
            if signature.is_empty() {
                return Err(LogError::Malformed(format!(
                    "signature by `{name}` is too short"
                )));
            }
            signatures.push(NoteSignature {
                name: name.to_owned(),
                id: u32::from_be_bytes(*id),
                signature: signature.to_vec(),
            });
        }
        Ok(Self { text, signatures })
    }
}
