//! Ed25519 signatures whose nonce commitments are computed ahead of time, off the call path.
//!
//! An Ed25519 signature over `M` by the secret scalar `a` (public key `A = aB`) is `(R, S)` with
//! `R = rB`, `k = SHA-512(R ‖ A ‖ M) mod L` and `S = r + k·a mod L`. RFC 8032 derives the nonce
//! `r` from the key's secret prefix and `M`, so the base-point multiplication `rB` (about three
//! quarters of the time a signature takes) can only start once the message is known. A verifier
//! checks `SB = R + kA` and nothing else: it cannot tell, and does not care, how `r` was chosen.
//! Any `r` that is uniformly random, secret and used for one signature only is as good (EdDSA is
//! the random-nonce Schnorr signature with a derandomized nonce).
//!
//! A started [`Presigner`] keeps a small pool of `(r, R)` pairs that a background thread refills,
//! so a signature on the hot path costs one SHA-512 of the message and a scalar multiply-add.
//! Warden signs two things on every tool call before it may forward it (the call's certificate
//! and the log checkpoint that makes its record durable); this takes both base-point
//! multiplications off the call path.
//!
//! The rules, each held by a test:
//! - a pair leaves the pool under its lock and is used for exactly one signature, then zeroized;
//!   pairs are never cloned, never written anywhere, and die with the process;
//! - `r` is SHA-512 of a domain string, the key's secret prefix, 32 fresh bytes of OS randomness
//!   and a counter, reduced mod `L` (hedged: a predictable random source alone does not reveal
//!   `r`, and the counter keeps pairs of one pool distinct);
//! - when the pool is empty (a burst of signatures), not started, or the random source failed,
//!   the signature is RFC 8032's deterministic one: correct, just not faster.
//!
//! The signatures verify with any Ed25519 verifier. They are not RFC 8032's deterministic bytes:
//! two signatures of one message differ, so nothing may compare signatures for equality.

#![forbid(unsafe_code)]

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha512};
use zeroize::{Zeroize as _, Zeroizing};

/// Pairs a started pool holds when full.
pub const POOL_SIZE: usize = 32;
/// The refill thread is woken when the pool falls below this many pairs: one wake-up per
/// `POOL_SIZE - REFILL_BELOW` signatures, not one per signature.
pub const REFILL_BELOW: usize = 16;

/// Domain separation of the nonce derivation.
const NONCE_DOMAIN: &[u8] = b"warden/presign/v1 nonce\0";

/// Fills a buffer with secret randomness; `false` if the source failed.
pub type Entropy = Box<dyn FnMut(&mut [u8]) -> bool + Send>;

/// The operating system's random source (`getrandom`).
pub fn os_entropy() -> Entropy {
    Box::new(|buf| getrandom::fill(buf).is_ok())
}

/// Why presigning could not start.
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    /// The refill thread could not be started.
    #[error("starting the presign thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl PresignError {
    /// The underlying I/O error.
    pub fn into_io(self) -> std::io::Error {
        match self {
            Self::Thread(e) => e,
        }
    }
}

/// One nonce and its commitment; zeroized when dropped.
struct Nonce {
    r: Scalar,
    big_r: CompressedEdwardsY,
}

impl Drop for Nonce {
    fn drop(&mut self) {
        self.r.zeroize();
    }
}

#[derive(Default)]
struct State {
    ready: Vec<Nonce>,
    /// The refill thread is working (or about to): no need to wake it.
    refilling: bool,
    /// The signer is gone: the refill thread ends.
    shutdown: bool,
    /// The random source failed: the pool stays empty, signatures are deterministic.
    failed: bool,
    /// Pairs handed out, for tests and figures.
    used: u64,
}

#[derive(Default)]
struct Pool {
    state: Mutex<State>,
    wake: Condvar,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one pair, waking the refill thread when the pool runs low.
    fn take(&self) -> Option<Nonce> {
        let mut s = self.lock();
        let nonce = s.ready.pop();
        if nonce.is_some() {
            s.used += 1;
        }
        if s.ready.len() < REFILL_BELOW && !s.refilling && !s.failed && !s.shutdown {
            s.refilling = true;
            self.wake.notify_one();
        }
        nonce
    }
}

