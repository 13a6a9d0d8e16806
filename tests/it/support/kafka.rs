//! One Kafka-protocol broker (tansu, see scripts/kafka-test-broker.sh) shared by the whole test
//! binary, plus small producer/consumer helpers. Statics never drop, so the broker runs under a
//! shell that kills it when the test process's end of a pipe closes, i.e. when the tests exit.

use std::io::Read as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::redis::free_port;

struct Broker {
    bootstrap: String,
    /// Held open for the life of the process; its closing stops the broker.
    _lifeline: Option<Mutex<(Child, ChildStdin)>>,
}

static BROKER: LazyLock<Broker> = LazyLock::new(start_broker);

/// The broker's bootstrap address: `KAFKA_BOOTSTRAP` if set, else a tansu started for these tests.
pub fn bootstrap() -> &'static str {
    &BROKER.bootstrap
}

/// The launcher the scripts use too: one definition of how tansu runs.
const LAUNCHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka-test-broker.sh");

fn start_broker() -> Broker {
    if let Ok(bootstrap) = std::env::var("KAFKA_BOOTSTRAP") {
        return Broker {
            bootstrap,
            _lifeline: None,
        };
    }
    let dir = std::env::temp_dir().join(format!("sse-notify-kafka-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir for the broker");
    let port = free_port();
    // The shell runs the launcher in the background, then waits for EOF on stdin.
    let script = r#"bash "$2" run "$1" "$3" > "$1/broker.log" 2>&1 &
        pid=$!; cat > /dev/null; kill $pid; wait $pid; rm -rf "$1""#;
    let mut child = Command::new("sh")
        .args([
            "-c",
            script,
            "sh",
            dir.to_str().expect("utf-8 temp dir"),
            LAUNCHER,
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh starts");
    let stdin = child.stdin.take().expect("stdin is piped");
    let log = dir.join("broker.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = std::fs::read_to_string(&log)
            .is_ok_and(|l| l.lines().any(|line| line.starts_with("ready in")));
        if ready && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let mut text = String::new();
            let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
            panic!("tansu did not start; run scripts/kafka-test-broker.sh install. Log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker {
        bootstrap: format!("127.0.0.1:{port}"),
        _lifeline: Some(Mutex::new((child, stdin))),
    }
}

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap());
    config
}

/// A unique topic name, so tests sharing the broker never see each other's records.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn create_topics(names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create topics");
    for result in results {
        result.expect("topic created");
    }
}

pub fn producer() -> FutureProducer {
    client_config()
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
    headers: &[(&str, &str)],
) {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(owned);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("record produced");
}

/// A record as read back: key, value and headers.
pub type Record = (Vec<u8>, Vec<u8>, Vec<(String, String)>);

/// Reads `count` records of `topic` from the start (bounded wait).
pub async fn consume(topic: &str, count: usize) -> Vec<Record> {
    let consumer: StreamConsumer = client_config()
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::new();
    while records.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("records arrive within 20 s")
            .expect("record");
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push((
            message.key().unwrap_or_default().to_vec(),
            message.payload().unwrap_or_default().to_vec(),
            headers,
        ));
    }
    records
}

/// The offset `group` has committed for partition 0 of `topic`, if any.
pub fn committed(group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .expect("committed offsets");
    match committed
        .find_partition(topic, 0)
        .expect("partition 0")
        .offset()
    {
        Offset::Offset(n) => Some(n),
        _ => None,
    }
}
