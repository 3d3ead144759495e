//! Manifest parsing and compilation to Cedar: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_kernel::{CertSigningKey, Kernel, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(manifest) = Manifest::from_toml_str(text) {
        let _ = Kernel::new(
            manifest,
            vec![],
            vec![],
            CertSigningKey::from_seed(&[1; 32]),
        );
    }
});
