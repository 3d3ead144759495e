//! C2SP `tlog-checkpoint`: the note text `origin\nsize\nbase64(root)\n[extension lines]`.

use crate::LogError;
use crate::hash::Hash;
use crate::note::NoteVerifier;

/// A tree head: the log's origin, its size and the root hash at that size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (also the signing key's name).
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// The RFC 9162 root at `size`.
    pub root: Hash,
    /// Opaque extension lines (without newlines), kept when parsing others' checkpoints; this
    /// log never writes any.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: &str, size: u64, root: Hash) -> Self {
        Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note text, ending in a newline.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            self.root.to_base64()
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint note text (the part a signature covers).
    pub fn parse_text(text: &str) -> Result<Self, LogError> {
        let bad = |what: &str| LogError::Malformed(format!("checkpoint {what}"));
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("does not end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(bad("has an empty origin"));
        }
        let size_line = lines.next().ok_or_else(|| bad("has no size line"))?;
        let size = parse_decimal(size_line).ok_or_else(|| {
            LogError::Malformed(format!(
                "checkpoint size `{size_line}` is not a canonical decimal"
            ))
        })?;
        let root = Hash::from_base64(lines.next().ok_or_else(|| bad("has no root hash line"))?)?;
        let mut extensions = Vec::new();
        for e in lines {
            if e.is_empty() {
                return Err(bad("has an empty extension line"));
            }
            extensions.push(e.to_owned());
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

/// A canonical ASCII decimal `u64`: digits only, no leading zeros unless the value is 0.
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// A checkpoint together with the signed note it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    note: Vec<u8>,
}

impl SignedCheckpoint {
    /// Verifies `note` with `verifier` and parses its text; the origin must be the key's name.
    pub fn verify(note: &[u8], verifier: &NoteVerifier) -> Result<Self, LogError> {
        let text = verifier.verify(note)?;
        let checkpoint = Checkpoint::parse_text(text)?;
        if checkpoint.origin != verifier.name() {
            return Err(LogError::SignatureInvalid(format!(
                "checkpoint origin `{}` is not the key name `{}`",
                checkpoint.origin,
                verifier.name()
            )));
        }
        Ok(Self {
            checkpoint,
            note: note.to_vec(),
        })
    }

    /// Wraps a note this crate just produced (no re-verification).
    pub(crate) fn from_parts(checkpoint: Checkpoint, note: Vec<u8>) -> Self {
        Self { checkpoint, note }
    }

    /// The tree head.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The signed note bytes, exactly as served at `<prefix>/checkpoint`.
    pub fn note(&self) -> &[u8] {
        &self.note
    }
}
