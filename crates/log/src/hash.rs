//! RFC 9162 §2.1.1 hashing: SHA-256 with a `0x00` prefix for leaves and `0x01` for interior nodes.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};

use crate::LogError;

/// A SHA-256 Merkle tree hash (a leaf hash, an interior node hash or a root).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The root of the empty tree: SHA-256 of the empty string.
    pub fn empty_root() -> Self {
        Self(Sha256::digest([]).into())
    }

    /// The leaf hash of an entry: `SHA-256(0x00 ‖ entry)`.
    pub fn leaf(entry: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update([0x00]);
        h.update(entry);
        Self(h.finalize().into())
    }

    /// The interior node hash: `SHA-256(0x01 ‖ left ‖ right)`.
    pub fn node(left: &Self, right: &Self) -> Self {
        let mut h = Sha256::new();
        h.update([0x01]);
        h.update(left.0);
        h.update(right.0);
        Self(h.finalize().into())
    }

    /// Standard (RFC 4648 §4, padded) base64, as used by checkpoints and `tlog-proof`.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Parses a base64 hash; anything but exactly 32 canonically encoded bytes is an error.
    pub fn from_base64(text: &str) -> Result<Self, LogError> {
        let bytes = B64
            .decode(text)
            .map_err(|_| LogError::Malformed(format!("hash `{text}` is not base64")))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| LogError::Malformed(format!("hash `{text}` is not 32 bytes")))?;
        Ok(Self(arr))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The largest power of two strictly smaller than `n` (for `n >= 2`): RFC 9162's split point.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(8), 4);
        assert_eq!(split_point(9), 8);
        assert_eq!(split_point(1 << 40), 1 << 39);
    }

    #[test]
    fn known_answers() {
        // SHA-256("") and SHA-256(0x00): fixed values any SHA-256 implementation reproduces.
        assert_eq!(
            Hash::empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Hash::leaf(b"").to_hex(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn base64_rejects_wrong_lengths_and_garbage() {
        let h = Hash::leaf(b"x");
        assert_eq!(Hash::from_base64(&h.to_base64()).unwrap(), h);
        assert!(Hash::from_base64("AAAA").is_err());
        assert!(Hash::from_base64("not base64!").is_err());
    }
}
