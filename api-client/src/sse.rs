//! Server-sent events (`text/event-stream`, the fleet API's `/v1/events`
//! and job progress) split into frames. Pure, no IO: the caller feeds the
//! bytes as they arrive.

/// The stream cannot be read as events.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// A line, or one event's data, is longer than
    /// [`SseParser::MAX_LINE`].
    #[error("an event stream line is too long")]
    TooLong,
}

/// One server-sent event as read off the wire.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// Its `event:` (empty: a plain message).
    pub event: String,
    /// Its `id:`.
    pub id: Option<String>,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

/// Splits a server-sent event stream into frames. Pure (unit-tested).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    frame: SseFrame,
    has_data: bool,
}

impl SseParser {
    /// The most one line, or one event's data, may hold (a broken server
    /// cannot grow either).
    pub const MAX_LINE: usize = 4 << 20;

    /// Feed bytes; returns the frames they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseFrame>, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.frame));
                }
                self.frame = SseFrame::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // a keep-alive comment
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.frame.event = value.to_string(),
                "id" => self.frame.id = Some(value.to_string()),
                "data" => {
                    if self.has_data {
                        self.frame.data.push('\n');
                    }
                    if self.frame.data.len() + value.len() > Self::MAX_LINE {
                        return Err(SseError::TooLong);
                    }
                    self.frame.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        if self.buf.len() > Self::MAX_LINE {
            return Err(SseError::TooLong);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nid: 7\nda").unwrap().is_empty());
        let f = p
            .feed(b"ta: {\"a\":1}\n\nevent: gap\ndata: {}\r\n\r\n")
            .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].id.as_deref(), Some("7"));
        assert_eq!(f[0].data, "{\"a\":1}");
        assert_eq!(f[1].event, "gap");
        let f = p.feed(b"data: a\ndata: b\n\n").unwrap();
        assert_eq!(f[0].data, "a\nb");
        assert!(p.feed(&vec![b'x'; SseParser::MAX_LINE + 1]).is_err());
    }

    #[test]
    fn an_event_of_endless_data_lines_is_refused() {
        let mut p = SseParser::default();
        let line = format!("data: {}\n", "y".repeat(64 * 1024));
        let mut refused = false;
        for _ in 0..(SseParser::MAX_LINE / (64 * 1024) + 2) {
            if p.feed(line.as_bytes()).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "one event's data grew without bound");
    }
}
