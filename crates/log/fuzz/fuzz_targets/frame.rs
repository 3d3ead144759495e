//! Segment header and frame decoding never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = warden_log::decode_segment_header(data);
    if let Ok(frame) = warden_log::decode_frame(data) {
        assert!(frame.encoded_len <= data.len());
    }
});
