//! hyper's timer for one HTTP connection: every request head's deadline
//! waits on the connection's one tokio timer.
//!
//! hyper arms the header-read timeout (which is also the keep-alive idle
//! timeout) anew for every request head, as a boxed sleep it drops once
//! the head is in. With tokio's timer behind each, a request cost a clone
//! of the runtime's handle and its drop (a reference count both cores
//! share) and an entry put into the timer wheel and taken out again under
//! the wheel's lock (issue #31). Here the sleeps hyper asks for share one
//! tokio timer that stays armed across requests: hyper's deadlines only
//! move later, so the armed timer can only fire early, and is then armed
//! again for the deadline of the moment, at most once per timeout period.
//! A head that is already in when hyper asks costs no timer at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// The timer of one connection, for hyper's HTTP/1 server. Its sleeps are
/// polled by that connection's task only (the one tokio timer they share
/// wakes the task that polled it last).
#[derive(Clone, Default)]
pub(crate) struct ConnectionTimer {
    armed: Arc<Mutex<Option<Pin<Box<Sleep>>>>>,
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock, which the deadlines are measured against (and which
    /// tests can pause).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadDeadline {
            deadline: tokio::time::Instant::from_std(deadline),
            armed: Arc::clone(&self.armed),
        })
    }
}

/// One deadline hyper waits for, on the connection's shared timer.
struct HeadDeadline {
    deadline: tokio::time::Instant,
    armed: Arc<Mutex<Option<Pin<Box<Sleep>>>>>,
}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        if tokio::time::Instant::now() >= deadline {
            return Poll::Ready(());
        }
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let timer = armed.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Armed for an earlier deadline, since passed.
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
    }
}

impl hyper::rt::Sleep for HeadDeadline {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    /// Deadlines in the order hyper sets them (each later than the last):
    /// each fires at its own time, not before, on the one shared timer,
    /// including one set after the timer was armed for an earlier one.
    #[tokio::test(start_paused = true)]
    async fn each_deadline_fires_at_its_time_on_the_shared_timer() {
        let timer = ConnectionTimer::default();
        let start = tokio::time::Instant::now();
        // A first head arrives in time: its deadline is dropped unfired,
        // and the timer stays armed for it.
        let mut first = timer.sleep(Duration::from_secs(30));
        assert!(futures_poll_once(first.as_mut()).is_pending());
        drop(first);
        tokio::time::advance(Duration::from_secs(20)).await;
        // The next head's deadline is 50 s from the start; the timer fires
        // at 30 s and is armed again, silently.
        let second = timer.sleep(Duration::from_secs(30));
        let t = tokio::time::Instant::now();
        second.await;
        let waited = tokio::time::Instant::now() - t;
        assert_eq!(waited, Duration::from_secs(30), "fired early or late");
        assert!(start.elapsed() < Duration::from_secs(60));
    }

    /// A deadline earlier than the one the timer is armed for (not how
    /// hyper sets them, but possible through the trait) re-arms it earlier.
    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_re_arms_the_timer() {
        let timer = ConnectionTimer::default();
        let mut late = timer.sleep(Duration::from_secs(60));
        assert!(futures_poll_once(late.as_mut()).is_pending());
        let t = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(5)).await;
        assert_eq!(tokio::time::Instant::now() - t, Duration::from_secs(5));
    }

    /// Polls a future once with a waker that does nothing.
    fn futures_poll_once(f: Pin<&mut (dyn hyper::rt::Sleep + 'static)>) -> Poll<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx)
    }
}
