//! Added latency of the gateway per `tools/call` (server-everything's `echo` over stdio, a native
//! Rust client, the real kernel and the durable log), interleaved in one run with three
//! baselines: the server called directly, and two floors in the gateway's place (its own thread
//! and current-thread runtime, the same in-memory pipe to the client, its own server process):
//! a bare line relay, and the same relay writing each request line to a file and `fdatasync`ing
//! it before forwarding (the least any proxy that makes a record durable before the call pays
//! on this disk). Also the throughput of 32 concurrent Streamable HTTP sessions.
//!
//! Full run: `cargo bench -p warden-gateway --bench gateway` (5 rounds × 500 calls each way,
//! p50/p99 printed and written to `target/gateway-bench.txt`). `cargo test --benches` runs each
//! part once with a handful of calls. Needs the peers (`bash scripts/install-peers`).
//! `WARDEN_BENCH_SINK=memory` keeps the gateway's records in memory instead of the log, to tell
//! the log's share from the rest (not a configuration Warden offers).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use warden_gateway::{
    Gateway, GatewayConfig, HttpFace, KernelAuthority, RecordAck, RecordSink, SystemClock,
    serve_stdio,
};

fn peers() -> PathBuf {
    let dir = std::env::var_os("WARDEN_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.peers"));
    let bin = dir.join("node/node_modules/.bin/mcp-server-everything");
    assert!(
        bin.exists(),
        "MCP peers missing: run `bash scripts/install-peers` ({} not found)",
        bin.display()
    );
    dir
}

/// A line-delimited JSON-RPC client over any byte stream.
struct Client<R, W> {
    w: W,
    r: Lines<BufReader<R>>,
    next: u64,
    /// The server process, when the client started one: its CPU time is reported per call.
    pid: Option<u32>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Client<R, W> {
    fn new(r: R, w: W) -> Self {
        Self {
            w,
            r: BufReader::new(r).lines(),
            next: 1,
            pid: None,
        }
    }

    async fn send(&mut self, v: &Value) {
        let mut b = serde_json::to_vec(v).unwrap();
        b.push(b'\n');
        self.w.write_all(&b).await.unwrap();
        self.w.flush().await.unwrap();
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let line = self.r.next_line().await.unwrap().expect("peer closed");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == json!(id) && v.get("method").is_none() {
                return v;
            }
        }
    }

    async fn initialize(&mut self) {
        self.request("initialize", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}))
            .await;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }

    async fn echo(&mut self, name: &str) -> Duration {
        let start = Instant::now();
        let r = self
            .request(
                "tools/call",
                json!({"name": name, "arguments": {"message": "hello"}}),
            )
            .await;
        let took = start.elapsed();
        assert!(r.get("result").is_some(), "{r}");
        took
    }
}

const AGENT: &str = "spiffe://example.org/agent/bench";

fn manifest(dir: &std::path::Path) -> String {
    format!(
        r#"
        trust_domain = "example.org"
        [agents.bench]
        id = "{AGENT}"
        [gateway]
        pins = "{pins}"
        http_agent = "{AGENT}"
        [gateway.eras]
        every = "legacy"
        [servers.every]
        command = "{cmd}"
        args = ["stdio"]
        [[allow]]
        id = "bench-echo"
        agents = ["bench"]
        tools = ["every/echo"]
        "#,
        pins = dir.join("pins.json").display(),
        cmd = peers()
            .join("node/node_modules/.bin/mcp-server-everything")
            .display(),
    )
}

/// `WARDEN_BENCH_SINK=memory`: records are kept in memory, not made durable (to tell the log's
/// share of the added latency from the rest of the gateway's; not a configuration Warden offers).
struct Memory(std::sync::Mutex<Vec<Vec<u8>>>);

impl RecordSink for Memory {
    fn append(&self, entry: &[u8]) -> Result<(), String> {
        self.0.lock().unwrap().push(entry.to_vec());
        Ok(())
    }