/// The refill thread: tops the pool up whenever it is asked to, until shutdown.
fn refill(pool: &Pool, prefix: &Zeroizing<[u8; 32]>, mut entropy: Entropy) {
    let mut counter: u64 = 0;
    let mut seed = Zeroizing::new([0u8; 32]);
    loop {
        let missing = {
            let mut s = pool.lock();
            while !s.refilling && !s.shutdown {
                s = pool.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            if s.shutdown {
                return;
            }
            POOL_SIZE.saturating_sub(s.ready.len())
        };
        for _ in 0..missing {
            if !entropy(seed.as_mut_slice()) {
                let mut s = pool.lock();
                s.failed = true;
                s.refilling = false;
                return;
            }
            counter = counter.wrapping_add(1);
            let mut h = Sha512::new();
            h.update(NONCE_DOMAIN);
            h.update(prefix.as_slice());
            h.update(seed.as_slice());
            h.update(counter.to_be_bytes());
            let r = Scalar::from_hash(h);
            let big_r = EdwardsPoint::mul_base(&r).compress();
            let mut s = pool.lock();
            if s.shutdown {
                return;
            }
            s.ready.push(Nonce { r, big_r });
        }
        let mut s = pool.lock();
        s.refilling = s.ready.len() < REFILL_BELOW;
    }
}

/// An Ed25519 signing key that signs with presigned nonces once [`Presigner::start`]ed (see the
/// module docs), and with RFC 8032's deterministic nonces before that or when its pool is empty.
pub struct Presigner {
    expanded: ExpandedSecretKey,
    public: VerifyingKey,
    pool: Option<Arc<Pool>>,
}

impl std::fmt::Debug for Presigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presigner")
            .field("public", &self.public)
            .field("started", &self.pool.is_some())
            .finish_non_exhaustive()
    }
}

impl Presigner {
    /// A signer for `key`, deterministic until started.
    pub fn new(key: &SigningKey) -> Self {
        Self {
            expanded: ExpandedSecretKey::from(key.as_bytes()),
            public: key.verifying_key(),
            pool: None,
        }
    }

    /// Starts the refill thread (named `warden-presign`), which fills the pool at once from
    /// `entropy`. Starting a started signer does nothing.
    pub fn start(&mut self, entropy: Entropy) -> Result<(), PresignError> {
        if self.pool.is_some() {
            return Ok(());
        }
        let pool = Arc::new(Pool::default());
        pool.lock().refilling = true;
        let prefix = Zeroizing::new(self.expanded.hash_prefix);
        let p = Arc::clone(&pool);
        std::thread::Builder::new()
            .name("warden-presign".into())
            .spawn(move || refill(&p, &prefix, entropy))?;
        self.pool = Some(pool);
        Ok(())
    }

    /// The public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// The Ed25519 signature of `message`: `R ‖ S`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        match self.pool.as_ref().and_then(|p| p.take()) {
            Some(nonce) => {
                let k = Scalar::from_hash(
                    Sha512::new()
                        .chain_update(nonce.big_r.as_bytes())
                        .chain_update(self.public.as_bytes())
                        .chain_update(message),
                );
                let s = k * self.expanded.scalar + nonce.r;
                let mut out = [0u8; 64];
                let (r_half, s_half) = out.split_at_mut(32);
                r_half.copy_from_slice(nonce.big_r.as_bytes());
                s_half.copy_from_slice(s.as_bytes());
                out
            }
            None => raw_sign::<Sha512>(&self.expanded, message, &self.public).to_bytes(),
        }
    }

    /// How many presigned pairs are ready, and how many were used (`None` if not started).
    pub fn pool_stats(&self) -> Option<(usize, u64)> {
        self.pool.as_ref().map(|p| {
            let s = p.lock();
            (s.ready.len(), s.used)
        })
    }
}

