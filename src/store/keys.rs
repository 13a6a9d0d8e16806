//! Redis key names. Every member belongs to one of [`PARTITIONS`] partitions, and every key of a
//! partition carries that partition's hash tag, so one Lua script can write a member's stream, its
//! idempotency record and the partition's fan-out stream in one slot (Redis-Cluster-safe).
//!
//! ```text
//! n:{<tag>}:s:<member>        the member's stream (source of truth, trimmed to the retention window)
//! n:{<tag>}:i:<member>:<key>  idempotency record: the id a publish with that key created
//! n:{<tag>}:r:<member>        the member's read position (a stream id)
//! n:{<tag>}:live              the partition's fan-out stream that live readers block on
//! n:{<tag>}:epoch             hash: ms = since when this partition's history is complete, replid
//! ```
//! The layout is stored data: changing [`PARTITIONS`] or the tags moves every member's keys.

use std::sync::LazyLock;

use crate::model::MemberId;

/// Number of partitions (fan-out streams). Bounded by the Redis connections a cluster reader may
/// hold (one per partition) and the largest useful cluster (one partition per master).
pub const PARTITIONS: usize = 16;

/// Hash tags chosen so partition `k` lands in slot range `[k·1024, (k+1)·1024)`: evenly spread over
/// the 16,384 cluster slots, and stable across instances and versions (derived, not random).
static TAGS: LazyLock<[String; PARTITIONS]> = LazyLock::new(|| {
    std::array::from_fn(|k| {
        let span = 16_384 / PARTITIONS;
        (0u32..)
            .map(|n| format!("p{k}.{n}"))
            .find(|tag| usize::from(slot(tag.as_bytes())) / span == k)
            .unwrap_or_default() // unreachable: CRC16 covers every range within a few hundred tries
    })
});

/// The partition a member belongs to.
pub fn partition_of(member: &MemberId) -> usize {
    usize::from(crc16(member.as_str().as_bytes())) % PARTITIONS
}

pub fn stream(member: &MemberId) -> String {
    format!("n:{{{}}}:s:{member}", TAGS[partition_of(member)])
}

pub fn read_position(member: &MemberId) -> String {
    format!("n:{{{}}}:r:{member}", TAGS[partition_of(member)])
}

pub fn idempotency(member: &MemberId, key: &str) -> String {
    format!("n:{{{}}}:i:{member}:{key}", TAGS[partition_of(member)])
}

/// The partition's fan-out stream key, built once: readers name all of them on every `XREAD`.
pub fn fanout(partition: usize) -> &'static str {
    static FANOUT: LazyLock<[String; PARTITIONS]> =
        LazyLock::new(|| std::array::from_fn(|k| format!("n:{{{}}}:live", TAGS[k])));
    &FANOUT[partition]
}

pub fn epoch(partition: usize) -> String {
    format!("n:{{{}}}:epoch", TAGS[partition])
}

/// Redis Cluster's key slot: CRC16 of the hash tag (or whole key) modulo 16,384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % 16_384
}

/// CRC16-XMODEM (polynomial 0x1021), the checksum Redis Cluster uses for slots.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}")); // empty tag: whole key hashed
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn every_key_of_a_member_shares_its_partition_slot() {
        let member: MemberId = "42".parse().unwrap();
        let p = partition_of(&member);
        let expected = slot(fanout(p).as_bytes());
        assert_eq!(slot(stream(&member).as_bytes()), expected);
        assert_eq!(slot(idempotency(&member, "k{x}").as_bytes()), expected);
        assert_eq!(slot(epoch(p).as_bytes()), expected);
    }

    #[test]
    fn partitions_spread_evenly_over_slots() {
        for k in 0..PARTITIONS {
            assert_eq!(
                usize::from(slot(fanout(k).as_bytes())) / (16_384 / PARTITIONS),
                k
            );
        }
    }
}
