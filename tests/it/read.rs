//! Read state (API.md, "Read state"): one read position per member, exact unread counts, and
//! `event: read` on every open stream of the member, on every instance, in order.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::support::app::PUBLISH_TOKEN;
use crate::support::sse::{Event, SseStream};
use crate::support::{RedisServer, TestApp, WAIT, id_order, token};

/// `GET /notifications/unread` as `member`.
async fn unread(app: &TestApp, member: &str) -> Value {
    let (status, body) = app.get_json("/notifications/unread", member).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `POST /notifications/read` with `body`, as `bearer`; the status and the JSON answer.
async fn mark(app: &TestApp, bearer: &str, body: Value) -> (u16, Value) {
    let url = format!("{}/notifications/read", app.url);
    crate::support::app::post_json(&app.client, &url, bearer, body).await
}

fn state(read_up_to: &str, unread: u64, as_of: &str) -> Value {
    json!({"read_up_to": read_up_to, "unread": unread, "as_of": as_of})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_read_moves_forward_only_clamps_to_the_newest_and_counts_exactly() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    assert_eq!(unread(&app, "r1").await, state("0-0", 0, "0-0"));
    // Nothing to read: the position stays where it is.
    let (status, body) = mark(&app, &token("r1"), json!({"all": true})).await;
    assert_eq!((status, body), (200, state("0-0", 0, "0-0")));

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.publish("r1", json!(i)).await);
    }
    assert_eq!(unread(&app, "r1").await, state("0-0", 5, &ids[4]));
    let me = token("r1");
    assert_eq!(
        mark(&app, &me, json!({"up_to": ids[1]})).await,
        (200, state(&ids[1], 3, &ids[4]))
    );
    // Backward changes nothing.
    assert_eq!(
        mark(&app, &me, json!({"up_to": ids[0]})).await,
        (200, state(&ids[1], 3, &ids[4]))
    );
    // A later id than the newest notification is clamped: a later notification is never pre-read.
    let future = format!("{}-0", id_order(&ids[4]).0 + 60_000);
    assert_eq!(
        mark(&app, &me, json!({"up_to": future})).await,
        (200, state(&ids[4], 0, &ids[4]))
    );
    let last_possible = "18446744073709551615-18446744073709551615";
    assert_eq!(
        mark(&app, &me, json!({"up_to": last_possible})).await,
        (200, state(&ids[4], 0, &ids[4]))
    );
    let next = app.publish("r1", json!("after")).await;
    assert_eq!(unread(&app, "r1").await, state(&ids[4], 1, &next));
    // Another member is untouched.
    assert_eq!(unread(&app, "r2").await, state("0-0", 0, "0-0"));
    // The position expires one retention window after its last change.
    let key = redis.cli(&["--scan", "--pattern", "n:*:r:r1"]);
    let ttl: i64 = redis.cli(&["pttl", &key]).parse().unwrap();
    assert!((86_300_000..=86_400_000).contains(&ttl), "pttl {ttl}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_read_requests_get_a_json_400_and_no_token_a_401() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let id = app.publish("r3", json!(1)).await;
    let me = token("r3");
    for body in [
        json!({"up_to": id, "all": true}),
        json!({}),
        json!({"all": false}),
        json!({"up_to": "yesterday"}),
        json!([1]),
        json!({"up_to": id, "member_id": "someone-else"}),
    ] {
        let (status, answer) = mark(&app, &me, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "bad_request", "{body}");
    }
    let (status, _) = mark(&app, "not-a-token", json!({"all": true})).await;
    assert_eq!(status, 401);
    // A backend marks for a member with the publish token, and must say which member.
    let (status, _) = mark(&app, PUBLISH_TOKEN, json!({"all": true})).await;
    assert_eq!(status, 400);
    let (status, answer) = mark(&app, PUBLISH_TOKEN, json!({"all": true, "member_id": "r3"})).await;
    assert_eq!((status, answer), (200, state(&id, 0, &id)));
    let no_token = app
        .client
        .get(format!("{}/notifications/unread", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    app.stop().await;
}

/// Reads `stream` up to the notification `sentinel`; the frames on the way.
async fn frames_until(stream: &mut SseStream, sentinel: &str) -> Vec<Event> {
    let mut frames = Vec::new();
    loop {
        let frame = stream.next(WAIT).await.expect("the stream stays open");
        let done = frame.id.as_deref() == Some(sentinel);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// Reads the `retry:` and `connected` frames; the `connected` data.
async fn connected(stream: &mut SseStream) -> Value {
    assert!(
        stream
            .next(WAIT)
            .await
            .expect("a well-formed answer")
            .retry
            .is_some()
    );
    let connected = stream.next(WAIT).await.expect("a well-formed answer");
    assert_eq!(connected.event.as_deref(), Some("connected"));
    connected.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_of_the_member_on_every_instance_hears_of_the_move_after_what_it_covers() {
    let redis = RedisServer::start();
    let a = TestApp::start(&redis.url(), &[]).await;
    let b = TestApp::start(&redis.url(), &[]).await;
    let mut on_a = a.subscribe("r4", "", &[]).await;
    let mut on_b = b.subscribe("r4", "", &[]).await;
    let mut other = a.subscribe("r5", "", &[]).await;
    for stream in [&mut on_a, &mut on_b, &mut other] {
        connected(stream).await;
    }
    let ids = [
        a.publish("r4", json!(1)).await,
        b.publish("r4", json!(2)).await,
    ];
    let (status, moved) = mark(&b, &token("r4"), json!({"all": true})).await;
    assert_eq!((status, &moved), (200, &state(&ids[1], 0, &ids[1])));
    let sentinel = a.publish("r4", json!("sentinel")).await;
    for stream in [&mut on_a, &mut on_b] {
        let frames = frames_until(stream, &sentinel).await;
        let kinds: Vec<(Option<&str>, Option<&str>)> = frames
            .iter()
            .map(|f| (f.event.as_deref(), f.id.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                (Some("notification"), Some(ids[0].as_str())),
                (Some("notification"), Some(ids[1].as_str())),
                (Some("read"), None), // no id: the browser's resume position stays
                (Some("notification"), Some(sentinel.as_str())),
            ]
        );
        assert_eq!(frames[2].json(), moved);
    }
    // Another member's streams hear nothing of it.
    let theirs = a.publish("r5", json!("sentinel")).await;
    assert_eq!(frames_until(&mut other, &theirs).await.len(), 1);
    assert_eq!(a.metric("sse_notify_read_positions_moved_total").await, 0.0);
    assert_eq!(b.metric("sse_notify_read_positions_moved_total").await, 1.0);
    assert_eq!(
        a.metric("sse_notify_read_events_delivered_total").await,
        1.0
    );
    assert_eq!(
        b.metric("sse_notify_read_events_delivered_total").await,
        1.0
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_carries_the_read_state_at_the_resume_position() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(app.publish("r6", json!(i)).await);
        tokio::time::sleep(std::time::Duration::from_millis(3)).await; // distinct milliseconds
    }
    mark(&app, &token("r6"), json!({"up_to": ids[0]})).await;
    let with = |data: Value| {
        json!({
            "member_id": "r6",
            "recovered": data["as_of"] != "0-0", // 0-0 on a Redis met just now: see exactness.rs
            "read_up_to": data["read_up_to"],
            "unread": data["unread"],
            "as_of": data["as_of"],
        })
    };
    // By id: counted at the id given.
    let mut stream = app.subscribe("r6", "", &[("Last-Event-ID", &ids[2])]).await;
    assert_eq!(
        connected(&mut stream).await,
        with(state(&ids[0], 2, &ids[2]))
    );
    // Fresh: at the newest notification, after which only newer ones come.
    let mut fresh = app.subscribe("r6", "", &[]).await;
    assert_eq!(
        connected(&mut fresh).await,
        with(state(&ids[0], 3, &ids[3]))
    );
    // By time (old clients): at the newest notification before that millisecond.
    let ms = id_order(&ids[2]).0.to_string();
    let mut by_time = app.subscribe("r6", "", &[("last_message", &ms)]).await;
    assert_eq!(
        connected(&mut by_time).await,
        with(state(&ids[0], 1, &ids[1]))
    );
    // Everything retained: counted at 0-0, and every notification then arrives to be counted.
    let mut all = app.subscribe("r6", "", &[("Last-Event-ID", "0-0")]).await;
    assert_eq!(connected(&mut all).await, with(state(&ids[0], 0, "0-0")));
    let sentinel = app.publish("r6", json!("sentinel")).await;
    let fresh_frames = frames_until(&mut fresh, &sentinel).await;
    assert_eq!(fresh_frames.len(), 1, "a fresh stream gets only newer ones");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_backward_for_an_inbox_and_carry_the_read_state() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.publish("r7", json!(i)).await);
    }
    mark(&app, &token("r7"), json!({"up_to": ids[2]})).await;
    let page = |query: String| {
        let app = &app;
        async move { app.get_json(&format!("/notifications?{query}"), "r7").await }
    };
    let page_ids = |body: &Value| -> Vec<String> {
        body["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, first) = page("before=&limit=2".into()).await;
    assert_eq!(status, 200);
    assert_eq!(page_ids(&first), [ids[4].clone(), ids[3].clone()]);
    assert_eq!(first["next"], ids[3]);
    assert_eq!(
        (&first["read_up_to"], &first["unread"], &first["as_of"]),
        (&json!(ids[2]), &json!(2), &json!(ids[4]))
    );
    let (_, second) = page(format!("before={}&limit=2", ids[3])).await;
    assert_eq!(page_ids(&second), [ids[2].clone(), ids[1].clone()]);
    let (_, last) = page(format!("before={}&limit=2", ids[1])).await;
    assert_eq!(page_ids(&last), [ids[0].clone()]);
    assert_eq!(last["next"], Value::Null);
    let (_, none) = page("before=0-0".into()).await;
    assert!(page_ids(&none).is_empty());
    // Forward pages carry the read state too.
    let (_, forward) = page(format!("after={}", ids[3])).await;
    assert_eq!(page_ids(&forward), [ids[4].clone()]);
    assert_eq!(forward["unread"], 2);
    for bad in [
        "after=&before=",
        "before=nope",
        &format!("after={}&before={}", ids[0], ids[4]),
    ] {
        let (status, body) = page(bad.to_owned()).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("bad_request")),
            "{bad}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_cover_only_what_is_retained_and_entries_written_before_ordinals() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--max-per-member", "3"]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.publish("r8", json!(i)).await);
    }
    // Two were dropped by the cap: three are unread, counted from the oldest retained.
    assert_eq!(unread(&app, "r8").await, state("0-0", 3, &ids[4]));
    assert_eq!(
        mark(&app, &token("r8"), json!({"up_to": ids[3]})).await,
        (200, state(&ids[3], 1, &ids[4]))
    );
    // A stream written by a version without ordinals (entries lack `o`), then published to.
    app.publish("r9", json!("names the key")).await;
    let key = redis.cli(&["--scan", "--pattern", "n:*:s:r9"]);
    redis.cli(&["DEL", &key]);
    let legacy: Vec<String> = (0..3)
        .map(|i| {
            redis.cli(&[
                "XADD",
                &key,
                "*",
                "p",
                "0-0",
                "t",
                "old",
                "c",
                &i.to_string(),
            ])
        })
        .collect();
    let fresh = app.publish("r9", json!("new")).await;
    // The cap keeps three: two old entries (counted one by one) and the new one.
    assert_eq!(unread(&app, "r9").await, state("0-0", 3, &fresh));
    assert_eq!(
        mark(&app, &token("r9"), json!({"up_to": legacy[1]})).await,
        (200, state(&legacy[1], 2, &fresh))
    );
    app.stop().await;
}

/// The badge a client shows from what one stream sent it: the last state (from `connected` or
/// `event: read`) plus every notification received with an id after its `as_of` and
/// `read_up_to` (API.md).
fn implied_badge(frames: &[Event]) -> u64 {
    let mut last_state: Option<Value> = None;
    let mut received = Vec::new();
    for frame in frames {
        match frame.event.as_deref() {
            Some("connected") | Some("read") => last_state = Some(frame.json()),
            Some("notification") => received.push(frame.id.clone().expect("a well-formed answer")),
            _ => {}
        }
    }
    let state = last_state.expect("a connected event");
    let floor = id_order(state["as_of"].as_str().expect("a well-formed answer")).max(id_order(
        state["read_up_to"].as_str().expect("a well-formed answer"),
    ));
    state["unread"].as_u64().expect("a well-formed answer")
        + received.iter().filter(|id| id_order(id) > floor).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_publishes_and_marks_every_stream_implies_the_exact_badge() {
    let redis = RedisServer::start();
    let a = Arc::new(TestApp::start(&redis.url(), &[]).await);
    let b = Arc::new(TestApp::start(&redis.url(), &[]).await);
    let mut streams = Vec::new();
    for app in [&a, &a, &b] {
        let mut stream = app.subscribe("race", "", &[]).await;
        let mut frames = vec![];
        assert!(stream.next(WAIT).await.unwrap().retry.is_some());
        frames.push(stream.next(WAIT).await.unwrap());
        streams.push((stream, frames));
    }
    let publishing = {
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..120 {
                let app = if i % 2 == 0 { &a } else { &b };
                ids.push(app.publish("race", json!(i)).await);
            }
            ids
        })
    };
    let marking = {
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                let app = if i % 2 == 0 { &b } else { &a };
                let body = if i % 5 == 0 {
                    json!({"all": true})
                } else {
                    // Somewhere around the newest, as a user scrolling an inbox would.
                    let newest = unread(app, "race").await["as_of"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    json!({"up_to": newest})
                };
                let (status, _) = mark(app, &token("race"), body).await;
                assert_eq!(status, 200);
            }
        })
    };
    publishing.await.unwrap();
    marking.await.unwrap();
    let sentinel = a.publish("race", json!("sentinel")).await;
    let expected = unread(&a, "race").await["unread"].as_u64().unwrap();
    for (stream, frames) in &mut streams {
        frames.extend(frames_until(stream, &sentinel).await);
        assert_eq!(
            implied_badge(frames),
            expected,
            "{:?}",
            frames
                .iter()
                .map(|f| (&f.event, &f.id, &f.data))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        a.metric("sse_notify_read_positions_moved_total").await
            + b.metric("sse_notify_read_positions_moved_total").await
            > 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_cors_origins_mark_read_with_credentials_preflight_included() {
    let redis = RedisServer::start();
    let origin = "https://inbox.example";
    let app = TestApp::start(&redis.url(), &["--cors-origins", origin]).await;
    let url = format!("{}/notifications/read", app.url);
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], origin);
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let id = app.publish("r10", json!(1)).await;
    // The cookie a native EventSource also uses.
    let marked = app
        .client
        .post(&url)
        .header("origin", origin)
        .header("cookie", format!("access_token={}", token("r10")))
        .json(&json!({"up_to": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(marked.status(), 200);
    assert_eq!(marked.headers()["access-control-allow-origin"], origin);
    assert_eq!(marked.json::<Value>().await.unwrap(), state(&id, 0, &id));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_position_survives_service_and_redis_restarts_like_the_notifications() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let app = TestApp::start(&redis.url(), &[]).await;
    let ids = [
        app.publish("r11", json!(1)).await,
        app.publish("r11", json!(2)).await,
    ];
    mark(&app, &token("r11"), json!({"up_to": ids[0]})).await;
    app.stop().await;
    redis.shutdown();
    redis.start_again();
    let app = TestApp::start(&redis.url(), &[]).await;
    assert_eq!(unread(&app, "r11").await, state(&ids[0], 1, &ids[1]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_an_older_version_writes_mid_deploy_are_counted_exactly() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.publish("r12", json!(i)).await);
    }
    // An old instance, still running during a rolling deploy, appends entries without `o`.
    let key = redis.cli(&["--scan", "--pattern", "n:*:s:r12"]);
    for i in 0..2 {
        let prev = ids.last().unwrap().clone();
        ids.push(redis.cli(&[
            "XADD",
            &key,
            "*",
            "p",
            &prev,
            "t",
            "old",
            "c",
            &i.to_string(),
        ]));
    }
    for i in 0..2 {
        ids.push(app.publish("r12", json!(i)).await);
    }
    // The next new entry counts the two old ones: ordinals stay ranks.
    let entry = redis.cli(&["XRANGE", &key, &ids[5], &ids[5]]);
    assert!(entry.contains("o\n6\n"), "{entry}");
    assert_eq!(unread(&app, "r12").await, state("0-0", 7, &ids[6]));
    let me = token("r12");
    for (up_to, left) in [(0, 6), (3, 3), (4, 2), (5, 1)] {
        assert_eq!(
            mark(&app, &me, json!({"up_to": ids[up_to]})).await,
            (200, state(&ids[up_to], left, &ids[6])),
            "up to {up_to}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_entry_this_version_cannot_read_is_skipped_not_fatal() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut stream = app.subscribe("r13", "", &[]).await;
    connected(&mut stream).await;
    let first = app.publish("r13", json!("first")).await;
    assert_eq!(stream.next_notification(WAIT).await.id, Some(first));
    // A newer version's kind of entry, in its place in the chain.
    let live = redis
        .cli(&["--scan", "--pattern", "n:*:live"])
        .lines()
        .find(|key| !redis.cli(&["XLEN", key]).starts_with('0'))
        .expect("the partition's fan-out stream")
        .to_owned();
    let last = redis.cli(&["XREVRANGE", &live, "+", "-", "COUNT", "1"]);
    let last = last.lines().next().expect("an entry");
    redis.cli(&[
        "XADD",
        &live,
        "*",
        "p",
        last,
        "m",
        "r13",
        "future-kind",
        "1",
    ]);
    let gaps = app.metric("sse_notify_live_gaps_total").await;
    let next = app.publish("r13", json!("next")).await;
    assert_eq!(stream.next_notification(WAIT).await.id, Some(next));
    assert_eq!(
        app.metric("sse_notify_live_gaps_total").await,
        gaps,
        "no gap, no reset"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_move_already_in_connected_is_not_sent_again_by_a_lagging_reader() {
    use crate::support::proxy::{Fault, Relay};
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let lagging = TestApp::start(&relay.url(), &[]).await;
    let other = TestApp::start(&redis.url(), &[]).await;
    relay.set_fault(Fault::Delay(std::time::Duration::from_millis(300)));
    // Marked read, then one more: the truth is one unread.
    let first = other.publish("r14", json!(1)).await;
    mark(&other, &token("r14"), json!({"all": true})).await;
    other.publish("r14", json!(2)).await;
    // A fresh stream on the instance whose reader hears of all this 300 ms late: its `connected`
    // already includes the move; the move, queued behind it, must not roll the badge back.
    let mut stream = lagging.subscribe("r14", "", &[]).await;
    let mut frames = vec![
        stream.next(WAIT).await.unwrap(),
        stream.next(WAIT).await.unwrap(),
    ];
    assert_eq!(frames[1].json()["read_up_to"], json!(first));
    let sentinel = other.publish("r14", json!("sentinel")).await;
    frames.extend(frames_until(&mut stream, &sentinel).await);
    assert_eq!(implied_badge(&frames), 2, "{frames:?}");
    assert_eq!(unread(&other, "r14").await["unread"], 2);
    lagging.stop().await;
    other.stop().await;
}
