//! Connection admission: the counters behind every per-source, per-identity
//! and global limit, as guards that give their slot back when dropped.
//!
//! Pure bookkeeping (no IO), so the rules are unit-tested here and the
//! runner only asks and obeys. Maps hold only keys with a non-zero count, so
//! their size is bounded by the open connections themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use decnet_pki::Fingerprint;

use crate::limits::ServerLimits;
use crate::source::SourceKey;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The server holds its maximum of connections.
    #[error("too many connections")]
    TooManyConnections,
    /// The server holds its maximum of handshakes in progress.
    #[error("too many handshakes in progress")]
    TooManyHandshakes,
    /// This source holds its maximum of handshakes in progress.
    #[error("too many handshakes in progress from this source")]
    TooManyHandshakesFromSource,
    /// This source holds its maximum of connections without a certificate.
    #[error("too many connections without a certificate from this source")]
    TooManyAnonymousFromSource,
    /// This certificate holds its maximum of connections.
    #[error("too many connections under this certificate")]
    TooManyForIdentity,
}

impl Refused {
    /// A short stable name (log field, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::TooManyConnections => "connections",
            Refused::TooManyHandshakes => "handshakes",
            Refused::TooManyHandshakesFromSource => "source_handshakes",
            Refused::TooManyAnonymousFromSource => "source_anonymous",
            Refused::TooManyForIdentity => "identity_connections",
        }
    }
}

#[derive(Default, Debug)]
struct Counts {
    connections: usize,
    handshakes: usize,
    handshakes_by_source: HashMap<SourceKey, usize>,
    anonymous_by_source: HashMap<SourceKey, usize>,
    by_identity: HashMap<Fingerprint, usize>,
}

fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            map.remove(k);
        }
    }
}

/// The shared counters of one server.
#[derive(Debug)]
pub struct Admission {
    limits: ServerLimits,
    counts: Mutex<Counts>,
}

/// What a slot currently holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Nothing,
    Anonymous,
    Identity(Fingerprint),
}

/// One admitted connection's share of the counters; released on drop.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    source: SourceKey,
    handshaking: bool,
    bound: Bound,
}

impl Admission {
    /// Counters enforcing `limits`.
    pub fn new(limits: ServerLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a new TCP connection from `source` into its handshake.
    pub fn open(self: &Arc<Self>, source: SourceKey) -> Result<Slot, Refused> {
        let mut c = self.lock();
        if c.connections >= self.limits.max_connections {
            return Err(Refused::TooManyConnections);
        }
        if c.handshakes >= self.limits.max_pending_handshakes {
            return Err(Refused::TooManyHandshakes);
        }
        let from_source = c.handshakes_by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_pending_handshakes_per_source {
            return Err(Refused::TooManyHandshakesFromSource);
        }
        c.connections += 1;
        c.handshakes += 1;
        *c.handshakes_by_source.entry(source).or_insert(0) += 1;
        Ok(Slot {
            admission: self.clone(),
            source,
            handshaking: true,
            bound: Bound::Nothing,
        })
    }

    /// Connections open now (for tests and metrics).
    pub fn open_connections(&self) -> usize {
        self.lock().connections
    }

    /// Handshakes in progress now.
    pub fn pending_handshakes(&self) -> usize {
        self.lock().handshakes
    }
}

impl Slot {
    /// The handshake finished (or failed): its handshake slot is free again.
    pub fn handshake_done(&mut self) {
        if self.handshaking {
            self.handshaking = false;
            let mut c = self.admission.lock();
            c.handshakes -= 1;
            dec(&mut c.handshakes_by_source, &self.source);
        }
    }

