//! Signed-note parsing and verifier-key parsing never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = warden_log::SignedNote::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(v) = warden_log::NoteVerifier::parse(text) {
            let _ = v.verify(data);
        }
        let _ = warden_log::NoteSigner::from_key_string(text);
    }
});
