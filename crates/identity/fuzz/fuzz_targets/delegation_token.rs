//! Delegation token decoding and verification never panic on any input.
#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use warden_identity::SpiffeId;
use warden_identity::delegation::{DelegationToken, DelegationVerifier, Presentation};

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
    let Ok(presenter) = SpiffeId::new("spiffe://example.org/a") else {
        return;
    };
    let call = Presentation {
        presenter: &presenter,
        tool: "t/x",
        args: &[],
        now: SystemTime::now(),
    };
    let _ = DelegationVerifier::new(&ROOT).authorize(s, &call);
});
