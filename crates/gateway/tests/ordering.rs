//! What reaches the agent, and in which order, when an upstream sends notifications before its
//! response: the real server-everything's `trigger-long-running-operation` sends one progress
//! notification per step, the last one right before its result.
//!
//! - A Streamable HTTP client that accepts only JSON gets the JSON-RPC response, never a
//!   notification sent before it (commit 5fc0911).
//! - Over SSE and over stdio every progress notification of a call precedes its response (the
//!   conformance scenario `tools-call-with-progress` lost one under load: the response, routed
//!   directly to the waiting call, overtook the last notification, routed through the session's
//!   event pump, and the request's SSE stream closed without it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use common::{Agent, TestLog, authority, npm_bin};
use serde_json::{Value, json};
use warden_gateway::{Gateway, GatewayConfig, HttpFace};

const AGENT: &str = "spiffe://example.org/agent/alice";
const TOOL: &str = "every/trigger-long-running-operation";
const STEPS: u64 = 3;

fn manifest(dir: &std::path::Path) -> String {
    format!(
        r#"
        trust_domain = "example.org"
        [agents.alice]
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
        id = "long-op"
        agents = ["alice"]
        tools = ["{TOOL}"]
        "#,
        pins = dir.join("pins.json").display(),
        cmd = npm_bin("mcp-server-everything"),
    )
}

struct Http {
    url: String,
    session: String,
    _face: Arc<HttpFace>,
    _log: Arc<TestLog>,
    _dir: tempfile::TempDir,
}

async fn http_face() -> Http {
    let dir = tempfile::tempdir().unwrap();
    let text = manifest(dir.path());
    let log = TestLog::new();
    let gw = Gateway::new(GatewayConfig::parse(&text).unwrap(), authority(&text, &log)).unwrap();
    let face = HttpFace::new(gw).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    let f2 = face.clone();
    tokio::spawn(async move { f2.serve(l).await });
    let r = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    Http {
        url,
        session,
        _face: face,
        _log: log,
        _dir: dir,
    }
}

fn long_op(id: u64, token: &str, duration: f64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": TOOL, "arguments": {"duration": duration, "steps": STEPS},
        "_meta": {"progressToken": token}}})
}

/// POSTs `body` with `accept`; returns the status, content type and body text.
async fn post(h: &Http, accept: &str, body: &Value) -> (u16, String, String) {
    let r = reqwest::Client::new()
        .post(&h.url)
        .header("content-type", "application/json")
        .header("accept", accept)
        .header("mcp-session-id", &h.session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, r.text().await.unwrap())
}

fn is_progress_of(frame: &Value, token: &str) -> bool {
    frame["method"] == "notifications/progress" && frame["params"]["progressToken"] == token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_only_http_client_gets_the_response_not_a_notification() {
    let h = http_face().await;
    // Steps spread over 0.3 s: every progress notification reaches the request's stream well
    // before the result does.
    let (status, ctype, body) = post(&h, "application/json", &long_op(7, "tok-json", 0.3)).await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("application/json"), "{ctype}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["id"],
        json!(7),
        "got a frame other than the response: {v}"
    );
    assert!(v.get("method").is_none(), "got a notification: {v}");
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{v}"
    );
    // The same call with SSE accepted does carry the progress, so the JSON answer above really
    // had notifications to skip.
    let (_, ctype, body) = post(
        &h,
        "application/json, text/event-stream",
        &long_op(8, "tok-sse", 0.3),
    )
    .await;
    assert!(ctype.starts_with("text/event-stream"), "{ctype}: {body}");
    let frames = sse_frames(&body);
    assert!(
        frames.iter().any(|f| is_progress_of(f, "tok-sse")),
        "{body}"
    );
}

fn sse_frames(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_precedes_the_response_on_the_requests_sse_stream() {
    let h = http_face().await;
    // Zero duration: the last progress notification and the result leave the server
    // back-to-back, the race the conformance run lost under load.
    for i in 0..40u64 {
        let token = format!("tok-{i}");
        let (status, ctype, body) = post(
            &h,
            "application/json, text/event-stream",
            &long_op(100 + i, &token, 0.0),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(ctype.starts_with("text/event-stream"), "{ctype}: {body}");
        let frames = sse_frames(&body);
        let last = frames.last().unwrap();
        assert_eq!(
            last["id"],
            json!(100 + i),
            "the stream ends with the response: {body}"
        );
        let progress = frames.iter().filter(|f| is_progress_of(f, &token)).count();
        assert_eq!(
            progress as u64, STEPS,
            "call {i}: every progress notification precedes the response: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_precedes_the_response_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let text = manifest(dir.path());
    let log = TestLog::new();
    let (mut agent, _gw) = Agent::start(
        GatewayConfig::parse(&text).unwrap(),
        authority(&text, &log),
        AGENT,
    )
    .await;
    agent.initialize().await;
    for i in 0..40u64 {
        let token = format!("tok-{i}");
        agent.other.clear();
        let resp = agent
            .request(
                "tools/call",
                json!({"name": TOOL, "arguments": {"duration": 0.0, "steps": STEPS},
                       "_meta": {"progressToken": token}}),
            )
            .await;
        assert!(resp.get("result").is_some(), "{resp}");
        let progress = agent
            .other
            .iter()
            .filter(|f| is_progress_of(f, &token))
            .count();
        assert_eq!(
            progress as u64, STEPS,
            "call {i}: progress before the response, got {:?}",
            agent.other
        );
    }
}
