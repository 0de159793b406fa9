//! decnet agent: the worker daemon that deploys, tears down and reports
//! workloads ("deckies") on command of the master.
//!
//! * [`config`] — the versioned deployment config (pure);
//! * [`lan`] — deckies on the LAN: network section, validation, placement
//!   and relocalisation onto this worker (pure but for reading `ip -j`);
//! * [`state`] — the persisted state file;
//! * [`driver`] — the `process` and `compose` drivers behind one trait;
//! * [`executor`] — requests → driver calls, state, recovery;
//! * [`evidence`] — what torn-down deckies left, archived for the operator;
//! * [`heartbeat`] — periodic reports to the master's control API;
//! * [`api`] — the HTTP routes and the role policy;
//! * [`metrics`] — deckies by state, restarts, heartbeats;
//! * [`daemon`] — wiring it all together for `decnet-agent serve`.

pub mod api;
pub mod census;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod evidence;
pub mod executor;
pub mod heartbeat;
pub mod lan;
pub mod metrics;
pub mod state;
