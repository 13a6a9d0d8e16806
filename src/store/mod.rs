//! `Store`: the only code that talks to Redis. Writes go through the Lua scripts of
//! `migrations-lua/`; reads are plain stream commands. Knows nothing of HTTP or SSE.
//!
//! Commands share one multiplexed connection per Redis server (concurrent requests are pipelined
//! on it; see `topology`). Live readers block, so each gets a connection of its own through
//! [`Store::feed`] (`feed`); replays, whose replies are large, read on connections of their own
//! too, one per read turn at most, and on a standalone Redis each group-commit slot writes its
//! publishes on one of its own (`wire`, `group`): the instance's Redis connection count is
//! bounded, whatever the number of open streams.
//!
//! On a Redis Cluster every script and pipeline stays inside one partition (one hash slot): a
//! publish to members of several partitions is one script call per partition, run concurrently.

mod feed;
mod group;
pub mod keys;
pub mod legacy;
mod scripts;
mod target;
mod topology;
mod wire;

pub use feed::{Fanned, Feed, LiveEntry};
pub use target::{PublishWait, RedisServers, RedisTarget, RedisTls, TargetError};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::Value;
use tokio::sync::Semaphore;

use crate::model::{Entry, IdempotencyKey, Kind, MemberId, ReadState, StreamId};
use crate::recovery::Snapshot;
use topology::{Commands, Redis};

/// Approximate length each fan-out stream is trimmed to. A reader that falls further behind sees
/// a gap and hands its subscribers back to their member streams.
const FANOUT_MAXLEN: u64 = 10_000;
/// How long a command may wait for its answer before the store is reported unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `PUBLISH_WAIT_TIMEOUT_MS`: a call with its `WAIT` (at most 2 + 18 s) after the
/// group commit's queue (at most 5 s) still answers within the request's 30 s deadline.
pub const MAX_PUBLISH_WAIT: Duration = Duration::from_secs(18);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(&'static str),
    #[error("stored, but only {acked} of {wanted} replicas confirmed it in time")]
    NotReplicated { acked: i64, wanted: u32 },
    /// The failure of a script call that carried this publish with others (group commit).
    #[error(transparent)]
    Shared(Arc<StoreError>),
    /// The group commit ended without answering (it panicked): the call may have been sent.
    #[error("the publish was abandoned without an answer")]
    Abandoned,
    /// The publish was not sent in time: it waited too long for a script call (Redis is far
    /// slower than the load), or its call's deadline passed before it could go out. Nothing was
    /// stored.
    #[error("redis is too slow: the publish was not sent in time")]
    Busy,
    /// A command on one of the instance's own connections (`wire`) failed.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// No connection of the instance's own could be opened: nothing was sent.
    #[error("redis could not be reached")]
    Unreached(#[source] wire::WireError),
    /// A publish call was not answered by its deadline (group commit): it may have been sent,
    /// and applied.
    #[error("redis did not answer the publish call in time")]
    Late,
}

impl StoreError {
    /// Whether a write may have been applied although it failed: it was sent and no answer came
    /// back (a timeout, a connection lost in flight), or it was stored without the replicas asked
    /// for. Anything else (Redis refused the connection, or answered with an error) wrote nothing.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Redis(error) => {
                error.is_timeout()
                    || (error.is_connection_dropped() && !error.is_connection_refusal())
            }
            Self::Reply(_) | Self::Busy | Self::Unreached(_) => false,
            Self::Wire(error) => error.outcome_unknown(),
            Self::NotReplicated { .. } | Self::Abandoned | Self::Late => true,
            Self::Shared(error) => error.outcome_unknown(),
        }
    }

    /// Whether `publish.lua` refused the call before writing anything (a key of another type):
    /// then each publish of a shared call can be retried alone.
    fn refused_before_writing(&self) -> bool {
        const REFUSED: &str = "nothing was stored";
        match self {
            Self::Redis(error) => error.to_string().contains(REFUSED),
            Self::Wire(wire::WireError::Server(message)) => message.contains(REFUSED),
            _ => false,
        }
    }
}

/// A notification to append to one or more member streams.
#[derive(Debug)]
pub struct NewNotification<'a> {
    pub members: &'a [MemberId],
    pub kind: &'a Kind,
    /// Compact JSON text.
    pub content: &'a str,
    pub idempotency_key: Option<&'a IdempotencyKey>,
}

/// What a publish stored: one id per member, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub ids: Vec<StreamId>,
    /// False when every id came from an earlier publish with the same idempotency key.
    pub created: bool,
    /// How many members' ids came from an earlier publish (duplicates suppressed).
    pub repeated: usize,
    /// Partitions in which this publish proved that Redis had lost writes the instance saw.
    pub losses_proven: usize,
}

impl Appended {
    fn empty(members: usize) -> Self {
        Self {
            ids: vec![StreamId::ZERO; members],
            created: false,
            repeated: 0,
            losses_proven: 0,
        }
    }
}

/// One publish's share of a `publish.lua` call (see [`Store::publish_part`]).
struct PublishPart {
    keys: Vec<String>,
    /// The publish's own arguments: member count, idempotency flag, type, content.
    args: Vec<String>,
    /// Each member, and its partition.
    members: Vec<(String, usize)>,
    /// Per member, its partition and what the instance had seen of it when the call was made
    /// (set by [`Store::publish_args`]).
    seen: Vec<(usize, StreamId)>,
}

impl PublishPart {
    /// What the part adds to a call, roughly: its content, its keys and its members.
    fn bytes(&self) -> usize {
        let members: usize = self
            .members
            .iter()
            .map(|(member, _)| member.len() + 24)
            .sum();
        self.args
            .iter()
            .chain(&self.keys)
            .map(String::len)
            .sum::<usize>()
            + members
    }
}

