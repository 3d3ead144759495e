//! The kernel's subcommands, run as a user would: exit codes, files, messages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn starter() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let o = warden(&["init", dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    dir
}

fn cfg(dir: &Path) -> String {
    dir.join("warden.toml").to_str().unwrap().to_owned()
}

#[test]
fn init_writes_a_private_key_and_never_prints_it() {
    let dir = starter();
    let key = dir.path().join("keys/cert-signing.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = std::fs::read_to_string(&key).unwrap();
    let again = warden(&["init", dir.path().to_str().unwrap()]);
    assert_eq!(code(&again), 2, "init overwrote an existing starter");
    assert!(!text(&again).contains(secret.trim()));
}

#[test]
fn policy_validate_and_show() {
    let dir = starter();
    let c = cfg(dir.path());
    let o = warden(&["policy", "validate", "--config", &c]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = warden(&["policy", "show", "--config", &c]);
    assert!(
        text(&o).contains(r#"action == Action::"market/query_market_data""#),
        "{}",
        text(&o)
    );
    // A raw policy naming an action that does not exist is refused with the validator's message.
    std::fs::write(
        dir.path().join("policies/extra.cedar"),
        "permit(principal, action == Action::\"market/nope\", resource);",
    )
    .unwrap();
    let o = warden(&["policy", "validate", "--config", &c]);
    assert_eq!(code(&o), 1);
    assert!(text(&o).contains("market/nope"), "{}", text(&o));
    // A typo in the manifest names the key.
    let m = std::fs::read_to_string(dir.path().join("warden.toml")).unwrap();
    std::fs::write(
        dir.path().join("warden.toml"),
        m.replace("approval = \"human\"", "aproval = \"human\""),
    )
    .unwrap();
    let o = warden(&["policy", "validate", "--config", &c]);
    assert_eq!(code(&o), 1);
    assert!(text(&o).contains("aproval"), "{}", text(&o));
    let o = warden(&["policy", "validate", "--config", "/nonexistent/warden.toml"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn check_exit_codes_and_cert_verify() {
    let dir = starter();
    let c = cfg(dir.path());
    let cert = dir.path().join("cert.json");
    let args = r#"{"exchange":"NYSE","symbol":"ACME"}"#;
    let o = warden(&[
        "check",
        "--config",
        &c,
        "--agent",
        "trading-analyzer",
        "--tool",
        "market/query_market_data",
        "--args",
        args,
        "--cert-out",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = warden(&[
        "cert",
        "verify",
        cert.to_str().unwrap(),
        "--args",
        args,
        "--config",
        &c,
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = warden(&[
        "cert",
        "verify",
        cert.to_str().unwrap(),
        "--args",
        r#"{"exchange":"NYSE","symbol":"EVIL"}"#,
        "--config",
        &c,
    ]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("args hash"), "{}", text(&o));

    let deny = warden(&[
        "check",
        "--config",
        &c,
        "--agent",
        "trading-analyzer",
        "--tool",
        "shell/exec",
        "--args",
        r#"{"command":"ls"}"#,
    ]);
    assert_eq!(code(&deny), 1, "{}", text(&deny));
    let strict = warden(&[
        "check",
        "--config",
        &c,
        "--agent",
        "trading-analyzer",
        "--tool",
        "market/query_market_data",
        "--args",
        r#"{"exchange":"NYSE","exchange":"LSE","symbol":"A"}"#,
    ]);
    assert_eq!(code(&strict), 1);
    assert!(text(&strict).contains("duplicate key"), "{}", text(&strict));
    let hold = warden(&[
        "check",
        "--config",
        &c,
        "--agent",
        "spiffe://example.org/agent/trading-analyzer",
        "--tool",
        "broker/execute_trade",
        "--args",
        r#"{"symbol":"A","side":"buy","quantity":1}"#,
    ]);
    assert_eq!(code(&hold), 3, "{}", text(&hold));
    let taint = warden(&[
        "check",
        "--config",
        &c,
        "--agent",
        "researcher",
        "--tool",
        "shell/exec",
        "--args",
        r#"{"command":"sh -c x"}"#,
        "--label",
        "command=web:evil.example",
        "--json",
    ]);
    assert_eq!(code(&taint), 1);
    let record: serde_json::Value = serde_json::from_slice(&taint.stdout).unwrap();
    assert_eq!(record["rules"][0], "no-untrusted-into-shell");
    assert_eq!(record["taint"], "untrusted");
    let usage = warden(&[
        "check", "--config", &c, "--agent", "x", "--tool", "no-slash",
    ]);
    assert_eq!(code(&usage), 2);
    let usage = warden(&[
        "check",
        "--config",
        "/nonexistent.toml",
        "--agent",
        "x",
        "--tool",
        "a/b",
    ]);
    assert_eq!(code(&usage), 2);
}

#[test]
fn demo_runs_to_the_end() {
    let o = warden(&["demo"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = text(&o);
    for needle in [
        "HOLD",
        "rate-limit",
        "no-untrusted-into-shell",
        "REFUSE",
        "default-deny",
    ] {
        assert!(out.contains(needle), "missing {needle}: {out}");
    }
}
