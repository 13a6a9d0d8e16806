//! Retention: the time window and the per-member cap, and a truthful `recovered` flag.

use std::time::Duration;

use serde_json::json;

use crate::support::sse::SseStream;
use crate::support::{RedisServer, TestApp, WAIT};

/// Reads the `retry:` and `connected` frames; returns `recovered`. The replay's first batch was
/// read with that decision, so what is published afterwards cannot change what it replays.
async fn recovered(stream: &mut SseStream) -> bool {
    assert!(
        stream
            .next(WAIT)
            .await
            .expect("a retry frame")
            .retry
            .is_some()
    );
    stream.next(WAIT).await.expect("a connected event").json()["recovered"]
        .as_bool()
        .expect("recovered is a bool")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_cap_drops_the_oldest_and_reports_recovered_false_to_those_who_missed_them() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--max-per-member", "3"]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.publish("42", json!(i)).await);
    }
    // ids[0] and ids[1] were dropped: a client at ids[0] missed ids[1]; one at ids[1] missed
    // nothing that was dropped; one at ids[4] is up to date.
    let mut behind = app.subscribe("42", "", &[("Last-Event-ID", &ids[0])]).await;
    let mut current = app.subscribe("42", "", &[("Last-Event-ID", &ids[1])]).await;
    let mut latest = app.subscribe("42", "", &[("Last-Event-ID", &ids[4])]).await;
    assert!(!recovered(&mut behind).await);
    assert!(recovered(&mut current).await);
    assert!(recovered(&mut latest).await);
    let sentinel = app.publish("42", json!("sentinel")).await;
    assert_eq!(behind.ids_until(&sentinel, WAIT).await, ids[2..]);
    assert_eq!(current.ids_until(&sentinel, WAIT).await, ids[2..]);
    assert!(latest.ids_until(&sentinel, WAIT).await.is_empty());
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
    let mut before = app
        .subscribe("42", "", &[("Last-Event-ID", &before_old)])
        .await;
    // A client that had seen `old` missed nothing that expired.
    let mut after = app.subscribe("42", "", &[("Last-Event-ID", &old)]).await;
    assert!(!recovered(&mut before).await);
    assert!(recovered(&mut after).await);

    // The next write trims `old` and renews the expiry to the window.
    let new = app.publish("42", json!("new")).await;
    assert_eq!(
        before.ids_until(&new, WAIT).await,
        std::slice::from_ref(&recent)
    );
    assert_eq!(
        after.ids_until(&new, WAIT).await,
        std::slice::from_ref(&recent)
    );
    let key = redis.cli(&["--scan", "--pattern", "n:*:s:42"]);
    assert_eq!(redis.cli(&["xlen", &key]), "2");
    let ttl: i64 = redis.cli(&["pttl", &key]).parse().unwrap();
    assert!((1..=3_000).contains(&ttl), "pttl {ttl}");
    let mut stream = app.subscribe("42", "", &[("Last-Event-ID", &recent)]).await;
    assert!(recovered(&mut stream).await);
    let sentinel = app.publish("42", json!("sentinel")).await;
    assert_eq!(stream.ids_until(&sentinel, WAIT).await, [new]);
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
    assert!(!recovered(&mut stream).await);
    // And the first entry of a new stream does not claim to follow the lost one.
    let new = app.publish("42", json!("new")).await;
    assert!(stream.ids_until(&new, WAIT).await.is_empty());
    let mut stream = app.subscribe("42", "", &[("Last-Event-ID", &old)]).await;
    assert!(!recovered(&mut stream).await);
    let sentinel = app.publish("42", json!("sentinel")).await;
    assert_eq!(stream.ids_until(&sentinel, WAIT).await, [new]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_append_renews_the_expiry_and_few_trim_by_age() {
    let redis = RedisServer::start();
    // A two-second window: trimming by age once per 100 ms interval of a stream's ids.
    let app = TestApp::start(&redis.url(), &["--retention-secs", "2"]).await;
    let (mut first_ms, mut last_ms) = (None, 0);
    let appends = 40;
    for i in 0..appends {
        let id = app.publish("42", json!(i)).await;
        let id_ms: u64 = id.split('-').next().unwrap().parse().unwrap();
        first_ms.get_or_insert(id_ms);
        last_ms = id_ms;
        let key = redis.cli(&["--scan", "--pattern", "n:*:s:42"]);
        let expires_at: u64 = redis.cli(&["pexpiretime", &key]).parse().unwrap();
        assert!(
            // Redis's clock inside the script may read a few ms before the id's.
            (id_ms + 1_990..=id_ms + 2_100).contains(&expires_at),
            "append {i} at {id_ms} left the stream expiring at {expires_at}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let intervals = last_ms / 100 - first_ms.unwrap() / 100 + 1;
    let stats = redis.cli(&["info", "commandstats"]);
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    assert!(
        calls("pexpire") >= appends,
        "every append renews the expiry"
    );
    let trims = calls("xtrim");
    assert!(
        (1..=intervals).contains(&trims),
        "{trims} trims for {appends} appends over {intervals} intervals"
    );
    app.stop().await;
}
