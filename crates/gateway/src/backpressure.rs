//! Backpressure from the agent to the upstreams: every queue between an upstream's output and
//! the agent's input is bounded, so a server that floods notifications, or an agent that stops
//! reading, costs the gateway a fixed amount of memory instead of all of it.
//!
//! # The path and its queues
//!
//! ```text
//! upstream stdout / SSE body ─► reader task ─► events [EVENT_BUFFER] ─► pump ─┬─► request stream [REQUEST_STREAM_BUFFER] ─► POST body
//!                                  │ (responses: oneshot to the waiting call)   ├─► stdio pipe [AGENT_BUFFER] ─► agent's stdin
//!                                  ▼                                           └─► GET backlog [BACKLOG_FRAMES] ─► GET stream
//!                             the call ─(settle)─► the same stream as its notifications
//! ```
//!
//! Each reader task (a stdio server's stdout, an HTTP server's POST answer or GET stream) waits
//! for room in the session's `events` channel before it reads the next frame; the session's pump
//! waits for room in the agent's stream before it takes the next event. So when the agent is
//! behind, the pump stops, `events` fills, the reader stops reading, and the kernel's pipe or
//! TCP window stops the server: nothing piles up in the gateway beyond the buffers above, each a
//! few dozen frames.
//!
//! # Ordering
//!
//! A response travels outside the pump (a oneshot to the call that waits for it), so before a
//! call hands its response to the face it *settles*: it waits until the pump has delivered every
//! event its connection routed before the response ([`crate::upstream::Upstream::routed`]). The
//! reader routes a frame only after the frames before it were queued, so the notifications a
//! server sent before its result sit in the agent's stream before the result does. The wait has
//! no time limit: giving up would let the result overtake them, which is exactly what a full
//! stream would otherwise cause.
//!
//! # Why this cannot deadlock
//!
//! A wait in this design is a wait for the agent to read the stream the waiting frame goes to,
//! never for a response to arrive:
//! - the pump waits only for room in an agent stream (stdio pipe, a request's stream, or an
//!   attached GET stream, the latter for at most [`STREAM_STALL`]); it never writes to an
//!   upstream (answers to server→client requests it refuses are sent from their own tasks, at
//!   most [`MAX_REFUSALS`] at a time) and never waits for a connection to open;
//! - a reader waits only for the pump; a call waits (settles) only for the pump;
//! - the agent→upstream direction shares none of these queues: the stdio face reads the agent's
//!   input in its own loop and sends every answer from a task of its own, so a cancellation
//!   (`notifications/cancelled`) and the agent's answers to server→client requests reach the
//!   upstream while the other direction is full. On HTTP each POST is its own request.
//!
//! Every wait therefore ends when the agent reads (or disconnects, which closes its stream and
//! turns the waits into failures). The waits form no cycle: the agent reading its stream depends
//! on nothing the gateway holds. A client that opens a request's event stream and never reads
//! it holds its own session (the pump is per session), not the others.
//!
//! # What may be dropped, and only where there is nowhere to go
//!
//! The stdio pipe and a request's stream never drop: they wait. A legacy HTTP session's messages
//! that belong to no request go to the session's GET stream, which the agent may never open, or
//! close and reopen later; they wait in a [`Backlog`] of [`BACKLOG_FRAMES`]. While a GET stream
//! is attached and reading, a full backlog makes the pump wait like any stream. With no GET
//! stream (or one that took nothing for [`STREAM_STALL`]) a full backlog drops instead of
//! waiting:
//! - first the oldest *droppable* message: `notifications/progress` (MCP: progress tracking is
//!   optional, the server "MAY choose not to send any progress notifications", and both sides
//!   "SHOULD implement rate limiting"; a later progress value supersedes an earlier one) or
//!   `notifications/message` (logging: the server may send log messages and "SHOULD rate limit"
//!   them; the client only "MAY" present them). Losing one changes no protocol state.
//! - when nothing droppable waits, a further notification is dropped itself (the gateway still
//!   acted on it: a tool list change re-lists and re-pins), and a further server→client request
//!   is answered to the server with an error, never left without an answer.
//!
//! Responses to the agent's requests never enter the backlog (they travel on the request's own
//! stream), so they are never dropped. Each drop is counted, and reported with `tracing::warn!`
//! at most once per [`WARN_INTERVAL`] per session.
//!
//! # Other bounds on the same path
//!
//! - A frame is at most [`crate::jsonrpc::MAX_FRAME`] bytes: a stdio server's longer line ends
//!   its connection, an HTTP server's longer event ends its stream. The queues hold frame counts,
//!   so their worst case is that count times this; in practice a few KiB a frame.
//! - Server→client requests forwarded to the agent and not yet answered are capped per session
//!   (an agent that reads them and never answers would otherwise grow the table of ids); the
//!   server's further requests get an error.
//! - Relayed `subscriptions/listen` streams have their own bounded buffers (`listen.rs`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::jsonrpc::{self, Kind};

