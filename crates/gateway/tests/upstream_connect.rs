//! A session opens each upstream connection on its own: a server that is slow to start (or
//! down) holds up calls to itself only, never calls to the other servers behind the face.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Agent, TestLog, npm_bin};
use serde_json::json;
use warden_gateway::GatewayConfig;

const AGENT: &str = "spiffe://example.org/agent/a";
/// How long the slow server takes to start.
const SLOW_START: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_does_not_hold_up_calls_to_another() {
    let everything = npm_bin("mcp-server-everything");
    assert!(
        std::path::Path::new(&everything).exists(),
        "MCP peers missing: run `bash scripts/install-peers`"
    );
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "trust_domain = \"example.org\"\n[agents.a]\nid = \"{AGENT}\"\n\
         [gateway]\npins = \"{pins}\"\nupstream_timeout_secs = 60\n\
         [gateway.eras]\nslow = \"legacy\"\nfast = \"legacy\"\n\
         [servers.slow]\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"sleep {secs}; exec '{everything}' stdio\"]\n\
         [servers.fast]\ncommand = \"{everything}\"\nargs = [\"stdio\"]\n\
         [[allow]]\nid = \"echo\"\nagents = [\"a\"]\ntools = [\"slow/echo\", \"fast/echo\"]\n",
        pins = dir.path().join("pins.json").display(),
        secs = SLOW_START.as_secs(),
    );
    let log = TestLog::new();
    let (mut agent, _gw) = Agent::start(
        GatewayConfig::parse(&text).unwrap(),
        common::authority(&text, &log),
        AGENT,
    )
    .await;
    agent
        .request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}),
        )
        .await;
    agent
        .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    // A call to the slow server starts its connection (and waits for it)...
    agent
        .send(&json!({"jsonrpc": "2.0", "id": 100, "method": "tools/call", "params": {"name": "slow/echo", "arguments": {"message": "late"}}}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...while a call to the fast one goes through meanwhile.
    let start = Instant::now();
    agent
        .send(&json!({"jsonrpc": "2.0", "id": 101, "method": "tools/call", "params": {"name": "fast/echo", "arguments": {"message": "soon"}}}))
        .await;
    let fast = agent.response(101).await;
    let took = start.elapsed();
    assert_eq!(fast["result"]["content"][0]["text"], "Echo: soon", "{fast}");
    assert!(
        took < SLOW_START - Duration::from_secs(1),
        "the call to the fast server waited {took:?} for the slow server's start"
    );
    let slow = agent.response(100).await;
    assert_eq!(slow["result"]["content"][0]["text"], "Echo: late", "{slow}");
}
