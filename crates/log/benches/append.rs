//! Load generator: durable appends per second and acknowledgement latency with 1, 16 and 256
//! concurrent appenders, group commit against a one-fsync-per-record baseline in the same run,
//! and the storage overhead. `cargo bench -p warden-log --bench append` runs it in full (about
//! a minute); under `cargo test --benches` (or with `-- --test`) it runs each case for a few
//! milliseconds as a smoke test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use warden_log::{Log, LogOptions, NoteSigner};

fn record(t: usize, i: usize) -> Vec<u8> {
    // About the size of a deny decision record (no certificate).
    format!(
        concat!(
            "{{\"agent\":\"spiffe://warden.example/agent/research-{t}\",\"args_hash\":\"sha256:",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\",\"decision\":\"deny\",",
            "\"delegation\":[\"spiffe://warden.example/user/alice\"],\"id\":\"dec-{t}-{i}\",",
            "\"labels\":{{\"url\":[\"web:evil.example\"]}},\"reason\":\"untrusted data may not reach ",
            "a sink\",\"risk\":\"high\",\"rules\":[\"no-untrusted-to-sink\"],\"session\":\"s-{t}\",",
            "\"taint\":\"untrusted\",\"time\":\"2026-11-23T20:05:25.123Z\",\"tool\":\"git/commit\",",
            "\"type\":\"warden.decision\",\"v\":1}}"
        ),
        t = t,
        i = i
    )
    .into_bytes()
}

struct Outcome {
    records: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    storage_ratio: f64,
}

fn run(appenders: usize, max_batch: usize, duration: Duration) -> Outcome {
    let tmp = tempfile::tempdir().unwrap();
    let signer = NoteSigner::new("bench.example/log", SigningKey::from_bytes(&[1; 32])).unwrap();
    let options = LogOptions {
        max_batch,
        publish: false,
        ..LogOptions::default()
    };
    let log = Log::create(tmp.path(), signer, options).unwrap();
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..appenders)
        .map(|t| {
            let w = log.writer();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut bytes = 0usize;
                let mut i = 0;
                while Instant::now() < deadline {
                    let r = record(t, i);
                    bytes += r.len();
                    let t0 = Instant::now();
                    w.append(r).unwrap();
                    lat.push(t0.elapsed());
                    i += 1;
                }
                (lat, bytes)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut raw = 0usize;
    for h in handles {
        let (l, b) = h.join().unwrap();
        lat.extend(l);
        raw += b;
    }
    let elapsed = start.elapsed();
    log.close().unwrap();
    let stored: u64 = std::fs::read_dir(tmp.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Outcome {
        records: lat.len(),
        per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        storage_ratio: stored as f64 / raw.max(1) as f64,
    }
}

/// The device's own cost: append 512 bytes and `fdatasync`, `n` times.
fn raw_fdatasync(n: usize) -> (Duration, Duration) {
    use std::io::Write as _;
    let tmp = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(tmp.path().join("probe")).unwrap();
    let mut lat: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            f.write_all(&[7u8; 512]).unwrap();
            f.sync_data().unwrap();
            t0.elapsed()
        })
        .collect();
    lat.sort();
    (
        lat[lat.len() / 2],
        lat[(lat.len() * 99 / 100).min(lat.len() - 1)],
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (CI) does not: a smoke run then.
    let quick = std::env::args().all(|a| a != "--bench") || std::env::args().any(|a| a == "--test");
    let duration = if quick {
        Duration::from_millis(20)
    } else {
        Duration::from_secs(4)
    };
    let (p50, p99) = raw_fdatasync(if quick { 5 } else { 500 });
    println!(
        "raw write+fdatasync of 512 bytes: p50 {:.2} ms, p99 {:.2} ms\n",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!(
        "| appenders | mode | records | records/s | p50 ack | p99 ack | segment bytes / record bytes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for appenders in [1usize, 16, 256] {
        for (mode, max_batch) in [
            ("group commit (≤256/frame)", 256usize),
            ("baseline: 1 fsync per record", 1),
        ] {
            let o = run(appenders, max_batch, duration);
            println!(
                "| {appenders} | {mode} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.3} |",
                o.records,
                o.per_sec,
                o.p50.as_secs_f64() * 1e3,
                o.p99.as_secs_f64() * 1e3,
                o.storage_ratio
            );
        }
    }
}
