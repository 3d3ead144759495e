//! The `subscriptions/listen` relay (MCP 2026-07-28) of both faces.
//!
//! An agent's listen request opens one listen stream on every modern server behind the face
//! (and follows the change notifications legacy servers send on their session). Once every
//! server acknowledged (or refused) its stream, the agent gets the face's own acknowledgement,
//! then each change notification whose kind it asked for, with `_meta` kept and
//! `io.modelcontextprotocol/subscriptionId` set to the agent's request id. The gateway always
//! listens for tool changes itself, whatever the agent asked: a server's tool list-changed makes
//! it re-list and re-pin that server's tools at once, so a changed definition is flagged before
//! the agent re-fetches the list.
//!
//! The stream ends when the agent closes it or cancels the request (its upstream streams close
//! with it), or when any server ends its stream (the agent gets the listen result and
//! re-listens). Buffers are bounded ([`crate::upstream::LISTEN_BUFFER`] frames each way): an agent that stops
//! reading loses its stream instead of growing the gateway's memory; events are level triggers,
//! so a re-listen and re-fetch loses nothing.
//!
//! [`Listens`] is a face's register of open relays: it caps them per agent
//! ([`MAX_LISTENS_PER_AGENT`]), refuses a request id already streaming, and stops a relay when
//! its agent cancels the request. The HTTP face gives each relay its own event stream; the stdio
//! face gives all of them one bounded channel in front of the shared pipe.
//!
//! Only servers of the one-upstream face pass prompt and resource notifications (prompts and
//! resources are served only there); list-changed notifications carry no tool names, so nothing
//! needs namespacing.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};

use crate::config::Era;
use crate::jsonrpc::{self, Kind};
use crate::session::Session;
use crate::upstream::{LISTEN_BUFFER, META_SUBSCRIPTION_ID};

/// The acknowledgement that opens every listen stream.
pub(crate) const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";

/// How long a server may take to acknowledge its listen stream before it is left out.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// How many `subscriptions/listen` relays one agent may hold open at once on a face (each holds
/// upstream streams and bounded buffers).
pub(crate) const MAX_LISTENS_PER_AGENT: usize = 16;

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The agent cancelled its listen request (or the face closed): nothing more is sent.
    Cancelled,
    /// The agent's sink is closed: nobody reads any more.
    AgentGone,
    /// The agent got the frame that ends its stream (the listen result or an error).
    Answered,
    /// The agent fell [`crate::upstream::LISTEN_BUFFER`] frames behind: its stream was given up
    /// and the frame that would have told it so did not fit either.
    Overrun,
}

/// Why a listen request was refused before any relay opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The agent already holds [`MAX_LISTENS_PER_AGENT`] relays.
    TooMany,
    /// The request id (as JSON text) names a relay still open.
    Reused(String),
}

impl Refusal {
    /// The JSON-RPC error answering the listen request `id`.
    pub(crate) fn to_error(&self, id: Value) -> Value {
        match self {
            Self::TooMany => jsonrpc::error(
                id,
                jsonrpc::INTERNAL_ERROR,
                &format!("at most {MAX_LISTENS_PER_AGENT} open listen streams per agent"),
                None,
            ),
            // Ids of requests in flight are unique; a reused one would also slip past the cap.
            Self::Reused(text) => jsonrpc::error(
                id,
                jsonrpc::INVALID_REQUEST,
                &format!("request id `{text}` names an open listen stream"),
                None,
            ),
        }
    }
}

/// A face's open relays, by (agent, request id as JSON text): what stops one when its agent
/// cancels the request.
#[derive(Debug, Default)]
pub(crate) struct Listens {
    open: Mutex<HashMap<(String, String), Arc<Notify>>>,
}

