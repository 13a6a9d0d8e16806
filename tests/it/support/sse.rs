//! A minimal SSE client over reqwest. Lines end at CRLF, CR or LF (also when a line break or a
//! multi-byte character is split across reads), as the WHATWG event-stream rules say; a blank
//! line ends a frame. Frames are returned one by one, comments and `retry:` included, so tests
//! can assert the exact framing a browser would see.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::Response;

/// One dispatched event, or a comment line (`: heartbeat`), or a `retry:` field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {:?}", self.data))
    }
}

pub struct SseStream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    /// The line being received, and the lines of the frame being received.
    line: Vec<u8>,
    lines: Vec<String>,
    /// The last chunk ended in CR: a LF opening the next one is part of that line break.
    after_cr: bool,
    frames: VecDeque<Event>,
    /// Everything received, for assertions on exact framing; `partial` holds the first bytes of
    /// a character whose rest has not arrived yet.
    pub raw: String,
    partial: Vec<u8>,
    pub ended: bool,
}

impl SseStream {
    pub fn new(response: Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            line: Vec::new(),
            lines: Vec::new(),
            after_cr: false,
            frames: VecDeque::new(),
            raw: String::new(),
            partial: Vec::new(),
            ended: false,
        }
    }

    /// The next frame (event, comment or retry), `None` when the stream ended; panics after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Event> {
        tokio::time::timeout(wait, self.next_frame())
            .await
            .unwrap_or_else(|_| panic!("no SSE frame within {wait:?}; got so far: {:?}", self.raw))
    }

    async fn next_frame(&mut self) -> Option<Event> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Some(frame);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.feed(&chunk),
                Some(Err(_)) | None => {
                    self.ended = true;
                    return None;
                }
            }
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.partial.extend_from_slice(chunk);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(text) => text.len(),
            Err(error) if error.error_len().is_none() => error.valid_up_to(), // cut mid-character
            Err(error) => panic!("the stream is not UTF-8: {error}"),
        };
        let complete: Vec<u8> = self.partial.drain(..valid).collect();
        self.raw
            .push_str(std::str::from_utf8(&complete).expect("checked above"));
        for &byte in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if line.is_empty() {
                        if !self.lines.is_empty() {
                            let lines = std::mem::take(&mut self.lines);
                            self.frames.push_back(parse(&lines));
                        }
                    } else {
                        // Whole lines only: a character split across reads is whole by now.
                        self.lines
                            .push(String::from_utf8(line).expect("SSE lines are UTF-8"));
                    }
                }
                _ => self.line.push(byte),
            }
        }
    }

    /// The next event that is a notification, skipping heartbeats.
    pub async fn next_notification(&mut self, wait: Duration) -> Event {
        loop {
            let event = self
                .next(wait)
                .await
                .expect("stream ended before a notification");
            if event.event.as_deref() == Some("notification") {
                return event;
            }
        }
    }

    /// The ids of every notification before the one with id `sentinel`, which the test published
    /// after everything it expects: per-member order makes that proof that nothing else came,
    /// where a stretch of silence would only be a guess.
    pub async fn ids_until(&mut self, sentinel: &str, wait: Duration) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let id = self
                .next_notification(wait)
                .await
                .id
                .expect("notifications carry an id");
            if id == sentinel {
                return ids;
            }
            ids.push(id);
        }
    }

    /// Waits until the server closes the stream, returning the frames it sent meanwhile.
    pub async fn until_closed(&mut self, wait: Duration) -> Vec<Event> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next(wait).await {
            frames.push(frame);
        }
        frames
    }
}

fn parse(lines: &[String]) -> Event {
    let mut event = Event::default();
    let mut data: Vec<&str> = Vec::new();
    for line in lines {
        if let Some(comment) = line.strip_prefix(':') {
            event.comment = Some(comment.trim().to_owned());
            continue;
        }
        let (field, value) = line.split_once(':').map_or((line.as_str(), ""), |(f, v)| {
            (f, v.strip_prefix(' ').unwrap_or(v))
        });
        match field {
            "id" => event.id = Some(value.to_owned()),
            "event" => event.event = Some(value.to_owned()),
            "data" => data.push(value),
            "retry" => event.retry = value.parse().ok(),
            _ => {}
        }
    }
    event.data = data.join("\n");
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream delivered in exactly these pieces.
    fn stream_of(pieces: &[&'static [u8]]) -> SseStream {
        let chunks: Vec<reqwest::Result<bytes::Bytes>> = pieces
            .iter()
            .map(|p| Ok(bytes::Bytes::from_static(p)))
            .collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        SseStream::new(Response::from(axum::http::Response::new(body)))
    }

    #[tokio::test]
    async fn any_line_ending_and_characters_split_across_reads() {
        let e_acute = "é".as_bytes(); // two bytes, delivered in two reads
        let mut stream = stream_of(&[
            b"retry: 5\r",
            b"\n\r\n: heartbeat\r\rid: 1\revent: notification\ndata: caf",
            &e_acute[..1],
            &e_acute[1..],
            b"\r\ndata: second line\n\n",
        ]);
        let wait = Duration::from_secs(1);
        assert_eq!(stream.next(wait).await.unwrap().retry, Some(5));
        assert_eq!(
            stream.next(wait).await.unwrap().comment.as_deref(),
            Some("heartbeat")
        );
        let event = stream.next(wait).await.unwrap();
        assert_eq!(event.id.as_deref(), Some("1"));
        assert_eq!(event.data, "café\nsecond line");
        assert!(stream.next(wait).await.is_none());
        assert!(stream.raw.ends_with("café\r\ndata: second line\n\n"));
    }
}
