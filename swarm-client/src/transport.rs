//! The mTLS HTTP transport shared by every worker client: one
//! [`WorkerPool`] (one TLS configuration, one session cache, one HTTP
//! client) for every worker a command talks to, presenting the master
//! bundle and verifying each worker against the CA, the role of the host it
//! dialed (`<host>` for its agent, `updater@<host>` for its updater) and,
//! when known, its recorded fingerprints.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use decnet_pki::{
    Bundle, ExpectedServer, Fingerprint, HostName, RevocationList, Role, ServerDirectory,
};
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
    /// The server's certificate names another role or host than the one dialed.
    #[error("{endpoint} presented a certificate of another identity (impersonation?): {detail}")]
    WrongServer {
        /// Where.
        endpoint: String,
        /// What it presented.
        detail: String,
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

/// The master's connections to its workers: ONE TLS configuration (the
/// master bundle, parsed once), one TLS session cache and one HTTP client
/// for every worker a command talks to, however many.
///
/// Why: building a TLS configuration and a client per host cost more master
/// CPU than the handshake itself at fleet scale (10 000 hosts). Each worker
/// is still verified as the host it is meant to be: its [`Endpoint`] dials
/// a name of its own (see [`ServerDirectory`]) that the verifier maps back
/// to the expected role and pins, and that this pool's resolver maps to the
/// worker's address. Connections are not kept idle (a fan-out over 10 000
/// hosts must not hold 10 000 sockets); a host dialed again resumes its TLS
/// session instead (no RSA signature on either side). Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerPool {
    http: reqwest::Client,
    directory: Arc<ServerDirectory>,
    addresses: Arc<AddressBook>,
}

impl WorkerPool {
    /// A pool presenting the master `bundle`.
    pub fn new(master: &Bundle) -> Result<Self, ClientError> {
        Self::with_crl(master, None)
    }

    /// A pool presenting the master `bundle` that also refuses every server
    /// certificate `crl` revokes (besides pinning each to its recorded
    /// fingerprints).
    pub fn with_crl(master: &Bundle, crl: Option<&RevocationList>) -> Result<Self, ClientError> {
        let directory = Arc::new(ServerDirectory::new());
        let config = decnet_pki::fleet_client_config(master, crl, directory.clone())
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let addresses = Arc::new(AddressBook::default());
        let http = http_client_builder(config, CONNECT_TIMEOUT, None, false)
            .dns_resolver(addresses.clone())
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(WorkerPool {
            http,
            directory,
            addresses,
        })
    }

    /// The endpoint `https://address:port` of a server that must prove
    /// `expected`; `label` names it in errors.
    pub fn endpoint(
        &self,
        label: &str,
        address: &str,
        port: u16,
        expected: &ExpectedServer,
    ) -> Endpoint {
        let address = address.trim_start_matches('[').trim_end_matches(']');
        // One name per identity and place (address and port): TLS sessions
        // are cached per name.
        let name = self
            .directory
            .register(expected, &format!("{address} {port}"));
        self.addresses.insert(&name, address);
        Endpoint {
            base: format!("https://{name}:{port}"),
            label: label.to_string(),
            http: self.http.clone(),
        }
    }

    /// How many distinct servers the pool has been asked to reach.
    pub fn servers(&self) -> usize {
        self.directory.len()
    }
}

/// The pool's resolver: a [`ServerDirectory`] name → the worker's address
/// (an IP, or a host name resolved by the system when dialed). A name that
/// was never registered does not resolve (no lookup leaves the process).
#[derive(Debug, Default)]
struct AddressBook(RwLock<HashMap<String, String>>);

impl AddressBook {
    fn insert(&self, name: &str, address: &str) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if map.get(name).map(String::as_str) != Some(address) {
            map.insert(name.to_string(), address.to_string());
        }
    }
}

impl reqwest::dns::Resolve for AddressBook {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let address = self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name.as_str())
            .cloned();
        let name = name.as_str().to_string();
        Box::pin(async move {
            let Some(address) = address else {
                return Err(format!("{name} is not a registered worker").into());
            };
            if let Ok(ip) = address.parse::<IpAddr>() {
                let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::new(ip, 0)));
                return Ok(addrs);
            }
            let found: Vec<SocketAddr> = tokio::net::lookup_host((address.as_str(), 0))
                .await
                .map_err(|e| format!("failed to lookup address {address}: {e}"))?
                .collect();
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// One worker daemon's address, the identity it must prove, and the
/// [`WorkerPool`] it is reached through.
#[derive(Clone, Debug)]
pub struct Endpoint {
    base: String,
    label: String,
    http: reqwest::Client,
}

