//! Escape suite, resources: each bomb must be stopped by its limit, and each has a control (the
//! same action under a generous limit) that must succeed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use warden_sandbox::{Ending, Limits, Profile};

fn limited(f: impl FnOnce(&mut Limits)) -> Profile {
    let mut p = Profile::default();
    f(&mut p.limits);
    p
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    let r = inside(limited(|l| l.pids = 16), &["fork", "40"]);
    assert_denied(&r, "fork bomb");
    assert!(r.outcome.pids_limit_hit);
    let r = inside(limited(|l| l.pids = 128), &["fork", "40"]);
    assert_ok_inside(&r, "40 processes under a limit of 128");
}

#[test]
fn memory_bomb_is_killed_at_the_memory_limit() {
    let r = inside(limited(|l| l.memory_bytes = 64 << 20), &["alloc", "256"]);
    assert_eq!(r.outcome.ending, Ending::OutOfMemory, "{r:?}");
    let r = inside(limited(|l| l.memory_bytes = 256 << 20), &["alloc", "32"]);
    assert_ok_inside(&r, "32 MiB under a 256 MiB limit");
}

#[test]
fn disk_filling_stops_at_tmp_size_and_file_size() {
    let r = inside(
        limited(|l| l.tmp_bytes = 8 << 20),
        &["fill", "/tmp/f", "32"],
    );
    assert_eq!(r.stdout.trim(), "DENIED ENOSPC", "{r:?}");
    assert_ok_inside(
        &inside(limited(|l| l.tmp_bytes = 8 << 20), &["fill", "/tmp/f", "4"]),
        "4 MiB in /tmp",
    );
    let dir = tempdir();
    let file = dir.path().join("f").to_str().unwrap().to_owned();
    let mut p = limited(|l| l.file_size_bytes = 1 << 20);
    p.read_write.push(dir.path().to_owned());
    let r = inside(p.clone(), &["fill", &file, "4"]);
    assert_eq!(r.stdout.trim(), "DENIED EFBIG", "{r:?}");
    p.limits.file_size_bytes = 8 << 20;
    assert_ok_inside(
        &inside(p, &["fill", &file, "4"]),
        "4 MiB under an 8 MiB file limit",
    );
}

#[test]
fn descriptor_exhaustion_stops_at_the_limit() {
    assert_denied(
        &inside(limited(|l| l.open_files = 64), &["fds", "200"]),
        "descriptor exhaustion",
    );
    assert_ok_inside(
        &inside(limited(|l| l.open_files = 512), &["fds", "200"]),
        "200 descriptors",
    );
}

#[test]
fn cpu_past_the_timeout_is_killed() {
    let start = Instant::now();
    let r = inside(
        limited(|l| l.timeout = Duration::from_millis(500)),
        &["spin"],
    );
    assert_eq!(r.outcome.ending, Ending::TimedOut);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let r = inside(limited(|l| l.timeout = Duration::from_secs(20)), &["euid"]);
    assert_eq!(
        r.outcome.ending,
        Ending::Exited { code: 1 },
        "a quick command is not timed out"
    );
}

#[test]
fn output_flood_is_capped_and_drained() {
    let r = inside(limited(|l| l.output_bytes = 1000), &["flood", "4"]);
    assert_eq!(
        r.outcome.ending,
        Ending::Exited { code: 0 },
        "the flood was drained, not blocked"
    );
    assert!(r.outcome.stdout_truncated);
    assert_eq!(r.stdout_len, 1000);
    let r = inside(limited(|l| l.output_bytes = 8 << 20), &["flood", "4"]);
    assert!(!r.outcome.stdout_truncated);
    assert_eq!(r.stdout_len, 4 << 20);
}

fn heartbeat(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn daemonised_grandchild_does_not_survive() {
    let dir = tempdir();
    let beat = dir.path().join("beat");
    let mut p = Profile::default();
    p.read_write.push(dir.path().to_owned());
    let r = inside(p, &["daemon", beat.to_str().unwrap()]);
    assert_ok_inside(&r, "daemonising");
    std::thread::sleep(Duration::from_millis(200));
    let first = heartbeat(&beat);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        first,
        heartbeat(&beat),
        "the grandchild kept running after the sandbox ended"
    );

    // Control: outside, the same grandchild keeps beating (then we end it by its pid).
    let ctl = dir.path().join("ctl");
    assert_ok_outside(
        &outside(&["daemon", ctl.to_str().unwrap()]),
        "daemonising outside",
    );
    let mut first = String::new();
    for _ in 0..300 {
        first = heartbeat(&ctl);
        if !first.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut second = first.clone();
    for _ in 0..300 {
        second = heartbeat(&ctl);
        if second != first {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(pid) = second.split_whitespace().nth(1) {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
    assert_ne!(first, second, "the control grandchild should still run");
}
