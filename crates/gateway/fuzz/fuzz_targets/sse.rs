//! The upstream SSE parser: never panics, and the events do not depend on how the stream was
//! cut into chunks (the first byte picks a cut).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_gateway::sse::SseParser;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = SseParser::new().push(body);
    let cut = usize::from(cut).min(body.len());
    let (a, b) = body.split_at(cut);
    let mut p = SseParser::new();
    let split = p.push(a).and_then(|mut first| {
        first.extend(p.push(b)?);
        Ok(first)
    });
    assert_eq!(whole, split);
});