    fn submit(&self, entry: Vec<u8>) -> RecordAck {
        self.0.lock().unwrap().push(entry);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The gateway with the real kernel and a durable log in `dir`.
fn gateway(dir: &std::path::Path) -> (Arc<Gateway>, warden_log::Log) {
    std::fs::create_dir_all(dir).unwrap();
    let text = manifest(dir);
    let m = warden_kernel::Manifest::from_toml_str(&text).unwrap();
    // As `warden mcp` and `warden serve` run it: nonces presigned off the call path.
    let mut key = warden_kernel::CertSigningKey::from_seed(&[9; 32]);
    key.start_presigning(warden_presign::os_entropy()).unwrap();
    let kernel = warden_kernel::Kernel::new(m, Vec::new(), Vec::new(), key).unwrap();
    let log = warden_log::Log::open_or_create(
        &dir.join("log"),
        "warden.bench/gateway",
        &mut warden_log::os_entropy,
        warden_log::LogOptions::default(),
    )
    .unwrap();
    let sink: Arc<dyn RecordSink> = if std::env::var("WARDEN_BENCH_SINK").as_deref() == Ok("memory")
    {
        Arc::new(Memory(std::sync::Mutex::new(Vec::new())))
    } else {
        Arc::new(log.writer())
    };
    let authority = KernelAuthority::new(
        kernel,
        sink,
        Arc::new(SystemClock),
        getrandom::rand_core::UnwrapErr(getrandom::SysRng),
    );
    (
        Gateway::new(GatewayConfig::parse(&text).unwrap(), Arc::new(authority)).unwrap(),
        log,
    )
}

/// The runtime of the stdio face: `WARDEN_BENCH_RUNTIME=multi` for a 2-worker multi-thread
/// runtime, else a current-thread runtime (what `warden mcp` uses).
fn gateway_runtime() -> tokio::runtime::Runtime {
    let mut b = if std::env::var("WARDEN_BENCH_RUNTIME").as_deref() == Ok("multi") {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().unwrap()
}

type DuplexClient = Client<
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
>;

/// Starts server-everything over stdio, killed when the child handle is dropped.
fn everything() -> tokio::process::Child {
    tokio::process::Command::new(peers().join("node/node_modules/.bin/mcp-server-everything"))
        .arg("stdio")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A floor in the gateway's place: a bare line relay between `input`/`output` (the client) and
/// its own server process. With `journal`, each line from the client is first written to that
/// file (pre-filled with zeros, as the log's reserve is) and `fdatasync`ed on the relay's thread
/// before it is forwarded, as the log's inline commit does.
async fn relay(
    input: impl AsyncRead + Unpin,
    mut output: impl AsyncWrite + Unpin + Send + 'static,
    journal: Option<PathBuf>,
) {
    use std::os::unix::fs::FileExt as _;
    let mut child = everything();
    let (mut up_w, up_r) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let back = tokio::spawn(async move {
        let mut up_r = BufReader::new(up_r);
        let mut line = Vec::new();
        while up_r.read_until(b'\n', &mut line).await.unwrap() > 0 {
            output.write_all(&line).await.unwrap();
            line.clear();
        }
    });
    let file = journal.map(|path| {
        let f = std::fs::File::create(path).unwrap();
        f.write_all_at(&vec![0; 16 << 20], 0).unwrap();
        f.sync_all().unwrap();
        f
    });
    let (mut input, mut line, mut at) = (BufReader::new(input), Vec::new(), 0u64);
    while input.read_until(b'\n', &mut line).await.unwrap() > 0 {
        if let Some(f) = &file {
            f.write_all_at(&line, at % (15 << 20)).unwrap();
            f.sync_data().unwrap();
            at += line.len() as u64;
        }
        up_w.write_all(&line).await.unwrap();
        line.clear();
    }
    back.abort();
    drop(child);
}

/// The relay on its own thread and current-thread runtime (as the stdio face runs in the
/// bench), behind an in-memory pipe.
async fn relay_client(journal: Option<PathBuf>) -> DuplexClient {
    let (client, server) = tokio::io::duplex(1 << 20);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (sr, sw) = tokio::io::split(server);
        rt.block_on(relay(sr, sw, journal));
    });
    let (cr, cw) = tokio::io::split(client);
    let mut c = Client::new(cr, cw);
    c.initialize().await;
    c
}

/// Set in the environment of this bench binary re-executed as a relay process (the value names
/// its journal file).
const RELAY_PROCESS: &str = "WARDEN_BENCH_RELAY_PROCESS";

/// This binary, re-executed as the relay + `fdatasync` floor in a process of its own (as
/// `warden mcp` runs), over real pipes.
async fn relay_process_client(journal: &std::path::Path) -> ProcessClient {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.env(RELAY_PROCESS, journal);
    process(cmd).await
}

/// Runs the relay process on standard input and output (non-blocking pipes, as `warden mcp`
/// reads them), then exits.
fn serve_relay_process(journal: PathBuf) -> ! {
    use std::os::fd::AsFd as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let input = tokio::net::unix::pipe::Receiver::from_owned_fd(
            std::io::stdin().as_fd().try_clone_to_owned().unwrap(),
        )
        .unwrap();
        let output = tokio::net::unix::pipe::Sender::from_owned_fd(
            std::io::stdout().as_fd().try_clone_to_owned().unwrap(),
        )
        .unwrap();
        relay(input, output, Some(journal)).await;
    });
    std::process::exit(0)
}

