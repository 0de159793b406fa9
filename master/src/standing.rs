//! Standing checks remembered (issue #31): a worker certificate found
//! current in the fleet database is not looked up again on every request.
//! At the rates fleets beat at, that read was most of what a heartbeat cost
//! the master: a round trip to the database's thread and back, each a
//! thread wake-up.
//!
//! A remembered answer holds only while nothing that could change it has
//! happened:
//!
//! * **the revocation list is the same**: every way a certificate loses
//!   its standing (burn, decommission, reissue, a token join replacing the
//!   host, a replaced certificate's grace ending) revokes it, on this master
//!   or another one on the database; the master reloads the list every
//!   second, and a new list number forgets everything (the servers also
//!   close the revoked peer's open connections then);
//! * **no renewal was presented in this process** since, to the control
//!   API or the log listener (the certificate it replaces turns from
//!   current to retiring: its next request must see that, for the
//!   second-holder check; `FleetDb::promotions`);
//! * **the revocation list was checked within [`CRL_FRESHNESS`]**: a
//!   stalled or failing refresh turns the cache off rather than leave a
//!   revoked certificate remembered;
//! * it is younger than [`STANDING_TTL`], which bounds what no signal above
//!   covers: a renewal presented to *another* master (so a retiring
//!   certificate's clone is seen within that much more time).
//!
//! Only "current" is remembered; every other answer (retiring, refused) is
//! looked up each time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use decnet_pki::Fingerprint;

/// How recently the revocation list must have been found up to date for a
/// remembered answer to count (the daemon checks it every second).
pub const CRL_FRESHNESS: Duration = Duration::from_secs(3);

/// How long a remembered "current" holds at most.
pub const STANDING_TTL: Duration = Duration::from_secs(60);

/// Certificates remembered at most (two per host: agent and updater);
/// past it, stale entries are dropped, and if none is, all are.
pub const MAX_REMEMBERED: usize = 200_000;

/// What the database said last, per certificate, and when it must be asked again.
#[derive(Debug)]
pub struct StandingCache {
    ttl: Duration,
    generation: AtomicU64,
    current: Mutex<HashMap<Fingerprint, Remembered>>,
}

#[derive(Clone, Copy, Debug)]
struct Remembered {
    at: Instant,
    generation: u64,
    crl: Option<u64>,
    promotions: u64,
}

/// What a lookup must be checked against: taken *before* the database is
/// read, so a change during the read makes its answer stale at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    generation: u64,
    crl: Option<u64>,
    promotions: u64,
}

impl StandingCache {
    /// A cache whose answers hold at most `ttl`.
    pub fn new(ttl: Duration) -> Self {
        StandingCache {
            ttl,
            generation: AtomicU64::new(0),
            current: Mutex::new(HashMap::new()),
        }
    }

    /// The state a lookup starts from, under revocation list `crl`, after
    /// `promotions` renewals were presented in this process.
    pub fn snapshot(&self, crl: Option<u64>, promotions: u64) -> Snapshot {
        Snapshot {
            generation: self.generation.load(Ordering::Acquire),
            crl,
            promotions,
        }
    }

    /// Whether `fp` was found current under `snap` less than the TTL before `now`.
    pub fn is_current(&self, fp: &Fingerprint, snap: Snapshot, now: Instant) -> bool {
        self.lock().get(fp).is_some_and(|r| {
            r.generation == snap.generation
                && r.crl == snap.crl
                && r.promotions == snap.promotions
                && now.saturating_duration_since(r.at) < self.ttl
        })
    }

    /// The database found `fp` current in a lookup that started at `snap`.
    pub fn remember(&self, fp: Fingerprint, snap: Snapshot, now: Instant) {
        let mut map = self.lock();
        if map.len() >= MAX_REMEMBERED && !map.contains_key(&fp) {
            let ttl = self.ttl;
            let generation = self.generation.load(Ordering::Acquire);
            map.retain(|_, r| {
                r.generation == generation && now.saturating_duration_since(r.at) < ttl
            });
            if map.len() >= MAX_REMEMBERED {
                map.clear();
            }
        }
        map.insert(
            fp,
            Remembered {
                at: now,
                generation: snap.generation,
                crl: snap.crl,
                promotions: snap.promotions,
            },
        );
    }

    /// Something changed a certificate's standing here (a renewal was
    /// presented): forget every answer.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lock().clear();
    }

    /// How many certificates are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Fingerprint, Remembered>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::of_der(&[b])
    }

    #[test]
    fn a_current_answer_holds_until_the_ttl() {
        let c = StandingCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let snap = c.snapshot(Some(1), 0);
        assert!(!c.is_current(&fp(1), snap, t0));
        c.remember(fp(1), snap, t0);
        assert!(c.is_current(&fp(1), snap, t0 + Duration::from_secs(59)));
        assert!(!c.is_current(&fp(1), snap, t0 + Duration::from_secs(60)));
        assert!(!c.is_current(&fp(2), snap, t0));
    }

    #[test]
    fn a_new_revocation_list_forgets_every_answer() {
        let c = StandingCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        c.remember(fp(1), c.snapshot(Some(1), 0), t0);
        assert!(!c.is_current(&fp(1), c.snapshot(Some(2), 0), t0));
        assert!(!c.is_current(&fp(1), c.snapshot(None, 0), t0));
    }

    #[test]
    fn a_renewal_presented_elsewhere_in_the_process_forgets_every_answer() {
        let c = StandingCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        c.remember(fp(1), c.snapshot(Some(1), 4), t0);
        assert!(c.is_current(&fp(1), c.snapshot(Some(1), 4), t0));
        assert!(!c.is_current(&fp(1), c.snapshot(Some(1), 5), t0));
    }

    #[test]
    fn a_renewal_presented_forgets_every_answer() {
        let c = StandingCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        c.remember(fp(1), c.snapshot(Some(1), 0), t0);
        c.forget_all();
        assert!(!c.is_current(&fp(1), c.snapshot(Some(1), 0), t0));
    }

    #[test]
    fn an_answer_read_across_a_change_is_never_remembered_as_fresh() {
        let c = StandingCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        // A lookup starts, a renewal is presented meanwhile, the lookup ends.
        let snap = c.snapshot(Some(1), 0);
        c.forget_all();
        c.remember(fp(1), snap, t0);
        assert!(!c.is_current(&fp(1), c.snapshot(Some(1), 0), t0));
    }

    #[test]
    fn memory_stays_bounded() {
        let c = StandingCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let snap = c.snapshot(None, 0);
        for i in 0..(MAX_REMEMBERED as u32 + 10) {
            c.remember(Fingerprint::of_der(&i.to_le_bytes()), snap, t0);
        }
        assert!(c.len() <= MAX_REMEMBERED);
    }
}
