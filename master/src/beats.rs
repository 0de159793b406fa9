//! Heartbeats written in batches: the control API answers a beat at once
//! and a writer records the beats of a short window in one transaction, so
//! a beat costs a share of a commit instead of a commit, at 100 beats/s as
//! at 1,000 (issue #31: the per-beat database round trip and commit was
//! the fixed cost that made low rates dear).
//!
//! What the answer carries from the database — whether a renewal was asked
//! for the host — is what the last write returned: a `swarm renew` reaches
//! the agent one beat later than it would with a write per beat. A renewal
//! served clears the host's flag here at once (the agent is not asked
//! twice). When a write fails, beats are answered 503 until one succeeds,
//! as when each beat wrote its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use decnet_fleet::FleetDb;
use decnet_fleet::db::Beat;

/// How long beats gather before they are written together. A second: at
/// 100 beats/s a window of 100 ms still cost each beat a tenth of a
/// statement's preparation, execution and two thread wake-ups (about a
/// tenth of the master's CPU per beat, measured), while a beat's record
/// (last seen, version, state) is read at a 30 s cadence.
pub const WINDOW: Duration = Duration::from_millis(1000);
/// The most beats one transaction writes.
pub const MAX_BATCH: usize = 2048;
/// Beats waiting to be written; beyond it a beat is answered 503 (the
/// database cannot keep up; agents retry).
pub const QUEUE: usize = 65_536;

/// The beat writer's handle (cheap to share: an `Arc`).
pub struct BeatWriter {
    tx: tokio::sync::mpsc::Sender<Beat>,
    /// Host → whether a renewal was asked (as the last write returned).
    renew: Mutex<HashMap<String, bool>>,
    healthy: AtomicBool,
}

/// Why a beat was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BeatRefused {
    /// The last write failed, or the queue is full.
    #[error("fleet database unavailable")]
    Unavailable,
}

impl BeatWriter {
    /// Start the writer on `db` (it runs until the handle is dropped).
    pub fn start(db: FleetDb) -> Arc<BeatWriter> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let w = Arc::new(BeatWriter {
            tx,
            renew: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(true),
        });
        tokio::spawn(write_batches(db, rx, Arc::downgrade(&w)));
        w
    }

    /// Take a beat; whether a renewal is asked for its host.
    pub fn beat(&self, beat: Beat) -> Result<bool, BeatRefused> {
        if !self.healthy.load(Ordering::Relaxed) {
            // One beat still goes through: the write that finds the
            // database back.
            let _ = self.tx.try_send(beat);
            return Err(BeatRefused::Unavailable);
        }
        let host = beat.host.clone();
        self.tx
            .try_send(beat)
            .map_err(|_| BeatRefused::Unavailable)?;
        Ok(self.lock().get(&host).copied().unwrap_or(false))
    }

    /// A renewal of `host` was served: its flag is down.
    pub fn renewed(&self, host: &str) {
        self.lock().remove(host);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.renew.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer: a window's beats (the newest of each host) in one
/// transaction, the renew flags it returns kept for the answers.
async fn write_batches(
    db: FleetDb,
    mut rx: tokio::sync::mpsc::Receiver<Beat>,
    me: std::sync::Weak<BeatWriter>,
) {
    let mut batch: Vec<Beat> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // The window's other beats wait in the channel, waking nothing
        // (a receive per beat woke this task once per beat), and are
        // taken together when it ends. A full batch goes at once.
        if rx.len() < MAX_BATCH {
            tokio::time::sleep(WINDOW).await;
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        let beats = newest_per_host(std::mem::take(&mut batch));
        let written = db.record_heartbeats(&beats).await;
        let Some(w) = me.upgrade() else { return };
        match written {
            Ok(flags) => {
                if !w.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("heartbeats recorded again");
                }
                let mut renew = w.lock();
                for (host, asked) in flags {
                    if asked {
                        renew.insert(host, true);
                    } else {
                        renew.remove(&host);
                    }
                }
            }
            Err(e) => {
                if w.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, beats = beats.len(), "cannot record heartbeats");
                }
            }
        }
    }
}

/// The newest beat of each host, in arrival order. Pure.
pub fn newest_per_host(beats: Vec<Beat>) -> Vec<Beat> {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, b) in beats.iter().enumerate() {
        last.insert(b.host.clone(), i);
    }
    beats
        .into_iter()
        .enumerate()
        .filter(|(i, b)| last.get(&b.host) == Some(i))
        .map(|(_, b)| b)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(host: &str, version: &str) -> Beat {
        Beat {
            host: host.into(),
            version: version.into(),
            state: None,
            clock_skew_ms: None,
            trust: None,
        }
    }

    #[test]
    fn a_window_keeps_each_hosts_newest_beat() {
        let b = newest_per_host(vec![beat("w1", "1"), beat("w2", "1"), beat("w1", "2")]);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].host.as_str(), b[0].version.as_str()), ("w2", "1"));
        assert_eq!((b[1].host.as_str(), b[1].version.as_str()), ("w1", "2"));
    }
}
