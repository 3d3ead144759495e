#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use warden_identity::{
    CaPolicy, CertificateAuthority, Clock, Error, FixedClock, Random, SpiffeId, SystemClock,
    TrustDomain,
};

/// A deterministic random source: a counter hashed with SHA-256.
#[derive(Debug, Default)]
pub struct CounterRandom(Mutex<u64>);

impl Random for CounterRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), Error> {
        use sha2::Digest;
        for chunk in buf.chunks_mut(32) {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            let h = sha2::Sha256::digest(n.to_be_bytes());
            chunk.copy_from_slice(&h[..chunk.len()]);
        }
        Ok(())
    }
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

pub fn ca(td: &str) -> CertificateAuthority {
    CertificateAuthority::generate(
        TrustDomain::new(td).unwrap(),
        CaPolicy::default(),
        Arc::new(SystemClock),
        Arc::new(CounterRandom::default()),
    )
    .unwrap()
}

pub fn ca_at(td: &str, clock: Arc<dyn Clock>) -> CertificateAuthority {
    CertificateAuthority::generate(
        TrustDomain::new(td).unwrap(),
        CaPolicy::default(),
        clock,
        Arc::new(CounterRandom::default()),
    )
    .unwrap()
}

pub fn fixed(at: SystemTime) -> Arc<FixedClock> {
    Arc::new(FixedClock::new(at))
}

pub fn hours_ago(h: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(h * 3600)
}
