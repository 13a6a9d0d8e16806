//! Live fan-out. A few readers per instance block on `XREAD` over the partitions' fan-out streams
//! (written by the publish script next to each member stream) and hand each notification, framed
//! once, to the local subscribers of its member. Reads only; never writes a notification.
//!
//! Subscribers register before they replay history, so anything appended after registration
//! arrives here and anything before it is in the replay; the subscriber drops what it already sent.
//! Whenever live delivery cannot be exact (a slow client, a gap in a fan-out stream), the stream is
//! closed instead and the client resumes from its last id, the member stream being the source of
//! truth.

mod reader;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use crate::metrics::Metrics;
use crate::model::{MemberId, StreamId, notification_frame};
use crate::store::keys::{PARTITIONS, partition_of};
use crate::store::{Fanned, LiveEntry};

pub use reader::run as run_reader;

/// Frames a subscriber may have waiting before it counts as too slow and is disconnected.
pub const SEND_BUFFER: usize = 256;

/// One frame ready to write, shared by every stream of its member: a notification (with its id,
/// which a stream drops if it sent it already), or an `event: read` (with the position it moved
/// to, which a stream drops if its own state already includes that move).
#[derive(Debug)]
pub struct Delivery {
    pub id: Option<StreamId>,
    pub read_up_to: Option<StreamId>,
    pub frame: Bytes,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    partitions: [Partition; PARTITIONS],
    next_slot: AtomicU64,
    metrics: Metrics,
    /// Streams one member may hold here; a newer one closes the oldest.
    max_per_member: usize,
}

#[derive(Default)]
struct Partition {
    /// True while this partition's reader is connected and positioned: only then is a new
    /// subscriber sure to receive everything appended after it registers.
    ready: AtomicBool,
    subscribers: Mutex<HashMap<MemberId, Vec<Slot>>>,
}

struct Slot {
    id: u64,
    mailbox: Arc<Mailbox>,
}

/// Dropped by the hub (too slow, a gap, the member's cap) or deregistered by the stream itself
/// (`Subscription::drop`): the stream ends once it has taken what was already queued.
impl Drop for Slot {
    fn drop(&mut self) {
        self.mailbox.closed.store(true, Ordering::Release);
        self.mailbox.waker.wake();
    }
}

/// What the hub has queued for one stream: at most `SEND_BUFFER` frames. A queue that allocates
/// only once something waits, instead of a channel's fixed blocks: every open stream has one,
/// and most are empty most of the time.
#[derive(Default)]
struct Mailbox {
    queue: Mutex<VecDeque<Arc<Delivery>>>,
    waker: AtomicWaker,
    closed: AtomicBool,
}

