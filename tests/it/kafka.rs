//! Kafka ingestion against a real Kafka-protocol broker (tansu): delivery, dead letters,
//! redelivery after a crash, Redis outages, and committing on SIGTERM.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::kafka::{
    bootstrap, committed, consume, create_topics, produce, producer, unique,
};
use crate::support::process::ServiceProcess;
use crate::support::{RedisServer, TestApp, WAIT, eventually, metric_at};

/// Topic, DLQ topic and group, fresh for one test, and the flags that point an instance at them.
struct Setup {
    topic: String,
    dlq: String,
    group: String,
}

impl Setup {
    async fn new(partitions: i32) -> Self {
        let setup = Self {
            topic: unique("notes"),
            dlq: unique("dlq"),
            group: unique("group"),
        };
        create_topics(&[&setup.topic, &setup.dlq], partitions).await;
        setup
    }

    fn env<'a>(&'a self, redis_url: &'a str, options: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("REDIS_URL", redis_url),
            ("AUTH_MODE", "gateway"),
            ("KAFKA_BROKERS", bootstrap()),
            ("KAFKA_TOPICS", &self.topic),
            ("KAFKA_GROUP_ID", &self.group),
            ("KAFKA_DLQ_TOPIC", &self.dlq),
            ("KAFKA_OPTIONS", options),
        ]
    }

    fn flags<'a>(&'a self, options: &'a str) -> Vec<&'a str> {
        vec![
            "--kafka-brokers",
            bootstrap(),
            "--kafka-topics",
            &self.topic,
            "--kafka-group-id",
            &self.group,
            "--kafka-dlq-topic",
            &self.dlq,
            "--kafka-options",
            options,
        ]
    }
}

/// Session timeout short enough that a replacement consumer gets the partitions quickly.
const FAST_GROUP: &str = "session.timeout.ms=6000";
/// No periodic commit: only a rebalance or the shutdown commit can commit.
const NO_PERIODIC_COMMIT: &str = "session.timeout.ms=6000,auto.commit.interval.ms=600000";

/// The ids and contents in a member's history (gateway auth: member by query).
async fn history(url: &str, member: &str) -> Vec<Value> {
    let body: Value = reqwest::get(format!("{url}/notifications?member_id={member}&limit=1000"))
        .await
        .expect("the history request is answered")
        .json()
        .await
        .expect("history is JSON");
    body["notifications"]
        .as_array()
        .expect("a notifications array")
        .clone()
}

async fn wait_for_history(url: &str, member: &str, count: usize) -> Vec<Value> {
    eventually(
        &format!("{count} notifications stored for {member}"),
        || async {
            let items = history(url, member).await;
            (items.len() >= count).then_some(items)
        },
    )
    .await
}

/// A metric of the instance at `url`; 0 before it is first recorded.
async fn metric(url: &str, name: &str) -> f64 {
    metric_at(&reqwest::Client::new(), url, name)
        .await
        .unwrap_or(0.0)
}

