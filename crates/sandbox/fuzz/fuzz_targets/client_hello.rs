//! The proxy's ClientHello parser must return a value, never panic, on any bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warden_sandbox::egress::client_hello_sni(data);
});
