//! The decky census: how many deckies are in each phase, published after
//! every change of the agent's state, so that `/health` (the route the
//! master and the updater probe most) reads it without taking the state's
//! lock. Taking that lock was two atomic operations per probe on a cache
//! line every connection shares (issue #31).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use serde::ser::{Serialize, SerializeMap, Serializer};
use tokio::sync::{Mutex, MutexGuard};

use crate::state::{AgentState, DeckyPhase};

/// Every phase, in the order the census and its JSON list them.
const PHASES: [DeckyPhase; 5] = [
    DeckyPhase::Pending,
    DeckyPhase::Running,
    DeckyPhase::Exited,
    DeckyPhase::Failed,
    DeckyPhase::TornDown,
];

/// The place of `phase` in [`PHASES`].
fn slot(phase: DeckyPhase) -> usize {
    match phase {
        DeckyPhase::Pending => 0,
        DeckyPhase::Running => 1,
        DeckyPhase::Exited => 2,
        DeckyPhase::Failed => 3,
        DeckyPhase::TornDown => 4,
    }
}

/// How many deckies are in each phase. Serialized as the `/health` answer
/// shows it: a map of the phases that have deckies, in phase order
/// (`{"running":3,"failed":1}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseCounts(pub(crate) [usize; PHASES.len()]);

impl PhaseCounts {
    /// The census of `state`.
    pub fn of(state: &AgentState) -> Self {
        let mut counts = PhaseCounts::default();
        for r in state.deckies.values() {
            counts.0[slot(r.phase)] += 1;
        }
        counts
    }

    /// How many deckies are in `phase`.
    pub fn get(&self, phase: DeckyPhase) -> usize {
        self.0[slot(phase)]
    }

    /// Every phase with its count, zeros included (the metrics' gauges).
    pub fn each(&self) -> impl Iterator<Item = (DeckyPhase, usize)> + '_ {
        PHASES.iter().map(|&p| (p, self.get(p)))
    }
}

impl Serialize for PhaseCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.iter().filter(|&&n| n > 0).count()))?;
        for (phase, n) in self.each().filter(|&(_, n)| n > 0) {
            map.serialize_entry(&phase, &n)?;
        }
        map.end()
    }
}

/// The published census: a sequence lock over one counter per phase.
/// One writer at a time (the holder of the state's lock); readers never
/// write, so a probe touches no cache line the other core writes unless
/// the state has just changed.
struct PublishedCensus {
    /// Odd while a census is being written; bumped twice per publication.
    seq: AtomicU64,
    counts: [AtomicUsize; PHASES.len()],
}

impl PublishedCensus {
    fn new(counts: PhaseCounts) -> Self {
        PublishedCensus {
            seq: AtomicU64::new(0),
            counts: counts.0.map(AtomicUsize::new),
        }
    }

    /// Publish `counts`. Callers are serialized by the state's lock.
    fn publish(&self, counts: PhaseCounts) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (cell, n) in self.counts.iter().zip(counts.0) {
            cell.store(n, Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// The last census published whole (retried while one is written).
    fn read(&self) -> PhaseCounts {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                let counts = PhaseCounts(self.counts.each_ref().map(|c| c.load(Ordering::Relaxed)));
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == before {
                    return counts;
                }
            }
            std::hint::spin_loop();
        }
    }
}

/// The agent's state behind its lock, with the census published whenever
/// a holder of the lock may have changed it.
pub struct StateCell {
    state: Mutex<AgentState>,
    census: PublishedCensus,
}

impl StateCell {
    /// `state`, its census published.
    pub fn new(state: AgentState) -> Self {
        StateCell {
            census: PublishedCensus::new(PhaseCounts::of(&state)),
            state: Mutex::new(state),
        }
    }

    /// The state, to read or change; a change is counted when the guard is
    /// dropped.
    pub async fn lock(&self) -> StateGuard<'_> {
        StateGuard {
            guard: self.state.lock().await,
            census: &self.census,
            changed: false,
        }
    }

    /// The census as of the last release of the lock after a change.
    pub fn counts(&self) -> PhaseCounts {
        self.census.read()
    }
}

/// The state while its lock is held. Borrowing it mutably marks it
/// changed; dropping a changed guard publishes the census, so no change of
/// a decky's phase (wherever it is made) is missed.
pub struct StateGuard<'a> {
    guard: MutexGuard<'a, AgentState>,
    census: &'a PublishedCensus,
    changed: bool,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = AgentState;

    fn deref(&self) -> &AgentState {
        &self.guard
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut AgentState {
        self.changed = true;
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if self.changed {
            self.census.publish(PhaseCounts::of(&self.guard));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DeckyRecord;

    fn state_with(phases: &[DeckyPhase]) -> AgentState {
        let mut st = AgentState::new(crate::config::DriverKind::Process);
        for (i, &p) in phases.iter().enumerate() {
            let config = crate::config::DeckyConfig {
                name: format!("d{i}"),
                command: vec!["x".into()],
                ..Default::default()
            };
            let mut rec = DeckyRecord::pending(config, 0);
            rec.phase = p;
            st.deckies.insert(format!("d{i}"), rec);
        }
        st
    }

    /// The JSON lists the phases that have deckies, in phase order, as the
    /// map of phase names the `/health` answer always had.
    #[test]
    fn counts_serialize_as_a_map_of_present_phases_in_order() {
        let st = state_with(&[DeckyPhase::Failed, DeckyPhase::Running, DeckyPhase::Running]);
        let json = serde_json::to_string(&PhaseCounts::of(&st)).unwrap();
        assert_eq!(json, r#"{"running":2,"failed":1}"#);
        assert_eq!(
            serde_json::to_string(&PhaseCounts::default()).unwrap(),
            "{}"
        );
    }

    /// A change made through the guard is in the census once the guard is
    /// dropped; a guard only read from publishes nothing new.
    #[tokio::test]
    async fn a_change_through_the_guard_is_published_on_release() {
        let cell = StateCell::new(state_with(&[DeckyPhase::Pending]));
        assert_eq!(cell.counts().get(DeckyPhase::Pending), 1);
        {
            let mut st = cell.lock().await;
            if let Some(r) = st.deckies.get_mut("d0") {
                r.phase = DeckyPhase::Running;
            }
            // Not yet released: the census still shows the old phase.
            assert_eq!(cell.counts().get(DeckyPhase::Running), 0);
        }
        let counts = cell.counts();
        assert_eq!(counts.get(DeckyPhase::Running), 1);
        assert_eq!(counts.get(DeckyPhase::Pending), 0);
    }

    /// Readers racing a writer always see a census published whole: the
    /// writer keeps the total fixed while moving deckies between phases,
    /// so a torn read would show another total.
    #[test]
    fn readers_never_see_a_torn_census() {
        let census = std::sync::Arc::new(PublishedCensus::new(PhaseCounts([10, 0, 0, 0, 0])));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (census, stop) = (census.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let a = i % 11;
                    census.publish(PhaseCounts([a, 10 - a, 0, 0, 0]));
                    i += 1;
                }
            })
        };
        for _ in 0..50_000 {
            let c = census.read();
            assert_eq!(c.0.iter().sum::<usize>(), 10, "torn census {c:?}");
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }
}
