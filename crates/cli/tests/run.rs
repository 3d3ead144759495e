//! `warden run`: exit statuses, messages and profiles from a config file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::{Command, Output};

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn exits_with_the_commands_status() {
    let out = warden(&["run", "--", "/bin/sh", "-c", "echo hi; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(out.stdout, b"hi\n");
}

#[test]
fn limits_have_distinct_statuses_and_messages() {
    let out = warden(&["run", "--timeout", "1", "--", "/bin/sleep", "10"]);
    assert_eq!(out.status.code(), Some(124));
    assert!(stderr(&out).contains("time limit"), "{}", stderr(&out));

    let hog = "x = b'x' * (256 << 20)";
    let out = warden(&["run", "--memory", "64", "--", "/usr/bin/python3", "-c", hog]);
    assert_eq!(out.status.code(), Some(123), "{}", stderr(&out));
    assert!(stderr(&out).contains("memory limit"), "{}", stderr(&out));

    let out = warden(&[
        "run",
        "--output-limit",
        "5",
        "--",
        "/bin/echo",
        "hello world",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"hello");
    assert!(
        stderr(&out).contains("output truncated"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn profiles_come_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let config = dir.path().join("warden.toml");
    let text = format!("[sandbox.profiles.t]\nrw = [\"{}\"]\n", out_dir.display());
    std::fs::write(&config, text).unwrap();
    let file = out_dir.join("made");
    let script = format!("echo ok > {}", file.display());
    let cfg = config.to_str().unwrap();
    let out = warden(&[
        "run",
        "--profile",
        "t",
        "--config",
        cfg,
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "ok\n");
    // Without the profile the same write fails.
    std::fs::remove_file(&file).unwrap();
    let out = warden(&["run", "--", "/bin/sh", "-c", &script]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!file.exists());

    let out = warden(&[
        "run",
        "--profile",
        "missing",
        "--config",
        cfg,
        "--",
        "/bin/true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("sandbox.profiles.missing"),
        "{}",
        stderr(&out)
    );
}
