//! `tlog-proof` parsing never panics and round-trips what it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = warden_log::Receipt::parse(data) {
        assert_eq!(warden_log::Receipt::parse(&r.encode()).ok(), Some(r));
    }
});
