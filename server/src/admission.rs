//! Connection admission: the counters behind every per-source, per-identity
//! and global limit, as guards that give their slot back when dropped.
//!
//! Pure bookkeeping (no IO), so the rules are unit-tested here and the
//! runner only asks and obeys. Maps hold only keys with a non-zero count, so
//! their size is bounded by the open connections themselves.
//!
//! Handshakes in progress are not refused when their budget is full: the
//! oldest one of the crowded source (or, for the global budget, of the most
//! crowded source) is *evicted* instead — its task is told to stop through
//! its eviction token — and the newcomer takes its place. One that has
//! already sent its ClientHello is evicted only when its source holds no
//! silent one. So a source holding idle connections (a decky sharing its
//! worker's address, hosts behind one NAT) cannot lock a peer that speaks
//! TLS out of a handshake: the peer's ClientHello arrives at once, and
//! silent connections go first. Connections without a certificate (the control
//! API's joins) are treated alike once the server holds its maximum of
//! them: the oldest of the network (IPv4 /24, IPv6 /48) holding the
//! most makes room for a newcomer whose network would then hold no more
//! than that one, and among networks holding as many the oldest connection
//! goes first. So a party with a few networks' addresses cannot keep every
//! joiner out, and one holding every slot from a network of its own (as
//! many networks as slots) must reconnect through every slot, faster than
//! a joiner sends its request, to close a joiner's: the slots turn over
//! oldest first instead of staying with whoever came first. Peers
//! presenting a certificate are never
//! counted against the anonymous budgets, and every connection, of every
//! server in the process, counts against one process-wide budget sized
//! below the descriptor limit ([`crate::descriptors`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use decnet_pki::Fingerprint;
use tokio_util::sync::CancellationToken;

use crate::limits::ServerLimits;
use crate::source::{NetworkKey, SourceKey};

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The server holds its maximum of connections.
    #[error("too many connections")]
    TooManyConnections,
    /// The process holds as many connections as its descriptor budget allows.
    #[error("too many connections for the process's descriptor limit")]
    DescriptorBudget,
    /// The server holds its maximum of handshakes in progress, none evictable.
    #[error("too many handshakes in progress")]
    TooManyHandshakes,
    /// This source holds its maximum of connections without a certificate.
    #[error("too many connections without a certificate from this source")]
    TooManyAnonymousFromSource,
    /// This source's network (IPv4 /24, IPv6 /48) holds its maximum of
    /// connections without a certificate.
    #[error("too many connections without a certificate from this network")]
    TooManyAnonymousFromNetwork,
    /// The server holds its maximum of connections without a certificate,
    /// and no network holds as many of them as this one would.
    #[error("too many connections without a certificate")]
    TooManyAnonymous,
    /// An open connection without a certificate, closed to make room for a
    /// newcomer from a network holding no more (the server held its
    /// maximum; its network held the most, and its connection was the
    /// oldest of those networks').
    #[error(
        "closed to make room: its network held the most connections without a certificate, this one the longest"
    )]
    AnonymousEvicted,
    /// This certificate holds its maximum of connections.
    #[error("too many connections under this certificate")]
    TooManyForIdentity,
}

impl Refused {
    /// A short stable name (log field, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::TooManyConnections => "connections",
            Refused::DescriptorBudget => "descriptors",
            Refused::TooManyHandshakes => "handshakes",
            Refused::TooManyAnonymousFromSource => "source_anonymous",
            Refused::TooManyAnonymousFromNetwork => "network_anonymous",
            Refused::TooManyAnonymous => "anonymous",
            Refused::AnonymousEvicted => "anonymous_evicted",
            Refused::TooManyForIdentity => "identity_connections",
        }
    }
}

/// Asks whether a silent connection has spoken since (its first bytes are
/// waiting to be read, even if its task has not run yet): the runner peeks
/// its socket. Holding a probe holds one descriptor.
pub type SpokeProbe = Box<dyn Fn() -> bool + Send>;

/// A handshake in progress, as its source's queue holds it (oldest first).
struct Pending {
    id: u64,
    /// Its ClientHello has arrived.
    hello: bool,
    /// Cancelled when it is evicted.
    evict: CancellationToken,
    /// Looked at before it is evicted as silent.
    spoke: Option<SpokeProbe>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Whether it has spoken, asking its probe when it has not yet said so.
    fn speaking(&mut self) -> bool {
        if !self.hello && self.spoke.as_ref().is_some_and(|f| f()) {
            self.hello = true;
        }
        self.hello
    }
}

