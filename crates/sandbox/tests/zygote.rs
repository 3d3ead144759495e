//! The warm path: one zygote per `Sandbox` forks every sandbox's helper. Each sandbox must still
//! be a fresh one (nothing of one reaches the next), the zygote must never enter anything itself,
//! and the zygote and its sandboxes must not outlive the caller.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use warden_sandbox::{Ending, Profile, Sandbox};

fn status_field(pid: u32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_owned())
    })
}

fn parent_of(pid: u32) -> u32 {
    status_field(pid, "PPid").unwrap().parse().unwrap()
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect()
}

/// Gone: no such process, or only its zombie is left.
fn gone(pid: u32) -> bool {
    status_field(pid, "State").is_none_or(|s| s.starts_with('Z'))
}

fn namespaces(pid: u32) -> Vec<String> {
    // `pid_for_children`: unsharing the pid namespace applies to the helper's children.
    [
        "user",
        "mnt",
        "net",
        "pid",
        "pid_for_children",
        "ipc",
        "uts",
        "cgroup",
    ]
    .iter()
    .map(|ns| {
        let link = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        link.to_string_lossy().into_owned()
    })
    .collect()
}

fn cgroups(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
}

fn shell(script: &str) -> Vec<String> {
    vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
}

#[test]
fn consecutive_sandboxes_share_nothing_through_the_zygote() {
    let sandbox = Sandbox::new(Profile::default(), options());
    sandbox.prewarm().unwrap();
    let null = Stdio::null;
    let mut first = sandbox
        .spawn(
            &shell("echo secret > /tmp/mark && echo ready; exec sleep 30"),
            [null(), Stdio::piped(), null()],
        )
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let second = sandbox
        .spawn(&shell("exec sleep 30"), [null(), null(), null()])
        .unwrap();
    let (a, b) = (
        u32::try_from(first.id()).unwrap(),
        u32::try_from(second.id()).unwrap(),
    );
    // Both helpers are forks of one zygote (the warm path), which is the caller's child.
    let zygote = parent_of(a);
    assert_eq!(parent_of(b), zygote);
    assert_eq!(parent_of(zygote), std::process::id());
    // The zygote never entered a namespace or a cgroup and kept the caller's uid.
    let me = std::process::id();
    assert_eq!(namespaces(zygote), namespaces(me));
    assert_eq!(cgroups(zygote), cgroups(me));
    assert_eq!(status_field(zygote, "Uid"), status_field(me, "Uid"));
    // Control: each helper did enter its own namespaces and cgroups, so the checks can fail.
    let (na, nb) = (namespaces(a), namespaces(b));
    assert_ne!(na, namespaces(me));
    for (x, y) in na.iter().zip(&nb).filter(|(x, _)| !x.starts_with("pid:")) {
        assert_ne!(x, y, "two sandboxes share a namespace");
    }
    let (ca, cb) = (cgroups(a), cgroups(b));
    assert!(
        ca.contains("/warden-") && cb.contains("/warden-"),
        "{ca}\n{cb}"
    );
    assert_ne!(ca, cb, "two sandboxes share a cgroup");
    // The second sandbox's /tmp is its own: the first one's file is not there.
    let r = run(
        Profile::default(),
        &["/bin/sh", "-c", "cat /tmp/mark 2>/dev/null || echo absent"],
    );
    assert_eq!(r.stdout, "absent\n", "{r:?}");
    let out = Buf::default();
    let outcome = sandbox
        .run(
            &shell("cat /tmp/mark 2>/dev/null || echo absent"),
            Stdio::null(),
            Box::new(out.clone()),
            Box::new(std::io::sink()),
        )
        .unwrap();
    assert_eq!(outcome.ending, Ending::Exited { code: 0 });
    assert_eq!(out.text(), "absent\n");
    drop((first, second));
}

