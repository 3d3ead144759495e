//! The gateway core: one [`Gateway`] per process, one [`Session`] per agent connection.
//!
//! Transports (stdio, Streamable HTTP, replay) only move frames; everything else happens here,
//! so `warden replay` runs the very same code.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::approval::{Answer, ApprovalQueue, Clock, PendingCall, SystemClock, rfc3339};
use crate::authority::{Approval, Authority, CallRequest, Verdict};
use crate::backpressure::{AgentStream, Backlog, Delivery, EVENT_BUFFER, MAX_REFUSALS};
use crate::config::GatewayConfig;
use crate::error::Error;
use crate::idle_poll::IdlePoll;
use crate::jsonrpc::{self, Kind};
use crate::labels::Label;
use crate::pins::{PinStatus, PinStore, definition_hash};
use crate::taint::TaintIndex;
use crate::upstream::{Upstream, UpstreamEvent};
use crate::{LEGACY_VERSIONS, META_INTENT, META_LABELS, MODERN_VERSION, SUPPORTED_VERSIONS};

pub(crate) const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CLIENT_CAPS: &str = "io.modelcontextprotocol/clientCapabilities";

/// State shared by every session of one gateway process.
pub struct Gateway {
    cfg: Arc<GatewayConfig>,
    authority: Arc<dyn Authority>,
    pins: Mutex<PinStore>,
    approvals: ApprovalQueue,
    clock: Arc<dyn Clock>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("servers", &self.cfg.servers.keys())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway over `cfg`, deciding through `authority`.
    pub fn new(cfg: GatewayConfig, authority: Arc<dyn Authority>) -> Result<Arc<Self>, Error> {
        Self::with_clock(cfg, authority, Arc::new(SystemClock))
    }

