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

/// The memory and pids cgroup paths of `pid` (`/proc/PID/cgroup`; the unified one on v2).
fn cgroup_paths(pid: u32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let v2 = !text.lines().any(|l| l.contains(":memory:"));
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if v2 {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "memory" || c == "pids")
            };
            hit.then(|| path.to_owned())
        })
        .collect()
}

fn in_sandbox_cgroups(pid: u32) -> bool {
    let paths = cgroup_paths(pid);
    !paths.is_empty()
        && paths.iter().all(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("warden-"))
        })
}

#[test]
fn every_sandbox_process_starts_inside_its_cgroups() {
    // The helper joins its memory and pids cgroups between fork and exec (on v1 by moving its one
    // thread); the helper, the sandbox's PID 1 and the command must all be inside.
    let sandbox = warden_sandbox::Sandbox::new(Profile::default(), options());
    let argv = vec!["/bin/sleep".to_owned(), "30".to_owned()];
    let null = || std::process::Stdio::null();
    let mut child = sandbox.spawn(&argv, [null(), null(), null()]).unwrap();
    let helper = u32::try_from(child.id()).unwrap();
    let mut pids = vec![helper];
    let mut i = 0;
    while let Some(&pid) = pids.get(i) {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        pids.extend(
            children
                .split_whitespace()
                .map(|c| c.parse::<u32>().unwrap()),
        );
        i += 1;
    }
    let all: Vec<(u32, Vec<String>)> = pids.iter().map(|&p| (p, cgroup_paths(p))).collect();
    let inside = pids.iter().all(|&p| in_sandbox_cgroups(p));
    child.kill();
    let _ = child.wait();
    assert_eq!(pids.len(), 3, "helper, PID 1 and the command: {all:?}");
    assert!(inside, "a sandbox process outside its cgroups: {all:?}");
    // Control: the test process itself is not in a sandbox's cgroups, so the check can fail.
    assert!(!in_sandbox_cgroups(std::process::id()));
}

/// `se.slice` from a `/proc/PID/sched` text (the fair scheduler's slice, in nanoseconds).
fn slice(sched: &str) -> Option<u64> {
    sched.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "se.slice").then(|| v.trim().parse().ok())?
    })
}

#[test]
fn command_runs_with_the_default_scheduler_slice() {
    // The helper and PID 1 ask for a short slice for their set-up; the command must not keep it.
    let own = std::fs::read_to_string("/proc/self/sched").expect("/proc/self/sched is needed");
    let own = slice(&own).expect("se.slice in /proc/self/sched");
    let r = run(Profile::default(), &["/bin/cat", "/proc/self/sched"]);
    assert_eq!(r.outcome.ending, Ending::Exited { code: 0 }, "{r:?}");
    assert_eq!(slice(&r.stdout), Some(own), "{}", r.stdout);

    // Control: the helper itself runs with the short set-up slice, so the check can fail.
    let sandbox = warden_sandbox::Sandbox::new(Profile::default(), options());
    let argv = vec!["/bin/sleep".to_owned(), "30".to_owned()];
    let null = || std::process::Stdio::null();
    let mut child = sandbox.spawn(&argv, [null(), null(), null()]).unwrap();
    let helper = std::fs::read_to_string(format!("/proc/{}/sched", child.id())).unwrap();
    child.kill();
    let _ = child.wait();
    assert_ne!(slice(&helper), Some(own), "{helper}");
}