    /// Count the connection against its certificate (`None`: anonymous,
    /// counted against its source).
    pub fn bind(&mut self, identity: Option<&Fingerprint>) -> Result<(), Refused> {
        self.handshake_done();
        debug_assert_eq!(self.bound, Bound::Nothing);
        let limits = &self.admission.limits;
        let mut c = self.admission.lock();
        match identity {
            Some(fp) => {
                let n = c.by_identity.get(fp).copied().unwrap_or(0);
                if n >= limits.max_connections_per_identity {
                    return Err(Refused::TooManyForIdentity);
                }
                *c.by_identity.entry(*fp).or_insert(0) += 1;
                self.bound = Bound::Identity(*fp);
            }
            None => {
                let n = c
                    .anonymous_by_source
                    .get(&self.source)
                    .copied()
                    .unwrap_or(0);
                if n >= limits.max_anonymous_per_source {
                    return Err(Refused::TooManyAnonymousFromSource);
                }
                *c.anonymous_by_source.entry(self.source).or_insert(0) += 1;
                self.bound = Bound::Anonymous;
            }
        }
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshake_done();
        let mut c = self.admission.lock();
        c.connections -= 1;
        match self.bound {
            Bound::Nothing => {}
            Bound::Anonymous => dec(&mut c.anonymous_by_source, &self.source),
            Bound::Identity(fp) => dec(&mut c.by_identity, &fp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServerLimits {
        ServerLimits {
            max_pending_handshakes: 4,
            max_pending_handshakes_per_source: 2,
            max_connections: 6,
            max_anonymous_per_source: 1,
            max_connections_per_identity: 2,
            ..ServerLimits::default()
        }
    }

    fn src(s: &str) -> SourceKey {
        SourceKey::of(s.parse().unwrap())
    }

    #[test]
    fn per_source_handshakes_are_capped_and_freed() {
        let a = Admission::new(limits());
        let s1 = a.open(src("10.0.0.1")).unwrap();
        let _s2 = a.open(src("10.0.0.1")).unwrap();
        assert_eq!(
            a.open(src("10.0.0.1")).unwrap_err(),
            Refused::TooManyHandshakesFromSource
        );
        // Another source is not affected.
        let _s3 = a.open(src("10.0.0.2")).unwrap();
        drop(s1);
        let _s4 = a.open(src("10.0.0.1")).unwrap();
        assert_eq!(a.pending_handshakes(), 3);
    }

    #[test]
    fn finished_handshakes_free_their_slot_but_count_as_connections() {
        let a = Admission::new(limits());
        let mut held = Vec::new();
        for i in 0..6 {
            let mut s = a.open(src(&format!("10.0.1.{i}"))).unwrap();
            s.handshake_done();
            held.push(s);
        }
        assert_eq!(a.pending_handshakes(), 0);
        assert_eq!(
            a.open(src("10.0.2.1")).unwrap_err(),
            Refused::TooManyConnections
        );
        held.pop();
        assert!(a.open(src("10.0.2.1")).is_ok());
    }

    #[test]
    fn identities_and_anonymous_peers_have_their_own_caps() {
        let a = Admission::new(limits());
        let fp = Fingerprint::of_der(b"one certificate");
        let mut x = a.open(src("10.0.0.1")).unwrap();
        x.bind(Some(&fp)).unwrap();
        let mut y = a.open(src("10.0.0.2")).unwrap();
        y.bind(Some(&fp)).unwrap();
        let mut z = a.open(src("10.0.0.3")).unwrap();
        assert_eq!(z.bind(Some(&fp)).unwrap_err(), Refused::TooManyForIdentity);
        let other = Fingerprint::of_der(b"another certificate");
        let mut w = a.open(src("10.0.0.3")).unwrap();
        w.bind(Some(&other)).unwrap();

        let mut anon1 = a.open(src("10.0.0.9")).unwrap();
        anon1.bind(None).unwrap();
        let mut anon2 = a.open(src("10.0.0.9")).unwrap();
        assert_eq!(
            anon2.bind(None).unwrap_err(),
            Refused::TooManyAnonymousFromSource
        );
        drop((x, y, z, w, anon1, anon2));
        assert_eq!(a.open_connections(), 0);
        let c = a.lock();
        assert!(c.by_identity.is_empty() && c.anonymous_by_source.is_empty());
        assert!(c.handshakes_by_source.is_empty());
    }
}