/// The first page of a replay, read in one atomic step with what `recovered` needs.
#[derive(Debug)]
pub struct ReplayHead {
    pub snapshot: Snapshot,
    pub entries: Vec<Entry>,
    /// This read proved that Redis lost writes this instance had seen, and moved the epoch.
    pub lost: bool,
    /// The member's read state, counted at the resume position.
    pub read: ReadState,
}

/// Where `POST /notifications/read` moves a read position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadUpTo {
    Id(StreamId),
    /// The member's newest notification.
    All,
}

/// What a mark-read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    pub state: ReadState,
    /// The position moved (and every open stream of the member is told).
    pub moved: bool,
    /// This call proved that Redis lost writes this instance had seen.
    pub loss_proven: bool,
}

/// Replay and history reads in flight at once. A reconnect storm (every browser of a restarted
/// instance at once) then queues here in order instead of piling thousands of pipelines onto the
/// command connection, where the late ones would time out and be told to retry.
const CONCURRENT_READS: usize = 64;

/// Replay connections kept idle between reads: enough for steady reconnects; a storm's extra
/// ones (up to `CONCURRENT_READS`) close when it is over.
const KEPT_WIRES: usize = 8;

/// The only door to Redis; a cheap handle (every request and open stream holds one).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    /// With `publish_wait`, where the writes that end in `WAIT` outside the group commit's own
    /// connections go (a cluster, TLS, Kafka batches): connections whose response timeout covers
    /// `WAIT`'s, so a replica that takes its time is neither a timeout nor a replaced command
    /// connection. Connected on first use.
    waiting: Option<Redis>,
    reads: Semaphore,
    retention: Duration,
    max_per_member: u64,
    publish_wait: Option<PublishWait>,
    /// Per partition, the newest fan-out id this instance has seen (acknowledged to it or read
    /// by its live reader): if the fan-out stream ever ends before it, Redis lost writes.
    seen: [Mutex<StreamId>; keys::PARTITIONS],
    /// Per partition, whether its Redis may evict keys (`maxmemory-policy` other than
    /// `noeviction`): an evicted member stream would look like one that expired, so no replay
    /// there can be vouched for.
    evicting: [AtomicBool; keys::PARTITIONS],
    /// Concurrent publishes share script calls (standalone Redis; started on first use).
    group: group::GroupCommit,
    /// Where replay reads go on connections of their own, decoded in place (`wire`): a
    /// standalone Redis over plain TCP; `None` otherwise (they take the redis crate's).
    wire_to: Option<redis::ConnectionInfo>,
    /// Those connections, idle (at most `KEPT_WIRES`). Only reads holding a `reads` turn use
    /// them, so there are at most `CONCURRENT_READS` at once.
    wires: Mutex<Vec<wire::Wire>>,
    /// A replay found `replay.lua` on the standalone Redis (which may have forgotten it since).
    replay_held: AtomicBool,
}

impl Store {
    /// Prepares the store without connecting: the service starts, and reports not ready, while
    /// Redis is down.
    pub fn new(
        target: &RedisTarget,
        retention: Duration,
        max_per_member: u64,
        publish_wait: Option<PublishWait>,
    ) -> Result<Self, StoreError> {
        let redis = Redis::open(target, RESPONSE_TIMEOUT)?;
        let waiting = publish_wait
            .map(|wait| Redis::open(target, RESPONSE_TIMEOUT + wait.timeout))
            .transpose()?;
        let wire_to = redis
            .standalone_info()
            .filter(|info| matches!(info.addr(), redis::ConnectionAddr::Tcp(..)))
            .cloned();
        Ok(Self {
            inner: Arc::new(Inner {
                redis,
                waiting,
                reads: Semaphore::new(CONCURRENT_READS),
                retention,
                max_per_member,
                publish_wait,
                seen: Default::default(),
                evicting: Default::default(),
                group: group::GroupCommit::default(),
                wire_to,
                wires: Mutex::new(Vec::new()),
                replay_held: AtomicBool::new(false),
            }),
        })
    }

    /// Whether the Redis serving `partition` may evict keys (as last checked by its reader).
    pub fn may_evict(&self, partition: usize) -> bool {
        self.inner.evicting[partition].load(Ordering::Relaxed)
    }

    /// Whether any partition's Redis may evict keys.
    pub fn any_may_evict(&self) -> bool {
        (0..keys::PARTITIONS).any(|p| self.may_evict(p))
    }

    /// The newest fan-out id of `partition` this instance has seen.
    pub fn seen(&self, partition: usize) -> StreamId {
        *self.inner.seen[partition]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn see(&self, partition: usize, id: StreamId) {
        let mut seen = self.inner.seen[partition]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *seen = (*seen).max(id);
    }

    /// After a proven loss moved the epoch: what was seen beyond `tail` is gone, so it no longer
    /// counts (unless something newer was seen meanwhile); otherwise every read would move the
    /// epoch again until the stream grew past the lost ids.
    fn forget_lost(&self, partition: usize, was: StreamId, tail: StreamId) {
        let mut seen = self.inner.seen[partition]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *seen <= was {
            *seen = tail;
        }
    }

    /// Whether Redis is a cluster: then each partition is read by a reader of its own.
    pub fn is_cluster(&self) -> bool {
        self.inner.redis.is_cluster()
    }

    async fn commands(&self) -> Result<Commands, StoreError> {
        self.inner.redis.commands().await
    }

    pub fn retention(&self) -> Duration {
        self.inner.retention
    }

    /// The start of the retention window now, in ms since the epoch (this instance's clock):
    /// entries before it are expired even before Redis trims them. Replay, history and
    /// `migrate-zset` all ask here, so they agree on what is retained.
    pub fn retention_cutoff_ms(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(now.saturating_sub(self.inner.retention).as_millis()).unwrap_or(u64::MAX)
    }

    /// Every master answers (a cluster connection asks each of them).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.commands().await?)
            .await?;
        Ok(())
    }

