//! The one JSON error body every decnet HTTP server sends:
//! `{"error": kind, "detail": message}` — a stable machine-readable kind and
//! a human message that never carries internals (paths, secrets, stacks).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error response with a JSON body.
pub fn json_error(status: StatusCode, kind: &str, detail: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": kind, "detail": detail.into() })),
    )
        .into_response()
}
