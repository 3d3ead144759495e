//! py-spiffe (PyPI `spiffe`, installed by `scripts/install-peers`) against our Workload API:
//! X.509 and JWT SVIDs, bundles, validation, and rotation seen by its `X509Source`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::oneshot;
use warden_identity::workload::{EntryStore, SharedAuthority, WorkloadApi};
use warden_identity::{RegistrationEntry, Selector};

fn peers_python() -> PathBuf {
    let dir = std::env::var_os("WARDEN_PEERS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers"),
        PathBuf::from,
    );
    let python = dir.join("venv/bin/python");
    assert!(
        python.exists(),
        "py-spiffe is not installed: {} is missing; run `bash scripts/install-peers`",
        python.display()
    );
    python
}

fn uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn py_spiffe_fetches_validates_and_sees_rotation() {
    let python = peers_python();
    let check = std::process::Command::new(&python)
        .args(["-c", "import spiffe"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "py-spiffe is not importable in {}: run `bash scripts/install-peers`",
        python.display()
    );
    // The interpreter's real executable is what /proc/<pid>/exe shows.
    let real = std::fs::canonicalize(&python).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let ca = SharedAuthority::new(common::ca("example.org"));
    let entries = EntryStore::new(vec![
        RegistrationEntry::new(
            common::id("spiffe://example.org/py"),
            vec![
                Selector::Uid(uid()),
                Selector::Path(real.to_str().unwrap().to_owned()),
            ],
            None,
        )
        .unwrap(),
    ]);
    let api = WorkloadApi::new(ca.clone(), entries);
    let (stop, stopped) = oneshot::channel::<()>();
    let path = socket.clone();
    tokio::spawn(async move {
        api.serve(&path, async {
            let _ = stopped.await;
        })
        .await
        .unwrap()
    });
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/py_spiffe_client.py");
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("py-spiffe client timed out")
            .unwrap()
            .expect("py-spiffe client exited early (see its stderr above)");
        serde_json::from_str(&line).unwrap()
    };

    let x509 = next().await;
    assert_eq!(x509["step"], "x509");
    assert_eq!(x509["spiffe_id"], "spiffe://example.org/py");
    assert_eq!(x509["authorities"], 1);

    let jwt = next().await;
    assert_eq!(jwt["spiffe_id"], "spiffe://example.org/py");
    assert_eq!(jwt["remote"], "spiffe://example.org/py");
    assert_ne!(jwt["wrong_audience"], "accepted");
    assert_ne!(jwt["tampered"], "accepted");

    assert_eq!(next().await["step"], "ready_for_rotation");
    ca.rotate().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    let rotation = next().await;
    assert_eq!(rotation["changed"], true, "{rotation}");
    assert_eq!(rotation["authorities"], 2);

    assert!(
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    let _ = stop.send(());
}
