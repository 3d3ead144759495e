//! Host rules, host names and profiles parse any text into a value or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = warden_sandbox::egress::HostRule::parse(text) {
        let _ = rule.matches(text, 443);
    }
    let _ = warden_sandbox::egress::normalize_host(text);
    if let Ok(table) = text.parse::<toml::Table>() {
        let _ = warden_sandbox::Profile::from_table(&table);
    }
});
