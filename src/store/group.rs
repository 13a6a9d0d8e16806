//! Group commit: on a standalone Redis, the publishes made at the same moment share one
//! `publish.lua` call. Redis's cost is mostly per call (script entry, `TIME`, the epoch check,
//! the fan-out tail), so under load a call for 8 publishes costs little more than one; alone, a
//! publish goes out at once.
//!
//! One task gathers them: it waits for a publish and for one of `IN_FLIGHT` call slots, then takes
//! every publish queued meanwhile (up to `MAX_MEMBERS` members or `MAX_BYTES`) into one call. While
//! the slots are busy, publishes queue, so batches grow with the load by themselves; no timer
//! ever holds one back. The call is atomic, so each publish stays all or nothing. Publishes that
//! are concurrent have no order between them; one publisher's next publish waits for the answer to
//! its last, so it is never in an earlier call.
//!
//! On a standalone Redis over plain TCP, each call slot writes its call on a connection of its
//! own and reads the reply in place (`wire`), rather than handing it to the redis crate's
//! connection task and waiting to be woken by it: two task wake-ups and the crate's reply
//! parser less per call.
//!
//! When the script refuses a call before writing (a key of another type), the call's publishes
//! are retried one by one, so only the publish that names the key fails. Any other failure (a
//! timeout, a lost connection, replicas missing) is every publish's failure, as it would be alone.
//! A publish whose publisher has gone is not sent; one that waited `QUEUE_DEADLINE` for a call
//! (Redis far slower than the load) is answered "unavailable" unsent, rather than stored after
//! its publisher timed out. What the instance has seen of each partition is read when the call is
//! made, not when the publish was queued, so a wait never sends a stale one.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use redis::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    CONNECT_TIMEOUT, Inner, MAX_PUBLISH_WAIT, PublishPart, PublishWait, RESPONSE_TIMEOUT,
    ScriptAppended, Store, StoreError, appended, publish_arg_count, scripts, wire, wire_value,
};

/// Calls in flight at once: while they run, the next call gathers what arrives.
const IN_FLIGHT: usize = 4;
/// Members one call carries, at most (one publish to more than this still goes out whole).
const MAX_MEMBERS: usize = 256;
/// Bytes of keys and arguments one call carries, at most (likewise).
const MAX_BYTES: usize = 1 << 20;
/// Publishes waiting for a call; beyond, a publisher waits to enqueue.
const QUEUE: usize = 4096;
/// How long a publish may wait for a call before it is answered unsent.
const QUEUE_DEADLINE: Duration = Duration::from_secs(5);
/// How long a call, `WAIT` included, and the retries one by one if it is refused may take: with
/// the queue's wait, a publish is answered (504 if its write may have landed) within the request's
/// 30 s deadline.
const CALL_DEADLINE: Duration = Duration::from_secs(20);
const _: () =
    assert!(RESPONSE_TIMEOUT.as_secs() + MAX_PUBLISH_WAIT.as_secs() <= CALL_DEADLINE.as_secs());

/// The queue to the gathering task, started on the first publish (a runtime exists by then).
#[derive(Default)]
pub(super) struct GroupCommit {
    queue: OnceLock<mpsc::Sender<Job>>,
    metrics: OnceLock<CallMetrics>,
    /// The call slots' own connections, idle (at most `IN_FLIGHT`: a slot makes one call at a
    /// time).
    wires: Mutex<Vec<wire::Wire>>,
}

/// Publishes per call, and shared calls refused and split (the instance's metrics).
struct CallMetrics {
    sizes: Histogram,
    split: Counter,
}

struct Job {
    part: PublishPart,
    answer: oneshot::Sender<Result<ScriptAppended, StoreError>>,
    queued: Instant,
}

impl Job {
    /// The job, if it still goes out: its publisher waits, and has not waited too long (then it
    /// is answered here, nothing sent).
    fn wanted(self) -> Option<Self> {
        if self.answer.is_closed() {
            return None;
        }
        if self.queued.elapsed() > QUEUE_DEADLINE {
            let _ = self.answer.send(Err(StoreError::Busy));
            return None;
        }
        Some(self)
    }
}

impl Store {
    /// Where the group commit reports the publishes per call and the calls split (set once).
    pub fn measure_publish_calls(&self, sizes: Histogram, split: Counter) {
        let _ = self.inner.group.metrics.set(CallMetrics { sizes, split });
    }

    /// Stores one publish through a shared script call; its part of the reply.
    pub(super) async fn commit(&self, part: PublishPart) -> Result<ScriptAppended, StoreError> {
        let queue = self.inner.group.queue.get_or_init(|| {
            let (queue, jobs) = mpsc::channel(QUEUE);
            tokio::spawn(gather(Arc::downgrade(&self.inner), jobs));
            queue
        });
        let (answer, answered) = oneshot::channel();
        let job = Job {
            part,
            answer,
            queued: Instant::now(),
        };
        queue
            .send(job)
            .await
            .map_err(|_| StoreError::Reply("the group commit has stopped"))?;
        answered.await.map_err(|_| StoreError::Abandoned)?
    }