/// Events waiting between a session's upstream readers and its pump. Small: it only smooths
/// the hand-over between two tasks; past it the upstream's own pipe or socket is the buffer.
pub(crate) const EVENT_BUFFER: usize = 64;

/// Frames waiting for the stdio writer (responses and notifications alike, in order). It hides
/// the writer's flushes from the pump; the agent's pipe behind it holds another 64 KiB or so.
pub(crate) const AGENT_BUFFER: usize = 64;

/// Frames waiting on one HTTP request's own stream (its progress, then its response).
pub(crate) const REQUEST_STREAM_BUFFER: usize = 64;

/// Frames a legacy HTTP session keeps for its GET stream while the agent is not reading one.
/// Enough for bursts of change notifications and server→client requests between two GETs;
/// with notifications of a few hundred bytes this is a few hundred KiB per session.
pub(crate) const BACKLOG_FRAMES: usize = 1024;

/// How long a full backlog waits for an attached GET stream to take a frame before it counts
/// the stream as stalled and drops instead (so a client that holds a GET stream open without
/// reading it cannot hold its session's responses for ever).
pub(crate) const STREAM_STALL: Duration = Duration::from_secs(5);

/// At most one drop warning per session in this interval (the count covers all drops since).
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Server→client requests a session answers with an error at a time (each answer is a write to
/// the server, made from its own small task, so the pump never waits for a server); beyond that a
/// refused request is left unanswered and the server's own timeout ends it. Each answer is
/// written at once unless the server stopped reading its input, so this only caps the tasks a
/// server that also stopped reading can make the gateway hold (256 × well under 1 KiB).
pub(crate) const MAX_REFUSALS: usize = 256;

/// Whether a message may be dropped when it has nowhere to go: progress and log notifications,
/// which are advisory (see the module docs).
pub(crate) fn droppable(frame: &Value) -> bool {
    matches!(
        jsonrpc::method(frame),
        Some("notifications/progress" | "notifications/message")
    ) && jsonrpc::classify(frame) == Kind::Notification
}

/// Where a session sends what the agent must receive outside the responses to its requests.
pub(crate) enum AgentStream {
    /// A stream the agent reads continuously (the stdio pipe): a full stream makes the sender
    /// wait. A closed one (the agent left, or a modern HTTP agent that takes no such messages)
    /// refuses at once.
    Pipe(mpsc::Sender<Value>),
    /// A legacy HTTP session's GET stream, which may not be open: a bounded backlog.
    Backlog(Arc<Backlog>),
}

/// What became of a message sent to an [`AgentStream`].
#[derive(Debug, PartialEq)]
pub(crate) enum Delivery {
    /// Queued for the agent.
    Queued,
    /// Dropped (counted), or the stream is closed.
    Lost,
    /// A server→client request the full backlog could not take: answer the server.
    Refused(Value),
}

impl AgentStream {
    /// Sends `frame`, waiting for room as the stream's kind says.
    pub(crate) async fn send(&self, frame: Value) -> Delivery {
        match self {
            Self::Pipe(tx) => match tx.send(frame).await {
                Ok(()) => Delivery::Queued,
                Err(_) => Delivery::Lost,
            },
            Self::Backlog(b) => b.push(frame).await,
        }
    }

    /// Whether nothing sent here can reach the agent any more.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Self::Pipe(tx) => tx.is_closed(),
            Self::Backlog(b) => b.state().closed,
        }
    }
}

