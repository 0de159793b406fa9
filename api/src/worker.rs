//! What the worker daemons answer the master (the agent's `/status`, its
//! deckies, its evidence list), defined once: the master's client of the
//! agent parses them and the fleet API passes them on to operators as
//! they are, so the three cannot drift.

use serde::{Deserialize, Serialize};

/// Free-form JSON a worker reports (how its deckies are contained, its
/// LAN, what its driver observes of a decky), held as the text it sent and
/// never decoded into a tree on the master. A tree of small values takes up
/// to about 95 times the memory of its text (4 MiB of `{"":0},` decodes
/// into 384 MiB), and the master asks every worker at once and holds every
/// answer until the last: a hostile worker's status would have cost the
/// master hundreds of MiB per command. Kept as text, an answer costs what
/// it weighs; it is checked to be JSON on the way in, passed on to
/// operators as it came, and decoded by the operator's tools to show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// The JSON text, as the worker sent it.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Decoded (`Null` if it nests deeper than the decoder allows), for
    /// an operator's tool to show.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }

    /// The text of `value` (for what builds an answer, and tests).
    pub fn from_value(value: &serde_json::Value) -> RawJson {
        // A value's own text is always valid JSON.
        RawJson(
            serde_json::value::RawValue::from_string(value.to_string())
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
        )
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for RawJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <serde_json::Value as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for RawJson {}

/// What the master shows of how an agent mapped a LAN config onto its
/// host: these fields read out of the [`RawJson`] the agent sent (others
/// are skipped without being decoded). Each is `None` when absent or not a
/// string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RelocationSummary {
    /// The interface the config was written for.
    #[serde(default, deserialize_with = "string_or_none")]
    pub from_parent: Option<String>,
    /// The subnet the config was written for.
    #[serde(default, deserialize_with = "string_or_none")]
    pub from_subnet: Option<String>,
    /// The interface the deckies sit on here.
    #[serde(default, deserialize_with = "string_or_none")]
    pub to_parent: Option<String>,
    /// The subnet they sit on here.
    #[serde(default, deserialize_with = "string_or_none")]
    pub to_subnet: Option<String>,
    /// Its gateway.
    #[serde(default, deserialize_with = "string_or_none")]
    pub to_gateway: Option<String>,
    /// Why the mapping was needed.
    #[serde(default, deserialize_with = "string_or_none")]
    pub reason: Option<String>,
}

impl RelocationSummary {
    /// The summary in `raw` (empty when it is not an object).
    pub fn of(raw: &RawJson) -> RelocationSummary {
        serde_json::from_str(raw.get()).unwrap_or_default()
    }
}

/// A string, or `None` for any other value (skipped, not decoded).
fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    /// A string kept, anything else skipped.
    struct StringOrSkip;
    impl<'de> serde::de::Visitor<'de> for StringOrSkip {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E>(self, v: &str) -> Result<Option<String>, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Option<String>, E> {
            Ok(Some(v))
        }
        fn visit_unit<E>(self) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Option<String>, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Option<String>, A::Error> {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(None)
        }
    }
    d.deserialize_any(StringOrSkip)
}

/// One decky as the agent reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeckyState {
    /// Name.
    pub name: String,
    /// `pending`, `running`, `exited`, `failed` or `torn_down`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Services.
    #[serde(default)]
    pub services: Vec<String>,
    /// Process id.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The uid it runs under (process driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Its own address on the LAN (config version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The worker interface it sits on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Restarts.
    #[serde(default)]
    pub restarts: u32,
    /// What the driver observes.
    #[serde(default)]
    pub observed: Option<RawJson>,
}

/// `/status` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentStatus {
    /// Host.
    pub host: String,
    /// Agent version.
    pub version: String,
    /// Driver.
    pub driver: String,
    /// How deckies are contained on that host (ids, limits, what enforces
    /// them); absent from agents that predate containment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment: Option<RawJson>,
    /// Deckies.
    pub deckies: Vec<DeckyState>,
    /// The LAN the deckies are on and how the config was mapped onto the
    /// host (`network`, `relocation`); absent when no decky is on a LAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<RawJson>,
}

/// One evidence archive as the agent lists it (`GET /evidence`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvidenceArchive {
    /// The decky it came from.
    pub decky: String,
    /// Its id (the UTC time of the teardown, `20261205T141530Z`).
    pub id: String,
    /// Its size, compressed.
    pub bytes: u64,
}

/// `GET /evidence` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvidenceList {
    /// The archives, oldest first.
    pub archives: Vec<EvidenceArchive>,
    /// Whether the agent keeps evidence (the process driver, with
    /// `--evidence-keep` above 0).
    #[serde(default)]
    pub kept: bool,
}

/// What an agent tells the master every beat (`POST /heartbeat` on the
/// control API): built by the agent, parsed by the master, one type so the
/// two cannot drift. Parsing keeps what a hostile worker can make the
/// master hold small: at most [`MAX_REPORTED_DECKIES`] deckies, each
/// field cut to its cap, anything else dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Agent version.
    pub version: String,
    /// Driver in use.
    #[serde(default)]
    pub driver: Option<String>,
    /// Per-decky states as the agent reports them (what a worker sends is
    /// stored and shown to every operator, so it is capped on the way in).
    #[serde(default, deserialize_with = "reported_deckies")]
    pub deckies: Vec<ReportedDecky>,
    /// The agent's clock when it sent this (unix milliseconds), for the
    /// clock-skew check; older agents do not send it.
    #[serde(default)]
    pub sent_at_ms: Option<i64>,
    /// The digest of the trust set the agent holds (CA rotation status).
    #[serde(default)]
    pub trust: Option<String>,
}

