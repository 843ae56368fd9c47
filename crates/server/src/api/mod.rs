//! The HTTP API: routes, the body limit, authentication and JSON errors.

mod sessions;
mod system;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};

use crate::error::ApiError;
use crate::Sessions;

/// Largest request body accepted (1 MiB); larger ones get 413.
pub const BODY_LIMIT: usize = 1 << 20;

/// Every route. `/healthz` and `/openapi.json` are open; the rest needs the token.
pub fn router(sessions: Sessions, token: String) -> Router {
    let token: Arc<str> = token.into();
    let protected = Router::new()
        .route("/metrics", get(system::metrics))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route("/v1/sessions/{id}", get(sessions::show).delete(sessions::delete))
        .route("/v1/sessions/{id}/context", get(sessions::context))
        .route("/v1/sessions/{id}/context/stream", get(sessions::context_stream))
        .route("/v1/sessions/{id}/messages", post(sessions::send))
        .route_layer(middleware::from_fn_with_state(token, crate::auth::require_token));
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/openapi.json", get(system::openapi))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(refuse_announced_oversize))
        .with_state(sessions)
}

/// Refuses a body announced (by `Content-Length`) above [`BODY_LIMIT`]
/// before reading any of it; bodies of unknown length are cut at the limit
/// as they are read.
async fn refuse_announced_oversize(request: Request, next: Next) -> Response {
    let announced =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(length) if length > BODY_LIMIT as u64 => ApiError::TooLarge(BODY_LIMIT).into_response(),
        _ => next.run(request).await,
    }
}

/// A body over [`BODY_LIMIT`] is 413, one that is not JSON 415, any other
/// bad body 400.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(BODY_LIMIT),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(rejection.body_text()),
            _ => ApiError::BadRequest(rejection.body_text()),
        }
    }
}
