//! A live reader: follows a set of fan-out streams with blocking `XREAD` on its own connection,
//! checks each entry's predecessor to detect gaps, frames each notification once and dispatches it.
//! Reconnects with backoff (reset once it follows again) and resumes from the last id it read.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::model::StreamId;
use crate::store::{Fanned, Feed, LiveEntry, Store, StoreError};

/// How long one `XREAD` blocks: also how soon a silently dead connection is noticed.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries read per `XREAD` and stream.
const BATCH: usize = 1_000;
/// How often the reader checks that Redis still does not evict keys (`CONFIG SET` at run time).
const POLICY_CHECK: Duration = Duration::from_secs(10);

/// Follows `partitions` until `shutdown`. Never returns early: Redis being away is waited out.
pub async fn run(
    store: Store,
    hub: Hub,
    metrics: Metrics,
    partitions: Vec<usize>,
    shutdown: CancellationToken,
) {
    // Known once the first connection positioned the reader; kept across reconnects so nothing
    // appended while Redis was unreachable is skipped.
    let mut positions: Option<BTreeMap<usize, StreamId>> = None;
    let mut backoff = Backoff::new();
    loop {
        let followed = tokio::select! {
            () = shutdown.cancelled() => return,
            result = follow(&store, &hub, &metrics, &partitions, &mut positions, &mut backoff, &shutdown) => result,
        };
        hub.set_ready(&partitions, false);
        let retry_in = backoff.next_delay();
        match followed {
            Ok(()) => return, // shutdown
            Err(error) => {
                metrics.redis_error("live_read");
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    ?partitions,
                    ?retry_in,
                    "live reader lost redis"
                );
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(retry_in) => {}
        }
    }
}

async fn follow(
    store: &Store,
    hub: &Hub,
    metrics: &Metrics,
    partitions: &[usize],
    positions: &mut Option<BTreeMap<usize, StreamId>>,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    let first = partitions.first().copied().unwrap_or_default();
    let mut feed = store.feed(first, BLOCK).await?;
    check_eviction_policy(&mut feed, hub, metrics, partitions, false).await?;
    let mut policy_checked = tokio::time::Instant::now();
    for &partition in partitions {
        if feed.confirm_epoch(partition, false).await? {
            // Redis lost writes this instance saw: its streams there may have delivered them,
            // so they resume by id and are told `recovered: false`.
            metrics.data_losses.inc();
            hub.reset(partition, "redis lost notifications this instance saw");
        }
    }
    let positions = match positions {
        Some(positions) => {
            // A fan-out stream that ends before our position lost entries (a failover to a
            // replica that lagged, a restart): its subscribers resume from their member streams,
            // and reading goes on from what the stream holds now.
            for (&partition, position) in positions.iter_mut() {
                let tail = feed.tail(partition).await?;
                if tail < *position {
                    tracing::debug!(partition, %position, %tail, "fan-out stream ends before the reader's position");
                    hub.reset(partition, "the fan-out stream lost entries");
                    *position = tail;
                }
            }
            positions
        }
        None => {
            let mut tails = BTreeMap::new();
            for &partition in partitions {
                tails.insert(partition, feed.tail(partition).await?);
            }
            positions.insert(tails)
        }
    };
    hub.set_ready(partitions, true);
    backoff.reset();
    tracing::info!(?partitions, "live reader following redis");
    loop {
        let batches = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            read = feed.read(positions, BATCH) => read?,
        };
        if policy_checked.elapsed() >= POLICY_CHECK {
            check_eviction_policy(&mut feed, hub, metrics, partitions, true).await?;
            policy_checked = tokio::time::Instant::now();
        }
        for (partition, entries) in batches {
            let Some(position) = positions.get_mut(&partition) else {
                continue;
            };
            if entries.first().is_some_and(|first| first.prev != *position) {
                hub.reset(partition, "gap in the fan-out stream");
            }
            // Later gaps inside one batch cannot happen: the batch is contiguous in Redis.
            if let Some(last) = entries.last() {
                *position = last.id;
            }
            observe_latency(&entries, metrics);
            hub.dispatch(partition, entries);
        }
    }
}

/// Records whether Redis may evict keys; says so once per connection (or when it changes). When
/// it stops evicting, whatever it evicted meanwhile is gone: the epochs move (a loss), so no
/// position from before is told `recovered: true` over an evicted stream.
async fn check_eviction_policy(
    feed: &mut Feed,
    hub: &Hub,
    metrics: &Metrics,
    partitions: &[usize],
    quiet_if_unchanged: bool,
) -> Result<(), StoreError> {
    let before = partitions.iter().any(|&p| feed.store().may_evict(p));
    match feed.eviction_policy(partitions).await? {
        Some(policy) if !(quiet_if_unchanged && before) => {
            tracing::error!(maxmemory_policy = %policy, ?partitions, "redis may evict keys: an evicted member stream looks like an expired one, so replays cannot be vouched for (recovered: false) and /readyz answers 503; set maxmemory-policy noeviction");
        }
        None if before => {
            tracing::warn!(
                ?partitions,
                "redis no longer evicts keys; what it may have evicted counts as lost"
            );
            for &partition in partitions {
                feed.confirm_epoch(partition, true).await?;
                metrics.data_losses.inc();
                hub.reset(partition, "redis may have evicted notifications");
            }
        }
        _ => {}
    }
    Ok(())
}

/// Time from append (the entry id's milliseconds) to being read here.
fn observe_latency(entries: &[LiveEntry], metrics: &Metrics) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for live in entries {
        if let Fanned::Notification { entry, .. } = &live.what {
            metrics
                .delivery_seconds
                .observe(now_ms.saturating_sub(entry.id.ms) as f64 / 1000.0);
        }
    }
}