type ProcessClient = Client<tokio::process::ChildStdout, tokio::process::ChildStdin>;

/// Starts `cmd` as the client's server process over its stdin and stdout (it lives until the
/// bench ends) and returns an initialized client.
async fn process(mut cmd: tokio::process::Command) -> ProcessClient {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut c = Client::new(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    c.pid = child.id();
    std::mem::forget(child); // killed with the process at the end of the bench
    c.initialize().await;
    c
}

/// The CPU time all threads of process `pid` have run so far (`/proc/PID/task/*/schedstat`).
fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// `warden mcp` itself (the binary in `WARDEN_BENCH_BIN`) as the client's server process, on
/// a configuration of its own in `dir` (same manifest, durable log, a fresh signing key).
async fn process_client(bin: &std::path::Path, dir: &std::path::Path) -> ProcessClient {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("keys/cert.key"))
        .unwrap();
    std::io::Write::write_all(&mut key, hex::encode(seed).as_bytes()).unwrap();
    let text = manifest(dir).replacen(
        "[agents.bench]",
        "[certificates]\nsigning_key = \"keys/cert.key\"\n[agents.bench]",
        1,
    );
    let text = text.replacen("[gateway]", "[gateway]\nlog = \"log\"", 1);
    std::fs::write(dir.join("warden.toml"), text).unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("mcp")
        .arg("--config")
        .arg(dir.join("warden.toml"))
        .args(["--agent", "bench"]);
    let mut c = process(cmd).await;
    c.request("tools/list", json!({})).await;
    c
}

/// Starts `gw`'s stdio face on its own thread and runtime (as in its own process; only the
/// pipe to the agent is an in-memory duplex) and returns an initialized client.
async fn stdio_client(gw: Arc<Gateway>) -> DuplexClient {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (sr, sw) = tokio::io::split(server);
    std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || {
            let rt = gateway_runtime();
            rt.block_on(async move { serve_stdio(gw, AGENT, sr, sw).await })
        })
        .unwrap();
    let (cr, cw) = tokio::io::split(client);
    let mut c = Client::new(cr, cw);
    c.initialize().await;
    c.request("tools/list", json!({})).await;
    c
}

type PipeClient = Client<tokio::net::unix::pipe::Receiver, tokio::net::unix::pipe::Sender>;

