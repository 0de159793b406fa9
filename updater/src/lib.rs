//! decnet updater: installs agent releases into slots on a worker, restarts
//! and probes the agent, reverts automatically when the new release is
//! unhealthy, rolls back on request, recovers interrupted updates from a
//! journal, and replaces itself.
//!
//! * [`extract`] — safe tarball extraction;
//! * [`slots`] — `ReleaseSlots`: the release tree, atomic promotion, journal;
//! * [`agent_control`] — start/stop the agent (spawn or systemd);
//! * [`probe`] — the mTLS health probe;
//! * [`pipeline`] — update, rollback, recovery, self-update;
//! * [`launch`] — the packaged launcher's choice of updater binary (falls
//!   back to the previous updater after failed starts of a new one);
//! * [`api`] — the HTTP routes.

pub mod agent_control;
pub mod api;
pub mod extract;
pub mod floor;
pub mod launch;
pub mod metrics;
pub mod pipeline;
pub mod probe;
pub mod slots;
