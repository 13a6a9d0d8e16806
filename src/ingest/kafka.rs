//! The Kafka consumer: records → `Store::append_batch` (the publish script, as over HTTP) → offset
//! stored; undecodable records → dead-letter topic → offset stored. At least once: an offset is
//! stored only once its record is in Redis or in the DLQ, and librdkafka commits stored offsets
//! (periodically, on rebalance, and once more on shutdown). Redelivery is harmless: each record
//! carries an idempotency key.

use std::time::Duration;

use futures_util::FutureExt as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::{decode, idempotency_key};
use crate::backoff::Backoff;
use crate::config::Kafka;
use crate::metrics::Metrics;
use crate::store::{NewNotification, Store};

/// Records taken from the consumer's queue for one pipelined round trip to Redis.
const MAX_BATCH: usize = 256;

/// Consumes until `shutdown`, then commits what was stored. Errors are logged, never fatal to the
/// service: HTTP keeps serving if Kafka is misconfigured.
pub async fn run(config: Kafka, store: Store, metrics: Metrics, shutdown: CancellationToken) {
    let (consumer, producer) = match connect(&config) {
        Ok(clients) => clients,
        Err(error) => {
            tracing::error!(%error, "kafka ingestion disabled: cannot create its clients");
            return;
        }
    };
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    if let Err(error) = consumer.subscribe(&topics) {
        tracing::error!(%error, ?topics, "kafka ingestion disabled: cannot subscribe");
        return;
    }
    tracing::info!(?topics, group = %config.group_id, "consuming kafka");
    let ingest = Ingest {
        store,
        metrics,
        producer,
        dlq_topic: config.dlq_topic,
        shutdown: shutdown.clone(),
    };

    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            received = consumer.recv() => received,
        };
        let mut batch = match first {
            Ok(message) => vec![message.detach()],
            Err(error) => {
                ingest.metrics.kafka_errors.inc();
                tracing::warn!(%error, "kafka consumer error");
                continue;
            }
        };
        // Whatever else is already fetched joins the batch, without waiting for more.
        while batch.len() < MAX_BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message.detach()),
                Some(Err(error)) => {
                    tracing::warn!(%error, "kafka consumer error");
                    break;
                }
                None => break,
            }
        }
        if !ingest.handle(&batch).await {
            break; // shutdown while waiting for Redis or the DLQ: these offsets stay unstored
        }
        for message in &batch {
            // Fails only if the partition was revoked meanwhile; its new owner gets the record again.
            if let Err(error) =
                consumer.store_offset(message.topic(), message.partition(), message.offset())
            {
                tracing::debug!(%error, topic = message.topic(), partition = message.partition(), "offset not stored");
            }
        }
    }

    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {
            tracing::info!("kafka offsets committed")
        }
        Err(error) => tracing::warn!(%error, "committing kafka offsets on shutdown failed"),
    }
}

fn connect(config: &Kafka) -> Result<(StreamConsumer, FutureProducer), KafkaError> {
    let mut common = ClientConfig::new();
    common
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "sse-notify");
    let mut consumer = common.clone();
    consumer
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    let mut producer = common;
    producer.set("acks", "all");
    for (key, value) in &config.options {
        consumer.set(key, value);
        producer.set(key, value);
    }
    Ok((consumer.create()?, producer.create()?))
}

struct Ingest {
    store: Store,
    metrics: Metrics,
    producer: FutureProducer,
    dlq_topic: String,
    shutdown: CancellationToken,
}

impl Ingest {
    /// Stores the batch's notifications and dead-letters the rest, waiting out Redis or Kafka
    /// being unavailable. Returns false when shutdown came first.
    async fn handle(&self, batch: &[OwnedMessage]) -> bool {
        self.metrics.kafka_consumed.inc_by(batch.len() as u64);
        let mut good = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for message in batch {
            let header = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "idempotency-key"))
                .and_then(|h| h.value);
            let decoded = decode(message.key(), message.payload()).and_then(|d| {
                Ok((
                    d,
                    idempotency_key(
                        header,
                        message.topic(),
                        message.partition(),
                        message.offset(),
                    )?,
                ))
            });
            match decoded {
                Ok(record) => good.push(record),
                Err(reason) => dead.push((message, reason.to_string())),
            }
        }
        let notes: Vec<NewNotification<'_>> = good
            .iter()
            .map(|(d, key)| NewNotification {
                members: std::slice::from_ref(&d.member),
                kind: &d.kind,
                content: &d.content,
                idempotency_key: Some(key),
            })
            .collect();
        if !notes.is_empty() && !self.store_all(&notes).await {
            return false;
        }
        for (message, reason) in dead {
            if !self.dead_letter(message, &reason).await {
                return false;
            }
        }
        true
    }

    async fn store_all(&self, notes: &[NewNotification<'_>]) -> bool {
        let mut backoff = Backoff::new();
        loop {
            match self.store.append_batch(notes).await {
                Ok(appended) => {
                    let repeated: usize = appended.iter().map(|a| a.repeated).sum();
                    let losses: usize = appended.iter().map(|a| a.losses_proven).sum();
                    self.metrics.data_losses.inc_by(losses as u64);
                    self.metrics
                        .kafka_stored
                        .inc_by((notes.len() - repeated) as u64);
                    self.metrics.kafka_duplicates.inc_by(repeated as u64);
                    self.metrics
                        .published
                        .inc_by((notes.len() - repeated) as u64);
                    self.metrics.kafka_paused.set(0);
                    return true;
                }
                Err(error) => {
                    // Not the records' fault: nothing is committed or dead-lettered; wait for Redis.
                    self.metrics.redis_error("ingest");
                    self.metrics.kafka_paused.set(1);
                    let retry_in = backoff.next_delay();
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        records = notes.len(),
                        ?retry_in,
                        "kafka ingestion paused: redis unavailable"
                    );
                    if !self.sleep(retry_in).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Sends a record to the DLQ with its key, value and headers, plus why and where it came from.
    async fn dead_letter(&self, message: &OwnedMessage, reason: &str) -> bool {
        let source = format!(
            "{}/{}/{}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        tracing::warn!(%source, reason, "dead-lettering an undecodable record");
        let headers = message.headers().cloned().unwrap_or_else(OwnedHeaders::new);
        let headers = headers
            .insert(Header {
                key: "x-dlq-reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "x-dlq-source",
                value: Some(&source),
            });
        let mut backoff = Backoff::new();
        loop {
            let mut record =
                FutureRecord::<[u8], [u8]>::to(&self.dlq_topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.metrics.kafka_dead_lettered.inc();
                    return true;
                }
                Err((error, _)) => {
                    self.metrics.kafka_errors.inc();
                    let retry_in = backoff.next_delay();
                    tracing::error!(%error, dlq = %self.dlq_topic, %source, ?retry_in, "dead-lettering failed; holding the partition");
                    if !self.sleep(retry_in).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(duration) => true,
        }
    }
}
