//! `POST /notifications`: validate, then one `Store::append` (API.md, publish).

use std::collections::HashSet;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Publisher;
use super::error::ApiError;
use crate::model::{IdempotencyKey, Kind, MemberId};
use crate::store::NewNotification;

/// Most members one request may address; larger fan-outs are split by the caller.
pub const MAX_MEMBERS: usize = 1_000;

#[derive(Deserialize)]
pub struct PublishRequest {
    member_id: Option<MemberId>,
    member_ids: Option<Vec<MemberId>>,
    #[serde(default, rename = "type")]
    kind: Kind,
    /// `Some(Value::Null)` for `"content": null`, `None` when absent.
    #[serde(default, deserialize_with = "present")]
    content: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

pub async fn publish(
    State(app): State<AppState>,
    _publisher: Publisher,
    headers: HeaderMap,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(PublishRequest {
        member_id,
        member_ids,
        kind,
        content,
    }) = body?;
    let members = members(member_id, member_ids)?;
    let content = content.ok_or_else(|| ApiError::bad_request("content is required"))?;
    let idempotency_key = idempotency_key(&headers)?;

    let started = Instant::now();
    let content = content.to_string(); // compact: no raw line breaks reach the SSE framing
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
