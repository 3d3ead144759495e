//! The Streamable HTTP face (`warden serve`): POST, GET and DELETE on `/mcp`, both eras.
//!
//! - Legacy (2025-11-25): `initialize` opens a session named by `Mcp-Session-Id`; later requests
//!   must carry it and the same identity; GET opens the session's server→client stream; DELETE
//!   ends it.
//! - Modern (2026-07-28): stateless requests whose `MCP-Protocol-Version`, `Mcp-Method` and
//!   `Mcp-Name` headers must agree with the body. For taint inference the gateway still keeps one
//!   implicit session per agent identity: what an agent read earlier taints what it sends later.
//! - Every request: `Origin`, when present, must be a loopback origin or listed in
//!   `allowed_origins` (DNS rebinding); the caller is the `sub` of a JWT-SVID bearer verified
//!   against the trust bundle. The bearer is never forwarded upstream (upstream connections are
//!   the gateway's own).
//!
//! Backpressure (see `backpressure.rs`): a request's own event stream holds at most
//! [`REQUEST_STREAM_BUFFER`] frames, and a client that does not read it makes its session stop
//! reading its upstreams. A legacy session's GET stream reads from a bounded backlog, which
//! keeps what arrives while no GET stream is open and drops the oldest progress and log
//! notifications when full; the stream may be closed and opened again.
//!
//! Approvals: `GET /warden/approvals`, `POST /warden/approvals/{id}/approve|deny`, for callers
//! listed in `approvers`.
#![expect(
    clippy::result_large_err,
    reason = "an early-return `Response` is the idiom of axum handlers; it is built once per refused request"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::auth::BearerVerifier;
use crate::backpressure::{Backlog, BacklogReader, REQUEST_STREAM_BUFFER};
use crate::error::Error;
use crate::jsonrpc::{self, Kind};
use crate::listen::{Listens, Refusal};
use crate::session::{Gateway, Session};
use crate::tls::Peer;
use crate::{LEGACY_VERSIONS, MODERN_VERSION, SUPPORTED_VERSIONS};

struct HttpSession {
    session: Arc<Session>,
    agent: String,
    /// Order of creation on this face (the oldest of an agent's sessions goes first).
    opened: u64,
    /// What the session sends outside responses, for its GET stream.
    backlog: Arc<Backlog>,
}

/// The HTTP face's state.
pub struct HttpFace {
    gw: Arc<Gateway>,
    verifier: Option<BearerVerifier>,
    sessions: Mutex<HashMap<String, Arc<HttpSession>>>,
    /// Sessions opened so far (orders them for [`FaceSettings::max_sessions_per_agent`]).
    opened: std::sync::atomic::AtomicU64,
    /// Implicit sessions of modern agents, by identity.
    modern: Mutex<HashMap<String, Arc<Session>>>,
    /// Modern agents whose session has the gateway's own tools-only listen open.
    watched: Mutex<std::collections::HashSet<String>>,
    /// Ends those listens when the face is dropped.
    stop_watches: Arc<tokio::sync::Notify>,
    /// Open `subscriptions/listen` relays.
    listens: Arc<Listens>,
}

impl Drop for HttpFace {
    fn drop(&mut self) {
        self.stop_watches.notify_waiters();
    }
}

impl std::fmt::Debug for HttpFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFace").finish_non_exhaustive()
    }
}

impl HttpFace {
    /// The face over `gw`; verifies bearers with the configured trust bundle.
    pub fn new(gw: Arc<Gateway>) -> Result<Arc<Self>, Error> {
        let settings = &gw.config().gateway;
        let verifier = match &settings.jwks {
            Some(path) => Some(BearerVerifier::load(
                &gw.config().resolve(path),
                gw.config().manifest().trust_domain(),
                &settings.audience,
            )?),
            None if settings.http_agent.is_some() || settings.tls.is_some() => None,
            None => {
                return Err(Error::Config(
                    "the HTTP face needs `jwks`, `[gateway.tls]` (or `http_agent` for loopback tests)"
                        .into(),
                ));
            }
        };
        Ok(Arc::new(Self {
            gw,
            verifier,
            sessions: Mutex::default(),
            opened: std::sync::atomic::AtomicU64::new(0),
            modern: Mutex::default(),
            watched: Mutex::default(),
            stop_watches: Arc::default(),
            listens: Arc::default(),
        }))
    }

