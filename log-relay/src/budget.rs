//! What one log peer may make the listener write: a byte and a line budget
//! per peer (its certificate's CN: the host), each a token bucket (a
//! sustained rate and a burst).
//!
//! A decky's own output is forwarded by design, so a decky can make its
//! worker send as much as it likes; escaping can multiply control bytes
//! several times on the way to disk. Every line is charged the bytes it
//! would write (raw and JSON together) before it is written; what does not
//! fit is dropped and counted, never buffered. Buckets are kept per peer
//! across reconnects (a full bucket is forgotten, as it is the same as a
//! new one), so reconnecting buys nothing; they are keyed by the host, not
//! the certificate, so a host's renewed certificates (the previous ones
//! are still admitted for their grace period) share one budget.
//!
//! A connection looks its peer's buckets up once ([`PeerBudgets::peer`])
//! and charges each line to them through its [`PeerCharge`]: a line costs
//! one uncontended lock of its peer's own buckets, not a lookup in the map
//! every connection shares (which hashed the fingerprint and allocated a
//! copy of it for every line).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket: `rate` tokens a second up to `burst`. Pure: the clock
/// is passed in.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    /// Add what the time since the last refill earned. A `now` earlier
    /// than the last refill adds nothing and leaves the mark where it is:
    /// connections of one peer charge the same bucket with clock readings
    /// taken at different moments, and moving the mark back would earn the
    /// same interval again at the next later reading.
    fn refill(&mut self, now: Instant) {
        if now <= self.last {
            return;
        }
        let dt = (now - self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Whether `n` tokens are there now; if so they are taken.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let n = n as f64;
        if n <= self.tokens {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Whether it has refilled completely (then it equals a new bucket).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// The budget of every log peer: `0` rates turn a budget off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBudget {
    /// Bytes written per second, sustained (0: no byte budget).
    pub bytes_per_s: u64,
    /// Bytes written in a burst.
    pub burst_bytes: u64,
    /// Lines per second, sustained (0: no line budget).
    pub lines_per_s: u64,
    /// Lines in a burst.
    pub burst_lines: u64,
}

impl Default for LogBudget {
    /// Enough for a busy honeypot (a brute-force storm on a Cowrie decky
    /// logs a few hundred lines a second), far below what fills a disk.
    fn default() -> Self {
        LogBudget {
            bytes_per_s: 1024 * 1024,
            burst_bytes: 64 * 1024 * 1024,
            lines_per_s: 5_000,
            burst_lines: 200_000,
        }
    }
}

impl LogBudget {
    /// No budget at all (benchmarks).
    pub fn unlimited() -> Self {
        LogBudget {
            bytes_per_s: 0,
            burst_bytes: 0,
            lines_per_s: 0,
            burst_lines: 0,
        }
    }

    /// Whether any budget is in force.
    pub fn is_limited(&self) -> bool {
        self.bytes_per_s > 0 || self.lines_per_s > 0
    }
}

#[derive(Debug)]
struct PeerBuckets {
    bytes: Option<TokenBucket>,
    lines: Option<TokenBucket>,
}

impl PeerBuckets {
    fn new(b: &LogBudget, now: Instant) -> Self {
        PeerBuckets {
            bytes: (b.bytes_per_s > 0).then(|| TokenBucket::new(b.bytes_per_s, b.burst_bytes, now)),
            lines: (b.lines_per_s > 0).then(|| TokenBucket::new(b.lines_per_s, b.burst_lines, now)),
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.bytes.as_mut().is_none_or(|b| b.is_full(now))
            && self.lines.as_mut().is_none_or(|b| b.is_full(now))
    }

    /// Take one line of `bytes` from both buckets, or nothing from either.
    fn admit(&mut self, bytes: u64, now: Instant) -> bool {
        let bytes_ok = self.bytes.as_mut().is_none_or(|t| {
            t.refill(now);
            t.tokens >= bytes as f64
        });
        let lines_ok = self.lines.as_mut().is_none_or(|t| {
            t.refill(now);
            t.tokens >= 1.0
        });
        if !(bytes_ok && lines_ok) {
            return false;
        }
        if let Some(t) = self.bytes.as_mut() {
            t.take(bytes, now);
        }
        if let Some(t) = self.lines.as_mut() {
            t.take(1, now);
        }
        true
    }
}

/// One peer's buckets, as a connection of that peer charges its lines to
/// them. Every connection of the peer holds the same buckets, so opening
/// more connections buys nothing either.
#[derive(Clone, Debug)]
pub struct PeerCharge {
    /// `None` when no budget is in force.
    buckets: Option<Arc<Mutex<PeerBuckets>>>,
}

impl PeerCharge {
    /// Charge one line of `bytes` written bytes; `false` means it is over
    /// budget and must be dropped (nothing is taken).
    pub fn admit(&self, bytes: u64, now: Instant) -> bool {
        match &self.buckets {
            None => true,
            Some(b) => b
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .admit(bytes, now),
        }
    }
}

/// Buckets above this many are pruned of full ones.
const PRUNE_ABOVE: usize = 1024;

/// The buckets of every peer, keyed by certificate fingerprint.
#[derive(Debug)]
pub struct PeerBudgets {
    budget: LogBudget,
    peers: Mutex<HashMap<String, Arc<Mutex<PeerBuckets>>>>,
}

impl PeerBudgets {
    /// Buckets enforcing `budget`.
    pub fn new(budget: LogBudget) -> Self {
        PeerBudgets {
            budget,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// The budget in force.
    pub fn budget(&self) -> LogBudget {
        self.budget
    }

    /// The buckets of peer `key` (its certificate's CN), created
    /// full for a peer not seen (or forgotten). When many peers have
    /// buckets, full ones no connection holds are forgotten first.
    pub fn peer(&self, key: &str, now: Instant) -> PeerCharge {
        if !self.budget.is_limited() {
            return PeerCharge { buckets: None };
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = peers.get(key) {
            return PeerCharge {
                buckets: Some(b.clone()),
            };
        }
        if peers.len() > PRUNE_ABOVE {
            // A bucket a connection still holds stays, full or not: forgotten,
            // a new connection of that peer would get a second budget.
            peers.retain(|_, b| {
                Arc::strong_count(b) > 1
                    || !b.lock().unwrap_or_else(|p| p.into_inner()).is_full(now)
            });
        }
        let b = Arc::new(Mutex::new(PeerBuckets::new(&self.budget, now)));
        peers.insert(key.to_string(), b.clone());
        PeerCharge { buckets: Some(b) }
    }

    /// Charge one line of `bytes` written bytes to peer `key`; `false`
    /// means it is over budget and must be dropped (nothing is taken).
    pub fn admit(&self, key: &str, bytes: u64, now: Instant) -> bool {
        self.peer(key, now).admit(bytes, now)
    }

    /// How many peers have buckets now.
    pub fn tracked(&self) -> usize {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 1000, t0);
        assert!(b.take(1000, t0));
        assert!(!b.take(1, t0));
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(50, t1));
        assert!(!b.take(1, t1));
        assert!(!b.is_full(t1));
        assert!(b.is_full(t1 + Duration::from_secs(10)));
        // Never more than the burst.
        assert!(!b.take(1001, t1 + Duration::from_secs(100)));
    }

    #[test]
    fn peers_have_their_own_budgets_and_reconnecting_resets_nothing() {
        let budget = LogBudget {
            bytes_per_s: 1000,
            burst_bytes: 10_000,
            lines_per_s: 10,
            burst_lines: 100,
        };
        let p = PeerBudgets::new(budget);
        let t0 = Instant::now();
        let mut written = 0;
        for _ in 0..1000 {
            if p.admit("hostile", 500, t0) {
                written += 500;
            }
        }
        assert_eq!(written, 10_000, "the byte burst, no more");
        assert!(p.admit("quiet", 500, t0), "another peer is not affected");
        // Many small lines hit the line budget first.
        let t1 = t0 + Duration::from_secs(1000);
        let lines = (0..1000).filter(|_| p.admit("chatty", 1, t1)).count();
        assert_eq!(lines, 100);
        // One second later: the rate, not a new burst.
        let t2 = t1 + Duration::from_secs(1);
        let lines = (0..1000).filter(|_| p.admit("chatty", 1, t2)).count();
        assert_eq!(lines, 10);
        // A line over budget takes nothing from the other bucket.
        assert!(!p.admit("hostile", 500, t0));
    }

    #[test]
    fn unlimited_admits_everything_and_tracks_nobody() {
        let p = PeerBudgets::new(LogBudget::unlimited());
        assert!((0..10_000).all(|_| p.admit("x", 1 << 20, Instant::now())));
        assert_eq!(p.tracked(), 0);
    }

    #[test]
    fn full_buckets_are_pruned_when_many_peers_come_and_go() {
        let p = PeerBudgets::new(LogBudget::default());
        let t0 = Instant::now();
        for i in 0..(PRUNE_ABOVE + 10) {
            assert!(p.admit(&format!("peer{i}"), 10, t0));
        }
        // Long after, every bucket is full again: a newcomer prunes them.
        assert!(p.admit("late", 10, t0 + Duration::from_secs(3600)));
        assert_eq!(p.tracked(), 1);
    }

    /// Two connections of one peer charge its bucket with clock readings
    /// of different moments, alternately: the interval between them is
    /// earned once, not at every switch.
    #[test]
    fn alternating_clock_readings_earn_an_interval_once() {
        let budget = LogBudget {
            bytes_per_s: 1000,
            burst_bytes: 100_000,
            lines_per_s: 0,
            burst_lines: 0,
        };
        let p = PeerBudgets::new(budget);
        let t0 = Instant::now();
        let (a, b) = (p.peer("hostile", t0), p.peer("hostile", t0));
        assert!(a.admit(100_000, t0), "the burst");
        let t1 = t0 + Duration::from_millis(100);
        let mut written = 0;
        for _ in 0..1000 {
            if b.admit(10, t1) {
                written += 10;
            }
            if a.admit(10, t0) {
                written += 10;
            }
        }
        assert_eq!(written, 100, "0.1 s at 1000 bytes a second, once");
    }

    #[test]
    fn connections_of_one_peer_share_its_budget_even_across_a_prune() {
        let budget = LogBudget {
            bytes_per_s: 1,
            burst_bytes: 1000,
            lines_per_s: 0,
            burst_lines: 0,
        };
        let p = PeerBudgets::new(budget);
        let t0 = Instant::now();
        let first = p.peer("hostile", t0);
        let second = p.peer("hostile", t0);
        assert!(first.admit(600, t0));
        assert!(
            !second.admit(600, t0),
            "the second connection has no budget of its own"
        );
        // Many peers come and go while `first` stays open with a full bucket
        // (long after): it is not forgotten, so a new connection still
        // shares it.
        let later = t0 + Duration::from_secs(3600);
        for i in 0..(PRUNE_ABOVE + 10) {
            assert!(p.admit(&format!("peer{i}"), 10, t0));
        }
        assert!(
            p.admit("late", 10, later),
            "prunes the full buckets nobody holds"
        );
        assert_eq!(p.tracked(), 2, "the held bucket and the newcomer's");
        let third = p.peer("hostile", later);
        assert!(first.admit(1000, later));
        assert!(
            !third.admit(1, later),
            "the third connection shares the same bucket"
        );
    }
}
