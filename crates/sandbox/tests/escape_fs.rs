//! Escape suite, filesystem, processes and syscalls: each attempt must fail inside the sandbox,
//! and each has a control (granted, or outside) that must succeed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;
use warden_sandbox::{Ending, Profile};

fn rw(dir: &std::path::Path) -> Profile {
    Profile {
        read_write: vec![dir.to_owned()],
        ..Profile::default()
    }
}

#[test]
fn writes_outside_grants_fail_and_granted_writes_succeed() {
    let parent = tempdir();
    let granted = parent.path().join("granted");
    let sibling = parent.path().join("sibling");
    std::fs::create_dir(&granted).unwrap();
    std::fs::create_dir(&sibling).unwrap();
    let home =
        tempfile::tempdir_in(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).unwrap();
    let host_tmp = tempdir();
    let p = |d: &std::path::Path, f: &str| d.join(f).to_str().unwrap().to_owned();
    let targets = [
        ("/etc", "/etc/warden-probe".to_owned()),
        ("$HOME", p(home.path(), "x")),
        ("sibling of the granted dir", p(&sibling, "x")),
        ("ungranted host /tmp", p(host_tmp.path(), "x")),
        ("/usr", "/usr/warden-probe".to_owned()),
        ("root of the sandbox", "/warden-probe".to_owned()),
    ];
    for (what, path) in &targets {
        assert_denied(&inside(rw(&granted), &["write", path]), what);
        if *what != "/etc" && *what != "/usr" && *what != "root of the sandbox" {
            assert_ok_outside(&outside(&["write", path]), what);
        }
    }
    let r = inside(rw(&granted), &["write", &p(&granted, "x")]);
    assert_ok_inside(&r, "write to the granted dir");
    // Files the sandbox writes belong, on the host, to the granted directory's owner.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(granted.join("x")).unwrap();
    assert_eq!(meta.uid(), std::fs::metadata(&granted).unwrap().uid());
    // A read-only grant is readable but not writable.
    let ro = Profile {
        read_only: vec![granted.clone()],
        ..Profile::default()
    };
    assert_denied(
        &inside(ro.clone(), &["write", &p(&granted, "y")]),
        "write to a read-only grant",
    );
    assert_ok_inside(
        &inside(ro, &["read", &p(&granted, "x")]),
        "read a read-only grant",
    );
}

#[test]
fn secrets_cannot_be_read_directly_or_through_links() {
    let home =
        tempfile::tempdir_in(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).unwrap();
    let secret = home.path().join("id_ed25519");
    std::fs::write(&secret, "secret key").unwrap();
    set_mode(&secret, 0o600);
    let secret = secret.to_str().unwrap();
    for path in ["/etc/shadow", secret, "/root/.ssh/id_ed25519"] {
        assert_denied(&inside(Profile::default(), &["read", path]), path);
    }
    assert_ok_outside(&outside(&["read", "/etc/shadow"]), "/etc/shadow");
    assert_ok_outside(&outside(&["read", secret]), "secret in $HOME");

    let granted = tempdir();
    let g = |f: &str| granted.path().join(f).to_str().unwrap().to_owned();
    // A symlink made inside, and one planted by the host, pointing at secrets.
    assert_denied(
        &inside(
            rw(granted.path()),
            &["symlink-read", "/etc/shadow", &g("l1")],
        ),
        "symlink to /etc/shadow",
    );
    std::os::unix::fs::symlink(secret, granted.path().join("planted")).unwrap();
    assert_denied(
        &inside(rw(granted.path()), &["read", &g("planted")]),
        "planted symlink to a secret",
    );
    std::fs::write(granted.path().join("own"), "mine").unwrap();
    assert_ok_inside(
        &inside(rw(granted.path()), &["symlink-read", &g("own"), &g("l2")]),
        "symlink inside the grant",
    );
    // Hard links out of the sandbox's files into the grant cross mounts.
    for target in ["/etc/passwd", "/usr/bin/sh", "/etc/shadow"] {
        assert_denied(
            &inside(rw(granted.path()), &["hardlink", target, &g("h")]),
            target,
        );
    }
    let control = tempdir();
    let ctl = |f: &str| control.path().join(f).to_str().unwrap().to_owned();
    std::fs::write(control.path().join("s"), "x").unwrap();
    assert_ok_outside(
        &outside(&["hardlink", &ctl("s"), &ctl("h")]),
        "hard link outside",
    );
}

