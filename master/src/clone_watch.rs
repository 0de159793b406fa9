//! Seeing two holders of one identity: the same certificate heartbeating
//! from two sources in turn.
//!
//! A worker heartbeats from one address; it may move (DHCP, a new uplink)
//! and stay at the new one. A copied key used elsewhere shows as a flip
//! back: A, then B, then A again within the window. Pure bookkeeping with
//! the clock passed in; the control API marks the host suspect on a flip.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use decnet_pki::Fingerprint;

#[derive(Debug, Clone, Copy)]
struct Seen {
    last: IpAddr,
    /// The source before the last change, and when it was last seen.
    before: Option<(IpAddr, Instant)>,
    at: Instant,
}

/// Where each certificate last heartbeated from (bounded memory).
#[derive(Debug)]
pub struct SourceFlips {
    window: Duration,
    max_keys: usize,
    seen: Mutex<HashMap<Fingerprint, Seen>>,
}

/// A source flip: the certificate came back to a source it had left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flip {
    /// The source it came back to.
    pub returned_to: IpAddr,
    /// The source it had moved to in between.
    pub other: IpAddr,
}

impl SourceFlips {
    /// Flips back within `window` count; at most `max_keys` certificates
    /// remembered (the oldest forgotten first).
    pub fn new(window: Duration, max_keys: usize) -> Self {
        SourceFlips {
            window,
            max_keys: max_keys.max(1),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `fp` heartbeated from `source` at `now`: a [`Flip`] when it came
    /// back to a source it left within the window.
    pub fn heartbeat(&self, fp: &Fingerprint, source: IpAddr, now: Instant) -> Option<Flip> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains_key(fp) && seen.len() >= self.max_keys {
            let window = self.window;
            seen.retain(|_, s| now.saturating_duration_since(s.at) < window);
            if seen.len() >= self.max_keys
                && let Some(oldest) = seen.iter().min_by_key(|(_, s)| s.at).map(|(k, _)| *k)
            {
                seen.remove(&oldest);
            }
        }
        let s = seen.entry(*fp).or_insert(Seen {
            last: source,
            before: None,
            at: now,
        });
        if s.last == source {
            s.at = now;
            return None;
        }
        let flip = s.before.and_then(|(ip, at)| {
            (ip == source && now.saturating_duration_since(at) < self.window).then_some(Flip {
                returned_to: source,
                other: s.last,
            })
        });
        s.before = Some((s.last, s.at));
        s.last = source;
        s.at = now;
        flip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_move_is_not_a_flip_but_coming_back_is() {
        let w = SourceFlips::new(Duration::from_secs(600), 10);
        let fp = Fingerprint::of_der(b"w1");
        let t0 = Instant::now();
        let t = |s| t0 + Duration::from_secs(s);
        assert_eq!(w.heartbeat(&fp, ip("10.0.0.1"), t(0)), None);
        assert_eq!(w.heartbeat(&fp, ip("10.0.0.1"), t(30)), None);
        // The host moved: fine.
        assert_eq!(w.heartbeat(&fp, ip("10.0.0.7"), t(60)), None);
        assert_eq!(w.heartbeat(&fp, ip("10.0.0.7"), t(90)), None);
        // ... and back while the other still heartbeats: two holders.
        assert_eq!(
            w.heartbeat(&fp, ip("10.0.0.1"), t(95)),
            Some(Flip {
                returned_to: ip("10.0.0.1"),
                other: ip("10.0.0.7")
            })
        );
        // Another certificate is not affected.
        let other = Fingerprint::of_der(b"w2");
        assert_eq!(w.heartbeat(&other, ip("10.0.0.7"), t(95)), None);
    }

    #[test]
    fn coming_back_long_after_is_a_move() {
        let w = SourceFlips::new(Duration::from_secs(600), 10);
        let fp = Fingerprint::of_der(b"w1");
        let t0 = Instant::now();
        w.heartbeat(&fp, ip("10.0.0.1"), t0);
        w.heartbeat(&fp, ip("10.0.0.2"), t0 + Duration::from_secs(700));
        assert_eq!(
            w.heartbeat(&fp, ip("10.0.0.1"), t0 + Duration::from_secs(1400)),
            None
        );
    }

    #[test]
    fn memory_is_bounded() {
        let w = SourceFlips::new(Duration::from_secs(600), 4);
        let t0 = Instant::now();
        for i in 0..100u32 {
            let fp = Fingerprint::of_der(&i.to_be_bytes());
            w.heartbeat(&fp, ip("10.0.0.1"), t0 + Duration::from_millis(i.into()));
        }
        assert!(w.seen.lock().unwrap().len() <= 4);
    }
}
