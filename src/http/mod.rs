//! The HTTP surface (API.md): routes, shared state and the layers every request goes through.

pub mod auth;
mod error;
mod history;
mod ops;
mod publish;
mod read;
mod server;
mod sse;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use server::serve;

use crate::config::Config;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::store::Store;

/// Largest accepted request body (API.md, publish: 413 above it).
pub const MAX_BODY: usize = 64 * 1024;
/// From a request's head to its response: a body that never finishes arriving (a publish that
/// declares 10 GB and sends a byte) cannot hold a connection and a task for good. An event
/// stream's response starts at once; its body is not bound by this.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything a handler needs; each field is a cheap handle.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub live: Hub,
    pub metrics: Metrics,
    /// Cancelled when draining starts: open streams say goodbye and close.
    pub shutdown: CancellationToken,
}

/// The event stream, in both spellings (API.md). `server.rs` serves requests for these paths
/// itself, so a rename here must be a rename there: both use these constants.
pub const SUBSCRIBE_PATHS: [&str; 2] = ["/notification/subscribe", "/notification/subscribe/"];

pub fn router(state: AppState) -> Router {
    let cors = cors(&state.config);
    let [subscribe, subscribe_slash] = SUBSCRIBE_PATHS;
    let router = Router::new()
        .route(subscribe, get(sse::subscribe))
        .route(subscribe_slash, get(sse::subscribe))
        .route(publish::PATH, get(history::page).post(publish::publish))
        .route("/notifications/unread", get(read::unread))
        .route("/notifications/read", post(read::mark))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/client/sse-notify.js", get(ops::client))
        .route("/", get(ops::demo))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(deadline))
        .with_state(state);
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    // Failures are logged once, by `ApiError`, not again as a 5xx by the trace layer.
    router.layer(
        TraceLayer::new_for_http()
            .on_failure(())
            .make_span_with(request_span),
    )
}

/// A request's span, named by its path only: a query string may carry an access token. The
/// request id is the caller's `x-request-id` when it sends one (a gateway's), so logs join up
/// across hops. Field values are only computed when the span is enabled.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %request_id(request))
}

async fn deadline(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    within_deadline(next.run(request)).await
}

/// Answers 408 (and closes the connection) when a request takes longer than `REQUEST_TIMEOUT`.
async fn within_deadline(
    answer: impl Future<Output = axum::response::Response>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiError::RequestTimeout.into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// The caller's `x-request-id` when it is a plain token (1-128 of `A-Z a-z 0-9 . _ : -`, so it
/// cannot forge log fields), else a fresh random one (not secret: no system entropy needed).
fn request_id<B>(request: &Request<B>) -> String {
    let plain = |v: &str| {
        (1..=128).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    };
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| plain(v))
        .map_or_else(
            || {
                uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
                    .into_uuid()
                    .to_string()
            },
            str::to_owned,
        )
}

/// Browsers on `CORS_ORIGINS` may subscribe with credentials (cookie auth), and send the headers
/// EventSource polyfills add, which cause a preflight.
fn cors(config: &Config) -> Option<CorsLayer> {
    if config.cors_origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(
                // Checked by the config: visible ASCII, so every one is a header value.
                config
                    .cors_origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok()),
            ))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CACHE_CONTROL,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("last_message"),
                HeaderName::from_static("x-requested-with"),
                HeaderName::from_static("idempotency-key"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &[u8]) -> String {
        let request = Request::builder()
            .header(
                "x-request-id",
                axum::http::HeaderValue::from_bytes(id).unwrap(),
            )
            .body(())
            .unwrap();
        request_id(&request)
    }

    #[test]
    fn a_request_id_is_taken_only_when_it_cannot_forge_log_fields() {
        assert_eq!(with_id(b"gw-1234:abc_def.9"), "gw-1234:abc_def.9");
        for forged in [
            &b"x} level=ERROR"[..],
            b"a\"b",
            b"a=b",
            b"caf\xc3\xa9",
            &[b'x'; 129][..],
        ] {
            let id = with_id(forged);
            assert_ne!(id.as_bytes(), forged);
            assert_eq!(id.len(), 36, "a fresh uuid instead of {forged:?}");
        }
    }
}