/// Take `p` off the counts: its probe (and the descriptor it holds) goes.
fn forget(p: Pending) {
    if p.spoke.is_some() {
        release_process_slot();
    }
}

#[derive(Default, Debug)]
struct Counts {
    connections: usize,
    handshakes: usize,
    next_id: u64,
    pending_by_source: HashMap<SourceKey, VecDeque<Pending>>,
    anonymous: usize,
    anonymous_by_source: HashMap<SourceKey, usize>,
    /// The open anonymous connections of each network, oldest first.
    anonymous_by_network: HashMap<NetworkKey, VecDeque<AnonymousPeer>>,
    /// Anonymous connections evicted and still open, finishing the
    /// request in flight: no longer counted in `anonymous`, so they are
    /// capped of their own ([`Slot::may_drain`]).
    draining: usize,
    by_identity: HashMap<Fingerprint, usize>,
}

/// An open connection without a certificate, as its network's queue holds it.
#[derive(Debug)]
struct AnonymousPeer {
    id: u64,
    /// When it was counted (bind order, shared with `id`'s sequence): the
    /// oldest of tied networks is the one counted first, however long its
    /// handshake took.
    joined: u64,
    source: SourceKey,
    evict: CancellationToken,
}

fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            map.remove(k);
        }
    }
}

impl Counts {
    /// Evict the oldest silent handshake of `source` (else its oldest).
    /// "Silent" is asked of each candidate's probe first: a peer whose
    /// ClientHello is waiting in its socket is speaking, whether or not its
    /// task has run yet.
    fn evict_from(&mut self, source: &SourceKey) -> bool {
        let Some(queue) = self.pending_by_source.get_mut(source) else {
            return false;
        };
        let at = queue.iter_mut().position(|p| !p.speaking()).unwrap_or(0);
        let Some(victim) = queue.remove(at) else {
            return false;
        };
        if queue.is_empty() {
            self.pending_by_source.remove(source);
        }
        self.handshakes -= 1;
        victim.evict.cancel();
        forget(victim);
        true
    }

    /// Make room for an anonymous newcomer whose network will hold
    /// `newcomers_network` connections: the oldest connection of the
    /// network holding the most goes, if that network holds at least as
    /// many (a network never evicts its own, nor from one holding fewer).
    /// Among networks holding as many, the one whose oldest connection is
    /// the oldest: when every slot is held from a network of its own, they
    /// turn over oldest first, and a joiner's connection, the newest, is
    /// the last to go.
    fn evict_anonymous(&mut self, newcomers_network: usize) -> bool {
        let Some(crowded) = self
            .anonymous_by_network
            .iter()
            .filter(|(_, q)| q.len() >= newcomers_network)
            .max_by_key(|(_, q)| {
                let oldest = q.front().map_or(u64::MAX, |a| a.joined);
                (q.len(), std::cmp::Reverse(oldest))
            })
            .map(|(n, _)| *n)
        else {
            return false;
        };
        let Some(queue) = self.anonymous_by_network.get_mut(&crowded) else {
            return false;
        };
        let Some(victim) = queue.pop_front() else {
            return false;
        };
        if queue.is_empty() {
            self.anonymous_by_network.remove(&crowded);
        }
        self.anonymous -= 1;
        dec(&mut self.anonymous_by_source, &victim.source);
        self.draining += 1;
        victim.evict.cancel();
        true
    }

    /// Take the anonymous connection `id` of `source` off the counts: off
    /// the anonymous ones if it is still on them, else (it was evicted)
    /// off the draining ones.
    fn forget_anonymous(&mut self, source: &SourceKey, id: u64) {
        let network = source.network();
        let at = self
            .anonymous_by_network
            .get(&network)
            .and_then(|q| q.iter().position(|a| a.id == id));
        let (Some(at), Some(queue)) = (at, self.anonymous_by_network.get_mut(&network)) else {
            self.draining -= 1;
            return;
        };
        queue.remove(at);
        if queue.is_empty() {
            self.anonymous_by_network.remove(&network);
        }
        self.anonymous -= 1;
        dec(&mut self.anonymous_by_source, source);
    }

