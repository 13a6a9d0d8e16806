//! A client that reconnects like a browser's EventSource, and a publisher that waits Redis out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::sse::SseStream;
use super::{TestApp, WAIT, token};

/// A client that behaves like a browser's EventSource: when its stream closes it reconnects
/// (to the next URL in turn) with `Last-Event-ID` set to the last id it received.
pub struct Browser {
    pub ids: Arc<Mutex<Vec<String>>>,
    pub recovered: Arc<Mutex<Vec<bool>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Browser {
    pub fn open(urls: Vec<String>, member: &str) -> Self {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let recovered = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (ids2, recovered2, stop2, member) = (
            ids.clone(),
            recovered.clone(),
            stop.clone(),
            member.to_owned(),
        );
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            for url in urls.iter().cycle() {
                let last = ids2.lock().expect("lock not poisoned").last().cloned();
                let mut request = client
                    .get(format!("{url}/notification/subscribe"))
                    .bearer_auth(token(&member));
                if let Some(last) = last {
                    request = request.header("Last-Event-ID", last);
                }
                let session = async {
                    let Ok(response) = request.send().await else {
                        return;
                    };
                    let mut stream = SseStream::new(response);
                    while let Some(event) = stream.next(Duration::from_secs(60)).await {
                        match event.event.as_deref() {
                            Some("connected") => {
                                recovered2.lock().expect("lock not poisoned").push(
                                    event.json()["recovered"]
                                        .as_bool()
                                        .expect("recovered is a bool"),
                                )
                            }
                            Some("notification") => ids2
                                .lock()
                                .expect("lock not poisoned")
                                .push(event.id.expect("notifications carry an id")),
                            _ => {}
                        }
                    }
                };
                tokio::select! {
                    () = stop2.cancelled() => return,
                    () = session => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await; // the `retry:` delay, shortened
            }
        });
        Self {
            ids,
            recovered,
            stop,
            task,
        }
    }

    /// Waits until the browser's first stream is connected: a fresh subscription receives what is
    /// published after that (what came before is in its `unread` count).
    pub async fn wait_connected(&self) {
        super::eventually("the browser to connect", || async {
            (!self.recovered.lock().expect("lock not poisoned").is_empty()).then_some(())
        })
        .await;
    }

    /// Waits until the browser holds `expected.len()` ids and asserts they are `expected`, exactly,
    /// in order. `expected` ends with a sentinel the test published after everything else, so a
    /// duplicate or a stray id cannot hide behind it (per-member order), and no stretch of silence
    /// has to stand in for proof.
    pub async fn wait_for(&self, expected: &[String]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.ids.lock().expect("lock not poisoned").len() < expected.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "received {:?}, expected {expected:?}",
                self.ids.lock().expect("lock not poisoned")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ids = self.ids.lock().expect("lock not poisoned");
        assert_eq!(ids[..expected.len()], *expected, "exactly once, in order");
    }

    pub async fn close(self) {
        self.stop.cancel();
        self.task.await.expect("the browser task did not panic");
    }
}

/// Publishes, retrying while the instance answers 503 (Redis away); the id it finally got.
pub async fn publish_when_possible(app: &TestApp, member: &str, content: Value) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = app
            .publish_raw(json!({"member_id": member, "content": content}), &[])
            .await;
        if response.status() == 201 {
            return response.json::<Value>().await.expect("a JSON body")["ids"][0]
                .as_str()
                .expect("an id")
                .to_owned();
        }
        assert_eq!(response.status(), 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
