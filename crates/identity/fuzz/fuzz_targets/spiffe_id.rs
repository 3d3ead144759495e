//! The SPIFFE ID parser never panics, and what it accepts prints back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_identity::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::new(s) {
        assert_eq!(id.to_string(), s);
        assert!(SpiffeId::new(&id.to_string()).is_ok_and(|again| again == id));
    }
});
