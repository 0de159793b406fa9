//! The process's metrics: one registry, encoded in the OpenMetrics text
//! format for Prometheus.
//!
//! Each crate declares its own series next to the events they count (a log
//! line and a metric together, as vector's internal events do) and
//! registers them here once, on first use, through [`register`] or
//! [`register_collector`]. The daemons serve [`encode`] on `/metrics`
//! (see `decnet_server::metrics`).

use std::sync::{Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::registry::{Metric, Registry};

pub use prometheus_client;

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

/// Register `metric` under `name` (without the `_total` suffix counters get
/// on encoding) with `help`.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .register(name, help, metric);
}

/// Register a collector, whose series are computed at each scrape.
pub fn register_collector(collector: Box<dyn Collector>) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .register_collector(collector);
}

/// Every registered series in the OpenMetrics text format (ends with `# EOF`).
pub fn encode() -> String {
    let mut out = String::new();
    let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Seconds since the epoch, as gauges of timestamps want them.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct L {
        reason: String,
    }

    #[test]
    fn registered_series_are_encoded_with_labels() {
        let f: Family<L, Counter> = Family::default();
        register("decnet_test_events", "Events of the test", f.clone());
        f.get_or_create(&L { reason: "x".into() }).inc_by(3);
        let text = encode();
        assert!(text.contains("# TYPE decnet_test_events counter"), "{text}");
        assert!(
            text.contains("decnet_test_events_total{reason=\"x\"} 3"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}

/// The `--metrics-addr` / `--metrics-mtls` flags every daemon takes
/// (flattened into its `serve` command), so they read the same everywhere;
/// `decnet_server::metrics::start_metrics` serves what they ask for. Here,
/// not beside the server, so the CLI's crate can hold every command's
/// arguments without the server runner.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (OpenMetrics text, `GET /metrics`) on this
    /// address, e.g. 127.0.0.1:9465. Off by default. Plain HTTP on a
    /// loopback address; anywhere else mTLS with this daemon's certificate,
    /// admitting only monitor certificates (`decnet ca issue-monitor`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Require mTLS (monitor certificates) even on a loopback --metrics-addr.
    #[arg(long, requires = "metrics_addr")]
    pub metrics_mtls: bool,
}
