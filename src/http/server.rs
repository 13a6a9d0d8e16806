//! The HTTP/1 server: accepts connections and serves them through the router.
//!
//! An SSE stream lives for hours, so what a connection holds is paid for every open stream. hyper
//! keeps an 8 KiB (often 16 KiB) read buffer and an 8 KiB write buffer per connection for its
//! whole life: two thirds of an idle stream's memory. So a connection whose first request is a
//! plain `GET /notification/subscribe` is driven here instead: the request head is read into a
//! short-lived buffer, the router answers it as usual (auth, CORS, tracing, errors), and the SSE
//! body is written to the socket frame by frame with nothing buffered in between. Any other
//! request, or anything unusual about this one, goes to hyper together with the bytes already read.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, DATE, HeaderName, HeaderValue, TRANSFER_ENCODING,
};
use axum::http::{HeaderMap, Request, StatusCode, Version};
use futures_util::future::Either;
use futures_util::{FutureExt as _, StreamExt as _};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::{AppState, MAX_BODY, SUBSCRIBE_PATHS, publish};
use crate::metrics::Metrics;

/// A client must send its first request head within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// First allocation for a request head; a browser's with cookies fits in a few hundred bytes.
const HEAD_BUFFER: usize = 2048;
/// A head longer than this is hyper's to judge (it answers 431 when it is too long).
const MAX_HEAD: usize = 16 * 1024;
/// Headers a subscribe request may have on this path; more go to hyper.
const MAX_HEADERS: usize = 48;
/// hyper's read buffer, whatever a client sends: a head must fit (else 431), and a pipelined or
/// slow request cannot make it grow (hyper's default is ~400 KiB per connection).
const HYPER_MAX_BUFFER: usize = 2 * MAX_HEAD;
/// Headers a request may have on any path (hyper answers 431 above).
const HYPER_MAX_HEADERS: usize = 64;
/// What a streamed connection's client may send after its request before it is dropped: a
/// browser sends nothing; anything more is read and discarded only this far, so a client cannot
/// make the service spin on its input.
const MAX_TRAILING_INPUT: usize = 1024;
/// A client whose socket accepts nothing for this long is not reading: it is dropped. (One that
/// is merely slow is dropped sooner, by the hub, when its 256-frame queue fills.)
const WRITE_STALL: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors), doubling to a second while the
/// failures go on.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a new connection waits for the slot of one closed to make room for it.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Connections that have not sent their first request yet (idle sockets, slow heads), oldest
/// first: at the connection limit the oldest is closed to make room, so a flood of idle sockets
/// cannot lock out health checks and real clients. A connection being served is never closed.
#[derive(Default)]
struct Waiting {
    next: std::sync::atomic::AtomicU64,
    connections: std::sync::Mutex<std::collections::BTreeMap<u64, CancellationToken>>,
}

/// A connection's place in [`Waiting`] until its first request has arrived.
struct Ticket {
    waiting: std::sync::Arc<Waiting>,
    id: u64,
    evicted: CancellationToken,
}

impl Ticket {
    /// Its first request arrived (or it ended): it can no longer be evicted.
    fn served(self) {
        self.waiting.lock().remove(&self.id);
    }
}

impl Waiting {
    fn register(self: &std::sync::Arc<Self>) -> Ticket {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let evicted = CancellationToken::new();
        self.lock().insert(id, evicted.clone());
        Ticket {
            waiting: self.clone(),
            id,
            evicted,
        }
    }

