//! A minimal SSE client over reqwest, parsing frames the way a browser does.

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
    buffer: String,
    /// Everything received, byte for byte, for assertions on exact framing.
    pub raw: String,
    pub ended: bool,
}

impl SseStream {
    pub fn new(response: Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            raw: String::new(),
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
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(&frame));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    let text = std::str::from_utf8(&chunk).expect("SSE is UTF-8");
                    self.raw.push_str(text);
                    self.buffer.push_str(text);
                }
                Some(Err(_)) | None => {
                    self.ended = true;
                    return None;
                }
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

    /// Waits until the server closes the stream, returning the frames it sent meanwhile.
    pub async fn until_closed(&mut self, wait: Duration) -> Vec<Event> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next(wait).await {
            frames.push(frame);
        }
        frames
    }
}

fn parse(frame: &str) -> Event {
    let mut event = Event::default();
    let mut data: Vec<&str> = Vec::new();
    for line in frame.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            event.comment = Some(comment.trim().to_owned());
            continue;
        }
        let (field, value) = line
            .split_once(':')
            .map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
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
