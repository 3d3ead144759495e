//! One Ed25519 signature of a 600-byte message (a certificate's size): RFC 8032's deterministic
//! signing (the baseline) against a started pool's presigned nonce.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use warden_presign::{Presigner, os_entropy};

fn bench(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[1; 32]);
    let message = vec![b'x'; 600];
    let deterministic = Presigner::new(&key);
    let mut presigned = Presigner::new(&key);
    presigned.start(os_entropy()).unwrap();
    let mut g = c.benchmark_group("ed25519_sign_600B");
    g.bench_function("rfc8032_deterministic", |b| {
        b.iter(|| deterministic.sign(std::hint::black_box(&message)))
    });
    // One signature per iteration, then a pause long enough for the refill thread to keep the
    // pool stocked, as between two tool calls; the pause is not timed.
    g.bench_function("presigned", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let start = std::time::Instant::now();
                std::hint::black_box(presigned.sign(std::hint::black_box(&message)));
                total += start.elapsed();
                if presigned.pool_stats().is_some_and(|(ready, _)| ready < 2) {
                    while presigned.pool_stats().is_some_and(|(ready, _)| ready < 16) {
                        std::thread::yield_now();
                    }
                }
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
