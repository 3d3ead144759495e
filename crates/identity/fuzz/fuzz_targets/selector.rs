//! Selector parsing never panics, and what it accepts prints back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_identity::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sel) = s.parse::<Selector>() {
        assert_eq!(sel.to_string(), s);
    }
});