    /// Appends one notification to each member's stream and its partition's fan-out stream
    /// (`publish.lua`). On a standalone Redis, one script call, all members or none, shared with
    /// the publishes made at the same moment (group commit: fewer, larger calls under load, none
    /// delayed when alone). A cluster call per partition, as [`Store::append_batch`].
    pub async fn append(&self, note: &NewNotification<'_>) -> Result<Appended, StoreError> {
        if self.is_cluster() {
            let mut appended = self.append_batch(std::slice::from_ref(note)).await?;
            return appended
                .pop()
                .ok_or(StoreError::Reply("publish pipeline returned nothing"));
        }
        let members: Vec<&MemberId> = note.members.iter().collect();
        let written = self.commit(self.publish_part(note, &members)).await?;
        let mut out = Appended::empty(note.members.len());
        take_ids(&mut out, written, 0..note.members.len());
        Ok(out)
    }

    /// Appends several notifications in one pipelined round trip, applied in order (Redis runs a
    /// connection's commands in sequence), so records of one member keep their order.
    pub async fn append_batch(
        &self,
        notes: &[NewNotification<'_>],
    ) -> Result<Vec<Appended>, StoreError> {
        // Standalone: one script call per notification, so a publish to many members is all or
        // nothing. Cluster: a script must stay in one slot, so one call per partition the members
        // fall in (atomic per partition; a retry with the same idempotency key completes a
        // partial one).
        let mut calls = Vec::new();
        let mut covers = Vec::new(); // per call: (note, indexes of its members, what was seen)
        for (n, note) in notes.iter().enumerate() {
            let groups: Vec<(usize, Vec<usize>)> = if self.is_cluster() {
                let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
                for (m, member) in note.members.iter().enumerate() {
                    groups
                        .entry(keys::partition_of(member))
                        .or_default()
                        .push(m);
                }
                groups.into_iter().collect()
            } else {
                vec![(0, (0..note.members.len()).collect())]
            };
            for (partition, indexes) in groups {
                let members: Vec<&MemberId> = indexes.iter().map(|&m| &note.members[m]).collect();
                let mut part = self.publish_part(note, &members);
                calls.push((
                    partition,
                    self.publish_call(std::slice::from_mut(&mut part)),
                ));
                covers.push((n, indexes, part.seen));
            }
        }
        let replies = self
            .run_partitioned(calls, &scripts::PUBLISH, self.inner.publish_wait)
            .await?;
        let mut out: Vec<Appended> = notes
            .iter()
            .map(|note| Appended::empty(note.members.len()))
            .collect();
        for ((n, indexes, seen), reply) in covers.into_iter().zip(replies) {
            let written = appended(reply, &seen)?;
            self.remember(&written);
            take_ids(&mut out[n], written, indexes);
        }
        Ok(out)
    }

    /// What the instance must remember of a call's writes, as soon as it is answered (even if the
    /// publisher has gone): the fan-out ids it wrote, and the losses it proved.
    fn remember(&self, written: &ScriptAppended) {
        for one in &written.members {
            if let Some(marker) = one.lost_marker {
                self.forget_lost(one.partition, one.seen_before, marker);
                tracing::warn!(partition = one.partition, seen = %one.seen_before, %marker, "redis lost notifications this instance saw; clients positioned before now will be told recovered: false");
            }
            if let Some(fanout) = one.fanout {
                self.see(one.partition, fanout);
            }
        }
    }

    /// Runs script calls, each inside one partition, and returns their replies in call order. A
    /// standalone Redis gets one pipeline; a cluster one pipeline per partition (one slot each),
    /// all at once. Calls of one partition keep their order. With `wait`, each pipeline ends with
    /// `WAIT`, on the same connection, until that many replicas hold every write before it.
    async fn run_partitioned(
        &self,
        calls: Vec<(usize, redis::Cmd)>,
        script: &redis::Script,
        wait: Option<PublishWait>,
    ) -> Result<Vec<Value>, StoreError> {
        let total = calls.len();
        let mut groups: BTreeMap<usize, (redis::Pipeline, Vec<usize>)> = BTreeMap::new();
        for (i, (partition, cmd)) in calls.into_iter().enumerate() {
            let partition = if self.is_cluster() { partition } else { 0 };
            let (pipe, order) = groups.entry(partition).or_default();
            pipe.add_command(cmd);
            order.push(i);
        }
        let results = try_join_all(groups.into_values().map(|(mut pipe, order)| async move {
            if let Some(wait) = wait {
                pipe.cmd("WAIT")
                    .arg(wait.replicas)
                    .arg(u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX));
            }
            let commands = match (wait, &self.inner.waiting) {
                (Some(_), Some(waiting)) => waiting.commands().await?,
                _ => self.commands().await?,
            };
            let mut replies = self.run_scripts(&pipe, script, commands).await?;
            if let Some(wait) = wait {
                match replies.pop() {
                    Some(Value::Int(acked)) if acked >= i64::from(wait.replicas) => {}
                    Some(Value::Int(acked)) => {
                        return Err(StoreError::NotReplicated {
                            acked,
                            wanted: wait.replicas,
                        });
                    }
                    _ => return Err(StoreError::Reply("WAIT did not return a count")),
                }
            }
            if replies.len() != order.len() {
                return Err(StoreError::Reply(
                    "script pipeline returned the wrong number of replies",
                ));
            }
            Ok((order, replies))
        }))
        .await?;
        let mut replies = vec![Value::Nil; total];
        for (order, group) in results {
            for (i, reply) in order.into_iter().zip(group) {
                replies[i] = reply;
            }
        }
        Ok(replies)
    }

