//! `warden replay`: a recorded MCP session run through the same code path as a live one, with
//! recorded upstream answers instead of transports, printing every decision.
//!
//! The recording is JSON lines, one message a line:
//!
//! ```text
//! {"from": "agent", "message": {"jsonrpc": "2.0", "id": 1, "method": "tools/call", ...}}
//! {"from": "server", "server": "fs", "message": {"jsonrpc": "2.0", "id": 1, "result": {...}}}
//! {"from": "server", "server": "fs", "answers": "tools/list", "message": {"jsonrpc": "2.0", "id": 0, "result": {"tools": [...]}}}
//! ```
//!
//! A server line answers the agent request with the same `id`, or, with `answers`, the
//! gateway's own request of that method (tool listings, which pinning and strict argument
//! checking need). Agent messages run in order; each `tools/call` yields one [`ReplayDecision`].
//! Pins are read, never written; a call that needs approval is reported and then denied.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::authority::{Approval, Authority, AuthorityError, CallRequest, Verdict};
use crate::config::GatewayConfig;
use crate::error::Error;
use crate::jsonrpc;
use crate::session::{Gateway, Session};
use crate::upstream::{Recorded, Upstream};

/// One line of a recording.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordedLine {
    /// `agent` or `server`.
    pub from: String,
    /// For server lines: which server.
    #[serde(default)]
    pub server: Option<String>,
    /// For server lines answering the gateway's own request: its method.
    #[serde(default)]
    pub answers: Option<String>,
    /// The JSON-RPC message.
    pub message: Value,
}

/// What the gateway decided for one recorded `tools/call`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplayDecision {
    /// The agent's request id.
    pub id: Value,
    /// The tool as the agent named it.
    pub tool: String,
    /// `allow`, `deny`, `needs_approval`, or `refused` (the gateway refused before the kernel:
    /// unknown tool, changed definition, malformed call).
    pub decision: String,
    /// Rule ids.
    pub rules: Vec<String>,
    /// Reason of a deny or refusal.
    pub reason: Option<String>,
    /// Labels per argument.
    pub labels: BTreeMap<String, Value>,
}

/// Wraps the real authority and notes its verdicts.
struct Noting {
    inner: Arc<dyn Authority>,
    seen: Mutex<Vec<(BTreeMap<String, Value>, Verdict)>>,
}

impl Authority for Noting {
    fn decide(&self, call: &CallRequest) -> Result<Verdict, AuthorityError> {
        let v = self.inner.decide(call)?;
        let labels = call
            .labels
            .iter()
            .map(|(k, l)| (k.clone(), l.to_meta()))
            .collect();
        if let Ok(mut s) = self.seen.lock() {
            s.push((labels, v.clone()));
        }
        Ok(v)
    }
    fn resolve(
        &self,
        call: &CallRequest,
        pending: &str,
        approval: &Approval,
    ) -> Result<Verdict, AuthorityError> {
        self.inner.resolve(call, pending, approval)
    }
    fn record_event(&self, event: &Value) -> Result<(), AuthorityError> {
        self.inner.record_event(event)
    }
}

/// Parses a recording.
pub fn parse_recording(text: &str) -> Result<Vec<RecordedLine>, Error> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let v = jsonrpc::parse_strict(l.as_bytes())
                .map_err(|e| Error::Config(format!("recording line {}: {e}", n + 1)))?;
            serde_json::from_value(v)
                .map_err(|e| Error::Config(format!("recording line {}: {e}", n + 1)))
        })
        .collect()
}

/// Runs `lines` as `agent` through a gateway over `cfg` deciding with `authority`.
pub async fn replay(
    cfg: GatewayConfig,
    authority: Arc<dyn Authority>,
    agent: &str,
    lines: &[RecordedLine],
) -> Result<Vec<ReplayDecision>, Error> {
    let noting = Arc::new(Noting {
        inner: authority,
        seen: Mutex::default(),
    });
    let gw = Gateway::for_replay(cfg, noting.clone())?;
    // No agent reads: the session's stream is closed, so nothing waits for room in it.
    let (tx, _) = mpsc::channel(1);
    let session = Session::new(&gw, agent, Vec::new(), tx);

    let mut recorded: HashMap<String, Recorded> = HashMap::new();
    for line in lines.iter().filter(|l| l.from == "server") {
        let server = line
            .server
            .clone()
            .ok_or_else(|| Error::Config("a server line without `server`".into()))?;
        let rec = recorded.entry(server).or_default();
        match &line.answers {
            Some(method) => rec
                .by_method
                .entry(method.clone())
                .or_default()
                .push_back(line.message.clone()),
            None => {
                if let Some(id) = line.message.get("id") {
                    rec.by_id.insert(id.to_string(), line.message.clone());
                }
            }
        }
    }
    for name in gw.config().servers.keys() {
        let rec = recorded.remove(name).unwrap_or_default();
        session
            .attach(name, Upstream::replay(name, rec, session.events()))
            .await;
    }

    let mut out = Vec::new();
    for line in lines.iter().filter(|l| l.from == "agent") {
        let is_call = jsonrpc::method(&line.message) == Some("tools/call")
            && jsonrpc::classify(&line.message) == jsonrpc::Kind::Request;
        let before = noting.seen.lock().map(|s| s.len()).unwrap_or(0);
        let resp = session.handle(line.message.clone()).await;
        if !is_call {
            continue;
        }
        let id = line.message.get("id").cloned().unwrap_or(Value::Null);
        let tool = line
            .message
            .pointer("/params/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let noted = noting.seen.lock().ok().and_then(|s| s.get(before).cloned());
        let decision = match noted {
            Some((labels, verdict)) => {
                let (decision, rules, reason) = match verdict {
                    Verdict::Allow { rules, .. } => ("allow", rules, None),
                    Verdict::Deny { rules, reason, .. } => ("deny", rules, Some(reason)),
                    Verdict::NeedsApproval { rules, reason, .. } => {
                        ("needs_approval", rules, Some(reason))
                    }
                };
                ReplayDecision {
                    id,
                    tool,
                    decision: decision.into(),
                    rules,
                    reason,
                    labels,
                }
            }
            None => {
                let err = resp.as_ref().and_then(|r| r.get("error"));
                let rules = err
                    .and_then(|e| e.pointer("/data/rules"))
                    .and_then(|r| serde_json::from_value(r.clone()).ok())
                    .unwrap_or_default();
                let reason = err
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                ReplayDecision {
                    id,
                    tool,
                    decision: "refused".into(),
                    rules,
                    reason,
                    labels: BTreeMap::new(),
                }
            }
        };
        out.push(decision);
    }
    Ok(out)
}
