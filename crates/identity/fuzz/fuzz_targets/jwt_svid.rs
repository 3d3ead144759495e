//! JWT-SVID decoding and validation never panic on any token.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use warden_identity::{JwtAuthority, TrustBundle, TrustDomain, validate_jwt_svid};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(td) = TrustDomain::new("example.org") else {
        return;
    };
    let mut point = vec![4u8];
    point.extend([1u8; 64]);
    let bundle = TrustBundle::new(
        td,
        vec![],
        vec![JwtAuthority {
            key_id: "k".into(),
            public_key: point,
        }],
        1,
        Duration::from_secs(60),
    );
    let _ = validate_jwt_svid(
        token,
        "aud",
        &bundle,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    );
});
