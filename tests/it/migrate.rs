//! `migrate-zset`: the old layout (one sorted set per member) moved into streams, exactly once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands as _;
use serde_json::{Value, json};
use sse_notify::migrate::{self, NON_NUMERIC_KEY, NOT_A_SORTED_SET, Options, Report};
use sse_notify::store::RedisTarget;
use sse_notify::store::Store;

use crate::support::sse::SseStream;
use crate::support::{RedisServer, TestApp, WAIT};

const RETENTION: Duration = Duration::from_secs(86_400);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("test setup")
        .as_millis() as u64
}

async fn connection(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("test setup")
        .get_multiplexed_async_connection()
        .await
        .expect("test setup")
}

/// Writes one old-layout entry: member `{"content":..,"time":..}`, score = time.
async fn old_entry(
    conn: &mut redis::aio::MultiplexedConnection,
    member: &str,
    content: Value,
    time: u64,
) {
    let entry = json!({ "content": content, "time": time }).to_string();
    let _: () = conn.zadd(member, entry, time).await.expect("test setup");
}

pub(crate) async fn migrate_all(redis: &RedisServer, dry_run: bool) -> Report {
    let store = Store::new(
        &RedisTarget::new(&redis.url(), &[], Default::default()).expect("a redis URL"),
        RETENTION,
        10_000,
        None,
    )
    .expect("test setup");
    let options = Options {
        dry_run,
        pattern: "*".into(),
        delete_source: false,
        batch: 100,
    };
    migrate::run(&store, &options, |_| {})
        .await
        .expect("test setup")
}

/// What the old service's `rangeByScore(ms, +inf)` returned: contents in score, then member order.
async fn old_range(
    conn: &mut redis::aio::MultiplexedConnection,
    member: &str,
    from_ms: u64,
) -> Vec<Value> {
    let raw: Vec<String> = conn
        .zrangebyscore(member, from_ms, "+inf")
        .await
        .expect("test setup");
    raw.iter()
        .filter_map(|r| serde_json::from_str::<Value>(r).ok())
        .filter(|v| v["time"].is_u64())
        .map(|v| v["content"].clone())
        .collect()
}

/// What a resuming client is replayed: `recovered`, and every notification (id, content) up to a
/// sentinel published to `member` once the replay has started (earlier sentinels skipped).
async fn replay(
    stream: &mut SseStream,
    app: &TestApp,
    member: &str,
) -> (bool, Vec<(String, Value)>) {
    assert!(stream.next(WAIT).await.expect("test setup").retry.is_some());
    let recovered = stream.next(WAIT).await.expect("test setup").json()["recovered"]
        .as_bool()
        .expect("test setup");
    let sentinel = app.publish(member, json!(SENTINEL)).await;
    let mut got = Vec::new();
    loop {
        let event = stream.next_notification(WAIT).await;
        let id = event.id.clone().expect("notifications carry an id");
        if id == sentinel {
            return (recovered, got);
        }
        let content = event.json()["content"].clone();
        if content != json!(SENTINEL) {
            got.push((id, content));
        }
    }
}

