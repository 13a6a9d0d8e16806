//! The old service's layout, read for `migrate-zset`: one sorted set per member, key = the member id
//! as a decimal number, member = `{"content":...,"time":<ms>}`, score = time.

use futures_util::future::try_join_all;
use redis::Value;
use redis::aio::MultiplexedConnection;

use super::{Store, StoreError, keys, scripts};
use crate::model::{MemberId, StreamId};

/// One old entry, ready to be written: its stream id and compact content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub id: StreamId,
    pub content: String,
}

/// What `migrate_zset.lua` did for one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    pub moved: u64,
    pub already_there: u64,
}

/// A `SCAN` over every server holding keys (each master of a cluster in turn).
pub struct Scan {
    servers: Vec<MultiplexedConnection>,
    server: usize,
    cursor: u64,
}

impl Scan {
    /// The next keys matching `pattern`, about `count` per step; `None` once every server is done.
    pub async fn next(
        &mut self,
        pattern: &str,
        count: usize,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let Some(server) = self.servers.get_mut(self.server) else {
            return Ok(None);
        };
        let (cursor, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(self.cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(server)
            .await?;
        self.cursor = cursor;
        if cursor == 0 {
            self.server += 1;
        }
        Ok(Some(keys))
    }
}

impl Store {
    /// Starts a `SCAN` of every master (a cluster's are scanned one after the other).
    pub async fn scan(&self) -> Result<Scan, StoreError> {
        let mut servers = Vec::new();
        for master in self.inner.redis.masters().await? {
            servers.push(master.get_multiplexed_async_connection().await?);
        }
        Ok(Scan {
            servers,
            server: 0,
            cursor: 0,
        })
    }

    /// How many keys the database holds (summed over a cluster's masters): the denominator of a
    /// scan's progress.
    pub async fn key_count(&self) -> Result<u64, StoreError> {
        Ok(redis::cmd("DBSIZE")
            .query_async(&mut self.commands().await?)
            .await?)
    }

    /// The Redis type of each key (`zset`, `string`, `none`, ...).
    pub async fn key_types(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        self.per_key(keys.iter().map(|key| {
            let mut cmd = redis::cmd("TYPE");
            cmd.arg(key);
            cmd
        }))
        .await
    }

    /// Every `(member, score)` of each sorted set, in sorted-set order.
    pub async fn sorted_sets(
        &self,
        keys: &[String],
    ) -> Result<Vec<Vec<(Vec<u8>, f64)>>, StoreError> {
        self.per_key(keys.iter().map(|key| {
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(key).arg(0).arg(-1).arg("WITHSCORES");
            cmd
        }))
        .await
    }

    /// One command per key, answers in order: one pipelined round trip on a standalone Redis; on a
    /// cluster, where a pipeline must stay in one slot, concurrent commands (which the cluster
    /// connection still pipelines per master).
    async fn per_key<T: redis::FromRedisValue>(
        &self,
        cmds: impl Iterator<Item = redis::Cmd>,
    ) -> Result<Vec<T>, StoreError> {
        let commands = self.commands().await?;
        if self.is_cluster() {
            let cmds: Vec<redis::Cmd> = cmds.collect();
            return Ok(try_join_all(cmds.iter().map(|cmd| {
                let mut commands = commands.clone();
                async move { cmd.query_async::<T>(&mut commands).await }
            }))
            .await?);
        }
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        Ok(pipe.query_async(&mut commands.clone()).await?)
    }

    /// Merges each member's old entries into its stream (`migrate_zset.lua`), one pipelined round
    /// trip for the batch.
    pub async fn merge_legacy(
        &self,
        batch: &[(MemberId, Vec<Migrated>)],
    ) -> Result<Vec<Merged>, StoreError> {
        let mut calls = Vec::with_capacity(batch.len());
        for (member, entries) in batch {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(scripts::MIGRATE_ZSET.get_hash())
                .arg(2)
                .arg(keys::stream(member))
                .arg(keys::epoch(keys::partition_of(member)))
                .arg(super::retention_ms(self.inner.retention))
                .arg(self.inner.max_per_member)
                .arg("notification");
            for entry in entries {
                cmd.arg(entry.id.to_string()).arg(&entry.content);
            }
            calls.push((keys::partition_of(member), cmd));
        }
        let replies = self
            .run_partitioned(calls, &scripts::MIGRATE_ZSET, None)
            .await?;
        replies
            .into_iter()
            .map(|reply| match reply {
                Value::Array(pair) => match pair.as_slice() {
                    [Value::Int(moved), Value::Int(already)] => Ok(Merged {
                        moved: *moved as u64,
                        already_there: *already as u64,
                    }),
                    _ => Err(StoreError::Reply(
                        "migrate script returned an unexpected pair",
                    )),
                },
                _ => Err(StoreError::Reply("migrate script did not return an array")),
            })
            .collect()
    }

    /// Removes migrated (or expired) members from the old sorted sets, leaving anything else.
    pub async fn remove_from_sorted_sets(
        &self,
        removals: &[(String, Vec<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        let _removed: Vec<Value> = self
            .per_key(
                removals
                    .iter()
                    .filter(|(_, m)| !m.is_empty())
                    .map(|(key, members)| {
                        let mut cmd = redis::cmd("ZREM");
                        cmd.arg(key).arg(members);
                        cmd
                    }),
            )
            .await?;
        Ok(())
    }
}
