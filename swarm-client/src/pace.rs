//! The pace a transfer must keep. What one end trickles (a worker sending
//! an evidence archive a byte a second, a client uploading a release so)
//! holds what the other end reserved for it (a spool slot, the upload
//! slot) for as long as it likes unless the transfer is cut when it falls
//! behind.

use std::time::Duration;

use tokio::time::Instant;

/// The slowest a paced transfer may go, over each [`PACE_WINDOW`] in turn:
/// 64 KiB/s (a 45 MB release in 12 minutes).
pub const MIN_TRANSFER_RATE: u64 = 64 * 1024;

/// The span over which a transfer's pace is judged.
pub const PACE_WINDOW: Duration = Duration::from_secs(30);

/// A transfer's pace: every [`PACE_WINDOW`] in turn, from its start, must
/// bring at least [`MIN_TRANSFER_RATE`] × the window, so a burst early
/// buys no silence later. Pure: the caller passes the time.
#[derive(Clone, Copy, Debug)]
pub struct TransferPace {
    window_started: Instant,
    window_bytes: u64,
}

impl TransferPace {
    /// The pace of a transfer starting `now`.
    pub fn new(now: Instant) -> TransferPace {
        TransferPace {
            window_started: now,
            window_bytes: 0,
        }
    }

    /// `bytes` more came.
    pub fn add(&mut self, bytes: u64) {
        self.window_bytes = self.window_bytes.saturating_add(bytes);
    }

    /// The receiver spent `spent` not reading (writing what came to its
    /// disk): the sender, held back meanwhile, is not judged for it.
    pub fn exclude(&mut self, spent: Duration) {
        self.window_started += spent;
    }

    /// Whether the transfer is too slow to keep at `now`: a window ended
    /// short of the rate. A window that ended at the rate starts the next.
    pub fn too_slow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.window_started);
        if elapsed < PACE_WINDOW {
            return false;
        }
        if u128::from(self.window_bytes)
            < u128::from(MIN_TRANSFER_RATE) * elapsed.as_millis() / 1000
        {
            return true;
        }
        *self = TransferPace::new(now);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_of_a_transfer_must_keep_the_rate() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut pace = TransferPace::new(t0);
        assert!(!pace.too_slow(t0 + s(29)), "within the first window");
        pace.add(MIN_TRANSFER_RATE * 30);
        assert!(!pace.too_slow(t0 + s(30)), "the first window kept the rate");
        pace.add(MIN_TRANSFER_RATE * 30 - 1);
        let mut judged = pace;
        assert!(judged.too_slow(t0 + s(60)), "the second fell short");
        pace.add(1);
        assert!(!pace.too_slow(t0 + s(60)));
        // A burst is judged over the window it came in, whatever its size.
        let mut pace = TransferPace::new(t0);
        pace.add(u64::MAX);
        pace.add(u64::MAX);
        assert!(!pace.too_slow(t0 + s(30)));
        assert!(pace.too_slow(t0 + s(60)));
        // Time the receiver spent writing is not the sender's.
        let mut pace = TransferPace::new(t0);
        pace.add(MIN_TRANSFER_RATE * 20);
        pace.exclude(s(10));
        assert!(
            !pace.too_slow(t0 + s(35)),
            "20 s of sending, 10 s of writing"
        );
        assert!(pace.too_slow(t0 + s(40)));
    }
}
