//! `POST /notifications`: validate, then one `Store::append` (API.md, publish).
//!
//! Publishing is most of the service's request traffic, so hyper hands a plain publish to
//! [`direct`], which skips the router and its layers and keeps what they do for it: the request's
//! span and its events, the deadline, the body limit, and the same extractors, so every answer is
//! the routed one. Plain: without `Origin` (not a browser's) and with no CORS configured (the CORS
//! layer adds `Vary` and `Access-Control-Allow-Credentials` to every response).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest as _, FromRequestParts as _, State};
use axum::http::header::ORIGIN;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, OnRequest as _, OnResponse as _};
use tracing::Instrument as _;

use super::auth::Publisher;
use super::error::ApiError;
use super::{AppState, MAX_BODY};
use crate::model::{IdempotencyKey, Kind, MemberId, content_text};
use crate::store::NewNotification;

/// Most members one request may address; larger fan-outs are split by the caller.
pub const MAX_MEMBERS: usize = 1_000;

/// The publish route (the router's, and [`direct`]'s).
pub const PATH: &str = "/notifications";

#[derive(Deserialize)]
pub struct PublishRequest {
    member_id: Option<MemberId>,
    member_ids: Option<Vec<MemberId>>,
    #[serde(default, rename = "type")]
    kind: Kind,
    /// As sent (`Some("null")` for `"content": null`), `None` when absent.
    #[serde(default, deserialize_with = "present")]
    content: Option<Box<RawValue>>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

pub async fn publish(
    State(app): State<AppState>,
    _publisher: Publisher,
    headers: HeaderMap,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    store(&app, body, idempotency_key(&headers)).await
}

/// Whether hyper may give `request` to [`direct`] instead of the router.
pub fn is_direct<B>(request: &Request<B>, app: &AppState) -> bool {
    request.method() == Method::POST
        && request.uri().path() == PATH
        && !request.headers().contains_key(ORIGIN)
        && app.config.cors_origins.is_empty()
}

/// [`publish`] without the router: the same extractors in the same order, within the same span
/// and deadline as a routed request.
pub async fn direct(app: Arc<AppState>, request: Request<hyper::body::Incoming>) -> Response {
    let span = super::request_span(&request);
    let started = Instant::now();
    DefaultOnRequest::default().on_request(&request, &span);
    let answer = async move {
        let (mut parts, body) = request.into_parts();
        if let Err(error) = Publisher::from_request_parts(&mut parts, &app).await {
            return error.into_response();
        }
        let key = idempotency_key(&parts.headers);
        // The router's `DefaultBodyLimit`, as the body's own limit: `Json` answers 413 past it.
        let limited = Body::new(http_body_util::Limited::new(body, MAX_BODY));
        let body =
            Json::<PublishRequest>::from_request(Request::from_parts(parts, limited), &()).await;
        store(&app, body, key).await.into_response()
    };
    let response = super::within_deadline(answer)
        .instrument(span.clone())
        .await;
    DefaultOnResponse::default().on_response(&response, started.elapsed(), &span);
    response
}

/// Validates the publish and stores it; what both paths answer.
async fn store(
    app: &AppState,
    body: Result<Json<PublishRequest>, JsonRejection>,
    idempotency_key: Result<Option<IdempotencyKey>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(PublishRequest {
        member_id,
        member_ids,
        kind,
        content,
    }) = body?;
    // One line: no raw line break reaches the SSE framing.
    let content = content
        .map(|content| content_text(&content))
        .transpose()
        .map_err(|error| ApiError::bad_request(format!("content is not valid JSON: {error}")))?;
    let members = members(member_id, member_ids)?;
    let content = content.ok_or_else(|| ApiError::bad_request("content is required"))?;
    let idempotency_key = idempotency_key?;
    let started = Instant::now();
    let note = NewNotification {
        members: &members,
        kind: &kind,
        content: &content,
        idempotency_key: idempotency_key.as_ref(),
    };
    let appended = app.store.append(&note).await.map_err(|error| {
        app.metrics.redis_error("publish");
        if error.outcome_unknown() {
            app.metrics.publish_outcome_unknown.inc();
            ApiError::OutcomeUnknown(error)
        } else {
            ApiError::StoreUnavailable(error)
        }
    })?;
    app.metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    app.metrics
        .published
        .inc_by((members.len() - appended.repeated) as u64);
    app.metrics
        .data_losses
        .inc_by(appended.losses_proven as u64);

    let status = if appended.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let ids: Vec<String> = appended.ids.iter().map(ToString::to_string).collect();
    Ok((status, Json(json!({ "ids": ids }))))
}

/// `member_id` or `member_ids` (not both), each a valid member id (a string or, as the old
/// service's numeric ids, a non-negative integer), none listed twice.
fn members(
    member_id: Option<MemberId>,
    member_ids: Option<Vec<MemberId>>,
) -> Result<Vec<MemberId>, ApiError> {
    let members = match (member_id, member_ids) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if many.is_empty() => {
            return Err(ApiError::bad_request("member_ids is empty"));
        }
        (None, Some(many)) if many.len() > MAX_MEMBERS => {
            return Err(ApiError::bad_request(format!(
                "member_ids holds more than {MAX_MEMBERS} members"
            )));
        }
        (None, Some(many)) => many,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give member_id or member_ids, not both",
            ));
        }
        (None, None) => return Err(ApiError::bad_request("member_id or member_ids is required")),
    };
    let mut seen = HashSet::with_capacity(members.len());
    if let Some(twice) = members.iter().find(|member| !seen.insert(*member)) {
        return Err(ApiError::bad_request(format!(
            "member {twice} is listed twice"
        )));
    }
    Ok(members)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|value| IdempotencyKey::from_bytes(value.as_bytes()))
        .transpose()
        .map_err(|error| ApiError::bad_request(format!("Idempotency-Key: {error}")))
}