/// Waits (bounded) until a metric reaches `value`.
async fn wait_for_metric(url: &str, name: &str, value: f64) {
    eventually(&format!("{name} to reach {value}"), || async {
        (metric(url, name).await >= value).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_subscribers_and_a_poison_record_goes_to_the_dlq_without_stalling() {
    let redis = RedisServer::start();
    let setup = Setup::new(3).await;
    let app = TestApp::start(&redis.url(), &setup.flags(FAST_GROUP)).await;
    let mut stream = app.subscribe("k1", "", &[]).await;
    stream.next(WAIT).await.unwrap();
    stream.next(WAIT).await.unwrap(); // connected

    let kafka = producer();
    produce(
        &kafka,
        &setup.topic,
        "k1",
        br#"{"type":"follow","content":{"n":1}}"#,
        &[],
    )
    .await;
    produce(&kafka, &setup.topic, "k1", b"not json", &[("trace", "abc")]).await;
    produce(
        &kafka,
        &setup.topic,
        "",
        br#"{"member_id":"k1","content":{"n":2}}"#,
        &[],
    )
    .await;

    // Different keys may land on different partitions: compare without order.
    let mut got = Vec::new();
    for _ in 0..2 {
        let event = stream
            .next_notification(Duration::from_secs(30))
            .await
            .json();
        got.push((event["type"].clone(), event["content"].clone()));
    }
    got.sort_by_key(|(_, content)| content["n"].as_i64());
    assert_eq!(
        got,
        [
            (json!("follow"), json!({"n": 1})),
            (json!("notification"), json!({"n": 2}))
        ]
    );

    let dead = consume(&setup.dlq, 1).await;
    let (key, value, headers) = &dead[0];
    assert_eq!(
        (key.as_slice(), value.as_slice()),
        (&b"k1"[..], &b"not json"[..])
    );
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("trace").as_deref(),
        Some("abc"),
        "original headers kept"
    );
    assert!(
        header("x-dlq-reason")
            .unwrap()
            .contains("not a JSON object")
    );
    assert!(
        header("x-dlq-source")
            .unwrap()
            .starts_with(&format!("{}/", setup.topic))
    );
    wait_for_metric(
        &app.url,
        "sse_notify_kafka_records_dead_lettered_total",
        1.0,
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_storing_redelivers_and_no_duplicate_reaches_the_subscriber() {
    let redis = RedisServer::start();
    let setup = Setup::new(1).await;
    let redis_url = redis.url();
    let first = ServiceProcess::start(&setup.env(&redis_url, NO_PERIODIC_COMMIT)).await;
    let watcher = TestApp::start(&redis_url, &["--auth-mode", "jwt"]).await; // a second instance, no Kafka
    let mut stream = watcher.subscribe("m", "", &[]).await;
    stream.next(WAIT).await.unwrap();
    stream.next(WAIT).await.unwrap();

    let kafka = producer();
    for n in 0..5 {
        produce(
            &kafka,
            &setup.topic,
            "m",
            json!({"content": n}).to_string().as_bytes(),
            &[],
        )
        .await;
    }
    wait_for_history(&first.url, "m", 5).await;
    first.kill(); // stored, offsets never committed
    assert_eq!(committed(&setup.group, &setup.topic), None);

    let second = ServiceProcess::start(&setup.env(&redis_url, FAST_GROUP)).await;
    produce(
        &kafka,
        &setup.topic,
        "m",
        json!({"content": 5}).to_string().as_bytes(),
        &[],
    )
    .await;
    let items = wait_for_history(&second.url, "m", 6).await;
    assert_eq!(
        items
            .iter()
            .map(|i| i["content"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(
        metric(&second.url, "sse_notify_kafka_duplicates_suppressed_total").await,
        5.0,
        "all 5 were redelivered"
    );

    let mut contents = Vec::new();
    for _ in 0..6 {
        contents.push(
            stream.next_notification(WAIT).await.json()["content"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(contents, [0, 1, 2, 3, 4, 5]);
    // The redeliveries were all handled before record 5 (one partition, in order); a sentinel
    // published now shows that none of them was delivered late either.
    let sentinel = watcher.publish("m", json!("sentinel")).await;
    let late = stream.ids_until(&sentinel, WAIT).await;
    assert!(
        late.is_empty(),
        "a duplicate reached the subscriber: {late:?}"
    );
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_pauses_ingestion_and_nothing_is_lost_once_it_is_back() {
    let mut redis = RedisServer::start();
    let setup = Setup::new(1).await;
    let mut flags = setup.flags(FAST_GROUP);
    flags.extend(["--auth-mode", "gateway"]); // history by member_id, as in the other tests here
    let app = TestApp::start(&redis.url(), &flags).await;
    let kafka = producer();
    produce(&kafka, &setup.topic, "r", br#"{"content":"before"}"#, &[]).await;
    wait_for_metric(&app.url, "sse_notify_kafka_records_stored_total", 1.0).await;

    redis.stop();
    for n in 0..3 {
        produce(
            &kafka,
            &setup.topic,
            "r",
            json!({"content": n}).to_string().as_bytes(),
            &[],
        )
        .await;
    }
    wait_for_metric(&app.url, "sse_notify_kafka_paused", 1.0).await;
    redis.restart(); // empty: what was stored before is gone, what waited is not
    app.wait_ready().await;
    let items = wait_for_history(&app.url, "r", 3).await;
    assert_eq!(
        items
            .iter()
            .map(|i| i["content"].clone())
            .collect::<Vec<_>>(),
        [json!(0), json!(1), json!(2)]
    );
    assert_eq!(
        metric(&app.url, "sse_notify_kafka_records_dead_lettered_total").await,
        0.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_the_stored_offsets() {
    let redis = RedisServer::start();
    let setup = Setup::new(1).await;
    let redis_url = redis.url();
    let service = ServiceProcess::start(&setup.env(&redis_url, NO_PERIODIC_COMMIT)).await;
    let kafka = producer();
    for n in 0..4 {
        produce(
            &kafka,
            &setup.topic,
            "s",
            json!({"content": n}).to_string().as_bytes(),
            &[],
        )
        .await;
    }
    wait_for_history(&service.url, "s", 4).await;
    assert_eq!(
        committed(&setup.group, &setup.topic),
        None,
        "nothing committed before the signal"
    );
    assert_eq!(service.terminate().await.code(), Some(0));
    assert_eq!(
        committed(&setup.group, &setup.topic),
        Some(4),
        "the next offset to read is committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_for_members_on_every_cluster_master_are_stored_in_order_once() {
    let cluster = crate::support::cluster::RedisCluster::start();
    let setup = Setup::new(3).await;
    let mut flags = setup.flags(FAST_GROUP);
    flags.extend(["--auth-mode", "gateway"]);
    let app = TestApp::start(&cluster.url(), &flags).await;
    app.wait_ready().await;
    // 5 records each, keyed by member, so each member's records share a Kafka partition and keep
    // their order.
    // Members chosen so that each of the three masters holds eight of them.
    let mut per_master: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    for i in 0.. {
        let name = format!("kc{i}");
        let member = name.parse().expect("a valid member id");
        let master = cluster.master_of(&sse_notify::store::keys::stream(&member));
        let on_master = per_master.entry(master).or_default();
        if on_master.len() < 8 {
            on_master.push(name);
        }
        if per_master.len() == 3 && per_master.values().all(|m| m.len() == 8) {
            break;
        }
        assert!(i < 10_000, "no member maps to some master: {per_master:?}");
    }
    let members: Vec<String> = per_master.into_values().flatten().collect();
    let kafka = producer();
    for n in 0..5 {
        for member in &members {
            let value = json!({"type": "t", "content": {"n": n}}).to_string();
            produce(&kafka, &setup.topic, member, value.as_bytes(), &[]).await;
        }
    }
    for member in &members {
        let items = wait_for_history(&app.url, member, 5).await;
        let ns: Vec<i64> = items
            .iter()
            .map(|item| item["content"]["n"].as_i64().expect("n"))
            .collect();
        assert_eq!(ns, [0, 1, 2, 3, 4], "{member}: every record once, in order");
    }
    wait_for_metric(&app.url, "sse_notify_kafka_records_stored_total", 120.0).await;
    app.stop().await;
}
