//! A live reader's connection to the fan-out streams: blocking `XREAD`s, and the few other
//! commands a reader needs (the epoch check, the stream's tail, the eviction policy), on a
//! connection of its own. To a standalone Redis over plain TCP its replies are decoded in place
//! (`wire`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use super::{
    CONNECT_TIMEOUT, RESPONSE_TIMEOUT, Store, StoreError, borrowed, entries, entry, keys, parse_id,
    parse_optional_id, scripts, wire,
};
use crate::model::{Entry, MemberId, ReadState, StreamId};

impl Store {
    /// Opens a dedicated connection for a live reader of `partition` (and, on a standalone
    /// Redis, of any other), whose blocking reads must not hold up anybody else's commands. In a
    /// cluster it goes to the master serving the partition's slot, as of now. To a standalone
    /// Redis over plain TCP it is one whose replies are decoded in place (`wire`); else the
    /// redis crate's (a cluster's readers keep the path its failover tests proved).
    pub async fn feed(&self, partition: usize, block: Duration) -> Result<Feed, StoreError> {
        let slot = keys::slot(keys::fanout(partition).as_bytes());
        let server = self.inner.redis.server_of(slot).await?;
        let wire = match &self.inner.wire_to {
            Some(info) => wire::Wire::connect(info, CONNECT_TIMEOUT, RESPONSE_TIMEOUT).await?,
            None => None,
        };
        let conn = match wire {
            Some(wire) => FeedConn::Wire(wire),
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
                FeedConn::Redis(
                    server
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
        };
        Ok(Feed {
            conn,
            block,
            store: self.clone(),
        })
    }
}

/// One entry of a partition's fan-out stream.
#[derive(Debug)]
pub struct LiveEntry {
    /// Position in the fan-out stream.
    pub id: StreamId,
    /// The fan-out entry written before this one (a mismatch with the last one read is a gap).
    pub prev: StreamId,
    pub what: Fanned,
}

#[derive(Debug)]
pub enum Fanned {
    /// A notification just appended to a member stream (its `prev` is not carried: unused live).
    Notification { member: MemberId, entry: Entry },
    /// An instance proved that Redis lost writes of this partition (`_epoch.lua`): live delivery
    /// there can no longer be exact.
    Lost,
    /// A member's read position moved (`read.lua`): its streams send `event: read`.
    Read { member: MemberId, state: ReadState },
    /// An entry this version cannot read: skipped.
    Unreadable,
}

/// A live reader's own connection to the fan-out streams.
pub struct Feed {
    conn: FeedConn,
    block: Duration,
    store: Store,
}

enum FeedConn {
    /// A standalone Redis over plain TCP: replies decoded in place.
    Wire(wire::Wire),
    /// TLS, a unix socket or a cluster: the redis crate's connection.
    Redis(MultiplexedConnection),
}

impl Feed {
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Confirms a partition's dataset epoch on the Redis this connection reached (`epoch.lua`):
    /// creates it on a dataset without one, moves it to now when the fan-out stream ends before
    /// what this instance has seen, or when `lost` says so. Returns whether the epoch moved.
    pub async fn confirm_epoch(
        &mut self,
        partition: usize,
        lost: bool,
    ) -> Result<bool, StoreError> {
        let seen = self.store.seen(partition);
        let (epoch, fanout, seen_text) = (
            keys::epoch(partition),
            keys::fanout(partition),
            seen.to_string(),
        );
        let lost_flag = if lost { "1" } else { "0" };
        let marker = match &mut self.conn {
            FeedConn::Wire(wire) => {
                let sha = scripts::EPOCH.get_hash();
                let call: [&[u8]; 7] = [
                    b"EVALSHA",
                    sha.as_bytes(),
                    b"2",
                    epoch.as_bytes(),
                    fanout.as_bytes(),
                    seen_text.as_bytes(),
                    lost_flag.as_bytes(),
                ];
                let decode = |reply: wire::Reply<'_>| -> Result<_, StoreError> {
                    let [_, marker]: [wire::Reply<'_>; 2] = reply
                        .into_array()?
                        .try_into()
                        .map_err(|_| StoreError::Reply("epoch script returned the wrong shape"))?;
                    parse_optional_id(marker.bytes()?)
                };
                match one_on_wire(wire, &call, RESPONSE_TIMEOUT, decode).await {
                    Err(StoreError::Wire(error)) if error.is_noscript() => {
                        let load: [&[u8]; 3] =
                            [b"SCRIPT", b"LOAD", scripts::EPOCH_SOURCE.as_bytes()];
                        one_on_wire(wire, &load, RESPONSE_TIMEOUT, |reply| {
                            reply.bytes().map(drop).map_err(StoreError::from)
                        })
                        .await?;
                        one_on_wire(wire, &call, RESPONSE_TIMEOUT, decode).await?
                    }
                    other => other?,
                }
            }
            FeedConn::Redis(conn) => {
                let reply: (String, String) = scripts::EPOCH
                    .key(epoch)
                    .key(fanout)
                    .arg(seen_text)
                    .arg(lost_flag)
                    .invoke_async(conn)
                    .await?;
                parse_optional_id(reply.1.as_bytes())?
            }
        };
        match marker {
            Some(marker) => {
                self.store.forget_lost(partition, seen, marker);
                if !lost {
                    tracing::warn!(partition, %seen, %marker, "redis lost notifications this instance saw; clients positioned before now will be told recovered: false");
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The `maxmemory-policy` of the Redis this connection reached when it may evict keys (any
    /// policy but `noeviction`), else `None`. Recorded for `partitions`.
    pub async fn eviction_policy(
        &mut self,
        partitions: &[usize],
    ) -> Result<Option<String>, StoreError> {
        let info: String = match &mut self.conn {
            FeedConn::Wire(wire) => {
                one_on_wire(wire, &[b"INFO", b"memory"], RESPONSE_TIMEOUT, |reply| {
                    Ok(String::from_utf8_lossy(reply.bytes()?).into_owned())
                })
                .await?
            }
            FeedConn::Redis(conn) => redis::cmd("INFO").arg("memory").query_async(conn).await?,
        };
        let policy = info
            .lines()
            .find_map(|line| line.strip_prefix("maxmemory_policy:"))
            .map(str::trim)
            .ok_or(StoreError::Reply("INFO memory has no maxmemory_policy"))?;
        let evicting = policy != "noeviction";
        for &partition in partitions {
            self.store.inner.evicting[partition].store(evicting, Ordering::Relaxed);
        }
        Ok(evicting.then(|| policy.to_owned()))
    }

    /// The id of the newest entry of a partition's fan-out stream (`0-0` when empty).
    pub async fn tail(&mut self, partition: usize) -> Result<StreamId, StoreError> {
        let key = keys::fanout(partition);
        match &mut self.conn {
            FeedConn::Wire(wire) => {
                let call: [&[u8]; 6] = [b"XREVRANGE", key.as_bytes(), b"+", b"-", b"COUNT", b"1"];
                one_on_wire(wire, &call, RESPONSE_TIMEOUT, |reply| {
                    match reply.into_array()?.into_iter().next() {
                        None => Ok(StreamId::ZERO),
                        Some(entry) => match entry.into_array()?.first() {
                            Some(id) => parse_id(id.bytes()?),
                            None => Err(StoreError::Reply("stream entry is not a pair")),
                        },
                    }
                })
                .await
            }
            FeedConn::Redis(conn) => {
                let reply: Value = redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(conn)
                    .await?;
                Ok(entries(reply)?
                    .first()
                    .map_or(StreamId::ZERO, |(id, _)| *id))
            }
        }
    }

    /// Blocks until entries follow `positions` (partition → last id read) or the block time ends.
    pub async fn read(
        &mut self,
        positions: &BTreeMap<usize, StreamId>,
        count: usize,
    ) -> Result<Vec<(usize, Vec<LiveEntry>)>, StoreError> {
        let batches = match &mut self.conn {
            FeedConn::Wire(wire) => read_on_wire(wire, positions, count, self.block).await?,
            FeedConn::Redis(conn) => read_on_redis(conn, positions, count, self.block).await?,
        };
        for (partition, live) in &batches {
            if let Some(last) = live.last() {
                self.store.see(*partition, last.id);
            }
        }
        Ok(batches)
    }
}

/// One command on a feed's own connection, its one reply handed to `decode`.
async fn one_on_wire<T>(
    wire: &mut wire::Wire,
    args: &[&[u8]],
    timeout: Duration,
    decode: impl FnOnce(wire::Reply<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut request = Vec::with_capacity(256);
    wire::command(&mut request, args);
    wire.exchange(&request, 1, timeout, |mut replies| {
        decode(replies.pop().unwrap_or(wire::Reply::Nil))
    })
    .await
}

/// [`Feed::read`] through the redis crate.
async fn read_on_redis(
    conn: &mut MultiplexedConnection,
    positions: &BTreeMap<usize, StreamId>,
    count: usize,
    block: Duration,
) -> Result<Vec<(usize, Vec<LiveEntry>)>, StoreError> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS");
    for &partition in positions.keys() {
        cmd.arg(keys::fanout(partition));
    }
    for id in positions.values() {
        cmd.arg(id.to_string());
    }
    let reply: Value = cmd.query_async(conn).await?;
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        Value::Map(streams) => streams
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Err(StoreError::Reply("XREAD reply is not an array")),
    };
    let mut batches = Vec::with_capacity(streams.len());
    for stream in streams {
        let Value::Array(mut pair) = stream else {
            return Err(StoreError::Reply("XREAD stream is not a pair"));
        };
        let (Some(entries_value), Some(Value::BulkString(key))) = (pair.pop(), pair.pop()) else {
            return Err(StoreError::Reply("XREAD stream is not a pair"));
        };
        let partition = partition_named(positions, &key)?;
        let live: Vec<LiveEntry> = entries(entries_value)?
            .iter()
            .map(|(id, fields)| tolerant_live_entry(*id, &borrowed(fields)))
            .collect();
        batches.push((partition, live));
    }
    Ok(batches)
}

/// Which of the partitions read a fan-out stream key in an `XREAD` reply is.
fn partition_named(positions: &BTreeMap<usize, StreamId>, key: &[u8]) -> Result<usize, StoreError> {
    positions
        .keys()
        .copied()
        .find(|&p| keys::fanout(p).as_bytes() == key)
        .ok_or(StoreError::Reply(
            "XREAD returned a stream it was not asked for",
        ))
}

/// [`Feed::read`] on the reader's own connection: `XREAD` (RESP2: nil when the block time ends,
/// else `[[key, entries], ...]`), each entry decoded in place.
async fn read_on_wire(
    wire: &mut wire::Wire,
    positions: &BTreeMap<usize, StreamId>,
    count: usize,
    block: Duration,
) -> Result<Vec<(usize, Vec<LiveEntry>)>, StoreError> {
    let (count, block_ms) = (count.to_string(), block.as_millis().to_string());
    let ids: Vec<String> = positions.values().map(StreamId::to_string).collect();
    let mut args: Vec<&[u8]> = vec![
        b"XREAD",
        b"COUNT",
        count.as_bytes(),
        b"BLOCK",
        block_ms.as_bytes(),
        b"STREAMS",
    ];
    args.extend(positions.keys().map(|&p| keys::fanout(p).as_bytes()));
    args.extend(ids.iter().map(|id| id.as_bytes()));
    let mut request = Vec::with_capacity(256);
    wire::command(&mut request, &args);
    let decode = |mut replies: wire::Replies<'_>| -> Result<_, StoreError> {
        let streams = replies.array()?.unwrap_or(0);
        let mut batches = Vec::with_capacity(streams.min(positions.len()));
        let mut fields = Vec::with_capacity(6);
        for _ in 0..streams {
            if replies.array()? != Some(2) {
                return Err(StoreError::Reply("XREAD stream is not a pair"));
            }
            let partition = partition_named(positions, replies.next()?.bytes()?)?;
            let count = replies.array()?.unwrap_or(0);
            let mut live = Vec::with_capacity(count.min(replies.room()));
            for _ in 0..count {
                let id = parse_id(replies.entry(&mut fields)?)?;
                live.push(tolerant_live_entry(id, &fields));
            }
            batches.push((partition, live));
        }
        Ok(batches)
    };
    wire.exchange_streamed(&request, 1, block + RESPONSE_TIMEOUT, decode)
        .await
}

/// A fan-out entry this version cannot read (a newer version's kind, or a malformed one) is
/// skipped, not a failure of the whole read: one such entry must not stop live delivery for the
/// partition. It keeps its place in the chain (`p`); without one, the chain breaks and the
/// partition's streams resume by id.
pub(super) fn tolerant_live_entry(id: StreamId, fields: &[(&[u8], &[u8])]) -> LiveEntry {
    live_entry(id, fields).unwrap_or_else(|error| {
        tracing::warn!(%id, error = &error as &dyn std::error::Error, "skipping a fan-out entry this version cannot read");
        let prev = fields
            .iter()
            .find(|(name, _)| *name == b"p")
            .and_then(|(_, value)| parse_id(value).ok());
        LiveEntry {
            id,
            prev: prev.unwrap_or(StreamId::ZERO),
            what: Fanned::Unreadable,
        }
    })
}

pub(super) fn live_entry(id: StreamId, fields: &[(&[u8], &[u8])]) -> Result<LiveEntry, StoreError> {
    let (mut prev, mut member, mut note_id) = (None, None, None);
    let (mut lost, mut read) = (false, false);
    let (mut read_up_to, mut unread, mut as_of) = (None, None, None);
    let mut rest = Vec::with_capacity(2);
    for &(name, value) in fields {
        match name {
            b"p" => prev = Some(parse_id(value)?),
            b"lost" => lost = true,
            b"read" => read = true,
            b"m" => member = Some(parsed(value, "fan-out member id is invalid")?),
            b"i" => note_id = Some(parse_id(value)?),
            b"r" => read_up_to = Some(parse_id(value)?),
            b"a" => as_of = Some(parse_id(value)?),
            b"u" => unread = Some(parsed(value, "expected a decimal number")?),
            _ => rest.push((name, value)),
        }
    }
    let prev = prev.ok_or(StoreError::Reply("fan-out entry lacks p"))?;
    if lost {
        return Ok(LiveEntry {
            id,
            prev,
            what: Fanned::Lost,
        });
    }
    let member = member.ok_or(StoreError::Reply("fan-out entry lacks m"))?;
    let what = if read {
        let (Some(read_up_to), Some(unread), Some(as_of)) = (read_up_to, unread, as_of) else {
            return Err(StoreError::Reply("fan-out read entry lacks r, u or a"));
        };
        Fanned::Read {
            member,
            state: ReadState {
                read_up_to,
                unread,
                as_of,
            },
        }
    } else {
        let note_id = note_id.ok_or(StoreError::Reply("fan-out entry lacks i"))?;
        Fanned::Notification {
            member,
            entry: entry(note_id, rest)?,
        }
    };
    Ok(LiveEntry { id, prev, what })
}

/// A field's text parsed as `T`, or `refusal`.
fn parsed<T: std::str::FromStr>(value: &[u8], refusal: &'static str) -> Result<T, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(StoreError::Reply(refusal))
}
