//! Subscribe: framing, replay from each position source, live delivery, no gap and no duplicate.

use serde_json::json;

use crate::support::{RedisServer, TestApp, WAIT, id_order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_stream_sends_retry_connected_then_live_notifications_framed_exactly() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--retry-ms", "2500"]).await;
    let mut stream = app.subscribe("42", "", &[]).await;

    let retry = stream.next(WAIT).await.unwrap();
    assert_eq!(retry.retry, Some(2500));
    let connected = stream.next(WAIT).await.unwrap();
    assert_eq!(connected.event.as_deref(), Some("connected"));
    assert_eq!(connected.id, None, "control events never carry an id");
    assert_eq!(
        connected.json(),
        json!({"member_id": "42", "recovered": true, "read_up_to": "0-0", "unread": 0, "as_of": "0-0"})
    );

    let id = app
        .publish(
            "42",
            json!({"text": "line one\nline two\r\nevent: fake\r\n\r\ndata: x"}),
        )
        .await;
    let notification = stream.next_notification(WAIT).await;
    let time: u64 = id.split('-').next().unwrap().parse().unwrap();
    let expected_data = format!(
        r#"{{"id":"{id}","member_id":"42","type":"test","content":{{"text":"line one\nline two\r\nevent: fake\r\n\r\ndata: x"}},"time":{time}}}"#
    );
    let expected_frame = format!("id: {id}\nevent: notification\ndata: {expected_data}\n\n");
    assert!(
        stream.raw.ends_with(&expected_frame),
        "raw stream: {:?}",
        stream.raw
    );
    assert!(stream.raw.starts_with(
        "retry: 2500\n\nevent: connected\ndata: {\"member_id\":\"42\",\"recovered\":true,\"read_up_to\":\"0-0\",\"unread\":0,\"as_of\":\"0-0\"}\n\n"
    ));
    assert_eq!(notification.id.as_deref(), Some(id.as_str()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_answers_with_sse_headers_on_both_spellings() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    for path in ["/notification/subscribe", "/notification/subscribe/"] {
        let response = app
            .subscribe_response(path, Some(&crate::support::token("42")), &[])
            .await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
    }
    app.stop().await;
}

async fn publish_n(app: &TestApp, member: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(app.publish(member, json!({ "n": i })).await);
    }
    ids
}

async fn replayed_ids(stream: &mut crate::support::sse::SseStream, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            stream
                .next_notification(WAIT)
                .await
                .id
                .expect("notifications carry an id"),
        );
    }
    ids
}