    /// The axum router (`/mcp` and `/warden/approvals`).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/mcp", post(post_mcp).get(get_mcp).delete(delete_mcp))
            .route("/warden/approvals", get(list_approvals))
            .route("/warden/approvals/{id}/{decision}", post(answer_approval))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) -> Result<(), Error> {
        if self.gw.config().gateway.tls.is_some() {
            return Err(Error::Config(
                "`[gateway.tls]` is set: serve the face with `MtlsFace`, not in plain HTTP".into(),
            ));
        }
        axum::serve(listener, self.router())
            .await
            .map_err(Error::Io)
    }

    /// Keeps the legacy session `hs` under `sid`; when its agent already holds
    /// [`FaceSettings::max_sessions_per_agent`] sessions, the oldest of them ends (its
    /// connections close) so that one agent's `initialize`s cannot grow the face without bound.
    /// Returns the ended session, to be dropped outside the lock.
    fn admit(&self, sid: String, hs: Arc<HttpSession>) -> Option<Arc<HttpSession>> {
        let max = self.gw.config().gateway.max_sessions_per_agent.max(1);
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = sessions.values().filter(|s| s.agent == hs.agent);
        let evicted = if mine.clone().count() >= max {
            let oldest = mine
                .min_by_key(|s| s.opened)
                .map(|s| s.session.id().to_owned());
            oldest.and_then(|id| sessions.remove(&id))
        } else {
            None
        };
        sessions.insert(sid, hs);
        evicted
    }

    /// The checks every request passes before anything else: no header the face decides on
    /// appears twice (a proxy or filter reading the last value would see another request than
    /// the face, which reads the first), and the `Origin` is allowed.
    fn screen(&self, headers: &HeaderMap) -> Result<(), Response> {
        if let Some(name) = repeated_header(headers) {
            return Err(status(
                StatusCode::BAD_REQUEST,
                &format!("header `{name}` appears more than once"),
            ));
        }
        if !self.origin_ok(headers) {
            return Err(status(StatusCode::FORBIDDEN, "origin not allowed"));
        }
        Ok(())
    }

    fn origin_ok(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        if self
            .gw
            .config()
            .gateway
            .allowed_origins
            .iter()
            .any(|o| o == origin)
        {
            return true;
        }
        let host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }

    fn caller(&self, headers: &HeaderMap, peer: &Peer) -> Result<String, Response> {
        if self.gw.config().gateway.tls.is_some() {
            return self.mtls_caller(headers, peer);
        }
        let Some(verifier) = &self.verifier else {
            return self
                .gw
                .config()
                .gateway
                .http_agent
                .clone()
                .ok_or_else(|| status(StatusCode::UNAUTHORIZED, "no identity"));
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("missing bearer"))?;
        verifier
            .verify(token.trim(), self.gw.now())
            .map_err(|e| unauthorized(&e.to_string()))
    }

    /// With `[gateway.tls]`: the client SVID's SPIFFE ID (verified and authorized in the
    /// handshake, checked again here); a bearer sent as well must name the same agent.
    fn mtls_caller(&self, headers: &HeaderMap, peer: &Peer) -> Result<String, Response> {
        let Some(id) = &peer.0 else {
            return Err(unauthorized("no client SVID"));
        };
        if !crate::tls::allowed_clients(self.gw.config()).contains(id) {
            return Err(status(StatusCode::FORBIDDEN, "client SVID not authorized"));
        }
        if let Some(bearer) = headers.get(header::AUTHORIZATION) {
            let Some(verifier) = &self.verifier else {
                return Err(unauthorized("bearer not accepted: no `jwks` configured"));
            };
            let token = bearer
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| unauthorized("malformed bearer"))?;
            let named = verifier
                .verify(token.trim(), self.gw.now())
                .map_err(|e| unauthorized(&e.to_string()))?;
            if &named != id {
                return Err(unauthorized(&format!(
                    "bearer names `{named}`, client SVID names `{id}`"
                )));
            }
        }
        Ok(id.clone())
    }

    /// Answers a modern `subscriptions/listen` with the relay's event stream (see `listen.rs`).
    fn listen(&self, session: Arc<Session>, frame: Value) -> Response {
        let id = frame.get("id").cloned().unwrap_or(Value::Null);
        let (tx, rx) = mpsc::channel(crate::upstream::LISTEN_BUFFER);
        let servers = self.gw.config().servers.keys().cloned().collect();
        if let Err(refusal) = self.listens.open(session, servers, frame, tx) {
            let code = match refusal {
                Refusal::TooMany => StatusCode::TOO_MANY_REQUESTS,
                Refusal::Reused(_) => StatusCode::BAD_REQUEST,
            };
            return (code, axum::Json(refusal.to_error(id))).into_response();
        }
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let frame = rx.recv().await?;
            Some((sse_event(&frame), rx))
        });
        sse_response(Body::from_stream(stream))
    }

    /// From a modern agent's first request on, the gateway's own tools-only listen on the
    /// servers behind the agent's implicit session, as on the stdio face: a modern server
    /// announces a tool change only on listen streams, and the change must be re-pinned (and
    /// refused) even while the agent holds no relay.
    fn watch_tools(&self, agent: &str, session: &Arc<Session>, frame: &Value) {
        if !self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(agent.to_owned())
        {
            return;
        }
        let meta = frame.pointer("/params/_meta").cloned().unwrap_or_default();
        let servers = self.gw.config().servers.keys().cloned().collect();
        tokio::spawn(crate::listen::watch_tools(
            session.clone(),
            servers,
            meta,
            self.stop_watches.clone(),
        ));
    }

    fn modern_session(&self, agent: &str) -> Arc<Session> {
        let mut m = self
            .modern
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(agent.to_owned())
            .or_insert_with(|| {
                // Modern agents take no unsolicited messages: the session stream is closed.
                let (tx, _) = mpsc::channel(1);
                Session::new(&self.gw, agent, Vec::new(), tx)
            })
            .clone()
    }
}

