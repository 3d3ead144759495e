//! The stdio face: the gateway as the MCP server an agent launches (`warden mcp`).
//!
//! One line, one JSON-RPC frame. Requests are handled concurrently, so a long call neither
//! blocks a cancellation nor the agent's answer to a server→client request. What an agent may
//! have in flight is bounded ([`IN_FLIGHT_BUDGET`]: 64 MiB or 65,536 frames whose answers are not
//! yet queued for the pipe); an agent that writes requests and never reads the answers stops
//! being read. A line longer than a frame may be is skipped as it arrives, never buffered whole.
//!
//! A modern agent's `subscriptions/listen` opens the same relay as on the HTTP face (see
//! `listen.rs`); its frames share the pipe with everything else, told apart by
//! `io.modelcontextprotocol/subscriptionId`. All relays of the face write through one channel of
//! [`LISTEN_BUFFER`] frames in front of the pipe: an agent that stops reading its stdout makes
//! its relays give up (each then answers its listen request with an error once there is room),
//! not the gateway's memory grow. From the first modern request on, the face also keeps the
//! gateway's own tools-only listen open ([`crate::listen::watch_tools`]), so a server's tool
//! change is re-pinned even while the agent holds no relay.
//!
//! Everything else for the agent (responses, notifications, server→client requests) waits in
//! one channel of [`AGENT_BUFFER`] frames in front of the pipe: an agent that stops reading
//! makes the session stop reading its upstreams (see `backpressure.rs`). The loop reading the
//! agent's input never waits for that channel: each answer is sent from a task of its own, so
//! cancellations and answers to server→client requests keep flowing upstream meanwhile.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::MODERN_VERSION;
use crate::backpressure::AGENT_BUFFER;
use crate::error::Error;
use crate::idle_poll::IdlePoll;
use crate::jsonrpc::{self, Kind, MAX_LINE};
use crate::listen::{Listens, Outcome, watch_tools};
use crate::session::{Gateway, Session};
use crate::upstream::LISTEN_BUFFER;

/// Serves one agent on `input`/`output` as `agent` until the input ends.
pub async fn serve_stdio<R, W>(
    gw: Arc<Gateway>,
    agent: &str,
    input: R,
    output: W,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Value>(AGENT_BUFFER);
    // Relay frames only: bounded, so a relay notices an agent that stopped reading.
    let (relay_tx, mut relay_rx) = mpsc::channel::<Value>(LISTEN_BUFFER);
    let session = Session::new(&gw, agent, Vec::new(), tx.clone());
    let _timers = crate::upstream::keep_timers_near();
    let poll = IdlePoll::start(Duration::from_micros(gw.config().gateway.idle_poll_us));
    let (poll, _polling) = poll.unzip();
    if let Some(poll) = &poll {
        session.report_to(poll.clone());
    }
    let written = poll.clone();
    let writer = tokio::spawn(async move {
        let mut output = output;
        loop {
            let frame = tokio::select! {
                Some(frame) = rx.recv() => frame,
                Some(frame) = relay_rx.recv() => frame,
                else => break,
            };
            let Ok(mut bytes) = serde_json::to_vec(&frame) else {
                continue;
            };
            bytes.push(b'\n');
            if output.write_all(&bytes).await.is_err() || output.flush().await.is_err() {
                break;
            }
            if let Some(poll) = &written {
                poll.event();
            }
        }
    });
    let listens = Arc::new(Listens::default());
    let watch = Arc::new(Notify::new());
    let mut watching = false;
    let servers: Vec<String> = gw.config().servers.keys().cloned().collect();
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BUDGET));
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            break;
        }
        if let Some(poll) = &poll {
            poll.event();
        }
        // Every frame holds its share of the budget until its answer is queued for the agent:
        // an agent that writes requests and never reads the answers stops being read.
        let Ok(permit) = budget.clone().acquire_many_owned(cost(line.len())).await else {
            break;
        };
        if jsonrpc::over_limit(&line) {
            // Never buffered whole: the rest of the line is skipped as it arrives.
            skip_line(&mut reader).await?;
            line.clear();
            answer(
                &tx,
                jsonrpc::error(Value::Null, jsonrpc::PARSE_ERROR, "frame too large", None),
                permit,
            );
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let frame = match jsonrpc::parse_strict(&line) {
            Ok(frame) => frame,
            Err(e) => {
                answer(
                    &tx,
                    jsonrpc::error(
                        jsonrpc::recover_id(&line),
                        jsonrpc::PARSE_ERROR,
                        &e.to_string(),
                        None,
                    ),
                    permit,
                );
                continue;
            }
        };
        let kind = jsonrpc::classify(&frame);
        let method = jsonrpc::method(&frame).unwrap_or_default();
        if !watching && kind == Kind::Request && is_modern(&frame) {
            watching = true;
            // Before the watch opens any upstream connection: they follow the modern era.
            session.adopt_modern(&frame);
            let meta = jsonrpc::param(&frame, "_meta").cloned().unwrap_or_default();
            tokio::spawn(watch_tools(
                session.clone(),
                servers.clone(),
                meta,
                watch.clone(),
            ));
        }
        if kind == Kind::Request && method == "subscriptions/listen" && is_modern(&frame) {
            listen(
                &listens,
                &session,
                servers.clone(),
                frame,
                &relay_tx,
                &tx,
                permit,
            );
            continue;
        }
        if kind == Kind::Notification
            && method == "notifications/cancelled"
            && listens.cancel(session.agent(), &frame)
        {
            continue;
        }
        let session = session.clone();
        let tx = tx.clone();
        if kind == Kind::Request {
            tokio::spawn(async move {
                if let Some(resp) = session.handle(frame).await {
                    let _ = tx.send(resp).await;
                }
                drop(permit);
            });
        } else if let Some(resp) = session.handle(frame).await {
            answer(&tx, resp, permit);
        }
    }
    // The agent is gone: its relays stop (they hold the session, and with it the writer).
    listens.stop_all();
    watch.notify_one();
    drop(relay_tx);
    drop(tx);
    drop(session);
    let _ = writer.await;
    Ok(())
}

