//! Refusals of one identity or source, aggregated into one counted audit
//! entry per window.
//!
//! Every refused renewal or join deserves an audit entry, but a hostile
//! worker can ask to be refused thousands of times a second: one row (and
//! one database write) each would let it grow the audit log without bound
//! and take the database's write lock from everyone. The first refusal of a
//! (who, what, why) is written at once; the repeats within the window are
//! counted and written as one entry when the window ends. Pure bookkeeping
//! with the clock passed in: the control API writes what it returns.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use decnet_fleet::{AuditEntry, AuditOutcome};

/// Who was refused what, and why: what a window counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    actor: String,
    action: &'static str,
    reason: String,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    target: String,
    repeats: u64,
}

/// The aggregator (one per control API).
#[derive(Debug)]
pub struct RefusalAudit {
    window: Duration,
    max_keys: usize,
    open: Mutex<HashMap<Key, Window>>,
}

/// The actor every refusal is counted under once `max_keys` (who, what,
/// why) are open at once: memory stays bounded, nothing goes uncounted.
pub const OVERFLOW_ACTOR: &str = "many";

impl RefusalAudit {
    /// Windows of `window`; at most `max_keys` open at once.
    pub fn new(window: Duration, max_keys: usize) -> Self {
        RefusalAudit {
            window,
            max_keys: max_keys.max(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn summary(&self, key: &Key, w: &Window) -> AuditEntry {
        AuditEntry::now(
            key.actor.clone(),
            key.action,
            &w.target,
            AuditOutcome::Refused,
            format!(
                "{}: refused {} more time(s) within {}s (aggregated)",
                key.reason,
                w.repeats,
                self.window.as_secs()
            ),
        )
    }

    /// `actor` was refused `action` on `target` for `reason` (a short,
    /// bounded text; `detail` may say more). Returns what to write now: the
    /// entry itself when it opens a window (and the summary of the window
    /// it closes), nothing when it is a repeat.
    pub fn refused(
        &self,
        actor: &str,
        action: &'static str,
        target: &str,
        reason: &str,
        detail: String,
        now: Instant,
    ) -> Vec<AuditEntry> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = Key {
            actor: actor.to_string(),
            action,
            reason: reason.to_string(),
        };
        if !open.contains_key(&key) && open.len() >= self.max_keys {
            key.actor = OVERFLOW_ACTOR.to_string();
        }
        let mut out = Vec::new();
        if let Some(w) = open.get_mut(&key) {
            if now.saturating_duration_since(w.started) < self.window {
                w.repeats += 1;
                return out;
            }
            if w.repeats > 0 {
                out.push(self.summary(&key, w));
            }
            open.remove(&key);
        }
        open.insert(
            key,
            Window {
                started: now,
                target: target.to_string(),
                repeats: 0,
            },
        );
        out.push(AuditEntry::now(
            actor,
            action,
            target,
            AuditOutcome::Refused,
            detail,
        ));
        out
    }

    /// The summaries of every window that has ended (and forget them).
    pub fn due(&self, now: Instant) -> Vec<AuditEntry> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        open.retain(|k, w| {
            if now.saturating_duration_since(w.started) < self.window {
                return true;
            }
            if w.repeats > 0 {
                out.push(self.summary(k, w));
            }
            false
        });
        out
    }

    /// Windows open now.
    pub fn open_windows(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_a_window_become_one_counted_entry() {
        let a = RefusalAudit::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let first = a.refused("api:w1", "swarm.renew", "w1", "too soon", "x".into(), t0);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].detail, "x");
        let mut written = first.len();
        for i in 1..2000 {
            let t = t0 + Duration::from_millis(i);
            written += a
                .refused("api:w1", "swarm.renew", "w1", "too soon", "x".into(), t)
                .len();
        }
        assert_eq!(written, 1, "repeats are only counted");
        // Another reason, or another identity, is its own window.
        assert_eq!(
            a.refused("api:w1", "swarm.renew", "w1", "bad csr", "y".into(), t0)
                .len(),
            1
        );
        assert_eq!(
            a.refused("api:w2", "swarm.renew", "w2", "too soon", "z".into(), t0)
                .len(),
            1
        );
        assert!(a.due(t0 + Duration::from_secs(30)).is_empty());
        let due = a.due(t0 + Duration::from_secs(61));
        assert_eq!(due.len(), 1, "windows without repeats need no summary");
        assert!(
            due[0]
                .detail
                .contains("refused 1999 more time(s) within 60s")
        );
        assert_eq!(due[0].actor, "api:w1");
        assert_eq!(a.open_windows(), 0);
    }

    #[test]
    fn a_refusal_after_the_window_closes_it_and_opens_the_next() {
        let a = RefusalAudit::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        a.refused("join:10.0.0.9", "swarm.join", "t1", "bad", "d".into(), t0);
        a.refused("join:10.0.0.9", "swarm.join", "t2", "bad", "d".into(), t0);
        let next = a.refused(
            "join:10.0.0.9",
            "swarm.join",
            "t3",
            "bad",
            "d".into(),
            t0 + Duration::from_secs(11),
        );
        assert_eq!(next.len(), 2, "the summary, then the new window's first");
        assert!(next[0].detail.contains("1 more time"));
        assert_eq!(next[1].target, "t3");
    }

    #[test]
    fn memory_is_bounded_and_nothing_goes_uncounted() {
        let a = RefusalAudit::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..1000 {
            written += a
                .refused(
                    &format!("join:10.0.{i}.1"),
                    "swarm.join",
                    "t",
                    "bad",
                    "d".into(),
                    t0,
                )
                .len();
        }
        assert_eq!(a.open_windows(), 4, "3 identities and the overflow");
        assert_eq!(written, 4);
        let due = a.due(t0 + Duration::from_secs(61));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].actor, OVERFLOW_ACTOR);
        assert!(due[0].detail.contains("996 more"));
    }
}
