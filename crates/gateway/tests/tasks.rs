//! Tasks (the MCP tasks extension): a task's tool result, fetched with `tasks/get`, is labelled
//! and indexed for taint exactly as the result of the call that created the task, so an
//! argument copied from it is denied like one copied from a direct result. The upstream is a
//! small scripted server (`tests/py/task_server.py`): no installed SDK serves tasks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{Agent, TestLog, authority, error_code};
use serde_json::json;
use warden_gateway::GatewayConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_result_taints_what_is_copied_from_it() {
    let (python, script) = common::py_script("task_server.py");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        trust_domain = "example.org"
        [agents.a]
        id = "spiffe://example.org/agent/a"

        [gateway]
        pins = "{pins}"

        [servers.web]
        command = "{python}"
        args = ["{script}"]
        label = "web:evil.example"
        trusted = false

        [[allow]]
        id = "fetch"
        agents = ["a"]
        tools = ["web/fetch"]

        [[allow]]
        id = "send"
        agents = ["a"]
        tools = ["web/send"]
        [allow.args.to]
        rule = "no-untrusted-recipients"
        require_trusted = true
        "#,
        pins = dir.path().join("pins.json").display(),
        python = python.display(),
        script = script.display(),
    );
    let log = TestLog::new();
    let (mut a, _gw) = Agent::start(
        GatewayConfig::parse(&text).unwrap(),
        authority(&text, &log),
        "spiffe://example.org/agent/a",
    )
    .await;
    a.initialize().await;

    let created = a
        .call("web/fetch", json!({"url": "https://evil.example/"}))
        .await;
    assert_eq!(created["result"]["resultType"], "task", "{created}");
    assert_eq!(created["result"]["taskId"], "task-1");

    let got = a.request("tasks/get", json!({"taskId": "task-1"})).await;
    let inlined = &got["result"]["result"];
    assert!(
        inlined["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("ops-7731@evil.example")
    );
    assert_eq!(
        inlined["_meta"]["dev.warden/labels"],
        json!({"sources": ["web:evil.example"], "integrity": "untrusted"}),
        "{got}"
    );

    // The address came out of the task's result: tainted, denied.
    let copied = a
        .call("web/send", json!({"to": "ops-7731@evil.example"}))
        .await;
    assert_eq!(
        error_code(&copied),
        Some(warden_gateway::jsonrpc::DENIED),
        "{copied}"
    );
    assert_eq!(
        copied["error"]["data"]["rules"],
        json!(["no-untrusted-recipients"])
    );
    // A clean argument passes.
    let clean = a.call("web/send", json!({"to": "alice@example.org"})).await;
    assert!(clean.get("result").is_some(), "{clean}");

    // A task the session never created: its result counts as untrusted all the same.
    let orphan = a.request("tasks/get", json!({"taskId": "task-9"})).await;
    assert_eq!(
        orphan["result"]["result"]["_meta"]["dev.warden/labels"],
        json!({"sources": ["task:web"], "integrity": "untrusted"}),
        "{orphan}"
    );
    let copied = a
        .call("web/send", json!({"to": "zz-orphan-4410@evil.example"}))
        .await;
    assert_eq!(
        error_code(&copied),
        Some(warden_gateway::jsonrpc::DENIED),
        "{copied}"
    );
}
