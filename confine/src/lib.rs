//! Confinement of hostile workloads (deckies are attacked by design).
//!
//! Each decky runs under ids of its own ([`ids`]), with resource limits
//! ([`limits`], and [`cgroup`] v2 where the host delegates one), and enters
//! its program through [`exec::exec_confined`]: a single-threaded step that
//! joins the cgroup, starts a session, lowers the limits, enters a private
//! working directory, drops every group and id, sets `no_new_privs` and only
//! then executes the program with a cleared environment. Everything that can
//! be decided without the kernel (id allocation, account lookups, limit
//! values) is pure and unit-tested; the privileged steps are exercised by
//! the agent's end-to-end tests with real processes.

pub mod caps;
pub mod cgroup;
pub mod exec;
pub mod ids;
pub mod limits;

pub use exec::{ConfinedExec, ExecIdentity};
pub use ids::{AccountDb, IdRange};
pub use limits::ResourceLimits;
