//! Publish: fan-out to many members, idempotency, and a clear answer to every bad request.

use std::time::Duration;

use serde_json::{Value, json};
use sse_notify::model::MemberId;
use sse_notify::store::keys;

use crate::support::app::PUBLISH_TOKEN;
use crate::support::{RedisServer, TestApp, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_reaches_every_listed_member() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut streams = Vec::new();
    for member in ["1", "2", "3"] {
        streams.push(app.subscribe(member, "", &[]).await);
    }
    let response = app
        .publish_raw(
            json!({"member_ids": ["1", "2", 3], "type": "follow", "content": {"by": "x"}}),
            &[],
        )
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let ids = body["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 3);
    for (member, (stream, id)) in ["1", "2", "3"].iter().zip(streams.iter_mut().zip(ids)) {
        let event = stream.next_notification(WAIT).await;
        assert_eq!(event.id.as_deref(), id.as_str());
        assert_eq!(event.json()["member_id"], *member);
        assert_eq!(event.json()["type"], "follow");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_arrives_as_it_was_sent_on_one_line() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut stream = app.subscribe("1", "", &[]).await;
    // Pretty-printed, keys out of order, a number no f64 holds, an escape kept as written.
    let body = "{\"member_id\": \"1\",\r\n \"content\": {\n  \"z\": 1,\n  \"a\": [1, 2.50],\n  \"big\": 123456789012345678901234567890,\n  \"s\": \"caf\\u00e9 \\n\"\n}}";
    let response = app
        .client
        .post(format!("{}/notifications", app.url))
        .bearer_auth(PUBLISH_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let event = stream.next_notification(WAIT).await;
    assert!(
        event.data.contains(
            r#""content":{"z":1,"a":[1,2.50],"big":123456789012345678901234567890,"s":"caf\u00e9 \n"}"#
        ),
        "{}",
        event.data
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_creates_nothing_and_returns_the_same_ids() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let body = json!({"member_ids": ["7", "8"], "content": "once"});
    let first = app
        .publish_raw(body.clone(), &[("Idempotency-Key", "order-17/shipped")])
        .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = app
        .publish_raw(body.clone(), &[("Idempotency-Key", "order-17/shipped")])
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = app
        .publish_raw(body, &[("Idempotency-Key", "order-18/shipped")])
        .await;
    assert_eq!(other.status(), 201);

    // Exactly two notifications stored for member 7.
    let history = app
        .client
        .get(format!("{}/notifications", app.url))
        .bearer_auth(crate::support::token("7"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(history["notifications"].as_array().unwrap().len(), 2);
    assert_eq!(history["notifications"][0]["id"], first["ids"][0]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_publish_requests_get_clear_json_errors() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let url = format!("{}/notifications", app.url);
    // With an `Origin` a publish goes through the router; without, hyper hands it straight to
    // the handler (`publish::direct`): both must answer alike.
    let send_from = |origin: Option<&'static str>, token: Option<&'static str>, body: String| {
        let mut request = app
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let send = |token, body| send_from(None, token, body);
    let ok = Some(PUBLISH_TOKEN);
    let cases = [
        (
            None,
            r#"{"member_id":"1","content":1}"#.to_owned(),
            401,
            "unauthorized",
        ),
        (
            Some("wrong"),
            r#"{"member_id":"1","content":1}"#.to_owned(),
            401,
            "unauthorized",
        ),
        (
            ok,
            r#"{"member_id":"1","content":"#.to_owned(),
            400,
            "bad_request",
        ),
        (ok, r#"{"content":1}"#.to_owned(), 400, "bad_request"),
        (ok, r#"{"member_id":"1"}"#.to_owned(), 400, "bad_request"),
        (
            ok,
            r#"{"member_id":"a b","content":1}"#.to_owned(),
            400,
            "bad_request",
        ),
        (
            ok,
            r#"{"member_id":"1","member_ids":["2"],"content":1}"#.to_owned(),
            400,
            "bad_request",
        ),
        (
            ok,
            r#"{"member_ids":[],"content":1}"#.to_owned(),
            400,
            "bad_request",
        ),
        (
            ok,
            r#"{"member_ids":["1","1"],"content":1}"#.to_owned(),
            400,
            "bad_request",
        ),
        (
            ok,
            r#"{"member_id":"1","type":"","content":1}"#.to_owned(),
            400,
            "bad_request",
        ),
        // What a JSON parser refuses is refused, though a raw value's syntax check lets it pass.
        (
            ok,
            r#"{"member_id":"1","content":{"a":"\ud800"}}"#.to_owned(),
            400,
            "bad_request",
        ),
        (
            ok,
            r#"{"member_id":"1","content":[1e400]}"#.to_owned(),
            400,
            "bad_request",
        ),
        (
            ok,
            format!(r#"{{"member_id":"1","content":"{}"}}"#, "x".repeat(70_000)),
            413,
            "payload_too_large",
        ),
    ];
    for (token, body, status, code) in cases {
        let response = send(token, body.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{}", &body[..body.len().min(80)]);
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"], code, "{}", &body[..body.len().min(80)]);
        let routed = send_from(Some("https://app.example"), token, body.clone())
            .await
            .unwrap();
        assert_eq!(
            routed.status(),
            status,
            "routed: {}",
            &body[..body.len().min(80)]
        );
        assert_eq!(
            routed.json::<Value>().await.unwrap(),
            json,
            "same answer routed"
        );
    }
    // Without a JSON content type, the same refusal on both paths.
    for origin in [None, Some("https://app.example")] {
        let mut request = app.client.post(&url).bearer_auth(PUBLISH_TOKEN);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request
            .body(r#"{"member_id":"1","content":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{origin:?}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"], "bad_request");
        assert!(
            json["message"].as_str().unwrap().contains("Content-Type"),
            "{json}"
        );
    }
    // Null content is content.
    let response = send(ok, r#"{"member_id":"1","content":null}"#.to_owned())
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let bad_key = app
        .publish_raw(
            json!({"member_id": "1", "content": 1}),
            &[("Idempotency-Key", "has space")],
        )
        .await;
    assert_eq!(bad_key.status(), 400);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_refused_when_no_publish_token_is_configured() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--publish-token", ""]).await;
    let response = app
        .publish_raw(json!({"member_id": "1", "content": 1}), &[])
        .await;
    assert_eq!(response.status(), 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_503_store_unavailable_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    redis.stop();
    // Until the instance has noticed, a publish may go out on the dying connection and get no
    // answer: that is 504 outcome_unknown (exactness.rs tests it).
    app.wait_unready().await;
    let response = app
        .publish_raw(json!({"member_ids": ["1", "2"], "content": 1}), &[])
        .await;
    assert_eq!(response.status(), 503);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"], "store_unavailable");
    app.stop().await;
}

/// Publishes go out on connections of their own (`store/group.rs`), kept between calls: a Redis
/// that forgot its scripts, or closed those connections while they were idle, still stores the
/// next publish, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_survive_redis_forgetting_scripts_and_closing_their_connections() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    app.publish("p1", json!("first")).await;
    for fault in ["scripts flushed", "publish connections killed"] {
        if fault == "scripts flushed" {
            assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
        } else {
            // The publish connections are the ones whose last command ran the script.
            let list = redis.cli(&["CLIENT", "LIST"]);
            let kept: Vec<&str> = list
                .lines()
                .filter(|line| line.contains(" cmd=evalsha ") || line.contains(" cmd=eval "))
                .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
                .collect();
            assert!(!kept.is_empty(), "no kept publish connection: {list}");
            for id in kept {
                assert_eq!(redis.cli(&["CLIENT", "KILL", "ID", id]), "1");
            }
            // Closed while idle: the instance hears of it before its next call.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let response = app
            .publish_raw(json!({ "member_id": "p1", "content": fault }), &[])
            .await;
        assert_eq!(response.status(), 201, "{fault}");
    }
    let stream = redis.cli(&["--scan", "--pattern", "n:*:s:p1"]);
    assert_eq!(
        redis.cli(&["XLEN", &stream]),
        "3",
        "each publish stored once"
    );
    app.stop().await;
}

/// `PUBLISH_WAIT_REPLICAS` on a standalone Redis: concurrent publishes (shared calls) are answered
/// once a replica holds them; without a replica in time, 504: stored, not confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_wait_for_a_replica_and_say_when_none_confirmed() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    replica.replicate(&primary);
    let args = [
        "--publish-wait-replicas",
        "1",
        "--publish-wait-timeout-ms",
        "300",
    ];
    let app = TestApp::start(&primary.url(), &args).await;
    let publishes = (0..20).map(|i| {
        let publisher = app.publisher_raw();
        async move {
            let body = json!({ "member_id": format!("w{i}"), "content": i });
            publisher.post_json(body).await
        }
    });
    for (status, body) in futures_util::future::join_all(publishes).await {
        assert_eq!(status, 201, "confirmed by the replica: {body}");
    }
    let stream = primary.cli(&["--scan", "--pattern", "n:*:s:w0"]);
    assert_eq!(replica.cli(&["XLEN", &stream]), "1", "the replica holds it");

    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    let response = app
        .publish_raw(json!({ "member_id": "w0", "content": "unconfirmed" }), &[])
        .await;
    assert_eq!(response.status(), 504, "no replica confirmed it");
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"], "outcome_unknown");
    assert_eq!(primary.cli(&["XLEN", &stream]), "2", "stored all the same");
    app.stop().await;
}

/// Group commit: concurrent publishes share script calls, and each is still stored exactly once,
/// all or nothing, with its own ids. A publish that names a key of another type (something else
/// wrote into our key space) fails alone: the shared call it was in is refused before writing,
/// then its publishes are retried one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_calls_and_a_refused_one_fails_alone() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    app.publish("bob", json!("creates bob's stream")).await;
    let bob = redis.cli(&["--scan", "--pattern", "n:*:s:bob"]);
    redis.cli(&["DEL", &bob]);
    redis.cli(&["SET", &bob, "not a stream"]);

    let members: Vec<String> = (0..40).map(|m| format!("g{m}")).collect();
    let mut stored: Vec<Vec<(String, Value)>> = vec![Vec::new(); members.len()];
    for burst in 0..5 {
        let publishes = (0..200).map(|i| {
            let publisher = app.publisher_raw();
            let (member, to_bob) = if i == 100 {
                ("bob".to_owned(), true)
            } else {
                (members[i % members.len()].clone(), false)
            };
            let content = json!({ "burst": burst, "i": i });
            async move {
                let body = json!({ "member_ids": [member, "shared"], "content": content });
                let response = publisher.post_json(body).await;
                (i, to_bob, content, response)
            }
        });
        for (i, to_bob, content, (status, body)) in futures_util::future::join_all(publishes).await
        {
            if to_bob {
                assert_eq!(status, 503, "bob's publish fails: {body}");
                assert_eq!(body["error"], "store_unavailable");
            } else {
                assert_eq!(status, 201, "publish {i} of burst {burst}: {body}");
                let id = body["ids"][0].as_str().expect("an id").to_owned();
                stored[i % members.len()].push((id, content));
            }
        }
        if app.metric("sse_notify_publish_calls_split_total").await >= 1.0 {
            break;
        }
    }
    assert!(
        app.metric("sse_notify_publish_calls_split_total").await >= 1.0,
        "bob's publish was never in a shared call in five bursts"
    );
    let calls = app.metric("sse_notify_publish_call_publishes_count").await;
    let carried = app.metric("sse_notify_publish_call_publishes_sum").await;
    assert!(
        calls < carried,
        "no call carried two publishes: {calls} calls for {carried}"
    );

    // Each member holds exactly what it was answered, once; bob's publish stored nothing, not
    // even for the other member it named.
    let total: usize = stored.iter().map(Vec::len).sum();
    for (member, expected) in members.iter().zip(&mut stored) {
        let (status, page) = app.get_json("/notifications?limit=1000", member).await;
        assert_eq!(status, 200);
        let got: Vec<(String, Value)> = page["notifications"]
            .as_array()
            .expect("notifications")
            .iter()
            .map(|n| (n["id"].as_str().unwrap().to_owned(), n["content"].clone()))
            .collect();
        expected.sort_by_key(|(id, _)| crate::support::id_order(id));
        assert_eq!(&got, expected, "member {member}");
    }
    let (_, shared) = app.get_json("/notifications?limit=1000", "shared").await;
    assert_eq!(shared["notifications"].as_array().unwrap().len(), total);
    app.stop().await;
}

/// A shared call refused after its `WAIT` took the whole timeout leaves its publishes' retries
/// one by one only what is left of the call's deadline: they are answered in time (504 stored,
/// 503 not), never cut off by the request's own 30 s (408). Timeline, with no replica so every
/// `WAIT` takes its 16 s: four blockers hold the four call slots; the late publishes queue
/// (bob's names a key of another type) and go out as one call when a slot frees at 16 s; it is
/// refused after 16 s more, then split. A fresh deadline per retry would add 16 s: 35 s in all
/// from the late publishes' requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_refused_shared_call_keep_its_deadline() {
    const WAIT_MS: u64 = 16_000;
    let redis = RedisServer::start();
    let wait = WAIT_MS.to_string();
    let args = [
        "--publish-wait-replicas",
        "1",
        "--publish-wait-timeout-ms",
        &wait,
    ];
    let app = TestApp::start(&redis.url(), &args).await;
    let stream = |member: &str| keys::stream(&member.parse::<MemberId>().expect("a member id"));
    redis.cli(&["SET", &stream("bob"), "not a stream"]);

    let calls = async || app.metric("sse_notify_publish_call_publishes_count").await;
    let mut blockers = Vec::new();
    let mut first_call = None;
    for i in 0..4 {
        let publisher = app.publisher_raw();
        let body = json!({ "member_id": format!("blocker{i}"), "content": i });
        blockers.push(tokio::spawn(async move { publisher.post_json(body).await }));
        // Each one alone in a call of its own: the next is sent once this one's call is made.
        let made = tokio::time::Instant::now() + WAIT;
        while calls().await < f64::from(i + 1) {
            assert!(
                tokio::time::Instant::now() < made,
                "blocker {i} made no call"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        first_call.get_or_insert_with(tokio::time::Instant::now);
    }
    assert_eq!(calls().await, 4.0, "one call per blocker");
    // Queued 3 s before the first slot frees (`QUEUE_DEADLINE` is 5 s).
    let queued_at = first_call.unwrap() + Duration::from_millis(WAIT_MS - 3_000);
    tokio::time::sleep_until(queued_at).await;
    let late = (0..20).map(|i| {
        let publisher = app.publisher_raw();
        let members = if i == 10 {
            json!(["bob", "bob-other"])
        } else {
            json!([format!("late{i}")])
        };
        async move {
            let answer = publisher
                .post_json(json!({ "member_ids": members, "content": i }))
                .await;
            (i, answer)
        }
    });
    for (i, (status, body)) in futures_util::future::join_all(late).await {
        if i == 10 {
            assert_eq!(status, 503, "bob's publish is refused: {body}");
            assert_eq!(body["error"], "store_unavailable");
        } else {
            assert_eq!(status, 504, "late publish {i}, stored unconfirmed: {body}");
            assert_eq!(body["error"], "outcome_unknown");
            let late = stream(&format!("late{i}"));
            assert_eq!(redis.cli(&["XLEN", &late]), "1", "late publish {i}");
        }
    }
    for blocker in blockers {
        let (status, body) = blocker.await.expect("blocker joined");
        assert_eq!(status, 504, "no replica confirmed it: {body}");
    }
    assert!(
        app.metric("sse_notify_publish_calls_split_total").await >= 1.0,
        "the late publishes did not share a call"
    );
    let other = stream("bob-other");
    assert_eq!(
        redis.cli(&["EXISTS", &other]),
        "0",
        "bob's publish stored nothing"
    );
    app.stop().await;
}
