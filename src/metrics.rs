//! Metric handles. Modules record through a cheap clone of [`Metrics`]; `GET /metrics` renders
//! them in the Prometheus text format. No globals: tests run many instances in one process.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label, `op`: which kind of Redis work failed.
pub type OpLabel = [(&'static str, &'static str); 1];

/// A handle on the instance's metrics; cloning it is one reference count (every request and
/// every open stream holds one).
#[derive(Clone)]
pub struct Metrics(Arc<Handles>);

pub struct Handles {
    registry: Registry,
    pub open_streams: Gauge,
    pub open_connections: Gauge,
    pub published: Counter,
    pub delivered: Counter,
    pub read_positions_moved: Counter,
    pub read_events_delivered: Counter,
    pub replayed: Counter,
    pub slow_client_disconnects: Counter,
    pub live_gaps: Counter,
    pub replay_gaps: Counter,
    pub tokens_without_exp: Counter,
    pub member_cap_closes: Counter,
    pub streams_refused: Counter,
    pub connections_refused: Counter,
    pub idle_connections_evicted: Counter,
    pub data_losses: Counter,
    pub publish_outcome_unknown: Counter,
    pub store_unavailable_subscribes: Counter,
    pub redis_errors: Family<OpLabel, Counter>,
    pub publish_seconds: Histogram,
    pub publish_call_sizes: Histogram,
    pub publish_calls_split: Counter,
    pub delivery_seconds: Histogram,
    pub kafka_consumed: Counter,
    pub kafka_stored: Counter,
    pub kafka_duplicates: Counter,
    pub kafka_dead_lettered: Counter,
    pub kafka_errors: Counter,
    pub kafka_paused: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sse_notify");
        let metrics = Handles {
            registry: Registry::default(),
            open_streams: Gauge::default(),
            open_connections: Gauge::default(),
            published: Counter::default(),
            delivered: Counter::default(),
            read_positions_moved: Counter::default(),
            read_events_delivered: Counter::default(),
            replayed: Counter::default(),
            slow_client_disconnects: Counter::default(),
            live_gaps: Counter::default(),
            replay_gaps: Counter::default(),
            tokens_without_exp: Counter::default(),
            member_cap_closes: Counter::default(),
            streams_refused: Counter::default(),
            connections_refused: Counter::default(),
            idle_connections_evicted: Counter::default(),
            data_losses: Counter::default(),
            publish_outcome_unknown: Counter::default(),
            store_unavailable_subscribes: Counter::default(),
            redis_errors: Family::default(),
            // 100 µs .. ~3.3 s
            publish_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            publish_call_sizes: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            publish_calls_split: Counter::default(),
            delivery_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            kafka_consumed: Counter::default(),
            kafka_stored: Counter::default(),
            kafka_duplicates: Counter::default(),
            kafka_dead_lettered: Counter::default(),
            kafka_errors: Counter::default(),
            kafka_paused: Gauge::default(),
        };
        registry.register(
            "open_streams",
            "SSE streams currently open",
            metrics.open_streams.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections currently open (at most MAX_CONNECTIONS)",
            metrics.open_connections.clone(),
        );
        registry.register(
            "notifications_published",
            "Notifications appended (one per member)",
            metrics.published.clone(),
        );
        registry.register(
            "notifications_delivered",
            "Live notifications handed to open streams",
            metrics.delivered.clone(),
        );
        registry.register(
            "read_positions_moved",
            "Members' read positions moved forward (mark read)",
            metrics.read_positions_moved.clone(),
        );
        registry.register(
            "read_events_delivered",
            "event: read frames handed to open streams",
            metrics.read_events_delivered.clone(),
        );
        registry.register(
            "notifications_replayed",
            "Notifications replayed from member streams",
            metrics.replayed.clone(),
        );
        registry.register(
            "slow_client_disconnects",
            "Streams closed because the client did not keep up with its send buffer",
            metrics.slow_client_disconnects.clone(),
        );
        registry.register(
            "live_gaps",
            "Gaps seen in a fan-out stream (subscribers sent back to resume by id)",
            metrics.live_gaps.clone(),
        );
        registry.register(
            "replay_gaps",
            "Replays ended because entries were trimmed or expired while being sent (the client resumes and learns recovered: false)",
            metrics.replay_gaps.clone(),
        );
        registry.register(
            "member_cap_closes",
            "A member's oldest stream closed because it opened more than MAX_STREAMS_PER_MEMBER",
            metrics.member_cap_closes.clone(),
        );
        registry.register(
            "streams_refused",
            "Subscribes answered with retry-and-close because MAX_STREAMS were open",
            metrics.streams_refused.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed on accept because MAX_CONNECTIONS were open",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "idle_connections_evicted",
            "Connections that had sent no request, closed at MAX_CONNECTIONS to make room for a new one",
            metrics.idle_connections_evicted.clone(),
        );
        registry.register(
            "tokens_without_exp",
            "Member tokens accepted without an exp claim (their streams never end by expiry)",
            metrics.tokens_without_exp.clone(),
        );
        registry.register(
            "data_losses",
            "Times this instance proved that Redis lost notifications it had acknowledged (the partition's epoch moved)",
            metrics.data_losses.clone(),
        );
        registry.register(
            "publish_outcome_unknown",
            "Publishes answered 504: sent to Redis, no answer (may be stored; retry with the same Idempotency-Key)",
            metrics.publish_outcome_unknown.clone(),
        );
        registry.register(
            "store_unavailable_subscribes",
            "Subscriptions answered with retry-and-close because Redis was unavailable",
            metrics.store_unavailable_subscribes.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis commands that failed, by operation",
            metrics.redis_errors.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "Time to store a publish",
            metrics.publish_seconds.clone(),
        );
        registry.register(
            "publish_call_publishes",
            "Publishes carried by each publish script call (group commit: concurrent publishes share one)",
            metrics.publish_call_sizes.clone(),
        );
        registry.register(
            "publish_calls_split",
            "Shared publish calls refused before writing (a key of another type in Redis) and retried one publish at a time",
            metrics.publish_calls_split.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From a notification's stream id time to its dispatch to live streams",
            metrics.delivery_seconds.clone(),
        );
        registry.register(
            "kafka_records_consumed",
            "Kafka records received",
            metrics.kafka_consumed.clone(),
        );
        registry.register(
            "kafka_records_stored",
            "Kafka records stored as new notifications",
            metrics.kafka_stored.clone(),
        );
        registry.register(
            "kafka_duplicates_suppressed",
            "Kafka records already stored (redelivery), recognised by their idempotency key",
            metrics.kafka_duplicates.clone(),
        );
        registry.register(
            "kafka_records_dead_lettered",
            "Undecodable Kafka records sent to the DLQ",
            metrics.kafka_dead_lettered.clone(),
        );
        registry.register(
            "kafka_errors",
            "Kafka consumer and DLQ producer errors",
            metrics.kafka_errors.clone(),
        );
        registry.register(
            "kafka_paused",
            "1 while ingestion waits for Redis",
            metrics.kafka_paused.clone(),
        );
        // Known operations start at zero, so dashboards see each series before its first error.
        for op in [
            "publish",
            "replay",
            "history",
            "live_read",
            "ping",
            "ingest",
        ] {
            let _ = metrics.redis_errors.get_or_create(&[("op", op)]);
        }
        Self(Arc::new(Handles {
            registry,
            ..metrics
        }))
    }

    pub fn redis_error(&self, op: &'static str) {
        self.redis_errors.get_or_create(&[("op", op)]).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl std::ops::Deref for Metrics {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
