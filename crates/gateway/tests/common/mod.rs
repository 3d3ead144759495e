//! Shared helpers of the gateway's end-to-end tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{
    AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines, ReadHalf, WriteHalf,
};

use warden_gateway::{Authority, Gateway, GatewayConfig, serve_stdio};

/// Where the real MCP peers are installed; panics with instructions when they are missing.
pub fn peers() -> PathBuf {
    let dir = std::env::var_os("WARDEN_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers"));
    let probe = dir.join("node/node_modules/.bin/mcp-server-filesystem");
    assert!(
        probe.exists(),
        "MCP peers missing: `{}` not found; run `bash scripts/install-peers` (or set WARDEN_PEERS_DIR)",
        probe.display()
    );
    // Canonical, so a path handed to a sandboxed command has no `..` through directories the
    // sandbox does not mount.
    dir.canonicalize().unwrap()
}

/// A path to an npm peer's binary.
pub fn npm_bin(name: &str) -> String {
    peers()
        .join("node/node_modules/.bin")
        .join(name)
        .display()
        .to_string()
}

/// An in-process agent connected to a gateway's stdio face.
pub struct Agent {
    w: WriteHalf<DuplexStream>,
    r: Lines<BufReader<ReadHalf<DuplexStream>>>,
    next: u64,
    /// Frames received that were not the awaited response.
    pub other: Vec<Value>,
}

impl Agent {
    /// Starts a gateway over `cfg` and `authority`, connected as `agent`.
    pub async fn start(
        cfg: GatewayConfig,
        authority: Arc<dyn Authority>,
        agent: &str,
    ) -> (Self, Arc<Gateway>) {
        Self::start_with_pipe(cfg, authority, agent, 1 << 20).await
    }

    /// As [`Agent::start`], over pipes that hold `pipe_bytes` unread bytes each way.
    pub async fn start_with_pipe(
        cfg: GatewayConfig,
        authority: Arc<dyn Authority>,
        agent: &str,
        pipe_bytes: usize,
    ) -> (Self, Arc<Gateway>) {
        let gw = Gateway::new(cfg, authority).unwrap();
        let (client, server) = tokio::io::duplex(pipe_bytes);
        let (sr, sw) = tokio::io::split(server);
        let gw2 = gw.clone();
        let agent = agent.to_owned();
        tokio::spawn(async move { serve_stdio(gw2, &agent, sr, sw).await });
        let (cr, cw) = tokio::io::split(client);
        (
            Self {
                w: cw,
                r: BufReader::new(cr).lines(),
                next: 1,
                other: Vec::new(),
            },
            gw,
        )
    }

    /// The pipe's two ends: what the agent writes, and the lines it reads.
    pub fn into_parts(
        self,
    ) -> (
        WriteHalf<DuplexStream>,
        Lines<BufReader<ReadHalf<DuplexStream>>>,
    ) {
        (self.w, self.r)
    }

    /// Sends a raw frame.
    pub async fn send(&mut self, frame: &Value) {
        let mut bytes = serde_json::to_vec(frame).unwrap();
        bytes.push(b'\n');
        self.w.write_all(&bytes).await.unwrap();
        self.w.flush().await.unwrap();
    }

    /// Sends a request and waits for its response.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.response(id).await
    }

    /// Waits for the response with `id`.
    pub async fn response(&mut self, id: u64) -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.r.next_line())
                .await
                .expect("gateway answered in time")
                .unwrap()
                .expect("gateway still open");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("id") == Some(&json!(id)) && v.get("method").is_none() {
                return v;
            }
            self.other.push(v);
        }
    }

    /// The next frame from the gateway (kept ones first) for which `wanted` holds, within
    /// `wait`; frames read on the way are kept in `other`. `None` if none came in time.
    pub async fn frame_where(
        &mut self,
        wait: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(at) = self.other.iter().position(&wanted) {
            return Some(self.other.remove(at));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = tokio::time::timeout_at(deadline, self.r.next_line())
                .await
                .ok()?
                .unwrap()
                .expect("gateway still open");
            let v: Value = serde_json::from_str(&line).unwrap();
            if wanted(&v) {
                return Some(v);
            }
            self.other.push(v);
        }
    }

    /// The next frame from the gateway, unkept; `None` if none came within `wait`.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<Value> {
        let line = tokio::time::timeout(wait, self.r.next_line())
            .await
            .ok()?
            .unwrap()
            .expect("gateway still open");
        Some(serde_json::from_str(&line).unwrap())
    }

    /// The legacy handshake.
    pub async fn initialize(&mut self) -> Value {
        let r = self
            .request(
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}),
            )
            .await;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        r
    }

    /// `tools/call`.
    pub async fn call(&mut self, name: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }
}

/// The JSON-RPC error code of a response, if it is an error.
pub fn error_code(resp: &Value) -> Option<i64> {
    resp.pointer("/error/code").and_then(Value::as_i64)
}

