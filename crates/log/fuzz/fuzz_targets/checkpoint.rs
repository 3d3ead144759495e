//! Checkpoint text parsing never panics and round-trips what it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cp) = warden_log::Checkpoint::parse_text(text)
    {
        assert_eq!(cp.to_text(), text);
    }
});
