//! Connections to upstream MCP servers: stdio child processes and Streamable HTTP endpoints, in
//! either era.
//!
//! Each agent session owns its own connections, so a server→client request (sampling,
//! elicitation, roots) always goes back to the agent whose session the server belongs to.
//! Request ids are rewritten per connection; the caller restores the agent's id.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Era, GatewayConfig, ServerConfig};
use crate::error::Error;
use crate::idle_poll::IdlePoll;
use crate::jsonrpc::{self, Kind};
use crate::{LEGACY_VERSION, MODERN_VERSION};

/// A message an upstream sent on its own: a notification or a server→client request.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// A notification (progress, list changed, log message, ...).
    Notification {
        /// Server name.
        server: String,
        /// The frame.
        frame: Value,
    },
    /// A request to the client (sampling, elicitation, roots).
    Request {
        /// Server name.
        server: String,
        /// The frame, with the upstream's id.
        frame: Value,
    },
}

/// A connection's response waiters, and how many of its messages it routed as events.
#[derive(Default)]
struct PendingMap {
    waiters: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    /// Notifications and server→client requests sent to the session so far. A response read
    /// after them must not reach the agent before them (see [`Upstream::routed`]).
    routed: AtomicU64,
    /// Open `subscriptions/listen` streams of a stdio server, by the upstream id of their
    /// request: their notifications (tagged with that id) and final response go there.
    subscriptions: Mutex<HashMap<u64, mpsc::Sender<Value>>>,
}

impl PendingMap {
    fn lock(
        &self,
    ) -> std::sync::LockResult<std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Value>>>>
    {
        self.waiters.lock()
    }
}

type Pending = Arc<PendingMap>;

enum Transport {
    Stdio {
        stdin: tokio::sync::Mutex<ChildStdin>,
        /// The server's process (or its sandbox), kept so that dropping the connection ends it.
        _child: Box<dyn std::any::Any + Send + Sync>,
    },
    Http {
        client: reqwest::Client,
        url: String,
        session_id: Mutex<Option<String>>,
    },
    /// `warden replay`: answers come from a recorded session.
    Replay(Mutex<Recorded>),
}

/// A server's recorded answers: to agent requests by the agent's id, to the gateway's own
/// requests (`tools/list`, ...) by method, in order.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Agent request id (JSON text) → the response the server gave.
    pub by_id: HashMap<String, Value>,
    /// Method → responses to the gateway's own requests, oldest first.
    pub by_method: HashMap<String, std::collections::VecDeque<Value>>,
}

/// One live connection to an upstream server.
pub struct Upstream {
    name: String,
    transport: Transport,
    pending: Pending,
    next_id: AtomicU64,
    era: Mutex<Era>,
    /// What the server said about itself (`initialize` or `server/discover` result).
    server_info: Mutex<Value>,
    client_caps: Value,
    events: mpsc::Sender<UpstreamEvent>,
    timeout: Duration,
    /// The stdio face's poller (see `idle_poll.rs`), told of each request sent and answer read.
    idle_poll: Option<Arc<IdlePoll>>,
    /// Tool → (argument, header) pairs mirrored into `Mcp-Param-*` headers (modern HTTP).
    param_headers: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// The task reading a legacy HTTP session's GET stream; ended when the connection goes.
    session_stream: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Upstream {
    /// The session ends with its connection: its GET stream closes, and a legacy HTTP server is
    /// told (DELETE) that the session it assigned is no longer needed.
    fn drop(&mut self) {
        if let Some(task) = self.session_stream.get_mut().ok().and_then(std::mem::take) {
            task.abort();
        }
        if self.era.get_mut().map(|e| *e).unwrap_or(Era::Legacy) != Era::Legacy {
            return;
        }
        let Transport::Http {
            client,
            url,
            session_id,
        } = &mut self.transport
        else {
            return;
        };
        let Some(sid) = session_id.get_mut().ok().and_then(std::mem::take) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = client
            .delete(url.as_str())
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", LEGACY_VERSION)
            .timeout(SESSION_DELETE_TIMEOUT)
            .send();
        // Best effort: a server that misses it expires the session on its own.
        runtime.spawn(async move {
            let _ = request.await;
        });
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Reports a sandboxed server's egress decision on the gateway's stderr.
fn log_egress(server: &str, event: &warden_sandbox::egress::EgressEvent) {
    use std::io::Write;
    let line = match &event.decision {
        warden_sandbox::egress::EgressDecision::Allow { address } => format!(
            "egress allowed: `{}:{}` via {address}",
            event.host, event.port
        ),
        warden_sandbox::egress::EgressDecision::Refuse { reason } => {
            format!("egress refused: `{}:{}`: {reason}", event.host, event.port)
        }
    };
    let _ = writeln!(
        std::io::stderr(),
        "warden gateway: upstream `{server}`: {line}"
    );
}

/// Reports on the gateway's stderr that the gateway closed a stdio server's connection.
fn log_closed(server: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "warden gateway: upstream `{server}`: connection closed: {why}"
    );
}

/// Keeps a timer due within a second for as long as the returned guard lives. Each forwarded
/// request sets a timeout (`[gateway] upstream_timeout_secs`); registering a timer that is due
/// before any other makes tokio wake its driver (an `eventfd` write, then an `epoll_wait` that
/// returns at once), two system calls on every call's path. With this tick due first, a
/// call's timeout is never the earliest and registers without waking anything; the tick itself
/// costs one wake a second.
pub(crate) fn keep_timers_near() -> TimersNear {
    TimersNear(
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
            }
        })
        .abort_handle(),
    )
}

