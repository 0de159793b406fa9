//! `decnet events`, `decnet alert …` and `decnet console`: the CLI's side of
//! the event stream, the alerts and the console's one-time URLs.

use std::time::Duration;

use decnet_api::{AlertRule, Event};

use crate::exit::UsageError;
use decnet_api_client::{FleetClient, SseParser, segment};

/// `decnet events` arguments.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen (reconnecting and resuming
    /// after the last one seen when the connection drops).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only these topics (host, cert, job, audit, log, alert; repeat or
    /// comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub topic: Vec<String>,
    /// Only events about this host (a glob: `web*`).
    #[arg(long)]
    pub host: Option<String>,
    /// Without --follow: at most this many of the newest.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// One JSON object per line (the event as the API sends it).
    #[arg(long)]
    pub json: bool,
}

/// `decnet alert …`.
#[derive(Debug, clap::Subcommand)]
pub enum AlertCommand {
    /// Add an alert: matching events are POSTed to the webhook, signed
    /// with a secret shown once (`X-Decnet-Signature: sha256=<HMAC>`).
    Add {
        /// Its name.
        name: String,
        /// Where to POST (http:// or https://).
        #[arg(long)]
        webhook: String,
        /// Topics it matches (host, cert, job, audit, log).
        #[arg(long, value_delimiter = ',', required = true)]
        topic: Vec<String>,
        /// Only these kinds (host.silent, host.suspect, job.failed,
        /// cert.expiring, decky.forbidden, …); default: every kind.
        #[arg(long, value_delimiter = ',')]
        kind: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The alerts, with their delivery counts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an alert (its history stays).
    Remove {
        /// Its name.
        name: String,
    },
    /// Send a test event to an alert's webhook now.
    Test {
        /// Its name.
        name: String,
    },
    /// What became of the newest deliveries.
    History {
        /// Only this alert's.
        #[arg(long)]
        alert: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `decnet console` arguments.
#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// Print the URL alone on stdout (for scripts and browsers' command lines).
    #[arg(long)]
    pub print_url: bool,
    /// On the master host without a context: the operator the session
    /// acts as.
    #[arg(long)]
    pub operator: Option<String>,
    /// On the master host: the host name the URL names (one of the
    /// master certificate's names).
    #[arg(long, default_value = "localhost")]
    pub url_host: String,
    /// On the master host: the console's port.
    #[arg(long, default_value_t = 8772)]
    pub console_port: u16,
}

/// A human line for an event: when, kind, host, the details. Pure.
pub fn render_event(e: &Event) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(e.at_ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_default();
    let detail = match (e.kind.as_str(), &e.data) {
        ("log.line", d) => format!(
            "{} {}: {}",
            d.get("claimed_hostname")
                .and_then(|v| v.as_str())
                .unwrap_or("-"),
            d.get("app_name").and_then(|v| v.as_str()).unwrap_or("-"),
            d.get("msg").and_then(|v| v.as_str()).unwrap_or("")
        ),
        ("job.line", d) => format!(
            "{} {}",
            d.get("job").and_then(|v| v.as_str()).unwrap_or(""),
            d.get("line").and_then(|v| v.as_str()).unwrap_or("")
        ),
        ("audit.entry", d) => format!(
            "{} {} {} {}",
            d.get("actor").and_then(|v| v.as_str()).unwrap_or(""),
            d.get("action").and_then(|v| v.as_str()).unwrap_or(""),
            d.get("target").and_then(|v| v.as_str()).unwrap_or(""),
            d.get("outcome").and_then(|v| v.as_str()).unwrap_or("")
        ),
        (_, serde_json::Value::Null) => String::new(),
        (_, d) => d.to_string(),
    };
    format!(
        "{at} {:<18} {:<12} {detail}",
        e.kind,
        e.host.as_deref().unwrap_or("-")
    )
}

/// How long a followed stream may stay silent (the master sends a
/// keep-alive every 15 s) before it is taken for dead and resumed.
const STALL: Duration = Duration::from_secs(45);

/// `decnet events`.
pub async fn events(client: &FleetClient, a: EventsArgs) -> anyhow::Result<()> {
    let mut query = vec![format!("follow={}", a.follow)];
    if !a.topic.is_empty() {
        query.push(format!("topic={}", segment(&a.topic.join(","))));
    }
    if let Some(h) = &a.host {
        query.push(format!("host={}", segment(h)));
    }
    if !a.follow {
        query.push(format!("limit={}", a.limit.max(1)));
    }
    let base = format!("/v1/events?{}", query.join("&"));
    let mut last: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let mut req = client
            .request(reqwest::Method::GET, &base)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .timeout(Duration::from_secs(365 * 86_400));
        if let Some(id) = &last {
            req = req.header("Last-Event-ID", id);
        }
        let mut resp = match client.open_stream(req).await {
            Ok(r) => {
                failures = 0;
                r
            }
            Err(e) if a.follow && e.is_unanswered() => {
                failures += 1;
                eprintln!("warning: {e:#}; retrying");
                tokio::time::sleep(Duration::from_secs(u64::from(failures.min(5)))).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut parser = SseParser::default();
        loop {
            let chunk = match tokio::time::timeout(STALL, resp.chunk()).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    if !a.follow {
                        return Err(anyhow::anyhow!("the event stream broke off: {e}"));
                    }
                    break;
                }
                Err(_) => break,
            };
            for frame in parser.feed(&chunk).map_err(|e| anyhow::anyhow!(e))? {
                if frame.event == "gap" {
                    eprintln!(
                        "warning: events were missed (the master's backlog no longer holds them)"
                    );
                    continue;
                }
                let Ok(event) = serde_json::from_str::<Event>(&frame.data) else {
                    continue;
                };
                if a.json {
                    println!("{}", frame.data);
                } else {
                    // What workers and deckies wrote, made inert for a terminal.
                    println!(
                        "{}",
                        decnet_telemetry::neutralize::neutralize(&render_event(&event))
                    );
                }
                last = frame.id.or(last);
            }
        }
        if !a.follow {
            return Ok(());
        }
        eprintln!("warning: the event stream was cut; resuming");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_alerts(rules: &[AlertRule], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rules)?);
        return Ok(());
    }
    if rules.is_empty() {
        println!("no alerts (decnet alert add NAME --webhook URL --topic host)");
        return Ok(());
    }
    let rows = rules.iter().map(|r| {
        vec![
            r.name.clone(),
            crate::table::redact_url(&r.webhook),
            r.topics
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
            if r.kinds.is_empty() {
                "*".into()
            } else {
                r.kinds.join(",")
            },
            r.delivered.to_string(),
            r.failed.to_string(),
        ]
    });
    print!(
        "{}",
        crate::table::render(
            &["NAME", "WEBHOOK", "TOPICS", "KINDS", "DELIVERED", "FAILED"],
            rows
        )
    );
    Ok(())
}

