//! An in-memory RFC 9162 Merkle tree that keeps every complete subtree hash, so roots, inclusion
//! proofs and consistency proofs for any size up to the current one cost O(log n) hashes.

use crate::LogError;
use crate::hash::{Hash, split_point};

/// The hashes of a Merkle tree: `levels[k][i]` is the hash of the complete subtree over leaves
/// `i·2^k .. (i+1)·2^k`, present once all its leaves are.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends the leaf hash of one entry (see [`Hash::leaf`]).
    pub fn push(&mut self, leaf: Hash) {
        let mut carry = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                return;
            };
            row.push(carry);
            if row.len() % 2 != 0 {
                return;
            }
            match row.get(row.len() - 2..) {
                Some([left, right]) => carry = Hash::node(left, right),
                _ => return,
            }
            level += 1;
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash, LogError> {
        self.stored(0, index)
    }

    /// The root of the tree as it was at `size` leaves (`size` at most the current size).
    pub fn root(&self, size: u64) -> Result<Hash, LogError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(Hash::empty_root());
        }
        self.subtree(0, size)
    }

    /// The RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(size)?;
        if index >= size {
            return Err(LogError::IndexOutOfRange { index, size });
        }
        let mut out = Vec::with_capacity(64);
        self.path(index, 0, size, &mut out)?;
        Ok(out)
    }

    /// The RFC 9162 §2.1.4.1 consistency proof from `old` leaves to `new` leaves (empty when
    /// `old` is 0 or equal to `new`).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(new)?;
        if old > new {
            return Err(LogError::SizeOutOfRange {
                size: old,
                current: new,
            });
        }
        let mut out = Vec::with_capacity(64);
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut out)?;
        }
        Ok(out)
    }

    fn check_size(&self, size: u64) -> Result<(), LogError> {
        if size > self.size() {
            return Err(LogError::SizeOutOfRange {
                size,
                current: self.size(),
            });
        }
        Ok(())
    }

    fn stored(&self, level: u32, index: u64) -> Result<Hash, LogError> {
        self.levels
            .get(level as usize)
            .and_then(|row| row.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(LogError::IndexOutOfRange {
                index,
                size: self.size(),
            })
    }

    /// MTH(D[lo:hi]) for `lo < hi <= size`.
    fn subtree(&self, lo: u64, hi: u64) -> Result<Hash, LogError> {
        let n = hi - lo;
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            return self.stored(n.trailing_zeros(), lo >> n.trailing_zeros());
        }
        let k = split_point(n);
        let left = self.subtree(lo, lo + k)?;
        let right = self.subtree(lo + k, hi)?;
        Ok(Hash::node(&left, &right))
    }

    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Result<(), LogError> {
        let n = hi - lo;
        if n <= 1 {
            return Ok(());
        }
        let k = split_point(n);
        if m < lo + k {
            self.path(m, lo, lo + k, out)?;
            out.push(self.subtree(lo + k, hi)?);
        } else {
            self.path(m, lo + k, hi, out)?;
            out.push(self.subtree(lo, lo + k)?);
        }
        Ok(())
    }

    fn subproof(
        &self,
        m: u64,
        lo: u64,
        hi: u64,
        whole: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), LogError> {
        let n = hi - lo;
        if m == n {
            if !whole {
                out.push(self.subtree(lo, hi)?);
            }
            return Ok(());
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, lo, lo + k, whole, out)?;
            out.push(self.subtree(lo + k, hi)?);
        } else {
            self.subproof(m - k, lo + k, hi, false, out)?;
            out.push(self.subtree(lo, lo + k)?);
        }
        Ok(())
    }
}

impl MerkleTree {
    /// `count` stored hashes of complete subtrees of height `level`, starting at `start`.
    pub fn stored_range(&self, level: u32, start: u64, count: u64) -> Result<&[Hash], LogError> {
        let row = self.levels.get(level as usize);
        let s = usize::try_from(start).ok();
        let e = start
            .checked_add(count)
            .and_then(|e| usize::try_from(e).ok());
        match (row, s, e) {
            (Some(row), Some(s), Some(e)) => row.get(s..e),
            _ => None,
        }
        .ok_or(LogError::IndexOutOfRange {
            index: start + count,
            size: self.size(),
        })
    }

    /// Drops every leaf from `size` on (used to undo appends that were never made durable).
    pub fn truncate(&mut self, size: u64) {
        for (k, row) in self.levels.iter_mut().enumerate() {
            let keep = usize::try_from(size >> k).unwrap_or(usize::MAX);
            row.truncate(keep);
        }
    }
}