    /// Closes the connection that has waited longest for its first request; false if none.
    fn evict_oldest(&self) -> bool {
        let oldest = self.lock().pop_first();
        oldest.map(|(_, token)| token.cancel()).is_some()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, CancellationToken>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serves until `shutdown` is cancelled, then stops accepting and waits for open connections:
/// streams end themselves with a goodbye, hyper connections finish their request and close.
/// At most `max_connections` are open at once. Past that, the connection that has waited longest
/// without sending a request is closed to make room; when every connection is being served, the
/// new one is closed as soon as it is accepted (a browser retries; a probe sees a refusal instead
/// of the process running out of descriptors and stalling everyone).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    app: AppState,
    shutdown: CancellationToken,
) {
    let max_connections = app.config.limits.max_connections;
    let metrics = app.metrics.clone();
    let app = std::sync::Arc::new(app);
    let connections = TaskTracker::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    let waiting = std::sync::Arc::new(Waiting::default());
    let mut failures: u64 = 0;
    let mut refused: u64 = 0;
    loop {
        let socket = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _peer)) => socket,
                Err(error) => {
                    // One log line per burst, then quiet until accepting works again.
                    if failures == 0 {
                        tracing::error!(%error, "cannot accept connections; backing off");
                    }
                    failures += 1;
                    let pause = ACCEPT_BACKOFF
                        .saturating_mul(1 << failures.min(7))
                        .min(MAX_ACCEPT_BACKOFF);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        if failures > 0 {
            tracing::warn!(failures, "accepting connections again");
            failures = 0;
        }
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) if waiting.evict_oldest() => {
                metrics.idle_connections_evicted.inc();
                tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(slot) = slot else {
            if refused == 0 {
                tracing::warn!(
                    max_connections,
                    "connection limit reached; closing new connections"
                );
            }
            refused += 1;
            metrics.connections_refused.inc();
            drop(socket);
            continue;
        };
        if refused > 0 {
            tracing::info!(refused, "below the connection limit again");
            refused = 0;
        }
        // SSE frames are small and each is written whole: Nagle would only delay them.
        let _ = socket.set_nodelay(true);
        // Registered here, in accept order, not when its task first runs: the oldest is evicted.
        let ticket = waiting.register();
        let connection = connection(
            socket,
            router.clone(),
            std::sync::Arc::clone(&app),
            ticket,
            shutdown.clone(),
        );
        let open = metrics.clone();
        open.open_connections.inc();
        connections.spawn(async move {
            connection.await;
            open.open_connections.dec();
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn connection(
    socket: TcpStream,
    router: Router,
    app: std::sync::Arc<AppState>,
    ticket: Ticket,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    // Boxed for the head's duration, like every short step here: an open event stream, the
    // common connection, holds only what its writing loop needs.
    let first = Box::pin(async {
        tokio::select! {
            first = tokio::time::timeout(HEAD_TIMEOUT, read_first_head(&socket)) => Some(first),
            () = ticket.evicted.cancelled() => None,
        }
    })
    .await;
    let Some(first) = first else {
        tracing::debug!("closed a connection that sent no request, to make room for a new one");
        return;
    };
    ticket.served();
    let first = match first {
        Ok(Ok(first)) => first,
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection failed before its first request");
            return;
        }
        Err(_) => {
            tracing::debug!("no request within {HEAD_TIMEOUT:?}; closing the connection");
            return;
        }
    };
    match first {
        FirstRequest::None => {}
        FirstRequest::Stream(request) => stream(socket, router, request, &app.metrics).await,
        FirstRequest::Other(read) => {
            // One deadline per head, whichever path reads it: hyper gets what is left of it.
            let left = HEAD_TIMEOUT.saturating_sub(started.elapsed());
            Box::pin(hyper(
                Rewind::new(read, socket),
                router,
                app,
                left,
                shutdown,
            ))
            .await;
        }
    }
}

enum FirstRequest {
    /// The client closed without sending anything.
    None,
    /// A subscribe request this module drives itself.
    Stream(Box<Request<Body>>),
    /// Anything else, with the bytes read so far.
    Other(Vec<u8>),
}

async fn read_first_head(socket: &TcpStream) -> io::Result<FirstRequest> {
    let mut read = Vec::with_capacity(HEAD_BUFFER);
    loop {
        if read.len() == read.capacity() {
            if read.len() >= MAX_HEAD {
                return Ok(FirstRequest::Other(read));
            }
            read.reserve(read.len());
        }
        socket.readable().await?;
        let received = match socket.try_read_buf(&mut read) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            received => received?,
        };
        if received == 0 {
            return Ok(if read.is_empty() {
                FirstRequest::None
            } else {
                FirstRequest::Other(read) // hyper reports the truncated request
            });
        }
        match subscribe_request(&read) {
            Parsed::Partial => {}
            Parsed::Stream(request) => return Ok(FirstRequest::Stream(request)),
            Parsed::Other => return Ok(FirstRequest::Other(read)),
        }
    }
}

enum Parsed {
    Partial,
    Stream(Box<Request<Body>>),
    Other,
}

/// A bodiless HTTP/1.1 `GET` of the subscribe route with nothing hyper would need to handle
/// (upgrades, `Expect`, a body) becomes a request for the router; anything else is `Other`.
fn subscribe_request(read: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(read) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    }
    let (Some("GET"), Some(target), Some(1)) = (head.method, head.path, head.version) else {
        return Parsed::Other;
    };
    let route = target.split_once('?').map_or(target, |(route, _)| route);
    if !SUBSCRIBE_PATHS.contains(&route) {
        return Parsed::Other;
    }
    let mut request = Request::new(Body::empty());
    *request.version_mut() = Version::HTTP_11;
    let Ok(uri) = target.parse() else {
        return Parsed::Other;
    };
    *request.uri_mut() = uri;
    let map = request.headers_mut();
    for header in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return Parsed::Other;
        };
        map.append(name, value);
    }
    let needs_hyper = ["content-length", "transfer-encoding", "expect", "upgrade"]
        .iter()
        .any(|name| map.contains_key(*name));
    if needs_hyper {
        return Parsed::Other;
    }
    Parsed::Stream(Box::new(request))
}

