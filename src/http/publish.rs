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
use crate::model::MemberId;
use crate::store::NewNotification;

/// Most members one request may address; larger fan-outs are split by the caller.
pub const MAX_MEMBERS: usize = 1_000;
const MAX_TYPE_LEN: usize = 128;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

#[derive(Deserialize)]
pub struct PublishRequest {
    member_id: Option<Value>,
    member_ids: Option<Vec<Value>>,
    #[serde(rename = "type")]
    kind: Option<String>,
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
    let Json(request) = body?;
    let members = members(&request)?;
    let kind = request.kind.as_deref().unwrap_or("notification");
    if kind.is_empty() || kind.chars().count() > MAX_TYPE_LEN {
        return Err(ApiError::bad_request(format!(
            "type must be 1-{MAX_TYPE_LEN} characters"
        )));
    }
    let content = request
        .content
        .ok_or_else(|| ApiError::bad_request("content is required"))?;
    let idempotency_key = idempotency_key(&headers)?;

    let started = Instant::now();
    let content = content.to_string(); // compact: no raw line breaks reach the SSE framing
    let note = NewNotification {
        members: &members,
        kind,
        content: &content,
        idempotency_key,
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

/// `member_id` or `member_ids` (not both), each a valid member id, given as a string or, as the old
/// service's numeric ids, a non-negative integer.
fn members(request: &PublishRequest) -> Result<Vec<MemberId>, ApiError> {
    let raw: Vec<&Value> = match (&request.member_id, &request.member_ids) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if many.is_empty() => {
            return Err(ApiError::bad_request("member_ids is empty"));
        }
        (None, Some(many)) if many.len() > MAX_MEMBERS => {
            return Err(ApiError::bad_request(format!(
                "member_ids holds more than {MAX_MEMBERS} members"
            )));
        }
        (None, Some(many)) => many.iter().collect(),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give member_id or member_ids, not both",
            ));
        }
        (None, None) => return Err(ApiError::bad_request("member_id or member_ids is required")),
    };
    let mut seen = HashSet::with_capacity(raw.len());
    raw.into_iter()
        .map(|value| {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_u64() => n.to_string(),
                other => return Err(ApiError::bad_request(format!("{other} is not a member id"))),
            };
            let member: MemberId = text
                .parse()
                .map_err(|e| ApiError::bad_request(format!("{text:?}: {e}")))?;
            if !seen.insert(member.clone()) {
                return Err(ApiError::bad_request(format!(
                    "member {member} is listed twice"
                )));
            }
            Ok(member)
        })
        .collect()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ))
        })
}
