//! The GET stream of a legacy (2025-11-25) Streamable HTTP upstream's session: what the server
//! sends outside any request (list-changed, log messages, server→client requests) reaches the
//! agent through the gateway, on its stdio face and on its HTTP face; a tool change announced
//! there is re-pinned at once; a dropped stream is resumed with `Last-Event-ID`; the stream
//! closes (and the upstream session is deleted) when the agent's session ends; a server that
//! offers no stream (405) still serves calls and is not asked again. The upstream is the real
//! Python SDK (`tests/py/session_stream_server.py`), whose request counts are read from its
//! `/stats`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{TestLog, free_port, peers};
use serde_json::{Value, json};
use tokio::io::{
    AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines, ReadHalf, WriteHalf,
};
use warden_gateway::{Gateway, GatewayConfig, HttpFace, serve_stdio};

const AGENT: &str = "spiffe://example.org/agent/a";

/// The SDK server on a free port (killed on drop); its base URL (`/mcp` and `/stats` below it).
struct Upstream {
    _child: tokio::process::Child,
    base: String,
}

impl Upstream {
    async fn start(offer_stream: bool) -> Self {
        let python = peers().join("mcp-everything/venv/bin/python");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/session_stream_server.py");
        let mut args = vec![script.display().to_string()];
        if !offer_stream {
            args.push("--no-get".into());
        }
        let (child, base) = common::start_http_server(&python, &args).await;
        Self {
            _child: child,
            base,
        }
    }

