//! The worker side of a token join, shared by `decnet-agent join` and
//! `decnet-updater join`, and the token format shared with the master.
//!
//! 1. Download the CA certificate from the master without trusting anything,
//!    and refuse to go on unless its SHA-256 is the one the token carries.
//! 2. Generate the private key here (it never leaves this machine) and a CSR.
//! 3. Send the CSR and the token secret over TLS verified against that CA
//!    **and** requiring the master's role: a worker's certificate chains to
//!    the same CA, and the secret must never reach a worker posing as the master.
//! 4. Check the returned certificate (chains to the CA, our key, the role we
//!    asked for), then write it with the key (0600) and the CA as one unit.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use decnet_pki::{Bundle, BundleKind, ExpectedServer, Fingerprint, RoleKind};

/// A token: `<id>.<secret>.<ca-sha256>`. Its `Debug` never shows the secret
/// (`Display` is the full token, printed once for the operator).
#[derive(Clone)]
pub struct TokenText {
    /// Public id (12 hex).
    pub id: String,
    /// Secret (32 hex); only its SHA-256 is stored on the master.
    pub secret: String,
    /// SHA-256 of the CA certificate (64 hex).
    pub ca_sha256: String,
}

impl std::fmt::Debug for TokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenText")
            .field("id", &self.id)
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for TokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.id, self.secret, self.ca_sha256)
    }
}

/// Parse `<id>.<secret>.<ca-sha256>`.
pub fn parse_token(text: &str) -> Option<TokenText> {
    let mut it = text.trim().split('.');
    let (id, secret, ca) = (it.next()?, it.next()?, it.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (it.next().is_none() && hex(id, 12) && hex(secret, 32) && hex(ca, 64)).then(|| TokenText {
        id: id.into(),
        secret: secret.into(),
        ca_sha256: ca.to_ascii_lowercase(),
    })
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token text is malformed.
    #[error("the token is malformed (expected <id>.<secret>.<ca-sha256>)")]
    BadToken,
    /// The master's CA is not the one the token names.
    #[error(
        "the master's CA certificate (sha256 {got}) is not the one the token names ({expected}); refusing to trust it"
    )]
    CaMismatch {
        /// From the token.
        expected: String,
        /// From the master.
        got: String,
    },
    /// The master refused.
    #[error("the master refused the join: {0}")]
    Refused(String),
    /// Network or TLS failure.
    #[error("cannot reach the master at {master}: {detail}")]
    Unreachable {
        /// Where.
        master: String,
        /// Why.
        detail: String,
    },
    /// Something answered at the address, but not the master's control
    /// API (an agent's, updater's or listener's port asks for a client
    /// certificate a joining worker does not have yet).
    #[error(
        "{master} answered, but it is not the master's control API ({detail}): give --master the master's control address (port 8770 by default), not an agent, updater or log listener port"
    )]
    NotTheMaster {
        /// Where.
        master: String,
        /// What it did.
        detail: String,
    },
    /// Local failure (key generation, writing the bundle).
    #[error("{0}")]
    Local(String),
}

/// Where a join writes, and what it tells the master about itself.
#[derive(Clone, Debug, Default)]
pub struct JoinOptions<'a> {
    /// The host the worker believes it is: the master refuses a token bound
    /// to another host.
    pub claimed_host: Option<&'a str>,
    /// The port the joining daemon will serve on (recorded by the master).
    pub port: Option<u16>,
}

/// Read a token given on the command line, in the environment, or in a
/// file (`--token-file`; argv is visible to every local user in `/proc`).
pub fn read_token(text: Option<&str>, file: Option<&Path>) -> Result<String, JoinError> {
    match (text, file) {
        (Some(t), _) => Ok(t.trim().to_string()),
        (None, Some(f)) => {
            use std::os::unix::fs::PermissionsExt;
            let cannot = |e: std::io::Error| {
                JoinError::Local(format!("cannot read the token file {}: {e}", f.display()))
            };
            let mode = std::fs::metadata(f).map_err(cannot)?.permissions().mode();
            // A token is a secret until used: a file others may read is
            // refused rather than trusted.
            if mode & 0o077 != 0 {
                return Err(JoinError::Local(format!(
                    "the token file {} is readable by others (mode {:o}): chmod 600 {} and try again",
                    f.display(),
                    mode & 0o777,
                    f.display()
                )));
            }
            std::fs::read_to_string(f)
                .map(|t| t.trim().to_string())
                .map_err(cannot)
        }
        (None, None) => Err(JoinError::BadToken),
    }
}