    /// One publish's share of a `publish.lua` call (layout: see the script's header): its keys,
    /// its own arguments and its members.
    fn publish_part(&self, note: &NewNotification<'_>, members: &[&MemberId]) -> PublishPart {
        let per_member = if note.idempotency_key.is_some() { 4 } else { 3 };
        let mut keys = Vec::with_capacity(members.len() * per_member);
        let mut with_partitions = Vec::with_capacity(members.len());
        for member in members {
            let partition = keys::partition_of(member);
            keys.extend([
                keys::stream(member),
                keys::fanout(partition).to_owned(),
                keys::epoch(partition),
            ]);
            if let Some(key) = note.idempotency_key {
                keys.push(keys::idempotency(member, key.as_str()));
            }
            with_partitions.push((member.as_str().to_owned(), partition));
        }
        let args = vec![
            members.len().to_string(),
            if note.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            }
            .to_owned(),
            note.kind.as_str().to_owned(),
            note.content.to_owned(),
        ];
        PublishPart {
            keys,
            args,
            members: with_partitions,
            seen: Vec::new(),
        }
    }

    /// `EVALSHA publish.lua` carrying `parts` (each one publish to its members).
    fn publish_call(&self, parts: &mut [PublishPart]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(scripts::PUBLISH.get_hash());
        self.publish_args(parts, |arg| {
            cmd.arg(arg);
        });
        cmd
    }

    /// Hands `push` the arguments of a `publish.lua` call carrying `parts`, from the key count
    /// on: as many as [`publish_arg_count`] says. What the instance has seen of each partition is
    /// read now, once per partition: every member there carries the newest, however long its
    /// publish waited to be sent.
    fn publish_args(&self, parts: &mut [PublishPart], mut push: impl FnMut(&[u8])) {
        let keys: usize = parts.iter().map(|part| part.keys.len()).sum();
        push(keys.to_string().as_bytes());
        for key in parts.iter().flat_map(|part| &part.keys) {
            push(key.as_bytes());
        }
        push(retention_ms(self.inner.retention).to_string().as_bytes());
        push(self.inner.max_per_member.to_string().as_bytes());
        push(FANOUT_MAXLEN.to_string().as_bytes());
        let mut seen: BTreeMap<usize, StreamId> = BTreeMap::new();
        for part in parts {
            for arg in &part.args {
                push(arg.as_bytes());
            }
            part.seen.clear();
            for (member, partition) in &part.members {
                let newest = *seen
                    .entry(*partition)
                    .or_insert_with(|| self.seen(*partition));
                push(member.as_bytes());
                push(newest.to_string().as_bytes());
                part.seen.push((*partition, newest));
            }
        }
    }

    /// Runs a pipeline of `EVALSHA` calls of `script` (and reads, harmless to repeat). When Redis
    /// answers NOSCRIPT (it restarted or failed over and forgot the script), loads it and runs the
    /// pipeline again: no script call ran the first time, since every one failed the same way.
    async fn run_scripts(
        &self,
        pipe: &redis::Pipeline,
        script: &redis::Script,
        mut commands: Commands,
    ) -> Result<Vec<Value>, StoreError> {
        match pipe.query_async(&mut commands).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                script.load_async(&mut commands).await?;
                Ok(pipe.query_async(&mut commands).await?)
            }
            other => Ok(other?),
        }
    }

    /// Waits for one of the `CONCURRENT_READS` replay/history/unread read slots.
    async fn read_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.inner
            .reads
            .acquire()
            .await
            .map_err(|_| StoreError::Reply("store is closing"))
    }

    /// Reads up to `count` entries after `start`, with the partition's epoch (confirmed against
    /// what this instance has seen, on the Redis that serves the read), Redis's clock and the
    /// stream's newest id, in one atomic step: on a standalone Redis `replay.lua` and an `XRANGE`
    /// in one MULTI/EXEC (the page stays Redis's own reply), on a cluster `replay.lua` alone,
    /// returning the page too (all keys in one slot).
    ///
    /// The read state is counted at `as_of`, or (`None`, a `last_message` resume) at the newest
    /// retained entry at or before `start`.
    pub async fn replay_head(
        &self,
        member: &MemberId,
        start: StreamId,
        count: usize,
        as_of: Option<StreamId>,
    ) -> Result<ReplayHead, StoreError> {
        let _turn = self.read_turn().await?;
        let partition = keys::partition_of(member);
        let seen = self.seen(partition);
        let stream = keys::stream(member);
        let keys = [
            stream.clone(),
            keys::epoch(partition),
            keys::fanout(partition).to_owned(),
            keys::read_position(member),
        ];
        let args = [
            start.to_string(),
            seen.to_string(),
            self.retention_floor().to_string(),
            as_of.map(|id| id.to_string()).unwrap_or_default(),
        ];
        let (state, entries) = match self.replay_on_wire(&keys, &args, count).await {
            Some(replied) => replied?,
            None => self.replay_on_redis(&keys, &args, count).await?,
        };
        let [epoch, now, newest, lost_at, read_up_to, unread, as_of]: [Value; 7] = state
            .try_into()
            .map_err(|_| StoreError::Reply("replay script returned the wrong shape"))?;
        let lost_at = optional_id(&lost_at)?;
        if let Some(marker) = lost_at {
            self.forget_lost(partition, seen, marker);
            tracing::warn!(partition, %seen, %marker, "redis lost notifications this instance saw; clients positioned before now will be told recovered: false");
        }
        Ok(ReplayHead {
            snapshot: Snapshot {
                epoch_ms: number(&epoch)?,
                now_ms: number(&now)?,
                newest: optional_id(&newest)?,
            },
            entries,
            lost: lost_at.is_some(),
            read: read_state(&read_up_to, &unread, &as_of)?,
        })
    }

    /// [`Store::replay_head`]'s read on the replay's own connection: `replay.lua` and the page's
    /// `XRANGE` in one MULTI/EXEC, the page decoded in place; `None` when Redis is not reached
    /// that way. The script goes by SHA once Redis is known to hold it, else by source (`EVAL`,
    /// which also caches it): a NOSCRIPT answer inside EXEC comes with the whole page, read for
    /// nothing, so the first replay does not risk one; after one, the replay is sent again by
    /// source, on whichever connection, so it reaches the server that answered.
    async fn replay_on_wire(
        &self,
        keys: &[String; 4],
        args: &[String; 4],
        count: usize,
    ) -> Option<Result<(Vec<Value>, Vec<Entry>), StoreError>> {
        self.inner.wire_to.as_ref()?;
        let (from, count) = (format!("({}", args[0]), count.to_string());
        let request = |by_source: bool| {
            let mut request = Vec::with_capacity(if by_source { 8192 } else { 256 });
            wire::command(&mut request, &[b"MULTI"]);
            let mut call: Vec<&[u8]> = if by_source {
                vec![b"EVAL", scripts::REPLAY_SOURCE.as_bytes(), b"4"]
            } else {
                vec![b"EVALSHA", scripts::REPLAY.get_hash().as_bytes(), b"4"]
            };
            call.extend(keys.iter().chain(args).map(|text| text.as_bytes()));
            wire::command(&mut request, &call);
            let page: [&[u8]; 6] = [
                b"XRANGE",
                keys[0].as_bytes(),
                from.as_bytes(),
                b"+",
                b"COUNT",
                count.as_bytes(),
            ];
            wire::command(&mut request, &page);
            wire::command(&mut request, &[b"EXEC"]);
            request
        };
        let decode = |mut replies: wire::Replies<'_>| -> Result<_, StoreError> {
            for _ in 0..3 {
                replies.next()?.bytes()?; // OK, QUEUED, QUEUED; an error: NOSCRIPT at queueing, say
            }
            if replies.array()? != Some(2) {
                return Err(StoreError::Reply(
                    "replay transaction returned the wrong shape",
                ));
            }
            let state = replies.next()?.into_array()?;
            if let Some(wire::Reply::Error(message)) =
                state.iter().find(|r| matches!(r, wire::Reply::Error(_)))
            {
                return Err(wire::WireError::server(message).into());
            }
            let state = state.iter().map(wire_value).collect();
            Ok((state, wire_entries(&mut replies)?))
        };
        let held = self.inner.replay_held.load(Ordering::Relaxed);
        let result = match self.on_wire(&request(!held), 4, &decode).await? {
            Err(StoreError::Wire(error)) if error.is_noscript() => {
                self.inner.replay_held.store(false, Ordering::Relaxed);
                self.on_wire(&request(true), 4, &decode).await?
            }
            other => other,
        };
        if result.is_ok() {
            self.inner.replay_held.store(true, Ordering::Relaxed);
        }
        Some(result)
    }

    /// [`Store::replay_head`]'s read through the redis crate: on a standalone Redis
    /// `replay.lua` and an `XRANGE` in one MULTI/EXEC, on a cluster `replay.lua` alone, returning
    /// the page too (all keys in one slot).
    async fn replay_on_redis(
        &self,
        keys: &[String; 4],
        args: &[String; 4],
        count: usize,
    ) -> Result<(Vec<Value>, Vec<Entry>), StoreError> {
        let mut script = scripts::REPLAY.prepare_invoke();
        for key in keys {
            script.key(key);
        }
        for arg in args {
            script.arg(arg);
        }
        let (state, entries) = if self.is_cluster() {
            // One command, which the cluster client redirects and retries through a failover or
            // a slot move; inside MULTI a redirect would only abort the transaction.
            script.arg(count);
            let state: Value = script.invoke_async(&mut self.commands().await?).await?;
            let Value::Array(mut state) = state else {
                return Err(StoreError::Reply("replay script did not return an array"));
            };
            let entries = state
                .pop()
                .ok_or(StoreError::Reply("replay script returned the wrong shape"))?;
            (state, entries)
        } else {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .invoke_script(&script)
                .cmd("XRANGE")
                .arg(&keys[0])
                .arg(format!("({}", args[0]))
                .arg("+")
                .arg("COUNT")
                .arg(count);
            let [state, entries]: [Value; 2] = self
                .run_scripts(&pipe, &scripts::REPLAY, self.commands().await?)
                .await?
                .try_into()
                .map_err(|_| StoreError::Reply("replay transaction returned the wrong shape"))?;
            let Value::Array(state) = state else {
                return Err(StoreError::Reply("replay script did not return an array"));
            };
            (state, entries)
        };
        Ok((state, member_entries(entries)?))
    }

    /// One exchange on an idle replay connection (a new one when none is idle); `None` when
    /// Redis is not reached that way. A kept connection that turns out closed (Redis restarted
    /// since) is replaced once: these are reads, safe to ask again. A connection that failed is
    /// dropped, and every idle one with it: they reached the same server, so they are as suspect
    /// (a server gone silent must not be waited out once per idle connection).
    async fn on_wire<T>(
        &self,
        request: &[u8],
        replies: usize,
        decode: &impl Fn(wire::Replies<'_>) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let info = self.inner.wire_to.as_ref()?;
        let kept = self.idle_wires().pop();
        let fresh = || async {
            match wire::Wire::connect(info, CONNECT_TIMEOUT, RESPONSE_TIMEOUT).await {
                Ok(Some(wire)) => Ok(wire),
                Ok(None) => Err(StoreError::Reply("redis is not reached over plain TCP")),
                Err(error) => Err(error.into()),
            }
        };
        let reused = kept.is_some();
        let mut wire = match kept {
            Some(wire) => wire,
            None => match fresh().await {
                Ok(wire) => wire,
                Err(error) => return Some(Err(error)),
            },
        };
        let mut result = wire
            .exchange_streamed(request, replies, RESPONSE_TIMEOUT, decode)
            .await;
        if reused && matches!(&result, Err(StoreError::Wire(error)) if error.connection_lost()) {
            self.idle_wires().clear();
            wire = match fresh().await {
                Ok(wire) => wire,
                Err(error) => return Some(Err(error)),
            };
            result = wire
                .exchange_streamed(request, replies, RESPONSE_TIMEOUT, decode)
                .await;
        }
        // Whole replies were read unless the connection itself failed.
        let failed = matches!(&result, Err(StoreError::Wire(error)) if !matches!(error, wire::WireError::Server(_)));
        let mut idle = self.idle_wires();
        if failed {
            idle.clear();
        } else if idle.len() < KEPT_WIRES {
            idle.push(wire);
        }
        Some(result)
    }

    fn idle_wires(&self) -> std::sync::MutexGuard<'_, Vec<wire::Wire>> {
        self.inner
            .wires
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The id just before the retention window: entries after it are retained.
    fn retention_floor(&self) -> StreamId {
        StreamId::before_ms(self.retention_cutoff_ms())
    }

    /// The member's read state as of its newest retained notification (`unread.lua`).
    /// Queued like replays: every fresh subscribe asks it, so a reconnect storm of fresh
    /// streams waits its turn instead of flooding the command connection.
    pub async fn unread(&self, member: &MemberId) -> Result<ReadState, StoreError> {
        let _turn = self.read_turn().await?;
        let reply: Vec<Value> = scripts::UNREAD
            .key(keys::stream(member))
            .key(keys::read_position(member))
            .arg(self.retention_floor().to_string())
            .invoke_async(&mut self.commands().await?)
            .await?;
        let [read_up_to, unread, as_of]: [Value; 3] = reply
            .try_into()
            .map_err(|_| StoreError::Reply("unread script returned the wrong shape"))?;
        read_state(&read_up_to, &unread, &as_of)
    }

    /// Moves the member's read position forward (`read.lua`): clamped to its newest
    /// notification, never back; when it moves, every open stream of the member is told through
    /// the partition's fan-out stream, after the notifications it covers.
    pub async fn mark_read(
        &self,
        member: &MemberId,
        up_to: ReadUpTo,
    ) -> Result<Marked, StoreError> {
        let partition = keys::partition_of(member);
        let seen = self.seen(partition);
        let target = match up_to {
            ReadUpTo::Id(id) => id.to_string(),
            ReadUpTo::All => "all".to_owned(),
        };
        let reply: Vec<Value> = scripts::READ
            .key(keys::stream(member))
            .key(keys::read_position(member))
            .key(keys::fanout(partition))
            .key(keys::epoch(partition))
            .arg(target)
            .arg(self.retention_floor().to_string())
            .arg(retention_ms(self.inner.retention))
            .arg(FANOUT_MAXLEN)
            .arg(member.as_str())
            .arg(seen.to_string())
            .invoke_async(&mut self.commands().await?)
            .await?;
        let [read_up_to, unread, as_of, fanned, lost_at]: [Value; 5] = reply
            .try_into()
            .map_err(|_| StoreError::Reply("read script returned the wrong shape"))?;
        let lost_at = optional_id(&lost_at)?;
        if let Some(marker) = lost_at {
            self.forget_lost(partition, seen, marker);
            tracing::warn!(partition, %seen, %marker, "redis lost notifications this instance saw; clients positioned before now will be told recovered: false");
        }
        let fanned = optional_id(&fanned)?;
        if let Some(fanned) = fanned {
            self.see(partition, fanned);
        }
        Ok(Marked {
            state: read_state(&read_up_to, &unread, &as_of)?,
            moved: fanned.is_some(),
            loss_proven: lost_at.is_some(),
        })
    }

    /// Reads up to `count` entries strictly after `after`, oldest first.
    pub async fn read_after(
        &self,
        member: &MemberId,
        after: StreamId,
        count: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let _turn = self.read_turn().await?;
        let (stream, from, count) = (keys::stream(member), format!("({after}"), count.to_string());
        let mut request = Vec::with_capacity(128);
        wire::command(
            &mut request,
            &[
                b"XRANGE",
                stream.as_bytes(),
                from.as_bytes(),
                b"+",
                b"COUNT",
                count.as_bytes(),
            ],
        );
        let decode = |mut replies: wire::Replies<'_>| wire_entries(&mut replies);
        if let Some(read) = self.on_wire(&request, 1, &decode).await {
            return read;
        }
        let reply: Value = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(&count)
            .query_async(&mut self.commands().await?)
            .await?;
        member_entries(reply)
    }

    /// Reads up to `count` entries strictly before `before` (the newest when `None`) and after
    /// `floor`, newest first.
    pub async fn read_before(
        &self,
        member: &MemberId,
        before: Option<StreamId>,
        floor: StreamId,
        count: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if before.is_some_and(|before| before <= floor) {
            return Ok(Vec::new()); // nothing retained before it (and `(0-0` is not an id)
        }
        let _turn = self.read_turn().await?;
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(keys::stream(member))
            .arg(before.map_or_else(|| "+".to_owned(), |id| format!("({id}")))
            .arg(format!("({floor}"))
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.commands().await?)
            .await?;
        member_entries(reply)
    }
}

