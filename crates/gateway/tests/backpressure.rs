//! Backpressure from the agent to the upstreams, against a real flooding server process
//! (`tests/py/flood_server.py`, standard library only) behind the real gateway faces:
//!
//! - stdio: while the agent reads nothing, a server writing 200,000 progress notifications of
//!   1 KiB is stopped by its own full pipe after a few hundred, and the gateway's memory stays
//!   flat; then the agent reads every notification, in order, and the result after them;
//! - stdio: while that direction is full, the agent's `notifications/cancelled` still reaches
//!   the server;
//! - stdio: an agent that reads the server's requests but never answers them holds at most
//!   1024 of them; the server's further requests are answered with an error;
//! - stdio: a server line longer than a frame may be ends the connection instead of being read
//!   whole;
//! - stdio: an agent that writes requests and never reads the answers stops being read once
//!   its in-flight budget is spent, and gets every answer once it reads;
//! - stdio: an agent's line longer than a frame may be is skipped as it arrives (never buffered
//!   whole) and refused, and the next frame is served;
//! - HTTP: a server→client request during the call of a client that accepts only JSON is
//!   answered with an error at once (it has no stream to reach the client on);
//! - HTTP: a request's event stream the client does not read stops that session's server the
//!   same way, while another session's calls go on;
//! - HTTP: a legacy session with no GET stream open keeps a bounded backlog that drops the
//!   oldest progress notifications, keeps what may not be dropped, and still answers requests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Agent, TestLog, authority};
use serde_json::{Value, json};
use warden_gateway::{Gateway, GatewayConfig, HttpFace};

const AGENT: &str = "spiffe://example.org/agent/alice";
const UPSTREAM_ERROR: i64 = warden_gateway::jsonrpc::UPSTREAM_ERROR;

/// Notifications the flood writes, and their size: 200 MB of JSON, far beyond any buffer.
const FLOOD: u64 = 200_000;
const FLOOD_BYTES: u64 = 1024;

/// How much the test process may grow while the agent does not read. The gateway's own queues
/// hold a few hundred frames (64 events + 64 in front of the pipe + the 64 KiB pipe: about
/// 200 frames of 1 KiB, each a few KiB once parsed): well under 2 MiB. 64 MiB leaves room for
/// allocator slack and the runtime, and is a fraction of the ~200 MB (several times that once
/// parsed) an unbounded queue takes in.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// How many notifications the server may get written while the agent does not read: the pipes
/// and queues above hold a few hundred; 20,000 is a tenth of the flood.
const WRITTEN_BOUND: u64 = 20_000;

/// As [`WRITTEN_BOUND`], over loopback TCP, whose socket buffers grow to several MiB each way
/// (kernel memory, not the gateway's).
const HTTP_WRITTEN_BOUND: u64 = 50_000;

fn manifest(dir: &Path) -> String {
    let (python, script) = common::py_script("flood_server.py");
    format!(
        r#"
        trust_domain = "example.org"
        [agents.alice]
        id = "{AGENT}"
        [gateway]
        pins = "{pins}"
        http_agent = "{AGENT}"
        [gateway.eras]
        flood = "legacy"
        [servers.flood]
        command = "{python}"
        args = ["{script}"]
        env = {{ FLOOD_STATE = "{state}" }}
        [[allow]]
        id = "flood"
        agents = ["alice"]
        tools = ["flood/flood", "flood/flood_later", "flood/ask", "flood/huge", "flood/echo"]
        "#,
        pins = dir.join("pins.json").display(),
        python = python.display(),
        script = script.display(),
        state = dir.display(),
    )
}

