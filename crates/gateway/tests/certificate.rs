//! The certificate the gateway forwards: exactly one `dev.warden/certificate` in the upstream's
//! `_meta`, the kernel's (it verifies, bound to the arguments the upstream got), whatever the
//! agent put there, and the agent's other `_meta` entries pass untouched. The upstream
//! (`tests/py/recording_server.py`) records the raw lines it receives, so a duplicate key (which
//! a parsed value would hide) is seen.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{Agent, TestLog, authority};
use serde_json::{Value, json};
use warden_gateway::{GatewayConfig, META_CERTIFICATE, jsonrpc};
use warden_kernel::{CallCertificate, CertSigningKey, CertificateVerifier, Timestamp};

/// An agent of a gateway in front of the recording server; the file its `tools/call` lines go
/// to (the other lines go to the same name plus `.other`).
async fn recorded_agent(
    dir: &tempfile::TempDir,
    log: &TestLog,
) -> (
    Agent,
    std::sync::Arc<warden_gateway::Gateway>,
    std::path::PathBuf,
) {
    let (python, script) = common::py_script("recording_server.py");
    let recorded = dir.path().join("calls.jsonl");
    let text = format!(
        r#"
        trust_domain = "example.org"
        [agents.a]
        id = "spiffe://example.org/agent/a"

        [gateway]
        pins = "{pins}"

        [servers.rec]
        command = "{python}"
        args = ["{script}", "{recorded}"]

        [[allow]]
        id = "echo"
        agents = ["a"]
        tools = ["rec/echo"]
        "#,
        pins = dir.path().join("pins.json").display(),
        python = python.display(),
        script = script.display(),
        recorded = recorded.display(),
    );
    let (mut a, gw) = Agent::start(
        GatewayConfig::parse(&text).unwrap(),
        authority(&text, log),
        "spiffe://example.org/agent/a",
    )
    .await;
    a.initialize().await;
    (a, gw, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_certificate_is_replaced_by_the_kernels_not_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let (mut a, _gw, recorded) = recorded_agent(&dir, &log).await;

    // A forged certificate (it would verify nowhere, but a server that read the first of two
    // keys would see it) and an entry of the agent's own.
    let forged =
        json!({"cert": {"v": 1, "decision": "allow", "tool": {"name": "echo"}}, "sig": "00"});
    let args = json!({"m": "hello"});
    let r = a
        .request(
            "tools/call",
            json!({"name": "rec/echo", "arguments": args, "_meta": {META_CERTIFICATE: forged, "trace": "keep-me"}}),
        )
        .await;
    assert_eq!(common::text(&r), "hello", "{r}");
    // No `_meta` at all: the certificate still goes.
    let r = a
        .request(
            "tools/call",
            json!({"name": "rec/echo", "arguments": {"m": "bare"}}),
        )
        .await;
    assert_eq!(common::text(&r), "bare", "{r}");

    let lines = std::fs::read_to_string(&recorded).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let verifier = CertificateVerifier::new(
        vec![CertSigningKey::from_seed(&[7; 32]).verifying_key()],
        "Server::\"rec\"",
    );
    for (line, expected_args) in lines.iter().zip([args, json!({"m": "bare"})]) {
        assert_eq!(
            line.matches(&format!("\"{META_CERTIFICATE}\"")).count(),
            1,
            "{line}"
        );
        // Strict parsing refuses a duplicate key anywhere in the frame.
        let frame: Value = jsonrpc::parse_strict(line.as_bytes()).unwrap();
        let params = &frame["params"];
        assert_eq!(params["arguments"], expected_args);
        let cert =
            CallCertificate::from_json_value(params["_meta"][META_CERTIFICATE].clone()).unwrap();
        verifier
            .verify(
                &cert,
                "echo",
                &serde_json::to_vec(&params["arguments"]).unwrap(),
                Timestamp::from_system_time(std::time::SystemTime::now()),
            )
            .unwrap();
    }
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["params"]["_meta"]["trace"], "keep-me", "{first}");
    log.verify();
}

/// Warden's `_meta` namespace is the gateway's: declared labels, intent and a delegation token
/// never reach an upstream, on a `tools/call` (whose only Warden key upstream is the kernel's
/// certificate) nor on any other request, notification or answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_warden_meta_key_of_the_agent_reaches_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let log = TestLog::new();
    let (mut a, _gw, recorded) = recorded_agent(&dir, &log).await;
    let declared = json!({"dev.warden/labels": {"m": ["user"]}, "dev.warden/intent": "say hi",
        "trace": "keep-me"});
    let r = a
        .request(
            "tools/call",
            json!({"name": "rec/echo", "arguments": {"m": "hi"}, "_meta": declared}),
        )
        .await;
    assert_eq!(common::text(&r), "hi", "{r}");
    let secret = json!({"dev.warden/certificate": {"cert": {"forged": true}, "sig": "00"},
        "dev.warden/delegation": "SECRET-BISCUIT", "dev.warden/labels": {"uri": ["web:x"]},
        "trace": "keep-me"});
    let r = a
        .request(
            "resources/read",
            json!({"uri": "file:///x", "_meta": secret}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    a.send(
        &json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed",
        "params": {"_meta": secret}}),
    )
    .await;
    // The server reads in order: once it answered this, it had read the notification.
    let r = a
        .request("resources/read", json!({"uri": "file:///y"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");

    let call = std::fs::read_to_string(&recorded).unwrap();
    let frame: Value = jsonrpc::parse_strict(call.trim().as_bytes()).unwrap();
    let meta = frame["params"]["_meta"].as_object().unwrap();
    let keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    assert_eq!(keys, ["trace", META_CERTIFICATE], "{call}");
    let other = std::fs::read_to_string(recorded.with_extension("jsonl.other")).unwrap();
    for method in ["file:///x", "notifications/roots/list_changed", "file:///y"] {
        assert!(
            other.contains(method),
            "{method} never reached the server: {other}"
        );
    }
    assert!(!other.contains("dev.warden/"), "{other}");
    assert!(other.contains("keep-me"), "{other}");
    log.verify();
}
