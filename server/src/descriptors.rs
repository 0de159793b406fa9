//! File descriptors: every daemon raises its soft `RLIMIT_NOFILE` to the
//! hard limit at start, and every server's connection caps are fitted below
//! what that leaves, so the descriptors never run out before the caps do
//! (under systemd's default soft limit of 1,024 a flood of connections
//! would otherwise make `accept` fail for everyone, certified peers included).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors kept back from connections: log and database files, the
/// listening sockets, child pipes, the metrics endpoint, DNS.
pub const RESERVED: usize = 128;

/// The process's connection budget: soft limit minus [`RESERVED`]; read
/// from the limit in force the first time it is asked for.
static BUDGET: AtomicUsize = AtomicUsize::new(0);

fn soft_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

fn budget_of(soft: u64) -> usize {
    usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(RESERVED)
        .max(16)
}

/// What [`raise_nofile_limit`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (once per process is
/// enough; calling again is harmless) and size the connection budget to it.
pub fn raise_nofile_limit() -> NofileLimit {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    let before = l.current.unwrap_or(u64::MAX);
    if l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    let now = soft_limit();
    BUDGET.store(budget_of(now), Ordering::Release);
    if now < 4096 {
        tracing::warn!(
            limit = now,
            "the open-file limit is low: connection caps are lowered to fit it (set LimitNOFILE= in the unit)"
        );
    }
    NofileLimit { before, now }
}

/// How many connections every server of this process may hold together.
pub fn connection_budget() -> usize {
    match BUDGET.load(Ordering::Acquire) {
        0 => {
            let b = budget_of(soft_limit());
            BUDGET.store(b, Ordering::Release);
            b
        }
        b => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_descriptors_back() {
        assert_eq!(budget_of(1024), 896);
        assert_eq!(budget_of(20), 16);
        assert!(budget_of(u64::MAX) > 1_000_000);
    }
}
