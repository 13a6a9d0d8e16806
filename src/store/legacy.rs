//! The old service's layout, read for `migrate-zset`: one sorted set per member, key = the member id
//! as a decimal number, member = `{"content":...,"time":<ms>}`, score = time.

use redis::Value;

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

impl Store {
    /// One `SCAN` step: the next cursor (0 when done) and the keys matching `pattern`.
    pub async fn scan(
        &self,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let (cursor, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.inner.commands.clone())
            .await?;
        Ok((cursor, keys))
    }

    /// How many keys the database holds: the denominator of a scan's progress.
    pub async fn key_count(&self) -> Result<u64, StoreError> {
        Ok(redis::cmd("DBSIZE")
            .query_async(&mut self.inner.commands.clone())
            .await?)
    }

    /// The Redis type of each key (`zset`, `string`, `none`, ...), in one round trip.
    pub async fn key_types(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("TYPE").arg(key);
        }
        Ok(pipe.query_async(&mut self.inner.commands.clone()).await?)
    }

    /// Every `(member, score)` of each sorted set, in sorted-set order, in one round trip.
    pub async fn sorted_sets(
        &self,
        keys: &[String],
    ) -> Result<Vec<Vec<(Vec<u8>, f64)>>, StoreError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES");
        }
        Ok(pipe.query_async(&mut self.inner.commands.clone()).await?)
    }

    /// Merges each member's old entries into its stream (`migrate_zset.lua`), one pipelined round
    /// trip for the batch.
    pub async fn merge_legacy(
        &self,
        batch: &[(MemberId, Vec<Migrated>)],
    ) -> Result<Vec<Merged>, StoreError> {
        let mut pipe = redis::pipe();
        for (member, entries) in batch {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(scripts::MIGRATE_ZSET.get_hash())
                .arg(2)
                .arg(keys::stream(member))
                .arg(keys::epoch(keys::partition_of(member)))
                .arg(super::retention_ms(self.inner.retention))
                .arg(self.inner.max_per_member)
                .arg("notification");
            for entry in entries {
                cmd.arg(entry.id.to_string()).arg(&entry.content);
            }
        }
        let replies = self.run_scripts(&pipe, &scripts::MIGRATE_ZSET).await?;
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
        let mut pipe = redis::pipe();
        for (key, members) in removals.iter().filter(|(_, m)| !m.is_empty()) {
            pipe.cmd("ZREM").arg(key).arg(members).ignore();
        }
        let () = pipe.query_async(&mut self.inner.commands.clone()).await?;
        Ok(())
    }
}