/// Replays read on connections of their own (`store/wire.rs`), kept between replays: a Redis
/// that forgot its scripts, or closed those connections since, still answers the next replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_survive_redis_forgetting_scripts_and_closing_their_connections() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let ids = publish_n(&app, "42", 4).await;
    for fault in ["none", "scripts flushed", "replay connections killed"] {
        match fault {
            "scripts flushed" => assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK"),
            "replay connections killed" => {
                // The replay connections are the ones whose last command was an EXEC.
                let list = redis.cli(&["CLIENT", "LIST"]);
                let kept: Vec<&str> = list
                    .lines()
                    .filter(|line| line.contains(" cmd=exec "))
                    .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
                    .collect();
                assert!(!kept.is_empty(), "no kept replay connection: {list}");
                for id in kept {
                    assert_eq!(redis.cli(&["CLIENT", "KILL", "ID", id]), "1");
                }
            }
            _ => {}
        }
        let mut stream = app.subscribe("42", "", &[("Last-Event-ID", &ids[0])]).await;
        stream.next(WAIT).await.unwrap(); // retry
        let connected = stream.next(WAIT).await.unwrap();
        assert_eq!(connected.json()["recovered"], true, "{fault}");
        assert_eq!(replayed_ids(&mut stream, 3).await, ids[1..], "{fault}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_last_event_id_header_without_duplicates() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let ids = publish_n(&app, "42", 5).await;

    let mut stream = app.subscribe("42", "", &[("Last-Event-ID", &ids[1])]).await;
    stream.next(WAIT).await.unwrap(); // retry
    let connected = stream.next(WAIT).await.unwrap();
    assert_eq!(connected.json()["recovered"], true);
    assert_eq!(replayed_ids(&mut stream, 3).await, ids[2..]);

    let live = app.publish("42", json!("live")).await;
    assert_eq!(
        stream.next_notification(WAIT).await.id.as_deref(),
        Some(live.as_str())
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_the_last_event_id_query_of_polyfills() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let ids = publish_n(&app, "42", 4).await;
    let mut stream = app
        .subscribe("42", &format!("?lastEventId={}", ids[2]), &[])
        .await;
    assert_eq!(replayed_ids(&mut stream, 1).await, ids[3..]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_position_beats_query_and_last_message() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let ids = publish_n(&app, "42", 4).await;
    let query = format!("?lastEventId={}&last_message=0", ids[0]);
    let mut stream = app
        .subscribe("42", &query, &[("Last-Event-ID", &ids[2])])
        .await;
    assert_eq!(replayed_ids(&mut stream, 1).await, ids[3..]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_message_replays_from_that_millisecond_and_empty_replays_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let ids = publish_n(&app, "42", 6).await;
    let ms = ids[3].split('-').next().unwrap().to_owned();
    // Everything whose time is at or after that millisecond: entries sharing it included.
    let expected: Vec<String> = ids
        .iter()
        .filter(|id| id.split('-').next().unwrap() >= ms.as_str())
        .cloned()
        .collect();
    assert!(expected.len() >= 3);

    let mut by_header = app.subscribe("42", "", &[("last_message", &ms)]).await;
    assert_eq!(replayed_ids(&mut by_header, expected.len()).await, expected);
    let mut by_query = app
        .subscribe("42", &format!("?last_message={ms}"), &[])
        .await;
    assert_eq!(replayed_ids(&mut by_query, expected.len()).await, expected);

    let mut empty = app.subscribe("42", "?last_message=empty", &[]).await;
    empty.next(WAIT).await.unwrap(); // retry
    assert_eq!(empty.next(WAIT).await.unwrap().json()["recovered"], true);
    let live = app.publish("42", json!("after")).await;
    assert_eq!(
        empty.next_notification(WAIT).await.id,
        Some(live),
        "nothing replayed before the live one"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_positions_are_refused_with_a_json_400() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let token = crate::support::token("42");
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("/notification/subscribe", &[("Last-Event-ID", "yesterday")]),
        ("/notification/subscribe?lastEventId=12", &[]),
        ("/notification/subscribe?last_message=noon", &[]),
        ("/notification/subscribe", &[("last_message", "-5")]),
    ];
    for (path, headers) in cases {
        let response = app.subscribe_response(path, Some(&token), headers).await;
        assert_eq!(response.status(), 400, "{path} {headers:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_request");
        assert!(body["message"].as_str().unwrap().len() > 10);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_during_a_large_replay_delivers_every_id_once_in_order() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    // A backlog of four replay batches, from 20 concurrent publishers.
    let publish_many = |count: usize, tag: &'static str| {
        let publisher = app.publisher();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count);
            for i in 0..count {
                ids.push(publisher.publish("42", json!({ tag: i })).await);
            }
            ids
        })
    };
    let mut backlog = Vec::new();
    let tasks: Vec<_> = (0..20).map(|_| publish_many(100, "backlog")).collect();
    for task in tasks {
        backlog.extend(task.await.unwrap());
    }

    let mut stream = app.subscribe("42", "?lastEventId=0-0", &[]).await;
    // Publish concurrently while the replay is being read.
    let racing = publish_many(300, "racing");
    let total = backlog.len() + 300;
    let received = replayed_ids(&mut stream, total).await;
    let mut expected = backlog;
    expected.extend(racing.await.unwrap());
    let key = |id: &String| id_order(id);
    expected.sort_by_key(key);
    assert_eq!(received.len(), expected.len());
    assert!(
        received.windows(2).all(|w| key(&w[0]) < key(&w[1])),
        "ids strictly increasing"
    );
    assert_eq!(received, expected, "every id exactly once, in order");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_of_a_member_receives_and_other_members_see_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(app.subscribe("alice", "", &[]).await);
    }
    let mut bob = app.subscribe("bob", "", &[]).await;
    for stream in tabs.iter_mut().chain([&mut bob]) {
        stream.next(WAIT).await.unwrap();
        stream.next(WAIT).await.unwrap(); // connected
    }
    let id = app.publish("alice", json!("for alice")).await;
    for tab in &mut tabs {
        assert_eq!(
            tab.next_notification(WAIT).await.id.as_deref(),
            Some(id.as_str())
        );
    }
    let for_bob = app.publish("bob", json!("for bob")).await;
    let event = bob.next_notification(WAIT).await;
    assert_eq!(
        event.id,
        Some(for_bob),
        "bob's first notification is his own"
    );
    assert!(!bob.raw.contains("for alice"));
    // Published after bob's: whatever alice's tabs were sent in between arrives before it.
    let sentinel = app.publish("alice", json!("sentinel")).await;
    for tab in &mut tabs {
        assert!(tab.ids_until(&sentinel, WAIT).await.is_empty());
        assert!(!tab.raw.contains("for bob"));
    }
    app.stop().await;
}
