//! The agent's HTTP API (served only through the `decnet-server` runner)
//! and its access policy.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use decnet_pki::{HostName, PeerIdentity, Role};
use decnet_server::{AccessPolicy, Refusal};
use serde::Deserialize;

use crate::config::DeploymentConfig;
use crate::executor::{ExecError, Executor};

/// Largest accepted request body.
pub const MAX_BODY: usize = 1024 * 1024;

/// Master everywhere; the updater of this very host also on `GET /health`
/// (its post-update probe).
#[derive(Clone, Debug)]
pub struct AgentPolicy {
    /// This agent's host name.
    pub own_host: HostName,
}

impl AccessPolicy for AgentPolicy {
    fn check(&self, peer: &PeerIdentity, method: &Method, path: &str) -> Result<(), Refusal> {
        match &peer.role {
            Role::Master => Ok(()),
            Role::Updater(h)
                if *h == self.own_host && method == Method::GET && path == "/health" =>
            {
                Ok(())
            }
            _ if path == "/health" => Err(Refusal {
                required: format!("master or updater@{}", self.own_host),
            }),
            _ => Err(Refusal {
                required: "master".into(),
            }),
        }
    }
}

pub use decnet_server::json_error as error_response;

/// `Json<T>` whose rejections are JSON bodies with a clear message.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => {
                let status = rejection.status();
                let kind = match status {
                    StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "bad_request",
                };
                Err(error_response(
                    status,
                    kind,
                    decnet_server::plain_decode_message(&rejection.body_text()),
                ))
            }
        }
    }
}

impl IntoResponse for ExecError {
    fn into_response(self) -> Response {
        match &self {
            ExecError::UnknownDecky(_) | ExecError::UnknownOperation(_) => {
                error_response(StatusCode::NOT_FOUND, "not_found", self.to_string())
            }
            ExecError::Driver(_) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "driver_failed",
                self.to_string(),
            ),
            ExecError::Config(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({
                    "error": "invalid_config",
                    "field": e.field,
                    "detail": e.to_string(),
                })),
            )
                .into_response(),
            ExecError::Conflict(_) => {
                error_response(StatusCode::CONFLICT, "conflict", self.to_string())
            }
            ExecError::State(e) => {
                tracing::error!(error = %e, "state file error");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "state_failed",
                    "the agent cannot write its state file; see the agent log",
                )
            }
        }
    }
}

/// `POST /deploy` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The deployment.
    pub config: serde_json::Value,
    /// Validate and render only.
    #[serde(default)]
    pub dry_run: bool,
    /// Accepted for compatibility; images are never pulled or rebuilt here.
    #[serde(default)]
    pub no_cache: bool,
}

/// `POST /teardown` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeardownRequest {
    /// One decky; all when absent.
    #[serde(default)]
    pub decky_id: Option<String>,
}

/// `POST /mutate` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutateRequest {
    /// The decky.
    pub decky_id: String,
    /// Its new services.
    pub services: Vec<String>,
}