#[test]
fn a_dead_zygote_is_started_again() {
    let sandbox = Sandbox::new(Profile::default(), options());
    let null = Stdio::null;
    let child = sandbox
        .spawn(&shell("exec sleep 30"), [null(), null(), null()])
        .unwrap();
    let zygote = parent_of(u32::try_from(child.id()).unwrap());
    drop(child);
    std::process::Command::new("kill")
        .args(["-KILL", &zygote.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(zygote) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(gone(zygote));
    let child = sandbox
        .spawn(&shell("exec sleep 30"), [null(), null(), null()])
        .unwrap();
    let helper = u32::try_from(child.id()).unwrap();
    let again = parent_of(helper);
    assert_ne!(again, zygote);
    assert_eq!(parent_of(again), std::process::id());
    assert_ne!(namespaces(helper), namespaces(std::process::id()));
}

/// The namespaces process `pid` holds open through descriptors (`user:[…]`, `net:[…]`).
fn held_namespaces(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("user:[") || l.starts_with("net:["))
        .collect()
}

/// The spare user and network namespaces the zygote holds for the next start, once made.
fn spare_of(zygote: u32) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut held = held_namespaces(zygote);
        if held.len() == 2 || Instant::now() > deadline {
            held.sort();
            return held;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn user_and_net(pid: u32) -> Vec<String> {
    let mut ns: Vec<String> = namespaces(pid)
        .into_iter()
        .filter(|n| n.starts_with("user:") || n.starts_with("net:"))
        .collect();
    ns.sort();
    ns
}

#[test]
fn each_pre_made_namespace_serves_exactly_one_start() {
    let sandbox = Sandbox::new(Profile::default(), options());
    let null = Stdio::null;
    let first = sandbox
        .spawn(&shell("exec sleep 30"), [null(), null(), null()])
        .unwrap();
    let a = u32::try_from(first.id()).unwrap();
    let zygote = parent_of(a);
    // The zygote holds a pre-made user and network namespace for the next start only.
    let spare = spare_of(zygote);
    assert_eq!(spare.len(), 2, "no spare namespaces held: {spare:?}");
    assert_ne!(spare, user_and_net(a));
    assert_ne!(spare, user_and_net(std::process::id()));
    let second = sandbox
        .spawn(&shell("exec sleep 30"), [null(), null(), null()])
        .unwrap();
    let b = u32::try_from(second.id()).unwrap();
    // The next start entered exactly those, and the zygote let go of them.
    assert_eq!(user_and_net(b), spare);
    let next = spare_of(zygote);
    assert_eq!(next.len(), 2, "no new spare: {next:?}");
    assert!(
        next.iter().all(|n| !spare.contains(n)),
        "a spare was kept after use: {next:?} / {spare:?}"
    );
    // That the pre-made network namespace belongs to the sandbox's own user namespace is shown
    // by the egress tests: the helper can bring its loopback up for the relay only then.
    drop((first, second));
}

/// The zygote's child waiting for the next start (not `busy`, and still there a moment later,
/// unlike a namespace maker).
fn idle_helper_of(zygote: u32, busy: &[u32]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting = |kids: Vec<u32>| -> Vec<u32> {
            kids.into_iter().filter(|k| !busy.contains(k)).collect()
        };
        let now = waiting(children_of(zygote));
        std::thread::sleep(Duration::from_millis(20));
        let later = waiting(children_of(zygote));
        if let ([a], [b]) = (now.as_slice(), later.as_slice())
            && a == b
        {
            return *a;
        }
        assert!(Instant::now() < deadline, "no idle helper: {later:?}");
    }
}

#[test]
fn a_pre_forked_helper_waits_clean_and_serves_one_start() {
    let sandbox = Sandbox::new(Profile::default(), options());
    let null = Stdio::null;
    let first = sandbox
        .spawn(&shell("exec sleep 30"), [null(), null(), null()])
        .unwrap();
    let a = u32::try_from(first.id()).unwrap();
    let zygote = parent_of(a);
    let idle = idle_helper_of(zygote, &[a]);
    // Waiting, it is the zygote's clean fork: same namespaces and cgroups, nothing held.
    assert_eq!(namespaces(idle), namespaces(zygote));
    assert_eq!(cgroups(idle), cgroups(zygote));
    assert_eq!(held_namespaces(idle), Vec::<String>::new());
    let second = sandbox
        .spawn(&shell("exec sleep 30"), [null(), null(), null()])
        .unwrap();
    let b = u32::try_from(second.id()).unwrap();
    assert_eq!(b, idle, "the second start did not use the waiting helper");
    // Control: now it is a sandbox helper, in its own namespaces and cgroups.
    assert_ne!(namespaces(b), namespaces(zygote));
    assert_ne!(cgroups(b), cgroups(zygote));
    let next = idle_helper_of(zygote, &[a, b]);
    assert_ne!(next, b);
    drop((first, second));
}

/// The directory holding this process's pids cgroup (v1) or its cgroup (v2).
fn own_cgroup_dir() -> std::path::PathBuf {
    let own = cgroups(std::process::id());
    let (base, rel) = own
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.split(',').any(|c| c == "pids") {
                Some(("/sys/fs/cgroup/pids", path))
            } else if controllers.is_empty() {
                Some(("/sys/fs/cgroup", path))
            } else {
                None
            }
        })
        .unwrap();
    std::path::Path::new(base).join(rel.trim_start_matches('/'))
}

