//! The agent's series: deckies by state and their restarts, plus the
//! heartbeats it sends.
//!
//! | series | what |
//! |---|---|
//! | `decnet_deckies{state}` | deckies in each state (`pending`, `running`, `exited`, `failed`, `torn_down`) |
//! | `decnet_decky_restarts_total{decky}` | restarts after an exit |
//! | `decnet_heartbeats_sent_total{outcome}` | heartbeats to the master (`ok`, `failed`) |
//! | `decnet_decky_disk_budget_exceeded_total{decky}` | deckies stopped for good because their working directory passed its disk budget |
//! | `decnet_evidence_archived_total{decky}` | working directories archived as evidence at a teardown |
//! | `decnet_decky_forbidden_connections_total{decky}` | attempts of a decky to reach anything outside its egress allow-list |
//! | `decnet_decky_egress_connections_total{decky}` | connections of a decky through its egress allow-list |

use std::sync::OnceLock;

use decnet_telemetry::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::state::AgentState;

/// `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The phase, as `/status` names it.
    pub state: String,
}

/// `decky`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeckyLabel {
    /// The decky's name.
    pub decky: String,
}

/// `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// How it went.
    pub outcome: String,
}

/// The agent's series.
#[derive(Debug)]
pub struct AgentMetrics {
    /// Deckies by state.
    pub deckies: Family<StateLabel, Gauge>,
    /// Restarts by decky.
    pub restarts: Family<DeckyLabel, Counter>,
    /// Heartbeats by outcome.
    pub heartbeats: Family<OutcomeLabel, Counter>,
    /// Deckies stopped for exceeding their disk budget.
    pub disk_exceeded: Family<DeckyLabel, Counter>,
    /// Working directories archived as evidence.
    pub evidence: Family<DeckyLabel, Counter>,
    /// Forbidden connection attempts by decky.
    pub forbidden: Family<DeckyLabel, Counter>,
    /// Connections through the egress allow-list by decky.
    pub egress: Family<DeckyLabel, Counter>,
    /// The network figures last read per decky (its shepherd's counters
    /// start again with each run: a drop is a new run).
    seen: std::sync::Mutex<
        std::collections::HashMap<String, crate::driver::egress_proxy::NetworkFigures>,
    >,
}

/// The agent's series, registered on first use.
pub fn agent_metrics() -> &'static AgentMetrics {
    static M: OnceLock<AgentMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = AgentMetrics {
            deckies: Family::default(),
            restarts: Family::default(),
            heartbeats: Family::default(),
            disk_exceeded: Family::default(),
            evidence: Family::default(),
            forbidden: Family::default(),
            egress: Family::default(),
            seen: Default::default(),
        };
        register(
            "decnet_decky_forbidden_connections",
            "Attempts of a decky to reach anything outside its egress allow-list",
            m.forbidden.clone(),
        );
        register(
            "decnet_decky_egress_connections",
            "Connections of a decky through its egress allow-list",
            m.egress.clone(),
        );
        register(
            "decnet_evidence_archived",
            "Working directories of torn-down deckies archived as evidence",
            m.evidence.clone(),
        );
        register(
            "decnet_decky_disk_budget_exceeded",
            "Deckies stopped for good because their working directory passed its disk budget",
            m.disk_exceeded.clone(),
        );
        register("decnet_deckies", "Deckies in each state", m.deckies.clone());
        register(
            "decnet_decky_restarts",
            "Restarts of a decky after it exited",
            m.restarts.clone(),
        );
        register(
            "decnet_heartbeats_sent",
            "Heartbeats sent to the master, by outcome",
            m.heartbeats.clone(),
        );
        for outcome in ["ok", "failed"] {
            let _ = m.heartbeats.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        m
    })
}

impl AgentMetrics {
    /// `decky` was stopped for exceeding its disk budget.
    pub fn disk_budget_exceeded(&self, decky: &str) {
        self.disk_exceeded
            .get_or_create(&DeckyLabel {
                decky: decky.into(),
            })
            .inc();
    }

    /// Count what `decky`'s network figures say happened since they were
    /// last read (figures lower than before are a new run's: counted whole).
    pub fn network_figures(&self, decky: &str, now: crate::driver::egress_proxy::NetworkFigures) {
        let before = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(decky.to_string(), now)
            .unwrap_or_default();
        let delta = |now: u64, before: u64| if now >= before { now - before } else { now };
        let label = DeckyLabel {
            decky: decky.into(),
        };
        self.forbidden
            .get_or_create(&label)
            .inc_by(delta(now.forbidden, before.forbidden));
        self.egress
            .get_or_create(&label)
            .inc_by(delta(now.egress_allowed, before.egress_allowed));
    }

    /// `decky`'s working directory was archived at its teardown.
    pub fn evidence_archived(&self, decky: &str) {
        self.evidence
            .get_or_create(&DeckyLabel {
                decky: decky.into(),
            })
            .inc();
    }
}

/// Set `decnet_deckies` from `state` (every phase, zeros included).
pub fn observe_state(state: &AgentState) {
    let m = agent_metrics();
    for (phase, n) in crate::census::PhaseCounts::of(state).each() {
        m.deckies
            .get_or_create(&StateLabel {
                state: phase.as_str().into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
