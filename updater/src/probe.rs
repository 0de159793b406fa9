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
    /// The probe's budget, in attempts of the fixed schedule it replaced:
    /// it gives up after `(attempts - 1)` × `interval` of waiting, and
    /// after at least `attempts` attempts (see [`ProbeSchedule`]).
    pub attempts: u32,
    /// Timeout of each attempt.
    pub timeout: Duration,
    /// The longest pause between attempts (the first ones are shorter).
    pub interval: Duration,
}

/// The first pause between probe attempts; each later one doubles, up to
/// [`ProbeOptions::interval`]. An agent that starts in 100 ms is seen
/// healthy within a few milliseconds of it, not an interval later.
pub const FIRST_PAUSE: Duration = Duration::from_millis(20);

/// When to probe again: at once, then after pauses that double from
/// [`FIRST_PAUSE`] to the options' interval, for as long as the options'
/// budget (`(attempts - 1)` × `interval`, the waiting a fixed schedule of
/// `attempts` attempts would do) lasts, and never fewer than `attempts`
/// attempts. Only the pauses count against the
/// budget, as with the fixed schedule: attempts that time out slowly do
/// not shorten it. Pure, so the schedule is unit-tested without a clock.
#[derive(Clone, Debug)]
pub struct ProbeSchedule {
    left: Duration,
    pause: Duration,
    max_pause: Duration,
    tries_left: u32,
}

impl ProbeSchedule {
    /// The schedule of a probe with `opts`.
    pub fn new(opts: &ProbeOptions) -> Self {
        let waits = opts.attempts.saturating_sub(1);
        ProbeSchedule {
            left: opts.interval.checked_mul(waits).unwrap_or(Duration::MAX),
            pause: FIRST_PAUSE.min(opts.interval),
            max_pause: opts.interval,
            tries_left: waits,
        }
    }

    /// The pause before the next attempt after a failed one, or `None` when
    /// the budget is spent.
    pub fn next_pause(&mut self) -> Option<Duration> {
        let owed = self.tries_left > 0;
        self.tries_left = self.tries_left.saturating_sub(1);
        if self.left.is_zero() {
            // The budget is spent: attempts still owed go at once (never
            // fewer attempts than asked for, e.g. with a zero interval).
            return owed.then_some(Duration::ZERO);
        }
        let pause = self.pause.min(self.left);
        self.left -= pause;
        self.pause = self.pause.saturating_mul(2).min(self.max_pause);
        Some(pause)
    }
}

/// How often an attempt in flight checks that the agent still runs.
pub const GONE_CHECK: Duration = Duration::from_millis(50);

/// Resolves once `alive` says the agent is gone (checked every
/// [`GONE_CHECK`]); never while it runs.
async fn gone<F, Fut>(alive: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while alive().await {
        tokio::time::sleep(GONE_CHECK).await;
    }
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
    /// gone (checked during each attempt and after a failed one): an agent
    /// that exited will not become healthy, and the revert can start at once.
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
        let mut schedule = ProbeSchedule::new(&self.opts);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let client = match self.client() {
                Ok(c) => c,
                Err(e) => {
                    transcript.push(format!(
                        "attempt {attempt}: cannot build the probe client: {e}"
                    ));
                    break;
                }
            };
            // The agent's socket may be held for it (socket activation),
            // so an agent that died never refuses the connection: the
            // attempt would wait out its whole timeout. Its death ends the
            // attempt instead.
            let answer = tokio::select! {
                r = client.get(&self.url).send() => r,
                () = gone(&alive) => {
                    transcript.push(format!(
                        "attempt {attempt}: the agent exited: not waiting for it"
                    ));
                    break;
                }
            };
            match answer {
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
            let Some(pause) = schedule.next_pause() else {
                break;
            };
            if !alive().await {
                transcript.push(format!(
                    "the agent exited after attempt {attempt}: not waiting for it"
                ));
                break;
            }
            tokio::time::sleep(pause).await;
        }
        ProbeReport {
            healthy: false,
            version: None,
            transcript,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(attempts: u32, interval_ms: u64) -> ProbeOptions {
        ProbeOptions {
            port: 1,
            attempts,
            timeout: Duration::from_secs(1),
            interval: Duration::from_millis(interval_ms),
        }
    }

    fn pauses(o: &ProbeOptions) -> Vec<u64> {
        let mut s = ProbeSchedule::new(o);
        std::iter::from_fn(|| s.next_pause().map(|p| p.as_millis() as u64)).collect()
    }

    #[test]
    fn probes_at_once_then_backs_off_to_the_interval() {
        let p = pauses(&opts(10, 1000));
        assert_eq!(&p[..7], &[20, 40, 80, 160, 320, 640, 1000]);
        assert!(p[7..].iter().all(|p| *p <= 1000), "{p:?}");
        // The whole budget of the fixed schedule is waited, and no more.
        assert_eq!(p.iter().sum::<u64>(), 9000);
    }

    #[test]
    fn one_attempt_never_waits() {
        assert!(pauses(&opts(1, 1000)).is_empty());
    }

    #[test]
    fn a_zero_interval_still_makes_every_attempt() {
        assert_eq!(pauses(&opts(3, 0)), vec![0, 0]);
    }

    #[test]
    fn an_absurd_budget_does_not_overflow() {
        let o = ProbeOptions {
            interval: Duration::MAX,
            ..opts(3, 0)
        };
        let mut s = ProbeSchedule::new(&o);
        assert!(s.next_pause().is_some());
    }

    #[test]
    fn a_short_interval_caps_every_pause() {
        assert_eq!(pauses(&opts(3, 5)), vec![5, 5]);
    }
}