/// Answers one subscribe request and closes the connection: an event stream chunk by chunk as
/// the session produces it, anything else (a 401, a 400) whole.
async fn stream(socket: TcpStream, router: Router, request: Box<Request<Body>>, metrics: &Metrics) {
    let routed = Box::pin(async move {
        match router.oneshot(*request).await {
            Ok(response) => Routed::from(response),
            Err(never) => match never {},
        }
    })
    .await;
    let outcome = match routed {
        Routed::Stream { head, body } => write_stream(&socket, head, body).await,
        Routed::Whole(response) => Box::pin(write_whole(&socket, *response)).await,
    };
    match outcome {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::TimedOut => {
            metrics.slow_client_disconnects.inc();
            tracing::debug!("client stopped reading; closing its stream");
        }
        Err(error) => tracing::debug!(%error, "stream connection closed"),
    }
}

/// A routed response: an event stream (its head already serialized, so the headers are not kept
/// while it is open) or anything else (boxed: it is not what this path is for).
enum Routed {
    Stream { head: Vec<u8>, body: Body },
    Whole(Box<axum::response::Response>),
}

impl From<axum::response::Response> for Routed {
    fn from(response: axum::response::Response) -> Self {
        let is_stream = response.status() == StatusCode::OK
            && response
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !is_stream {
            return Self::Whole(Box::new(response));
        }
        let (parts, body) = response.into_parts();
        let head = response_head(StatusCode::OK, &parts.headers, "transfer-encoding: chunked");
        Self::Stream { head, body }
    }
}

async fn write_stream(socket: &TcpStream, head: Vec<u8>, body: Body) -> io::Result<()> {
    write_owned(socket, head).await?;
    let mut body = body.into_data_stream();
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            () = closed_by_client(socket) => return Ok(()),
        };
        match chunk {
            Some(Ok(chunk)) if chunk.is_empty() => {}
            Some(Ok(chunk)) => {
                let size = format!("{:x}\r\n", chunk.len());
                let mut frame = [
                    IoSlice::new(size.as_bytes()),
                    IoSlice::new(&chunk),
                    IoSlice::new(b"\r\n"),
                ];
                write_all(socket, &mut frame).await?;
            }
            Some(Err(error)) => {
                // Ends without the last chunk, so the client sees a broken stream, not a clean end.
                tracing::warn!(%error, "event stream failed");
                return Ok(());
            }
            None => return write_all(socket, &mut [IoSlice::new(b"0\r\n\r\n")]).await,
        }
    }
}

/// Writes `bytes` and frees them before the caller's next step.
async fn write_owned(socket: &TcpStream, bytes: Vec<u8>) -> io::Result<()> {
    write_all(socket, &mut [IoSlice::new(&bytes)]).await
}

async fn write_whole(socket: &TcpStream, response: axum::response::Response) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let (status, headers) = (parts.status, &parts.headers);
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(io::Error::other)?;
    let length = format!("content-length: {}", body.len());
    let head = response_head(status, headers, &length);
    write_all(socket, &mut [IoSlice::new(&head), IoSlice::new(&body)]).await
}