impl Drop for AgentStream {
    /// The session is gone: a GET stream reading the backlog ends once it has read what waits.
    fn drop(&mut self) {
        if let Self::Backlog(b) = self {
            b.state().closed = true;
            b.filled.notify_one();
        }
    }
}

/// A legacy HTTP session's messages for its GET stream: at most [`BACKLOG_FRAMES`], waiting for
/// room while a GET stream reads, dropping the oldest droppable message otherwise.
#[derive(Debug)]
pub(crate) struct Backlog {
    session: String,
    state: Mutex<BacklogState>,
    /// Woken when a frame was queued or the backlog closed (one reader).
    filled: Notify,
    /// Woken when the reader took a frame or went away (one writer: the session's pump).
    drained: Notify,
}

#[derive(Debug, Default)]
struct BacklogState {
    frames: VecDeque<Value>,
    /// A GET stream is attached.
    reader: bool,
    /// The attached GET stream let a full backlog wait [`STREAM_STALL`]: treated as absent until
    /// it takes a frame.
    stalled: bool,
    closed: bool,
    dropped: u64,
    unreported: u64,
    last_warning: Option<Instant>,
}

impl Backlog {
    /// An empty backlog for session `session` (named in warnings).
    pub(crate) fn new(session: &str) -> Arc<Self> {
        Arc::new(Self {
            session: session.to_owned(),
            state: Mutex::default(),
            filled: Notify::new(),
            drained: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BacklogState> {
        // The state stays consistent at every unlock: a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many messages were dropped so far.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.state().dropped
    }

    /// The GET stream's end of the backlog; `None` while another GET stream holds it.
    pub(crate) fn attach(self: &Arc<Self>) -> Option<BacklogReader> {
        let mut s = self.state();
        if s.reader {
            return None;
        }
        s.reader = true;
        s.stalled = false;
        Some(BacklogReader(self.clone()))
    }

    async fn push(&self, frame: Value) -> Delivery {
        let mut deadline = None;
        loop {
            {
                let mut s = self.state();
                if s.closed {
                    return Delivery::Lost;
                }
                if s.frames.len() < BACKLOG_FRAMES {
                    s.frames.push_back(frame);
                    drop(s);
                    self.filled.notify_one();
                    return Delivery::Queued;
                }
                if !s.reader || s.stalled {
                    return self.overflow(&mut s, frame);
                }
            }
            let until = *deadline.get_or_insert_with(|| Instant::now() + STREAM_STALL);
            if tokio::time::timeout_at(until, self.drained.notified())
                .await
                .is_err()
            {
                let mut s = self.state();
                s.stalled = true;
                if s.frames.len() >= BACKLOG_FRAMES {
                    return self.overflow(&mut s, frame);
                }
            }
        }
    }

    /// The backlog is full and nobody is reading: make room by dropping the oldest droppable
    /// message, else drop `frame` (a notification) or refuse it (a request).
    fn overflow(&self, s: &mut BacklogState, frame: Value) -> Delivery {
        if let Some(at) = s.frames.iter().position(droppable) {
            s.frames.remove(at);
            s.frames.push_back(frame);
            self.count_drop(s);
            self.filled.notify_one();
            return Delivery::Queued;
        }
        if jsonrpc::classify(&frame) == Kind::Request {
            return Delivery::Refused(frame);
        }
        self.count_drop(s);
        Delivery::Lost
    }

    fn count_drop(&self, s: &mut BacklogState) {
        s.dropped += 1;
        s.unreported += 1;
        let now = Instant::now();
        if s.last_warning
            .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
        {
            tracing::warn!(
                session = %self.session,
                dropped = s.unreported,
                total = s.dropped,
                "agent not reading its session stream: dropped the oldest progress/log notifications"
            );
            s.unreported = 0;
            s.last_warning = Some(now);
        }
    }
}

/// The attached GET stream's end of a [`Backlog`]; dropping it detaches the stream.
#[derive(Debug)]
pub(crate) struct BacklogReader(Arc<Backlog>);

impl BacklogReader {
    /// The next message, in order; `None` once the session is gone and nothing waits.
    pub(crate) async fn next(&self) -> Option<Value> {
        loop {
            {
                let mut s = self.0.state();
                if let Some(frame) = s.frames.pop_front() {
                    s.stalled = false;
                    drop(s);
                    self.0.drained.notify_one();
                    return Some(frame);
                }
                if s.closed {
                    return None;
                }
            }
            self.0.filled.notified().await;
        }
    }
}

impl Drop for BacklogReader {
    fn drop(&mut self) {
        self.0.state().reader = false;
        // A push waiting for this reader now drops instead.
        self.0.drained.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn progress(n: usize) -> Value {
        json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": n}})
    }

    fn changed() -> Value {
        json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    }

    fn backlog() -> (AgentStream, Arc<Backlog>) {
        let b = Backlog::new("s-test");
        (AgentStream::Backlog(b.clone()), b)
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_reader_the_oldest_progress_goes_first() {
        let (out, b) = backlog();
        assert_eq!(out.send(changed()).await, Delivery::Queued);
        for n in 0..BACKLOG_FRAMES + 10 {
            assert_eq!(out.send(progress(n)).await, Delivery::Queued);
        }
        assert_eq!(b.dropped(), 11);
        let reader = b.attach().unwrap();
        // The change notification stays, in its place; progress 0..=10 made room.
        assert_eq!(reader.next().await.unwrap(), changed());
        let first = reader.next().await.unwrap();
        assert_eq!(first["params"]["progress"], 11);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_backlog_of_undroppable_messages_drops_notifications_and_refuses_requests() {
        let (out, b) = backlog();
        for _ in 0..BACKLOG_FRAMES {
            assert_eq!(out.send(changed()).await, Delivery::Queued);
        }
        assert_eq!(out.send(progress(0)).await, Delivery::Lost);
        let request = json!({"jsonrpc": "2.0", "id": "warden-1", "method": "roots/list"});
        assert_eq!(out.send(request.clone()).await, Delivery::Refused(request));
        assert_eq!(b.dropped(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attached_reader_gets_backpressure_then_a_stalled_one_gets_drops() {
        let (out, b) = backlog();
        let reader = b.attach().unwrap();
        assert!(b.attach().is_none(), "one GET stream at a time");
        for n in 0..BACKLOG_FRAMES {
            out.send(progress(n)).await;
        }
        // Full, reader attached: the push waits until the reader takes a frame.
        let push = out.send(progress(BACKLOG_FRAMES));
        tokio::pin!(push);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), push.as_mut())
                .await
                .is_err(),
            "a push into a full backlog with a reader waits"
        );
        assert_eq!(reader.next().await.unwrap()["params"]["progress"], 0);
        assert_eq!(push.await, Delivery::Queued);
        assert_eq!(b.dropped(), 0);
        // The reader stops reading: after STREAM_STALL the backlog drops instead of waiting.
        let started = Instant::now();
        assert_eq!(
            out.send(progress(BACKLOG_FRAMES + 1)).await,
            Delivery::Queued
        );
        assert!(started.elapsed() >= STREAM_STALL);
        assert_eq!(b.dropped(), 1);
        // Stalled: the next one drops at once.
        let started = Instant::now();
        out.send(progress(BACKLOG_FRAMES + 2)).await;
        assert!(started.elapsed() < Duration::from_millis(10));
        assert_eq!(b.dropped(), 2);
        // Detached: a new GET stream may attach and reads in order.
        drop(reader);
        let reader = b.attach().unwrap();
        assert_eq!(reader.next().await.unwrap()["params"]["progress"], 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reader_ends_when_the_session_goes_after_reading_what_waits() {
        let (out, b) = backlog();
        let reader = b.attach().unwrap();
        out.send(changed()).await;
        drop(out);
        assert_eq!(reader.next().await, Some(changed()));
        assert_eq!(reader.next().await, None);
    }

    #[test]
    fn only_progress_and_log_notifications_are_droppable() {
        assert!(droppable(&progress(1)));
        assert!(droppable(
            &json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}})
        ));
        assert!(!droppable(&changed()));
        assert!(!droppable(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "notifications/progress"})
        ));
        assert!(!droppable(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
        ));
    }
}
