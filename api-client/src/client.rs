//! The client of the fleet API: the operator identity of a [`Context`],
//! the server verified as the master (its certificate must say
//! `decnet-master`, under the CA pinned at login), typed calls in the wire
//! types of `decnet-api`, and the API's refusals as typed errors
//! ([`ApiError`]) a CLI turns into its exit codes.

use std::time::Duration;

use decnet_api::ErrorBody;
use decnet_pki::tls::ExpectedServer;
use decnet_pki::{Bundle, BundleKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;

/// Why a call of the fleet API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The context's identity cannot be loaded (a usage error: the
    /// operator's setup).
    #[error("context {context}: {detail}")]
    Identity {
        /// The context.
        context: String,
        /// What is wrong with its files.
        detail: String,
    },
    /// No TLS client could be built from the identity.
    #[error("building the TLS client: {0}")]
    Setup(String),
    /// The fleet API did not answer (connection refused, dropped, timed
    /// out): the request may be retried with the same idempotency key.
    #[error("the master's fleet API ({api}, context {context}) did not answer: {detail}")]
    Unanswered {
        /// The fleet API's address.
        api: String,
        /// The context.
        context: String,
        /// The transport's error chain.
        detail: String,
    },
    /// The master answered with an error.
    #[error("{}", refusal_message(*.status, .body))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The API's error body (or one made of the text it sent).
        body: ErrorBody,
    },
    /// The answer broke off, was larger than allowed or does not parse.
    #[error("{0}")]
    BadAnswer(String),
    /// A download could not be written where it was asked to go.
    #[error("writing the answer: {0}")]
    Write(#[source] std::io::Error),
}

impl ApiError {
    /// The master found the request wrong, or about something absent
    /// (400, 404), or the context cannot be used: the same mistake made
    /// locally is a usage error.
    pub fn is_usage(&self) -> bool {
        match self {
            ApiError::Identity { .. } => true,
            ApiError::Refused { status, .. } => matches!(status, 400 | 404),
            _ => false,
        }
    }

    /// The request went unanswered (it may be retried).
    pub fn is_unanswered(&self) -> bool {
        matches!(self, ApiError::Unanswered { .. })
    }
}

/// A refusal as an operator reads it: the master's own words, naming the
/// role it wanted when that was the reason; a request the master found
/// wrong or about something absent, or a worker's failure, said as locally.
fn refusal_message(status: u16, body: &ErrorBody) -> String {
    match (status, &body.required_role) {
        (400 | 404 | 502, _) => body.detail.clone(),
        (_, Some(r)) => format!(
            "refused by the master: {} (required role: {r})",
            body.detail
        ),
        (_, None) => format!("refused by the master: {}", body.detail),
    }
}

/// The largest JSON answer read (a host list of a large fleet is a few
/// MiB): a broken or hostile server cannot make the client hold more.
pub const MAX_ANSWER: usize = 64 << 20;

/// A connection to one master's fleet API as one operator.
pub struct FleetClient {
    http: reqwest::Client,
    base: String,
    context: String,
}

impl FleetClient {
    /// The client of context `ctx`.
    pub fn of(ctx: &Context) -> Result<FleetClient, ApiError> {
        let bundle =
            Bundle::load(&ctx.dir, BundleKind::Operator).map_err(|e| ApiError::Identity {
                context: ctx.name.clone(),
                detail: e.to_string(),
            })?;
        Self::with_bundle(ctx, &bundle)
    }

    /// The client of context `ctx` presenting `bundle` instead of the
    /// context's own (a renewed certificate, before it is installed).
    pub fn with_bundle(ctx: &Context, bundle: &Bundle) -> Result<FleetClient, ApiError> {
        let cfg = decnet_pki::tls::client_config(bundle, None, &ExpectedServer::master())
            .map_err(|e| ApiError::Setup(e.to_string()))?;
        let http = decnet_swarm_client::transport::http_client(
            cfg,
            Duration::from_secs(5),
            Some(Duration::from_secs(120)),
            true,
        )
        .map_err(|e| ApiError::Setup(e.to_string()))?;
        Ok(FleetClient {
            http,
            base: format!("https://{}", ctx.fleet_api),
            context: ctx.name.clone(),
        })
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.call(self.http.get(self.url(path))).await
    }

