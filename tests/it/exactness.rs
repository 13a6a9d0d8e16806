//! Exactly once, in order, and `recovered` exact, under the faults that would break them: a
//! lagging instance, a trim during a slow replay, a failover to a lagging replica, restarts with
//! and without persistence, eviction, a stalled Redis, a connection that stops answering.
//! Each test ends by publishing a sentinel and reading up to it, so "nothing else arrived" is
//! proven by order, not by silence.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sse_notify::store::keys::partition_of;

use crate::migrate::migrate_all;
use crate::support::proxy::{Fault, Relay};
use crate::support::sse::SseStream;
use crate::support::{RedisServer, TestApp, WAIT, eventually, id_order};

/// Reads `retry:` and `connected`; returns `recovered`.
async fn recovered(stream: &mut SseStream) -> bool {
    let retry = stream.next(WAIT).await.expect("a retry frame");
    assert!(retry.retry.is_some(), "{retry:?}");
    let connected = stream.next(WAIT).await.expect("a connected event");
    assert_eq!(
        connected.event.as_deref(),
        Some("connected"),
        "{connected:?}"
    );
    connected.json()["recovered"]
        .as_bool()
        .expect("recovered is a bool")
}

/// Notification ids up to and including `sentinel`, in the order received.
async fn ids_through(stream: &mut SseStream, sentinel: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let event = stream.next_notification(WAIT).await;
        let id = event.id.expect("a notification has an id");
        let done = id == sentinel;
        ids.push(id);
        if done {
            return ids;
        }
    }
}

