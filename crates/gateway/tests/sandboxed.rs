//! Upstream stdio servers started inside a sandbox profile (`[servers.NAME] sandbox = "PROFILE"`),
//! end to end through the real `@modelcontextprotocol/server-filesystem`.
//!
//! The sandbox re-executes the running binary as its helper, so this test binary has its own
//! `main` (`harness = false`) that calls `warden_sandbox::run_helper_if_requested` first, exactly
//! as `warden`'s does. It speaks enough of libtest's command line for `cargo test` and
//! `cargo nextest` (`--list --format terse`, `--exact NAME`, `--ignored`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use common::{Agent, TestLog, authority, error_code, npm_bin, peers, text};
use serde_json::{Value, json};
use warden_gateway::GatewayConfig;

/// Every test of this file, by name.
const TESTS: &[(&str, fn())] = &[
    (
        "sandboxed_server_lists_reads_and_writes_its_grant",
        sandboxed_server_lists_reads_and_writes_its_grant,
    ),
    (
        "allowed_write_outside_the_grant_fails_in_the_sandbox",
        allowed_write_outside_the_grant_fails_in_the_sandbox,
    ),
    (
        "unknown_profile_refuses_to_start",
        unknown_profile_refuses_to_start,
    ),
];

fn main() -> ExitCode {
    // Must stay first: when re-executed as the sandbox helper, this never returns.
    warden_sandbox::run_helper_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    // libtest flags that take a value as the next argument.
    let takes_value = [
        "--test-threads",
        "--skip",
        "--format",
        "--color",
        "-Z",
        "--logfile",
    ];
    let mut filters = Vec::new();
    let mut skip_next = false;
    for a in &args {
        if skip_next {
            skip_next = false;
        } else if takes_value.contains(&a.as_str()) {
            skip_next = true;
        } else if !a.starts_with('-') {
            filters.push(a.as_str());
        }
    }
    let selected: Vec<&(&str, fn())> = TESTS
        .iter()
        .filter(|(name, _)| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if flag("--exact") {
                        name == f
                    } else {
                        name.contains(f)
                    }
                })
        })
        .collect();
    if flag("--list") {
        // No test here is ignored.
        if !flag("--ignored") {
            for (name, _) in &selected {
                println!("{name}: test");
            }
        }
        return ExitCode::SUCCESS;
    }
    if flag("--ignored") {
        return ExitCode::SUCCESS;
    }
    let mut failed = Vec::new();
    for (name, test) in &selected {
        println!("test {name} ...");
        if std::panic::catch_unwind(test).is_err() {
            println!("test {name} ... FAILED");
            failed.push(*name);
        } else {
            println!("test {name} ... ok");
        }
    }
    println!(
        "test result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn block_on(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// A scratch tree outside `/tmp` (the sandbox has a private `/tmp`, so a path under the host's
/// `/tmp` would not even name the host's file inside): `root/work` is granted read-write, `root`
/// itself is not.
struct Fixture {
    root: tempfile::TempDir,
    work: PathBuf,
    log: Arc<TestLog>,
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let work = root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let work = work.canonicalize().unwrap();
    Fixture {
        root,
        work,
        log: TestLog::new(),
    }
}

impl Fixture {
    fn root(&self) -> PathBuf {
        self.root.path().canonicalize().unwrap()
    }
}

/// The manifest: the server serves `served`, the policy allows `write_file` anywhere, and —
/// with `profile` set — the sandbox grants read-write only `root/work` and read-only the peers.
fn manifest(f: &Fixture, served: &Path, profile: Option<&str>) -> String {
    let sandbox = profile.map_or(String::new(), |p| format!("sandbox = \"{p}\""));
    format!(
        r#"
        trust_domain = "example.org"
        [agents.tester]
        id = "spiffe://example.org/agent/tester"

        [gateway]
        pins = "{pins}"
        [gateway.eras]
        fs = "legacy"

        [servers.fs]
        command = "{cmd}"
        args = ["{served}"]
        {sandbox}

        [sandbox.profiles.fs]
        ro = ["{peers}"]
        rw = ["{work}"]
        timeout_secs = 120

        [[allow]]
        id = "fs-anything"
        agents = ["tester"]
        tools = ["fs/list_directory", "fs/read_text_file", "fs/write_file"]
        "#,
        pins = f.root().join("pins.json").display(),
        cmd = npm_bin("mcp-server-filesystem"),
        served = served.display(),
        peers = peers().canonicalize().unwrap().display(),
        work = f.work.display(),
    )
}

async fn agent(
    f: &Fixture,
    served: &Path,
    profile: Option<&str>,
) -> (Agent, Arc<warden_gateway::Gateway>) {
    let text = manifest(f, served, profile);
    let cfg = GatewayConfig::parse(&text).unwrap();
    let (mut a, gw) = Agent::start(
        cfg,
        authority(&text, &f.log),
        "spiffe://example.org/agent/tester",
    )
    .await;
    let init = a.initialize().await;
    assert!(init.get("result").is_some(), "{init}");
    (a, gw)
}

fn is_tool_error(r: &Value) -> bool {
    r.get("error").is_some() || r["result"]["isError"] == json!(true)
}

fn write(path: &Path) -> Value {
    json!({"path": path.display().to_string(), "content": "written through the gateway\n"})
}

/// Control: inside its grant the sandboxed server lists, reads and writes, and the written file
/// is on the host.
fn sandboxed_server_lists_reads_and_writes_its_grant() {
    block_on(async {
        let f = fixture();
        std::fs::write(f.work.join("notes.txt"), "hello from the host\n").unwrap();
        let (mut a, _gw) = agent(&f, &f.work, Some("fs")).await;

        let listed = a
            .call(
                "fs/list_directory",
                json!({"path": f.work.display().to_string()}),
            )
            .await;
        assert!(!is_tool_error(&listed), "{listed}");
        assert!(text(&listed).contains("notes.txt"), "{listed}");

        let read = a
            .call(
                "fs/read_text_file",
                json!({"path": f.work.join("notes.txt").display().to_string()}),
            )
            .await;
        assert!(!is_tool_error(&read), "{read}");
        assert!(text(&read).contains("hello from the host"), "{read}");

        let inside = f.work.join("made-inside.txt");
        let wrote = a.call("fs/write_file", write(&inside)).await;
        assert!(!is_tool_error(&wrote), "{wrote}");
        assert_eq!(
            std::fs::read_to_string(&inside).unwrap(),
            "written through the gateway\n"
        );
    });
}

/// Negative: the policy allows the write and the server's own checks allow it (it serves the
/// whole scratch root), but the path is
/// outside the sandbox's read-write grant: the write fails inside the sandbox and nothing
/// appears on the host. The same call without the sandbox succeeds, so this fails if the
/// sandbox is not applied.
fn allowed_write_outside_the_grant_fails_in_the_sandbox() {
    block_on(async {
        let f = fixture();
        let outside = f.root().join("outside.txt");

        let (mut a, gw) = agent(&f, &f.root(), Some("fs")).await;
        let r = a.call("fs/write_file", write(&outside)).await;
        assert_ne!(
            error_code(&r),
            Some(warden_gateway::jsonrpc::DENIED),
            "the policy must allow the call: {r}"
        );
        assert!(is_tool_error(&r), "write outside the grant succeeded: {r}");
        assert!(!outside.exists(), "a file appeared on the host");
        drop(a);
        drop(gw);

        // Control: the same server, policy and call, without the sandbox.
        let (mut a, _gw) = agent(&f, &f.root(), None).await;
        let r = a.call("fs/write_file", write(&outside)).await;
        assert!(!is_tool_error(&r), "{r}");
        assert!(outside.exists());
    });
}

/// A server naming a profile that does not exist is a configuration error: the gateway never
/// starts it, sandboxed or not.
fn unknown_profile_refuses_to_start() {
    let f = fixture();
    let text = manifest(&f, &f.work, Some("no-such-profile"));
    let err = GatewayConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("`no-such-profile`"), "{err}");
    // Control: the defined profile parses.
    GatewayConfig::parse(&manifest(&f, &f.work, Some("fs"))).unwrap();
}
