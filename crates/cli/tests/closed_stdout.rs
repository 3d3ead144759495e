//! A closed standard output (`warden ... | head`) ends a command with status 141, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_ends_with_141_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    let init = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("init")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(init.status.success());

    // A pipe whose read end is gone before the command starts: its first write gets EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["policy", "show", "--config"])
        .arg(dir.join("warden.toml"))
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