/// `decnet alert …`.
pub async fn alert(client: &FleetClient, c: AlertCommand) -> anyhow::Result<()> {
    match c {
        AlertCommand::Add {
            name,
            webhook,
            topic,
            kind,
            json,
        } => {
            let topics = topic
                .iter()
                .map(|t| {
                    decnet_api::EventTopic::parse(t.trim()).ok_or_else(|| {
                        UsageError(format!(
                            "unknown topic {t:?} (topics: host, cert, job, audit, log)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let created: decnet_api::AlertCreated = client
                .send(
                    reqwest::Method::POST,
                    "/v1/alerts",
                    Some(&decnet_api::NewAlertRule {
                        name,
                        webhook,
                        topics,
                        kinds: kind,
                    }),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("alert {} added", created.rule.name);
                println!(
                    "signing secret (shown once; receivers check X-Decnet-Signature: sha256=<HMAC-SHA256 of the body>):"
                );
                println!("{}", created.secret);
            }
            Ok(())
        }
        AlertCommand::List { json } => {
            let rules: Vec<AlertRule> = client.get("/v1/alerts").await?;
            print_alerts(&rules, json)
        }
        AlertCommand::Remove { name } => {
            let _: serde_json::Value = client
                .send::<(), _>(
                    reqwest::Method::DELETE,
                    &format!("/v1/alerts/{}", segment(&name)),
                    None,
                )
                .await?;
            println!("alert {name} removed");
            Ok(())
        }
        AlertCommand::Test { name } => {
            let r: decnet_api::AlertTestResult = client
                .send::<(), _>(
                    reqwest::Method::POST,
                    &format!("/v1/alerts/{}/test", segment(&name)),
                    None,
                )
                .await?;
            if r.delivered {
                println!(
                    "test event delivered to {name} (the receiver answered {})",
                    r.status.unwrap_or(200)
                );
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "test event not delivered to {name}: {}",
                    r.detail.unwrap_or_default()
                ))
            }
        }
        AlertCommand::History { alert, limit, json } => {
            let mut path = format!("/v1/alerts/deliveries?limit={}", limit.max(1));
            if let Some(a) = alert {
                path.push_str(&format!("&alert={}", segment(&a)));
            }
            let rows: Vec<decnet_api::AlertDelivery> = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let table = rows.iter().map(|d| {
                vec![
                    crate::table::when(d.at),
                    d.alert.clone(),
                    d.kind.clone(),
                    d.host.clone().unwrap_or_else(|| "-".into()),
                    d.outcome.clone(),
                    d.attempts.to_string(),
                    d.detail.clone().unwrap_or_default(),
                ]
            });
            print!(
                "{}",
                crate::table::render(
                    &[
                        "WHEN", "ALERT", "EVENT", "HOST", "OUTCOME", "ATTEMPTS", "DETAIL"
                    ],
                    table
                )
            );
            Ok(())
        }
    }
}

/// Print the URL, and unless `--print-url`, open it in a browser: the one
/// `$BROWSER` names, or the desktop's (`xdg-open`, when there is a
/// display). Over SSH, with neither, the URL printed is the way.
pub fn print_console_url(url: &str, expires_at: i64, print_url: bool) {
    if print_url {
        println!("{url}");
        return;
    }
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .or_else(|| {
            let display = std::env::var_os("DISPLAY").is_some()
                || std::env::var_os("WAYLAND_DISPLAY").is_some();
            display.then(|| "xdg-open".to_string())
        });
    let opened = opener.is_some_and(|b| {
        std::process::Command::new(b.trim())
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_ok()
    });
    if opened {
        println!(
            "Opening the console in your browser (the URL is single use, until {}):",
            crate::table::when(expires_at)
        );
    } else {
        println!(
            "Open this URL in a browser (single use, until {}):",
            crate::table::when(expires_at)
        );
    }
    println!("{url}");
}

/// `decnet console` through a context: a URL for this operator.
pub async fn console(client: &FleetClient, a: ConsoleArgs) -> anyhow::Result<()> {
    if a.operator.is_some() {
        return Err(UsageError(
            "--operator is for the master host without a context: through a context the console signs you in as yourself".into(),
        )
        .into());
    }
    let login: decnet_api::ConsoleLogin = client
        .send::<(), _>(reqwest::Method::POST, "/v1/console/login", None)
        .await?;
    print_console_url(&login.url, login.expires_at, a.print_url);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render_on_one_line() {
        let e = Event {
            id: 1,
            at_ms: 1_796_428_800_000,
            topic: decnet_api::EventTopic::Host,
            kind: "host.silent".into(),
            host: Some("w1".into()),
            data: serde_json::json!({"status": "unreachable"}),
        };
        let line = render_event(&e);
        assert!(
            line.starts_with("2026-12-05 00:00:00Z host.silent"),
            "{line}"
        );
        assert!(line.contains("w1") && line.contains("unreachable"));
    }
}