    /// `method path` with a JSON body.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(b);
        }
        self.call(req).await
    }

    /// `POST path` with a JSON body and an idempotency key.
    pub async fn send_keyed<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        key: &str,
    ) -> Result<T, ApiError> {
        self.call(
            self.http
                .post(self.url(path))
                .header(decnet_api::IDEMPOTENCY_KEY_HEADER, key)
                .json(body),
        )
        .await
    }

    /// A request to `path`, to finish and [`call`](Self::call) (for a
    /// long operation's timeout, a raw body, an idempotency key).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// `GET path` into `out` (at most `max` bytes); returns the size. An
    /// answer shorter than its announced length is an error.
    pub async fn download(
        &self,
        path: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        max: u64,
    ) -> Result<u64, ApiError> {
        use tokio::io::AsyncWriteExt;
        let mut resp = self
            .answered(self.http.get(self.url(path)).timeout(LONG_OPERATION))
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = read_capped(&mut resp).await.unwrap_or_default();
            return Err(refusal(status, &bytes));
        }
        let announced = resp.content_length();
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            ApiError::BadAnswer(format!(
                "the fleet API's answer broke off: {}",
                decnet_swarm_client::transport::error_chain(&e)
            ))
        })? {
            got += chunk.len() as u64;
            if got > max {
                return Err(ApiError::BadAnswer(format!(
                    "the answer is larger than {max} bytes: not kept"
                )));
            }
            out.write_all(&chunk).await.map_err(ApiError::Write)?;
        }
        if announced.is_some_and(|n| n != got) {
            return Err(ApiError::BadAnswer(format!(
                "the answer broke off after {got} bytes: not kept"
            )));
        }
        Ok(got)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn answered(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        req.send().await.map_err(|e| ApiError::Unanswered {
            api: self.base.trim_start_matches("https://").to_string(),
            context: self.context.clone(),
            detail: decnet_swarm_client::transport::error_chain(&e),
        })
    }

    /// Send `req` and hand back its answer to read as it streams (an event
    /// stream), or the API's refusal.
    pub async fn open_stream(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let mut resp = self.answered(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = read_capped(&mut resp).await.unwrap_or_default();
        Err(refusal(status, &bytes))
    }

    /// Send `req`; its JSON answer (at most [`MAX_ANSWER`] bytes), or the
    /// API's refusal.
    pub async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let mut resp = self.answered(req).await?;
        let status = resp.status();
        let bytes = read_capped(&mut resp).await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::BadAnswer(format!("the fleet API's answer does not parse: {e}"))
            });
        }
        Err(refusal(status, &bytes))
    }
}

/// The whole body of `resp`, refused past [`MAX_ANSWER`] bytes.
async fn read_capped(resp: &mut reqwest::Response) -> Result<Vec<u8>, ApiError> {
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        ApiError::BadAnswer(format!(
            "reading the fleet API's answer: {}",
            decnet_swarm_client::transport::error_chain(&e)
        ))
    })? {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn too_large() -> ApiError {
    ApiError::BadAnswer(format!(
        "the fleet API's answer is larger than {} MiB: not read",
        MAX_ANSWER >> 20
    ))
}

/// An error answer as an [`ApiError`]: the API's error body, or one made
/// of the first 300 characters of whatever else it sent.
fn refusal(status: reqwest::StatusCode, bytes: &[u8]) -> ApiError {
    let body: ErrorBody = serde_json::from_slice(bytes).unwrap_or(ErrorBody {
        error: "error".into(),
        detail: String::from_utf8_lossy(bytes).chars().take(300).collect(),
        required_role: None,
    });
    ApiError::Refused {
        status: status.as_u16(),
        body,
    }
}

/// How long a long operation (a rollback, a teardown, an upload, a
/// download) may take through the API.
pub const LONG_OPERATION: Duration = Duration::from_secs(30 * 60);

/// `s` as one URL path segment (percent-encoded): a name typed on the
/// command line can never reach another route (`../hosts/w1/decommission`).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, body: &str) -> ApiError {
        refusal(
            reqwest::StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
        )
    }

    #[test]
    fn refusals_read_as_the_cli_reports_them() {
        let wrong = refused(
            400,
            r#"{"error":"bad_request","detail":"no such selector"}"#,
        );
        assert!(wrong.is_usage() && !wrong.is_unanswered());
        assert_eq!(wrong.to_string(), "no such selector");
        assert!(refused(404, r#"{"error":"not_found","detail":"no host w9"}"#).is_usage());

        let role = refused(
            403,
            r#"{"error":"forbidden","detail":"deploying needs more","required_role":"deployer"}"#,
        );
        assert!(!role.is_usage());
        assert_eq!(
            role.to_string(),
            "refused by the master: deploying needs more (required role: deployer)"
        );
        let worker = refused(
            502,
            r#"{"error":"worker","detail":"w1: agent did not answer"}"#,
        );
        assert!(!worker.is_usage());
        assert_eq!(worker.to_string(), "w1: agent did not answer");
    }

    #[test]
    fn an_answer_that_is_not_an_error_body_is_shown_cut() {
        let e = refused(500, &"x".repeat(1000));
        let ApiError::Refused { body, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(body.detail.len(), 300);
        assert!(e.to_string().starts_with("refused by the master: xxx"));
    }
}