/// What one publish script call stored, in member order.
struct ScriptAppended {
    members: Vec<Written>,
    created: bool,
    repeated: usize,
}

/// One member's part of a publish script call.
struct Written {
    id: StreamId,
    /// The fan-out entry written for it; `None` for a repeat.
    fanout: Option<StreamId>,
    /// The loss marker appended before it, when the script proved that Redis lost writes.
    lost_marker: Option<StreamId>,
    /// Its partition, and what the instance had seen of it when it sent the call.
    partition: usize,
    seen_before: StreamId,
}

/// Parses the script's `{id, repeated, fan-out id, loss marker, id, ...}`.
fn appended(reply: Value, seen_before: &[(usize, StreamId)]) -> Result<ScriptAppended, StoreError> {
    let Value::Array(reply) = reply else {
        return Err(StoreError::Reply("publish script did not return an array"));
    };
    if reply.len() != 4 * seen_before.len() {
        return Err(StoreError::Reply(
            "publish script returned the wrong number of ids",
        ));
    }
    let mut appended = ScriptAppended {
        members: Vec::with_capacity(seen_before.len()),
        created: false,
        repeated: 0,
    };
    for (four, &(partition, seen_before)) in reply.chunks_exact(4).zip(seen_before) {
        match four[1] {
            Value::Int(0) => appended.created = true,
            _ => appended.repeated += 1,
        }
        appended.members.push(Written {
            id: stream_id(&four[0])?,
            fanout: optional_id(&four[2])?,
            lost_marker: optional_id(&four[3])?,
            partition,
            seen_before,
        });
    }
    Ok(appended)
}