/// What the server noted in the state directory (`written`, `cancelled`, `done`).
fn state(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

fn written(dir: &Path) -> u64 {
    state(dir, "written").map_or(0, |w| w.trim().parse().unwrap())
}

/// Waits up to `wait` for `cond`.
async fn until(wait: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// This process's resident memory in KiB (every test runs in its own process under nextest).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An agent on the in-process stdio face whose pipe holds 64 KiB (a Linux pipe's default), with
/// the flood server connected.
async fn stdio_agent(dir: &Path, log: &TestLog) -> Agent {
    let text = manifest(dir);
    let (mut agent, _gw) = Agent::start_with_pipe(
        GatewayConfig::parse(&text).unwrap(),
        authority(&text, log),
        AGENT,
        64 * 1024,
    )
    .await;
    agent.initialize().await;
    let tools = agent.request("tools/list", json!({})).await;
    assert_eq!(
        tools["result"]["tools"].as_array().unwrap().len(),
        5,
        "{tools}"
    );
    agent
}

fn flood_call(id: u64, count: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": "flood/flood", "arguments": {"count": count, "size": FLOOD_BYTES},
        "_meta": {"progressToken": "f"}}})
}

/// Reads frames until the response `id`: every progress notification must come before it, in
/// order and without a gap (the stdio face drops nothing). Returns how many came, and the
/// response.
async fn read_flood(agent: &mut Agent, id: u64) -> (u64, Value) {
    let mut seen = 0u64;
    loop {
        let frame = agent
            .next_frame(Duration::from_secs(60))
            .await
            .expect("the gateway keeps sending");
        if frame.get("id") == Some(&json!(id)) {
            return (seen, frame);
        }
        assert_eq!(frame["method"], "notifications/progress", "{frame}");
        assert_eq!(frame["params"]["progressToken"], "f");
        seen += 1;
        assert_eq!(
            frame["params"]["progress"],
            json!(seen),
            "progress arrives in order, none lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_stops_at_the_server_while_the_agent_does_not_read_then_arrives_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let mut agent = stdio_agent(dir.path(), &log).await;
    let before = rss_kib();
    agent.send(&flood_call(100, FLOOD)).await;
    // The agent reads nothing: the server gets some way, then its pipe is full.
    assert!(
        until(Duration::from_secs(20), || written(dir.path()) >= 100).await,
        "the flood started"
    );
    held_back(dir.path(), before, WRITTEN_BOUND).await;
    // Now the agent reads: everything arrives, in order, then the result.
    let (seen, resp) = read_flood(&mut agent, 100).await;
    assert_eq!(seen, FLOOD);
    assert_eq!(common::text(&resp), format!("flooded {FLOOD}"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_reaches_the_server_while_the_agent_does_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let mut agent = stdio_agent(dir.path(), &log).await;
    // Endless, as far as this test goes.
    agent.send(&flood_call(200, 100_000_000)).await;
    assert!(
        until(Duration::from_secs(20), || written(dir.path()) >= 100).await,
        "the flood started"
    );
    // The gateway→agent direction is full; the agent's cancellation still gets through.
    agent
        .send(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                       "params": {"requestId": 200, "reason": "enough"}}),
        )
        .await;
    assert!(
        until(Duration::from_secs(10), || state(dir.path(), "cancelled")
            .is_some())
        .await,
        "the cancellation reached the server while the agent read nothing"
    );
    // Once the agent reads, the flood ends early, in order, with its result.
    let (seen, resp) = read_flood(&mut agent, 200).await;
    assert!(seen < WRITTEN_BOUND, "stopped after {seen}");
    assert_eq!(common::text(&resp), format!("flooded {seen}"), "{resp}");
    // And the session goes on.
    let echo = agent
        .call("flood/echo", json!({"text": "still here"}))
        .await;
    assert_eq!(common::text(&echo), "still here", "{echo}");
}

/// POSTs one JSON-RPC frame in a legacy session, accepting JSON only; returns the response.
/// Watches for 3 s while the agent does not read: the server wrote fewer than `bound`
/// notifications, and this process grew less than [`RSS_BOUND_KIB`] above `before`.
async fn held_back(dir: &Path, before: u64, bound: u64) {
    let mut peak = before;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss_kib());
    }
    let held = written(dir);
    assert!(
        held < bound,
        "the server was stopped by backpressure, yet it wrote {held} notifications"
    );
    assert!(
        peak - before < RSS_BOUND_KIB,
        "the gateway grew by {} KiB while the agent did not read",
        peak - before
    );
}

