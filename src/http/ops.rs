//! Operations routes: liveness, readiness, Prometheus metrics and the demo page.

use axum::Json;
use axum::extract::State;
use std::sync::LazyLock;

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE, ETAG as ETAG_HEADER, IF_NONE_MATCH,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::AppState;

/// The process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to serve: Redis answers, every live reader follows its fan-out streams, and Redis does
/// not evict keys (an evicted notification would be lost without a trace).
pub async fn readyz(State(app): State<AppState>) -> Response {
    let redis = app.store.ping().await;
    let live = app.live.is_ready();
    let evicting = app.store.any_may_evict();
    let status = if redis.is_ok() && live && !evicting {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if let Err(error) = &redis {
        app.metrics.redis_error("ping");
        tracing::warn!(
            error = error as &dyn std::error::Error,
            "not ready: redis unreachable"
        );
    }
    let mut body = json!({
        "status": if status.is_success() { "ready" } else { "unavailable" },
        "redis": redis.is_ok(),
        "live": live,
    });
    if evicting {
        body["error"] = json!(
            "redis maxmemory-policy evicts keys: set maxmemory-policy noeviction (an evicted member stream would look expired, and its notifications be lost without a trace)"
        );
    }
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(CONTENT_TYPE, content_type)], app.metrics.render()).into_response()
}

/// The browser client (CLIENT.md) as its package exports it: the minified build of
/// clients/js/sse-notify.js (scripts/client-build.sh; scripts/test.sh fails if it is stale),
/// embedded at build time.
const CLIENT: &str = include_str!("../../clients/js/dist/sse-notify.js");

/// `GET /client/sse-notify.js`: cacheable (a validator that changes with the file) and readable
/// from any origin (it is public code; credentials are never needed for it).
pub async fn client(headers: HeaderMap) -> Response {
    static ETAG: LazyLock<String> = LazyLock::new(|| {
        let digest = Sha256::digest(CLIENT.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("\"{hex}\"")
    });
    let cache = [
        (CACHE_CONTROL, "public, max-age=300"),
        (ETAG_HEADER, ETAG.as_str()),
        (ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    ];
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == ETAG.as_str()));
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CLIENT,
    )
        .into_response()
}

pub async fn demo() -> Response {
    (
        [(CACHE_CONTROL, "no-cache")],
        Html(include_str!("../../static/index.html")),
    )
        .into_response()
}
