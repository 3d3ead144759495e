//! `warden mcp` as an MCP client launches it: the real binary on pipes, the real
//! server-everything behind it. Standard input and output are read and written as non-blocking
//! pipes, or through tokio's blocking stdio when standard error shares standard output; both
//! ways must serve calls and refuse what the policy denies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn everything() -> PathBuf {
    let dir = std::env::var_os("WARDEN_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers"));
    let bin = dir.join("node/node_modules/.bin/mcp-server-everything");
    assert!(
        bin.exists(),
        "MCP peers missing: `{}` not found; run `bash scripts/install-peers` (or set WARDEN_PEERS_DIR)",
        bin.display()
    );
    bin
}

/// A fresh certificate signing key (64 hex digits, 0600), made by the test.
fn signing_key(dir: &std::path::Path) -> PathBuf {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut seed)
        .unwrap();
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("cert-signing.key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(hex.as_bytes()).unwrap();
    path
}

fn config(dir: &std::path::Path) -> PathBuf {
    let text = format!(
        r#"
        trust_domain = "example.org"
        [certificates]
        signing_key = "{key}"
        [agents.bench]
        id = "spiffe://example.org/agent/bench"
        [gateway]
        pins = "{d}/pins.json"
        log = "{d}/log"
        admin_socket = "{d}/admin.sock"
        [gateway.eras]
        every = "legacy"
        [servers.every]
        command = "{cmd}"
        args = ["stdio"]
        [[allow]]
        id = "echo-only"
        agents = ["bench"]
        tools = ["every/echo"]
        "#,
        d = dir.display(),
        key = signing_key(dir).display(),
        cmd = everything().display(),
    );
    let path = dir.join("warden.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs one session through `cmd` (whose stdin/stdout are piped): initialize, an allowed call,
/// a denied call, then end of input.
fn session(mut cmd: Command) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut request = |id: u64, method: &str, params: Value| -> Value {
        let frame = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(stdin, "{frame}").unwrap();
        stdin.flush().unwrap();
        loop {
            let line = lines.next().expect("warden mcp answered").unwrap();
            // Anything that is not JSON (a log line on a shared stream) is skipped.
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["id"] == json!(id) && v.get("method").is_none() {
                return v;
            }
        }
    };
    let init = request(
        1,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}),
    );
    assert_eq!(init["result"]["serverInfo"]["name"], "warden", "{init}");
    let ok = request(
        2,
        "tools/call",
        json!({"name": "every/echo", "arguments": {"message": "through pipes"}}),
    );
    assert_eq!(
        ok["result"]["content"][0]["text"], "Echo: through pipes",
        "{ok}"
    );
    let denied = request(
        3,
        "tools/call",
        json!({"name": "every/get-sum", "arguments": {"a": 1, "b": 2}}),
    );
    assert_eq!(denied["error"]["code"], json!(-32010), "{denied}");
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn mcp_serves_on_its_own_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.args(["mcp", "--config"])
        .arg(&cfg)
        .args(["--agent", "bench"])
        .stderr(Stdio::null());
    session(cmd);
}

#[test]
fn mcp_serves_when_stderr_shares_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("exec \"$0\" mcp --config \"$1\" --agent bench 2>&1")
        .arg(env!("CARGO_BIN_EXE_warden"))
        .arg(&cfg);
    session(cmd);
}
