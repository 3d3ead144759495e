//! The crate's own helper binary for tests and benchmarks: the sandbox helper and nothing else.
#![forbid(unsafe_code)]

use std::io::Write;

fn main() {
    warden_sandbox::run_helper_if_requested();
    let _ = writeln!(
        std::io::stderr(),
        "warden-sandbox-helper: only runs as the sandbox helper"
    );
    std::process::exit(2);
}
