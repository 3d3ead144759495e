//! An incremental parser of the `text/event-stream` bodies upstream servers answer with.
//!
//! Only what MCP uses is kept: the `data` lines of each event, joined with `\n`. Lines end with
//! `\n` (a preceding `\r` is dropped); an empty line ends an event; comments (`:`) and the
//! `event`, `id` and `retry` fields are skipped. A pending line or event may not grow past
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
}

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

    fn grow_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len().saturating_add(bytes.len()) > MAX_FRAME {
            return Err(SseError::TooLarge(MAX_FRAME));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<String>, SseError> {
        if line.is_empty() {
            if !self.has_data {
                return Ok(None);
            }
            self.has_data = false;
            return Ok(Some(std::mem::take(&mut self.data)));
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
}
