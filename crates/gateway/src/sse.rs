//! An incremental parser of the `text/event-stream` bodies upstream servers answer with.
//!
//! Only what MCP uses is kept: the `data` lines of each event, joined with `\n`, and the stream's
//! last event id and reconnection time (for resuming a session stream with `Last-Event-ID`).
//! Lines end with `\n` (a preceding `\r` is dropped); an empty line ends an event; comments
//! (`:`) and the `event` field are skipped. A pending line or event may not grow past
//! [`MAX_FRAME`] bytes: a server that never ends its line gets an error, not our memory.

use crate::jsonrpc::MAX_FRAME;

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line or an event longer than [`MAX_FRAME`].
    #[error("server-sent event of more than {0} bytes")]
    TooLarge(usize),
}

/// Feeds chunks in, takes complete events' data out.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// Data of the current, unfinished event.
    data: String,
    /// Whether the current event has a `data` field yet.
    has_data: bool,
    /// The last `id` field seen (the "last event ID buffer").
    id_buffer: String,
    /// The id of the last event that ended (with or without data).
    last_id: String,
    /// The last valid `retry` field, in milliseconds.
    retry: Option<u64>,
}

/// The longest event id kept; a longer one is ignored (it goes back in a request header).
pub const MAX_EVENT_ID: usize = 1024;

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `chunk`; returns the data of every event it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, SseError> {
        let mut events = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            self.grow_line(head)?;
            rest = tail.get(1..).unwrap_or_default();
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(event) = self.line_done(&line)? {
                events.push(event);
            }
        }
        self.grow_line(rest)?;
        Ok(events)
    }

    /// The id of the last complete event, if the server named one: what a client resuming the
    /// stream sends as `Last-Event-ID`. Only visible ASCII, at most [`MAX_EVENT_ID`] bytes.
    pub fn last_event_id(&self) -> Option<&str> {
        Some(self.last_id.as_str()).filter(|id| !id.is_empty())
    }

    /// The reconnection time the server asked for (`retry`), in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry
    }

    fn grow_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len().saturating_add(bytes.len()) > MAX_FRAME {
            return Err(SseError::TooLarge(MAX_FRAME));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<String>, SseError> {
        if line.is_empty() {
            // The event ends: its id becomes the stream's, data or not.
            self.last_id.clone_from(&self.id_buffer);
            if !self.has_data {
                return Ok(None);
            }
            self.has_data = false;
            return Ok(Some(std::mem::take(&mut self.data)));
        }
        if let Some(id) = field(line, b"id") {
            // An id a header cannot carry is ignored, as one with a NUL is by the standard.
            if id.len() <= MAX_EVENT_ID && id.iter().all(|b| (0x20..0x7f).contains(b)) {
                self.id_buffer = String::from_utf8_lossy(id).into_owned();
            }
            return Ok(None);
        }
        if let Some(retry) = field(line, b"retry") {
            if retry.iter().all(u8::is_ascii_digit)
                && let Some(ms) = std::str::from_utf8(retry).ok().and_then(|r| r.parse().ok())
            {
                self.retry = Some(ms);
            }
            return Ok(None);
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            // A comment, another field, or a line with no colon: nothing MCP reads.
            return Ok(None);
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let value = String::from_utf8_lossy(value);
        let extra = value.len() + usize::from(self.has_data);
        if self.data.len().saturating_add(extra) > MAX_FRAME {
            return Err(SseError::TooLarge(MAX_FRAME));
        }
        if self.has_data {
            self.data.push('\n');
        }
        self.data.push_str(&value);
        self.has_data = true;
        Ok(None)
    }
}

/// The value of `line` if it is the field `name` (`name:value`, one optional space after the
/// colon; a bare `name` is the field with an empty value).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?;
    if rest.is_empty() {
        return Some(rest);
    }
    let value = rest.strip_prefix(b":")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let body =
            b": ping\r\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nid: 3\ndata:x\n\n\n";
        let whole = SseParser::new().push(body).unwrap();
        assert_eq!(whole, vec!["{\"a\":\n1}".to_owned(), "x".to_owned()]);
        for cut in 0..body.len() {
            let mut p = SseParser::new();
            let (a, b) = body.split_at(cut);
            let mut got = p.push(a).unwrap();
            got.extend(p.push(b).unwrap());
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = SseParser::new();
        let chunk = vec![b'a'; 1 << 20];
        let mut refused = false;
        for _ in 0..(MAX_FRAME / chunk.len() + 2) {
            if p.push(&chunk).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(p.line.len() <= MAX_FRAME);
    }

    #[test]
    fn an_event_without_data_is_not_an_event() {
        assert!(
            SseParser::new()
                .push(b"event: x\n\n: c\n\n")
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            SseParser::new().push(b"data:\n\n").unwrap(),
            vec![String::new()]
        );
    }

    #[test]
    fn the_last_event_id_is_that_of_the_last_complete_event() {
        let mut p = SseParser::new();
        assert_eq!(p.last_event_id(), None);
        p.push(b"id: 1\ndata: {}\n\nid: 2\ndata:").unwrap();
        // Event 2 has not ended yet.
        assert_eq!(p.last_event_id(), Some("1"));
        p.push(b" {}\n\n").unwrap();
        assert_eq!(p.last_event_id(), Some("2"));
        // A priming event (an id and empty data) moves it too; so does one with no data at all.
        p.push(b"id: 3\ndata:\n\nid:4\n\n").unwrap();
        assert_eq!(p.last_event_id(), Some("4"));
        // The id persists across events that name none; an empty id clears it.
        p.push(b"data: x\n\n").unwrap();
        assert_eq!(p.last_event_id(), Some("4"));
        p.push(b"id\ndata: x\n\n").unwrap();
        assert_eq!(p.last_event_id(), None);
    }

    #[test]
    fn an_id_a_header_cannot_carry_is_ignored() {
        let mut p = SseParser::new();
        p.push(b"id: 7\n\n").unwrap();
        let long = format!("id: {}\n\n", "a".repeat(MAX_EVENT_ID + 1));
        p.push(long.as_bytes()).unwrap();
        p.push(b"id: a\rb\n\nid: \x00\n\nid: caf\xc3\xa9\n\n")
            .unwrap();
        assert_eq!(p.last_event_id(), Some("7"));
        // `idx: 9` is another field, not `id`.
        p.push(b"idx: 9\n\n").unwrap();
        assert_eq!(p.last_event_id(), Some("7"));
    }

    #[test]
    fn retry_takes_only_digits() {
        let mut p = SseParser::new();
        assert_eq!(p.retry_ms(), None);
        p.push(b"retry: 1500\n\nretry: 2s\n\nretry:\n\n").unwrap();
        assert_eq!(p.retry_ms(), Some(1500));
        p.push(b"retry: 99999999999999999999999\n\n").unwrap();
        assert_eq!(p.retry_ms(), Some(1500));
    }
}