/// Join `master` (`host:port`) with `token` as `kind`, writing the bundle to `dir`.
pub async fn join(
    master: &str,
    token: &str,
    kind: BundleKind,
    dir: &Path,
    opts: &JoinOptions<'_>,
) -> Result<Bundle, JoinError> {
    let claimed_host = opts.claimed_host;
    let token = parse_token(token).ok_or(JoinError::BadToken)?;
    let presented = Arc::new(decnet_pki::tls::PresentedServer::default());
    let unreachable = |e: &(dyn std::error::Error + 'static)| {
        // A server that asked for a client certificate and then refused to
        // go on without one is a decnet daemon, but not the control API,
        // where joins go (the alert may arrive after the request was sent,
        // so what the handshake saw counts too).
        let alert = matches!(
            crate::transport::find::<rustls::Error>(e),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired
                    | rustls::AlertDescription::HandshakeFailure,
            ))
        );
        if alert {
            return JoinError::NotTheMaster {
                master: master.to_string(),
                detail: "it asked for a client certificate".into(),
            };
        }
        JoinError::Unreachable {
            master: master.to_string(),
            detail: crate::transport::plain_cause(e),
        }
    };
    let build = |cfg| {
        crate::transport::http_client(
            cfg,
            Duration::from_secs(5),
            Some(Duration::from_secs(30)),
            false,
        )
        .map_err(|e| JoinError::Local(e.to_string()))
    };
    // 1. The CA, checked against the token before anything else.
    let boot = build(
        decnet_pki::tls::bootstrap_client_config_noting(Some(presented.clone()))
            .map_err(|e| JoinError::Local(e.to_string()))?,
    )?;
    // The first contact: a server whose certificate names another decnet
    // daemon (an agent's or updater's port) is not where joins go.
    let first_contact = |e: &(dyn std::error::Error + 'static)| match presented.cn() {
        Some(cn) if cn != decnet_pki::MASTER_CN => JoinError::NotTheMaster {
            master: master.to_string(),
            detail: format!("it presented the certificate of {cn}"),
        },
        _ => unreachable(e),
    };
    let v: serde_json::Value = boot
        .get(format!("https://{master}/join/ca"))
        .send()
        .await
        .map_err(|e| first_contact(&e))?
        .json()
        .await
        .map_err(|e| unreachable(&e))?;
    let offered = v["ca_pem"]
        .as_str()
        .ok_or_else(|| JoinError::Refused("no CA certificate in the answer".into()))?;
    let cas = decnet_pki::trust::certificates(offered)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| JoinError::Refused("the CA certificate does not parse".into()))?;
    // The token pins one CA; during a CA rotation the master trusts two,
    // and the other is taken only with an endorsement by the pinned one.
    let Some(pinned) = cas
        .iter()
        .find(|c| Fingerprint::of_der(c).to_hex() == token.ca_sha256)
    else {
        return Err(JoinError::CaMismatch {
            expected: token.ca_sha256,
            got: Fingerprint::of_der(&cas[0]).to_hex(),
        });
    };
    let pinned_pem = decnet_pki::trust::to_pem(pinned);
    let ca_pem = &decnet_pki::trust::accept(
        &pinned_pem,
        offered,
        v["endorsements_pem"].as_str().unwrap_or_default(),
    )
    .map_err(|e| JoinError::Refused(format!("the master's trust set is refused: {e}")))?;
    // 2. Our own key and CSR.
    let (key_pem, csr_pem) = decnet_pki::ca::generate_csr("decnet-join")
        .map_err(|e| JoinError::Local(format!("cannot generate a key: {e}")))?;
    // 3. The join itself, over TLS verified against the CA, to the master only.
    let client = build(
        decnet_pki::tls::anonymous_client_config(ca_pem, &ExpectedServer::master())
            .map_err(|e| JoinError::Local(e.to_string()))?,
    )?;
    let role = match kind {
        BundleKind::Updater => "updater",
        BundleKind::Operator => "operator",
        _ => "agent",
    };
    let resp = client
        .post(format!("https://{master}/join"))
        .json(&serde_json::json!({
            "token_id": token.id, "secret": token.secret, "role": role, "csr": csr_pem,
            "host": claimed_host, "port": opts.port,
        }))
        .send()
        .await
        .map_err(|e| unreachable(&e))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| unreachable(&e))?;
    if !status.is_success() {
        return Err(JoinError::Refused(
            body["detail"]
                .as_str()
                .unwrap_or("no reason given")
                .to_string(),
        ));
    }
    let cert_pem = body["cert_pem"]
        .as_str()
        .ok_or_else(|| JoinError::Refused("no certificate in the answer".into()))?;
    // 4. The bundle.
    let identity = decnet_pki::PeerIdentity::from_pem(cert_pem)
        .map_err(|e| JoinError::Refused(format!("the issued certificate is unusable: {e}")))?;
    let want = match kind {
        BundleKind::Updater => RoleKind::Updater,
        BundleKind::Operator => RoleKind::Operator,
        _ => RoleKind::Agent,
    };
    if identity.role.kind() != want {
        return Err(JoinError::Refused(format!(
            "the master issued a {} certificate, not {role}",
            identity.role.kind()
        )));
    }
    let bundle = Bundle {
        kind,
        cert_pem: cert_pem.to_string(),
        key_pem,
        ca_pem: ca_pem.to_string(),
        identity,
    };
    bundle
        .verify(&bundle.identity.role.clone())
        .map_err(|e| JoinError::Refused(e.to_string()))?;
    bundle
        .write(dir)
        .map_err(|e| JoinError::Local(format!("cannot write the bundle: {e}")))?;
    record_master(dir, master)
        .map_err(|e| JoinError::Local(format!("cannot record the master's address: {e}")))?;
    // An operator learns where the fleet API listens: the master's host at
    // the port the answer names.
    if let Some(port) = body["api_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
    {
        let host = master.rsplit_once(':').map(|(h, _)| h).unwrap_or(master);
        decnet_pki::secure_fs::write_atomic(
            &dir.join(FLEET_API_FILE),
            format!("{host}:{port}\n").as_bytes(),
            0o644,
        )
        .map_err(|e| JoinError::Local(format!("cannot record the fleet API's address: {e}")))?;
    }
    Ok(bundle)
}

