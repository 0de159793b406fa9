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
//! the agent's end-to-end tests with real processes. A decky may also get a
//! network of its own ([`netns`]: its own user and network namespace,
//! loopback only) and its listening sockets handed in ([`handoff`]: at 3,
//! 4, …, everything else closed). [`raw`] holds the workspace's only
//! `unsafe` code: two system calls without a safe wrapper.

pub mod caps;
pub mod cgroup;
pub mod egress;
pub mod exec;
pub mod handoff;
pub mod ids;
pub mod limits;
pub mod netns;
pub mod pidns;
pub mod raw;
pub mod scratch;
pub mod seccomp;
pub mod tree;

pub use exec::{ConfinedExec, ExecIdentity};
pub use ids::{AccountDb, IdRange};
pub use limits::ResourceLimits;
pub use netns::DeckyNetwork;
