//! The mTLS HTTP transport shared by every worker client: one pooled
//! `reqwest` client per worker, presenting the master bundle, verifying the
//! worker against the CA and (when known) its recorded fingerprint.

use std::net::IpAddr;
use std::time::Duration;

use decnet_pki::{Bundle, Fingerprint};
use serde::de::DeserializeOwned;

/// `host:port` from `host` or `host:port` (the daemons' `--master` flags).
pub fn with_default_port(addr: &str, port: u16) -> String {
    let has_port = addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !addr.ends_with(']');
    if has_port {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}

/// Connect timeout of every call.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client could not be built (bad bundle or address).
    #[error("client setup failed: {0}")]
    Setup(String),
    /// Nothing answered (refused, no route, DNS).
    #[error("{endpoint} is unreachable: {detail}")]
    Unreachable {
        /// Where.
        endpoint: String,
        /// Why.
        detail: String,
    },
    /// The call did not finish in time.
    #[error("{endpoint} did not answer within {secs}s")]
    Timeout {
        /// Where.
        endpoint: String,
        /// The limit.
        secs: u64,
    },
    /// The worker presented a certificate other than the recorded one.
    #[error(
        "{endpoint} presented a certificate that does not match its recorded fingerprint (re-enrolled or impersonated?)"
    )]
    PinMismatch {
        /// Where.
        endpoint: String,
    },
    /// TLS failed (wrong CA, refused our certificate, …).
    #[error("TLS with {endpoint} failed: {detail}")]
    Tls {
        /// Where.
        endpoint: String,
        /// Why.
        detail: String,
    },
    /// The worker answered with an error status.
    #[error("{endpoint} answered {status}: {detail}")]
    Status {
        /// Where.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The `error` field of the body, when present.
        kind: Option<String>,
        /// The `detail` of the body (or the body text).
        detail: String,
        /// The whole JSON body, when it was JSON.
        body: Option<serde_json::Value>,
    },
    /// The answer did not decode.
    #[error("{endpoint} sent an unexpected answer: {detail}")]
    Decode {
        /// Where.
        endpoint: String,
        /// Why.
        detail: String,
    },
}

impl ClientError {
    /// Whether the worker could not be reached at all (as opposed to
    /// answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. }
        )
    }
}

/// One worker daemon's address and its pooled mTLS client.
#[derive(Clone, Debug)]
pub struct Endpoint {
    base: String,
    label: String,
    http: reqwest::Client,
}

impl Endpoint {
    /// A client of `https://address:port` presenting `bundle`, pinning `pin`.
    pub fn new(
        label: &str,
        bundle: &Bundle,
        address: &str,
        port: u16,
        pin: Option<Fingerprint>,
    ) -> Result<Self, ClientError> {
        let config = decnet_pki::client_config(bundle, pin)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let host = match address.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => address.to_string(),
        };
        Ok(Endpoint {
            base: format!("https://{host}:{port}"),
            label: label.to_string(),
            http,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The label used in error messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The pooled HTTP client (for multipart uploads).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Map a transport error to a [`ClientError`].
    pub fn transport_error(&self, e: reqwest::Error, timeout: Duration) -> ClientError {
        let endpoint = self.label.clone();
        if e.is_timeout() {
            return ClientError::Timeout {
                endpoint,
                secs: timeout.as_secs(),
            };
        }
        let chain = error_chain(&e);
        if has_pin_mismatch(&e)
            || chain.contains("does not match the pinned")
            || chain.contains("PinMismatch")
        {
            return ClientError::PinMismatch { endpoint };
        }
        let lower = chain.to_lowercase();
        if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
            || lower.contains("alert")
        {
            return ClientError::Tls {
                endpoint,
                detail: chain,
            };
        }
        if e.is_connect() {
            return ClientError::Unreachable {
                endpoint,
                detail: chain,
            };
        }
        ClientError::Unreachable {
            endpoint,
            detail: chain,
        }
    }

    /// Send `req` with `timeout` and decode a JSON answer; error statuses
    /// become [`ClientError::Status`].
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e, timeout))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(e, timeout))?;
        if !status.is_success() {
            let body: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            let kind = body
                .as_ref()
                .and_then(|b| b["error"].as_str())
                .map(str::to_string);
            let detail = body
                .as_ref()
                .and_then(|b| b["detail"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(500).collect());
            return Err(ClientError::Status {
                endpoint: self.label.clone(),
                status: status.as_u16(),
                kind,
                detail,
                body,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            endpoint: self.label.clone(),
            detail: e.to_string(),
        })
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn has_pin_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if s.downcast_ref::<decnet_pki::tls::PinMismatch>().is_some() {
            return true;
        }
        cur = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_ports() {
        assert_eq!(super::with_default_port("m", 8770), "m:8770");
        assert_eq!(super::with_default_port("m:1", 8770), "m:1");
        assert_eq!(super::with_default_port("10.0.0.1", 6514), "10.0.0.1:6514");
        assert_eq!(super::with_default_port("[::1]", 6514), "[::1]:6514");
        assert_eq!(super::with_default_port("[::1]:9", 6514), "[::1]:9");
    }
}