/// Status line and headers, as hyper would write them (a `date`, the framing), except that the
/// connection closes after this response, and says so.
fn response_head(status: StatusCode, headers: &HeaderMap, framing: &str) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    if !headers.contains_key(DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let framed_here = |name: &HeaderName| name == CONTENT_LENGTH || name == TRANSFER_ENCODING;
    for (name, value) in headers.iter().filter(|(name, _)| !framed_here(name)) {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(framing.as_bytes());
    head.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    head
}

/// Writes everything, waiting for the socket while the client reads; a socket that stays full
/// for `WRITE_STALL` fails with `TimedOut`. The common case, room in the socket buffer, costs one
/// `writev` and no timer.
async fn write_all(socket: &TcpStream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut stall = None;
    IoSlice::advance_slices(&mut bufs, 0); // skips empty slices
    while !bufs.is_empty() {
        match socket.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut bufs, written),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                // The timer only for a client that stopped reading, and boxed: not in every
                // stream's state.
                let stall = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
                tokio::select! {
                    biased; // a socket writable when the timer fires still gets the write
                    ready = std::future::poll_fn(|cx| socket.poll_write_ready(cx)) => ready?,
                    () = stall.as_mut() => return Err(io::ErrorKind::TimedOut.into()),
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Resolves when the client closes its end (or resets it), or sends more than
/// `MAX_TRAILING_INPUT` after its request: this connection answers one request, and a client
/// that keeps sending is dropped rather than read for ever.
async fn closed_by_client(socket: &TcpStream) {
    let mut received = 0;
    while received <= MAX_TRAILING_INPUT {
        // Readiness polled directly (this task is the socket's only reader): the wait adds
        // nothing to the state every open stream holds, and neither does the buffer.
        if std::future::poll_fn(|cx| socket.poll_read_ready(cx))
            .await
            .is_err()
        {
            return;
        }
        let mut discard = [0u8; 256];
        match socket.try_read(&mut discard) {
            Ok(0) => return,
            Ok(n) => received += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
    tracing::debug!(
        received,
        "client kept sending after its request; closing its stream"
    );
}

/// Serves the connection with hyper, which first reads the bytes this module already read, with
/// the same limits as the streamed path: head size and header count, `head_timeout` for each
/// head (the first one's remainder; it also closes a keep-alive connection idle that long), and
/// a client that stops reading is dropped after `WRITE_STALL`. A plain publish skips the router
/// (`publish::direct`).
async fn hyper(
    io: Rewind,
    router: Router,
    app: std::sync::Arc<AppState>,
    head_timeout: Duration,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        if publish::is_direct(&request, &app) {
            Either::Left(publish::direct(std::sync::Arc::clone(&app), request).map(Ok))
        } else {
            Either::Right(router.clone().oneshot(request))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(HYPER_MAX_BUFFER)
        .max_headers(HYPER_MAX_HEADERS)
        .header_read_timeout(head_timeout.max(Duration::from_millis(1)));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "connection closed with an error");
    }
}

/// A socket whose first reads return bytes already taken from it, and whose writes fail with
/// `TimedOut` once the client has accepted nothing for `WRITE_STALL` (hyper would wait for ever).
struct Rewind {
    read: Vec<u8>,
    offset: usize,
    socket: TcpStream,
    /// Armed while a write waits for room in the socket.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Rewind {
    fn new(read: Vec<u8>, socket: TcpStream) -> Self {
        Self {
            read,
            offset: 0,
            socket,
            stall: None,
        }
    }

    /// Passes a write's outcome through, timing how long it has been waiting for room.
    fn stall_guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.stall = None;
            return written;
        }
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.offset < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.offset);
            buf.put_slice(&this.read[this.offset..this.offset + n]);
            this.offset += n;
            if this.offset == this.read.len() {
                this.read = Vec::new(); // the connection may live long: free it
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.socket).poll_write(cx, buf);
        this.stall_guard(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.socket).poll_write_vectored(cx, bufs);
        this.stall_guard(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(read: &[u8]) -> &'static str {
        match subscribe_request(read) {
            Parsed::Partial => "partial",
            Parsed::Stream(_) => "stream",
            Parsed::Other => "other",
        }
    }

    #[test]
    fn only_plain_subscribe_requests_are_streamed_here() {
        let get = b"GET /notification/subscribe?token=x HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 1-0\r\n\r\n";
        assert_eq!(route(get), "stream");
        assert_eq!(
            route(b"GET /notification/subscribe/ HTTP/1.1\r\n\r\n"),
            "stream"
        );
        assert_eq!(route(&get[..30]), "partial");
        assert_eq!(
            route(b"GET /notification/subscribe HTTP/1.0\r\n\r\n"),
            "other"
        );
        assert_eq!(route(b"POST /notifications HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(
            route(b"GET /notification/subscriber HTTP/1.1\r\n\r\n"),
            "other"
        );
        assert_eq!(
            route(b"HEAD /notification/subscribe HTTP/1.1\r\n\r\n"),
            "other"
        );
        assert_eq!(
            route(b"GET /notification/subscribe HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            "other"
        );
        assert_eq!(
            route(b"GET /notification/subscribe HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            "other"
        );
        assert_eq!(route(b"\x16\x03\x01 not http"), "other");
    }

    #[test]
    fn the_request_keeps_every_header_and_the_query() {
        let Parsed::Stream(request) = subscribe_request(
            b"GET /notification/subscribe?lastEventId=5-0 HTTP/1.1\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
        ) else {
            panic!("not streamed");
        };
        assert_eq!(request.uri().query(), Some("lastEventId=5-0"));
        assert_eq!(request.headers().get_all("cookie").iter().count(), 2);
    }
}
