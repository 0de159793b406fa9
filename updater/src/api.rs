//! The updater's HTTP API (mTLS, role Master on every route).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use decnet_pki::signing::Sha256Stream;
use tokio::io::AsyncWriteExt;

use decnet_pki::signing::{ReleaseTarget, SignedManifest};

use crate::extract::StreamingExtraction;
use crate::pipeline::{ReceivedTarball, UpdateError, UpdaterCore, Upload};

/// Shared state of the routes.
pub struct ApiState {
    /// The pipeline.
    pub core: UpdaterCore,
    /// This host.
    pub host: String,
    /// Where uploads are spooled.
    pub upload_dir: PathBuf,
    /// Random id of this process image (changes on re-exec).
    pub instance: String,
    /// Called after a successful self-update (re-executes the process).
    pub restart_self: Box<dyn Fn() + Send + Sync>,
    /// Wakes the renewal task (`POST /renew`, `decnet swarm renew`); `None`
    /// when this updater knows no master to renew with.
    pub renew_now: Option<Arc<tokio::sync::Notify>>,
}

use decnet_server::json_error as error;

impl IntoResponse for UpdateError {
    fn into_response(self) -> Response {
        match self {
            UpdateError::Refused(d) => error(StatusCode::BAD_REQUEST, "refused", d),
            UpdateError::NotFound(d) => error(StatusCode::NOT_FOUND, "not_found", d),
            UpdateError::RolledBack(r) => {
                let mut v = serde_json::to_value(&*r).unwrap_or_default();
                v["error"] = "rolled_back".into();
                (StatusCode::CONFLICT, Json(v)).into_response()
            }
            UpdateError::Failed(r) => {
                let mut v = serde_json::to_value(&*r).unwrap_or_default();
                v["error"] = "failed".into();
                (StatusCode::INTERNAL_SERVER_ERROR, Json(v)).into_response()
            }
        }
    }
}

/// The router.
pub fn router(state: Arc<ApiState>) -> Router {
    let limit = usize::try_from(state.core.max_release)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    Router::new()
        .route("/health", get(health))
        .route("/releases", get(releases))
        .route("/update", post(update))
        .route("/update-self", post(update_self))
        .route("/rollback", post(rollback))
        .route("/renew", post(renew))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn health(State(st): State<Arc<ApiState>>) -> Response {
    // Answering /health is what confirms a self-update of this updater.
    st.core.confirm_self_update();
    Json(serde_json::json!({
        "status": "ok",
        "role": "updater",
        "host": st.host,
        "version": env!("CARGO_PKG_VERSION"),
        "releases": st.core.slots.releases().unwrap_or_default(),
        // The updater release this process runs (none: the packaged one):
        // after a self-update, the master checks it is the one it pushed.
        "updater_release": st.core.self_slots.releases().ok().and_then(|r| r.into_iter().next()),
        "agent_running": st.core.control.is_running().await,
        // Without a keyring any release the master pushes is installed.
        "release_signatures": if st.core.signatures_required() { "required" } else { "not required" },
        "agent_pid": st.core.control.pid(),
        "instance": st.instance,
    }))
    .into_response()
}

/// Renew this updater's certificate now (the master's `swarm renew`): the
/// renewal task does it, exactly as when it falls due.
async fn renew(State(st): State<Arc<ApiState>>) -> Response {
    match &st.renew_now {
        Some(now) => {
            tracing::info!(host = %st.host, "the master asked for a certificate renewal");
            now.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "renewing": true })),
            )
                .into_response()
        }
        None => error(
            StatusCode::CONFLICT,
            "no_master",
            "this updater knows no master to renew with (join it, or start it with --master)",
        ),
    }
}

async fn releases(State(st): State<Arc<ApiState>>) -> Response {
    match st.core.slots.releases() {
        Ok(r) => Json(serde_json::json!({ "releases": r })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "failed", e.to_string()),
    }
}

/// A received upload plus the form's text fields.
struct Form {
    upload: Option<Upload>,
    confirm_self: Option<String>,
}

/// Removes the spooled tarball when the request is done.
struct Spool(PathBuf);

