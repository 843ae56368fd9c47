//! `/healthz`, `/openapi.json` and `/metrics`.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::Sessions;

/// The OpenAPI 3 description of the API, written by hand.
const OPENAPI: &str = include_str!("openapi.json");

/// Liveness.
pub async fn healthz() -> Json<Value> {
    Json(json!({"ok": true, "version": env!("CARGO_PKG_VERSION")}))
}

/// The OpenAPI document.
pub async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Prometheus metrics.
pub async fn metrics(State(sessions): State<Sessions>) -> Result<impl IntoResponse, ApiError> {
    let by_state = sessions.count_by_state().await?;
    let text = sessions.shared().metrics.render(&by_state);
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap().chars().next(), Some('3'));
        for path in [
            "/healthz",
            "/metrics",
            "/v1/sessions",
            "/v1/sessions/{id}",
            "/v1/sessions/{id}/context",
            "/v1/sessions/{id}/context/stream",
            "/v1/sessions/{id}/messages",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path}");
        }
    }
}
