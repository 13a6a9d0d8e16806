//! The checker's oracle: from every acknowledged publish and every client session, decide whether
//! the service kept its promises (API.md): each retained id exactly once, in id order, and
//! `recovered` exact. Pure: it judges a history, it runs nothing.
//!
//! What it allows, and why:
//! - `recovered: false` must be justified: something after the position is gone (not delivered
//!   although published before the connection), expired by age, or Redis lost data at or after
//!   the position (a crash, a wipe, a failover: the service cannot tell what the lost writes
//!   were, so every position before the loss is told false).
//! - A hole (an acknowledged id skipped) is allowed only where the service admitted it: in a
//!   `false` session for ids published before it connected, or in a session that the server
//!   ended and whose client was told `false` on its next connection (Redis lost writes while the
//!   stream was live; the loss marker closed it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

pub type Id = (u64, u64);

pub fn parse_id(id: &str) -> Id {
    let (ms, seq) = id.split_once('-').expect("a stream id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// One acknowledged publish.
#[derive(Debug, Clone)]
pub struct Ack {
    pub member: String,
    pub key: String,
    pub id: Id,
}

/// One delivered notification: its id and the idempotency key found in its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub id: Id,
    pub member: String,
    pub key: String,
}

/// One connection of a client that got as far as `connected`.
#[derive(Debug, Clone)]
pub struct Session {
    pub instance: usize,
    pub position: Id,
    pub recovered: bool,
    /// Wall clock (ms) when `connected` arrived.
    pub connected_ms: u64,
    /// Wall clock (ms) when the session ended.
    pub ended_ms: u64,
    /// The server closed the stream (as opposed to the client hanging up).
    pub ended_by_server: bool,
    pub delivered: Vec<Delivered>,
}

/// A client: one member, its sessions in order.
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub member: String,
    pub sessions: Vec<Session>,
}

/// What the oracle needs to know about the run.
#[derive(Debug, Clone)]
pub struct World {
    pub retention_ms: u64,
    /// Wall-clock times (ms) at which Redis may have lost acknowledged data (including when the
    /// run started on an empty Redis).
    pub losses_ms: Vec<u64>,
    /// How long after a loss the service may take to notice it (detection by a reader or replay).
    pub detection_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub client: String,
    pub session: usize,
    pub rule: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} session {}: {} ({})",
            self.client, self.session, self.rule, self.detail
        )
    }
}

/// Slack at the edge of the retention window: Redis trims on its clock, the service filters on
/// its own, and an id's time is when Redis wrote it.
const WINDOW_SLACK_MS: u64 = 2_000;

fn show(id: Id) -> String {
    format!("{}-{}", id.0, id.1)
}

/// Every violation in the history, oldest first.
pub fn check(world: &World, acks: &[Ack], clients: &[Client]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut acked: HashMap<&str, BTreeMap<Id, &str>> = HashMap::new();
    let mut key_ids: HashMap<(&str, &str), Id> = HashMap::new();
    for ack in acks {
        acked
            .entry(&ack.member)
            .or_default()
            .insert(ack.id, &ack.key);
        if let Some(other) = key_ids.insert((&ack.member, &ack.key), ack.id)
            && other != ack.id
        {
            violations.push(Violation {
                client: "publisher".into(),
                session: 0,
                rule: "one idempotency key, two ids",
                detail: format!(
                    "{} key {}: {} and {}",
                    ack.member,
                    ack.key,
                    show(other),
                    show(ack.id)
                ),
            });
        }
    }
    let empty = BTreeMap::new();
    for client in clients {
        let acked = acked.get(client.member.as_str()).unwrap_or(&empty);
        check_client(world, acked, client, &mut violations);
    }
    violations
}

