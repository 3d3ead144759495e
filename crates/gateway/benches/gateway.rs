//! Added latency of the gateway per `tools/call` (server-everything's `echo` over stdio, a native
//! Rust client, the real kernel and the durable log), interleaved with direct calls in one run;
//! and throughput with 32 concurrent Streamable HTTP sessions. With `WARDEN_BENCH_BASELINE=1` a
//! second gateway, whose log hands every record to its writer thread and publishes tiles after
//! every commit, is interleaved too (it perturbs the others: its publisher runs during their
//! calls, so it is off by default).
//!
//! Full run: `cargo bench -p warden-gateway --bench gateway` (5 rounds × 500 calls each way,
//! p50/p99 printed and written to `target/gateway-bench.txt`). `cargo test --benches` runs each
//! part once with a handful of calls. Needs the peers (`bash scripts/install-peers`).
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
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Client<R, W> {
    fn new(r: R, w: W) -> Self {
        Self {
            w,
            r: BufReader::new(r).lines(),
            next: 1,
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

/// A sink that hands every record to the log's writer thread and waits to be woken by it (the
/// path before inline commits): the baseline of the same run. `WARDEN_BENCH_BASELINE_INLINE=1`
/// gives the baseline inline commits too (to tell the two changes apart).
struct HandOff(warden_log::LogWriter);

impl RecordSink for HandOff {
    fn append(&self, entry: &[u8]) -> Result<(), String> {
        self.0
            .submit(entry.to_vec())
            .and_then(warden_log::Ticket::wait)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn submit(&self, entry: Vec<u8>) -> RecordAck {
        match self.0.submit(entry) {
            Ok(ticket) => {
                Box::pin(async move { ticket.await.map(|_| ()).map_err(|e| e.to_string()) })
            }
            Err(e) => Box::pin(std::future::ready(Err(e.to_string()))),
        }
    }
}

/// The log's options: the defaults, or for the baseline a publication after every commit (as
/// before publications were coalesced). `WARDEN_BENCH_PUBLISH_MS=N` sets the interval of both.
fn log_options(baseline: bool) -> warden_log::LogOptions {
    let mut o = warden_log::LogOptions::default();
    if baseline {
        o.publish_interval = Duration::ZERO;
    }
    if let Some(ms) = std::env::var("WARDEN_BENCH_PUBLISH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        o.publish_interval = Duration::from_millis(ms);
    }
    o
}

/// The gateway with the real kernel and a durable log in `dir`; `hand_off` makes it the
/// baseline (its sink and its log's options).
fn gateway(dir: &std::path::Path, hand_off: bool) -> (Arc<Gateway>, warden_log::Log) {
    std::fs::create_dir_all(dir).unwrap();
    let text = manifest(dir);
    let m = warden_kernel::Manifest::from_toml_str(&text).unwrap();
    let kernel = warden_kernel::Kernel::new(
        m,
        Vec::new(),
        Vec::new(),
        warden_kernel::CertSigningKey::from_seed(&[9; 32]),
    )
    .unwrap();
    let log = warden_log::Log::open_or_create(
        &dir.join("log"),
        "warden.bench/gateway",
        &mut warden_log::os_entropy,
        log_options(hand_off),
    )
    .unwrap();
    let hand_off = hand_off && std::env::var_os("WARDEN_BENCH_BASELINE_INLINE").is_none();
    let sink: Arc<dyn RecordSink> = if hand_off {
        Arc::new(HandOff(log.writer()))
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

/// Starts `gw`'s stdio face on its own thread and runtime (as in its own process; only the
/// pipe to the agent is an in-memory duplex) and returns an initialized client.
async fn stdio_client(
    gw: Arc<Gateway>,
) -> Client<
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (sr, sw) = tokio::io::split(server);
    std::thread::spawn(move || {
        let rt = gateway_runtime();
        rt.block_on(async move { serve_stdio(gw, AGENT, sr, sw).await })
    });
    let (cr, cw) = tokio::io::split(client);
    let mut c = Client::new(cr, cw);
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
    // `cargo bench` passes `--bench`; `cargo test --benches` (CI) does not: a quick run then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gw, log) = gateway(&dir.path().join("inline"), false);
    // `WARDEN_BENCH_BASELINE=1`: a second gateway of the previous path, in the same run.
    let base = std::env::var_os("WARDEN_BENCH_BASELINE")
        .is_some()
        .then(|| gateway(&dir.path().join("hand-off"), true));

    let (direct, gwc, basec) = rt.block_on(async {
        let mut child = tokio::process::Command::new(
            peers().join("node/node_modules/.bin/mcp-server-everything"),
        )
        .arg("stdio")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
        let mut direct = Client::new(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        direct.initialize().await;
        std::mem::forget(child); // killed with the process at the end of the bench
        let mut gwc = stdio_client(gw.clone()).await;
        let mut basec = match &base {
            Some((g, _)) => Some(stdio_client(g.clone()).await),
            None => None,
        };
        // Warm all paths (JIT of the node servers, kernel's first compile of the tool).
        for _ in 0..20 {
            direct.echo("echo").await;
            gwc.echo("every/echo").await;
            if let Some(b) = basec.as_mut() {
                b.echo("every/echo").await;
            }
        }
        (
            tokio::sync::Mutex::new(direct),
            tokio::sync::Mutex::new(gwc),
            tokio::sync::Mutex::new(basec),
        )
    });

    let mut group = c.benchmark_group("gateway");
    group.sample_size(if quick { 10 } else { 50 });
    group.bench_function("tools_call_echo/direct", |b| {
        b.iter(|| rt.block_on(async { direct.lock().await.echo("echo").await }))
    });
    group.bench_function("tools_call_echo/through_gateway", |b| {
        b.iter(|| rt.block_on(async { gwc.lock().await.echo("every/echo").await }))
    });
    if base.is_some() {
        group.bench_function("tools_call_echo/through_gateway_log_hand_off", |b| {
            b.iter(|| {
                rt.block_on(async {
                    basec
                        .lock()
                        .await
                        .as_mut()
                        .unwrap()
                        .echo("every/echo")
                        .await
                })
            })
        });
    }
    group.finish();

    // Interleaved percentiles: direct, gateway and baseline calls alternate, so drift hits all
    // alike.
    let (rounds, calls) = if quick { (1, 5) } else { (5, 500) };
    let (mut d_all, mut g_all, mut b_all) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..rounds {
            for _ in 0..calls {
                d_all.push(direct.lock().await.echo("echo").await);
                g_all.push(gwc.lock().await.echo("every/echo").await);
                if let Some(b) = basec.lock().await.as_mut() {
                    b_all.push(b.echo("every/echo").await);
                }
            }
        }
    });
    d_all.sort();
    g_all.sort();
    b_all.sort();
    let p = |v: &[Duration]| (us(percentile(v, 0.5)), us(percentile(v, 0.99)));
    let ((d50, d99), (g50, g99)) = (p(&d_all), p(&g_all));
    let mut report = format!(
        "interleaved {rounds}x{calls} tools/call echo over stdio (durable log on, {} records):\n  \
         direct   p50 {d50:8.1} us  p99 {d99:8.1} us\n  \
         gateway  p50 {g50:8.1} us  p99 {g99:8.1} us\n  \
         added    p50 {:8.1} us  p99 {:8.1} us\n",
        log.size(),
        g50 - d50,
        g99 - d99,
    );
    if !b_all.is_empty() {
        let (b50, b99) = p(&b_all);
        report += &format!(
            "  baseline (log hand-off to the writer thread, a publication per commit) p50 \
             {b50:8.1} us  p99 {b99:8.1} us, added p50 {:8.1} us  p99 {:8.1} us\n",
            b50 - d50,
            b99 - d99,
        );
    }
    drop(base);

    // Throughput: concurrent legacy sessions over Streamable HTTP, each with its own upstream.
    let (sessions, per_session) = if quick { (2, 2) } else { (32, 100) };
    let (calls_done, secs) = rt.block_on(async {
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
