//! The `subscriptions/listen` relay of the HTTP face (MCP 2026-07-28), against real upstreams
//! of the Python SDK: the conformance everything-server, and a small SDK server whose tool
//! changes its description (`tests/py/mutable_server.py`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{TestLog, authority_with_tools, call, error_code, meta, peers, tool_specs};
use serde_json::{Value, json};
use warden_gateway::{Gateway, GatewayConfig, HttpFace};

const SUB: &str = "io.modelcontextprotocol/subscriptionId";

/// A Python upstream on a free port; returns it (killed on drop) and its `/mcp` URL.
async fn start_upstream(program: PathBuf, args: &[String]) -> (tokio::process::Child, String) {
    let (child, base) = common::start_http_server(&program, args).await;
    (child, format!("{base}/mcp"))
}

async fn everything_server() -> (tokio::process::Child, String) {
    let server = peers().join("mcp-everything/venv/bin/mcp-everything-server");
    start_upstream(server, &["--port".into()]).await
}

async fn mutable_server() -> (tokio::process::Child, String) {
    let python = peers().join("mcp-everything/venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/mutable_server.py");
    start_upstream(python, &[script.display().to_string()]).await
}

/// A modern request to `url` (JSON or SSE answer); returns the response frame.
/// A gateway's HTTP face in front of `upstream` (server `every`, bare tool names, every tool
/// allowed); returns its URL.
async fn gateway(upstream: &str, dir: &std::path::Path, log: &TestLog) -> String {
    gateway_with(upstream, dir, log, "").await
}

/// As [`gateway`], with `extra` lines at the end of the `[gateway]` table.
async fn gateway_with(upstream: &str, dir: &std::path::Path, log: &TestLog, extra: &str) -> String {
    let text = format!(
        "trust_domain = \"example.org\"\n[agents.a]\nid = \"spiffe://example.org/agent/a\"\n\
         [gateway]\npins = \"{}\"\nhttp_agent = \"spiffe://example.org/agent/a\"\nbare_names = true\nupstream_timeout_secs = 30\n{extra}\
         [servers.every]\nurl = \"{upstream}\"\n\
         [[allow]]\nid = \"all\"\nagents = [\"a\"]\ntools = [\"every/*\"]\n",
        dir.join("pins.json").display()
    );
    let cfg = GatewayConfig::parse(&text).unwrap();
    let gw: Arc<Gateway> = Gateway::new(
        cfg,
        authority_with_tools(&text, log, tool_specs(upstream, "every").await),
    )
    .unwrap();
    let face = HttpFace::new(gw).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move { face.serve(l).await });
    url
}

enum Next {
    Frame(Value),
    Ended,
    Quiet,
}

/// An open listen stream, as the agent reads it.
struct Listen {
    resp: reqwest::Response,
    parser: warden_gateway::sse::SseParser,
    queue: VecDeque<Value>,
}