    fn url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    /// The server's request counts: `get`, `open`, `refused`, `resumed`, `delete`.
    async fn stats(&self) -> Value {
        let body = reqwest::get(format!("{}/stats", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// Waits (up to 15 s) until `pred` holds of the stats; returns the last stats read.
    async fn wait_stats(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let mut stats = self.stats().await;
        for _ in 0..150 {
            if pred(&stats) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            stats = self.stats().await;
        }
        stats
    }
}

/// A manifest with server `up` at `url` (legacy era) and every tool allowed.
fn manifest(url: &str, dir: &std::path::Path) -> String {
    format!(
        "trust_domain = \"example.org\"\n[agents.a]\nid = \"{AGENT}\"\n\
         [gateway]\npins = \"{}\"\nhttp_agent = \"{AGENT}\"\nupstream_timeout_secs = 30\n\
         [gateway.eras]\nup = \"legacy\"\n\
         [servers.up]\nurl = \"{url}\"\n\
         [[allow]]\nid = \"all\"\nagents = [\"a\"]\ntools = [\"up/*\"]\n",
        dir.join("pins.json").display()
    )
}

/// A real upstream (`get`: whether it offers a session stream), a log, and the configuration of
/// a gateway in front of the upstream (its pins in the returned directory).
async fn setup(get: bool) -> (Upstream, tempfile::TempDir, Arc<TestLog>, String) {
    let up = Upstream::start(get).await;
    let dir = tempfile::tempdir().unwrap();
    let text = manifest(&up.url(), dir.path());
    (up, dir, TestLog::new(), text)
}

fn gateway(text: &str, log: &TestLog) -> Arc<Gateway> {
    Gateway::new(
        GatewayConfig::parse(text).unwrap(),
        common::authority(text, log),
    )
    .unwrap()
}

/// An agent on the gateway's stdio face that reads frame by frame (it must answer the
/// server→client requests that arrive while its own call waits).
struct StdioAgent {
    w: Option<WriteHalf<DuplexStream>>,
    r: Lines<BufReader<ReadHalf<DuplexStream>>>,
    next: u64,
}

impl StdioAgent {
    async fn start(gw: Arc<Gateway>) -> (Self, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (sr, sw) = tokio::io::split(server);
        let face = tokio::spawn(async move {
            let _ = serve_stdio(gw, AGENT, sr, sw).await;
        });
        let (cr, cw) = tokio::io::split(client);
        let mut agent = Self {
            w: Some(cw),
            r: BufReader::new(cr).lines(),
            next: 1,
        };
        let init = agent
            .request(
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {"roots": {}}, "clientInfo": {"name": "test", "version": "0"}}),
            )
            .await;
        assert!(init.get("result").is_some(), "{init}");
        agent
            .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        (agent, face)
    }

    async fn send(&mut self, frame: &Value) {
        let mut bytes = serde_json::to_vec(frame).unwrap();
        bytes.push(b'\n');
        let w = self.w.as_mut().unwrap();
        w.write_all(&bytes).await.unwrap();
        w.flush().await.unwrap();
    }

    /// The next frame from the gateway, or `None` after `wait`.
    async fn frame(&mut self, wait: Duration) -> Option<Value> {
        let line = tokio::time::timeout(wait, self.r.next_line()).await.ok()?;
        Some(serde_json::from_str(&line.unwrap().expect("gateway still open")).unwrap())
    }

    /// Sends a request; returns its response and every other frame that came before it.
    async fn request_seeing(&mut self, method: &str, params: Value) -> (Value, Vec<Value>) {
        let id = self.next;
        self.next += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let mut other = Vec::new();
        loop {
            let f = self
                .frame(Duration::from_secs(60))
                .await
                .expect("gateway answered in time");
            if f.get("id") == Some(&json!(id)) && f.get("method").is_none() {
                return (f, other);
            }
            other.push(f);
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.request_seeing(method, params).await.0
    }

    async fn call(&mut self, name: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }

    /// Reads frames (up to 15 s) until one is a notification `method`; returns it.
    async fn notification(&mut self, method: &str, mut seen: Vec<Value>) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(i) = seen.iter().position(|f| f["method"] == method) {
                return seen.swap_remove(i);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame(left).await {
                Some(f) => seen.push(f),
                None => panic!("no `{method}` in time; saw {seen:?}"),
            }
        }
    }
}

/// Whether the log holds a pin record of `up/mutable` with `status`.
fn pinned(log: &TestLog, status: &str) -> bool {
    log.records().iter().any(|r| {
        r["type"] == "warden.tool_pinned" && r["tool"] == "up/mutable" && r["status"] == status
    })
}

/// Whether `up/mutable` is flagged changed in the log within 5 s.
async fn re_pinned(log: &TestLog) -> bool {
    for _ in 0..100 {
        if pinned(log, "changed") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pinned(log, "changed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_stream_reaches_a_stdio_agent_and_the_change_is_re_pinned_at_once() {
    let (up, _dir, log, text) = setup(true).await;
    let (mut a, _face) = StdioAgent::start(gateway(&text, &log)).await;

    let r = a.call("up/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(pinned(&log, "pinned"));
    // One GET stream is open on the upstream session.
    let stats = up.wait_stats(|s| s["open"] == 1).await;
    assert_eq!(stats["open"], 1, "{stats}");

    // The server announces the change on its session stream, not on the call's response.
    let (r, seen) = a
        .request_seeing("tools/call", json!({"name": "up/mutate", "arguments": {}}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    a.notification("notifications/tools/list_changed", seen)
        .await;
    // The gateway re-listed at once: the changed description is flagged without another listing.
    assert!(
        re_pinned(&log).await,
        "the announced change was not re-pinned"
    );
    let refused = a.call("up/mutable", json!({"text": "hi"})).await;
    assert!(refused.get("error").is_some(), "{refused}");

    // A server→client request on the session stream goes to the agent; its answer goes back.
    let id = a.next;
    a.next += 1;
    a.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "up/roots", "arguments": {}}}))
        .await;
    let ask = a.notification("roots/list", Vec::new()).await;
    a.send(&json!({"jsonrpc": "2.0", "id": ask["id"], "result": {"roots": [{"uri": "file:///work/agent-root"}]}}))
        .await;
    let answer = loop {
        let f = a
            .frame(Duration::from_secs(30))
            .await
            .expect("the call answered");
        if f.get("id") == Some(&json!(id)) {
            break f;
        }
    };
    assert!(
        answer.to_string().contains("file:///work/agent-root"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_stream_is_resumed_after_its_last_event() {
    let (up, _dir, log, text) = setup(true).await;
    let (mut a, _face) = StdioAgent::start(gateway(&text, &log)).await;
    // An event on the stream first, so the gateway has an id to resume after.
    let (r, seen) = a
        .request_seeing("tools/call", json!({"name": "up/mutate", "arguments": {}}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    a.notification("notifications/tools/list_changed", seen)
        .await;
    // The server closes the stream, then logs while no stream is open: only a client that
    // resumes with `Last-Event-ID` gets that message.
    let (r, seen) = a
        .request_seeing(
            "tools/call",
            json!({"name": "up/drop_stream", "arguments": {}}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let msg = a.notification("notifications/message", seen).await;
    assert_eq!(msg["params"]["data"], "while you were away", "{msg}");
    let stats = up.wait_stats(|s| s["open"] == 1).await;
    assert_eq!(stats["resumed"], 1, "{stats}");
    assert_eq!(stats["open"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_closes_and_the_upstream_session_ends_when_the_agent_goes() {
    let (up, _dir, log, text) = setup(true).await;
    let (mut a, face) = StdioAgent::start(gateway(&text, &log)).await;
    let r = a.call("up/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "{r}");
    let stats = up.wait_stats(|s| s["open"] == 1).await;
    assert_eq!(stats["open"], 1, "{stats}");
    // The agent hangs up: the face ends, and with it the session and its upstream connection.
    a.w.take().unwrap().shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), face)
        .await
        .expect("the face ended")
        .unwrap();
    let stats = up.wait_stats(|s| s["open"] == 0 && s["delete"] == 1).await;
    assert_eq!(
        stats["open"], 0,
        "a session stream outlived its session: {stats}"
    );
    assert_eq!(stats["delete"], 1, "{stats}");
    // And it is not reopened.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = up.stats().await;
    assert_eq!(
        (stats["open"].clone(), stats["get"].clone()),
        (json!(0), json!(1)),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_session_stream_still_serves_and_is_asked_once() {
    let (up, _dir, log, text) = setup(false).await;
    let (mut a, _face) = StdioAgent::start(gateway(&text, &log)).await;
    let r = a.call("up/mutable", json!({"text": "hi"})).await;
    assert_eq!(r["result"]["content"][0]["text"], "hi", "{r}");
    let r = a.call("up/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    let stats = up.wait_stats(|s| s["refused"] == 1).await;
    assert_eq!(stats["refused"], 1, "{stats}");
    // No retries of a 405, however long the session lives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = a.call("up/mutable", json!({"text": "again"})).await;
    assert!(r.get("result").is_some(), "{r}");
    let stats = up.stats().await;
    assert_eq!(stats["refused"], 1, "{stats}");
}

/// A legacy agent of the HTTP face, with its session's GET stream open.
struct HttpAgent {
    url: String,
    sid: String,
    stream: reqwest::Response,
    parser: warden_gateway::sse::SseParser,
    seen: Vec<Value>,
}

impl HttpAgent {
    fn post(&self, frame: &Value) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-session-id", &self.sid)
            .body(serde_json::to_vec(frame).unwrap())
    }

    async fn open(url: String) -> Self {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}});
        let resp = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(serde_json::to_vec(&init).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let sid = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = resp.text().await.unwrap();
        let stream = reqwest::Client::new()
            .get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-session-id", &sid)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        let agent = Self {
            url,
            sid,
            stream,
            parser: warden_gateway::sse::SseParser::new(),
            seen: Vec::new(),
        };
        let r = agent
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        agent
    }

    /// A `tools/call`; returns the body of the answer (JSON or an event stream).
    async fn call(&self, id: u64, name: &str, arguments: Value) -> String {
        self.post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Reads the session stream (up to 15 s) until a notification `method` arrives.
    async fn notification(&mut self, method: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(i) = self.seen.iter().position(|f| f["method"] == method) {
                return self.seen.swap_remove(i);
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.chunk())
                .await
                .unwrap_or_else(|_| panic!("no `{method}` in time; saw {:?}", self.seen))
                .unwrap()
                .expect("the session stream is open");
            for event in self.parser.push(&chunk).unwrap() {
                self.seen.push(serde_json::from_str(&event).unwrap());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_stream_reaches_an_http_agent_and_ends_with_its_delete() {
    let (up, _dir, log, text) = setup(true).await;
    let face = HttpFace::new(gateway(&text, &log)).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    let face2 = face.clone();
    tokio::spawn(async move { face2.serve(l).await });

    let mut agent = HttpAgent::open(url.clone()).await;
    let body = agent.call(2, "up/mutable", json!({"text": "hi"})).await;
    assert!(body.contains("\"hi\""), "{body}");
    let body = agent.call(3, "up/mutate", json!({})).await;
    assert!(body.contains("mutated"), "{body}");
    // The announcement rides the call's event stream when it arrives while the call is the only
    // one in flight (the face's rule for session messages), else the agent's session stream.
    if !body.contains("notifications/tools/list_changed") {
        agent.notification("notifications/tools/list_changed").await;
    }
    assert!(
        re_pinned(&log).await,
        "the announced change was not re-pinned"
    );
    // What the server sends on its session after the call is over reaches the agent's own
    // session stream: here, a message logged while the upstream stream was down, on its resume.
    let body = agent.call(4, "up/drop_stream", json!({})).await;
    assert!(body.contains("dropped"), "{body}");
    let msg = agent.notification("notifications/message").await;
    assert_eq!(msg["params"]["data"], "while you were away", "{msg}");
    let stats = up.wait_stats(|s| s["open"] == 1).await;
    assert_eq!(stats["open"], 1, "{stats}");

    // The agent ends its session: the upstream's stream closes and its session is deleted.
    let r = reqwest::Client::new()
        .delete(&url)
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", &agent.sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(agent);
    let stats = up.wait_stats(|s| s["open"] == 0 && s["delete"] == 1).await;
    assert_eq!(
        stats["open"], 0,
        "a session stream outlived its session: {stats}"
    );
    assert_eq!(stats["delete"], 1, "{stats}");
    drop(face);
}

/// How a scripted server answers the GET of its session stream.
#[derive(Clone, Copy)]
enum GetAnswer {
    /// 409 Conflict, every time.
    Conflict,
    /// An event stream whose first event is larger than any frame the gateway takes.
    Huge,
}

/// A scripted legacy server for the failures no real server produces on demand: it opens a
/// session, lists no tools, and answers every GET with `get`. Returns its URL and the count of
/// GETs it received.
async fn scripted_server(get: GetAnswer) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = gets.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let frame: Value = serde_json::from_slice(&body).unwrap();
            let result = match frame["method"].as_str() {
                Some("initialize") => json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {"listChanged": true}}, "serverInfo": {"name": "scripted", "version": "0"}}),
                Some("tools/list") => json!({"tools": []}),
                _ => return StatusCode::ACCEPTED.into_response(),
            };
            let answer = json!({"jsonrpc": "2.0", "id": frame["id"], "result": result});
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::HeaderName::from_static("mcp-session-id"), "s1"),
                ],
                answer.to_string(),
            )
                .into_response()
        })
        .get(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match get {
                    GetAnswer::Conflict => StatusCode::CONFLICT.into_response(),
                    GetAnswer::Huge => {
                        let mut body = b"id: 1\ndata: ".to_vec();
                        body.resize(body.len() + 17 * 1024 * 1024, b'a');
                        body.extend_from_slice(b"\n\n");
                        ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
                    }
                }
            }
        })
        .delete(|| async { StatusCode::OK }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, gets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_opens_is_retried_a_bounded_number_of_times_with_backoff() {
    let (url, gets) = scripted_server(GetAnswer::Conflict).await;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let text = manifest(&url, dir.path());
    let (mut a, _face) = StdioAgent::start(gateway(&text, &log)).await;
    let started = tokio::time::Instant::now();
    let r = a.request("tools/list", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    let count = || gets.load(std::sync::atomic::Ordering::SeqCst);
    // Backing off: attempts 0.5, 1, 2 s apart (at a constant 250 ms it would be 8 by now).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!((1..=4).contains(&count()), "{} GETs in 2 s", count());
    // Then it gives up: 6 attempts over about 15 s, none after.
    while count() < 6 && started.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count(), 6);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        count(),
        6,
        "the gateway kept asking for a stream it cannot get"
    );
    // The session itself still works.
    let r = a.request("tools/list", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_ends_the_stream_for_good() {
    let (url, gets) = scripted_server(GetAnswer::Huge).await;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let text = manifest(&url, dir.path());
    let (mut a, _face) = StdioAgent::start(gateway(&text, &log)).await;
    let r = a.request("tools/list", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    // Not asked again (a resume would only fetch the same frame).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(gets.load(std::sync::atomic::Ordering::SeqCst), 1);
    let r = a.request("tools/list", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modern_listener_gets_the_changes_of_a_legacy_http_upstream() {
    let (_up, _dir, log, text) = setup(true).await;
    let face = HttpFace::new(gateway(&text, &log)).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    let face2 = face.clone();
    tokio::spawn(async move { face2.serve(l).await });

    let listen = json!({"jsonrpc": "2.0", "id": "L1", "method": "subscriptions/listen", "params": {"_meta": common::meta(), "notifications": {"toolsListChanged": true}}});
    let mut stream = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(serde_json::to_vec(&listen).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut parser = warden_gateway::sse::SseParser::new();
    let mut frames: Vec<Value> = Vec::new();
    let mut next = async || loop {
        if !frames.is_empty() {
            return frames.remove(0);
        }
        let chunk = tokio::time::timeout(Duration::from_secs(15), stream.chunk())
            .await
            .expect("a frame on the listen stream in time")
            .unwrap()
            .expect("the listen stream is open");
        for event in parser.push(&chunk).unwrap() {
            frames.push(serde_json::from_str(&event).unwrap());
        }
    };
    let ack = next().await;
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    let r = common::call(
        &url,
        json!(2),
        "tools/call",
        json!({"name": "up/mutate", "arguments": {}}),
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");
    let changed = next().await;
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "L1"
    );
    drop(face);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everythings_session_log_messages_reach_the_agent() {
    // A second real server: the npm server-everything in its Streamable HTTP mode logs on the
    // session stream every few seconds once simulated logging is on.
    let port = free_port();
    let mut cmd = tokio::process::Command::new(common::npm_bin("mcp-server-everything"));
    cmd.arg("streamableHttp").env("PORT", port.to_string());
    let _srv = common::spawn_listening(cmd, port).await;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let text = manifest(&format!("http://127.0.0.1:{port}/mcp"), dir.path());
    let (mut a, _face) = StdioAgent::start(gateway(&text, &log)).await;
    let r = a.call("up/toggle-simulated-logging", json!({})).await;
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Started simulated")),
        "{r}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(f) = a.frame(left).await else {
            panic!("no session log message in time; saw {seen:?}");
        };
        if f["method"] == "notifications/message"
            && f["params"]["data"]
                .as_str()
                .is_some_and(|d| d.contains("SessionId"))
        {
            break;
        }
        seen.push(f);
    }
}