/// Remove the spooled uploads an interrupted run left in `dir` (a crash or
/// a kill mid-upload skips [`Spool`]'s cleanup); returns how many. Run at
/// start, before any upload can be in flight.
pub fn clear_stale_uploads(dir: &std::path::Path) -> usize {
    crate::slots::remove_leftovers(dir, |name| {
        name.starts_with("upload-") && name.ends_with(".tar.gz")
    })
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where a tarball's bytes go while they arrive.
enum TarballSink {
    /// Extracted at once ([`UpdaterCore::early_extraction`]).
    Extract(StreamingExtraction),
    /// Spooled to a file, extracted once verified.
    Spool(Spool, tokio::fs::File),
}

async fn read_form(
    st: &ApiState,
    target: ReleaseTarget,
    mut mp: Multipart,
) -> Result<(Form, Option<Spool>), Response> {
    let bad = |d: String| error(StatusCode::BAD_REQUEST, "bad_request", d);
    let mut sha = None;
    let mut sha256 = None;
    let mut signature = None;
    let mut manifest = None;
    let mut allow_downgrade = false;
    let mut confirm_self = None;
    let mut file: Option<(ReceivedTarball, Option<Spool>, [u8; 32])> = None;
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| bad(format!("malformed multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        if name == "tarball" {
            let failed = |e: String| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed",
                    format!("cannot receive the upload: {e}"),
                )
            };
            let signed = manifest.clone().map(|manifest| SignedManifest {
                manifest,
                signature: signature.clone(),
            });
            // A self-update is refused unless confirmed: one not confirmed
            // before its tarball is spooled, never fed to the extractor.
            let confirmed =
                target != ReleaseTarget::Updater || self_update_confirmed(confirm_self.as_deref());
            let early = confirmed
                .then(|| {
                    st.core
                        .early_extraction(target, signed.as_ref(), sha.as_deref())
                })
                .flatten();
            let mut sink = if let Some(permit) = early {
                let dir = st.core.slots_of(target).new_upload_dir();
                TarballSink::Extract(
                    StreamingExtraction::start(dir, st.core.max_release, permit)
                        .map_err(|e| failed(e.to_string()))?,
                )
            } else {
                std::fs::create_dir_all(&st.upload_dir).map_err(|e| failed(e.to_string()))?;
                let path = st
                    .upload_dir
                    .join(format!("upload-{}.tar.gz", decnet_pki::random_hex(8)));
                let spool = Spool(path.clone());
                let out = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                TarballSink::Spool(spool, out)
            };
            let mut digest = Sha256Stream::default();
            let mut received = 0u64;
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| bad(format!("upload interrupted: {e}")))?
            {
                digest.update(&chunk);
                received += chunk.len() as u64;
                match &mut sink {
                    TarballSink::Extract(x) => x.feed(chunk).await,
                    TarballSink::Spool(_, out) => out
                        .write_all(&chunk)
                        .await
                        .map_err(|e| failed(e.to_string()))?,
                }
            }
            crate::metrics::record_upload(
                target,
                received,
                matches!(sink, TarballSink::Extract(_)),
            );
            file = Some(match sink {
                TarballSink::Extract(x) => (
                    ReceivedTarball::Extracted(x.finish().await),
                    None,
                    digest.finish(),
                ),
                TarballSink::Spool(spool, mut out) => {
                    out.flush().await.map_err(|e| failed(e.to_string()))?;
                    (
                        ReceivedTarball::Spooled(spool.0.clone()),
                        Some(spool),
                        digest.finish(),
                    )
                }
            });
        } else {
            let text = field
                .text()
                .await
                .map_err(|e| bad(format!("field {name}: {e}")))?;
            match name.as_str() {
                "sha" => sha = Some(text),
                "sha256" => sha256 = Some(text),
                "signature" => signature = Some(text.trim().to_string()).filter(|s| !s.is_empty()),
                "manifest" => manifest = Some(text).filter(|s| !s.trim().is_empty()),
                "allow_downgrade" => allow_downgrade = text.trim().eq_ignore_ascii_case("true"),
                "confirm_self" => confirm_self = Some(text),
                _ => return Err(bad(format!("unknown field {name:?}"))),
            }
        }
    }
    let Some((tarball, spool, computed)) = file else {
        return Ok((
            Form {
                upload: None,
                confirm_self,
            },
            None,
        ));
    };
    let sha256 = sha256.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        bad("sha256 is required: the SHA-256 of the tarball, so a corrupted or substituted upload is refused".into())
    })?;
    let upload = Upload {
        tarball,
        sha: sha.unwrap_or_default(),
        sha256: sha256.trim().to_string(),
        computed,
        manifest: manifest.map(|manifest| decnet_pki::signing::SignedManifest {
            manifest,
            signature,
        }),
        allow_downgrade,
    };
    Ok((
        Form {
            upload: Some(upload),
            confirm_self,
        },
        spool,
    ))
}

async fn update(State(st): State<Arc<ApiState>>, mp: Multipart) -> Response {
    let (form, _spool) = match read_form(&st, ReleaseTarget::Agent, mp).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(up) = form.upload else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the tarball field is required",
        );
    };
    match st.core.update(&up).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Whether a self-update's `confirm_self` field says `true`.
fn self_update_confirmed(field: Option<&str>) -> bool {
    field.is_some_and(|c| c.trim().eq_ignore_ascii_case("true"))
}

async fn update_self(State(st): State<Arc<ApiState>>, mp: Multipart) -> Response {
    let (form, _spool) = match read_form(&st, ReleaseTarget::Updater, mp).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !self_update_confirmed(form.confirm_self.as_deref()) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "update-self replaces the updater itself; send confirm_self=true",
        );
    }
    let Some(up) = form.upload else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the tarball field is required",
        );
    };
    match st.core.update_self(&up).await {
        Ok(s) => {
            (st.restart_self)();
            Json(s).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn rollback(State(st): State<Arc<ApiState>>) -> Response {
    match st.core.rollback().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => e.into_response(),
    }
}