impl Endpoint {
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

    /// Map a transport error to a [`ClientError`], in plain words (no
    /// HTTP-client internals: the cause an operator can act on).
    pub fn transport_error(&self, e: reqwest::Error, timeout: Duration) -> ClientError {
        let endpoint = self.label.clone();
        if e.is_timeout() {
            // The connect timeout, not the request's, when no connection
            // was made at all.
            let secs = if e.is_connect() {
                CONNECT_TIMEOUT.as_secs()
            } else {
                timeout.as_secs()
            };
            return ClientError::Timeout { endpoint, secs };
        }
        if decnet_pki::tls::is_pin_mismatch(&e) {
            return ClientError::PinMismatch { endpoint };
        }
        if let Some(detail) = decnet_pki::tls::identity_failure(&e) {
            return ClientError::WrongServer { endpoint, detail };
        }
        let detail = plain_cause(&e);
        if let Some(tls) = find::<rustls::Error>(&e) {
            return ClientError::Tls {
                endpoint,
                detail: tls.to_string(),
            };
        }
        ClientError::Unreachable { endpoint, detail }
    }

    /// Send `req` with `timeout` and decode a JSON answer of at most
    /// [`MAX_ANSWER`] bytes; error statuses become [`ClientError::Status`].
    pub async fn send_json<T: DeserializeOwned + Send + 'static>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        self.send_json_within(req, timeout, MAX_ANSWER).await
    }

    /// [`send_json`](Self::send_json) refusing an answer larger than
    /// `max_answer` bytes: what an endpoint's answer can legitimately be,
    /// for the calls the master makes of every worker at once (health,
    /// status), whose answers it holds until the last one is in.
    pub async fn send_json_within<T: DeserializeOwned + Send + 'static>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
        max_answer: usize,
    ) -> Result<T, ClientError> {
        let max_answer = max_answer.min(MAX_ANSWER);
        let mut resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e, timeout))?;
        let status = resp.status();
        let too_large = || ClientError::Decode {
            endpoint: self.label.clone(),
            detail: format!("the answer is larger than {max_answer} bytes"),
        };
        if status.is_success() && resp.content_length().is_some_and(|n| n > max_answer as u64) {
            return Err(too_large());
        }
        // An error is read as far as it is shown.
        let max = if status.is_success() {
            max_answer
        } else {
            MAX_ERROR_JSON
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.transport_error(e, timeout))?
        {
            if bytes.len() + chunk.len() > max {
                if !status.is_success() {
                    bytes.extend_from_slice(&chunk[..max - bytes.len()]);
                    break;
                }
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(self.status_error(status, &bytes));
        }
        decode_answer(bytes)
            .await
            .map_err(|detail| ClientError::Decode {
                endpoint: self.label.clone(),
                detail,
            })
    }
}

/// Answers larger than this are decoded on the blocking pool.
pub const DECODE_INLINE: usize = 256 * 1024;

/// An error body larger than this is not read as JSON (its first
/// characters are shown): a worker's errors are a line of JSON.
const MAX_ERROR_JSON: usize = 64 * 1024;

/// Large answers decoded at once, at most: each can take tens of times its
/// size in memory while it is decoded, and a fleet-wide command asks
/// every worker at once.
static LARGE_DECODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Decode a worker's JSON answer. A large one is decoded on the blocking
/// pool: an answer is what a worker chose to send (up to [`MAX_ANSWER`]),
/// and a body of nested arrays where a type holds free JSON took the
/// master's runtime thread for hundreds of milliseconds, away from every
/// other connection it serves.
pub async fn decode_answer<T: DeserializeOwned + Send + 'static>(
    bytes: Vec<u8>,
) -> Result<T, String> {
    if bytes.len() <= DECODE_INLINE {
        return serde_json::from_slice(&bytes).map_err(|e| e.to_string());
    }
    let turn = LARGE_DECODES
        .acquire()
        .await
        .map_err(|e| format!("decoding the answer failed: {e}"))?;
    // The permit goes with the decode: a caller that gives up waiting does
    // not free the turn of a decode still running.
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("decoding the answer failed: {e}"))?
}