/// The stream's mailbox holds `SEND_BUFFER` frames already: it cannot keep up.
struct Full;

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Delivery>>> {
        // Single-step updates: a panic while holding it cannot leave the queue inconsistent.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Only the hub pushes, to slots it holds (a closed mailbox's slot is gone from its map).
    fn push(&self, delivery: Arc<Delivery>) -> Result<(), Full> {
        let mut queue = self.lock();
        if queue.len() >= SEND_BUFFER {
            return Err(Full);
        }
        queue.push_back(delivery);
        drop(queue);
        self.waker.wake();
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("live delivery is not connected to the store")]
pub struct NotReady;

impl Hub {
    pub fn new(metrics: Metrics, max_per_member: usize) -> Self {
        let inner = HubInner {
            partitions: Default::default(),
            next_slot: AtomicU64::new(0),
            metrics,
            max_per_member: max_per_member.max(1),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Registers a stream for `member`'s live notifications. A member at its cap loses its oldest
    /// stream (that tab reconnects and resumes, and the newest one is served): one token cannot
    /// hold the instance's descriptors, and a native EventSource is never refused for good.
    pub fn subscribe(&self, member: &MemberId) -> Result<Subscription, NotReady> {
        let partition = partition_of(member);
        if !self.inner.partitions[partition]
            .ready
            .load(Ordering::Acquire)
        {
            return Err(NotReady);
        }
        let mailbox = Arc::new(Mailbox::default());
        let id = self.inner.next_slot.fetch_add(1, Ordering::Relaxed);
        let mut subscribers = self.inner.lock(partition);
        let slots = subscribers.entry(member.clone()).or_default();
        if slots.len() >= self.inner.max_per_member {
            slots.remove(0); // its stream ends when it next looks for a live notification
            self.inner.metrics.member_cap_closes.inc();
        }
        slots.push(Slot {
            id,
            mailbox: mailbox.clone(),
        });
        drop(subscribers);
        Ok(Subscription {
            mailbox,
            hub: self.inner.clone(),
            member: member.clone(),
            partition,
            slot: id,
        })
    }

    /// Whether every partition has a connected reader.
    pub fn is_ready(&self) -> bool {
        self.inner
            .partitions
            .iter()
            .all(|p| p.ready.load(Ordering::Acquire))
    }

    fn set_ready(&self, partitions: &[usize], ready: bool) {
        for &p in partitions {
            self.inner.partitions[p]
                .ready
                .store(ready, Ordering::Release);
        }
    }

    /// Hands each notification to the streams of its member, framed once, and only if this
    /// instance has a stream for it (most instances hold few of all members). A stream whose
    /// buffer is full is dropped (counted): the client reconnects and resumes by id instead of
    /// growing our memory.
    fn dispatch(&self, partition: usize, entries: Vec<LiveEntry>) {
        let (mut delivered, mut reads) = (0, 0);
        let mut slow = 0;
        let mut subscribers = self.inner.lock(partition);
        for live in entries {
            let member = match &live.what {
                Fanned::Notification { member, .. } | Fanned::Read { member, .. } => member,
                Fanned::Lost => {
                    // Redis lost writes here: whoever streamed past them must resume by id.
                    self.inner
                        .close_all(&mut subscribers, partition, "redis lost notifications");
                    continue;
                }
                Fanned::Unreadable => continue,
            };
            let Some(slots) = subscribers.get_mut(member) else {
                continue;
            };
            let delivery = Arc::new(match &live.what {
                Fanned::Notification { entry, .. } => Delivery {
                    id: Some(entry.id),
                    read_up_to: None,
                    frame: Bytes::from(notification_frame(entry, member)),
                },
                Fanned::Read { state, .. } => Delivery {
                    id: None,
                    read_up_to: Some(state.read_up_to),
                    frame: Bytes::from(state.frame()),
                },
                Fanned::Lost | Fanned::Unreadable => continue,
            });
            let counter = if delivery.id.is_some() {
                &mut delivered
            } else {
                &mut reads
            };
            slots.retain(|slot| match slot.mailbox.push(delivery.clone()) {
                Ok(()) => {
                    *counter += 1;
                    true
                }
                Err(Full) => {
                    slow += 1;
                    false
                }
            });
            if slots.is_empty() {
                subscribers.remove(member);
            }
        }
        drop(subscribers);
        self.inner.metrics.delivered.inc_by(delivered);
        self.inner.metrics.read_events_delivered.inc_by(reads);
        if slow > 0 {
            self.inner.metrics.slow_client_disconnects.inc_by(slow);
            tracing::info!(
                partition,
                streams = slow,
                "closed streams that could not keep up"
            );
        }
    }

    /// Closes every stream of a partition: live delivery there can no longer be exact (`why`).
    /// Clients reconnect and resume from their member stream.
    fn reset(&self, partition: usize, why: &'static str) {
        let mut subscribers = self.inner.lock(partition);
        self.inner.close_all(&mut subscribers, partition, why);
    }
}

impl HubInner {
    fn close_all(
        &self,
        subscribers: &mut HashMap<MemberId, Vec<Slot>>,
        partition: usize,
        why: &'static str,
    ) {
        let streams: usize = std::mem::take(subscribers).values().map(Vec::len).sum();
        self.metrics.live_gaps.inc();
        if streams > 0 {
            tracing::warn!(
                partition,
                streams,
                why,
                "closing the partition's streams so they resume by id"
            );
        }
    }

    fn lock(&self, partition: usize) -> MutexGuard<'_, HashMap<MemberId, Vec<Slot>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single-step updates).
        self.partitions[partition]
            .subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A registered stream. Deregisters itself when dropped.
pub struct Subscription {
    mailbox: Arc<Mailbox>,
    hub: Arc<HubInner>,
    member: MemberId,
    partition: usize,
    slot: u64,
}

impl Subscription {
    /// The next live delivery; `None` once the hub dropped this stream (too slow, or a gap).
    pub async fn recv(&mut self) -> Option<Arc<Delivery>> {
        let mailbox = &self.mailbox;
        std::future::poll_fn(|cx| {
            let mut registered = false;
            loop {
                if let Some(delivery) = mailbox.lock().pop_front() {
                    return Poll::Ready(Some(delivery));
                }
                if mailbox.closed.load(Ordering::Acquire) {
                    // Closing happens after the last push: nothing can be queued behind it.
                    return Poll::Ready(mailbox.lock().pop_front());
                }
                if registered {
                    return Poll::Pending;
                }
                // Registered, then looked again: a push in between is not missed.
                mailbox.waker.register(cx.waker());
                registered = true;
            }
        })
        .await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = self.hub.lock(self.partition);
        if let Some(slots) = subscribers.get_mut(&self.member) {
            slots.retain(|slot| slot.id != self.slot);
            if slots.is_empty() {
                subscribers.remove(&self.member);
            }
        }
    }
}
