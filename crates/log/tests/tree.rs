//! RFC 9162 hashing and proofs: known answers, an exhaustive comparison with a naive recursive
//! implementation written straight from the RFC's definitions, negative cases, and a cross-check
//! against the independent `tlog_tiles` crate (a port of Go's `sumdb/tlog`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use warden_log::{Hash, MerkleTree, verify_consistency, verify_inclusion};

// ---- naive RFC 9162 §2.1 definitions ----

fn mth(d: &[Vec<u8>]) -> Hash {
    match d.len() {
        0 => Hash::empty_root(),
        1 => Hash::leaf(&d[0]),
        n => {
            let k = largest_pow2_below(n);
            Hash::node(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

fn largest_pow2_below(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn path(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
    let n = d.len();
    if n == 1 {
        return vec![];
    }
    let k = largest_pow2_below(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

fn subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = largest_pow2_below(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

fn entries(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
}

fn tree_of(d: &[Vec<u8>]) -> MerkleTree {
    let mut t = MerkleTree::new();
    for e in d {
        t.push(Hash::leaf(e));
    }
    t
}

// ---- known answers ----

/// The eight inputs used by the Certificate Transparency test suites, and the roots they give.
#[test]
fn ct_known_answer_roots() {
    let inputs: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let mut t = MerkleTree::new();
    assert_eq!(t.root(0).unwrap(), Hash::empty_root());
    for (i, input) in inputs.iter().enumerate() {
        t.push(Hash::leaf(input));
        assert_eq!(
            t.root(i as u64 + 1).unwrap().to_hex(),
            roots[i],
            "size {}",
            i + 1
        );
    }
    // Older sizes stay reachable after growth.
    for (i, r) in roots.iter().enumerate() {
        assert_eq!(t.root(i as u64 + 1).unwrap().to_hex(), *r);
    }
}

// ---- exhaustive against the naive definitions ----

const N: usize = 160;

#[test]
fn inclusion_proofs_match_naive_for_every_size_and_index() {
    let d = entries(N);
    let t = tree_of(&d);
    for n in 1..=N {
        let root = t.root(n as u64).unwrap();
        assert_eq!(root, mth(&d[..n]), "root {n}");
        for m in 0..n {
            let p = t.inclusion_proof(m as u64, n as u64).unwrap();
            assert_eq!(p, path(m, &d[..n]), "path {m} in {n}");
            verify_inclusion(&d[m], m as u64, n as u64, &p, &root).unwrap();
            // Wrong entry, wrong index, wrong size all fail.
            assert!(verify_inclusion(b"other", m as u64, n as u64, &p, &root).is_err());
            if n > 1 {
                let other = (m + 1) % n;
                assert!(
                    verify_inclusion(&d[m], other as u64, n as u64, &p, &root).is_err(),
                    "index {other} for {m} in {n}"
                );
            }
            // A proof must be consumed exactly: extra or missing hashes fail.
            let mut longer = p.clone();
            longer.push(root);
            assert!(verify_inclusion(&d[m], m as u64, n as u64, &longer, &root).is_err());
            if let Some((_, shorter)) = p.split_last() {
                assert!(verify_inclusion(&d[m], m as u64, n as u64, shorter, &root).is_err());
            }
        }
    }
}

#[test]
fn consistency_proofs_match_naive_for_every_pair_of_sizes() {
    let d = entries(N);
    let t = tree_of(&d);
    for n in 1..=N {
        let new_root = t.root(n as u64).unwrap();
        for m in 0..=n {
            let old_root = t.root(m as u64).unwrap();
            let p = t.consistency_proof(m as u64, n as u64).unwrap();
            let want = if m == 0 || m == n {
                vec![]
            } else {
                subproof(m, &d[..n], true)
            };
            assert_eq!(p, want, "{m} -> {n}");
            verify_consistency(m as u64, n as u64, &old_root, &new_root, &p).unwrap();
            if m > 0 && m < n {
                // A root from another history fails, as does any tampered hash.
                let forged = Hash::leaf(b"forged");
                assert!(verify_consistency(m as u64, n as u64, &forged, &new_root, &p).is_err());
                assert!(verify_consistency(m as u64, n as u64, &old_root, &forged, &p).is_err());
                for i in 0..p.len() {
                    let mut bad = p.clone();
                    bad[i] = forged;
                    assert!(
                        verify_consistency(m as u64, n as u64, &old_root, &new_root, &bad).is_err()
                    );
                }
                let mut longer = p.clone();
                longer.push(forged);
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &longer).is_err()
                );
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &p[..p.len() - 1])
                        .is_err()
                );
            }
        }
    }
}

#[test]
fn edge_cases_fail_closed() {
    let d = entries(5);
    let t = tree_of(&d);
    let root = t.root(5).unwrap();
    assert!(t.inclusion_proof(5, 5).is_err());
    assert!(t.inclusion_proof(0, 6).is_err());
    assert!(t.root(6).is_err());
    assert!(verify_inclusion(&d[0], 5, 5, &[], &root).is_err());
    assert!(verify_inclusion(&d[0], 0, 0, &[], &Hash::empty_root()).is_err());
    // Equal sizes: empty proof and equal roots only.
    assert!(verify_consistency(5, 5, &root, &root, &[]).is_ok());
    assert!(verify_consistency(5, 5, &root, &Hash::empty_root(), &[]).is_err());
    assert!(verify_consistency(5, 5, &root, &root, &[root]).is_err());
    // From the empty tree: only the empty-tree root and an empty proof.
    assert!(verify_consistency(0, 5, &Hash::empty_root(), &root, &[]).is_ok());
    assert!(verify_consistency(0, 5, &root, &root, &[]).is_err());
    assert!(verify_consistency(6, 5, &root, &root, &[]).is_err());
    // Power-of-two old size with an empty proof must not pass.
    let r4 = t.root(4).unwrap();
    assert!(verify_consistency(4, 5, &r4, &root, &[]).is_err());
}

#[test]
fn truncate_restores_an_older_tree() {
    let d = entries(37);
    let mut t = tree_of(&d);
    t.truncate(20);
    assert_eq!(t.size(), 20);
    assert_eq!(t.root(20).unwrap(), mth(&d[..20]));
    for e in &d[20..] {
        t.push(Hash::leaf(e));
    }
    assert_eq!(t.root(37).unwrap(), mth(&d));
}

// ---- cross-check against tlog_tiles (independent implementation) ----

struct Reader<'a>(&'a MerkleTree);

impl tlog_tiles::HashReader for Reader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        Ok(indexes
            .iter()
            .map(|&i| {
                let (level, n) = tlog_tiles::split_stored_hash_index(i);
                tlog_tiles::Hash(self.0.stored_range(u32::from(level), n, 1).unwrap()[0].0)
            })
            .collect())
    }
}

#[test]
fn proofs_cross_check_with_tlog_tiles() {
    let d = entries(300);
    let t = tree_of(&d);
    let r = Reader(&t);
    for n in (1..=300u64).step_by(7).chain([256, 257, 300]) {
        let root = t.root(n).unwrap();
        assert_eq!(tlog_tiles::tree_hash(n, &r).unwrap().0, root.0, "root {n}");
        for m in (0..n).step_by(5) {
            let ours = t.inclusion_proof(m, n).unwrap();
            let theirs: Vec<tlog_tiles::Hash> =
                ours.iter().map(|h| tlog_tiles::Hash(h.0)).collect();
            tlog_tiles::check_record(
                &theirs,
                n,
                tlog_tiles::Hash(root.0),
                m,
                tlog_tiles::record_hash(&d[m as usize]),
            )
            .unwrap();
            let their_proof = tlog_tiles::prove_record(n, m, &r).unwrap();
            assert_eq!(
                their_proof.iter().map(|h| h.0).collect::<Vec<_>>(),
                ours.iter().map(|h| h.0).collect::<Vec<_>>()
            );
        }
        for m in (1..n).step_by(11) {
            let ours = t.consistency_proof(m, n).unwrap();
            let theirs: Vec<tlog_tiles::Hash> =
                ours.iter().map(|h| tlog_tiles::Hash(h.0)).collect();
            let old = t.root(m).unwrap();
            tlog_tiles::check_tree(
                &theirs,
                n,
                tlog_tiles::Hash(root.0),
                m,
                tlog_tiles::Hash(old.0),
            )
            .unwrap();
        }
    }
}
