//! `sse-notify migrate-zset` (API.md): moves notifications from the old layout (one sorted set per
//! member) into member streams, through `Store`. Safe to run while the service is live, and again:
//! ids are derived from the data, so a second run moves nothing twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::model::{MemberId, StreamId};
use crate::store::legacy::Migrated;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct Options {
    /// Report what would move; write nothing.
    pub dry_run: bool,
    /// `SCAN MATCH` pattern selecting the keys to look at.
    pub pattern: String,
    /// Remove moved (and expired) entries from the old sorted sets.
    pub delete_source: bool,
    /// Keys per `SCAN` step and per pipelined round trip.
    pub batch: usize,
}

/// Why a key or an entry was left alone.
pub const NON_NUMERIC_KEY: &str = "non-numeric key";
pub const NOT_A_SORTED_SET: &str = "not a sorted set";
pub const NOT_THE_EXPECTED_JSON: &str = "entry is not the expected JSON";

#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Keys seen, the service's own (`n:{...}`) not counted.
    pub keys_scanned: u64,
    /// Sorted sets in the old layout that had something to move.
    pub keys_moved: u64,
    pub entries_moved: u64,
    /// Found in the stream already (an earlier run, or an interrupted one).
    pub entries_already_there: u64,
    /// Older than the retention window: not moved.
    pub entries_expired: u64,
    /// Keys left alone, by reason.
    pub keys_skipped: BTreeMap<&'static str, u64>,
    /// Entries left alone because they are not `{"content":...,"time":<ms>}`.
    pub entries_skipped: u64,
    /// The first few skipped keys and entries with their reason, for the operator to look at.
    pub examples: Vec<(String, &'static str)>,
    pub elapsed: Duration,
}

const MAX_EXAMPLES: usize = 20;

impl Report {
    fn skip_key(&mut self, key: &str, reason: &'static str) {
        *self.keys_skipped.entry(reason).or_default() += 1;
        self.example(key.to_owned(), reason);
    }

    fn example(&mut self, what: String, reason: &'static str) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push((what, reason));
        }
    }
}

/// One member's sorted set, sorted into what moves, what expired and what stays.
struct Plan {
    key: String,
    member: MemberId,
    moves: Vec<Migrated>,
    /// Raw sorted-set members to remove with `--delete-source` (moved or expired).
    done: Vec<Vec<u8>>,
}

/// Scans, converts and merges; calls `progress` after every batch.
pub async fn run(
    store: &Store,
    options: &Options,
    mut progress: impl FnMut(&Report),
) -> Result<Report, StoreError> {
    let started = Instant::now();
    let mut report = Report::default();
    let mut scan = store.scan().await?;
    while let Some(keys) = scan.next(&options.pattern, options.batch).await? {
        report.keys_scanned += keys.iter().filter(|k| !k.starts_with("n:{")).count() as u64;
        migrate_batch(store, options, keys, &mut report).await?;
        report.elapsed = started.elapsed();
        progress(&report);
    }
    Ok(report)
}

async fn migrate_batch(
    store: &Store,
    options: &Options,
    keys: Vec<String>,
    report: &mut Report,
) -> Result<(), StoreError> {
    // The service's own keys are not candidates, nor worth reporting.
    let mut candidates = Vec::with_capacity(keys.len());
    for key in keys.into_iter().filter(|k| !k.starts_with("n:{")) {
        match key
            .parse::<MemberId>()
            .ok()
            .filter(|_| !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(member) => candidates.push((key, member)),
            None => report.skip_key(&key, NON_NUMERIC_KEY),
        }
    }
    if candidates.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = candidates.iter().map(|(key, _)| key.clone()).collect();
    let types = store.key_types(&names).await?;
    let mut sorted_sets = Vec::with_capacity(candidates.len());
    for ((key, member), kind) in candidates.into_iter().zip(types) {
        match kind.as_str() {
            "zset" => sorted_sets.push((key, member)),
            "none" => {} // expired since the scan
            _ => report.skip_key(&key, NOT_A_SORTED_SET),
        }
    }
    if sorted_sets.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = sorted_sets.iter().map(|(key, _)| key.clone()).collect();
    let contents = store.sorted_sets(&names).await?;
    let window_start = store.retention_cutoff_ms();
    let plans: Vec<Plan> = sorted_sets
        .into_iter()
        .zip(contents)
        .map(|((key, member), entries)| plan(key, member, entries, window_start, report))
        .collect();

    let to_merge: Vec<&Plan> = plans.iter().filter(|p| !p.moves.is_empty()).collect();
    if options.dry_run {
        for plan in &to_merge {
            report.keys_moved += 1;
            report.entries_moved += plan.moves.len() as u64;
        }
        return Ok(());
    }
    if !to_merge.is_empty() {
        let batch: Vec<(MemberId, Vec<Migrated>)> = to_merge
            .iter()
            .map(|p| (p.member.clone(), p.moves.clone()))
            .collect();
        for merged in store.merge_legacy(&batch).await? {
            report.keys_moved += u64::from(merged.moved > 0);
            report.entries_moved += merged.moved;
            report.entries_already_there += merged.already_there;
        }
    }
    if options.delete_source {
        let removals: Vec<(String, Vec<Vec<u8>>)> =
            plans.into_iter().map(|p| (p.key, p.done)).collect();
        store.remove_from_sorted_sets(&removals).await?;
    }
    Ok(())
}

