//! The two decisions that make a replay exact (API.md, `recovered`): what a resuming client is
//! told in `connected`, and whether the next replay batch still follows the last one. Pure
//! functions over what the store read in one atomic step (`Store::replay_head`: `replay.lua` and
//! the first page); no I/O.
//!
//! The proof is the predecessor chain: every entry stores `prev`, the id of the entry it followed
//! when it was written (a new stream's first entry gets `now − retention`, the furthest back its
//! missing key can vouch for). So for a client at `P`, the first retained entry `F` after `P`
//! with `F.prev <= P` proves that nothing between them ever existed; `F.prev > P` means something
//! did and is gone (trimmed by the cap or the window). The partition's dataset epoch covers what
//! the chain cannot see: entries Redis itself lost (a restart without persistence, a failover to a
//! lagging replica), after which the surviving entries' chain looks whole.

use crate::model::{Entry, StreamId};

/// What `replay.lua` read about a member stream besides its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Since when this partition's history is complete in this Redis (epoch ms).
    pub epoch_ms: u64,
    /// Redis's clock at the read: every id Redis generates from now on is at or after it.
    pub now_ms: u64,
    /// The member stream's newest id; `None` when the stream does not exist. Trimming always
    /// keeps the newest entry, so this is also the newest id the stream ever had.
    pub newest: Option<StreamId>,
}

/// The answer for a resuming client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The `recovered` of the `connected` event.
    pub recovered: bool,
    /// The position the stream continues from: the client's own, or, for a position this
    /// dataset never issued (a future id), the newest id that does exist, so that no
    /// notification published from now on falls below it and is taken for a duplicate.
    pub from: StreamId,
}

/// Where a replay starts reading: after the client's position, never before the retention
/// window (`cutoff_ms` = now − retention; entries older are expired even if not trimmed yet).
pub fn replay_start(position: StreamId, cutoff_ms: u64) -> StreamId {
    position.max(StreamId::before_ms(cutoff_ms))
}

/// Whether a client at `position` gets everything after it, given the snapshot and `first`, the
/// first entry read after [`replay_start`].
///
/// `0-0` asks for everything retained: such a client holds nothing, so what expired by age is not
/// something it lost; it is told `true` when the whole retention window is complete (nothing
/// dropped by the cap, nothing lost by Redis).
pub fn judge(
    position: StreamId,
    cutoff_ms: u64,
    snapshot: &Snapshot,
    first: Option<&Entry>,
) -> Verdict {
    // A position this stream never reached: a client from another dataset, or one whose newest
    // notifications Redis lost. Its state cannot be trusted, and live ids may come below it.
    let future = match snapshot.newest {
        Some(newest) => position > newest,
        None => position.ms >= snapshot.now_ms,
    };
    if future {
        let from = snapshot
            .newest
            .unwrap_or(StreamId::before_ms(snapshot.now_ms));
        return Verdict {
            recovered: false,
            from,
        };
    }
    let horizon = if position == StreamId::ZERO {
        replay_start(position, cutoff_ms)
    } else {
        position
    };
    let after_epoch = horizon.ms >= snapshot.epoch_ms;
    let contiguous = match (first, snapshot.newest) {
        (Some(first), _) => first.prev <= horizon,
        // Nothing after the start, and the newest entry (never trimmed) is at or before it.
        (None, Some(newest)) => newest <= horizon,
        // No stream: it expired a whole window after its last write, so everything it held is
        // older than the window; only a position inside the window can have missed nothing.
        (None, None) => position == StreamId::ZERO || horizon.ms >= cutoff_ms,
    };
    Verdict {
        recovered: after_epoch && contiguous,
        from: position,
    }
}