    /// Sends one call for `jobs` and answers each of them; what the writes taught the instance
    /// is remembered first, even for a publisher that has gone meanwhile. The call, and the
    /// retries one by one if it is refused, share one deadline: `RESPONSE_TIMEOUT` plus `WAIT`'s,
    /// at most `CALL_DEADLINE`.
    async fn commit_jobs(&self, jobs: Vec<Job>) {
        let (mut parts, answers): (Vec<PublishPart>, Vec<_>) =
            jobs.into_iter().map(|job| (job.part, job.answer)).unzip();
        let wait = self.inner.publish_wait;
        let deadline = Instant::now()
            + (RESPONSE_TIMEOUT + wait.map_or(Duration::ZERO, |wait| wait.timeout))
                .min(CALL_DEADLINE);
        let called = self.call(&mut parts, deadline).await;
        let results: Vec<Result<ScriptAppended, StoreError>> = match called {
            Err(error) if parts.len() > 1 && error.refused_before_writing() => {
                if let Some(metrics) = self.inner.group.metrics.get() {
                    metrics.split.inc();
                }
                tracing::warn!(publishes = parts.len(), %error, "a shared publish call was refused; retrying its publishes one by one");
                self.call_each(&mut parts, deadline).await
            }
            Err(error) => shared_failure(error, parts.len()),
            Ok(mut replies) => match replies.pop() {
                Some(Value::Array(values)) => {
                    let mut values = values.into_iter();
                    parts
                        .iter()
                        .map(|part| {
                            let mine = values.by_ref().take(4 * part.seen.len()).collect();
                            appended(Value::Array(mine), &part.seen)
                        })
                        .collect()
                }
                _ => parts
                    .iter()
                    .map(|_| Err(StoreError::Reply("publish script did not return an array")))
                    .collect(),
            },
        };
        for (result, answer) in results.into_iter().zip(answers) {
            if let Ok(written) = &result {
                self.remember(written);
            }
            let _ = answer.send(result);
        }
    }

    /// One `publish.lua` call for `parts` (with `WAIT` when configured), answered by `deadline`.
    /// Through the redis crate, the connection's own response timeout (as long, from the moment
    /// it is sent) bounds it instead, so that a stalled connection is seen and replaced.
    async fn call(
        &self,
        parts: &mut [PublishPart],
        deadline: Instant,
    ) -> Result<Vec<Value>, StoreError> {
        if let Some(metrics) = self.inner.group.metrics.get() {
            metrics.sizes.observe(parts.len() as f64);
        }
        if self.inner.wire_to.is_some() {
            let whole = 0..parts.len();
            let mut replies = self.calls_on_wire(parts, vec![whole], deadline).await?;
            return Ok(vec![replies.pop().unwrap_or(Err(StoreError::Reply(
                "publish call returned nothing",
            )))?]);
        }
        let call = self.publish_call(parts);
        self.run_partitioned(vec![(0, call)], &scripts::PUBLISH, self.inner.publish_wait)
            .await
    }

    /// Each of `parts` in a `publish.lua` call of its own, after their shared call was refused,
    /// answered by `deadline`: on the slot's connection all of them in one pipeline ending in one
    /// `WAIT`, else all at once through the redis crate (which pipelines them too).
    async fn call_each(
        &self,
        parts: &mut [PublishPart],
        deadline: Instant,
    ) -> Vec<Result<ScriptAppended, StoreError>> {
        if let Some(metrics) = self.inner.group.metrics.get() {
            for _ in 0..parts.len() {
                metrics.sizes.observe(1.0);
            }
        }
        if self.inner.wire_to.is_none() {
            let alone = parts.iter_mut().map(|part| async move {
                let wait = answered_by(self.inner.publish_wait, deadline)?;
                let call = self.publish_call(std::slice::from_mut(part));
                let run = self.run_partitioned(vec![(0, call)], &scripts::PUBLISH, wait);
                let mut replies = by(deadline, run).await?;
                appended(replies.pop().unwrap_or(Value::Nil), &part.seen)
            });
            return futures_util::future::join_all(alone).await;
        }
        let each = (0..parts.len()).map(|i| i..i + 1).collect();
        match self.calls_on_wire(parts, each, deadline).await {
            Ok(replies) => replies
                .into_iter()
                .zip(parts.iter())
                .map(|(reply, part)| appended(reply?, &part.seen))
                .collect(),
            Err(error) => shared_failure(error, parts.len()),
        }
    }

