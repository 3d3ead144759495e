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