fn status(code: StatusCode, msg: &str) -> Response {
    (
        code,
        axum::Json(jsonrpc::error(
            Value::Null,
            jsonrpc::INVALID_REQUEST,
            msg,
            None,
        )),
    )
        .into_response()
}

fn unauthorized(msg: &str) -> Response {
    let mut r = status(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn rpc_error(code: StatusCode, id: Value, rpc: i64, msg: &str, data: Option<Value>) -> Response {
    (code, axum::Json(jsonrpc::error(id, rpc, msg, data))).into_response()
}

/// The first header the face decides on (`Origin`, `Authorization`, the MCP headers, Warden's
/// delegation header) that appears more than once.
fn repeated_header(headers: &HeaderMap) -> Option<&str> {
    headers.keys().map(|k| k.as_str()).find(|name| {
        let decided = *name == "origin"
            || *name == "authorization"
            || name.starts_with("mcp-")
            || name.eq_ignore_ascii_case(crate::DELEGATION_HEADER);
        decided && headers.get_all(*name).iter().nth(1).is_some()
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Methods the modern revision removed: answered 404 / -32601 to a modern request.
const REMOVED_IN_MODERN: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// Checks a modern request: the revision, the required `_meta` fields, and the request headers
/// against the body.
fn check_modern_request(
    headers: &HeaderMap,
    frame: &Value,
    meta_version: Option<&str>,
    version: &str,
) -> Result<(), Response> {
    let id = frame.get("id").cloned().unwrap_or(Value::Null);
    let mismatch = |what: &str| {
        rpc_error(
            StatusCode::BAD_REQUEST,
            id.clone(),
            jsonrpc::HEADER_MISMATCH,
            &format!("header `{what}` does not match the body"),
            None,
        )
    };
    let header_version = header_str(headers, "mcp-protocol-version");
    if let (Some(h), Some(m)) = (header_version, meta_version)
        && h != m
    {
        return Err(mismatch("MCP-Protocol-Version"));
    }
    let method = jsonrpc::method(frame).unwrap_or_default();
    if REMOVED_IN_MODERN.contains(&method) && version == MODERN_VERSION {
        return Err(rpc_error(
            StatusCode::NOT_FOUND,
            id,
            jsonrpc::METHOD_NOT_FOUND,
            &format!("method `{method}` does not exist in {MODERN_VERSION}"),
            None,
        ));
    }
    let Some(meta_version) = meta_version else {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            jsonrpc::INVALID_PARAMS,
            "`_meta` lacks `io.modelcontextprotocol/protocolVersion`",
            None,
        ));
    };
    if meta_version != MODERN_VERSION {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
            "Unsupported protocol version",
            Some(json!({"supported": SUPPORTED_VERSIONS, "requested": meta_version})),
        ));
    }
    if frame
        .pointer("/params/_meta/io.modelcontextprotocol~1clientCapabilities")
        .is_none()
    {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            jsonrpc::INVALID_PARAMS,
            "`_meta` lacks `io.modelcontextprotocol/clientCapabilities`",
            None,
        ));
    }
    if header_version.is_none() {
        return Err(mismatch("MCP-Protocol-Version"));
    }
    if header_str(headers, "mcp-method") != Some(method) {
        return Err(mismatch("Mcp-Method"));
    }
    if matches!(method, "tools/call" | "resources/read" | "prompts/get") {
        let name = frame
            .pointer("/params/name")
            .or_else(|| frame.pointer("/params/uri"))
            .and_then(Value::as_str);
        let sent = header_str(headers, "mcp-name").map(decode_header_value);
        if sent.as_deref() != name {
            return Err(mismatch("Mcp-Name"));
        }
    }
    Ok(())
}

