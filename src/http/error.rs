//! `ApiError`: the one place where a failure becomes an HTTP status and a JSON body.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing, malformed or expired credentials")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("no such route")]
    NotFound,
    #[error("request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("the request did not arrive in time")]
    RequestTimeout,
    /// Nothing was stored (Redis refused the connection or answered with an error).
    #[error("notification store unavailable")]
    StoreUnavailable(#[from] StoreError),
    /// The write was sent and no answer came back: it may or may not be stored.
    #[error(
        "the notification store did not answer in time: the notification may or may not be stored; retry with the same Idempotency-Key"
    )]
    OutcomeUnknown(StoreError),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Self::OutcomeUnknown(_) => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown"),
        };
        if status.is_server_error() {
            // Logged once, here, with the cause chain; the client only sees the summary.
            tracing::error!(error = &self as &dyn std::error::Error, "request failed");
        }
        let body = Json(json!({ "error": code, "message": self.to_string() }));
        (status, body).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::PayloadTooLarge;
        }
        Self::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}