impl Endpoint {
    /// The error a failed answer of `status` with `bytes` stands for.
    fn status_error(&self, status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
        let body: Option<serde_json::Value> = if bytes.len() <= MAX_ERROR_JSON {
            serde_json::from_slice(bytes).ok()
        } else {
            None
        };
        let kind = body
            .as_ref()
            .and_then(|b| b["error"].as_str())
            .map(str::to_string);
        let detail = body
            .as_ref()
            .and_then(|b| b["detail"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(2048)])
                    .chars()
                    .take(500)
                    .collect()
            });
        ClientError::Status {
            endpoint: self.label.clone(),
            status: status.as_u16(),
            kind,
            detail,
            body,
        }
    }

    /// Send `req` with `timeout` and write a successful answer's body to
    /// `out`, at most `max` bytes (a worker is not trusted to be small, nor
    /// quick: a body that falls behind [`crate::pace::TransferPace`] is cut,
    /// so a worker that trickles cannot hold what the caller reserved for
    /// it); returns the bytes written. Error statuses become
    /// [`ClientError::Status`].
    pub async fn download(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        max: u64,
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let mut resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e, timeout))?;
        let status = resp.status();
        if !status.is_success() {
            let mut bytes = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| self.transport_error(e, timeout))?
            {
                if bytes.len() + chunk.len() > MAX_ANSWER {
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            return Err(self.status_error(status, &bytes));
        }
        let too_large = || ClientError::Decode {
            endpoint: self.label.clone(),
            detail: format!("the answer is larger than {max} bytes"),
        };
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let mut written = 0u64;
        let mut pace = crate::pace::TransferPace::new(tokio::time::Instant::now());
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), resp.chunk()).await;
            let chunk = match next {
                Err(_) => None,
                Ok(chunk) => match chunk.map_err(|e| self.transport_error(e, timeout))? {
                    Some(chunk) => Some(chunk),
                    None => break,
                },
            };
            if let Some(c) = &chunk {
                pace.add(c.len() as u64);
            }
            if pace.too_slow(tokio::time::Instant::now()) {
                return Err(ClientError::Decode {
                    endpoint: self.label.clone(),
                    detail: format!(
                        "the answer came slower than {} KiB/s: cut",
                        crate::pace::MIN_TRANSFER_RATE >> 10
                    ),
                });
            }
            let Some(chunk) = chunk else {
                continue;
            };
            written += chunk.len() as u64;
            if written > max {
                return Err(too_large());
            }
            let writing = tokio::time::Instant::now();
            out.write_all(&chunk)
                .await
                .map_err(|e| ClientError::Decode {
                    endpoint: self.label.clone(),
                    detail: format!("cannot write the answer: {e}"),
                })?;
            pace.exclude(writing.elapsed());
        }
        out.flush().await.map_err(|e| ClientError::Decode {
            endpoint: self.label.clone(),
            detail: format!("cannot write the answer: {e}"),
        })?;
        Ok(written)
    }
}

/// The largest answer read from a worker (a worker is not trusted to be small).
pub const MAX_ANSWER: usize = 16 << 20;

/// The one builder of mTLS HTTP clients: `config` (from
/// `decnet_pki::client_config` or a `TlsMaterial`), a connect timeout, an
/// overall request timeout (`None`: set per request), and whether idle
/// connections are kept for reuse (not for a probe whose server restarts).
pub fn http_client(
    config: rustls::ClientConfig,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    keep_alive: bool,
) -> Result<reqwest::Client, ClientError> {
    http_client_builder(config, connect_timeout, timeout, keep_alive)
        .build()
        .map_err(|e| ClientError::Setup(e.to_string()))
}

fn http_client_builder(
    config: rustls::ClientConfig,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    keep_alive: bool,
) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60));
    if !keep_alive {
        b = b.pool_max_idle_per_host(0);
    }
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b
}

/// The first error of type `T` in `e`'s chain (looking inside `io::Error`s).
/// The first error of type `T` in `e`'s chain (through I/O errors too).
pub(crate) fn find<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if let Some(t) = s.downcast_ref::<T>() {
            return Some(t);
        }
        cur = match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    None
}