/// The text of the first content item of a result.
pub fn text(resp: &Value) -> String {
    resp.pointer("/result/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A result without the gateway's `_meta` labels.
pub fn without_warden_meta(mut resp: Value) -> Value {
    if let Some(meta) = resp
        .pointer_mut("/result/_meta")
        .and_then(Value::as_object_mut)
    {
        meta.remove("dev.warden/labels");
        if meta.is_empty() {
            resp["result"].as_object_mut().unwrap().remove("_meta");
        }
    }
    resp
}

/// A real durable log in a temporary directory.
pub struct TestLog {
    pub dir: tempfile::TempDir,
    pub log: warden_log::Log,
}

impl TestLog {
    pub fn new() -> Arc<Self> {
        Self::with_options(warden_log::LogOptions::default())
    }

    /// A log whose every write fails (an I/O error on the first frame).
    pub fn failing() -> Arc<Self> {
        Self::with_options(warden_log::LogOptions {
            danger_fail_writes_after: Some(0),
            ..Default::default()
        })
    }

    pub fn with_options(options: warden_log::LogOptions) -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let log = warden_log::Log::open_or_create(
            dir.path(),
            "warden.test/gateway",
            &mut warden_log::os_entropy,
            options,
        )
        .unwrap();
        Arc::new(Self { dir, log })
    }

    /// The records, parsed.
    pub fn records(&self) -> Vec<Value> {
        self.log
            .records(0)
            .unwrap()
            .into_iter()
            .map(|(_, e)| serde_json::from_slice(&e).unwrap())
            .collect()
    }

    /// Verifies the whole log offline (tree, checkpoints, signatures, tiles).
    pub fn verify(&self) {
        let report =
            warden_log::verify_dir(self.dir.path(), self.log.verifier(), &mut |_, _| {}).unwrap();
        let _ = report;
    }
}

impl Drop for TestLog {
    fn drop(&mut self) {
        // The log verifies after every test that used it.
        if !std::thread::panicking() && self.log.health().is_ok() {
            self.verify();
        }
    }
}

/// The real kernel over `manifest` (a throwaway signing key) with `log` behind it.
pub fn authority(manifest: &str, log: &TestLog) -> Arc<dyn Authority> {
    authority_with_tools(manifest, log, Vec::new())
}

/// As [`authority`], knowing `tools` from the start (so `server/*` entries validate).
pub fn authority_with_tools(
    manifest: &str,
    log: &TestLog,
    tools: Vec<warden_kernel::ToolSpec>,
) -> Arc<dyn Authority> {
    let m = warden_kernel::Manifest::from_toml_str(manifest).unwrap();
    let kernel = warden_kernel::Kernel::new(
        m,
        Vec::new(),
        tools,
        warden_kernel::CertSigningKey::from_seed(&[7; 32]),
    )
    .unwrap();
    warden_gateway::rebuild_from_log(&kernel, &log.log).unwrap();
    Arc::new(warden_gateway::KernelAuthority::new(
        kernel,
        Arc::new(log.log.writer()),
        Arc::new(warden_gateway::SystemClock),
        getrandom::rand_core::UnwrapErr(getrandom::SysRng),
    ))
}

/// The Python driver (tests/py/driver.py) in the peers' venv, kept alive for a whole test.
pub struct PyDriver {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PyDriver {
    pub fn start() -> Self {
        let python = peers().join("venv/bin/python");
        assert!(
            python.exists(),
            "Python peers missing: run `bash scripts/install-peers`"
        );
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/driver.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _child: child,
            stdin,
            lines,
        }
    }

    pub async fn cmd(&mut self, cmd: Value) -> Value {
        let mut b = serde_json::to_vec(&cmd).unwrap();
        b.push(b'\n');
        self.stdin.write_all(&b).await.unwrap();
        self.stdin.flush().await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("python driver answered in time")
            .unwrap()
            .expect("python driver alive");
        serde_json::from_str(&line).unwrap()
    }
}

/// The peers' Python (which must be installed) and the path of `tests/py/<script>`, a scripted
/// server run by it.
pub fn py_script(script: &str) -> (PathBuf, PathBuf) {
    let python = peers().join("venv/bin/python");
    assert!(
        python.exists(),
        "Python peers missing: run `bash scripts/install-peers`"
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    (python, path)
}

/// A path to a Python peer's console script.
pub fn py_bin(name: &str) -> String {
    peers().join("venv/bin").join(name).display().to_string()
}

/// The `_meta` a stateless 2026-07-28 request carries.
pub fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}})
}

/// A loopback TCP port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 10 s) until something accepts connections on loopback `port`.
pub async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server on port {port} did not start");
}

/// Starts `program args… PORT` (an MCP server over Streamable HTTP) on a free loopback port and
/// waits until it listens; returns it (killed on drop) and its base URL `http://127.0.0.1:PORT`.
pub async fn start_http_server(
    program: &std::path::Path,
    args: &[String],
) -> (tokio::process::Child, String) {
    assert!(
        program.exists(),
        "`{}` missing: run `bash scripts/install-peers`",
        program.display()
    );
    let port = free_port();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).arg(port.to_string());
    (
        spawn_listening(cmd, port).await,
        format!("http://127.0.0.1:{port}"),
    )
}

/// Starts `cmd` (a server told to listen on loopback `port`), quiet and killed on drop, and
/// waits until it listens.
pub async fn spawn_listening(mut cmd: tokio::process::Command, port: u16) -> tokio::process::Child {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(port).await;
    child
}

/// One stateless 2026-07-28 request over Streamable HTTP with the MCP headers; returns the
/// response (the frame with `id` when the answer is an event stream).
pub async fn call(url: &str, id: Value, method: &str, mut params: Value) -> Value {
    params["_meta"] = meta();
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = body.pointer("/params/name").and_then(Value::as_str) {
        req = req.header("mcp-name", name);
    }
    let text = req
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|f| f.get("id") == Some(&id))
            .unwrap()
    })
}

/// The upstream's tools, as the kernel's specs of server `server`.
pub async fn tool_specs(url: &str, server: &str) -> Vec<warden_kernel::ToolSpec> {
    call(url, json!(1), "tools/list", json!({}))
        .await
        .pointer("/result/tools")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .filter_map(|t| warden_kernel::ToolSpec::from_mcp_definition(server, t).ok())
        .collect()
}
