//! Resilience: several instances on one Redis, Redis restarting or away, clients that resume.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::sse::SseStream;
use crate::support::{RedisServer, TestApp, WAIT, token};

/// A client that behaves like a browser's EventSource: when its stream closes it reconnects
/// (to the next URL in turn) with `Last-Event-ID` set to the last id it received.
struct Browser {
    ids: Arc<Mutex<Vec<String>>>,
    recovered: Arc<Mutex<Vec<bool>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Browser {
    fn open(urls: Vec<String>, member: &str) -> Self {
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

    async fn wait_for(&self, expected: &[String]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.ids.lock().expect("lock not poisoned").len() < expected.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "received {:?}, expected {expected:?}",
                self.ids.lock().expect("lock not poisoned")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Exactly once, in order: no duplicate may arrive late either.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*self.ids.lock().expect("lock not poisoned"), expected);
    }

    async fn close(self) {
        self.stop.cancel();
        self.task.await.expect("the browser task did not panic");
    }
}

/// Publishes, retrying while the instance answers 503 (Redis away); the id it finally got.
async fn publish_when_possible(app: &TestApp, member: &str, content: Value) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_others_publishes_and_a_client_moves_between_them() {
    let redis = RedisServer::start();
    let a = TestApp::start(&redis.url(), &[]).await;
    let b = TestApp::start(&redis.url(), &[]).await;
    let mut on_a = a.subscribe("42", "", &[]).await;
    on_a.next(WAIT).await.unwrap();
    on_a.next(WAIT).await.unwrap();
    let first = b.publish("42", json!("from b")).await;
    assert_eq!(
        on_a.next_notification(WAIT).await.id.as_deref(),
        Some(first.as_str())
    );
    drop(on_a); // the client is cut from a

    let missed: Vec<String> = [
        a.publish("42", json!(1)).await,
        b.publish("42", json!(2)).await,
    ]
    .into();
    let mut on_b = b.subscribe("42", "", &[("Last-Event-ID", &first)]).await;
    on_b.next(WAIT).await.unwrap();
    assert_eq!(on_b.next(WAIT).await.unwrap().json()["recovered"], true);
    for id in &missed {
        assert_eq!(on_b.next_notification(WAIT).await.id.as_ref(), Some(id));
    }
    let live = a.publish("42", json!(3)).await;
    assert_eq!(on_b.next_notification(WAIT).await.id, Some(live));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_instance_resumes_on_another_with_nothing_lost() {
    let redis = RedisServer::start();
    let a = TestApp::start(&redis.url(), &[]).await;
    let b = TestApp::start(&redis.url(), &[]).await;
    let browser = Browser::open(vec![a.url.clone(), b.url.clone()], "42");
    let mut expected = vec![b.publish("42", json!(0)).await];
    browser.wait_for(&expected).await;
    a.stop().await; // its streams get a retry and close; the browser moves to b
    for i in 1..=5 {
        expected.push(b.publish("42", json!(i)).await);
    }
    browser.wait_for(&expected).await;
    assert!(
        browser
            .recovered
            .lock()
            .expect("lock not poisoned")
            .iter()
            .all(|r| *r)
    );
    browser.close().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_redis_is_away_answers_200_with_only_retry() {
    let mut redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--retry-ms", "1234"]).await;
    redis.stop();
    // The reader notices the lost connection at once (its socket closes).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = app
            .client
            .get(format!("{}/readyz", app.url))
            .send()
            .await
            .unwrap()
            .status();
        if status == 503 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz still 200 with redis down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for query in ["", "?lastEventId=0-0"] {
        let mut stream = app.subscribe("42", query, &[]).await;
        let frames = stream.until_closed(WAIT).await;
        assert_eq!(stream.raw, "retry: 1234\n\n", "{query}: {frames:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_under_open_streams_loses_nothing_published_after_it_returns() {
    let mut redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let browser = Browser::open(vec![app.url.clone()], "42");
    let before = app.publish("42", json!("before")).await;
    browser.wait_for(std::slice::from_ref(&before)).await;

    redis.restart(); // empty: no persistence
    let mut expected = vec![before];
    for i in 0..5 {
        expected.push(publish_when_possible(&app, "42", json!(i)).await);
    }
    browser.wait_for(&expected).await;
    // The restart lost data, and a client positioned before it is told so.
    assert_eq!(
        browser.recovered.lock().expect("lock not poisoned").last(),
        Some(&false)
    );
    browser.close().await;
    app.stop().await;
}
