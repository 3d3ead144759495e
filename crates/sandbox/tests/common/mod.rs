//! Shared harness of the escape suite: the probe binary, sandbox runs and controls.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code,
    missing_docs
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use warden_sandbox::egress::{EgressEvent, Resolve};
use warden_sandbox::{HelperBinary, Options, Outcome, Profile, Sandbox};

/// The probe's source, compiled once per content into the target's temp dir.
const PROBE_SOURCE: &str = include_str!("../probe.c");

/// Directory holding the compiled probe (granted read-only to every sandbox that runs it).
pub fn probe_dir() -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in PROBE_SOURCE.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("escape-probe-{h:016x}"))
}

pub fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let dir = probe_dir();
        let bin = dir.join("probe");
        if bin.exists() {
            return bin;
        }
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join(format!("probe-{}.c", std::process::id()));
        std::fs::write(&src, PROBE_SOURCE).unwrap();
        let tmp = dir.join(format!("probe-{}", std::process::id()));
        let status = Command::new("gcc")
            .args(["-O1", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("gcc is needed to build the escape probe");
        assert!(status.success(), "cannot compile the escape probe");
        std::fs::rename(&tmp, &bin).unwrap();
        let _ = std::fs::remove_file(&src);
        bin
    })
}

pub fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden-sandbox-helper"))
}

#[derive(Clone, Default)]
pub struct Buf(pub Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[derive(Debug)]
pub struct Run {
    pub outcome: Outcome,
    pub stdout: String,
    pub stdout_len: usize,
    pub stderr: String,
    pub events: Vec<EgressEvent>,
}

pub fn options() -> Options {
    Options {
        helper: HelperBinary::Path(helper()),
        ..Options::default()
    }
}

/// Runs `argv` in a sandbox with `profile` (plus the probe's directory, read-only).
pub fn run_with(mut profile: Profile, mut opts: Options, argv: &[&str]) -> Run {
    profile.read_only.push(probe_dir());
    let _ = probe();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    opts.on_egress = Arc::new(move |e| sink.lock().unwrap().push(e));
    let sandbox = Sandbox::new(profile, opts);
    let (out, err) = (Buf::default(), Buf::default());
    let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
    let outcome = sandbox
        .run(
            &argv,
            Stdio::null(),
            Box::new(out.clone()),
            Box::new(err.clone()),
        )
        .expect("sandbox must start");
    let events = events.lock().unwrap().clone();
    Run {
        outcome,
        stdout: out.text(),
        stdout_len: out.len(),
        stderr: err.text(),
        events,
    }
}

pub fn run(profile: Profile, argv: &[&str]) -> Run {
    run_with(profile, options(), argv)
}

/// Runs the probe with `args` inside a sandbox.
pub fn inside(profile: Profile, args: &[&str]) -> Run {
    let p = probe().to_str().unwrap().to_owned();
    let mut argv = vec![p.as_str()];
    argv.extend_from_slice(args);
    run(profile, &argv)
}

/// Runs the probe with `args` outside any sandbox (the control).
pub fn outside(args: &[&str]) -> String {
    let out = Command::new(probe())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
pub fn assert_denied(run: &Run, what: &str) {
    assert!(
        run.stdout.starts_with("DENIED"),
        "{what}: must fail inside the sandbox, got {:?} / stderr {:?} / {:?}",
        run.stdout,
        run.stderr,
        run.outcome
    );
}

#[track_caller]
pub fn assert_ok_inside(run: &Run, what: &str) {
    assert!(
        run.stdout.starts_with("OK"),
        "{what}: the control must succeed inside the sandbox, got {:?} / stderr {:?} / {:?}",
        run.stdout,
        run.stderr,
        run.outcome
    );
}

#[track_caller]
pub fn assert_ok_outside(out: &str, what: &str) {
    assert!(
        out.starts_with("OK"),
        "{what}: the control must succeed outside, got {out:?}"
    );
}

/// A world-traversable temporary directory (the sandbox uid must reach granted paths' parents
/// only through the id-mapped mount, but controls running as that uid need to traverse it).
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    dir
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A resolver with fixed answers for `*.test` names and the system's for the rest.
pub struct TestResolver(pub Vec<(&'static str, std::net::IpAddr)>);

impl Resolve for TestResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<std::net::IpAddr>> {
        let fixed: Vec<_> = self
            .0
            .iter()
            .filter(|(h, _)| *h == host)
            .map(|(_, ip)| *ip)
            .collect();
        if !fixed.is_empty() {
            return Ok(fixed);
        }
        warden_sandbox::egress::SystemResolver.resolve(host, port)
    }
}
