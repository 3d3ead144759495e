//! The real Python MCP SDK client (legacy, auto and 2026-07-28 modes) through the Streamable
//! HTTP face, in front of two real upstreams (server-filesystem over stdio, legacy;
//! mcp-server-time over stdio, probed for its era).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{PyDriver, TestLog, authority, npm_bin, py_bin};
use serde_json::json;
use warden_gateway::{Gateway, GatewayConfig, HttpFace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_in_every_mode_through_http() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("work")).unwrap();
    let allowed = dir.path().join("work").canonicalize().unwrap();
    std::fs::write(allowed.join("hello.txt"), "hello through the gateway").unwrap();
    let text = format!(
        r#"
        trust_domain = "example.org"
        [agents.py]
        id = "spiffe://example.org/agent/py"
        [gateway]
        pins = "{pins}"
        http_agent = "spiffe://example.org/agent/py"
        [gateway.eras]
        fs = "legacy"
        [servers.fs]
        command = "{fs}"
        args = ["{allowed}"]
        label = "file:workspace"
        trusted = false
        [servers.time]
        command = "{time}"
        args = ["--local-timezone", "UTC"]
        [[allow]]
        id = "py-read"
        agents = ["py"]
        tools = ["fs/read_text_file", "time/get_current_time"]
        [[allow]]
        id = "py-write"
        agents = ["py"]
        tools = ["fs/write_file"]
        [allow.args.path]
        rule = "fs-allowed-dir"
        regex = "^{allowed}/"
        "#,
        pins = dir.path().join("pins.json").display(),
        fs = npm_bin("mcp-server-filesystem"),
        allowed = allowed.display(),
        time = py_bin("mcp-server-time"),
    );
    let cfg = GatewayConfig::parse(&text).unwrap();
    let log = TestLog::new();
    let gw = Gateway::new(cfg, authority(&text, &log)).unwrap();
    let face = HttpFace::new(gw).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let face2 = face.clone();
    tokio::spawn(async move { face2.serve(listener).await });

    let mut py = PyDriver::start();
    // Baseline: the filesystem server directly.
    let opened = py.cmd(json!({"op": "open", "command": [npm_bin("mcp-server-filesystem"), allowed.display().to_string()], "mode": "legacy"})).await;
    assert_eq!(opened["ok"], true, "{opened}");
    let direct = py.cmd(json!({"op": "call", "name": "read_text_file", "args": {"path": allowed.join("hello.txt")}})).await;
    py.cmd(json!({"op": "close"})).await;

    for mode in ["legacy", "auto", "2026-07-28"] {
        let opened = py
            .cmd(json!({"op": "open", "url": url, "mode": mode}))
            .await;
        assert_eq!(opened["ok"], true, "{mode}: {opened}");
        let listed = py.cmd(json!({"op": "list"})).await;
        let names: Vec<&str> = listed["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{mode}: {listed}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"fs/read_text_file") && names.contains(&"time/get_current_time"),
            "{mode}: {names:?}"
        );

        let via = py.cmd(json!({"op": "call", "name": "fs/read_text_file", "args": {"path": allowed.join("hello.txt")}})).await;
        let mut via_result = via["result"].clone();
        assert_eq!(
            via_result["_meta"]["dev.warden/labels"]["integrity"], "untrusted",
            "{mode}: {via}"
        );
        via_result.as_object_mut().unwrap().remove("_meta");
        let mut direct_result = direct["result"].clone();
        direct_result.as_object_mut().unwrap().remove("_meta");
        assert_eq!(via_result["content"], direct_result["content"], "{mode}");

        let now = py
            .cmd(
                json!({"op": "call", "name": "time/get_current_time", "args": {"timezone": "UTC"}}),
            )
            .await;
        assert!(
            now["result"]["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("UTC")),
            "{mode}: {now}"
        );
        assert_eq!(
            now["result"]["_meta"]["dev.warden/labels"]["integrity"], "trusted",
            "{mode}: {now}"
        );

        let outside = dir.path().join("outside.txt");
        let denied = py.cmd(json!({"op": "call", "name": "fs/write_file", "args": {"path": outside, "content": "x"}})).await;
        assert!(
            denied["message"]
                .as_str()
                .is_some_and(|m| m.contains("denied by policy")),
            "{mode}: {denied}"
        );
        assert!(!outside.exists());
        py.cmd(json!({"op": "close"})).await;
    }
    let records = log.records();
    assert_eq!(
        records
            .iter()
            .filter(|r| r["decision"] == "deny" && r["rules"] == json!(["fs-allowed-dir"]))
            .count(),
        3
    );
    drop(face);
}
