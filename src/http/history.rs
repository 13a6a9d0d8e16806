//! `GET /notifications?after=<id>&limit=<n>` (oldest first) or `?before=<id>` (newest first, for
//! an inbox): a page of the member's retained history, with its read state.

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
    let position = |name: &str| match query.get(name).map(String::as_str) {
        None => Ok(None),
        Some("") => Ok(Some(None)),
        Some(raw) => StreamId::parse_position(raw)
            .map(|id| Some(Some(id)))
            .ok_or_else(|| ApiError::bad_request(format!("{name} must be a stream id <ms>-<seq>"))),
    };
    let (after, before) = (position("after")?, position("before")?);
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
    // Entries older than the retention window are expired even before Redis trims them.
    let floor = StreamId::before_ms(app.store.retention_cutoff_ms());
    let page = match (after, before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give after or before, not both"));
        }
        (after, None) => {
            let from = after.flatten().unwrap_or(StreamId::ZERO).max(floor);
            app.store.read_after(&member.id, from, limit + 1).await
        }
        (None, Some(before)) => {
            app.store
                .read_before(&member.id, before, floor, limit + 1)
                .await
        }
    };
    let mut entries = page.inspect_err(|_| app.metrics.redis_error("history"))?;
    let read = app
        .store
        .unread(&member.id)
        .await
        .inspect_err(|_| app.metrics.redis_error("unread"))?;
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
    body.push(',');
    read.write_fields(&mut body);
    body.push('}');
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
