//! An incremental SSE parser (the WHATWG event-stream rules): lines end at CRLF, CR or LF, even
//! when split across reads; `data:` lines join with `\n`; a blank line dispatches; `:` starts a
//! comment; a leading BOM is ignored.

use std::borrow::Cow;
use std::sync::Arc;

/// One dispatched event. The id and type are shared (`Arc`): each event carries the stream's last
/// id, and the types repeat, so neither costs an allocation per event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Option<Arc<str>>,
    pub event: Option<Arc<str>>,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF starting the next one belongs to that line break.
    after_cr: bool,
    started: bool,
    /// The last event id persists across events, as in a browser.
    last_id: Option<Arc<str>>,
    /// The last `event:` type seen, reused while it repeats.
    last_type: Option<Arc<str>>,
    event: Event,
    has_data: bool,
    pub comments: u64,
    pub retry: Option<u64>,
}

impl Parser {
    /// Feeds bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        const BOM: &[u8] = "\u{feff}".as_bytes();
        let mut events = Vec::new();
        let mut bytes = bytes;
        if !self.started {
            // The BOM may arrive split across reads: hold bytes until it is decided.
            let take = (BOM.len() - self.line.len()).min(bytes.len());
            self.line.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if BOM.starts_with(&self.line) && self.line.len() < BOM.len() {
                return events;
            }
            self.started = true;
            let held = std::mem::take(&mut self.line);
            if held != BOM {
                self.bytes(&held, &mut events);
            }
        }
        self.bytes(bytes, &mut events);
        events
    }

    /// Whole lines are handled straight from `bytes`; only a line split across reads is copied
    /// (into `line`, whose capacity is kept), so the generator's cost per event stays small.
    fn bytes(&mut self, mut bytes: &[u8], events: &mut Vec<Event>) {
        if bytes.is_empty() {
            return; // a read of chunk framing only: a pending CR still waits for its LF
        }
        if std::mem::take(&mut self.after_cr) && bytes[0] == b'\n' {
            bytes = &bytes[1..];
        }
        while let Some(at) = memchr::memchr2(b'\n', b'\r', bytes) {
            let event = if self.line.is_empty() {
                self.line_done(&bytes[..at])
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..at]);
                let event = self.line_done(&line);
                line.clear();
                self.line = line;
                event
            };
            events.extend(event);
            let cr = bytes[at] == b'\r';
            bytes = &bytes[at + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(bytes);
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let mut event = std::mem::take(&mut self.event);
            event.id.clone_from(&self.last_id);
            return std::mem::take(&mut self.has_data).then_some(event);
        }
        if line[0] == b':' {
            self.comments += 1;
            return None;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (
                &line[..at],
                line[at + 1..].strip_prefix(b" ").unwrap_or(&line[at + 1..]),
            ),
            None => (line, &[][..]),
        };
        // Valid UTF-8 (every line here) is checked word by word; only invalid bytes are replaced.
        let value = match std::str::from_utf8(value) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(value),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => {
                if self.last_type.as_deref() != Some(&*value) {
                    self.last_type = Some(value.into());
                }
                self.event.event.clone_from(&self.last_type);
            }
            b"id" if !value.contains('\0') => self.last_id = Some(value.into()),
            b"retry" => self.retry = value.parse().ok().or(self.retry),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &str, piece: usize) -> (Vec<Event>, Parser) {
        let mut parser = Parser::default();
        let events = input
            .as_bytes()
            .chunks(piece)
            .flat_map(|chunk| parser.feed(chunk))
            .collect();
        (events, parser)
    }

    #[test]
    fn parses_fields_comments_and_multi_line_data_with_any_line_ending() {
        let input = "\u{feff}retry: 3000\r\n\r\n: heartbeat\r\rid: 1-0\nevent: notification\r\ndata: a\rdata:b\r\ndata\n\nevent: x\n\n";
        for piece in [1, 2, 3, 7, input.len()] {
            let (events, parser) = parse_in_pieces(input, piece);
            assert_eq!(
                events,
                vec![Event {
                    id: Some("1-0".into()),
                    event: Some("notification".into()),
                    data: "a\nb\n".into()
                }],
                "piece {piece}"
            );
            assert_eq!(parser.retry, Some(3000));
            assert_eq!(parser.comments, 1);
        }
    }

    #[test]
    fn a_crlf_split_by_an_empty_read_is_one_line_break() {
        let mut parser = Parser::default();
        let mut events = parser.feed(b"data: a\r");
        events.extend(parser.feed(b""));
        events.extend(parser.feed(b"\ndata: b\r\n\r"));
        events.extend(parser.feed(b""));
        events.extend(parser.feed(b"\n"));
        assert_eq!(events.len(), 1, "one event: {events:?}");
        assert_eq!(events[0].data, "a\nb");
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_but_its_id_persists() {
        let (events, _) = parse_in_pieces("id: 5\nevent: e\n\nid: a\0b\ndata: d\n\n", 4);
        assert_eq!(
            events,
            vec![Event {
                id: Some("5".into()),
                event: None,
                data: "d".into()
            }]
        );
    }
}
