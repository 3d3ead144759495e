//! The strict frame decoder of agents' JSON-RPC: never panics; what it accepts has no duplicate
//! key (serde_json's own parse agrees on it), classifies without panicking, and re-parses to the
//! same value once serialised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_gateway::jsonrpc::{classify, parse_strict};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = parse_strict(data) else {
        return;
    };
    let _ = classify(&frame);
    let lenient: serde_json::Value =
        serde_json::from_slice(data).expect("strict accepts only what serde_json accepts");
    assert_eq!(lenient, frame, "without duplicates both parses agree");
    let bytes = serde_json::to_vec(&frame).expect("a value serialises");
    assert_eq!(
        parse_strict(&bytes).expect("our own output re-parses"),
        frame
    );
});