/// The HTTP face over the flood server, serving on a loopback port; returns its URL.
async fn http_face(dir: &Path, log: &Arc<TestLog>) -> String {
    let text = manifest(dir);
    let gw = Gateway::new(GatewayConfig::parse(&text).unwrap(), authority(&text, log)).unwrap();
    let face = HttpFace::new(gw).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move { face.serve(l).await });
    url
}

/// A new legacy session on the face at `url`; returns its id.
async fn http_session(url: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let (headers, _) = post(url, None, &init).await;
    headers["mcp-session-id"].to_str().unwrap().to_owned()
}

async fn post(
    url: &str,
    session: Option<&str>,
    body: &Value,
) -> (reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json");
    if let Some(s) = session {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let r = req.body(body.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    (
        headers,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_session_stream_open_the_backlog_drops_the_oldest_progress_not_the_rest() {
    const LATER: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let url = http_face(dir.path(), &log).await;
    let sid = http_session(&url).await;
    let call = |id: u64, name: &str, args: Value| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}});
    // The server answers, then sends 5,000 progress notifications and a resource update that
    // belong to no request: with no GET stream open they have nowhere to go.
    let (_, later) = post(
        &url,
        Some(&sid),
        &call(2, "flood/flood_later", json!({"count": LATER, "size": 200})),
    )
    .await;
    assert_eq!(common::text(&later), "later", "{later}");
    assert!(
        until(Duration::from_secs(60), || state(dir.path(), "done")
            .is_some())
        .await,
        "the server sent everything: it wrote {} of {LATER}",
        written(dir.path())
    );
    // The agent opens its GET stream now: it gets the newest progress notifications, in order,
    // and the resource update, which may not be dropped. (No request is sent meanwhile: while
    // one request is in flight, notifications without a progress token go to its stream.)
    let mut get = reqwest::Client::new()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let mut parser = warden_gateway::sse::SseParser::new();
    let mut progress = Vec::new();
    let mut done = false;
    while !done {
        let chunk = tokio::time::timeout(Duration::from_secs(60), get.chunk())
            .await
            .unwrap_or_else(|_| panic!("the backlog arrives: {} progress so far", progress.len()))
            .unwrap()
            .expect("the stream stays open");
        for event in parser.push(&chunk).unwrap() {
            let frame: Value = serde_json::from_str(&event).unwrap();
            match frame["method"].as_str().unwrap() {
                "notifications/progress" => {
                    progress.push(frame["params"]["progress"].as_u64().unwrap());
                }
                "notifications/resources/updated" => {
                    assert_eq!(frame["params"]["uri"], "flood://done");
                    done = true;
                }
                other => panic!("unexpected {other}: {frame}"),
            }
        }
    }
    // Responses never wait in the backlog, and the session goes on after the overflow.
    let (_, echo) = post(
        &url,
        Some(&sid),
        &call(3, "flood/echo", json!({"text": "answered"})),
    )
    .await;
    assert_eq!(common::text(&echo), "answered", "{echo}");
    let kept = progress.len() as u64;
    assert!(
        kept > 0 && kept < LATER,
        "a bounded backlog keeps some, not all: kept {kept} of {LATER}"
    );
    // The oldest went: what is kept is the newest, without a gap, in order.
    let first = LATER - kept + 1;
    assert_eq!(progress, (first..=LATER).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_answers_holds_a_bounded_number_of_server_requests() {
    const ASKED: u64 = 1100;
    const HELD: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let mut agent = stdio_agent(dir.path(), &log).await;
    let resp = agent.call("flood/ask", json!({"count": ASKED})).await;
    assert_eq!(common::text(&resp), "asked", "{resp}");
    let asked = agent
        .other
        .iter()
        .filter(|f| f["method"] == "roots/list")
        .count() as u64;
    assert_eq!(
        asked, HELD,
        "the agent holds at most {HELD} unanswered requests"
    );
    let refused = || state(dir.path(), "refused").map(|r| r.trim().to_owned());
    assert!(
        until(Duration::from_secs(10), || refused()
            == Some((ASKED - HELD).to_string()))
        .await,
        "the server's other requests were answered with an error: {:?}",
        refused()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_an_unread_request_stream_stops_its_server_and_no_other_session() {
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let url = http_face(dir.path(), &log).await;
    let (a, b) = (http_session(&url).await, http_session(&url).await);
    // Session a: the flood's event stream, which the client does not read for now.
    let before = rss_kib();
    let mut stream = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &a)
        .header("mcp-protocol-version", "2025-11-25")
        .body(flood_call(300, FLOOD).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        until(Duration::from_secs(20), || written(dir.path()) >= 100).await,
        "the flood started"
    );
    // Session b is not held up by session a's full stream.
    let (_, echo) = post(
        &url,
        Some(&b),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "flood/echo", "arguments": {"text": "b"}}}),
    )
    .await;
    assert_eq!(common::text(&echo), "b", "{echo}");
    held_back(dir.path(), before, HTTP_WRITTEN_BOUND).await;
    // The client reads: every notification in order, then the response.
    let mut parser = warden_gateway::sse::SseParser::new();
    let mut seen = 0u64;
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(60), stream.chunk())
            .await
            .expect("the stream goes on")
            .unwrap()
            .expect("the stream ends with the response");
        let mut end = None;
        for event in parser.push(&chunk).unwrap() {
            let frame: Value = serde_json::from_str(&event).unwrap();
            if frame.get("id") == Some(&json!(300)) {
                end = Some(frame);
                continue;
            }
            assert!(end.is_none(), "nothing after the response: {frame}");
            seen += 1;
            assert_eq!(
                frame["params"]["progress"],
                json!(seen),
                "in order, none lost"
            );
        }
        if let Some(resp) = end {
            assert_eq!(seen, FLOOD);
            assert_eq!(common::text(&resp), format!("flooded {FLOOD}"), "{resp}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_line_over_the_frame_limit_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let mut agent = stdio_agent(dir.path(), &log).await;
    // 17 MiB in one line: over the 16 MiB a frame may be.
    let resp = agent.call("flood/huge", json!({"mib": 17})).await;
    assert_eq!(common::error_code(&resp), Some(UPSTREAM_ERROR), "{resp}");
    assert!(
        !agent
            .other
            .iter()
            .any(|f| f["method"] == "notifications/message"),
        "the huge frame was not passed on"
    );
}

/// An HTTP server's plain JSON answer is held to the same frame limit as a stdio line: refused
/// from its Content-Length, or while it is read when there is none; a smaller one passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_servers_answer_over_the_frame_limit_is_refused() {
    let (python, script) = common::py_script("big_http_server.py");
    let (_server, url) = common::start_http_server(&python, &[script.display().to_string()]).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        trust_domain = "example.org"
        [agents.a]
        id = "spiffe://example.org/agent/a"
        [gateway]
        pins = "{pins}"
        [servers.big]
        url = "{url}/mcp"
        [[allow]]
        id = "big"
        agents = ["a"]
        tools = ["big/big"]
        "#,
        pins = dir.path().join("pins.json").display(),
    );
    let log = TestLog::new();
    let (mut agent, _gw) = Agent::start(
        GatewayConfig::parse(&text).unwrap(),
        authority(&text, &log),
        "spiffe://example.org/agent/a",
    )
    .await;
    agent.initialize().await;
    let small = agent.call("big/big", json!({"mib": 1})).await;
    assert_eq!(common::text(&small).len(), 1 << 20, "{small}");
    for chunked in [false, true] {
        let resp = agent
            .call("big/big", json!({"mib": 17, "chunked": chunked}))
            .await;
        assert_eq!(
            common::error_code(&resp),
            Some(UPSTREAM_ERROR),
            "chunked {chunked}: {}",
            resp.to_string().get(..300).unwrap_or_default()
        );
    }
    log.verify();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_reads_its_answers_stops_being_read() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let text = manifest(dir.path());
    let log = TestLog::new();
    let (agent, _gw) = Agent::start_with_pipe(
        GatewayConfig::parse(&text).unwrap(),
        authority(&text, &log),
        AGENT,
        4096,
    )
    .await;
    let (mut w, mut r) = agent.into_parts();
    const PINGS: u64 = 100_000;
    let written = Arc::new(AtomicU64::new(0));
    let w2 = written.clone();
    let writer = tokio::spawn(async move {
        for i in 0..PINGS {
            let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"ping\"}}\n");
            w.write_all(line.as_bytes()).await.unwrap();
            w2.store(i + 1, Ordering::Relaxed);
        }
        w
    });
    // Until writing stalls: the face stops reading once its budget (65,536 small frames) is
    // held by requests whose answers wait for the agent.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = written.load(Ordering::Relaxed);
        assert!(
            now < PINGS,
            "the face read all {PINGS} requests while the agent read no answer"
        );
        if now == last {
            break;
        }
        last = now;
    }
    // The budget, plus what the pipes, the reader's buffer and the answer queue hold.
    assert!(
        last <= 65_536 + 1_000,
        "{last} requests read ahead of their answers"
    );
    // Reading lets the agent write the rest; every request is answered.
    let mut answered = 0;
    while answered < PINGS {
        let line = tokio::time::timeout(Duration::from_secs(60), r.next_line())
            .await
            .expect("answers stopped")
            .unwrap()
            .expect("the face closed the pipe");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["result"], json!({}), "{v}");
        answered += 1;
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn an_over_long_line_from_the_agent_is_skipped_and_refused() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let text = manifest(dir.path());
    let log = TestLog::new();
    let (agent, _gw) = Agent::start_with_pipe(
        GatewayConfig::parse(&text).unwrap(),
        authority(&text, &log),
        AGENT,
        64 * 1024,
    )
    .await;
    let (mut w, mut r) = agent.into_parts();
    let writer = tokio::spawn(async move {
        // A string of 16 MiB + 1 KiB inside an otherwise valid request, sent in pieces.
        w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"x\":\"")
            .await
            .unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..16 {
            w.write_all(&chunk).await.unwrap();
        }
        w.write_all(&chunk[..1024]).await.unwrap();
        w.write_all(b"\"}}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n")
            .await
            .unwrap();
        w
    });
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), r.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let refused = next().await;
    assert_eq!(refused["error"]["code"], json!(-32700), "{refused}");
    assert_eq!(refused["error"]["message"], json!("frame too large"));
    // The rest of the long line was skipped, not parsed as frames of its own.
    let served = next().await;
    assert_eq!(served["id"], json!(2), "{served}");
    assert_eq!(served["result"], json!({}));
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_only_clients_server_requests_are_refused_not_left_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let url = http_face(dir.path(), &log).await;
    let sid = http_session(&url).await;
    // The server asks the client three times during the call; this client takes JSON only, so
    // the requests have no stream to travel on.
    let (_, resp) = post(
        &url,
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "flood/ask", "arguments": {"count": 3}}}),
    )
    .await;
    assert_eq!(common::text(&resp), "asked", "{resp}");
    let refused = || state(dir.path(), "refused").map(|r| r.trim().to_owned());
    assert!(
        until(Duration::from_secs(10), || refused().as_deref()
            == Some("3"))
        .await,
        "the server's requests were answered with an error at once, got {:?}",
        refused()
    );
}
