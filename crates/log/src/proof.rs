//! Verifiers for RFC 9162 inclusion (§2.1.3.2) and consistency (§2.1.4.2) proofs.
//!
//! Both fail unless every hash of the proof is used, and the inclusion verifier hashes the entry
//! itself, so a caller cannot pass a leaf hash where the entry was expected.

use crate::LogError;
use crate::hash::Hash;

/// Checks that `entry` is leaf `index` of the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    entry: &[u8],
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), LogError> {
    verify_inclusion_of_leaf_hash(&Hash::leaf(entry), index, size, proof, root)
}

/// As [`verify_inclusion`], for a caller that holds only the leaf hash.
pub fn verify_inclusion_of_leaf_hash(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), LogError> {
    if index >= size {
        return Err(LogError::ProofInvalid(format!(
            "index {index} is not below tree size {size}"
        )));
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(LogError::ProofInvalid(
                "inclusion proof has more hashes than the tree has levels".into(),
            ));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = Hash::node(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = Hash::node(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(LogError::ProofInvalid(
            "inclusion proof has too few hashes".into(),
        ));
    }
    if r != *root {
        return Err(LogError::ProofInvalid(
            "inclusion proof does not lead to the root".into(),
        ));
    }
    Ok(())
}

/// Checks that the tree of `new_size` leaves with root `new_root` extends the tree of `old_size`
/// leaves with root `old_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), LogError> {
    if old_size > new_size {
        return Err(LogError::ProofInvalid(format!(
            "old size {old_size} is larger than new size {new_size}"
        )));
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(LogError::ProofInvalid(
                "consistency proof between equal sizes must be empty".into(),
            ));
        }
        if old_root != new_root {
            return Err(LogError::ProofInvalid(
                "two different roots for the same size".into(),
            ));
        }
        return Ok(());
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(LogError::ProofInvalid(
                "consistency proof from the empty tree must be empty".into(),
            ));
        }
        if *old_root != Hash::empty_root() {
            return Err(LogError::ProofInvalid(
                "the root of size 0 is not the empty-tree hash".into(),
            ));
        }
        return Ok(());
    }
    let mut hashes = proof.iter();
    let seed = if old_size.is_power_of_two() {
        *old_root
    } else {
        *hashes
            .next()
            .ok_or_else(|| LogError::ProofInvalid("consistency proof is empty".into()))?
    };
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = seed;
    let mut sr = seed;
    for c in hashes {
        if snode == 0 {
            return Err(LogError::ProofInvalid(
                "consistency proof has more hashes than needed".into(),
            ));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = Hash::node(c, &fr);
            sr = Hash::node(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = Hash::node(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(LogError::ProofInvalid(
            "consistency proof has too few hashes".into(),
        ));
    }
    if fr != *old_root {
        return Err(LogError::ProofInvalid(
            "consistency proof does not lead to the old root".into(),
        ));
    }
    if sr != *new_root {
        return Err(LogError::ProofInvalid(
            "consistency proof does not lead to the new root".into(),
        ));
    }
    Ok(())
}
