//! `GET /notifications?after=<id>&limit=<n>`: a page of the member's retained history.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::Member;
use super::error::ApiError;
use crate::model::StreamId;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

pub async fn page(
    State(app): State<AppState>,
    member: Member,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let after = match query.get("after").map(String::as_str) {
        None | Some("") => StreamId::ZERO,
        Some(raw) => StreamId::parse_position(raw)
            .ok_or_else(|| ApiError::bad_request("after must be a stream id <ms>-<seq>"))?,
    };
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
            })?,
    };
    let from = after.max(StreamId::before_ms(app.store.retention_cutoff_ms()));
    let mut entries = app
        .store
        .read_after(&member.id, from, limit + 1)
        .await
        .inspect_err(|_| app.metrics.redis_error("history"))?;
    let more = entries.len() > limit;
    entries.truncate(limit);

    let mut body = String::from("{\"notifications\":[");
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        entry.write_json(&member.id, &mut body);
    }
    body.push_str("],\"next\":");
    match entries.last().filter(|_| more) {
        Some(last) => body.push_str(&format!("\"{}\"", last.id)),
        None => body.push_str("null"),
    }
    body.push('}');
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
