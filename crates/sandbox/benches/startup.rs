//! Start-up overhead of running `/bin/true`: a plain spawn, Warden's full sandbox, and bubblewrap
//! with a minimal root, measured in the same run.
//!
//! `warden_full_sandbox` measures warm starts (the zygote already running, as in a gateway that
//! keeps its `Sandbox`; stdio given as `SandboxStdio`); `warden_full_sandbox_std_stdio` is the
//! same with a `std::process::Stdio`; `warden_full_sandbox_cold` includes starting the zygote
//! each time.
//!
//! `cargo bench -p warden-sandbox --bench startup`; under `cargo test --benches` each runs once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use warden_sandbox::{HelperBinary, Options, Profile, Sandbox, SandboxStdio};

fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden-sandbox-helper"))
}

fn bwrap_args() -> Vec<String> {
    let mut args: Vec<String> = vec!["--ro-bind".into(), "/usr".into(), "/usr".into()];
    for link in ["/bin", "/sbin", "/lib", "/lib64"] {
        if let Ok(target) = std::fs::read_link(link) {
            args.extend([
                "--symlink".into(),
                target.to_string_lossy().into_owned(),
                link.into(),
            ]);
        }
    }
    args.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--unshare-all",
            "/bin/true",
        ]
        .map(String::from),
    );
    args
}

fn startup(c: &mut Criterion) {
    let mut group = c.benchmark_group("sandbox_startup_bin_true");
    group.sample_size(50);
    group.bench_function("plain_spawn", |b| {
        b.iter(|| {
            let status = Command::new("/bin/true")
                .stdin(Stdio::null())
                .status()
                .unwrap();
            black_box(status)
        });
    });
    let options = Options {
        helper: HelperBinary::Path(helper()),
        ..Options::default()
    };
    let argv = vec!["/bin/true".to_owned()];
    let run = |sandbox: &Sandbox| {
        let outcome = sandbox
            .run(
                &argv,
                SandboxStdio::Null,
                Box::new(std::io::sink()),
                Box::new(std::io::sink()),
            )
            .unwrap();
        assert_eq!(outcome.ending, warden_sandbox::Ending::Exited { code: 0 });
        outcome
    };
    // Warm: the zygote is started before the timed loop, as a gateway starts its `Sandbox` once.
    let sandbox = Sandbox::new(Profile::default(), options.clone());
    sandbox.prewarm().unwrap();
    group.bench_function("warden_full_sandbox", |b| {
        b.iter(|| black_box(run(&sandbox)));
    });
    // The same warm start given a `std::process::Stdio` (as the gateway passes today): std keeps
    // it opaque, so the caller forks once more per start to let std set it up.
    group.bench_function("warden_full_sandbox_std_stdio", |b| {
        b.iter(|| {
            let outcome = sandbox
                .run(
                    &argv,
                    Stdio::null(),
                    Box::new(std::io::sink()),
                    Box::new(std::io::sink()),
                )
                .unwrap();
            assert_eq!(outcome.ending, warden_sandbox::Ending::Exited { code: 0 });
            black_box(outcome)
        });
    });
    // Cold: a new `Sandbox` per start, so each start includes executing the zygote.
    group.bench_function("warden_full_sandbox_cold", |b| {
        b.iter(|| {
            let cold = Sandbox::new(Profile::default(), options.clone());
            black_box(run(&cold))
        });
    });
    if Path::new("/usr/bin/bwrap").exists() {
        let args = bwrap_args();
        group.bench_function("bwrap_minimal_root", |b| {
            b.iter(|| {
                let status = Command::new("/usr/bin/bwrap").args(&args).status().unwrap();
                assert!(status.success());
                black_box(status)
            });
        });
    } else {
        eprintln!("bwrap not installed: skipping the bubblewrap baseline");
    }
    group.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
