//! Shared by the integration tests and the benchmark: a deterministic RNG and the starter setup.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use sha2::{Digest, Sha256};
use warden_kernel::{CertSigningKey, Kernel, Manifest, PolicyFile};

/// Deterministic bytes for tests: SHA-256 of a counter. Not random: tests only.
pub struct TestRng(pub u64);

impl rand_core::TryRng for TestRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(32) {
            self.0 += 1;
            let d = Sha256::digest(self.0.to_le_bytes());
            chunk.copy_from_slice(&d[..chunk.len()]);
        }
        Ok(())
    }
}
impl rand_core::TryCryptoRng for TestRng {}

pub const STARTER: &str = include_str!("../../../cli/src/cmd/starter/warden.toml");
pub const STARTER_CEDAR: &str = include_str!("../../../cli/src/cmd/starter/policies/extra.cedar");

pub const TRADER: &str = "spiffe://example.org/agent/trading-analyzer";
pub const RESEARCHER: &str = "spiffe://example.org/agent/researcher";

pub fn signing_key() -> CertSigningKey {
    CertSigningKey::from_seed(&[7u8; 32])
}

pub fn starter_kernel() -> Kernel {
    let manifest = Manifest::from_toml_str(STARTER).unwrap();
    let files = vec![PolicyFile {
        name: "extra.cedar".into(),
        text: STARTER_CEDAR.into(),
    }];
    Kernel::new(manifest, files, vec![], signing_key()).unwrap()
}
