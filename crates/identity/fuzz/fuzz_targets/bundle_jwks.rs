//! SPIFFE bundle (JWKS) parsing never panics; what parses re-encodes and parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_identity::{TrustBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TrustDomain::new("example.org") else {
        return;
    };
    if let Ok(bundle) = TrustBundle::from_jwks(td.clone(), data)
        && let Ok(json) = bundle.to_jwks()
    {
        let again = TrustBundle::from_jwks(td, json.as_bytes());
        assert!(again.is_ok_and(|b| b == bundle));
    }
});