/// What went wrong, as an operator would say it: the network cause
/// (`connection refused`, `no route to host`, …) rather than the layers
/// of the HTTP client it passed through.
pub fn plain_cause(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(identity) = decnet_pki::tls::identity_failure(e) {
        return identity;
    }
    if let Some(io) = find::<std::io::Error>(e) {
        use std::io::ErrorKind::*;
        let text = match io.kind() {
            ConnectionRefused => "connection refused (nothing listens there)".to_string(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                "the connection was closed by the other side".to_string()
            }
            TimedOut => "timed out".to_string(),
            HostUnreachable | NetworkUnreachable => "no route to the host".to_string(),
            AddrNotAvailable => "the address is not available".to_string(),
            _ => io.to_string(),
        };
        return text;
    }
    let chain = error_chain(e);
    if chain.contains("dns error") || chain.contains("failed to lookup") {
        return "the host name does not resolve".into();
    }
    // The innermost cause is the most specific.
    chain.rsplit(": ").next().unwrap_or(&chain).to_string()
}

/// An error and its causes, `: `-joined (each cause once); a refusal of
/// the server's identity is reported as such, in plain words.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(identity) = decnet_pki::tls::identity_failure(e) {
        return format!("refusing the server: {identity}");
    }
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        // `io::Error::source` skips the error it wraps: look inside.
        cur = match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    parts.join(": ")
}

/// What the master expects when it dials `host`'s agent (`updater`: its
/// updater): the role, and the fingerprints the fleet database records for
/// it. No recorded fingerprint fails closed: any certificate of the role,
/// a copied key's included, would otherwise do.
pub fn expect_worker(
    host: &str,
    updater: bool,
    pins: Vec<Fingerprint>,
) -> Result<ExpectedServer, ClientError> {
    let name =
        HostName::new(host).map_err(|e| ClientError::Setup(format!("host name {host:?}: {e}")))?;
    if pins.is_empty() {
        return Err(ClientError::Setup(format!(
            "no {} certificate of {host} is recorded: the master dials only the certificates it recorded (enroll the host, or let it join)",
            if updater { "updater" } else { "agent" }
        )));
    }
    let role = if updater {
        Role::Updater(name)
    } else {
        Role::Agent(name)
    };
    Ok(ExpectedServer::role(role).pinned(pins))
}

#[cfg(test)]
mod tests {
    /// A hostile worker's answer: 8 MiB of `[[0],[0],…]` where a type
    /// holds free JSON (a tree of some two million nodes to build).
    fn nested_arrays() -> Vec<u8> {
        let mut body = b"[".to_vec();
        while body.len() < 8 << 20 {
            body.extend_from_slice(b"[0],");
        }
        body.extend_from_slice(b"[0]]");
        body
    }

    #[test]
    fn a_large_answer_is_decoded_off_the_runtime_thread() {
        // The attacker's answer decoded while another task on the one
        // runtime thread ticks every millisecond: the ticks must go on.
        let body = nested_arrays();
        let started = std::time::Instant::now();
        let inline: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let inline_took = started.elapsed();
        drop(inline);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (decoded, longest_gap) = rt.block_on(async {
            let ticking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            let ticker = tokio::spawn({
                let ticking = ticking.clone();
                async move {
                    let mut last = std::time::Instant::now();
                    let mut longest = std::time::Duration::ZERO;
                    while ticking.load(std::sync::atomic::Ordering::Relaxed) {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        longest = longest.max(last.elapsed());
                        last = std::time::Instant::now();
                    }
                    longest
                }
            });
            tokio::task::yield_now().await;
            let decoded = super::decode_answer::<serde_json::Value>(body).await;
            ticking.store(false, std::sync::atomic::Ordering::Relaxed);
            (decoded, ticker.await.unwrap())
        });
        assert_eq!(
            decoded.unwrap().as_array().map(Vec::len),
            Some((8 << 20) / 4 + 1)
        );
        println!("decoding inline took {inline_took:?}; longest gap between ticks {longest_gap:?}");
        assert!(
            longest_gap < inline_took / 4,
            "the runtime thread was held {longest_gap:?} (decoding takes {inline_took:?})"
        );
    }

    #[test]
    fn default_ports() {
        assert_eq!(super::with_default_port("m", 8770), "m:8770");
        assert_eq!(super::with_default_port("m:1", 8770), "m:1");
        assert_eq!(super::with_default_port("10.0.0.1", 6514), "10.0.0.1:6514");
        assert_eq!(super::with_default_port("[::1]", 6514), "[::1]:6514");
        assert_eq!(super::with_default_port("[::1]:9", 6514), "[::1]:9");
    }
}