/// Header values may carry non-ASCII text as `=?base64?...?=`.
fn decode_header_value(v: &str) -> String {
    use base64::Engine as _;
    v.strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| v.to_owned())
}

async fn post_mcp(
    State(face): State<Arc<HttpFace>>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = face.screen(&headers) {
        return refused;
    }
    let agent = match face.caller(&headers, &peer) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut frame = match jsonrpc::parse_strict(&body) {
        Ok(f) => f,
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                jsonrpc::recover_id(&body),
                jsonrpc::PARSE_ERROR,
                &e.to_string(),
                None,
            );
        }
    };
    if let Some(token) = header_str(&headers, crate::DELEGATION_HEADER)
        && let Err(why) = crate::delegation::attach_header(&mut frame, token)
    {
        return status(StatusCode::BAD_REQUEST, &why);
    }
    let kind = jsonrpc::classify(&frame);
    if kind == Kind::Invalid {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            jsonrpc::INVALID_REQUEST,
            "not a JSON-RPC message",
            None,
        );
    }
    let id = frame.get("id").cloned().unwrap_or(Value::Null);
    let method = jsonrpc::method(&frame).unwrap_or_default().to_owned();
    let meta_version = frame
        .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let header_version = header_str(&headers, "mcp-protocol-version").map(str::to_owned);
    let session_header = header_str(&headers, "mcp-session-id").map(str::to_owned);

    // Modern: the body names its revision (or the header does, outside a legacy session).
    let modern_version = match (&meta_version, &header_version, &session_header) {
        (Some(v), _, _) => Some(v.clone()),
        (None, Some(h), None)
            if kind == Kind::Request && !LEGACY_VERSIONS.contains(&h.as_str()) =>
        {
            Some(h.clone())
        }
        _ => None,
    };
    if let Some(version) = modern_version {
        if kind == Kind::Request
            && let Err(r) =
                check_modern_request(&headers, &frame, meta_version.as_deref(), &version)
        {
            return r;
        }
        let session = face.modern_session(&agent);
        if kind == Kind::Request {
            // Before anything may open an upstream connection (the `Mcp-Param-*` check lists
            // tools): the session's connections follow the modern era.
            session.adopt_modern(&frame);
            face.watch_tools(&agent, &session, &frame);
        }
        if method == "subscriptions/listen" && kind == Kind::Request {
            // The answer to a listen request is an event stream, never JSON.
            if !header_str(&headers, "accept").is_some_and(|a| a.contains("text/event-stream")) {
                return StatusCode::NOT_ACCEPTABLE.into_response();
            }
            return face.listen(session, frame);
        }
        if method == "notifications/cancelled"
            && kind == Kind::Notification
            && face.listens.cancel(&agent, &frame)
        {
            return StatusCode::ACCEPTED.into_response();
        }
        if method == "tools/call" {
            let params: std::collections::BTreeMap<String, String> = headers
                .iter()
                .filter(|(k, _)| k.as_str().starts_with("mcp-param-"))
                .filter_map(|(k, v)| {
                    v.to_str()
                        .ok()
                        .map(|v| (k.as_str().to_owned(), v.to_owned()))
                })
                .collect();
            if let Some(why) = session.param_header_mismatch(&frame, &params).await {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    id,
                    jsonrpc::HEADER_MISMATCH,
                    &why,
                    None,
                );
            }
        }
        return respond(&headers, session, frame, kind, true).await;
    }

    // Legacy.
    if method == "initialize" && kind == Kind::Request {
        let (session, backlog) = Session::with_backlog(&face.gw, &agent);
        let Some(resp) = session.handle(frame).await else {
            return status(StatusCode::INTERNAL_SERVER_ERROR, "no response");
        };
        let sid = session.id().to_owned();
        let hs = Arc::new(HttpSession {
            session,
            agent,
            backlog,
            opened: face
                .opened
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        // An ended session is dropped here, outside the table's lock.
        drop(face.admit(sid.clone(), hs));
        let mut r = axum::Json(resp).into_response();
        if let Ok(v) = HeaderValue::from_str(&sid) {
            r.headers_mut().insert("mcp-session-id", v);
        }
        return r;
    }
    let Some(sid) = session_header else {
        return status(
            StatusCode::BAD_REQUEST,
            "missing Mcp-Session-Id (send initialize first)",
        );
    };
    let hs = face
        .sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&sid)
        .cloned();
    let Some(hs) = hs.filter(|hs| hs.agent == agent) else {
        return status(StatusCode::NOT_FOUND, "unknown session");
    };
    if let Some(h) = &header_version
        && !LEGACY_VERSIONS.contains(&h.as_str())
    {
        return status(StatusCode::BAD_REQUEST, "unsupported MCP-Protocol-Version");
    }
    respond(&headers, hs.session.clone(), frame, kind, false).await
}