#[test]
fn device_nodes_cannot_be_made_or_opened() {
    let granted = tempdir();
    let node = granted.path().join("node").to_str().unwrap().to_owned();
    assert_denied(&inside(rw(granted.path()), &["mknod", &node]), "mknod");
    let control = tempdir();
    let planted = control.path().join("null").to_str().unwrap().to_owned();
    assert_ok_outside(&outside(&["mknod", &planted]), "mknod outside");
    // A device node planted in a granted directory is inert (nodev).
    let ro = Profile {
        read_only: vec![control.path().to_owned()],
        ..Profile::default()
    };
    assert_denied(&inside(ro, &["openrw", &planted]), "planted device node");
    assert_ok_outside(
        &outside(&["openrw", &planted]),
        "planted device node outside",
    );
    for dev in [
        "/dev/kvm",
        "/dev/vsock",
        "/dev/mem",
        "/dev/tty",
        "/dev/ptmx",
    ] {
        assert_denied(&inside(Profile::default(), &["openrw", dev]), dev);
        if std::path::Path::new(dev).exists() && dev != "/dev/tty" {
            assert_ok_outside(&outside(&["openrw", dev]), dev);
        }
    }
    assert_ok_inside(
        &inside(Profile::default(), &["openrw", "/dev/null"]),
        "/dev/null",
    );
}

#[test]
fn kernel_interfaces_cannot_be_written() {
    let cgroup_procs = "/sys/fs/cgroup/pids/cgroup.procs";
    for path in [
        "/proc/sys/kernel/core_pattern",
        "/proc/sysrq-trigger",
        cgroup_procs,
        "/sys/kernel/uevent_helper",
    ] {
        assert_denied(&inside(Profile::default(), &["openw", path]), path);
        if std::path::Path::new(path).exists() {
            assert_ok_outside(&outside(&["openw", path]), path);
        }
    }
}

#[test]
fn the_supervisor_cannot_be_read_traced_or_killed() {
    let me = std::process::id().to_string();
    for path in [
        "/proc/1/environ",
        "/proc/1/mem",
        &format!("/proc/{me}/environ"),
    ] {
        assert_denied(&inside(Profile::default(), &["read", path]), path);
    }
    assert_ok_inside(
        &inside(Profile::default(), &["read", "/proc/self/status"]),
        "own /proc",
    );
    assert_ok_outside(
        &outside(&["read", &format!("/proc/{me}/environ")]),
        "caller's environ",
    );
    for action in ["ptrace-child", "vmread-child"] {
        assert_denied(&inside(Profile::default(), &[action]), action);
        assert_ok_outside(&outside(&[action]), action);
    }
    assert_denied(
        &inside(Profile::default(), &["kill", &me, "0"]),
        "signal the caller",
    );
    assert_ok_outside(&outside(&["kill", &me, "0"]), "signal the caller");
    let probe = probe().to_str().unwrap().to_owned();
    let script = format!("{probe} kill 1 9; {probe} kill 1 15; echo alive");
    let r = run(Profile::default(), &["/bin/sh", "-c", &script]);
    assert_eq!(r.outcome.ending, Ending::Exited { code: 0 });
    assert!(
        r.stdout.starts_with("DENIED") && r.stdout.ends_with("alive\n"),
        "{:?}",
        r.stdout
    );
}

#[test]
fn terminal_injection_is_denied_by_the_filter() {
    for action in ["tiocsti", "tioclinux"] {
        let r = inside(Profile::default(), &[action]);
        assert_eq!(r.stdout.trim(), "DENIED EPERM", "{action}");
        // Outside, the call reaches the tty layer (no tty here: ENOTTY), so EPERM is the filter.
        assert!(!outside(&[action]).contains("EPERM"), "{action}");
    }
}

