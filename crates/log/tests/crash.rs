//! Crash test: a child process appends from several threads and prints each acknowledgement;
//! the parent SIGKILLs it at a random moment, reopens the log and checks that every
//! acknowledged record is there, byte for byte, and that the whole log verifies. 50 trials on
//! one growing log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout
)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use warden_log::{Log, LogOptions, NoteSigner, verify_dir};

const CHILD_ENV: &str = "WARDEN_LOG_CRASH_CHILD_DIR";

fn signer() -> NoteSigner {
    NoteSigner::new("warden.test/crash", SigningKey::from_bytes(&[7; 32])).unwrap()
}

/// The child's body; a no-op unless the parent set the environment variable.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let trial = std::env::var("WARDEN_LOG_CRASH_TRIAL").unwrap();
    let log = if dir.join("segments").exists() {
        Log::open(dir, signer(), LogOptions::default()).unwrap()
    } else {
        Log::create(dir, signer(), LogOptions::default()).unwrap()
    };
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let w = log.writer();
            let out = out.clone();
            let trial = trial.clone();
            std::thread::spawn(move || {
                for seq in 0.. {
                    let body = format!(
                        "{{\"id\":\"{trial}-{t}-{seq}\",\"pad\":\"{}\"}}",
                        "x".repeat(seq % 200)
                    );
                    let a = w.append(body.clone().into_bytes()).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ACK {} {body}", a.index).unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills_with_acks = 0;
    for trial in 0..50 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(5 + rng % 60);
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .env("WARDEN_LOG_CRASH_TRIAL", trial.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let (i, body) = rest.split_once(' ').unwrap();
                    lines.push((i.parse::<u64>().unwrap(), body.to_owned()));
                }
            }
            lines
        });
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        if !lines.is_empty() {
            kills_with_acks += 1;
        }
        for (i, body) in lines {
            assert!(
                acked.insert(i, body).is_none(),
                "index {i} acknowledged twice"
            );
        }
        // Every acknowledged record survives, byte for byte.
        let log = Log::open(
            &dir,
            signer(),
            LogOptions {
                publish: true,
                ..LogOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("trial {trial}: reopening failed: {e}"));
        let records: BTreeMap<u64, Vec<u8>> = log.records(0).unwrap().into_iter().collect();
        for (i, body) in &acked {
            assert_eq!(
                records.get(i).map(Vec::as_slice),
                Some(body.as_bytes()),
                "trial {trial}: acknowledged record {i} lost"
            );
        }
        log.close().unwrap();
    }
    assert!(
        kills_with_acks >= 25,
        "only {kills_with_acks} trials got acknowledgements before the kill"
    );
    let signer = signer();
    let report = verify_dir(&dir, &signer.verifier(), &mut |_, _| {}).unwrap();
    assert!(report.size >= acked.len() as u64);
    println!(
        "crash test: {} acknowledged of {} records over 50 kills",
        acked.len(),
        report.size
    );
}
