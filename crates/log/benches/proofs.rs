//! Inclusion and consistency proofs at 1M records (tree built in memory).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use warden_log::{Hash, MerkleTree, verify_inclusion};

const SIZE: u64 = 1 << 20;

fn proofs(c: &mut Criterion) {
    let mut tree = MerkleTree::new();
    for i in 0..SIZE {
        tree.push(Hash::leaf(&i.to_be_bytes()));
    }
    let size = SIZE - 3; // not a power of two: exercises the incomplete right edge
    let root = tree.root(size).unwrap();
    let mut i = 0u64;
    c.bench_function("inclusion_proof_1M", |b| {
        b.iter(|| {
            i = (i + 7_919) % size;
            black_box(tree.inclusion_proof(black_box(i), size).unwrap())
        })
    });
    let proof = tree.inclusion_proof(123_456, size).unwrap();
    c.bench_function("verify_inclusion_1M", |b| {
        b.iter(|| {
            verify_inclusion(
                &123_456u64.to_be_bytes(),
                123_456,
                size,
                black_box(&proof),
                &root,
            )
            .unwrap()
        })
    });
    c.bench_function("consistency_proof_1M", |b| {
        b.iter(|| black_box(tree.consistency_proof(black_box(700_001), size).unwrap()))
    });
    c.bench_function("root_1M", |b| {
        b.iter(|| black_box(tree.root(black_box(size)).unwrap()))
    });
}

criterion_group!(benches, proofs);
criterion_main!(benches);
