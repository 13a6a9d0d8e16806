//! Read state (API.md, "Read state"): `GET /notifications/unread` and `POST /notifications/read`.
//! One read position per member; every count is exact and says which id it was counted at.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::auth::{Member, ReadMarker};
use super::error::ApiError;
use crate::model::{MemberId, ReadState, StreamId};
use crate::store::ReadUpTo;

pub async fn unread(State(app): State<AppState>, member: Member) -> Result<Response, ApiError> {
    let state = app
        .store
        .unread(&member.id)
        .await
        .inspect_err(|_| app.metrics.redis_error("unread"))?;
    Ok(state_response(&state))
}

/// `{"up_to": "<id>"}` or `{"all": true}`; `member_id` only with the publish token.
#[derive(Deserialize)]
pub struct ReadRequest {
    up_to: Option<String>,
    all: Option<bool>,
    member_id: Option<MemberId>,
}

pub async fn mark(
    State(app): State<AppState>,
    marker: ReadMarker,
    body: Result<Json<ReadRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let member = match (marker, request.member_id) {
        (ReadMarker::Backend, Some(member)) => member,
        (ReadMarker::Backend, None) => {
            return Err(ApiError::bad_request(
                "member_id is required with the publish token",
            ));
        }
        (ReadMarker::Member(member), None) => member,
        (ReadMarker::Member(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "member_id is for the publish token; a member marks its own notifications",
            ));
        }
    };
    let up_to = match (request.up_to.as_deref(), request.all) {
        // Any well-formed id, the last possible one included: a later one is clamped.
        (Some(id), None) => ReadUpTo::Id(
            id.parse::<StreamId>()
                .map_err(|_| ApiError::bad_request("up_to must be a stream id <ms>-<seq>"))?,
        ),
        (None, Some(true)) => ReadUpTo::All,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of up_to (a stream id) or all: true",
            ));
        }
    };
    let marked = app
        .store
        .mark_read(&member, up_to)
        .await
        .inspect_err(|_| app.metrics.redis_error("read"))?;
    if marked.moved {
        app.metrics.read_positions_moved.inc();
    }
    if marked.loss_proven {
        app.metrics.data_losses.inc();
    }
    Ok(state_response(&marked.state))
}

fn state_response(state: &ReadState) -> Response {
    let mut body = String::from("{");
    state.write_fields(&mut body);
    body.push('}');
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}