/// Puts a call's ids for `members` (indexes into the publish's members) into `out`.
fn take_ids(out: &mut Appended, written: ScriptAppended, members: impl IntoIterator<Item = usize>) {
    for (one, m) in written.members.into_iter().zip(members) {
        out.ids[m] = one.id;
        out.losses_proven += usize::from(one.lost_marker.is_some());
    }
    out.created |= written.created;
    out.repeated += written.repeated;
}

/// How many arguments [`Store::publish_args`] hands over for `parts`.
fn publish_arg_count(parts: &[PublishPart]) -> usize {
    let per_part = |part: &PublishPart| part.keys.len() + part.args.len() + 2 * part.members.len();
    4 + parts.iter().map(per_part).sum::<usize>()
}

fn retention_ms(retention: Duration) -> u64 {
    u64::try_from(retention.as_millis()).unwrap_or(u64::MAX)
}

type RawEntry = (StreamId, Vec<(Vec<u8>, Vec<u8>)>);

/// Parses an XRANGE-shaped reply: `[[id, [field, value, ...]], ...]`.
fn entries(reply: Value) -> Result<Vec<RawEntry>, StoreError> {
    let items = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(StoreError::Reply("stream range is not an array")),
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(mut pair) = item else {
                return Err(StoreError::Reply("stream entry is not a pair"));
            };
            let (Some(Value::Array(flat)), Some(id)) = (pair.pop(), pair.pop()) else {
                return Err(StoreError::Reply("stream entry is not a pair"));
            };
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) =
                (flat.next(), flat.next())
            {
                fields.push((name, value));
            }
            Ok((stream_id(&id)?, fields))
        })
        .collect()
}

