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

/// A JSON decoding message in words an operator can use: the decoder's
/// type names (`struct DeployRequest with 3 elements`, `enum Protocol`)
/// become what the request should hold, and positions stay. Pure:
/// unit-tested.
pub fn plain_decode_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find("struct ").or_else(|| rest.find("enum ")) {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let is_enum = after.starts_with("enum ");
        let after = after
            .trim_start_matches("struct ")
            .trim_start_matches("enum ");
        // Skip the type name and an "with N elements" tail.
        let name_end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let mut tail = &after[name_end..];
        if let Some(t) = tail.strip_prefix(" with ") {
            let n_end = t.find(' ').map(|i| i + 1).unwrap_or(t.len());
            let t2 = &t[n_end..];
            tail = t2
                .strip_prefix("elements")
                .or_else(|| t2.strip_prefix("element"))
                .unwrap_or(tail);
        }
        out.push_str(if is_enum {
            "one of the allowed values"
        } else {
            "an object"
        });
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_type_names_become_plain_words() {
        assert_eq!(
            plain_decode_message(
                "invalid type: string \"x\", expected struct DeployRequest with 3 elements at line 1 column 3"
            ),
            "invalid type: string \"x\", expected an object at line 1 column 3"
        );
        assert_eq!(
            plain_decode_message("unknown variant `sctp`, expected enum Protocol"),
            "unknown variant `sctp`, expected one of the allowed values"
        );
        assert_eq!(
            plain_decode_message("missing field `config`"),
            "missing field `config`"
        );
    }
}