/// Stops the tick of [`keep_timers_near`] when dropped.
pub(crate) struct TimersNear(tokio::task::AbortHandle);

impl Drop for TimersNear {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A plain (not SSE) HTTP answer's body, refused once it exceeds a frame
/// ([`jsonrpc::MAX_FRAME`]), as a stdio server's over-long line is: a server cannot make the
/// gateway buffer more.
async fn bounded_body(server: &str, resp: &mut reqwest::Response) -> Result<Vec<u8>, Error> {
    let too_long = || {
        upstream_err(
            server,
            format_args!("answer over {} bytes", jsonrpc::MAX_FRAME),
        )
    };
    if resp
        .content_length()
        .is_some_and(|n| n > jsonrpc::MAX_FRAME as u64)
    {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| upstream_err(server, e))? {
        if body.len() + chunk.len() > jsonrpc::MAX_FRAME {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn upstream_err(server: &str, reason: impl std::fmt::Display) -> Error {
    Error::Upstream {
        server: server.to_owned(),
        reason: reason.to_string(),
    }
}

impl Upstream {
    /// Starts (stdio) or reaches (HTTP) `name` and performs the era's opening exchange.
    /// `client_caps` are the agent's declared capabilities, passed on so that servers offer
    /// sampling, roots and elicitation only when the agent supports them.
    pub async fn connect(
        cfg: &GatewayConfig,
        name: &str,
        client_caps: Value,
        prefer_modern: bool,
        events: mpsc::Sender<UpstreamEvent>,
        idle_poll: Option<Arc<IdlePoll>>,
    ) -> Result<Arc<Self>, Error> {
        let server = cfg
            .servers
            .get(name)
            .ok_or_else(|| upstream_err(name, "not configured"))?;
        let pending: Pending = Arc::default();
        let transport = match (&server.command, &server.url) {
            (Some(command), _) => {
                Self::spawn(cfg, name, command, server, pending.clone(), events.clone())?
            }
            (None, Some(url)) => Transport::Http {
                client: reqwest::Client::builder()
                    // A session stream idles for hours: a server that vanished without closing
                    // the connection must still end it (then the stream is reopened or given up).
                    .tcp_keepalive(SESSION_STREAM_KEEPALIVE)
                    .build()
                    .map_err(|e| upstream_err(name, e))?,
                url: url.clone(),
                session_id: Mutex::new(None),
            },
            (None, None) => return Err(upstream_err(name, "neither `command` nor `url`")),
        };
        let up = Arc::new(Self {
            name: name.to_owned(),
            transport,
            pending,
            next_id: AtomicU64::new(1),
            era: Mutex::new(server.era),
            server_info: Mutex::new(Value::Null),
            client_caps,
            events,
            timeout: Duration::from_secs(cfg.gateway.upstream_timeout_secs),
            idle_poll,
            param_headers: Mutex::default(),
            session_stream: Mutex::default(),
        });
        up.open(server.era, prefer_modern).await?;
        Ok(up)
    }

    fn spawn(
        cfg: &GatewayConfig,
        name: &str,
        command: &str,
        server: &ServerConfig,
        pending: Pending,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<Transport, Error> {
        if let Some(profile) = &server.sandbox_profile {
            return Self::spawn_sandboxed(cfg, name, command, server, profile, pending, events);
        }
        let mut cmd = Command::new(command);
        cmd.args(&server.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for var in ["PATH", "HOME", "LANG", "TMPDIR"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.envs(&server.env);
        if let Some(cwd) = &server.cwd {
            cmd.current_dir(cfg.resolve(cwd));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| upstream_err(name, format_args!("cannot start `{command}`: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| upstream_err(name, "no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| upstream_err(name, "no stdout"))?;
        Self::read_frames(name, stdout, pending, events);
        Ok(Transport::Stdio {
            stdin: tokio::sync::Mutex::new(stdin),
            _child: Box::new(child),
        })
    }

    /// Starts a stdio server inside its sandbox profile: only the profile's grants, no network
    /// but its allowed hosts, its limits. stdin and stdout carry MCP; stderr is the gateway's.
    /// `timeout_secs` bounds the server's CPU time, not its life: it lives as long as the
    /// connection.
    fn spawn_sandboxed(
        cfg: &GatewayConfig,
        name: &str,
        command: &str,
        server: &ServerConfig,
        profile: &warden_sandbox::Profile,
        pending: Pending,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Result<Transport, Error> {
        let mut profile = profile.clone();
        if let Some(cwd) = &server.cwd {
            profile.cwd = Some(cfg.resolve(cwd));
        }
        let server_name = name.to_owned();
        let options = warden_sandbox::Options {
            on_egress: Arc::new(move |event| log_egress(&server_name, &event)),
            ..warden_sandbox::Options::default()
        };
        let argv: Vec<String> = std::iter::once(command.to_owned())
            .chain(server.args.iter().cloned())
            .collect();
        let env: Vec<(String, String)> = server
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Blocks until the command has been executed (a few milliseconds).
        let mut child = warden_sandbox::Sandbox::new(profile, options)
            .spawn_with_env(
                &argv,
                &env,
                // Pipes made by the sandbox itself: no short-lived fork of the gateway.
                [
                    warden_sandbox::SandboxStdio::Piped,
                    warden_sandbox::SandboxStdio::Piped,
                    warden_sandbox::SandboxStdio::Inherit,
                ],
            )
            .map_err(|e| upstream_err(name, format_args!("cannot start `{command}`: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .and_then(|s| ChildStdin::from_std(s).ok())
            .ok_or_else(|| upstream_err(name, "no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .and_then(|s| tokio::process::ChildStdout::from_std(s).ok())
            .ok_or_else(|| upstream_err(name, "no stdout"))?;
        Self::read_frames(name, stdout, pending, events);
        Ok(Transport::Stdio {
            stdin: tokio::sync::Mutex::new(stdin),
            _child: Box::new(Mutex::new(child)),
        })
    }

    /// Routes every frame a stdio server writes; fails every waiting call when it is gone.
    fn read_frames(
        name: &str,
        stdout: tokio::process::ChildStdout,
        pending: Pending,
        events: mpsc::Sender<UpstreamEvent>,
    ) {
        let server_name = name.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                // At most one frame's worth plus its newline: a line that never ends costs
                // MAX_FRAME, not the gateway's memory, and ends the connection.
                let mut limited = (&mut lines).take(jsonrpc::MAX_LINE);
                match limited.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if jsonrpc::over_limit(&line) {
                    log_closed(&server_name, "a frame over the size limit");
                    break;
                }
                let Ok(frame) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                route(&server_name, frame, &pending, &events).await;
            }
            // The server is gone: fail every waiting call.
            if let Ok(mut p) = pending.lock() {
                p.clear();
            }
            // And end its listen streams (each channel has another sender, which waits for the
            // listener to go: dropping ours would leave the listener waiting for ever).
            let subs = pending
                .subscriptions
                .lock()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default();
            for (id, tx) in subs {
                // Waits for room behind a full buffer; fails at once if the listener is gone.
                let _ = tx
                    .send(jsonrpc::error(
                        json!(id),
                        jsonrpc::UPSTREAM_ERROR,
                        &format!("upstream `{server_name}`: the server exited"),
                        None,
                    ))
                    .await;
            }
        });
    }

    /// The era the connection settled on.
    pub fn era(&self) -> Era {
        self.era.lock().map(|e| *e).unwrap_or(Era::Legacy)
    }

    /// The opening exchange. With `era = "auto"` the connection follows the agent: a legacy
    /// agent gets a legacy connection (so sessions, `logging/setLevel`, subscriptions and
    /// server→client requests work end to end), a modern one a modern connection, each falling
    /// back to the other era when the server lacks it.
    async fn open(&self, era: Era, prefer_modern: bool) -> Result<(), Error> {
        match era {
            Era::Legacy => self.initialize().await,
            // Configured modern: the probe may take as long as any request (a stdio server
            // still starting under load answers late, not never).
            Era::Modern if self.probe_modern(self.timeout).await => Ok(()),
            Era::Modern => Err(upstream_err(
                &self.name,
                "configured as modern but does not answer `server/discover`",
            )),
            Era::Auto if prefer_modern => {
                if self.probe_modern(self.probe_timeout()).await {
                    Ok(())
                } else {
                    self.initialize().await
                }
            }
            Era::Auto => match self.initialize().await {
                Ok(()) => Ok(()),
                Err(_) if self.probe_modern(self.probe_timeout()).await => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    /// How long an `era = "auto"` connection waits for `server/discover`. A stdio server's first
    /// answer includes its start-up (seconds for a Python server on a loaded machine), and a
    /// server that takes the probe for its era cannot be asked again in the other one.
    fn probe_timeout(&self) -> Duration {
        match self.transport {
            Transport::Stdio { .. } => self.timeout.min(STDIO_PROBE_TIMEOUT),
            Transport::Http { .. } | Transport::Replay(_) => PROBE_TIMEOUT,
        }
    }

    /// Probes with `server/discover`; true (and modern) if the server speaks 2026-07-28.
    async fn probe_modern(&self, timeout: Duration) -> bool {
        let probe = self
            .request_with_timeout("server/discover", json!({}), timeout, Some(Era::Modern))
            .await;
        let Ok(resp) = probe else { return false };
        let modern = resp
            .pointer("/result/supportedVersions")
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|x| x == MODERN_VERSION))
            || resp.pointer("/error/code").and_then(Value::as_i64)
                == Some(jsonrpc::UNSUPPORTED_PROTOCOL_VERSION);
        if modern {
            self.set_info(resp.get("result").cloned().unwrap_or(Value::Null));
            self.set_era(Era::Modern);
        }
        modern
    }

    async fn initialize(&self) -> Result<(), Error> {
        self.set_era(Era::Legacy);
        let resp = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": LEGACY_VERSION,
                    "capabilities": self.client_caps,
                    "clientInfo": {"name": "warden-gateway", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
            .await?;
        let result = resp.get("result").cloned().ok_or_else(|| {
            upstream_err(
                &self.name,
                format_args!(
                    "initialize failed: {}",
                    resp.get("error").cloned().unwrap_or_default()
                ),
            )
        })?;
        self.set_info(result);
        self.notify(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        self.open_session_stream();
        Ok(())
    }

    /// Opens the GET stream of a legacy HTTP session, on which the server sends what belongs to
    /// no request: list-changed and other notifications, server→client requests. Its frames are
    /// routed as those of a stdio server's pipe. Nothing to do for stdio, or for a server that
    /// assigned no session (there is no session for a stream to belong to).
    fn open_session_stream(&self) {
        let Transport::Http {
            client,
            url,
            session_id,
        } = &self.transport
        else {
            return;
        };
        let Some(sid) = session_id.lock().ok().and_then(|s| s.clone()) else {
            return;
        };
        let stream = SessionStream {
            server: self.name.clone(),
            client: client.clone(),
            url: url.clone(),
            session_id: sid,
            pending: self.pending.clone(),
            events: self.events.clone(),
        };
        let task = tokio::spawn(stream.run()).abort_handle();
        if let Ok(mut slot) = self.session_stream.lock()
            && let Some(old) = slot.replace(task)
        {
            old.abort();
        }
    }

    fn set_era(&self, era: Era) {
        if let Ok(mut e) = self.era.lock() {
            *e = era;
        }
    }

    fn set_info(&self, info: Value) {
        if let Ok(mut i) = self.server_info.lock() {
            *i = info;
        }
    }

    /// Sends a request built from `method` and `params`; returns the response frame.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, Error> {
        self.request_with_timeout(method, params, self.timeout, None)
            .await
    }

    async fn request_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
        era: Option<Era>,
    ) -> Result<Value, Error> {
        // `null` marks the gateway's own requests (replay answers them by method).
        let frame = json!({"jsonrpc": "2.0", "id": null, "method": method, "params": params});
        self.forward_with(frame, timeout, era).await
    }

    /// Notes which arguments of `tool` go into `Mcp-Param-*` headers.
    pub fn set_param_headers(&self, tool: &str, pairs: Vec<(String, String)>) {
        if let Ok(mut m) = self.param_headers.lock() {
            if pairs.is_empty() {
                m.remove(tool);
            } else {
                m.insert(tool.to_owned(), pairs);
            }
        }
    }

    /// How many notifications and server→client requests this connection has routed to the
    /// session so far. Read after a response arrived, it covers everything the server sent
    /// before that response: the session delivers those first (progress before the result).
    pub fn routed(&self) -> u64 {
        self.pending.routed.load(Ordering::Acquire)
    }

    /// Reserves the upstream id of a request about to be forwarded (for cancellation).
    pub fn reserve_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Forwards an agent's request frame under the reserved upstream `id`, with `certificate`
    /// (already serialized) added to its `params._meta` as `dev.warden/certificate`; returns the
    /// response frame (which carries `id`, not the agent's).
    pub async fn forward(
        &self,
        frame: Value,
        id: u64,
        certificate: Option<&str>,
    ) -> Result<Value, Error> {
        self.forward_as(frame, id, self.timeout, None, certificate)
            .await
    }

    async fn forward_with(
        &self,
        frame: Value,
        timeout: Duration,
        era: Option<Era>,
    ) -> Result<Value, Error> {
        let id = self.reserve_id();
        self.forward_as(frame, id, timeout, era, None).await
    }

    async fn forward_as(
        &self,
        mut frame: Value,
        id: u64,
        timeout: Duration,
        era: Option<Era>,
        certificate: Option<&str>,
    ) -> Result<Value, Error> {
        if let Transport::Replay(recorded) = &self.transport {
            return self.replayed(recorded, &frame, id);
        }
        if let Some(obj) = frame.as_object_mut() {
            obj.insert("id".into(), json!(id));
        }
        if era.unwrap_or_else(|| self.era()) == Era::Modern {
            add_modern_meta(&mut frame, &self.client_caps);
        } else {
            // A modern agent's envelope means nothing to (and is refused by) a legacy session.
            strip_modern_meta(&mut frame);
        }
        let answer = self.exchange(frame, id, timeout, certificate).await;
        if let Some(poll) = &self.idle_poll {
            poll.event();
        }
        answer
    }

    /// Sends `frame` (already carrying `id`) and waits for its answer.
    async fn exchange(
        &self,
        frame: Value,
        id: u64,
        timeout: Duration,
        certificate: Option<&str>,
    ) -> Result<Value, Error> {
        match &self.transport {
            Transport::Stdio { stdin, .. } => {
                let (tx, rx) = oneshot::channel();
                self.pending
                    .lock()
                    .map_err(|_| upstream_err(&self.name, "poisoned"))?
                    .insert(id, tx);
                let mut bytes = jsonrpc::to_upstream_vec(&frame, certificate)
                    .map_err(|e| upstream_err(&self.name, e))?;
                bytes.push(b'\n');
                {
                    let mut w = stdin.lock().await;
                    w.write_all(&bytes)
                        .await
                        .map_err(|e| upstream_err(&self.name, e))?;
                    w.flush().await.map_err(|e| upstream_err(&self.name, e))?;
                }
                if let Some(poll) = &self.idle_poll {
                    poll.event();
                }
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(_)) => Err(upstream_err(&self.name, "connection closed")),
                    Err(_) => {
                        if let Ok(mut p) = self.pending.lock() {
                            p.remove(&id);
                        }
                        Err(upstream_err(&self.name, "timed out"))
                    }
                }
            }
            Transport::Http { .. } => {
                if let Some(poll) = &self.idle_poll {
                    poll.event();
                }
                tokio::time::timeout(timeout, self.http_post(&frame, Some(id), certificate))
                    .await
                    .map_err(|_| upstream_err(&self.name, "timed out"))?
                    .and_then(|r| r.ok_or_else(|| upstream_err(&self.name, "no response")))
            }
            Transport::Replay(recorded) => self.replayed(recorded, &frame, id),
        }
    }

    /// Opens a `subscriptions/listen` stream (2026-07-28) on this server with `params`. Its
    /// frames arrive on the returned receiver, in order: the acknowledgement, notifications, and
    /// the response that ends the stream (or an error response when the server refuses). At most
    /// [`LISTEN_BUFFER`] frames wait; dropping the receiver closes the stream upstream (HTTP: the
    /// connection; stdio: `notifications/cancelled`).
    pub async fn listen(self: &Arc<Self>, params: Value) -> Result<mpsc::Receiver<Value>, Error> {
        let id = self.reserve_id();
        let mut frame =
            json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen", "params": params});
        add_modern_meta(&mut frame, &self.client_caps);
        let (tx, rx) = mpsc::channel(LISTEN_BUFFER);
        match &self.transport {
            Transport::Http {
                client,
                url,
                session_id,
            } => {
                let body = jsonrpc::to_upstream_vec(&frame, None)
                    .map_err(|e| upstream_err(&self.name, e))?;
                let req = self
                    .http_builder(client, url, session_id, &frame)
                    .body(body);
                let resp = tokio::time::timeout(self.timeout, req.send())
                    .await
                    .map_err(|_| upstream_err(&self.name, "timed out"))?
                    .map_err(|e| upstream_err(&self.name, e))?;
                if !is_sse(&resp) {
                    let status = resp.status();
                    let mut resp = resp;
                    let bytes =
                        tokio::time::timeout(self.timeout, bounded_body(&self.name, &mut resp))
                            .await
                            .map_err(|_| upstream_err(&self.name, "timed out"))??;
                    let answer = serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .filter(|v| jsonrpc::classify(v) == Kind::Response)
                        .ok_or_else(|| upstream_err(&self.name, format_args!("http {status}")))?;
                    let _ = tx.try_send(answer);
                    return Ok(rx);
                }
                tokio::spawn(read_listen_stream(resp, tx));
            }
            Transport::Stdio { .. } => {
                self.pending
                    .subscriptions
                    .lock()
                    .map_err(|_| upstream_err(&self.name, "poisoned"))?
                    .insert(id, tx.clone());
                let up = Arc::downgrade(self);
                if let Err(e) = self.notify(frame).await {
                    if let Ok(mut subs) = self.pending.subscriptions.lock() {
                        subs.remove(&id);
                    }
                    return Err(e);
                }
                // When the listener goes away before the server ended the stream, cancel it.
                tokio::spawn(async move {
                    tx.closed().await;
                    let Some(up) = up.upgrade() else { return };
                    let open = up
                        .pending
                        .subscriptions
                        .lock()
                        .ok()
                        .and_then(|mut subs| subs.remove(&id))
                        .is_some();
                    if open {
                        let _ = up
                            .notify(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id, "reason": "listener closed"}}))
                            .await;
                    }
                });
            }
            Transport::Replay(_) => {
                return Err(upstream_err(&self.name, "a recording has no listen stream"));
            }
        }
        Ok(rx)
    }

    /// Sends a notification or a response (to a server→client request).
    pub async fn notify(&self, frame: Value) -> Result<(), Error> {
        match &self.transport {
            Transport::Stdio { stdin, .. } => {
                let mut bytes = jsonrpc::to_upstream_vec(&frame, None)
                    .map_err(|e| upstream_err(&self.name, e))?;
                bytes.push(b'\n');
                let mut w = stdin.lock().await;
                w.write_all(&bytes)
                    .await
                    .map_err(|e| upstream_err(&self.name, e))?;
                w.flush().await.map_err(|e| upstream_err(&self.name, e))
            }
            Transport::Http { .. } => self.http_post(&frame, None, None).await.map(|_| ()),
            Transport::Replay(_) => Ok(()),
        }
    }

    /// A connection answering from a recorded session (no process, no network).
    pub fn replay(
        name: &str,
        recorded: Recorded,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            transport: Transport::Replay(Mutex::new(recorded)),
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
            era: Mutex::new(Era::Legacy),
            server_info: Mutex::new(Value::Null),
            client_caps: json!({}),
            events,
            timeout: Duration::from_secs(1),
            idle_poll: None,
            param_headers: Mutex::default(),
            session_stream: Mutex::default(),
        })
    }

    fn replayed(&self, recorded: &Mutex<Recorded>, frame: &Value, id: u64) -> Result<Value, Error> {
        let mut rec = recorded
            .lock()
            .map_err(|_| upstream_err(&self.name, "poisoned"))?;
        let agent_id = frame.get("id").filter(|v| !v.is_null());
        let method = jsonrpc::method(frame).unwrap_or_default();
        let found = match agent_id {
            Some(aid) => rec.by_id.remove(&aid.to_string()),
            None => rec
                .by_method
                .get_mut(method)
                .and_then(std::collections::VecDeque::pop_front),
        };
        let resp = found.ok_or_else(|| {
            upstream_err(
                &self.name,
                format_args!("the recording has no answer to `{method}`"),
            )
        })?;
        let mut resp = resp;
        if let Some(obj) = resp.as_object_mut() {
            obj.insert("id".into(), json!(id));
        }
        Ok(resp)
    }

    /// POSTs one frame; for a request, reads the JSON or SSE answer until the response with
    /// `id`, routing everything else as events.
    async fn http_post(
        &self,
        frame: &Value,
        id: Option<u64>,
        certificate: Option<&str>,
    ) -> Result<Option<Value>, Error> {
        let Transport::Http {
            client,
            url,
            session_id,
        } = &self.transport
        else {
            return Err(upstream_err(&self.name, "not an http upstream"));
        };
        let req = self.http_builder(client, url, session_id, frame);
        let body = jsonrpc::to_upstream_vec(frame, certificate)
            .map_err(|e| upstream_err(&self.name, e))?;
        let mut resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| upstream_err(&self.name, e))?;
        if let Some(sid) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            && let Ok(mut s) = session_id.lock()
        {
            *s = Some(sid.to_owned());
        }
        let Some(id) = id else {
            return Ok(None);
        };
        if !is_sse(&resp) {
            let status = resp.status();
            let bytes = bounded_body(&self.name, &mut resp).await?;
            return match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) if jsonrpc::classify(&v) == Kind::Response || v.get("error").is_some() => {
                    Ok(Some(v))
                }
                _ => Err(upstream_err(&self.name, format_args!("http {status}"))),
            };
        }
        let mut parser = crate::sse::SseParser::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| upstream_err(&self.name, e))?
        {
            let events = parser
                .push(&chunk)
                .map_err(|e| upstream_err(&self.name, e))?;
            for event in events {
                if let Ok(frame) = serde_json::from_str::<Value>(&event) {
                    if jsonrpc::classify(&frame) == Kind::Response
                        && frame.get("id") == Some(&json!(id))
                    {
                        return Ok(Some(frame));
                    }
                    route(&self.name, frame, &self.pending, &self.events).await;
                }
            }
        }
        Err(upstream_err(&self.name, "stream ended without a response"))
    }

    /// The POST of `frame` with the headers its era and method call for (no body yet).
    fn http_builder(
        &self,
        client: &reqwest::Client,
        url: &str,
        session_id: &Mutex<Option<String>>,
        frame: &Value,
    ) -> reqwest::RequestBuilder {
        let era = self.era();
        let mut req = client
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        let sid = session_id.lock().ok().and_then(|s| s.clone());
        if let Some(sid) = sid {
            req = req.header("mcp-session-id", sid);
        }
        let method = jsonrpc::method(frame).unwrap_or_default().to_owned();
        if method != "initialize" {
            let version = if era == Era::Modern || method == "server/discover" {
                MODERN_VERSION
            } else {
                LEGACY_VERSION
            };
            req = req.header("mcp-protocol-version", version);
        }
        if era == Era::Modern || method == "server/discover" {
            if !method.is_empty() {
                req = req.header("mcp-method", method.as_str());
            }
            if let Some(name) = jsonrpc::param(frame, "name")
                .or_else(|| jsonrpc::param(frame, "uri"))
                .and_then(Value::as_str)
                && name.is_ascii()
                && !name.contains(['\r', '\n'])
            {
                req = req.header("mcp-name", name);
            }
            if method == "tools/call" {
                let tool = jsonrpc::param(frame, "name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let pairs = self
                    .param_headers
                    .lock()
                    .ok()
                    .and_then(|m| m.get(tool).cloned())
                    .unwrap_or_default();
                for (arg, header) in pairs {
                    if let Some(v) = jsonrpc::param(frame, "arguments")
                        .and_then(|a| a.get(&arg))
                        .and_then(crate::session::header_value)
                    {
                        req = req.header(format!("mcp-param-{header}"), v);
                    }
                }
            }
        }
        req
    }
}

/// How long an `era = "auto"` connection waits for `server/discover` before it tries the other
/// era.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// As [`PROBE_TIMEOUT`], for a stdio server that is starting.
const STDIO_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// How many frames of one relayed listen stream may wait for their reader.
pub const LISTEN_BUFFER: usize = 64;

/// The largest frame a relayed listen stream carries (bytes of JSON).
const LISTEN_MAX_FRAME: usize = 64 * 1024;

/// The `_meta` key naming the listen stream a notification belongs to.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// How long the first reconnection of a session stream waits (doubling after each attempt that
/// got nothing, up to [`SESSION_STREAM_MAX_BACKOFF`]), unless the server asked for longer.
const SESSION_STREAM_BACKOFF: Duration = Duration::from_millis(250);

/// The longest wait between two attempts to (re)open a session stream.
const SESSION_STREAM_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How many attempts in a row may get nothing (no event, not open for
/// [`SESSION_STREAM_HEALTHY`]) before the gateway stops asking for a session stream.
const SESSION_STREAM_ATTEMPTS: u32 = 6;

/// A session stream that stayed open this long was healthy, even if it carried nothing.
const SESSION_STREAM_HEALTHY: Duration = Duration::from_secs(30);

/// How long a server may take to answer the GET that opens its session stream.
const SESSION_STREAM_CONNECT: Duration = Duration::from_secs(30);

/// TCP keepalive of HTTP upstream connections (probes after this much idle time).
const SESSION_STREAM_KEEPALIVE: Duration = Duration::from_secs(30);

/// How long the DELETE that ends an upstream session may take.
const SESSION_DELETE_TIMEOUT: Duration = Duration::from_secs(5);

/// The GET stream of one legacy Streamable HTTP session (2025-11-25, "Listening for Messages
/// from the Server"). It holds no reference to its [`Upstream`]: the connection aborts it when
/// it goes, which closes the HTTP connection.
struct SessionStream {
    server: String,
    client: reqwest::Client,
    url: String,
    session_id: String,
    pending: Pending,
    events: mpsc::Sender<UpstreamEvent>,
}

/// How one attempt at the session stream ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// The stream ran and ended (or broke) after it carried events or stayed open a while:
    /// reconnect promptly, resuming after the last event.
    Dropped,
    /// Nothing came of the attempt (refused, conflict, error, ended at once): back off.
    Failed,
    /// 405: the server offers no session stream. Not an error, and not asked again.
    NotOffered,
    /// No stream now or later: 404 (the session is gone), or a frame over the size limit.
    Over(&'static str),
}

impl SessionStream {
    /// Opens the stream and keeps it open while the session lives: a dropped stream is resumed
    /// with `Last-Event-ID`, with a growing wait between attempts that get nothing and a bound on
    /// how many may fail in a row.
    async fn run(self) {
        let mut last_id: Option<String> = None;
        let mut retry_hint: Option<Duration> = None;
        let mut failures = 0u32;
        loop {
            let end = self.attempt(&mut last_id, &mut retry_hint).await;
            let base = retry_hint
                .unwrap_or(SESSION_STREAM_BACKOFF)
                .clamp(SESSION_STREAM_BACKOFF, SESSION_STREAM_MAX_BACKOFF);
            let wait = match end {
                StreamEnd::NotOffered => return,
                StreamEnd::Over(why) => {
                    self.report(why);
                    return;
                }
                StreamEnd::Dropped => {
                    failures = 0;
                    base
                }
                StreamEnd::Failed => {
                    failures += 1;
                    if failures >= SESSION_STREAM_ATTEMPTS {
                        self.report("no stream after repeated attempts");
                        return;
                    }
                    base.saturating_mul(1 << failures.min(8))
                        .min(SESSION_STREAM_MAX_BACKOFF)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One GET: reads the stream until it ends, routing every frame.
    async fn attempt(
        &self,
        last_id: &mut Option<String>,
        retry_hint: &mut Option<Duration>,
    ) -> StreamEnd {
        let mut req = self
            .client
            .get(self.url.as_str())
            .header("accept", "text/event-stream")
            .header("mcp-session-id", self.session_id.as_str())
            .header("mcp-protocol-version", LEGACY_VERSION);
        if let Some(id) = last_id.as_deref() {
            req = req.header("last-event-id", id);
        }
        let Ok(Ok(mut resp)) = tokio::time::timeout(SESSION_STREAM_CONNECT, req.send()).await
        else {
            return StreamEnd::Failed;
        };
        match resp.status() {
            reqwest::StatusCode::METHOD_NOT_ALLOWED => return StreamEnd::NotOffered,
            reqwest::StatusCode::NOT_FOUND => return StreamEnd::Over("the session ended"),
            s if !s.is_success() || !is_sse(&resp) => return StreamEnd::Failed,
            _ => {}
        }
        let opened = tokio::time::Instant::now();
        let mut parser = crate::sse::SseParser::new();
        let mut carried = false;
        loop {
            let Ok(Some(chunk)) = resp.chunk().await else {
                break;
            };
            let Ok(events) = parser.push(&chunk) else {
                return StreamEnd::Over("a frame over the size limit");
            };
            // Like the last event id, the server's reconnection time outlives the connection.
            if let Some(ms) = parser.retry_ms() {
                *retry_hint = Some(Duration::from_millis(ms));
            }
            if let Some(id) = parser.last_event_id()
                && last_id.as_deref() != Some(id)
            {
                *last_id = Some(id.to_owned());
                carried = true;
            }
            for event in events {
                carried = true;
                if let Ok(frame) = serde_json::from_str::<Value>(&event) {
                    route(&self.server, frame, &self.pending, &self.events).await;
                }
            }
        }
        if carried || opened.elapsed() >= SESSION_STREAM_HEALTHY {
            StreamEnd::Dropped
        } else {
            StreamEnd::Failed
        }
    }

    fn report(&self, why: &str) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "warden gateway: upstream `{}`: session stream closed: {why}",
            self.server
        );
    }
}

/// Moves an HTTP listen stream's frames to `tx` until the server or the reader ends it. Waits
/// for the reader when `tx` is full: the server's socket fills, memory does not.
async fn read_listen_stream(mut resp: reqwest::Response, tx: mpsc::Sender<Value>) {
    let mut parser = crate::sse::SseParser::new();
    loop {
        let chunk = tokio::select! {
            chunk = resp.chunk() => chunk,
            () = tx.closed() => return,
        };
        let Ok(Some(chunk)) = chunk else { return };
        let Ok(events) = parser.push(&chunk) else {
            return;
        };
        for event in events {
            // Change notifications are small: a huge frame ends the stream rather than waiting
            // in the buffer.
            if event.len() > LISTEN_MAX_FRAME {
                return;
            }
            if let Ok(frame) = serde_json::from_str::<Value>(&event)
                && tx.send(frame).await.is_err()
            {
                return;
            }
        }
    }
}

/// The per-request `_meta` fields of the 2026-07-28 envelope.
const MODERN_ENVELOPE: [&str; 4] = [
    "io.modelcontextprotocol/protocolVersion",
    "io.modelcontextprotocol/clientCapabilities",
    "io.modelcontextprotocol/clientInfo",
    "io.modelcontextprotocol/logLevel",
];

/// Removes the modern envelope from a frame going to a legacy connection (other `_meta` stays).
fn strip_modern_meta(frame: &mut Value) {
    if let Some(meta) = jsonrpc::param_mut(frame, "_meta").and_then(Value::as_object_mut) {
        for key in MODERN_ENVELOPE {
            meta.remove(key);
        }
    }
}

/// Adds the modern per-request `_meta` fields (keeping any the agent set).
fn add_modern_meta(frame: &mut Value, caps: &Value) {
    let Some(obj) = frame.as_object_mut() else {
        return;
    };
    let params = obj.entry("params").or_insert_with(|| json!({}));
    let Some(params) = params.as_object_mut() else {
        return;
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    meta.entry("io.modelcontextprotocol/protocolVersion")
        .or_insert_with(|| json!(MODERN_VERSION));
    meta.entry("io.modelcontextprotocol/clientCapabilities")
        .or_insert_with(|| caps.clone());
    meta.entry("io.modelcontextprotocol/clientInfo")
        .or_insert_with(|| json!({"name": "warden-gateway", "version": env!("CARGO_PKG_VERSION")}));
}

/// Routes one frame a server sent: a response to its waiting call, a listen stream's frame to
/// its relay, anything else to the session's pump. Waits while the session's `events` are full
/// (the agent is behind), so the caller reads no further: the server's pipe or socket fills and
/// stops the server, not the gateway's memory (see `backpressure.rs`).
async fn route(
    server: &str,
    frame: Value,
    pending: &Pending,
    events: &mpsc::Sender<UpstreamEvent>,
) {
    if let Some(sub) = subscription_of(&frame)
        && let Ok(mut subs) = pending.subscriptions.lock()
        && let Some(tx) = subs.get(&sub)
    {
        let last = jsonrpc::classify(&frame) == Kind::Response;
        // A listener that fell `LISTEN_BUFFER` frames behind loses its stream: list-changed
        // events are level triggers, it re-listens and re-fetches.
        if tx.try_send(frame).is_err() || last {
            subs.remove(&sub);
        }
        return;
    }
    match jsonrpc::classify(&frame) {
        Kind::Response => {
            let waiter = frame
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| pending.lock().ok().and_then(|mut p| p.remove(&id)));
            if let Some(tx) = waiter {
                let _ = tx.send(frame);
            }
        }
        Kind::Request => {
            pending.routed.fetch_add(1, Ordering::AcqRel);
            let _ = events
                .send(UpstreamEvent::Request {
                    server: server.to_owned(),
                    frame,
                })
                .await;
        }
        Kind::Notification => {
            pending.routed.fetch_add(1, Ordering::AcqRel);
            let _ = events
                .send(UpstreamEvent::Notification {
                    server: server.to_owned(),
                    frame,
                })
                .await;
        }
        Kind::Invalid => {}
    }
}

/// The upstream id of the listen stream `frame` belongs to: a notification's
/// `_meta.io.modelcontextprotocol/subscriptionId`, or a response's id (which the caller looks up
/// among open subscriptions only).
fn subscription_of(frame: &Value) -> Option<u64> {
    match jsonrpc::classify(frame) {
        Kind::Notification => jsonrpc::meta(frame, META_SUBSCRIPTION_ID).and_then(Value::as_u64),
        Kind::Response => frame.get("id").and_then(Value::as_u64),
        Kind::Request | Kind::Invalid => None,
    }
}

fn is_sse(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}
