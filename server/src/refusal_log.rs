//! Refused connections and failed handshakes, logged with their reason but
//! rate-limited, so a flood of hostile connections cannot flood the journal;
//! every one of them is also counted (`decnet_connections_refused_total`,
//! `decnet_handshake_failures_total`), without a rate limit.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use decnet_pki::PeerIdentity;

use crate::admission::Refused;
use crate::metrics::{ReasonLabels, server_metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Lines per window before further refusals are only counted.
const LINES_PER_WINDOW: u32 = 10;
/// The rate-limit window.
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    suppressed: u64,
}

/// One server's refusal log.
#[derive(Debug)]
pub struct RefusalLog {
    server: &'static str,
    window: Mutex<Window>,
}

impl RefusalLog {
    /// The refusal log of server `server`.
    pub fn new(server: &'static str) -> Self {
        RefusalLog {
            server,
            window: Mutex::new(Window {
                start: Instant::now(),
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether this event may be logged; reports what was suppressed before.
    fn admit_line(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.start.elapsed() >= WINDOW {
            if w.suppressed > 0 {
                tracing::warn!(
                    server = self.server,
                    suppressed = w.suppressed,
                    "more refused connections were not logged (rate limit)"
                );
            }
            *w = Window {
                start: Instant::now(),
                lines: 0,
                suppressed: 0,
            };
        }
        if w.lines < LINES_PER_WINDOW {
            w.lines += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    fn count(&self, family: &Family<ReasonLabels, Counter>, reason: &str) {
        family
            .get_or_create(&ReasonLabels {
                server: self.server.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A connection refused by admission before its handshake.
    pub fn refused(&self, why: Refused, remote: SocketAddr) {
        self.count(&server_metrics().connections_refused, why.as_str());
        if self.admit_line() {
            tracing::warn!(server = self.server, %remote, reason = why.as_str(), "connection refused: {why}");
        }
    }

    /// `accept` failed (descriptors exhausted, ...): logged at a bounded rate.
    pub fn accept_failed(&self, e: &std::io::Error) {
        self.count(&server_metrics().connections_refused, "accept_failed");
        if self.admit_line() {
            tracing::warn!(server = self.server, error = %e, "accept failed");
        }
    }

    /// An open connection closed because the revocation list now in force
    /// revokes its peer.
    pub fn revoked_while_open(&self, remote: SocketAddr, peer: &PeerIdentity) {
        self.count(&server_metrics().connections_refused, "revoked_while_open");
        tracing::warn!(
            server = self.server,
            %remote,
            peer_cn = %peer.cn,
            peer_fingerprint = %peer.fingerprint.short(),
            "open connection closed: its certificate was revoked"
        );
    }

    /// A connection refused by admission after its handshake.
    pub fn refused_peer(&self, why: Refused, remote: SocketAddr, peer: Option<&PeerIdentity>) {
        self.count(&server_metrics().connections_refused, why.as_str());
        if self.admit_line() {
            tracing::warn!(
                server = self.server,
                %remote,
                peer_cn = peer.map(|p| p.cn.as_str()).unwrap_or("-"),
                peer_fingerprint = %peer.map(|p| p.fingerprint.short()).unwrap_or_else(|| "-".into()),
                reason = why.as_str(),
                "connection refused: {why}"
            );
        }
    }

    /// A TLS handshake that failed or timed out.
    pub fn handshake_failed(
        &self,
        reason: &'static str,
        remote: SocketAddr,
        error: Option<&dyn std::fmt::Display>,
    ) {
        self.count(&server_metrics().handshake_failures, reason);
        if self.admit_line() {
            match error {
                Some(e) => {
                    tracing::info!(server = self.server, %remote, reason, error = %e, "TLS handshake refused")
                }
                None => {
                    tracing::info!(server = self.server, %remote, reason, "TLS handshake refused")
                }
            }
        }
    }
}

/// A short, stable reason for a failed server-side handshake.
pub fn reason_of(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return "io";
    };
    if decnet_pki::tls::is_chain_too_long(tls) {
        return "chain_too_long";
    }
    match tls {
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidCertificate(c) => match c {
            CertificateError::Revoked => "revoked",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "foreign_ca",
            _ => "bad_certificate",
        },
        Error::AlertReceived(_) => "peer_alert",
        _ => "protocol",
    }
}