    /// Script calls, each carrying the `parts` of one range, pipelined on a connection of the
    /// slot's own and followed by one `WAIT` when configured; each call's reply. By SHA, and the
    /// calls Redis answered NOSCRIPT (nothing of theirs ran) once more by source. `Err` when the
    /// first exchange failed; if the second fails, only the calls it carried do. After a failed
    /// exchange the connection is dropped, and the idle ones with it, as they reach the same
    /// server and a publish must not find a dead one. Connecting and every exchange are done by
    /// `deadline`.
    async fn calls_on_wire(
        &self,
        parts: &mut [PublishPart],
        calls: Vec<Range<usize>>,
        deadline: Instant,
    ) -> Result<Vec<Result<Value, StoreError>>, StoreError> {
        let Ok(wire) = tokio::time::timeout_at(deadline.into(), self.publish_wire()).await else {
            return Err(StoreError::Busy);
        };
        let mut wire = wire?;
        let mut exchange = async |calls: &[Range<usize>], by_source: bool| {
            let wait = answered_by(self.inner.publish_wait, deadline)?;
            let request = self.publish_request(parts, calls, by_source, wait)?;
            let replies = calls.len() + usize::from(wait.is_some());
            let left = deadline.saturating_duration_since(Instant::now());
            wire.exchange(&request, replies, left, |replies| {
                Ok::<_, StoreError>(script_replies(replies, calls.len(), wait))
            })
            .await
        };
        let mut replies = exchange(&calls, false).await;
        // Every reply was read: the connection is as good as before.
        let mut intact = replies.is_ok();
        if let Ok(first) = &mut replies {
            let forgotten: Vec<usize> = (0..first.len())
                .filter(
                    |&i| matches!(&first[i], Err(StoreError::Wire(error)) if error.is_noscript()),
                )
                .collect();
            if !forgotten.is_empty() {
                let again: Vec<Range<usize>> =
                    forgotten.iter().map(|&i| calls[i].clone()).collect();
                match exchange(&again, true).await {
                    Ok(retried) => {
                        for (i, reply) in forgotten.into_iter().zip(retried) {
                            first[i] = reply;
                        }
                    }
                    // The calls that ran the first time keep their answers.
                    Err(error) => {
                        intact = false;
                        let error = Arc::new(error);
                        for i in forgotten {
                            first[i] = Err(StoreError::Shared(Arc::clone(&error)));
                        }
                    }
                }
            }
        }
        let mut idle = self
            .inner
            .group
            .wires
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !intact {
            idle.clear();
        } else if idle.len() < IN_FLIGHT {
            idle.push(wire);
        }
        replies
    }

    /// An idle connection of the call slots that is still open, else a new one.
    async fn publish_wire(&self) -> Result<wire::Wire, StoreError> {
        loop {
            let kept = self
                .inner
                .group
                .wires
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match kept {
                Some(wire) if wire.is_open() => return Ok(wire),
                Some(_closed) => continue,
                None => break,
            }
        }
        let info = self
            .inner
            .wire_to
            .as_ref()
            .ok_or(StoreError::Reply("redis is not reached over plain TCP"))?;
        match wire::Wire::connect(info, CONNECT_TIMEOUT, RESPONSE_TIMEOUT).await {
            Ok(Some(wire)) => Ok(wire),
            Ok(None) => Err(StoreError::Reply("redis is not reached over plain TCP")),
            Err(error) => Err(StoreError::Unreached(error)),
        }
    }

    /// The calls as bytes, one per range of `parts`: `EVALSHA publish.lua`, or `EVAL` with its
    /// source; then `WAIT` when `wait`. `Err` (nothing sent) if the arguments do not add up to
    /// the count in a call's head, which Redis would take for another command's.
    fn publish_request(
        &self,
        parts: &mut [PublishPart],
        calls: &[Range<usize>],
        by_source: bool,
        wait: Option<PublishWait>,
    ) -> Result<Vec<u8>, StoreError> {
        let bytes: usize = parts.iter().map(PublishPart::bytes).sum();
        let mut request = Vec::with_capacity(bytes + 64 * parts.len() + 256 * calls.len());
        for call in calls {
            let parts = &mut parts[call.clone()];
            let count = publish_arg_count(parts);
            wire::command_of(&mut request, 2 + count);
            if by_source {
                wire::argument(&mut request, b"EVAL");
                wire::argument(&mut request, scripts::PUBLISH_SOURCE.as_bytes());
            } else {
                wire::argument(&mut request, b"EVALSHA");
                wire::argument(&mut request, scripts::PUBLISH.get_hash().as_bytes());
            }
            let mut pushed = 0;
            self.publish_args(parts, |arg| {
                wire::argument(&mut request, arg);
                pushed += 1;
            });
            if pushed != count {
                return Err(StoreError::Reply(
                    "publish call arguments do not match their count; nothing was sent",
                ));
            }
        }
        if let Some(wait) = wait {
            let timeout = u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX);
            wire::command(
                &mut request,
                &[
                    b"WAIT",
                    wait.replicas.to_string().as_bytes(),
                    timeout.to_string().as_bytes(),
                ],
            );
        }
        Ok(request)
    }
}

