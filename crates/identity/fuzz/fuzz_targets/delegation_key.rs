//! Delegation key files (and the statement inside them) never panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_identity::delegation::DelegationKey;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = DelegationKey::from_json(s) {
        let _ = (key.spiffe_id(), key.not_after(), key.to_json());
    }
});