fn member_entries(reply: Value) -> Result<Vec<Entry>, StoreError> {
    entries(reply)?
        .iter()
        .map(|(id, fields)| entry(*id, borrowed(fields)))
        .collect()
}

fn borrowed(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
    fields
        .iter()
        .map(|(name, value)| (name.as_slice(), value.as_slice()))
        .collect()
}

/// A member stream range read on the replay's own connection, each entry decoded in place.
fn wire_entries(replies: &mut wire::Replies<'_>) -> Result<Vec<Entry>, StoreError> {
    let count = replies.array()?.unwrap_or(0);
    let mut entries = Vec::with_capacity(count.min(replies.room()));
    let mut fields = Vec::with_capacity(4);
    for _ in 0..count {
        let id = parse_id(replies.entry(&mut fields)?)?;
        entries.push(entry(id, fields.iter().copied())?);
    }
    Ok(entries)
}

/// A short reply of the replay's own connection as the redis crate would have given it (the
/// script's scalars, for the helpers shared with the other paths).
fn wire_value(reply: &wire::Reply<'_>) -> Value {
    match reply {
        wire::Reply::Status(text) | wire::Reply::Error(text) => {
            Value::SimpleString(String::from_utf8_lossy(text).into_owned())
        }
        wire::Reply::Int(n) => Value::Int(*n),
        wire::Reply::Bulk(bytes) => Value::BulkString(bytes.to_vec()),
        wire::Reply::Nil => Value::Nil,
        wire::Reply::Array(items) => Value::Array(items.iter().map(wire_value).collect()),
    }
}

fn entry<'a>(
    id: StreamId,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Entry, StoreError> {
    let mut entry = Entry {
        id,
        prev: StreamId::ZERO,
        kind: String::new(),
        content: String::new(),
    };
    let mut has_content = false;
    for (name, value) in fields {
        match name {
            b"p" => entry.prev = parse_id(value)?,
            b"t" => entry.kind = text(value)?,
            b"c" => {
                entry.content = text(value)?;
                has_content = true;
            }
            _ => {}
        }
    }
    if !has_content {
        return Err(StoreError::Reply("stream entry has no content"));
    }
    Ok(entry)
}

fn read_state(read_up_to: &Value, unread: &Value, as_of: &Value) -> Result<ReadState, StoreError> {
    Ok(ReadState {
        read_up_to: stream_id(read_up_to)?,
        unread: number(unread)?,
        as_of: stream_id(as_of)?,
    })
}

fn stream_id(value: &Value) -> Result<StreamId, StoreError> {
    match value {
        Value::BulkString(bytes) => parse_id(bytes),
        Value::SimpleString(s) => parse_id(s.as_bytes()),
        _ => Err(StoreError::Reply("stream id is not a string")),
    }
}