/// Whether a later replay batch, read strictly after `last_read`, continues the replay without a
/// gap: its first entry followed `last_read` (nothing between them was trimmed while the client
/// was being served) and has not left the retention window meanwhile. Otherwise the stream must
/// end, so the client reconnects and learns `recovered: false`.
pub fn batch_follows(last_read: StreamId, first: &Entry, cutoff_ms: u64) -> bool {
    first.prev <= last_read && first.id.ms >= cutoff_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;
    const CUTOFF: u64 = 900_000; // retention 100 s

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId::new(ms, seq)
    }

    fn entry(id: StreamId, prev: StreamId) -> Entry {
        Entry {
            id,
            prev,
            kind: "t".into(),
            content: "1".into(),
        }
    }

    fn snapshot(epoch_ms: u64, newest: Option<StreamId>) -> Snapshot {
        Snapshot {
            epoch_ms,
            now_ms: NOW,
            newest,
        }
    }

    /// One row: position, epoch, newest, first entry read (id, prev), expected verdict.
    type Row = (
        &'static str,
        StreamId,
        u64,
        Option<StreamId>,
        Option<(StreamId, StreamId)>,
        Verdict,
    );

    fn same(recovered: bool, position: StreamId) -> Verdict {
        Verdict {
            recovered,
            from: position,
        }
    }

    #[test]
    fn recovered_covers_every_branch() {
        let p = id(950_000, 3);
        let rows: Vec<Row> = vec![
            // The first entry after the position followed it, or something older.
            (
                "next entry followed the position",
                p,
                0,
                Some(id(960_000, 0)),
                Some((id(955_000, 0), p)),
                same(true, p),
            ),
            (
                "next entry followed an entry before the position",
                p,
                0,
                Some(id(960_000, 0)),
                Some((id(955_000, 0), id(940_000, 0))),
                same(true, p),
            ),
            (
                "an entry after the position was trimmed (cap)",
                p,
                0,
                Some(id(960_000, 0)),
                Some((id(955_000, 0), id(951_000, 0))),
                same(false, p),
            ),
            (
                "position at the newest entry: nothing after it",
                p,
                0,
                Some(p),
                None,
                same(true, p),
            ),
            (
                "position between the newest entry and now: never issued",
                id(955_000, 0),
                0,
                Some(p),
                None,
                Verdict {
                    recovered: false,
                    from: p,
                },
            ),
            (
                "position before the window, entries after it expired",
                id(800_000, 0),
                0,
                Some(id(960_000, 0)),
                Some((id(950_000, 0), id(850_000, 0))),
                same(false, id(800_000, 0)),
            ),
            (
                "position before the window, nothing between it and the window",
                id(800_000, 0),
                0,
                Some(id(960_000, 0)),
                Some((id(950_000, 0), id(799_000, 0))),
                same(true, id(800_000, 0)),
            ),
            (
                "position before the window, newest entry expired after it",
                id(800_000, 0),
                0,
                Some(id(850_000, 0)),
                None,
                same(false, id(800_000, 0)),
            ),
            // No stream: expired after a whole window of silence.
            (
                "no stream, position inside the window",
                p,
                0,
                None,
                None,
                same(true, p),
            ),
            (
                "no stream, position before the window",
                id(800_000, 0),
                0,
                None,
                None,
                same(false, id(800_000, 0)),
            ),
            // The dataset epoch: Redis lost acknowledged writes after it.
            (
                "position before the epoch",
                p,
                950_001,
                Some(id(960_000, 0)),
                Some((id(955_000, 0), p)),
                same(false, p),
            ),
            (
                "position at the epoch",
                id(950_001, 0),
                950_001,
                Some(id(950_001, 0)),
                None,
                same(true, id(950_001, 0)),
            ),
            // 0-0: everything retained.
            (
                "0-0, whole window complete, older entries expired by age",
                StreamId::ZERO,
                0,
                Some(id(960_000, 0)),
                Some((id(950_000, 0), id(850_000, 0))),
                same(true, StreamId::ZERO),
            ),
            (
                "0-0, new stream (first entry vouches back one window)",
                StreamId::ZERO,
                0,
                Some(id(960_000, 0)),
                Some((id(950_000, 0), id(850_001, 0))),
                same(true, StreamId::ZERO),
            ),
            (
                "0-0, the cap dropped entries inside the window",
                StreamId::ZERO,
                0,
                Some(id(960_000, 0)),
                Some((id(950_000, 0), id(940_000, 0))),
                same(false, StreamId::ZERO),
            ),
            (
                "0-0, no stream",
                StreamId::ZERO,
                0,
                None,
                None,
                same(true, StreamId::ZERO),
            ),
            (
                "0-0, every entry older than the window",
                StreamId::ZERO,
                0,
                Some(id(850_000, 0)),
                None,
                same(true, StreamId::ZERO),
            ),
            (
                "0-0, epoch inside the window",
                StreamId::ZERO,
                920_000,
                Some(id(960_000, 0)),
                Some((id(950_000, 0), id(850_000, 0))),
                same(false, StreamId::ZERO),
            ),
            // Positions this dataset never issued.
            (
                "future: after the newest id",
                id(970_000, 0),
                0,
                Some(id(960_000, 0)),
                None,
                Verdict {
                    recovered: false,
                    from: id(960_000, 0),
                },
            ),
            (
                "future: same millisecond, higher sequence",
                id(960_000, 1),
                0,
                Some(id(960_000, 0)),
                None,
                Verdict {
                    recovered: false,
                    from: id(960_000, 0),
                },
            ),
            (
                "future: no stream, position at or after Redis's clock",
                id(NOW, 5),
                0,
                None,
                None,
                Verdict {
                    recovered: false,
                    from: StreamId::before_ms(NOW),
                },
            ),
            (
                "future: far beyond",
                id(u64::MAX, 0),
                0,
                Some(id(960_000, 0)),
                None,
                Verdict {
                    recovered: false,
                    from: id(960_000, 0),
                },
            ),
        ];
        for (name, position, epoch, newest, first, expected) in rows {
            let first = first.map(|(id, prev)| entry(id, prev));
            let verdict = judge(position, CUTOFF, &snapshot(epoch, newest), first.as_ref());
            assert_eq!(verdict, expected, "{name}");
        }
    }

    #[test]
    fn replay_never_starts_before_the_window() {
        assert_eq!(
            replay_start(StreamId::ZERO, CUTOFF),
            id(CUTOFF - 1, u64::MAX)
        );
        assert_eq!(replay_start(id(950_000, 0), CUTOFF), id(950_000, 0));
        assert_eq!(replay_start(StreamId::ZERO, 0), StreamId::ZERO);
    }

    #[test]
    fn a_batch_follows_only_without_a_gap() {
        let last = id(950_000, 0);
        assert!(batch_follows(last, &entry(id(951_000, 0), last), CUTOFF));
        assert!(
            !batch_follows(last, &entry(id(952_000, 0), id(951_000, 0)), CUTOFF),
            "trimmed between batches"
        );
        assert!(
            !batch_follows(
                id(899_000, 0),
                &entry(id(899_500, 0), id(899_000, 0)),
                CUTOFF
            ),
            "left the window while the replay ran"
        );
        assert!(batch_follows(
            id(899_000, 0),
            &entry(id(CUTOFF, 0), id(899_000, 0)),
            CUTOFF
        ));
    }
}
