//! The MCP conformance suite (`@modelcontextprotocol/conformance`, server mode, Node 22) through
//! the Streamable HTTP face at both spec revisions, against the Python SDK's conformance
//! everything-server, with the direct run as the baseline: every scenario must score the same
//! through the gateway as direct. (A pass-through scores the same, so this proves transparency;
//! enforcement has its own tests.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestLog, authority_with_tools, free_port, peers, tool_specs};
use warden_gateway::{Gateway, GatewayConfig, HttpFace};

/// Scenarios of the 2026-07-28 run that may score lower through the gateway, each for one reason:
/// the unscored tasks extension's fixtures call tools the server never lists (`greet`,
/// `slow_compute`); the server answers those with an `isError` tool result (which these checks
/// accept), the gateway with a JSON-RPC error, since it can neither pin nor check the arguments
/// of a tool it has never seen listed. Every other check of these scenarios scores as direct.
const KNOWN_GAPS: [&str; 3] = [
    // `sep-2663-server-rejects-undeclared-client`: calls unlisted `slow_compute`.
    "tasks-capability-negotiation",
    // `sep-2663-legacy-task-param-ignored`, `tasks-immediate-result-shortcut`,
    // `tasks-result-type-complete-on-non-task-responses`: call unlisted `greet`/`slow_compute`.
    "tasks-dispatch-and-envelope",
    // `tasks-sync-tool-call`: calls unlisted `greet`.
    "tasks-lifecycle",
];

/// Runs the suite; returns scenario → (passed, failed).
async fn suite(url: &str, revision: &str, label: &str) -> BTreeMap<String, (u32, u32)> {
    let p = peers();
    let node = p.join("node/node_modules/.bin/node");
    let cli = p.join("node/node_modules/@modelcontextprotocol/conformance/dist/index.js");
    assert!(
        cli.exists(),
        "conformance suite missing: run `bash scripts/install-peers`"
    );
    let flag = if revision == "2026-07-28" {
        "--requirements"
    } else {
        "--spec-version"
    };
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg(cli).args(["server", "--url", url, flag, revision]);
    // Keep the suite's per-check reports for a human when asked.
    if let Some(dir) = std::env::var_os("WARDEN_CONFORMANCE_OUT") {
        cmd.arg("-o")
            .arg(std::path::PathBuf::from(dir).join(format!("{label}-{revision}")));
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("conformance suite finished in time")
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let mut scores = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("✓ ").or_else(|| line.strip_prefix("✗ ")) else {
            continue;
        };
        let Some((name, counts)) = rest.split_once(": ") else {
            continue;
        };
        let nums: Vec<u32> = counts
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [passed, failed] = nums[..] {
            scores.insert(name.to_owned(), (passed, failed));
        }
    }
    assert!(!scores.is_empty(), "no scenario results in:\n{text}");
    scores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_the_gateway_matches_direct() {
    let p = peers();
    let server = p.join("mcp-everything/venv/bin/mcp-everything-server");
    assert!(
        server.exists(),
        "conformance everything-server missing: run `bash scripts/install-peers`"
    );
    let port = free_port();
    let mut cmd = tokio::process::Command::new(server);
    cmd.args(["--port", &port.to_string()]);
    let _srv = common::spawn_listening(cmd, port).await;
    let direct_url = format!("http://127.0.0.1:{port}/mcp");

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "trust_domain = \"example.org\"\n[agents.conformance]\nid = \"spiffe://example.org/agent/conformance\"\n\
         [gateway]\npins = \"{}\"\nhttp_agent = \"spiffe://example.org/agent/conformance\"\nbare_names = true\nupstream_timeout_secs = 30\n\
         [servers.every]\nurl = \"{direct_url}\"\n\
         [[allow]]\nid = \"conformance-all\"\nagents = [\"conformance\"]\ntools = [\"every/*\"]\n",
        dir.path().join("pins.json").display()
    );
    let cfg = GatewayConfig::parse(&text).unwrap();
    let log = TestLog::new();
    let gw = Gateway::new(
        cfg,
        authority_with_tools(&text, &log, tool_specs(&direct_url, "every").await),
    )
    .unwrap();
    let face = HttpFace::new(gw).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_url = format!("http://{}/mcp", l.local_addr().unwrap());
    let f2 = face.clone();
    tokio::spawn(async move { f2.serve(l).await });

    let mut report = String::new();
    let mut same = true;
    for revision in ["2025-11-25", "2026-07-28"] {
        let direct = suite(&direct_url, revision, "direct").await;
        let via = suite(&gw_url, revision, "gateway").await;
        let total = |m: &BTreeMap<String, (u32, u32)>| {
            m.values().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        report += &format!(
            "{revision}: direct {:?}, via gateway {:?}\n",
            total(&direct),
            total(&via)
        );
        for (name, d) in &direct {
            let v = via.get(name);
            if v != Some(d) {
                let known = revision == "2026-07-28" && KNOWN_GAPS.contains(&name.as_str());
                same &= known;
                report += &format!(
                    "  {name}: direct {d:?}, via gateway {v:?}{}\n",
                    if known { " (known gap)" } else { "" }
                );
            }
        }
    }
    eprintln!("{report}");
    // Written for docs/gateway.md and the lead: the scores of this run.
    if let Some(dir) = std::env::var_os("WARDEN_CONFORMANCE_OUT") {
        std::fs::write(std::path::PathBuf::from(dir).join("summary.txt"), &report).unwrap();
    }
    assert!(same, "conformance differs through the gateway:\n{report}");
}