    /// As [`Gateway::new`], with an injected clock.
    pub fn with_clock(
        cfg: GatewayConfig,
        authority: Arc<dyn Authority>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, Error> {
        let pins = PinStore::open(&cfg.resolve(&cfg.gateway.pins))?;
        Ok(Arc::new(Self {
            cfg: Arc::new(cfg),
            authority,
            pins: Mutex::new(pins),
            approvals: ApprovalQueue::default(),
            clock,
            next_session: AtomicU64::new(1),
        }))
    }

    /// A gateway for `warden replay`: pins are read but never written, held calls are not
    /// waited for (a call needing approval is denied at once, as by a timeout).
    pub fn for_replay(
        mut cfg: GatewayConfig,
        authority: Arc<dyn Authority>,
    ) -> Result<Arc<Self>, Error> {
        cfg.gateway.approval_timeout_secs = 0;
        let pins = PinStore::snapshot(&cfg.resolve(&cfg.gateway.pins))?;
        Ok(Arc::new(Self {
            cfg: Arc::new(cfg),
            authority,
            pins: Mutex::new(pins),
            approvals: ApprovalQueue::default(),
            clock: Arc::new(SystemClock),
            next_session: AtomicU64::new(1),
        }))
    }

    /// Now, by the injected clock.
    pub fn now(&self) -> std::time::SystemTime {
        self.clock.now()
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// Calls waiting for approval.
    pub fn pending_approvals(&self) -> Vec<PendingCall> {
        self.approvals.list()
    }

    /// Answers a held call; false if no call with `id` is waiting.
    pub fn answer_approval(&self, id: &str, granted: bool, approver: &str) -> bool {
        self.approvals.answer(
            id,
            Answer {
                granted,
                approver: approver.to_owned(),
            },
        )
    }

    /// A fresh session id.
    pub fn session_id(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let t = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("s-{t:x}-{n}")
    }
}

/// What the session knows about one tool.
#[derive(Debug, Clone)]
struct ToolEntry {
    definition: Arc<Value>,
    hash: String,
    changed: Option<(String, String)>,
    /// The server announced a tool change since this listing: the next call re-lists first.
    stale: bool,
    /// The label the configuration gives this tool's results (worked out once per listing).
    source: Label,
}

/// A request's own stream: (sequence, progress token, sink).
type RequestSink = (u64, Option<Value>, mpsc::Sender<Value>);

/// One agent's session: its upstream connections, tool view and taint index.
pub struct Session {
    gw: Arc<Gateway>,
    id: String,
    agent: String,
    delegation: Vec<String>,
    /// Messages to the agent that are not responses to its requests (see `backpressure.rs`).
    out: AgentStream,
    upstreams: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<Upstream>>>>>,
    /// Bounded ([`EVENT_BUFFER`]): a reader waits here when the agent is behind.
    events: mpsc::Sender<UpstreamEvent>,
    /// Answers to server→client requests the session refuses, in flight ([`MAX_REFUSALS`]).
    refusals: Arc<tokio::sync::Semaphore>,
    tools: Mutex<HashMap<String, ToolEntry>>,
    taint: Mutex<TaintIndex>,
    client_caps: Mutex<Value>,
    modern: Mutex<bool>,
    /// Agent request id (JSON text) → (server, upstream id), for cancellation.
    inflight: Mutex<HashMap<String, (String, u64)>>,
    /// Gateway id of a server→client request → (server, upstream's id).
    server_requests: Mutex<HashMap<String, (String, Value)>>,
    next_server_request: AtomicU64,
    /// Per-request streams (HTTP SSE responses): (sequence, progress token, sink).
    sinks: Mutex<Vec<RequestSink>>,
    next_sink: AtomicU64,
    /// Per server: how many of its routed events the pump has delivered (see [`Session::settle`]).
    delivered: Mutex<HashMap<String, u64>>,
    /// Woken each time the pump delivered an event.
    delivered_tick: tokio::sync::Notify,
    /// Change notifications (list changed, resource updated) of connections that have no listen
    /// stream of their own (legacy servers), for `subscriptions/listen` relays (see `listen.rs`).
    changes: tokio::sync::broadcast::Sender<(String, Value)>,
    /// Tasks (MCP tasks extension) that allowed `tools/call`s created: task id → (server, the
    /// label its result gets, as the call's own result would).
    tasks: Mutex<HashMap<String, (String, Label)>>,
    /// Per server, the re-lists its change announcements asked for (see `tools_changed`).
    relists: Mutex<HashMap<String, Arc<Relists>>>,
    /// The stdio face's poller, told of each request forwarded and answer received.
    idle_poll: std::sync::OnceLock<Arc<IdlePoll>>,
}

/// The re-lists of one server's tools that announcements asked for: `asked` counts the
/// requests; `done` holds, under its lock (held while a re-list runs), the highest request the
/// last finished re-list covered.
#[derive(Default)]
struct Relists {
    asked: AtomicU64,
    done: tokio::sync::Mutex<u64>,
}

/// Server→client requests a session forwards to its agent that may wait for the agent's
/// answer at once; a server asking more gets an error (see `backpressure.rs`).
const MAX_SERVER_REQUESTS: usize = 1024;

/// How many tasks a session remembers; past that the oldest are forgotten, and their results
/// are labelled as those of unknown tasks (untrusted).
const MAX_TASKS: usize = 4096;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

fn key(server: &str, tool: &str) -> String {
    format!("{server}/{tool}")
}

impl Session {
    /// A session of `agent` (its SPIFFE ID, established by the face); messages the agent must
    /// receive outside responses go to `out`, which the agent reads continuously: when it is
    /// full, the session stops reading its upstreams until there is room. A closed `out` drops
    /// them.
    pub fn new(
        gw: &Arc<Gateway>,
        agent: &str,
        delegation: Vec<String>,
        out: mpsc::Sender<Value>,
    ) -> Arc<Self> {
        Self::open(
            gw,
            agent,
            delegation,
            gw.session_id(),
            AgentStream::Pipe(out),
        )
    }

    /// Reports the session's upstream traffic to `poll` (the stdio face's; set before the first
    /// upstream connects, ignored after).
    pub(crate) fn report_to(&self, poll: Arc<IdlePoll>) {
        let _ = self.idle_poll.set(poll);
    }

    /// A session whose messages outside responses wait in a bounded [`Backlog`] for a stream
    /// the agent may or may not hold open (a legacy HTTP session's GET stream).
    pub(crate) fn with_backlog(gw: &Arc<Gateway>, agent: &str) -> (Arc<Self>, Arc<Backlog>) {
        let id = gw.session_id();
        let backlog = Backlog::new(&id);
        let out = AgentStream::Backlog(backlog.clone());
        (Self::open(gw, agent, Vec::new(), id, out), backlog)
    }

    fn open(
        gw: &Arc<Gateway>,
        agent: &str,
        delegation: Vec<String>,
        id: String,
        out: AgentStream,
    ) -> Arc<Self> {
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let session = Arc::new(Self {
            gw: gw.clone(),
            id,
            agent: agent.to_owned(),
            delegation,
            out,
            upstreams: Mutex::default(),
            events,
            refusals: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS)),
            tools: Mutex::default(),
            taint: Mutex::default(),
            client_caps: Mutex::new(json!({})),
            modern: Mutex::new(false),
            inflight: Mutex::default(),
            server_requests: Mutex::default(),
            next_server_request: AtomicU64::new(1),
            sinks: Mutex::default(),
            next_sink: AtomicU64::new(1),
            delivered: Mutex::default(),
            delivered_tick: tokio::sync::Notify::new(),
            changes: tokio::sync::broadcast::channel(crate::upstream::LISTEN_BUFFER).0,
            tasks: Mutex::default(),
            relists: Mutex::default(),
            idle_poll: std::sync::OnceLock::new(),
        });
        tokio::spawn(pump(Arc::downgrade(&session), rx));
        session
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Attaches an already open upstream connection (replay uses recorded ones).
    pub(crate) async fn attach(&self, server: &str, upstream: Arc<Upstream>) {
        if let Ok(mut ups) = self.upstreams.lock() {
            ups.insert(
                server.to_owned(),
                Arc::new(tokio::sync::OnceCell::new_with(Some(upstream))),
            );
        }
    }

    /// The sender upstream connections report their own messages to.
    pub(crate) fn events(&self) -> mpsc::Sender<UpstreamEvent> {
        self.events.clone()
    }

    /// Handles one request whose related messages (progress of its own token, and, while it is
    /// the only request in flight, other notifications and server→client requests) go to `sink`
    /// instead of the session's stream: the SSE response of a Streamable HTTP POST.
    pub async fn handle_streaming(
        self: &Arc<Self>,
        frame: Value,
        sink: mpsc::Sender<Value>,
    ) -> Option<Value> {
        let seq = self.next_sink.fetch_add(1, Ordering::Relaxed);
        let token = jsonrpc::meta(&frame, "progressToken").cloned();
        if let Ok(mut s) = self.sinks.lock() {
            s.push((seq, token, sink));
        }
        let resp = self.handle(frame).await;
        if let Ok(mut s) = self.sinks.lock() {
            s.retain(|(n, _, _)| *n != seq);
        }
        resp
    }

    /// Sends a message to the agent on the stream of the request it relates to, waiting for
    /// room there (see `backpressure.rs`).
    async fn deliver(&self, frame: Value) {
        let token = jsonrpc::param(&frame, "progressToken");
        let sink = self.sinks.lock().ok().and_then(|s| match token {
            Some(t) => s
                .iter()
                .find(|(_, tok, _)| tok.as_ref() == Some(t))
                .map(|(_, _, k)| k.clone()),
            None if s.len() == 1 => s.first().map(|(_, _, k)| k.clone()),
            None => None,
        });
        let frame = match sink {
            Some(sink) => match sink.send(frame).await {
                Ok(()) => return,
                // The request's stream ended: the session's stream is next best.
                Err(e) => e.0,
            },
            None => frame,
        };
        if let Delivery::Refused(request) = self.out.send(frame).await {
            self.refuse_server_request(&request);
        }
    }

    /// A server→client request the agent's stream could not take: the server that asked gets
    /// an error instead of waiting for an answer that will not come.
    fn refuse_server_request(&self, request: &Value) {
        let Some(ours) = request.get("id").and_then(Value::as_str) else {
            return;
        };
        let target = self
            .server_requests
            .lock()
            .ok()
            .and_then(|mut m| m.remove(ours));
        if let Some((server, upstream_id)) = target {
            self.answer_server(
                &server,
                jsonrpc::error(
                    upstream_id,
                    jsonrpc::INTERNAL_ERROR,
                    "the agent is not reading its session stream; request dropped",
                    None,
                ),
            );
        }
    }

    /// Sends `frame` (an answer to one of its requests) to `server` from a task of its own: the
    /// pump never waits for an upstream. At most [`MAX_REFUSALS`] at a time; past that the
    /// server's own timeout answers.
    fn answer_server(&self, server: &str, frame: Value) {
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else {
            return;
        };
        // Only a connection that is open: the event came from it.
        let up = self
            .upstreams
            .lock()
            .ok()
            .and_then(|u| u.get(server).and_then(|c| c.get().cloned()));
        if let Some(up) = up {
            tokio::spawn(async move {
                let _ = up.notify(frame).await;
                drop(permit);
            });
        }
    }

    /// For a modern `tools/call` over HTTP: checks the `Mcp-Param-*` headers the tool's schema
    /// asks for (`x-mcp-header`) against the arguments. `headers` maps lower-case header names
    /// to values. Returns what does not match.
    pub async fn param_header_mismatch(
        &self,
        frame: &Value,
        headers: &BTreeMap<String, String>,
    ) -> Option<String> {
        let name = jsonrpc::param(frame, "name").and_then(Value::as_str)?;
        let (server, tool) = self.gw.cfg.split_tool(name)?;
        let (server, tool) = (server.to_owned(), tool.to_owned());
        let entry = self
            .tool_entry(&server, &tool, jsonrpc::param(frame, "_meta"))
            .await
            .ok()
            .flatten()?;
        let args = jsonrpc::param(frame, "arguments").and_then(Value::as_object);
        for (arg, header) in param_headers(&entry.definition) {
            let want = args.and_then(|a| a.get(&arg)).and_then(header_value);
            let got = headers.get(&format!("mcp-param-{}", header.to_ascii_lowercase()));
            let got = match got.map(|g| decode_header_value(g)) {
                Some(Some(g)) => Some(g),
                Some(None) => {
                    return Some(format!("Mcp-Param-{header} is not a valid encoded value"));
                }
                None => None,
            };
            let want = want
                .as_deref()
                .map(|w| decode_header_value(w).unwrap_or_default());
            if got != want {
                return Some(format!(
                    "Mcp-Param-{header} does not match argument `{arg}`"
                ));
            }
        }
        None
    }

    /// Handles one frame from the agent; returns the response to a request.
    pub async fn handle(self: &Arc<Self>, frame: Value) -> Option<Value> {
        match jsonrpc::classify(&frame) {
            Kind::Request => Some(self.request(frame).await),
            Kind::Notification => {
                self.notification(frame).await;
                None
            }
            Kind::Response => {
                self.response(frame).await;
                None
            }
            Kind::Invalid => Some(jsonrpc::error(
                frame.get("id").cloned().unwrap_or(Value::Null),
                jsonrpc::INVALID_REQUEST,
                "invalid request",
                None,
            )),
        }
    }

    async fn request(self: &Arc<Self>, frame: Value) -> Value {
        let id = frame.get("id").cloned().unwrap_or(Value::Null);
        let method = jsonrpc::method(&frame).unwrap_or_default().to_owned();
        // A modern request names its revision in `_meta`; refuse revisions we do not serve.
        let requested = jsonrpc::meta(&frame, META_PROTOCOL_VERSION).cloned();
        let modern = match &requested {
            Some(Value::String(v)) if v == MODERN_VERSION => true,
            Some(other) => {
                return jsonrpc::error(
                    id,
                    jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
                    "Unsupported protocol version",
                    Some(json!({"supported": SUPPORTED_VERSIONS, "requested": other})),
                );
            }
            None => false,
        };
        if modern {
            self.adopt_modern(&frame);
        }
        let mut resp = match method.as_str() {
            "initialize" => self.initialize(id, &frame),
            "ping" => jsonrpc::result(id, json!({})),
            "server/discover" => jsonrpc::result(id, self.discover()),
            "tools/list" => self.tools_list(id).await,
            "tools/call" => self.tools_call(frame).await,
            _ => self.passthrough(frame).await,
        };
        if modern {
            mark_complete(&mut resp, &method);
        }
        resp
    }

    /// A modern request arrived: the session is modern (its upstream connections are opened
    /// in the modern era where servers speak it) with the capabilities the request declares.
    pub(crate) fn adopt_modern(&self, frame: &Value) {
        if let Ok(mut m) = self.modern.lock() {
            *m = true;
        }
        if let Some(caps) = jsonrpc::meta(frame, META_CLIENT_CAPS)
            && let Ok(mut c) = self.client_caps.lock()
        {
            *c = caps.clone();
        }
    }

    fn initialize(&self, id: Value, frame: &Value) -> Value {
        let requested = jsonrpc::param(frame, "protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let version = if LEGACY_VERSIONS.contains(&requested) {
            requested
        } else {
            crate::LEGACY_VERSION
        };
        if let Some(caps) = jsonrpc::param(frame, "capabilities")
            && let Ok(mut c) = self.client_caps.lock()
        {
            *c = caps.clone();
        }
        jsonrpc::result(
            id,
            json!({
                "protocolVersion": version,
                "capabilities": self.capabilities(),
                "serverInfo": {"name": "warden", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "Warden gateway: tools of several servers, named <server>/<tool>. Every call is decided by policy and logged.",
            }),
        )
    }

    fn capabilities(&self) -> Value {
        let mut caps = json!({"tools": {"listChanged": true}});
        if self.gw.cfg.servers.len() == 1 {
            // One upstream: resources, prompts and completions pass through unchanged.
            if let Some(obj) = caps.as_object_mut() {
                // Their list-changed notifications are relayed (`subscriptions/listen`, or the
                // session stream of a legacy agent).
                obj.insert("resources".into(), json!({"listChanged": true}));
                obj.insert("prompts".into(), json!({"listChanged": true}));
                obj.insert("completions".into(), json!({}));
                obj.insert("logging".into(), json!({}));
            }
        }
        caps
    }

    fn discover(&self) -> Value {
        let info = json!({"name": "warden", "version": env!("CARGO_PKG_VERSION")});
        json!({
            "supportedVersions": SUPPORTED_VERSIONS,
            "capabilities": self.capabilities(),
            "serverInfo": info,
            "_meta": {"io.modelcontextprotocol/serverInfo": info},
            "ttlMs": 0,
            "cacheScope": "private",
        })
    }

    /// The session's connection to `server`, opened on first use. Each server has its own
    /// cell: callers for one server wait for its single connection attempt, never for another
    /// server's start (a slow or unreachable server must not hold up calls to the others). A
    /// failed attempt leaves the cell empty, so the next caller tries again.
    pub(crate) async fn upstream(&self, server: &str) -> Result<Arc<Upstream>, Error> {
        let cell = {
            let mut ups = self.upstreams.lock().map_err(|_| Error::Upstream {
                server: server.to_owned(),
                reason: "connection table poisoned".into(),
            })?;
            // Looked up before inserting: no key allocated on every call.
            match ups.get(server) {
                Some(cell) => cell.clone(),
                None => ups.entry(server.to_owned()).or_default().clone(),
            }
        };
        cell.get_or_try_init(|| async {
            let caps = self
                .client_caps
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default();
            let modern = self.modern.lock().map(|m| *m).unwrap_or(false);
            let poll = self.idle_poll.get().cloned();
            Upstream::connect(
                &self.gw.cfg,
                server,
                caps,
                modern,
                self.events.clone(),
                poll,
            )
            .await
        })
        .await
        .cloned()
    }

    /// Lists `server`'s tools (all pages), pins them, refreshes the session's view.
    async fn list_server(&self, server: &str) -> Result<Vec<Value>, Error> {
        self.list_server_with(server, None).await
    }

    /// Lists with the `_meta` of the agent request that caused the listing (a modern server may
    /// list tools depending on the client's declared capabilities and extensions).
    async fn list_server_with(
        &self,
        server: &str,
        meta: Option<&Value>,
    ) -> Result<Vec<Value>, Error> {
        let up = self.upstream(server).await?;
        let mut tools = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..100 {
            let mut params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            if let (Some(meta), Some(obj)) = (meta, params.as_object_mut()) {
                let keep: Map<String, Value> = meta
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(k, _)| k.starts_with("io.modelcontextprotocol/"))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                obj.insert("_meta".into(), Value::Object(keep));
            }
            let resp = up.request("tools/list", params).await?;
            let result = resp.get("result").ok_or_else(|| Error::Upstream {
                server: server.to_owned(),
                reason: format!(
                    "tools/list failed: {}",
                    resp.get("error").cloned().unwrap_or_default()
                ),
            })?;
            tools.extend(
                result
                    .get("tools")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            cursor = result.get("nextCursor").filter(|c| !c.is_null()).cloned();
            if cursor.is_none() {
                break;
            }
        }
        let mut visible = Vec::new();
        let mut entries = HashMap::new();
        for def in tools {
            let Some(name) = def.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let k = key(server, &name);
            let hash = definition_hash(&def)?;
            up.set_param_headers(&name, param_headers(&def));
            let status = self
                .gw
                .pins
                .lock()
                .map_err(|_| Error::Pins("poisoned".into()))?
                .observe(&k, &hash, &def)?;
            let changed = match status {
                PinStatus::Same => None,
                PinStatus::New => {
                    self.event(json!({"v": 1, "type": "warden.tool_pinned", "tool": k, "hash": hash, "status": "pinned"}));
                    None
                }
                PinStatus::Changed { pinned, observed } => {
                    self.event(json!({"v": 1, "type": "warden.tool_pinned", "tool": k, "hash": observed, "pinned": pinned, "status": "changed"}));
                    Some((pinned, observed))
                }
            };
            if changed.is_none() {
                let mut shown = def.clone();
                if let Some(obj) = shown.as_object_mut() {
                    obj.insert("name".into(), json!(self.gw.cfg.join_tool(server, &name)));
                }
                visible.push(shown);
            }
            entries.insert(
                k,
                ToolEntry {
                    definition: Arc::new(def),
                    hash,
                    changed,
                    stale: false,
                    source: self.gw.cfg.source_label(server, &name),
                },
            );
        }
        // The server's view is replaced in one step: a call looking its tool up meanwhile sees
        // the old listing or the new one, never none (which would read as an unknown tool).
        if let Ok(mut t) = self.tools.lock() {
            let prefix = format!("{server}/");
            t.retain(|k, _| !k.starts_with(&prefix));
            t.extend(entries);
        }
        Ok(visible)
    }

    /// `server` announced that its tools changed: re-lists them at once, so that changed
    /// definitions are flagged (and refused) before the agent re-fetches the list.
    ///
    /// The announcements of one change arrive once per open relay plus the gateway's own
    /// listen; they share re-lists. A caller returns only after a re-list that *started* after
    /// its request finished (so never on a list taken before the change), and N concurrent
    /// callers cost at most two re-lists, not N.
    pub(crate) async fn tools_changed(&self, server: &str) {
        // Until a re-list that started after this announcement finishes, a call re-lists before
        // it is decided rather than run on the definition pinned before the change (whichever
        // path heard it: the session stream, a relay, the gateway's own listen).
        self.mark_stale(server);
        let relists = {
            let Ok(mut all) = self.relists.lock() else {
                return self.relist(server).await;
            };
            Arc::clone(all.entry(server.to_owned()).or_default())
        };
        let ticket = relists.asked.fetch_add(1, Ordering::AcqRel) + 1;
        let mut done = relists.done.lock().await;
        if *done >= ticket {
            return;
        }
        // Every request up to here is covered by the re-list that starts now.
        let covered = relists.asked.load(Ordering::Acquire);
        self.relist(server).await;
        *done = covered;
    }

    async fn relist(&self, server: &str) {
        if self.list_server(server).await.is_err() {
            // Not re-listed, so not re-checked against the pins: the next call lists again
            // first (and fails if it cannot).
            self.mark_stale(server);
        }
    }

    /// Marks `server`'s tools as announced changed: a call re-lists them before it is decided.
    /// (Removing them instead would let a call that just listed find its tool gone and be told
    /// it does not exist.)
    fn mark_stale(&self, server: &str) {
        if let Ok(mut t) = self.tools.lock() {
            let prefix = format!("{server}/");
            for (_, e) in t.iter_mut().filter(|(k, _)| k.starts_with(&prefix)) {
                e.stale = true;
            }
        }
    }

    /// Change notifications of servers whose connection has no listen stream (legacy era).
    pub(crate) fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<(String, Value)> {
        self.changes.subscribe()
    }

    fn event(&self, event: Value) {
        // Pin events are best effort: the call path refuses changed tools on its own.
        let _ = self.gw.authority.record_event(&event);
    }

    async fn tools_list(&self, id: Value) -> Value {
        let mut all = Vec::new();
        let names: Vec<String> = self.gw.cfg.servers.keys().cloned().collect();
        let mut failures = Vec::new();
        for server in names {
            match self.list_server(&server).await {
                Ok(tools) => all.extend(tools),
                Err(e) => failures.push(e.to_string()),
            }
        }
        if all.is_empty() && !failures.is_empty() {
            return jsonrpc::error(
                id,
                jsonrpc::UPSTREAM_ERROR,
                "no upstream server answered",
                Some(json!({"errors": failures})),
            );
        }
        jsonrpc::result(id, json!({"tools": all}))
    }

    async fn tool_entry(
        &self,
        server: &str,
        tool: &str,
        meta: Option<&Value>,
    ) -> Result<Option<ToolEntry>, Error> {
        let k = key(server, tool);
        let known = self.tools.lock().ok().and_then(|t| t.get(&k).cloned());
        if known.as_ref().is_some_and(|e| !e.stale) {
            return Ok(known);
        }
        self.list_server_with(server, meta).await?;
        Ok(self.tools.lock().ok().and_then(|t| t.get(&k).cloned()))
    }

    /// Labels per argument: declared by the client, inferred from the session's untrusted
    /// results, and in strict mode (or once the index overflowed) everything untrusted seen.
    fn argument_labels(
        &self,
        arguments: &Map<String, Value>,
        meta: Option<&Value>,
    ) -> BTreeMap<String, Label> {
        let declared = meta
            .and_then(|m| m.get(META_LABELS))
            .and_then(Value::as_object);
        let taint = self.taint.lock();
        let mut out = BTreeMap::new();
        for (name, value) in arguments {
            let mut label = declared
                .and_then(|d| d.get(name))
                .and_then(Label::from_declared)
                .unwrap_or_default();
            if let Ok(ix) = &taint {
                label.join(&ix.lookup(value));
                if self.gw.cfg.gateway.strict_taint || ix.overflowed() {
                    label.join(ix.everything());
                }
            }
            if !label.is_empty() {
                out.insert(name.clone(), label);
            }
        }
        out
    }

    async fn tools_call(self: &Arc<Self>, mut frame: Value) -> Value {
        let id = frame.get("id").cloned().unwrap_or(Value::Null);
        let Some(name) = jsonrpc::param(&frame, "name").and_then(Value::as_str) else {
            return jsonrpc::error(id, jsonrpc::INVALID_PARAMS, "missing tool name", None);
        };
        let Some((server, tool)) = self.gw.cfg.split_tool(name) else {
            return jsonrpc::error(
                id,
                jsonrpc::INVALID_PARAMS,
                &format!("unknown tool `{name}`"),
                None,
            );
        };
        let (server, tool) = (server.to_owned(), tool.to_owned());
        let entry = match self
            .tool_entry(&server, &tool, jsonrpc::param(&frame, "_meta"))
            .await
        {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                return jsonrpc::error(
                    id,
                    jsonrpc::INVALID_PARAMS,
                    &format!("unknown tool `{name}`"),
                    None,
                );
            }
            Err(e) => return jsonrpc::error(id, jsonrpc::UPSTREAM_ERROR, &e.to_string(), None),
        };
        if let Some((pinned, observed)) = &entry.changed {
            self.event(json!({"v": 1, "type": "warden.tool_pinned", "tool": key(&server, &tool), "hash": observed, "pinned": pinned, "status": "refused"}));
            return jsonrpc::error(
                id,
                jsonrpc::TOOL_CHANGED,
                &format!(
                    "tool `{name}` changed since it was pinned; an operator must accept it (`warden tools accept {}`)",
                    key(&server, &tool)
                ),
                Some(json!({"rules": ["tool-pin"], "pinned": pinned, "observed": observed})),
            );
        }
        // Moved out of the frame: `forward_call` puts back exactly what was decided.
        let arguments = jsonrpc::param_mut(&mut frame, "arguments")
            .map(Value::take)
            .unwrap_or_else(|| json!({}));
        let Some(args) = arguments.as_object() else {
            return jsonrpc::error(
                id,
                jsonrpc::INVALID_PARAMS,
                "`arguments` is not an object",
                None,
            );
        };
        let meta = jsonrpc::param(&frame, "_meta");
        let labels = self.argument_labels(args, meta);
        let intent = meta
            .and_then(|m| m.get(META_INTENT))
            .and_then(Value::as_str)
            .map(|text| {
                let mut label = self
                    .taint
                    .lock()
                    .map(|ix| ix.lookup(&json!(text)))
                    .unwrap_or_default();
                if self.gw.cfg.gateway.strict_taint
                    && let Ok(ix) = self.taint.lock()
                {
                    label.join(ix.everything());
                }
                (text.to_owned(), label)
            });
        let mut call = CallRequest {
            agent: self.agent.clone(),
            delegation: self.delegation.clone(),
            session: Some(self.id.clone()),
            server: server.clone(),
            tool: tool.clone(),
            definition: entry.definition.clone(),
            definition_hash: entry.hash.clone(),
            arguments,
            labels,
            intent,
            refusal: None,
        };
        crate::delegation::apply(&self.gw.cfg, meta, &mut call, self.gw.clock.now());
        let verdict = match self.decide(&call).await {
            Ok(v) => v,
            Err(e) => {
                return jsonrpc::error(
                    id,
                    jsonrpc::AUDIT_UNAVAILABLE,
                    &format!("call refused: {e}"),
                    Some(json!({"rules": ["fail-closed"]})),
                );
            }
        };
        let certificate = match verdict {
            // A call the gateway refused is never forwarded, whatever the authority said.
            Verdict::Allow { record, .. } if call.refusal.is_some() => {
                let reason = call.refusal.map(|r| r.reason).unwrap_or_default();
                return jsonrpc::error(
                    id,
                    jsonrpc::DENIED,
                    &format!("denied by policy: {reason}"),
                    Some(
                        json!({"rules": [crate::delegation::RULE], "reason": reason, "record": record}),
                    ),
                );
            }
            Verdict::Allow { certificate, .. } => certificate,
            Verdict::Deny {
                record,
                rules,
                reason,
            } => {
                return jsonrpc::error(
                    id,
                    jsonrpc::DENIED,
                    &format!("denied by policy: {reason}"),
                    Some(json!({"rules": rules, "reason": reason, "record": record})),
                );
            }
            Verdict::NeedsApproval {
                record,
                rules,
                reason,
            } => match self.await_approval(&call, record, rules, reason).await {
                Ok(certificate) => certificate,
                Err(resp) => return with_id(resp, id),
            },
        };
        self.forward_call(frame, &server, &tool, certificate, &call, entry.source)
            .await
    }

    /// The verdict is handed out once the log's writer thread acknowledged the record, without
    /// blocking a runtime thread meanwhile. On a current-thread runtime (the stdio face: one
    /// agent) the kernel decides on this task, saving two thread hops; on a multi-thread runtime
    /// (the HTTP face: many sessions) it decides on the blocking pool, so its CPU time does not
    /// stall the workers that move other sessions' frames.
    async fn decide(&self, call: &CallRequest) -> Result<Verdict, crate::AuthorityError> {
        let current_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if current_thread {
            return self.gw.authority.decide_deferred(call).await;
        }
        let authority = self.gw.authority.clone();
        let call = call.clone();
        tokio::task::spawn_blocking(move || authority.decide_deferred(&call))
            .await
            .map_err(|e| crate::AuthorityError(e.to_string()))?
            .await
    }

    /// Holds the call until an operator answers or the timeout denies it; returns the
    /// certificate of the allowed call, or the error response.
    async fn await_approval(
        &self,
        call: &CallRequest,
        record: String,
        rules: Vec<String>,
        reason: String,
    ) -> Result<String, Value> {
        let pending = PendingCall {
            id: record.clone(),
            agent: self.agent.clone(),
            session: Some(self.id.clone()),
            tool: key(&call.server, &call.tool),
            arguments: call.arguments.clone(),
            reason: reason.clone(),
            rules: rules.clone(),
            held_at: rfc3339(self.gw.clock.now()),
        };
        let mut rx = self.gw.approvals.hold(pending);
        let timeout = Duration::from_secs(self.gw.cfg.gateway.approval_timeout_secs);
        let timed_out = Answer {
            granted: false,
            approver: "warden:timeout".into(),
        };
        let answer = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => timed_out,
            // An operator who took the call off the queue before the timeout did has been told
            // it was answered: their answer stands (it is on its way).
            Err(_) if !self.gw.approvals.forget(&record) => rx.await.unwrap_or(timed_out),
            Err(_) => timed_out,
        };
        let approval = Approval {
            approver: answer.approver.clone(),
            granted: answer.granted,
            time: rfc3339(self.gw.clock.now()),
        };
        let authority = self.gw.authority.clone();
        let (call2, record2) = (call.clone(), record.clone());
        let verdict =
            tokio::task::spawn_blocking(move || authority.resolve(&call2, &record2, &approval))
                .await
                .map_err(|e| crate::AuthorityError(e.to_string()))
                .and_then(|r| r);
        match verdict {
            Ok(Verdict::Allow { certificate, .. }) => Ok(certificate),
            Ok(
                Verdict::Deny {
                    record,
                    rules,
                    reason,
                }
                | Verdict::NeedsApproval {
                    record,
                    rules,
                    reason,
                },
            ) => Err(jsonrpc::error(
                Value::Null,
                jsonrpc::APPROVAL_DENIED,
                &format!("not approved: {reason}"),
                Some(
                    json!({"rules": rules, "reason": reason, "record": record, "approver": answer.approver}),
                ),
            )),
            Err(e) => Err(jsonrpc::error(
                Value::Null,
                jsonrpc::AUDIT_UNAVAILABLE,
                &format!("call refused: {e}"),
                Some(json!({"rules": ["fail-closed"]})),
            )),
        }
    }