/// `wait` with its timeout shortened to leave `RESPONSE_TIMEOUT` before `deadline` (at least 1 ms:
/// 0 would wait forever), so the calls it follows answer in time; `Busy` (nothing is sent) once
/// the deadline has passed.
fn answered_by(
    wait: Option<PublishWait>,
    deadline: Instant,
) -> Result<Option<PublishWait>, StoreError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(StoreError::Busy);
    }
    Ok(wait.map(|wait| PublishWait {
        timeout: wait
            .timeout
            .min(left.saturating_sub(RESPONSE_TIMEOUT))
            .max(Duration::from_millis(1)),
        ..wait
    }))
}

/// `call`, answered by `deadline` or given up as `Late` (it may have been sent, and applied).
async fn by<T>(
    deadline: Instant,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout_at(deadline.into(), call)
        .await
        .unwrap_or(Err(StoreError::Late))
}

/// The failure of a call (or pipeline) every one of its `publishes` shares.
fn shared_failure(error: StoreError, publishes: usize) -> Vec<Result<ScriptAppended, StoreError>> {
    let error = Arc::new(error);
    (0..publishes)
        .map(|_| Err(StoreError::Shared(Arc::clone(&error))))
        .collect()
}

/// Each script call's reply among `replies` (`calls` of them, then `WAIT`'s count when `wait`):
/// an error reply is that call's; replicas short of `wait` fail every call that wrote. Once a
/// script ran, an answer that is not a count leaves its replication unknown.
fn script_replies(
    replies: Vec<wire::Reply<'_>>,
    calls: usize,
    wait: Option<PublishWait>,
) -> Vec<Result<Value, StoreError>> {
    let mut replies = replies.into_iter();
    let scripts: Vec<Result<Value, StoreError>> = replies
        .by_ref()
        .take(calls)
        .map(|reply| match reply {
            wire::Reply::Error(message) => Err(wire::WireError::server(message).into()),
            reply => Ok(wire_value(&reply)),
        })
        .collect();
    let Some(wait) = wait else {
        return scripts;
    };
    let acked = match replies.next() {
        Some(wire::Reply::Int(acked)) => Some(acked),
        _ => None,
    };
    scripts
        .into_iter()
        .map(|script| {
            script.and_then(|value| match acked {
                Some(acked) if acked >= i64::from(wait.replicas) => Ok(value),
                Some(acked) => Err(StoreError::NotReplicated {
                    acked,
                    wanted: wait.replicas,
                }),
                None => Err(wire::WireError::Protocol("WAIT did not return a count").into()),
            })
        })
        .collect()
}

/// The gathering task; ends when the store is gone.
async fn gather(store: Weak<Inner>, mut jobs: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Job> = None; // the one that did not fit in the last call
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = first.wanted() else {
            continue;
        };
        let mut members = first.part.members.len();
        let mut bytes = first.part.bytes();
        let mut batch = vec![first];
        while let Ok(job) = jobs.try_recv() {
            let Some(job) = job.wanted() else { continue };
            let (more, size) = (job.part.members.len(), job.part.bytes());
            if members + more > MAX_MEMBERS || bytes + size > MAX_BYTES {
                carried = Some(job);
                break;
            }
            members += more;
            bytes += size;
            batch.push(job);
        }
        let Some(inner) = store.upgrade() else { return };
        let store = Store { inner };
        tokio::spawn(async move {
            store.commit_jobs(batch).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: PublishWait = PublishWait {
        replicas: 1,
        timeout: Duration::from_secs(10),
    };

    #[test]
    fn a_wait_is_shortened_to_answer_before_the_deadline() {
        let now = Instant::now();
        let wait = |left: Duration| answered_by(Some(WAIT), now + left).map(|w| w.unwrap().timeout);
        assert_eq!(wait(Duration::from_secs(60)).unwrap(), WAIT.timeout);
        let shortened = wait(Duration::from_secs(7)).unwrap();
        assert!(shortened <= Duration::from_secs(5) && shortened > Duration::from_secs(4));
        assert_eq!(
            wait(Duration::from_secs(1)).unwrap(),
            Duration::from_millis(1)
        );
        assert!(matches!(
            answered_by(None, now + Duration::from_secs(1)),
            Ok(None)
        ));
        assert!(matches!(
            answered_by(Some(WAIT), now),
            Err(StoreError::Busy)
        ));
    }
}