impl Drop for Presigner {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.lock().shutdown = true;
            pool.wake.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Signer as _};
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn started(seed: u8) -> Presigner {
        let mut p = Presigner::new(&key(seed));
        p.start(os_entropy()).unwrap();
        wait_full(&p);
        p
    }

    fn wait_full(p: &Presigner) {
        wait_ready(p, POOL_SIZE);
    }

    fn wait_ready(p: &Presigner, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.pool_stats().unwrap().0 < n {
            assert!(Instant::now() < deadline, "the pool never filled");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn verifies(p: &Presigner, msg: &[u8], sig: &[u8; 64]) -> bool {
        p.verifying_key()
            .verify_strict(msg, &Signature::from_bytes(sig))
            .is_ok()
    }

    #[test]
    fn presigned_signatures_verify_strictly_and_use_the_pool() {
        let p = started(7);
        for i in 0..200u32 {
            let msg = format!("message {i}");
            let sig = p.sign(msg.as_bytes());
            assert!(verifies(&p, msg.as_bytes(), &sig), "signature {i}");
            assert!(!verifies(&p, b"another message", &sig));
        }
        // Most of them came out of the pool (the refill keeps up with this pace or nearly).
        assert!(p.pool_stats().unwrap().1 > 0);
    }

    #[test]
    fn every_presigned_nonce_is_used_once() {
        let p = started(8);
        let mut seen = HashSet::new();
        for i in 0..(POOL_SIZE as u32 * 4) {
            let sig = p.sign(&i.to_be_bytes());
            assert!(seen.insert(sig[..32].to_vec()), "R repeated at {i}");
            if p.pool_stats().unwrap().0 == 0 {
                wait_ready(&p, REFILL_BELOW);
            }
        }
        assert!(
            p.pool_stats().unwrap().1 >= POOL_SIZE as u64 * 3,
            "the pool was used"
        );
        // The same message twice: two different signatures, both valid.
        let (a, b) = (p.sign(b"same"), p.sign(b"same"));
        assert_ne!(a, b);
        assert!(verifies(&p, b"same", &a) && verifies(&p, b"same", &b));
    }

    #[test]
    fn a_full_pool_signs_without_the_deterministic_path() {
        let p = started(9);
        let reference = key(9).sign(b"m").to_bytes();
        let (_, used_before) = p.pool_stats().unwrap();
        let sig = p.sign(b"m");
        assert_ne!(
            sig, reference,
            "a presigned signature is not RFC 8032's bytes"
        );
        assert_eq!(p.pool_stats().unwrap().1, used_before + 1);
        assert!(verifies(&p, b"m", &sig));
    }

    #[test]
    fn an_unstarted_signer_is_rfc_8032_deterministic() {
        let p = Presigner::new(&key(3));
        assert_eq!(p.sign(b"hello"), key(3).sign(b"hello").to_bytes());
        assert!(p.pool_stats().is_none());
    }

    #[test]
    fn a_failing_random_source_falls_back_to_deterministic_signatures() {
        let mut p = Presigner::new(&key(4));
        p.start(Box::new(|_| false)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.pool.as_ref().unwrap().lock().failed {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(p.sign(b"x"), key(4).sign(b"x").to_bytes());
        assert_eq!(p.pool_stats(), Some((0, 0)));
    }

    #[test]
    fn a_constant_random_source_still_gives_distinct_nonces() {
        // The counter keeps the pairs of one pool apart even if the source repeats itself.
        let mut p = Presigner::new(&key(5));
        p.start(Box::new(|b: &mut [u8]| {
            b.fill(0);
            true
        }))
        .unwrap();
        wait_full(&p);
        let rs: HashSet<Vec<u8>> = (0..POOL_SIZE as u32)
            .map(|i| p.sign(&i.to_be_bytes())[..32].to_vec())
            .collect();
        assert_eq!(rs.len(), POOL_SIZE);
    }

    #[test]
    fn dropping_the_signer_ends_its_thread() {
        let p = started(6);
        let pool = Arc::clone(p.pool.as_ref().unwrap());
        drop(p);
        let deadline = Instant::now() + Duration::from_secs(10);
        // The thread held the other reference to the pool.
        while Arc::strong_count(&pool) > 1 {
            assert!(Instant::now() < deadline, "the refill thread did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_message_under_any_key(seed in any::<[u8; 32]>(), msg in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut p = Presigner::new(&SigningKey::from_bytes(&seed));
            p.start(os_entropy()).unwrap();
            let sig = p.sign(&msg);
            prop_assert!(verifies(&p, &msg, &sig));
            let mut bad = sig;
            bad[40] ^= 1;
            prop_assert!(!verifies(&p, &msg, &bad));
        }
    }
}