fn check_client(
    world: &World,
    acked: &BTreeMap<Id, &str>,
    client: &Client,
    violations: &mut Vec<Violation>,
) {
    let mut seen: BTreeSet<Id> = BTreeSet::new();
    // Per idempotency key: the id it was delivered as, and in which session.
    let mut keys: HashMap<&str, (Id, usize)> = HashMap::new();
    for (index, session) in client.sessions.iter().enumerate() {
        let context = format!(
            "instance {}, position {}, recovered {}, connected at {}, ended at {}{}, delivered {} ids from {:?} to {:?}",
            session.instance,
            show(session.position),
            session.recovered,
            session.connected_ms,
            session.ended_ms,
            if session.ended_by_server {
                " by the server"
            } else {
                ""
            },
            session.delivered.len(),
            session.delivered.first().map(|d| show(d.id)),
            session.delivered.last().map(|d| show(d.id)),
        );
        let mut flag = |rule: &'static str, detail: String| {
            violations.push(Violation {
                client: client.name.clone(),
                session: index,
                rule,
                detail: format!("{detail}; {context}"),
            });
        };
        let ids: Vec<Id> = session.delivered.iter().map(|d| d.id).collect();
        if ids.windows(2).any(|w| w[0] >= w[1]) {
            flag(
                "in id order",
                format!("{:?}", ids.iter().map(|&i| show(i)).collect::<Vec<_>>()),
            );
        }
        for delivered in &session.delivered {
            if delivered.member != client.member {
                flag(
                    "only the member's own",
                    format!(
                        "{} got {}'s {}",
                        client.member,
                        delivered.member,
                        show(delivered.id)
                    ),
                );
            }
            if !seen.insert(delivered.id) {
                flag(
                    "exactly once",
                    format!("{} delivered again", show(delivered.id)),
                );
            }
            // A key delivered under a second id: stored twice, unless the first copy was lost by
            // Redis (delivered live before a failover took it away, then published again by the
            // retry) and the client was told `recovered: false` in between, i.e. to reload.
            let first = *keys.entry(&delivered.key).or_insert((delivered.id, index));
            let reload_between = client.sessions[first.1 + 1..=index]
                .iter()
                .any(|s| !s.recovered);
            if first.0 != delivered.id && !reload_between {
                let other = first.0;
                flag(
                    "stored once",
                    format!(
                        "key {} as {} and {}",
                        delivered.key,
                        show(other),
                        show(delivered.id)
                    ),
                );
            }
            if session.recovered && delivered.id <= session.position {
                flag(
                    "nothing at or before the position",
                    format!("{} after {}", show(delivered.id), show(session.position)),
                );
            }
        }

        let next_false = client.sessions[index + 1..]
            .first()
            .is_some_and(|next| !next.recovered);
        // Redis lost writes while this stream was live: the server must end it, and the
        // client's next connection must say so.
        let loss_reported_later = session.ended_by_server && next_false;
        let after_position = acked
            .range((Bound::Excluded(session.position), Bound::Unbounded))
            .map(|(&id, _)| id)
            .filter(|id| !seen.contains(id));
        let expired = |id: Id| id.0 + world.retention_ms + WINDOW_SLACK_MS < session.connected_ms;
        let maybe_expired =
            |id: Id| id.0 + world.retention_ms < session.connected_ms + WINDOW_SLACK_MS;
        // Acknowledged ids after the position that this session skipped: below the last one it
        // delivered (a replay sends every retained id in order, so anything skipped is gone).
        // The final session reads up to a sentinel, so nothing escapes this in the end.
        let reached = ids.last().copied();
        let missing: Vec<Id> = after_position
            .clone()
            .filter(|&id| reached.is_some_and(|last| id < last) && !maybe_expired(id))
            .collect();
        let expired_after: Vec<Id> = after_position.clone().filter(|&id| expired(id)).collect();

        if session.recovered {
            let everything_retained = session.position == (0, 0);
            if (!missing.is_empty() || (!everything_retained && !expired_after.is_empty()))
                && !loss_reported_later
            {
                flag(
                    "recovered true means nothing missing",
                    format!(
                        "after {}: missing {:?}, expired {:?}",
                        show(session.position),
                        missing.iter().map(|&i| show(i)).collect::<Vec<_>>(),
                        expired_after.iter().map(|&i| show(i)).collect::<Vec<_>>()
                    ),
                );
            }
            continue;
        }
        // A false session admits what was gone when it connected, never a live hole.
        let live_holes: Vec<Id> = missing
            .iter()
            .copied()
            .filter(|&id| id.0 > session.connected_ms + WINDOW_SLACK_MS)
            .collect();
        if !live_holes.is_empty() && !loss_reported_later {
            flag(
                "no hole in live delivery",
                format!(
                    "missing {:?}",
                    live_holes.iter().map(|&i| show(i)).collect::<Vec<_>>()
                ),
            );
        }
        let gone = missing.iter().any(|&id| id.0 < session.connected_ms);
        let aged = after_position.clone().any(maybe_expired)
            || (session.position != (0, 0) && maybe_expired(session.position));
        if !(gone || aged || session.delivered.is_empty() || loss_or_unknown(world, acked, session))
        {
            flag(
                "recovered false needs a loss",
                format!(
                    "position {}: nothing after it was gone",
                    show(session.position)
                ),
            );
        }
    }
}

