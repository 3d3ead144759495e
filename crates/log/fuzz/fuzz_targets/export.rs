//! Export of arbitrary record bytes to OCSF and CEF never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = warden_log::export_line(warden_log::ExportFormat::Ocsf, 0, data);
    if let Ok(line) = warden_log::export_line(warden_log::ExportFormat::Cef, 0, data) {
        assert!(!line.contains('\n'));
    }
    let _ = warden_log::summary_line(0, data);
});