const SENTINEL: &str = "sentinel: the replay before it is complete";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_the_old_layout_so_old_and_new_clients_see_what_the_old_service_gave() {
    let redis = RedisServer::start();
    let mut conn = connection(&redis).await;
    let t = now_ms() - 60_000;
    old_entry(&mut conn, "42", json!({"text": "first"}), t).await;
    old_entry(
        &mut conn,
        "42",
        json!("same ms: ünïcode\nand a line break"),
        t,
    )
    .await;
    old_entry(&mut conn, "42", json!({"text": "later"}), t + 2_000).await;
    old_entry(&mut conn, "42", json!("expired"), t - 2 * 86_400_000).await;
    let _: () = conn.zadd("42", "not json at all", t + 1_000).await.unwrap();
    old_entry(&mut conn, "43", json!("with a ttl"), t + 500).await;
    let _: () = conn.expire("43", 3_600).await.unwrap();
    old_entry(&mut conn, "abc", json!("non-numeric key"), t).await;
    let _: () = conn.set("44", "a string").await.unwrap();
    let _: () = conn.hset("45", "f", "v").await.unwrap();

    let dry = migrate_all(&redis, true).await;
    assert_eq!((dry.entries_moved, dry.keys_moved), (4, 2));
    assert_eq!(
        redis.cli(&["--scan", "--pattern", "n:*:s:*"]),
        "",
        "a dry run writes nothing"
    );

    let report = migrate_all(&redis, false).await;
    assert_eq!(
        (
            report.entries_moved,
            report.keys_moved,
            report.entries_expired,
            report.entries_skipped
        ),
        (4, 2, 1, 1)
    );
    assert_eq!(report.keys_skipped.get(NON_NUMERIC_KEY), Some(&1));
    assert_eq!(report.keys_skipped.get(NOT_A_SORTED_SET), Some(&2));
    assert_eq!(
        redis.cli(&["type", "abc"]),
        "zset",
        "other keys are left alone"
    );
    assert_eq!(
        redis.cli(&["zcard", "42"]),
        "5",
        "the source stays without --delete-source"
    );

    // The new stream expires like the service's: a retention window after its newest entry.
    let stream_key = redis.cli(&["--scan", "--pattern", "n:*:s:42"]);
    let ttl: u64 = redis.cli(&["pttl", &stream_key]).parse().unwrap();
    let newest_age = 60_000 - 2_000; // `later`, at t + 2 s
    assert!(
        ttl <= 86_400_000 - newest_age && ttl > 86_400_000 - newest_age - 60_000,
        "pttl {ttl}"
    );

    let app = TestApp::start(&redis.url(), &[]).await;
    // Read state is left alone: no position is written, and the migrated history is unread,
    // counted like the service's own entries (the migration numbers them).
    assert_eq!(redis.cli(&["--scan", "--pattern", "n:*:r:*"]), "");
    let (status, unread) = app.get_json("/notifications/unread", "42").await;
    assert_eq!(status, 200);
    assert_eq!(
        unread,
        json!({"read_up_to": "0-0", "unread": 3, "as_of": format!("{}-0", t + 2_000)})
    );
    // An old client resuming from a timestamp gets what rangeByScore(ms, +inf) gave it.
    for from in [t, t + 1, t + 2_000] {
        let mut stream = app
            .subscribe("42", "", &[("last_message", &from.to_string())])
            .await;
        let (recovered, got) = replay(&mut stream, &app, "42").await;
        assert!(recovered, "migrated history is complete from {from}");
        let contents: Vec<Value> = got.iter().map(|(_, c)| c.clone()).collect();
        assert_eq!(
            contents,
            old_range(&mut conn, "42", from).await,
            "from {from}"
        );
    }
    // A new client resumes by id; ids sharing a millisecond keep the sorted-set order.
    let mut all = app
        .subscribe("42", "", &[("last_message", &t.to_string())])
        .await;
    let (_, got) = replay(&mut all, &app, "42").await;
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("{t}-0"),
            format!("{t}-1"),
            format!("{}-0", t + 2_000)
        ]
    );
    let mut rest = app.subscribe("42", "", &[("Last-Event-ID", ids[0])]).await;
    assert_eq!(
        replay(&mut rest, &app, "42").await,
        (true, got[1..].to_vec())
    );

    // A second run moves nothing and changes nothing.
    let before = redis.cli(&["xrange", &stream_key, "-", "+"]);
    let again = migrate_all(&redis, false).await;
    assert_eq!((again.entries_moved, again.entries_already_there), (0, 4));
    assert_eq!(redis.cli(&["xrange", &stream_key, "-", "+"]), before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_completed_by_another_gives_the_same_result_and_delete_source_empties_the_sets()
 {
    let redis = RedisServer::start();
    let mut conn = connection(&redis).await;
    let t = now_ms() - 60_000;
    for member in 0..300 {
        for n in 0..5u64 {
            old_entry(
                &mut conn,
                &member.to_string(),
                json!({ "m": member, "n": n }),
                t + n / 2,
            )
            .await;
        }
    }
    let store = Store::new(
        &RedisTarget::new(&redis.url(), &[], Default::default()).expect("a redis URL"),
        RETENTION,
        10_000,
        None,
    )
    .unwrap();
    let options = Options {
        dry_run: false,
        pattern: "*".into(),
        delete_source: true,
        batch: 20,
    };
    // Interrupt the first run as soon as it reports progress, wherever it is.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let first = tokio::spawn({
        let (store, options) = (store.clone(), options.clone());
        async move {
            let mut tx = Some(tx);
            migrate::run(&store, &options, |_| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            })
            .await
        }
    });
    rx.await.unwrap();
    first.abort();
    let _ = first.await;
    let partial = redis
        .cli(&["--scan", "--pattern", "n:*:s:*"])
        .lines()
        .count();
    assert!(
        partial < 300,
        "the first run was interrupted ({partial} streams)"
    );

    let second = migrate::run(&store, &options, |_| {}).await.unwrap();
    assert!(
        second.entries_moved >= 5 * (300 - partial as u64),
        "the second run finished the job"
    );
    for member in [0, 150, 299] {
        let key = redis.cli(&["--scan", "--pattern", &format!("n:*:s:{member}")]);
        assert_eq!(redis.cli(&["xlen", &key]), "5", "member {member}");
    }
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "n:*:s:*"])
            .lines()
            .count(),
        300
    );
    assert_eq!(
        redis.cli(&["dbsize"]).parse::<u64>().unwrap(),
        300 + 16,
        "streams and epochs only: every set emptied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_published_during_the_migration_are_all_kept_in_order() {
    let redis = RedisServer::start();
    let mut conn = connection(&redis).await;
    let t = now_ms() - 60_000;
    for member in 0..200 {
        for n in 0..3u64 {
            old_entry(&mut conn, &member.to_string(), json!({ "old": n }), t + n).await;
        }
    }
    let app = TestApp::start(&redis.url(), &[]).await;
    let mut live = app.subscribe("7", "", &[]).await;
    live.next(WAIT).await.unwrap();
    live.next(WAIT).await.unwrap();

    // Publish to every member while the migration runs.
    let publisher = app.publisher();
    let publishing = tokio::spawn(async move {
        let mut ids = Vec::new();
        for round in 0..3 {
            for member in 0..200 {
                ids.push((
                    member,
                    publisher
                        .publish(&member.to_string(), json!({ "new": round }))
                        .await,
                ));
            }
        }
        ids
    });
    let report = migrate_all(&redis, false).await;
    let published = publishing.await.unwrap();
    assert_eq!(report.entries_moved, 600);

    for member in [0, 7, 199] {
        let mut stream = app
            .subscribe(&member.to_string(), "", &[("Last-Event-ID", "0-0")])
            .await;
        let (_, got) = replay(&mut stream, &app, &member.to_string()).await;
        let contents: Vec<Value> = got.iter().map(|(_, c)| c.clone()).collect();
        assert_eq!(
            contents,
            [
                json!({"old": 0}),
                json!({"old": 1}),
                json!({"old": 2}),
                json!({"new": 0}),
                json!({"new": 1}),
                json!({"new": 2})
            ],
            "member {member}: the old history in front of the new, nothing lost"
        );
        let mine: Vec<&String> = published
            .iter()
            .filter(|(m, _)| *m == member)
            .map(|(_, id)| id)
            .collect();
        assert_eq!(
            got[3..].iter().map(|(id, _)| id).collect::<Vec<_>>(),
            mine,
            "published ids unchanged"
        );
    }
    // The live subscriber got member 7's new notifications, once each, and none of the old.
    for round in 0..3 {
        assert_eq!(
            live.next_notification(WAIT).await.json()["content"],
            json!({ "new": round })
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_reports_a_dry_run_then_moves_and_summarises() {
    let redis = RedisServer::start();
    let mut conn = connection(&redis).await;
    old_entry(&mut conn, "9", json!("hello"), now_ms() - 1_000).await;
    let _: () = conn.set("not-a-member", "x").await.unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sse-notify"))
            .env_clear()
            .env("REDIS_URL", redis.url())
            .arg("migrate-zset")
            .args(extra)
            .output()
            .unwrap()
    };
    let dry = run(&["--dry-run"]);
    assert!(dry.status.success());
    let summary = String::from_utf8(dry.stdout).unwrap();
    assert!(
        summary.starts_with("[dry run] migrate-zset: would move 1 entries of 1 keys"),
        "{summary}"
    );
    assert!(
        summary.contains("keys skipped:           1 (non-numeric key)"),
        "{summary}"
    );

    let real = run(&["--delete-source", "--batch", "10"]);
    assert!(real.status.success());
    let summary = String::from_utf8(real.stdout).unwrap();
    assert!(
        summary.starts_with("migrate-zset: moved 1 entries of 1 keys"),
        "{summary}"
    );
    assert_eq!(
        redis.cli(&["exists", "9"]),
        "0",
        "--delete-source emptied the set"
    );

    let unreachable = std::process::Command::new(env!("CARGO_BIN_EXE_sse-notify"))
        .env_clear()
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .arg("migrate-zset")
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach redis"));
}