/// Names of this process's sandbox cgroups that exist now.
fn our_sandbox_cgroups() -> Vec<String> {
    let prefix = format!("warden-{}-", std::process::id());
    let mut names: Vec<String> = std::fs::read_dir(own_cgroup_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// The name of the sandbox cgroup process `pid` is in.
fn sandbox_cgroup_of(pid: u32) -> String {
    let text = cgroups(pid);
    let path = text.lines().find(|l| l.contains("/warden-")).unwrap();
    path.rsplit('/').next().unwrap().to_owned()
}

#[test]
fn spare_cgroups_serve_one_start_and_go_with_the_sandbox() {
    let sandbox = Sandbox::new(Profile::default(), options());
    let null = Stdio::null;
    let first = sandbox
        .spawn(&shell("exec sleep 30"), [null(), null(), null()])
        .unwrap();
    let a = sandbox_cgroup_of(u32::try_from(first.id()).unwrap());
    // Beside the first start's cgroup, one empty spare waits for the next start.
    let made = our_sandbox_cgroups();
    assert_eq!(made.len(), 2, "{made:?}");
    let spare = made.iter().find(|n| **n != a).unwrap().clone();
    let spare_procs = own_cgroup_dir().join(&spare).join("cgroup.procs");
    assert_eq!(std::fs::read_to_string(&spare_procs).unwrap(), "");
    let second = sandbox
        .spawn(&shell("exec sleep 30"), [null(), null(), null()])
        .unwrap();
    let b = sandbox_cgroup_of(u32::try_from(second.id()).unwrap());
    assert_eq!(b, spare, "the second start did not take the spare");
    assert_ne!(a, b);
    drop((first, second));
    // The children's cgroups went with them; the new spare goes with the sandbox.
    assert_eq!(our_sandbox_cgroups().len(), 1);
    drop(sandbox);
    assert_eq!(our_sandbox_cgroups(), Vec::<String>::new());
}

/// The caller of `the_zygote_and_its_sandboxes_die_with_the_caller`, run as a separate process.
#[test]
fn zygote_caller() {
    let Ok(file) = std::env::var("WARDEN_ZYGOTE_CALLER") else {
        return;
    };
    let sandbox = Sandbox::new(Profile::default(), options());
    let null = Stdio::null;
    let child = sandbox
        .spawn(&shell("exec sleep 60"), [null(), null(), null()])
        .unwrap();
    let tmp = format!("{file}.tmp");
    std::fs::write(&tmp, child.id().to_string()).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn the_zygote_and_its_sandboxes_die_with_the_caller() {
    let dir = tempdir();
    let file = dir.path().join("helper-pid");
    let mut caller = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "zygote_caller", "--nocapture"])
        .env("WARDEN_ZYGOTE_CALLER", &file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "the caller did not start a sandbox"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let helper: u32 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    let zygote = parent_of(helper);
    assert_eq!(parent_of(zygote), caller.id());
    let pid1 = children_of(helper);
    assert_eq!(pid1.len(), 1);
    let command = children_of(pid1[0]);
    assert_eq!(command.len(), 1);
    let idle = idle_helper_of(zygote, &[helper]);
    let all = [zygote, helper, pid1[0], command[0], idle];
    let sandbox_cgroups = cgroups(helper);
    // Control: everything is running before the caller dies.
    assert!(all.iter().all(|&p| !gone(p)));
    let caller_id = caller.id();
    caller.kill().unwrap();
    caller.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all.iter().all(|&p| gone(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left: Vec<u32> = all.iter().copied().filter(|&p| !gone(p)).collect();
    // The killed caller could not remove its cgroups: do it here (best effort).
    for line in sandbox_cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        if let (Some(c), Some(p)) = (controllers, path) {
            let base = if c.is_empty() {
                "/sys/fs/cgroup".to_owned()
            } else {
                format!("/sys/fs/cgroup/{c}")
            };
            if p.contains("/warden-") {
                let _ = std::fs::remove_dir(format!("{base}{p}"));
                // And the spare cgroups the caller had made for its next start.
                let parent = std::path::Path::new(&format!("{base}{p}")).with_file_name("");
                let prefix = format!("warden-{caller_id}-");
                for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                    if entry.file_name().to_string_lossy().starts_with(&prefix) {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            }
        }
    }
    assert!(left.is_empty(), "survived the caller: {left:?} of {all:?}");
}
