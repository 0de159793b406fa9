//! The CLI's client of the fleet API: the operator identity of a
//! [`Context`], the server verified as the master (its certificate must say
//! `decnet-master`, under the CA pinned at login), typed calls in the wire
//! types of `decnet-api`, and the API's refusals turned into the CLI's exit
//! codes (a refusal for want of a role: 1, naming the role; a request the
//! master found wrong or about something absent: 2, as locally).

use std::time::Duration;

use anyhow::Context as _;
use decnet_api::ErrorBody;
use decnet_pki::tls::ExpectedServer;
use decnet_pki::{Bundle, BundleKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::usage::UsageError;

/// A connection to one master's fleet API as one operator.
pub struct FleetClient {
    http: reqwest::Client,
    base: String,
    context: String,
}

impl FleetClient {
    /// The client of context `ctx`.
    pub fn of(ctx: &Context) -> anyhow::Result<FleetClient> {
        let bundle = Bundle::load(&ctx.dir, BundleKind::Operator)
            .map_err(|e| UsageError(format!("context {}: {e}", ctx.name)))?;
        Self::with_bundle(ctx, &bundle)
    }

    /// The client of context `ctx` presenting `bundle` instead of the
    /// context's own (a renewed certificate, before it is installed).
    pub fn with_bundle(ctx: &Context, bundle: &Bundle) -> anyhow::Result<FleetClient> {
        let cfg = decnet_pki::tls::client_config(bundle, None, &ExpectedServer::master())
            .context("building the TLS configuration")?;
        let http = decnet_swarm_client::transport::http_client(
            cfg,
            Duration::from_secs(5),
            Some(Duration::from_secs(120)),
            true,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(FleetClient {
            http,
            base: format!("https://{}", ctx.fleet_api),
            context: ctx.name.clone(),
        })
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(self.http.get(self.url(path))).await
    }

    /// `method path` with a JSON body.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
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
    ) -> anyhow::Result<T> {
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
    ) -> anyhow::Result<u64> {
        use tokio::io::AsyncWriteExt;
        let mut resp = self
            .answered(self.http.get(self.url(path)).timeout(LONG_OPERATION))
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(self.refusal(status, &bytes));
        }
        let announced = resp.content_length();
        let mut got = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .context("the fleet API's answer broke off")?
        {
            got += chunk.len() as u64;
            if got > max {
                anyhow::bail!("the answer is larger than {max} bytes: not kept");
            }
            out.write_all(&chunk).await?;
        }
        if announced.is_some_and(|n| n != got) {
            anyhow::bail!("the answer broke off after {got} bytes: not kept");
        }
        Ok(got)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn answered(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        req.send().await.map_err(|e| {
            anyhow::Error::new(Unanswered(format!(
                "the master's fleet API ({}, context {}) did not answer: {}",
                self.base.trim_start_matches("https://"),
                self.context,
                decnet_swarm_client::transport::error_chain(&e)
            )))
        })
    }

    /// Send `req` and hand back its answer to read as it streams (an event
    /// stream), or the API's refusal as the CLI reports it.
    pub async fn open_stream(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = self.answered(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        Err(self.refusal(status, &bytes))
    }

    /// Send `req`; its JSON answer, or the API's refusal as the CLI reports it.
    pub async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = req.send().await.map_err(|e| {
            anyhow::Error::new(Unanswered(format!(
                "the master's fleet API ({}, context {}) did not answer: {}",
                self.base.trim_start_matches("https://"),
                self.context,
                decnet_swarm_client::transport::error_chain(&e)
            )))
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .context("reading the fleet API's answer")?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).context("the fleet API's answer does not parse");
        }
        Err(self.refusal(status, &bytes))
    }

    /// An error answer as the CLI reports it.
    fn refusal(&self, status: reqwest::StatusCode, bytes: &[u8]) -> anyhow::Error {
        let body: ErrorBody = serde_json::from_slice(bytes).unwrap_or(ErrorBody {
            error: "error".into(),
            detail: String::from_utf8_lossy(bytes).chars().take(300).collect(),
            required_role: None,
        });
        let msg = match &body.required_role {
            Some(r) => format!(
                "refused by the master: {} (required role: {r})",
                body.detail
            ),
            None => format!("refused by the master: {}", body.detail),
        };
        match status.as_u16() {
            400 | 404 => UsageError(body.detail).into(),
            // A worker failed or did not answer: said as locally.
            502 => anyhow::anyhow!(body.detail),
            _ => anyhow::anyhow!(msg),
        }
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

/// The fleet API did not answer (connection refused, dropped, timed out):
/// the request may be retried with the same idempotency key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unanswered(pub String);

/// Whether `e` is [`Unanswered`].
pub fn is_transport(e: &anyhow::Error) -> bool {
    e.is::<Unanswered>()
}
