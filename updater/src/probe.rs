//! The post-update health probe: `GET https://127.0.0.1:<port>/health` over
//! mTLS with the updater's own certificate (the agent admits
//! `updater@<its host>` on that route), bounded attempts and timeouts, and a
//! transcript of every attempt for the operator.
//!
//! The agent must prove it is the agent of this very host (role
//! Agent(host), chained to the CA, not revoked): a role check, not a pinned
//! fingerprint, so the probe keeps working after the agent renews its
//! certificate. The updater's own certificate comes from its live material,
//! so its renewals apply to the probe too.

use std::sync::Arc;
use std::time::Duration;

use decnet_pki::{ExpectedServer, HostName, MaterialSource, Role, TlsMaterial};

/// Probe settings.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Agent port on loopback.
    pub port: u16,
    /// Attempts before giving up.
    pub attempts: u32,
    /// Timeout of each attempt.
    pub timeout: Duration,
    /// Pause between attempts.
    pub interval: Duration,
}

/// The outcome of a probe.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeReport {
    /// Whether the agent answered healthy.
    pub healthy: bool,
    /// The version it reported.
    pub version: Option<String>,
    /// One line per attempt.
    pub transcript: Vec<String>,
}

/// Probes the local agent.
pub struct Prober {
    material: MaterialSource,
    client: std::sync::Mutex<Option<(Arc<TlsMaterial>, reqwest::Client)>>,
    expected: ExpectedServer,
    url: String,
    expected_host: String,
    opts: ProbeOptions,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// A prober presenting the updater's live `material`, expecting the
    /// agent of `host` on loopback.
    pub fn new(material: MaterialSource, host: &HostName, opts: ProbeOptions) -> Self {
        Prober {
            material,
            client: std::sync::Mutex::new(None),
            expected: ExpectedServer::role(Role::Agent(host.clone())),
            url: format!("https://127.0.0.1:{}/health", opts.port),
            expected_host: host.to_string(),
            opts,
        }
    }

    /// The client for the material in force (rebuilt after a renewal or a new CRL).
    fn client(&self) -> Result<reqwest::Client, String> {
        let material = self.material.current();
        let mut cached = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((m, c)) = cached.as_ref()
            && Arc::ptr_eq(m, &material)
        {
            return Ok(c.clone());
        }
        let cfg = material
            .client_config(&self.expected)
            .map_err(|e| e.to_string())?;
        let client = decnet_swarm_client::transport::http_client(
            cfg,
            self.opts.timeout,
            Some(self.opts.timeout),
            false,
        )
        .map_err(|e| e.to_string())?;
        *cached = Some((material, client.clone()));
        Ok(client)
    }

    /// Probe until healthy or out of attempts.
    pub async fn probe(&self) -> ProbeReport {
        self.probe_while(|| async { true }).await
    }

    /// Probe until healthy, out of attempts, or `alive` says the agent is
    /// gone (after a failed attempt): an agent that exited will not become
    /// healthy, and the revert can start at once.
    pub async fn probe_while<F, Fut>(&self, alive: F) -> ProbeReport
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = std::time::Instant::now();
        let report = self.probe_attempts(alive).await;
        crate::metrics::record_probe(started.elapsed().as_secs_f64(), report.healthy);
        report
    }

    async fn probe_attempts<F, Fut>(&self, alive: F) -> ProbeReport
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut transcript = Vec::new();
        for attempt in 1..=self.opts.attempts {
            let client = match self.client() {
                Ok(c) => c,
                Err(e) => {
                    transcript.push(format!(
                        "attempt {attempt}: cannot build the probe client: {e}"
                    ));
                    break;
                }
            };
            match client.get(&self.url).send().await {
                Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                    Ok(v) if v["role"] == "agent" && v["host"] == self.expected_host.as_str() => {
                        let version = v["version"].as_str().map(str::to_string);
                        transcript.push(format!(
                            "attempt {attempt}: healthy (version {})",
                            version.as_deref().unwrap_or("?")
                        ));
                        return ProbeReport {
                            healthy: true,
                            version,
                            transcript,
                        };
                    }
                    Ok(v) => transcript.push(format!("attempt {attempt}: unexpected answer {v}")),
                    Err(e) => transcript.push(format!("attempt {attempt}: unreadable answer: {e}")),
                },
                Ok(r) => transcript.push(format!("attempt {attempt}: HTTP {}", r.status())),
                Err(e) => transcript.push(format!(
                    "attempt {attempt}: {}",
                    decnet_swarm_client::transport::error_chain(&e)
                )),
            }
            if attempt < self.opts.attempts {
                if !alive().await {
                    transcript.push(format!(
                        "the agent exited after attempt {attempt}: not waiting for it"
                    ));
                    break;
                }
                tokio::time::sleep(self.opts.interval).await;
            }
        }
        ProbeReport {
            healthy: false,
            version: None,
            transcript,
        }
    }
}