/// Redis may have lost data at or after the position (its epoch moved past it when the service
/// noticed), or the position is one the dataset no longer holds.
fn loss_or_unknown(world: &World, acked: &BTreeMap<Id, &str>, session: &Session) -> bool {
    let position = session.position;
    let loss = world
        .losses_ms
        .iter()
        .any(|&at| at <= session.connected_ms && position.0 <= at + world.detection_ms);
    let unknown = position != (0, 0) && !acked.contains_key(&position);
    loss || unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_000_000;

    fn world() -> World {
        World {
            retention_ms: 60_000,
            losses_ms: vec![T - 100_000],
            detection_ms: 10_000,
        }
    }

    fn ack(ms: u64, key: &str) -> Ack {
        Ack {
            member: "m".into(),
            key: key.into(),
            id: (ms, 0),
        }
    }

    fn delivered(ms: u64, key: &str) -> Delivered {
        Delivered {
            id: (ms, 0),
            member: "m".into(),
            key: key.into(),
        }
    }

    fn session(position: u64, recovered: bool, at: u64, got: &[(u64, &str)]) -> Session {
        Session {
            instance: 0,
            position: (position, 0),
            recovered,
            connected_ms: at,
            ended_ms: at + 5_000,
            ended_by_server: false,
            delivered: got.iter().map(|&(ms, k)| delivered(ms, k)).collect(),
        }
    }

    fn client(sessions: Vec<Session>) -> Client {
        Client {
            name: "c".into(),
            member: "m".into(),
            sessions,
        }
    }

    fn rules(acks: &[Ack], sessions: Vec<Session>) -> Vec<&'static str> {
        check(&world(), acks, &[client(sessions)])
            .into_iter()
            .map(|v| v.rule)
            .collect()
    }

    #[test]
    fn an_exact_history_passes() {
        let acks = [ack(T, "a"), ack(T + 10, "b"), ack(T + 20, "c")];
        let sessions = vec![
            session(T - 1, true, T + 5_000, &[(T, "a"), (T + 10, "b")]),
            session(T + 10, true, T + 20_000, &[(T + 20, "c")]),
        ];
        assert_eq!(rules(&acks, sessions), Vec::<&str>::new());
    }

    #[test]
    fn duplicates_disorder_and_foreign_ids_are_caught() {
        let acks = [ack(T, "a"), ack(T + 10, "b")];
        let twice = vec![
            session(T - 1, true, T + 5_000, &[(T, "a")]),
            session(T - 1, true, T + 6_000, &[(T, "a"), (T + 10, "b")]),
        ];
        assert!(rules(&acks, twice).contains(&"exactly once"));
        let disorder = vec![session(T - 1, true, T + 5_000, &[(T + 10, "b"), (T, "a")])];
        assert!(rules(&acks, disorder).contains(&"in id order"));
        let mut foreign = session(T - 1, true, T + 5_000, &[(T, "a"), (T + 10, "b")]);
        foreign.delivered[1].member = "other".into();
        assert!(rules(&acks, vec![foreign]).contains(&"only the member's own"));
    }

    #[test]
    fn a_true_over_a_hole_is_caught_unless_the_loss_was_reported_next() {
        let acks = [ack(T, "a"), ack(T + 10, "b"), ack(T + 20, "c")];
        let hole = vec![session(T - 1, true, T + 5_000, &[(T, "a"), (T + 20, "c")])];
        assert_eq!(
            rules(&acks, hole),
            vec!["recovered true means nothing missing"]
        );
        // Expired by age after the position, and told true.
        let aged = vec![session(T - 1, true, T + 70_000, &[])];
        assert_eq!(
            rules(&acks, aged),
            vec!["recovered true means nothing missing"]
        );
        // 0-0 asks for everything retained: what expired by age is not missing.
        let everything = vec![session(0, true, T + 70_000, &[])];
        assert_eq!(rules(&acks, everything), Vec::<&str>::new());
        // The server ended it and the next connection said false: admitted.
        let mut ended = session(T - 1, true, T + 5_000, &[(T, "a"), (T + 20, "c")]);
        ended.ended_by_server = true;
        let reported = vec![ended, session(T + 20, false, T + 7_000, &[])];
        assert_eq!(rules(&acks, reported), Vec::<&str>::new());
    }

    #[test]
    fn a_false_needs_a_loss() {
        let acks = [ack(T, "a"), ack(T + 10, "b"), ack(T + 20, "c")];
        // Everything after the position delivered, no loss since it: false is a lie.
        let lie = vec![session(
            T,
            false,
            T + 5_000,
            &[(T + 10, "b"), (T + 20, "c")],
        )];
        assert_eq!(rules(&acks, lie), vec!["recovered false needs a loss"]);
        // `b` is gone (trimmed): justified.
        let trimmed = vec![session(T, false, T + 5_000, &[(T + 20, "c")])];
        assert_eq!(rules(&acks, trimmed), Vec::<&str>::new());
        // Redis lost data after the position: justified even if nothing is missing.
        let mut after_loss = world();
        after_loss.losses_ms.push(T + 3_000);
        let violations = check(
            &after_loss,
            &acks,
            &[client(vec![session(
                T,
                false,
                T + 5_000,
                &[(T + 10, "b"), (T + 20, "c")],
            )])],
        );
        assert_eq!(violations, vec![]);
        // A position the dataset never held: justified.
        let unknown = vec![session(
            T + 5,
            false,
            T + 5_000,
            &[(T + 10, "b"), (T + 20, "c")],
        )];
        assert_eq!(rules(&acks, unknown), Vec::<&str>::new());
        // Expired by age: justified.
        let late = vec![session(T, false, T + 61_000, &[])];
        assert_eq!(rules(&acks, late), Vec::<&str>::new());
    }

    #[test]
    fn a_false_admits_old_holes_but_not_live_ones() {
        let acks = [
            ack(T, "a"),
            ack(T + 10, "b"),
            ack(T + 9_000, "live-1"),
            ack(T + 9_500, "live-2"),
        ];
        let old_hole = vec![session(
            T - 1,
            false,
            T + 5_000,
            &[(T + 10, "b"), (T + 9_000, "live-1"), (T + 9_500, "live-2")],
        )];
        assert_eq!(rules(&acks, old_hole), Vec::<&str>::new());
        let live_hole = vec![session(
            T - 1,
            false,
            T + 5_000,
            &[(T + 10, "b"), (T + 9_500, "live-2")],
        )];
        assert_eq!(rules(&acks, live_hole), vec!["no hole in live delivery"]);
    }

    #[test]
    fn one_key_stored_twice_is_caught() {
        let acks = [ack(T, "a"), ack(T + 10, "a")];
        assert!(rules(&acks, vec![]).contains(&"one idempotency key, two ids"));
        let delivered_twice = vec![session(T - 1, true, T + 5_000, &[(T, "a"), (T + 10, "a")])];
        assert!(rules(&[ack(T, "a")], delivered_twice).contains(&"stored once"));
        // The first copy was lost by Redis after it was delivered live, the retry stored it again,
        // and the client was told to reload in between: not a duplicate of what it holds.
        let reloaded = vec![
            session(T - 1, true, T + 5_000, &[(T, "a")]),
            session(T, false, T + 6_000, &[(T + 10, "a")]),
        ];
        assert!(!rules(&[ack(T + 10, "a")], reloaded).contains(&"stored once"));
    }
}