/// Answers one message: 202 for notifications and responses. A legacy request that accepts SSE
/// gets an SSE stream (its notifications, then its response); a modern request gets plain JSON
/// unless a notification comes before the response, and its errors carry the HTTP status the
/// revision gives them (400 for malformed or mismatched requests, 404 for unknown methods).
async fn respond(
    headers: &HeaderMap,
    session: Arc<Session>,
    frame: Value,
    kind: Kind,
    modern: bool,
) -> Response {
    if kind != Kind::Request {
        session.handle(frame).await;
        return StatusCode::ACCEPTED.into_response();
    }
    let wants_sse = header_str(headers, "accept").is_some_and(|a| a.contains("text/event-stream"));
    // The request's notifications and then its response, in order; bounded, so a client that
    // stops reading holds up its session's upstreams rather than filling the gateway.
    let (tx, mut rx) = mpsc::channel::<Value>(REQUEST_STREAM_BUFFER);
    let tx2 = tx.clone();
    let handler = session.clone();
    tokio::spawn(async move {
        if let Some(resp) = handler.handle_streaming(frame, tx2.clone()).await {
            let _ = tx2.send(resp).await;
        }
    });
    drop(tx);
    if wants_sse && !modern {
        return sse(rx, None);
    }
    let Some(mut first) = rx.recv().await else {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "no response");
    };
    // A client that accepts only JSON gets exactly the response: what the session sends before
    // it (progress, list-changed) has no stream to travel on and is dropped. A server→client
    // request cannot reach the client either: its server is answered with an error at once, so
    // it does not wait (nor does the session keep the request) for an answer that cannot come.
    while !wants_sse && jsonrpc::classify(&first) != Kind::Response {
        if jsonrpc::classify(&first) == Kind::Request {
            let refusal = jsonrpc::error(
                first.get("id").cloned().unwrap_or(Value::Null),
                jsonrpc::INTERNAL_ERROR,
                "the client accepts only JSON responses: no stream to send this request on",
                None,
            );
            let s = session.clone();
            tokio::spawn(async move { s.handle(refusal).await });
        }
        let Some(next) = rx.recv().await else {
            return status(StatusCode::INTERNAL_SERVER_ERROR, "no response");
        };
        first = next;
    }
    if jsonrpc::classify(&first) == Kind::Response {
        let code = match first.pointer("/error/code").and_then(Value::as_i64) {
            Some(jsonrpc::METHOD_NOT_FOUND) if modern => StatusCode::NOT_FOUND,
            Some(
                jsonrpc::HEADER_MISMATCH
                | jsonrpc::UNSUPPORTED_PROTOCOL_VERSION
                | jsonrpc::INVALID_PARAMS
                | jsonrpc::INVALID_REQUEST
                | jsonrpc::PARSE_ERROR
                | MISSING_CAPABILITY,
            ) if modern => StatusCode::BAD_REQUEST,
            _ => StatusCode::OK,
        };
        return (code, axum::Json(first)).into_response();
    }
    sse(rx, Some(first))
}

