//! `warden identity` end to end: CA, entries, SVIDs, bundle, delegation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

fn warden(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("identity")
        .args(args)
        .env("WARDEN_IDENTITY_DIR", dir)
        .output()
        .unwrap()
}

fn ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = warden(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn identity_commands_work_together() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["ca", "init", "--trust-domain", "example.org"]);
    for f in ["ca.json", "delegation.key"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert!(
        !warden(dir, &["ca", "init", "--trust-domain", "example.org"])
            .status
            .success(),
        "no silent overwrite"
    );

    ok(
        dir,
        &[
            "entries",
            "add",
            "--spiffe-id",
            "spiffe://example.org/a",
            "--selector",
            "unix:uid:1000",
        ],
    );
    assert!(ok(dir, &["entries", "list"]).contains("spiffe://example.org/a\tunix:uid:1000"));
    assert!(
        !warden(
            dir,
            &[
                "entries",
                "add",
                "--spiffe-id",
                "spiffe://example.org/b",
                "--selector",
                "uid:1"
            ]
        )
        .status
        .success()
    );
    ok(
        dir,
        &["entries", "remove", "--spiffe-id", "spiffe://example.org/a"],
    );
    assert_eq!(ok(dir, &["entries", "list"]), "");

    let pem = ok(dir, &["svid", "--spiffe-id", "spiffe://example.org/a"]);
    assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("BEGIN PRIVATE KEY"));
    assert!(
        !warden(dir, &["svid", "--spiffe-id", "spiffe://other.org/a"])
            .status
            .success()
    );
    let jwt = ok(
        dir,
        &[
            "svid",
            "--spiffe-id",
            "spiffe://example.org/a",
            "--jwt",
            "--audience",
            "gw",
        ],
    );
    assert_eq!(jwt.trim().split('.').count(), 3);
    let bundle: serde_json::Value = serde_json::from_str(&ok(dir, &["bundle"])).unwrap();
    assert!(bundle["spiffe_sequence"].as_u64().is_some());

    let root = ok(
        dir,
        &[
            "delegate",
            "--to",
            "spiffe://example.org/a",
            "--tools",
            "fs/read,git/log",
            "--ttl",
            "1h",
        ],
    );
    std::fs::write(dir.join("a.tok"), &root).unwrap();
    let to_b = ok(
        dir,
        &[
            "delegate",
            "--token",
            dir.join("a.tok").to_str().unwrap(),
            "--to",
            "spiffe://example.org/b",
            "--tools",
            "fs/read",
            "--arg",
            "path=/tmp/*",
            "--ttl",
            "10m",
        ],
    );
    assert!(to_b.trim().len() > root.trim().len());
}