#[test]
fn inherited_descriptors_and_environment_do_not_leak() {
    let dir = tempdir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "token").unwrap();
    // A caller that leaks descriptor 7 (not close-on-exec) into the helper.
    let wrapper = dir.path().join("leaky-helper");
    let text = format!(
        "#!/bin/sh\nexec 7<{}\nexec {} \"$@\"\n",
        secret.display(),
        helper().display()
    );
    std::fs::write(&wrapper, text).unwrap();
    set_mode(&wrapper, 0o755);
    let mut opts = options();
    opts.helper = warden_sandbox::HelperBinary::Path(wrapper);
    let r = run_with(
        Profile::default(),
        opts,
        &[probe().to_str().unwrap(), "fd", "7"],
    );
    assert_denied(&r, "inherited descriptor");
    let out = Command::new("/bin/sh")
        .args([
            "-c",
            &format!(
                "exec 7<{}; exec {} fd 7",
                secret.display(),
                probe().display()
            ),
        ])
        .output()
        .unwrap();
    assert_ok_outside(
        &String::from_utf8_lossy(&out.stdout),
        "inherited descriptor",
    );

    // Cargo sets CARGO_MANIFEST_DIR for tests: it must not reach the sandbox unless passed.
    assert_denied(
        &inside(Profile::default(), &["env", "CARGO_MANIFEST_DIR"]),
        "environment",
    );
    let pass = Profile {
        env: vec!["CARGO_MANIFEST_DIR".into()],
        ..Profile::default()
    };
    assert_ok_inside(
        &inside(pass, &["env", "CARGO_MANIFEST_DIR"]),
        "passed-through variable",
    );
}

#[test]
fn setuid_binaries_gain_nothing() {
    let dir = tempdir();
    let suid = dir.path().join("suid-probe");
    std::fs::copy(probe(), &suid).unwrap();
    set_mode(&suid, 0o4755);
    let ro = Profile {
        read_only: vec![dir.path().to_owned()],
        ..Profile::default()
    };
    let r = run(ro, &[suid.to_str().unwrap(), "euid"]);
    assert_denied(&r, "setuid root binary");
    // Control: the same binary run by the sandbox uid outside does become root.
    let out = Command::new(&suid)
        .arg("euid")
        .uid(warden_sandbox::DEFAULT_SANDBOX_ID)
        .output()
        .unwrap();
    assert_ok_outside(&String::from_utf8_lossy(&out.stdout), "setuid root binary");
}

#[test]
fn set_id_files_cannot_be_planted_in_a_grant() {
    // A root-owned grant is id-mapped: what the sandbox creates there is root's on the host, so a
    // setuid bit would hand a root program to every host user.
    let granted = tempdir();
    let g = |f: &str| granted.path().join(f).to_str().unwrap().to_owned();
    std::fs::write(granted.path().join("bin"), "#!/bin/sh\n").unwrap();
    for (action, mode) in [
        ("chmod", "4755"),
        ("chmod", "2755"),
        ("create-mode", "4755"),
    ] {
        let target = if action == "chmod" {
            g("bin")
        } else {
            g(&format!("new{mode}"))
        };
        assert_denied(
            &inside(rw(granted.path()), &[action, &target, mode]),
            &format!("{action} {mode}"),
        );
    }
    assert_ok_inside(
        &inside(rw(granted.path()), &["chmod", &g("bin"), "0755"]),
        "plain chmod",
    );
    assert_ok_inside(
        &inside(rw(granted.path()), &["create-mode", &g("plain"), "0644"]),
        "plain create",
    );
    assert_ok_outside(
        &outside(&["chmod", &g("bin"), "4755"]),
        "setuid chmod outside",
    );
}