/// MCP 2026-07-28: the request needs a client capability it did not declare.
const MISSING_CAPABILITY: i64 = -32021;

/// A request's SSE stream of `rx` (after `first`); it ends after the first response.
fn sse(rx: mpsc::Receiver<Value>, first: Option<Value>) -> Response {
    let stream = futures_util::stream::unfold(
        (rx, first, false),
        move |(mut rx, first, done)| async move {
            if done {
                return None;
            }
            let frame = match first {
                Some(f) => f,
                None => rx.recv().await?,
            };
            let last = jsonrpc::classify(&frame) == Kind::Response;
            Some((sse_event(&frame), (rx, None, last)))
        },
    );
    sse_response(Body::from_stream(stream))
}

/// A session's GET stream: what its backlog holds and receives, until the session ends. When the
/// client closes it, the reader detaches and the backlog keeps the rest for the next GET.
fn session_sse(reader: BacklogReader) -> Response {
    let stream = futures_util::stream::unfold(reader, |reader| async move {
        let frame = reader.next().await?;
        Some((sse_event(&frame), reader))
    });
    sse_response(Body::from_stream(stream))
}

fn sse_event(frame: &Value) -> Result<Bytes, std::convert::Infallible> {
    Ok(Bytes::from(format!(
        "event: message\ndata: {}\n\n",
        serde_json::to_string(frame).unwrap_or_default()
    )))
}

fn sse_response(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

async fn get_mcp(State(face): State<Arc<HttpFace>>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(refused) = face.screen(&headers) {
        return refused;
    }
    let agent = match face.caller(&headers, &peer) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(sid) = header_str(&headers, "mcp-session-id") else {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    };
    let hs = face
        .sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(sid)
        .cloned();
    let Some(hs) = hs.filter(|hs| hs.agent == agent) else {
        return status(StatusCode::NOT_FOUND, "unknown session");
    };
    match hs.backlog.attach() {
        Some(reader) => session_sse(reader),
        None => status(StatusCode::CONFLICT, "the session's stream is already open"),
    }
}

async fn delete_mcp(State(face): State<Arc<HttpFace>>, peer: Peer, headers: HeaderMap) -> Response {
    if let Err(refused) = face.screen(&headers) {
        return refused;
    }
    let agent = match face.caller(&headers, &peer) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(sid) = header_str(&headers, "mcp-session-id") else {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    };
    let mut sessions = face
        .sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match sessions.get(sid) {
        Some(hs) if hs.agent == agent => {
            sessions.remove(sid);
            StatusCode::OK.into_response()
        }
        _ => status(StatusCode::NOT_FOUND, "unknown session"),
    }
}

fn approver(face: &HttpFace, peer: &Peer, headers: &HeaderMap) -> Result<String, Response> {
    face.screen(headers)?;
    let who = face.caller(headers, peer)?;
    if face.gw.config().gateway.approvers.contains(&who) {
        Ok(who)
    } else {
        Err(status(StatusCode::FORBIDDEN, "not an approver"))
    }
}

async fn list_approvals(
    State(face): State<Arc<HttpFace>>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = approver(&face, &peer, &headers) {
        return r;
    }
    axum::Json(json!({"pending": face.gw.pending_approvals()})).into_response()
}

async fn answer_approval(
    State(face): State<Arc<HttpFace>>,
    UrlPath((id, decision)): UrlPath<(String, String)>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let who = match approver(&face, &peer, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let granted = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return status(StatusCode::NOT_FOUND, "decision is `approve` or `deny`"),
    };
    if face.gw.answer_approval(&id, granted, &who) {
        axum::Json(json!({"id": id, "granted": granted, "approver": who})).into_response()
    } else {
        status(StatusCode::NOT_FOUND, "no such pending call")
    }
}
