//! The API's errors: one JSON shape, `{"error": {"code", "message"}}`, with
//! the status code that says whose fault it was.

use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (bad JSON, a bad field).
    #[error("{0}")]
    BadRequest(String),
    /// No token, or the wrong one.
    #[error("missing or wrong bearer token (see HIBER_HOME/api-token)")]
    Unauthorized,
    /// The session or route does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The request conflicts with the session's state.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the limit.
    #[error("the request body or message is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// The body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The server failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and the stable machine-readable code.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        (status, axum::Json(body)).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<crate::shared::SessionError> for ApiError {
    fn from(error: crate::shared::SessionError) -> ApiError {
        use crate::shared::SessionError as E;
        match error {
            E::NotFound(_) => ApiError::NotFound(error.to_string()),
            E::Invalid(_) => ApiError::BadRequest(error.to_string()),
            E::Conflict(_) => ApiError::Conflict(error.to_string()),
            _ => ApiError::Internal(error.to_string()),
        }
    }
}