/// As [`stdio_client`], over two OS pipes instead of the in-memory one.
async fn stdio_pipe_client(gw: Arc<Gateway>) -> PipeClient {
    use tokio::net::unix::pipe;
    let (to_gw_r, to_gw_w) = std::io::pipe().unwrap();
    let (from_gw_r, from_gw_w) = std::io::pipe().unwrap();
    std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || {
            let rt = gateway_runtime();
            rt.block_on(async move {
                let input = pipe::Receiver::from_owned_fd(to_gw_r.into()).unwrap();
                let output = pipe::Sender::from_owned_fd(from_gw_w.into()).unwrap();
                serve_stdio(gw, AGENT, input, output).await
            })
        })
        .unwrap();
    let mut c = Client::new(
        pipe::Receiver::from_owned_fd(from_gw_r.into()).unwrap(),
        pipe::Sender::from_owned_fd(to_gw_w.into()).unwrap(),
    );
    c.initialize().await;
    c.request("tools/list", json!({})).await;
    c
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn bench(c: &mut Criterion) {
    if let Some(journal) = std::env::var_os(RELAY_PROCESS) {
        serve_relay_process(journal.into());
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` (CI) does not: a quick run then.
    let quick = !std::env::args().any(|a| a == "--bench");
    // The stdio client: a current-thread runtime, so every path's client is woken the same way
    // (a multi-thread runtime's I/O driver lives on a worker, which costs a pipe's reader one
    // more thread hop than an in-memory pipe's: it had favoured the in-memory paths by ~0.1 ms).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gw, log) = gateway(&dir.path().join("gateway"));

    let (direct, relay, journal, gwc, procc) = rt.block_on(async {
        let mut child = everything();
        let mut direct = Client::new(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        direct.pid = child.id();
        direct.initialize().await;
        std::mem::forget(child); // killed with the process at the end of the bench
        let mut relay = relay_client(None).await;
        let mut journal = relay_client(Some(dir.path().join("journal"))).await;
        let mut gwc = stdio_client(gw.clone()).await;
        let mut procc = match std::env::var_os("WARDEN_BENCH_BIN") {
            Some(bin) => Some((
                stdio_pipe_client(gw.clone()).await,
                relay_process_client(&dir.path().join("journal-process")).await,
                process_client(bin.as_ref(), &dir.path().join("process")).await,
            )),
            None => None,
        };
        // Warm every path alike: each node server's JIT needs thousands of calls to settle, and
        // the criterion part below (direct and gateway only) must not leave those two warmer.
        for _ in 0..if quick { 20 } else { 3000 } {
            direct.echo("echo").await;
            relay.echo("echo").await;
            journal.echo("echo").await;
            gwc.echo("every/echo").await;
            if let Some((g, r, p)) = procc.as_mut() {
                g.echo("every/echo").await;
                r.echo("echo").await;
                p.echo("every/echo").await;
            }
        }
        (
            tokio::sync::Mutex::new(direct),
            tokio::sync::Mutex::new(relay),
            tokio::sync::Mutex::new(journal),
            tokio::sync::Mutex::new(gwc),
            tokio::sync::Mutex::new(procc),
        )
    });

    // `WARDEN_BENCH_PATHS=0,5,6`: only these paths (indices into `NAMES`), for A/B runs: no
    // criterion part, no alternating calls, no HTTP throughput.
    let only: Option<Vec<usize>> = std::env::var("WARDEN_BENCH_PATHS")
        .ok()
        .map(|s| s.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    let mut group = c.benchmark_group("gateway");
    group.sample_size(if quick { 10 } else { 50 });
    if only.is_none() {
        group.bench_function("tools_call_echo/direct", |b| {
            b.iter(|| rt.block_on(async { direct.lock().await.echo("echo").await }))
        });
        group.bench_function("tools_call_echo/through_gateway", |b| {
            b.iter(|| rt.block_on(async { gwc.lock().await.echo("every/echo").await }))
        });
    }
    group.finish();

    // One call on path `$i` (see `NAMES`); `None` when that path is not set up.
    macro_rules! call {
        ($i:expr) => {
            async {
                match $i {
                    0 => Some(direct.lock().await.echo("echo").await),
                    1 => Some(relay.lock().await.echo("echo").await),
                    2 => Some(journal.lock().await.echo("echo").await),
                    3 => Some(gwc.lock().await.echo("every/echo").await),
                    i => match procc.lock().await.as_mut() {
                        Some((g, _, _)) if i == 4 => Some(g.echo("every/echo").await),
                        Some((_, r, _)) if i == 5 => Some(r.echo("echo").await),
                        Some((_, _, p)) if i == 6 => Some(p.echo("every/echo").await),
                        _ => None,
                    },
                }
            }
        };
    }
    const NAMES: [&str; 7] = [
        "direct",
        "bare relay (floor)",
        "relay + fdatasync (floor)",
        "gateway",
        "gateway, OS pipes",
        "relay + fdatasync, process",
        "warden mcp (process)",
    ];
    let (rounds, calls) = if quick { (1, 5) } else { (5, 500) };
    // Rounds of blocks: each path makes `calls` calls in turn, `rounds` times over, so drift
    // hits all alike while each path runs warm within its block (as one agent's calls do).
    let mut blocks: [Vec<Duration>; 7] = Default::default();
    // Call by call: direct and gateway alternate, each call finding the caches the other left.
    let mut alternating: [Vec<Duration>; 2] = Default::default();
    // The process each path's client talks to, where it is one of its own (direct: the server;
    // the process paths: the relay, `warden mcp`), and the CPU time it spent in the blocks.
    let pids: [Option<u32>; 7] = rt.block_on(async {
        let procs = procc.lock().await;
        let (r, p) = procs
            .as_ref()
            .map_or((None, None), |(_, r, p)| (r.pid, p.pid));
        [direct.lock().await.pid, None, None, None, None, r, p]
    });
    let mut cpu: [Duration; 7] = Default::default();
    rt.block_on(async {
        for _ in 0..rounds {
            for (i, v) in blocks.iter_mut().enumerate() {
                if !only.as_ref().is_none_or(|o| o.contains(&i)) {
                    continue;
                }
                let before = pids[i].map(cpu_time);
                for _ in 0..calls {
                    v.extend(call!(i).await);
                }
                if let (Some(pid), Some(before)) = (pids[i], before) {
                    cpu[i] += cpu_time(pid).saturating_sub(before);
                }
            }
            for _ in 0..if only.is_none() { calls } else { 0 } {
                alternating[0].extend(call!(0).await);
                alternating[1].extend(call!(3).await);
            }
        }
    });
    let mut report = format!(
        "tools/call echo over stdio, {rounds} rounds of {calls} calls a path (the gateway's durable log: {} records)\n\
         blocks (each path {calls} calls in turn):\n",
        log.size()
    );
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (us(percentile(v, 0.5)), us(percentile(v, 0.99)))
    };
    let base = if blocks[0].is_empty() {
        (0.0, 0.0)
    } else {
        stats(&mut blocks[0])
    };
    for ((name, v), cpu) in NAMES.iter().zip(blocks.iter_mut()).zip(cpu) {
        if v.is_empty() {
            continue;
        }
        let n = v.len() as f64;
        let (p50, p99) = stats(v);
        report += &format!(
            "  {name:26} p50 {p50:8.1} us  p99 {p99:8.1} us  added p50 {:8.1} us  p99 {:8.1} us",
            p50 - base.0,
            p99 - base.1
        );
        if !cpu.is_zero() {
            report += &format!("  (its process: {:.1} us CPU a call)", us(cpu) / n);
        }
        report += "\n";
    }
    if only.is_some() {
        println!("{report}");
        return;
    }
    let (d, g) = (stats(&mut alternating[0]), stats(&mut alternating[1]));
    report += &format!(
        "alternating call by call (direct, gateway):\n  \
         direct p50 {:8.1} us  p99 {:8.1} us; gateway p50 {:8.1} us  p99 {:8.1} us; \
         added p50 {:8.1} us  p99 {:8.1} us\n",
        d.0,
        d.1,
        g.0,
        g.1,
        g.0 - d.0,
        g.1 - d.1
    );

    // Throughput: concurrent legacy sessions over Streamable HTTP, each with its own upstream.
    let (sessions, per_session) = if quick { (2, 2) } else { (32, 100) };
    let http_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (calls_done, secs) = http_rt.block_on(async {
        let face = HttpFace::new(gw.clone()).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", l.local_addr().unwrap());
        let f2 = face.clone();
        tokio::spawn(async move { f2.serve(l).await });
        let http = reqwest::Client::new();
        let mut sids = Vec::new();
        for _ in 0..sessions {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .body(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "b", "version": "0"}}}).to_string())
                .send()
                .await
                .unwrap();
            let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
            sids.push(sid);
        }
        let (http2, url2) = (http.clone(), url.clone());
        let call = move |sid: String, id: u64| {
            let (http, url) = (http2.clone(), url2.clone());
            async move {
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json")
                    .header("mcp-session-id", sid)
                    .header("mcp-protocol-version", "2025-11-25")
                    .body(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "every/echo", "arguments": {"message": "hi"}}}).to_string())
                    .send()
                    .await
                    .unwrap();
                let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                assert!(v.get("result").is_some(), "{v}");
            }
        };
        // Warm-up: each session starts its upstream.
        let warm: Vec<_> = sids.iter().map(|s| tokio::spawn(call(s.clone(), 1))).collect();
        for w in warm {
            w.await.unwrap();
        }
        let start = Instant::now();
        let tasks: Vec<_> = sids
            .iter()
            .map(|s| {
                let (s, call) = (s.clone(), call.clone());
                tokio::spawn(async move {
                    for i in 0..per_session {
                        call(s.clone(), 2 + i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (sessions * per_session, start.elapsed().as_secs_f64())
    });
    report += &format!(
        "throughput: {sessions} concurrent HTTP sessions x {per_session} calls: {calls_done} calls in {secs:.2} s = {:.0} calls/s\n",
        calls_done as f64 / secs
    );
    println!("{report}");
    if !quick {
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/gateway-bench.txt");
        let _ = std::fs::write(out, &report);
    }
    drop(gw);
    drop(log);
}

criterion_group!(benches, bench);
criterion_main!(benches);
