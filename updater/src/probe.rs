//! The post-update health probe: `GET https://127.0.0.1:<port>/health` over
//! mTLS with the updater's own certificate (the agent admits
//! `updater@<its host>` on that route), bounded attempts and timeouts, and a
//! transcript of every attempt for the operator.

use std::time::Duration;

use decnet_pki::{Bundle, Fingerprint};

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
#[derive(Debug)]
pub struct Prober {
    client: std::sync::RwLock<reqwest::Client>,
    agent_pin: Option<Fingerprint>,
    url: String,
    expected_host: String,
    opts: ProbeOptions,
}

impl Prober {
    /// A prober presenting the updater `bundle`, pinning the agent's
    /// certificate when known.
    pub fn new(
        bundle: &Bundle,
        agent_pin: Option<Fingerprint>,
        expected_host: String,
        opts: ProbeOptions,
    ) -> Result<Self, String> {
        let client = Self::client(bundle, agent_pin, &opts)?;
        Ok(Prober {
            client: std::sync::RwLock::new(client),
            agent_pin,
            url: format!("https://127.0.0.1:{}/health", opts.port),
            expected_host,
            opts,
        })
    }

    /// Present `bundle` from now on (after a renewal of the updater's certificate).
    pub fn reload(&self, bundle: &Bundle) -> Result<(), String> {
        let c = Self::client(bundle, self.agent_pin, &self.opts)?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = c;
        Ok(())
    }

    fn client(
        bundle: &Bundle,
        agent_pin: Option<Fingerprint>,
        opts: &ProbeOptions,
    ) -> Result<reqwest::Client, String> {
        let cfg = decnet_pki::client_config(bundle, agent_pin).map_err(|e| e.to_string())?;
        reqwest::Client::builder()
            .tls_backend_preconfigured(cfg)
            .connect_timeout(opts.timeout)
            .timeout(opts.timeout)
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| e.to_string())
    }

    /// Probe until healthy or out of attempts.
    pub async fn probe(&self) -> ProbeReport {
        let mut transcript = Vec::new();
        for attempt in 1..=self.opts.attempts {
            let client = self
                .client
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
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
                Err(e) => {
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        msg = format!("{msg}: {s}");
                        src = s.source();
                    }
                    transcript.push(format!("attempt {attempt}: {msg}"));
                }
            }
            if attempt < self.opts.attempts {
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