/// One decky as a heartbeat reports it (these fields; others are dropped).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ReportedDecky {
    /// Its name (cut to 64 bytes).
    pub name: String,
    /// Its state (cut to 32 bytes).
    #[serde(default)]
    pub state: Option<String>,
    /// Its last error (cut to 512 bytes).
    #[serde(default)]
    pub error: Option<String>,
    /// How often it was restarted.
    #[serde(default)]
    pub restarts: Option<u64>,
    /// Its connection attempts outside its egress allow-list.
    #[serde(default)]
    pub forbidden: Option<u64>,
}

impl ReportedDecky {
    /// Each text cut to its cap (as the master stores it).
    pub fn capped(self) -> Self {
        ReportedDecky {
            name: capped(&self.name, 64),
            state: self.state.map(|s| capped(&s, 32)),
            error: self.error.map(|e| capped(&e, 512)),
            ..self
        }
    }
}

/// The most deckies one heartbeat may report.
pub const MAX_REPORTED_DECKIES: usize = 1024;

/// The master's answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// The beat was recorded.
    #[serde(default)]
    pub ok: bool,
    /// The master asks for a certificate renewal now.
    #[serde(default)]
    pub renew: bool,
    /// The number of the master's current CRL.
    #[serde(default)]
    pub crl_number: Option<u64>,
    /// The digest of the master's trust set (`decnet_pki::trust::digest`):
    /// another one than the agent's means a CA rotation moved.
    #[serde(default)]
    pub trust: Option<String>,
}

/// A short text of a worker's, cut at `max` bytes on a char boundary:
/// what a worker sends is shown to operators, so it is bounded.
pub fn capped(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A heartbeat's deckies, parsed one by one into [`ReportedDecky`] (never
/// a generic JSON tree, which a list of `0`s makes 16 times larger than
/// its text) and refused past [`MAX_REPORTED_DECKIES`]. `null` or an
/// object (older senders) is no deckies.
fn reported_deckies<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<ReportedDecky>, D::Error> {
    struct Deckies;
    impl<'de> serde::de::Visitor<'de> for Deckies {
        type Value = Vec<ReportedDecky>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_REPORTED_DECKIES} deckies")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(d) = seq.next_element::<ReportedDecky>()? {
                if out.len() == MAX_REPORTED_DECKIES {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_REPORTED_DECKIES} deckies"
                    )));
                }
                out.push(d.capped());
            }
            Ok(out)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(Vec::new())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(Deckies)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attacker owns a worker and sends heartbeats meant to make the
    /// master hold far more than their size, or store text without end.
    #[test]
    fn hostile_heartbeats_are_refused_or_cut() {
        let parse = |body: String| serde_json::from_str::<Heartbeat>(&body);
        // A list of zeros (16 times its size as a JSON tree): not deckies.
        let zeros = format!(r#"{{"version":"1","deckies":[{}0]}}"#, "0,".repeat(100_000));
        assert!(parse(zeros).is_err());
        // More deckies than any host runs.
        let many = format!(
            r#"{{"version":"1","deckies":[{}{{"name":"x"}}]}}"#,
            r#"{"name":"d"},"#.repeat(MAX_REPORTED_DECKIES)
        );
        let e = parse(many).unwrap_err().to_string();
        assert!(e.contains("more than 1024 deckies"), "{e}");
        // Long fields are cut, unknown ones dropped.
        let long = format!(
            r#"{{"version":"1","deckies":[{{"name":"{}","state":"{}","error":"{}","restarts":2,"junk":[1,2,3]}}]}}"#,
            "n".repeat(1000),
            "s".repeat(1000),
            "é".repeat(1000)
        );
        let hb = parse(long).unwrap();
        let d = &hb.deckies[0];
        assert_eq!(d.name.len(), 64);
        assert_eq!(d.state.as_deref().map(str::len), Some(32));
        assert!(d.error.as_deref().unwrap().len() <= 512);
        assert_eq!(d.restarts, Some(2));
        let stored = serde_json::to_string(&hb.deckies).unwrap();
        assert!(!stored.contains("junk"), "{stored}");
        // What agents send parses as before; older shapes are no deckies.
        let agent = r#"{"version":"1","deckies":[{"name":"web","state":"running","error":null,"restarts":0,"forbidden":null}]}"#;
        assert_eq!(parse(agent.into()).unwrap().deckies.len(), 1);
        assert!(
            parse(r#"{"version":"1","deckies":{}}"#.into())
                .unwrap()
                .deckies
                .is_empty()
        );
        assert!(
            parse(r#"{"version":"1","deckies":null}"#.into())
                .unwrap()
                .deckies
                .is_empty()
        );
        assert!(
            parse(r#"{"version":"1"}"#.into())
                .unwrap()
                .deckies
                .is_empty()
        );
    }

    /// What an agent builds is what the master parses back.
    #[test]
    fn an_agents_heartbeat_round_trips() {
        let hb = Heartbeat {
            version: "1.2.3".into(),
            driver: Some("process".into()),
            deckies: vec![ReportedDecky {
                name: "web".into(),
                state: Some("running".into()),
                error: None,
                restarts: Some(1),
                forbidden: Some(3),
            }],
            sent_at_ms: Some(1_700_000_000_000),
            trust: Some("ab".repeat(32)),
        };
        let text = serde_json::to_string(&hb).unwrap();
        assert_eq!(serde_json::from_str::<Heartbeat>(&text).unwrap(), hb);
    }
}
