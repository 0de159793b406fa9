//! decnet-telemetry: how every decnet binary reports what it does.
//!
//! [`init_logging`] sets up `tracing` output on stderr once per process:
//! plain text (colour only when stderr is a terminal and `NO_COLOR` is
//! unset: journald and files get no escape codes) or one JSON object per
//! line (`--log-format json`, for log shippers). The level filter comes
//! from `DECNET_LOG` (e.g. `info`, `decnet_server=debug`).
//!
//! [`metrics`] holds the process's one metrics registry (Prometheus /
//! OpenMetrics), which every crate registers its series into.
//!
//! [`neutralize`] makes text a worker sent safe to show an operator (a log
//! line, a decky's name, an error in a table): the log listener and the
//! CLI use the one implementation.

pub mod metrics;
pub mod neutralize;

use std::io::IsTerminal;
use std::str::FromStr;

/// The shape of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Whether text logs may carry colour codes.
pub fn colour_allowed() -> bool {
    colour_allowed_on(&std::io::stderr())
}

/// Whether what is written to `stream` may carry colour codes: only to a
/// terminal, and never with `NO_COLOR` set (a file or a pipe gets plain
/// text).
pub fn colour_allowed_on(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Install the process's log output: `format`, filtered by `DECNET_LOG`
/// (else `default_filter`).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DECNET_LOG")
        .unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // An Err only means a subscriber is already installed (tests).
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour_allowed()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
