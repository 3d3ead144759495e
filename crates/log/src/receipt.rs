//! C2SP `tlog-proof`: an offline-verifiable receipt that one entry is in the log.
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! [extra <base64>]
//! index <decimal>
//! <base64 hash>        (zero or more, leaf sibling first)
//!
//! <signed checkpoint, verbatim>
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::LogError;
use crate::checkpoint::{Checkpoint, SignedCheckpoint, parse_decimal};
use crate::hash::Hash;
use crate::note::NoteVerifier;
use crate::proof::verify_inclusion;

const HEADER: &str = "c2sp.org/tlog-proof@v1";
/// More proof lines than a tree of 2^64 leaves can need.
const MAX_PROOF_HASHES: usize = 64;

/// A single-entry receipt in `tlog-proof` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Optional unauthenticated extra data.
    pub extra: Option<Vec<u8>>,
    /// The entry's index.
    pub index: u64,
    /// The inclusion proof in the checkpoint's tree.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: Vec<u8>,
}

impl Receipt {
    /// The `.tlog-proof` bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(64 + 45 * self.proof.len() + self.checkpoint.len());
        s.push_str(HEADER);
        s.push('\n');
        if let Some(extra) = &self.extra {
            s.push_str("extra ");
            s.push_str(&B64.encode(extra));
            s.push('\n');
        }
        s.push_str(&format!("index {}\n", self.index));
        for h in &self.proof {
            s.push_str(&h.to_base64());
            s.push('\n');
        }
        s.push('\n');
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.checkpoint);
        out
    }

    /// Parses `.tlog-proof` bytes (syntax only; see [`Receipt::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, LogError> {
        let bad = |what: String| LogError::Malformed(format!("tlog-proof {what}"));
        let mut rest = bytes;
        let mut next_line = |what: &str| -> Result<&[u8], LogError> {
            let pos = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| bad(format!("ends before its {what}")))?;
            let (line, tail) = rest.split_at(pos);
            rest = tail.get(1..).unwrap_or_default();
            Ok(line)
        };
        if next_line("header")? != HEADER.as_bytes() {
            return Err(bad(format!("does not start with `{HEADER}`")));
        }
        let mut line = next_line("index line")?;
        let mut extra = None;
        if let Some(b64) = line.strip_prefix(b"extra ") {
            extra = Some(
                B64.decode(b64)
                    .map_err(|_| bad("extra data is not base64".into()))?,
            );
            line = next_line("index line")?;
        }
        let index = line
            .strip_prefix(b"index ")
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(parse_decimal)
            .ok_or_else(|| bad("has no canonical `index N` line".into()))?;
        let mut proof = Vec::new();
        loop {
            let line = next_line("blank line before the checkpoint")?;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_HASHES {
                return Err(bad(format!(
                    "has more than {MAX_PROOF_HASHES} proof hashes"
                )));
            }
            let text =
                std::str::from_utf8(line).map_err(|_| bad("hash line is not UTF-8".into()))?;
            proof.push(Hash::from_base64(text)?);
        }
        if rest.is_empty() {
            return Err(bad("has no checkpoint".into()));
        }
        Ok(Self {
            extra,
            index,
            proof,
            checkpoint: rest.to_vec(),
        })
    }

    /// Verifies the checkpoint signature with `verifier`, then that `entry` is at `index` in the
    /// checkpoint's tree. Returns the checkpoint.
    pub fn verify(&self, entry: &[u8], verifier: &NoteVerifier) -> Result<Checkpoint, LogError> {
        let signed = SignedCheckpoint::verify(&self.checkpoint, verifier)?;
        let cp = signed.checkpoint();
        verify_inclusion(entry, self.index, cp.size, &self.proof, &cp.root)?;
        Ok(cp.clone())
    }
}
