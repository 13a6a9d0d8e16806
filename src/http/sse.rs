//! `GET /notification/subscribe`: resume position → replay from the member stream → live
//! notifications, as SSE frames (API.md). Uses `Store` reads and the live `Hub`; writes nothing.
//!
//! The stream registers for live delivery before it reads history, then drops every live
//! notification at or below the last id it sent: no gap and no duplicate between the two.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::AppState;
use super::auth::Member;
use super::error::ApiError;
use crate::live::Subscription;
use crate::metrics::Metrics;
use crate::model::{
    Entry, MemberId, ReadState, Resume, ResumeHints, StreamId, push_notification_frame,
};
use crate::recovery;
use crate::store::keys::partition_of;

/// Entries read from a member stream per round trip: bounds the memory a replay holds.
const REPLAY_BATCH: usize = 500;

pub async fn subscribe(
    State(app): State<AppState>,
    member: Member,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let resume = Resume::from_hints(ResumeHints {
        last_event_id_header: header("last-event-id"),
        last_event_id_query: query.get("lastEventId").map(String::as_str),
        last_message: header("last_message")
            .or_else(|| query.get("last_message").map(String::as_str)),
    })
    .map_err(|e| ApiError::bad_request(e.to_string()))?;

    // Past MAX_STREAMS, `retry:` only: the browser comes back later, and the connections kept in
    // reserve stay free for health checks and publishes.
    let full = app.metrics.open_streams.get() >= app.config.limits.max_streams as i64;
    if full {
        app.metrics.streams_refused.inc();
    }
    let subscription = if full {
        None
    } else {
        let subscription = app.live.subscribe(&member.id).ok();
        if subscription.is_none() {
            app.metrics.store_unavailable_subscribes.inc();
        }
        subscription
    };
    tracing::debug!(member_id = %member.id, ?resume, live = subscription.is_some(), "stream opened");
    let session = Session::new(app, member, resume, subscription);
    let body = Body::from_stream(stream::unfold(session, |mut session| async move {
        let chunk = session.next_chunk().await?;
        session.wrote();
        Some((Ok::<_, std::convert::Infallible>(chunk), session))
    }));
    let headers = [
        (CONTENT_TYPE, "text/event-stream"),
        (CACHE_CONTROL, "no-cache"),
        (HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    Ok((headers, body).into_response())
}

enum Phase {
    Start(Resume),
    Replay { after: StreamId },
    Live,
    Done,
}

/// One open stream's state: everything it needs lives here, nothing is shared per stream.
struct Session {
    app: AppState,
    member: MemberId,
    phase: Phase,
    /// `None` when live delivery was unavailable at subscribe time (Redis unreachable).
    subscription: Option<Subscription>,
    last_sent: StreamId,
    /// The read position this stream last told its client (in `connected` or `event: read`): a
    /// read move queued before the stream read its state is already in it, and is not repeated.
    read_up_to: StreamId,
    /// When the token expires; the stream ends then.
    expires_at: Option<Instant>,
    /// When the last chunk went out: a heartbeat follows `config.heartbeat` of silence.
    last_write: Instant,
    /// One timer for both heartbeat and expiry, re-armed only when it fires (not per chunk).
    timer: Pin<Box<Sleep>>,
    /// Registered once, not on every wait: a stream waits thousands of times.
    draining: Pin<Box<WaitForCancellationFutureOwned>>,
    _open: OpenStream,
}

impl Session {
    fn new(
        app: AppState,
        member: Member,
        resume: Resume,
        subscription: Option<Subscription>,
    ) -> Self {
        let expires_at = member.expires_at.map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now() + left
        });
        let now = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(wake_at(
            now + app.config.heartbeat,
            expires_at,
        )));
        let draining = Box::pin(app.shutdown.clone().cancelled_owned());
        let open = OpenStream::new(&app.metrics);
        Self {
            app,
            member: member.id,
            phase: Phase::Start(resume),
            subscription,
            last_sent: StreamId::ZERO,
            read_up_to: StreamId::ZERO,
            expires_at,
            last_write: now,
            timer,
            draining,
            _open: open,
        }
    }

    fn wrote(&mut self) {
        self.last_write = Instant::now();
    }

    /// The next bytes to write, or `None` to end the stream.
    ///
    /// The start and replay steps (Redis round trips, large futures) are boxed for their duration:
    /// a stream waiting for live notifications, most of them for most of their life, then holds
    /// only the small future of `live`.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Start(resume) => Some(Box::pin(self.start(resume)).await),
            Phase::Replay { after } => Box::pin(self.replay(after)).await,
            Phase::Live => self.live().await,
            Phase::Done => None,
        }
    }

    /// `retry:`, then `connected` and the first replay batch; only `retry:` when Redis is away,
    /// so the browser comes back later instead of giving up (a non-200 would stop it for good).
    async fn start(&mut self, resume: Resume) -> Bytes {
        let mut out = format!("retry: {}\n\n", self.app.config.retry.as_millis());
        if self.subscription.is_none() {
            return out.into(); // Redis unreachable, or MAX_STREAMS open (counted in `subscribe`)
        }
        let (after, as_of) = match resume {
            Resume::Fresh => return self.start_fresh(out).await,
            Resume::After(after) => (after, Some(after)),
            Resume::Since(after) => (after, None),
        };
        let cutoff_ms = self.app.store.retention_cutoff_ms();
        let start = recovery::replay_start(after, cutoff_ms);
        let head = match self
            .app
            .store
            .replay_head(&self.member, start, REPLAY_BATCH, as_of)
            .await
        {
            Ok(head) => head,
            Err(error) => {
                self.app.metrics.redis_error("replay");
                self.app.metrics.store_unavailable_subscribes.inc();
                tracing::warn!(member_id = %self.member, error = &error as &dyn std::error::Error, "replay failed; asking the client to retry");
                return out.into();
            }
        };
        if head.lost {
            self.app.metrics.data_losses.inc();
        }
        let mut verdict = recovery::judge(after, cutoff_ms, &head.snapshot, head.entries.first());
        // An evicted stream looks like an expired one: nothing can be vouched for.
        verdict.recovered &= !self.app.store.may_evict(partition_of(&self.member));
        push_connected(&mut out, &self.member, verdict.recovered, &head.read);
        self.read_up_to = head.read.read_up_to;
        // Live delivery drops what is at or below the resume position from the start, whether
        // or not anything is replayed: an instance whose reader lags would send it again.
        self.last_sent = verdict.from;
        self.push_entries(&mut out, &head.entries);
        out.into()
    }

    /// No position: `connected` with the read state as of the member's newest notification, after
    /// which the stream sends only newer ones (those up to it are in the count).
    async fn start_fresh(&mut self, mut out: String) -> Bytes {
        match self.app.store.unread(&self.member).await {
            Ok(read) => {
                push_connected(&mut out, &self.member, true, &read);
                self.last_sent = read.as_of;
                self.read_up_to = read.read_up_to;
                self.phase = Phase::Live;
            }
            Err(error) => {
                self.app.metrics.redis_error("unread");
                self.app.metrics.store_unavailable_subscribes.inc();
                tracing::warn!(member_id = %self.member, error = &error as &dyn std::error::Error, "read state unavailable; asking the client to retry");
            }
        }
        out.into()
    }

    async fn replay(&mut self, after: StreamId) -> Option<Bytes> {
        if self.app.shutdown.is_cancelled() {
            return Some(goodbye(self.app.config.retry));
        }
        match self
            .app
            .store
            .read_after(&self.member, after, REPLAY_BATCH)
            .await
        {
            Ok(entries) => {
                let cutoff_ms = self.app.store.retention_cutoff_ms();
                if let Some(first) = entries.first()
                    && !recovery::batch_follows(after, first, cutoff_ms)
                {
                    // Trimmed (or expired) while this client was being served: ending the stream
                    // makes it reconnect from its last id and learn `recovered: false`.
                    self.app.metrics.replay_gaps.inc();
                    tracing::info!(member_id = %self.member, %after, next = %first.id, next_prev = %first.prev, "gap in a replay; closing the stream so the client resumes by id");
                    return None;
                }
                let mut out = String::new();
                self.push_entries(&mut out, &entries);
                Some(out.into())
            }
            Err(error) => {
                // The client resumes from the last id it got.
                self.app.metrics.redis_error("replay");
                tracing::warn!(member_id = %self.member, error = &error as &dyn std::error::Error, "replay interrupted; closing the stream");
                None
            }
        }
    }

    /// Frames a batch (read from inside the retention window, continuity checked) and moves to
    /// the next batch, or to live delivery after a short one.
    fn push_entries(&mut self, out: &mut String, entries: &[Entry]) {
        out.reserve(entries.iter().map(Entry::frame_capacity).sum());
        let mut replayed = 0;
        for entry in entries {
            if entry.id <= self.last_sent {
                continue; // a future position was clamped to the newest id
            }
            push_notification_frame(entry, &self.member, out);
            self.last_sent = entry.id;
            replayed += 1;
        }
        self.app.metrics.replayed.inc_by(replayed);
        self.phase = match entries.last() {
            Some(last) if entries.len() == REPLAY_BATCH => Phase::Replay { after: last.id },
            _ => Phase::Live,
        };
    }

    async fn live(&mut self) -> Option<Bytes> {
        let subscription = self.subscription.as_mut()?;
        loop {
            tokio::select! {
                biased;
                () = self.draining.as_mut() => return Some(goodbye(self.app.config.retry)),
                delivery = subscription.recv() => {
                    // None: dropped by the hub (too slow, or a gap); the client resumes by id.
                    let delivery = delivery?;
                    if let Some(id) = delivery.id {
                        if id <= self.last_sent {
                            continue; // already sent by the replay
                        }
                        self.last_sent = id;
                    }
                    if let Some(read_up_to) = delivery.read_up_to {
                        if read_up_to <= self.read_up_to {
                            continue; // already in the state this stream sent (moves only go forward)
                        }
                        self.read_up_to = read_up_to;
                    }
                    self.phase = Phase::Live;
                    return Some(delivery.frame.clone());
                }
                () = self.timer.as_mut() => {
                    let now = Instant::now();
                    if self.expires_at.is_some_and(|at| at <= now) {
                        tracing::debug!(member_id = %self.member, "token expired; closing the stream");
                        return None;
                    }
                    let heartbeat_at = self.last_write + self.app.config.heartbeat;
                    if heartbeat_at <= now {
                        self.phase = Phase::Live;
                        return Some(Bytes::from_static(b": heartbeat\n\n"));
                    }
                    self.timer.as_mut().reset(wake_at(heartbeat_at, self.expires_at));
                }
            }
        }
    }
}

fn wake_at(heartbeat_at: Instant, expires_at: Option<Instant>) -> Instant {
    expires_at.map_or(heartbeat_at, |at| at.min(heartbeat_at))
}

/// On shutdown: a randomized `retry:` so native clients come back spread over a few seconds, on
/// whichever instance is still up, instead of all at once.
fn goodbye(retry: Duration) -> Bytes {
    let base = retry.as_millis() as u64;
    let retry = fastrand::u64(base / 2..=base.saturating_mul(2).max(1000));
    format!("retry: {retry}\n\n").into()
}

fn push_connected(out: &mut String, member: &MemberId, recovered: bool, read: &ReadState) {
    let _ = write!(
        out,
        "event: connected\ndata: {{\"member_id\":\"{member}\",\"recovered\":{recovered},"
    );
    read.write_fields(out);
    out.push_str("}\n\n");
}

/// Counts an open stream for as long as it lives.
struct OpenStream(Metrics);

impl OpenStream {
    fn new(metrics: &Metrics) -> Self {
        metrics.open_streams.inc();
        Self(metrics.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.dec();
    }
}
