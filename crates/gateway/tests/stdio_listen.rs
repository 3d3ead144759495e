//! The `subscriptions/listen` relay of the stdio face (MCP 2026-07-28), with two real upstreams
//! of the Python SDK behind one face (`tests/py/mutable_server.py` over stdio, twice: its tool
//! `mutate` changes the description of its tool `mutable` and announces it).
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

use common::{Agent, TestLog, error_code, meta, peers};
use serde_json::{Value, json};
use warden_gateway::GatewayConfig;
use warden_gateway::jsonrpc::{INTERNAL_ERROR, INVALID_REQUEST, TOOL_CHANGED};

const SUB: &str = "io.modelcontextprotocol/subscriptionId";
const ACK: &str = "notifications/subscriptions/acknowledged";
const CHANGED: &str = "notifications/tools/list_changed";
const AGENT: &str = "spiffe://example.org/agent/a";
/// How long a frame that must come may take (Python servers are slow to start under load).
const SOON: Duration = Duration::from_secs(30);

/// A manifest with servers `one` and `two` (the mutable server over stdio) in the given eras.
fn manifest(one: &str, two: &str, dir: &std::path::Path) -> String {
    let python = peers().join("mcp-everything/venv/bin/python");
    assert!(
        python.exists(),
        "`{}` missing: run `bash scripts/install-peers`",
        python.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/mutable_server.py");
    let server = |name: &str| {
        format!(
            "[servers.{name}]\ncommand = \"{}\"\nargs = [\"{}\", \"stdio\"]\n",
            python.display(),
            script.display()
        )
    };
    format!(
        "trust_domain = \"example.org\"\n[agents.a]\nid = \"{AGENT}\"\n\
         [gateway]\npins = \"{}\"\nupstream_timeout_secs = 30\n\
         [gateway.eras]\none = \"{one}\"\ntwo = \"{two}\"\n{}{}\
         [[allow]]\nid = \"all\"\nagents = [\"a\"]\n\
         tools = [\"one/mutate\", \"one/mutable\", \"two/mutate\", \"two/mutable\", \"two/quit\", \"two/list_count\"]\n",
        dir.join("pins.json").display(),
        server("one"),
        server("two"),
    )
}

struct Fixture {
    agent: Agent,
    log: Arc<TestLog>,
    _dir: tempfile::TempDir,
    next: u64,
}

impl Fixture {
    async fn start(one: &str, two: &str) -> Self {
        Self::with_pipe(one, two, 1 << 20).await
    }

    async fn with_pipe(one: &str, two: &str, pipe_bytes: usize) -> Self {
        Self::with(one, two, pipe_bytes, |text| text).await
    }

    /// As [`Fixture::with_pipe`], the manifest passed through `edit` first.
    async fn with(
        one: &str,
        two: &str,
        pipe_bytes: usize,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = edit(manifest(one, two, dir.path()));
        let log = TestLog::new();
        let (agent, _gw) = Agent::start_with_pipe(
            GatewayConfig::parse(&text).unwrap(),
            common::authority(&text, &log),
            AGENT,
            pipe_bytes,
        )
        .await;
        Self {
            agent,
            log,
            _dir: dir,
            next: 1,
        }
    }

    /// Sends a modern `tools/call` without waiting; returns its id.
    async fn send_call(&mut self, name: &str, arguments: Value) -> u64 {
        let id = self.next;
        self.next += 1;
        self.agent
            .send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments, "_meta": meta()}}))
            .await;
        id
    }

    /// A modern `tools/call` and its response.
    async fn call(&mut self, name: &str, arguments: Value) -> Value {
        let id = self.send_call(name, arguments).await;
        // Looks among the frames set aside too: a response may have been read while waiting
        // for something else.
        self.agent
            .frame_where(SOON, |o| o["id"] == id && o.get("method").is_none())
            .await
            .unwrap_or_else(|| panic!("no response to call {id}"))
    }

    /// Sends a modern `subscriptions/listen` with request id `id`.
    async fn listen(&mut self, id: &str, notifications: Value) {
        self.agent
            .send(&json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen", "params": {"_meta": meta(), "notifications": notifications}}))
            .await;
    }

    /// Opens a listen stream and returns its acknowledgement.
    async fn open(&mut self, id: &str, notifications: Value) -> Value {
        self.listen(id, notifications).await;
        self.ack(id).await
    }

    async fn ack(&mut self, id: &str) -> Value {
        self.agent
            .frame_where(SOON, |f| {
                f["method"] == ACK && f["params"]["_meta"][SUB] == id
            })
            .await
            .unwrap_or_else(|| panic!("no acknowledgement of `{id}`: {:?}", self.agent.other))
    }

    /// The response to the (listen) request `id`, within `wait`.
    async fn answer(&mut self, id: &str, wait: Duration) -> Option<Value> {
        self.agent
            .frame_where(wait, |f| f["id"] == id && f.get("method").is_none())
            .await
    }

    /// The next tool list-changed relayed on listen stream `id`, within `wait`.
    async fn changed(&mut self, id: &str, wait: Duration) -> Option<Value> {
        self.agent
            .frame_where(wait, |f| {
                f["method"] == CHANGED && f["params"]["_meta"][SUB] == id
            })
            .await
    }

    async fn cancel(&mut self, id: &str) {
        self.agent
            .send(&json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id, "_meta": meta()}}))
            .await;
    }

    /// Waits until the log holds a `changed` pin event of `tool`.
    async fn flagged(&self, tool: &str) -> bool {
        for _ in 0..200 {
            if self.log.records().iter().any(|r| {
                r["type"] == "warden.tool_pinned" && r["tool"] == tool && r["status"] == "changed"
            }) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_servers_list_changed_reaches_a_modern_agent_through_its_relay() {
    // `one` speaks 2026-07-28 (a listen stream on its pipe), `two` 2025-11-25 (it announces on
    // its session): one relay serves both.
    let mut f = Fixture::start("modern", "legacy").await;

    // No listen stream yet: a modern agent gets no unsolicited announcement.
    let r = f.call("two/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    let unsolicited = f
        .agent
        .frame_where(Duration::from_secs(1), |f| f["method"] == CHANGED)
        .await;
    assert!(unsolicited.is_none(), "{unsolicited:?}");

    let ack = f
        .open(
            "L1",
            json!({"toolsListChanged": true, "promptsListChanged": true}),
        )
        .await;
    // Prompts are not served by a face of several servers: not acknowledged.
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true}),
        "{ack}"
    );
    for tool in ["two/mutate", "one/mutate"] {
        let r = f.call(tool, json!({})).await;
        assert!(r.get("result").is_some(), "{tool}: {r}");
        let changed = f.changed("L1", SOON).await;
        assert!(
            changed.is_some(),
            "{tool}: no list-changed on the relay: {:?}",
            f.agent.other
        );
    }
    // Nothing about changes travelled untagged on the pipe.
    assert!(
        !f.agent
            .other
            .iter()
            .any(|o| o["method"] == CHANGED && o["params"]["_meta"][SUB] != "L1"),
        "{:?}",
        f.agent.other
    );
    // The listen request is still open: no response to it.
    assert!(f.answer("L1", Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_listen_request_stops_its_relay() {
    let mut f = Fixture::start("modern", "modern").await;
    f.open("L1", json!({"toolsListChanged": true})).await;
    f.cancel("L1").await;
    let r = f.call("two/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    // Neither the change nor an answer to the cancelled request arrives.
    let after = f
        .agent
        .frame_where(Duration::from_secs(2), |o| {
            o["params"]["_meta"][SUB] == "L1" || o["id"] == "L1"
        })
        .await;
    assert!(
        after.is_none(),
        "the relay outlived its cancellation: {after:?}"
    );
    // The id is free again, and a new relay under it works.
    f.open("L1", json!({"toolsListChanged": true})).await;
    let r = f.call("one/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(f.changed("L1", SOON).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_holds_a_bounded_number_of_relays_on_stdio() {
    let mut f = Fixture::start("modern", "modern").await;
    for n in 0..16 {
        f.open(&format!("M{n}"), json!({"toolsListChanged": true}))
            .await;
    }
    f.listen("M16", json!({"toolsListChanged": true})).await;
    let over = f.answer("M16", SOON).await.expect("the 17th is answered");
    assert_eq!(error_code(&over), Some(INTERNAL_ERROR), "{over}");
    // One is cancelled: a listen reusing an open id is still refused, a new one is served.
    f.cancel("M0").await;
    f.listen("M3", json!({"toolsListChanged": true})).await;
    let reused = f.answer("M3", SOON).await.expect("the reuse is answered");
    assert_eq!(error_code(&reused), Some(INVALID_REQUEST), "{reused}");
    f.open("M16", json!({"toolsListChanged": true})).await;
    // Every open relay gets the change.
    let r = f.call("two/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    for n in 1..=16 {
        assert!(f.changed(&format!("M{n}"), SOON).await.is_some(), "M{n}");
    }
    assert!(f.changed("M0", Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_definition_is_flagged_after_list_changed_on_stdio() {
    // Both servers modern: their changes are announced on listen streams only, so only the
    // relay can make the gateway re-list.
    let mut f = Fixture::start("modern", "modern").await;
    let r = f.call("two/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "pinned and allowed: {r}");
    f.open("L1", json!({"toolsListChanged": true})).await;
    let r = f.call("two/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(f.changed("L1", SOON).await.is_some());
    // Re-pinned at once, although the agent sent nothing since.
    assert!(
        f.flagged("two/mutable").await,
        "no `changed` pin event after the announcement"
    );
    let r = f.call("two/mutable", json!({"text": "hi"})).await;
    assert_eq!(error_code(&r), Some(TOOL_CHANGED), "{r}");
    // The other server's tool is untouched.
    let r = f.call("one/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_agent_gets_the_second_servers_announcement_and_it_is_re_pinned() {
    // 2025-11-25 on the agent's side: no relay, change notifications come on the pipe.
    let mut f = Fixture::start("auto", "auto").await;
    f.agent.initialize().await;
    let r = f.agent.call("two/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = f.agent.call("two/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    let changed = f
        .agent
        .frame_where(SOON, |o| o["method"] == CHANGED)
        .await
        .expect("the announcement reaches a legacy agent");
    assert!(changed["params"]["_meta"][SUB].is_null(), "{changed}");
    assert!(
        f.flagged("two/mutable").await,
        "the change was not re-pinned"
    );
    let r = f.agent.call("two/mutable", json!({"text": "hi"})).await;
    assert_eq!(error_code(&r), Some(TOOL_CHANGED), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_reading_its_stdout_loses_its_relay_not_our_memory() {
    // Pipes that hold 2 KiB: the agent stops reading after the acknowledgement while the
    // servers keep announcing changes.
    let mut f = Fixture::with_pipe("modern", "modern", 2048).await;
    f.open("L1", json!({"toolsListChanged": true})).await;
    const CHANGES: usize = 150;
    let decisions = |log: &TestLog| {
        log.records()
            .iter()
            .filter(|r| r["type"] == "warden.decision")
            .count()
    };
    let before = decisions(&f.log);
    for n in 0..CHANGES {
        f.send_call(
            if n % 2 == 0 {
                "one/mutate"
            } else {
                "two/mutate"
            },
            json!({}),
        )
        .await;
        // Paced, so the servers' own listen streams keep up with the relay.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..1200 {
        if decisions(&f.log) >= before + CHANGES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        decisions(&f.log),
        before + CHANGES,
        "not every call was decided"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The agent reads again: at most a buffer's worth (plus what the pipe held) waited for it,
    // then the frame that ends its stream.
    let end = f
        .answer("L1", SOON)
        .await
        .unwrap_or_else(|| panic!("the relay never gave up: {} frames", f.agent.other.len()));
    let relayed = f
        .agent
        .other
        .iter()
        .filter(|o| o["method"] == CHANGED && o["params"]["_meta"][SUB] == "L1")
        .count();
    assert!(
        relayed <= 64 + 16,
        "{relayed} relayed frames waited for the agent"
    );
    assert!(
        end.get("error").is_some() || end.get("result").is_some(),
        "{end}"
    );
    // Its place is free: the agent listens again.
    f.open("L1", json!({"toolsListChanged": true})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modern_agent_without_a_relay_still_has_changes_re_pinned() {
    // Modern servers announce only on listen streams, and this agent opens none: the gateway's
    // own listen hears the change, re-pins, and tells the agent nothing unasked.
    let mut f = Fixture::start("modern", "modern").await;
    let r = f.call("two/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "pinned and allowed: {r}");
    let r = f.call("two/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(
        f.flagged("two/mutable").await,
        "no `changed` pin event without a relay"
    );
    let r = f.call("two/mutable", json!({"text": "hi"})).await;
    assert_eq!(error_code(&r), Some(TOOL_CHANGED), "{r}");
    let told = f
        .agent
        .frame_where(Duration::from_millis(500), |o| o.get("method").is_some())
        .await;
    assert!(told.is_none(), "{told:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_during_the_re_list_after_a_modern_announcement_is_not_decided_on_the_old_pin() {
    // `two` speaks 2026-07-28, so its announcement reaches the gateway's own listen only, and it
    // answers `tools/list` 5 s late once changed: the re-list the announcement starts is still
    // running when the agent calls the changed tool.
    let slow = "[servers.two]\nenv = { MUTABLE_SLOW_LIST_SECS = \"5\" }\n";
    let mut f = Fixture::with("modern", "modern", 1 << 20, |t| {
        t.replacen("[servers.two]\n", slow, 1)
    })
    .await;
    let r = f.call("two/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "pinned and allowed: {r}");
    // The gateway's own listen is open once every server acknowledged it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = f.call("two/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    // Time for the announcement to reach the listen (not for the 5 s re-list).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = f.call("two/mutable", json!({"text": "hi"})).await;
    assert_eq!(
        error_code(&r),
        Some(TOOL_CHANGED),
        "a call during the re-list ran on the old definition: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_heard_on_many_relays_shares_its_re_lists() {
    let mut f = Fixture::start("modern", "modern").await;
    let r = f.call("two/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "{r}");
    for i in 0..8 {
        f.open(&format!("L{i}"), json!({"toolsListChanged": true}))
            .await;
    }
    let lists = async |f: &mut Fixture| -> u64 {
        let r = f.call("two/list_count", json!({})).await;
        common::text(&r).parse().unwrap()
    };
    // Settled: the gateway's own listen re-lists every server once all acknowledged it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = lists(&mut f).await;
    let r = f.call("two/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    // Nine listeners hear it: eight relays and the gateway's own listen.
    for i in 0..8 {
        assert!(f.changed(&format!("L{i}"), SOON).await.is_some(), "L{i}");
    }
    assert!(f.flagged("two/mutable").await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Two at most in principle (one running, one covering what came meanwhile); three leaves
    // room for a straggler under load. One each would be nine.
    let relists = lists(&mut f).await - before;
    assert!(
        (1..=3).contains(&relists),
        "one change heard nine times cost {relists} re-lists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_face_ends_with_its_input_although_relays_are_open() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let text = manifest("modern", "legacy", dir.path());
    let log = TestLog::new();
    let gw = warden_gateway::Gateway::new(
        GatewayConfig::parse(&text).unwrap(),
        common::authority(&text, &log),
    )
    .unwrap();
    let (client, server) = tokio::io::duplex(1 << 16);
    let (sr, sw) = tokio::io::split(server);
    let face = tokio::spawn(async move { warden_gateway::serve_stdio(gw, AGENT, sr, sw).await });
    let (cr, mut cw) = tokio::io::split(client);
    let mut lines = tokio::io::BufReader::new(cr).lines();
    for id in ["A", "B"] {
        let listen = json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen", "params": {"_meta": meta(), "notifications": {"toolsListChanged": true}}});
        cw.write_all(format!("{listen}\n").as_bytes())
            .await
            .unwrap();
        let ack: Value = loop {
            let line = tokio::time::timeout(SOON, lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["method"] == ACK {
                break v;
            }
        };
        assert_eq!(ack["params"]["_meta"][SUB], id);
    }
    // The agent closes its end of the pipe: the relays, the gateway's own listen and the face
    // all end.
    cw.shutdown().await.unwrap();
    drop(cw);
    let ended = tokio::time::timeout(Duration::from_secs(10), face).await;
    assert!(ended.is_ok(), "the face outlived its input");
    ended.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_exits_ends_the_agents_stream_and_a_re_listen_is_served() {
    let mut f = Fixture::start("modern", "modern").await;
    f.open("L1", json!({"toolsListChanged": true})).await;
    // `two` exits: its listen stream ends unanswered, so must the agent's (with an error).
    let id = f.send_call("two/quit", json!({})).await;
    let end = f
        .answer("L1", SOON)
        .await
        .unwrap_or_else(|| panic!("the stream outlived its server: {:?}", f.agent.other));
    assert!(end.get("error").is_some(), "{end}");
    // The call got an answer too (it may have come first).
    let quit = f
        .agent
        .frame_where(SOON, |o| o["id"] == id && o.get("method").is_none())
        .await;
    assert!(
        quit.is_some(),
        "the call to the exiting server was not answered"
    );
    // The agent re-listens: served by the server still there.
    f.open("L2", json!({"toolsListChanged": true})).await;
    let r = f.call("one/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(f.changed("L2", SOON).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_announced_changed_is_re_listed_before_its_next_call() {
    // `two` answers `tools/list` 5 s late once changed, so the gateway's own re-list after the
    // announcement is still running when the next call comes: that call must not be decided
    // on the definition pinned before the change.
    let slow = "[servers.two]\nenv = { MUTABLE_SLOW_LIST_SECS = \"5\" }\n";
    let mut f = Fixture::with("legacy", "legacy", 1 << 20, |t| {
        t.replacen("[servers.two]\n", slow, 1)
    })
    .await;
    let r = f.call("two/mutable", json!({"text": "hi"})).await;
    assert!(r.get("result").is_some(), "pinned and allowed: {r}");
    let r = f.call("two/mutate", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = f.call("two/mutable", json!({"text": "hi"})).await;
    assert_eq!(
        error_code(&r),
        Some(TOOL_CHANGED),
        "a call right after the announcement ran on the old definition: {r}"
    );
}