impl Listen {
    async fn open(url: &str, id: &str, notifications: Value) -> Self {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen", "params": {"_meta": meta(), "notifications": notifications}});
        let resp = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            resp,
            parser: warden_gateway::sse::SseParser::new(),
            queue: VecDeque::new(),
        }
    }

    async fn next(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = self.queue.pop_front() {
                return Next::Frame(f);
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return Next::Quiet,
                Ok(Ok(Some(chunk))) => {
                    for event in self.parser.push(&chunk).unwrap() {
                        self.queue.push_back(serde_json::from_str(&event).unwrap());
                    }
                }
                Ok(_) => return Next::Ended,
            }
        }
    }

    async fn frame(&mut self) -> Value {
        match self.next(Duration::from_secs(15)).await {
            Next::Frame(f) => f,
            Next::Ended => panic!("the listen stream ended"),
            Next::Quiet => panic!("no frame on the listen stream in time"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_list_changed_reaches_the_agent_and_cancel_ends_the_stream() {
    let (_srv, upstream) = everything_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let gw = gateway(&upstream, dir.path(), &log).await;

    let mut listen = Listen::open(&gw, "L1", json!({"toolsListChanged": true})).await;
    let ack = listen.frame().await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(ack["params"]["_meta"][SUB], "L1");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true})
    );

    let r = call(
        &gw,
        json!(2),
        "tools/call",
        json!({"name": "test_trigger_tool_change", "arguments": {}}),
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");
    let changed = listen.frame().await;
    assert_eq!(changed["method"], "notifications/tools/list_changed");
    assert_eq!(changed["params"]["_meta"][SUB], "L1", "{changed}");

    // The agent cancels its listen request: the stream ends.
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "L1", "_meta": meta()}});
    let resp = reqwest::Client::new()
        .post(&gw)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "notifications/cancelled")
        .body(serde_json::to_vec(&cancel).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(
        matches!(listen.next(Duration::from_secs(5)).await, Next::Ended),
        "the stream outlived its cancellation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_relays_only_the_kinds_the_agent_asked_for() {
    let (_srv, upstream) = everything_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let gw = gateway(&upstream, dir.path(), &log).await;

    let mut listen = Listen::open(&gw, "L2", json!({"promptsListChanged": true})).await;
    let ack = listen.frame().await;
    assert_eq!(
        ack["params"]["notifications"],
        json!({"promptsListChanged": true})
    );
    // A tool change first, then a prompt change: only the prompt change may arrive (the
    // gateway itself listens for tool changes upstream, and must not leak them).
    for (id, tool) in [
        (3, "test_trigger_tool_change"),
        (4, "test_trigger_prompt_change"),
    ] {
        let r = call(
            &gw,
            json!(id),
            "tools/call",
            json!({"name": tool, "arguments": {}}),
        )
        .await;
        assert!(r.get("result").is_some(), "{r}");
    }
    let first = listen.frame().await;
    assert_eq!(
        first["method"], "notifications/prompts/list_changed",
        "{first}"
    );
    assert_eq!(first["params"]["_meta"][SUB], "L2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_tool_change_is_re_pinned_before_the_agent_re_lists() {
    let (_srv, upstream) = mutable_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let gw = gateway(&upstream, dir.path(), &log).await;

    // Pinned at first use, and allowed.
    let r = call(
        &gw,
        json!(1),
        "tools/call",
        json!({"name": "mutable", "arguments": {"text": "hi"}}),
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");

    let mut listen = Listen::open(&gw, "L3", json!({"toolsListChanged": true})).await;
    assert_eq!(
        listen.frame().await["method"],
        "notifications/subscriptions/acknowledged"
    );
    let r = call(
        &gw,
        json!(2),
        "tools/call",
        json!({"name": "mutate", "arguments": {}}),
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");
    let changed = listen.frame().await;
    assert_eq!(changed["method"], "notifications/tools/list_changed");

    // The gateway re-listed on its own: flagged although the agent sent nothing since, and
    // refused until an operator accepts it.
    assert_changed_and_refused(&gw, &log).await;
}

/// The log holds (within 10 s) a `changed` pin event of `every/mutable`, and a call to it is
/// refused as changed.
async fn assert_changed_and_refused(gw: &str, log: &TestLog) {
    let flagged = || {
        log.records().iter().any(|r| {
            r["type"] == "warden.tool_pinned"
                && r["tool"] == "every/mutable"
                && r["status"] == "changed"
        })
    };
    for _ in 0..200 {
        if flagged() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        flagged(),
        "no `changed` pin event: {:?}",
        log.records()
            .iter()
            .filter(|r| r["type"] == "warden.tool_pinned")
            .collect::<Vec<_>>()
    );
    let r = call(
        gw,
        json!(3),
        "tools/call",
        json!({"name": "mutable", "arguments": {"text": "hi"}}),
    )
    .await;
    assert_eq!(
        error_code(&r),
        Some(warden_gateway::jsonrpc::TOOL_CHANGED),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modern_http_agent_without_a_relay_still_has_changes_re_pinned() {
    // The upstream speaks 2026-07-28, so it announces a change only on listen streams; this
    // agent opens none: the gateway's own listen hears the change and re-pins.
    let (_srv, upstream) = mutable_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let gw = gateway_with(
        &upstream,
        dir.path(),
        &log,
        "[gateway.eras]\nevery = \"modern\"\n",
    )
    .await;
    let r = call(
        &gw,
        json!(1),
        "tools/call",
        json!({"name": "mutable", "arguments": {"text": "hi"}}),
    )
    .await;
    assert!(r.get("result").is_some(), "pinned and allowed: {r}");
    let r = call(
        &gw,
        json!(2),
        "tools/call",
        json!({"name": "mutate", "arguments": {}}),
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");
    assert_changed_and_refused(&gw, &log).await;
}

/// A face over the SDK's mutable server on stdio, in `era`; returns its URL.
async fn stdio_face(era: &str, dir: &std::path::Path, log: &TestLog) -> String {
    let python = peers().join("mcp-everything/venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/mutable_server.py");
    let text = format!(
        "trust_domain = \"example.org\"\n[agents.a]\nid = \"spiffe://example.org/agent/a\"\n\
         [gateway]\npins = \"{}\"\nhttp_agent = \"spiffe://example.org/agent/a\"\nbare_names = true\n\
         [gateway.eras]\nevery = \"{era}\"\n\
         [servers.every]\ncommand = \"{}\"\nargs = [\"{}\", \"stdio\"]\n\
         [[allow]]\nid = \"all\"\nagents = [\"a\"]\ntools = [\"every/mutate\"]\n",
        dir.join("pins.json").display(),
        python.display(),
        script.display()
    );
    let gw = Gateway::new(
        GatewayConfig::parse(&text).unwrap(),
        common::authority(&text, log),
    )
    .unwrap();
    let face = HttpFace::new(gw).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move { face.serve(l).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_upstreams_listen_stream_is_told_apart_on_its_pipe_and_relayed() {
    // The SDK server over stdio, in the modern era: its listen stream shares the pipe with
    // everything else, its frames told apart by their subscription id.
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let url = stdio_face("modern", dir.path(), &log).await;

    let mut listen = Listen::open(
        &url,
        "S1",
        json!({"promptsListChanged": true, "toolsListChanged": true}),
    )
    .await;
    let ack = listen.frame().await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(ack["params"]["_meta"][SUB], "S1");
    // Prompts are named only because the server acknowledged them on its stream.
    assert_eq!(
        ack["params"]["notifications"],
        json!({"promptsListChanged": true, "toolsListChanged": true}),
        "{ack}"
    );
    let r = call(
        &url,
        json!(2),
        "tools/call",
        json!({"name": "mutate", "arguments": {}}),
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");
    let changed = listen.frame().await;
    assert_eq!(changed["method"], "notifications/tools/list_changed");
    assert_eq!(changed["params"]["_meta"][SUB], "S1", "{changed}");
    // The agent goes away; the next listen is served as the first was.
    drop(listen);
    let mut again = Listen::open(&url, "S2", json!({"toolsListChanged": true})).await;
    assert_eq!(again.frame().await["params"]["_meta"][SUB], "S2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_holds_a_bounded_number_of_listen_streams() {
    let (_srv, upstream) = everything_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let gw = gateway(&upstream, dir.path(), &log).await;
    let mut open = Vec::new();
    for n in 0..16 {
        let mut l = Listen::open(&gw, &format!("M{n}"), json!({"toolsListChanged": true})).await;
        assert_eq!(
            l.frame().await["method"],
            "notifications/subscriptions/acknowledged"
        );
        open.push(l);
    }
    let body = json!({"jsonrpc": "2.0", "id": "M16", "method": "subscriptions/listen", "params": {"_meta": meta(), "notifications": {"toolsListChanged": true}}});
    // The id of an open stream cannot be reused (it would also slip past the cap).
    drop(open.pop());
    let mut reused = body.clone();
    reused["id"] = json!("M3");
    let mut status = 0;
    for _ in 0..40 {
        let again = reqwest::Client::new()
            .post(&gw)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .body(serde_json::to_vec(&reused).unwrap())
            .send()
            .await
            .unwrap();
        status = again.status().as_u16();
        if status != 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 400);
    open.push(Listen::open(&gw, "M15", json!({"toolsListChanged": true})).await);
    let over = reqwest::Client::new()
        .post(&gw)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 429);
    let v: Value = serde_json::from_str(&over.text().await.unwrap()).unwrap();
    assert_eq!(v["id"], "M16");
    // One closes; its place is free again once the relay noticed.
    drop(open.pop());
    let mut freed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let resp = reqwest::Client::new()
            .post(&gw)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            freed = true;
            break;
        }
    }
    assert!(freed, "a closed listen stream kept its place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_upstreams_session_notifications_reach_a_modern_listener() {
    // The same server in the 2025-11-25 era: it announces the change on its session (no listen
    // stream there); the modern agent gets it on its listen stream, and only there.
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let url = stdio_face("legacy", dir.path(), &log).await;
    let mut listen = Listen::open(&url, "G1", json!({"toolsListChanged": true})).await;
    let ack = listen.frame().await;
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true})
    );
    // The server announces the change before it answers; the announcement must not ride the
    // call's own response stream.
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "mutate", "arguments": {}, "_meta": meta()}});
    let answer = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "mutate")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(answer.contains("mutated"), "{answer}");
    assert!(!answer.contains("list_changed"), "{answer}");
    let changed = listen.frame().await;
    assert_eq!(changed["method"], "notifications/tools/list_changed");
    assert_eq!(changed["params"]["_meta"][SUB], "G1", "{changed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listen_stream_relays_every_server_behind_the_face() {
    // Two servers: the everything-server over HTTP and the mutable server over stdio.
    let (_srv, every) = everything_server().await;
    let python = peers().join("mcp-everything/venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/mutable_server.py");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "trust_domain = \"example.org\"\n[agents.a]\nid = \"spiffe://example.org/agent/a\"\n\
         [gateway]\npins = \"{}\"\nhttp_agent = \"spiffe://example.org/agent/a\"\n\
         [gateway.eras]\nmut = \"modern\"\n\
         [servers.every]\nurl = \"{every}\"\n\
         [servers.mut]\ncommand = \"{}\"\nargs = [\"{}\", \"stdio\"]\n\
         [[allow]]\nid = \"triggers\"\nagents = [\"a\"]\ntools = [\"every/test_trigger_tool_change\", \"mut/mutate\"]\n",
        dir.path().join("pins.json").display(),
        python.display(),
        script.display()
    );
    let log = TestLog::new();
    let gw = Gateway::new(
        GatewayConfig::parse(&text).unwrap(),
        common::authority(&text, &log),
    )
    .unwrap();
    let face = HttpFace::new(gw).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move { face.serve(l).await });

    let mut listen = Listen::open(
        &url,
        "M1",
        json!({"toolsListChanged": true, "promptsListChanged": true}),
    )
    .await;
    // Prompts are not served by a face of several servers: not acknowledged.
    let ack = listen.frame().await;
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true}),
        "{ack}"
    );
    for (id, tool) in [(2, "mut/mutate"), (3, "every/test_trigger_tool_change")] {
        let r = call(
            &url,
            json!(id),
            "tools/call",
            json!({"name": tool, "arguments": {}}),
        )
        .await;
        assert!(r.get("result").is_some(), "{tool}: {r}");
        let changed = listen.frame().await;
        assert_eq!(
            changed["method"], "notifications/tools/list_changed",
            "{tool}"
        );
        assert_eq!(changed["params"]["_meta"][SUB], "M1", "{changed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_agent_gets_the_announcement_and_the_change_is_re_pinned_at_once() {
    // No listen stream in 2025-11-25: the server announces on its session, the agent (stdio face)
    // gets the notification, and the gateway re-lists without waiting for the next call.
    let python = peers().join("mcp-everything/venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/mutable_server.py");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "trust_domain = \"example.org\"\n[agents.a]\nid = \"spiffe://example.org/agent/a\"\n\
         [gateway]\npins = \"{}\"\n[gateway.eras]\nmut = \"legacy\"\n\
         [servers.mut]\ncommand = \"{}\"\nargs = [\"{}\", \"stdio\"]\n\
         [[allow]]\nid = \"all\"\nagents = [\"a\"]\ntools = [\"mut/mutate\", \"mut/mutable\"]\n",
        dir.path().join("pins.json").display(),
        python.display(),
        script.display()
    );
    let log = TestLog::new();
    let (mut a, _gw) = common::Agent::start(
        GatewayConfig::parse(&text).unwrap(),
        common::authority(&text, &log),
        "spiffe://example.org/agent/a",
    )
    .await;
    a.initialize().await;
    let r = a.call("mut/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = a.call("mut/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(
        a.other
            .iter()
            .any(|f| f["method"] == "notifications/tools/list_changed"),
        "{:?}",
        a.other
    );
    let flagged = |log: &TestLog| {
        log.records().iter().any(|r| {
            r["type"] == "warden.tool_pinned"
                && r["tool"] == "mut/mutable"
                && r["status"] == "changed"
        })
    };
    for _ in 0..100 {
        if flagged(&log) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(flagged(&log), "the announced change was not re-pinned");
}