    /// The source holding the most handshakes (ties: any).
    fn most_crowded(&self) -> Option<SourceKey> {
        self.pending_by_source
            .iter()
            .max_by_key(|(_, q)| (q.iter().filter(|p| !p.hello).count(), q.len()))
            .map(|(s, _)| *s)
    }
}

/// The descriptors every server's connections hold in this process (one a
/// connection, one more for a pending handshake's probe): the process has
/// only so many ([`crate::descriptors`]).
static PROCESS_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

fn acquire_process_slots(k: usize) -> bool {
    let cap = crate::descriptors::connection_budget();
    PROCESS_CONNECTIONS
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n + k <= cap).then_some(n + k)
        })
        .is_ok()
}

fn release_process_slot() {
    PROCESS_CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
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
    id: u64,
    handshaking: bool,
    evicted: CancellationToken,
    bound: Bound,
}

/// A newcomer admitted into its handshake, and how many older handshakes
/// made room for it.
#[derive(Debug)]
pub struct Admitted {
    /// The newcomer's slot.
    pub slot: Slot,
    /// Older handshakes evicted to make room (0 or 1).
    pub evicted: usize,
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

    /// Admit a new TCP connection from `source` into its handshake, evicting
    /// the oldest silent handshake of its source (or of the most crowded
    /// source) when a handshake budget is full. `spoke` tells, at any time
    /// until the handshake ends, whether the connection's first bytes (its
    /// ClientHello) are waiting: a peer that speaks TLS is never taken for
    /// a silent one because its task has not run yet.
    pub fn open(
        self: &Arc<Self>,
        source: SourceKey,
        spoke: Option<SpokeProbe>,
    ) -> Result<Admitted, Refused> {
        let mut c = self.lock();
        if c.connections >= self.limits.max_connections {
            return Err(Refused::TooManyConnections);
        }
        let mut evicted = 0;
        let from_source = c.pending_by_source.get(&source).map_or(0, VecDeque::len);
        if from_source >= self.limits.max_pending_handshakes_per_source.max(1) {
            if c.evict_from(&source) {
                evicted += 1;
            }
        } else if c.handshakes >= self.limits.max_pending_handshakes {
            match c.most_crowded() {
                Some(crowded) if c.evict_from(&crowded) => evicted += 1,
                _ => return Err(Refused::TooManyHandshakes),
            }
        }
        // The connection's descriptor, and its probe's while it is pending.
        if !acquire_process_slots(1 + usize::from(spoke.is_some())) {
            return Err(Refused::DescriptorBudget);
        }
        let hello = spoke.as_ref().is_some_and(|f| f());
        c.connections += 1;
        c.handshakes += 1;
        c.next_id += 1;
        let id = c.next_id;
        let evict = CancellationToken::new();
        c.pending_by_source
            .entry(source)
            .or_default()
            .push_back(Pending {
                id,
                hello,
                evict: evict.clone(),
                spoke,
            });
        Ok(Admitted {
            slot: Slot {
                admission: self.clone(),
                source,
                id,
                handshaking: true,
                evicted: evict,
                bound: Bound::Nothing,
            },
            evicted,
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

    /// Connections without a certificate open now.
    pub fn anonymous_connections(&self) -> usize {
        self.lock().anonymous
    }

    /// The limits in force (after fitting them to the descriptor limit).
    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }
}

impl Slot {
    /// Cancelled when this handshake is evicted to make room for a newer
    /// one, or this connection without a certificate to make room for a
    /// peer of a network holding no more: the runner closes the connection.
    pub fn eviction(&self) -> CancellationToken {
        self.evicted.clone()
    }

    /// Evicted without a certificate: whether it may finish the request in
    /// flight before it is closed. At most [`ServerLimits::max_anonymous`]
    /// evicted connections do at once; beyond, one is cut at once. Why:
    /// evicted connections no longer count as anonymous, and each newcomer
    /// may evict one, so without a cap a party opening connections that
    /// each start a slow request would keep every one it lost open for
    /// the request timeout, past every anonymous budget.
    pub fn may_drain(&self) -> bool {
        self.admission.lock().draining <= self.admission.limits.max_anonymous
    }

    /// Its ClientHello arrived: it is evicted only after the silent ones.
    pub fn hello_received(&mut self) {
        if !self.handshaking {
            return;
        }
        let mut c = self.admission.lock();
        if let Some(p) = c
            .pending_by_source
            .get_mut(&self.source)
            .and_then(|q| q.iter_mut().find(|p| p.id == self.id))
        {
            p.hello = true;
        }
    }

    /// The handshake finished (or failed): its handshake slot is free again.
    pub fn handshake_done(&mut self) {
        if !self.handshaking {
            return;
        }
        self.handshaking = false;
        let mut c = self.admission.lock();
        let Some(queue) = c.pending_by_source.get_mut(&self.source) else {
            return; // evicted: already taken off the counts
        };
        let Some(at) = queue.iter().position(|p| p.id == self.id) else {
            return;
        };
        let done = queue.remove(at);
        if queue.is_empty() {
            c.pending_by_source.remove(&self.source);
        }
        c.handshakes -= 1;
        drop(c);
        done.into_iter().for_each(forget);
    }

    /// Count the connection against its certificate (`None`: anonymous,
    /// counted against its source, its network and the server's anonymous
    /// budget; when that budget is full, the oldest connection of the most
    /// crowded network is evicted for it if that network holds at least as
    /// many as this one's would).
    pub fn bind(&mut self, identity: Option<&Fingerprint>) -> Result<(), Refused> {
        self.handshake_done();
        debug_assert_eq!(self.bound, Bound::Nothing);
        let limits = &self.admission.limits;
        let mut c = self.admission.lock();
        // Evicted as a handshake just before it finished: it goes, and
        // takes no one's place (its token would also end it at once).
        if self.evicted.is_cancelled() {
            return Err(Refused::TooManyHandshakes);
        }
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
                let network = self.source.network();
                let n = c
                    .anonymous_by_network
                    .get(&network)
                    .map_or(0, VecDeque::len);
                if n >= limits.max_anonymous_per_network {
                    return Err(Refused::TooManyAnonymousFromNetwork);
                }
                if c.anonymous >= limits.max_anonymous
                    && !(limits.evict_anonymous && c.evict_anonymous(n + 1))
                {
                    return Err(Refused::TooManyAnonymous);
                }
                c.next_id += 1;
                let joined = c.next_id;
                c.anonymous_by_network
                    .entry(network)
                    .or_default()
                    .push_back(AnonymousPeer {
                        id: self.id,
                        joined,
                        source: self.source,
                        evict: self.evicted.clone(),
                    });
                *c.anonymous_by_source.entry(self.source).or_insert(0) += 1;
                c.anonymous += 1;
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
        release_process_slot();
        match self.bound {
            Bound::Nothing => {}
            Bound::Anonymous => c.forget_anonymous(&self.source, self.id),
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
            max_anonymous: 3,
            max_anonymous_per_source: 1,
            max_anonymous_per_network: 8,
            max_connections_per_identity: 2,
            ..ServerLimits::default()
        }
    }

    fn src(s: &str) -> SourceKey {
        SourceKey::of(s.parse().unwrap())
    }

    fn open(a: &Arc<Admission>, s: &str) -> Slot {
        a.open(src(s), None).unwrap().slot
    }

    /// A control API's join slots, scaled down: `max_anonymous` of them,
    /// a full budget evicting, and these caps per source and network.
    fn join_slots(max_anonymous: usize, per_source: usize, per_network: usize) -> Arc<Admission> {
        Admission::new(ServerLimits {
            max_connections: 20,
            max_pending_handshakes: 20,
            max_anonymous,
            max_anonymous_per_source: per_source,
            max_anonymous_per_network: per_network,
            evict_anonymous: true,
            ..limits()
        })
    }

    /// A connection from `s` bound without a certificate.
    fn bound(a: &Arc<Admission>, s: &str) -> Result<Slot, Refused> {
        let mut slot = open(a, s);
        slot.bind(None).map(|()| slot)
    }

    /// A probe answering what `flag` holds.
    fn probe(flag: &Arc<std::sync::atomic::AtomicBool>) -> Option<SpokeProbe> {
        let f = flag.clone();
        Some(Box::new(move || f.load(Ordering::SeqCst)))
    }

    #[test]
    fn a_full_source_evicts_its_oldest_silent_handshake_not_the_newcomer() {
        let a = Admission::new(limits());
        let mut first = open(&a, "10.0.0.1");
        first.hello_received(); // speaks TLS: evicted last
        let second = open(&a, "10.0.0.1");
        let third = a.open(src("10.0.0.1"), None).unwrap();
        assert_eq!(third.evicted, 1);
        assert!(second.eviction().is_cancelled(), "the silent one goes");
        assert!(!first.eviction().is_cancelled(), "the speaking one stays");
        assert_eq!(a.pending_handshakes(), 2);
        // Another source is not affected.
        let other = open(&a, "10.0.0.2");
        assert!(!other.eviction().is_cancelled());
        // With only speaking handshakes left, the oldest of them goes.
        let mut third = third.slot;
        third.hello_received();
        let fourth = a.open(src("10.0.0.1"), None).unwrap();
        assert_eq!(fourth.evicted, 1);
        assert!(first.eviction().is_cancelled());
        // An evicted slot gives back only its connection when dropped.
        drop((first, second));
        assert_eq!(a.pending_handshakes(), 3);
        drop((third, fourth, other));
        assert_eq!(a.pending_handshakes(), 0);
        assert_eq!(a.open_connections(), 0);
        assert!(a.lock().pending_by_source.is_empty());
    }

    #[test]
    fn a_peer_whose_hello_is_waiting_is_not_taken_for_a_silent_one() {
        use std::sync::atomic::AtomicBool;
        let a = Admission::new(limits());
        // Its ClientHello arrives after it was admitted, before its task runs.
        let arrived = Arc::new(AtomicBool::new(false));
        let peer = a.open(src("10.0.0.1"), probe(&arrived)).unwrap().slot;
        let silent = a.open(src("10.0.0.1"), probe(&Arc::new(AtomicBool::new(false))));
        let silent = silent.unwrap().slot;
        arrived.store(true, Ordering::SeqCst);
        let _third = a.open(src("10.0.0.1"), None).unwrap();
        assert!(silent.eviction().is_cancelled());
        assert!(!peer.eviction().is_cancelled());
        // Already waiting when admitted: speaking from the start.
        let b = Admission::new(limits());
        let early = b.open(src("10.0.0.1"), probe(&arrived)).unwrap().slot;
        let _quiet = open(&b, "10.0.0.1");
        let _next = b.open(src("10.0.0.1"), None).unwrap();
        assert!(!early.eviction().is_cancelled());
    }

    #[test]
    fn a_full_server_evicts_from_the_most_crowded_source() {
        let a = Admission::new(limits());
        let crowd1 = open(&a, "10.0.0.1");
        let _crowd2 = open(&a, "10.0.0.1");
        let mut lone = open(&a, "10.0.0.2");
        lone.hello_received();
        let _other = open(&a, "10.0.0.3");
        // 4 pending: the global budget is full; a fifth source gets in.
        let new = a.open(src("10.0.0.4"), None).unwrap();
        assert_eq!(new.evicted, 1);
        assert!(crowd1.eviction().is_cancelled());
        assert!(!lone.eviction().is_cancelled());
        assert_eq!(a.pending_handshakes(), 4);
    }

    #[test]
    fn finished_handshakes_free_their_slot_but_count_as_connections() {
        let a = Admission::new(limits());
        let mut held = Vec::new();
        for i in 0..6 {
            let mut s = open(&a, &format!("10.0.1.{i}"));
            s.handshake_done();
            held.push(s);
        }
        assert_eq!(a.pending_handshakes(), 0);
        assert_eq!(
            a.open(src("10.0.2.1"), None).unwrap_err(),
            Refused::TooManyConnections
        );
        held.pop();
        assert!(a.open(src("10.0.2.1"), None).is_ok());
    }

    #[test]
    fn identities_and_anonymous_peers_have_their_own_caps() {
        let a = Admission::new(ServerLimits {
            max_connections: 20,
            max_pending_handshakes: 20,
            ..limits()
        });
        let fp = Fingerprint::of_der(b"one certificate");
        let mut x = open(&a, "10.0.0.1");
        x.bind(Some(&fp)).unwrap();
        let mut y = open(&a, "10.0.0.2");
        y.bind(Some(&fp)).unwrap();
        let mut z = open(&a, "10.0.0.3");
        assert_eq!(z.bind(Some(&fp)).unwrap_err(), Refused::TooManyForIdentity);
        let other = Fingerprint::of_der(b"another certificate");
        let mut w = open(&a, "10.0.0.3");
        w.bind(Some(&other)).unwrap();

        let mut anon1 = open(&a, "10.0.0.9");
        anon1.bind(None).unwrap();
        let mut anon2 = open(&a, "10.0.0.9");
        assert_eq!(
            anon2.bind(None).unwrap_err(),
            Refused::TooManyAnonymousFromSource
        );
        // The server-wide anonymous budget: 3.
        let mut more: Vec<Slot> = (10..12)
            .map(|i| {
                let mut s = open(&a, &format!("10.0.0.{i}"));
                s.bind(None).unwrap();
                s
            })
            .collect();
        let mut over = open(&a, "10.0.0.12");
        assert_eq!(over.bind(None).unwrap_err(), Refused::TooManyAnonymous);
        // ... which never limits peers with a certificate.
        let mut certified = open(&a, "10.0.0.12");
        certified.bind(Some(&other)).unwrap();
        assert_eq!(a.anonymous_connections(), 3);
        more.clear();
        drop((x, y, z, w, anon1, anon2, over, certified));
        assert_eq!(a.open_connections(), 0);
        assert_eq!(a.anonymous_connections(), 0);
        let c = a.lock();
        assert!(c.by_identity.is_empty() && c.anonymous_by_source.is_empty());
        assert!(c.pending_by_source.is_empty());
    }

    /// The attacker fills the server's anonymous budget from one network
    /// (the control API's join slots, held by idle TLS connections): a
    /// joiner from another network still gets in, the attacker's oldest
    /// connection making room, and the attacker cannot take the room back
    /// from a network holding fewer than its own.
    #[test]
    fn a_full_anonymous_budget_evicts_from_the_most_crowded_network_not_the_joiner() {
        let a = join_slots(4, 4, 8);
        let bound = |s: &str| bound(&a, s);
        let attacker: Vec<Slot> = (1..=4)
            .map(|i| bound(&format!("10.1.1.{i}")).unwrap())
            .collect();
        assert_eq!(a.anonymous_connections(), 4);
        // A joiner from another network: the attacker's oldest goes.
        let joiner = bound("10.2.2.1").expect("the joiner gets in");
        assert!(attacker[0].eviction().is_cancelled());
        assert!(attacker[1..].iter().all(|s| !s.eviction().is_cancelled()));
        assert!(!joiner.eviction().is_cancelled());
        assert_eq!(a.anonymous_connections(), 4);
        // The attacker's network, holding the most, cannot evict anyone.
        assert_eq!(
            bound("10.1.1.5").unwrap_err(),
            Refused::TooManyAnonymous,
            "a crowded network never takes the room back"
        );
        assert!(!joiner.eviction().is_cancelled());
        // A second joiner: the attacker's network still holds the most.
        let second = bound("10.3.3.1").expect("a second joiner gets in");
        assert!(attacker[1].eviction().is_cancelled());
        // The attacker's network still holds the most (2, against 1 and
        // 1): it takes no room back.
        assert_eq!(bound("10.1.1.6").unwrap_err(), Refused::TooManyAnonymous);
        assert!(attacker[2..].iter().all(|s| !s.eviction().is_cancelled()));
        // A joiner's network whose newcomer would hold as many as the
        // attacker's: the attacker's oldest goes, the joiners' stay.
        let third = bound("10.2.2.2").expect("a network holding fewer gets in");
        assert!(attacker[2].eviction().is_cancelled());
        assert!(
            ![&joiner, &second, &third, &attacker[3]]
                .iter()
                .any(|s| s.eviction().is_cancelled())
        );
        // Evicted slots were taken off the counts once: dropping them
        // gives back their connection only.
        let mut attacker = attacker;
        attacker.drain(..3);
        assert_eq!(a.anonymous_connections(), 4);
        drop((attacker, joiner, second, third));
        assert_eq!(a.anonymous_connections(), 0);
        assert_eq!(a.open_connections(), 0);
        let c = a.lock();
        assert!(c.anonymous_by_network.is_empty() && c.anonymous_by_source.is_empty());
        drop(c);
        // Where anonymous connections are signed-in browsers (the
        // console), a full budget refuses the newcomer and evicts no one.
        let b = Admission::new(ServerLimits {
            evict_anonymous: false,
            ..a.limits().clone()
        });
        let mut held = Vec::new();
        for i in 1..=4 {
            let mut s = open(&b, &format!("10.1.1.{i}"));
            s.bind(None).unwrap();
            held.push(s);
        }
        let mut stranger = open(&b, "10.2.2.1");
        assert_eq!(stranger.bind(None).unwrap_err(), Refused::TooManyAnonymous);
        assert!(held.iter().all(|s| !s.eviction().is_cancelled()));
    }

    /// The attacker holds every anonymous slot from a network of its own
    /// (as many networks as slots): a joiner still gets in, the oldest
    /// going, and the attacker's reconnections, from networks as fresh as
    /// the joiner's, close the slots oldest first: the joiner's last.
    #[test]
    fn a_budget_held_from_as_many_networks_as_slots_turns_over_oldest_first() {
        let a = join_slots(4, 1, 1);
        let bound = |s: &str| bound(&a, s);
        let attacker: Vec<Slot> = (1..=4)
            .map(|i| bound(&format!("10.{i}.0.1")).unwrap())
            .collect();
        let joiner = bound("10.9.0.1").expect("the joiner gets in");
        assert!(attacker[0].eviction().is_cancelled());
        // Three reconnections close the attacker's three others, oldest
        // first, never the joiner's.
        let churn: Vec<Slot> = (1..=3)
            .map(|i| bound(&format!("10.2{i}.0.1")).unwrap())
            .collect();
        assert!(attacker.iter().all(|s| s.eviction().is_cancelled()));
        assert!(!joiner.eviction().is_cancelled());
        assert!(churn.iter().all(|s| !s.eviction().is_cancelled()));
        // The four evicted and still open may finish their requests: as
        // many as the anonymous budget.
        assert!(attacker[3].may_drain());
        // The fourth finds the joiner's the oldest; a fifth evicted
        // connection still open is one too many to drain: it is cut.
        let last = bound("10.30.0.1").unwrap();
        assert!(joiner.eviction().is_cancelled());
        assert!(churn.iter().all(|s| !s.eviction().is_cancelled()));
        assert_eq!(a.anonymous_connections(), 4);
        assert!(!joiner.may_drain());
        // Once the others have closed, it may.
        drop(attacker);
        assert!(joiner.may_drain());
        drop((joiner, churn, last));
        assert_eq!(a.anonymous_connections(), 0);
        let c = a.lock();
        assert!(c.anonymous_by_network.is_empty());
        assert_eq!(c.draining, 0);
    }

    /// The attacker holds a whole IPv6 /48 (or many addresses of a /24):
    /// each of its /64s is a source of its own, but together they hold at
    /// most the network's share of anonymous connections, and a peer of
    /// another network still gets in.
    #[test]
    fn many_sources_of_one_network_share_its_anonymous_cap() {
        let a = Admission::new(ServerLimits {
            max_connections: 100,
            max_pending_handshakes: 100,
            max_anonymous: 50,
            max_anonymous_per_source: 1,
            max_anonymous_per_network: 4,
            ..limits()
        });
        for (attacker, elsewhere) in [
            ("2001:db8:7:{}::1", "2001:db8:8::1"),
            ("10.7.7.{}", "10.7.8.1"),
        ] {
            let mut held = Vec::new();
            let mut refused = 0;
            for i in 1..=40 {
                let mut s = open(&a, &attacker.replace("{}", &i.to_string()));
                match s.bind(None) {
                    Ok(()) => held.push(s),
                    Err(e) => {
                        assert_eq!(e, Refused::TooManyAnonymousFromNetwork);
                        refused += 1;
                    }
                }
            }
            assert_eq!((held.len(), refused), (4, 36), "{attacker}");
            let mut other = open(&a, elsewhere);
            other.bind(None).expect("another network gets in");
            drop((held, other));
        }
        assert!(a.lock().anonymous_by_network.is_empty());
    }
}