#[test]
fn nested_namespaces_mounts_and_dangerous_syscalls_are_denied() {
    let cases: &[&[&str]] = &[
        &["unshare"],
        &["mount", "/tmp"],
        &["chroot", "/tmp"],
        &["clone3"],
        &["clone-ns"],
        &["io_uring"],
        &["bpf"],
        &["userfaultfd"],
        &["perf"],
        &["keyctl"],
        &["handle", "/etc/hostname"],
    ];
    let probe = probe().to_str().unwrap().to_owned();
    let script: String = cases
        .iter()
        .map(|c| format!("{probe} {}\n", c.join(" ")))
        .collect();
    let r = run(Profile::default(), &["/bin/sh", "-c", &script]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), cases.len(), "{:?} {:?}", r.stdout, r.stderr);
    for (case, line) in cases.iter().zip(&lines) {
        assert!(line.starts_with("DENIED"), "{case:?} inside: {line}");
        let control = if case[0] == "mount" {
            let out = Command::new("unshare")
                .args(["-m", &probe, "mount", "/tmp"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            outside(case)
        };
        assert_ok_outside(&control, &case.join(" "));
    }
    // clone3 is refused with ENOSYS so that libcs fall back to clone.
    assert!(lines[3].contains("ENOSYS"), "{}", lines[3]);
}

#[test]
fn spawn_pipes_stdio_for_a_long_running_server() {
    use std::io::{BufRead, BufReader, Write as _};
    let sandbox = warden_sandbox::Sandbox::new(Profile::default(), options());
    let argv = vec!["/bin/cat".to_owned()];
    let stdio = [
        std::process::Stdio::piped(),
        std::process::Stdio::piped(),
        std::process::Stdio::null(),
    ];
    let mut child = sandbox.spawn(&argv, stdio).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for msg in ["{\"jsonrpc\":\"2.0\",\"id\":1}", "second"] {
        writeln!(stdin, "{msg}").unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), msg);
    }
    drop(stdin);
    let outcome = child.wait().unwrap();
    assert_eq!(outcome.ending, Ending::Exited { code: 0 });
}

#[test]
fn setup_errors_are_reported_not_run() {
    let sandbox = warden_sandbox::Sandbox::new(Profile::default(), options());
    let err = sandbox
        .run(
            &["/nonexistent/cmd".to_owned()],
            std::process::Stdio::null(),
            Box::new(std::io::sink()),
            Box::new(std::io::sink()),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot execute `/nonexistent/cmd`"),
        "{err}"
    );
    let missing = Profile {
        read_only: vec!["/nonexistent/grant".into()],
        ..Profile::default()
    };
    let err = warden_sandbox::Sandbox::new(missing, options())
        .run(
            &["/bin/true".to_owned()],
            std::process::Stdio::null(),
            Box::new(std::io::sink()),
            Box::new(std::io::sink()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/grant"), "{err}");
}

#[test]
fn an_unprivileged_caller_gets_the_same_sandbox() {
    // The helper started without root (through setpriv): no uid drop, no id-mapping; the user
    // namespace alone gives it what it needs to build the root.
    let dir = tempdir();
    let wrapper = dir.path().join("unprivileged-helper");
    let text = format!(
        "#!/bin/sh\nexec setpriv --reuid 64100 --regid 64100 --clear-groups --inh-caps=-all {} \"$@\"\n",
        helper().display()
    );
    std::fs::write(&wrapper, text).unwrap();
    set_mode(&wrapper, 0o755);
    let granted = dir.path().join("rw");
    std::fs::create_dir(&granted).unwrap();
    std::os::unix::fs::chown(&granted, Some(64100), Some(64100)).unwrap();
    let mut opts = options();
    opts.helper = warden_sandbox::HelperBinary::Path(wrapper);
    let probe = probe().to_str().unwrap().to_owned();
    let own = granted.join("x").to_str().unwrap().to_owned();
    let script = format!(
        "id -u; {probe} write {own}; {probe} write /etc/x; {probe} read /etc/shadow; {probe} unshare; {probe} tcp 127.0.0.1 22"
    );
    let r = run_with(rw(&granted), opts, &["/bin/sh", "-c", &script]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"64100"), "{r:?}");
    assert_eq!(lines.get(1), Some(&"OK"), "{r:?}");
    for line in lines.iter().skip(2) {
        assert!(line.starts_with("DENIED"), "{r:?}");
    }
    assert_eq!(lines.len(), 6, "{r:?}");
}
