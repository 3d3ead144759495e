//! Strict argument parsing: never panics; whatever it accepts is canonical, re-parses to the same
//! value, and has a hash over exactly those bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use warden_kernel::{ToolSpec, canonical_bytes, parse_strict, sha256_tag};

static SPEC: LazyLock<Option<ToolSpec>> = LazyLock::new(|| {
    ToolSpec::from_mcp_json(
        "fuzz",
        br#"{"name":"t","inputSchema":{"type":"object","properties":{
            "s":{"type":"string","maxLength":8,"pattern":"^[a-z]*$"},
            "n":{"type":"integer","minimum":-5,"maximum":5},
            "f":{"type":"number"},
            "a":{"type":"array","items":{"type":"string","enum":["x","y"]},"maxItems":3},
            "o":{"type":"object","properties":{"b":{"type":"boolean"}}},
            "u":{"anyOf":[{"type":"string"},{"type":"null"}]}}}}"#,
    )
    .ok()
});

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = parse_strict(data) {
        let canonical = canonical_bytes(&value);
        let again = parse_strict(&canonical).expect("canonical bytes re-parse");
        assert_eq!(
            canonical_bytes(&again),
            canonical,
            "canonicalization is idempotent"
        );
    }
    if let Some(spec) = SPEC.as_ref()
        && let Ok(args) = spec.parse_arguments(data)
    {
        assert_eq!(args.hash(), sha256_tag(args.canonical_bytes()));
        assert!(spec.parse_arguments(args.canonical_bytes()).is_ok());
    }
});