/// Sends `frame` to the agent from a task of its own, so the input loop never waits for room in
/// the pipe; the frame's share of the in-flight budget is released once it is queued.
fn answer(tx: &mpsc::Sender<Value>, frame: Value, permit: OwnedSemaphorePermit) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let _ = tx.send(frame).await;
        drop(permit);
    });
}

/// What the agent may have in flight at once (frames read whose answer is not yet queued for the
/// pipe), in units of [`cost`]: 64 MiB of request bytes, or 65,536 small requests. Past it the
/// face stops reading the agent's input until answers drain (so a cancellation waits too).
const IN_FLIGHT_BUDGET: usize = 65_536;

/// A frame's share of [`IN_FLIGHT_BUDGET`]: one unit per started KiB, at least one, at most the
/// whole budget (an over-long line, answered with an error, takes it all while it is skipped).
fn cost(len: usize) -> u32 {
    let units = (len / 1024 + 1).min(IN_FLIGHT_BUDGET);
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// Consumes input up to and including the next newline (or the end), keeping none of it.
async fn skip_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// Whether a request names the modern revision (any other named revision is refused by the
/// session with the supported list; none at all is a legacy agent's request, passed through).
fn is_modern(frame: &Value) -> bool {
    jsonrpc::meta(frame, crate::session::META_PROTOCOL_VERSION).and_then(Value::as_str)
        == Some(MODERN_VERSION)
}

/// Opens a relay for the listen request `frame` on the face's relay channel; a refusal, or the
/// news that the agent fell behind, is answered on the pipe like any response.
fn listen(
    listens: &Arc<Listens>,
    session: &Arc<Session>,
    servers: Vec<String>,
    frame: Value,
    relay_tx: &mpsc::Sender<Value>,
    tx: &mpsc::Sender<Value>,
    permit: OwnedSemaphorePermit,
) {
    // The session (and the upstream connections the relay opens) follow the modern era.
    session.adopt_modern(&frame);
    let id = frame.get("id").cloned().unwrap_or(Value::Null);
    match listens.open(session.clone(), servers, frame, relay_tx.clone()) {
        Ok(relay) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(Outcome::Overrun) = relay.await {
                    let _ = tx
                        .send(jsonrpc::error(
                            id,
                            jsonrpc::INTERNAL_ERROR,
                            &format!(
                                "the agent fell {LISTEN_BUFFER} frames behind on its listen stream; listen again"
                            ),
                            None,
                        ))
                        .await;
                }
            });
        }
        Err(refusal) => answer(tx, refusal.to_error(id), permit),
    }
}
