//! `warden log` end to end: init, append, verify, show, export, prove, check-proof,
//! consistency, rebuild, and damage reported with a non-zero exit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Command, Output};

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = warden(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const DENY: &str = r#"{"agent":"spiffe://ex/agent","args_hash":"sha256:ab","certificate":null,"decision":"deny","delegation":[],"id":"d1","labels":{"msg":["web:evil|x=y"]},"reason":"bad = worse\nsecond | line\\","risk":"high","rules":["no-untrusted"],"session":null,"taint":"untrusted","time":"2026-11-23T20:05:25.123Z","tool":"git/commit","type":"warden.decision","v":1}"#;
const ALLOW: &str = r#"{"agent":"spiffe://ex/agent","args_hash":"sha256:cd","certificate":{"id":"c"},"decision":"allow","delegation":["spiffe://ex/user"],"id":"d2","labels":{},"reason":null,"risk":null,"rules":["allow-read"],"session":"s1","taint":"trusted","time":"2026-11-23T20:05:26.000Z","tool":"git/status","type":"warden.decision","v":1}"#;

fn setup(tmp: &Path) -> String {
    std::fs::write(tmp.join("deny.json"), DENY).unwrap();
    std::fs::write(tmp.join("allow.json"), ALLOW).unwrap();
    let dir = tmp.join("log").display().to_string();
    let init = ok(&["log", "init", &dir, "--origin", "example.org/log"]);
    assert!(init.contains("example.org/log+"), "{init}");
    let receipts = ok(&[
        "log",
        "append",
        &dir,
        &tmp.join("deny.json").display().to_string(),
        &tmp.join("allow.json").display().to_string(),
    ]);
    assert_eq!(receipts.matches("c2sp.org/tlog-proof@v1\n").count(), 2);
    dir
}

#[test]
fn verify_show_export_prove_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let v = ok(&["log", "verify", &dir]);
    assert!(v.starts_with("ok: 2 records"), "{v}");

    let show = ok(&["log", "show", &dir]);
    assert!(
        show.contains("#0 2026-11-23T20:05:25.123Z warden.decision deny d1"),
        "{show}"
    );
    assert_eq!(
        ok(&["log", "show", &dir, "--json", "--from", "1"]).trim_end(),
        ALLOW
    );

    let cef = ok(&["log", "export", &dir, "--format", "cef"]);
    let lines: Vec<&str> = cef.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("CEF:0|Warden|Warden|"), "{}", lines[0]);
    assert!(
        lines[0].contains(r"reason=bad \= worse\nsecond | line\\"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("|7|act=deny") || lines[0].contains("|7|rt="),
        "{}",
        lines[0]
    );

    let ocsf = ok(&["log", "export", &dir, "--format", "ocsf"]);
    let first: serde_json::Value = serde_json::from_str(ocsf.lines().next().unwrap()).unwrap();
    assert_eq!(first["class_uid"], 6003);
    assert_eq!(first["type_uid"], 600_399);
    assert_eq!(first["action_id"], 2);
    assert_eq!(first["disposition_id"], 2);
    assert_eq!(first["policy"]["uid"], "no-untrusted");
    assert_eq!(first["actor"]["user"]["uid"], "spiffe://ex/agent");
    assert_eq!(first["api"]["operation"], "commit");
    assert_eq!(first["api"]["service"]["name"], "git");
    assert_eq!(first["time"], 1_795_464_325_123i64);

    let proof = tmp.path().join("p.tlog-proof").display().to_string();
    ok(&["log", "prove", &dir, "0", "-o", &proof]);
    let key = format!("{dir}/log.pub");
    let deny = tmp.path().join("deny.json").display().to_string();
    let allow = tmp.path().join("allow.json").display().to_string();
    assert!(
        ok(&[
            "log",
            "check-proof",
            &proof,
            "--entry",
            &deny,
            "--key",
            &key
        ])
        .starts_with("valid")
    );
    let bad = warden(&[
        "log",
        "check-proof",
        &proof,
        "--entry",
        &allow,
        "--key",
        &key,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).starts_with("invalid"));

    // `--entry-out` writes the record's exact bytes: they check against the receipt for record 1
    // (the allow record) and not against the receipt for record 0.
    let proof1 = tmp.path().join("p1.tlog-proof").display().to_string();
    let entry1 = tmp.path().join("e1").display().to_string();
    ok(&[
        "log",
        "prove",
        &dir,
        "1",
        "-o",
        &proof1,
        "--entry-out",
        &entry1,
    ]);
    assert_eq!(
        std::fs::read(&entry1).unwrap(),
        std::fs::read(&allow).unwrap()
    );
    let checked = ok(&[
        "log",
        "check-proof",
        &proof1,
        "--entry",
        &entry1,
        "--key",
        &key,
    ]);
    assert!(checked.starts_with("valid"), "{checked}");
    let wrong = warden(&[
        "log",
        "check-proof",
        &proof,
        "--entry",
        &entry1,
        "--key",
        &key,
    ]);
    assert_eq!(wrong.status.code(), Some(1));

    let c = ok(&["log", "consistency", &dir, "1"]);
    assert!(c.starts_with("old size 1\nold root "), "{c}");
    assert!(ok(&["log", "rebuild", &dir]).contains("2 records"));
    assert!(ok(&["log", "verify", &dir]).starts_with("ok"));
}

