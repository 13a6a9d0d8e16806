//! Wiring and the order of shutdown; no business rule lives here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::ingest;
use crate::live::{self, Hub};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::keys::PARTITIONS;

/// How long open connections and background tasks get to finish once draining starts.
const GRACE: Duration = Duration::from_secs(5);

/// Serves until `shutdown` is cancelled, then drains: streams get a randomized `retry:` and close,
/// the listener stops, background tasks stop.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let storage = &config.storage;
    let store = Store::new(
        &storage.redis,
        storage.retention,
        storage.max_per_member,
        storage.publish_wait,
    )
    .context("invalid REDIS_URL")?;
    store.measure_publish_calls(
        metrics.publish_call_sizes.clone(),
        metrics.publish_calls_split.clone(),
    );
    let hub = Hub::new(metrics.clone(), config.limits.max_streams_per_member);

    let tasks = TaskTracker::new();
    // A standalone Redis serves every partition: one reader, one blocking XREAD over all of them.
    // A cluster refuses an XREAD across slots: one reader (one connection) per partition, each to
    // the master that serves it.
    let reader_partitions: Vec<Vec<usize>> = if store.is_cluster() {
        (0..PARTITIONS).map(|p| vec![p]).collect()
    } else {
        vec![(0..PARTITIONS).collect()]
    };
    tracing::info!(redis = %storage.redis, readers = reader_partitions.len(), "notification store");
    if storage.redis.skips_verification() {
        tracing::warn!(redis = %storage.redis, "REDIS_URL ends in #insecure: the server's certificate is not verified, so anyone on the network path can pose as Redis; give its CA in REDIS_TLS_CA_FILE instead");
    }
    for partitions in reader_partitions {
        tasks.spawn(live::run_reader(
            store.clone(),
            hub.clone(),
            metrics.clone(),
            partitions,
            shutdown.clone(),
        ));
    }

    if let Some(kafka) = config.kafka.clone() {
        tasks.spawn(ingest::kafka::run(
            kafka,
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }

    let state = AppState {
        config: Arc::new(config),
        store,
        live: hub,
        metrics,
        shutdown: shutdown.clone(),
    };
    let router = http::router(state.clone());
    let server = http::serve(listener, router, state, shutdown.clone());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        () = server => {}
        () = deadline => tracing::warn!(grace = ?GRACE, "connections still open; closing them"),
    }
    shutdown.cancel(); // also when the server stopped by itself
    tasks.close();
    if tokio::time::timeout(GRACE, tasks.wait()).await.is_err() {
        tracing::warn!(grace = ?GRACE, "background tasks did not stop in time");
    }
    Ok(())
}