impl Listens {
    /// Opens a relay of the session's agent for its listen request `frame` over `servers`,
    /// writing to `sink`; the handle yields why it ended. Refused past the cap, or when the
    /// request id names a relay still open.
    pub(crate) fn open(
        self: &Arc<Self>,
        session: Arc<Session>,
        servers: Vec<String>,
        frame: Value,
        sink: mpsc::Sender<Value>,
    ) -> Result<tokio::task::JoinHandle<Outcome>, Refusal> {
        let agent = session.agent().to_owned();
        let key = (
            agent.clone(),
            frame.get("id").cloned().unwrap_or(Value::Null).to_string(),
        );
        let stop = Arc::new(Notify::new());
        {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            if open.keys().filter(|(a, _)| *a == agent).count() >= MAX_LISTENS_PER_AGENT {
                return Err(Refusal::TooMany);
            }
            if open.contains_key(&key) {
                return Err(Refusal::Reused(key.1));
            }
            open.insert(key.clone(), stop.clone());
        }
        let listens = self.clone();
        Ok(tokio::spawn(async move {
            let outcome = relay(session, servers, frame, sink, stop.clone()).await;
            let mut open = listens.open.lock().unwrap_or_else(PoisonError::into_inner);
            // A cancelled relay's key may already name a new relay with the same id.
            if open.get(&key).is_some_and(|s| Arc::ptr_eq(s, &stop)) {
                open.remove(&key);
            }
            outcome
        }))
    }

    /// Stops the relay a `notifications/cancelled` of `agent` names; false if none is open.
    pub(crate) fn cancel(&self, agent: &str, frame: &Value) -> bool {
        let Some(request) = frame.pointer("/params/requestId") else {
            return false;
        };
        let stop = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(agent.to_owned(), request.to_string()));
        // `notify_one` keeps a permit when the relay is not waiting yet: it stops at its next wait.
        stop.inspect(|s| s.notify_one()).is_some()
    }

    /// Stops every open relay (the face is closing).
    pub(crate) fn stop_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(PoisonError::into_inner));
        for stop in open.values() {
            stop.notify_one();
        }
    }
}

/// The gateway's own listen on the servers behind a modern session, for tool changes only:
/// it re-pins a server's tools when the server announces a change although no agent relay is
/// open (a modern server announces only on listen streams). Nothing reaches the agent. Opened
/// again after a server ends its stream, waiting longer each time it ends early; stops when
/// `stop` is notified. `meta` is the `_meta` of the agent's modern request.
pub(crate) async fn watch_tools(
    session: Arc<Session>,
    servers: Vec<String>,
    meta: Value,
    stop: Arc<Notify>,
) {
    // The agent asked for nothing: the relay sends only its acknowledgement and end frame.
    let frame = json!({"jsonrpc": "2.0", "id": "dev.warden/watch", "method": "subscriptions/listen", "params": {"notifications": {}, "_meta": meta}});
    let mut wait = WATCH_RETRY;
    loop {
        let (tx, mut rx) = mpsc::channel(LISTEN_BUFFER);
        let (watched, names) = (session.clone(), servers.clone());
        let drain = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if jsonrpc::method(&frame) == Some(ACKNOWLEDGED) {
                    // A change made before the stream was open was announced to nobody: once
                    // every server listens, re-list them all (notifications are level triggers).
                    let (watched, names) = (watched.clone(), names.clone());
                    tokio::spawn(async move {
                        for server in &names {
                            watched.tools_changed(server).await;
                        }
                    });
                }
            }
        });
        let started = tokio::time::Instant::now();
        let outcome = relay(
            session.clone(),
            servers.clone(),
            frame.clone(),
            tx,
            stop.clone(),
        )
        .await;
        drain.abort();
        if outcome == Outcome::Cancelled {
            return;
        }
        wait = if started.elapsed() > WATCH_RETRY_MAX {
            WATCH_RETRY
        } else {
            (wait * 2).min(WATCH_RETRY_MAX)
        };
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The first wait before the gateway's own listen is opened again.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// The longest wait before it is opened again; a stream that lasted longer resets the wait.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(60);

