//! Delegation token decoding and verification never panic on any input.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use warden_identity::delegation::{DelegationToken, DelegationVerifier, Presentation};
use warden_identity::tls::TrustStore;
use warden_identity::{SpiffeId, TrustBundle, TrustDomain};

/// A fixed Ed25519 public key (the base point's encoding): no fuzz input is signed by it.
const ROOT: [u8; 32] = [
    0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
];

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = DelegationToken::from_base64(s, &ROOT) {
        let _ = token.holders();
    }
    let (Ok(presenter), Ok(td)) = (
        SpiffeId::new("spiffe://example.org/a"),
        TrustDomain::new("example.org"),
    ) else {
        return;
    };
    let call = Presentation {
        presenter: &presenter,
        tool: "t/x",
        args: &[],
        now: SystemTime::now(),
    };
    let bundle = TrustBundle::new(td, Vec::new(), Vec::new(), 0, Duration::from_secs(300));
    let _ = DelegationVerifier::new(&ROOT, TrustStore::new(bundle)).authorize(s, &call);
});