pub use decnet_pki::bundle::{MASTER_FILE, record_master, recorded_master};

/// The file of an operator's bundle that names the fleet API (`HOST:PORT`),
/// as the master's join answer said.
pub const FLEET_API_FILE: &str = "fleet-api";

/// Why a worker daemon will not start: it would have no master to fetch
/// revocations from (nor to heartbeat to, nor to renew with).
#[derive(Debug, thiserror::Error)]
#[error(
    "no master to fetch revocations from: {bundle_dir} records none (bundles written by `join` or by `decnet swarm enroll --master` do); pass --master HOST[:PORT], or --no-master to run without one (development only: no revocation list is ever enforced)"
)]
pub struct NoMaster {
    /// The bundle directory that records no master.
    pub bundle_dir: String,
}

/// The master a worker daemon talks to: `flag` (`--master`), else the one
/// recorded in `bundle_dir`. A worker with neither refuses to start —
/// without a master it never learns a revocation and would keep trusting
/// a revoked master certificate — unless `allow_none` (`--no-master`),
/// which it then says loudly.
pub fn master_for(
    flag: Option<String>,
    bundle_dir: &Path,
    allow_none: bool,
) -> Result<Option<String>, NoMaster> {
    if let Some(m) = flag.or_else(|| recorded_master(bundle_dir)) {
        return Ok(Some(m));
    }
    if allow_none {
        tracing::warn!(
            bundle_dir = %bundle_dir.display(),
            "running WITHOUT a master (--no-master): no heartbeats, no renewal, and no revocation list is ever fetched; for development only"
        );
        return Ok(None);
    }
    Err(NoMaster {
        bundle_dir: bundle_dir.display().to_string(),
    })
}

/// The `join` subcommand of both worker binaries: join, report, and return
/// the exit code (0 joined; 1 refused or unreachable; 2 a malformed or
/// missing token, or a CA that does not match it).
pub async fn join_command(
    master: &str,
    token: Option<&str>,
    token_file: Option<&Path>,
    kind: BundleKind,
    dir: &Path,
    opts: &JoinOptions<'_>,
) -> i32 {
    let result = match read_token(token, token_file) {
        Ok(t) => join(master, &t, kind, dir, opts).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(b) => {
            println!(
                "joined as {} (fingerprint {}); bundle written to {}",
                b.identity.cn,
                b.identity.fingerprint,
                dir.display()
            );
            0
        }
        Err(e @ (JoinError::BadToken | JoinError::CaMismatch { .. })) => {
            eprintln!("error: {e}");
            2
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_recorded_at_join_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded_master(dir.path()), None);
        record_master(dir.path(), "master.example.net:8770").unwrap();
        assert_eq!(
            recorded_master(dir.path()).as_deref(),
            Some("master.example.net:8770")
        );
        std::fs::write(dir.path().join(MASTER_FILE), "  \n").unwrap();
        assert_eq!(recorded_master(dir.path()), None);
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let t = TokenText {
            id: "a".repeat(12),
            secret: "b".repeat(32),
            ca_sha256: "c".repeat(64),
        };
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(parse_token(&t.to_string()).unwrap().secret, t.secret);
    }
}