/// Puts `frame` on the agent's sink, or says why the relay must end.
fn send(sink: &mpsc::Sender<Value>, frame: Value) -> Result<(), Outcome> {
    match sink.try_send(frame) {
        Ok(()) => Ok(()),
        // An agent `LISTEN_BUFFER` frames behind loses its stream rather than our memory.
        Err(TrySendError::Full(_)) => Err(Outcome::Overrun),
        Err(TrySendError::Closed(_)) => Err(Outcome::AgentGone),
    }
}

/// Sends the frame that ends the agent's stream.
fn answer(sink: &mpsc::Sender<Value>, frame: Value) -> Outcome {
    match send(sink, frame) {
        Ok(()) => Outcome::Answered,
        Err(why) => why,
    }
}

/// Whether `method` is a change notification that travels on listen streams.
pub(crate) fn is_change(method: &str) -> bool {
    matches!(
        method,
        "notifications/tools/list_changed"
            | "notifications/prompts/list_changed"
            | "notifications/resources/list_changed"
            | "notifications/resources/updated"
    )
}

/// The notification kinds of a listen stream (the wire's `SubscriptionFilter`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    tools: bool,
    prompts: bool,
    resources: bool,
    uris: BTreeSet<String>,
}

impl Filter {
    /// Reads a `notifications` object; anything but `true` (or a list of strings) is absent.
    pub(crate) fn from_wire(v: Option<&Value>) -> Self {
        let flag = |k: &str| v.and_then(|v| v.get(k)) == Some(&Value::Bool(true));
        Self {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            uris: v
                .and_then(|v| v.get("resourceSubscriptions"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The `notifications` object: only `true` flags and a non-empty URI list.
    pub(crate) fn to_wire(&self) -> Value {
        let mut m = Map::new();
        for (on, key) in [
            (self.tools, "toolsListChanged"),
            (self.prompts, "promptsListChanged"),
            (self.resources, "resourcesListChanged"),
        ] {
            if on {
                m.insert(key.into(), Value::Bool(true));
            }
        }
        if !self.uris.is_empty() {
            m.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(m)
    }

    /// Whether a notification is of a kind this filter admits.
    pub(crate) fn admits(&self, frame: &Value) -> bool {
        match jsonrpc::method(frame).unwrap_or_default() {
            "notifications/tools/list_changed" => self.tools,
            "notifications/prompts/list_changed" => self.prompts,
            "notifications/resources/list_changed" => self.resources,
            "notifications/resources/updated" => frame
                .pointer("/params/uri")
                .and_then(Value::as_str)
                .is_some_and(|u| self.uris.contains(u)),
            _ => false,
        }
    }
}

/// One source of frames: a server's name and its next frame (`None` once it ended).
type Source = Pin<Box<dyn Stream<Item = (String, Option<Value>)> + Send>>;

/// A modern server's listen stream as a [`Source`].
fn stream_source(server: String, rx: mpsc::Receiver<Value>) -> Source {
    Box::pin(futures_util::stream::unfold(
        Some((server, rx)),
        |state| async move {
            let (server, mut rx) = state?;
            match rx.recv().await {
                Some(frame) => Some(((server.clone(), Some(frame)), Some((server, rx)))),
                None => Some(((server, None), None)),
            }
        },
    ))
}

/// The change notifications legacy `servers` send on the session, as a [`Source`]. A lagging
/// reader skips what it missed (the events are level triggers; the latest ones still arrive).
fn legacy_source(
    servers: BTreeSet<String>,
    rx: tokio::sync::broadcast::Receiver<(String, Value)>,
) -> Source {
    Box::pin(futures_util::stream::unfold(
        (servers, rx),
        |(servers, mut rx)| async move {
            loop {
                match rx.recv().await {
                    Ok((server, frame)) if servers.contains(&server) => {
                        return Some(((server, Some(frame)), (servers, rx)));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    ))
}

/// Serves the agent's listen request `frame` on `sink` until the agent goes away, `stop` is
/// notified (the agent cancelled the request), or a server ends its stream; returns why it ended.
pub(crate) async fn relay(
    session: Arc<Session>,
    servers: Vec<String>,
    frame: Value,
    sink: mpsc::Sender<Value>,
    stop: Arc<Notify>,
) -> Outcome {
    let id = frame.get("id").cloned().unwrap_or(Value::Null);
    // A cancellation while servers are still acknowledging drops their streams (closing them
    // upstream) and sends the agent nothing.
    let opened = tokio::select! {
        () = stop.notified() => return Outcome::Cancelled,
        () = sink.closed() => return Outcome::AgentGone,
        opened = open_sources(&session, servers, &frame) => opened,
    };
    let (sources, honored) = match opened {
        Ok(opened) => opened,
        Err(unreachable) => {
            // Nothing to listen to: say so rather than acknowledge a stream that stays silent.
            let error = jsonrpc::error(
                id,
                jsonrpc::UPSTREAM_ERROR,
                "no upstream server answered",
                Some(json!({"errors": unreachable})),
            );
            return answer(&sink, error);
        }
    };
    let mut ack_meta = Map::new();
    ack_meta.insert(META_SUBSCRIPTION_ID.into(), id.clone());
    let ack = json!({"jsonrpc": "2.0", "method": ACKNOWLEDGED, "params": {"notifications": honored.to_wire(), "_meta": ack_meta}});
    if let Err(why) = send(&sink, ack) {
        return why;
    }
    let idle = sources.is_empty();
    let mut all = futures_util::stream::select_all(sources);
    loop {
        let next = tokio::select! {
            () = stop.notified() => return Outcome::Cancelled,
            () = sink.closed() => return Outcome::AgentGone,
            next = all.next(), if !idle => next,
        };
        let Some((server, frame)) = next else {
            return answer(&sink, finished(&id, None));
        };
        let Some(mut frame) = frame else {
            // A server ended its stream: so does the agent's, which re-listens.
            return answer(&sink, finished(&id, None));
        };
        match jsonrpc::classify(&frame) {
            Kind::Response => {
                return answer(&sink, finished(&id, frame.get("error").cloned()));
            }
            Kind::Notification => {}
            Kind::Request | Kind::Invalid => continue,
        }
        let method = jsonrpc::method(&frame).unwrap_or_default().to_owned();
        if method == "notifications/tools/list_changed" {
            session.tools_changed(&server).await;
        }
        if !honored.admits(&frame) {
            continue;
        }
        tag(&mut frame, &id);
        if let Err(why) = send(&sink, frame) {
            return why;
        }
    }
}

/// Opens the upstream side of the listen request `frame`: a listen stream on each modern server
/// that acknowledges one, and the session's change notifications of legacy servers. Returns the
/// sources with the filter the agent is acknowledged, or every server's error when none could be
/// reached.
async fn open_sources(
    session: &Session,
    servers: Vec<String>,
    frame: &Value,
) -> Result<(Vec<Source>, Filter), Vec<String>> {
    let requested = Filter::from_wire(frame.pointer("/params/notifications"));
    let single = servers.len() == 1;
    // Prompts and resources pass through only on a one-server face.
    let mut asked = requested.clone();
    if !single {
        asked.prompts = false;
        asked.resources = false;
        asked.uris.clear();
    }
    // The gateway re-pins on tool changes, so it listens for them whatever the agent asked.
    let upstream_filter = Filter {
        tools: true,
        ..asked.clone()
    };
    let meta: Map<String, Value> = frame
        .pointer("/params/_meta")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("io.modelcontextprotocol/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut honored = Filter {
        tools: requested.tools,
        ..Filter::default()
    };
    let mut sources: Vec<Source> = Vec::new();
    let mut legacy = BTreeSet::new();
    let mut unreachable = Vec::new();
    let total = servers.len();
    for server in servers {
        let up = match session.upstream(&server).await {
            Ok(up) => up,
            Err(e) => {
                unreachable.push(e.to_string());
                continue;
            }
        };
        if up.era() != Era::Modern {
            // Its change notifications come unsolicited on the session (no URI subscriptions).
            if single {
                honored.prompts = asked.prompts;
                honored.resources = asked.resources;
            }
            legacy.insert(server);
            continue;
        }
        let params = json!({"notifications": upstream_filter.to_wire(), "_meta": meta});
        let Ok(mut rx) = up.listen(params).await else {
            continue;
        };
        match tokio::time::timeout(ACK_WAIT, rx.recv()).await {
            Ok(Some(ack)) if jsonrpc::method(&ack) == Some(ACKNOWLEDGED) => {
                if single {
                    let theirs = Filter::from_wire(ack.pointer("/params/notifications"));
                    honored.prompts = asked.prompts && theirs.prompts;
                    honored.resources = asked.resources && theirs.resources;
                    honored.uris = asked.uris.intersection(&theirs.uris).cloned().collect();
                }
                sources.push(stream_source(server, rx));
            }
            // Refused (no listen support), silent, or not a listen stream: left out.
            _ => {}
        }
    }
    if !legacy.is_empty() {
        sources.push(legacy_source(legacy, session.subscribe_changes()));
    }
    if total > 0 && unreachable.len() == total {
        return Err(unreachable);
    }
    Ok((sources, honored))
}

/// Sets the frame's `_meta` subscription id to the agent's request id (other `_meta` kept).
fn tag(frame: &mut Value, id: &Value) {
    let Some(obj) = frame.as_object_mut() else {
        return;
    };
    let params = obj.entry("params").or_insert_with(|| json!({}));
    let Some(params) = params.as_object_mut() else {
        return;
    };
    let meta = params.entry("_meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(META_SUBSCRIPTION_ID.into(), id.clone());
    }
}

/// The response that ends the agent's stream: the listen result, or the server's error.
fn finished(id: &Value, error: Option<Value>) -> Value {
    match error {
        Some(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
        None => {
            json!({"jsonrpc": "2.0", "id": id, "result": {"resultType": "complete", "_meta": {META_SUBSCRIPTION_ID: id}}})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::{Approval, Authority, AuthorityError, CallRequest, Verdict};
    use crate::upstream::{Recorded, Upstream, UpstreamEvent};

    /// The relay never asks for a decision; anything that does is refused.
    struct NoCalls;

    impl Authority for NoCalls {
        fn decide(&self, _: &CallRequest) -> Result<Verdict, AuthorityError> {
            Err(AuthorityError("no calls in this test".into()))
        }
        fn resolve(
            &self,
            _: &CallRequest,
            _: &str,
            _: &Approval,
        ) -> Result<Verdict, AuthorityError> {
            Err(AuthorityError("no calls in this test".into()))
        }
        fn record_event(&self, _: &Value) -> Result<(), AuthorityError> {
            Ok(())
        }
    }

    /// A session of agent `a` over one legacy server `s` (a recorded connection: no process),
    /// whose notifications come through the session.
    async fn replay_session() -> (Arc<Session>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::GatewayConfig::parse(&format!(
            "trust_domain = \"example.org\"\n[agents.a]\nid = \"spiffe://example.org/agent/a\"\n\
             [gateway]\npins = \"{}\"\n[servers.s]\ncommand = \"/bin/false\"\n",
            dir.path().join("pins.json").display()
        ))
        .unwrap();
        let gw = crate::Gateway::new(cfg, Arc::new(NoCalls)).unwrap();
        // Closed: the relays under test take change notifications from the session's broadcast;
        // nobody would read them on the session's own stream.
        let (out, _) = mpsc::channel(1);
        let session = Session::new(&gw, "spiffe://example.org/agent/a", Vec::new(), out);
        let up = Upstream::replay("s", Recorded::default(), session.events());
        session.attach("s", up).await;
        (session, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_register_caps_relays_refuses_open_ids_and_stops_on_cancel() {
        let (session, _dir) = replay_session().await;
        let agent = session.agent().to_owned();
        let listens = Arc::new(Listens::default());
        let (tx, _rx) = mpsc::channel(4 * LISTEN_BUFFER);
        let listen = |id: Value| json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen", "params": {"notifications": {"toolsListChanged": true}}});
        let cancel = |id: Value| json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id}});
        let open =
            |id: Value| listens.open(session.clone(), vec!["s".into()], listen(id), tx.clone());
        let mut relays = Vec::new();
        for n in 0..MAX_LISTENS_PER_AGENT {
            relays.push(open(json!(n)).unwrap());
        }
        assert_eq!(open(json!("over")).unwrap_err(), Refusal::TooMany);
        assert!(listens.cancel(&agent, &cancel(json!(0))));
        assert!(
            !listens.cancel(&agent, &cancel(json!(0))),
            "cancelled twice"
        );
        assert!(!listens.cancel("spiffe://example.org/agent/b", &cancel(json!(1))));
        // The string "1" is not the number 1: ids are compared as JSON.
        assert_eq!(open(json!(1)).unwrap_err(), Refusal::Reused("1".into()));
        relays.push(open(json!("1")).unwrap());
        let first = relays.remove(0);
        let outcome = tokio::time::timeout(Duration::from_secs(5), first).await;
        assert_eq!(outcome.unwrap().unwrap(), Outcome::Cancelled);
        listens.stop_all();
        for relay in relays {
            let outcome = tokio::time::timeout(Duration::from_secs(5), relay).await;
            assert_eq!(outcome.unwrap().unwrap(), Outcome::Cancelled);
        }
        // Every place is free again.
        assert!(open(json!(0)).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_that_stops_reading_loses_its_stream_not_our_memory() {
        let (session, _dir) = replay_session().await;
        let (tx, mut rx) = mpsc::channel(LISTEN_BUFFER);
        let frame = json!({"jsonrpc": "2.0", "id": "L", "method": "subscriptions/listen", "params": {"notifications": {"promptsListChanged": true}}});
        let relay = tokio::spawn(relay(
            session.clone(),
            vec!["s".into()],
            frame,
            tx,
            Arc::new(Notify::new()),
        ));
        let ack = rx.recv().await.unwrap();
        assert_eq!(ack["method"], ACKNOWLEDGED);
        // The agent reads no more; the server keeps announcing changes.
        let mut sent = 0;
        while !relay.is_finished() && sent < 50 * LISTEN_BUFFER {
            session
                .events()
                .send(UpstreamEvent::Notification {
                    server: "s".into(),
                    frame: json!({"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"}),
                })
                .await
                .unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let outcome = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay gave up the stream")
            .unwrap();
        assert_eq!(outcome, Outcome::Overrun);
        // What waited for the agent is one buffer's worth; then its stream ends.
        let mut waiting = 0;
        while let Some(f) = rx.recv().await {
            assert_eq!(f["method"], "notifications/prompts/list_changed");
            waiting += 1;
        }
        assert_eq!(waiting, LISTEN_BUFFER);
    }

    #[test]
    fn filter_round_trips_and_admits_only_its_kinds() {
        let f = Filter::from_wire(Some(
            &json!({"toolsListChanged": true, "promptsListChanged": false, "resourceSubscriptions": ["file:///a"]}),
        ));
        assert_eq!(
            f.to_wire(),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["file:///a"]})
        );
        let n = |m: &str, p: Value| json!({"jsonrpc": "2.0", "method": m, "params": p});
        assert!(f.admits(&n("notifications/tools/list_changed", json!({}))));
        assert!(!f.admits(&n("notifications/prompts/list_changed", json!({}))));
        assert!(f.admits(&n(
            "notifications/resources/updated",
            json!({"uri": "file:///a"})
        )));
        assert!(!f.admits(&n(
            "notifications/resources/updated",
            json!({"uri": "file:///b"})
        )));
        assert!(!f.admits(&n("notifications/message", json!({}))));
    }

    #[test]
    fn tag_replaces_the_subscription_id_and_keeps_meta() {
        let mut frame = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {"_meta": {META_SUBSCRIPTION_ID: 7, "x.example/k": 1}}});
        tag(&mut frame, &json!("agent-1"));
        assert_eq!(
            frame["params"]["_meta"],
            json!({META_SUBSCRIPTION_ID: "agent-1", "x.example/k": 1})
        );
    }
}