/// Subscribes until the instance answers with `connected` (it may answer `retry:` alone while
/// it cannot reach Redis, as a browser would retry); returns the stream and `recovered`.
async fn resume(app: &TestApp, member: &str, last_event_id: &str) -> (SseStream, bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut stream = app
            .subscribe(member, "", &[("Last-Event-ID", last_event_id)])
            .await;
        assert!(stream.next(WAIT).await.expect("retry").retry.is_some());
        match stream.next(WAIT).await {
            Some(event) if event.event.as_deref() == Some("connected") => {
                let recovered = event.json()["recovered"].as_bool().expect("a bool");
                return (stream, recovered);
            }
            _ => {
                assert!(Instant::now() < deadline, "never connected");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The member stream's key, as the service named it.
fn stream_key(redis: &RedisServer, member: &str) -> String {
    let key = redis.cli(&["--scan", "--pattern", &format!("n:*:s:{member}")]);
    assert!(!key.is_empty(), "no stream for {member}");
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_nothing_to_replay_never_repeats_the_position_on_a_lagging_instance() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let lagging = TestApp::start(&relay.url(), &[]).await;
    let direct = TestApp::start(&redis.url(), &[]).await;
    relay.set_fault(Fault::Delay(Duration::from_millis(700)));

    let last = direct.publish("m1", json!("seen")).await;
    // The lagging instance's reader delivers `last` only after this stream registered.
    let mut stream = lagging
        .subscribe("m1", "", &[("Last-Event-ID", &last)])
        .await;
    assert!(recovered(&mut stream).await);
    let sentinel = direct.publish("m1", json!("sentinel")).await;
    assert_eq!(ids_through(&mut stream, &sentinel).await, vec![sentinel]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_stream_never_issued_is_told_false_and_misses_nothing_after_it() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let first = app.publish("m2", json!(1)).await;
    let future = format!("{}-0", id_order(&first).0 + 60_000);
    let mut stream = app.subscribe("m2", "", &[("Last-Event-ID", &future)]).await;
    assert!(
        !recovered(&mut stream).await,
        "a position beyond the stream"
    );
    let next = app.publish("m2", json!(2)).await;
    assert_eq!(ids_through(&mut stream, &next).await, vec![next]);

    // No stream at all, a position at or after Redis's clock: the same.
    let mut stream = app
        .subscribe("nobody", "", &[("Last-Event-ID", &future)])
        .await;
    assert!(!recovered(&mut stream).await);
    let next = app.publish("nobody", json!(3)).await;
    assert_eq!(ids_through(&mut stream, &next).await, vec![next]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_under_a_slow_replay_end_it_and_the_reconnect_is_told_false() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &["--max-per-member", "600"]).await;
    // 20 KB each: the first replay batch (500) is far more than the socket buffers hold, so the
    // replay waits on this client, which reads nothing yet.
    let big = "x".repeat(20_000);
    let publisher = app.publisher();
    let mut ids = Vec::new();
    for i in 0..600 {
        ids.push(publisher.publish("m3", json!({ "i": i, "pad": big })).await);
    }
    let mut slow = app.subscribe("m3", "", &[("Last-Event-ID", &ids[0])]).await;
    // While it waits, 600 more arrive: the cap drops ids[..600], among them 501..600 that the
    // replay has not sent yet.
    for i in 600..1200 {
        ids.push(publisher.publish("m3", json!({ "i": i, "pad": big })).await);
    }
    assert!(
        recovered(&mut slow).await,
        "nothing was missing when it connected"
    );
    let mut got = Vec::new();
    for event in slow.until_closed(WAIT).await {
        got.extend(event.id);
    }
    assert_eq!(
        got,
        ids[1..=500],
        "the first batch, then the stream ends at the gap"
    );

    let (mut again, recovered) = resume(&app, "m3", &ids[500]).await;
    assert!(
        !recovered,
        "ids[501..600] were trimmed before this client got them"
    );
    assert_eq!(ids_through(&mut again, &ids[1199]).await, ids[600..]);
}

/// A primary, a replica that stops following after `kept` was replicated, and an instance that
/// then had one more notification acknowledged (the one the failover loses). The failover has
/// begun: the command connection reaches the replica, while the live reader still blocks on the
/// old primary (so the hub still says ready and nothing else has noticed yet).
struct LaggingFailover {
    _primary: RedisServer,
    replica: RedisServer,
    relay: Relay,
    app: TestApp,
    kept: String,
    /// Acknowledged by the primary, missing from the replica.
    lost: String,
}

async fn lagging_failover(member: &str) -> LaggingFailover {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    replica.replicate(&primary);
    let relay = Relay::start(primary.port()).await;
    let app = TestApp::start(&relay.url(), &[]).await;
    let kept = app.publish(member, json!("replicated")).await;
    let key = stream_key(&primary, member);
    eventually("the replica holds the first notification", || {
        let len = replica.cli(&["XLEN", &key]);
        async move { (len == "1").then_some(()) }
    })
    .await;
    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    let lost = app.publish(member, json!("acknowledged, then lost")).await;
    relay.redirect(replica.port());
    relay.cut_commands();
    LaggingFailover {
        _primary: primary,
        replica,
        relay,
        app,
        kept,
        lost,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_lagging_replica_is_told_false_before_the_live_reader_notices() {
    // Bound, not `..`: a field left out of the pattern would be dropped (its server killed) here.
    let LaggingFailover {
        _primary,
        replica,
        relay,
        app,
        kept,
        lost,
    } = lagging_failover("m4").await;
    let (stream, recovered) = resume(&app, "m4", &kept).await;
    assert!(
        !recovered,
        "the replica lost a notification acknowledged after {kept}"
    );
    // The reader finds the replica, reads the loss marker and closes the member's streams; the
    // client resumes from its last id, as a browser does.
    relay.cut();
    let sentinel = TestApp::start(&replica.url(), &[])
        .await
        .publish("m4", json!("sentinel"))
        .await;
    let ids = ids_through_resuming(&app, "m4", stream, &kept, &sentinel).await;
    // The old primary's reader may still deliver the lost one live (it was acknowledged, and in
    // order); nothing else may come before the sentinel.
    let expected = if ids.len() == 2 {
        vec![lost, sentinel]
    } else {
        vec![sentinel]
    };
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_a_failover_proves_the_loss_before_its_new_id_hides_it() {
    let LaggingFailover {
        _primary,
        replica: _replica,
        relay,
        app,
        kept,
        lost: _,
    } = lagging_failover("m14").await;
    // The first thing the instance does on the promoted replica is a publish, whose id is newer
    // than the lost one: after it, nothing the instance has seen is missing any more.
    eventually("a publish on the promoted replica", || {
        let publish = app.publish_raw(json!({ "member_id": "m14", "content": "after" }), &[]);
        async move { (publish.await.status() == 201).then_some(()) }
    })
    .await;
    relay.cut(); // the reader follows the replica too
    let (_, recovered) = resume(&app, "m14", &kept).await;
    assert!(
        !recovered,
        "the replica lost a notification acknowledged after {kept}"
    );
}

/// Like [`ids_through`], reconnecting from the last id received whenever the stream ends.
async fn ids_through_resuming(
    app: &TestApp,
    member: &str,
    mut stream: SseStream,
    position: &str,
    sentinel: &str,
) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    loop {
        while let Some(event) = stream.next(WAIT).await {
            let Some(id) = event.id else { continue };
            let done = id == sentinel;
            ids.push(id);
            if done {
                return ids;
            }
        }
        let last = ids.last().map_or(position, String::as_str);
        stream = resume(app, member, last).await.0;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_lost_acknowledged_writes_is_told_false_and_migrate_zset_keeps_it_so() {
    let mut redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let saved = app.publish("m5", json!("on disk")).await;
    redis.cli(&["SAVE"]);
    app.publish("m5", json!("acknowledged, never saved")).await;
    redis.stop(); // a crash: Redis comes back from the older snapshot
    redis.start_again();

    let (stream, recovered) = resume(&app, "m5", &saved).await;
    assert!(
        !recovered,
        "Redis lost a notification acknowledged after {saved}"
    );
    drop(stream);

    // Migrating old data into the same partition must not erase the loss marker.
    let m5_partition = partition_of(&"m5".parse().expect("a member id"));
    let old_member = (0u32..)
        .map(|n| n.to_string())
        .find(|n| partition_of(&n.parse().expect("a member id")) == m5_partition)
        .expect("a numeric member in m5's partition");
    let time = id_order(&saved).0 - 1_000;
    let old = json!({ "content": "old layout", "time": time }).to_string();
    redis.cli(&["ZADD", &old_member, &time.to_string(), &old]);
    assert_eq!(migrate_all(&redis, false).await.entries_moved, 1);
    let (mut stream, recovered) = resume(&app, "m5", &saved).await;
    assert!(
        !recovered,
        "migrate-zset moved the epoch back over a proven loss"
    );
    let sentinel = app.publish("m5", json!("sentinel")).await;
    assert_eq!(ids_through(&mut stream, &sentinel).await, vec![sentinel]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossless_restarts_keep_recovered_true() {
    // appendfsync always survives even a crash; any persistence survives a clean SHUTDOWN.
    for (args, crash) in [
        (
            &["--appendonly", "yes", "--appendfsync", "always"][..],
            true,
        ),
        (&["--save", "3600 1"][..], false),
    ] {
        let mut redis = RedisServer::start_with(args);
        let app = TestApp::start(&redis.url(), &[]).await;
        let first = app.publish("m6", json!(1)).await;
        let second = app.publish("m6", json!(2)).await;
        if crash {
            redis.stop();
        } else {
            redis.shutdown();
        }
        redis.start_again();
        let (mut stream, recovered) = resume(&app, "m6", &first).await;
        assert!(recovered, "{args:?}: nothing acknowledged was lost");
        let sentinel = app.publish("m6", json!("sentinel")).await;
        assert_eq!(
            ids_through(&mut stream, &sentinel).await,
            vec![second, sentinel],
            "{args:?}"
        );
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_retained_is_told_true_when_the_whole_window_is_there() {
    let redis = RedisServer::start();
    let app = TestApp::start(
        &redis.url(),
        &["--retention-secs", "3", "--max-per-member", "2"],
    )
    .await;
    // The dataset's history starts when the instance first met this (empty) Redis: it cannot
    // tell a new Redis from one that lost everything. One window later the window is complete.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let ids = [
        app.publish("m7", json!(1)).await,
        app.publish("m7", json!(2)).await,
    ];
    for query in ["?lastEventId=0-0", "?last_message=0"] {
        let mut stream = app.subscribe("m7", query, &[]).await;
        assert!(recovered(&mut stream).await, "{query}");
        assert_eq!(ids_through(&mut stream, &ids[1]).await, ids, "{query}");
    }
    // The cap drops the first: inside the window, so "everything retained" is no longer whole.
    let third = app.publish("m7", json!(3)).await;
    let mut stream = app.subscribe("m7", "?lastEventId=0-0", &[]).await;
    assert!(!recovered(&mut stream).await);
    assert_eq!(
        ids_through(&mut stream, &third).await,
        vec![ids[1].clone(), third]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_would_fail_halfway_stores_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    app.publish("bob", json!("creates bob's stream")).await;
    // Something else wrote into our key space: bob's stream is now a string.
    let bob = stream_key(&redis, "bob");
    redis.cli(&["DEL", &bob]);
    redis.cli(&["SET", &bob, "not a stream"]);

    let response = app
        .publish_raw(
            json!({ "member_ids": ["alice", "bob"], "content": "to both" }),
            &[],
        )
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"], "store_unavailable");
    assert_eq!(
        redis.cli(&["--scan", "--pattern", "n:*:s:alice"]),
        "",
        "alice was written although the publish failed"
    );
}

#[test]
fn a_setting_redis_would_reject_halfway_refuses_to_start() {
    for (name, value) in [
        ("RETENTION_SECS", "99999999999"),
        ("MAX_PER_MEMBER", "0"),
        ("PUBLISH_WAIT_TIMEOUT_MS", "0"),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sse-notify"))
            .env_clear()
            .env("AUTH_MODE", "gateway")
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env(name, value)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let deadline = Instant::now() + WAIT;
        while child.try_wait().expect("child status").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name}={value}: the service started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("child output");
        assert_eq!(output.status.code(), Some(64), "{name}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_possible_id_is_a_client_error() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    let max = "18446744073709551615-18446744073709551615";
    let token = crate::support::token("m9");
    for path in [
        format!("/notification/subscribe?lastEventId={max}"),
        format!("/notifications?after={max}"),
    ] {
        let response = app.subscribe_response(&path, Some(&token), &[]).await;
        assert_eq!(response.status(), 400, "{path}");
    }
    let response = app
        .subscribe_response(
            "/notification/subscribe",
            Some(&token),
            &[("Last-Event-ID", max)],
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_publishes_at_once_after_a_redis_restart() {
    let mut redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    app.publish("m10", json!("before")).await;
    redis.restart(); // empty, same port; the instance sent nothing meanwhile
    let response = app
        .publish_raw(json!({ "member_id": "m10", "content": "after" }), &[])
        .await;
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_comes_back_promptly_after_a_second_outage() {
    let mut redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    // A long outage grows the reader's backoff to its cap...
    redis.stop();
    tokio::time::sleep(Duration::from_secs(6)).await;
    redis.start_again();
    app.wait_ready().await;
    // ...which a later, short one must not inherit.
    redis.restart();
    let back = Instant::now();
    app.wait_ready().await;
    assert!(
        back.elapsed() < Duration::from_secs(3),
        "ready again after {:?}",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_connection_that_stops_answering_is_replaced() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port()).await;
    let app = TestApp::start(&relay.url(), &[]).await;
    app.publish("m11", json!("before")).await;
    relay.blackhole_open_connections(); // the route dies silently; a new connection works
    let body = json!({ "member_id": "m11", "content": "sent into the void" });
    let lost = app
        .publish_raw(body, &[("Idempotency-Key", "k-void")])
        .await;
    assert_eq!(
        lost.status(),
        504,
        "sent, never answered: the outcome is unknown"
    );
    let error: Value = lost.json().await.expect("a JSON error");
    assert_eq!(error["error"], "outcome_unknown");
    let response = app
        .publish_raw(json!({ "member_id": "m11", "content": "after" }), &[])
        .await;
    assert_eq!(response.status(), 201, "a new connection was opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_answers_too_late_is_504_and_its_retry_stores_it_once() {
    let redis = RedisServer::start();
    let app = TestApp::start(&redis.url(), &[]).await;
    app.publish("m12", json!("creates the stream")).await;
    let body = json!({ "member_id": "m12", "content": "stalled" });
    redis.freeze(true);
    let stalled = app
        .publish_raw(body.clone(), &[("Idempotency-Key", "k-stall")])
        .await;
    redis.freeze(false);
    assert_eq!(
        stalled.status(),
        504,
        "a 503 would promise nothing was stored"
    );
    let retried = app
        .publish_raw(body, &[("Idempotency-Key", "k-stall")])
        .await;
    assert_eq!(
        retried.status(),
        200,
        "Redis stored the stalled publish after all"
    );
    assert_eq!(redis.cli(&["XLEN", &stream_key(&redis, "m12")]), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_keys_is_not_ready_and_vouches_for_nothing() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    let client = reqwest::Client::new();
    let body: Value = eventually("readyz to name maxmemory-policy", || {
        let request = client.get(format!("{}/readyz", app.url)).send();
        async move {
            let response = request.await.ok()?;
            (response.status() == 503).then_some(())?;
            let body: Value = response.json().await.ok()?;
            body["error"].is_string().then_some(body)
        }
    })
    .await;
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("maxmemory-policy noeviction")),
        "{body}"
    );
    let first = app.publish("m13", json!(1)).await;
    let second = app.publish("m13", json!(2)).await;
    let (mut stream, recovered) = resume(&app, "m13", &first).await;
    assert!(!recovered, "an evicted stream would look expired");
    assert_eq!(ids_through(&mut stream, &second).await, vec![second]);
}
