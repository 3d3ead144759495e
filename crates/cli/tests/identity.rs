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
    let tok = dir.join("a.tok");
    let narrow = |svid_dir: Option<&std::path::Path>| {
        let mut args = vec![
            "delegate".to_owned(),
            "--token".to_owned(),
            tok.to_str().unwrap().to_owned(),
            "--to".to_owned(),
            "spiffe://example.org/b".to_owned(),
            "--tools".to_owned(),
            "fs/read".to_owned(),
            "--arg".to_owned(),
            "path=/tmp/*".to_owned(),
            "--ttl".to_owned(),
            "10m".to_owned(),
        ];
        if let Some(d) = svid_dir {
            for (flag, file) in [("--svid-cert", "svid.pem"), ("--svid-key", "svid.key")] {
                args.push(flag.to_owned());
                args.push(d.join(file).to_str().unwrap().to_owned());
            }
        }
        warden(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Narrowing needs the delegator's SVID: the holder's own (a), not anyone else's (b).
    assert!(!narrow(None).status.success());
    let svid = |who: &str| {
        let d = dir.join(who);
        ok(
            dir,
            &[
                "svid",
                "--spiffe-id",
                &format!("spiffe://example.org/{who}"),
                "--out-dir",
                d.to_str().unwrap(),
            ],
        );
        d
    };
    let (a_dir, b_dir) = (svid("a"), svid("b"));
    let refused = narrow(Some(&b_dir));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not by the delegator"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let out = narrow(Some(&a_dir));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let to_b = String::from_utf8(out.stdout).unwrap();
    assert!(to_b.trim().len() > root.trim().len());

    // The token verifies against the CA's bundle, held by b, signed by a's SVID.
    use warden_identity::delegation::{
        ArgValue, DelegationIssuer, DelegationVerifier, Presentation,
    };
    let key = std::fs::read_to_string(dir.join("delegation.key")).unwrap();
    let issuer = DelegationIssuer::from_private_key(&hex::decode(key.trim()).unwrap()).unwrap();
    let bundle = warden_identity::TrustBundle::from_jwks(
        warden_identity::TrustDomain::new("example.org").unwrap(),
        ok(dir, &["bundle"]).as_bytes(),
    )
    .unwrap();
    let verifier = DelegationVerifier::new(
        &issuer.public_key(),
        warden_identity::tls::TrustStore::new(bundle),
    );
    let b = warden_identity::SpiffeId::new("spiffe://example.org/b").unwrap();
    let args = [("path".to_owned(), ArgValue::Str("/tmp/x".into()))];
    let chain = verifier
        .authorize(
            &to_b,
            &Presentation {
                presenter: &b,
                tool: "fs/read",
                args: &args,
                now: std::time::SystemTime::now(),
            },
        )
        .unwrap();
    assert_eq!(chain.depth, 1);

    // `--delegation-key FILE`: created 0600 on first use, then reused (same key, same file).
    let key_file = dir.join("a-delegation.json");
    let keyed = || {
        let mut args = vec![
            "delegate",
            "--token",
            tok.to_str().unwrap(),
            "--to",
            "spiffe://example.org/b",
            "--delegation-key",
            key_file.to_str().unwrap(),
        ];
        let (cert, key) = (a_dir.join("svid.pem"), a_dir.join("svid.key"));
        let (cert, key) = (
            cert.to_str().unwrap().to_owned(),
            key.to_str().unwrap().to_owned(),
        );
        args.extend(["--svid-cert", &cert, "--svid-key", &key]);
        ok(dir, &args)
    };
    let first = keyed();
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved = std::fs::read_to_string(&key_file).unwrap();
    let second = keyed();
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), saved);
    let a_key = warden_identity::delegation::DelegationKey::load(&key_file).unwrap();
    for token in [&first, &second] {
        let decoded =
            warden_identity::delegation::DelegationToken::from_base64(token, &issuer.public_key())
                .unwrap();
        let signer = decoded.biscuit().block_external_key(1).unwrap().unwrap();
        assert_eq!(signer.to_bytes(), a_key.public_key());
        let call = Presentation {
            presenter: &b,
            tool: "fs/read",
            args: &[],
            now: std::time::SystemTime::now(),
        };
        verifier.authorize(token, &call).unwrap();
    }
    // A key file of another agent is not replaced.
    let b_tok = dir.join("b.tok");
    std::fs::write(&b_tok, &first).unwrap();
    let (cert, key) = (b_dir.join("svid.pem"), b_dir.join("svid.key"));
    let out = warden(
        dir,
        &[
            "delegate",
            "--token",
            b_tok.to_str().unwrap(),
            "--to",
            "spiffe://example.org/c",
            "--delegation-key",
            key_file.to_str().unwrap(),
            "--svid-cert",
            cert.to_str().unwrap(),
            "--svid-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to `spiffe://example.org/a`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), saved);
}
