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
//!
//! What a beat changes (a host back, its deckies, forbidden connection
//! attempts) is published on the event bus once the beat is written, not
//! when it arrives: a console that re-reads a host on an event then reads
//! at least what the event said. (Published on arrival, a `host.deckies`
//! event could be overwritten on the page by a read of the row the window
//! had not written yet, and no later event would correct it.)

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

/// A beat waiting for its window: the row to write, and the deckies it
/// reported (what the event bus is told once the row is written).
pub struct QueuedBeat {
    /// The row.
    pub beat: Beat,
    /// The deckies as reported.
    pub deckies: serde_json::Value,
}

/// The beat writer's handle (cheap to share: an `Arc`).
pub struct BeatWriter {
    tx: tokio::sync::mpsc::Sender<QueuedBeat>,
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
    /// Start the writer on `db`, publishing on `events` what written beats
    /// change (it runs until the handle is dropped).
    pub fn start(db: FleetDb, events: crate::events::Events) -> Arc<BeatWriter> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let w = Arc::new(BeatWriter {
            tx,
            renew: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(true),
        });
        tokio::spawn(write_batches(db, events, rx, Arc::downgrade(&w)));
        w
    }

    /// Take a beat (and the deckies it reported); whether a renewal is
    /// asked for its host.
    pub fn beat(&self, beat: Beat, deckies: serde_json::Value) -> Result<bool, BeatRefused> {
        let queued = QueuedBeat { beat, deckies };
        if !self.healthy.load(Ordering::Relaxed) {
            // One beat still goes through: the write that finds the
            // database back.
            let _ = self.tx.try_send(queued);
            return Err(BeatRefused::Unavailable);
        }
        let host = queued.beat.host.clone();
        self.tx
            .try_send(queued)
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
/// transaction, the renew flags it returns kept for the answers, then
/// what they change published.
async fn write_batches(
    db: FleetDb,
    events: crate::events::Events,
    mut rx: tokio::sync::mpsc::Receiver<QueuedBeat>,
    me: std::sync::Weak<BeatWriter>,
) {
    let mut batch: Vec<QueuedBeat> = Vec::new();
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
        let (beats, deckies): (Vec<Beat>, Vec<serde_json::Value>) =
            newest_per_host(std::mem::take(&mut batch))
                .into_iter()
                .map(|q| (q.beat, q.deckies))
                .unzip();
        let written = db.record_heartbeats(&beats).await;
        let Some(w) = me.upgrade() else { return };
        match written {
            Ok(flags) => {
                if !w.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("heartbeats recorded again");
                }
                {
                    let mut renew = w.lock();
                    for (host, asked) in flags {
                        if asked {
                            renew.insert(host, true);
                        } else {
                            renew.remove(&host);
                        }
                    }
                }
                for (b, d) in beats.iter().zip(&deckies) {
                    events.heartbeat(&b.host, d);
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
pub fn newest_per_host(beats: Vec<QueuedBeat>) -> Vec<QueuedBeat> {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, b) in beats.iter().enumerate() {
        last.insert(b.beat.host.clone(), i);
    }
    beats
        .into_iter()
        .enumerate()
        .filter(|(i, b)| last.get(&b.beat.host) == Some(i))
        .map(|(_, b)| b)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(host: &str, version: &str) -> QueuedBeat {
        QueuedBeat {
            beat: Beat {
                host: host.into(),
                version: version.into(),
                state: None,
                clock_skew_ms: None,
                trust: None,
            },
            deckies: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_window_keeps_each_hosts_newest_beat() {
        let b = newest_per_host(vec![beat("w1", "1"), beat("w2", "1"), beat("w1", "2")]);
        assert_eq!(b.len(), 2);
        let hv = |q: &QueuedBeat| (q.beat.host.clone(), q.beat.version.clone());
        assert_eq!(hv(&b[0]), ("w2".into(), "1".into()));
        assert_eq!(hv(&b[1]), ("w1".into(), "2".into()));
    }

    /// A change of deckies is published once its beat is written: a read
    /// of the host on the event shows at least what the event said (on
    /// arrival, the event came up to a window before the row, and a
    /// console re-reading the host showed the old deckies for good).
    #[tokio::test]
    async fn a_decky_change_is_published_after_its_beat_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        let db = FleetDb::connect(&url).await.unwrap();
        db.record_enrollment(&decnet_fleet::HostRecord::new("w1", "127.0.0.1", 1, 2), &[])
            .await
            .unwrap();
        let events = crate::events::Events::new();
        let writer = BeatWriter::start(db.clone(), events.clone());
        let mut sub = events.bus.subscribe(None);
        let send = |deckies: serde_json::Value| {
            let mut q = beat("w1", "1");
            q.beat.state = Some(deckies.to_string());
            writer.beat(q.beat, deckies).unwrap();
        };
        let state = || async { db.host("w1").await.unwrap().unwrap().state_json };
        // The first beat this writer sees is no change; once written, the
        // next one with another decky is.
        send(serde_json::json!([]));
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while state().await.as_deref() != Some("[]") {
            assert!(
                tokio::time::Instant::now() < end,
                "the first beat is written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        send(serde_json::json!([{"name": "web", "state": "running", "restarts": 0}]));
        let event = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let e = sub.live.recv().await.unwrap();
                if e.kind == "host.deckies" {
                    return e;
                }
            }
        })
        .await
        .expect("a host.deckies event");
        assert_eq!(event.data["deckies"][0]["state"], "running");
        let row = state().await.unwrap_or_default();
        assert!(
            row.contains("running"),
            "the row when the event came: {row}"
        );
    }
}