    async fn forward_call(
        &self,
        mut frame: Value,
        server: &str,
        tool: &str,
        certificate: String,
        call: &CallRequest,
        source: Label,
    ) -> Value {
        let id = frame.get("id").cloned().unwrap_or(Value::Null);
        if let Some(params) = frame.get_mut("params").and_then(Value::as_object_mut) {
            params.insert("name".into(), json!(tool));
            params.insert("arguments".into(), call.arguments.clone());
        }
        let up = match self.upstream(server).await {
            Ok(up) => up,
            Err(e) => return jsonrpc::error(id, jsonrpc::UPSTREAM_ERROR, &e.to_string(), None),
        };
        let upstream_id = up.reserve_id();
        let inflight_key = id.to_string();
        if let Ok(mut f) = self.inflight.lock() {
            f.insert(inflight_key.clone(), (server.to_owned(), upstream_id));
        }
        // The certificate goes in as the frame is written, and every `dev.warden/*` key the
        // agent put in `_meta` (its own certificate, declared labels, intent, delegation token)
        // is left out (`jsonrpc::to_upstream_vec`).
        let result = up.forward(frame, upstream_id, Some(&certificate)).await;
        if let Ok(mut f) = self.inflight.lock() {
            f.remove(&inflight_key);
        }
        self.settle(server, &up).await;
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => return jsonrpc::error(id, jsonrpc::UPSTREAM_ERROR, &e.to_string(), None),
        };
        let mut label = source;
        for l in call.labels.values() {
            label.join(l);
        }
        // An error's text is the server's too: what an agent copies from it is tainted alike.
        if let Some(error) = resp.get_mut("error") {
            self.index_untrusted(error, &label);
        }
        if let Some(result) = resp.get_mut("result") {
            self.label_result(result, &label);
            if result.get("resultType").and_then(Value::as_str) == Some("task")
                && let Some(task) = result.get("taskId").and_then(Value::as_str)
            {
                self.remember_task(task, server, label);
            }
        }
        with_id(resp, id)
    }

    /// Waits until every message `up` routed before its latest response was delivered to the
    /// agent, so a response never overtakes the progress notifications that preceded it (they
    /// travel through the pump, the response does not). Free when nothing is in flight. Not
    /// bounded in time: the pump waits only for the agent to read (see `backpressure.rs` for why
    /// that cannot deadlock), and a response sent before would overtake what it waits for.
    async fn settle(&self, server: &str, up: &Upstream) {
        let target = up.routed();
        let delivered = || {
            self.delivered
                .lock()
                .map(|d| d.get(server).copied().unwrap_or(0))
                .unwrap_or(u64::MAX)
        };
        if delivered() >= target {
            return;
        }
        let wait = async {
            loop {
                let tick = self.delivered_tick.notified();
                tokio::pin!(tick);
                tick.as_mut().enable();
                if delivered() >= target {
                    return;
                }
                tick.await;
            }
        };
        wait.await;
    }

    fn remember_task(&self, task: &str, server: &str, label: Label) {
        if let Ok(mut tasks) = self.tasks.lock() {
            if tasks.len() >= MAX_TASKS
                && let Some(old) = tasks.keys().next().cloned()
            {
                tasks.remove(&old);
            }
            tasks.insert(task.to_owned(), (server.to_owned(), label));
        }
    }

    /// The server and result label of the task `task_id` names, if a `tools/call` of this
    /// session created it.
    fn task(&self, task_id: Option<&Value>) -> Option<(String, Label)> {
        let task = task_id.and_then(Value::as_str)?;
        self.tasks.lock().ok()?.get(task).cloned()
    }

    /// A task's tool result in a tasks message (at `pointer`: `tasks/get` inlines it in
    /// `result.result`, the 2025-11-25 `tasks/result` answers with it, a status notification
    /// may carry it) is labelled and indexed for taint like the result of the call that created
    /// the task; a task this session did not create (or forgot) counts as untrusted.
    fn label_task_result(
        &self,
        frame: &mut Value,
        pointer: &str,
        server: &str,
        task_id: Option<&Value>,
    ) {
        // Only the server that created the task speaks for it: another server naming its id
        // gets no more than an unknown task's trust.
        let known = self
            .task(task_id)
            .and_then(|(owner, label)| (owner == server).then_some(label));
        let Some(result) = frame.pointer_mut(pointer) else {
            return;
        };
        let label = known.unwrap_or_else(|| {
            Label::new(
                [format!("task:{server}")],
                crate::labels::Integrity::Untrusted,
            )
        });
        self.label_result(result, &label);
    }

    /// Labels a tool result for the agent (`_meta` `dev.warden/labels`) and, when `label` is
    /// untrusted, indexes its text for taint inference. A result that is not an object (not
    /// what MCP allows, but a server may send it) is still indexed; a `_meta` that is not an
    /// object is replaced, so the label is never silently left off.
    fn label_result(&self, result: &mut Value, label: &Label) {
        // `strings` skips `_meta`: only what the server said is indexed.
        self.index_untrusted(result, label);
        let Some(fields) = result.as_object_mut() else {
            return;
        };
        let meta = fields.entry("_meta").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(META_LABELS.into(), label.to_meta());
        }
    }

    /// Indexes every string in `value` (outside `_meta`) under `label` when it is untrusted.
    fn index_untrusted(&self, value: &Value, label: &Label) {
        if !label.is_untrusted() {
            return;
        }
        let mut text = Vec::new();
        strings(value, &mut text);
        if let Ok(mut ix) = self.taint.lock() {
            for t in &text {
                ix.insert(t, label);
            }
        }
    }

    /// Any other request: with one upstream, forwarded unchanged; otherwise unknown. A `tasks/*`
    /// request about a task this session created goes to the task's server.
    async fn passthrough(&self, frame: Value) -> Value {
        let id = frame.get("id").cloned().unwrap_or(Value::Null);
        let method = jsonrpc::method(&frame).unwrap_or_default().to_owned();
        let task_id = jsonrpc::param(&frame, "taskId").cloned();
        let task = method
            .starts_with("tasks/")
            .then(|| self.task(task_id.as_ref()))
            .flatten();
        let only = (self.gw.cfg.servers.len() == 1)
            .then(|| self.gw.cfg.servers.keys().next().cloned())
            .flatten()
            .or_else(|| task.as_ref().map(|(server, _)| server.clone()));
        let forwardable = method.starts_with("resources/")
            || method.starts_with("prompts/")
            || method == "completion/complete"
            || method == "logging/setLevel"
            || method == "subscriptions/listen"
            || method.starts_with("tasks/");
        let Some(server) = only.filter(|_| forwardable) else {
            return jsonrpc::error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!("method `{method}` not found"),
                None,
            );
        };
        let up = match self.upstream(&server).await {
            Ok(up) => up,
            Err(e) => return jsonrpc::error(id, jsonrpc::UPSTREAM_ERROR, &e.to_string(), None),
        };
        let upstream_id = up.reserve_id();
        let result = up.forward(frame, upstream_id, None).await;
        self.settle(&server, &up).await;
        match result {
            Ok(mut resp) => {
                if method.starts_with("tasks/") {
                    let at = if method == "tasks/result" {
                        "/result"
                    } else {
                        "/result/result"
                    };
                    self.label_task_result(&mut resp, at, &server, task_id.as_ref());
                }
                with_id(resp, id)
            }
            Err(e) => jsonrpc::error(id, jsonrpc::UPSTREAM_ERROR, &e.to_string(), None),
        }
    }

    async fn notification(&self, frame: Value) {
        match jsonrpc::method(&frame) {
            Some("notifications/cancelled") => {
                let Some(request) = jsonrpc::param(&frame, "requestId") else {
                    return;
                };
                let target = self
                    .inflight
                    .lock()
                    .ok()
                    .and_then(|f| f.get(&request.to_string()).cloned());
                if let Some((server, upstream_id)) = target {
                    let mut fwd = frame.clone();
                    if let Some(p) = fwd.get_mut("params").and_then(Value::as_object_mut) {
                        p.insert("requestId".into(), json!(upstream_id));
                    }
                    if let Ok(up) = self.upstream(&server).await {
                        let _ = up.notify(fwd).await;
                    }
                }
            }
            Some("notifications/roots/list_changed") => {
                let ups: Vec<Arc<Upstream>> = self
                    .upstreams
                    .lock()
                    .map(|u| u.values().filter_map(|c| c.get().cloned()).collect())
                    .unwrap_or_default();
                for up in ups {
                    let _ = up.notify(frame.clone()).await;
                }
            }
            // `notifications/initialized` and anything else concern the gateway only.
            _ => {}
        }
    }

    /// The agent answers a server→client request: back to the server that asked.
    async fn response(&self, frame: Value) {
        let Some(id) = frame.get("id").and_then(Value::as_str) else {
            return;
        };
        let target = self
            .server_requests
            .lock()
            .ok()
            .and_then(|mut m| m.remove(id));
        if let Some((server, upstream_id)) = target
            && let Ok(up) = self.upstream(&server).await
        {
            let _ = up.notify(with_id(frame, upstream_id)).await;
        }
    }

    async fn upstream_event(&self, event: UpstreamEvent) {
        match event {
            UpstreamEvent::Notification { server, frame } => {
                let method = jsonrpc::method(&frame).unwrap_or_default();
                if method == "notifications/tools/list_changed" {
                    // The next call re-lists and re-checks pins first. Marked here already, not
                    // only in the re-list the pump starts after this: before the server's later
                    // frames (its response, which the agent may answer with a call) go out.
                    self.mark_stale(&server);
                }
                if method == "notifications/tasks/status" {
                    let mut frame = frame;
                    let task_id = jsonrpc::param(&frame, "taskId").cloned();
                    self.label_task_result(&mut frame, "/params/result", &server, task_id.as_ref());
                    self.deliver(frame).await;
                    return;
                }
                if crate::listen::is_change(method) {
                    let _ = self.changes.send((server.clone(), frame.clone()));
                    if self.out.is_closed() || self.modern.lock().map(|m| *m).unwrap_or(false) {
                        // A modern agent gets change notifications on its listen streams only
                        // (it asked for their kinds there), never unsolicited: not on a
                        // request's stream over HTTP, not on the pipe over stdio.
                        return;
                    }
                }
                if method == "notifications/cancelled" {
                    // The server withdrew one of its own requests: translate the id back.
                    let mut frame = frame;
                    let upstream_id = jsonrpc::param(&frame, "requestId").cloned();
                    let ours = self.server_requests.lock().ok().and_then(|m| {
                        m.iter()
                            .find(|(_, (s, u))| s == &server && Some(u) == upstream_id.as_ref())
                            .map(|(k, _)| k.clone())
                    });
                    if let (Some(ours), Some(p)) =
                        (ours, frame.get_mut("params").and_then(Value::as_object_mut))
                    {
                        p.insert("requestId".into(), json!(ours));
                        self.deliver(frame).await;
                    }
                    return;
                }
                self.deliver(frame).await;
            }
            UpstreamEvent::Request { server, frame } => {
                let upstream_id = frame.get("id").cloned().unwrap_or(Value::Null);
                if self.modern.lock().map(|m| *m).unwrap_or(false) {
                    // A modern agent takes no server→client requests (MRTR replaces them).
                    self.answer_server(
                        &server,
                        jsonrpc::error(
                            upstream_id,
                            jsonrpc::METHOD_NOT_FOUND,
                            "the agent speaks 2026-07-28 and takes no server requests",
                            None,
                        ),
                    );
                    return;
                }
                let ours = format!(
                    "warden-{}",
                    self.next_server_request.fetch_add(1, Ordering::Relaxed)
                );
                let open = self.server_requests.lock().map(|mut m| {
                    // An agent that reads server requests but never answers them does not make
                    // the table grow without bound: past the cap the server gets an error.
                    let room = m.len() < MAX_SERVER_REQUESTS;
                    if room {
                        m.insert(ours.clone(), (server.clone(), upstream_id.clone()));
                    }
                    room
                });
                if !open.unwrap_or(false) {
                    self.answer_server(
                        &server,
                        jsonrpc::error(
                            upstream_id,
                            jsonrpc::INTERNAL_ERROR,
                            "too many requests to the agent are waiting for an answer",
                            None,
                        ),
                    );
                    return;
                }
                self.deliver(with_id(frame, json!(ours))).await;
            }
        }
    }
}

