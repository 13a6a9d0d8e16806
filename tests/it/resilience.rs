//! Resilience: several instances on one Redis, Redis restarting or away, clients that resume.

use serde_json::json;

use crate::support::browser::{Browser, publish_when_possible};
use crate::support::{RedisServer, TestApp, WAIT};

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
    browser.wait_connected().await;
    let mut expected = vec![b.publish("42", json!(0)).await];
    expected.push(b.publish("42", json!("sentinel")).await);
    browser.wait_for(&expected).await;
    a.stop().await; // its streams get a retry and close; the browser moves to b
    for i in 1..=5 {
        expected.push(b.publish("42", json!(i)).await);
    }
    expected.push(b.publish("42", json!("sentinel")).await);
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
    app.wait_unready().await; // the reader notices at once: its socket closes
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
    browser.wait_connected().await;
    let mut expected = vec![
        app.publish("42", json!("before")).await,
        app.publish("42", json!("sentinel")).await,
    ];
    browser.wait_for(&expected).await;

    redis.restart(); // empty: no persistence
    for i in 0..5 {
        expected.push(publish_when_possible(&app, "42", json!(i)).await);
    }
    expected.push(publish_when_possible(&app, "42", json!("sentinel")).await);
    browser.wait_for(&expected).await;
    // The restart lost data, and a client positioned before it is told so.
    assert_eq!(
        browser.recovered.lock().expect("lock not poisoned").last(),
        Some(&false)
    );
    browser.close().await;
    app.stop().await;
}