/// Sorts one sorted set's entries: ids `<time>-<n>` in sorted-set order within a millisecond.
fn plan(
    key: String,
    member: MemberId,
    entries: Vec<(Vec<u8>, f64)>,
    window_start: u64,
    report: &mut Report,
) -> Plan {
    let mut valid = Vec::with_capacity(entries.len());
    for (raw, _score) in entries {
        match parse_old(&raw) {
            Some((time, content)) => valid.push((time, content, raw)),
            None => {
                report.entries_skipped += 1;
                let shown = String::from_utf8_lossy(&raw)
                    .chars()
                    .take(80)
                    .collect::<String>();
                report.example(format!("{key}: {shown}"), NOT_THE_EXPECTED_JSON);
            }
        }
    }
    // The JSON time is the notification's time; a stable sort keeps sorted-set order within it.
    valid.sort_by_key(|(time, _, _)| *time);
    let mut plan = Plan {
        key,
        member,
        moves: Vec::with_capacity(valid.len()),
        done: Vec::new(),
    };
    let mut previous: Option<(u64, u64)> = None;
    for (time, content, raw) in valid {
        let seq = match previous {
            Some((ms, seq)) if ms == time => seq + 1,
            _ => 0,
        };
        previous = Some((time, seq));
        if time < window_start {
            report.entries_expired += 1;
        } else {
            plan.moves.push(Migrated {
                id: StreamId::new(time, seq),
                content,
            });
        }
        plan.done.push(raw);
    }
    plan
}

/// `{"content":...,"time":<ms>}` → (time, compact content).
fn parse_old(raw: &[u8]) -> Option<(u64, String)> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice(raw) else {
        return None;
    };
    let time = object.get("time")?.as_u64()?;
    let content = object.remove("content")?;
    Some((time, content.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_entries_are_parsed_and_numbered_within_their_millisecond() {
        assert_eq!(
            parse_old(br#"{"content":{"a":"x\ny"},"time":5}"#),
            Some((5, r#"{"a":"x\ny"}"#.to_owned()))
        );
        assert_eq!(
            parse_old(br#"{"content":null,"time":5}"#),
            Some((5, "null".to_owned()))
        );
        for bad in [
            &b"plain"[..],
            br#"{"time":5}"#,
            br#"{"content":1,"time":"5"}"#,
            br#"{"content":1,"time":-5}"#,
            b"[1]",
        ] {
            assert_eq!(parse_old(bad), None, "{}", String::from_utf8_lossy(bad));
        }

        let mut report = Report::default();
        let entries = vec![
            (br#"{"content":"a","time":10}"#.to_vec(), 10.0),
            (br#"{"content":"b","time":10}"#.to_vec(), 10.0),
            (b"junk".to_vec(), 11.0),
            (br#"{"content":"c","time":12}"#.to_vec(), 12.0),
            (br#"{"content":"old","time":1}"#.to_vec(), 1.0),
        ];
        let plan = plan("42".into(), "42".parse().unwrap(), entries, 5, &mut report);
        let ids: Vec<String> = plan.moves.iter().map(|m| m.id.to_string()).collect();
        assert_eq!(ids, ["10-0", "10-1", "12-0"]);
        assert_eq!(plan.moves[1].content, r#""b""#);
        assert_eq!((report.entries_expired, report.entries_skipped), (1, 1));
        assert_eq!(plan.done.len(), 4, "junk stays in the sorted set");
    }
}