#[test]
fn verify_reports_damage_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let seg = Path::new(&dir).join("segments/00000000000000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let out = warden(&["log", "verify", &dir]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("damaged") && text.contains("00000000000000000000.seg"),
        "{text}"
    );
}

#[test]
fn check_appends_its_decision_and_prints_a_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let o = warden(&["init", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = tmp.path().join("warden.toml").display().to_string();
    let dir = tmp.path().join("log").display().to_string();
    let deny = warden(&[
        "check",
        "--config",
        &cfg,
        "--agent",
        "trading-analyzer",
        "--tool",
        "shell/exec",
        "--args",
        r#"{"command":"ls"}"#,
        "--log",
        &dir,
    ]);
    assert_eq!(deny.status.code(), Some(1));
    let out = String::from_utf8_lossy(&deny.stdout);
    assert!(
        out.contains("logged: record 0; receipt:\nc2sp.org/tlog-proof@v1\nindex 0\n"),
        "{out}"
    );
    let allow = warden(&[
        "check",
        "--config",
        &cfg,
        "--agent",
        "trading-analyzer",
        "--tool",
        "market/query_market_data",
        "--args",
        r#"{"exchange":"NYSE","symbol":"ACME"}"#,
        "--log",
        &dir,
        "--json",
    ]);
    assert_eq!(
        allow.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allow.stderr)
    );
    // With --json the record is on stdout and the receipt on stderr; the receipt proves the record.
    let record = String::from_utf8(allow.stdout).unwrap();
    let record = record.trim_end();
    std::fs::write(tmp.path().join("rec.json"), record).unwrap();
    std::fs::write(tmp.path().join("rec.tlog-proof"), &allow.stderr).unwrap();
    let v = ok(&[
        "log",
        "check-proof",
        &tmp.path().join("rec.tlog-proof").display().to_string(),
        "--entry",
        &tmp.path().join("rec.json").display().to_string(),
        "--key",
        &format!("{dir}/log.pub"),
    ]);
    assert!(v.starts_with("valid: entry is record 1"), "{v}");
    let show = ok(&["log", "show", &dir]);
    assert!(
        show.contains(" deny ") && show.contains(" allow "),
        "{show}"
    );
    assert!(ok(&["log", "verify", &dir]).starts_with("ok: 2 records"));
}

#[test]
fn a_missing_log_is_a_clear_error_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nothing-here");
    let out = warden(&["log", "show", dir.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing-here"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}