async fn pump(session: std::sync::Weak<Session>, mut rx: mpsc::Receiver<UpstreamEvent>) {
    while let Some(event) = rx.recv().await {
        let Some(s) = session.upgrade() else { return };
        let server = match &event {
            UpstreamEvent::Notification { server, .. } | UpstreamEvent::Request { server, .. } => {
                server.clone()
            }
        };
        // A server announced new tools: re-list and re-pin them now, not at the next call, so
        // a changed definition is flagged when it appears.
        let relist = matches!(&event, UpstreamEvent::Notification { frame, .. }
            if jsonrpc::method(frame) == Some("notifications/tools/list_changed"));
        s.upstream_event(event).await;
        if relist {
            let (s2, server) = (s.clone(), server.clone());
            tokio::spawn(async move { s2.tools_changed(&server).await });
        }
        if let Ok(mut d) = s.delivered.lock() {
            *d.entry(server).or_insert(0) += 1;
        }
        s.delivered_tick.notify_waiters();
    }
}

fn with_id(mut frame: Value, id: impl Into<Value>) -> Value {
    if let Some(obj) = frame.as_object_mut() {
        obj.insert("id".into(), id.into());
    }
    frame
}

/// Modern results carry `resultType`; list results carry cache hints.
fn mark_complete(resp: &mut Value, method: &str) {
    let Some(result) = resp.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    result
        .entry("resultType")
        .or_insert_with(|| json!("complete"));
    if method.ends_with("/list") || method == "resources/read" {
        result.entry("ttlMs").or_insert_with(|| json!(0));
        result
            .entry("cacheScope")
            .or_insert_with(|| json!("private"));
    }
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "_meta")
            .for_each(|(_, i)| strings(i, out)),
        Value::Number(n) => out.push(n.to_string()),
        Value::Bool(_) | Value::Null => {}
    }
}

/// `(argument, header name)` for every top-level property whose schema carries `x-mcp-header`.
pub(crate) fn param_headers(definition: &Value) -> Vec<(String, String)> {
    definition
        .pointer("/inputSchema/properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .filter_map(|(arg, schema)| {
                    schema
                        .get("x-mcp-header")
                        .and_then(Value::as_str)
                        .map(|h| (arg.clone(), h.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The header form of an argument value: plain when it is safe ASCII, else `=?base64?...?=`.
pub(crate) fn header_value(v: &Value) -> Option<String> {
    use base64::Engine as _;
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    let plain = text.bytes().all(|b| (0x20..0x7f).contains(&b))
        && text.trim() == text
        && !text.starts_with("=?");
    Some(if plain {
        text
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
        )
    })
}

/// Decodes a header value; `None` if it claims base64 and is not.
pub(crate) fn decode_header_value(v: &str) -> Option<String> {
    use base64::Engine as _;
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(v.to_owned()),
    }
}

#[cfg(test)]
mod tests;
