//! The event stream (`GET /v1/events`, server-sent events) and the alerts
//! built on it: what the CLI's `decnet events`, the console and webhook
//! receivers all read, defined once.

use serde::{Deserialize, Serialize};

/// What an event is about; a follower filters by it (`?topic=host,job`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EventTopic {
    /// A host's state: enrolled, gone silent, back, suspect, burned,
    /// decommissioned, its deckies changed, a decky tried a forbidden
    /// connection.
    Host,
    /// Certificates: renewed, revoked, about to expire.
    Cert,
    /// Jobs and rollouts: started, a progress line, ended.
    Job,
    /// Every audit entry as it is written.
    Audit,
    /// Log lines as the listener credits them (peer CN, the decky's line).
    Log,
    /// Alert deliveries (a webhook answered or gave up).
    Alert,
}

impl EventTopic {
    /// Every topic, in a stable order.
    pub const ALL: [EventTopic; 6] = [
        EventTopic::Host,
        EventTopic::Cert,
        EventTopic::Job,
        EventTopic::Audit,
        EventTopic::Log,
        EventTopic::Alert,
    ];

    /// Its name on the wire (`host`, `cert`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventTopic::Host => "host",
            EventTopic::Cert => "cert",
            EventTopic::Job => "job",
            EventTopic::Audit => "audit",
            EventTopic::Log => "log",
            EventTopic::Alert => "alert",
        }
    }

    /// The topic named `s`.
    pub fn parse(s: &str) -> Option<EventTopic> {
        EventTopic::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of the stream. `kind` says what happened within its topic
/// (`host.silent`, `job.ended`, `log.line`, …); `data` carries the
/// details of that kind (documented in the wiki's Events page).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Its number: increasing, the SSE `id` a follower resumes from with
    /// `Last-Event-ID`.
    pub id: u64,
    /// When (unix milliseconds).
    pub at_ms: i64,
    /// Its topic.
    pub topic: EventTopic,
    /// What happened (`host.silent`, `job.line`, …).
    pub kind: String,
    /// The host it is about, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The details.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// An alert: events matching its topics (and kinds, when given) are
/// POSTed as JSON to its webhook, signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertRule {
    /// Its name.
    pub name: String,
    /// Where matching events are POSTed (`http://` or `https://`).
    pub webhook: String,
    /// The topics it matches.
    pub topics: Vec<EventTopic>,
    /// The event kinds it matches (empty: every kind of its topics).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Who made it (an audit actor).
    pub created_by: String,
    /// When (unix seconds).
    pub created_at: i64,
    /// Deliveries that reached the receiver.
    #[serde(default)]
    pub delivered: u64,
    /// Deliveries that gave up.
    #[serde(default)]
    pub failed: u64,
}

/// `POST /v1/alerts`: a new alert. The answer carries the signing secret,
/// shown once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewAlertRule {
    /// Its name (letters, digits, `-`, `_`, `.`; at most 64).
    pub name: String,
    /// The webhook URL.
    pub webhook: String,
    /// The topics it matches (at least one).
    pub topics: Vec<EventTopic>,
    /// The kinds it matches (empty: all of its topics').
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// The answer to a new alert: the rule and the secret its deliveries are
/// signed with (`X-Decnet-Signature: sha256=<hex HMAC of the body>`),
/// shown this once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertCreated {
    /// The rule.
    pub rule: AlertRule,
    /// The signing secret (hex).
    pub secret: String,
}

/// One delivery attempt's outcome, the alert history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertDelivery {
    /// The alert.
    pub alert: String,
    /// The event delivered (its id).
    pub event_id: u64,
    /// The event's kind.
    pub kind: String,
    /// The host it was about.
    #[serde(default)]
    pub host: Option<String>,
    /// When it ended (unix seconds).
    pub at: i64,
    /// `delivered` or `failed`.
    pub outcome: String,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's last answer, or why it could not be reached.
    #[serde(default)]
    pub detail: Option<String>,
}

/// `POST /v1/alerts/{name}/test`: a test event sent now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertTestResult {
    /// Whether the receiver answered 2xx.
    pub delivered: bool,
    /// Its HTTP status, when it answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// What went wrong otherwise.
    #[serde(default)]
    pub detail: Option<String>,
}

/// `POST /v1/console/login`: a one-time URL that opens a console session as
/// the calling operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsoleLogin {
    /// The URL (single use).
    pub url: String,
    /// Until when it may be used (unix seconds).
    pub expires_at: i64,
}