/// The agent router.
pub fn router(exec: Arc<Executor>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/deploy", post(deploy))
        .route("/teardown", post(teardown))
        .route("/mutate", post(mutate))
        .route("/operations/{id}", get(operation))
        .route("/evidence", get(evidence_list))
        .route("/evidence/{decky}/{id}", get(evidence_fetch))
        .fallback(|| async {
            error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(exec)
}

/// The fields of the `/health` answer that never change, in order; the
/// decky counts follow them.
#[derive(serde::Serialize)]
struct HealthHead<'a> {
    status: &'static str,
    role: &'static str,
    host: &'a str,
    version: &'static str,
    driver: crate::config::DriverKind,
}

/// `{"status":"ok",…,"driver":"…",` written once: the opening of every
/// `/health` answer.
fn health_head(exec: &Executor) -> String {
    let head = HealthHead {
        status: "ok",
        role: "agent",
        host: exec.host(),
        version: env!("CARGO_PKG_VERSION"),
        driver: exec.driver_kind(),
    };
    // A struct of strings always serializes.
    let mut json = serde_json::to_string(&head).unwrap_or_default();
    json.pop();
    json.push_str(",\"deckies\":");
    json
}

/// `GET /health` (the route the master and the updater probe most): the
/// fixed fields written once, then this moment's decky counts (read from
/// the census, not under the state's lock).
async fn health(State(exec): State<Arc<Executor>>) -> Response {
    let head = exec.health_head.get_or_init(|| health_head(&exec));
    let counts = health_counts(exec.phase_counts());
    // Sized to the byte, so the body becomes the response's buffer as it
    // is (a vector with spare room costs the buffer another allocation).
    let mut body = Vec::with_capacity(head.len() + counts.len() + 1);
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(&counts);
    body.push(b'}');
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The JSON of `counts`, written on the stack: five phases with 20-digit
/// counts take 156 bytes.
fn health_counts(counts: crate::census::PhaseCounts) -> HealthCounts {
    let mut buf = [0u8; HEALTH_COUNTS_MAX];
    let mut rest = &mut buf[..];
    // A map of phase names to counts always serializes, and fits.
    let _ = serde_json::to_writer(&mut rest, &counts);
    let len = HEALTH_COUNTS_MAX - rest.len();
    HealthCounts { buf, len }
}

/// Room for the longest census JSON (156 bytes).
const HEALTH_COUNTS_MAX: usize = 192;

/// [`health_counts`]' bytes.
struct HealthCounts {
    buf: [u8; HEALTH_COUNTS_MAX],
    len: usize,
}

impl std::ops::Deref for HealthCounts {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

async fn status(State(exec): State<Arc<Executor>>) -> Response {
    Json(exec.snapshot().await).into_response()
}

async fn deploy(
    State(exec): State<Arc<Executor>>,
    JsonBody(req): JsonBody<DeployRequest>,
) -> Response {
    let raw = match serde_json::to_vec(&req.config) {
        Ok(v) => v,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let config = match DeploymentConfig::parse(&raw, exec.driver_kind()) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({
                    "error": "invalid_config",
                    "field": e.field,
                    "detail": e.to_string(),
                })),
            )
                .into_response();
        }
    };
    if req.dry_run {
        return match exec.render(&config).await {
            Ok(rendered) => {
                Json(serde_json::json!({ "dry_run": true, "rendered": rendered })).into_response()
            }
            Err(e) => e.into_response(),
        };
    }
    match exec.deploy(config).await {
        Ok(id) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "operation_id": id, "status_url": format!("/operations/{id}") })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn teardown(State(exec): State<Arc<Executor>>, body: axum::body::Bytes) -> Response {
    // An empty body means "everything".
    let req: TeardownRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TeardownRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("invalid teardown body: {e}"),
                );
            }
        }
    };
    // A task of its own: a client that hangs up (a burn that stopped
    // waiting) must not cut a teardown short, leaving deckies running.
    let decky = req.decky_id.clone();
    let exec2 = exec.clone();
    let done = tokio::spawn(async move { exec2.teardown(decky.as_deref()).await });
    let result = match done.await {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "teardown_failed",
                format!("the teardown did not finish: {e}"),
            );
        }
    };
    match result {
        Ok(names) => Json(serde_json::json!({ "torn_down": names })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn mutate(
    State(exec): State<Arc<Executor>>,
    JsonBody(req): JsonBody<MutateRequest>,
) -> Response {
    match exec.mutate(&req.decky_id, req.services).await {
        Ok(d) => Json(d).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn operation(State(exec): State<Arc<Executor>>, Path(id): Path<String>) -> Response {
    match exec.operation(&id).await {
        Ok(op) => Json(op).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn evidence_list(State(exec): State<Arc<Executor>>) -> Response {
    let Some(archive) = exec.evidence() else {
        return Json(serde_json::json!({ "archives": [], "kept": false })).into_response();
    };
    let limits = archive.limits();
    let archives = archive.list();
    Json(serde_json::json!({
        "archives": archives,
        "kept": limits.keep > 0,
        "keep": limits.keep,
        "max_bytes": limits.max_bytes,
    }))
    .into_response()
}

/// `GET /evidence/{decky}/{id}`: the archive as `application/gzip`,
/// streamed (it may be large).
async fn evidence_fetch(
    State(exec): State<Arc<Executor>>,
    Path((decky, id)): Path<(String, String)>,
) -> Response {
    let missing = || {
        error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no evidence archive {id} of decky {decky}"),
        )
    };
    let Some(path) = exec.evidence().and_then(|a| a.path_of(&decky, &id)) else {
        return missing();
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return missing(),
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let mut resp =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/gzip"),
    );
    if let Some(len) = len {
        headers.insert(axum::http::header::CONTENT_LENGTH, len.into());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest census there can be (every phase at `usize::MAX`) fits
    /// the stack buffer whole: a cut would send invalid JSON.
    #[test]
    fn the_largest_census_fits_its_buffer() {
        let counts = health_counts(crate::census::PhaseCounts([usize::MAX; 5]));
        let v: serde_json::Value = serde_json::from_slice(&counts).unwrap();
        assert_eq!(v["torn_down"], serde_json::json!(usize::MAX));
        assert_eq!(v.as_object().unwrap().len(), 5);
        assert_eq!(
            &*health_counts(crate::census::PhaseCounts::default()),
            b"{}"
        );
    }
}
