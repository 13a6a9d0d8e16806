//! Retention: the time window and the per-member cap, and a truthful `recovered` flag.

use std::time::Duration;

use serde_json::json;

use crate::support::sse::SseStream;
use crate::support::{RedisServer, TestApp, WAIT};

async fn connected_and_ids(stream: &mut SseStream) -> (bool, Vec<String>) {
    assert!(
        stream
            .next(WAIT)
            .await
            .expect("a retry frame")
            .retry
            .is_some()
    );
    let recovered = stream.next(WAIT).await.expect("a connected event").json()["recovered"]
        .as_bool()
        .expect("recovered is a bool");
    let mut ids = Vec::new();
    // Replayed entries arrive right after `connected`; a short silence means the replay is over.
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), stream.next(WAIT)).await
    {
        ids.extend(event.id);
    }
    (recovered, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_cap_drops_the_oldest_and_reports_recovered_false_to_those_who_missed_them() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--max-per-member", "3"]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.publish("42", json!(i)).await);
    }
    // ids[0] and ids[1] were dropped: a client at ids[0] missed ids[1].
    let mut behind = app.subscribe("42", "", &[("Last-Event-ID", &ids[0])]).await;
    assert_eq!(
        connected_and_ids(&mut behind).await,
        (false, ids[2..].to_vec())
    );
    // A client at ids[1] missed nothing that was dropped.
    let mut current = app.subscribe("42", "", &[("Last-Event-ID", &ids[1])]).await;
    assert_eq!(
        connected_and_ids(&mut current).await,
        (true, ids[2..].to_vec())
    );
    // Up to date: nothing to replay, nothing missed.
    let mut latest = app.subscribe("42", "", &[("Last-Event-ID", &ids[4])]).await;
    assert_eq!(connected_and_ids(&mut latest).await, (true, vec![]));
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "n:*:s:42"])
            .lines()
            .count(),
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_older_than_the_retention_window_are_never_replayed() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--retention-secs", "3"]).await;
    let old = app.publish("42", json!("old")).await;
    let before_old = format!(
        "{}-0",
        old.split('-').next().unwrap().parse::<u64>().unwrap() - 1
    );
    // Waiting is the behaviour under test: the window is three seconds.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let recent = app.publish("42", json!("recent")).await; // keeps the stream alive; `old` stays
    tokio::time::sleep(Duration::from_millis(1_700)).await;

    // `old` is still in Redis (nothing trimmed it) but outside the window: not replayed, and the
    // client is told it missed something.
    assert_eq!(
        redis.cli(&["xlen", &redis.cli(&["--scan", "--pattern", "n:*:s:42"])]),
        "2"
    );
    let mut stream = app
        .subscribe("42", "", &[("Last-Event-ID", &before_old)])
        .await;
    assert_eq!(
        connected_and_ids(&mut stream).await,
        (false, vec![recent.clone()])
    );
    // A client that had seen `old` missed nothing that expired.
    let mut stream = app.subscribe("42", "", &[("Last-Event-ID", &old)]).await;
    assert_eq!(
        connected_and_ids(&mut stream).await,
        (true, vec![recent.clone()])
    );

    // The next write trims `old` and renews the expiry to the window.
    let new = app.publish("42", json!("new")).await;
    let key = redis.cli(&["--scan", "--pattern", "n:*:s:42"]);
    assert_eq!(redis.cli(&["xlen", &key]), "2");
    let ttl: i64 = redis.cli(&["pttl", &key]).parse().unwrap();
    assert!((1..=3_000).contains(&ttl), "pttl {ttl}");
    let mut stream = app.subscribe("42", "", &[("Last-Event-ID", &recent)]).await;
    assert_eq!(connected_and_ids(&mut stream).await, (true, vec![new]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_stream_does_not_look_like_a_complete_empty_history() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--retention-secs", "1"]).await;
    let old = app.publish("42", json!("old")).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await; // the key expires with the window
    let before_old = format!(
        "{}-0",
        old.split('-').next().unwrap().parse::<u64>().unwrap() - 1
    );
    let mut stream = app
        .subscribe("42", "", &[("Last-Event-ID", &before_old)])
        .await;
    assert_eq!(connected_and_ids(&mut stream).await, (false, vec![]));
    // And the first entry of a new stream does not claim to follow the lost one.
    let new = app.publish("42", json!("new")).await;
    let mut stream = app.subscribe("42", "", &[("Last-Event-ID", &old)]).await;
    assert_eq!(connected_and_ids(&mut stream).await, (false, vec![new]));
    app.stop().await;
}