/// A script's id-or-empty-string.
fn optional_id(value: &Value) -> Result<Option<StreamId>, StoreError> {
    match value {
        Value::BulkString(bytes) => parse_optional_id(bytes),
        Value::SimpleString(s) => parse_optional_id(s.as_bytes()),
        _ => Err(StoreError::Reply("stream id is not a string")),
    }
}

fn parse_optional_id(bytes: &[u8]) -> Result<Option<StreamId>, StoreError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    parse_id(bytes).map(Some)
}

/// A decimal number a script returned as a string (Lua numbers lose precision past 2^53).
fn number(value: &Value) -> Result<u64, StoreError> {
    let parsed = match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    parsed.ok_or(StoreError::Reply("expected a decimal number"))
}

fn parse_id(bytes: &[u8]) -> Result<StreamId, StoreError> {
    StreamId::from_ascii(bytes).ok_or(StoreError::Reply("malformed stream id"))
}

fn text(bytes: &[u8]) -> Result<String, StoreError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| StoreError::Reply("stream field is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::feed::live_entry;
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// `[[id, [field, value, ...]], ...]`, as XRANGE and XREAD answer.
    fn range(entries: &[(&str, &[&str])]) -> Value {
        Value::Array(
            entries
                .iter()
                .map(|(id, fields)| {
                    Value::Array(vec![
                        bulk(id),
                        Value::Array(fields.iter().map(|f| bulk(f)).collect()),
                    ])
                })
                .collect(),
        )
    }

    #[test]
    fn member_entries_parse_and_refuse_what_is_not_one() {
        let reply = range(&[
            ("5-0", &["p", "4-1", "t", "follow", "c", "{\"a\":1}"]),
            ("6-0", &["t", "x", "c", "1", "extra", "ignored"]),
        ]);
        let parsed = member_entries(reply).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[0],
            Entry {
                id: StreamId::new(5, 0),
                prev: StreamId::new(4, 1),
                kind: "follow".into(),
                content: "{\"a\":1}".into(),
            }
        );
        assert_eq!(parsed[1].prev, StreamId::ZERO, "an entry without p");
        assert!(member_entries(Value::Nil).unwrap().is_empty());
        for bad in [
            range(&[("5-0", &["t", "x"])]),                      // no content
            range(&[("nope", &["c", "1"])]),                     // not an id
            range(&[("5-0", &["p", "x-y", "c", "1"])]),          // p not an id
            Value::Int(3),                                       // not an array
            Value::Array(vec![Value::Array(vec![bulk("5-0")])]), // not a pair
        ] {
            assert!(member_entries(bad.clone()).is_err(), "{bad:?}");
        }
        let not_utf8 = Value::Array(vec![Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![bulk("c"), Value::BulkString(vec![0xff])]),
        ])]);
        assert!(member_entries(not_utf8).is_err());
    }

    #[test]
    fn fan_out_entries_are_notifications_or_loss_markers() {
        let parsed: Vec<LiveEntry> = entries(range(&[
            (
                "9-0",
                &["p", "8-0", "m", "alice", "i", "7-3", "t", "k", "c", "2"],
            ),
            ("9-1", &["p", "9-0", "lost", "1"]),
        ]))
        .unwrap()
        .iter()
        .map(|(id, fields)| live_entry(*id, &borrowed(fields)).unwrap())
        .collect();
        assert_eq!(
            (parsed[0].id, parsed[0].prev),
            (StreamId::new(9, 0), StreamId::new(8, 0))
        );
        match &parsed[0].what {
            Fanned::Notification { member, entry } => {
                assert_eq!(member.as_str(), "alice");
                assert_eq!(entry.id, StreamId::new(7, 3));
                assert_eq!((entry.kind.as_str(), entry.content.as_str()), ("k", "2"));
            }
            other => panic!("a notification, not {other:?}"),
        }
        assert!(matches!(parsed[1].what, Fanned::Lost));
        let read = entries(range(&[(
            "9-2",
            &[
                "p", "9-1", "m", "bob", "read", "1", "r", "7-3", "u", "4", "a", "9-0",
            ],
        )]))
        .unwrap()
        .pop()
        .map(|(id, fields)| live_entry(id, &borrowed(&fields)).unwrap())
        .unwrap();
        match read.what {
            Fanned::Read { member, state } => {
                assert_eq!(member.as_str(), "bob");
                assert_eq!(
                    state,
                    ReadState {
                        read_up_to: StreamId::new(7, 3),
                        unread: 4,
                        as_of: StreamId::new(9, 0)
                    }
                );
            }
            other => panic!("a read entry, not {other:?}"),
        }
        for bad in [
            range(&[("9-2", &["p", "9-1", "m", "bob", "read", "1", "r", "7-3"])]), // no u, a
            range(&[("9-0", &["m", "alice", "i", "7-3", "c", "2"])]),              // no p
            range(&[("9-0", &["p", "8-0", "i", "7-3", "c", "2"])]),                // no m
            range(&[("9-0", &["p", "8-0", "m", "a b", "i", "7-3", "c", "2"])]),
        ] {
            let (id, fields) = entries(bad).unwrap().pop().unwrap();
            assert!(live_entry(id, &borrowed(&fields)).is_err());
        }
    }

    #[test]
    fn script_scalars_parse_exactly() {
        assert_eq!(optional_id(&bulk("")).unwrap(), None);
        assert_eq!(
            optional_id(&bulk("3-4")).unwrap(),
            Some(StreamId::new(3, 4))
        );
        assert!(optional_id(&Value::Int(1)).is_err());
        // Past 2^53, where a Lua number would have lost digits.
        assert_eq!(
            number(&bulk("9007199254740993")).unwrap(),
            9_007_199_254_740_993
        );
        assert_eq!(number(&Value::Int(7)).unwrap(), 7);
        assert!(number(&Value::Int(-1)).is_err());
        assert!(number(&bulk("1.5")).is_err());
    }
}
